//! Backups of sites (SPEC §13): a frozen generation of the site (files and every database,
//! consistent while the site serves) written to a restic repository by restic itself, never a
//! home-made format. The repository endor pushes to should refuse deletes and overwrites
//! (`rclone serve restic --append-only`): a backup, once written, cannot be removed with
//! endor's credential. The repository's passphrase is made on first use and kept in the store,
//! sealed with the master key. A restore makes a backup's generation the newest of a site and
//! rebuilds the site's data from it, as a sync does.

mod manifest;
mod restic;

use std::sync::Arc;

use serde::Serialize;

use crate::config::{Config, Retention};
use crate::sites::{Guard, OperationReport, SiteError, Sites};
use crate::store::{Backend, Backup, RetentionRow, RetentionScope, Store, StoreError};

pub use manifest::Manifest;
pub use restic::Restic;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "backups are off: set backups.repository (a restic repository, e.g. rest:http://127.0.0.1:8093/)"
    )]
    NotConfigured,
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// restic (or moving what it restored) failed; its own words.
    #[error("{0}")]
    Tool(String),
    #[error(transparent)]
    Site(#[from] SiteError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, BackupError>;

/// A backup tag: 1–64 letters, digits, `-`, `_` or `.`.
pub fn validate_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(BackupError::Invalid(format!(
            "invalid tag `{}`: use 1-64 letters, digits, `-`, `_` or `.`",
            tag.escape_debug()
        )))
    }
}

/// What a restore did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Restored {
    pub backup: String,
    pub site: String,
    /// Where the data came from: `local` (the copy kept on this host) or `repository`.
    pub from: &'static str,
    /// The site was made by the restore (`--into` a new name).
    pub created: bool,
    pub report: OperationReport,
}

/// Where a restore (or a verify, or a drill) reads a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The copy this host kept when it has one, else the primary repository.
    Nearest,
    /// The primary repository (`backups.repository`).
    Repository,
    /// The off-site repository (`backups.offsite`).
    Offsite,
}

/// What `backup verify` found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Verified {
    pub repository: String,
    /// The backup read back; `None`: the whole repository was checked.
    pub backup: Option<String>,
    pub ok: bool,
    /// restic's report (its last lines).
    pub detail: String,
}

pub struct Backups {
    store: Arc<dyn Store>,
    sites: Sites,
    config: Config,
}

impl Backups {
    pub fn new(store: Arc<dyn Store>, config: &Config) -> Self {
        Self {
            sites: Sites::new(store.clone(), config),
            store,
            config: config.clone(),
        }
    }

    /// restic on the configured repository, with its passphrase (made, kept sealed, and the
    /// repository initialised on first use).
    async fn restic(&self) -> Result<Restic> {
        let url = self.primary_url()?.to_string();
        self.restic_at(&url).await
    }

    /// restic on the repository at `url` (made and initialised on first use).
    async fn restic_at(&self, url: &str) -> Result<Restic> {
        let (restic, new) = self.repository(url, Vec::new()).await?;
        if new {
            restic.init().await?;
        }
        Ok(restic)
    }

    /// The repository of `region`'s backups (`[regions.NAME] backup_repository`, else
    /// `backups.repository`), or `NotConfigured`.
    fn region_url(&self, region: &str) -> Result<String> {
        let url = self
            .sites
            .regions()
            .get(region)
            .map(|r| r.backup_repository.trim().to_string())
            .unwrap_or_else(|| self.config.backups.repository.trim().to_string());
        if url.is_empty() {
            return Err(BackupError::NotConfigured);
        }
        Ok(url)
    }

    /// Whether `url` is a repository this config writes backups to (the global one or a
    /// region's).
    fn known_repository(&self, url: &str) -> bool {
        url == self.config.backups.repository.trim()
            || self
                .sites
                .regions()
                .all()
                .any(|r| r.backup_repository.trim() == url)
    }

    /// `NotConfigured` unless some repository is set (`backups.repository` or a region's).
    fn any_repository(&self) -> Result<()> {
        let regional = self
            .sites
            .regions()
            .all()
            .any(|r| !r.backup_repository.trim().is_empty());
        if regional {
            Ok(())
        } else {
            self.primary_url().map(|_| ())
        }
    }

    /// `backups.repository`, or `NotConfigured` when backups are off.
    fn primary_url(&self) -> Result<&str> {
        let url = self.config.backups.repository.trim();
        if url.is_empty() {
            return Err(BackupError::NotConfigured);
        }
        Ok(url)
    }

    /// restic on the off-site repository (`backups.offsite`, over `backups.offsite_ssh`), made
    /// on first use with the primary's chunker parameters; `None` when none is configured.
    async fn offsite(&self) -> Result<Option<Restic>> {
        let url = self.config.backups.offsite.trim();
        if url.is_empty() {
            return Ok(None);
        }
        let (restic, new) = self.repository(url, self.offsite_options(None)?).await?;
        if new {
            restic.init_like(&self.restic().await?).await?;
        }
        Ok(Some(restic))
    }

