#!/usr/bin/env python3
"""Checks the properties of Sonde's rendered Kubernetes manifests that a schema cannot see.

    kubectl kustomize k8s/overlays/fleet > fleet.yaml
    k8s/check_manifests.py --profile fleet fleet.yaml     # exit 1 and a list of violations
    k8s/check_manifests.py --self-test [RENDERED.yaml...] # proves each check can fail

What is checked (every render):
- every container: cpu and memory requests and limits (requests <= limits), readiness and
  liveness probes, a restricted securityContext (non-root, read-only root filesystem, no
  privilege escalation, all capabilities dropped, RuntimeDefault seccomp);
- every pod: its own ServiceAccount (present in the render), no API token mounted, no service
  links (every SONDE_* variable is a flag to the binaries);
- command lines use only flags the binaries have today (read from agent/src/cli.rs and
  collector/src/cli.rs when the repository is there), and SONDE_* variables are real flags'
  fallbacks or the documented future ones, which today's binaries ignore;
- collector-binary pods: /readyz readiness and /healthz liveness on the listen port, a preStop
  `sleep` (the image has no shell), terminationGracePeriodSeconds >= preStop sleep +
  --drain-timeout + 5 s, a token file (or --insecure-no-auth) when listening beyond loopback, the data dir on an
  emptyDir with a sizeLimit or on a PersistentVolumeClaim;
- the agent DaemonSet: host /proc and /sys mounted read-only, --proc-path on the /proc mount,
  tolerates every taint, host network with ClusterFirstWithHostNet, /healthz probes on the
  --http-listen port, --buffer-bytes at most half the memory limit, grace >= --shutdown-timeout
  + 5 s, and its push URL names a Service of the render on a port that Service has;
- HorizontalPodAutoscaler: autoscaling/v2, its scaleTargetRef exists in the render (and has no
  `replicas` of its own), CPU and queue-fill metrics, a scale-up and scale-down stabilization;
  the collector Deployment has an autoscaler, a PodDisruptionBudget selecting its pods and a
  Service; every PDB and Service selects some pods; Service target ports exist;
- ServiceAccounts have automountServiceAccountToken: false; referenced ConfigMaps and Secrets
  exist; StatefulSets name a headless Service and mount their claims; images are fully named;
  every namespaced object is in the namespace; the pods agents push to are reachable by agents
  under a NetworkPolicy, behind a default deny.
--profile adds what each overlay must and must not contain.
"""

import argparse
import copy
import ipaddress
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "sonde"
AGENT_LABEL = ("app.kubernetes.io/name", "sonde-agent")
COLLECTOR_DEPLOYMENT = "sonde-collector"
QUEUE_METRIC = "sonde_collector_queue_fill_ratio"
GRACE_MARGIN_S = 5
POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass",
    "PersistentVolume", "CustomResourceDefinition", "IngressClass", "APIService",
}

# Variables for flags that later issues add. Today's binaries ignore them (clap reads only the
# variables of flags it has), so they can be set now without the binary rejecting anything.
FUTURE_ENV = {
    "agent": {},
    "collector": {},
}

# Used when the Rust sources are not beside this file (k8s/ copied elsewhere). Generated from
# agent/src/cli.rs and collector/src/cli.rs; the sources win when present.
FALLBACK_FLAGS = {
    "agent": {
        "collector": ("SONDE_COLLECTOR", True, "http://127.0.0.1:9470"),
        "interval": ("SONDE_INTERVAL", True, "10s"),
        "hostname": ("SONDE_HOSTNAME", True, None),
        "proc-path": ("SONDE_PROC_PATH", True, "/proc"),
        "buffer-bytes": ("SONDE_BUFFER_BYTES", True, str(64 << 20)),
        "push-timeout": ("SONDE_PUSH_TIMEOUT", True, "10s"),
        "push-backoff": ("SONDE_PUSH_BACKOFF", True, "500ms"),
        "push-max-backoff": ("SONDE_PUSH_MAX_BACKOFF", True, "30s"),
        "compression": ("SONDE_COMPRESSION", True, "zstd"),
        "shutdown-timeout": ("SONDE_SHUTDOWN_TIMEOUT", True, "5s"),
        "http-listen": ("SONDE_HTTP_LISTEN", True, "127.0.0.1:9471"),
        "log": ("SONDE_LOG", True, "info"),
    },
    "collector": {
        "listen": ("SONDE_LISTEN", True, "127.0.0.1:9470"),
        "data-dir": ("SONDE_DATA_DIR", True, "./sonde-data"),
        "insecure-no-auth": ("SONDE_INSECURE_NO_AUTH", False, None),
        "max-body-bytes": ("SONDE_MAX_BODY_BYTES", True, str(16 << 20)),
        "max-decoded-bytes": ("SONDE_MAX_DECODED_BYTES", True, str(64 << 20)),
        "max-series-per-batch": ("SONDE_MAX_SERIES_PER_BATCH", True, "100000"),
        "max-samples-per-batch": ("SONDE_MAX_SAMPLES_PER_BATCH", True, "1000000"),
        "max-labels-per-series": ("SONDE_MAX_LABELS_PER_SERIES", True, "32"),
        "max-name-length": ("SONDE_MAX_NAME_LENGTH", True, "256"),
        "max-label-value-length": ("SONDE_MAX_LABEL_VALUE_LENGTH", True, "2048"),
        "max-sample-age": ("SONDE_MAX_SAMPLE_AGE", True, "24h"),
        "max-sample-future": ("SONDE_MAX_SAMPLE_FUTURE", True, "10m"),
        "drain-timeout": ("SONDE_DRAIN_TIMEOUT", True, "25s"),
        "query-lookback": ("SONDE_QUERY_LOOKBACK", True, "5m"),
        "log": ("SONDE_LOG", True, "info"),
    },
}


# --- the binaries' flags -----------------------------------------------------------------------

