//! The HTTP API, in Alertmanager's v2 shapes so amtool, Grafana, Prometheus and vmalert work
//! against it: alerts (list, post), alert groups, silences (list, get, create or update,
//! expire), receivers and status; plus Sonde's own history at `/api/v1/alerting/history`.
//!
//! Authorization happens here (authentication was done by the server): reading needs
//! `Scope::Read`, posting alerts `Scope::Write`, changing silences `Scope::Admin`. Everything is
//! the principal's tenant's only; another tenant's silence id is simply not found.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::{Alert, LabelMap, now_ms};
use super::matchers::{self, Matcher};
use super::persist::{parse_rfc3339, rfc3339};
use super::silence::{Silence, SilenceError, SilenceMatcher, SilenceRequest};
use super::{AlertView, Manager};
use crate::ingest::auth::{Principal, Scope};
use crate::server::Body;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Most alerts one POST may carry.
const MAX_POSTED_ALERTS: usize = 10_000;
/// Default and largest `limit` of a history query.
const HISTORY_DEFAULT_LIMIT: usize = 100;
const HISTORY_MAX_LIMIT: usize = 10_000;

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Alertmanager's v2 errors are a JSON string.
fn v2_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!(message))
}

fn forbidden(scope: &str) -> Response<Body> {
    crate::query::error_response(
        StatusCode::FORBIDDEN,
        "forbidden",
        &format!("this token lacks the {scope} scope"),
    )
}

/// Serves one request of `principal`.
pub async fn handle(
    manager: &Manager,
    principal: &Principal,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = if parts.method == Method::POST || parts.method == Method::PUT {
        match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    return v2_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("request body larger than {MAX_BODY_BYTES} bytes"),
                    );
                }
                return v2_error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read request body: {e}"),
                );
            }
        }
    } else {
        Bytes::new()
    };
    serve(
        manager,
        principal,
        &parts.method,
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        &bytes,
    )
}