    /// restic's options to reach the off-site repository over `ssh` (else `offsite_ssh`).
    fn offsite_options(&self, ssh: Option<&str>) -> Result<Vec<String>> {
        let ssh = ssh.unwrap_or(&self.config.backups.offsite_ssh).trim();
        if ssh.is_empty() {
            return Ok(Vec::new());
        }
        if ssh.contains(['\n', '\r', '\0']) {
            return Err(BackupError::Invalid(
                "backups.offsite_ssh: one line, please".into(),
            ));
        }
        Ok(vec![format!("rclone.program={ssh}")])
    }

    /// restic on the repository at `url` with its passphrase, made and kept sealed on first
    /// use; whether it was made now (the repository is new).
    async fn repository(&self, url: &str, options: Vec<String>) -> Result<(Restic, bool)> {
        let cache = std::path::absolute(&self.config.backups.cache)
            .map_err(|e| BackupError::Tool(format!("backups.cache: {e}")))?;
        crate::unix::create_private_dir(&cache)
            .map_err(|e| BackupError::Tool(format!("{}: {e}", cache.display())))?;
        let (password, new) = match self.store.backup_passphrase(url).await? {
            Some(p) => (p, false),
            None => {
                let made = crate::secret::WebhookSecret::generate();
                let kept = self
                    .store
                    .keep_backup_passphrase(url, made.expose())
                    .await?;
                let new = kept == made.expose();
                (kept, new)
            }
        };
        let restic = Restic {
            bin: self.config.backups.restic.clone(),
            repository: url.to_string(),
            password: password.into(),
            cache,
            options,
        };
        Ok((restic, new))
    }

    /// Back up `site` now: a generation frozen and written to the repository.
    pub async fn create(&self, site: &str, tags: &[String], caller: &str) -> Result<Backup> {
        for t in tags {
            validate_tag(t)?;
        }
        // The site's region's repository: its backups stay in its region.
        let restic = match self.store.site_by_name(site).await? {
            Some(s) => self.restic_at(&self.region_url(&s.region)?).await?,
            None => self.restic().await?,
        };
        let restic = &restic;
        let id = crate::store::new_id();
        let keep = self.config.backups.local_copies as usize;
        let sites = &self.sites;
        let id_ref = &id;
        let out = self
            .sites
            .read_frozen(site, |s, dir| async move {
                let mut all = vec![format!("site:{}", s.id), format!("name:{}", s.name)];
                all.extend(tags.iter().cloned());
                let manifest = Manifest::of(&dir).await?;
                let summary = restic.backup(&dir, &all).await?;
                let resources = crate::sites::generation_resources(&dir);
                sites.keep_local_copy(&s, &dir, id_ref, keep)?;
                Ok::<_, BackupError>((s, dir, summary, resources, manifest))
            })
            .await??;
        let (s, dir, summary, resources, manifest) = out;
        let backup = Backup {
            id,
            site_id: s.id.clone(),
            site_name: s.name.clone(),
            repository: restic.repository.clone(),
            snapshot_id: summary.snapshot_id.clone(),
            source_path: dir.display().to_string(),
            tags: tags.join(","),
            resources: serde_json::to_string(&resources).unwrap_or_else(|_| "[]".into()),
            files: summary.total_files_processed as i64,
            bytes: summary.total_bytes_processed as i64,
            bytes_added: summary.data_added as i64,
            created_at: crate::now_ms(),
            created_by: caller.to_string(),
            manifest: serde_json::to_string(&manifest).unwrap_or_else(|_| "{}".into()),
            last_drill_at: None,
            last_drill_ok: None,
            offsite_snapshot_id: None,
        };
        self.store.insert_backup(&backup).await?;
        tracing::info!(site = %s.name, snapshot = %backup.snapshot_id, files = backup.files, bytes = backup.bytes, added = backup.bytes_added, "site backed up");
        let mut backup = backup;
        if let Some(offsite) = self
            .offsite()
            .await
            .map_err(|e| offsite_failed(&backup, e))?
        {
            backup.offsite_snapshot_id = Some(
                self.copy_offsite(&backup, restic, &offsite)
                    .await
                    .map_err(|e| offsite_failed(&backup, e))?,
            );
        }
        Ok(backup)
    }

    /// Copy `b` from the primary repository to the off-site one and record the copy's id.
    async fn copy_offsite(&self, b: &Backup, primary: &Restic, offsite: &Restic) -> Result<String> {
        let copy = offsite.copy_from(primary, &b.snapshot_id).await?;
        self.store.set_offsite_snapshot(&b.id, &copy).await?;
        tracing::info!(backup = %b.id, copy = %copy, "backup copied off-site");
        Ok(copy)
    }

    /// Copy off-site every backup in the primary repository that has no copy there yet (one
    /// whose copy failed, or made before `backups.offsite` was set); the ids copied.
    pub async fn copy_missing_offsite(&self) -> Result<Vec<String>> {
        let Some(offsite) = self.offsite().await? else {
            return Ok(Vec::new());
        };
        let primary = self.restic().await?;
        let mut copied = Vec::new();
        for b in self.store.backups(None).await? {
            if b.offsite_snapshot_id.is_none() && b.repository == primary.repository {
                self.copy_offsite(&b, &primary, &offsite).await?;
                copied.push(b.id);
            }
        }
        Ok(copied)
    }

    /// A backup by its id, or a prefix (8 or more) of its id or its snapshot's.
    pub async fn find(&self, id: &str) -> Result<Option<Backup>> {
        Ok(self.store.backup(id).await?)
    }

