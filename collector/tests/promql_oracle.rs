//! PromQL oracle: the same deterministic data is remote-written into a real Prometheus
//! (Debian's `/usr/bin/prometheus`) and into `sonde-collector`, then every query of the suite is
//! run against both, as instant queries at several times and as range queries, and the answers
//! must agree: same status and error type, same result type, the same label sets, values within
//! a relative 1e-9 (NaN equal to NaN). Order is compared only where Prometheus defines it
//! (`sort`, `sort_desc`, `topk`, `bottomk`). A few single-series answers are compared byte for
//! byte (the JSON shapes Grafana reads). Constructs outside the supported subset must be refused
//! with 400 `bad_data` naming them.

mod support;

use serde_json::Value;
use sonde_common::model::now_ms;
use sonde_common::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Proc, encode, free_port, http_get, http_request, wait_until};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const STEP_MS: i64 = 15_000;
const POINTS: i64 = 200;
const MIN: i64 = 60_000;

fn series(name: &str, labels: &[(&str, &str)], samples: Vec<(i64, f64)>) -> TimeSeries {
    let mut all: Vec<(&str, &str)> = vec![("__name__", name)];
    all.extend_from_slice(labels);
    all.sort();
    TimeSeries {
        labels: all
            .iter()
            .map(|&(n, v)| Label {
                name: n.into(),
                value: v.into(),
            })
            .collect(),
        samples: samples
            .into_iter()
            .map(|(timestamp, value)| Sample { timestamp, value })
            .collect(),
    }
}

/// Prometheus's stale marker.
fn stale() -> f64 {
    f64::from_bits(0x7ff0_0000_0000_0002)
}

