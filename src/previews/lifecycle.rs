//! The preview state machine: a job from a PR event becomes a live preview behind the gateway,
//! an update, or a teardown.
//!
//! ```text
//! queued ─► cloning ─► building ─► starting ─► ready
//!    │         └──────────┴───────────┴──────► failed
//!    ├─► skipped (draft)   ├─► awaiting-approval (fork)
//! any ─► destroying ─► destroyed
//! ```
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
use crate::previews::config::RepoConfig;
use crate::runtime::{self, Sandbox, Supervised};
use crate::sites::{SiteError, Sites};
use crate::store::{Connection, Preview, PreviewStep, Site, SiteState, Store};

use super::state::{self, PreviewState};
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
    pub(super) git: GitMirrors,
    pub(super) metrics: Arc<Metrics>,
    pub(super) logs: PathBuf,
    /// Site processes this endor process supervises, by preview id.
    pub(super) procs: Mutex<HashMap<crate::ids::PreviewId, Supervised>>,
    /// Which forges endor may write back to.
    pub(super) forges: Arc<ForgeClients>,
    /// Wakes the outbox sender when a state change stored write-backs.
    pub(super) outbox_wake: Arc<tokio::sync::Notify>,
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

fn site_error(e: SiteError) -> JobError {
    match e {
        SiteError::Store(e) => JobError::Transient(e.to_string()),
        SiteError::Clone(e) => JobError::Transient(format!("clone: {e}")),
        other => JobError::Permanent(other.to_string()),
    }
}