def flags_from_rust(paths):
    """{flag: (env, takes_value, default)} from clap derive fields (`#[arg(long, env = ..)]`)."""
    flags = {}
    for path in paths:
        attrs = ""
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("///") or stripped.startswith("//"):
                continue
            field = re.match(r"pub (\w+)\s*:\s*([^,]+),?$", stripped)
            if field:
                arg = re.search(r"#\[arg\((.*)\)\]", attrs, re.S)
                if arg and re.search(r"\blong\b", arg.group(1)):
                    body = arg.group(1)
                    name = re.search(r'\blong\s*=\s*"([^"]+)"', body)
                    name = name.group(1) if name else field.group(1).replace("_", "-")
                    env = re.search(r'\benv\s*=\s*"([^"]+)"', body)
                    default = re.search(r'\bdefault_value\s*=\s*"([^"]*)"', body)
                    default = default.group(1) if default else rust_int(body)
                    flags[name] = (env.group(1) if env else None, field.group(2).strip() != "bool", default)
                attrs = ""
            else:
                attrs += line + "\n"
    return flags


def rust_int(attr_body):
    """The value of `default_value_t = 64 << 20` (integer literals, <<, *, +), as a string."""
    m = re.search(r"\bdefault_value_t\s*=\s*([0-9_ <*+]+?)\s*(?:,|$)", attr_body.strip())
    if not m:
        return None
    return str(eval(m.group(1).replace("_", ""), {"__builtins__": {}}))  # digits and operators only


def load_flags():
    known = {}
    for binary in ("agent", "collector"):
        src = REPO / binary / "src"
        paths = [p for p in [src / "cli.rs", *sorted((src / "cli").glob("*.rs"))] if p.is_file()]
        parsed = flags_from_rust(paths) if paths else {}
        known[binary] = parsed or dict(FALLBACK_FLAGS[binary])
    return known


FLAGS = load_flags()


# --- small parsers ----------------------------------------------------------------------------

def parse_duration(text):
    """Seconds in a Prometheus-style duration (500ms, 25s, 1h30m), as sonde-common parses it."""
    text = str(text).strip()
    if text == "0":
        return 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}")
    return float(sum(int(n) * units[u] for n, u in parts))


QUANTITY_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "P": 1e15, "E": 1e18,
}


def parse_quantity(value):
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?",
                     str(value).strip())
    if not m:
        raise ValueError(f"invalid quantity {value!r}")
    return float(m.group(1)) * QUANTITY_SUFFIX[m.group(2) or ""]


def selector_matches(selector, labels):
    if not selector:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# --- the render -------------------------------------------------------------------------------

