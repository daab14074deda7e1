//! The HTTP server: accepts connections, dispatches by path, and shuts down in a fixed order.
//!
//! Shutdown order (on the cancellation token, i.e. SIGTERM in the binary): `/readyz` turns
//! 503 at once; the listener is dropped (no new connections); in-flight requests finish, bounded
//! by the drain timeout; then the remote-write sinks deliver what their disk queues hold, again
//! bounded by the drain timeout (the rest stays on disk for the next start); last, the store's
//! WAL writer fsyncs what is pending and stops. A push that got its 200 was durable before the
//! reply, so nothing acknowledged depends on this order.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::alerting::evaluate::RecordSink;
use crate::alerting::service::Service;
use crate::config::Config;
use crate::events::Events;
use crate::ingest::auth::{Auth, Denied, Principal, Scope};
use crate::ingest::dedup::Dedup;
use crate::ingest::limit::RateLimits;
use crate::ingest::{self, IngestError};
use crate::query;
use crate::query::eval::Reader;
use crate::route::Router;
use crate::sinks::alerting::AlertingForwarder;
use crate::sinks::remote_write::{RemoteWriteConfig, RemoteWriteSink};
use crate::store::{Store, StoreConfig, StoreError};

pub type Body = Full<Bytes>;

/// A connection's byte stream, plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Memory for the shapes of senders' batches and their series' work (validation, remote-write
/// encoding: about 30 KB for an agent's 164 series): room for a few thousand agents per
/// collector.
const INGEST_SHAPE_BYTES: usize = 128 << 20;

