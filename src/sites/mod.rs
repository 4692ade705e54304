//! Sites and their data: create (import once), snapshot (freeze a generation), clone (a new
//! site from the newest generation of another), sync (replace a site's data by a fresh clone),
//! delete, and the orphan sweep. Shared by the CLI and, later, the API and the preview
//! lifecycle.
//!
//! On disk every site lives in `{storage.root}/{site id}/` (ids are UUIDs we generate, so no
//! user text ever becomes a path):
//! ```text
//! {id}/live/files/              the site's files
//! {id}/live/sqlite/main.db      its SQLite database (+ -wal)
//! {id}/generations/{seq}/...    frozen generations, same layout
//! ```
//! Removal renames a directory into `{root}/.trash/` first, so a half-deleted tree is never
//! mistaken for a live one, and the sweep finishes what a crash left.

mod backup;
pub use backup::generation_resources;
mod data;
mod lock;
mod sweep;

use lock::Mode;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::clone::common::{find_marked, tree_size};
use crate::clone::files::{TreeOptions, clone_tree, remove_tree};
use crate::clone::mariadb::{self as maria, MariaTools};
use crate::clone::pg_template::Template;
use crate::clone::postgres::{self as pg, PgTools};
use crate::clone::{Access, DbServer, db_name};
use crate::clone::{CloneError, CloneStats, Strategy, probe, sqlite};
use crate::ids::{SiteId, WorkspaceId};
use crate::store::{NewSite, Site, SiteResource, SiteState, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("site {0} is protected: pass --bypass-protection to {1} it")]
    Protected(String, &'static str),
    /// Another operation holds the site (see `lock`).
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Clone(#[from] CloneError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, SiteError>;

/// Site names become DNS labels (`{site}.{domain}`): 1–63 of `a-z`, `0-9`, `-`, not starting or
/// ending with `-`.
pub fn validate_site_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SiteError::Invalid(format!(
            "invalid site name `{}`: use 1-63 lowercase letters, digits and `-` (a DNS label)",
            name.escape_debug()
        )))
    }
}

/// One resource as `site show` and clone reports present it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ResourceReport {
    pub kind: String,
    pub name: String,
    pub strategy: String,
    pub location: String,
    pub bytes_logical: i64,
    pub bytes_written: i64,
    /// Milliseconds, to the microsecond.
    pub duration_ms: f64,
}