    /// One site's backups (by id), newest first.
    pub async fn of_site(&self, site: &crate::ids::SiteId) -> Result<Vec<Backup>> {
        Ok(self.store.backups(Some(site)).await?)
    }

    /// Backups, newest first: one site's (by name, deleted sites too) or all.
    pub async fn list(&self, site: Option<&str>) -> Result<Vec<Backup>> {
        let all = self.store.backups(None).await?;
        Ok(match site {
            Some(name) => {
                let found: Vec<Backup> = all.into_iter().filter(|b| b.site_name == name).collect();
                if found.is_empty() && self.store.site_by_name(name).await?.is_none() {
                    return Err(BackupError::NotFound(format!("site {name}")));
                }
                found
            }
            None => all,
        })
    }

    /// Restore `backup` (an id, or a prefix of 8 or more of its id or snapshot id) into the
    /// site it was taken of, or `into` another site (made when it does not exist, in the
    /// same workspace). A protected target needs the bypass, which is audited.
    pub async fn restore(
        &self,
        backup: &str,
        into: Option<&str>,
        guard: Guard,
    ) -> Result<Restored> {
        self.restore_from(backup, into, guard, Source::Nearest)
            .await
    }

    /// As [`Backups::restore`], reading `from` where it says.
    pub async fn restore_from(
        &self,
        backup: &str,
        into: Option<&str>,
        guard: Guard,
        from: Source,
    ) -> Result<Restored> {
        let b = self
            .store
            .backup(backup)
            .await?
            .ok_or_else(|| BackupError::NotFound(format!("backup {backup}")))?;
        let (restic, snapshot) = self.reader(&b, from).await?;
        let target = into.unwrap_or(&b.site_name).to_string();
        crate::sites::validate_site_name(&target)?;
        let mut created = false;
        let source = self
            .store
            .site(&b.site_id)
            .await?
            .ok_or_else(|| BackupError::NotFound(format!("site of backup {}", b.id)))?;
        match self.store.site_by_name(&target).await? {
            None => {
                self.sites
                    .create_empty(&target, &source.workspace_id, &source.region)
                    .await?;
                created = true;
            }
            Some(t) if t.region != source.region => {
                return Err(BackupError::Invalid(format!(
                    "backup {} is of a site in region {} and {target} is in region {}: a restore \
                     stays in its region",
                    b.id, source.region, t.region
                )));
            }
            Some(_) => {}
        }
        let local = self
            .sites
            .local_copy(&b.site_id, &b.id)
            .filter(|_| from == Source::Nearest);
        let from = match (&local, from) {
            (Some(_), _) => "local",
            (None, Source::Offsite) => "offsite",
            (None, _) => "repository",
        };
        let restored = self
            .sites
            .restore_with(&target, guard, |dir| {
                let restic = &restic;
                let snapshot = &snapshot;
                let sites = &self.sites;
                async move {
                    match local {
                        Some(copy) => Ok(sites.copy_generation(&copy, &dir)?),
                        None => restic.restore(snapshot, &dir).await,
                    }
                }
            })
            .await?;
        let report = match restored {
            Ok(r) => r,
            Err(e) => {
                if created {
                    let _ = self.sites.delete(&target, Guard::default()).await;
                }
                return Err(e);
            }
        };
        tracing::info!(backup = %b.id, site = %target, "backup restored");
        Ok(Restored {
            backup: b.id,
            site: target,
            from,
            created,
            report,
        })
    }

    /// restic on the repository `from` names and the snapshot of `b` there.
    async fn reader(&self, b: &Backup, from: Source) -> Result<(Restic, String)> {
        if from == Source::Offsite {
            let offsite = self.offsite().await?.ok_or_else(|| {
                BackupError::Invalid("no off-site repository: set backups.offsite".into())
            })?;
            let copy = b.offsite_snapshot_id.clone().ok_or_else(|| {
                BackupError::NotFound(format!("an off-site copy of backup {}", b.id))
            })?;
            return Ok((offsite, copy));
        }
        // Backups off is said as such, before anything else.
        self.any_repository()?;
        if !self.known_repository(&b.repository) {
            return Err(BackupError::Invalid(format!(
                "backup {} is in {}, not in backups.repository nor a region's backup_repository",
                b.id, b.repository
            )));
        }
        let restic = self.restic_at(&b.repository).await?;
        Ok((restic, b.snapshot_id.clone()))
    }