/// Everything a request handler can reach.
pub struct AppState {
    pub config: Config,
    pub auth: Auth,
    pub dedup: Dedup,
    /// Each sender's last batch shape and the work done for its series.
    shapes: crate::shapes::Shapes<crate::route::SeriesWork>,
    pub limits: RateLimits,
    pub store: Store,
    pub router: Router,
    pub events: Events,
    /// Forwards fast-path samples to a separate alerting instance (`--alerting`).
    pub forwarder: Option<AlertingForwarder>,
    /// Metric families' types, for `/api/v1/metadata`.
    pub metadata: Arc<crate::query::metadata::Metadata>,
    /// Range query answers about settled time.
    pub results: crate::query::cache::ResultsCache,
    /// The alerting loop, with `--rules-dir` or `--alert-config`.
    pub alerting: Option<Service>,
    /// The pull model, with `--scrape-config`.
    pub scrape: Option<Scraping>,
    ready: AtomicBool,
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error("cannot open the store in {dir}: {source}")]
    OpenStore {
        dir: std::path::PathBuf,
        source: StoreError,
    },
    #[error(transparent)]
    Tokens(#[from] crate::ingest::auth::TokenFileError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot open a remote-write sink: {0}")]
    Sink(crate::sinks::remote_write::SinkError),
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot start the alerting loop: {0}")]
    Alerting(#[from] crate::alerting::service::ServiceError),
    #[error("cannot start scraping: {0}")]
    Scrape(#[from] crate::scrape::ConfigError),
}

/// The scrape manager, the pool membership it uses, and what stops them.
pub struct Scraping {
    pub manager: crate::scrape::ScrapeManager,
    /// Member of an etcd pool: leaving revokes the lease.
    in_etcd: bool,
    stop: CancellationToken,
}

impl Scraping {
    async fn start(
        config: &Config,
        path: &std::path::Path,
        router: &Router,
    ) -> Result<Scraping, RunError> {
        use crate::scrape::pool::{
            Alone, DnsPeers, ETCD_MEMBER_PREFIX, EtcdMembership, Membership, Static,
        };
        let p = path.to_path_buf();
        let file = tokio::task::spawn_blocking(move || crate::scrape::load(&p)).await??;
        let s = &config.scrape;
        let stop = CancellationToken::new();
        let me = s.advertise_url.clone();
        let in_etcd = !s.etcd.is_empty();
        let membership: Arc<dyn Membership> = if in_etcd {
            Arc::new(EtcdMembership::start(
                sonde_common::etcd::EtcdClient::new(s.etcd.clone()),
                ETCD_MEMBER_PREFIX,
                me.clone(),
                s.pool_ttl,
                stop.clone(),
            ))
        } else if let Some(name) = &s.pool_dns {
            Arc::new(DnsPeers::start(
                me.clone(),
                name.clone(),
                std::time::Duration::from_secs(5),
                stop.clone(),
            ))
        } else if !s.peers.is_empty() {
            Arc::new(Static::new(me.clone(), s.peers.clone()))
        } else {
            Arc::new(Alone::new(me.clone()))
        };
        let jobs = file.jobs.len();
        let manager = crate::scrape::ScrapeManager::start(
            crate::scrape::ScrapeManagerOptions {
                config: file,
                default_etcd: s.etcd.clone(),
                tenant: String::new(),
                replicas: s.replicas,
            },
            membership,
            Arc::new(router.clone()),
            stop.clone(),
        );
        tracing::info!(file = %path.display(), jobs, member = %me, replicas = s.replicas, "scraping");
        Ok(Scraping {
            manager,
            in_etcd,
            stop,
        })
    }

    /// Stops scraping (no stale markers: another member or the next start continues the
    /// series) and leaves the pool (the etcd lease is revoked, so the others take over at once).
    async fn stop(&self) {
        self.stop.cancel();
        self.manager.stopped().await;
        if self.in_etcd {
            // The registration revokes its lease when cancelled, in its own task: give the
            // revoke a moment to reach etcd before the process exits.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }
}

/// Reloads the scrape configuration when its file changes.
async fn watch_scrape_config(
    path: std::path::PathBuf,
    manager: crate::scrape::ScrapeManager,
    stop: CancellationToken,
) {
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    let mut last = stamp(&path);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        let p = path.clone();
        match tokio::task::spawn_blocking(move || crate::scrape::load(&p)).await {
            Ok(Ok(file)) => {
                manager.reload(file);
                tracing::info!(file = %path.display(), "scrape configuration reloaded");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "scrape configuration refused; the previous one keeps running")
            }
            Err(e) => tracing::error!(error = %e, "scrape configuration reload failed"),
        }
    }
}

/// Recording rules' results go through the normal route.
struct RouteRecords(Router);

impl RecordSink for RouteRecords {
    fn record<'a>(
        &'a self,
        tenant: &'a str,
        batch: sonde_common::wire::Batch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.0
                .route(tenant, &batch, None, None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// Runs the collector on `listener` until `shutdown` is cancelled, then drains and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking({
        let dir = dir.clone();
        let storage = config.storage.clone();
        move || {
            Store::open(StoreConfig {
                retention: storage.retention,
                retention_bytes: storage.retention_bytes,
                block_range: storage.block_range,
                out_of_order_window: storage.out_of_order_window,
                maintenance_interval: storage.maintenance_interval,
                wal_fsync: storage.wal_fsync,
                commit_delay: storage.commit_delay,
                ..StoreConfig::new(dir)
            })
        }
    })
    .await?
    .map_err(|source| RunError::OpenStore { dir, source })?;
    // Remote-write sinks, each with its disk queue under the data directory. With any, the
    // embedded store is no longer a destination (fleet mode).
    let mut sinks = Vec::new();
    for (i, url) in config.remote_write.iter().enumerate() {
        let mut cfg = RemoteWriteConfig::new(
            url.clone(),
            config
                .data_dir
                .join("queues")
                .join(format!("remote-write-{i}")),
        );
        cfg.drain_timeout = config.drain_timeout;
        cfg.queue.max_bytes = config.queue_max_bytes;
        cfg.queue.fsync = config.queue_fsync;
        cfg.queue.commit_delay = config.storage.commit_delay;
        cfg.flush_interval = config.remote_write_flush_interval;
        cfg.direct = config.remote_write_direct;
        let (sink, report) = tokio::task::spawn_blocking(move || RemoteWriteSink::open(cfg))
            .await?
            .map_err(RunError::Sink)?;
        tracing::info!(url = %url, queued = report.records, damaged = report.damaged_regions, "remote-write sink ready");
        sinks.push(sink);
    }
    let remote = !sinks.is_empty();
    let auth = match &config.token_file {
        Some(path) => Auth::load(path)?,
        None => Auth::disabled(),
    };
    if config.insecure_no_auth && !auth.enabled() {
        tracing::warn!(listen = %config.listen, "running WITHOUT authentication (--insecure-no-auth): anyone who reaches this address can write and read every series");
    }
    let forwarder = config.alerting.forward_to.clone().map(|url| {
        tracing::info!(url = %url, "forwarding threshold samples to the alerting instance");
        AlertingForwarder::start(url, config.alerting.query_token.clone(), shutdown.clone())
    });
    let metadata = Arc::new(crate::query::metadata::Metadata::default());
    let mut router =
        Router::new((!remote).then(|| store.clone()), sinks.clone()).with_tap(metadata.clone());
    if let Some(f) = &forwarder {
        router = router.with_tap(Arc::new(f.clone()));
    }
    // Recording rules write through the route as it is now (store and sinks, not the fast path).
    let alerting = Service::start(
        &config.alerting,
        &config.query,
        &config.data_dir,
        &store,
        Arc::new(RouteRecords(router.clone())),
    )
    .await?;
    if let Some(fp) = alerting.as_ref().and_then(|a| a.fastpath.clone()) {
        router = router.with_tap(fp);
    }
    let scrape = match &config.scrape.config_file {
        Some(path) => Some(Scraping::start(&config, path, &router).await?),
        None => None,
    };
    let state = Arc::new(AppState {
        auth,
        dedup: Dedup::new(config.ingest.dedup_batches),
        shapes: crate::shapes::Shapes::with_max_bytes(INGEST_SHAPE_BYTES),
        limits: RateLimits::new(
            config.ingest.tenant_samples_per_second,
            config.ingest.tenant_samples_per_second * 2.0,
        ),
        router,
        forwarder,
        metadata,
        results: crate::query::cache::ResultsCache::new(config.query.cache_points),
        alerting,
        scrape,
        store,
        events: Events::default(),
        ready: AtomicBool::new(true),
        config,
    });
    let local = listener.local_addr().ok();
    tracing::info!(listen = ?local, data_dir = %state.config.data_dir.display(), "collector ready");

    if state.auth.enabled() {
        tokio::spawn(reload_tokens(state.clone(), shutdown.clone()));
    }
    if state.alerting.is_some() {
        tokio::spawn(reload_on_sighup(state.clone(), shutdown.clone()));
    }
    if let (Some(s), Some(path)) = (&state.scrape, &state.config.scrape.config_file) {
        tokio::spawn(watch_scrape_config(
            path.clone(),
            s.manager.clone(),
            s.stop.clone(),
        ));
    }
    // The senders stop only after the HTTP side has drained (below), then drain their queues.
    let sinks_stop = CancellationToken::new();
    let senders: Vec<_> = sinks
        .into_iter()
        .map(|s| s.start(sinks_stop.clone()))
        .collect();
    let tls = match &state.config.tls {
        Some(cfg) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
            cfg,
        )?)),
        None => None,
    };
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly, keep serving.
                        tracing::warn!("cannot accept connection: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
                tokio::spawn(async move {
                    // The TLS handshake runs here, not in the accept loop, so a slow or hostile
                    // client cannot hold up the others.
                    let io: Box<dyn Io> = match tls {
                        None => Box::new(stream),
                        Some(acceptor) => match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(s)) => Box::new(s),
                            Ok(Err(e)) => {
                                state.events.request_denied("tls_handshake", "", &peer.to_string());
                                tracing::debug!(%peer, "TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => return,
                        },
                    };
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, peer, req).await) }
                    });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, "connection ended with error: {e}");
                    }
                });
            }
            _ = shutdown.cancelled() => break,
        }
    }
    state.ready.store(false, Ordering::SeqCst);
    drop(listener);
    tracing::info!(timeout = ?state.config.drain_timeout, "shutting down: draining in-flight requests");
    if tokio::time::timeout(state.config.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached with requests still in flight; closing them");
    }
    // Deliver what the sinks' queues hold, bounded by the drain timeout; the rest stays on disk
    // for the next start.
    sinks_stop.cancel();
    for sender in senders {
        let _ = sender.await;
    }
    if let Some(s) = &state.scrape {
        s.stop().await;
    }
    if let Some(a) = &state.alerting {
        a.stop().await;
    }
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.close()).await?;
    tracing::info!("collector stopped");
    Ok(())
}

