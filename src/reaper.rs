//! The reaper: one pass destroys every preview past its `expires_at` (processes, databases,
//! files, route → 410, deployment inactive, status comment "expired"), finishes teardowns a
//! crash interrupted, warns `reaper.warn_before` ahead of expiry (the status comment is edited,
//! no new comment), and sweeps orphans: site directories and their database servers, site
//! processes and routes that no live site owns, after `reaper.grace`.
//!
//! One reaper at a time: a pass holds the store's `reaper` lease (renewed as it goes), so
//! replicas sharing a PostgreSQL store never run passes together; each teardown also runs as
//! the PR's `expire` job (the job queue's one-running-job-per-key rule keeps it apart from a
//! launch of the same PR, and a worker takes it over if this reaper dies).
//! `endor serve` runs passes on `reaper.schedule`; `endor reap` runs one now.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tracing::Instrument;

use crate::config::Config;
use crate::jobs::{JobEnd, JobKind, NewJob};
use crate::metrics::{KindLabels, Metrics, OutcomeLabels};
use crate::previews::Lifecycle;
use crate::previews::state::{PreviewState, expiry_action, why_torn_down};
use crate::sites::Sites;
use crate::store::Store;

const LEASE: &str = "reaper";

#[derive(Debug, Default, Clone, Serialize)]
pub struct PassReport {
    pub dry_run: bool,
    /// Why nothing was done (another reaper holds the lease).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Previews expired in this pass (site names).
    pub expired: Vec<String>,
    /// Unfinished teardowns finished.
    pub resumed: Vec<String>,
    /// Due, but a job of the PR was running: left for the next pass.
    pub busy: Vec<String>,
    /// Status comments that now warn of the expiry.
    pub warned: Vec<String>,
    /// Teardowns that failed (site name, error); retried next pass.
    pub failed: Vec<(String, String)>,
    pub swept: Swept,
    pub duration_ms: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Swept {
    /// Site directories (with their database servers) and trash.
    pub dirs: usize,
    /// Site processes (and their process groups).
    pub processes: usize,
    pub routes: usize,
    /// Log segments past `logs.retention`.
    pub logs: crate::logs::Pruned,
}

pub struct Reaper {
    store: Arc<dyn Store>,
    lifecycle: Arc<Lifecycle>,
    sites: Sites,
    config: Config,
    metrics: Arc<Metrics>,
    owner: String,
}

impl Reaper {
    pub fn new(
        store: Arc<dyn Store>,
        lifecycle: Arc<Lifecycle>,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sites: Sites::new(store.clone(), config),
            store,
            lifecycle,
            config: config.clone(),
            metrics,
            owner: format!(
                "reaper-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
        }
    }

    /// A reaper outside `endor serve` (`endor reap`, tests, benchmarks): its own lifecycle,
    /// metrics and forge clients over `store`. Write-backs it stores are sent by whichever
    /// `endor serve` shares the store.
    pub fn standalone(store: Arc<dyn Store>, config: &Config) -> Self {
        let metrics = Arc::new(Metrics::default());
        let lifecycle = Lifecycle::new(
            store.clone(),
            config,
            metrics.clone(),
            Arc::new(crate::writeback::ForgeClients::new(config).with_store(store.clone())),
            Arc::new(tokio::sync::Notify::new()),
        );
        Self::new(store, lifecycle, config, metrics)
    }

    fn lease_ms(&self) -> i64 {
        self.config.reaper.lease.0.as_millis() as i64
    }