/// The data set: counters (with resets), gauges, histograms, info series, a series that stops
/// with a stale marker, one that starts late and a sparse one with gaps beyond the lookback.
/// `t0` is the first sample's time; samples every 15 s (some series shifted off the grid).
fn data(t0: i64) -> WriteRequest {
    let ts = |i: i64, shift: i64| t0 + i * STEP_MS + shift;
    let mut out = Vec::new();
    // Counters.
    let counter = |inc: &dyn Fn(i64) -> f64, resets: &[i64], shift: i64| {
        let mut v = 0.0;
        (0..POINTS)
            .map(|i| {
                if resets.contains(&i) {
                    v = inc(i) / 2.0;
                } else {
                    v += inc(i);
                }
                (ts(i, shift), v)
            })
            .collect::<Vec<_>>()
    };
    out.push(series(
        "http_requests_total",
        &[("job", "api"), ("instance", "a"), ("method", "get")],
        counter(&|i| (3 + i % 7) as f64, &[120], 1234),
    ));
    out.push(series(
        "http_requests_total",
        &[("job", "api"), ("instance", "b"), ("method", "post")],
        counter(&|i| (1 + i % 3) as f64 * 0.5, &[], 0),
    ));
    out.push(series(
        "http_requests_total",
        &[("job", "web"), ("instance", "a"), ("method", "get")],
        counter(&|i| ((i * 7) % 11) as f64, &[60, 150], 7_500),
    ));
    // Gauges: distinct irrational-ish values, so orderings have no ties.
    for (k, (inst, zone, base)) in [("a", "x", 20.0), ("b", "y", 21.5), ("c", "x", -3.25)]
        .into_iter()
        .enumerate()
    {
        let samples = (0..POINTS)
            .map(|i| {
                let x = i as f64 * (0.37 + 0.05 * k as f64);
                (
                    ts(i, 300 * k as i64),
                    base + 2.5 * x.sin() + 0.01 * i as f64,
                )
            })
            .collect();
        out.push(series(
            "node_temp",
            &[("instance", inst), ("zone", zone)],
            samples,
        ));
    }
    // Histograms, cumulative buckets plus _sum and _count.
    for (job, scale) in [("api", 1.0), ("web", 2.5)] {
        let bounds = ["0.1", "0.5", "1", "+Inf"];
        let shares = [0.2, 0.55, 0.85, 1.0];
        let mut total = 0.0;
        let mut sum = 0.0;
        let mut buckets: Vec<Vec<(i64, f64)>> = vec![Vec::new(); bounds.len()];
        let mut sums = Vec::new();
        let mut counts = Vec::new();
        for i in 0..POINTS {
            total += (5 + i % 4) as f64 * scale;
            sum += (5 + i % 4) as f64 * 0.3 * scale;
            for (b, share) in shares.iter().enumerate() {
                buckets[b].push((ts(i, 0), (total * share).floor()));
            }
            sums.push((ts(i, 0), sum));
            counts.push((ts(i, 0), total));
        }
        for (b, samples) in buckets.into_iter().enumerate() {
            out.push(series(
                "req_duration_seconds_bucket",
                &[("job", job), ("le", bounds[b])],
                samples,
            ));
        }
        out.push(series("req_duration_seconds_sum", &[("job", job)], sums));
        out.push(series(
            "req_duration_seconds_count",
            &[("job", job)],
            counts,
        ));
    }
    // up and info series.
    for (job, inst, v) in [("api", "a", 1.0), ("api", "b", 0.0), ("web", "a", 1.0)] {
        out.push(series(
            "up",
            &[("job", job), ("instance", inst)],
            (0..POINTS).map(|i| (ts(i, 0), v)).collect(),
        ));
    }
    for (inst, version) in [("a", "1.0"), ("b", "2.0")] {
        out.push(series(
            "node_info",
            &[("instance", inst), ("version", version)],
            (0..POINTS).map(|i| (ts(i, 0), 1.0)).collect(),
        ));
    }
    // Stops at i = 100 with a stale marker; starts late at i = 120; sparse with long gaps.
    let mut stopping: Vec<(i64, f64)> = (0..=100).map(|i| (ts(i, 0), i as f64 * 1.5)).collect();
    stopping.push((ts(101, 0), stale()));
    out.push(series("stopping_gauge", &[("instance", "a")], stopping));
    out.push(series(
        "late_gauge",
        &[("instance", "a")],
        (120..POINTS).map(|i| (ts(i, 0), (i % 9) as f64)).collect(),
    ));
    out.push(series(
        "sparse_gauge",
        &[("instance", "a")],
        (0..POINTS)
            .filter(|i| i % 40 < 3)
            .map(|i| (ts(i, 0), i as f64 / 4.0))
            .collect(),
    ));
    // Label values JSON must escape.
    out.push(series(
        "escaped_labels",
        &[(
            "v",
            "quote\" backslash\\ <tag> & é \u{1}\u{8}\u{c}\n\t\u{2028}",
        )],
        (0..POINTS).map(|i| (ts(i, 0), i as f64)).collect(),
    ));
    // Gauges holding NaN and infinities (plain NaN, not the stale marker).
    let cycles: [&[f64]; 3] = [
        &[1.0, f64::NAN, f64::INFINITY, -2.0, f64::NAN, 7.5],
        &[3.0, 3.0, f64::NAN, f64::NEG_INFINITY, 0.5],
        &[0.25, -1.5, 4.0, 2.0],
    ];
    for (inst, cycle) in ["a", "b", "c"].into_iter().zip(cycles) {
        out.push(series(
            "nan_gauge",
            &[("instance", inst)],
            (0..POINTS)
                .map(|i| (ts(i, 0), cycle[i as usize % cycle.len()]))
                .collect(),
        ));
    }
    WriteRequest { timeseries: out }
}