/// `/api/v1/rules` and `/api/v1/alerts` in Prometheus's shapes, for the principal's tenant;
/// empty lists when no rules run.
fn alerting_api(
    state: &AppState,
    principal: &Principal,
    req: &Request<Incoming>,
) -> Response<Body> {
    let evaluator = state.alerting.as_ref().and_then(|a| a.evaluator.as_ref());
    let data = if req.uri().path() == "/api/v1/alerts" {
        match evaluator {
            Some(ev) => ev.alerts_json(&principal.tenant),
            None => serde_json::json!({"alerts": []}),
        }
    } else {
        let params =
            crate::query::params::Params::parse(&[req.uri().query().unwrap_or("").as_bytes()]);
        let own = |name: &str| params.all(name).into_iter().map(str::to_owned).collect();
        let filter = crate::alerting::evaluate::RulesFilter {
            kind: params
                .get("type")
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            rule_names: own("rule_name[]"),
            group_names: own("rule_group[]"),
            files: own("file[]"),
            exclude_alerts: params.get("exclude_alerts") == Some("true"),
        };
        if let Some(k) = &filter.kind
            && k != "alert"
            && k != "record"
        {
            return query::error_response(
                StatusCode::BAD_REQUEST,
                "bad_data",
                &format!("unsupported type {k:?}: alert or record"),
            );
        }
        match evaluator {
            Some(ev) => ev.rules_json(&principal.tenant, &filter),
            None => serde_json::json!({"groups": []}),
        }
    };
    query::success_response(data)
}