    /// One pass. A dry run changes nothing and reports what a pass would do.
    pub async fn pass(&self, dry_run: bool) -> anyhow::Result<PassReport> {
        let started = Instant::now();
        let mut report = PassReport {
            dry_run,
            ..Default::default()
        };
        let now = crate::now_ms();
        if !dry_run
            && !self
                .store
                .try_lease(LEASE, &self.owner, now, now + self.lease_ms())
                .await?
        {
            report.skipped = Some("another reaper is running a pass".into());
            self.metrics
                .reaper_runs
                .get_or_create(&OutcomeLabels { outcome: "skipped" })
                .inc();
            tracing::info!("reaper pass skipped: another reaper holds the lease");
            return Ok(report);
        }
        let result = self.run(dry_run, &mut report).await;
        if !dry_run {
            let _ = self.store.release_lease(LEASE, &self.owner).await;
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        let outcome = if result.is_ok() { "done" } else { "failed" };
        self.metrics
            .reaper_runs
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        result?;
        tracing::info!(
            dry_run,
            expired = report.expired.len(),
            resumed = report.resumed.len(),
            busy = report.busy.len(),
            warned = report.warned.len(),
            failed = report.failed.len(),
            swept_dirs = report.swept.dirs,
            swept_processes = report.swept.processes,
            swept_routes = report.swept.routes,
            duration_ms = report.duration_ms,
            "reaper pass"
        );
        Ok(report)
    }

    async fn run(&self, dry_run: bool, report: &mut PassReport) -> anyhow::Result<()> {
        let now = crate::now_ms();
        let warn = self.config.reaper.warn_before.0.as_millis() as i64;
        for p in self.store.list_previews().await? {
            let action = expiry_action(&p, now);
            let due_warning = warn > 0
                && p.state == PreviewState::Ready
                && p.expires_at
                    .is_some_and(|e| e - warn <= now && p.warned_expiry != Some(e));
            if action.is_none() && !due_warning {
                continue;
            }
            // Every line about this preview names it: its PR, repository and site.
            let repo = self
                .store
                .connection(&p.connection_id)
                .await?
                .map(|c| c.repo)
                .unwrap_or_default();
            let span = tracing::info_span!(
                "preview",
                pr = p.number,
                repo = %repo,
                site = %p.site_name,
                connection = %p.connection_id,
            );
            self.one(p, action, due_warning, dry_run, report)
                .instrument(span)
                .await?;
        }
        report.swept = self.sweep(dry_run).await?;
        Ok(())
    }

    /// The pass's work on one preview that is due: expire it (or finish its teardown), or
    /// warn ahead of its expiry.
    async fn one(
        &self,
        p: crate::store::Preview,
        action: Option<PreviewState>,
        due_warning: bool,
        dry_run: bool,
        report: &mut PassReport,
    ) -> anyhow::Result<()> {
        // A protected site is never expired (nor warned about).
        if let Some(id) = &p.site_id
            && self
                .store
                .site(id)
                .await?
                .is_some_and(|s| s.protected && s.state != crate::store::SiteState::Deleted)
        {
            return Ok(());
        }
        if let Some(final_state) = action {
            let resumed = p.state == PreviewState::Destroying;
            if dry_run {
                if resumed {
                    report.resumed.push(p.site_name.clone());
                } else {
                    report.expired.push(p.site_name.clone());
                }
                return Ok(());
            }
            self.renew().await?;
            match self
                .tear_down(&p.connection_id, p.number, final_state)
                .await
            {
                Ok(true) if resumed => {
                    tracing::info!(state = %final_state, "unfinished teardown finished");
                    report.resumed.push(p.site_name.clone())
                }
                Ok(true) => {
                    tracing::info!(state = %final_state, "expired preview torn down");
                    report.expired.push(p.site_name.clone())
                }
                Ok(false) => {
                    tracing::info!("a job of the PR is running; the next pass expires it");
                    report.busy.push(p.site_name.clone())
                }
                Err(e) => {
                    tracing::warn!(preview = %p.site_name, error = %e, "teardown failed; next pass retries");
                    report.failed.push((p.site_name.clone(), e.to_string()));
                }
            }
            return Ok(());
        }
        if due_warning {
            tracing::info!(expires_at = p.expires_at, "warning of the coming expiry");
            report.warned.push(p.site_name.clone());
            if !dry_run {
                let mut p = p;
                if let Err(e) = self.lifecycle.warn_expiry(&mut p).await {
                    tracing::warn!(preview = %p.site_name, error = %e, "expiry warning not stored");
                }
            }
        }
        Ok(())
    }

    async fn renew(&self) -> anyhow::Result<()> {
        let now = crate::now_ms();
        if !self
            .store
            .try_lease(LEASE, &self.owner, now, now + self.lease_ms())
            .await?
        {
            anyhow::bail!("the reaper lease was lost (a pass took longer than reaper.lease)");
        }
        Ok(())
    }

    /// Tear down one preview as its PR's `expire` job; false when a job of the PR is running.
    async fn tear_down(
        &self,
        connection_id: &crate::ids::ConnectionId,
        number: i64,
        final_state: PreviewState,
    ) -> anyhow::Result<bool> {
        let now = crate::now_ms();
        let job = NewJob {
            kind: JobKind::Expire,
            job_key: crate::jobs::pr_key(connection_id, number),
            head_sha: None,
            payload: String::new(),
            max_attempts: self.config.jobs.max_attempts,
            supersede: false,
        };
        let Some(job) = self
            .store
            .start_job_now(&job, &self.owner, now, now + self.lease_ms())
            .await?
        else {
            return Ok(false);
        };
        // Read it again under the job: the PR may have moved on since the list was read.
        let result = match self.store.preview(connection_id, number).await? {
            Some(mut p) => match expiry_action(&p, crate::now_ms()) {
                Some(s) if s == final_state || p.state == PreviewState::Destroying => {
                    let why = why_torn_down(&p, s);
                    self.lifecycle
                        .teardown(&mut p, s, &why)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))
                }
                _ => Ok(()),
            },
            None => Ok(()),
        };
        let end = match &result {
            Ok(()) => JobEnd::Done,
            Err(e) => JobEnd::Failed {
                error: e.to_string(),
            },
        };
        self.store
            .finish_job(&job.id, &self.owner, &end, crate::now_ms())
            .await?;
        result?;
        self.metrics.sites_reaped.inc();
        Ok(true)
    }

