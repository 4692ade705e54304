//! Launching a preview: fetch the head and `.endor.toml`, clone (or keep) the site, build in
//! a fresh checkout, start and health-check, then switch the route; a failure undoes what the
//! run started and leaves the last good version serving.

use std::path::{Path, PathBuf};

use crate::gateway::Route;
use crate::git::GitError;
use crate::jobs::Job;
use crate::jobs::{JobContext, JobError};
use crate::previews::config::RepoConfig;
use crate::runtime::{self, SiteBox, Supervised};
use crate::store::{Connection, Preview, PreviewStep, Site, SiteState};

use super::state::PreviewState;

use super::lifecycle::{Lifecycle, Target, git_error, kill_site_process, site_error, transient};

impl Lifecycle {
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
                    let name = format!("{}#{}", conn.repo, preview.number);
                    self.put_route(&preview.site_name, Route::Failed(Some(name)), true)
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

        // 1. fetch: the head commit and the default branch.
        let s = self.begin(preview, run, 1, "fetch").await?;
        let fetched = self.fetch(conn, target).await;
        let detail = fetched
            .as_ref()
            .ok()
            .map(|(branch, sha)| format!("head {}, {branch} at {sha}", target.head_sha));
        let (branch, default_sha) = self.end(s, fetched, detail).await?;
        // 2. config: `.endor.toml` of the default branch (never the PR's own).
        let s = self.begin(preview, run, 2, "config").await?;
        let read = self.read_config(conn, &branch, &default_sha).await;
        let detail = read.as_ref().ok().map(|(_, d)| d.clone());
        let (cfg, _) = self.end(s, read, detail).await?;
        self.give_way(job, ctx).await?;

        // 3. clone: the site and its data (kept when the site exists: an update).
        self.set_state(preview, PreviewState::Cloning, None).await?;
        let s = self.begin(preview, run, 3, "clone").await?;
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

        // 4. build, in a fresh checkout of the head.
        self.set_state(preview, PreviewState::Building, None)
            .await?;
        let s = self.begin(preview, run, 4, "build").await?;
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

