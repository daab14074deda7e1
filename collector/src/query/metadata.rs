//! `/api/v1/metadata`: each metric family's type, as the senders declared it.
//!
//! Kept in memory per tenant, learned from every accepted batch (a [`SampleTap`] after the
//! route), as Prometheus learns it from scrapes: after a restart it fills again with the next
//! pushes. Bounded per tenant ([`MAX_FAMILIES`]); past it new families are not recorded. Our
//! wire format carries no help text or unit, so those are empty.

use serde_json::{Map, Value, json};
use sonde_common::model::MetricKind;
use sonde_common::wire::Batch;
use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use crate::route::SampleTap;

/// Most metric families remembered per tenant.
pub const MAX_FAMILIES: usize = 100_000;

type Hasher = foldhash::fast::RandomState;

/// Families by tenant. Read for every accepted batch: hashed with foldhash, seeded per process.
#[derive(Default)]
pub struct Metadata {
    tenants: RwLock<HashMap<String, HashMap<String, MetricKind, Hasher>, Hasher>>,
}

/// The family a series belongs to: histograms and summaries drop their suffix.
fn family(name: &str, kind: MetricKind) -> &str {
    let suffixes: &[&str] = match kind {
        MetricKind::Histogram => &["_bucket", "_sum", "_count"],
        MetricKind::Summary => &["_sum", "_count"],
        _ => &[],
    };
    suffixes
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

impl SampleTap for Metadata {
    /// Names and kinds are all it learns, and a known shape has the same ones.
    fn wants_known_shapes(&self) -> bool {
        false
    }

    fn offer(&self, tenant: &str, batch: &Batch) {
        let mut new: Vec<(String, MetricKind)> = Vec::new();
        if let Ok(all) = self.tenants.read() {
            let known = all.get(tenant);
            for s in batch.iter() {
                let kind = s.kind();
                if kind == MetricKind::Unknown {
                    continue;
                }
                let f = family(s.name(), kind);
                if known.and_then(|k| k.get(f)) != Some(&kind) && !new.iter().any(|(n, _)| n == f) {
                    new.push((f.to_owned(), kind));
                }
            }
        }
        if new.is_empty() {
            return;
        }
        if let Ok(mut all) = self.tenants.write() {
            let known = all.entry(tenant.to_owned()).or_default();
            for (f, kind) in new {
                if known.len() < MAX_FAMILIES || known.contains_key(&f) {
                    known.insert(f, kind);
                }
            }
        }
    }
}

impl Metadata {
    /// The `data` of Prometheus's answer: `{family: [{type, help, unit}]}`, optionally only
    /// `metric`, at most `limit` families (sorted by name).
    pub fn json(&self, tenant: &str, metric: Option<&str>, limit: Option<usize>) -> Value {
        let Ok(all) = self.tenants.read() else {
            return json!({});
        };
        let Some(known) = all.get(tenant) else {
            return json!({});
        };
        let sorted: BTreeMap<&String, &MetricKind> = known
            .iter()
            .filter(|(name, _)| metric.is_none_or(|m| m == name.as_str()))
            .collect();
        let mut out = Map::new();
        for (name, kind) in sorted.into_iter().take(limit.unwrap_or(usize::MAX)) {
            out.insert(
                name.clone(),
                json!([{"type": kind.as_str(), "help": "", "unit": ""}]),
            );
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::model::{Sample, Series};
    use sonde_common::wire::{BatchBuilder, BatchHeader};

    fn batch(series: &[(&str, MetricKind)]) -> Batch {
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "t".into(),
            sequence: 1,
            sent_at_ms: 1,
        });
        for (name, kind) in series {
            b.push(
                &Series::new(*name, [("a", "b")]),
                *kind,
                None,
                vec![Sample::new(1, 1.0)],
            );
        }
        b.build()
    }

    #[test]
    fn families_are_learned_per_tenant_with_their_type() {
        let m = Metadata::default();
        m.offer(
            "acme",
            &batch(&[
                ("http_requests_total", MetricKind::Counter),
                ("latency_seconds_bucket", MetricKind::Histogram),
                ("latency_seconds_sum", MetricKind::Histogram),
                ("temp", MetricKind::Gauge),
                ("mystery", MetricKind::Unknown),
            ]),
        );
        assert_eq!(
            m.json("acme", None, None),
            json!({
                "http_requests_total": [{"type": "counter", "help": "", "unit": ""}],
                "latency_seconds": [{"type": "histogram", "help": "", "unit": ""}],
                "temp": [{"type": "gauge", "help": "", "unit": ""}],
            })
        );
        assert_eq!(m.json("globex", None, None), json!({}));
        assert_eq!(
            m.json("acme", Some("temp"), None),
            json!({"temp": [{"type": "gauge", "help": "", "unit": ""}]})
        );
        assert_eq!(m.json("acme", None, Some(1)).as_object().unwrap().len(), 1);
        // A family whose type changes is updated.
        m.offer("acme", &batch(&[("temp", MetricKind::Counter)]));
        assert_eq!(
            m.json("acme", Some("temp"), None)["temp"][0]["type"],
            "counter"
        );
    }
}
