//! `sonde-collector replay-rules`: evaluates rule files over a past time range against a query
//! API, step by step as the evaluator would have, and prints the `ALERTS` series each step
//! produced (Prometheus text, one line per alert and step, with its millisecond timestamp).
//!
//! Like vmalert's `-replay.*` mode: it answers "what would these rules have fired on this
//! data", tests rule changes before they go live, and lets the evaluator be compared with
//! another one on the same data. Each group is evaluated at the multiples of its interval
//! within the range (aligned to the epoch, no per-group offset); no notification is sent and
//! recording rules' results are not written anywhere, so a rule that reads another rule's
//! recorded series sees only what the storage already holds.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::evaluate::{Evaluator, EvaluatorOptions, Http, QuerySource, RecordSink, RulesFilter};
use super::rules::{RuleSet, RuleStore, load_file};
use super::{Alert, AlertSink};

/// What to replay.
pub struct Replay {
    pub files: Vec<PathBuf>,
    pub query_url: hyper::Uri,
    pub token: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    /// For groups without an interval.
    pub default_interval: Duration,
    /// Tenant the rules belong to (sent as `X-Scope-OrgID`).
    pub tenant: String,
}

struct Discard;

impl AlertSink for Discard {
    fn send(&self, _: &str, _: Vec<Alert>) {}
}

impl RecordSink for Discard {
    fn record<'a>(
        &'a self,
        _: &'a str,
        _: sonde_common::wire::Batch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async { Ok(()) })
    }
}

/// Escapes a label value for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Runs the replay; returns the `ALERTS` lines (sorted by time, then labels).
pub async fn run(r: Replay) -> Result<String, String> {
    if r.to_ms < r.from_ms {
        return Err("--to is before --from".into());
    }
    let mut set = RuleSet::default();
    for f in &r.files {
        let groups = load_file(f, &r.tenant).map_err(|e| e.to_string())?;
        set.groups.extend(groups.into_iter().map(Arc::new));
    }
    let state = tempfile::Builder::new()
        .prefix("sonde-replay-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory for the rule state: {e}"))?;
    let mut opts = EvaluatorOptions::new(state.path());
    opts.default_interval = r.default_interval;
    let source: Arc<dyn QuerySource> = Arc::new(Http::new(
        &r.query_url,
        r.token.clone(),
        Duration::from_secs(60),
    )?);
    let ev = Evaluator::new(
        RuleStore::from_set(set.clone()),
        source,
        Arc::new(Discard),
        Arc::new(Discard),
        opts,
    );
    // Every (time, group) evaluation, in time order.
    let mut steps: Vec<(i64, usize)> = Vec::new();
    for (i, g) in set.groups.iter().enumerate() {
        let step = g.interval.unwrap_or(r.default_interval).as_millis() as i64;
        if step <= 0 {
            continue;
        }
        let mut t = r.from_ms.div_euclid(step) * step;
        if t < r.from_ms {
            t += step;
        }
        while t <= r.to_ms {
            steps.push((t, i));
            t += step;
        }
    }
    const MAX_STEPS: usize = 1_000_000;
    if steps.len() > MAX_STEPS {
        return Err(format!(
            "the range needs {} evaluations; at most {MAX_STEPS}: shorten it",
            steps.len()
        ));
    }
    steps.sort_unstable();
    let mut lines: Vec<(i64, String)> = Vec::new();
    for (t, i) in steps {
        let g = &set.groups[i];
        let key = g.key();
        ev.evaluate_group(&key, t)
            .await
            .map_err(|e| format!("group {:?} at {t}: {e}", g.name))?;
        let filter = RulesFilter {
            kind: Some("alert".into()),
            group_names: vec![g.name.clone()],
            files: vec![g.file.clone()],
            ..RulesFilter::default()
        };
        let json = ev.rules_json(&r.tenant, &filter);
        for group in json["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                for a in rule["alerts"].as_array().into_iter().flatten() {
                    let state = a["state"].as_str().unwrap_or("");
                    if state != "pending" && state != "firing" {
                        continue;
                    }
                    let mut labels: Vec<(String, String)> = a["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                        .collect();
                    labels.push(("alertstate".into(), state.to_owned()));
                    labels.sort();
                    let mut line = String::from("ALERTS{");
                    for (n, (k, v)) in labels.iter().enumerate() {
                        if n > 0 {
                            line.push(',');
                        }
                        let _ = write!(line, "{k}=\"{}\"", escape(v));
                    }
                    let _ = write!(line, "}} 1 {t}");
                    lines.push((t, line));
                }
            }
        }
    }
    lines.sort();
    let mut out = String::new();
    for (_, l) in lines {
        out.push_str(&l);
        out.push('\n');
    }
    Ok(out)
}