    /// Read a whole repository back and check it (`restic check --read-data`): the primary,
    /// or with `offsite` the off-site one.
    pub async fn verify(&self, offsite: bool) -> Result<Verified> {
        let restic = if offsite {
            self.offsite().await?.ok_or_else(|| {
                BackupError::Invalid("no off-site repository: set backups.offsite".into())
            })?
        } else {
            self.restic().await?
        };
        let (ok, detail) = match restic.check().await {
            Ok(out) => (true, out),
            Err(BackupError::Tool(m)) => (false, m),
            Err(e) => return Err(e),
        };
        let detail: Vec<&str> = detail.lines().rev().take(4).collect();
        Ok(Verified {
            repository: restic.repository.clone(),
            backup: None,
            ok,
            detail: detail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }

    /// Read one backup back from its repository (`from`: the primary or the off-site one) into
    /// a scratch folder and check every file's checksum and every SQLite table's rows against
    /// the backup's manifest.
    pub async fn verify_backup(&self, backup: &str, from: Source) -> Result<Verified> {
        let b = self
            .store
            .backup(backup)
            .await?
            .ok_or_else(|| BackupError::NotFound(format!("backup {backup}")))?;
        let (restic, snapshot) = self.reader(&b, from).await?;
        let work = restic
            .cache
            .with_file_name(format!("verify-{}", uuid::Uuid::new_v4().simple()));
        crate::unix::create_private_dir(&work)
            .map_err(|e| BackupError::Tool(format!("{}: {e}", work.display())))?;
        let out = async {
            restic.restore(&snapshot, &work).await?;
            check_manifest(&b, &work).await
        }
        .await;
        let _ = std::fs::remove_dir_all(&work);
        let (ok, detail) = match out {
            Ok(d) => (true, d),
            Err(e @ (BackupError::Invalid(_) | BackupError::Tool(_))) => (false, e.to_string()),
            Err(e) => return Err(e),
        };
        Ok(Verified {
            repository: restic.repository.clone(),
            backup: Some(b.id),
            ok,
            detail,
        })
    }
}

/// Compare what was restored into `dir` with `b`'s manifest; what matched, or every way it
/// differs.
async fn check_manifest(b: &Backup, dir: &std::path::Path) -> Result<String> {
    let want: Manifest = serde_json::from_str(&b.manifest)
        .map_err(|e| BackupError::Invalid(format!("backup {}: its manifest: {e}", b.id)))?;
    let got = Manifest::of(dir).await?;
    let diffs = got.differences(&want);
    if !diffs.is_empty() {
        return Err(BackupError::Invalid(format!(
            "restored data differs from the backup's manifest ({} differences): {}",
            diffs.len(),
            diffs.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        )));
    }
    Ok(format!(
        "{} files and {} SQLite tables as backed up",
        want.files.len(),
        want.tables.len()
    ))
}

/// A backup written to the primary repository whose off-site copy failed: said, the backup
/// kept (the next scheduled pass copies it).
fn offsite_failed(b: &Backup, e: BackupError) -> BackupError {
    BackupError::Tool(format!(
        "backup {} is in {}, but copying it off-site failed (the next scheduled pass tries again): {e}",
        b.id, b.repository
    ))
}

/// What `endor backup schedule` says of a site.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Scheduled {
    pub site: String,
    /// What the site said (`null`: the default, on for protected sites).
    pub own: Option<bool>,
    /// Whether it is backed up on `backups.schedule`.
    pub scheduled: bool,
}

/// What one scheduled pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pass {
    pub backed_up: Vec<String>,
    /// Sites whose backup failed, with why.
    pub failed: Vec<(String, String)>,
}

/// The store lease a scheduled pass holds.
const PASS_LEASE: &str = "backups";

/// The tag scheduled backups carry.
pub const SCHEDULED_TAG: &str = "scheduled";

impl Backups {
    /// Whether `site` is backed up on schedule, and what it said.
    pub async fn schedule(&self, site: &str) -> Result<Scheduled> {
        let s = self
            .store
            .site_by_name(site)
            .await?
            .ok_or_else(|| BackupError::NotFound(format!("site {site}")))?;
        let own = self
            .store
            .backup_schedules()
            .await?
            .into_iter()
            .find_map(|(id, on)| (id == s.id).then_some(on));
        Ok(Scheduled {
            scheduled: own.unwrap_or(s.protected),
            site: s.name,
            own,
        })
    }

    /// Say whether `site` is backed up on schedule (`None`: the default).
    pub async fn set_schedule(&self, site: &str, own: Option<bool>) -> Result<Scheduled> {
        let s = self
            .store
            .site_by_name(site)
            .await?
            .ok_or_else(|| BackupError::NotFound(format!("site {site}")))?;
        self.store.set_backup_schedule(&s.id, own).await?;
        Ok(Scheduled {
            site: s.name,
            own,
            scheduled: own.unwrap_or(s.protected),
        })
    }

    /// The live sites backed up on schedule: protected ones unless they said no, and the
    /// others that said yes.
    pub async fn scheduled_sites(&self) -> Result<Vec<crate::store::Site>> {
        let own: std::collections::HashMap<_, _> =
            self.store.backup_schedules().await?.into_iter().collect();
        Ok(self
            .store
            .list_sites()
            .await?
            .into_iter()
            .filter(|s| s.state == crate::store::SiteState::Active)
            .filter(|s| own.get(&s.id).copied().unwrap_or(s.protected))
            .collect())
    }

    /// Back up every scheduled site that has no backup since `since` (ms): one pass of the
    /// schedule. Another process that ran the same tick already made those backups, so
    /// running a tick twice backs nothing up twice.
    pub async fn scheduled_pass(&self, since: i64) -> Result<Pass> {
        let mut pass = Pass::default();
        // One pass at a time over every process of this store.
        let owner = crate::store::new_id();
        let now = crate::now_ms();
        if !self
            .store
            .try_lease(PASS_LEASE, &owner, now, now + 6 * 3_600_000)
            .await?
        {
            tracing::info!("scheduled backups skipped: another process is running them");
            return Ok(pass);
        }
        let out = self.pass_held(since, &mut pass).await;
        let _ = self.store.release_lease(PASS_LEASE, &owner).await;
        out.map(|()| pass)
    }

