//! SQLite databases: a consistent snapshot of a live database, and clones of snapshots.
//!
//! Snapshot with reflink: take the write lock (`BEGIN IMMEDIATE`: readers go on, writers wait a
//! few milliseconds), reflink the database file and its WAL, release. No commit can be half in
//! the copy: every committed frame is in the WAL or the file, and a WAL restart needs the lock
//! we hold. Without reflink: `VACUUM INTO`, SQLite's own consistent copy (proportional to size).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};

use super::files::{TreeOptions, clone_file};
use super::{CloneError, CloneStats, Strategy};

fn wal_of(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

async fn open(path: &Path) -> Result<SqliteConnection, CloneError> {
    let err = |source| CloneError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let opts = SqliteConnectOptions::from_str("sqlite://")
        .map_err(err)?
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(30))
        .log_statements(tracing::log::LevelFilter::Trace);
    opts.connect().await.map_err(err)
}

/// Freeze a consistent copy of the live database `live` at `dest` (which must not exist).
pub async fn snapshot(live: &Path, dest: &Path, reflink: bool) -> Result<CloneStats, CloneError> {
    let started = Instant::now();
    if dest.exists() {
        return Err(CloneError::Refused(format!(
            "{} already exists",
            dest.display()
        )));
    }
    let mut conn = open(live).await?;
    let sql_err = |source| CloneError::Sqlite {
        path: live.to_path_buf(),
        source,
    };
    let stats = if reflink {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .map_err(sql_err)?;
        let result = copy_db_files(live, dest, true);
        // Release the write lock whatever happened; nothing was written.
        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
        result?
    } else {
        sqlx::query("VACUUM INTO $1")
            .bind(dest.to_string_lossy().as_ref())
            .execute(&mut conn)
            .await
            .map_err(sql_err)?;
        let size = std::fs::metadata(dest)
            .map_err(CloneError::io("stat", dest))?
            .len();
        CloneStats::full_copy(Strategy::VacuumInto, size, 1, started)
    };
    let _ = conn.close().await;
    Ok(CloneStats {
        duration_us: started.elapsed().as_micros() as u64,
        ..stats
    })
}

/// Import an outside database once: `VACUUM INTO` gives a consistent, compact copy even of a
/// database in use.
pub async fn import(source: &Path, dest: &Path) -> Result<CloneStats, CloneError> {
    let stats = snapshot(source, dest, false).await?;
    Ok(CloneStats {
        strategy: Strategy::Import,
        ..stats
    })
}

/// Clone a frozen snapshot (database file and WAL, if any) to `dest`.
pub fn clone_snapshot(
    snapshot: &Path,
    dest: &Path,
    reflink: bool,
) -> Result<CloneStats, CloneError> {
    let started = Instant::now();
    let stats = copy_db_files(snapshot, dest, reflink)?;
    Ok(CloneStats {
        duration_us: started.elapsed().as_micros() as u64,
        ..stats
    })
}

fn copy_db_files(from: &Path, to: &Path, reflink: bool) -> Result<CloneStats, CloneError> {
    let opts = TreeOptions::new(reflink);
    let mut stats = CloneStats {
        strategy: Strategy::Reflink,
        bytes_logical: 0,
        bytes_written: 0,
        files: 0,
        fallbacks: 0,
        duration_us: 0,
    };
    for (src, dst) in [
        (from.to_path_buf(), to.to_path_buf()),
        (wal_of(from), wal_of(to)),
    ] {
        let meta = match std::fs::metadata(&src) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && src != from => continue, // no WAL
            Err(e) => {
                return Err(CloneError::Io {
                    op: "stat",
                    path: src,
                    source: e,
                });
            }
        };
        stats.files += 1;
        stats.bytes_logical += meta.len();
        if let super::files::FileOutcome::Copied { fallback } = clone_file(&src, &dst, &meta, opts)?
        {
            stats.bytes_written += meta.len();
            stats.fallbacks += fallback as u64;
            stats.strategy = Strategy::Copy;
        }
    }
    if !reflink {
        stats.strategy = Strategy::Copy;
    }
    Ok(stats)
}
