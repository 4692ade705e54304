//! The preview state machine: a job from a PR event becomes a live preview behind the gateway,
//! an update, or a teardown.
//!
//! ```text
//! queued ─► cloning ─► building ─► starting ─► ready
//!    │         └──────────┴───────────┴──────► failed
//!    ├─► skipped (draft)   ├─► awaiting-approval (fork)
//! any ─► destroying ─► destroyed
//! ```
//! This file holds the preview's record and the dispatch of its jobs; the launch is in
//! `launch.rs`, the teardown in `teardown.rs`.
//!
//! Launch steps, each timed in `preview_steps`: fetch (git mirror, `.endor.toml` from the
//! default branch) → clone (the parent's files and databases, or an empty site; kept on an
//! update) → build (in a fresh checkout of the head) → start (a supervised process, or a
//! static folder) → health → route. The new version replaces the old one only once it is
//! healthy, so an update never takes a working preview down.
//!
//! Every run is idempotent: a run after a crash reuses the site it finds, replaces its own
//! checkout, and stops a process a dead run left behind (recognised by its `ENDOR_SITE`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::config::Config;
use crate::forge::{EventKind, ForgeEvent, PrAction};
use crate::gateway::Route;
use crate::git::{GitError, GitMirrors};
use crate::jobs::Job;
use crate::jobs::{JobContext, JobError, JobKind, NewJob};
use crate::metrics::Metrics;
use crate::runtime::Supervised;
use crate::sites::{SiteError, Sites};
use crate::store::{Connection, Preview, SiteState, Store};

use super::state::PreviewState;
use crate::writeback::ForgeClients;

/// `{repo}-pr-{number}` as a DNS label: the repository's last path segment, lowercased, every
/// other character a `-`; shortened with a stable hash of the full name when over 63.
pub fn site_name(repo: &str, number: u64) -> String {
    let base = repo.rsplit('/').next().unwrap_or(repo).to_ascii_lowercase();
    let mut clean = String::with_capacity(base.len());
    for c in base.chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (clean.is_empty() || clean.ends_with('-'))) {
            clean.push(c);
        }
    }
    let clean = clean.trim_end_matches('-');
    let clean = if clean.is_empty() { "repo" } else { clean };
    let suffix = format!("-pr-{number}");
    if clean.len() + suffix.len() <= 63 {
        return format!("{clean}{suffix}");
    }
    use sha2::{Digest, Sha256};
    let hash = hex::encode(&Sha256::digest(repo.as_bytes())[..3]);
    let keep = 63 - suffix.len() - hash.len() - 1;
    let head = clean[..keep].trim_end_matches('-');
    format!("{head}-{hash}{suffix}")
}

/// Runs preview jobs (`pull_request`, `resume`, `expire`) and serves the previews' public
/// API (`actions.rs`).
pub struct Lifecycle {
    pub(super) store: Arc<dyn Store>,
    pub(super) config: Config,
    pub(super) sites: Sites,
    /// How PR code is confined on this host.
    pub(super) host: crate::runtime::Host,
    pub(super) git: GitMirrors,
    pub(super) metrics: Arc<Metrics>,
    pub(super) logs: crate::logs::Logs,
    /// Site processes this endor process supervises, by preview id.
    pub(super) procs: Mutex<HashMap<crate::ids::PreviewId, Supervised>>,
    /// Old versions replaced by an update, still answering until no gateway can route to them
    /// (see `retire`); stopped then, or at shutdown.
    pub(super) retiring: Arc<Mutex<HashMap<u64, Supervised>>>,
    /// Which forges endor may write back to.
    pub(super) forges: Arc<ForgeClients>,
    /// Wakes the outbox sender when a state change stored write-backs.
    pub(super) outbox_wake: Arc<tokio::sync::Notify>,
    /// Tells members of the states worth telling (ready, failed, expiring, expired).
    pub(super) notifier: crate::notify::Notifier,
}

/// What a launch aims at.
pub(super) struct Target {
    pub(super) number: u64,
    pub(super) head_sha: String,
    /// When the event behind this launch arrived (ms).
    pub(super) received_at: i64,
}