/// `POST /api/v1/alerting/samples`: a fleet collector's forwarded samples, for the fast path
/// only (they are already stored where they belong).
async fn fast_path_samples(
    state: &AppState,
    principal: &Principal,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(fp) = state.alerting.as_ref().and_then(|a| a.fastpath.as_ref()) else {
        return text(
            StatusCode::NOT_FOUND,
            "no rules run here: start this collector with --rules-dir\n",
        );
    };
    let cfg = &state.config.ingest;
    let (parts, body) = req.into_parts();
    let decoded = async {
        let c = ingest::decode::check_headers(&parts.headers)?;
        let bytes =
            ingest::decode::read_body(body, &parts.headers, cfg.wire.max_encoded_bytes).await?;
        let batch = ingest::decode::decode_batch(&bytes, c, &cfg.wire)?;
        batch.validate(&cfg.limits).map_err(IngestError::from)?;
        Ok::<_, IngestError>(batch)
    }
    .await;
    match decoded {
        Ok(batch) => {
            fp.offer(&principal.tenant, &batch);
            text(StatusCode::OK, "")
        }
        Err(e) => text(e.status(), format!("{e}\n")),
    }
}

/// `GET /api/v1/alerting/selectors`: what the fast path wants forwarded, by tenant (every
/// tenant's for an admin token, else the token's own).
fn fast_path_selectors(state: &AppState, principal: &Principal) -> Response<Body> {
    let mut data = serde_json::Map::new();
    if let Some(fp) = state.alerting.as_ref().and_then(|a| a.fastpath.as_ref())
        && let Some(rules) = state.alerting.as_ref().and_then(|a| a.rules.as_ref())
    {
        let mut tenants: Vec<String> = rules
            .current()
            .groups
            .iter()
            .map(|g| g.tenant.clone())
            .collect();
        tenants.sort();
        tenants.dedup();
        for t in tenants {
            if principal.has(Scope::Admin) || t == principal.tenant {
                let sel = fp.selectors(&t);
                if !sel.is_empty() {
                    data.insert(t, serde_json::json!(sel));
                }
            }
        }
    }
    query::success_response(serde_json::Value::Object(data))
}