/// The suite. `{T10}` etc. are replaced by `t0` + that many minutes, in seconds.
const QUERIES: &[&str] = &[
    // Selectors, matchers, offset, @.
    "http_requests_total",
    r#"http_requests_total{job="api"}"#,
    r#"http_requests_total{job!="api"}"#,
    r#"http_requests_total{instance=~"a|b",method!~"po.*"}"#,
    r#"http_requests_total{method=~"ge"}"#,
    r#"{__name__=~"node_.*"}"#,
    r#"{__name__=~"node_temp|up",instance="a"}"#,
    "node_temp offset 5m",
    "node_temp offset -2m",
    "node_temp @ {T20}",
    "node_temp @ start()",
    "node_temp @ end()",
    "node_temp offset 3m @ {T30}",
    "stopping_gauge",
    "late_gauge",
    "sparse_gauge",
    "http_requests_total[1m]",
    "stopping_gauge[2m]",
    "node_temp[1m] @ {T15}",
    "node_temp[1m] offset 10m",
    // Range functions.
    "rate(http_requests_total[5m])",
    "rate(http_requests_total[1m])",
    "rate(http_requests_total[20m])",
    "rate(http_requests_total[5m] offset 7m)",
    "rate(http_requests_total[5m] @ end())",
    "rate(http_requests_total[5m] @ {T25})",
    "irate(http_requests_total[5m])",
    "increase(http_requests_total[10m])",
    "increase(http_requests_total[45s])",
    "delta(node_temp[5m])",
    "delta(http_requests_total[3m])",
    "idelta(node_temp[2m])",
    "deriv(node_temp[10m])",
    "deriv(http_requests_total[5m])",
    "predict_linear(node_temp[10m], 600)",
    "changes(node_temp[5m])",
    "changes(up[10m])",
    "resets(http_requests_total[30m])",
    "avg_over_time(node_temp[5m])",
    "min_over_time(node_temp[7m])",
    "max_over_time(node_temp[7m])",
    "sum_over_time(node_temp[3m])",
    "count_over_time(node_temp[3m])",
    "count_over_time(sparse_gauge[10m])",
    "last_over_time(node_temp[2m])",
    "last_over_time(stopping_gauge[10m])",
    "stddev_over_time(node_temp[10m])",
    "stdvar_over_time(node_temp[10m])",
    "quantile_over_time(0.3, node_temp[10m])",
    "quantile_over_time(0.95, http_requests_total[5m])",
    "present_over_time(stopping_gauge[5m])",
    "present_over_time(late_gauge[5m])",
    "absent_over_time(nonexistent[5m])",
    r#"absent_over_time(nonexistent{job="x"}[5m])"#,
    // Histograms.
    "histogram_quantile(0.9, rate(req_duration_seconds_bucket[5m]))",
    "histogram_quantile(0.5, sum by (le) (rate(req_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.99, req_duration_seconds_bucket)",
    "histogram_quantile(0.05, req_duration_seconds_bucket)",
    r#"histogram_quantile(0.3, req_duration_seconds_bucket{le!="+Inf"})"#,
    "histogram_quantile(1.5, req_duration_seconds_bucket)",
    "req_duration_seconds_sum / req_duration_seconds_count",
    "rate(req_duration_seconds_sum[5m]) / rate(req_duration_seconds_count[5m])",
    // Instant-vector functions.
    "abs(node_temp)",
    "ceil(node_temp)",
    "floor(node_temp)",
    "sqrt(node_temp)",
    "exp(node_temp / 10)",
    "ln(node_temp)",
    "log2(http_requests_total)",
    "log10(http_requests_total)",
    "round(node_temp)",
    "round(node_temp, 0.3)",
    "clamp(node_temp, 18, 22)",
    "clamp(node_temp, 5, 1)",
    "clamp_min(node_temp, 20)",
    "clamp_max(node_temp, 20)",
    "time()",
    "vector(1)",
    "vector(time())",
    r#"scalar(up{job="api",instance="a"})"#,
    "scalar(up)",
    "node_temp * scalar(up{job=\"web\"})",
    "timestamp(node_temp)",
    "timestamp(stopping_gauge)",
    "timestamp(rate(http_requests_total[5m]))",
    "sort(node_temp)",
    "sort_desc(node_temp)",
    "sort_desc(rate(http_requests_total[5m]))",
    r#"label_replace(up, "host", "$1-x", "instance", "(.*)")"#,
    r#"label_replace(up, "job", "", "job", "api")"#,
    r#"label_replace(up, "foo", "${1}bar", "instance", "nomatch")"#,
    r#"label_replace(node_temp, "zone", "z-$1", "zone", "(x)")"#,
    r#"label_join(up, "id", "/", "job", "instance")"#,
    "absent(up)",
    r#"absent(nonexistent{job="x",env=~"p.*"})"#,
    r#"absent(nonexistent{job="x"})"#,
    "absent(stopping_gauge)",
    // Aggregations.
    "sum(http_requests_total)",
    "sum by (job) (rate(http_requests_total[5m]))",
    "sum without (instance) (rate(http_requests_total[5m]))",
    "sum by (__name__) ({__name__=~\"node_temp|up\"})",
    "avg by (zone) (node_temp)",
    "avg(node_temp)",
    "min(node_temp)",
    "max by (zone) (node_temp)",
    "count(node_temp)",
    "count by (job) (up)",
    "stddev(node_temp)",
    "stdvar by (zone) (node_temp)",
    "topk(2, node_temp)",
    "bottomk(1, node_temp)",
    "topk by (job) (1, rate(http_requests_total[5m]))",
    "topk(0, node_temp)",
    "quantile(0.5, node_temp)",
    "quantile by (job) (0.9, rate(http_requests_total[5m]))",
    r#"count_values("value", up)"#,
    r#"count_values by (job) ("v", up)"#,
    "group by (job) (up)",
    "group(node_temp)",
    "sum(nonexistent)",
    "count(up == 1)",
    "sum(rate(http_requests_total[5m])) by (instance, job)",
    // Binary operators.
    "node_temp * 2",
    "2 * node_temp",
    "node_temp / 0",
    "-node_temp",
    "-(1 + 2)",
    "node_temp - node_temp",
    "node_temp % 3",
    "node_temp ^ 2",
    "1 + 2 * 3",
    "2 ^ 3 ^ 2",
    "5 % 3",
    "7 / 2 - 1",
    "node_temp > 20",
    "node_temp > bool 20",
    "20 < node_temp",
    "20 < bool node_temp",
    "node_temp == 20",
    "up == 1",
    "up != bool 0",
    "1 < bool 2",
    "3 == bool 2",
    "http_requests_total / on(instance) group_left(version) node_info",
    "rate(http_requests_total[5m]) * on(instance) group_left(version) node_info",
    "node_info * on(instance) group_right(version) http_requests_total",
    "node_info * on(instance) group_right http_requests_total",
    "up and on(instance) node_temp",
    "up and node_temp",
    "up or node_temp",
    "node_temp unless on(zone) node_temp{zone=\"x\"}",
    "up unless up == 0",
    "up or on(instance) node_info",
    "rate(http_requests_total[5m]) / ignoring(method) group_left sum by (job, instance) (rate(http_requests_total[5m]))",
    "http_requests_total + http_requests_total",
    "http_requests_total > on(job, instance, method) http_requests_total offset 5m",
    "http_requests_total > bool ignoring(method) group_left http_requests_total{method=\"get\"}",
    "up == on(instance, job) up",
    "sum by (job) (up) / on(job) count by (job) (up)",
    "node_temp + on(instance) group_left node_info",
    "(node_temp > 20) + 1",
    "vector(1) + on() group_left node_info",
    // Edges: series that stop or start, empty operands, literals, names set by label_replace.
    "absent_over_time(stopping_gauge[5m])",
    "absent(sum(nonexistent))",
    "max_over_time(stopping_gauge[10m])",
    "rate(stopping_gauge[5m])",
    "deriv(late_gauge[10m])",
    "avg_over_time(late_gauge[30m])",
    "changes(sparse_gauge[30m])",
    "idelta(http_requests_total[1m])",
    "increase(http_requests_total[5m] @ start())",
    "http_requests_total offset 1h",
    "up @ {T10} offset 1m",
    "timestamp(node_temp @ {T20})",
    "timestamp(node_temp offset 5m)",
    "time() - timestamp(node_temp)",
    r#"count_values("v", node_temp)"#,
    r#"count_values without (instance) ("v", up)"#,
    "stddev by (job) (rate(http_requests_total[5m]))",
    "bottomk(2, rate(http_requests_total[5m]))",
    "topk(2, http_requests_total)",
    "quantile(0.25, rate(http_requests_total[5m]))",
    "quantile(-1, node_temp)",
    "quantile(2, node_temp)",
    "histogram_quantile(0.5, rate(req_duration_seconds_bucket[1m]))",
    "group without (instance) (up)",
    "sum without (le) (req_duration_seconds_bucket)",
    "scalar(sum(up))",
    "sgn(node_temp)",
    "round(node_temp * 0 - 2.5)",
    "clamp_min(node_temp, NaN)",
    "node_temp % -3",
    "node_temp ^ 0.5",
    "-up",
    "up - up offset 1m",
    "(up == 1) * 2",
    r#"up{job="api"} == bool on(instance) group_left up{job="web"}"#,
    "node_temp and on() vector(1)",
    "node_temp or vector(0)",
    "nonexistent + 1",
    "nonexistent and up",
    "nonexistent or up",
    "up unless nonexistent",
    r#"label_replace(rate(http_requests_total[5m]), "__name__", "renamed", "", "")"#,
    r#"label_join(node_temp, "combined", "_", "zone", "instance")"#,
    r#"{job="api"}"#,
    "42",
    r#""hello""#,
    "http_requests_total > http_requests_total offset 5m",
    "http_requests_total >= ignoring(method) group_left http_requests_total{method=\"get\"}",
    "up * on(instance) group_left(version) node_info",
    "node_temp > on(instance) group_left node_info",
    "topk(1, node_temp) by (zone)",
    "sum(node_temp) without (instance)",
    "avg without (instance, method) (rate(http_requests_total[10m]))",
    "count by (le) (req_duration_seconds_bucket) > 1",
    // NaN and infinities through aggregations, sorting and comparisons.
    "nan_gauge",
    "max(nan_gauge)",
    "min(nan_gauge)",
    "sum(nan_gauge)",
    "avg(nan_gauge)",
    "stddev(nan_gauge)",
    "quantile(0.5, nan_gauge)",
    "sort(nan_gauge)",
    "sort_desc(nan_gauge)",
    "topk(2, nan_gauge)",
    "bottomk(2, nan_gauge)",
    r#"count_values("v", nan_gauge)"#,
    "nan_gauge > 0",
    "nan_gauge != bool nan_gauge",
    "max_over_time(nan_gauge[2m])",
    "min_over_time(nan_gauge[2m])",
    "avg_over_time(nan_gauge[2m])",
    "sum_over_time(nan_gauge[2m])",
    "changes(nan_gauge[5m])",
    "clamp(nan_gauge, -1, 1)",
    "round(nan_gauge)",
    "rate(nan_gauge[5m])",
    "deriv(nan_gauge[5m])",
    // Errors Prometheus gives the same way.
    "http_requests_total * on(instance) node_info",
    "node_info + on(job) http_requests_total",
    "up + ignoring(job) up",
    r#"label_replace(up, "x", "y", "instance", "(")"#,
    "rate({__name__=~\"http_requests_total|req_duration_seconds_sum\"}[5m])",
];