    async fn pass_held(&self, since: i64, pass: &mut Pass) -> Result<()> {
        let done: std::collections::HashSet<_> = self
            .store
            .backups(None)
            .await?
            .into_iter()
            .filter(|b| b.created_at >= since)
            .map(|b| b.site_id)
            .collect();
        for site in self.scheduled_sites().await? {
            if done.contains(&site.id) {
                continue;
            }
            match self
                .create(&site.name, &[SCHEDULED_TAG.to_string()], "schedule")
                .await
            {
                Ok(_) => pass.backed_up.push(site.name),
                Err(e) => {
                    tracing::warn!(site = %site.name, error = %e, "scheduled backup failed");
                    crate::notify::Notifier::new(self.store.clone(), &self.config)
                        .backup_event(&site, false, &format!("{}:{since}", site.id))
                        .await;
                    pass.failed.push((site.name, e.to_string()));
                }
            }
        }
        // Backups whose off-site copy failed before (or made before there was one) go now.
        if let Err(e) = self.copy_missing_offsite().await {
            tracing::warn!(error = %e, "copying backups off-site failed");
            pass.failed.push(("off-site".into(), e.to_string()));
        }
        Ok(())
    }

    /// Run passes on `backups.schedule` until `stop` says so (only when a repository is set).
    pub async fn run_scheduled(self, stop: tokio::sync::watch::Receiver<bool>) {
        let schedule = match self.config.backups.parsed_schedule() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "backups.schedule");
                return;
            }
        };
        let this = &self;
        crate::config::on_schedule(schedule, stop, |tick| async move {
            match this.scheduled_pass(tick).await {
                Ok(p) if !p.backed_up.is_empty() || !p.failed.is_empty() => {
                    tracing::info!(
                        backed_up = p.backed_up.len(),
                        failed = p.failed.len(),
                        "scheduled backups"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "scheduled backup pass failed"),
            }
        })
        .await
    }
}

/// What a drill found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DrillReport {
    pub backup: String,
    pub site: String,
    pub ok: bool,
    pub detail: String,
    pub duration_ms: u64,
}

impl Backups {
    /// Drill the newest backup of `site`: restore it into a scratch site (its databases
    /// started), compare every file's checksum and every SQLite table's rows with the backup's
    /// manifest, ask every table of its PostgreSQL databases for a count, remove the scratch
    /// site, and record the outcome.
    pub async fn drill(&self, site: &str, from: Source) -> Result<DrillReport> {
        // Backups off is the caller's error, not a failed drill.
        self.any_repository()?;
        let newest = self
            .list(Some(site))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| BackupError::NotFound(format!("a backup of {site}")))?;
        self.drill_backup(&newest, from).await
    }

    /// Drill the newest backup of every site that has one.
    pub async fn drill_all(&self, from: Source) -> Result<Vec<DrillReport>> {
        self.any_repository()?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for b in self.store.backups(None).await? {
            if seen.insert(b.site_id.clone()) {
                out.push(self.drill_backup(&b, from).await?);
            }
        }
        Ok(out)
    }

    async fn drill_backup(&self, b: &Backup, from: Source) -> Result<DrillReport> {
        let started = std::time::Instant::now();
        let scratch = format!("drill-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let outcome = self.drill_into(b, &scratch, from).await;
        if self.store.site_by_name(&scratch).await?.is_some()
            && let Err(e) = self.sites.delete(&scratch, Guard::default()).await
        {
            tracing::warn!(site = %scratch, error = %e, "the drill's scratch site was not removed");
        }
        let (ok, detail) = match outcome {
            Ok(d) => (true, d),
            Err(e) => (false, e.to_string()),
        };
        let drill = crate::store::Drill {
            id: crate::store::new_id(),
            backup_id: b.id.clone(),
            at: crate::now_ms(),
            ok: ok as i64,
            detail: detail.clone(),
            duration_ms: started.elapsed().as_millis() as i64,
        };
        self.store.insert_drill(&drill).await?;
        // The audit trail keeps the outcome with the site: a failed drill is an event to tell.
        let said = if ok {
            "backup.drill"
        } else {
            "backup.drill_failed"
        };
        self.store
            .record_audit(
                "drill",
                said,
                Some(&b.site_id),
                &format!("backup {}: {detail}", b.id),
            )
            .await?;
        if ok {
            tracing::info!(backup = %b.id, site = %b.site_name, "backup drill passed");
        } else {
            if let Ok(Some(site)) = self.store.site(&b.site_id).await {
                crate::notify::Notifier::new(self.store.clone(), &self.config)
                    .backup_event(&site, true, &drill.id)
                    .await;
            }
            tracing::error!(backup = %b.id, site = %b.site_name, detail = %detail, "backup drill FAILED");
        }
        Ok(DrillReport {
            backup: b.id.clone(),
            site: b.site_name.clone(),
            ok,
            detail,
            duration_ms: drill.duration_ms as u64,
        })
    }

    async fn drill_into(&self, b: &Backup, scratch: &str, from: Source) -> Result<String> {
        // From a repository, never a local copy: the drill is of what the repository holds.
        let from = if from == Source::Nearest {
            Source::Repository
        } else {
            from
        };
        self.restore_from(&b.id, Some(scratch), Guard::default(), from)
            .await?;
        let generation = self.sites.newest_generation_dir(scratch).await?;
        let checked = check_manifest(b, &generation).await?;
        let site = self
            .store
            .site_by_name(scratch)
            .await?
            .ok_or_else(|| BackupError::NotFound(format!("site {scratch}")))?;
        let (mut pg, mut maria) = (0, 0);
        for (_, url) in self.sites.database_urls(&site).await? {
            if url.starts_with("postgres") {
                pg += manifest::postgres_tables(&url).await?.len();
            } else if url.starts_with("mysql") {
                maria += manifest::mariadb_tables(&url).await?.len();
            }
        }
        Ok(format!(
            "{checked}; {pg} PostgreSQL and {maria} MariaDB tables answer"
        ))
    }
}

