//! The HTTP server: webhook receiver, health, readiness and metrics on `server.listen`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;

pub use crate::app::AppState;
use crate::app::error_response;
use crate::webhooks;

pub fn router(state: Arc<AppState>) -> Router {
    let api = crate::api::Api::new(state.store.clone(), &state.config);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/webhooks/github", post(github_app_webhook))
        .route("/webhooks/{forge}/{connection_id}", post(webhooks::receive))
        .route("/github/app/new", get(github_app_new))
        .route("/github/app/callback", get(github_app_callback))
        .with_state(state.clone())
        .merge(
            // API requests run in a `request` span; a webhook delivery runs in its own
            // `delivery` span (webhooks.rs), which names the repository and the PR.
            crate::api::router(api.clone())
                .merge(crate::dashboard::router(api))
                .layer(axum::middleware::from_fn(crate::app::traced)),
        )
}

type Params = axum::extract::Query<std::collections::HashMap<String, String>>;

/// An HTML page, no-store (it carries a one-time state).
fn page(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn app_error(e: crate::apps::AppError) -> Response {
    use crate::apps::AppError;
    let status = match &e {
        AppError::Invalid(_) => StatusCode::BAD_REQUEST,
        AppError::NotFound(_) => StatusCode::NOT_FOUND,
        AppError::Forge(_) => StatusCode::BAD_GATEWAY,
        AppError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    tracing::warn!(error = %e, "GitHub App manifest flow");
    let said = crate::apps::html(&e.to_string());
    page(
        status,
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>GitHub App not created</title></head>\n<body><main><h1>GitHub App not created</h1><p>{said}</p></main></body></html>\n"
        ),
    )
}

/// `GET /github/app/new?state=…`: the page that posts the app's manifest to GitHub.
async fn github_app_new(State(app): State<Arc<AppState>>, q: Params) -> Response {
    let state = q.get("state").map(String::as_str).unwrap_or_default();
    match crate::apps::form_page(app.store.as_ref(), &app.config, state) {
        Ok(html) => page(StatusCode::OK, html),
        Err(e) => app_error(e),
    }
}

/// `GET /github/app/callback?code=…&state=…`: GitHub's redirect after the app was made.
async fn github_app_callback(State(app): State<Arc<AppState>>, q: Params) -> Response {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    match crate::apps::finish(app.store.as_ref(), &app.config, get("code"), get("state")).await {
        Ok(made) => page(StatusCode::OK, crate::apps::done_page(&made)),
        Err(e) => app_error(e),
    }
}

/// `POST /webhooks/github`: the GitHub App's deliveries. Its installation events connect and
/// disconnect the installation's repositories (`apps::installation_event`); every other
/// delivery is taken as one of its repository's connection (`webhooks::receive_app`).
async fn github_app_webhook(
    State(app): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !matches!(event, "installation" | "installation_repositories") {
        return webhooks::receive_app(State(app), headers, body).await;
    }
    let (payload, apps) = match webhooks::verified_app_delivery(&app, &headers, body).await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    use crate::apps::AppError;
    match crate::apps::installation_event(app.store.as_ref(), &app.config, &apps, &payload).await {
        Ok(change) => {
            app.metrics.delivery("github", event, "applied");
            (
                StatusCode::OK,
                axum::Json(json!({"status": "applied", "change": change})),
            )
                .into_response()
        }
        Err(e @ (AppError::Invalid(_) | AppError::NotFound(_))) => {
            error_response(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
        }
        Err(e) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    match app.store.ready().await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response(),
        Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string()),
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    // Drills run from any process (`endor backup drill`) are counted from the store.
    if let Ok((passed, failed)) = app.store.drill_counts().await {
        for (outcome, n) in [("passed", passed), ("failed", failed)] {
            app.metrics
                .backup_drills
                .get_or_create(&crate::metrics::OutcomeLabels { outcome })
                .set(n);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

/// Which parts of `endor serve` run in this process (`--roles api,worker,reaper,gateway`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Webhooks, the JSON API, health, readiness and metrics on `server.listen`.
    pub api: bool,
    /// Job workers (previews, comments), the write-back sender, usage sampling.
    pub worker: bool,
    /// Reaper passes on `reaper.schedule` (when `reaper.enabled`).
    pub reaper: bool,
    /// The preview gateway on `gateway.listen`.
    pub gateway: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        api: true,
        worker: true,
        reaper: true,
        gateway: true,
    };

    /// `api,worker,reaper,gateway` or any non-empty subset; the error names the bad part.
    pub fn parse(s: &str) -> Result<Roles, String> {
        let mut r = Roles {
            api: false,
            worker: false,
            reaper: false,
            gateway: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "api" => r.api = true,
                "worker" => r.worker = true,
                "reaper" => r.reaper = true,
                "gateway" => r.gateway = true,
                other => {
                    return Err(format!(
                        "unknown role `{}`: use api, worker, reaper, gateway (comma-separated)",
                        other.escape_debug()
                    ));
                }
            }
        }
        Ok(r)
    }
}

/// Every role of `endor serve` in this process: the API on `api`, the preview gateway on
/// `gateway`, the job workers (previews) and the reaper, until `shutdown` resolves.
pub async fn serve_with_gateway(
    state: Arc<AppState>,
    api: TcpListener,
    gateway: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_roles(state, Roles::ALL, Some(api), Some(gateway), shutdown).await
}

/// The roles of `roles` in this process, until `shutdown` resolves. The API and the gateway
/// run when their listener is given.
pub async fn serve_roles(
    state: Arc<AppState>,
    roles: Roles,
    api: Option<TcpListener>,
    gateway: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tracing::info!(?roles, "starting");
    let forges = Arc::new(
        crate::writeback::ForgeClients::new(&state.config).with_store(state.store.clone()),
    );
    let outbox_wake = Arc::new(tokio::sync::Notify::new());
    let lifecycle = crate::previews::Lifecycle::new(
        state.store.clone(),
        &state.config,
        state.metrics.clone(),
        forges.clone(),
        outbox_wake.clone(),
    );
    // Every writer of sites' logs in this process shares the lifecycle's (and its limits).
    let limits = tokio::spawn(refresh_log_limits(
        state.clone(),
        lifecycle.logs().clone(),
        rx.clone(),
    ));
    let gateway_task = match gateway {
        Some(gateway) => {
            let gw =
                crate::gateway::Gateway::from_config(state.store.clone(), &state.config.gateway);
            if state.config.gateway.access_log {
                gw.log_to(crate::gateway::AccessLog::start(lifecycle.logs().clone()));
            }
            tracing::info!(addr = %gateway.local_addr()?, domain = %state.config.gateway.domain, "gateway listening");
            let gw_rx = rx.clone();
            Some(tokio::spawn(async move {
                use axum::serve::ListenerExt;
                axum::serve(gateway.tap_io(no_delay), gw.app())
                    .with_graceful_shutdown(stopped(gw_rx))
                    .await
            }))
        }
        None => None,
    };
    let mut sender = None;
    let mut workers = None;
    let mut sampler = None;
    let mut reconciler = None;
    let mut hosts = None;
    let mut shipper = None;
    if roles.worker {
        sender = Some(crate::writeback::Sender::spawn(
            state.store.clone(),
            forges.clone(),
            outbox_wake.clone(),
            state.metrics.clone(),
        ));
        if let Err(e) = lifecycle.keep_host_alive().await {
            tracing::warn!(error = %e, "could not record this worker host in the store");
        }
        match lifecycle.resume_all().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "relaunching previews whose processes are gone"),
            Err(e) => tracing::warn!(error = %e, "could not look for previews to relaunch"),
        }
        let comments = crate::commands::CommentRunner::new(
            state.store.clone(),
            &state.config,
            lifecycle.clone(),
            forges.clone(),
            outbox_wake.clone(),
        );
        let dispatcher =
            crate::worker::Dispatcher::new(lifecycle.clone(), comments, state.metrics.clone());
        workers = Some(crate::jobs::WorkerPool::spawn(
            state.store.clone(),
            Arc::new(dispatcher),
            crate::jobs::WorkerConfig {
                workers: state.config.jobs.workers,
                lease: state.config.jobs.lease.0,
                wake: Some(state.jobs_queued.clone()),
                region: Some(state.config.jobs.region.clone()).filter(|r| !r.is_empty()),
                ..Default::default()
            },
        ));
        tracing::info!(workers = state.config.jobs.workers, "job workers started");
        sampler = Some(tokio::spawn(sample_usage(state.clone(), rx.clone())));
        reconciler = Some(tokio::spawn(reconcile(lifecycle.clone(), rx.clone())));
        hosts = Some(tokio::spawn(watch_hosts(
            lifecycle.clone(),
            state.config.jobs.lease.0,
            rx.clone(),
        )));
        shipper = Some(tokio::spawn(ship_server_logs(
            lifecycle.clone(),
            rx.clone(),
        )));
    }
    let reaper = (roles.reaper && state.config.reaper.enabled).then(|| {
        let r = Arc::new(crate::reaper::Reaper::new(
            state.store.clone(),
            lifecycle.clone(),
            &state.config,
            state.metrics.clone(),
        ));
        tracing::info!(schedule = %state.config.reaper.schedule, "reaper scheduled");
        tokio::spawn(r.run_scheduled(rx.clone()))
    });
    let scheduled_backups =
        (roles.reaper && !state.config.backups.repository.is_empty()).then(|| {
            tracing::info!(schedule = %state.config.backups.schedule, "backups scheduled");
            let backups = crate::backups::Backups::new(state.store.clone(), &state.config);
            tokio::spawn(backups.run_scheduled(rx.clone()))
        });
    // Mails of notifications go out from the API process (the one the dashboard runs in).
    let mailer = (api.is_some() && !state.config.email.smtp_url.is_empty()).then(|| {
        let n = crate::notify::Notifier::new(state.store.clone(), &state.config);
        tokio::spawn(n.run(rx.clone()))
    });
    let served = match api {
        Some(api) => serve(state, api, stopped(rx)).await,
        None => {
            stopped(rx).await;
            Ok(())
        }
    };
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let _ = limits.await;
    if let Some(r) = reconciler {
        let _ = r.await;
    }
    if let Some(h) = hosts {
        let _ = h.await;
    }
    if let Some(s) = shipper {
        let _ = s.await;
    }
    if let Some(r) = reaper {
        let _ = r.await;
    }
    if let Some(b) = scheduled_backups {
        let _ = b.await;
    }
    if let Some(m) = mailer {
        let _ = m.await;
    }
    if let Some(w) = workers {
        w.shutdown().await;
    }
    lifecycle.shutdown().await;
    if roles.worker {
        lifecycle.release_host().await;
    }
    if let Some(s) = sender {
        s.shutdown().await;
    }
    served?;
    if let Some(g) = gateway_task {
        g.await??;
    }
    Ok(())
}