/// [`handle`] once the body is read: the routing and every endpoint.
pub fn serve(
    manager: &Manager,
    principal: &Principal,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
) -> Response<Body> {
    let path = path.trim_end_matches('/');
    let tenant = principal.tenant.as_str();
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let read = principal.has(Scope::Read);
    let admin = principal.has(Scope::Admin);
    match (method, path) {
        (&Method::GET, "/api/v2/alerts") => {
            if !read {
                return forbidden("read");
            }
            list_alerts(manager, tenant, &params)
        }
        (&Method::POST, "/api/v2/alerts") => {
            if !principal.has(Scope::Write) {
                return forbidden("write");
            }
            post_alerts(manager, tenant, body)
        }
        (&Method::GET, "/api/v2/alerts/groups") => {
            if !read {
                return forbidden("read");
            }
            list_groups(manager, tenant, &params)
        }
        (&Method::GET, "/api/v2/silences") => {
            if !read {
                return forbidden("read");
            }
            list_silences(manager, tenant, &params)
        }
        (&Method::POST, "/api/v2/silences") => {
            if !admin {
                return forbidden("admin");
            }
            post_silence(manager, tenant, body)
        }
        (&Method::GET, "/api/v2/receivers") => {
            if !read {
                return forbidden("read");
            }
            let names: Vec<Value> = manager
                .config()
                .receivers
                .iter()
                .map(|r| json!({"name": r.name}))
                .collect();
            json_response(StatusCode::OK, &Value::Array(names))
        }
        (&Method::GET, "/api/v2/status") => {
            if !read {
                return forbidden("read");
            }
            status(manager)
        }
        (&Method::GET, "/api/v1/alerting/history") => {
            if !read {
                return forbidden("read");
            }
            history(manager, tenant, &params)
        }
        (m, p) if p.starts_with("/api/v2/silence/") => {
            let id = &p["/api/v2/silence/".len()..];
            match *m {
                Method::GET => {
                    if !read {
                        return forbidden("read");
                    }
                    match manager.silence(tenant, id) {
                        Some(s) => json_response(StatusCode::OK, &silence_json(&s, now_ms())),
                        None => v2_error(StatusCode::NOT_FOUND, &format!("silence {id} not found")),
                    }
                }
                Method::DELETE => {
                    if !admin {
                        return forbidden("admin");
                    }
                    match manager.expire_silence(tenant, id) {
                        Ok(()) => json_response(StatusCode::OK, &Value::Null),
                        Err(SilenceError::NotFound(_)) => {
                            v2_error(StatusCode::NOT_FOUND, &format!("silence {id} not found"))
                        }
                        Err(e) => v2_error(StatusCode::BAD_REQUEST, &e.to_string()),
                    }
                }
                _ => v2_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            }
        }
        (
            _,
            "/api/v2/alerts"
            | "/api/v2/alerts/groups"
            | "/api/v2/silences"
            | "/api/v2/status"
            | "/api/v2/receivers"
            | "/api/v1/alerting/history",
        ) => v2_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => v2_error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn bool_param(params: &[(String, String)], name: &str, default: bool) -> Result<bool, String> {
    match param(params, name) {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(v) => Err(format!("{name}: expected true or false, got {v:?}")),
    }
}

fn filters(params: &[(String, String)]) -> Result<Vec<Matcher>, String> {
    let mut out = Vec::new();
    for (k, v) in params {
        if k == "filter" {
            out.extend(matchers::parse_list(v)?);
        }
    }
    Ok(out)
}

/// The alert filter of `GET /api/v2/alerts` and `/alerts/groups`.
struct AlertFilter {
    matchers: Vec<Matcher>,
    silenced: bool,
    inhibited: bool,
    active: bool,
    receiver: Option<regex::Regex>,
}

impl AlertFilter {
    fn from_params(params: &[(String, String)]) -> Result<Self, String> {
        let receiver = match param(params, "receiver") {
            Some(r) => Some(
                regex::Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| format!("receiver: invalid regex: {e}"))?,
            ),
            None => None,
        };
        Ok(Self {
            matchers: filters(params)?,
            silenced: bool_param(params, "silenced", true)?,
            inhibited: bool_param(params, "inhibited", true)?,
            active: bool_param(params, "active", true)?,
            receiver,
        })
    }

    fn keeps(&self, a: &AlertView) -> bool {
        if !self.silenced && !a.silenced_by.is_empty() {
            return false;
        }
        if !self.inhibited && !a.inhibited_by.is_empty() {
            return false;
        }
        if !self.active && a.silenced_by.is_empty() && a.inhibited_by.is_empty() {
            return false;
        }
        if let Some(re) = &self.receiver
            && !a.receivers.iter().any(|r| re.is_match(r))
        {
            return false;
        }
        matchers::all_match(&self.matchers, &a.alert.labels)
    }
}

fn alert_json(a: &AlertView) -> Value {
    let state = if a.silenced_by.is_empty() && a.inhibited_by.is_empty() {
        "active"
    } else {
        "suppressed"
    };
    let receivers: Vec<Value> = a.receivers.iter().map(|r| json!({"name": r})).collect();
    json!({
        "labels": a.alert.labels,
        "annotations": a.alert.annotations,
        "startsAt": rfc3339(a.alert.starts_at_ms),
        "endsAt": rfc3339(a.alert.ends_at_ms),
        "updatedAt": rfc3339(a.updated_ms),
        "fingerprint": a.fingerprint,
        "generatorURL": a.alert.generator_url,
        "receivers": receivers,
        "status": {
            "state": state,
            "silencedBy": a.silenced_by,
            "inhibitedBy": a.inhibited_by,
            "mutedBy": [],
        },
    })
}

fn list_alerts(manager: &Manager, tenant: &str, params: &[(String, String)]) -> Response<Body> {
    let filter = match AlertFilter::from_params(params) {
        Ok(f) => f,
        Err(e) => return v2_error(StatusCode::BAD_REQUEST, &e),
    };
    let list: Vec<Value> = manager
        .alerts(tenant)
        .iter()
        .filter(|a| filter.keeps(a))
        .map(alert_json)
        .collect();
    json_response(StatusCode::OK, &Value::Array(list))
}

fn list_groups(manager: &Manager, tenant: &str, params: &[(String, String)]) -> Response<Body> {
    let filter = match AlertFilter::from_params(params) {
        Ok(f) => f,
        Err(e) => return v2_error(StatusCode::BAD_REQUEST, &e),
    };
    let list: Vec<Value> = manager
        .groups(tenant)
        .iter()
        .filter_map(|g| {
            let alerts: Vec<Value> = g
                .alerts
                .iter()
                .filter(|a| filter.keeps(a))
                .map(alert_json)
                .collect();
            (!alerts.is_empty()).then(|| {
                json!({
                    "labels": g.labels,
                    "receiver": {"name": g.receiver},
                    "alerts": alerts,
                })
            })
        })
        .collect();
    json_response(StatusCode::OK, &Value::Array(list))
}

/// Unknown fields are ignored, as Alertmanager does, so newer clients keep working.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostableAlert {
    labels: LabelMap,
    #[serde(default)]
    annotations: LabelMap,
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    generator_url: String,
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn post_alerts(manager: &Manager, tenant: &str, body: &[u8]) -> Response<Body> {
    let posted: Vec<PostableAlert> = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => {
            return v2_error(
                StatusCode::BAD_REQUEST,
                &format!("invalid alerts (expected a JSON array of postable alerts): {e}"),
            );
        }
    };
    if posted.len() > MAX_POSTED_ALERTS {
        return v2_error(
            StatusCode::BAD_REQUEST,
            &format!("more than {MAX_POSTED_ALERTS} alerts in one request"),
        );
    }
    let now = now_ms();
    let resolve_ms = i64::try_from(manager.config().resolve_timeout.as_millis()).unwrap_or(0);
    let mut alerts = Vec::with_capacity(posted.len());
    for (i, p) in posted.into_iter().enumerate() {
        let fail = |m: String| v2_error(StatusCode::BAD_REQUEST, &format!("alert {i}: {m}"));
        if p.labels.is_empty() {
            return fail("it has no labels".into());
        }
        if let Some(bad) = p.labels.keys().find(|n| !valid_label_name(n)) {
            return fail(format!("invalid label name {bad:?}"));
        }
        let time = |s: &Option<String>| match s.as_deref() {
            None | Some("") => Ok(0),
            Some(t) => parse_rfc3339(t),
        };
        let starts = match time(&p.starts_at) {
            Ok(0) => now,
            Ok(t) => t,
            Err(e) => return fail(format!("startsAt: {e}")),
        };
        let (ends, timeout) = match time(&p.ends_at) {
            Ok(0) => (now.saturating_add(resolve_ms), true),
            Ok(t) => (t, false),
            Err(e) => return fail(format!("endsAt: {e}")),
        };
        if !timeout && ends < starts {
            return fail("endsAt is before startsAt".into());
        }
        alerts.push((
            Alert {
                labels: p.labels,
                annotations: p.annotations,
                starts_at_ms: starts,
                ends_at_ms: ends,
                generator_url: p.generator_url,
            },
            timeout,
        ));
    }
    manager.ingest(tenant, alerts);
    json_response(StatusCode::OK, &Value::Null)
}