pub(super) fn transient(e: impl std::fmt::Display) -> JobError {
    JobError::Transient(e.to_string())
}

pub(super) fn site_error(e: SiteError) -> JobError {
    match e {
        SiteError::Store(e) => JobError::Transient(e.to_string()),
        SiteError::Clone(e) => JobError::Transient(format!("clone: {e}")),
        // Another operation held the site longer than the worker waits: try again later.
        SiteError::Busy(m) => JobError::Transient(m),
        other => JobError::Permanent(other.to_string()),
    }
}

pub(super) fn git_error(e: GitError) -> JobError {
    match e {
        GitError::Invalid(m) => JobError::Permanent(m),
        // Retrying a repository that is not there only delays the failure.
        e if e.is_missing_repository() => JobError::Permanent(format!(
            "{e} (check the connection's git URL: endor repo list)"
        )),
        other => JobError::Transient(other.to_string()),
    }
}

impl Lifecycle {
    pub fn new(
        store: Arc<dyn Store>,
        config: &Config,
        metrics: Arc<Metrics>,
        forges: Arc<ForgeClients>,
        outbox_wake: Arc<tokio::sync::Notify>,
    ) -> Arc<Self> {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        Arc::new(Self {
            sites: Sites::new(store.clone(), config)
                .waiting_for_locks(std::time::Duration::from_secs(120)),
            host: crate::runtime::Host::new(config),
            git: GitMirrors::new(abs(&config.storage.git)),
            logs: crate::logs::Logs::new(&abs(&config.storage.logs), (&config.logs).into()),
            notifier: crate::notify::Notifier::new(store.clone(), config),
            store,
            config: config.clone(),
            metrics,
            procs: Mutex::new(HashMap::new()),
            retiring: Arc::new(Mutex::new(HashMap::new())),
            forges,
            outbox_wake,
        })
    }

    /// A lifecycle outside `endor serve` (`endor site exec`): its own metrics and forge
    /// clients; whatever it stores for the forges is sent by the `endor serve` sharing the
    /// store.
    pub fn standalone(store: Arc<dyn Store>, config: &Config) -> Arc<Self> {
        let forges = ForgeClients::new(config).with_store(store.clone());
        Self::new(
            store,
            config,
            Arc::new(Metrics::default()),
            Arc::new(forges),
            Arc::new(tokio::sync::Notify::new()),
        )
    }

    /// The job that starts ready preview `p` again from its ready head (after a restart of
    /// endor, or on another host when its own was lost).
    pub(super) fn resume_job(&self, p: &Preview) -> NewJob {
        NewJob {
            kind: JobKind::Resume,
            job_key: crate::jobs::pr_key(&p.connection_id, p.number),
            head_sha: p.ready_sha.clone(),
            payload: p.id.to_string(),
            max_attempts: self.config.jobs.max_attempts,
            supersede: false,
        }
    }