/// Reloads the rules and the alert manager configuration on SIGHUP.
async fn reload_on_sighup(state: Arc<AppState>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; reload with POST /-/reload");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = shutdown.cancelled() => return,
        }
        tracing::info!("SIGHUP received: reloading rules and alert manager configuration");
        if let Some(a) = &state.alerting
            && let Err(e) = a.reload().await
        {
            tracing::error!(error = %e, "reload refused; the previous configuration keeps running");
        }
    }
}

/// The scope a request needs; `None` for the probes, which are always open.
fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    match (method, path) {
        (_, "/healthz" | "/readyz") => None,
        (
            &Method::POST,
            "/api/v1/push" | "/api/v1/write" | "/api/v1/alerting/samples" | "/api/v2/alerts",
        ) => Some(Scope::Write),
        (&Method::POST, "/api/v2/silences" | "/-/reload") => Some(Scope::Admin),
        (&Method::DELETE, p) if p.starts_with("/api/v2/silence/") => Some(Scope::Admin),
        _ => Some(Scope::Read),
    }
}

/// The tenant a request acts for. A request may name one in `X-Scope-OrgID`: with
/// authentication that must be the token's own tenant, except that a token with the admin
/// scope may forward fast-path samples for any tenant (a fleet collector does so).
fn acting_tenant(
    auth_enabled: bool,
    path: &str,
    principal: Principal,
    headers: &hyper::HeaderMap,
) -> Result<Principal, Denied> {
    let Some(named) = headers
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    else {
        return Ok(principal);
    };
    if named == principal.tenant {
        return Ok(principal);
    }
    if path == "/api/v1/alerting/samples" && principal.has(Scope::Admin) {
        return Ok(principal.for_tenant(named));
    }
    if !auth_enabled {
        return Ok(principal);
    }
    Err(Denied::OtherTenant {
        token: principal.tenant,
        named: named.to_owned(),
    })
}

/// 401 (with a Bearer challenge) or 403, in the shape the endpoint speaks.
fn denied(state: &AppState, path: &str, peer: SocketAddr, d: Denied) -> Response<Body> {
    let status = match d {
        Denied::Forbidden(_) | Denied::OtherTenant { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    state
        .events
        .request_denied(d.reason(), path, &peer.to_string());
    let mut resp = if (path.starts_with("/api/v1/") || path.starts_with("/api/v2/"))
        && path != "/api/v1/push"
        && path != "/api/v1/write"
    {
        query::error_response(status, d.reason(), &d.to_string())
    } else {
        text(status, format!("{d}\n"))
    };
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sonde\""),
        );
    }
    resp
}

