//! `POST /webhooks/{forge}/{connection_id}`: verify → dedupe → persist → reply; nothing else.
//!
//! Order of checks (each rejection stores nothing but a counter and a log line):
//! unknown forge or connection → 404; body over the limit → 413; signature → 401;
//! missing event header or a body that is not the JSON the event needs → 400.
//! Then the delivery is committed to the store (group commit) **before** the reply:
//! 202 `queued` for events endor acts on, 200 `ignored` for the rest, 200 `duplicate` for a
//! delivery id already stored, 200 for `ping`. No work happens here: the reply never waits for
//! anything but the commit.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use tracing::Instrument;

use crate::app::{AppState, error_response};
use crate::forge::{Classified, EventKind, ForgeEvent, ForgeKind, signature};
use crate::jobs::{JobKind, NewJob};
use crate::store::{DeliveryOutcome, GithubApp, Inserted, NewDelivery, new_id};

struct Rejection {
    status: StatusCode,
    code: &'static str,
    outcome: &'static str,
    message: String,
}

fn reject(
    status: StatusCode,
    code: &'static str,
    outcome: &'static str,
    message: impl Into<String>,
) -> Rejection {
    Rejection {
        status,
        code,
        outcome,
        message: message.into(),
    }
}

pub async fn receive(
    State(app): State<Arc<AppState>>,
    Path((forge, connection_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let Some(forge) = ForgeKind::parse(&forge) else {
        return error_response(StatusCode::NOT_FOUND, "not_found", "unknown forge");
    };
    let span = tracing::info_span!(
        "delivery",
        forge = %forge,
        connection = %connection_id.escape_debug(),
        delivery = tracing::field::Empty,
        event = tracing::field::Empty,
        repo = tracing::field::Empty,
        pr = tracing::field::Empty,
    );
    match handle(&app, forge, &connection_id, &headers, body, started)
        .instrument(span)
        .await
    {
        Ok(resp) => resp,
        Err(r) => {
            app.metrics.delivery(forge.as_str(), "-", r.outcome);
            tracing::warn!(forge = %forge, connection = %connection_id.escape_debug(), status = r.status.as_u16(), reason = %r.message, "webhook delivery rejected");
            error_response(r.status, r.code, r.message)
        }
    }
}

async fn handle(
    app: &AppState,
    forge: ForgeKind,
    connection_id: &str,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Response, Rejection> {
    let limit = app.config.webhooks.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body, limit).await;
        return Err(too_large(limit));
    }

    // Connection ids are UUIDs; anything else cannot exist and costs no query.
    let unknown = || {
        reject(
            StatusCode::NOT_FOUND,
            "not_found",
            "not_found",
            "unknown connection",
        )
    };
    if connection_id.len() != 36
        || !connection_id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        return Err(unknown());
    }
    let conn = match app.store.connection(&connection_id.into()).await {
        Ok(Some(c)) if c.forge == forge => c,
        Ok(_) => return Err(unknown()),
        Err(e) => {
            return Err(reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "error",
                e.to_string(),
            ));
        }
    };

    tracing::Span::current().record("repo", conn.repo.as_str());
    let raw = read_body(body, limit).await?;

    // Authenticity over the raw bytes, before anything is parsed.
    signature::verify(forge, headers, &raw, &conn.accepted_secrets()).map_err(|e| {
        reject(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unauthorized",
            e.to_string(),
        )
    })?;
    accept(app, forge, &conn, headers, raw, started).await
}

