//! What the HTTP edges share: [`AppState`] (the store, the delivery writer, metrics) and the one
//! JSON error body, `{"error": {"code", "message"}}`, that the webhook receiver, the server's
//! own endpoints and the API all answer with. It sits below `webhooks`, `api` and `server`, so
//! none of them imports another for these.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{self, Backend, DeliveryWriter, Store};

/// Runs an API request in a span naming its method and path, so each line it writes can be
/// traced back to it.
pub async fn traced(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
    );
    next.run(req).instrument(span).await
}

/// The JSON error body used by every endpoint: `{"error": {"code", "message"}}`.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub writer: DeliveryWriter,
    pub metrics: Arc<Metrics>,
    /// Signalled when a delivery queued a job, so idle workers claim it at once.
    pub jobs_queued: Arc<tokio::sync::Notify>,
}

impl AppState {
    /// Open the store, apply migrations and start the delivery writer.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Self>> {
        let store = store::open(
            &config.store.url,
            config.store.max_connections,
            config.master_key_file(),
        )
        .await?;
        let writers = match store.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => 4,
        };
        let writer = DeliveryWriter::spawn(store.clone(), config.webhooks.max_batch, writers);
        Ok(Arc::new(Self {
            config,
            store,
            writer,
            metrics: Arc::new(Metrics::default()),
            jobs_queued: Arc::new(tokio::sync::Notify::new()),
        }))
    }
}
