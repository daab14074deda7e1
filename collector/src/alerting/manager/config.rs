//! Alertmanager's configuration format, the subset Sonde implements: `global.resolve_timeout`,
//! the `route` tree, `receivers` with `webhook_configs` (and Sonde's `alertmanager_configs`,
//! which forwards to a real Alertmanager's `POST /api/v2/alerts`), and `inhibit_rules`.
//!
//! Parsing is two steps: serde reads the raw shape, refusing unknown fields (so a typo or an
//! unsupported feature is an error, never silently ignored); [`validate`] turns it into the
//! checked [`AlertManagerConfig`] the manager runs on (compiled matchers, parsed durations,
//! inherited route settings, receivers that exist).

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

use super::matchers::{self, MatchOp, Matcher};
use sonde_common::duration::parse_duration;

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read alert manager config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid alert manager config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct AlertManagerConfig {
    /// For alerts posted without `endsAt`: how long they stay firing unless refreshed.
    pub resolve_timeout: Duration,
    pub route: Route,
    pub receivers: Vec<Receiver>,
    pub inhibit_rules: Vec<InhibitRule>,
    /// The YAML as given (shown by `/api/v2/status`).
    pub original: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// `['...']`: every label, one group per alert.
    All,
    Labels(Vec<String>),
}

/// One node of the route tree, settings already inherited from its parents.
#[derive(Debug, Clone)]
pub struct Route {
    /// Identity within the tree (Alertmanager's route key, e.g. `{}/{severity="critical"}`).
    pub key: String,
    pub receiver: String,
    pub group_by: GroupBy,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    pub matchers: Vec<Matcher>,
    pub continue_matching: bool,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrationKind {
    /// Alertmanager's webhook JSON, POSTed to the URL.
    Webhook,
    /// Postable alerts, POSTed to `<url>/api/v2/alerts` of a real Alertmanager.
    Alertmanager,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integration {
    pub kind: IntegrationKind,
    /// The URL requests go to (for [`IntegrationKind::Alertmanager`], already with
    /// `/api/v2/alerts`).
    pub url: String,
    pub send_resolved: bool,
    /// Most alerts in one notification (0: no limit).
    pub max_alerts: usize,
}

#[derive(Debug, Clone)]
pub struct Receiver {
    pub name: String,
    pub integrations: Vec<Integration>,
}

#[derive(Debug, Clone)]
pub struct InhibitRule {
    pub source: Vec<Matcher>,
    pub target: Vec<Matcher>,
    pub equal: Vec<String>,
}

/// The receiver of the configuration used when there is no file: it notifies nobody.
pub const DEFAULT_RECEIVER: &str = "default";

impl Route {
    /// Alertmanager's defaults for the root route: no grouping, `group_wait` 30s,
    /// `group_interval` 5m, `repeat_interval` 4h; no key or receiver yet.
    fn defaults() -> Route {
        Route {
            key: String::new(),
            receiver: String::new(),
            group_by: GroupBy::Labels(Vec::new()),
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(300),
            repeat_interval: Duration::from_secs(4 * 3600),
            matchers: Vec::new(),
            continue_matching: false,
            routes: Vec::new(),
        }
    }
}

impl AlertManagerConfig {
    /// No file: every alert lands in one route whose receiver notifies nobody, so alerts are
    /// still kept, grouped and listed.
    pub fn empty() -> Self {
        Self {
            resolve_timeout: Duration::from_secs(300),
            route: Route {
                key: "{}".into(),
                receiver: DEFAULT_RECEIVER.into(),
                ..Route::defaults()
            },
            receivers: vec![Receiver {
                name: DEFAULT_RECEIVER.into(),
                integrations: Vec::new(),
            }],
            inhibit_rules: Vec::new(),
            original: String::new(),
        }
    }

    pub fn receiver(&self, name: &str) -> Option<&Receiver> {
        self.receivers.iter().find(|r| r.name == name)
    }

    /// "2 receivers, 3 routes, 1 inhibit rule".
    pub fn summary(&self) -> String {
        fn count(r: &Route) -> usize {
            1 + r.routes.iter().map(count).sum::<usize>()
        }
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}, {}, {}",
            plural(self.receivers.len(), "receiver"),
            plural(count(&self.route), "route"),
            plural(self.inhibit_rules.len(), "inhibit rule")
        )
    }
}