/// Constructs outside the subset, with the word the refusal must name.
const REFUSED: &[(&str, &str)] = &[
    ("rate(http_requests_total[5m:1m])", "subquer"),
    (
        "max_over_time(rate(http_requests_total[1m])[5m:])",
        "subquer",
    ),
    ("holt_winters(node_temp[10m], 0.5, 0.5)", "holt_winters"),
    ("day_of_week()", "day_of_week"),
    ("node_temp atan2 node_temp", "atan2"),
    ("hour(node_temp)", "hour"),
];

fn which_prometheus() -> Option<PathBuf> {
    let p = PathBuf::from(PROMETHEUS);
    p.exists().then_some(p)
}

fn get_json(port: u16, path: &str) -> (u16, String, Value) {
    let (status, body) = http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let v = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, body, v)
}

fn parse_value(v: &Value) -> f64 {
    match v.as_str().unwrap_or("?") {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        s => s.parse().unwrap_or(f64::NAN),
    }
}

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) || (a - b).abs() < 1e-12
}

fn same_point(a: &Value, b: &Value) -> bool {
    a[0].as_f64() == b[0].as_f64() && close(parse_value(&a[1]), parse_value(&b[1]))
}

fn metric_key(v: &Value) -> String {
    v["metric"].to_string()
}

