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
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(url)
            .await?;
        Ok(Self { pool })
    }
}

impl_store!(PgStore, Backend::Postgres, MIGRATOR);
