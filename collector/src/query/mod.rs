//! The Prometheus HTTP API over the embedded store: `/api/v1/query`, `/api/v1/query_range`,
//! `/api/v1/series`, `/api/v1/labels`, `/api/v1/label/<name>/values`,
//! `/api/v1/status/buildinfo` and `/api/v1/metadata`, in Prometheus's exact JSON shapes
//! (success and error), for GET and form-encoded POST, so Grafana's Prometheus data source
//! works unchanged.

pub mod cache;
pub mod eval;
pub mod metadata;
pub mod params;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, json};
use std::fmt::Write as _;
use std::sync::Arc;

use crate::ingest::auth::Principal;
use crate::server::{AppState, Body};
use crate::store::Matcher;
use eval::{EvalError, QueryLimits, Reader, Value};
use params::{Params, parse_step, parse_time};

/// Largest form body a query request may carry.
const MAX_FORM_BYTES: usize = 1 << 20;

struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

fn bad_data(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        kind: "bad_data",
        message: message.into(),
    }
}

/// An error in Prometheus's shape, for callers outside this module (authentication).
pub fn error_response(status: StatusCode, kind: &'static str, message: &str) -> Response<Body> {
    json_response(
        status,
        json!({"status": "error", "errorType": kind, "error": message}),
    )
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A successful answer's `data`: built as JSON, or already serialized.
enum Data {
    Json(serde_json::Value),
    Raw(String),
}

/// A successful answer in Prometheus's shape, for callers outside this module (rules, alerts,
/// targets).
pub fn success_response(data: serde_json::Value) -> Response<Body> {
    success(Data::Json(data))
}

fn success(data: Data) -> Response<Body> {
    match data {
        Data::Json(data) => {
            json_response(StatusCode::OK, json!({"status": "success", "data": data}))
        }
        Data::Raw(data) => {
            let mut resp = Response::new(Full::new(Bytes::from(format!(
                r#"{{"status":"success","data":{data}}}"#
            ))));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
    }
}

impl ApiError {
    fn into_response(self) -> Response<Body> {
        json_response(
            self.status,
            json!({"status": "error", "errorType": self.kind, "error": self.message}),
        )
    }
}

/// Most PromQL queries evaluated at once (Prometheus's --query.max-concurrency default); more
/// wait for a turn.
const MAX_CONCURRENT_QUERIES: usize = 20;

static QUERY_SLOTS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_CONCURRENT_QUERIES);

/// Runs a PromQL query on the blocking pool, so a long evaluation never stalls the async
/// workers; at most [`MAX_CONCURRENT_QUERIES`] at once.
async fn evaluate(
    state: &Arc<AppState>,
    tenant: &str,
    params: Params,
    run: fn(&AppState, Reader<'_>, &Params) -> Result<Data, ApiError>,
) -> Result<Data, ApiError> {
    // Waiting for a turn is bounded by the query timeout too.
    let _slot = tokio::time::timeout(state.config.query.timeout, QUERY_SLOTS.acquire())
        .await
        .map_err(|_| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "timeout",
            message: "query timed out waiting for an evaluation slot".into(),
        })?
        .map_err(|_| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "unavailable",
            message: "query slots closed".into(),
        })?;
    let state = Arc::clone(state);
    let tenant = tenant.to_owned();
    tokio::task::spawn_blocking(move || {
        let reader = Reader {
            store: &state.store,
            tenant: &tenant,
        };
        run(&state, reader, &params)
    })
    .await
    .unwrap_or_else(|e| {
        Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            message: format!("query evaluation failed: {e}"),
        })
    })
}

