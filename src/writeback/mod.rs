//! Reporting back to the forge: one sticky status comment per PR (`render.rs`), a commit
//! status `endor/preview` on each head, a deployment per head (GitHub) or environment
//! (GitLab) — through the durable outbox.
//!
//! ```text
//! lifecycle state change ──(same transaction)──▶ outbox rows (comment | status | deployment)
//! Sender: claim due rows (one in flight per key) ─▶ Limiter (per API host) ─▶ Forge ─▶ done
//!                                  └─ 5xx / timeout / 429 + Retry-After ─▶ retry later
//! ```
//! Coalescing: a pending row not yet sent is replaced by a newer one of its key, so a burst of
//! state changes becomes one edit of the comment. Every write-back is stored before it is
//! attempted; after a crash the pending rows are sent by the next process.

pub mod gitea;
pub mod github;
pub mod gitlab;
mod http;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

use crate::config::Config;
use crate::forge::ForgeKind;
pub use crate::store::OutboxKind;
use crate::store::{Connection, NewOutbox, OutboxEnd, OutboxItem, Store};

/// The commit status context endor writes.
pub const STATUS_CONTEXT: &str = "endor/preview";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    /// Worth trying again (5xx, timeouts, rate limits), after `retry_after` when the forge said.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
        /// The request may have been carried out (it timed out or the connection broke
        /// after it was sent): a retry must first look for what it did.
        unsure: bool,
    },
    #[error("{0}")]
    Permanent(String),
    #[error("not found on the forge")]
    NotFound,
}

impl ForgeError {
    pub fn transient(message: impl Into<String>) -> Self {
        ForgeError::Transient {
            message: message.into(),
            retry_after: None,
            unsure: false,
        }
    }

    /// The request failed on the way (timeout, broken connection): the forge may have done it.
    pub fn lost(message: impl Into<String>) -> Self {
        ForgeError::Transient {
            message: message.into(),
            retry_after: None,
            unsure: true,
        }
    }

    fn unsure(&self) -> bool {
        matches!(self, ForgeError::Transient { unsure: true, .. })
    }
}

/// The store failing under a write-back is worth another attempt.
impl From<crate::store::StoreError> for ForgeError {
    fn from(e: crate::store::StoreError) -> Self {
        ForgeError::transient(e.to_string())
    }
}