fn git_error(e: GitError) -> JobError {
    match e {
        GitError::Invalid(m) => JobError::Permanent(m),
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
            sites: Sites::new(store.clone(), config),
            git: GitMirrors::new(abs(&config.storage.git)),
            logs: abs(&config.storage.logs),
            store,
            config: config.clone(),
            metrics,
            procs: Mutex::new(HashMap::new()),
            forges,
            outbox_wake,
        })
    }

    /// Queue a relaunch of every ready preview whose site process is not running (after a
    /// restart of endor, its processes are gone with it).
    pub async fn resume_all(&self) -> crate::store::Result<usize> {
        let mut n = 0;
        for p in self.store.list_previews().await? {
            let alive = p
                .pid
                .is_some_and(|pid| process_of_site(pid as u32, &p.site_name));
            if p.state == PreviewState::Ready && p.port.is_some() && !alive {
                self.store
                    .enqueue_job(
                        &NewJob {
                            kind: JobKind::Resume,
                            job_key: crate::jobs::pr_key(&p.connection_id, p.number),
                            head_sha: p.ready_sha.clone(),
                            payload: p.id.to_string(),
                            max_attempts: self.config.jobs.max_attempts,
                            supersede: false,
                        },
                        crate::now_ms(),
                    )
                    .await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Stop every supervised site process (endor is shutting down).
    pub async fn shutdown(&self) {
        let procs: Vec<_> = self.procs.lock().await.drain().collect();
        for (_, p) in procs {
            p.stop().await;
        }
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
        p.state = state;
        p.reason = reason;
        p.updated_at = crate::now_ms();
        let rows = self.write_backs(p).await?;
        self.store
            .put_preview_with_outbox(p, &rows, p.updated_at)
            .await
            .map_err(transient)?;
        if !rows.is_empty() {
            self.outbox_wake.notify_waiters();
        }
        Ok(())
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
        let now = crate::now_ms();
        Ok(Preview {
            id: crate::ids::PreviewId::generate(),
            connection_id: conn.id.clone(),
            number: number as i64,
            site_name: site_name(&conn.repo, number),
            site_id: None,
            state: PreviewState::Queued,
            head_sha: None,
            ready_sha: None,
            approved_sha: None,
            is_fork: 0,
            reason: None,
            port: None,
            pid: None,
            received_at: None,
            created_at: now,
            updated_at: now,
            title: None,
            expires_at: None,
            teardown_step: None,
            warned_expiry: None,
            ttl_ms: None,
        })
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
                                &pr.head_sha[..pr.head_sha.len().min(12)]
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
        let target = Target {
            number: preview.number as u64,
            head_sha: sha,
            received_at: job.created_at,
        };
        self.launch_or_fail(job, ctx, &conn, &mut preview, target)
            .await
    }

    /// Launch, and turn a failure into a failed preview with its reason.
    pub(super) async fn launch_or_fail(
        &self,
        job: &Job,
        ctx: JobContext,
        conn: &Connection,
        preview: &mut Preview,
        target: Target,
    ) -> Result<(), JobError> {
        let mut started: Option<Started> = None;
        let result = self
            .launch(job, &ctx, conn, preview, &target, &mut started)
            .await;
        let Err(err) = result else { return Ok(()) };
        // Undo what this run started: its process and its checkout.
        if let Some(s) = started.take() {
            if let Some(p) = s.process {
                p.stop().await;
            }
            if let Some(dir) = s.code_dir {
                let _ = self.sites.remove_path(&dir);
            }
        }
        let last_attempt = job.attempts >= job.max_attempts;
        match &err {
            JobError::Cancelled => {}
            JobError::Transient(e) if !last_attempt => {
                tracing::warn!(preview = %preview.site_name, error = %e, "launch failed; will retry");
                preview.reason = Some(format!("retrying: {e}"));
                self.save(preview).await?;
            }
            JobError::Transient(e) | JobError::Permanent(e) => {
                tracing::warn!(preview = %preview.site_name, error = %e, "launch failed");
                self.set_state(preview, PreviewState::Failed, Some(e.clone()))
                    .await?;
                // A preview that never became ready shows a failure page; one that did keeps
                // serving its last good version.
                if preview.ready_sha.is_none() {
                    self.put_route(&preview.site_name, Route::Failed, true)
                        .await?;
                }
            }
        }
        Err(err)
    }

    pub(super) async fn put_route(
        &self,
        name: &str,
        route: Route,
        robots: bool,
    ) -> Result<(), JobError> {
        self.store
            .put_route(&route.row(name, robots))
            .await
            .map_err(transient)
    }

    async fn begin(
        &self,
        preview: &Preview,
        run: &str,
        seq: i64,
        step: &str,
    ) -> Result<PreviewStep, JobError> {
        let s = PreviewStep {
            preview_id: preview.id.clone(),
            run_id: run.into(),
            step: step.into(),
            seq,
            started_at: crate::now_ms(),
            ended_at: None,
            ok: None,
            detail: None,
        };
        self.store.put_step(&s).await.map_err(transient)?;
        Ok(s)
    }

    /// Record the end of a step: `detail` on success, the error otherwise.
    async fn end<T>(
        &self,
        mut s: PreviewStep,
        result: Result<T, JobError>,
        detail: Option<String>,
    ) -> Result<T, JobError> {
        s.ended_at = Some(crate::now_ms());
        s.ok = Some(result.is_ok() as i64);
        s.detail = match &result {
            Ok(_) => detail,
            Err(e) => Some(e.to_string()),
        };
        self.store.put_step(&s).await.map_err(transient)?;
        result
    }

    async fn launch(
        &self,
        job: &Job,
        ctx: &JobContext,
        conn: &Connection,
        preview: &mut Preview,
        target: &Target,
        started: &mut Option<Started>,
    ) -> Result<(), JobError> {
        let run = job.id.as_str();
        // The process serving now (or left by a dead run), stopped once the new one is live.
        let previous_pid = preview.pid.map(|p| p as u32);
        preview.received_at = Some(target.received_at);
        preview.head_sha = Some(target.head_sha.clone());
        self.set_state(preview, PreviewState::Queued, None).await?;

        // 1. fetch: the head commit and the repository config of the default branch.
        let s = self.begin(preview, run, 1, "fetch").await?;
        let fetched = self.fetch(conn, target).await;
        let detail = fetched
            .as_ref()
            .ok()
            .map(|(_, sha)| format!("config from {sha}"));
        let cfg = self.end(s, fetched, detail).await?.0;
        self.give_way(job, ctx).await?;

        // 2. clone: the site and its data (kept when the site exists: an update).
        self.set_state(preview, PreviewState::Cloning, None).await?;
        let s = self.begin(preview, run, 2, "clone").await?;
        let made = self.ensure_site(conn, preview, &cfg).await;
        let detail = made
            .as_ref()
            .ok()
            .map(|(_, kept)| if *kept { "data kept" } else { "cloned" }.to_string());
        let (site, _kept) = self.end(s, made, detail).await?;
        if site.protected {
            // A protected site deploys only git tags (SPEC §7); a PR head is not one.
            return Err(JobError::Permanent(format!(
                "site {} is protected: it deploys only git tags (endor site protect {} off to build pull requests into it)",
                site.name, site.name
            )));
        }
        preview.site_id = Some(site.id.clone());
        if preview.ready_sha.is_none() {
            self.put_route(&preview.site_name, Route::Building, !site.protected)
                .await?;
        }
        self.give_way(job, ctx).await?;

        // 3. build, in a fresh checkout of the head.
        self.set_state(preview, PreviewState::Building, None)
            .await?;
        let s = self.begin(preview, run, 3, "build").await?;
        let code = self.sites.site_dir(&site).join("code").join(run);
        *started = Some(Started {
            code_dir: Some(code.clone()),
            process: None,
        });
        let built = self.build(ctx, conn, &site, &cfg, target, &code).await;
        let env = self
            .end(s, built, Some(format!("head {}", target.head_sha)))
            .await?;
        self.give_way(job, ctx).await?;

        // 4. start (a process) or a static folder; 5. health.
        self.set_state(preview, PreviewState::Starting, None)
            .await?;
        let s = self.begin(preview, run, 4, "start").await?;
        let route = match &cfg.preview.start {
            Some(cmd) => {
                let started_proc = self.start(&site, &code, env, cmd).await;
                let detail = started_proc
                    .as_ref()
                    .ok()
                    .map(|(port, _)| format!("port {port}"));
                let (port, proc_) = self.end(s, started_proc, detail).await?;
                preview.port = Some(port as i64);
                preview.pid = Some(proc_.pid() as i64);
                if let Some(st) = started.as_mut() {
                    st.process = Some(proc_);
                }
                self.save(preview).await?;
                let s = self.begin(preview, run, 5, "health").await?;
                let mut c = ctx.clone();
                let healthy = tokio::select! {
                    r = runtime::health_check(port, &cfg.preview.health, self.config.runtime.health_timeout.0) => {
                        r.map_err(|e| JobError::Permanent(e.to_string()))
                    }
                    _ = c.until_cancelled() => Err(JobError::Cancelled),
                };
                let detail = healthy.as_ref().ok().map(|c| format!("status {c}"));
                self.end(s, healthy, detail).await?;
                // The supervisor records the pid once it has spawned: read it now that the
                // process answered.
                if let Some(pid) = started
                    .as_ref()
                    .and_then(|s| s.process.as_ref())
                    .map(|p| p.pid())
                {
                    preview.pid = Some(pid as i64);
                }
                Route::Proxy(port)
            }
            None => {
                let root = match &cfg.preview.root {
                    Some(r) => code.join(r),
                    None => code.clone(),
                };
                let ok = if root.is_dir() {
                    Ok(root)
                } else {
                    Err(JobError::Permanent(format!(
                        "preview.root `{}` is not a folder after the build",
                        cfg.preview.root.as_deref().unwrap_or(".")
                    )))
                };
                let detail = ok.as_ref().ok().map(|r| format!("static {}", r.display()));
                let root = self.end(s, ok, detail).await?;
                Route::Static(root)
            }
        };
        // The last moment to give way to a newer head: after this the route changes.
        self.give_way(job, ctx).await?;

        // 6. route: the new version goes live, then the old one is stopped.
        let s = self.begin(preview, run, 6, "route").await?;
        let routed = self
            .put_route(&preview.site_name, route, !site.protected)
            .await;
        self.end(s, routed, None).await?;
        let new = started.take().and_then(|s| s.process);
        let new_pid = new.as_ref().map(|p| p.pid());
        let old = {
            let mut procs = self.procs.lock().await;
            match new {
                Some(p) => procs.insert(preview.id.clone(), p),
                None => procs.remove(&preview.id),
            }
        };
        match old {
            Some(p) => p.stop().await,
            None => {
                // A process a dead run (or a previous endor) left behind.
                if let Some(pid) = previous_pid.filter(|p| Some(*p) != new_pid) {
                    kill_site_process(pid, &preview.site_name);
                }
            }
        }
        if cfg.preview.start.is_none() {
            preview.port = None;
            preview.pid = None;
        }
        // Older checkouts go.
        if let Ok(entries) = std::fs::read_dir(self.sites.site_dir(&site).join("code")) {
            for e in entries.flatten() {
                if e.path() != code {
                    let _ = self.sites.remove_path(&e.path());
                }
            }
        }
        preview.ready_sha = Some(target.head_sha.clone());
        // Expiry: this activity + the repository's TTL (capped), never earlier than an
        // extension already granted.
        let ttl = cfg
            .preview
            .ttl
            .map(|t| t.0)
            .unwrap_or(self.config.previews.default_ttl.0)
            .min(self.config.previews.max_ttl.0);
        preview.ttl_ms = Some(ttl.as_millis() as i64);
        let expires = crate::now_ms() + ttl.as_millis() as i64;
        preview.expires_at = Some(preview.expires_at.map_or(expires, |e| e.max(expires)));
        self.set_state(preview, PreviewState::Ready, None).await?;
        let secs = (crate::now_ms() - target.received_at).max(0) as f64 / 1000.0;
        self.metrics.launch_seconds.observe(secs);
        tracing::info!(preview = %preview.site_name, head = %target.head_sha, seconds = secs, "preview ready");
        Ok(())
    }

    async fn fetch(
        &self,
        conn: &Connection,
        target: &Target,
    ) -> Result<(RepoConfig, String), JobError> {
        crate::git::validate_sha(&target.head_sha).map_err(git_error)?;
        let url = conn.git_url.as_deref().ok_or_else(|| {
            JobError::Permanent(
                "the repository connection has no git URL (endor repo connect --git-url)".into(),
            )
        })?;
        let pr = conn.forge.pr_ref(target.number);
        // The forge's PR ref carries fork heads; a remote without it (a plain repository)
        // still has the branch the PR comes from.
        let branch = match self
            .git
            .fetch(conn.id.as_str(), url, std::slice::from_ref(&pr))
            .await
        {
            Ok(b) => b,
            Err(GitError::Failed { .. }) => self
                .git
                .fetch(conn.id.as_str(), url, &[])
                .await
                .map_err(git_error)?,
            Err(e) => return Err(git_error(e)),
        };
        self.git
            .resolve(conn.id.as_str(), &target.head_sha)
            .await
            .map_err(|_| {
                JobError::Transient(format!(
                    "head {} is not in the repository (yet)",
                    target.head_sha
                ))
            })?;
        let default_sha = self
            .git
            .resolve(conn.id.as_str(), &branch)
            .await
            .map_err(git_error)?;
        let cfg = match self
            .git
            .read_file(conn.id.as_str(), &default_sha, ".endor.toml")
            .await
            .map_err(git_error)?
        {
            None => RepoConfig::default(),
            Some(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| {
                    JobError::Permanent(".endor.toml: the file is not UTF-8".into())
                })?;
                RepoConfig::parse(&text).map_err(|e| JobError::Permanent(e.to_string()))?
            }
        };
        Ok((cfg, default_sha))
    }

    /// The preview's site: the one it has (an update keeps its data) or a new one, cloned
    /// from the parent or empty. Returns whether the data was kept.
    async fn ensure_site(
        &self,
        conn: &Connection,
        preview: &Preview,
        cfg: &RepoConfig,
    ) -> Result<(Site, bool), JobError> {
        let name = &preview.site_name;
        if let Some(site) = self.store.site_by_name(name).await.map_err(transient)? {
            if preview.site_id.as_ref() != Some(&site.id) {
                return Err(JobError::Permanent(format!(
                    "a site named {name} already exists and does not belong to this preview"
                )));
            }
            match site.state {
                SiteState::Active => return Ok((site, true)),
                // A crash in the middle of making it: start again from nothing.
                _ => self.sites.discard_id(&site.id).await.map_err(site_error)?,
            }
        }
        let site = match &cfg.preview.parent {
            Some(parent) => {
                let p = self
                    .store
                    .site_by_name(parent)
                    .await
                    .map_err(transient)?
                    .ok_or_else(|| {
                        JobError::Permanent(format!("preview.parent: no site named {parent}"))
                    })?;
                if p.workspace_id != conn.workspace_id {
                    return Err(JobError::Permanent(format!(
                        "preview.parent: site {parent} is not in this repository's workspace"
                    )));
                }
                self.sites
                    .clone_site(parent, name, false, crate::sites::Guard::default())
                    .await
                    .map_err(site_error)?;
                self.store
                    .site_by_name(name)
                    .await
                    .map_err(transient)?
                    .ok_or_else(|| JobError::Transient(format!("site {name} vanished")))?
            }
            None => self
                .sites
                .create_empty(name, &conn.workspace_id)
                .await
                .map_err(site_error)?,
        };
        self.hand_over(&site)?;
        Ok((site, false))
    }

    /// The site's own processes write its data: its data folders go to `runtime.user`.
    pub(super) fn hand_over(&self, site: &Site) -> Result<(), JobError> {
        let sandbox = Sandbox::new(self.sites.site_dir(site), vec![], &self.config.runtime.user)
            .map_err(|e| JobError::Permanent(e.to_string()))?;
        for dir in self.sites.writable_dirs(site) {
            Sandbox {
                dir,
                ..sandbox.clone()
            }
            .hand_over()
            .map_err(|e| JobError::Transient(format!("handing over the site's data: {e}")))?;
        }
        Ok(())
    }

    async fn site_env(&self, site: &Site) -> Result<Vec<(String, String)>, JobError> {
        let dbs = self.sites.database_urls(site).await.map_err(site_error)?;
        let pick = ["postgres", "mariadb", "sqlite"].iter().find_map(|k| {
            dbs.iter()
                .find(|(kind, _)| kind == k)
                .map(|(_, u)| u.clone())
        });
        let mut env = vec![
            ("ENDOR_SITE".to_string(), site.name.clone()),
            (
                "ENDOR_FILES_DIR".to_string(),
                self.sites.files_dir(site).display().to_string(),
            ),
        ];
        if let Some(url) = pick {
            env.push(("DATABASE_URL".into(), url));
        }
        Ok(env)
    }

    /// Check out the head into `code` and run the build steps there; returns the site's
    /// environment for the start command.
    async fn build(
        &self,
        ctx: &JobContext,
        conn: &Connection,
        site: &Site,
        cfg: &RepoConfig,
        target: &Target,
        code: &Path,
    ) -> Result<Vec<(String, String)>, JobError> {
        if code.exists() {
            // A run of this job that died before finishing: start its checkout again.
            self.sites.remove_path(code).map_err(site_error)?;
        }
        if let Some(parent) = code.parent() {
            std::fs::create_dir_all(parent).map_err(transient)?;
        }
        self.git
            .checkout(conn.id.as_str(), &target.head_sha, code)
            .await
            .map_err(git_error)?;
        let env = self.site_env(site).await?;
        let sandbox = Sandbox::new(code, env.clone(), &self.config.runtime.user)
            .map_err(|e| JobError::Permanent(e.to_string()))?;
        sandbox
            .hand_over()
            .map_err(|e| JobError::Transient(e.to_string()))?;
        let report = runtime::build_cancellable(
            &sandbox,
            &cfg.preview.build,
            self.config.runtime.build_timeout.0,
            self.config.runtime.output_cap,
            Some(ctx.signal()),
        )
        .await
        .map_err(|e| JobError::Transient(format!("build could not run: {e}")))?;
        let log_path = crate::logs::path(&self.logs, &site.id, crate::logs::Service::Build);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(transient)?;
        }
        let mut log =
            format!("[endor] build of {} at {}\n", site.name, target.head_sha).into_bytes();
        log.extend_from_slice(&report.log);
        if report.truncated {
            log.extend_from_slice(b"\n[endor] output cut at runtime.output_cap\n");
        }
        std::fs::write(&log_path, &log).map_err(transient)?;
        if report.cancelled {
            return Err(JobError::Cancelled);
        }
        if !report.ok {
            let last = report.steps.last();
            let why = match last {
                Some(s) if s.timed_out => format!(
                    "build step `{}` timed out after {}",
                    s.command, self.config.runtime.build_timeout
                ),
                Some(s) => format!(
                    "build step `{}` failed with exit code {}",
                    s.command,
                    s.exit_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "none (killed)".into())
                ),
                None => "build failed".into(),
            };
            return Err(JobError::Permanent(format!(
                "{why} (endor site logs {} --service build)",
                site.name
            )));
        }
        Ok(env)
    }

    async fn start(
        &self,
        site: &Site,
        code: &Path,
        mut env: Vec<(String, String)>,
        cmd: &str,
    ) -> Result<(u16, Supervised), JobError> {
        let port = free_port().map_err(transient)?;
        env.push(("PORT".into(), port.to_string()));
        let sandbox = Sandbox::new(code, env, &self.config.runtime.user)
            .map_err(|e| JobError::Permanent(e.to_string()))?;
        let log = crate::logs::path(&self.logs, &site.id, crate::logs::Service::Web);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(transient)?;
        }
        Ok((port, Supervised::start(sandbox, cmd.to_string(), log)))
    }

    /// Stop the processes, drop the data, answer 410: idempotent, every step safe to repeat.
    pub(super) async fn destroy(&self, preview: &mut Preview, why: &str) -> Result<(), JobError> {
        if preview.state == PreviewState::Destroyed {
            return Ok(());
        }
        self.teardown(
            preview,
            PreviewState::Destroyed,
            &format!("pull request {why}"),
        )
        .await
    }

    /// The reaper's warning: the status comment says the preview expires soon (once per
    /// expiry time).
    pub async fn warn_expiry(&self, p: &mut Preview) -> Result<(), JobError> {
        p.warned_expiry = p.expires_at;
        let (st, reason) = (p.state, p.reason.clone());
        self.set_state(p, st, reason).await
    }

    /// An `expire` job (a reaper's teardown whose reaper died, taken over by a worker):
    /// finish an unfinished teardown, or expire a preview that is still past its expiry.
    async fn handle_expire(&self, job: &Job) -> Result<(), JobError> {
        let (conn, number) = Self::key_parts(job)?;
        let Some(mut p) = self
            .store
            .preview(&conn.into(), number)
            .await
            .map_err(transient)?
        else {
            return Ok(());
        };
        match state::expiry_action(&p, crate::now_ms()) {
            Some(final_state) => {
                let why = state::why_torn_down(&p, final_state);
                self.teardown(&mut p, final_state, &why).await
            }
            None => Ok(()),
        }
    }

    /// Tear a preview down for good and end in `final_state` (`destroyed` or `expired`):
    /// a persisted sequence of idempotent steps (`teardown_step` names the last one done), so a
    /// teardown interrupted at any point is finished by running it again.
    pub async fn teardown(
        &self,
        preview: &mut Preview,
        final_state: PreviewState,
        why: &str,
    ) -> Result<(), JobError> {
        let step = |p: &mut Preview, name: &str| {
            p.teardown_step = Some(state::teardown_step(final_state, name));
        };
        // A protected site is never deleted by a PR or the reaper (only by `endor site delete
        // --bypass-protection`).
        if let Some(id) = &preview.site_id
            && let Some(site) = self.store.site(id).await.map_err(transient)?
            && site.protected
            && site.state != SiteState::Deleted
        {
            return Err(JobError::Permanent(format!(
                "site {} is protected: it is not torn down (endor site protect {} off first)",
                site.name, site.name
            )));
        }
        let had_route = self
            .store
            .route(&preview.site_name)
            .await
            .map_err(transient)?
            .is_some();
        step(preview, "begin");
        self.set_state(preview, PreviewState::Destroying, Some(why.to_string()))
            .await?;
        crash_point("begin");
        let proc_ = self.procs.lock().await.remove(&preview.id);
        match proc_ {
            Some(p) => p.stop().await,
            None => {
                if let Some(pid) = preview.pid {
                    kill_site_process(pid as u32, &preview.site_name);
                }
            }
        }
        preview.pid = None;
        preview.port = None;
        step(preview, "stop");
        self.save(preview).await?;
        crash_point("stop");
        if had_route || preview.site_id.is_some() {
            self.put_route(&preview.site_name, Route::Gone, true)
                .await?;
        }
        step(preview, "route");
        self.save(preview).await?;
        crash_point("route");
        if let Some(id) = preview.site_id.clone() {
            self.sites.discard_id(&id).await.map_err(site_error)?;
        }
        step(preview, "data");
        self.save(preview).await?;
        crash_point("data");
        if let Some(id) = preview.site_id.clone() {
            let logs = self.logs.join(id.as_str());
            if logs.exists() {
                std::fs::remove_dir_all(&logs).map_err(transient)?;
            }
        }
        step(preview, "logs");
        self.save(preview).await?;
        crash_point("logs");
        preview.ready_sha = None;
        preview.teardown_step = None;
        preview.warned_expiry = None;
        self.set_state(preview, final_state, Some(why.to_string()))
            .await?;
        tracing::info!(preview = %preview.site_name, state = %final_state, "preview torn down");
        Ok(())
    }
}

/// For the crash-safety tests: `ENDOR_CRASH_AT=teardown:{step}` aborts the process right after
/// that teardown step was stored, as a SIGKILL would.
fn crash_point(step: &str) {
    if let Ok(at) = std::env::var("ENDOR_CRASH_AT")
        && at.strip_prefix("teardown:") == Some(step)
    {
        eprintln!("ENDOR_CRASH_AT: aborting after teardown step {step}");
        std::process::abort();
    }
}

/// What a launch started, undone when it fails.
struct Started {
    code_dir: Option<PathBuf>,
    process: Option<Supervised>,
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

/// A free port on 127.0.0.1 for a site process.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
fn kill_site_process(pid: u32, site: &str) {
    if pid > 1 && process_of_site(pid, site) {
        // SAFETY: kill(2) on a process group whose leader we verified is this site's.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        tracing::info!(pid, site, "stopped a site process left by an earlier run");
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