fn ordered(query: &str) -> bool {
    ["sort", "topk", "bottomk"]
        .iter()
        .any(|p| query.starts_with(p))
}

/// Compares two `data` objects; `Err` says how they differ.
fn compare_data(query: &str, p: &Value, s: &Value) -> Result<(), String> {
    if p["resultType"] != s["resultType"] {
        return Err("result types differ".into());
    }
    match p["resultType"].as_str() {
        Some("scalar") => {
            if !same_point(&p["result"], &s["result"]) {
                return Err("scalar differs".into());
            }
        }
        Some("string") => {
            if p["result"] != s["result"] {
                return Err("string differs".into());
            }
        }
        Some("vector") | Some("matrix") => {
            let (Some(pr), Some(sr)) = (p["result"].as_array(), s["result"].as_array()) else {
                return Err("result is not an array".into());
            };
            if pr.len() != sr.len() {
                return Err(format!("{} series vs {}", pr.len(), sr.len()));
            }
            let mut pr = pr.clone();
            let mut sr = sr.clone();
            let is_vector = p["resultType"] == "vector";
            if is_vector && ordered(query) {
                // The order of values is defined; among equal values the order of labels is not.
                for (a, b) in pr.iter().zip(&sr) {
                    if !close(parse_value(&a["value"][1]), parse_value(&b["value"][1])) {
                        return Err("order of values differs".into());
                    }
                }
            }
            pr.sort_by_key(metric_key);
            sr.sort_by_key(metric_key);
            for (a, b) in pr.iter().zip(&sr) {
                if a["metric"] != b["metric"] {
                    return Err(format!("labels differ: {} vs {}", a["metric"], b["metric"]));
                }
                if is_vector {
                    if !same_point(&a["value"], &b["value"]) {
                        return Err(format!("value of {} differs", a["metric"]));
                    }
                } else {
                    let (av, bv) = (a["values"].as_array(), b["values"].as_array());
                    let (Some(av), Some(bv)) = (av, bv) else {
                        return Err("values is not an array".into());
                    };
                    if av.len() != bv.len() {
                        return Err(format!(
                            "{}: {} points vs {}",
                            a["metric"],
                            av.len(),
                            bv.len()
                        ));
                    }
                    for (x, y) in av.iter().zip(bv) {
                        if !same_point(x, y) {
                            return Err(format!("{}: point {x} vs {y}", a["metric"]));
                        }
                    }
                }
            }
        }
        other => return Err(format!("unknown result type {other:?}")),
    }
    Ok(())
}

