//! The one body of SQL both backends run. `impl_store!` expands it for a store type whose
//! `pool` field is a `sqlx::Pool` of the given database: the queries are written once, so the
//! SQLite and PostgreSQL implementations cannot drift apart. One file per group of aggregates
//! (`accounts.rs`, `sites.rs`, …), each a macro that `impl_store!` expands; this file holds the
//! row types and the statements several of them share.

pub(super) mod accounts;
pub(super) mod audit_usage;
pub(super) mod backups;
pub(super) mod connections;
pub(super) mod dashboard;
pub(super) mod jobs;
pub(super) mod outbox;
pub(super) mod previews;
pub(super) mod sites;

use super::{Connection, StoreError};
use crate::forge::ForgeKind;
use crate::secret::WebhookSecret;

/// Every stored column that holds a sealed secret: (table, key column, column).
pub(super) const SEALED_COLUMNS: [(&str, &str, &str); 7] = [
    ("connections", "id", "secret"),
    ("connections", "id", "previous_secret"),
    ("site_access", "site_id", "basic_sealed"),
    ("backup_repositories", "url", "passphrase"),
    ("github_apps", "slug", "client_secret"),
    ("github_apps", "slug", "webhook_secret"),
    ("github_apps", "slug", "pem"),
];

/// `value` sealed again (under `target`, or the current key when it is plain text), or
/// `None` when it needs nothing.
pub(super) fn resealed(
    keyring: &crate::secret::Keyring,
    value: &str,
    target: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let sealed = crate::secret::Keyring::is_sealed(value);
    let Some(t) = target else {
        return Ok((!sealed).then(|| keyring.seal(value)));
    };
    if crate::secret::Keyring::sealed_with(value) == Some(t) {
        return Ok(None);
    }
    let plain = if sealed {
        keyring.open(value).map_err(sealing)?
    } else {
        value.to_string()
    };
    Ok(Some(keyring.seal_with(t, &plain).map_err(sealing)?))
}

/// The two prefixes a value `reseal_secrets(target)` need not read starts with: a sealed
/// value's (none given), or one sealed under the target key.
pub(super) fn resealed_prefixes(target: Option<&str>) -> (String, String) {
    match target {
        None => ("v1:".into(), "v2:".into()),
        Some(t) => (format!("v2:{t}:"), format!("v2:{t}:")),
    }
}

/// A webhook secret, sealed for storage. The column's own length check now sees the sealed
/// text, so the rule it kept (at least 16 characters; none is never stored) is kept here.
pub(super) fn sealed_secret(
    keyring: &crate::secret::Keyring,
    secret: &WebhookSecret,
) -> Result<String, StoreError> {
    if secret.expose().len() < 16 {
        return Err(StoreError::Corrupt(
            "a webhook secret has at least 16 characters".into(),
        ));
    }
    Ok(keyring.seal(secret.expose()))
}

