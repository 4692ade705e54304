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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::clone::common::{find_marked, tree_size};
use crate::clone::files::{TreeOptions, clone_tree, remove_tree};
use crate::clone::mariadb::{self as maria, MariaTools};
use crate::clone::pg_template::Template;
use crate::clone::postgres::{self as pg, PgTools};
use crate::clone::{CloneError, CloneStats, Strategy, probe, sqlite};
use crate::clone::{DbServer, db_name};
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
#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
pub struct SiteDetails {
    pub id: SiteId,
    pub name: String,
    pub state: SiteState,
    pub workspace_id: WorkspaceId,
    pub region: String,
    pub parent: Option<String>,
    pub protected: bool,
    pub read_only: bool,
    pub url: String,
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

#[derive(Debug, Clone, Serialize)]
pub struct PreviewReport {
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

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub ok: Option<bool>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
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

pub struct Sites {
    store: Arc<dyn Store>,
    root: PathBuf,
    gateway_domain: String,
    gateway_port: u16,
    pg_bin: Option<PathBuf>,
    pg_user: String,
    pg_strategy: String,
    pg_admin_url: String,
    maria_user: String,
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

impl Sites {
    pub fn new(store: Arc<dyn Store>, config: &crate::config::Config) -> Self {
        Self {
            store,
            // Absolute, so paths in reports mean the same from any working directory.
            root: std::path::absolute(&config.storage.root)
                .unwrap_or_else(|_| config.storage.root.clone()),
            gateway_domain: config.gateway.domain.clone(),
            gateway_port: config.gateway.listen.port(),
            pg_bin: (!config.postgres.bin_dir.is_empty())
                .then(|| PathBuf::from(&config.postgres.bin_dir)),
            pg_user: config.postgres.os_user.clone(),
            pg_strategy: config.postgres.strategy.clone(),
            pg_admin_url: config.postgres.admin_url.clone(),
            maria_user: config.mariadb.os_user.clone(),
        }
    }

    fn template(&self) -> Result<Template> {
        if self.pg_admin_url.is_empty() {
            return Err(SiteError::Invalid(
                "postgres.admin_url is not set (needed by strategy template)".into(),
            ));
        }
        Ok(Template::new(&self.pg_admin_url)?)
    }

    /// The database engine for a resource of `kind`. An existing resource (its directory
    /// `dir`) keeps the engine it was made with; a new PostgreSQL import follows
    /// `postgres.strategy`.
    fn server(&self, kind: &str, dir: Option<&Path>) -> Result<DbServer> {
        let instance = || PgTools::detect(self.pg_bin.as_deref(), &self.pg_user);
        Ok(match (kind, dir) {
            ("postgres", Some(d)) if d.join("template.json").exists() => {
                DbServer::PostgresTemplate(self.template()?)
            }
            ("postgres", Some(_)) => DbServer::Postgres(instance()?),
            ("postgres", None) => match self.pg_strategy.as_str() {
                "template" => DbServer::PostgresTemplate(self.template()?),
                "instance" => DbServer::Postgres(instance()?),
                _ => match instance() {
                    Ok(t) => DbServer::Postgres(t),
                    Err(e) if self.pg_admin_url.is_empty() => return Err(e.into()),
                    Err(_) => DbServer::PostgresTemplate(self.template()?),
                },
            },
            ("mariadb", _) => DbServer::Mariadb(MariaTools::detect(&self.maria_user)?),
            (other, _) => return Err(SiteError::Invalid(format!("no server engine for {other}"))),
        })
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
                self.server(kind, Some(&found))?.remove(&found).await?;
            }
        }
        Ok(())
    }

    fn dir(&self, site: &Site) -> PathBuf {
        self.root.join(site.id.as_str())
    }

    /// The storage root (absolute) every site's directory is under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding everything of `site` (`{storage.root}/{site id}`).
    pub fn site_dir(&self, site: &Site) -> PathBuf {
        self.dir(site)
    }

    /// The site's live files (`ENDOR_FILES_DIR`).
    pub fn files_dir(&self, site: &Site) -> PathBuf {
        self.live(site).join("files")
    }