fn silence_json(s: &Silence, now: i64) -> Value {
    json!({
        "id": s.id,
        "status": {"state": s.state(now).as_str()},
        "updatedAt": rfc3339(s.updated_at_ms),
        "matchers": s.matchers,
        "startsAt": rfc3339(s.starts_at_ms),
        "endsAt": rfc3339(s.ends_at_ms),
        "createdBy": s.created_by,
        "comment": s.comment,
    })
}

fn list_silences(manager: &Manager, tenant: &str, params: &[(String, String)]) -> Response<Body> {
    let filter = match filters(params) {
        Ok(f) => f,
        Err(e) => return v2_error(StatusCode::BAD_REQUEST, &e),
    };
    let now = now_ms();
    let mut list = manager.silences(tenant);
    // Alertmanager's order: active, then pending, then expired.
    list.sort_by_key(|s| (s.state(now) as u8, s.ends_at_ms));
    let out: Vec<Value> = list
        .iter()
        .filter(|s| {
            let as_labels: LabelMap = s
                .matchers
                .iter()
                .map(|m| (m.name.clone(), m.value.clone()))
                .collect();
            matchers::all_match(&filter, &as_labels)
        })
        .map(|s| silence_json(s, now))
        .collect();
    json_response(StatusCode::OK, &Value::Array(out))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostableSilence {
    #[serde(default)]
    id: Option<String>,
    matchers: Vec<SilenceMatcher>,
    starts_at: String,
    ends_at: String,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    comment: String,
}

fn post_silence(manager: &Manager, tenant: &str, body: &[u8]) -> Response<Body> {
    let p: PostableSilence = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => return v2_error(StatusCode::BAD_REQUEST, &format!("invalid silence: {e}")),
    };
    if p.created_by.trim().is_empty() {
        return v2_error(
            StatusCode::BAD_REQUEST,
            "invalid silence: createdBy is missing",
        );
    }
    if p.comment.trim().is_empty() {
        return v2_error(
            StatusCode::BAD_REQUEST,
            "invalid silence: comment is missing",
        );
    }
    let (starts, ends) = match (parse_rfc3339(&p.starts_at), parse_rfc3339(&p.ends_at)) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => {
            return v2_error(StatusCode::BAD_REQUEST, &format!("invalid silence: {e}"));
        }
    };
    let req = SilenceRequest {
        id: p.id,
        matchers: p.matchers,
        starts_at_ms: starts,
        ends_at_ms: ends,
        created_by: p.created_by,
        comment: p.comment,
    };
    match manager.upsert_silence(tenant, req) {
        Ok(id) => json_response(StatusCode::OK, &json!({"silenceID": id})),
        Err(SilenceError::NotFound(id)) => {
            v2_error(StatusCode::NOT_FOUND, &format!("silence {id} not found"))
        }
        Err(e) => v2_error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn status(manager: &Manager) -> Response<Body> {
    let started = now_ms() - i64::try_from(manager.uptime().as_millis()).unwrap_or(0);
    json_response(
        StatusCode::OK,
        &json!({
            "cluster": {"status": "disabled", "peers": []},
            "versionInfo": {
                "version": env!("CARGO_PKG_VERSION"),
                "revision": "",
                "branch": "",
                "buildUser": "",
                "buildDate": "",
                "goVersion": "none (sonde-collector)",
            },
            "config": {"original": manager.config().original},
            "uptime": rfc3339(started),
        }),
    )
}

fn history(manager: &Manager, tenant: &str, params: &[(String, String)]) -> Response<Body> {
    let limit = match param(params, "limit") {
        None => HISTORY_DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) => n.min(HISTORY_MAX_LIMIT),
            Err(_) => {
                return crate::query::error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_data",
                    &format!("limit: expected a number, got {l:?}"),
                );
            }
        },
    };
    let entries = manager.history(
        tenant,
        param(params, "fingerprint"),
        param(params, "alertname"),
        limit,
    );
    let data: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "time": rfc3339(e.time_ms),
                "kind": e.kind,
                "receiver": e.receiver,
                "groupKey": e.group_key,
                "alerts": e.alerts,
                "detail": e.detail,
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({"status": "success", "data": data}))
}