/// What a retention policy is set on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionOf<'a> {
    Site(&'a str),
    Workspace(&'a str),
}

/// A site's or a workspace's retention policy: what it set itself, and what applies (its own,
/// else its workspace's, else `[backups]`'s, value by value).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RetentionView {
    /// `site` or `workspace`.
    pub scope: &'static str,
    pub name: String,
    pub own: Option<RetentionRow>,
    pub applies: Retention,
}

/// `policy` with each value it leaves unset taken from `under`.
fn retention_over(policy: Option<RetentionRow>, under: Retention) -> Retention {
    let p = policy.unwrap_or_default();
    let pick = |v: Option<i64>, d: u32| v.map_or(d, |v| v.clamp(0, u32::MAX as i64) as u32);
    Retention {
        keep_last: pick(p.keep_last, under.keep_last),
        keep_daily: pick(p.keep_daily, under.keep_daily),
        keep_weekly: pick(p.keep_weekly, under.keep_weekly),
        keep_monthly: pick(p.keep_monthly, under.keep_monthly),
    }
}

impl Backups {
    /// The policy set on a workspace (by id) over `[backups]`'s.
    async fn workspace_retention(&self, id: &crate::ids::WorkspaceId) -> Result<Retention> {
        let own = self
            .store
            .backup_retention(RetentionScope::Workspace, id.as_ref())
            .await?;
        Ok(retention_over(own, self.config.backups.retention()))
    }

    /// The policy that applies to the site `id` (its own, its workspace's, `[backups]`'s).
    async fn site_retention(&self, id: &crate::ids::SiteId) -> Result<Retention> {
        let under = match self.store.site(id).await? {
            Some(s) => self.workspace_retention(&s.workspace_id).await?,
            None => self.config.backups.retention(),
        };
        let own = self
            .store
            .backup_retention(RetentionScope::Site, id.as_ref())
            .await?;
        Ok(retention_over(own, under))
    }

    /// Set (`Some`; values left `None` keep what was set before, or fall through) or forget
    /// (`None`) the retention policy of a site or a workspace, and say what applies now.
    /// Values are counts from 0, and the policy that applies must keep at least one backup.
    pub async fn set_retention(
        &self,
        of: RetentionOf<'_>,
        policy: Option<RetentionRow>,
    ) -> Result<RetentionView> {
        if let Some(p) = policy {
            let values = [p.keep_last, p.keep_daily, p.keep_weekly, p.keep_monthly];
            if values.iter().flatten().any(|v| *v < 0 || *v > 100_000) {
                return Err(BackupError::Invalid(
                    "retention values are counts from 0 to 100000".into(),
                ));
            }
        }
        let (scope, id) = self.retention_target(of).await?;
        let before = self.store.backup_retention(scope, &id).await?;
        // Values not given keep what was set before.
        let policy = policy.map(|p| {
            let b = before.unwrap_or_default();
            RetentionRow {
                keep_last: p.keep_last.or(b.keep_last),
                keep_daily: p.keep_daily.or(b.keep_daily),
                keep_weekly: p.keep_weekly.or(b.keep_weekly),
                keep_monthly: p.keep_monthly.or(b.keep_monthly),
            }
        });
        self.store.set_backup_retention(scope, &id, policy).await?;
        let view = self.retention(of).await?;
        let a = view.applies;
        if a.keep_last + a.keep_daily + a.keep_weekly + a.keep_monthly == 0 {
            // Keeping nothing would forget every backup: undo and refuse.
            let _ = self.store.set_backup_retention(scope, &id, before).await;
            return Err(BackupError::Invalid(
                "that policy keeps no backup at all: keep at least one".into(),
            ));
        }
        Ok(view)
    }

    /// What a site's or a workspace's retention policy is.
    pub async fn retention(&self, of: RetentionOf<'_>) -> Result<RetentionView> {
        let (scope, id) = self.retention_target(of).await?;
        let own = self.store.backup_retention(scope, &id).await?;
        let (name, applies) = match of {
            RetentionOf::Site(name) => (name, self.site_retention(&id.clone().into()).await?),
            RetentionOf::Workspace(name) => {
                (name, self.workspace_retention(&id.clone().into()).await?)
            }
        };
        Ok(RetentionView {
            scope: scope.as_str(),
            name: name.to_string(),
            own,
            applies,
        })
    }