/// Dispatches `/api/v1/*` requests other than push, for `principal`'s tenant.
pub async fn handle(
    state: &Arc<AppState>,
    principal: &Principal,
    req: Request<Incoming>,
) -> Response<Body> {
    let reader = Reader {
        store: &state.store,
        tenant: &principal.tenant,
    };
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if method != Method::GET && method != Method::POST {
        return ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            kind: "bad_data",
            message: format!("method {method} not allowed on {path}"),
        }
        .into_response();
    }
    let params = match read_params(req).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let result = match path.as_str() {
        "/api/v1/query" => {
            state.events.query("query");
            evaluate(state, &principal.tenant, params, instant_query).await
        }
        "/api/v1/query_range" => {
            state.events.query("query_range");
            evaluate(state, &principal.tenant, params, range_query).await
        }
        "/api/v1/series" => {
            state.events.query("series");
            series(reader, &params).map(Data::Json)
        }
        "/api/v1/labels" => {
            state.events.query("labels");
            labels(reader, &params).map(Data::Json)
        }
        "/api/v1/status/buildinfo" => Ok(Data::Json(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "revision": "",
            "branch": "",
            "buildUser": "",
            "buildDate": "",
            "goVersion": "",
            "application": "sonde-collector",
        }))),
        "/api/v1/metadata" => {
            state.events.query("metadata");
            metadata(state, &principal.tenant, &params)
        }
        p => match p
            .strip_prefix("/api/v1/label/")
            .and_then(|r| r.strip_suffix("/values"))
        {
            Some(name) => {
                state.events.query("label_values");
                label_values(reader, name, &params).map(Data::Json)
            }
            None => Err(ApiError {
                status: StatusCode::NOT_FOUND,
                kind: "bad_data",
                message: format!("unknown API endpoint {p}"),
            }),
        },
    };
    match result {
        Ok(data) => success(data),
        Err(e) => e.into_response(),
    }
}

async fn read_params(req: Request<Incoming>) -> Result<Params, ApiError> {
    let query = req.uri().query().unwrap_or("").to_owned();
    if req.method() == Method::GET {
        return Ok(Params::parse(&[query.as_bytes()]));
    }
    let body = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|e| bad_data(format!("cannot read form body: {e}")))?
        .to_bytes();
    Ok(Params::parse(&[query.as_bytes(), &body]))
}

fn required<'a>(params: &'a Params, name: &str) -> Result<&'a str, ApiError> {
    params
        .get(name)
        .ok_or_else(|| bad_data(format!("invalid parameter \"{name}\": missing")))
}

fn time_or(params: &Params, name: &str, default: i64) -> Result<i64, ApiError> {
    match params.get(name) {
        None | Some("") => Ok(default),
        Some(v) => parse_time(name, v).map_err(bad_data),
    }
}

/// Appends a timestamp as Prometheus writes it: seconds, with milliseconds only when non-zero
/// (`1435781451.781`, `1435781451.500`, `1435781451`).
fn write_timestamp(out: &mut String, ms: i64) {
    let (sign, ms) = if ms < 0 {
        ("-", -(ms as i128))
    } else {
        ("", ms as i128)
    };
    let fraction = ms % 1000;
    // Writing to a String cannot fail.
    let _ = if fraction != 0 {
        write!(out, "{sign}{}.{fraction:03}", ms / 1000)
    } else {
        write!(out, "{sign}{}", ms / 1000)
    };
}

/// Appends `s` as a JSON string escaped as Prometheus's encoder escapes it: `<`, `>`, `&`,
/// U+2028 and U+2029 as `\u` escapes besides quotes, backslashes and control characters.
fn write_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&') => {
                let b = c as u32 as usize;
                out.push_str("\\u00");
                out.push(HEX[b >> 4] as char);
                out.push(HEX[b & 0xf] as char);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A scalar's or string's time, as Prometheus writes it there: a plain float of seconds.
fn write_float_seconds(out: &mut String, ms: i64) {
    out.push_str(&format!("{}", ms as f64 / 1000.0));
}

/// `[<seconds>,"<value>"]`
fn write_point(out: &mut String, ms: i64, value: f64) {
    out.push('[');
    write_timestamp(out, ms);
    out.push_str(",\"");
    // A formatted value never needs escaping: digits, '.', '-', "NaN", "+Inf", "-Inf".
    sonde_common::telemetry::write_value(out, value);
    out.push_str("\"]");
}

fn write_metric(out: &mut String, labels: &eval::Labels) {
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, name);
        out.push(':');
        write_string(out, value);
    }
    out.push('}');
}