// ---- the raw shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    global: Option<RawGlobal>,
    #[serde(default)]
    route: Option<RawRoute>,
    #[serde(default)]
    receivers: Vec<RawReceiver>,
    #[serde(default)]
    inhibit_rules: Vec<RawInhibit>,
    #[serde(default)]
    templates: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    #[serde(default)]
    resolve_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    receiver: Option<String>,
    #[serde(default)]
    group_by: Option<Vec<String>>,
    #[serde(default)]
    group_wait: Option<String>,
    #[serde(default)]
    group_interval: Option<String>,
    #[serde(default)]
    repeat_interval: Option<String>,
    #[serde(default)]
    matchers: Vec<String>,
    #[serde(default, rename = "match")]
    match_eq: BTreeMap<String, String>,
    #[serde(default)]
    match_re: BTreeMap<String, String>,
    #[serde(default, rename = "continue")]
    continue_matching: bool,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

/// Receiver kinds Alertmanager has and Sonde does not: named so the error says what is
/// unsupported instead of "unknown field".
const UNSUPPORTED_RECEIVERS: &[&str] = &[
    "email_configs",
    "slack_configs",
    "pagerduty_configs",
    "opsgenie_configs",
    "pushover_configs",
    "victorops_configs",
    "wechat_configs",
    "telegram_configs",
    "sns_configs",
    "webex_configs",
    "discord_configs",
    "msteams_configs",
    "msteamsv2_configs",
    "jira_configs",
    "rocketchat_configs",
    "incidentio_configs",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceiver {
    name: String,
    #[serde(default)]
    webhook_configs: Vec<RawWebhook>,
    #[serde(default)]
    alertmanager_configs: Vec<RawWebhook>,
    // Known-but-unsupported kinds, read only to be refused by name.
    #[serde(default)]
    email_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    slack_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pagerduty_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    opsgenie_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pushover_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    victorops_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    wechat_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    telegram_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    sns_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    webex_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    discord_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    msteams_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    msteamsv2_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    jira_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    rocketchat_configs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    incidentio_configs: Option<serde::de::IgnoredAny>,
}

impl RawReceiver {
    /// The first unsupported receiver kind present, by name.
    fn unsupported(&self) -> Option<&'static str> {
        let present = [
            self.email_configs.is_some(),
            self.slack_configs.is_some(),
            self.pagerduty_configs.is_some(),
            self.opsgenie_configs.is_some(),
            self.pushover_configs.is_some(),
            self.victorops_configs.is_some(),
            self.wechat_configs.is_some(),
            self.telegram_configs.is_some(),
            self.sns_configs.is_some(),
            self.webex_configs.is_some(),
            self.discord_configs.is_some(),
            self.msteams_configs.is_some(),
            self.msteamsv2_configs.is_some(),
            self.jira_configs.is_some(),
            self.rocketchat_configs.is_some(),
            self.incidentio_configs.is_some(),
        ];
        present
            .iter()
            .position(|p| *p)
            .and_then(|i| UNSUPPORTED_RECEIVERS.get(i).copied())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    #[serde(default)]
    send_resolved: Option<bool>,
    #[serde(default)]
    max_alerts: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInhibit {
    #[serde(default)]
    source_matchers: Vec<String>,
    #[serde(default)]
    target_matchers: Vec<String>,
    #[serde(default)]
    source_match: BTreeMap<String, String>,
    #[serde(default)]
    source_match_re: BTreeMap<String, String>,
    #[serde(default)]
    target_match: BTreeMap<String, String>,
    #[serde(default)]
    target_match_re: BTreeMap<String, String>,
    #[serde(default)]
    equal: Vec<String>,
}

// ---- validation ----

/// Parses and validates configuration text; errors are plain messages (the caller adds the
/// file name).
pub fn parse(text: &str) -> Result<AlertManagerConfig, String> {
    if text.trim().is_empty() {
        return Err("the file is empty (it needs at least a route and a receiver)".into());
    }
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    validate(raw, text)
}

fn validate(raw: RawConfig, text: &str) -> Result<AlertManagerConfig, String> {
    if !raw.templates.is_empty() {
        return Err("templates: notification templates are not supported (the webhook payload is Alertmanager's JSON, rendered by the receiver)".into());
    }
    let resolve_timeout = match raw.global.and_then(|g| g.resolve_timeout) {
        Some(s) => duration("global.resolve_timeout", &s)?,
        None => Duration::from_secs(300),
    };
    let mut receivers = Vec::new();
    let mut names = BTreeSet::new();
    for r in raw.receivers {
        if r.name.is_empty() {
            return Err("receivers: a receiver has an empty name".into());
        }
        if let Some(kind) = r.unsupported() {
            return Err(format!(
                "receiver {:?}: {kind} are not supported (Sonde sends webhook_configs and alertmanager_configs)",
                r.name
            ));
        }
        if !names.insert(r.name.clone()) {
            return Err(format!("receivers: {:?} is defined twice", r.name));
        }
        let mut integrations = Vec::new();
        for w in r.webhook_configs {
            integrations.push(Integration {
                kind: IntegrationKind::Webhook,
                url: http_url(&r.name, "webhook_configs", &w.url)?,
                send_resolved: w.send_resolved.unwrap_or(true),
                max_alerts: w.max_alerts.unwrap_or(0),
            });
        }
        for a in r.alertmanager_configs {
            let base = http_url(&r.name, "alertmanager_configs", &a.url)?;
            integrations.push(Integration {
                kind: IntegrationKind::Alertmanager,
                url: format!("{}/api/v2/alerts", base.trim_end_matches('/')),
                send_resolved: a.send_resolved.unwrap_or(true),
                max_alerts: a.max_alerts.unwrap_or(0),
            });
        }
        receivers.push(Receiver {
            name: r.name,
            integrations,
        });
    }
    let raw_route = raw
        .route
        .ok_or("route: missing (the root route with its receiver is required)")?;
    if raw_route.receiver.as_deref().is_none_or(str::is_empty) {
        return Err("route: the root route has no receiver".into());
    }
    if !raw_route.matchers.is_empty()
        || !raw_route.match_eq.is_empty()
        || !raw_route.match_re.is_empty()
    {
        return Err("route: the root route must not have matchers (it matches every alert)".into());
    }
    let route = build_route(raw_route, &Route::defaults(), "route", None, &names)?;
    let mut inhibit_rules = Vec::new();
    for (i, r) in raw.inhibit_rules.into_iter().enumerate() {
        let at = format!("inhibit_rules[{i}]");
        let source =
            collect_matchers(&at, &r.source_matchers, &r.source_match, &r.source_match_re)?;
        let target =
            collect_matchers(&at, &r.target_matchers, &r.target_match, &r.target_match_re)?;
        inhibit_rules.push(InhibitRule {
            source,
            target,
            equal: r.equal,
        });
    }
    Ok(AlertManagerConfig {
        resolve_timeout,
        route,
        receivers,
        inhibit_rules,
        original: text.to_owned(),
    })
}

fn duration(at: &str, s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| format!("{at}: {e}"))
}

fn http_url(receiver: &str, kind: &str, s: &str) -> Result<String, String> {
    let u = url::Url::parse(s)
        .map_err(|e| format!("receiver {receiver:?}: {kind}: invalid url {s:?}: {e}"))?;
    if u.scheme() != "http" {
        return Err(format!(
            "receiver {receiver:?}: {kind}: url {s:?}: only http:// is supported"
        ));
    }
    if u.host().is_none() {
        return Err(format!(
            "receiver {receiver:?}: {kind}: url {s:?} has no host"
        ));
    }
    Ok(s.to_owned())
}

fn collect_matchers(
    at: &str,
    strings: &[String],
    eq: &BTreeMap<String, String>,
    re: &BTreeMap<String, String>,
) -> Result<Vec<Matcher>, String> {
    let mut out = Vec::new();
    for s in strings {
        out.extend(matchers::parse_list(s).map_err(|e| format!("{at}: {e}"))?);
    }
    for (k, v) in eq {
        out.push(Matcher::new(k, MatchOp::Equal, v).map_err(|e| format!("{at}: {e}"))?);
    }
    for (k, v) in re {
        out.push(Matcher::new(k, MatchOp::Regex, v).map_err(|e| format!("{at}: {e}"))?);
    }
    Ok(out)
}

fn build_route(
    raw: RawRoute,
    parent: &Route,
    at: &str,
    parent_key: Option<&str>,
    receivers: &BTreeSet<String>,
) -> Result<Route, String> {
    let matchers = collect_matchers(at, &raw.matchers, &raw.match_eq, &raw.match_re)?;
    let receiver = raw.receiver.unwrap_or_else(|| parent.receiver.clone());
    if !receivers.contains(&receiver) {
        return Err(format!(
            "{at}: receiver {receiver:?} is not defined in receivers"
        ));
    }
    let group_by = match raw.group_by {
        None => parent.group_by.clone(),
        Some(v) if v.iter().any(|l| l == "...") => {
            if v.len() > 1 {
                return Err(format!(
                    "{at}: group_by: '...' must be the only entry when given"
                ));
            }
            GroupBy::All
        }
        Some(mut v) => {
            v.sort();
            v.dedup();
            GroupBy::Labels(v)
        }
    };
    let pick = |v: Option<String>, name: &str, inherited: Duration| match v {
        Some(s) => duration(&format!("{at}.{name}"), &s),
        None => Ok(inherited),
    };
    let group_wait = pick(raw.group_wait, "group_wait", parent.group_wait)?;
    let group_interval = pick(raw.group_interval, "group_interval", parent.group_interval)?;
    let repeat_interval = pick(
        raw.repeat_interval,
        "repeat_interval",
        parent.repeat_interval,
    )?;
    if group_interval.is_zero() || repeat_interval.is_zero() {
        return Err(format!(
            "{at}: group_interval and repeat_interval must be above zero"
        ));
    }
    let key = match parent_key {
        None => "{}".to_owned(),
        Some(p) => format!("{p}/{}", matchers::list_string(&matchers)),
    };
    let mut node = Route {
        key,
        receiver,
        group_by,
        group_wait,
        group_interval,
        repeat_interval,
        matchers,
        continue_matching: raw.continue_matching,
        routes: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    for (i, child) in raw.routes.into_iter().enumerate() {
        let mut built = build_route(
            child,
            &node,
            &format!("{at}.routes[{i}]"),
            Some(&node.key),
            receivers,
        )?;
        // Siblings with identical matchers still need distinct keys.
        if !seen.insert(built.key.clone()) {
            built.key = format!("{}/{i}", built.key);
        }
        node.routes.push(built);
    }
    Ok(node)
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<AlertManagerConfig, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            message: format!("the file is larger than {MAX_CONFIG_BYTES} bytes"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse(&text).map_err(|message| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    })
}

/// Checks one configuration file offline; a one-line summary on success.
pub fn check_file(path: &Path) -> Result<String, ConfigError> {
    load(path).map(|c| c.summary())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Alertmanager's configuration docs, reduced to webhook receivers.
    const DOCS_EXAMPLE: &str = r#"
global:
  resolve_timeout: 5m

route:
  receiver: 'team-X-mails'
  group_by: ['alertname', 'cluster', 'service']
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 3h
  routes:
    - matchers:
        - service=~"foo1|foo2|baz"
      receiver: team-X-mails
      routes:
        - matchers:
            - severity="critical"
          receiver: team-X-pager
    - matchers:
        - service="files"
      receiver: team-Y-mails
      routes:
        - matchers:
            - severity="critical"
          receiver: team-Y-pager
    - match_re:
        service: database
      receiver: team-DB-pager
      group_by: [alertname, cluster, database]
      routes:
        - match:
            owner: team-X
          receiver: team-X-pager
          continue: true
        - matchers: [owner="team-Y"]
          receiver: team-Y-pager

inhibit_rules:
  - source_matchers: [severity="critical"]
    target_matchers: [severity="warning"]
    equal: [alertname, cluster, service]

receivers:
  - name: 'team-X-mails'
    webhook_configs:
      - url: 'http://127.0.0.1:5001/x'
  - name: 'team-X-pager'
    webhook_configs:
      - url: 'http://127.0.0.1:5001/xp'
        send_resolved: false
        max_alerts: 10
  - name: 'team-Y-mails'
    webhook_configs:
      - url: 'http://127.0.0.1:5001/y'
  - name: 'team-Y-pager'
    alertmanager_configs:
      - url: 'http://127.0.0.1:9093'
  - name: 'team-DB-pager'
    webhook_configs:
      - url: 'http://127.0.0.1:5001/db'
"#;

    #[test]
    fn the_docs_example_parses_with_inheritance() {
        let c = parse(DOCS_EXAMPLE).expect("valid");
        assert_eq!(c.summary(), "5 receivers, 8 routes, 1 inhibit rule");
        assert_eq!(c.resolve_timeout, Duration::from_secs(300));
        let db = &c.route.routes[2];
        assert_eq!(db.repeat_interval, Duration::from_secs(3 * 3600));
        assert_eq!(
            db.group_by,
            GroupBy::Labels(vec![
                "alertname".into(),
                "cluster".into(),
                "database".into()
            ])
        );
        assert!(db.routes[0].continue_matching);
        assert_eq!(db.routes[0].group_wait, Duration::from_secs(30));
        assert_eq!(
            c.route.routes[0].routes[0].key,
            r#"{}/{service=~"foo1|foo2|baz"}/{severity="critical"}"#
        );
        let pager = c.receiver("team-X-pager").expect("receiver");
        assert!(!pager.integrations[0].send_resolved);
        assert_eq!(pager.integrations[0].max_alerts, 10);
        let am = c.receiver("team-Y-pager").expect("receiver");
        assert_eq!(
            am.integrations[0].url,
            "http://127.0.0.1:9093/api/v2/alerts"
        );
        assert_eq!(am.integrations[0].kind, IntegrationKind::Alertmanager);
        assert_eq!(c.inhibit_rules[0].equal.len(), 3);
    }

    #[test]
    fn unknown_fields_and_receivers_are_refused_by_name() {
        let bad_field = "route:\n  receiver: a\n  group_wiat: 1s\nreceivers:\n  - name: a\n";
        let e = parse(bad_field).expect_err("typo");
        assert!(e.contains("group_wiat"), "{e}");
        assert!(e.contains("line") || e.contains(":3"), "no position in {e}");

        let email =
            "route:\n  receiver: a\nreceivers:\n  - name: a\n    email_configs:\n      - to: x@y\n";
        let e = parse(email).expect_err("email");
        assert!(e.contains("email_configs are not supported"), "{e}");

        let tpl = "templates: ['/x/*.tmpl']\nroute:\n  receiver: a\nreceivers:\n  - name: a\n";
        assert!(parse(tpl).expect_err("templates").contains("templates"));
    }

    #[test]
    fn references_and_durations_are_validated() {
        let missing =
            "route:\n  receiver: a\n  routes:\n    - receiver: b\nreceivers:\n  - name: a\n";
        let e = parse(missing).expect_err("missing receiver");
        assert!(e.contains("\"b\" is not defined"), "{e}");
        let no_recv = "route:\n  group_wait: 1s\nreceivers:\n  - name: a\n";
        assert!(parse(no_recv).expect_err("root").contains("no receiver"));
        let bad_dur = "route:\n  receiver: a\n  group_wait: soon\nreceivers:\n  - name: a\n";
        assert!(parse(bad_dur).expect_err("dur").contains("group_wait"));
        let bad_m = "route:\n  receiver: a\n  routes:\n    - matchers: ['a=~\"(\"']\nreceivers:\n  - name: a\n";
        assert!(parse(bad_m).expect_err("regex").contains("invalid regex"));
        let https = "route:\n  receiver: a\nreceivers:\n  - name: a\n    webhook_configs:\n      - url: https://x\n";
        assert!(parse(https).expect_err("https").contains("only http://"));
    }

    #[test]
    fn check_file_summarises_or_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("am.yml");
        std::fs::write(&p, DOCS_EXAMPLE).expect("write");
        assert_eq!(
            check_file(&p).expect("ok"),
            "5 receivers, 8 routes, 1 inhibit rule"
        );
        std::fs::write(&p, "route: [").expect("write");
        let e = check_file(&p).expect_err("bad").to_string();
        assert!(e.contains("am.yml"), "{e}");
        assert!(check_file(&dir.path().join("none.yml")).is_err());
    }
}