async fn handle(state: Arc<AppState>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let principal = match required_scope(req.method(), &path) {
        None => Principal::anonymous(),
        Some(scope) => match state.auth.check(req.headers().get(AUTHORIZATION), scope) {
            Ok(p) => p,
            Err(d) => return denied(&state, &path, peer, d),
        },
    };
    let principal = match acting_tenant(state.auth.enabled(), &path, principal, req.headers()) {
        Ok(p) => p,
        Err(d) => return denied(&state, &path, peer, d),
    };
    match (req.method(), path.as_str()) {
        (&Method::POST, "/api/v1/push") => {
            ingest(&state, &principal, peer, req, Protocol::Native).await
        }
        (&Method::POST, "/api/v1/write") => {
            ingest(&state, &principal, peer, req, Protocol::RemoteWrite).await
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if state.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut body = state.events.render(
                &state.store.stats(),
                &state.store.replay_report(),
                state.router.queue_fill(),
            );
            // Every sink's metrics, told apart by a `url` label.
            let sinks = state.router.sinks();
            let urls: Vec<String> = sinks.iter().map(|s| s.url().to_string()).collect();
            let queues: Vec<_> = sinks.iter().map(|s| s.queue_stats()).collect();
            let rows: Vec<_> = sinks
                .iter()
                .zip(&urls)
                .zip(&queues)
                .map(|((sink, url), queue)| (url.as_str(), sink.stats(), queue))
                .collect();
            let mut e = sonde_common::telemetry::TextEncoder::new();
            crate::sinks::remote_write::SinkStats::render_all(&mut e, &rows);
            state.results.render_metrics(&mut e);
            if let Some(f) = &state.forwarder {
                f.render_metrics(&mut e);
            }
            if let Some(a) = &state.alerting {
                a.render_metrics(&mut e);
            }
            if let Some(s) = &state.scrape {
                s.manager.render_metrics(&mut e);
            }
            body.push_str(&e.finish());
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (_, "/api/v1/rules" | "/api/v1/alerts") => alerting_api(&state, &principal, &req),
        (&Method::GET, "/api/v1/targets") => {
            let data = match &state.scrape {
                Some(s) => s.manager.targets_json(),
                None => serde_json::json!({"activeTargets": [], "droppedTargets": []}),
            };
            query::success_response(data)
        }
        (&Method::POST, "/api/v1/alerting/samples") => {
            fast_path_samples(&state, &principal, req).await
        }
        (&Method::GET, "/api/v1/alerting/selectors") => fast_path_selectors(&state, &principal),
        (&Method::POST, "/-/reload") => match &state.alerting {
            Some(a) => match a.reload().await {
                Ok(()) => text(StatusCode::OK, "reloaded\n"),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("reload refused: {e}\n")),
            },
            None => text(
                StatusCode::OK,
                "nothing to reload: no --rules-dir or --alert-config\n",
            ),
        },
        (_, p) if p.starts_with("/api/v2/") || p == "/api/v1/alerting/history" => {
            match &state.alerting {
                Some(a) => crate::alerting::manager::api::handle(&a.manager, &principal, req).await,
                None => query::error_response(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "the alert manager is not running: start the collector with --alert-config or --rules-dir",
                ),
            }
        }
        (_, p) if p.starts_with("/api/v1/") => query::handle(&state, &principal, req).await,
        (&Method::GET, "/") => {
            let lookback = state.config.query.lookback.as_millis() as i64;
            let reader = Reader {
                store: &state.store,
                tenant: &principal.tenant,
            };
            let alerts = state
                .alerting
                .as_ref()
                .and_then(|a| a.evaluator.as_ref())
                .map(|ev| ev.alerts_json(&principal.tenant));
            let page = crate::overview::render(
                &reader,
                sonde_common::model::now_ms(),
                lookback,
                alerts.as_ref(),
            );
            let mut resp = Response::new(Full::new(Bytes::from(page)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The two push protocols.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `POST /api/v1/push`: native batches; 200 when accepted.
    Native,
    /// `POST /api/v1/write`: Prometheus remote write 1.0; 204 when accepted, as Prometheus does.
    RemoteWrite,
}

/// The whole ingest path of a push: checks, bounded read, decode, duplicate suppression, rate
/// limit, validation, routing. The reply is a success only once the batch is durable.
async fn ingest(
    state: &AppState,
    principal: &Principal,
    peer: SocketAddr,
    req: Request<Incoming>,
    protocol: Protocol,
) -> Response<Body> {
    let started = Instant::now();
    let cfg = &state.config.ingest;
    let (parts, body) = req.into_parts();
    let reject = |e: IngestError, samples: usize| {
        state
            .events
            .batch_rejected(e.reason(), samples, &peer, &e.to_string());
        text(e.status(), format!("{e}\n"))
    };
    let compression = match protocol {
        Protocol::Native => match ingest::decode::check_headers(&parts.headers) {
            Ok(c) => Some(c),
            Err(e) => return reject(e, 0),
        },
        Protocol::RemoteWrite => match ingest::remote_write::check_headers(&parts.headers) {
            Ok(()) => None,
            Err(e) => return reject(e, 0),
        },
    };
    let bytes =
        match ingest::decode::read_body(body, &parts.headers, cfg.wire.max_encoded_bytes).await {
            Ok(b) => b,
            Err(e) => return reject(e, 0),
        };
    let decoded = match compression {
        Some(c) => {
            let mut batch = ingest::pool::Pooled::take();
            ingest::decode::decode_batch_into(&bytes, c, &cfg.wire, &mut batch).map(|()| batch)
        }
        None => ingest::remote_write::decode(&bytes, cfg.wire.max_decoded_bytes)
            .map(ingest::pool::Pooled::from),
    };
    let batch = match decoded {
        Ok(b) => b,
        Err(e) => return reject(e, 0),
    };
    let samples = batch.sample_count();
    let ok = || {
        text(
            if protocol == Protocol::Native {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            },
            "",
        )
    };
    let dedup_key = state.dedup.key(
        &principal.tenant,
        &batch.header.agent_id,
        batch.header.sequence,
    );
    if let Some(key) = dedup_key
        && state.dedup.seen(key)
    {
        state.events.duplicate_batch(samples);
        return ok();
    }
    if let Err(wait) = state
        .limits
        .admit(&principal.tenant, samples, Instant::now())
    {
        state.events.batch_rejected(
            "rate_limited",
            samples,
            &peer,
            "tenant over its samples-per-second limit",
        );
        let mut resp = text(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "tenant over its limit of samples per second; retry in {} s\n",
                wait.as_secs()
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().to_string()) {
            resp.headers_mut().insert(RETRY_AFTER, v);
        }
        return resp;
    }
    // A native sender's batches name the same series in the same order flush after flush:
    // what was worked out for them once (validation, encodings) is kept with their shape.
    // Remote write has no sender id, and its requests carry series in any order.
    let sender = batch.header.agent_id.as_str();
    let remember = protocol == Protocol::Native && !sender.is_empty();
    let known = remember
        .then(|| state.shapes.take(&principal.tenant, sender))
        .flatten()
        .filter(|shape| shape.matches(&batch));
    if let Err(e) =
        ingest::validate::validate(&batch, cfg, sonde_common::model::now_ms(), known.is_some())
    {
        return reject(e, samples);
    }
    let mut shape = remember
        .then(|| known.unwrap_or_else(|| crate::shapes::Shape::of(&batch, Default::default())));
    let envelope = (protocol == Protocol::Native).then_some(&bytes);
    let routed = state
        .router
        .route(
            &principal.tenant,
            &batch,
            envelope,
            shape.as_mut().map(|s| &mut s.work),
        )
        .await;
    if let Some(shape) = shape {
        state.shapes.put(&principal.tenant, sender, shape);
    }
    match routed {
        Ok(stats) => {
            if let Some(key) = dedup_key {
                state.dedup.remember(key);
            }
            state
                .events
                .batch_accepted(bytes.len(), &stats, samples, started.elapsed());
            ok()
        }
        Err(e) => {
            // A full queue asks the sender to back off (429) so the load balancer shifts load;
            // any other failure is the destination's (503). Either way the sender keeps its data.
            let (status, reason) = if e.is_full() {
                (StatusCode::TOO_MANY_REQUESTS, "queue_full")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            };
            state
                .events
                .batch_rejected(reason, samples, &peer, &e.to_string());
            let mut resp = text(status, format!("{e}\n"));
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            resp
        }
    }
}

pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Re-reads the token file when it changes (checked every 2 s) and on SIGHUP. A broken file is
/// refused with its line and reason; the tokens in force stay.
async fn reload_tokens(state: Arc<AppState>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        let forced = tokio::select! {
            _ = ticker.tick() => false,
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = shutdown.cancelled() => return,
        };
        match state.auth.reload(forced) {
            Ok(true) => {
                state.events.token_reloads.add("ok", 1);
                tracing::info!("token file reloaded");
            }
            Ok(false) => {}
            Err(e) => {
                state.events.token_reloads.add("error", 1);
                tracing::error!("{e}; the previous tokens stay in force");
            }
        }
    }
}