/// The field names of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// Whether Prometheus answered with data (not an error, not an empty result).
fn has_data(v: &Value) -> bool {
    v["status"] == "success" && v["data"]["result"].as_array().is_none_or(|r| !r.is_empty())
}

/// Runs `path` on both; `Err` describes a disagreement, `Ok(true)` an agreement on data.
fn compare(query: &str, prom: u16, sonde: u16, path: &str) -> Result<bool, String> {
    let (ps, pbody, pv) = get_json(prom, path);
    let (ss, sbody, sv) = get_json(sonde, path);
    let describe = |why: String| {
        format!(
            "{why}\n  query: {query}\n  request: {path}\n  prometheus ({ps}): {}\n  sonde ({ss}): {}",
            truncate(&pbody),
            truncate(&sbody)
        )
    };
    if ps != ss || pv["status"] != sv["status"] {
        return Err(describe("status differs".into()));
    }
    if keys(&pv) != keys(&sv) || keys(&pv["data"]) != keys(&sv["data"]) {
        return Err(describe("the JSON objects have different fields".into()));
    }
    if pv["status"] == "error" {
        if pv["errorType"] != sv["errorType"] {
            return Err(describe("error type differs".into()));
        }
        return Ok(false);
    }
    compare_data(query, &pv["data"], &sv["data"])
        .map(|()| has_data(&pv))
        .map_err(describe)
}

fn truncate(s: &str) -> String {
    if s.len() > 3000 {
        format!("{}… ({} bytes)", &s[..3000], s.len())
    } else {
        s.to_owned()
    }
}

fn secs(ms: i64) -> String {
    let s = format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn expand(query: &str, t0: i64) -> String {
    let mut q = query.to_owned();
    for m in [10, 15, 20, 25, 30] {
        q = q.replace(&format!("{{T{m}}}"), &secs(t0 + m * MIN));
    }
    q
}

fn write(port: u16, body: &[u8]) -> (u16, String) {
    http_request(
        port,
        "POST",
        "/api/v1/write",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        body,
    )
    .expect("remote write")
}

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1h\n").unwrap();
    config
}