class Render:
    def __init__(self, docs):
        self.docs = [d for d in docs if isinstance(d, dict) and d]

    def of(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def get(self, kind, name):
        for d in self.of(kind):
            if name_of(d) == name:
                return d
        return None

    def workloads(self):
        for d in self.docs:
            if d.get("kind") in POD_KINDS:
                template = (d.get("spec") or {}).get("template") or {}
                yield d, template.get("spec") or {}, (template.get("metadata") or {}).get("labels") or {}


def name_of(doc):
    return (doc.get("metadata") or {}).get("name", "?")


def ref(doc):
    return f"{doc.get('kind')}/{name_of(doc)}"


def binary_of(container):
    image = container.get("image", "")
    if "sonde-agent" in image:
        return "agent"
    if "sonde-collector" in image:
        return "collector"
    return None


class Settings:
    """A container's effective value for each flag: command line, then env, then default."""

    def __init__(self, container, binary):
        self.binary = binary
        self.args = [str(a) for a in (container.get("command") or [])[1:]] + [
            str(a) for a in container.get("args") or []]
        self.env = {e["name"]: e for e in container.get("env") or [] if "name" in e}

    def cli_values(self, flag):
        values, args, i = [], self.args, 0
        takes_value = FLAGS[self.binary].get(flag, (None, True, None))[1]
        while i < len(args):
            arg = args[i]
            if arg == f"--{flag}":
                if takes_value and i + 1 < len(args):
                    values.append(args[i + 1])
                    i += 1
                else:
                    values.append("true")
            elif arg.startswith(f"--{flag}="):
                values.append(arg.split("=", 1)[1])
            i += 1
        return values

    def get(self, flag):
        """(value, source) or (None, None); env values from a ConfigMap give ('<ref>', 'env')."""
        values = self.cli_values(flag)
        if values:
            return values[-1], "args"
        env_name, _, default = FLAGS[self.binary].get(flag, (None, True, None))
        if env_name and env_name in self.env:
            entry = self.env[env_name]
            return entry.get("value", "<ref>"), "env"
        return default, "default" if default is not None else None

    def all(self, flag):
        values = self.cli_values(flag)
        if values:
            return values
        value, _ = self.get(flag)
        if value is None:
            return []
        return [v for v in value.split(",") if v] if flag == "collector" else [value]


def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def listen_port(address):
    try:
        return int(str(address).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def listen_host(address):
    return str(address).rsplit(":", 1)[0].strip("[]")


# --- the checks -------------------------------------------------------------------------------

def check(render, profile=None, namespace=NAMESPACE):
    """Returns (violations, notes)."""
    out, notes = [], []

    def bad(where, message):
        out.append(f"{where}: {message}")

    check_objects(render, namespace, bad, notes)
    for doc, pod, labels in render.workloads():
        check_pod(render, doc, pod, labels, bad)
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            where = f"{ref(doc)}: container {c.get('name')}"
            try:
                check_container(c, where, bad)
                binary = binary_of(c)
                if binary:
                    check_flags(c, binary, where, bad, notes)
                if binary == "collector":
                    check_collector(render, doc, pod, c, where, bad)
                if binary == "agent":
                    check_agent(render, doc, pod, c, where, bad)
            except (ValueError, TypeError) as e:
                bad(where, f"cannot be checked: {e} (give the value literally in args)")
    check_autoscaling(render, bad)
    check_services(render, bad)
    check_network(render, bad)
    if profile:
        check_profile(render, profile, bad)
    return out, notes


def check_objects(render, namespace, bad, notes):
    for doc in render.docs:
        if doc.get("kind") not in CLUSTER_SCOPED:
            ns = (doc.get("metadata") or {}).get("namespace")
            if ns != namespace:
                bad(ref(doc), f"namespace is {ns!r}, expected {namespace!r}")
    for sa in render.of("ServiceAccount"):
        if sa.get("automountServiceAccountToken") is not False:
            bad(ref(sa), "automountServiceAccountToken must be false (no component uses the API)")
    for cm in render.of("ConfigMap"):
        if re.fullmatch(r"sonde-rules(-[a-z0-9]{10})?", name_of(cm)):
            for key, body in (cm.get("data") or {}).items():
                check_rule_file(f"{ref(cm)}: {key}", body, bad)
    text = yaml.safe_dump_all(render.docs)
    for placeholder, what in (("REPLACE-ME", "placeholder tokens in a Secret"),
                              ("192.0.2.", "the placeholder node CIDR 192.0.2.0/24 in a NetworkPolicy")):
        if placeholder in text:
            notes.append(f"replace before production: {what}")


def check_rule_file(where, body, bad):
    """The shape of a Prometheus rule file (promtool checks the expressions, where installed)."""
    try:
        rules = yaml.safe_load(body)
    except yaml.YAMLError as e:
        bad(where, f"not YAML: {e}")
        return
    groups = (rules or {}).get("groups") if isinstance(rules, dict) else None
    if not groups:
        bad(where, "no rule groups (expected `groups:` of a Prometheus rule file)")
        return
    for g in groups:
        if not g.get("name") or not g.get("rules"):
            bad(where, f"group {g.get('name')!r} needs a name and rules")
        for r in g.get("rules") or []:
            if bool(r.get("alert")) == bool(r.get("record")) or not r.get("expr"):
                bad(where, f"rule {r.get('alert') or r.get('record')!r} needs expr and one of alert/record")
            if r.get("for"):
                try:
                    parse_duration(r["for"])
                except ValueError as e:
                    bad(where, f"rule {r.get('alert')!r}: for: {e}")


def check_pod(render, doc, pod, labels, bad):
    where = ref(doc)
    sa = pod.get("serviceAccountName")
    if not sa or sa == "default":
        bad(where, "set serviceAccountName to the component's own ServiceAccount")
    elif render.get("ServiceAccount", sa) is None:
        bad(where, f"serviceAccountName {sa} is not in the render")
    if pod.get("automountServiceAccountToken") is not False:
        bad(where, "automountServiceAccountToken must be false in the pod spec")
    if pod.get("enableServiceLinks") is not False:
        bad(where, "enableServiceLinks must be false (service-link variables look like SONDE_* flags)")
    psc = pod.get("securityContext") or {}
    for c in pod.get("containers") or []:
        csc = c.get("securityContext") or {}
        if not (csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
            bad(f"{where}: container {c.get('name')}", "runAsNonRoot must be true")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad(f"{where}: container {c.get('name')}", "seccompProfile must be RuntimeDefault")
    # Referenced ConfigMaps and Secrets exist under the name they have after kustomize.
    def need(kind, name, optional, what):
        if name and not optional and render.get(kind, name) is None:
            bad(where, f"{what} refers to {kind} {name}, which is not in the render")
    for v in pod.get("volumes") or []:
        if "configMap" in v:
            need("ConfigMap", v["configMap"].get("name"), v["configMap"].get("optional"), f"volume {v['name']}")
        if "secret" in v:
            need("Secret", v["secret"].get("secretName"), v["secret"].get("optional"), f"volume {v['name']}")
    for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        for e in c.get("env") or []:
            src = e.get("valueFrom") or {}
            if "configMapKeyRef" in src:
                r = src["configMapKeyRef"]
                need("ConfigMap", r.get("name"), r.get("optional"), f"env {e['name']}")
                cm = render.get("ConfigMap", r.get("name"))
                if cm is not None and r.get("key") not in (cm.get("data") or {}):
                    bad(where, f"env {e['name']}: ConfigMap {r.get('name')} has no key {r.get('key')}")
            if "secretKeyRef" in src:
                r = src["secretKeyRef"]
                need("Secret", r.get("name"), r.get("optional"), f"env {e['name']}")
        for e in c.get("envFrom") or []:
            if "configMapRef" in e:
                need("ConfigMap", e["configMapRef"].get("name"), e["configMapRef"].get("optional"), "envFrom")
            if "secretRef" in e:
                need("Secret", e["secretRef"].get("name"), e["secretRef"].get("optional"), "envFrom")
    if doc.get("kind") == "StatefulSet":
        spec = doc.get("spec") or {}
        svc = render.get("Service", spec.get("serviceName"))
        if svc is None or (svc.get("spec") or {}).get("clusterIP") != "None":
            bad(where, f"serviceName {spec.get('serviceName')} must name a headless Service of the render")
        mounted = {m.get("name") for c in pod.get("containers") or [] for m in c.get("volumeMounts") or []}
        for claim in spec.get("volumeClaimTemplates") or []:
            cname = name_of(claim)
            if cname not in mounted:
                bad(where, f"volumeClaimTemplate {cname} is not mounted")
            storage = (((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
            if not storage:
                bad(where, f"volumeClaimTemplate {cname} has no storage request")


def check_container(c, where, bad):
    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if not (res.get(kind) or {}).get(resource):
                bad(where, f"no resources.{kind}.{resource}")
    for resource in ("cpu", "memory"):
        req, lim = (res.get("requests") or {}).get(resource), (res.get("limits") or {}).get(resource)
        if req and lim and parse_quantity(req) > parse_quantity(lim):
            bad(where, f"resources.requests.{resource} {req} exceeds the limit {lim}")
    for probe in ("readinessProbe", "livenessProbe"):
        if not c.get(probe):
            bad(where, f"no {probe}")
    sc = c.get("securityContext") or {}
    if sc.get("readOnlyRootFilesystem") is not True:
        bad(where, "securityContext.readOnlyRootFilesystem must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        bad(where, "securityContext.allowPrivilegeEscalation must be false")
    if sc.get("privileged"):
        bad(where, "must not be privileged")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        bad(where, "securityContext.capabilities.drop must include ALL")
    if (sc.get("capabilities") or {}).get("add"):
        bad(where, "must not add capabilities")
    image = c.get("image", "")
    if "/" not in image or ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        bad(where, f"image {image!r} is not a registry/name:tag (is the kustomize images: entry there?)")


def check_flags(c, binary, where, bad, notes):
    settings = Settings(c, binary)
    known = FLAGS[binary]
    args = settings.args
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            if name in ("help", "version"):
                pass
            elif name not in known:
                hint = ""
                for env, flag in FUTURE_ENV[binary].items():
                    if flag == f"--{name}":
                        hint = f" (a future flag: set {env} instead, which today's binary ignores)"
                bad(where, f"unknown flag --{name} for sonde-{binary}: the binary would refuse to start{hint}")
            elif known[name][1] and "=" not in arg:
                i += 1
        i += 1
    real_env = {env: flag for flag, (env, _, _) in known.items() if env}
    for env in settings.env:
        if not env.startswith("SONDE_"):
            continue
        if env in FUTURE_ENV[binary]:
            if env in real_env:
                notes.append(f"{where}: {env} is now a real flag (--{real_env[env]}): update the "
                             "'takes effect when' notes in k8s/")
        elif env not in real_env:
            bad(where, f"{env} is neither a sonde-{binary} flag's variable nor a documented future one")
    for flag in ("interval", "push-timeout", "shutdown-timeout", "drain-timeout", "max-sample-age",
                 "max-sample-future", "query-lookback"):
        if flag in known:
            value, source = settings.get(flag)
            if source in ("args", "env") and value != "<ref>":
                try:
                    parse_duration(value)
                except ValueError as e:
                    bad(where, f"--{flag}: {e}")


def mount_for(c, path):
    for m in c.get("volumeMounts") or []:
        mp = m.get("mountPath", "").rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            return m
    return None


def check_collector(render, doc, pod, c, where, bad):
    s = Settings(c, "collector")
    listen, _ = s.get("listen")
    port = listen_port(listen)
    try:
        loopback = ipaddress.ip_address(listen_host(listen)).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        bad(where, f"--listen {listen} is a loopback address: nothing outside the pod reaches it")
    has_tokens = "token-file" in FLAGS["collector"] and s.get("token-file")[0] is not None
    if not loopback and s.get("insecure-no-auth")[0] is None and not has_tokens:
        bad(where, f"--listen {listen} is not loopback: the collector refuses to start without "
                   "--token-file (or --insecure-no-auth)")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path or port_number(c, get.get("port")) != port:
            bad(where, f"{probe} must be httpGet {path} on the listen port {port}")
    pre = ((c.get("lifecycle") or {}).get("preStop") or {})
    if "exec" in pre:
        bad(where, "preStop exec needs a shell in the image: use the sleep action")
    sleep = (pre.get("sleep") or {}).get("seconds")
    if sleep is None:
        bad(where, "no preStop sleep: endpoints may still route new pushes to a stopping pod")
        sleep = 0
    drain, _ = s.get("drain-timeout")
    drain_s = parse_duration(drain)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need = sleep + drain_s + GRACE_MARGIN_S
    if grace < need:
        bad(where, f"terminationGracePeriodSeconds {grace} < preStop sleep {sleep}s + "
                   f"--drain-timeout {drain} + {GRACE_MARGIN_S}s margin = {need:g}s")
    data_dir, _ = s.get("data-dir")
    mount = mount_for(c, str(data_dir).rstrip("/"))
    if mount is None:
        bad(where, f"--data-dir {data_dir} is not on a volume (the root filesystem is read-only)")
        return
    claims = {name_of(t) for t in (doc.get("spec") or {}).get("volumeClaimTemplates") or []}
    volume = next((v for v in pod.get("volumes") or [] if v.get("name") == mount.get("name")), None)
    if mount.get("name") in claims or (volume or {}).get("persistentVolumeClaim"):
        return
    if volume is not None and "emptyDir" in volume:
        if not (volume.get("emptyDir") or {}).get("sizeLimit"):
            bad(where, f"emptyDir {volume['name']} at --data-dir needs a sizeLimit")
        return
    bad(where, f"--data-dir {data_dir} must be on an emptyDir (with sizeLimit) or a PersistentVolumeClaim")


def check_agent(render, doc, pod, c, where, bad):
    s = Settings(c, "agent")
    if doc.get("kind") != "DaemonSet":
        bad(where, "the agent must run as a DaemonSet (one per node)")
    tolerations = pod.get("tolerations") or []
    if not any(t.get("operator") == "Exists" and not t.get("key") and not t.get("effect") for t in tolerations):
        bad(where, "must tolerate every taint (a toleration with operator: Exists and no key or effect)")
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    host_mounts = {}
    for m in c.get("volumeMounts") or []:
        hp = (volumes.get(m.get("name")) or {}).get("hostPath")
        if hp:
            host_mounts[hp.get("path", "").rstrip("/") or "/"] = m
            if m.get("readOnly") is not True:
                bad(where, f"host path {hp.get('path')} must be mounted readOnly")
    for path in ("/proc", "/sys"):
        if path not in host_mounts:
            bad(where, f"host {path} is not mounted")
    proc_path, _ = s.get("proc-path")
    if "/proc" in host_mounts and str(proc_path).rstrip("/") != host_mounts["/proc"].get("mountPath", "").rstrip("/"):
        bad(where, f"--proc-path {proc_path} is not where host /proc is mounted "
                   f"({host_mounts['/proc'].get('mountPath')}): it would read the container's own /proc")
    if pod.get("hostNetwork") is not True:
        bad(where, "hostNetwork must be true (the agent reads /proc/net/dev of its own network namespace)")
    elif pod.get("dnsPolicy") != "ClusterFirstWithHostNet":
        bad(where, "with hostNetwork, dnsPolicy must be ClusterFirstWithHostNet to resolve Services")
    listen, _ = s.get("http-listen")
    port = listen_port(listen)
    if not listen or listen_host(listen) in ("127.0.0.1", "localhost", "::1"):
        bad(where, f"--http-listen {listen}: the kubelet probes the pod IP, not loopback")
    for probe in ("readinessProbe", "livenessProbe"):
        get = (c.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != "/healthz" or port_number(c, get.get("port")) != port:
            bad(where, f"{probe} must be httpGet /healthz on the --http-listen port {port}")
    hostname = s.get("hostname")
    env = s.env.get("SONDE_HOSTNAME") or {}
    if hostname[0] is None or (hostname[1] == "env" and
                               ((env.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") != "spec.nodeName"):
        bad(where, "SONDE_HOSTNAME must come from the downward API (spec.nodeName)")
    limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
    buffer, _ = s.get("buffer-bytes")
    if limit and buffer is not None and int(buffer) > parse_quantity(limit) / 2:
        bad(where, f"--buffer-bytes {buffer} is more than half the memory limit {limit}: "
                   "a collector outage would get the agent OOM-killed")
    shutdown, _ = s.get("shutdown-timeout")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if shutdown is not None and grace < parse_duration(shutdown) + GRACE_MARGIN_S:
        bad(where, f"terminationGracePeriodSeconds {grace} < --shutdown-timeout {shutdown} + {GRACE_MARGIN_S}s")
    for url in s.all("collector"):
        parts = urlsplit(url)
        host = (parts.hostname or "").split(".")
        svc_name, svc_ns = host[0], host[1] if len(host) > 1 else NAMESPACE
        svc = render.get("Service", svc_name)
        if svc is None or (svc.get("metadata") or {}).get("namespace") != svc_ns:
            bad(where, f"pushes to {url}, but Service {svc_name} in {svc_ns} is not in the render")
            continue
        ports = [p.get("port") for p in (svc.get("spec") or {}).get("ports") or []]
        if (parts.port or 80) not in ports:
            bad(where, f"pushes to {url}, but Service {svc_name} has ports {ports}")


def check_autoscaling(render, bad):
    for hpa in render.of("HorizontalPodAutoscaler"):
        where = ref(hpa)
        if hpa.get("apiVersion") != "autoscaling/v2":
            bad(where, "use autoscaling/v2 (behavior and Pods metrics)")
        spec = hpa.get("spec") or {}
        target = spec.get("scaleTargetRef") or {}
        obj = render.get(target.get("kind"), target.get("name"))
        if obj is None:
            bad(where, f"scaleTargetRef {target.get('kind')}/{target.get('name')} is not in the render")
        elif "replicas" in (obj.get("spec") or {}):
            bad(ref(obj), "has spec.replicas but an autoscaler owns the count (every apply would reset it)")
        metrics = spec.get("metrics") or []
        if not any(m.get("type") == "Resource" and (m.get("resource") or {}).get("name") == "cpu" for m in metrics):
            bad(where, "no CPU Resource metric")
        if not any(m.get("type") == "Pods" and ((m.get("pods") or {}).get("metric") or {}).get("name") == QUEUE_METRIC
                   for m in metrics):
            bad(where, f"no Pods metric {QUEUE_METRIC}")
        behavior = spec.get("behavior") or {}
        up = (behavior.get("scaleUp") or {}).get("stabilizationWindowSeconds", 0)
        down = (behavior.get("scaleDown") or {}).get("stabilizationWindowSeconds")
        if up <= 0:
            bad(where, "behavior.scaleUp.stabilizationWindowSeconds must be > 0, or a flush burst scales up at once")
        if down is None or down < 300:
            bad(where, "behavior.scaleDown.stabilizationWindowSeconds must be >= 300")
        if (spec.get("minReplicas") or 1) < 2:
            bad(where, "minReplicas must be >= 2 (one collector is a single point of failure)")
    deployment = render.get("Deployment", COLLECTOR_DEPLOYMENT)
    if deployment is not None:
        where = ref(deployment)
        labels = ((deployment["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not any((h.get("spec") or {}).get("scaleTargetRef", {}).get("name") == COLLECTOR_DEPLOYMENT
                   and (h.get("spec") or {}).get("scaleTargetRef", {}).get("kind") == "Deployment"
                   for h in render.of("HorizontalPodAutoscaler")):
            bad(where, "no HorizontalPodAutoscaler targets it")
        if not any(selector_matches((p.get("spec") or {}).get("selector"), labels)
                   for p in render.of("PodDisruptionBudget")):
            bad(where, "no PodDisruptionBudget selects its pods")
        affinity = (((deployment["spec"].get("template") or {}).get("spec") or {}).get("affinity") or {})
        terms = (affinity.get("podAntiAffinity") or {}).get("preferredDuringSchedulingIgnoredDuringExecution") or []
        if not any((t.get("podAffinityTerm") or {}).get("topologyKey") == "kubernetes.io/hostname"
                   and selector_matches((t.get("podAffinityTerm") or {}).get("labelSelector"), labels) for t in terms):
            bad(where, "no preferred pod anti-affinity across nodes (topologyKey kubernetes.io/hostname)")
    for pdb in render.of("PodDisruptionBudget"):
        selector = (pdb.get("spec") or {}).get("selector")
        if not any(selector_matches(selector, labels) for _, _, labels in render.workloads()):
            bad(ref(pdb), "its selector matches no pods of the render")


def check_services(render, bad):
    for svc in render.of("Service"):
        spec = svc.get("spec") or {}
        selector = {"matchLabels": spec.get("selector") or {}}
        pods = [(d, p) for d, p, labels in render.workloads() if spec.get("selector") and selector_matches(selector, labels)]
        if not pods:
            bad(ref(svc), "its selector matches no pods of the render")
            continue
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if not any(port_number(c, target) for _, p in pods for c in p.get("containers") or []):
                bad(ref(svc), f"targetPort {target} is no container port of the pods it selects")
    deployment = render.get("Deployment", COLLECTOR_DEPLOYMENT)
    if deployment is not None:
        labels = ((deployment["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not any(selector_matches({"matchLabels": (s.get("spec") or {}).get("selector") or {}}, labels)
                   for s in render.of("Service")):
            bad(ref(deployment), "no Service load-balances its pods")


def check_network(render, bad):
    policies = render.of("NetworkPolicy")
    if not policies:
        bad("render", "no NetworkPolicy")
        return
    if not any((p.get("spec") or {}).get("podSelector") == {} and not (p.get("spec") or {}).get("ingress")
               and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or []) for p in policies):
        bad("render", "no default-deny ingress NetworkPolicy (podSelector {}, no ingress rules)")
    agent_labels = {AGENT_LABEL[0]: AGENT_LABEL[1]}
    # The pods behind every Service that agents push to must admit agents (pods and nodes).
    for ds in render.of("DaemonSet"):
        for c in ds["spec"]["template"]["spec"].get("containers") or []:
            if binary_of(c) != "agent":
                continue
            for url in Settings(c, "agent").all("collector"):
                svc = render.get("Service", (urlsplit(url).hostname or "").split(".")[0])
                if svc is None:
                    continue
                selector = {"matchLabels": (svc.get("spec") or {}).get("selector") or {}}
                for d, pod, labels in render.workloads():
                    if not selector_matches(selector, labels):
                        continue
                    port = next((port_number(cc, p.get("targetPort")) for p in svc["spec"].get("ports") or []
                                 for cc in pod.get("containers") or [] if port_number(cc, p.get("targetPort"))), None)
                    from_pods = from_nodes = False
                    for pol in policies:
                        if not selector_matches((pol.get("spec") or {}).get("podSelector"), labels):
                            continue
                        for rule in (pol.get("spec") or {}).get("ingress") or []:
                            ports = [p.get("port") for p in rule.get("ports") or []]
                            if ports and port not in ports:
                                continue
                            for peer in rule.get("from") or []:
                                if "podSelector" in peer and "namespaceSelector" not in peer and \
                                        selector_matches(peer["podSelector"], agent_labels):
                                    from_pods = True
                                if "ipBlock" in peer:
                                    from_nodes = True
                    if not from_pods:
                        bad(ref(d), f"agents push here, but no NetworkPolicy admits pods labelled "
                                    f"{AGENT_LABEL[0]}={AGENT_LABEL[1]} on port {port}")
                    if not from_nodes:
                        bad(ref(d), f"agents push here from the host network, but no NetworkPolicy admits "
                                    f"an ipBlock (node CIDR) on port {port}")


PROFILES = {
    "base": {
        "require": [("DaemonSet", "sonde-agent"), ("Deployment", "sonde-collector"),
                    ("HorizontalPodAutoscaler", "sonde-collector"), ("PodDisruptionBudget", "sonde-collector"),
                    ("StatefulSet", "sonde-store"), ("StatefulSet", "sonde-alerting"),
                    ("Secret", "sonde-tokens"), ("ConfigMap", "sonde-rules")],
        "forbid": [],
        "agent_pushes_to": "sonde-collector",
    },
    "single-node": {
        "require": [("DaemonSet", "sonde-agent"), ("StatefulSet", "sonde-store"),
                    ("StatefulSet", "sonde-alerting"), ("ConfigMap", "sonde-rules"), ("Secret", "sonde-tokens")],
        "forbid": [("Deployment", "sonde-collector"), ("HorizontalPodAutoscaler", "sonde-collector")],
        "agent_pushes_to": "sonde-store",
    },
    "fleet": {
        "require": [("DaemonSet", "sonde-agent"), ("Deployment", "sonde-collector"),
                    ("HorizontalPodAutoscaler", "sonde-collector"), ("PodDisruptionBudget", "sonde-collector"),
                    ("Secret", "sonde-tokens"), ("ConfigMap", "sonde-remote-write")],
        "forbid": [("StatefulSet", "sonde-store"), ("StatefulSet", "sonde-alerting")],
        "agent_pushes_to": "sonde-collector",
        "collector_env": "SONDE_REMOTE_WRITE",
    },
}


def check_profile(render, profile, bad):
    want = PROFILES[profile]

    def present(kind, name):
        # Generated ConfigMaps and Secrets carry a content-hash suffix.
        return any(name_of(d) == name or re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", name_of(d))
                   for d in render.of(kind))

    for kind, name in want["require"]:
        if not present(kind, name):
            bad(f"profile {profile}", f"{kind}/{name} is missing")
    for kind, name in want["forbid"]:
        if present(kind, name):
            bad(f"profile {profile}", f"{kind}/{name} must not be in this overlay")
    for ds in render.of("DaemonSet"):
        for c in ds["spec"]["template"]["spec"].get("containers") or []:
            if binary_of(c) == "agent":
                hosts = [(urlsplit(u).hostname or "").split(".")[0] for u in Settings(c, "agent").all("collector")]
                if hosts[:1] != [want["agent_pushes_to"]]:
                    bad(f"profile {profile}", f"agents push to {hosts}, expected {want['agent_pushes_to']} first")
    env = want.get("collector_env")
    if env:
        d = render.get("Deployment", COLLECTOR_DEPLOYMENT)
        containers = ((d or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers")) or []
        if not any(env in Settings(c, "collector").env for c in containers):
            bad(f"profile {profile}", f"the collectors do not set {env}")


# --- self-test --------------------------------------------------------------------------------

FIXTURE = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: sonde-agent, namespace: sonde}
automountServiceAccountToken: false
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sonde-collector, namespace: sonde}
automountServiceAccountToken: false
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: sonde-agent, namespace: sonde}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: sonde-agent}}
  template:
    metadata: {labels: {app.kubernetes.io/name: sonde-agent}}
    spec:
      serviceAccountName: sonde-agent
      automountServiceAccountToken: false
      enableServiceLinks: false
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      tolerations: [{operator: Exists}]
      terminationGracePeriodSeconds: 15
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: agent
          image: ghcr.io/sonde/sonde-agent:0.1.0
          args: [--proc-path=/host/proc, --http-listen=0.0.0.0:9471, --buffer-bytes=16777216]
          env:
            - {name: SONDE_HOSTNAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
            - {name: SONDE_COLLECTOR, value: "http://sonde-collector.sonde.svc:9470"}
          ports: [{name: http, containerPort: 9471, hostPort: 9471}]
          readinessProbe: {httpGet: {path: /healthz, port: http}}
          livenessProbe: {httpGet: {path: /healthz, port: 9471}}
          resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {cpu: 100m, memory: 64Mi}}
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
          volumeMounts:
            - {name: proc, mountPath: /host/proc, readOnly: true}
            - {name: sys, mountPath: /host/sys, readOnly: true}
      volumes:
        - {name: proc, hostPath: {path: /proc}}
        - {name: sys, hostPath: {path: /sys}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sonde-collector, namespace: sonde}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: sonde-collector}}
  template:
    metadata: {labels: {app.kubernetes.io/name: sonde-collector}}
    spec:
      serviceAccountName: sonde-collector
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: 40
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector: {matchLabels: {app.kubernetes.io/name: sonde-collector}}
      containers:
        - name: collector
          image: ghcr.io/sonde/sonde-collector:0.1.0
          args: [--listen=0.0.0.0:9470, --insecure-no-auth, --data-dir, /var/lib/sonde, --drain-timeout=25s]
          ports: [{name: http, containerPort: 9470}]
          readinessProbe: {httpGet: {path: /readyz, port: http}}
          livenessProbe: {httpGet: {path: /healthz, port: http}}
          lifecycle: {preStop: {sleep: {seconds: 5}}}
          resources: {requests: {cpu: 500m, memory: 512Mi}, limits: {cpu: "2", memory: 2Gi}}
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
          volumeMounts: [{name: data, mountPath: /var/lib/sonde}]
      volumes: [{name: data, emptyDir: {sizeLimit: 4Gi}}]
---
apiVersion: v1
kind: Service
metadata: {name: sonde-collector, namespace: sonde}
spec:
  selector: {app.kubernetes.io/name: sonde-collector}
  ports: [{name: http, port: 9470, targetPort: http}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: sonde-collector, namespace: sonde}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: sonde-collector}
  minReplicas: 2
  maxReplicas: 10
  metrics:
    - {type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}}
    - type: Pods
      pods: {metric: {name: sonde_collector_queue_fill_ratio}, target: {type: AverageValue, averageValue: 500m}}
  behavior:
    scaleUp: {stabilizationWindowSeconds: 60}
    scaleDown: {stabilizationWindowSeconds: 300}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: sonde-collector, namespace: sonde}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app.kubernetes.io/name: sonde-collector}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: sonde}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingest, namespace: sonde}
spec:
  podSelector: {matchLabels: {app.kubernetes.io/name: sonde-collector}}
  policyTypes: [Ingress]
  ingress:
    - ports: [{port: 9470}]
      from:
        - podSelector: {matchLabels: {app.kubernetes.io/name: sonde-agent}}
        - ipBlock: {cidr: 10.0.0.0/16}
"""


def find(docs, kind, name):
    return next((d for d in docs if d.get("kind") == kind and name_of(d) == name), None)


def container_of(docs, kind, name):
    d = find(docs, kind, name)
    return d["spec"]["template"]["spec"]["containers"][0] if d else None


def mutate_container(kind, name, change):
    def apply(docs):
        c = container_of(docs, kind, name)
        if c is None:
            return False
        change(c)
        return True
    return apply


def mutate_pod(kind, name, change):
    def apply(docs):
        d = find(docs, kind, name)
        if d is None:
            return False
        change(d["spec"]["template"]["spec"])
        return True
    return apply


def mutate_doc(kind, name, change):
    def apply(docs):
        d = find(docs, kind, name)
        if d is None:
            return False
        change(d)
        return True
    return apply


def set_arg(flag, value):
    def change(c):
        c["args"] = [a for a in c.get("args", []) if not str(a).startswith(f"--{flag}")] + [f"--{flag}={value}"]
    return change


def set_env(name, value):
    def change(c):
        c["env"] = [e for e in c.get("env", []) if e.get("name") != name] + [{"name": name, "value": value}]
    return change


# (what is broken, mutation, a phrase the checker must report)
MUTATIONS = [
    ("collector without resources",
     mutate_container("Deployment", "sonde-collector", lambda c: c.pop("resources")),
     "container collector: no resources.requests.cpu"),
    ("agent without memory limit",
     mutate_container("DaemonSet", "sonde-agent", lambda c: c["resources"]["limits"].pop("memory")),
     "container agent: no resources.limits.memory"),
    ("collector grace period shorter than preStop + drain",
     mutate_pod("Deployment", "sonde-collector", lambda p: p.update(terminationGracePeriodSeconds=20)),
     "terminationGracePeriodSeconds 20 < preStop sleep 5s + --drain-timeout 25s + 5s margin = 35s"),
    ("longer drain timeout than the grace period covers",
     mutate_container("Deployment", "sonde-collector", set_arg("drain-timeout", "1m")),
     "--drain-timeout 1m + 5s margin"),
    ("preStop through a shell",
     mutate_container("Deployment", "sonde-collector",
                      lambda c: c.update(lifecycle={"preStop": {"exec": {"command": ["sleep", "5"]}}})),
     "preStop exec needs a shell"),
    ("collector readiness on /healthz",
     mutate_container("Deployment", "sonde-collector",
                      lambda c: c["readinessProbe"]["httpGet"].update(path="/healthz")),
     "readinessProbe must be httpGet /readyz"),
    ("agent without readiness probe",
     mutate_container("DaemonSet", "sonde-agent", lambda c: c.pop("readinessProbe")),
     "container agent: no readinessProbe"),
    ("host /proc mounted read-write",
     mutate_container("DaemonSet", "sonde-agent",
                      lambda c: next(m for m in c["volumeMounts"] if m["name"] == "proc").update(readOnly=False)),
     "host path /proc must be mounted readOnly"),
    ("host /sys not mounted",
     mutate_container("DaemonSet", "sonde-agent",
                      lambda c: c.update(volumeMounts=[m for m in c["volumeMounts"] if m["name"] != "sys"])),
     "host /sys is not mounted"),
    ("agent not tolerating every taint",
     mutate_pod("DaemonSet", "sonde-agent",
                lambda p: p.update(tolerations=[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}])),
     "must tolerate every taint"),
    ("--proc-path left at the container's /proc",
     mutate_container("DaemonSet", "sonde-agent", lambda c: c.update(args=[a for a in c["args"] if "proc-path" not in a])),
     "--proc-path /proc is not where host /proc is mounted"),
    ("agent buffer left at its default (64 MiB), larger than its memory limit allows",
     mutate_container("DaemonSet", "sonde-agent",
                      lambda c: c.update(args=[a for a in c["args"] if "buffer-bytes" not in a])),
     "--buffer-bytes 67108864 is more than half the memory limit"),
    ("ServiceAccount token automounted",
     mutate_doc("ServiceAccount", "sonde-collector", lambda d: d.update(automountServiceAccountToken=True)),
     "ServiceAccount/sonde-collector: automountServiceAccountToken must be false"),
    ("HPA aimed at a missing Deployment",
     mutate_doc("HorizontalPodAutoscaler", "sonde-collector",
                lambda d: d["spec"]["scaleTargetRef"].update(name="sonde-colector")),
     "scaleTargetRef Deployment/sonde-colector is not in the render"),
    ("HPA without the queue metric",
     mutate_doc("HorizontalPodAutoscaler", "sonde-collector",
                lambda d: d["spec"].update(metrics=d["spec"]["metrics"][:1])),
     f"no Pods metric {QUEUE_METRIC}"),
    ("HPA with no scale-down stabilization",
     mutate_doc("HorizontalPodAutoscaler", "sonde-collector", lambda d: d["spec"].pop("behavior")),
     "scaleDown.stabilizationWindowSeconds must be >= 300"),
    ("Deployment with replicas under an HPA",
     mutate_doc("Deployment", "sonde-collector", lambda d: d["spec"].update(replicas=3)),
     "has spec.replicas but an autoscaler owns the count"),
    ("PDB selecting nothing",
     mutate_doc("PodDisruptionBudget", "sonde-collector",
                lambda d: d["spec"].update(selector={"matchLabels": {"app.kubernetes.io/name": "collector"}})),
     "no PodDisruptionBudget selects its pods"),
    ("a flag the binary does not have",
     mutate_container("Deployment", "sonde-collector", set_arg("no-such-flag", "1")),
     "unknown flag --no-such-flag for sonde-collector"),
    ("a misspelt SONDE_ variable",
     mutate_container("Deployment", "sonde-collector", set_env("SONDE_DRAIN_TIMOUT", "25s")),
     "SONDE_DRAIN_TIMOUT is neither"),
    ("non-loopback listen without a token file (or --insecure-no-auth)",
     mutate_container("Deployment", "sonde-collector",
                      lambda c: c.update(args=[a for a in c["args"] if a != "--insecure-no-auth"],
                                         env=[e for e in c.get("env", []) if e.get("name") != "SONDE_TOKEN_FILE"])),
     "refuses to start without --token-file"),
    ("agent pushing to a Service that is not there",
     mutate_container("DaemonSet", "sonde-agent", set_env("SONDE_COLLECTOR", "http://sonde-nowhere.sonde.svc:9470")),
     "Service sonde-nowhere in sonde is not in the render"),
    ("root filesystem writable",
     mutate_container("Deployment", "sonde-collector", lambda c: c["securityContext"].pop("readOnlyRootFilesystem")),
     "readOnlyRootFilesystem must be true"),
    ("emptyDir without sizeLimit",
     mutate_pod("Deployment", "sonde-collector", lambda p: p["volumes"][0].update(emptyDir={})),
     "needs a sizeLimit"),
    ("service links on",
     mutate_pod("Deployment", "sonde-collector", lambda p: p.pop("enableServiceLinks")),
     "enableServiceLinks must be false"),
    ("agents not admitted by the network policy",
     lambda docs: any([d["spec"].update(ingress=[{"from": [{"namespaceSelector": {}}]}])
                       or True for d in docs if d.get("kind") == "NetworkPolicy" and d["spec"].get("ingress")]),
     "no NetworkPolicy admits pods labelled app.kubernetes.io/name=sonde-agent"),
    ("no default deny",
     lambda docs: any([docs.remove(d) or True for d in list(docs)
                       if d.get("kind") == "NetworkPolicy" and not d["spec"].get("ingress")]),
     "no default-deny ingress NetworkPolicy"),
]


def self_test(sources):
    """Every source must pass clean, and every mutation must be caught where it applies."""
    failures, applied = [], {label: 0 for label, _, _ in MUTATIONS}
    for source, docs in sources:
        violations, _ = check(Render(copy.deepcopy(docs)))
        if violations:
            failures.append(f"{source}: the unbroken manifests already fail:\n    " + "\n    ".join(violations))
            continue
        for label, mutation, expected in MUTATIONS:
            broken = copy.deepcopy(docs)
            if not mutation(broken):
                continue
            applied[label] += 1
            violations, _ = check(Render(broken))
            if not any(expected in v for v in violations):
                failures.append(f"{source}: {label}: expected a violation containing {expected!r}, got:\n    "
                                + ("\n    ".join(violations) or "(none)"))
    for label, count in applied.items():
        if count == 0:
            failures.append(f"mutation {label!r} found nothing to break in any source")
    if failures:
        print("check_manifests self-test FAILED:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"check_manifests self-test: {len(MUTATIONS)} deliberate breakages, each reported "
          f"({sum(applied.values())} runs over {len(sources)} manifest set(s))")
    return 0


# --- main -------------------------------------------------------------------------------------

def load(path):
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="rendered manifests (multi-document YAML; - for stdin)")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="what this overlay must and must not contain")
    parser.add_argument("--namespace", default=NAMESPACE)
    parser.add_argument("--label", help="what to call the input in messages (default: the file names)")
    parser.add_argument("--self-test", action="store_true",
                        help="break manifests on purpose (a built-in set, and FILES if given) and "
                             "require every breakage to be reported")
    args = parser.parse_args()
    if args.self_test:
        sources = [("built-in fixture", [d for d in yaml.safe_load_all(FIXTURE) if d])]
        sources += [(f, load(f)) for f in args.files]
        return self_test(sources)
    if not args.files:
        parser.error("give rendered manifests, or --self-test")
    docs = [d for f in args.files for d in load(f)]
    violations, notes = check(Render(docs), args.profile, args.namespace)
    label = (args.label or ", ".join(args.files)) + (f" (profile {args.profile})" if args.profile else "")
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    if violations:
        print(f"check_manifests: {len(violations)} violation(s) in {label}:", file=sys.stderr)
        for v in violations:
            print(f"  - {v}", file=sys.stderr)
        return 1
    print(f"check_manifests: {label}: {len(docs)} objects, no violations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
