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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};
use tracing::Instrument;

use crate::config::Config;
use crate::forge::ForgeKind;
pub use crate::forge::client::{
    CheckAction, CheckRun, CheckState, CommitState, DeployState, Forge, ForgeError, Limiter, PrRef,
    STATUS_CONTEXT, classify_status,
};
use crate::ids::ConnectionId;
pub use crate::store::OutboxKind;
use crate::store::{Connection, NewOutbox, OutboxEnd, OutboxItem, Store};

/// The store failing under a write-back is worth another attempt.
impl From<crate::store::StoreError> for ForgeError {
    fn from(e: crate::store::StoreError) -> Self {
        ForgeError::transient(e.to_string())
    }
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
    /// The check run `endor/preview` of a head (GitHub App connections, in place of the
    /// commit status).
    Check {
        repo: String,
        sha: String,
        check: CheckRun,
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
            Payload::Check { .. } => OutboxKind::Check,
        }
    }

    /// The outbox row for this write-back of PR `number` of `connection_id`.
    pub fn row(&self, connection_id: &ConnectionId, number: i64) -> NewOutbox {
        let key = match self {
            Payload::Comment { .. } => format!("{connection_id}#{number}#comment"),
            Payload::Status { sha, .. } => format!("{connection_id}#{sha}#status"),
            Payload::Check { sha, .. } => format!("{connection_id}#{sha}#check"),
            Payload::Deployment { .. } => format!("{connection_id}#{number}#deployment"),
            Payload::Reply { key, .. } => format!("{connection_id}#{number}#reply#{key}"),
            Payload::Reaction {
                comment_id,
                content,
                ..
            } => format!("{connection_id}#{number}#reaction#{comment_id}#{content}"),
        };
        NewOutbox {
            connection_id: connection_id.clone(),
            number,
            kind: self.kind(),
            coalesce_key: key,
            payload: serde_json::to_string(self).unwrap_or_default(),
            held: None,
        }
    }
}

/// The forge clients of every connection, made on first use; one [`Limiter`] per API base.
pub struct ForgeClients {
    config: Config,
    clients: Mutex<HashMap<ConnectionId, Arc<dyn Forge>>>,
    limiters: std::sync::Mutex<HashMap<String, Arc<Limiter>>>,
    github_app: tokio::sync::OnceCell<octocrab::Octocrab>,
    /// Where a GitHub App made by `endor github app create` and its installations are kept.
    store: Option<Arc<dyn crate::store::Store>>,
}

impl ForgeClients {
    pub fn new(config: &Config) -> Self {
        Self {
            config: config.clone(),
            clients: Mutex::new(HashMap::new()),
            limiters: std::sync::Mutex::new(HashMap::new()),
            github_app: tokio::sync::OnceCell::new(),
            store: None,
        }
    }

    /// Also write to GitHub as the GitHub App kept in `store` (made by `endor github app
    /// create`) when the config names neither a token nor an app, and stop writing to the
    /// repositories of a suspended or deleted installation.
    pub fn with_store(mut self, store: Arc<dyn crate::store::Store>) -> Self {
        self.store = Some(store);
        self
    }

    fn forge_config(&self, forge: ForgeKind) -> &crate::config::ForgeConfig {
        forge.config(&self.config)
    }

    /// Does endor have credentials to write to this connection's forge? The config's, or,
    /// for a repository a GitHub App installation connected, the app kept in the store.
    pub fn enabled(&self, conn: &Connection) -> bool {
        conn.forge.has_credentials(self.forge_config(conn.forge))
            || (conn.installation_id.is_some() && self.store.is_some())
    }

    /// Is the preview's place on a head of this connection a check run (GitHub, written as a
    /// GitHub App: an installation connected it, or the config names an app and no token)?
    /// Else a commit status.
    pub fn uses_checks(&self, conn: &Connection) -> bool {
        conn.forge == ForgeKind::Github
            && (conn.installation_id.is_some()
                || (self.config.github.app_id.is_some()
                    && conn.forge.writes_as_app(self.forge_config(conn.forge))))
    }

    /// Why a write-back to this connection would not be sent (`None`: it will be). Rows are
    /// stored either way: a held one as `unsent`, with this reason.
    pub fn held_reason(&self, conn: &Connection) -> Option<String> {
        (!self.enabled(conn)).then(|| format!("not sent: no credentials for {}", conn.forge))
    }

    /// An outbox row for `payload`, held when this connection's forge cannot be written to.
    pub fn row(&self, conn: &Connection, payload: &Payload, number: i64) -> NewOutbox {
        NewOutbox {
            held: self.held_reason(conn),
            ..payload.row(&conn.id, number)
        }
    }

    /// The GitHub App client (its JWT), made once from `[github] app_id` and the key file, or
    /// else from the app kept in the store.
    async fn github_app(&self, api: &str) -> Result<octocrab::Octocrab, ForgeError> {
        let timeout = self.config.writeback.timeout.0;
        self.github_app
            .get_or_try_init(|| async {
                if self.config.github.app_id.is_some() {
                    return crate::forge::github::client::app(api, &self.config.github, timeout);
                }
                let store = self.store.as_ref().ok_or_else(|| {
                    ForgeError::Permanent("no GitHub App configured".into())
                })?;
                let apps = store
                    .github_apps()
                    .await
                    .map_err(|e| ForgeError::transient(e.to_string()))?;
                let app = apps.first().ok_or_else(|| {
                    ForgeError::Permanent(
                        "no GitHub credentials: set [github] token, or make an app (endor github app create)"
                            .into(),
                    )
                })?;
                crate::forge::github::client::app_with_key(
                    api,
                    app.app_id as u64,
                    app.pem.as_bytes(),
                    timeout,
                )
            })
            .await
            .cloned()
    }

