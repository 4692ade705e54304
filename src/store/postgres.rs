//! PostgreSQL store, for several `endor serve` processes sharing one database (SPEC §9).

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::{
    Backend, Result,
    sql::{enqueue_outbox_in, impl_store},
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PgStore {
    pool: PgPool,
    /// For leases (site locks, the reaper's): they protect operations of live processes only,
    /// so their commits need not wait for the WAL flush (`synchronous_commit = off`).
    lease_pool: PgPool,
    keyring: std::sync::Arc<crate::secret::Keyring>,
}

impl PgStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        keyring: std::sync::Arc<crate::secret::Keyring>,
    ) -> Result<Self> {
        use std::str::FromStr;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(url)
            .await?;
        let opts = sqlx::postgres::PgConnectOptions::from_str(url)?
            .options([("synchronous_commit", "off")]);
        let lease_pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(opts);
        Ok(Self {
            pool,
            lease_pool,
            keyring,
        })
    }
}

impl_store!(PgStore, Backend::Postgres, MIGRATOR);