    async fn retention_target(&self, of: RetentionOf<'_>) -> Result<(RetentionScope, String)> {
        Ok(match of {
            RetentionOf::Site(name) => {
                let s = self
                    .store
                    .site_by_name(name)
                    .await?
                    .ok_or_else(|| BackupError::NotFound(format!("site {name}")))?;
                (RetentionScope::Site, s.id.to_string())
            }
            RetentionOf::Workspace(name) => {
                let w = self
                    .store
                    .workspace_by_name(name)
                    .await?
                    .ok_or_else(|| BackupError::NotFound(format!("workspace {name}")))?;
                (RetentionScope::Workspace, w.id.to_string())
            }
        })
    }
}

/// What `backup forget` did for one site.
#[derive(Debug, Clone, Serialize)]
pub struct Forgot {
    pub site: String,
    /// Snapshots removed from the repository (or that would be, with a dry run).
    pub removed: Vec<String>,
    /// Their copies removed from the off-site repository.
    pub removed_offsite: Vec<String>,
    /// The policy applied.
    pub kept: Retention,
    pub dry_run: bool,
}

impl Backups {
    /// Apply each site's retention policy (its own, its workspace's, else `[backups]`'s) to its
    /// backups (one site's, or all), through `via`: the same repository reached with a
    /// credential that may delete (the pushing one refuses). With `offsite_ssh`, the off-site
    /// repository too, through that SSH command (a key whose forced command may delete). The
    /// backups removed from the primary are forgotten in the store; those removed off-site
    /// lose their off-site copy.
    pub async fn forget(
        &self,
        site: Option<&str>,
        via: &str,
        offsite_ssh: Option<&str>,
        dry_run: bool,
    ) -> Result<Vec<Forgot>> {
        let via = via.trim();
        if via.is_empty() {
            return Err(BackupError::Invalid(
                "forget needs --via: the repository through a credential that may delete".into(),
            ));
        }
        if via == self.config.backups.repository.trim() {
            return Err(BackupError::Invalid(
                "--via is backups.repository, which refuses deletes: give the pruning credential's URL"
                    .into(),
            ));
        }
        let push = self.restic().await?;
        let prune = Restic {
            repository: via.to_string(),
            ..push
        };
        let prune_offsite = match offsite_ssh {
            None => None,
            Some(ssh) => {
                if ssh.trim() == self.config.backups.offsite_ssh.trim() {
                    return Err(BackupError::Invalid(
                        "--offsite-ssh is backups.offsite_ssh, whose key only appends: give the pruning key's command"
                            .into(),
                    ));
                }
                let offsite = self.offsite().await?.ok_or_else(|| {
                    BackupError::Invalid("no off-site repository: set backups.offsite".into())
                })?;
                Some(Restic {
                    options: self.offsite_options(Some(ssh))?,
                    ..offsite
                })
            }
        };
        let mut sites: Vec<(crate::ids::SiteId, String)> = Vec::new();
        for b in self.list(site).await? {
            if !sites.iter().any(|(id, _)| *id == b.site_id) {
                sites.push((b.site_id.clone(), b.site_name.clone()));
            }
        }
        let mut out = Vec::new();
        for (id, name) in sites {
            let keep = self.site_retention(&id).await?;
            let group = format!("site:{id}");
            let removed = prune.forget(&group, &keep, dry_run).await?;
            let removed_offsite = match &prune_offsite {
                Some(r) => r.forget(&group, &keep, dry_run).await?,
                None => Vec::new(),
            };
            if !dry_run {
                self.store.delete_backups(&removed).await?;
                self.store.forget_offsite_copies(&removed_offsite).await?;
            }
            tracing::info!(site = %name, removed = removed.len(), offsite = removed_offsite.len(), dry_run, "backups forgotten");
            out.push(Forgot {
                site: name,
                kept: keep,
                removed,
                removed_offsite,
                dry_run,
            });
        }
        Ok(out)
    }
}

/// What a drill of endor's own store found.
#[derive(Debug, Clone, Serialize)]
pub struct StoreDrill {
    pub ok: bool,
    /// The restic snapshot the store's copy was written to.
    pub snapshot: String,
    /// What was counted in the live store and found again in the restored one.
    pub counts: std::collections::BTreeMap<String, i64>,
    pub detail: String,
    pub duration_ms: u64,
}

/// What a store holds, counted: workspaces, members, connections (their secrets opened),
/// sites, backups, sealed secrets.
async fn store_counts(
    store: &dyn Store,
) -> std::result::Result<std::collections::BTreeMap<String, i64>, StoreError> {
    let mut c = std::collections::BTreeMap::new();
    let workspaces = store.list_workspaces().await?;
    let mut members = 0;
    for w in &workspaces {
        members += store.list_members(&w.id).await?.len() as i64;
    }
    c.insert("workspaces".into(), workspaces.len() as i64);
    c.insert("members".into(), members);
    c.insert(
        "connections".into(),
        store.list_connections(None).await?.len() as i64,
    );
    c.insert("sites".into(), store.list_sites().await?.len() as i64);
    c.insert("backups".into(), store.backups(None).await?.len() as i64);
    c.insert(
        "sealed secrets".into(),
        store.sealed_counts().await?.values().sum::<u64>() as i64,
    );
    Ok(c)
}

