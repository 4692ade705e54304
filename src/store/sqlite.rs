//! The embedded default store: one SQLite file in WAL mode with `synchronous=FULL`, so a
//! committed transaction survives a crash of the process and of the machine. Writes of
//! deliveries are batched by [`super::DeliveryWriter`] (group commit), which is what makes
//! FULL durability affordable.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{
    Backend, Result, StoreError,
    sql::{enqueue_outbox_in, impl_store},
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
    /// For leases (site locks, the reaper's): they protect operations of live processes only,
    /// so their commits need not wait for the disk (`synchronous = NORMAL` in WAL mode survives
    /// a killed process; a power cut ends every holder anyway). A site lock costs a few
    /// commits per operation: at FULL each was an fsync.
    lease_pool: SqlitePool,
    keyring: std::sync::Arc<crate::secret::Keyring>,
}

impl SqliteStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        keyring: std::sync::Arc<crate::secret::Keyring>,
    ) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad sqlite url: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        if let Some(parent) = Path::new(opts.get_filename()).parent()
            && !parent.as_os_str().is_empty()
        {
            // Traverse-only for others: the storage root below it stays reachable by the
            // database servers' users, while nobody else can list it.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
                })?;
        }
        // The store holds every connection's webhook secret: made readable by endor alone
        // (SQLite gives its -wal and -shm files the same mode).
        let file = Path::new(opts.get_filename());
        if !file.as_os_str().is_empty() && !file.exists() && file != Path::new(":memory:") {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(file);
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(opts.clone())
            .await?;
        let lease_pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(opts.synchronous(SqliteSynchronous::Normal));
        Ok(Self {
            pool,
            lease_pool,
            keyring,
        })
    }
}

impl_store!(SqliteStore, Backend::Sqlite, MIGRATOR);