fn sealing(e: crate::secret::SealError) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A stored secret: opened when sealed; text stored before sealing is read as it is (the
/// next start seals it).
pub(super) fn open_secret(
    keyring: &crate::secret::Keyring,
    stored: String,
) -> Result<WebhookSecret, StoreError> {
    if crate::secret::Keyring::is_sealed(&stored) {
        Ok(WebhookSecret::from_stored(
            keyring.open(&stored).map_err(sealing)?,
        ))
    } else {
        Ok(WebhookSecret::from_stored(stored))
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ConnectionRow {
    pub id: crate::ids::ConnectionId,
    pub workspace_id: crate::ids::WorkspaceId,
    pub forge: String,
    pub repo: String,
    pub api_url: Option<String>,
    pub git_url: Option<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub created_at: i64,
    pub hook_id: Option<String>,
    pub installation_id: Option<i64>,
    pub region: String,
}

impl ConnectionRow {
    /// The connection, its secrets opened with `keyring`.
    pub(super) fn open(self, keyring: &crate::secret::Keyring) -> Result<Connection, StoreError> {
        let r = self;
        let forge = ForgeKind::parse(&r.forge).ok_or_else(|| {
            StoreError::Corrupt(format!("connection {} has unknown forge {}", r.id, r.forge))
        })?;
        Ok(Connection {
            id: r.id,
            workspace_id: r.workspace_id,
            forge,
            repo: r.repo,
            api_url: r.api_url,
            git_url: r.git_url,
            secret: open_secret(keyring, r.secret)?,
            previous_secret: r
                .previous_secret
                .map(|p| open_secret(keyring, p))
                .transpose()?,
            created_at: r.created_at,
            hook_id: r.hook_id,
            installation_id: r.installation_id,
            region: r.region,
        })
    }
}

pub(super) fn map_unique(what: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            StoreError::Conflict(what.to_string())
        }
        _ => StoreError::Db(e),
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SiteRow {
    pub id: crate::ids::SiteId,
    pub name: String,
    pub workspace_id: crate::ids::WorkspaceId,
    pub region: String,
    pub parent_id: Option<crate::ids::SiteId>,
    pub protected: i64,
    pub read_only: i64,
    pub state: String,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
    pub uid: Option<i64>,
}

impl TryFrom<SiteRow> for super::Site {
    type Error = StoreError;
    fn try_from(r: SiteRow) -> Result<Self, StoreError> {
        let state = super::SiteState::parse(&r.state).ok_or_else(|| {
            StoreError::Corrupt(format!("site {} has unknown state {}", r.id, r.state))
        })?;
        Ok(super::Site {
            id: r.id,
            name: r.name,
            workspace_id: r.workspace_id,
            region: r.region,
            parent_id: r.parent_id,
            protected: r.protected != 0,
            read_only: r.read_only != 0,
            state,
            created_at: r.created_at,
            deleted_at: r.deleted_at,
            uid: r.uid.map(|u| u as u32),
        })
    }
}

/// A member's roles as stored (comma-separated) → the list.
pub(super) fn role_list(stored: &str) -> Vec<String> {
    stored
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

macro_rules! site_columns {
    () => {
        "id, name, workspace_id, region, parent_id, protected, read_only, state, created_at, deleted_at, uid"
    };
}
pub(super) use site_columns;

macro_rules! resource_columns {
    () => {
        "site_id, kind, name, strategy, location, bytes_logical, bytes_written, duration_us, updated_at"
    };
}
pub(super) use resource_columns;

macro_rules! job_columns {
    () => {
        "id, kind, job_key, head_sha, payload, state, attempts, max_attempts, run_after, lease_owner, \
         lease_until, cancel_requested, last_error, created_at, updated_at"
    };
}
pub(super) use job_columns;

macro_rules! connection_columns {
    () => {
        "id, workspace_id, forge, repo, api_url, git_url, secret, previous_secret, created_at, hook_id, \
         CAST(installation_id AS BIGINT) AS installation_id, region"
    };
}
pub(super) use connection_columns;

/// The statements that queue a job (and, with `supersede`, cancel the older ones of its key),
/// inside the caller's transaction `$tx`: shared by `enqueue_job` and `insert_deliveries`.
macro_rules! enqueue_in {
    ($tx:ident, $job:expr, $now:expr) => {{
        let job: &$crate::jobs::NewJob = $job;
        if job.supersede {
            $crate::store::sql::supersede_in!($tx, &job.job_key, $now);
        }
        $crate::store::sql::insert_job_in!($tx, job, "queued", $now)
    }};
}
pub(super) use enqueue_in;

/// Cancel the queued jobs of a key and ask its running one to stop.
macro_rules! supersede_in {
    ($tx:ident, $key:expr, $now:expr) => {{
        let key: &str = $key;
        let now: i64 = $now;
        {
            sqlx::query(
                "UPDATE jobs SET state = 'cancelled', last_error = 'superseded by a newer job', updated_at = $1 \
                 WHERE job_key = $2 AND state = 'queued' AND kind <> $3",
            )
            .bind(now)
            .bind(key)
            .bind($crate::jobs::JobKind::NEVER_SUPERSEDED)
            .execute(&mut *$tx)
            .await?;
            sqlx::query("UPDATE jobs SET cancel_requested = 1, updated_at = $1 WHERE job_key = $2 AND state = 'running'")
                .bind(now)
                .bind(key)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}
pub(super) use supersede_in;

/// Insert a job in state `$state` (`queued`, or `cancelled` when a later job of the same batch
/// supersedes it).
macro_rules! insert_job_in {
    ($tx:ident, $job:expr, $state:expr, $now:expr) => {
        $crate::store::sql::insert_job_in!($tx, $job, $state, $now, $crate::store::new_id())
    };
    ($tx:ident, $job:expr, $state:expr, $now:expr, $id:expr) => {{
        let job: &$crate::jobs::NewJob = $job;
        let now: i64 = $now;
        let row: $crate::jobs::Job = sqlx::query_as(concat!(
            "INSERT INTO jobs (id, kind, job_key, head_sha, payload, state, attempts, max_attempts, run_after, \
             cancel_requested, created_at, updated_at, region) VALUES ($1, $2, $3, $4, $5, $8, 0, $6, $7, 0, $7, $7, \
             (SELECT region FROM connections WHERE id = $9)) RETURNING ",
            $crate::store::sql::job_columns!()
        ))
        .bind($id)
        .bind(&job.kind)
        .bind(&job.job_key)
        .bind(&job.head_sha)
        .bind(&job.payload)
        .bind(job.max_attempts)
        .bind(now)
        .bind($state)
        // The job runs in its connection's region (see migration 0020).
        .bind($crate::jobs::parse_pr_key(&job.job_key).map(|(c, _)| c))
        .fetch_one(&mut *$tx)
        .await?;
        row
    }};
}
pub(super) use insert_job_in;

/// Lock the rows of `job_keys` for these keys, in sorted order (see migration 0003).
macro_rules! lock_job_keys {
    ($tx:ident, $keys:expr) => {{
        let mut keys: Vec<&str> = $keys;
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            sqlx::query(
                "INSERT INTO job_keys (job_key) VALUES ($1) ON CONFLICT (job_key) DO UPDATE SET job_key = excluded.job_key",
            )
            .bind(key)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}
pub(super) use lock_job_keys;

macro_rules! impl_store {
    ($store:ty, $backend:expr, $migrator:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> $crate::store::Backend {
                $backend
            }

            fn keyring(&self) -> &std::sync::Arc<$crate::secret::Keyring> {
                &self.keyring
            }

            async fn reseal_secrets(&self, target: Option<&str>) -> $crate::store::Result<u64> {
                let mut sealed = 0;
                // Only the values that may need it are read: opening a store (which seals
                // what an older endor left in plain text) reads none in the common case.
                let (done_a, done_b) = $crate::store::sql::resealed_prefixes(target);
                for (table, key, column) in $crate::store::sql::SEALED_COLUMNS {
                    // Table and column names are constants of this file.
                    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
                        "SELECT {key}, {column} FROM {table} WHERE {column} IS NOT NULL \
                         AND substr({column}, 1, length($1)) <> $1 \
                         AND substr({column}, 1, length($2)) <> $2"
                    ))
                    .bind(&done_a)
                    .bind(&done_b)
                    .fetch_all(&self.pool)
                    .await?;
                    for (id, value) in rows {
                        let Some(fresh) =
                            $crate::store::sql::resealed(&self.keyring, &value, target)?
                        else {
                            continue;
                        };
                        // Only if nobody changed it meanwhile (compare and swap).
                        let done = sqlx::query(&format!(
                            "UPDATE {table} SET {column} = $1 WHERE {key} = $2 AND {column} = $3"
                        ))
                        .bind(&fresh)
                        .bind(&id)
                        .bind(&value)
                        .execute(&self.pool)
                        .await?;
                        sealed += done.rows_affected();
                    }
                }
                Ok(sealed)
            }

            async fn copy_to(&self, path: &std::path::Path) -> $crate::store::Result<()> {
                if $backend != $crate::store::Backend::Sqlite {
                    return Err($crate::store::StoreError::Unavailable(
                        "a PostgreSQL store is copied with pg_dump".into(),
                    ));
                }
                sqlx::query("VACUUM INTO $1")
                    .bind(path.display().to_string())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn sealed_counts(
                &self,
            ) -> $crate::store::Result<std::collections::BTreeMap<String, u64>> {
                let mut counts = std::collections::BTreeMap::new();
                for (table, _, column) in $crate::store::sql::SEALED_COLUMNS {
                    let values: Vec<(String,)> = sqlx::query_as(&format!(
                        "SELECT {column} FROM {table} WHERE {column} IS NOT NULL"
                    ))
                    .fetch_all(&self.pool)
                    .await?;
                    for (v,) in values {
                        let key = match $crate::secret::Keyring::sealed_with(&v) {
                            Some(id) => id.to_string(),
                            None if $crate::secret::Keyring::is_sealed(&v) => "v1".to_string(),
                            None => "plain".to_string(),
                        };
                        *counts.entry(key).or_insert(0) += 1;
                    }
                }
                Ok(counts)
            }

            async fn migrate(&self) -> $crate::store::Result<()> {
                $migrator.run(&self.pool).await?;
                Ok(())
            }

            async fn ready(&self) -> $crate::store::Result<()> {
                let applied: Vec<(i64,)> =
                    sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
                        .fetch_all(&self.pool)
                        .await?;
                for m in $migrator.iter() {
                    if !applied.iter().any(|(v,)| *v == m.version) {
                        return Err($crate::store::StoreError::Unavailable(format!(
                            "migration {} is not applied",
                            m.version
                        )));
                    }
                }
                Ok(())
            }
        }
        $crate::store::sql::accounts::impl_accounts!($store);
        $crate::store::sql::dashboard::impl_dashboard!($store);
        $crate::store::sql::connections::impl_connections!($store);
        $crate::store::sql::sites::impl_sites!($store);
        $crate::store::sql::previews::impl_previews!($store);
        $crate::store::sql::outbox::impl_outbox!($store);
        $crate::store::sql::jobs::impl_jobs!($store);
        $crate::store::sql::audit_usage::impl_audit_usage!($store);
        $crate::store::sql::backups::impl_backups!($store);
    };
}

/// Store one outbox row on `$exec` (a pool or a transaction): a pending row of the same key has
/// its payload replaced.
macro_rules! enqueue_outbox_in {
    ($exec:expr, $o:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO outbox (id, connection_id, number, kind, coalesce_key, payload, state, attempts, run_after, \
             created_at, updated_at, last_error) VALUES ($1, $2, $3, $4, $5, $6, \
             CASE WHEN $8 IS NULL THEN 'pending' ELSE 'unsent' END, 0, $7, $7, $7, $8) \
             ON CONFLICT (coalesce_key) WHERE state = 'pending' DO UPDATE SET payload = excluded.payload, \
             updated_at = excluded.updated_at",
        )
        .bind($crate::store::new_id())
        .bind(&$o.connection_id)
        .bind($o.number)
        .bind(&$o.kind)
        .bind(&$o.coalesce_key)
        .bind(&$o.payload)
        .bind($now)
        .bind(&$o.held)
        .execute($exec)
        .await?
    };
}

/// The columns of `Delivery`: `deliveries d` joined with the job it queued (`jobs j`).
macro_rules! delivery_cols {
    () => {
        "d.id, d.connection_id, d.delivery_key, d.forge, d.event, d.action, d.outcome, d.reason, d.normalized, \
         d.payload, d.received_at, d.number, d.job_id, j.state AS job_state, j.last_error AS job_error"
    };
}

/// The columns of `previews`, in `Preview`'s order.
macro_rules! preview_cols {
    () => {
        "id, connection_id, number, site_name, site_id, state, head_sha, ready_sha, approved_sha, is_fork, \
         reason, port, pid, received_at, created_at, updated_at, title, expires_at, teardown_step, warned_expiry, ttl_ms, host"
    };
}

pub(super) use delivery_cols;
pub(super) use enqueue_outbox_in;
pub(super) use impl_store;
pub(super) use preview_cols;