    /// Remove what no live site owns, older than `reaper.grace`.
    async fn sweep(&self, dry_run: bool) -> anyhow::Result<Swept> {
        let grace = self.config.reaper.grace.0;
        let dirs = self.sites.sweep(grace, dry_run).await?.removed.len();
        let live: std::collections::HashMap<crate::ids::SiteId, String> = self
            .store
            .list_sites()
            .await?
            .into_iter()
            .filter(|s| s.state != crate::store::SiteState::Deleted)
            .map(|s| (s.id.clone(), s.name.clone()))
            .collect();
        let roots = self.sites.roots();
        let mut processes = 0;
        for (pid, site_id) in crate::procfs::site_processes(&roots) {
            if live.contains_key(&crate::ids::SiteId::from(site_id.as_str()))
                || crate::procfs::process_age(pid).is_none_or(|age| age < grace)
            {
                continue;
            }
            processes += 1;
            if !dry_run {
                kill_group(pid);
                tracing::info!(pid, site_id = %site_id, "orphaned site process stopped");
            }
        }
        let names: std::collections::HashSet<&String> = live.values().collect();
        let cutoff = crate::now_ms() - grace.as_millis() as i64;
        let mut routes = 0;
        for r in self.store.list_routes().await? {
            if r.kind != "gone" && !names.contains(&r.site_name) && r.updated_at < cutoff {
                routes += 1;
                if !dry_run {
                    self.store.delete_route(&r.site_name).await?;
                    tracing::info!(site = %r.site_name, "orphaned route removed");
                }
            }
        }
        // Logs past retention (a deleted site's, all of them once old enough).
        let ids: std::collections::HashSet<crate::ids::SiteId> = live.keys().cloned().collect();
        let logs_root = std::path::absolute(&self.config.storage.logs)?;
        let logs = if dry_run {
            Default::default()
        } else {
            let retention = self.config.logs.retention.0;
            // Sites whose workspace keeps logs for a time of its own.
            let own = crate::service::log_overrides(self.store.as_ref(), &self.config)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .into_iter()
                .map(|(site, l)| (site, l.retention))
                .collect();
            tokio::task::spawn_blocking(move || {
                crate::logs::prune(&logs_root, retention, &own, &ids)
            })
            .await??
        };
        let swept = Swept {
            dirs,
            processes,
            routes,
            logs,
        };
        if !dry_run {
            for (kind, n) in [("dirs", dirs), ("processes", processes), ("routes", routes)] {
                self.metrics
                    .orphans_swept
                    .get_or_create(&KindLabels { kind })
                    .inc_by(n as u64);
            }
        }
        Ok(swept)
    }

    /// Run passes on `reaper.schedule` until `stop` says so.
    pub async fn run_scheduled(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        let schedule = match self.config.reaper.parsed_schedule() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "reaper.schedule");
                return;
            }
        };
        crate::config::on_schedule(schedule, stop, |_| async {
            if let Err(e) = self.pass(false).await {
                tracing::warn!(error = %e, "reaper pass failed");
            }
        })
        .await
    }
}

/// SIGKILL the process's group when it leads one (site processes do), else the process.
fn kill_group(pid: u32) {
    // SAFETY: getpgid/kill on a pid we just read from /proc; a vanished pid only fails.
    unsafe {
        if libc::getpgid(pid as i32) == pid as i32 {
            libc::kill(-(pid as i32), libc::SIGKILL);
        } else {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}
