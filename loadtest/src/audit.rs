//! Audit: after a run, reads back what the storage holds for every simulated host and compares
//! it with what was acknowledged: every (series, timestamp) of an acknowledged request must be
//! stored with exactly the value sent. Works against any Prometheus query API (our collector,
//! VictoriaMetrics, Prometheus); with several query URLs (a fleet of embedded stores) it takes
//! the union.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::drive::Ack;
use crate::generate::Host;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AuditReport {
    /// Samples acknowledged by the target and looked for.
    pub checked_samples: u64,
    /// Acknowledged samples not found in storage.
    pub lost_samples: u64,
    /// Found, but with another value.
    pub wrong_values: u64,
    /// A few examples of what is missing, for the log.
    pub examples: Vec<String>,
    /// Query errors (each makes its host's samples count as lost).
    pub query_errors: u64,
    /// (series, timestamp) pairs one storage returned more than once (must be 0 where the
    /// storage de-duplicates).
    pub duplicate_samples: u64,
}

/// Canonical identity of a series as the query API shows it.
fn key_of_metric(metric: &serde_json::Map<String, Value>) -> String {
    let sorted: BTreeMap<&str, &str> = metric
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
        .collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn key_of_series(s: &sonde_common::model::Series) -> String {
    let mut sorted: BTreeMap<&str, &str> = s
        .labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect();
    sorted.insert("__name__", &s.name);
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn encode_param(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

type Stored = HashMap<String, HashMap<i64, f64>>;

async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    base: &str,
    host: &str,
    at_ms: i64,
    range_s: u64,
) -> Result<(Stored, u64), String> {
    let query = format!("{{host=\"{host}\"}}[{range_s}s]");
    let url = format!(
        "{}/api/v1/query?query={}&time={:.3}",
        base.trim_end_matches('/'),
        encode_param(&query),
        at_ms as f64 / 1000.0
    );
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(60), client.get(uri))
        .await
        .map_err(|_| format!("{url}: timeout"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{url}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
    let mut out = Stored::new();
    let mut duplicates = 0;
    for series in v["data"]["result"].as_array().into_iter().flatten() {
        let Some(metric) = series["metric"].as_object() else {
            continue;
        };
        let entry = out.entry(key_of_metric(metric)).or_default();
        for point in series["values"].as_array().into_iter().flatten() {
            let ts = (point[0].as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
            let value = point[1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            if entry.insert(ts, value).is_some() {
                duplicates += 1;
            }
        }
    }
    Ok((out, duplicates))
}

/// Audits `acked` against the storages behind `query_urls` (Prometheus query API base URLs).
/// `at_ms` is the evaluation time (after the run) and `range_s` covers the whole run.
pub async fn audit(
    query_urls: &[String],
    hosts: Arc<Vec<Host>>,
    acked: &[Ack],
    at_ms: i64,
    range_s: u64,
) -> AuditReport {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut by_host: HashMap<u32, Vec<Ack>> = HashMap::new();
    for a in acked {
        by_host.entry(a.host).or_default().push(*a);
    }
    let mut report = AuditReport::default();
    let mut hosts_sorted: Vec<(u32, Vec<Ack>)> = by_host.into_iter().collect();
    hosts_sorted.sort_by_key(|(h, _)| *h);
    // A few hosts at a time: bounded load on the storage being audited.
    for chunk in hosts_sorted.chunks(8) {
        let mut set = tokio::task::JoinSet::new();
        for (host, acks) in chunk.iter().cloned() {
            let (client, urls, hosts) = (client.clone(), query_urls.to_vec(), hosts.clone());
            set.spawn(async move {
                let h = &hosts[host as usize];
                let mut stored = Stored::new();
                let mut errors = 0;
                let mut duplicate_samples = 0;
                for base in &urls {
                    match fetch(&client, base, &h.name, at_ms, range_s).await {
                        Ok((part, dups)) => {
                            duplicate_samples += dups;
                            for (k, points) in part {
                                stored.entry(k).or_default().extend(points);
                            }
                        }
                        Err(e) => {
                            eprintln!("audit: cannot query {base} for host {}: {e}", h.name);
                            errors += 1;
                        }
                    }
                }
                let mut r = AuditReport {
                    query_errors: errors,
                    duplicate_samples,
                    ..AuditReport::default()
                };
                for ack in acks {
                    for i in 0..h.series_count() {
                        r.checked_samples += 1;
                        let series = h.series(i, ack.tick);
                        let key = key_of_series(&series);
                        match stored.get(&key).and_then(|p| p.get(&ack.timestamp_ms)) {
                            None => {
                                r.lost_samples += 1;
                                if r.examples.len() < 3 {
                                    r.examples.push(format!("{series} @ {}", ack.timestamp_ms));
                                }
                            }
                            Some(v) if *v != h.value(i, ack.tick) => {
                                r.wrong_values += 1;
                                if r.examples.len() < 3 {
                                    r.examples.push(format!(
                                        "{series} @ {}: stored {v}, sent {}",
                                        ack.timestamp_ms,
                                        h.value(i, ack.tick)
                                    ));
                                }
                            }
                            Some(_) => {}
                        }
                    }
                }
                r
            });
        }
        while let Some(Ok(r)) = set.join_next().await {
            report.checked_samples += r.checked_samples;
            report.lost_samples += r.lost_samples;
            report.wrong_values += r.wrong_values;
            report.query_errors += r.query_errors;
            report.duplicate_samples += r.duplicate_samples;
            for e in r.examples {
                if report.examples.len() < 5 {
                    report.examples.push(e);
                }
            }
        }
    }
    report
}
