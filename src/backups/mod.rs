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

use crate::config::Config;
use crate::sites::{Guard, OperationReport, SiteError, Sites};
use crate::store::{Backend, Backup, Store, StoreError};

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
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub backup: String,
    pub site: String,
    /// Where the data came from: `local` (the copy kept on this host) or `repository`.
    pub from: &'static str,
    /// The site was made by the restore (`--into` a new name).
    pub created: bool,
    pub report: OperationReport,
}

/// What `backup verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub repository: String,
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
        let url = self.config.backups.repository.trim();
        if url.is_empty() {
            return Err(BackupError::NotConfigured);
        }
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
        };
        if new {
            restic.init().await?;
        }
        Ok(restic)
    }

    /// Back up `site` now: a generation frozen and written to the repository.
    pub async fn create(&self, site: &str, tags: &[String], caller: &str) -> Result<Backup> {
        for t in tags {
            validate_tag(t)?;
        }
        let restic = self.restic().await?;
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
        };
        self.store.insert_backup(&backup).await?;
        tracing::info!(site = %s.name, snapshot = %backup.snapshot_id, files = backup.files, bytes = backup.bytes, added = backup.bytes_added, "site backed up");
        Ok(backup)
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
        self.restore_from(backup, into, guard, true).await
    }

    /// As [`Backups::restore`]; with `local`, from the copy this host kept when it has one,
    /// else always from the repository (what a drill must read).
    pub async fn restore_from(
        &self,
        backup: &str,
        into: Option<&str>,
        guard: Guard,
        local: bool,
    ) -> Result<Restored> {
        let b = self
            .store
            .backup(backup)
            .await?
            .ok_or_else(|| BackupError::NotFound(format!("backup {backup}")))?;
        let restic = self.restic().await?;
        if restic.repository != b.repository {
            return Err(BackupError::Invalid(format!(
                "backup {} is in {}, not in backups.repository",
                b.id, b.repository
            )));
        }
        let target = into.unwrap_or(&b.site_name).to_string();
        crate::sites::validate_site_name(&target)?;
        let mut created = false;
        if self.store.site_by_name(&target).await?.is_none() {
            let source = self
                .store
                .site(&b.site_id)
                .await?
                .ok_or_else(|| BackupError::NotFound(format!("site of backup {}", b.id)))?;
            self.sites
                .create_empty(&target, &source.workspace_id)
                .await?;
            created = true;
        }
        let local = self.sites.local_copy(&b.site_id, &b.id).filter(|_| local);
        let from = if local.is_some() {
            "local"
        } else {
            "repository"
        };
        let restored = self
            .sites
            .restore_with(&target, guard, |dir| {
                let restic = &restic;
                let b = &b;
                let sites = &self.sites;
                async move {
                    match local {
                        Some(copy) => Ok(sites.copy_generation(&copy, &dir)?),
                        None => restic.restore(&b.snapshot_id, &dir).await,
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

    /// Read the whole repository back and check it.
    pub async fn verify(&self) -> Result<Verified> {
        let restic = self.restic().await?;
        let (ok, detail) = match restic.check().await {
            Ok(out) => (true, out),
            Err(BackupError::Tool(m)) => (false, m),
            Err(e) => return Err(e),
        };
        let detail: Vec<&str> = detail.lines().rev().take(4).collect();
        Ok(Verified {
            repository: restic.repository.clone(),
            ok,
            detail: detail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }
}

/// What `endor backup schedule` says of a site.
#[derive(Debug, Clone, Serialize)]
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
                    pass.failed.push((site.name, e.to_string()));
                }
            }
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
#[derive(Debug, Clone, Serialize)]
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
    pub async fn drill(&self, site: &str) -> Result<DrillReport> {
        let newest = self
            .list(Some(site))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| BackupError::NotFound(format!("a backup of {site}")))?;
        self.drill_backup(&newest).await
    }

    /// Drill the newest backup of every site that has one.
    pub async fn drill_all(&self) -> Result<Vec<DrillReport>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for b in self.store.backups(None).await? {
            if seen.insert(b.site_id.clone()) {
                out.push(self.drill_backup(&b).await?);
            }
        }
        Ok(out)
    }

    async fn drill_backup(&self, b: &Backup) -> Result<DrillReport> {
        let started = std::time::Instant::now();
        let scratch = format!("drill-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let outcome = self.drill_into(b, &scratch).await;
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
        if ok {
            tracing::info!(backup = %b.id, site = %b.site_name, "backup drill passed");
        } else {
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

    async fn drill_into(&self, b: &Backup, scratch: &str) -> Result<String> {
        // From the repository: the drill is of what the repository holds.
        self.restore_from(&b.id, Some(scratch), Guard::default(), false)
            .await?;
        let generation = self.sites.newest_generation_dir(scratch).await?;
        let want: Manifest = serde_json::from_str(&b.manifest)
            .map_err(|e| BackupError::Invalid(format!("backup {}: its manifest: {e}", b.id)))?;
        let got = Manifest::of(&generation).await?;
        let diffs = got.differences(&want);
        if !diffs.is_empty() {
            return Err(BackupError::Invalid(format!(
                "restored data differs from the backup's manifest ({} differences): {}",
                diffs.len(),
                diffs.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            )));
        }
        let site = self
            .store
            .site_by_name(scratch)
            .await?
            .ok_or_else(|| BackupError::NotFound(format!("site {scratch}")))?;
        let mut answered = 0;
        for (_, url) in self.sites.database_urls(&site).await? {
            if url.starts_with("postgres") {
                answered += manifest::postgres_tables(&url).await?.len();
            }
        }
        Ok(format!(
            "{} files and {} SQLite tables as backed up; {answered} PostgreSQL tables answer",
            want.files.len(),
            want.tables.len()
        ))
    }
}

/// What `backup forget` did for one site.
#[derive(Debug, Clone, Serialize)]
pub struct Forgot {
    pub site: String,
    /// Snapshots removed from the repository (or that would be, with a dry run).
    pub removed: Vec<String>,
    pub dry_run: bool,
}

impl Backups {
    /// Apply `[backups]`'s retention policy to each site's backups (one site's, or all),
    /// through `via`: the same repository reached with a credential that may delete (the
    /// pushing one refuses). The backups removed are forgotten in the store too.
    pub async fn forget(
        &self,
        site: Option<&str>,
        via: &str,
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
        let mut sites: Vec<(crate::ids::SiteId, String)> = Vec::new();
        for b in self.list(site).await? {
            if !sites.iter().any(|(id, _)| *id == b.site_id) {
                sites.push((b.site_id.clone(), b.site_name.clone()));
            }
        }
        let mut out = Vec::new();
        for (id, name) in sites {
            let removed = prune
                .forget(&format!("site:{id}"), &self.config.backups, dry_run)
                .await?;
            if !dry_run {
                self.store.delete_backups(&removed).await?;
            }
            tracing::info!(site = %name, removed = removed.len(), dry_run, "backups forgotten");
            out.push(Forgot {
                site: name,
                removed,
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