fn write_matrix(out: &mut String, result: &[eval::RangeSeries]) {
    out.push_str(r#"{"resultType":"matrix","result":["#);
    for (i, s) in result.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"metric":"#);
        write_metric(out, &s.labels);
        out.push_str(r#","values":["#);
        for (j, p) in s.points.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            write_point(out, p.timestamp_ms, p.value);
        }
        out.push_str("]}");
    }
    out.push_str("]}");
}

/// The `data` of a query answer, in Prometheus's exact shape for each result type.
fn result_json(value: &Value, t: i64) -> String {
    let mut out = String::with_capacity(256);
    match value {
        Value::Scalar(v) => {
            out.push_str(r#"{"resultType":"scalar","result":["#);
            write_float_seconds(&mut out, t);
            out.push(',');
            write_string(&mut out, &sonde_common::telemetry::format_value(*v));
            out.push_str("]}");
        }
        Value::String(s) => {
            out.push_str(r#"{"resultType":"string","result":["#);
            write_float_seconds(&mut out, t);
            out.push(',');
            write_string(&mut out, s);
            out.push_str("]}");
        }
        Value::Vector(v) => {
            out.push_str(r#"{"resultType":"vector","result":["#);
            for (i, e) in v.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"metric":"#);
                write_metric(&mut out, &e.labels);
                out.push_str(r#","value":"#);
                write_point(&mut out, t, e.value);
                out.push('}');
            }
            out.push_str("]}");
        }
        Value::Matrix(m) => write_matrix(&mut out, m),
    }
    out
}

fn metric_json(series: &sonde_common::model::Series) -> serde_json::Value {
    let map: Map<String, serde_json::Value> = eval::metric_labels(series)
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
        .collect();
    serde_json::Value::Object(map)
}

fn eval_error(e: EvalError) -> ApiError {
    match e {
        EvalError::BadData(m) => bad_data(m),
        EvalError::Execution(m) => ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            kind: "execution",
            message: m,
        },
        EvalError::Timeout(m) => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "timeout",
            message: m,
        },
    }
}

/// The configured limits; a `timeout` parameter may shorten the time budget, never extend it.
fn limits(state: &AppState, params: &Params) -> Result<QueryLimits, ApiError> {
    let q = &state.config.query;
    let mut timeout = q.timeout;
    if let Some(v) = params.get("timeout").filter(|v| !v.is_empty()) {
        let ms = parse_step(v).map_err(|_| {
            bad_data(format!(
                "invalid parameter \"timeout\": cannot parse \"{v}\" to a valid duration"
            ))
        })?;
        timeout = timeout.min(std::time::Duration::from_millis(ms as u64));
    }
    Ok(QueryLimits {
        max_series: q.max_series,
        max_samples: q.max_samples,
        timeout,
    })
}

fn instant_query(state: &AppState, reader: Reader<'_>, params: &Params) -> Result<Data, ApiError> {
    let query = required(params, "query")?;
    let t = time_or(params, "time", sonde_common::model::now_ms())?;
    let lookback = state.config.query.lookback.as_millis() as i64;
    let value = eval::instant_query(&reader, query, t, lookback, limits(state, params)?)
        .map_err(eval_error)?;
    Ok(Data::Raw(result_json(&value, t)))
}

fn range_query(state: &AppState, reader: Reader<'_>, params: &Params) -> Result<Data, ApiError> {
    let query = required(params, "query")?;
    let start = parse_time("start", required(params, "start")?).map_err(bad_data)?;
    let end = parse_time("end", required(params, "end")?).map_err(bad_data)?;
    let step = parse_step(required(params, "step")?).map_err(bad_data)?;
    if end < start {
        return Err(bad_data(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    if (end - start) / step >= eval::MAX_POINTS_PER_SERIES {
        return Err(bad_data(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let lookback = state.config.query.lookback.as_millis() as i64;
    let limits = limits(state, params)?;
    let result = if params
        .get("nocache")
        .is_some_and(|v| v == "1" || v == "true")
    {
        eval::range_query(&reader, query, start, end, step, lookback, limits)
    } else {
        // The epoch first: what changes after it is read cannot be cached as settled.
        let now = (state.store.settled_epoch(), sonde_common::model::now_ms());
        state
            .results
            .range_query(
                &reader,
                reader.tenant,
                query,
                (start, end, step),
                lookback,
                limits,
                now,
            )
            .map(|(answer, _)| answer)
    }
    .map_err(eval_error)?;
    // About 30 bytes a point.
    let points: usize = result.iter().map(|s| s.points.len()).sum();
    let mut out = String::with_capacity(256 + points.saturating_mul(32));
    write_matrix(&mut out, &result);
    Ok(Data::Raw(out))
}

/// `match[]` selectors; `required` says whether at least one must be given.
fn selectors(params: &Params, required: bool) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let raw = params.all("match[]");
    if required && raw.is_empty() {
        return Err(bad_data("no match[] parameter provided"));
    }
    raw.iter()
        .map(|s| {
            eval::series_selector(s)
                .map_err(|e| bad_data(format!("invalid parameter \"match[]\": {e}")))
        })
        .collect()
}

fn range_params(params: &Params) -> Result<(i64, i64), ApiError> {
    Ok((
        time_or(params, "start", i64::MIN)?,
        time_or(params, "end", i64::MAX)?,
    ))
}

fn series(reader: Reader<'_>, params: &Params) -> Result<serde_json::Value, ApiError> {
    let sets = selectors(params, true)?;
    let (start, end) = range_params(params)?;
    let mut found: Vec<sonde_common::model::Series> = sets
        .iter()
        .flat_map(|m| reader.series(m, start, end))
        .collect();
    found.sort();
    found.dedup();
    Ok(serde_json::Value::Array(
        found.iter().map(metric_json).collect(),
    ))
}

fn labels(reader: Reader<'_>, params: &Params) -> Result<serde_json::Value, ApiError> {
    let sets = selectors(params, false)?;
    let (start, end) = range_params(params)?;
    let mut names: Vec<String> = if sets.is_empty() {
        reader.label_names(&[], start, end)
    } else {
        sets.iter()
            .flat_map(|m| reader.label_names(m, start, end))
            .collect()
    };
    names.sort();
    names.dedup();
    Ok(json!(names))
}

fn label_values(
    reader: Reader<'_>,
    name: &str,
    params: &Params,
) -> Result<serde_json::Value, ApiError> {
    if !sonde_common::model::is_valid_label_name(name) {
        return Err(bad_data(format!("invalid label name: \"{name}\"")));
    }
    let sets = selectors(params, false)?;
    let (start, end) = range_params(params)?;
    let mut values: Vec<String> = if sets.is_empty() {
        reader.label_values(name, &[], start, end)
    } else {
        sets.iter()
            .flat_map(|m| reader.label_values(name, m, start, end))
            .collect()
    };
    values.sort();
    values.dedup();
    Ok(json!(values))
}

fn metadata(state: &AppState, tenant: &str, params: &Params) -> Result<Data, ApiError> {
    let limit = match params.get("limit") {
        None | Some("") => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n > 0 => Some(n as usize),
            Ok(_) => None,
            Err(_) => return Err(bad_data(format!("invalid limit {v:?}"))),
        },
    };
    Ok(Data::Json(state.metadata.json(
        tenant,
        params.get("metric").filter(|m| !m.is_empty()),
        limit,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_written_as_prometheus_writes_it() {
        let mut out = String::new();
        for ms in [
            1_435_781_451_781,
            1_435_781_451_500,
            1_435_781_451_000,
            5,
            -1_500,
        ] {
            write_timestamp(&mut out, ms);
            out.push(' ');
        }
        assert_eq!(
            out,
            "1435781451.781 1435781451.500 1435781451 0.005 -1.500 "
        );
        let mut out = String::new();
        write_float_seconds(&mut out, 1_435_781_451_500);
        write_float_seconds(&mut out, 1_435_781_451_000);
        assert_eq!(out, "1435781451.51435781451");
        let mut out = String::new();
        write_string(&mut out, "a\"b\\c<d>&\u{1}\u{8}\n\u{2028}é");
        assert_eq!(out, r#""a\"b\\c\u003cd\u003e\u0026\u0001\u0008\n\u2028é""#);
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c<d>&\u{1}\u{8}\n\u{2028}é");
    }
}