        // 5. start (a process) or a static folder; 6. health.
        self.set_state(preview, PreviewState::Starting, None)
            .await?;
        let s = self.begin(preview, run, 5, "start").await?;
        let route = match &cfg.preview.start {
            Some(cmd) => {
                let started_proc = self.start(&site, &cfg, &code, env, cmd, preview).await;
                let detail = started_proc
                    .as_ref()
                    .ok()
                    .map(|(port, _)| format!("port {port}"));
                let (port, proc_) = self.end(s, started_proc, detail).await?;
                preview.port = Some(port as i64);
                preview.pid = Some(proc_.pid() as i64);
                preview.host = Some(self.host_address());
                if let Some(st) = started.as_mut() {
                    st.process = Some(proc_);
                }
                self.save(preview).await?;
                let s = self.begin(preview, run, 6, "health").await?;
                let mut c = ctx.clone();
                let healthy = tokio::select! {
                    r = runtime::health_check_at(std::net::SocketAddr::new(self.config.runtime.advertise, port), &cfg.preview.health, self.config.runtime.health_timeout.0) => {
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
                Route::Proxy(std::net::SocketAddr::new(
                    self.config.runtime.advertise,
                    port,
                ))
            }
            None => {
                let root = match &cfg.preview.root {
                    Some(r) => code.join(r),
                    None => code.clone(),
                };
                let shown = cfg.preview.root.as_deref().unwrap_or(".").to_string();
                let ok = if root.is_dir() {
                    // The gateway serves it as endor: no link may lead out of it.
                    let (checkout, folder) = (code.clone(), root.clone());
                    tokio::task::spawn_blocking(move || {
                        super::assets::prepare(&checkout, &folder, &shown)
                    })
                    .await
                    .map_err(|e| JobError::Transient(e.to_string()))?
                    .map(|done| (root, done))
                    .map_err(JobError::Permanent)
                } else {
                    Err(JobError::Permanent(format!(
                        "preview.root `{shown}` is not a folder after the build"
                    )))
                };
                let detail = ok
                    .as_ref()
                    .ok()
                    .map(|(r, done)| format!("static {} ({done})", r.display()));
                let (root, _) = self.end(s, ok, detail).await?;
                Route::Static(root)
            }
        };
        // The last moment to give way to a newer head: after this the route changes.
        self.give_way(job, ctx).await?;

        // 7. route: the new version goes live, then the old one is stopped.
        let s = self.begin(preview, run, 7, "route").await?;
        let routed = self
            .put_route(&preview.site_name, route, !site.protected)
            .await;
        self.end(s, routed, None).await?;
        let new = started.take().and_then(|s| s.process);
        let new_pid = new.as_ref().map(|p| p.pid());
        if new.is_some() {
            // The store says where it runs before this process keeps it: another host's
            // reconcile then stops its old copy, and this host's never reads the old host
            // next to the new process (see `Lifecycle::reconcile`).
            self.store.put_preview(preview).await.map_err(transient)?;
        }
        let old = {
            let mut procs = self.procs.lock().await;
            match new {
                Some(p) => procs.insert(preview.id.clone(), p),
                None => procs.remove(&preview.id),
            }
        };
        if old.is_none() {
            // A process a dead run (or a previous endor) left behind.
            if let Some(pid) = previous_pid.filter(|p| Some(*p) != new_pid) {
                kill_site_process(pid, &preview.site_name);
            }
        }
        if cfg.preview.start.is_none() {
            preview.port = None;
            preview.pid = None;
            preview.host = None;
        }
        // The old version (its process, or the folder a static site is served from) and older
        // checkouts go once no gateway can route to them any more.
        let older: Vec<PathBuf> = std::fs::read_dir(self.sites.site_dir(&site).join("code"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| *p != code)
                    .collect()
            })
            .unwrap_or_default();
        self.retire(old, older);
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

    /// Fetch the head; returns the default branch and its commit.
    async fn fetch(
        &self,
        conn: &Connection,
        target: &Target,
    ) -> Result<(String, String), JobError> {
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
        Ok((branch, default_sha))
    }

    /// The repository's `.endor.toml` on the default branch, and what the step says of it.
    /// Without one the preview serves the repository root as static files: said in the step,
    /// and as a warning.
    async fn read_config(
        &self,
        conn: &Connection,
        branch: &str,
        sha: &str,
    ) -> Result<(RepoConfig, String), JobError> {
        let short = crate::git::short_sha(sha);
        match self
            .git
            .read_file(conn.id.as_str(), sha, ".endor.toml")
            .await
            .map_err(git_error)?
        {
            None => {
                tracing::warn!(
                    repo = %conn.repo, branch, commit = short,
                    "no .endor.toml on the default branch: serving the repository root as static files"
                );
                Ok((
                    RepoConfig::default(),
                    format!(
                        "no .endor.toml on {branch} ({short}): serving the repository root as static files"
                    ),
                ))
            }
            Some(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| {
                    JobError::Permanent(".endor.toml: the file is not UTF-8".into())
                })?;
                let cfg =
                    RepoConfig::parse(&text).map_err(|e| JobError::Permanent(e.to_string()))?;
                Ok((cfg, format!(".endor.toml of {branch} ({short})")))
            }
        }
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
                if p.region != conn.region {
                    return Err(JobError::Permanent(format!(
                        "preview.parent: site {parent} is in region {}, this repository's \
                         previews in region {}: a clone stays in its parent's region",
                        p.region, conn.region
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
                .create_empty(name, &conn.workspace_id, &conn.region)
                .await
                .map_err(site_error)?,
        };
        self.hand_over(&site).await?;
        Ok((site, false))
    }

    /// The site as the host runs it: its own uid (assigned on first use, from
    /// `runtime.uid_range`), its writable folders, its limits.
    pub(super) async fn site_box(
        &self,
        site: &Site,
        cfg: Option<&RepoConfig>,
    ) -> Result<SiteBox, JobError> {
        let uid = if self.host.per_site_uids() {
            let r = self.config.runtime.uid_range;
            Some(
                self.store
                    .assign_site_uid(&site.id, r.first, r.last)
                    .await
                    .map_err(|e| match e {
                        crate::store::StoreError::Exhausted(m) => JobError::Permanent(m),
                        e => transient(e),
                    })?,
            )
        } else {
            None
        };
        let limits = cfg
            .map(|c| c.preview.limits.clone())
            .unwrap_or_default()
            .within(&self.config.runtime.limits);
        let sockets = self
            .sites
            .database_sockets(site)
            .await
            .map_err(site_error)?;
        Ok(SiteBox {
            key: site.id.to_string(),
            uid,
            writable: vec![self.sites.live_dir(site)],
            sockets,
            quota_dirs: self.sites.writable_dirs(site),
            limits,
            image: cfg.and_then(|c| c.preview.image.clone()),
        })
    }

    /// The site's own processes write its data: its data folders go to its uid (or
    /// `runtime.user` without isolation), mode 0700, and its directory is not listable.
    pub(super) async fn hand_over(&self, site: &Site) -> Result<SiteBox, JobError> {
        let sbox = self.site_box(site, None).await?;
        let dir = self.sites.site_dir(site);
        let owner = self
            .host
            .owner(&sbox)
            .map_err(|e| JobError::Permanent(e.to_string()))?;
        let fail = |e: &dyn std::fmt::Display| {
            JobError::Transient(format!("handing over the site's data: {e}"))
        };
        set_mode(&dir, 0o711).map_err(|e| fail(&e))?;
        for d in &self.sites.writable_dirs(site) {
            runtime::hand_over(d, owner).map_err(|e| fail(&e))?;
            set_mode(d, 0o700).map_err(|e| fail(&e))?;
        }
        Ok(sbox)
    }

    pub(super) async fn site_env(&self, site: &Site) -> Result<Vec<(String, String)>, JobError> {
        let dbs = self.sites.database_urls(site).await.map_err(site_error)?;
        let pick = ["postgres", "mariadb", "sqlite"].iter().find_map(|k| {
            dbs.iter()
                .find(|(kind, _)| kind == k)
                .map(|(_, u)| u.clone())
        });
        let mut env = vec![
            ("ENDOR_SITE".to_string(), site.name.clone()),
            // Output reaches the site's log as it is printed (`endor site logs -f`), not when
            // a buffer fills or the process exits: Python buffers stdout to a file otherwise.
            ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
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
        let sbox = self.site_box(site, Some(cfg)).await?;
        let sandbox = self
            .host
            .sandbox(&sbox, code, env.clone(), None)
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
        self.write_build_log(site, target, &report)
            .map_err(transient)?;
        if report.cancelled {
            return Err(JobError::Cancelled);
        }
        if !report.ok {
            let last = report.steps.last();
            let why = match last {
                Some(s) if s.killed.is_some() => format!(
                    "build step `{}` {}",
                    s.command,
                    s.killed.as_deref().unwrap_or_default()
                ),
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

    /// The build's output into the site's `build` log, a line each, after a line naming it.
    fn write_build_log(
        &self,
        site: &Site,
        target: &Target,
        report: &runtime::BuildReport,
    ) -> std::io::Result<()> {
        use crate::logs::{LineSplitter, Service};
        let max = self.logs.limits().max_line_bytes;
        let mut lines = vec![format!(
            "[endor] build of {} at {}",
            site.name, target.head_sha
        )];
        let mut splitter = LineSplitter::default();
        splitter.push(&report.log, max, &mut lines);
        lines.extend(splitter.flush(max));
        if report.truncated {
            lines.push("[endor] output cut at runtime.output_cap".into());
        }
        self.logs
            .append_text(&site.id, Service::Build, None, &mut lines)
    }

    async fn start(
        &self,
        site: &Site,
        cfg: &RepoConfig,
        code: &Path,
        mut env: Vec<(String, String)>,
        cmd: &str,
        preview: &Preview,
    ) -> Result<(u16, Supervised), JobError> {
        let port = free_port().map_err(transient)?;
        env.push(("PORT".into(), port.to_string()));
        let sbox = self.site_box(site, Some(cfg)).await?;
        let sandbox = self
            .host
            .sandbox(&sbox, code, env, Some(port))
            .map_err(|e| JobError::Permanent(e.to_string()))?;
        let log = runtime::WebLog::new(self.logs.clone(), site.id.clone());
        // The supervisor asks the store before each restart.
        let wanted = super::lifecycle::still_wanted(
            self.store.clone(),
            preview.connection_id.clone(),
            preview.number,
            site.id.clone(),
        );
        Ok((
            port,
            Supervised::start(
                sandbox,
                cmd.to_string(),
                log,
                site.name.clone(),
                Some(wanted),
            ),
        ))
    }
}

/// What a launch started, undone when it fails.
struct Started {
    code_dir: Option<PathBuf>,
    process: Option<Supervised>,
}

/// A free port on 127.0.0.1 for a site process.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