/// No Nagle on an accepted connection: a small answer on a kept-alive connection goes out at
/// once instead of waiting for the peer's delayed ACK (about 40 ms per request).
fn no_delay(tcp: &mut tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, store = ?state.store.backend(), "endor listening");
    use axum::serve::ListenerExt;
    axum::serve(
        listener.tap_io(no_delay),
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}

/// Run `work` at once and then every `period` (a late tick waits, never bunches up), until
/// shutdown.
async fn every<F, Fut>(
    period: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut work: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        work().await;
    }
}

/// Every 2 s, let go of site processes whose site another endor process tore down or deleted
/// (`endor reap`, `endor site delete`): the store is the one owner of running sites.
async fn reconcile(
    lifecycle: Arc<crate::previews::Lifecycle>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    every(std::time::Duration::from_secs(2), stop, || {
        lifecycle.reconcile()
    })
    .await
}

/// Every third of `jobs.lease`: keep this worker host's lease, and take over the previews of
/// hosts whose lease ran out (`previews::hosts`).
async fn watch_hosts(
    lifecycle: Arc<crate::previews::Lifecycle>,
    lease: std::time::Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    every(lease / 3, stop, || async {
        if let Err(e) = lifecycle.keep_host_alive().await {
            tracing::warn!(error = %e, "could not renew this worker host's lease");
            return;
        }
        match lifecycle.take_over_lost_hosts().await {
            Ok((0, 0)) => {}
            Ok((resumed, failed)) => {
                tracing::info!(
                    resumed,
                    failed,
                    "took over the previews of a lost worker host"
                )
            }
            Err(e) => tracing::warn!(error = %e, "could not look for lost worker hosts"),
        }
    })
    .await
}