#[test]
fn promql_answers_match_prometheus() {
    let Some(prometheus) = which_prometheus() else {
        eprintln!(
            "skipping the PromQL oracle: {PROMETHEUS} is missing (install Debian's prometheus package)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (prom_port, sonde_port) = (free_port(), free_port());
    let config = write_config(dir.path());
    let prom_data = dir.path().join("prom");
    let sonde_data = dir.path().join("sonde");
    let _prom = Proc::spawn(
        "prometheus",
        prometheus,
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", prom_data.display()),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--web.enable-remote-write-receiver",
            "--log.level=warn",
        ],
    );
    let _sonde = Proc::spawn(
        "sonde-collector",
        PathBuf::from(env!("CARGO_BIN_EXE_sonde-collector")),
        &[
            "--data-dir",
            &sonde_data.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{sonde_port}"),
            // Small blocks and frequent maintenance: the answers then come from compacted
            // blocks, plain blocks and the head at once.
            "--block-range",
            "10m",
            "--maintenance-interval",
            "200ms",
        ],
    );
    wait_until(Duration::from_secs(60), "prometheus ready", || {
        matches!(http_get(prom_port, "/-/ready"), Ok((200, _)))
    });
    wait_until(Duration::from_secs(30), "sonde ready", || {
        matches!(http_get(sonde_port, "/readyz"), Ok((200, _)))
    });

    // All data within the last hour, so Prometheus's head accepts it.
    let t0 = (now_ms() / MIN) * MIN - 55 * MIN;
    let body = remote_write::encode(&data(t0));
    for port in [prom_port, sonde_port] {
        let (status, resp) = write(port, &body);
        assert!(
            status == 204 || status == 200,
            "write to {port}: {status} {resp}"
        );
    }

    let instants = [
        t0 - 10 * MIN,
        t0 + 10 * MIN,
        t0 + 101 * STEP_MS,
        t0 + 27 * MIN + 500,
        t0 + 38 * MIN + 7_250,
        t0 + 49 * MIN + 59_999,
        t0 + 53 * MIN,
        t0 + 56 * MIN,
    ];
    let ranges = [
        (t0 + MIN, t0 + 55 * MIN, "60"),
        (t0 + 20 * MIN + 300, t0 + 32 * MIN, "37s"),
    ];
    // Wait for the store to cut the 55 minutes into 10-minute blocks and compact the first
    // closed 30-minute window.
    wait_until(Duration::from_secs(60), "blocks cut and compacted", || {
        let metrics = http_get(sonde_port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        value("sonde_collector_store_blocks_cut_total") >= 3.0
            && value("sonde_collector_store_compactions_total") >= 1.0
    });
    let mut failures = Vec::new();
    let mut compared = 0;
    let mut with_data = 0;
    for q in QUERIES {
        let query = expand(q, t0);
        for t in instants {
            let path = format!("/api/v1/query?query={}&time={}", encode(&query), secs(t));
            compared += 1;
            match compare(&query, prom_port, sonde_port, &path) {
                Ok(data) => with_data += usize::from(data),
                Err(e) => failures.push(e),
            }
        }
        for (start, end, step) in ranges {
            let path = format!(
                "/api/v1/query_range?query={}&start={}&end={}&step={step}",
                encode(&query),
                secs(start),
                secs(end)
            );
            compared += 1;
            match compare(&query, prom_port, sonde_port, &path) {
                Ok(data) => with_data += usize::from(data),
                Err(e) => failures.push(e),
            }
        }
    }

    // Exact JSON of single-series answers: what Grafana parses.
    let t = secs(t0 + 27 * MIN + 500);
    for q in [
        "1.5 * 2",
        "\"text\"",
        r#"up{job="web"}"#,
        r#"node_temp{instance="a"}[1m]"#,
        "nonexistent",
        "vector(0.1)",
        r#"rate(http_requests_total{instance="b"}[5m])"#,
        "escaped_labels",
    ] {
        let path = format!("/api/v1/query?query={}&time={t}", encode(q));
        let (_, pbody, _) = get_json(prom_port, &path);
        let (_, sbody, _) = get_json(sonde_port, &path);
        if pbody.trim() != sbody.trim() {
            failures.push(format!(
                "raw JSON differs for {q}\n  prometheus: {pbody}\n  sonde: {sbody}"
            ));
        }
    }
    let path = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=90",
        encode(r#"node_temp{instance="b"}"#),
        secs(t0 + 10 * MIN + 500),
        secs(t0 + 20 * MIN)
    );
    let (_, pbody, _) = get_json(prom_port, &path);
    let (_, sbody, _) = get_json(sonde_port, &path);
    if pbody.trim() != sbody.trim() {
        failures.push(format!(
            "raw JSON differs for a range query\n  prometheus: {pbody}\n  sonde: {sbody}"
        ));
    }
    // Errors: same status and shape.
    for q in ["sum(", "1 == 1", "rate(up)"] {
        let path = format!("/api/v1/query?query={}&time={t}", encode(q));
        let (ps, _, pv) = get_json(prom_port, &path);
        let (ss, sbody, sv) = get_json(sonde_port, &path);
        if ps != ss
            || pv["status"] != sv["status"]
            || pv["errorType"] != sv["errorType"]
            || keys(&pv) != keys(&sv)
        {
            failures.push(format!(
                "error differs for {q}: prometheus {ps} {pv}, sonde {ss} {sbody}"
            ));
        }
    }

    // Refusals.
    for (q, word) in REFUSED {
        let path = format!("/api/v1/query?query={}&time={t}", encode(q));
        let (status, body, v) = get_json(sonde_port, &path);
        let msg = v["error"].as_str().unwrap_or("");
        if status != 400 || v["errorType"] != "bad_data" || !msg.contains(word) {
            failures.push(format!(
                "{q} must be refused naming '{word}': {status} {body}"
            ));
        }
    }

    let passed = compared - failures.len().min(compared);
    eprintln!(
        "PromQL oracle: {} queries, {compared} comparisons ({with_data} with data), {} failures",
        QUERIES.len(),
        failures.len()
    );
    assert!(QUERIES.len() >= 100);
    // The data must really have been ingested and queried: most answers carry data.
    assert!(
        with_data * 10 >= compared * 7,
        "only {with_data} of {compared} answers carry data"
    );
    assert!(
        failures.is_empty(),
        "{} of {compared} comparisons passed; disagreements:\n\n{}",
        passed,
        failures.join("\n\n")
    );
}

/// The query limits answer with Prometheus's error shapes instead of loading everything.
#[test]
fn query_limits_refuse_with_prometheus_errors() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sonde = Proc::spawn(
        "sonde-collector",
        PathBuf::from(env!("CARGO_BIN_EXE_sonde-collector")),
        &[
            "--data-dir",
            &dir.path().display().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--query-max-series",
            "5",
            "--query-max-samples",
            "500",
        ],
    );
    wait_until(Duration::from_secs(30), "sonde ready", || {
        matches!(http_get(port, "/readyz"), Ok((200, _)))
    });
    let t0 = (now_ms() / MIN) * MIN - 55 * MIN;
    let (status, body) = write(port, &remote_write::encode(&data(t0)));
    assert!(status == 204 || status == 200, "{status} {body}");
    let at = secs(t0 + 40 * MIN);
    let cases = [
        // 3 series: within the limits.
        (
            format!("/api/v1/query?query=node_temp&time={at}"),
            200,
            "",
            "",
        ),
        // Twelve series of buckets.
        (
            format!("/api/v1/query?query=req_duration_seconds_bucket&time={at}"),
            422,
            "execution",
            "--query-max-series",
        ),
        // 3 series of 200 samples.
        (
            format!("/api/v1/query?query=node_temp%5B1h%5D&time={at}"),
            422,
            "execution",
            "too many samples",
        ),
        (
            format!("/api/v1/query?query=node_temp&time={at}&timeout=soon"),
            400,
            "bad_data",
            "timeout",
        ),
    ];
    for (path, want_status, want_type, want_msg) in cases {
        let (status, body, v) = get_json(port, &path);
        assert_eq!(status, want_status, "{path}: {body}");
        if want_status != 200 {
            assert_eq!(v["status"], "error", "{body}");
            assert_eq!(v["errorType"], want_type, "{body}");
            assert!(v["error"].as_str().unwrap().contains(want_msg), "{body}");
        }
    }
}