impl Backups {
    /// Back up endor's own store (a SQLite online copy, or `pg_dump` of a PostgreSQL store)
    /// into the repository (tag `store`), restore it from there into a fresh folder (a fresh
    /// database on the same server for PostgreSQL), and check that workspaces, members,
    /// connections (their secrets opened with the master key), sites and backups are all
    /// found again. Recorded in the audit trail either way.
    pub async fn drill_store(&self, caller: &str) -> Result<StoreDrill> {
        let started = std::time::Instant::now();
        let restic = self.restic().await?;
        let work = restic
            .cache
            .with_file_name(format!("store-drill-{}", uuid::Uuid::new_v4().simple()));
        crate::unix::create_private_dir(&work)
            .map_err(|e| BackupError::Tool(format!("{}: {e}", work.display())))?;
        let mut snapshot = String::new();
        let out = async {
            let want = store_counts(self.store.as_ref()).await?;
            snapshot = self.back_up_store(&restic, &work.join("dump")).await?;
            let got = self
                .restored_store_counts(&restic, &snapshot, &work.join("restored"))
                .await?;
            if got != want {
                return Err(BackupError::Invalid(format!(
                    "the restored store differs: live {want:?}, restored {got:?}"
                )));
            }
            Ok(got)
        }
        .await;
        let _ = std::fs::remove_dir_all(&work);
        let (ok, counts, detail) = match out {
            Ok(counts) => (true, counts, "every record found again".into()),
            Err(e) => (false, Default::default(), e.to_string()),
        };
        self.store
            .record_audit(
                caller,
                "backup.drill_store",
                None,
                &format!("{}: {detail}", if ok { "passed" } else { "FAILED" }),
            )
            .await?;
        Ok(StoreDrill {
            ok,
            snapshot,
            counts,
            detail,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Copy the store into the new folder `dump` (a SQLite online copy, or `pg_dump`) and
    /// write it to the repository (tag `store`); the snapshot's id.
    async fn back_up_store(&self, restic: &Restic, dump: &std::path::Path) -> Result<String> {
        make_dir(dump)?;
        if self.store.backend() == Backend::Sqlite {
            self.store.copy_to(&dump.join("endor.db")).await?;
        } else {
            let file = dump.join("endor.sql");
            pg_tool(
                "pg_dump",
                &self.config.store.url,
                &["--no-owner", "--file"],
                Some(&file),
            )
            .await?;
        }
        Ok(restic
            .backup(dump, &["store".to_string()])
            .await?
            .snapshot_id)
    }

    /// Restore the store's snapshot `snap` into the new folder `restored`, open it (a fresh
    /// database on the same server for PostgreSQL, dropped after) and count what it holds.
    async fn restored_store_counts(
        &self,
        restic: &Restic,
        snap: &str,
        restored: &std::path::Path,
    ) -> Result<std::collections::BTreeMap<String, i64>> {
        make_dir(restored)?;
        restic.restore(snap, restored).await?;
        let keyring = self.store.keyring().clone();
        if self.store.backend() == Backend::Sqlite {
            let url = format!("sqlite://{}", restored.join("endor.db").display());
            let copy = crate::store::connect(&url, 2, keyring).await?;
            return Ok(store_counts(copy.as_ref()).await?);
        }
        let url = &self.config.store.url;
        let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
        let admin = format!("{base}/postgres");
        // The name is made here (hex): safe in DDL.
        let name = format!("endor_drill_{}", uuid::Uuid::new_v4().simple());
        pg_tool(
            "psql",
            &admin,
            &["-qc", &format!("CREATE DATABASE {name}")],
            None,
        )
        .await?;
        let fresh = format!("{base}/{name}");
        let counted = async {
            let dump = restored.join("endor.sql");
            pg_tool(
                "psql",
                &fresh,
                &["-q", "-v", "ON_ERROR_STOP=1", "-f"],
                Some(&dump),
            )
            .await?;
            let copy = crate::store::connect(&fresh, 2, keyring).await?;
            Ok(store_counts(copy.as_ref()).await?)
        }
        .await;
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let _ = pg_tool("psql", &admin, &["-qc", &drop], None).await;
        counted
    }
}

fn make_dir(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| BackupError::Tool(format!("{}: {e}", dir.display())))
}

/// Run a PostgreSQL client tool on `url` with `args` (and `file` last); the URL's password,
/// if any, goes in the environment, never on the command line.
async fn pg_tool(
    tool: &str,
    url: &str,
    args: &[&str],
    file: Option<&std::path::Path>,
) -> Result<()> {
    let mut parsed =
        reqwest::Url::parse(url).map_err(|e| BackupError::Invalid(format!("store.url: {e}")))?;
    let password = parsed.password().map(str::to_string);
    let _ = parsed.set_password(None);
    let mut cmd = tokio::process::Command::new(tool);
    cmd.arg("--dbname").arg(parsed.as_str()).args(args);
    if let Some(f) = file {
        cmd.arg(f);
    }
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| BackupError::Tool(format!("cannot run {tool}: {e}")))?;
    if !out.status.success() {
        return Err(BackupError::Tool(format!(
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