    /// Refuse to write for a connection whose GitHub App installation is suspended or gone.
    async fn installation_live(&self, conn: &Connection) -> Result<(), ForgeError> {
        let (Some(id), Some(store)) = (conn.installation_id, &self.store) else {
            return Ok(());
        };
        let i = store
            .installation(id)
            .await
            .map_err(|e| ForgeError::transient(e.to_string()))?;
        match i {
            Some(i) if i.deleted_at.is_some() => Err(ForgeError::Permanent(format!(
                "the GitHub App was uninstalled from {}: nothing is written to {}",
                i.account, conn.repo
            ))),
            Some(i) if i.suspended_at.is_some() => Err(ForgeError::Permanent(format!(
                "the GitHub App's installation on {} is suspended: nothing is written to {} until it is unsuspended",
                i.account, conn.repo
            ))),
            _ => Ok(()),
        }
    }

    fn api_url(&self, conn: &Connection) -> Option<String> {
        let configured = &self.forge_config(conn.forge).api_url;
        conn.api_url
            .clone()
            .or_else(|| (!configured.is_empty()).then(|| configured.clone()))
            .or_else(|| conn.forge.default_api_url().map(str::to_string))
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
        self.installation_live(conn).await?;
        if let Some(c) = self.clients.lock().await.get(&conn.id) {
            return Ok(c.clone());
        }
        let cfg = self.forge_config(conn.forge);
        if !self.enabled(conn) {
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
        // A personal or fine-grained token wins; without one, the GitHub App.
        let app = if conn.forge.writes_as_app(cfg) {
            Some(self.github_app(&api).await?)
        } else {
            None
        };
        let client = conn
            .forge
            .client(crate::forge::Reach {
                api: &api,
                token: &cfg.token,
                repo: &conn.repo,
                timeout: self.config.writeback.timeout.0,
                limiter,
                github_app: app.as_ref(),
            })
            .await?;
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
                                let span = tracing::info_span!(
                                    "write-back",
                                    outbox = %item.id,
                                    kind = %item.kind,
                                    connection = %item.connection_id,
                                    pr = item.number,
                                    repo = tracing::field::Empty,
                                );
                                send_one(&store, &clients, &name, item, max_attempts, &metrics)
                                    .instrument(span)
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
    tracing::Span::current().record("repo", conn.repo.as_str());
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
        Payload::Check { repo, sha, check } => {
            deliver_check(store, forge.as_ref(), &conn.id, item, &repo, &sha, &check).await
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

/// Create or update the check run of `sha`. One run per launch: a head gets a new run when a
/// launch starts after its run completed (a redeploy), so GitHub shows the newest; a completed
/// run is updated when it only changes its ending (ready, then destroyed). The run's id is
/// kept (`check` = `ID:SHA:open|done`) as soon as it exists, so a retry only updates it.
async fn deliver_check(
    store: &Arc<dyn Store>,
    forge: &dyn Forge,
    conn: &ConnectionId,
    item: &OutboxItem,
    repo: &str,
    sha: &str,
    check: &CheckRun,
) -> Result<(), ForgeError> {
    let n = item.number;
    let completes = !matches!(check.state, CheckState::Waiting | CheckState::InProgress);
    let mark = if completes { "done" } else { "open" };
    let known = store.forge_ref(conn, n, "check").await?.unwrap_or_default();
    let mut parts = known.splitn(3, ':');
    let (id, for_sha, was) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let same_run = !id.is_empty() && for_sha == sha && (was == "open" || completes);
    if same_run {
        forge.update_check_run(repo, id, check).await?;
        return Ok(store
            .put_forge_ref(conn, n, "check", &format!("{id}:{sha}:{mark}"))
            .await?);
    }
    if check.state == CheckState::Gone {
        // Never shown for this head: nothing to mark gone.
        return Ok(());
    }
    // After a lost answer, look for the run that attempt may have made (one other than the
    // completed run a redeploy replaces).
    let unsure = store.forge_ref(conn, n, "check_unsure").await?;
    if unsure.as_deref() == Some(sha) {
        let found = forge.find_check_run(repo, sha).await?;
        store.put_forge_ref(conn, n, "check_unsure", "").await?;
        if let Some(found) = found.filter(|f| !(for_sha == sha && f == id)) {
            store
                .put_forge_ref(conn, n, "check", &format!("{found}:{sha}:open"))
                .await?;
            forge.update_check_run(repo, &found, check).await?;
            return Ok(store
                .put_forge_ref(conn, n, "check", &format!("{found}:{sha}:{mark}"))
                .await?);
        }
    }
    let created = forge.create_check_run(repo, sha, check).await;
    if let Err(e) = &created
        && e.unsure()
    {
        store.put_forge_ref(conn, n, "check_unsure", sha).await?;
    }
    let id = created?;
    Ok(store
        .put_forge_ref(conn, n, "check", &format!("{id}:{sha}:{mark}"))
        .await?)
}

/// Edit the PR's status comment, found by its stored id, else by its marker among endor's own
/// comments (duplicates a crash left are deleted), else created.
async fn upsert_comment(
    store: &Arc<dyn Store>,
    forge: &dyn Forge,
    connection_id: &ConnectionId,
    pr: &PrRef<'_>,
    body: &str,
) -> Result<(), ForgeError> {
    upsert_comment_once(store, forge, connection_id, pr, body, true).await
}

async fn upsert_comment_once(
    store: &Arc<dyn Store>,
    forge: &dyn Forge,
    connection_id: &ConnectionId,
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

    #[test]
    fn payload_rows_coalesce_per_pr_and_per_head() {
        let c = Payload::Comment {
            repo: "o/r".into(),
            body: "b".into(),
        }
        .row(&"conn".into(), 7);
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
        .row(&"conn".into(), 7);
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