    /// The site's live data directories (files and SQLite databases), which its own processes
    /// may write.
    pub fn writable_dirs(&self, site: &Site) -> Vec<PathBuf> {
        vec![
            self.live(site).join("files"),
            self.live(site).join("sqlite"),
        ]
    }

    /// An empty site (no files, no databases) in the workspace `workspace_id`.
    pub async fn create_empty(&self, name: &str, workspace_id: &WorkspaceId) -> Result<Site> {
        validate_site_name(name)?;
        let site = self
            .store
            .create_site(&NewSite {
                name: name.into(),
                workspace_id: workspace_id.clone(),
                region: "default".into(),
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
        match self.store.site(id).await? {
            Some(site) if site.state != SiteState::Deleted => self.discard(&site).await,
            _ => Ok(()),
        }
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

    fn reflink(&self) -> Result<bool> {
        Ok(probe::reflink_supported(&self.root)?)
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
        region: &str,
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
        crate::service::validate_name("region", region)
            .map_err(|e| SiteError::Invalid(e.to_string()))?;
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
        let started = std::time::Instant::now();
        let site = self
            .store
            .create_site(&NewSite {
                name: name.into(),
                workspace_id: ws.id,
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
        let reflink = self.reflink()?;
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
            let size = match self.server(kind, None)? {
                DbServer::Postgres(t) => {
                    let inst = t.create(&dir).await?;
                    t.import(&dir, &inst, url).await?;
                    tree_size(&pg::data_dir(&dir))
                }
                DbServer::PostgresTemplate(t) => {
                    let db = t.import(&dir, &db_name(&dir), url).await?;
                    t.size(&db.db).await?
                }
                DbServer::Mariadb(t) => {
                    t.create(&dir).await?;
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
    pub async fn audit_trail(&self, site: Option<&str>) -> Result<Vec<crate::store::AuditEvent>> {
        let site_id = match site {
            None => None,
            Some(name) => Some(self.get(name).await?.id),
        };
        Ok(self.store.audit_events(site_id.as_ref()).await?)
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
        let resources: Vec<ResourceReport> = self
            .store
            .site_resources(&site.id)
            .await?
            .into_iter()
            .map(Into::into)
            .collect();
        let database_urls = resources
            .iter()
            .filter_map(|r| database_url(&r.kind, &r.location))
            .collect();
        let preview = match self.store.preview_by_site_name(&site.name).await? {
            Some(p) if p.site_id.as_ref() == Some(&site.id) => {
                let steps = self
                    .store
                    .last_run_steps(&p.id)
                    .await?
                    .into_iter()
                    .map(|s| StepReport {
                        duration_ms: s.ended_at.map(|e| e - s.started_at),
                        step: s.step,
                        started_at: s.started_at,
                        ended_at: s.ended_at,
                        ok: s.ok.map(|o| o != 0),
                        detail: s.detail,
                    })
                    .collect();
                Some(PreviewReport {
                    number: p.number,
                    state: p.state,
                    head_sha: p.head_sha,
                    ready_sha: p.ready_sha,
                    reason: p.reason,
                    port: p.port,
                    expires: p.expires_at.map(crate::duration::format_utc),
                    expires_at: p.expires_at,
                    steps,
                })
            }
            _ => None,
        };
        Ok(SiteDetails {
            preview,
            tags: self.store.site_tags(&site.id).await?,
            url: format!(
                "http://{}.{}:{}/",
                site.name, self.gateway_domain, self.gateway_port
            ),
            files_dir: self.files_dir(&site),
            generations: self
                .store
                .generations(&site.id)
                .await?
                .into_iter()
                .map(|g| g.seq)
                .collect(),
            id: site.id,
            name: site.name,
            state: site.state,
            workspace_id: site.workspace_id,
            region: site.region,
            parent,
            protected: site.protected,
            read_only: site.read_only,
            database_urls,
            resources,
            created_at: site.created_at,
        })
    }

    /// Live sites, only those of `workspace_id` when given (filtered before their details are
    /// read) and only those tagged `tag` (case-insensitive) when given.
    pub async fn list(
        &self,
        workspace_id: Option<&WorkspaceId>,
        tag: Option<&str>,
    ) -> Result<Vec<SiteDetails>> {
        let tag = tag.map(|t| t.trim().to_ascii_lowercase());
        let mut out = Vec::new();
        for s in self.store.list_sites().await? {
            if workspace_id.is_some_and(|w| *w != s.workspace_id) {
                continue;
            }
            let d = self.details(s).await?;
            if tag.as_ref().is_none_or(|t| d.tags.contains(t)) {
                out.push(d);
            }
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

    pub async fn protect(&self, name: &str, on: bool) -> Result<()> {
        let site = self.get(name).await?;
        self.store.set_site_protected(&site.id, on).await?;
        Ok(())
    }

    /// Freeze a consistent generation of the site's files and databases.
    pub async fn snapshot(&self, name: &str) -> Result<OperationReport> {
        let site = self.get(name).await?;
        self.snapshot_site(&site).await
    }

    async fn snapshot_site(&self, site: &Site) -> Result<OperationReport> {
        let started = std::time::Instant::now();
        let reflink = self.reflink()?;
        let gen_row = self.store.add_generation(&site.id).await?;
        let dir = self.generation_dir(site, gen_row.seq);
        let live = self.live(site);
        let made = async {
            std::fs::create_dir_all(dir.join("sqlite")).map_err(CloneError::io("mkdir", &dir))?;
            let mut resources = Vec::new();
            let files = clone_tree(
                &live.join("files"),
                &dir.join("files"),
                TreeOptions::new(reflink),
            )?;
            resources.push(report("files", "files", &dir.join("files"), &files));
            for r in self.store.site_resources(&site.id).await? {
                if r.kind == "sqlite" {
                    let dest = dir.join("sqlite").join(format!("{}.db", r.name));
                    let s = sqlite::snapshot(Path::new(&r.location), &dest, reflink).await?;
                    resources.push(report("sqlite", &r.name, &dest, &s));
                } else if r.kind == "postgres" || r.kind == "mariadb" {
                    let dest = dir.join(&r.kind).join(&r.name);
                    let s = self
                        .server(&r.kind, Some(Path::new(&r.location)))?
                        .snapshot(Path::new(&r.location), &dest, reflink)
                        .await?;
                    resources.push(report(&r.kind, &r.name, &dest, &s));
                }
            }
            Ok::<_, SiteError>(resources)
        }
        .await;
        match made {
            Ok(resources) => {
                self.prune_generations(site, 2).await?;
                tracing::info!(site = %site.name, generation = gen_row.seq, "generation frozen");
                Ok(OperationReport {
                    site: site.name.clone(),
                    generation: Some(gen_row.seq),
                    duration_ms: started.elapsed().as_millis() as u64,
                    resources,
                })
            }
            Err(e) => {
                self.store.delete_generation(&gen_row.id).await?;
                self.trash(&dir)?;
                Err(e)
            }
        }
    }

    /// Keep the newest `keep` generations; older ones are removed.
    async fn prune_generations(&self, site: &Site, keep: usize) -> Result<()> {
        let gens = self.store.generations(&site.id).await?;
        for g in gens.iter().take(gens.len().saturating_sub(keep)) {
            self.trash(&self.generation_dir(site, g.seq))?;
            self.store.delete_generation(&g.id).await?;
        }
        Ok(())
    }

    /// Copy the newest generation of `src` (freezing one if none exists) into `dst`'s live data.
    async fn clone_generation_into(
        &self,
        src: &Site,
        dst: &Site,
        live: &Path,
        read_only: bool,
        files: bool,
        db: bool,
    ) -> Result<(i64, Vec<ResourceReport>)> {
        let seq = match self.store.generations(&src.id).await?.last() {
            Some(g) => g.seq,
            None => self.snapshot_site(src).await?.generation.unwrap_or(1),
        };
        let gen_dir = self.generation_dir(src, seq);
        let reflink = self.reflink()?;
        let mut out = Vec::new();
        if files {
            let dest = live.join("files");
            let s = clone_tree(
                &gen_dir.join("files"),
                &dest,
                TreeOptions {
                    read_only,
                    ..TreeOptions::new(reflink)
                },
            )?;
            out.push(
                self.record(dst, "files", "files", &self.live(dst).join("files"), &s)
                    .await?,
            );
        }
        if db {
            std::fs::create_dir_all(live.join("sqlite")).map_err(CloneError::io("mkdir", live))?;
            for r in self.store.site_resources(&src.id).await? {
                if r.kind == "postgres" || r.kind == "mariadb" {
                    // A server runs from its directory: the target's is stopped and replaced in
                    // place (a brief outage of the target only, never of the source).
                    let gen_res = gen_dir.join(&r.kind).join(&r.name);
                    let server = self.server(&r.kind, Some(&gen_res))?;
                    let target = self.live(dst).join(&r.kind).join(&r.name);
                    server.remove(&target).await?;
                    self.trash(&target)?;
                    let parent = self.live(dst).join(&r.kind);
                    std::fs::create_dir_all(&parent).map_err(CloneError::io("mkdir", &parent))?;
                    let s = server
                        .clone_generation(&gen_dir.join(&r.kind).join(&r.name), &target, reflink)
                        .await?;
                    out.push(self.record(dst, &r.kind, &r.name, &target, &s).await?);
                }
                if r.kind == "sqlite" {
                    let file = format!("{}.db", r.name);
                    let s = sqlite::clone_snapshot(
                        &gen_dir.join("sqlite").join(&file),
                        &live.join("sqlite").join(&file),
                        reflink,
                    )?;
                    out.push(
                        self.record(
                            dst,
                            "sqlite",
                            &r.name,
                            &self.live(dst).join("sqlite").join(&file),
                            &s,
                        )
                        .await?,
                    );
                }
            }
        }
        Ok((seq, out))
    }

    /// A new site `dst` whose data is a clone of `src`'s newest generation. When `dst` exists
    /// already, its files and databases are replaced by the clone (a clone *into* it: guarded
    /// like a sync, so a protected `dst` needs the bypass).
    pub async fn clone_site(
        &self,
        src: &str,
        dst: &str,
        read_only: bool,
        guard: Guard,
    ) -> Result<OperationReport> {
        let started = std::time::Instant::now();
        let source = self.get(src).await?;
        validate_site_name(dst)?;
        if let Some(existing) = self.store.site_by_name(dst).await? {
            if existing.id == source.id {
                return Err(SiteError::Invalid("cannot clone a site into itself".into()));
            }
            if existing.workspace_id != source.workspace_id {
                return Err(SiteError::Invalid(format!(
                    "site {dst} is in another workspace than {src}"
                )));
            }
            self.guard(&existing, "clone into", &guard).await?;
            return self
                .replace_data(&source, &existing, true, true, started)
                .await;
        }
        let site = self
            .store
            .create_site(&NewSite {
                name: dst.into(),
                workspace_id: source.workspace_id.clone(),
                region: source.region.clone(),
                parent_id: Some(source.id.clone()),
                read_only,
            })
            .await?;
        let live = self.live(&site);
        let made = async {
            std::fs::create_dir_all(&live).map_err(CloneError::io("mkdir", &live))?;
            self.clone_generation_into(&source, &site, &live, read_only, true, true)
                .await
        }
        .await;
        match made {
            Ok((seq, resources)) => {
                self.store
                    .set_site_state(&site.id, SiteState::Active)
                    .await?;
                tracing::info!(src = %src, site = %dst, generation = seq, "site cloned");
                Ok(OperationReport {
                    site: dst.into(),
                    generation: Some(seq),
                    duration_ms: started.elapsed().as_millis() as u64,
                    resources,
                })
            }
            Err(e) => {
                self.discard(&site).await?;
                Err(e)
            }
        }
    }

    /// Replace `dst`'s files and/or databases by a fresh clone of `src`'s newest generation.
    /// The new data is built beside the old and swapped in by renames.
    pub async fn sync(
        &self,
        src: &str,
        dst: &str,
        files: bool,
        db: bool,
        guard: Guard,
    ) -> Result<OperationReport> {
        let started = std::time::Instant::now();
        let source = self.get(src).await?;
        let target = self.get(dst).await?;
        if source.id == target.id {
            return Err(SiteError::Invalid("cannot sync a site into itself".into()));
        }
        self.guard(&target, "sync into", &guard).await?;
        let (files, db) = if files || db {
            (files, db)
        } else {
            (true, true)
        };
        self.replace_data(&source, &target, files, db, started)
            .await
    }

    /// Build `target`'s new files and/or databases beside the old from `source`'s newest
    /// generation and swap them in by renames.
    async fn replace_data(
        &self,
        source: &Site,
        target: &Site,
        files: bool,
        db: bool,
        started: std::time::Instant,
    ) -> Result<OperationReport> {
        let dst = target.name.as_str();
        let staging = self
            .dir(target)
            .join(format!("incoming-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&staging).map_err(CloneError::io("mkdir", &staging))?;
        let made = self
            .clone_generation_into(source, target, &staging, target.read_only, files, db)
            .await;
        let (seq, resources) = match made {
            Ok(v) => v,
            Err(e) => {
                self.trash(&staging)?;
                return Err(e);
            }
        };
        let live = self.live(target);
        let swap = |name: &str| -> Result<()> {
            let new = staging.join(name);
            if !new.exists() {
                return Ok(());
            }
            let cur = live.join(name);
            self.trash(&cur)?;
            std::fs::rename(&new, &cur).map_err(CloneError::io("rename", &new))?;
            Ok(())
        };
        if files {
            swap("files")?;
        }
        if db {
            swap("sqlite")?;
        }
        self.trash(&staging)?;
        Ok(OperationReport {
            site: dst.into(),
            generation: Some(seq),
            duration_ms: started.elapsed().as_millis() as u64,
            resources,
        })
    }

    /// Delete a site and every resource it owns. Idempotent: a `deleting` site is finished.
    pub async fn delete(&self, name: &str, guard: Guard) -> Result<()> {
        let site = self.get(name).await?;
        self.guard(&site, "delete", &guard).await?;
        self.discard(&site).await?;
        tracing::info!(site = %name, "site deleted");
        Ok(())
    }

    async fn discard(&self, site: &Site) -> Result<()> {
        self.store
            .set_site_state(&site.id, SiteState::Deleting)
            .await?;
        // Servers first: a running server must never lose its directory under it.
        self.stop_servers(&self.dir(site)).await?;
        self.trash(&self.dir(site))?;
        self.store.delete_resources(&site.id).await?;
        for g in self.store.generations(&site.id).await? {
            self.store.delete_generation(&g.id).await?;
        }
        self.store
            .set_site_state(&site.id, SiteState::Deleted)
            .await?;
        Ok(())
    }

    /// Move `path` into the trash and empty the trash. A crash between the two leaves only
    /// trash, which the sweep removes.
    fn trash(&self, path: &Path) -> Result<()> {
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        let trash = self.root.join(".trash");
        std::fs::create_dir_all(&trash).map_err(CloneError::io("mkdir", &trash))?;
        let dest = trash.join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::rename(path, &dest).map_err(CloneError::io("rename", path))?;
        remove_tree(&dest)?;
        Ok(())
    }

    /// Remove what no live site owns: directories under the storage root that are not a live
    /// site's (older than `grace`, so a site being created is never swept) and the trash.
    pub async fn sweep(&self, grace: std::time::Duration, dry_run: bool) -> Result<SweepReport> {
        let mut report = SweepReport {
            dry_run,
            ..Default::default()
        };
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Ok(report);
        };
        let live: std::collections::HashSet<SiteId> = self
            .store
            .list_sites()
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let orphan = if name == ".trash" {
                std::fs::read_dir(&path)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false)
            } else if name.starts_with(".endor-probe-") {
                false
            } else {
                !live.contains(&SiteId::from(name.as_str())) && older_than(&path, grace)
            };
            if !orphan {
                continue;
            }
            report.removed.push(path.clone());
            if !dry_run {
                self.stop_servers(&path).await?;
                if name == ".trash" {
                    remove_tree(&path)?;
                } else {
                    self.trash(&path)?;
                }
            }
        }
        if !report.removed.is_empty() {
            tracing::info!(
                count = report.removed.len(),
                dry_run,
                "orphaned site data swept"
            );
        }
        Ok(report)
    }
}

/// The connection URL of a database resource of `kind` at `location`.
fn database_url(kind: &str, location: &str) -> Option<String> {
    match kind {
        "sqlite" => Some(format!("sqlite://{location}")),
        kind => DbServer::url(kind, Path::new(location)),
    }
}

fn older_than(path: &Path, grace: std::time::Duration) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().unwrap_or_default() >= grace)
        .unwrap_or(true)
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
