//! `GET /`: a small self-refreshing HTML page listing the active alerts and every series the
//! store holds with its latest value, so a newcomer sees their host's metrics and alerts
//! without setting up Grafana.

use sonde_common::telemetry::format_value;
use std::fmt::Write as _;

use crate::query::eval::{Reader, Selector, eval_vector};
use crate::store::Matcher;

/// Most series listed; the page says when there are more.
const MAX_ROWS: usize = 2000;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `alerts`: the `data` of `/api/v1/alerts` (`None` when no rules run).
pub fn render(
    store: &Reader<'_>,
    now_ms: i64,
    lookback_ms: i64,
    alerts: Option<&serde_json::Value>,
) -> String {
    let selector = Selector {
        matchers: vec![Matcher::regex("__name__", ".+").expect("static regex is valid")],
        offset_ms: 0,
        at: None,
    };
    let result = eval_vector(store, &selector, &[now_ms], now_ms, now_ms, lookback_ms);
    let stats = store.store.stats();
    let mut html = String::with_capacity(64 * 1024);
    html.push_str(concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">",
        "<title>Sonde</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}",
        "td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}td.v{text-align:right;font-family:monospace}",
        "code{color:#555}</style></head><body><h1>Sonde</h1>",
    ));
    let _ = write!(
        html,
        "<p>{} series stored, {} samples in memory. Latest value of each series (refreshes every 5 s). \
         Query API: <code>/api/v1/query?query=node_load1</code>; self-metrics: <a href=\"/metrics\">/metrics</a>.</p>",
        stats.series, stats.samples_in_head
    );
    if let Some(alerts) = alerts {
        let list = alerts["alerts"].as_array().cloned().unwrap_or_default();
        let _ = write!(
            html,
            "<h2>Alerts</h2><p>{} active (<a href=\"/api/v1/alerts\">/api/v1/alerts</a>, rules: <a href=\"/api/v1/rules\">/api/v1/rules</a>, alert manager: <a href=\"/api/v2/alerts\">/api/v2/alerts</a>).</p>",
            list.len()
        );
        if !list.is_empty() {
            html.push_str(
                "<table><tr><th>state</th><th>alert</th><th>since</th><th>summary</th></tr>",
            );
            for a in &list {
                let labels: Vec<String> = a["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
                    .collect();
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(a["state"].as_str().unwrap_or("")),
                    escape(&format!("{{{}}}", labels.join(", "))),
                    escape(a["activeAt"].as_str().unwrap_or("")),
                    escape(a["annotations"]["summary"].as_str().unwrap_or("")),
                );
            }
            html.push_str("</table>");
        }
        html.push_str("<h2>Series</h2>");
    }
    html.push_str("<table><tr><th>series</th><th>value</th></tr>");
    for sp in result.iter().take(MAX_ROWS) {
        let value = sp
            .points
            .first()
            .map(|p| format_value(p.value))
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"v\">{}</td></tr>",
            escape(&sp.series.to_string()),
            escape(&value)
        );
    }
    html.push_str("</table>");
    if result.len() > MAX_ROWS {
        let _ = write!(
            html,
            "<p>… and {} more series.</p>",
            result.len() - MAX_ROWS
        );
    }
    if result.is_empty() {
        html.push_str("<p>No samples in the last 5 minutes yet: start <code>sonde-agent</code> pointing at this collector.</p>");
    }
    html.push_str("</body></html>\n");
    html
}