/// Every 2 s, ship what sites' own database servers wrote into their `postgres` / `mariadb`
/// logs, until shutdown.
async fn ship_server_logs(
    lifecycle: Arc<crate::previews::Lifecycle>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    every(std::time::Duration::from_secs(2), stop, || async {
        lifecycle.ship_server_logs().await;
    })
    .await
}

/// Keep the log writers' limits of sites whose workspace set its own (`endor workspace
/// settings`, from any process) current: at start, then every 10 s, until shutdown.
async fn refresh_log_limits(
    state: Arc<AppState>,
    logs: crate::logs::Logs,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    every(LOG_LIMITS_EVERY, stop, || async {
        match crate::service::log_overrides(state.store.as_ref(), &state.config).await {
            Ok(o) => logs.set_overrides(o),
            Err(e) => tracing::warn!(error = %e, "could not read workspaces' log settings"),
        }
    })
    .await
}

/// How soon a workspace's new log settings reach the writers of `endor serve`.
pub const LOG_LIMITS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Sample every live site's CPU and physical storage each `usage.sample_interval` (the first
/// sample at start), until shutdown.
async fn sample_usage(state: Arc<AppState>, stop: tokio::sync::watch::Receiver<bool>) {
    let sites = crate::sites::Sites::new(state.store.clone(), &state.config);
    every(state.config.usage.sample_interval.0, stop, || async {
        match crate::usage::sample(state.store.as_ref(), &sites, crate::now_ms()).await {
            Ok(r) => tracing::debug!(sites = r.sites, processes = r.processes, "usage sampled"),
            Err(e) => tracing::warn!(error = %e, "usage sample failed"),
        }
    })
    .await
}