impl From<SiteResource> for ResourceReport {
    fn from(r: SiteResource) -> Self {
        Self {
            kind: r.kind,
            name: r.name,
            strategy: r.strategy,
            location: r.location,
            bytes_logical: r.bytes_logical,
            bytes_written: r.bytes_written,
            duration_ms: r.duration_us as f64 / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SiteDetails {
    pub id: SiteId,
    pub name: String,
    pub state: SiteState,
    pub workspace_id: WorkspaceId,
    /// The concrete region the site lives in.
    pub region: String,
    /// Every name it answers to: the concrete region, then its aliases (`europe`, `eu`).
    pub region_names: Vec<String>,
    pub parent: Option<String>,
    pub protected: bool,
    pub read_only: bool,
    pub url: String,
    #[schema(value_type = String)]
    pub files_dir: PathBuf,
    pub database_urls: Vec<String>,
    pub generations: Vec<i64>,
    pub resources: Vec<ResourceReport>,
    pub created_at: i64,
    pub tags: Vec<String>,
    /// For a pull request's preview: its lifecycle state and the last run's timed steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewReport>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PreviewReport {
    /// `REPO#N`: what `endor preview show` takes.
    pub name: String,
    pub number: i64,
    pub state: crate::store::PreviewState,
    pub head_sha: Option<String>,
    pub ready_sha: Option<String>,
    pub reason: Option<String>,
    pub port: Option<i64>,
    /// When it expires (Unix ms), and the same as UTC text.
    pub expires_at: Option<i64>,
    pub expires: Option<String>,
    pub steps: Vec<StepReport>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StepReport {
    pub step: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub ok: Option<bool>,
    pub detail: Option<String>,
}

impl From<crate::store::PreviewStep> for StepReport {
    fn from(s: crate::store::PreviewStep) -> Self {
        Self {
            duration_ms: s.ended_at.map(|e| e - s.started_at),
            step: s.step,
            started_at: s.started_at,
            ended_at: s.ended_at,
            ok: s.ok.map(|o| o != 0),
            detail: s.detail,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OperationReport {
    pub site: String,
    pub generation: Option<i64>,
    pub duration_ms: u64,
    pub resources: Vec<ResourceReport>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    pub removed: Vec<PathBuf>,
    pub dry_run: bool,
}

/// What a caller must say to act on a protected site.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub bypass_protection: bool,
    /// Who asks (logged when protection is bypassed): `cli:{user}`, `api:{login}`...
    pub caller: Option<String>,
}

impl Guard {
    /// The CLI's guard: the caller is the OS user running `endor`.
    pub fn cli(bypass_protection: bool) -> Self {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
        Self {
            bypass_protection,
            caller: Some(format!("cli:{user}")),
        }
    }
}

#[derive(Clone)]
pub struct Sites {
    store: Arc<dyn Store>,
    /// Where each region's sites live ([`crate::regions`]).
    regions: Arc<crate::regions::Regions>,
    gateway_domain: String,
    gateway_port: u16,
    pg_bin: Option<PathBuf>,
    pg_user: String,
    pg_strategy: String,
    pg_admin_url: String,
    maria_user: String,
    /// `logs.slow_query_ms`, for the servers started.
    slow_query_ms: u64,
    /// Per-site servers also on 127.0.0.1 (`postgres.tcp`, `mariadb.tcp`).
    pg_tcp: bool,
    maria_tcp: bool,
    /// Whose processes may pass a site's database sockets' folder.
    db_group: DbGroup,
    /// How long an operation waits for a busy site before giving up (none: at once).
    lock_wait: std::time::Duration,
}

/// What `site create` imports, each optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct Imports<'a> {
    pub files: Option<&'a Path>,
    pub sqlite: Option<&'a Path>,
    /// `postgres://...`: imported into a PostgreSQL server of the site's own.
    pub postgres: Option<&'a str>,
    /// `mysql://...`: imported into a MariaDB server of the site's own.
    pub mariadb: Option<&'a str>,
}

const MAIN_DB: &str = "main";

/// The group whose processes may reach a site's database servers through their socket folder:
/// the processes that run the site's code, as the runtime runs them.
#[derive(Debug, Clone)]
enum DbGroup {
    /// Endor is not root: every process runs as endor's own uid.
    Endor,
    /// The site's own gid (= its uid) from `runtime.uid_range`: isolation is on.
    PerSite(crate::config::UidRange),
    /// `runtime.user`'s group: no isolation, every site's code runs as that user.
    User(String),
}

impl DbGroup {
    fn of(config: &crate::config::Config) -> Self {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            DbGroup::Endor
        } else if config.runtime.isolation == crate::config::Isolation::Sandbox {
            DbGroup::PerSite(config.runtime.uid_range)
        } else {
            DbGroup::User(config.runtime.user.clone())
        }
    }
}

impl Sites {
    pub fn new(store: Arc<dyn Store>, config: &crate::config::Config) -> Self {
        Self {
            store,
            // Absolute roots, so paths in reports mean the same from any working directory.
            regions: Arc::new(crate::regions::Regions::new(config)),
            gateway_domain: config.gateway.domain.clone(),
            gateway_port: config.gateway.listen.port(),
            pg_bin: (!config.postgres.bin_dir.is_empty())
                .then(|| PathBuf::from(&config.postgres.bin_dir)),
            pg_user: config.postgres.os_user.clone(),
            pg_strategy: config.postgres.strategy.clone(),
            pg_admin_url: config.postgres.admin_url.clone(),
            maria_user: config.mariadb.os_user.clone(),
            slow_query_ms: config.logs.slow_query_ms,
            pg_tcp: config.postgres.tcp,
            maria_tcp: config.mariadb.tcp,
            db_group: DbGroup::of(config),
            lock_wait: std::time::Duration::ZERO,
        }
    }

    /// Wait up to `wait` for a site another operation holds, instead of failing at once with
    /// [`SiteError::Busy`] (the preview worker, whose jobs must not fail on a snapshot).
    pub fn waiting_for_locks(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// The `template` strategy's server for data at `at`: its region's, else
    /// `postgres.admin_url`.
    fn template(&self, at: &Path) -> Result<Template> {
        let url = self.admin_url(at);
        if url.is_empty() {
            return Err(SiteError::Invalid(
                "postgres.admin_url is not set (needed by strategy template)".into(),
            ));
        }
        Ok(Template::new(url)?)
    }

    fn admin_url(&self, at: &Path) -> &str {
        self.regions
            .region_at(at)
            .map(|r| r.postgres_admin_url.as_str())
            .filter(|u| !u.is_empty())
            .unwrap_or(&self.pg_admin_url)
    }

    /// The root (of some region) `path` is under: where its trash and reflink probe are.
    fn root_of_path(&self, path: &Path) -> PathBuf {
        self.regions.root_at(path).to_path_buf()
    }

    /// Refuse `requested` (a region or an alias) for a copy of site `src` unless it is `src`'s
    /// own region: a clone stays in its parent's region.
    pub async fn same_region(&self, src: &str, requested: Option<&str>) -> Result<()> {
        let Some(requested) = requested else {
            return Ok(());
        };
        let source = self.get(src).await?;
        let region = self
            .regions
            .resolve(Some(requested))
            .map_err(SiteError::Invalid)?;
        if region.name != source.region {
            return Err(SiteError::Invalid(format!(
                "{src} is in region {} and --region {requested} is {}: a clone stays in its \
                 parent's region (data does not move across regions)",
                source.region, region.name
            )));
        }
        Ok(())
    }

    /// The regions sites live in.
    pub fn regions(&self) -> &crate::regions::Regions {
        &self.regions
    }

    /// The database engine for a resource of `kind`. An existing resource (its directory
    /// `dir`) keeps the engine it was made with; a new PostgreSQL import follows
    /// `postgres.strategy`.
    fn server(&self, kind: &str, dir: &Path, existing: bool) -> Result<DbServer> {
        let template = || self.template(dir);
        let dir = existing.then_some(dir);
        let instance = || {
            PgTools::detect(self.pg_bin.as_deref(), &self.pg_user)
                .map(|t| t.slow_queries(self.slow_query_ms))
        };
        Ok(match (kind, dir) {
            ("postgres", Some(d)) if d.join("template.json").exists() => {
                DbServer::PostgresTemplate(template()?)
            }
            ("postgres", Some(_)) => DbServer::Postgres(instance()?),
            ("postgres", None) => match self.pg_strategy.as_str() {
                "template" => DbServer::PostgresTemplate(template()?),
                "instance" => DbServer::Postgres(instance()?),
                _ => match instance() {
                    Ok(t) => DbServer::Postgres(t),
                    Err(e) if self.admin_url(dir.unwrap_or(Path::new(""))).is_empty() => {
                        return Err(e.into());
                    }
                    Err(_) => DbServer::PostgresTemplate(template()?),
                },
            },
            ("mariadb", _) => DbServer::Mariadb(
                MariaTools::detect(&self.maria_user)?.slow_queries(self.slow_query_ms),
            ),
            (other, _) => return Err(SiteError::Invalid(format!("no server engine for {other}"))),
        })
    }

    /// How the site's own processes reach its server of `kind` (and nobody else's do).
    async fn db_access(&self, site: &Site, kind: &str) -> Result<Access> {
        let group = match &self.db_group {
            DbGroup::Endor => None,
            DbGroup::PerSite(r) => Some(
                self.store
                    .assign_site_uid(&site.id, r.first, r.last)
                    .await?,
            ),
            DbGroup::User(name) => Some(
                crate::unix::lookup_user(name)
                    .map_err(|e| SiteError::Invalid(format!("runtime.user: {e}")))?
                    .1,
            ),
        };
        let tcp = if kind == "postgres" {
            self.pg_tcp
        } else {
            self.maria_tcp
        };
        Ok(Access { group, tcp })
    }

    /// The folders of the site's database sockets, as `(short name, real folder)`: what its
    /// sandbox shows at the names its `DATABASE_URL` uses.
    pub async fn database_sockets(&self, site: &Site) -> Result<Vec<(PathBuf, PathBuf)>> {
        Ok(self
            .store
            .site_resources(&site.id)
            .await?
            .into_iter()
            .filter_map(|r| crate::clone::socket_link(&r.kind, Path::new(&r.location)))
            .collect())
    }

    /// The log files of the site's own database servers, as `(what, path)`
    /// ([`crate::clone::server_logs`]).
    pub async fn server_logs(&self, site: &Site) -> Result<Vec<(&'static str, PathBuf)>> {
        Ok(self
            .store
            .site_resources(&site.id)
            .await?
            .into_iter()
            .flat_map(|r| crate::clone::server_logs(&r.kind, Path::new(&r.location)))
            .collect())
    }

    /// Stop every database server under `dir` and drop every shared-server database recorded
    /// there (before the directory is removed).
    async fn stop_servers(&self, dir: &Path) -> Result<()> {
        let marks = [
            ("data/postmaster.pid", "postgres"),
            ("template.json", "postgres"),
            ("data/mariadbd.pid", "mariadb"),
        ];
        for (marker, kind) in marks {
            for found in find_marked(dir, marker) {
                self.server(kind, &found, true)?.remove(&found).await?;
            }
        }
        Ok(())
    }

    fn dir(&self, site: &Site) -> PathBuf {
        self.regions.root_of(&site.region).join(site.id.as_str())
    }

    /// The default region's storage root (absolute).
    pub fn root(&self) -> &Path {
        self.regions.root_of(self.regions.default_name())
    }

    /// Every storage root (absolute) a site's directory may be under: each region's.
    pub fn roots(&self) -> Vec<PathBuf> {
        self.regions.roots()
    }

    /// The directory holding everything of `site` (`{region's storage_root}/{site id}`).
    pub fn site_dir(&self, site: &Site) -> PathBuf {
        self.dir(site)
    }

    /// The site's live files (`ENDOR_FILES_DIR`).
    pub fn files_dir(&self, site: &Site) -> PathBuf {
        self.live(site).join("files")
    }

    /// The folder of the site's live data (`files/`, `sqlite/`, database servers' folders):
    /// what a sandbox binds, so data swapped in by a sync is seen at once.
    pub fn live_dir(&self, site: &Site) -> PathBuf {
        self.live(site)
    }

    /// The site's live data directories (files and SQLite databases), which its own processes
    /// may write.
    pub fn writable_dirs(&self, site: &Site) -> Vec<PathBuf> {
        vec![
            self.live(site).join("files"),
            self.live(site).join("sqlite"),
        ]
    }

    /// An empty site (no files, no databases) in the workspace `workspace_id` and the concrete
    /// region `region`.
    pub async fn create_empty(
        &self,
        name: &str,
        workspace_id: &WorkspaceId,
        region: &str,
    ) -> Result<Site> {
        validate_site_name(name)?;
        self.locked(
            &[(name, Mode::Exclusive)],
            "create",
            self.create_empty_locked(name, workspace_id, region),
        )
        .await
    }

    async fn create_empty_locked(
        &self,
        name: &str,
        workspace_id: &WorkspaceId,
        region: &str,
    ) -> Result<Site> {
        let site = self
            .store
            .create_site(&NewSite {
                name: name.into(),
                workspace_id: workspace_id.clone(),
                region: region.into(),
                parent_id: None,
                read_only: false,
            })
            .await?;
        if let Err(e) = self.import(&site, Imports::default()).await {
            self.discard(&site).await?;
            return Err(e);
        }
        self.store
            .set_site_state(&site.id, SiteState::Active)
            .await?;
        Ok(self.store.site(&site.id).await?.unwrap_or(site))
    }

    /// Delete the site with this id and everything it owns; nothing to do when it is gone.
    pub async fn discard_id(&self, id: &SiteId) -> Result<()> {
        let Some(site) = self.store.site(id).await? else {
            return Ok(());
        };
        if site.state == SiteState::Deleted {
            return Ok(());
        }
        self.locked(&[(&site.name, Mode::Exclusive)], "teardown", async {
            // Read again under the lock: another operation may have deleted it meanwhile.
            match self.store.site(id).await? {
                Some(site) if site.state != SiteState::Deleted => self.discard(&site).await,
                _ => Ok(()),
            }
        })
        .await
    }

    /// Remove a path under the storage root (through the trash).
    pub fn remove_path(&self, path: &Path) -> Result<()> {
        self.trash(path)
    }

    /// The site's database URLs, in resource order.
    pub async fn database_urls(&self, site: &Site) -> Result<Vec<(String, String)>> {
        Ok(self
            .store
            .site_resources(&site.id)
            .await?
            .into_iter()
            .filter_map(|r| database_url(&r.kind, &r.location).map(|u| (r.kind, u)))
            .collect())
    }

    fn live(&self, site: &Site) -> PathBuf {
        self.dir(site).join("live")
    }

    fn generation_dir(&self, site: &Site, seq: i64) -> PathBuf {
        self.dir(site).join("generations").join(seq.to_string())
    }

    /// Whether the file system of `site`'s region makes reflinks.
    fn reflink(&self, site: &Site) -> Result<bool> {
        self.reflink_at(&self.dir(site))
    }

    fn reflink_at(&self, path: &Path) -> Result<bool> {
        Ok(probe::reflink_supported(&self.root_of_path(path))?)
    }

    async fn get(&self, name: &str) -> Result<Site> {
        validate_site_name(name)?;
        self.store
            .site_by_name(name)
            .await?
            .ok_or_else(|| SiteError::NotFound(format!("site {name}")))
    }

    async fn record(
        &self,
        site: &Site,
        kind: &str,
        name: &str,
        location: &Path,
        s: &CloneStats,
    ) -> Result<ResourceReport> {
        let r = SiteResource {
            site_id: site.id.clone(),
            kind: kind.into(),
            name: name.into(),
            strategy: s.strategy.as_str().into(),
            location: location.display().to_string(),
            bytes_logical: s.bytes_logical as i64,
            bytes_written: s.bytes_written as i64,
            duration_us: s.duration_us as i64,
            updated_at: crate::now_ms(),
        };
        self.store.put_resource(&r).await?;
        Ok(r.into())
    }

    /// Create a site and import its data once (time proportional to its size).
    pub async fn create(
        &self,
        name: &str,
        workspace: &str,
        region: Option<&str>,
        imports: Imports<'_>,
    ) -> Result<OperationReport> {
        let Imports {
            files,
            sqlite: sqlite_db,
            postgres,
            mariadb,
        } = imports;
        validate_site_name(name)?;
        if let Some(url) = mariadb
            && !(url.starts_with("mysql://") || url.starts_with("mariadb://"))
        {
            return Err(SiteError::Invalid(
                "--mariadb must be a mysql:// URL".into(),
            ));
        }
        if let Some(url) = postgres
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(SiteError::Invalid(
                "--postgres must be a postgres:// URL".into(),
            ));
        }
        if let Some(r) = region {
            crate::service::validate_name("region", r)
                .map_err(|e| SiteError::Invalid(e.to_string()))?;
        }
        let region = self
            .regions
            .resolve(region)
            .map_err(SiteError::Invalid)?
            .name
            .clone();
        let ws = self
            .store
            .workspace_by_name(workspace)
            .await?
            .ok_or_else(|| SiteError::NotFound(format!("workspace {workspace}")))?;
        for (flag, p) in [("--files", files), ("--sqlite", sqlite_db)] {
            if let Some(p) = p
                && !p.exists()
            {
                return Err(SiteError::Invalid(format!(
                    "{flag} {}: no such file or directory",
                    p.display()
                )));
            }
        }
        self.locked(
            &[(name, Mode::Exclusive)],
            "create",
            self.create_locked(name, ws.id, &region, imports),
        )
        .await
    }

    async fn create_locked(
        &self,
        name: &str,
        workspace_id: WorkspaceId,
        region: &str,
        imports: Imports<'_>,
    ) -> Result<OperationReport> {
        let started = std::time::Instant::now();
        let site = self
            .store
            .create_site(&NewSite {
                name: name.into(),
                workspace_id,
                region: region.into(),
                parent_id: None,
                read_only: false,
            })
            .await?;
        let result = self.import(&site, imports).await;
        match result {
            Ok(resources) => {
                self.store
                    .set_site_state(&site.id, SiteState::Active)
                    .await?;
                tracing::info!(site = %name, "site created");
                Ok(OperationReport {
                    site: name.into(),
                    generation: None,
                    duration_ms: started.elapsed().as_millis() as u64,
                    resources,
                })
            }
            Err(e) => {
                // Leave nothing behind: the half-made site is deleted.
                self.discard(&site).await?;
                Err(e)
            }
        }
    }

    async fn import(&self, site: &Site, imports: Imports<'_>) -> Result<Vec<ResourceReport>> {
        let Imports {
            files,
            sqlite: sqlite_db,
            postgres,
            mariadb,
        } = imports;
        let reflink = self.reflink(site)?;
        let live = self.live(site);
        std::fs::create_dir_all(live.join("sqlite")).map_err(CloneError::io("mkdir", &live))?;
        let mut out = Vec::new();
        let files_dir = live.join("files");
        let stats = match files {
            Some(src) => {
                // An import copies bytes unless source and root share a reflink filesystem.
                let s = clone_tree(src, &files_dir, TreeOptions::new(reflink))?;
                CloneStats {
                    strategy: if s.strategy == Strategy::Reflink {
                        Strategy::Reflink
                    } else {
                        Strategy::Import
                    },
                    ..s
                }
            }
            None => {
                std::fs::create_dir_all(&files_dir).map_err(CloneError::io("mkdir", &files_dir))?;
                CloneStats::full_copy(Strategy::Import, 0, 0, std::time::Instant::now())
            }
        };
        out.push(
            self.record(site, "files", "files", &files_dir, &stats)
                .await?,
        );
        if let Some(src) = sqlite_db {
            let dest = live.join("sqlite").join(format!("{MAIN_DB}.db"));
            let stats = sqlite::import(src, &dest).await?;
            out.push(self.record(site, "sqlite", MAIN_DB, &dest, &stats).await?);
        }
        for (kind, url) in [("postgres", postgres), ("mariadb", mariadb)] {
            let Some(url) = url else { continue };
            let started = std::time::Instant::now();
            let dir = live.join(kind).join(MAIN_DB);
            let size = match self.server(kind, &dir, false)? {
                DbServer::Postgres(t) => {
                    let inst = t.create(&dir, self.db_access(site, kind).await?).await?;
                    t.import(&dir, &inst, url).await?;
                    tree_size(&pg::data_dir(&dir))
                }
                DbServer::PostgresTemplate(t) => {
                    let db = t.import(&dir, &db_name(&dir), url).await?;
                    t.size(&db.db).await?
                }
                DbServer::Mariadb(t) => {
                    t.create(&dir, self.db_access(site, kind).await?).await?;
                    t.import(&dir, url).await?;
                    tree_size(&maria::data_dir(&dir))
                }
            };
            let stats = CloneStats::full_copy(Strategy::Import, size, 0, started);
            out.push(self.record(site, kind, MAIN_DB, &dir, &stats).await?);
        }
        Ok(out)
    }

    /// The audit trail, all of it or one live site's (by name).
    /// The audit trail, all of it or that of every site ever named `site` (a deleted one's
    /// trail outlives it: its delete is often the line one looks for).
    pub async fn audit_trail(&self, site: Option<&str>) -> Result<Vec<crate::store::AuditEvent>> {
        let Some(name) = site else {
            return Ok(self.store.audit_events(None).await?);
        };
        validate_site_name(name)?;
        let ids = self.store.sites_ever_named(name).await?;
        if ids.is_empty() {
            return Err(SiteError::NotFound(format!("site {name} (never existed)")));
        }
        let mut out = Vec::new();
        for id in &ids {
            out.extend(self.store.audit_events(Some(id)).await?);
        }
        out.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    pub async fn show(&self, name: &str) -> Result<SiteDetails> {
        let site = self.get(name).await?;
        self.details(site).await
    }

    async fn details(&self, site: Site) -> Result<SiteDetails> {
        let parent = match &site.parent_id {
            Some(p) => self.store.site(p).await?.map(|s| s.name),
            None => None,
        };
        let resources = self.store.site_resources(&site.id).await?;
        let preview = match self.store.preview_by_site_name(&site.name).await? {
            Some(p) if p.site_id.as_ref() == Some(&site.id) => {
                let steps = self.store.last_run_steps(&p.id).await?;
                let repo = self
                    .store
                    .connection(&p.connection_id)
                    .await?
                    .map(|c| c.repo);
                Some((p, repo, steps))
            }
            _ => None,
        };
        let tags = self.store.site_tags(&site.id).await?;
        let generations = self.store.generations(&site.id).await?;
        Ok(self.assemble(site, parent, resources, preview, tags, generations))
    }

    /// A site's details from what the store holds of it (read one site at a time by
    /// [`Sites::details`], all at once by [`Sites::list`]).
    fn assemble(
        &self,
        site: Site,
        parent: Option<String>,
        resources: Vec<crate::store::SiteResource>,
        preview: Option<(
            crate::store::Preview,
            Option<String>,
            Vec<crate::store::PreviewStep>,
        )>,
        tags: Vec<String>,
        generations: Vec<crate::store::Generation>,
    ) -> SiteDetails {
        let resources: Vec<ResourceReport> = resources.into_iter().map(Into::into).collect();
        let database_urls = resources
            .iter()
            .filter_map(|r| database_url(&r.kind, &r.location))
            .collect();
        let preview = preview.map(|(p, repo, steps)| {
            let repo = repo.unwrap_or_else(|| p.connection_id.to_string());
            PreviewReport {
                name: format!("{repo}#{}", p.number),
                number: p.number,
                state: p.state,
                head_sha: p.head_sha,
                ready_sha: p.ready_sha,
                reason: p.reason,
                port: p.port,
                expires: p.expires_at.map(crate::duration::format_utc),
                expires_at: p.expires_at,
                steps: steps.into_iter().map(StepReport::from).collect(),
            }
        });
        SiteDetails {
            preview,
            tags,
            url: format!(
                "http://{}.{}:{}/",
                site.name, self.gateway_domain, self.gateway_port
            ),
            files_dir: self.files_dir(&site),
            generations: generations.into_iter().map(|g| g.seq).collect(),
            id: site.id,
            name: site.name,
            state: site.state,
            workspace_id: site.workspace_id,
            region_names: self.regions.names_of(&site.region),
            region: site.region,
            parent,
            protected: site.protected,
            read_only: site.read_only,
            database_urls,
            resources,
            created_at: site.created_at,
        }
    }

    /// Live sites, only those of `workspace_id` when given (filtered before their details are
    /// read) and only those tagged `tag` (case-insensitive) when given.
    pub async fn list(
        &self,
        workspace_id: Option<&WorkspaceId>,
        tag: Option<&str>,
    ) -> Result<Vec<SiteDetails>> {
        let tag = tag.map(|t| t.trim().to_ascii_lowercase());
        // A handful of queries for the whole list, whatever the number of sites.
        let all = self.store.list_sites().await?;
        let names: HashMap<SiteId, String> =
            all.iter().map(|s| (s.id.clone(), s.name.clone())).collect();
        let mut tags: HashMap<SiteId, Vec<String>> = HashMap::new();
        for (id, t) in self.store.all_site_tags().await? {
            tags.entry(id).or_default().push(t);
        }
        let mut resources: HashMap<SiteId, Vec<crate::store::SiteResource>> = HashMap::new();
        for r in self.store.all_site_resources().await? {
            resources.entry(r.site_id.clone()).or_default().push(r);
        }
        let mut generations: HashMap<SiteId, Vec<crate::store::Generation>> = HashMap::new();
        for g in self.store.all_generations().await? {
            generations.entry(g.site_id.clone()).or_default().push(g);
        }
        let mut previews: HashMap<SiteId, crate::store::Preview> = HashMap::new();
        for p in self.store.list_previews().await? {
            if let Some(id) = p.site_id.clone() {
                previews.insert(id, p);
            }
        }
        let mut steps: HashMap<crate::ids::PreviewId, Vec<crate::store::PreviewStep>> =
            HashMap::new();
        for st in self.store.all_last_run_steps().await? {
            steps.entry(st.preview_id.clone()).or_default().push(st);
        }
        let repos: HashMap<crate::ids::ConnectionId, String> = self
            .store
            .list_connections(None)
            .await?
            .into_iter()
            .map(|c| (c.id, c.repo))
            .collect();
        let mut out = Vec::new();
        for s in all {
            if workspace_id.is_some_and(|w| *w != s.workspace_id) {
                continue;
            }
            let site_tags = tags.remove(&s.id).unwrap_or_default();
            if tag.as_ref().is_some_and(|t| !site_tags.contains(t)) {
                continue;
            }
            let parent = s.parent_id.as_ref().and_then(|p| names.get(p).cloned());
            let preview = match previews.remove(&s.id) {
                Some(p) if p.site_name == s.name => {
                    let st = steps.remove(&p.id).unwrap_or_default();
                    let repo = repos.get(&p.connection_id).cloned();
                    Some((p, repo, st))
                }
                _ => None,
            };
            let r = resources.remove(&s.id).unwrap_or_default();
            let g = generations.remove(&s.id).unwrap_or_default();
            out.push(self.assemble(s, parent, r, preview, site_tags, g));
        }
        Ok(out)
    }

    /// Add (or remove) a tag; the tag rules of `crate::access::validate_tag` apply to adding.
    /// Returns the site's tags.
    pub async fn tag(&self, name: &str, tag: &str, add: bool) -> Result<Vec<String>> {
        let site = self.get(name).await?;
        if add {
            let t = crate::access::validate_tag(tag).map_err(SiteError::Invalid)?;
            self.store.add_site_tag(&site.id, &t).await?;
        } else {
            self.store
                .remove_site_tag(&site.id, &tag.trim().to_ascii_lowercase())
                .await?;
        }
        Ok(self.store.site_tags(&site.id).await?)
    }

    /// The protection rule (SPEC §7), in one place for every guarded operation: refused on a
    /// protected site unless the caller bypasses it, and then an audit line (log + store) names
    /// the caller, the operation and the site.
    pub async fn guard(&self, site: &Site, action: &'static str, guard: &Guard) -> Result<()> {
        if !site.protected {
            return Ok(());
        }
        if !guard.bypass_protection {
            return Err(SiteError::Protected(site.name.clone(), action));
        }
        let caller = guard.caller.as_deref().unwrap_or("unknown");
        tracing::warn!(target: "endor::audit", site = %site.name, caller, action, "production protection bypassed");
        self.store
            .record_audit(
                caller,
                "bypass_protection",
                Some(&site.id),
                &format!("{action} {}", site.name),
            )
            .await?;
        Ok(())
    }

    /// Turn protection on or off. Either way an audit line (log + store) names the caller, so
    /// protection is never dropped silently before a delete.
    pub async fn protect(&self, name: &str, on: bool, guard: &Guard) -> Result<()> {
        let site = self.get(name).await?;
        self.store.set_site_protected(&site.id, on).await?;
        let caller = guard.caller.as_deref().unwrap_or("unknown");
        let (action, detail) = if on {
            ("protect", format!("protection on for {}", site.name))
        } else {
            ("unprotect", format!("protection off for {}", site.name))
        };
        tracing::warn!(target: "endor::audit", site = %site.name, caller, action, "production protection changed");
        self.store
            .record_audit(caller, action, Some(&site.id), &detail)
            .await?;
        Ok(())
    }

    /// Delete a site and every resource it owns. Idempotent: a `deleting` site is finished.
    pub async fn delete(&self, name: &str, guard: Guard) -> Result<()> {
        validate_site_name(name)?;
        self.locked(&[(name, Mode::Exclusive)], "delete", async {
            // Any state: a delete finishes a site a crash left half made or half deleted.
            let site = self.get(name).await?;
            self.guard(&site, "delete", &guard).await?;
            self.discard(&site).await?;
            tracing::info!(site = %name, "site deleted");
            Ok(())
        })
        .await
    }
}

/// The connection URL of a database resource of `kind` at `location`.
fn database_url(kind: &str, location: &str) -> Option<String> {
    match kind {
        "sqlite" => Some(format!("sqlite://{location}")),
        kind => DbServer::url(kind, Path::new(location)),
    }
}

fn report(kind: &str, name: &str, location: &Path, s: &CloneStats) -> ResourceReport {
    ResourceReport {
        kind: kind.into(),
        name: name.into(),
        strategy: s.strategy.as_str().into(),
        location: location.display().to_string(),
        bytes_logical: s.bytes_logical as i64,
        bytes_written: s.bytes_written as i64,
        duration_ms: s.duration_us as f64 / 1000.0,
    }
}