/// A pull/merge request on its forge.
#[derive(Debug, Clone, Copy)]
pub struct PrRef<'a> {
    /// `owner/name` (GitLab: the full project path).
    pub repo: &'a str,
    pub number: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitState {
    Pending,
    Success,
    Failure,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployState {
    InProgress,
    Success,
    Failure,
    Inactive,
}

/// What endor asks of a forge. One implementation per forge; the outbox drives them.
#[async_trait]
pub trait Forge: Send + Sync {
    async fn create_comment(&self, pr: &PrRef<'_>, body: &str) -> Result<String, ForgeError>;
    /// `NotFound` when the comment is gone.
    async fn edit_comment(&self, pr: &PrRef<'_>, id: &str, body: &str) -> Result<(), ForgeError>;
    /// Gone already counts as done.
    async fn delete_comment(&self, pr: &PrRef<'_>, id: &str) -> Result<(), ForgeError>;
    /// Ids of endor's own comments on the PR whose body starts with `marker`, oldest first.
    async fn marked_comments(
        &self,
        pr: &PrRef<'_>,
        marker: &str,
    ) -> Result<Vec<String>, ForgeError>;
    async fn commit_status(
        &self,
        repo: &str,
        sha: &str,
        state: CommitState,
        target_url: Option<&str>,
        description: &str,
    ) -> Result<(), ForgeError>;
    /// Is the newest `endor/preview` status of `sha` already `state`? Asked before a retry,
    /// so a status whose answer was lost (a timeout) is not posted twice.
    async fn has_status(
        &self,
        repo: &str,
        sha: &str,
        state: CommitState,
    ) -> Result<bool, ForgeError>;
    /// The PR's deployment for `sha` if one exists (asked before creating one again after a
    /// lost answer).
    async fn find_deployment(
        &self,
        pr: &PrRef<'_>,
        sha: &str,
    ) -> Result<Option<String>, ForgeError>;
    /// Does each head get a deployment of its own (GitHub), or is there one per PR that every
    /// head reuses (a GitLab environment)?
    fn deployment_per_head(&self) -> bool {
        true
    }
    /// A deployment (GitHub) or environment (GitLab) `preview/pr-{n}` for the head `sha`;
    /// `None` where the forge has no such thing (Gitea).
    async fn create_deployment(
        &self,
        pr: &PrRef<'_>,
        sha: &str,
    ) -> Result<Option<String>, ForgeError>;
    /// Set the state of the deployment `id` (`url` is the preview's, when it is served).
    async fn set_deployment(
        &self,
        pr: &PrRef<'_>,
        id: &str,
        state: DeployState,
        url: Option<&str>,
    ) -> Result<(), ForgeError>;
    /// The login endor writes as (its comments come back as comment events, ignored).
    async fn account(&self) -> Result<String, ForgeError>;
    /// A reaction (`+1`, `eyes`, `confused` ...) on a comment.
    async fn react(
        &self,
        pr: &PrRef<'_>,
        comment_id: &str,
        reaction: &str,
    ) -> Result<(), ForgeError>;
}

/// The error a forge's answer means, if it is one. Rate limits (429, or 403 with an exhausted
/// quota) also pause the limiter of that API until the forge's reset time.
pub fn classify_status(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    limiter: &Limiter,
) -> Option<ForgeError> {
    if status.is_success() {
        return None;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now_secs = crate::now_ms() / 1000;
    let retry_after = header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .or_else(|| {
            let exhausted =
                header("x-ratelimit-remaining").or(header("ratelimit-remaining")) == Some("0");
            let reset = header("x-ratelimit-reset")
                .or(header("ratelimit-reset"))
                .and_then(|v| v.trim().parse::<i64>().ok());
            match (exhausted, reset) {
                (true, Some(r)) => Some(Duration::from_secs((r - now_secs).clamp(1, 3600) as u64)),
                _ => None,
            }
        });
    let text: String = body.trim().chars().take(300).collect();
    let limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN
            && (retry_after.is_some() || text.to_ascii_lowercase().contains("rate limit")));
    if limited {
        let wait = retry_after.unwrap_or(Duration::from_secs(60));
        limiter.pause(wait);
        return Some(ForgeError::Transient {
            message: format!("rate limited ({status}), waiting {} s", wait.as_secs()),
            retry_after: Some(wait),
            unsure: false,
        });
    }
    Some(match status {
        StatusCode::NOT_FOUND | StatusCode::GONE => ForgeError::NotFound,
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => ForgeError::Transient {
            message: format!("forge answered {s}: {text}"),
            retry_after,
            unsure: false,
        },
        s => ForgeError::Permanent(format!("forge answered {s}: {text}")),
    })
}

/// A per-API rate limit: `rate` requests per second on average, bursts of `burst`; paused
/// entirely while the forge says we are rate limited.
pub struct Limiter {
    interval: Duration,
    burst: u32,
    state: std::sync::Mutex<LimiterState>,
    sent: AtomicU64,
}

struct LimiterState {
    /// When the next request would be due if requests were evenly spaced.
    tat: Instant,
    paused_until: Option<Instant>,
}

impl Limiter {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / rate_per_second.max(0.001)),
            burst: burst.max(1),
            state: std::sync::Mutex::new(LimiterState {
                tat: Instant::now(),
                paused_until: None,
            }),
            sent: AtomicU64::new(0),
        }
    }

    /// Wait until a request may be sent.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                match st.paused_until {
                    Some(p) if p > now => p - now,
                    _ => {
                        st.paused_until = None;
                        let tat = st.tat.max(now);
                        let allowed_at = tat.checked_sub(self.interval * (self.burst - 1));
                        match allowed_at {
                            Some(at) if at > now => at - now,
                            _ => {
                                st.tat = tat + self.interval;
                                self.sent.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Send nothing for `d` (the forge said so).
    pub fn pause(&self, d: Duration) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let until = Instant::now() + d;
        st.paused_until = Some(st.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Requests let through so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// A JSON `id` (number or string) as text.
pub(crate) fn id_of(v: &serde_json::Value) -> Result<String, ForgeError> {
    match &v["id"] {
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::String(s) => Ok(s.clone()),
        _ => Err(ForgeError::Permanent(
            "the forge answered without an id".into(),
        )),
    }
}

/// Ids of the comments, over the pages of a listing (`page(n)`, `per_page` items a page),
/// whose author (at JSON pointer `author`) is `me` and whose body starts with `marker`.
pub(crate) async fn marked_in_pages<F, Fut>(
    mut page: F,
    per_page: usize,
    author: &str,
    me: &str,
    marker: &str,
) -> Result<Vec<String>, ForgeError>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, ForgeError>>,
{
    let mut out = Vec::new();
    for n in 1..=50 {
        let v = page(n).await?;
        let items = v.as_array().cloned().unwrap_or_default();
        for c in &items {
            let mine = c.pointer(author).and_then(|a| a.as_str()) == Some(me);
            if mine && c["body"].as_str().is_some_and(|b| b.starts_with(marker)) {
                out.push(id_of(c)?);
            }
        }
        if items.len() < per_page {
            break;
        }
    }
    Ok(out)
}

/// A commit state as GitHub and Gitea name it.
pub(crate) fn github_state(state: CommitState) -> &'static str {
    match state {
        CommitState::Pending => "pending",
        CommitState::Success => "success",
        CommitState::Failure => "failure",
        CommitState::Error => "error",
    }
}

/// The JSON of an `endor/preview` commit status; GitHub and Gitea name the context
/// `context`, GitLab `name`.
pub(crate) fn status_body(
    context_key: &str,
    state: &str,
    target_url: Option<&str>,
    description: &str,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "state": state,
        context_key: STATUS_CONTEXT,
        "description": description.chars().take(140).collect::<String>(),
    });
    if let Some(u) = target_url {
        body["target_url"] = u.into();
    }
    body
}

/// Is the newest `endor/preview` status of a listing in `state`? (`newest_first` as the
/// forge lists them; the context and state under `context_key` and `state_key`.)
pub(crate) fn newest_status_is(
    list: &serde_json::Value,
    newest_first: bool,
    context_key: &str,
    state_key: &str,
    state: &str,
) -> bool {
    let ours = |s: &&serde_json::Value| s[context_key].as_str() == Some(STATUS_CONTEXT);
    let items = list.as_array().map(Vec::as_slice).unwrap_or_default();
    let newest = if newest_first {
        items.iter().find(ours)
    } else {
        items.iter().rev().find(ours)
    };
    newest.and_then(|s| s[state_key].as_str()) == Some(state)
}

/// What an outbox row asks (its `payload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    Comment {
        repo: String,
        body: String,
    },
    Status {
        repo: String,
        sha: String,
        state: CommitState,
        target_url: Option<String>,
        description: String,
    },
    Deployment {
        repo: String,
        sha: String,
        state: DeployState,
        url: Option<String>,
    },
    /// A reply comment to a slash-command comment (errors, refusals, help). `key` names it:
    /// the body starts with [`reply_marker`](crate::forge::markdown::reply_marker)`(key)` and the forge's id is kept under it, so it
    /// is posted once.
    Reply {
        repo: String,
        key: String,
        body: String,
    },
    /// A reaction on a slash-command comment (its commands succeeded).
    Reaction {
        repo: String,
        comment_id: String,
        content: String,
    },
}

impl Payload {
    fn kind(&self) -> OutboxKind {
        match self {
            Payload::Comment { .. } => OutboxKind::Comment,
            Payload::Status { .. } => OutboxKind::Status,
            Payload::Deployment { .. } => OutboxKind::Deployment,
            Payload::Reply { .. } => OutboxKind::Reply,
            Payload::Reaction { .. } => OutboxKind::Reaction,
        }
    }

    /// The outbox row for this write-back of PR `number` of `connection_id`.
    pub fn row(&self, connection_id: &str, number: i64) -> NewOutbox {
        let key = match self {
            Payload::Comment { .. } => format!("{connection_id}#{number}#comment"),
            Payload::Status { sha, .. } => format!("{connection_id}#{sha}#status"),
            Payload::Deployment { .. } => format!("{connection_id}#{number}#deployment"),
            Payload::Reply { key, .. } => format!("{connection_id}#{number}#reply#{key}"),
            Payload::Reaction {
                comment_id,
                content,
                ..
            } => format!("{connection_id}#{number}#reaction#{comment_id}#{content}"),
        };
        NewOutbox {
            connection_id: connection_id.into(),
            number,
            kind: self.kind(),
            coalesce_key: key,
            payload: serde_json::to_string(self).unwrap_or_default(),
        }
    }
}

/// The forge clients of every connection, made on first use; one [`Limiter`] per API base.
pub struct ForgeClients {
    config: Config,
    clients: Mutex<HashMap<String, Arc<dyn Forge>>>,
    limiters: std::sync::Mutex<HashMap<String, Arc<Limiter>>>,
    github_app: tokio::sync::OnceCell<octocrab::Octocrab>,
}

impl ForgeClients {
    pub fn new(config: &Config) -> Self {
        Self {
            config: config.clone(),
            clients: Mutex::new(HashMap::new()),
            limiters: std::sync::Mutex::new(HashMap::new()),
            github_app: tokio::sync::OnceCell::new(),
        }
    }

    fn forge_config(&self, forge: ForgeKind) -> &crate::config::ForgeConfig {
        match forge {
            ForgeKind::Github => &self.config.github,
            ForgeKind::Gitlab => &self.config.gitlab,
            ForgeKind::Gitea => &self.config.gitea,
        }
    }

    /// Does endor have credentials to write to this connection's forge?
    pub fn enabled(&self, forge: ForgeKind) -> bool {
        let c = self.forge_config(forge);
        !c.token.is_empty()
            || (forge == ForgeKind::Github && c.app_id.is_some() && c.private_key_file.is_some())
    }

    /// The GitHub App client (its JWT), made once from `[github] app_id` and the key file.
    async fn github_app(&self, api: &str) -> Result<octocrab::Octocrab, ForgeError> {
        self.github_app
            .get_or_try_init(|| async {
                let c = &self.config.github;
                let (Some(id), Some(path)) = (c.app_id, c.private_key_file.as_ref()) else {
                    return Err(ForgeError::Permanent("no GitHub App configured".into()));
                };
                let pem = std::fs::read(path).map_err(|e| {
                    ForgeError::Permanent(format!(
                        "[github] private_key_file {}: {e}",
                        path.display()
                    ))
                })?;
                let key = octocrab::EncodingKey::from_rsa_pem(&pem).map_err(|e| {
                    ForgeError::Permanent(format!(
                        "[github] private_key_file {}: not an RSA key in PEM: {e}",
                        path.display()
                    ))
                })?;
                octocrab::Octocrab::builder()
                    .base_uri(api)
                    .map_err(|e| ForgeError::Permanent(format!("github api_url: {e}")))?
                    .app(octocrab::models::AppId(id), key)
                    .set_connect_timeout(Some(self.config.writeback.timeout.0))
                    .set_read_timeout(Some(self.config.writeback.timeout.0))
                    .set_write_timeout(Some(self.config.writeback.timeout.0))
                    .build()
                    .map_err(|e| ForgeError::Permanent(format!("github app client: {e}")))
            })
            .await
            .cloned()
    }

    fn api_url(&self, conn: &Connection) -> Option<String> {
        let configured = &self.forge_config(conn.forge).api_url;
        conn.api_url
            .clone()
            .or_else(|| (!configured.is_empty()).then(|| configured.clone()))
            .or_else(|| match conn.forge {
                ForgeKind::Github => Some("https://api.github.com".into()),
                ForgeKind::Gitlab => Some("https://gitlab.com/api/v4".into()),
                ForgeKind::Gitea => None,
            })
    }

    /// The limiter of an API base (shared by every connection that uses it).
    pub fn limiter(&self, api_url: &str) -> Arc<Limiter> {
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(api_url.to_string())
            .or_insert_with(|| {
                Arc::new(Limiter::new(
                    self.config.writeback.rate_per_second,
                    self.config.writeback.burst,
                ))
            })
            .clone()
    }

    pub async fn client(&self, conn: &Connection) -> Result<Arc<dyn Forge>, ForgeError> {
        if let Some(c) = self.clients.lock().await.get(&conn.id) {
            return Ok(c.clone());
        }
        let cfg = self.forge_config(conn.forge);
        if !self.enabled(conn.forge) {
            return Err(ForgeError::Permanent(format!(
                "no {} credentials configured ([{}] token)",
                conn.forge, conn.forge
            )));
        }
        let api = self.api_url(conn).ok_or_else(|| {
            ForgeError::Permanent(format!(
                "no API URL for {} ([{}] api_url or repo connect --api-url)",
                conn.forge, conn.forge
            ))
        })?;
        let limiter = self.limiter(&api);
        let client: Arc<dyn Forge> = match conn.forge {
            // A personal or fine-grained token wins; without one, the GitHub App.
            ForgeKind::Github if cfg.token.is_empty() => {
                let app = self.github_app(&api).await?;
                Arc::new(github::GitHub::as_installation(&app, &conn.repo, limiter).await?)
            }
            ForgeKind::Github => Arc::new(github::GitHub::with_token(
                &api,
                &cfg.token,
                self.config.writeback.timeout.0,
                limiter,
            )?),
            ForgeKind::Gitlab => Arc::new(gitlab::GitLab::new(
                &api,
                &cfg.token,
                self.config.writeback.timeout.0,
                limiter,
            )?),
            ForgeKind::Gitea => Arc::new(gitea::Gitea::new(
                &api,
                &cfg.token,
                self.config.writeback.timeout.0,
                limiter,
            )?),
        };
        self.clients
            .lock()
            .await
            .insert(conn.id.clone(), client.clone());
        Ok(client)
    }
}

/// Sends the outbox: claims due rows, one in flight per key, and records how each ended.
pub struct Sender {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sender {
    pub fn spawn(
        store: Arc<dyn Store>,
        clients: Arc<ForgeClients>,
        wake: Arc<tokio::sync::Notify>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let cfg = clients.config.writeback.clone();
        let name = format!("outbox-{}", std::process::id());
        let task = tokio::spawn(async move {
            while !*stopped.borrow() {
                let now = crate::now_ms();
                let lease = cfg.lease.0.as_millis() as i64;
                let batch = match store.claim_outbox(&name, now, now + lease, 64).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming write-backs failed");
                        Vec::new()
                    }
                };
                if batch.is_empty() {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = wake.notified() => {}
                        _ = stopped.changed() => {}
                    }
                    continue;
                }
                // Items of one key go in order; keys go side by side.
                let mut groups: Vec<Vec<OutboxItem>> = Vec::new();
                let mut index: HashMap<String, usize> = HashMap::new();
                for item in batch {
                    match index.get(&item.coalesce_key) {
                        Some(&i) => groups[i].push(item),
                        None => {
                            index.insert(item.coalesce_key.clone(), groups.len());
                            groups.push(vec![item]);
                        }
                    }
                }
                use futures_util::StreamExt;
                futures_util::stream::iter(groups)
                    .for_each_concurrent(cfg.concurrency.max(1), |group| {
                        let (store, clients, name, metrics) = (
                            store.clone(),
                            clients.clone(),
                            name.clone(),
                            metrics.clone(),
                        );
                        let max_attempts = cfg.max_attempts;
                        async move {
                            for item in group {
                                send_one(&store, &clients, &name, item, max_attempts, &metrics)
                                    .await;
                            }
                        }
                    })
                    .await;
            }
        });
        Self { stop, task }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn send_one(
    store: &Arc<dyn Store>,
    clients: &ForgeClients,
    worker: &str,
    item: OutboxItem,
    max_attempts: i64,
    metrics: &crate::metrics::Metrics,
) {
    let result = deliver(store, clients, &item).await;
    let now = crate::now_ms();
    let end = match result {
        Ok(()) => OutboxEnd::Done,
        Err(ForgeError::Permanent(e)) => OutboxEnd::Failed { error: e },
        Err(ForgeError::NotFound) => OutboxEnd::Failed {
            error: "not found on the forge".into(),
        },
        Err(ForgeError::Transient { .. }) if item.attempts >= max_attempts => OutboxEnd::Failed {
            error: format!("gave up after {} attempts", item.attempts),
        },
        Err(ForgeError::Transient {
            message,
            retry_after,
            ..
        }) => {
            let wait = retry_after.unwrap_or_else(|| {
                let base =
                    Duration::from_millis(500) * 2u32.pow(item.attempts.clamp(1, 10) as u32 - 1);
                base.min(Duration::from_secs(300))
                    .mul_f64(rand::Rng::random_range(&mut rand::rng(), 0.75..1.25))
            });
            OutboxEnd::Retry {
                error: message,
                run_after: now + wait.as_millis() as i64,
            }
        }
    };
    let outcome = match &end {
        OutboxEnd::Done => "done",
        OutboxEnd::Retry { .. } => "retry",
        OutboxEnd::Failed { .. } => "failed",
    };
    metrics.writeback(item.kind.as_str(), outcome);
    match &end {
        OutboxEnd::Done => tracing::debug!(id = %item.id, kind = %item.kind, "write-back sent"),
        OutboxEnd::Retry { error, .. } => {
            tracing::info!(id = %item.id, kind = %item.kind, error = %error, "write-back will be retried")
        }
        OutboxEnd::Failed { error } => {
            tracing::warn!(id = %item.id, kind = %item.kind, error = %error, "write-back failed")
        }
    }
    if let Err(e) = store.finish_outbox(&item.id, worker, &end, now).await {
        tracing::warn!(error = %e, "recording a write-back failed; it will be sent again");
    }
}

async fn deliver(
    store: &Arc<dyn Store>,
    clients: &ForgeClients,
    item: &OutboxItem,
) -> Result<(), ForgeError> {
    let payload: Payload = serde_json::from_str(&item.payload)
        .map_err(|e| ForgeError::Permanent(format!("unreadable write-back: {e}")))?;
    let conn = store
        .connection(&item.connection_id)
        .await?
        .ok_or_else(|| ForgeError::Permanent("the connection was deleted".into()))?;
    let forge = clients.client(&conn).await?;
    match payload {
        Payload::Comment { repo, body } => {
            let pr = PrRef {
                repo: &repo,
                number: item.number as u64,
            };
            upsert_comment(store, forge.as_ref(), &conn.id, &pr, &body).await
        }
        Payload::Status {
            repo,
            sha,
            state,
            target_url,
            description,
        } => {
            // After a lost answer, look before posting the same status again.
            let mark = format!("{sha}:{state:?}");
            let unsure = store
                .forge_ref(&conn.id, item.number, "status_unsure")
                .await?;
            if unsure.as_deref() == Some(mark.as_str()) {
                if forge.has_status(&repo, &sha, state).await? {
                    return Ok(());
                }
                // Looked, and it is not there: the next attempt posts without looking again
                // (two calls per attempt could starve when every other call fails).
                store
                    .put_forge_ref(&conn.id, item.number, "status_unsure", "")
                    .await?;
            }
            let sent = forge
                .commit_status(&repo, &sha, state, target_url.as_deref(), &description)
                .await;
            if let Err(e) = &sent
                && e.unsure()
            {
                store
                    .put_forge_ref(&conn.id, item.number, "status_unsure", &mark)
                    .await?;
            }
            sent
        }
        Payload::Reply { repo, key, body } => {
            let pr = PrRef {
                repo: &repo,
                number: item.number as u64,
            };
            let kind = format!("reply:{key}");
            if store
                .forge_ref(&conn.id, item.number, &kind)
                .await?
                .is_some()
            {
                return Ok(());
            }
            // An earlier attempt may have posted it before its answer was lost.
            if item.attempts > 1 {
                let found = forge
                    .marked_comments(&pr, &crate::forge::markdown::reply_marker(&key))
                    .await?;
                if let Some(id) = found.first() {
                    return Ok(store
                        .put_forge_ref(&conn.id, item.number, &kind, id)
                        .await?);
                }
            }
            let id = forge.create_comment(&pr, &body).await?;
            Ok(store
                .put_forge_ref(&conn.id, item.number, &kind, &id)
                .await?)
        }
        Payload::Reaction {
            repo,
            comment_id,
            content,
        } => {
            let pr = PrRef {
                repo: &repo,
                number: item.number as u64,
            };
            forge.react(&pr, &comment_id, &content).await
        }
        Payload::Deployment {
            repo,
            sha,
            state,
            url,
        } => {
            let pr = PrRef {
                repo: &repo,
                number: item.number as u64,
            };
            // The deployment of the same head is reused; a new head gets a new one. Its id is
            // kept as soon as it exists, so a retry only sets the state.
            let known = store.forge_ref(&conn.id, item.number, "deployment").await?;
            let known = known.as_deref().and_then(|r| r.split_once(':'));
            let id = match known {
                Some((id, for_sha))
                    if for_sha == sha
                        || state == DeployState::Inactive
                        || !forge.deployment_per_head() =>
                {
                    id.to_string()
                }
                _ if state == DeployState::Inactive => return Ok(()),
                _ => {
                    // A new head: the previous head's deployment is deactivated first, so
                    // none is left active whatever coalescing skipped.
                    if let Some((old, _)) = known {
                        let retired = store
                            .forge_ref(&conn.id, item.number, "deployment_retired")
                            .await?;
                        if retired.as_deref() != Some(old) {
                            forge
                                .set_deployment(&pr, old, DeployState::Inactive, None)
                                .await?;
                            store
                                .put_forge_ref(&conn.id, item.number, "deployment_retired", old)
                                .await?;
                        }
                    }
                    // After a lost answer, look for the deployment that attempt may have
                    // made before making one.
                    let unsure = store
                        .forge_ref(&conn.id, item.number, "deployment_unsure")
                        .await?;
                    let found = if unsure.as_deref() == Some(sha.as_str()) {
                        let found = forge.find_deployment(&pr, &sha).await?;
                        store
                            .put_forge_ref(&conn.id, item.number, "deployment_unsure", "")
                            .await?;
                        found
                    } else {
                        None
                    };
                    if let Some(id) = found {
                        store
                            .put_forge_ref(
                                &conn.id,
                                item.number,
                                "deployment",
                                &format!("{id}:{sha}"),
                            )
                            .await?;
                        return forge.set_deployment(&pr, &id, state, url.as_deref()).await;
                    }
                    let created = forge.create_deployment(&pr, &sha).await;
                    if let Err(e) = &created
                        && e.unsure()
                    {
                        store
                            .put_forge_ref(&conn.id, item.number, "deployment_unsure", &sha)
                            .await?;
                    }
                    match created? {
                        Some(id) => {
                            store
                                .put_forge_ref(
                                    &conn.id,
                                    item.number,
                                    "deployment",
                                    &format!("{id}:{sha}"),
                                )
                                .await?;
                            id
                        }
                        None => return Ok(()),
                    }
                }
            };
            forge.set_deployment(&pr, &id, state, url.as_deref()).await
        }
    }
}

/// Edit the PR's status comment, found by its stored id, else by its marker among endor's own
/// comments (duplicates a crash left are deleted), else created.
async fn upsert_comment(
    store: &Arc<dyn Store>,
    forge: &dyn Forge,
    connection_id: &str,
    pr: &PrRef<'_>,
    body: &str,
) -> Result<(), ForgeError> {
    upsert_comment_once(store, forge, connection_id, pr, body, true).await
}

async fn upsert_comment_once(
    store: &Arc<dyn Store>,
    forge: &dyn Forge,
    connection_id: &str,
    pr: &PrRef<'_>,
    body: &str,
    again: bool,
) -> Result<(), ForgeError> {
    let number = pr.number as i64;
    // Each step's result is kept before the next, so a retry after a failure (or a crash)
    // resumes where it stopped instead of repeating calls.
    if let Some(id) = store.forge_ref(connection_id, number, "comment").await? {
        // Duplicates found earlier and not deleted yet go first, one kept step at a time.
        let mut dups: Vec<String> = store
            .forge_ref(connection_id, number, "comment_dups")
            .await?
            .unwrap_or_default()
            .split(',')
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect();
        while let Some(dup) = dups.first().cloned() {
            forge.delete_comment(pr, &dup).await?;
            dups.remove(0);
            store
                .put_forge_ref(connection_id, number, "comment_dups", &dups.join(","))
                .await?;
        }
        match forge.edit_comment(pr, &id, body).await {
            Ok(()) => return Ok(()),
            Err(ForgeError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    // A search that found nothing is remembered, so the retry of a failed create goes
    // straight to creating (unless the create's answer was lost: then it looks again).
    let searched = store
        .forge_ref(connection_id, number, "comment_searched")
        .await?;
    let found = if searched.as_deref() == Some("none") {
        Vec::new()
    } else {
        forge
            .marked_comments(pr, crate::forge::markdown::MARKER)
            .await?
    };
    match found.split_first() {
        Some((id, dups)) => {
            store
                .put_forge_ref(connection_id, number, "comment_dups", &dups.join(","))
                .await?;
            store
                .put_forge_ref(connection_id, number, "comment", id)
                .await?;
            // Go round once more: duplicates are deleted, then the comment edited; a comment
            // that vanished again in between is left to the next retry.
            if again {
                Box::pin(upsert_comment_once(
                    store,
                    forge,
                    connection_id,
                    pr,
                    body,
                    false,
                ))
                .await
            } else {
                Err(ForgeError::transient(
                    "the status comment vanished while being edited",
                ))
            }
        }
        None => {
            store
                .put_forge_ref(connection_id, number, "comment_searched", "none")
                .await?;
            let id = match forge.create_comment(pr, body).await {
                Ok(id) => id,
                Err(e) => {
                    if e.unsure() {
                        store
                            .put_forge_ref(connection_id, number, "comment_searched", "")
                            .await?;
                    }
                    return Err(e);
                }
            };
            Ok(store
                .put_forge_ref(connection_id, number, "comment", &id)
                .await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn answers_are_classified() {
        let l = Limiter::new(100.0, 1);
        let ok = classify_status(StatusCode::CREATED, &HeaderMap::new(), "", &l);
        assert!(ok.is_none());
        assert_eq!(
            classify_status(StatusCode::NOT_FOUND, &HeaderMap::new(), "", &l),
            Some(ForgeError::NotFound)
        );
        assert!(matches!(
            classify_status(StatusCode::UNPROCESSABLE_ENTITY, &HeaderMap::new(), "bad", &l),
            Some(ForgeError::Permanent(m)) if m.contains("422")
        ));
        assert!(matches!(
            classify_status(StatusCode::BAD_GATEWAY, &HeaderMap::new(), "", &l),
            Some(ForgeError::Transient {
                retry_after: None,
                unsure: false,
                ..
            })
        ));
        // 429 with Retry-After.
        let e = classify_status(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "7".into())]),
            "",
            &l,
        );
        assert!(
            matches!(e, Some(ForgeError::Transient { retry_after: Some(d), .. }) if d == Duration::from_secs(7))
        );
        // GitHub's primary limit: 403, remaining 0, reset at an epoch second.
        let reset = (crate::now_ms() / 1000 + 42).to_string();
        let e = classify_status(
            StatusCode::FORBIDDEN,
            &headers(&[
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", reset.clone()),
            ]),
            "API rate limit exceeded",
            &l,
        );
        let Some(ForgeError::Transient {
            retry_after: Some(d),
            ..
        }) = e
        else {
            panic!("{e:?}")
        };
        assert!((40..=43).contains(&d.as_secs()), "{d:?}");
        // GitLab's RateLimit-* headers.
        let e = classify_status(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[
                ("ratelimit-remaining", "0".into()),
                ("ratelimit-reset", reset),
            ]),
            "",
            &l,
        );
        assert!(matches!(
            e,
            Some(ForgeError::Transient {
                retry_after: Some(_),
                ..
            })
        ));
        // A 403 that is not a rate limit is permanent.
        assert!(matches!(
            classify_status(
                StatusCode::FORBIDDEN,
                &HeaderMap::new(),
                "Resource not accessible",
                &l
            ),
            Some(ForgeError::Permanent(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_spaces_requests_and_pauses() {
        let l = Limiter::new(10.0, 3);
        let start = tokio::time::Instant::now();
        for _ in 0..13 {
            l.acquire().await;
        }
        // 3 at once, then one every 100 ms.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(990) && took <= Duration::from_millis(1100),
            "{took:?}"
        );
        l.pause(Duration::from_secs(5));
        let before = tokio::time::Instant::now();
        l.acquire().await;
        assert!(before.elapsed() >= Duration::from_secs(5));
        assert_eq!(l.sent(), 14);
    }

    #[test]
    fn payload_rows_coalesce_per_pr_and_per_head() {
        let c = Payload::Comment {
            repo: "o/r".into(),
            body: "b".into(),
        }
        .row("conn", 7);
        assert_eq!(
            (c.kind.as_str(), c.coalesce_key.as_str()),
            ("comment", "conn#7#comment")
        );
        let s = Payload::Status {
            repo: "o/r".into(),
            sha: "abc".into(),
            state: CommitState::Pending,
            target_url: None,
            description: "d".into(),
        }
        .row("conn", 7);
        assert_eq!(s.coalesce_key, "conn#abc#status");
        let back: Payload = serde_json::from_str(&s.payload).unwrap();
        assert!(matches!(
            back,
            Payload::Status {
                state: CommitState::Pending,
                ..
            }
        ));
    }
}
