//! The clone engine: copy-on-write copies of a site's files and databases, in time that does not
//! grow with the data where the storage has reflink (XFS with `reflink=1`, btrfs), and a
//! parallel copy where it has not — never silently: every operation reports the strategy it
//! used, and a storage root without reflink is logged as such.
//!
//! One file per engine (`files.rs`, `sqlite.rs`); `probe.rs` finds out once per storage root
//! whether reflink works there. This module knows nothing of sites, the store or HTTP: it
//! copies paths it is given. Path safety (names → paths) is the caller's (`sites.rs`).

pub mod common;
pub mod files;
pub mod mariadb;
pub mod pg_template;
pub mod postgres;
pub mod probe;
pub mod sqlite;

use std::path::{Path, PathBuf};

pub use common::Access;

use serde::Serialize;

/// How a resource was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Copy-on-write: extents shared, nothing written but metadata.
    Reflink,
    /// Bytes copied (no reflink on this storage, or a fallback midway).
    Copy,
    /// SQLite `VACUUM INTO`: a consistent copy through SQLite itself.
    VacuumInto,
    /// A first import of outside data into a site (proportional to its size).
    Import,
    /// A database server of the site's own on a reflinked data directory.
    Instance,
    /// The same, where the data directory had to be copied (no reflink).
    InstanceCopy,
    /// `CREATE DATABASE ... TEMPLATE` on a shared PostgreSQL server.
    Template,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Reflink => "reflink",
            Strategy::Copy => "copy",
            Strategy::VacuumInto => "vacuum-into",
            Strategy::Import => "import",
            Strategy::Instance => "instance",
            Strategy::InstanceCopy => "instance-copy",
            Strategy::Template => "template",
        }
    }
}

/// What one copy of one resource cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloneStats {
    pub strategy: Strategy,
    /// Bytes of the data as seen by readers.
    pub bytes_logical: u64,
    /// Bytes of file data really written (0 for a pure reflink).
    pub bytes_written: u64,
    pub files: u64,
    /// Files that fell back from reflink to copy midway (EXDEV, EOPNOTSUPP...).
    pub fallbacks: u64,
    pub duration_us: u64,
}

impl CloneStats {
    /// A copy that wrote every byte it holds (imports, dumps, `VACUUM INTO`), started at
    /// `started`.
    pub fn full_copy(
        strategy: Strategy,
        bytes: u64,
        files: u64,
        started: std::time::Instant,
    ) -> Self {
        Self {
            strategy,
            bytes_logical: bytes,
            bytes_written: bytes,
            files,
            fallbacks: 0,
            duration_us: started.elapsed().as_micros() as u64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sqlite {path}: {source}")]
    Sqlite { path: PathBuf, source: sqlx::Error },
    #[error("{0}")]
    Refused(String),
}

impl CloneError {
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> CloneError + 'a {
        move |source| CloneError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The engines that give each site a database server of its own (strategy `instance`).
#[derive(Debug, Clone)]
pub enum DbServer {
    Postgres(postgres::PgTools),
    PostgresTemplate(pg_template::Template),
    Mariadb(mariadb::MariaTools),
}

impl DbServer {
    /// The resource kind these servers are recorded under (`postgres`, `mariadb`).
    pub fn kind(&self) -> &'static str {
        match self {
            DbServer::Postgres(_) | DbServer::PostgresTemplate(_) => "postgres",
            DbServer::Mariadb(_) => "mariadb",
        }
    }

    /// Freeze a consistent generation of the running instance `live` into `gen_dir`.
    pub async fn snapshot(
        &self,
        live: &Path,
        gen_dir: &Path,
        reflink: bool,
    ) -> Result<CloneStats, CloneError> {
        match self {
            DbServer::Postgres(t) => t.snapshot(live, gen_dir, reflink).await,
            DbServer::PostgresTemplate(t) => t.snapshot(live, gen_dir, &db_name(gen_dir)).await,
            DbServer::Mariadb(t) => t.snapshot(live, gen_dir).await,
        }
    }

    /// A running instance in `dst` cloned from the generation in `gen_dir`.
    pub async fn clone_generation(
        &self,
        gen_dir: &Path,
        dst: &Path,
        reflink: bool,
        access: Access,
    ) -> Result<CloneStats, CloneError> {
        Ok(match self {
            DbServer::Postgres(t) => t.clone_generation(gen_dir, dst, reflink, access).await?.1,
            DbServer::PostgresTemplate(t) => {
                t.clone_generation(gen_dir, dst, &db_name(dst)).await?
            }
            DbServer::Mariadb(t) => t.clone_generation(gen_dir, dst, reflink, access).await?.1,
        })
    }

    /// Stop the instance in `dir` (its files go with the directory), or drop the template
    /// database recorded there.
    pub async fn remove(&self, dir: &Path) -> Result<(), CloneError> {
        match self {
            DbServer::Postgres(t) => t.stop(dir).await,
            DbServer::PostgresTemplate(t) => t.drop(dir).await,
            DbServer::Mariadb(t) => t.stop(dir).await,
        }
    }

    /// The connection URL (with the application's credentials) of the instance in `dir`.
    pub fn url(kind: &str, dir: &Path) -> Option<String> {
        match kind {
            "postgres" if dir.join("template.json").exists() => {
                pg_template::load(dir).ok().map(|d| d.url())
            }
            "postgres" => postgres::load(dir).ok().map(|i| i.url(dir)),
            "mariadb" => mariadb::load(dir).ok().map(|i| i.url(dir)),
            _ => None,
        }
    }
}

/// The socket folder of the per-site server in `dir` (kind `postgres` or `mariadb`), as
/// `(short name, real folder)`: what a sandbox shows its site at the short name the URL
/// uses. `None` for databases on a shared server and for folders without a server.
pub fn socket_link(kind: &str, dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let alias = match kind {
        "postgres" if dir.join("instance.json").exists() => postgres::run_dir(dir),
        "mariadb" if dir.join("instance.json").exists() => mariadb::run_dir(dir),
        _ => return None,
    };
    Some((alias, common::socket_dir(dir)))
}

/// The log files the per-site server in `dir` writes, as `(what, path)`: `postgres` (its
/// stderr), `mariadb` (its error log), `mariadb-slow` (its slow query log). Empty for
/// databases on a shared server.
pub fn server_logs(kind: &str, dir: &Path) -> Vec<(&'static str, PathBuf)> {
    if !dir.join("instance.json").exists() {
        return Vec::new();
    }
    match kind {
        "postgres" => vec![("postgres", dir.join("server.log"))],
        "mariadb" => vec![
            ("mariadb", dir.join("server.log")),
            ("mariadb-slow", dir.join("slow.log")),
        ],
        _ => Vec::new(),
    }
}

/// A database name on a shared server for the resource directory `dir`: derived from the
/// path (site id, generation, resource), so it is unique, stable and made of hex only.
pub fn db_name(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    format!("endor_{}", hex::encode(&digest[..12]))
}