    /// Queue a relaunch of every ready preview whose site process is not running (after a
    /// restart of endor, its processes are gone with it).
    pub async fn resume_all(&self) -> crate::store::Result<usize> {
        let mut n = 0;
        let me = self.host_address();
        for mut p in self.store.list_previews().await? {
            // Another host's previews are its own, or taken over when it is lost.
            if p.host.as_ref().is_some_and(|h| *h != me) {
                continue;
            }
            let alive = p
                .pid
                .is_some_and(|pid| process_of_site(pid as u32, &p.site_name));
            if p.state == PreviewState::Ready && p.port.is_some() && !alive {
                // Its site was deleted while endor was down: nothing to relaunch.
                if let Some(site_id) = p.site_id.clone()
                    && let Ok(site) = self.store.site(&site_id).await
                    && !runs(&p, &site_id, site.as_ref())
                {
                    self.site_gone(&mut p).await;
                    continue;
                }
                self.store
                    .enqueue_job(&self.resume_job(&p), crate::now_ms())
                    .await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Stop every supervised site process (endor is shutting down).
    pub async fn shutdown(&self) {
        let mut procs: Vec<Supervised> = self.procs.lock().await.drain().map(|(_, p)| p).collect();
        procs.extend(self.retiring.lock().await.drain().map(|(_, p)| p));
        for p in procs {
            p.stop().await;
        }
    }

    /// Stop the old version of a site (`old`, its process if it had one) and remove `dirs` (the
    /// old checkouts, a static site's served folder among them) once no gateway can still
    /// route to them: a gateway reads a site's route at most once per `gateway.cache_ttl_ms`,
    /// so the old version keeps answering that long after the new route was stored, plus half
    /// a second for requests in flight. A push never shows visitors a 502.
    pub(super) fn retire(&self, old: Option<Supervised>, dirs: Vec<PathBuf>) {
        if old.is_none() && dirs.is_empty() {
            return;
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let key = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let grace = std::time::Duration::from_millis(self.config.gateway.cache_ttl_ms + 500);
        let retiring = self.retiring.clone();
        let sites = self.sites.clone();
        tokio::spawn(async move {
            if let Some(p) = old {
                retiring.lock().await.insert(key, p);
            }
            tokio::time::sleep(grace).await;
            // Gone already when endor shut down meanwhile (shutdown stopped it).
            let old = retiring.lock().await.remove(&key);
            if let Some(p) = old {
                p.stop().await;
            }
            for d in dirs {
                // A site torn down meanwhile took its folders with it.
                let _ = sites.remove_path(&d);
            }
        });
    }

    pub(super) async fn save(&self, p: &mut Preview) -> Result<(), JobError> {
        p.updated_at = crate::now_ms();
        self.store.put_preview(p).await.map_err(transient)
    }

    /// Move to `state` and store, in the same transaction, the write-backs it asks for.
    pub(super) async fn set_state(
        &self,
        p: &mut Preview,
        state: PreviewState,
        reason: Option<String>,
    ) -> Result<(), JobError> {
        let changed = p.state != state || p.reason != reason;
        p.state = state;
        p.reason = reason;
        p.updated_at = crate::now_ms();
        if changed && let Some(site) = &p.site_id {
            self.event(site, super::events::state_line(p));
        }
        let rows = self.write_backs(p).await?;
        self.store
            .put_preview_with_outbox(p, &rows, p.updated_at)
            .await
            .map_err(transient)?;
        if !rows.is_empty() {
            self.outbox_wake.notify_waiters();
        }
        if changed {
            self.notifier.preview_event(p).await;
        }
        Ok(())
    }

    /// A line of the site's `endor` log (its own events).
    /// The writer of every site's logs this lifecycle runs (share it: it keeps the sites'
    /// limits and open segments).
    pub fn logs(&self) -> &crate::logs::Logs {
        &self.logs
    }

    /// Ship what every live site's own database servers wrote since the last look into the
    /// site's `postgres` / `mariadb` log. Returns the lines shipped.
    pub async fn ship_server_logs(&self) -> usize {
        let Ok(all) = self.store.list_sites().await else {
            return 0;
        };
        let mut shipped = 0;
        for site in all {
            if !matches!(site.state, SiteState::Active | SiteState::Creating) {
                continue;
            }
            let Ok(files) = self.sites.server_logs(&site).await else {
                continue;
            };
            let files: Vec<crate::logs::ServerLog> = files
                .into_iter()
                .filter_map(|(what, path)| crate::logs::ServerLog::named(what, path))
                .collect();
            if files.is_empty() {
                continue;
            }
            let logs = self.logs.clone();
            let id = site.id.clone();
            match tokio::task::spawn_blocking(move || logs.ship(&id, &files)).await {
                Ok(Ok(n)) => shipped += n,
                Ok(Err(e)) => {
                    tracing::warn!(site = %site.name, error = %e, "a database server's log could not be shipped")
                }
                Err(_) => {}
            }
        }
        shipped
    }

    pub(super) fn event(&self, site: &crate::ids::SiteId, entry: crate::logs::Entry) {
        self.logs.write(site, entry);
    }

    pub(super) async fn write_backs(
        &self,
        p: &Preview,
    ) -> Result<Vec<crate::store::NewOutbox>, JobError> {
        super::report::rows_for(self.store.as_ref(), &self.forges, &self.config, p)
            .await
            .map_err(transient)
    }

    pub(super) async fn load_or_new(
        &self,
        conn: &Connection,
        number: u64,
    ) -> Result<Preview, JobError> {
        if let Some(p) = self
            .store
            .preview(&conn.id, number as i64)
            .await
            .map_err(transient)?
        {
            return Ok(p);
        }
        Ok(Preview::new(
            conn.id.clone(),
            number as i64,
            site_name(&conn.repo, number),
            crate::now_ms(),
        ))
    }

    /// Is the job superseded (a newer head arrived)? Asks the store too, so a cancellation is
    /// seen without waiting for the next heartbeat.
    pub(super) async fn superseded(&self, job: &Job, ctx: &JobContext) -> bool {
        if ctx.cancelled() {
            return true;
        }
        matches!(self.store.job(&job.id).await, Ok(Some(j)) if j.cancel_requested != 0)
    }

    pub(super) async fn give_way(&self, job: &Job, ctx: &JobContext) -> Result<(), JobError> {
        if self.superseded(job, ctx).await {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The connection and PR number of a job key (`{connection}#{number}`).
    pub(super) fn key_parts(job: &Job) -> Result<(&str, i64), JobError> {
        crate::jobs::parse_pr_key(&job.job_key)
            .ok_or_else(|| JobError::Permanent(format!("bad job key {}", job.job_key)))
    }

    /// The repository connection of a PR job (named on the job's span from here on).
    pub async fn connection(&self, job: &Job) -> Result<Connection, JobError> {
        let (conn_id, number) = Self::key_parts(job)?;
        let conn = self
            .store
            .connection(&conn_id.into())
            .await
            .map_err(transient)?
            .ok_or_else(|| JobError::Permanent("the repository connection was deleted".into()))?;
        let span = tracing::Span::current();
        span.record("repo", conn.repo.as_str());
        span.record("site", site_name(&conn.repo, number as u64).as_str());
        Ok(conn)
    }

    async fn handle_event(&self, job: &Job, ctx: JobContext) -> Result<(), JobError> {
        let ev: ForgeEvent = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::Permanent(format!("unreadable job payload: {e}")))?;
        let EventKind::PullRequest(pr) = ev.kind else {
            // Comments are the slash-command issue's; nothing to do for them here.
            return Ok(());
        };
        let conn = self.connection(job).await?;
        let mut preview = self.load_or_new(&conn, pr.number).await?;
        match pr.action {
            PrAction::Closed | PrAction::Merged => {
                self.destroy(&mut preview, pr.action.as_str()).await
            }
            PrAction::ConvertedToDraft => Ok(()),
            PrAction::Opened
            | PrAction::Reopened
            | PrAction::ReadyForReview
            | PrAction::Synchronized => {
                preview.head_sha = Some(pr.head_sha.clone());
                // When this head became known: an approval given in a comment older than
                // this cannot cover it.
                preview.received_at = Some(job.created_at);
                preview.is_fork = pr.is_fork as i64;
                preview.title = Some(pr.title.clone());
                if pr.draft && !self.config.previews.drafts {
                    return self
                        .set_state(
                            &mut preview,
                            PreviewState::Skipped,
                            Some("draft pull request (previews.drafts is off)".into()),
                        )
                        .await;
                }
                if pr.is_fork && preview.approved_sha.as_deref() != Some(pr.head_sha.as_str()) {
                    return self
                        .set_state(
                            &mut preview,
                            PreviewState::AwaitingApproval,
                            Some(format!(
                                "pull request from a fork: a member with the developer role must comment `/preview deploy` to build {}",
                                crate::git::short_sha(&pr.head_sha)
                            )),
                        )
                        .await;
                }
                let target = Target {
                    number: pr.number,
                    head_sha: pr.head_sha,
                    received_at: job.created_at,
                };
                self.launch_or_fail(job, ctx, &conn, &mut preview, target)
                    .await
            }
        }
    }

    async fn handle_resume(&self, job: &Job, ctx: JobContext) -> Result<(), JobError> {
        let conn = self.connection(job).await?;
        let (_, number) = Self::key_parts(job)?;
        let Some(mut preview) = self
            .store
            .preview(&conn.id, number)
            .await
            .map_err(transient)?
            .filter(|p| p.id.as_str() == job.payload)
        else {
            return Ok(());
        };
        let (Some(sha), true) = (
            preview.ready_sha.clone(),
            preview.state == PreviewState::Ready,
        ) else {
            return Ok(());
        };
        // Started again already, here or on a host that is alive: nothing runs twice.
        if self.procs.lock().await.contains_key(&preview.id) || self.runs_elsewhere(&preview).await
        {
            return Ok(());
        }
        let target = Target {
            number: preview.number as u64,
            head_sha: sha,
            received_at: job.created_at,
        };
        self.launch_or_fail(job, ctx, &conn, &mut preview, target)
            .await
    }
}

impl Lifecycle {
    /// Run a job of the previews' kinds (PR events, resumes, expiries); comments are the
    /// slash-commands' (`crate::commands`), dispatched by `crate::worker`.
    pub async fn run_job(&self, job: &Job, ctx: JobContext) -> Result<(), JobError> {
        match job.kind {
            JobKind::PullRequest => self.handle_event(job, ctx).await,
            JobKind::Resume => self.handle_resume(job, ctx).await,
            JobKind::Expire => self.handle_expire(job).await,
            JobKind::Comment => Err(JobError::Permanent(
                "comment jobs are run by the slash-commands".into(),
            )),
        }
    }
}

/// Should the process of PR `number`'s preview on site `site_id` still run? Not once the store
/// says the preview is torn down (or being torn down) or the site is deleted — by this process
/// or another (`endor reap`, `endor site delete`): one owner of running sites, the store.
/// A store that cannot be read keeps the process.
async fn wanted(
    store: &dyn Store,
    connection_id: &crate::ids::ConnectionId,
    number: i64,
    site_id: &crate::ids::SiteId,
) -> bool {
    let preview = match store.preview(connection_id, number).await {
        Ok(p) => p,
        Err(_) => return true,
    };
    let site = match store.site(site_id).await {
        Ok(s) => s,
        Err(_) => return true,
    };
    preview.is_some_and(|p| runs(&p, site_id, site.as_ref()))
}

/// The rule [`wanted`] applies: the preview is not torn down, still uses `site_id`, and that
/// site (`site`, as read from the store) is not deleted.
fn runs(p: &Preview, site_id: &crate::ids::SiteId, site: Option<&crate::store::Site>) -> bool {
    !super::state::torn_down(p.state)
        && p.site_id.as_ref() == Some(site_id)
        && site.is_some_and(|s| !matches!(s.state, SiteState::Deleting | SiteState::Deleted))
}

/// [`wanted`] as the supervisor asks it, before each restart.
pub(super) fn still_wanted(
    store: Arc<dyn Store>,
    connection_id: crate::ids::ConnectionId,
    number: i64,
    site_id: crate::ids::SiteId,
) -> crate::runtime::StillWanted {
    Arc::new(move || {
        let (store, c, s) = (store.clone(), connection_id.clone(), site_id.clone());
        Box::pin(async move { wanted(store.as_ref(), &c, number, &s).await })
    })
}

impl Lifecycle {
    /// Stop this process's site processes that the store says are no longer wanted (their
    /// preview torn down, or their site deleted, by another endor process). A preview whose
    /// site was deleted under it is marked destroyed and answers 410. Run every few seconds by
    /// `endor serve`.
    pub async fn reconcile(&self) {
        let ids: Vec<crate::ids::PreviewId> = self.procs.lock().await.keys().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let Ok(previews) = self.store.list_previews().await else {
            return;
        };
        for mut p in previews.into_iter().filter(|p| ids.contains(&p.id)) {
            let Some(site_id) = p.site_id.clone() else {
                continue;
            };
            // A store that cannot be read keeps the process.
            let Ok(site) = self.store.site(&site_id).await else {
                continue;
            };
            // Started on another host since (an update built there, or a take-over): this
            // host's process goes; the preview lives on there.
            if p.host.as_ref().is_some_and(|h| *h != self.host_address()) {
                if let Some(proc_) = self.procs.lock().await.remove(&p.id) {
                    proc_.stop().await;
                    tracing::info!(site = %p.site_name, host = ?p.host, "stopped the site process: the preview runs on another host now");
                }
                continue;
            }
            if runs(&p, &site_id, site.as_ref()) {
                continue;
            }
            let Some(proc_) = self.procs.lock().await.remove(&p.id) else {
                continue;
            };
            proc_.stop().await;
            tracing::info!(site = %p.site_name, "stopped the site process: its site was torn down by another endor process");
            self.site_gone(&mut p).await;
        }
    }

    /// A live preview whose site was deleted from under it (`endor site delete`) is destroyed,
    /// with that reason, and answers 410. Torn-down previews are left as they are.
    async fn site_gone(&self, p: &mut Preview) {
        if super::state::torn_down(p.state) {
            return;
        }
        let why = format!("its site {} was deleted", p.site_name);
        self.runs_nowhere(p, Route::Gone, PreviewState::Destroyed, why)
            .await;
    }

    /// Preview `p` runs nowhere any more (its site deleted, its host lost): no process is
    /// recorded, the gateway answers `route`, the preview is `state` with `why`. Failures are
    /// logged: the callers are passes over many previews.
    pub(super) async fn runs_nowhere(
        &self,
        p: &mut Preview,
        route: Route,
        state: PreviewState,
        why: String,
    ) {
        p.pid = None;
        p.port = None;
        p.ready_sha = None;
        if let Err(e) = self.put_route(&p.site_name, route, true).await {
            tracing::warn!(site = %p.site_name, error = %e, "could not change the site's route");
        }
        if let Err(e) = self.set_state(p, state, Some(why)).await {
            tracing::warn!(site = %p.site_name, error = %e, "could not change the preview's state");
        }
    }
}

/// Is `pid` a process endor started for `site` (its environment says `ENDOR_SITE=site`)?
/// Guards against killing an unrelated process that reused the pid.
pub fn process_of_site(pid: u32, site: &str) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("ENDOR_SITE={site}");
    env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

/// Kill the process group of a site process left by an earlier run, if it is still there.
pub(super) fn kill_site_process(pid: u32, site: &str) {
    if pid > 1 && process_of_site(pid, site) {
        // SAFETY: kill(2) on a process group whose leader we verified is this site's.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        tracing::info!(
            pid,
            site,
            "stopped the site's process (started by another endor process or an earlier run)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_names_are_dns_labels() {
        assert_eq!(site_name("octo/Hello-World", 7), "hello-world-pr-7");
        assert_eq!(site_name("group/sub/My_App", 12), "my-app-pr-12");
        assert_eq!(site_name("o/--weird..name--", 1), "weird-name-pr-1");
        assert_eq!(site_name("o/$(touch pwned)", 3), "touch-pwned-pr-3");
        assert_eq!(site_name("o/___", 3), "repo-pr-3");
        let long = format!("o/{}", "a".repeat(100));
        let n = site_name(&long, 123456);
        assert!(n.len() <= 63, "{n}");
        assert!(n.ends_with("-pr-123456"));
        crate::sites::validate_site_name(&n).unwrap();
        // Stable, and different for different long names.
        assert_eq!(n, site_name(&long, 123456));
        assert_ne!(n, site_name(&format!("o/{}b", "a".repeat(100)), 123456));
        for repo in ["a/b", "x/Ünïcødé", "x/-", "x/a-", &long] {
            crate::sites::validate_site_name(&site_name(repo, u64::MAX)).unwrap();
        }
    }
}