/// A delivery whose signature was checked, for `conn`: its event, its key, classified, stored.
async fn accept(
    app: &AppState,
    forge: ForgeKind,
    conn: &crate::store::Connection,
    headers: &HeaderMap,
    raw: Bytes,
    started: Instant,
) -> Result<Response, Rejection> {
    let event_header = forge.event_header();
    let event = headers
        .get(event_header)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            reject(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "bad_request",
                format!("missing {event_header} header"),
            )
        })?
        .to_string();

    let delivery_key = delivery_key(forge, headers)?;
    let span = tracing::Span::current();
    span.record("event", event.as_str());
    span.record("delivery", delivery_key.as_str());
    let payload = decode_body(forge, headers, raw)?;

    let classified = forge.classify(&event, &payload).map_err(|e| {
        reject(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "bad_request",
            e.to_string(),
        )
    })?;

    let mut number = None;
    let (outcome, action, reason, normalized, job) = match classified {
        Classified::Ping => {
            app.metrics.delivery(forge.as_str(), &event, "ping");
            return Ok((StatusCode::OK, axum::Json(json!({"status": "pong"}))).into_response());
        }
        Classified::Ignored { action, reason } => {
            (DeliveryOutcome::Ignored, action, Some(reason), None, None)
        }
        Classified::Acted(ev) if !ev.repo.eq_ignore_ascii_case(&conn.repo) => {
            let reason = format!(
                "event is for repository {}, not the connected {}",
                ev.repo, conn.repo
            );
            (
                DeliveryOutcome::Ignored,
                Some(ev.action_name().to_string()),
                Some(reason),
                None,
                None,
            )
        }
        Classified::Acted(ev) => {
            tracing::Span::current().record("pr", ev.number());
            number = i64::try_from(ev.number()).ok();
            let normalized = serde_json::to_string(&ev).map_err(|e| {
                reject(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "error",
                    e.to_string(),
                )
            })?;
            let job = job_for(
                conn.id.as_str(),
                &ev,
                &normalized,
                app.config.jobs.max_attempts,
            );
            (
                DeliveryOutcome::Queued,
                Some(ev.action_name().to_string()),
                None,
                Some(normalized),
                Some(job),
            )
        }
    };

    let id = crate::ids::DeliveryId::generate();
    let stored = app
        .writer
        .write(NewDelivery {
            id: id.clone(),
            connection_id: conn.id.clone(),
            delivery_key: delivery_key.clone(),
            forge,
            event: event.clone(),
            action,
            number,
            outcome,
            reason: reason.clone(),
            normalized,
            payload: payload.to_vec(),
            received_at: crate::now_ms(),
            job,
        })
        .await
        .map_err(|e| {
            reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "error",
                e.to_string(),
            )
        })?;
    app.metrics
        .delivery_store_seconds
        .observe(started.elapsed().as_secs_f64());

    let event_label = forge.event_label(&event);
    let resp = match (stored, outcome) {
        (Inserted::Duplicate, _) => {
            app.metrics
                .delivery(forge.as_str(), event_label, "duplicate");
            tracing::info!(forge = %forge, connection = %conn.id, delivery = %delivery_key, "duplicate delivery");
            (
                StatusCode::OK,
                axum::Json(json!({"status": "duplicate", "delivery": delivery_key})),
            )
        }
        (Inserted::New, DeliveryOutcome::Queued) => {
            // Idle workers of this process look at the queue now rather than at their next poll.
            app.jobs_queued.notify_waiters();
            app.metrics.delivery(forge.as_str(), event_label, "queued");
            tracing::info!(forge = %forge, connection = %conn.id, delivery = %delivery_key, event = %event, "delivery queued");
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({"status": "queued", "delivery": delivery_key})),
            )
        }
        (Inserted::New, DeliveryOutcome::Ignored) => {
            app.metrics.delivery(forge.as_str(), event_label, "ignored");
            let reason = reason.unwrap_or_default();
            tracing::debug!(forge = %forge, connection = %conn.id, delivery = %delivery_key, reason = %reason, "delivery ignored");
            (
                StatusCode::OK,
                axum::Json(
                    json!({"status": "ignored", "reason": reason, "delivery": delivery_key}),
                ),
            )
        }
    };
    Ok(resp.into_response())
}

/// `POST /webhooks/github`: a GitHub App's deliveries for every repository it is installed
/// on, signed with the app's webhook secret (an app made by `endor github app create`). Each is
/// taken as a delivery of the connection of its repository (`repository.full_name`), as if it
/// had come to that connection's own URL. Deliveries without a connected repository (the
/// installation's own events among them) are answered 200 `ignored` and stored nowhere.
pub async fn receive_app(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let forge = ForgeKind::Github;
    let span = tracing::info_span!(
        "delivery",
        forge = %forge,
        connection = tracing::field::Empty,
        delivery = tracing::field::Empty,
        event = tracing::field::Empty,
        repo = tracing::field::Empty,
        pr = tracing::field::Empty,
    );
    match handle_app(&app, &headers, body, started)
        .instrument(span)
        .await
    {
        Ok(resp) => resp,
        Err(r) => {
            app.metrics.delivery(forge.as_str(), "-", r.outcome);
            tracing::warn!(forge = %forge, status = r.status.as_u16(), reason = %r.message, "app webhook delivery rejected");
            error_response(r.status, r.code, r.message)
        }
    }
}

/// A delivery to `POST /webhooks/github` read whole and its signature checked against the
/// apps' webhook secrets (decoded when GitHub sent a form): its body and the apps, or the
/// reply that refuses it (logged and counted).
pub async fn verified_app_delivery(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Vec<GithubApp>), Response> {
    let forge = ForgeKind::Github;
    match verify_app(app, headers, body).await {
        Ok((raw, apps)) => decode_body(forge, headers, raw)
            .map(|payload| (payload, apps))
            .map_err(|r| refused(app, r)),
        Err(r) => Err(refused(app, r)),
    }
}

fn refused(app: &AppState, r: Rejection) -> Response {
    app.metrics
        .delivery(ForgeKind::Github.as_str(), "-", r.outcome);
    tracing::warn!(status = r.status.as_u16(), reason = %r.message, "app webhook delivery rejected");
    error_response(r.status, r.code, r.message)
}

fn unavailable(e: crate::store::StoreError) -> Rejection {
    reject(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "error",
        e.to_string(),
    )
}

/// The body of a delivery to `POST /webhooks/github` whose signature is one of the apps', and
/// the apps.
async fn verify_app(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Vec<GithubApp>), Rejection> {
    let forge = ForgeKind::Github;
    let limit = app.config.webhooks.max_body_bytes;
    let apps = app.store.github_apps().await.map_err(unavailable)?;
    if apps.is_empty() {
        drain(body, limit).await;
        return Err(reject(
            StatusCode::NOT_FOUND,
            "not_found",
            "not_found",
            "no GitHub App here: endor github app create",
        ));
    }
    let raw = read_body(body, limit).await?;
    let secrets: Vec<_> = apps.iter().map(|a| &a.webhook_secret).collect();
    signature::verify(forge, headers, &raw, &secrets).map_err(|e| {
        reject(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unauthorized",
            e.to_string(),
        )
    })?;
    Ok((raw, apps))
}

async fn handle_app(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Response, Rejection> {
    let forge = ForgeKind::Github;
    let (raw, _) = verify_app(app, headers, body).await?;
    #[derive(serde::Deserialize)]
    struct Repo<'a> {
        #[serde(borrow)]
        full_name: std::borrow::Cow<'a, str>,
    }
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        repository: Option<Repo<'a>>,
    }
    let payload = decode_body(forge, headers, raw.clone())?;
    let repo = serde_json::from_slice::<Probe>(&payload)
        .ok()
        .and_then(|p| p.repository.map(|r| r.full_name.into_owned()));
    let conn = match &repo {
        Some(name) => app
            .store
            .connections_for_repo(forge, name)
            .await
            .map_err(unavailable)?
            .into_iter()
            .next(),
        None => None,
    };
    let Some(conn) = conn else {
        let event = headers
            .get(forge.event_header())
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        app.metrics
            .delivery(forge.as_str(), forge.event_label(event), "ignored");
        let reason = match &repo {
            Some(r) => format!("no connection for repository {r}"),
            None => format!("`{}` names no repository", event.escape_debug()),
        };
        return Ok((
            StatusCode::OK,
            axum::Json(json!({"status": "ignored", "reason": reason})),
        )
            .into_response());
    };
    tracing::Span::current().record("connection", conn.id.as_str());
    tracing::Span::current().record("repo", conn.repo.as_str());
    accept(app, forge, &conn, headers, raw, started).await
}

/// Read the whole body, refusing (413) past `limit`. An oversized body is drained first, so
/// the sender reads the 413 instead of a reset connection.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Rejection> {
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            reject(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "bad_request",
                "could not read the request body",
            )
        })?;
        if buf.len() + chunk.len() > limit {
            drain_stream(stream, limit).await;
            return Err(too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Discard up to `limit` more bytes of a refused body (bounded: a sender that keeps going past
/// that gets its connection closed).
async fn drain(body: Body, limit: usize) {
    drain_stream(body.into_data_stream(), limit).await
}

async fn drain_stream(mut stream: axum::body::BodyDataStream, budget: usize) {
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while seen <= budget.max(1024 * 1024) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => seen += chunk.len(),
            _ => return,
        }
    }
}

/// The job an acted-on event asks for. One key per PR of a connection, so its jobs run one at a
/// time and in order; PR events supersede older work of their PR (newest head wins), comments
/// (commands) do not.
pub fn job_for(
    connection_id: &str,
    ev: &ForgeEvent,
    normalized: &str,
    max_attempts: i64,
) -> NewJob {
    let (kind, supersede, head_sha) = match &ev.kind {
        EventKind::PullRequest(p) => (JobKind::PullRequest, true, Some(p.head_sha.clone())),
        EventKind::Comment(c) => (JobKind::Comment, false, c.head_sha.clone()),
        // A check run's button is a command, run by the comment runner.
        EventKind::CheckAction(a) => (JobKind::Comment, false, Some(a.head_sha.clone())),
    };
    NewJob {
        kind,
        job_key: crate::jobs::pr_key(connection_id, ev.number()),
        head_sha,
        payload: normalized.to_string(),
        max_attempts,
        supersede,
    }
}

fn too_large(limit: usize) -> Rejection {
    reject(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "too_large",
        format!("body is over {limit} bytes"),
    )
}

/// The forge's delivery id, or a fresh one when the forge sent none (such deliveries cannot
/// be deduplicated).
fn delivery_key(forge: ForgeKind, headers: &HeaderMap) -> Result<String, Rejection> {
    for name in forge.delivery_headers() {
        if let Some(v) = headers.get(*name) {
            let ok = v.to_str().ok().filter(|s| {
                !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
            });
            return ok.map(str::to_string).ok_or_else(|| {
                reject(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "bad_request",
                    format!("malformed {name} header"),
                )
            });
        }
    }
    Ok(format!("endor-{}", new_id()))
}

/// GitHub may post `application/x-www-form-urlencoded` with the JSON in the `payload` field.
fn decode_body(forge: ForgeKind, headers: &HeaderMap, raw: Bytes) -> Result<Bytes, Rejection> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let Some(field) = forge.form_payload_field().filter(|_| form) else {
        return Ok(raw);
    };
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&raw).map_err(|e| {
        reject(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "bad_request",
            format!("bad form body: {e}"),
        )
    })?;
    fields
        .into_iter()
        .find(|(k, _)| k == field)
        .map(|(_, v)| Bytes::from(v))
        .ok_or_else(|| {
            reject(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "bad_request",
                "form body has no `payload` field",
            )
        })
}
