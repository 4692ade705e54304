//! The one body of SQL both backends run. `impl_store!` expands it for a store type whose
//! `pool` field is a `sqlx::Pool` of the given database: the queries are written once, so the
//! SQLite and PostgreSQL implementations cannot drift apart.

use super::{Connection, StoreError};
use crate::forge::ForgeKind;
use crate::secret::WebhookSecret;

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
}

impl TryFrom<ConnectionRow> for Connection {
    type Error = StoreError;
    fn try_from(r: ConnectionRow) -> Result<Self, StoreError> {
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
            secret: WebhookSecret::from_stored(r.secret),
            previous_secret: r.previous_secret.map(WebhookSecret::from_stored),
            created_at: r.created_at,
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
        "id, name, workspace_id, region, parent_id, protected, read_only, state, created_at, deleted_at"
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
        "id, workspace_id, forge, repo, api_url, git_url, secret, previous_secret, created_at"
    };
}
pub(super) use connection_columns;

/// The statements that queue a job (and, with `supersede`, cancel the older ones of its key),
/// inside the caller's transaction `$tx`: shared by `enqueue_job` and `insert_deliveries`.
macro_rules! enqueue_in {
    ($tx:ident, $job:expr, $now:expr) => {{
        let job: &$crate::store::NewJob = $job;
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
    ($tx:ident, $job:expr, $state:expr, $now:expr) => {{
        let job: &$crate::store::NewJob = $job;
        let now: i64 = $now;
        let row: $crate::store::Job = sqlx::query_as(concat!(
            "INSERT INTO jobs (id, kind, job_key, head_sha, payload, state, attempts, max_attempts, run_after, \
             cancel_requested, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $8, 0, $6, $7, 0, $7, $7) RETURNING ",
            $crate::store::sql::job_columns!()
        ))
        .bind($crate::store::new_id())
        .bind(&job.kind)
        .bind(&job.job_key)
        .bind(&job.head_sha)
        .bind(&job.payload)
        .bind(job.max_attempts)
        .bind(now)
        .bind($state)
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

        #[async_trait::async_trait]
        impl $crate::store::UserStore for $store {
            async fn create_user(
                &self,
                login: &str,
                name: Option<&str>,
                email: Option<&str>,
            ) -> $crate::store::Result<$crate::store::User> {
                sqlx::query_as(
                    "INSERT INTO users (id, login, name, email, created_at) VALUES ($1, $2, $3, $4, $5) \
                     RETURNING id, login, name, email, created_at",
                )
                .bind($crate::store::new_id())
                .bind(login)
                .bind(name)
                .bind(email)
                .bind($crate::now_ms())
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_unique(&format!("user {login}")))
            }

            async fn user_by_login(&self, login: &str) -> $crate::store::Result<Option<$crate::store::User>> {
                Ok(sqlx::query_as("SELECT id, login, name, email, created_at FROM users WHERE login = $1")
                    .bind(login)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn link_identity(
                &self,
                user_id: &$crate::ids::UserId,
                forge: $crate::forge::ForgeKind,
                login: &str,
            ) -> $crate::store::Result<()> {
                sqlx::query("INSERT INTO identities (forge, login, user_id) VALUES ($1, $2, $3)")
                    .bind(forge.as_str())
                    .bind(login.to_lowercase())
                    .bind(user_id)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_unique(&format!("identity {forge}:{login}")))?;
                Ok(())
            }

            async fn user_by_identity(
                &self,
                forge: $crate::forge::ForgeKind,
                login: &str,
            ) -> $crate::store::Result<Option<$crate::store::User>> {
                Ok(sqlx::query_as(
                    "SELECT u.id, u.login, u.name, u.email, u.created_at FROM users u \
                     JOIN identities i ON i.user_id = u.id WHERE i.forge = $1 AND lower(i.login) = lower($2)",
                )
                .bind(forge.as_str())
                .bind(login.to_lowercase())
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn create_token(&self, user_id: &$crate::ids::UserId, name: &str, token_hash: &str) -> $crate::store::Result<$crate::store::ApiToken> {
                Ok(sqlx::query_as(
                    "INSERT INTO api_tokens (id, user_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4, $5) \
                     RETURNING id, user_id, name, created_at, last_used_at, revoked_at",
                )
                .bind($crate::store::new_id())
                .bind(user_id)
                .bind(name)
                .bind(token_hash)
                .bind($crate::now_ms())
                .fetch_one(&self.pool)
                .await?)
            }

            async fn token_user(&self, token_hash: &str, now: i64) -> $crate::store::Result<Option<($crate::store::User, String)>> {
                let row: Option<($crate::ids::UserId, String, Option<String>, Option<String>, i64, String)> = sqlx::query_as(
                    "SELECT u.id, u.login, u.name, u.email, u.created_at, t.id FROM api_tokens t \
                     JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
                )
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
                let Some((id, login, name, email, created_at, token_id)) = row else {
                    return Ok(None);
                };
                // last_used_at to the minute: one write per token per minute, not per request.
                sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)")
                    .bind(now)
                    .bind(&token_id)
                    .bind(now - 60_000)
                    .execute(&self.pool)
                    .await?;
                Ok(Some(($crate::store::User { id, login, name, email, created_at }, token_id)))
            }

            async fn list_tokens(&self, user_id: &$crate::ids::UserId) -> $crate::store::Result<Vec<$crate::store::ApiToken>> {
                Ok(sqlx::query_as(
                    "SELECT id, user_id, name, created_at, last_used_at, revoked_at FROM api_tokens WHERE user_id = $1 ORDER BY created_at, id",
                )
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn revoke_token(&self, user_id: &$crate::ids::UserId, token_id: &str) -> $crate::store::Result<bool> {
                let r = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL")
                    .bind($crate::now_ms())
                    .bind(token_id)
                    .bind(user_id)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() == 1)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::WorkspaceStore for $store {
            async fn create_workspace(
                &self,
                name: &str,
                owner_id: &$crate::ids::UserId,
            ) -> $crate::store::Result<$crate::store::Workspace> {
                let mut tx = self.pool.begin().await?;
                let ws: $crate::store::Workspace = sqlx::query_as(
                    "INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, $3) RETURNING id, name, created_at",
                )
                .bind($crate::store::new_id())
                .bind(name)
                .bind($crate::now_ms())
                .fetch_one(&mut *tx)
                .await
                .map_err($crate::store::sql::map_unique(&format!("workspace {name}")))?;
                sqlx::query("INSERT INTO members (workspace_id, user_id, roles) VALUES ($1, $2, 'owner')")
                    .bind(&ws.id)
                    .bind(owner_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(ws)
            }

            async fn workspace_by_name(&self, name: &str) -> $crate::store::Result<Option<$crate::store::Workspace>> {
                Ok(sqlx::query_as("SELECT id, name, created_at FROM workspaces WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn workspace_by_id(&self, id: &$crate::ids::WorkspaceId) -> $crate::store::Result<Option<$crate::store::Workspace>> {
                Ok(sqlx::query_as("SELECT id, name, created_at FROM workspaces WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn user_workspaces(&self, user_id: &$crate::ids::UserId) -> $crate::store::Result<Vec<($crate::store::Workspace, Vec<String>)>> {
                let rows: Vec<($crate::ids::WorkspaceId, String, i64, String)> = sqlx::query_as(
                    "SELECT w.id, w.name, w.created_at, m.roles FROM members m JOIN workspaces w ON w.id = m.workspace_id \
                     WHERE m.user_id = $1 ORDER BY w.name",
                )
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, name, created_at, roles)| {
                        let roles = $crate::store::sql::role_list(&roles);
                        ($crate::store::Workspace { id, name, created_at }, roles)
                    })
                    .collect())
            }

            async fn list_workspaces(&self) -> $crate::store::Result<Vec<$crate::store::Workspace>> {
                Ok(sqlx::query_as("SELECT id, name, created_at FROM workspaces ORDER BY name")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn add_member(&self, workspace_id: &$crate::ids::WorkspaceId, user_id: &$crate::ids::UserId, roles: &[String]) -> $crate::store::Result<()> {
                sqlx::query("INSERT INTO members (workspace_id, user_id, roles) VALUES ($1, $2, $3)")
                    .bind(workspace_id)
                    .bind(user_id)
                    .bind(roles.join(","))
                    .execute(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_unique("member"))?;
                Ok(())
            }

            async fn change_member(&self, workspace_id: &$crate::ids::WorkspaceId, user_id: &$crate::ids::UserId, roles: &[String]) -> $crate::store::Result<()> {
                let mut tx = self.pool.begin().await?;
                // The workspace row is locked first: changes to one workspace's members run one
                // after the other (PostgreSQL row lock; SQLite's single writer).
                let ws = sqlx::query("UPDATE workspaces SET name = name WHERE id = $1")
                    .bind(workspace_id)
                    .execute(&mut *tx)
                    .await?;
                if ws.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound("workspace".into()));
                }
                let current: Option<(String,)> = sqlx::query_as("SELECT roles FROM members WHERE workspace_id = $1 AND user_id = $2")
                    .bind(workspace_id)
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some((current,)) = current else {
                    return Err($crate::store::StoreError::NotFound("member".into()));
                };
                let was_owner = current.split(',').any(|r| r == "owner");
                let stays_owner = roles.iter().any(|r| r == "owner");
                if was_owner && !stays_owner {
                    let others: Vec<(String,)> = sqlx::query_as("SELECT roles FROM members WHERE workspace_id = $1 AND user_id <> $2")
                        .bind(workspace_id)
                        .bind(user_id)
                        .fetch_all(&mut *tx)
                        .await?;
                    if !others.iter().any(|(r,)| r.split(',').any(|x| x == "owner")) {
                        return Err($crate::store::StoreError::LastOwner);
                    }
                }
                if roles.is_empty() {
                    sqlx::query("DELETE FROM members WHERE workspace_id = $1 AND user_id = $2")
                        .bind(workspace_id)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    sqlx::query("UPDATE members SET roles = $3 WHERE workspace_id = $1 AND user_id = $2")
                        .bind(workspace_id)
                        .bind(user_id)
                        .bind(roles.join(","))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn list_members(&self, workspace_id: &$crate::ids::WorkspaceId) -> $crate::store::Result<Vec<(String, Vec<String>)>> {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT u.login, m.roles FROM members m JOIN users u ON u.id = m.user_id WHERE m.workspace_id = $1 ORDER BY u.login",
                )
                .bind(workspace_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(l, r)| (l, $crate::store::sql::role_list(&r)))
                    .collect())
            }

            async fn rename_workspace(&self, workspace_id: &$crate::ids::WorkspaceId, name: &str) -> $crate::store::Result<()> {
                let r = sqlx::query("UPDATE workspaces SET name = $2 WHERE id = $1")
                    .bind(workspace_id)
                    .bind(name)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_unique(&format!("workspace {name}")))?;
                if r.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound("workspace".into()));
                }
                Ok(())
            }

            async fn member_roles(&self, workspace_id: &$crate::ids::WorkspaceId, user_id: &$crate::ids::UserId) -> $crate::store::Result<Vec<String>> {
                let row: Option<(String,)> =
                    sqlx::query_as("SELECT roles FROM members WHERE workspace_id = $1 AND user_id = $2")
                        .bind(workspace_id)
                        .bind(user_id)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row
                    .map(|(r,)| $crate::store::sql::role_list(&r))
                    .unwrap_or_default())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::ConnectionStore for $store {
            async fn create_connection(
                &self,
                c: &$crate::store::NewConnection,
            ) -> $crate::store::Result<$crate::store::Connection> {
                let row: $crate::store::sql::ConnectionRow = sqlx::query_as(concat!(
                    "INSERT INTO connections (id, workspace_id, forge, repo, api_url, git_url, secret, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
                    $crate::store::sql::connection_columns!()
                ))
                .bind($crate::store::new_id())
                .bind(&c.workspace_id)
                .bind(c.forge.as_str())
                .bind(&c.repo)
                .bind(&c.api_url)
                .bind(&c.git_url)
                .bind(c.secret.expose())
                .bind($crate::now_ms())
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_unique("connection"))?;
                row.try_into()
            }

            async fn connection(&self, id: &$crate::ids::ConnectionId) -> $crate::store::Result<Option<$crate::store::Connection>> {
                let row: Option<$crate::store::sql::ConnectionRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::connection_columns!(),
                    " FROM connections WHERE id = $1 AND deleted_at IS NULL"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn list_connections(
                &self,
                workspace_id: Option<&$crate::ids::WorkspaceId>,
            ) -> $crate::store::Result<Vec<$crate::store::Connection>> {
                let rows: Vec<$crate::store::sql::ConnectionRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::connection_columns!(),
                    " FROM connections WHERE deleted_at IS NULL AND ($1 IS NULL OR workspace_id = $1) \
                     ORDER BY created_at, id"
                ))
                .bind(workspace_id)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn set_connection_secrets(
                &self,
                id: &$crate::ids::ConnectionId,
                secret: &$crate::secret::WebhookSecret,
                previous: Option<&$crate::secret::WebhookSecret>,
            ) -> $crate::store::Result<bool> {
                let done = sqlx::query(
                    "UPDATE connections SET secret = $1, previous_secret = $2, rotated_at = $3 \
                     WHERE id = $4 AND deleted_at IS NULL",
                )
                .bind(secret.expose())
                .bind(previous.map(|p| p.expose()))
                .bind($crate::now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_connection(&self, id: &$crate::ids::ConnectionId) -> $crate::store::Result<bool> {
                let done = sqlx::query("UPDATE connections SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL")
                    .bind($crate::now_ms())
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::DeliveryStore for $store {
            async fn insert_deliveries(
                &self,
                batch: &[$crate::store::NewDelivery],
            ) -> $crate::store::Result<Vec<$crate::store::Inserted>> {
                let mut tx = self.pool.begin().await?;
                $crate::store::sql::lock_job_keys!(
                    tx,
                    batch.iter().filter_map(|d| d.job.as_ref().map(|j| j.job_key.as_str())).collect()
                );
                let mut out = Vec::with_capacity(batch.len());
                for d in batch {
                    let done = sqlx::query(
                        "INSERT INTO deliveries (id, connection_id, delivery_key, forge, event, action, outcome, \
                         reason, normalized, payload, received_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                         ON CONFLICT (connection_id, delivery_key) DO NOTHING",
                    )
                    .bind(&d.id)
                    .bind(&d.connection_id)
                    .bind(&d.delivery_key)
                    .bind(d.forge.as_str())
                    .bind(&d.event)
                    .bind(&d.action)
                    .bind(d.outcome.as_str())
                    .bind(&d.reason)
                    .bind(&d.normalized)
                    .bind(&d.payload)
                    .bind(d.received_at)
                    .execute(&mut *tx)
                    .await?;
                    out.push(if done.rows_affected() == 1 {
                        $crate::store::Inserted::New
                    } else {
                        $crate::store::Inserted::Duplicate
                    });
                }
                // The jobs of the new deliveries, in the same transaction (a crash keeps both or
                // neither; a redelivery queues nothing). Same outcome as queuing them one by one,
                // with fewer statements: a key's older jobs are superseded once per batch, and a
                // job that a later superseding job of this batch cancels is stored cancelled.
                let jobs: Vec<(usize, &$crate::store::NewJob, i64)> = batch
                    .iter()
                    .zip(&out)
                    .enumerate()
                    .filter(|(_, (_, ins))| **ins == $crate::store::Inserted::New)
                    .filter_map(|(i, (d, _))| d.job.as_ref().map(|j| (i, j, d.received_at)))
                    .collect();
                let mut last_superseding: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
                for (i, j, _) in &jobs {
                    if j.supersede {
                        last_superseding.insert(j.job_key.as_str(), *i);
                    }
                }
                let mut superseded: std::collections::HashSet<&str> = std::collections::HashSet::new();
                for (i, job, at) in jobs {
                    if job.supersede && superseded.insert(job.job_key.as_str()) {
                        $crate::store::sql::supersede_in!(tx, &job.job_key, at);
                    }
                    let later = job.kind.superseded_by_newer()
                        && last_superseding.get(job.job_key.as_str()).is_some_and(|&last| last > i);
                    $crate::store::sql::insert_job_in!(tx, job, if later { "cancelled" } else { "queued" }, at);
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn count_deliveries(&self, connection_id: Option<&$crate::ids::ConnectionId>) -> $crate::store::Result<i64> {
                let (n,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM deliveries WHERE ($1 IS NULL OR connection_id = $1)")
                        .bind(connection_id)
                        .fetch_one(&self.pool)
                        .await?;
                Ok(n)
            }

            async fn list_deliveries(
                &self,
                connection_id: Option<&$crate::ids::ConnectionId>,
                limit: i64,
            ) -> $crate::store::Result<Vec<$crate::store::Delivery>> {
                Ok(sqlx::query_as(
                    "SELECT id, connection_id, delivery_key, forge, event, action, outcome, reason, normalized, \
                     payload, received_at FROM deliveries WHERE ($1 IS NULL OR connection_id = $1) \
                     ORDER BY received_at DESC, id DESC LIMIT $2",
                )
                .bind(connection_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::SiteStore for $store {
            async fn create_site(&self, s: &$crate::store::NewSite) -> $crate::store::Result<$crate::store::Site> {
                let row: $crate::store::sql::SiteRow = sqlx::query_as(concat!(
                    "INSERT INTO sites (id, name, workspace_id, region, parent_id, read_only, state, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'creating', $7) RETURNING ",
                    $crate::store::sql::site_columns!()
                ))
                .bind($crate::store::new_id())
                .bind(&s.name)
                .bind(&s.workspace_id)
                .bind(&s.region)
                .bind(&s.parent_id)
                .bind(s.read_only as i64)
                .bind($crate::now_ms())
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_unique(&format!("site {}", s.name)))?;
                row.try_into()
            }

            async fn set_site_state(&self, id: &$crate::ids::SiteId, state: $crate::store::SiteState) -> $crate::store::Result<()> {
                let deleted_at = (state == $crate::store::SiteState::Deleted).then($crate::now_ms);
                sqlx::query("UPDATE sites SET state = $1, deleted_at = COALESCE($2, deleted_at) WHERE id = $3")
                    .bind(state.as_str())
                    .bind(deleted_at)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn set_site_protected(&self, id: &$crate::ids::SiteId, protected: bool) -> $crate::store::Result<()> {
                sqlx::query("UPDATE sites SET protected = $1 WHERE id = $2")
                    .bind(protected as i64)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn site_by_name(&self, name: &str) -> $crate::store::Result<Option<$crate::store::Site>> {
                let row: Option<$crate::store::sql::SiteRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::site_columns!(),
                    " FROM sites WHERE name = $1 AND state <> 'deleted'"
                ))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn site(&self, id: &$crate::ids::SiteId) -> $crate::store::Result<Option<$crate::store::Site>> {
                let row: Option<$crate::store::sql::SiteRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::site_columns!(),
                    " FROM sites WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn list_sites(&self) -> $crate::store::Result<Vec<$crate::store::Site>> {
                let rows: Vec<$crate::store::sql::SiteRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::site_columns!(),
                    " FROM sites WHERE state <> 'deleted' ORDER BY name"
                ))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn put_resource(&self, r: &$crate::store::SiteResource) -> $crate::store::Result<()> {
                sqlx::query(concat!(
                    "INSERT INTO site_resources (",
                    $crate::store::sql::resource_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (site_id, kind, name) DO UPDATE SET strategy = excluded.strategy, \
                     location = excluded.location, bytes_logical = excluded.bytes_logical, \
                     bytes_written = excluded.bytes_written, duration_us = excluded.duration_us, \
                     updated_at = excluded.updated_at"
                ))
                .bind(&r.site_id)
                .bind(&r.kind)
                .bind(&r.name)
                .bind(&r.strategy)
                .bind(&r.location)
                .bind(r.bytes_logical)
                .bind(r.bytes_written)
                .bind(r.duration_us)
                .bind(r.updated_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn site_resources(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<Vec<$crate::store::SiteResource>> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::resource_columns!(),
                    " FROM site_resources WHERE site_id = $1 ORDER BY kind, name"
                ))
                .bind(site_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn delete_resources(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<()> {
                sqlx::query("DELETE FROM site_resources WHERE site_id = $1")
                    .bind(site_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn add_generation(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<$crate::store::Generation> {
                Ok(sqlx::query_as(
                    "INSERT INTO generations (id, site_id, seq, created_at) \
                     SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3 FROM generations WHERE site_id = $2 \
                     RETURNING id, site_id, seq, created_at",
                )
                .bind($crate::store::new_id())
                .bind(site_id)
                .bind($crate::now_ms())
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_unique("generation"))?)
            }

            async fn generations(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<Vec<$crate::store::Generation>> {
                Ok(sqlx::query_as(
                    "SELECT id, site_id, seq, created_at FROM generations WHERE site_id = $1 ORDER BY seq",
                )
                .bind(site_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn site_tags(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<Vec<String>> {
                let rows: Vec<(String,)> = sqlx::query_as("SELECT tag FROM site_tags WHERE site_id = $1 ORDER BY tag")
                    .bind(site_id)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.into_iter().map(|r| r.0).collect())
            }

            async fn add_site_tag(&self, site_id: &$crate::ids::SiteId, tag: &str) -> $crate::store::Result<bool> {
                let r = sqlx::query("INSERT INTO site_tags (site_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(site_id)
                    .bind(tag)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn remove_site_tag(&self, site_id: &$crate::ids::SiteId, tag: &str) -> $crate::store::Result<bool> {
                let r = sqlx::query("DELETE FROM site_tags WHERE site_id = $1 AND tag = $2")
                    .bind(site_id)
                    .bind(tag)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn delete_generation(&self, id: &str) -> $crate::store::Result<()> {
                sqlx::query("DELETE FROM generations WHERE id = $1").bind(id).execute(&self.pool).await?;
                Ok(())
            }

            async fn workspace_sites_between(&self, workspace_id: &$crate::ids::WorkspaceId, from: i64, to: i64) -> $crate::store::Result<Vec<$crate::store::Site>> {
                let rows: Vec<$crate::store::sql::SiteRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::site_columns!(),
                    " FROM sites WHERE workspace_id = $1 AND created_at < $3 AND (deleted_at IS NULL OR deleted_at >= $2) ORDER BY name, created_at"
                ))
                .bind(workspace_id)
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::AccessStore for $store {
            async fn site_access(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<Option<$crate::store::SiteAccess>> {
                Ok(sqlx::query_as(
                    "SELECT site_id, robots, basic_user, basic_hash, basic_sealed, updated_at, allow_cidrs, deny_cidrs FROM site_access WHERE site_id = $1",
                )
                .bind(site_id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn site_access_by_name(&self, site_name: &str) -> $crate::store::Result<Option<$crate::store::SiteAccess>> {
                Ok(sqlx::query_as(
                    "SELECT a.site_id, a.robots, a.basic_user, a.basic_hash, a.basic_sealed, a.updated_at, a.allow_cidrs, a.deny_cidrs \
                     FROM site_access a JOIN sites s ON s.id = a.site_id WHERE s.name = $1 AND s.state <> 'deleted'",
                )
                .bind(site_name)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn put_site_access(&self, a: &$crate::store::SiteAccess) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO site_access (site_id, robots, basic_user, basic_hash, basic_sealed, updated_at, allow_cidrs, deny_cidrs) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (site_id) DO UPDATE SET robots = excluded.robots, \
                     basic_user = excluded.basic_user, basic_hash = excluded.basic_hash, \
                     basic_sealed = excluded.basic_sealed, updated_at = excluded.updated_at, \
                     allow_cidrs = excluded.allow_cidrs, deny_cidrs = excluded.deny_cidrs",
                )
                .bind(&a.site_id)
                .bind(a.robots)
                .bind(&a.basic_user)
                .bind(&a.basic_hash)
                .bind(&a.basic_sealed)
                .bind(a.updated_at)
                .bind(&a.allow_cidrs)
                .bind(&a.deny_cidrs)
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::RouteStore for $store {
            async fn put_route(&self, r: &$crate::store::RouteRow) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO routes (site_name, kind, target, robots, updated_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (site_name) DO UPDATE SET kind = excluded.kind, target = excluded.target, \
                     robots = excluded.robots, updated_at = excluded.updated_at",
                )
                .bind(&r.site_name)
                .bind(&r.kind)
                .bind(&r.target)
                .bind(r.robots)
                .bind(r.updated_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn route(&self, site_name: &str) -> $crate::store::Result<Option<$crate::store::RouteRow>> {
                Ok(sqlx::query_as("SELECT site_name, kind, target, robots, updated_at FROM routes WHERE site_name = $1")
                    .bind(site_name)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn delete_route(&self, site_name: &str) -> $crate::store::Result<()> {
                sqlx::query("DELETE FROM routes WHERE site_name = $1").bind(site_name).execute(&self.pool).await?;
                Ok(())
            }

            async fn list_routes(&self) -> $crate::store::Result<Vec<$crate::store::RouteRow>> {
                Ok(sqlx::query_as("SELECT site_name, kind, target, robots, updated_at FROM routes ORDER BY site_name")
                    .fetch_all(&self.pool)
                    .await?)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::PreviewStore for $store {
            async fn put_preview_with_outbox(&self, p: &$crate::store::Preview, rows: &[$crate::store::NewOutbox], now: i64) -> $crate::store::Result<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO previews (id, connection_id, number, site_name, site_id, state, head_sha, ready_sha, \
                     approved_sha, is_fork, reason, port, pid, received_at, created_at, updated_at, title, expires_at, \
                     teardown_step, warned_expiry, ttl_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
                     ON CONFLICT (connection_id, number) DO UPDATE SET site_name = excluded.site_name, \
                     site_id = excluded.site_id, state = excluded.state, head_sha = excluded.head_sha, \
                     ready_sha = excluded.ready_sha, approved_sha = excluded.approved_sha, is_fork = excluded.is_fork, \
                     reason = excluded.reason, port = excluded.port, pid = excluded.pid, \
                     received_at = excluded.received_at, updated_at = excluded.updated_at, title = excluded.title, \
                     expires_at = excluded.expires_at, teardown_step = excluded.teardown_step, \
                     warned_expiry = excluded.warned_expiry, ttl_ms = excluded.ttl_ms",
                )
                .bind(&p.id)
                .bind(&p.connection_id)
                .bind(p.number)
                .bind(&p.site_name)
                .bind(&p.site_id)
                .bind(&p.state)
                .bind(&p.head_sha)
                .bind(&p.ready_sha)
                .bind(&p.approved_sha)
                .bind(p.is_fork)
                .bind(&p.reason)
                .bind(p.port)
                .bind(p.pid)
                .bind(p.received_at)
                .bind(p.created_at)
                .bind(p.updated_at)
                .bind(&p.title)
                .bind(p.expires_at)
                .bind(&p.teardown_step)
                .bind(p.warned_expiry)
                .bind(p.ttl_ms)
                .execute(&mut *tx)
                .await?;
                for o in rows {
                    enqueue_outbox_in!(&mut *tx, o, now);
                }
                tx.commit().await?;
                Ok(())
            }

            async fn preview(&self, connection_id: &$crate::ids::ConnectionId, number: i64) -> $crate::store::Result<Option<$crate::store::Preview>> {
                Ok(sqlx::query_as(concat!("SELECT ", $crate::store::sql::preview_cols!(), " FROM previews WHERE connection_id = $1 AND number = $2"))
                    .bind(connection_id)
                    .bind(number)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn preview_by_site_name(&self, site_name: &str) -> $crate::store::Result<Option<$crate::store::Preview>> {
                Ok(sqlx::query_as(concat!("SELECT ", $crate::store::sql::preview_cols!(), " FROM previews WHERE site_name = $1 ORDER BY updated_at DESC LIMIT 1"))
                    .bind(site_name)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn list_previews(&self) -> $crate::store::Result<Vec<$crate::store::Preview>> {
                Ok(sqlx::query_as(concat!("SELECT ", $crate::store::sql::preview_cols!(), " FROM previews ORDER BY site_name"))
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn put_step(&self, s: &$crate::store::PreviewStep) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO preview_steps (preview_id, run_id, step, seq, started_at, ended_at, ok, detail) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (preview_id, run_id, step) DO UPDATE SET \
                     seq = excluded.seq, started_at = excluded.started_at, ended_at = excluded.ended_at, ok = excluded.ok, \
                     detail = excluded.detail",
                )
                .bind(&s.preview_id)
                .bind(&s.run_id)
                .bind(&s.step)
                .bind(s.seq)
                .bind(s.started_at)
                .bind(s.ended_at)
                .bind(s.ok)
                .bind(&s.detail)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn last_run_steps(&self, preview_id: &$crate::ids::PreviewId) -> $crate::store::Result<Vec<$crate::store::PreviewStep>> {
                Ok(sqlx::query_as(
                    "SELECT preview_id, run_id, step, seq, started_at, ended_at, ok, detail FROM preview_steps \
                     WHERE preview_id = $1 AND run_id = (SELECT run_id FROM preview_steps WHERE preview_id = $1 \
                     ORDER BY started_at DESC, seq DESC LIMIT 1) ORDER BY seq",
                )
                .bind(preview_id)
                .fetch_all(&self.pool)
                .await?)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::OutboxStore for $store {
            async fn enqueue_outbox(&self, o: &$crate::store::NewOutbox, now: i64) -> $crate::store::Result<()> {
                enqueue_outbox_in!(&self.pool, o, now);
                Ok(())
            }

            async fn claim_outbox(&self, worker: &str, now: i64, lease_until: i64, limit: i64) -> $crate::store::Result<Vec<$crate::store::OutboxItem>> {
                // The outer state test is re-checked on PostgreSQL when another claimer took a
                // row first, so an item is never held by two senders.
                Ok(sqlx::query_as(
                    "UPDATE outbox SET state = 'sending', lease_owner = $1, lease_until = $3, attempts = attempts + 1, \
                     updated_at = $2 WHERE (state = 'pending' AND run_after <= $2 OR state = 'sending' AND lease_until < $2) \
                     AND id IN (SELECT o.id FROM outbox o WHERE (o.state = 'pending' AND o.run_after <= $2 \
                     OR o.state = 'sending' AND o.lease_until < $2) AND NOT EXISTS (SELECT 1 FROM outbox s \
                     WHERE s.coalesce_key = o.coalesce_key AND s.state = 'sending' AND s.lease_until >= $2 AND s.id <> o.id) \
                     ORDER BY o.created_at LIMIT $4) \
                     RETURNING id, connection_id, number, kind, coalesce_key, payload, state, attempts, run_after, \
                     lease_owner, lease_until, last_error, created_at, updated_at",
                )
                .bind(worker)
                .bind(now)
                .bind(lease_until)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn finish_outbox(&self, id: &str, worker: &str, end: &$crate::store::OutboxEnd, now: i64) -> $crate::store::Result<bool> {
                use $crate::store::OutboxEnd;
                let r = match end {
                    OutboxEnd::Done => sqlx::query(
                        "UPDATE outbox SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = $3 \
                         WHERE id = $1 AND state = 'sending' AND lease_owner = $2",
                    )
                    .bind(id).bind(worker).bind(now)
                    .execute(&self.pool).await?,
                    OutboxEnd::Failed { error } => sqlx::query(
                        "UPDATE outbox SET state = 'failed', lease_owner = NULL, lease_until = NULL, last_error = $4, \
                         updated_at = $3 WHERE id = $1 AND state = 'sending' AND lease_owner = $2",
                    )
                    .bind(id).bind(worker).bind(now).bind(error)
                    .execute(&self.pool).await?,
                    OutboxEnd::Retry { error, run_after } => sqlx::query(
                        "UPDATE outbox SET state = CASE WHEN EXISTS (SELECT 1 FROM outbox p WHERE \
                         p.coalesce_key = outbox.coalesce_key AND p.state = 'pending') THEN 'superseded' ELSE 'pending' END, \
                         lease_owner = NULL, lease_until = NULL, last_error = $4, run_after = $5, updated_at = $3 \
                         WHERE id = $1 AND state = 'sending' AND lease_owner = $2",
                    )
                    .bind(id).bind(worker).bind(now).bind(error).bind(run_after)
                    .execute(&self.pool).await?,
                };
                Ok(r.rows_affected() == 1)
            }

            async fn outbox_items(&self, connection_id: &$crate::ids::ConnectionId) -> $crate::store::Result<Vec<$crate::store::OutboxItem>> {
                Ok(sqlx::query_as(
                    "SELECT id, connection_id, number, kind, coalesce_key, payload, state, attempts, run_after, lease_owner, \
                     lease_until, last_error, created_at, updated_at FROM outbox WHERE connection_id = $1 ORDER BY created_at, id",
                )
                .bind(connection_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn forge_ref(&self, connection_id: &$crate::ids::ConnectionId, number: i64, kind: &str) -> $crate::store::Result<Option<String>> {
                let row: Option<(String,)> = sqlx::query_as(
                    "SELECT ref_id FROM forge_refs WHERE connection_id = $1 AND number = $2 AND kind = $3",
                )
                .bind(connection_id)
                .bind(number)
                .bind(kind)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|r| r.0))
            }

            async fn put_forge_ref(&self, connection_id: &$crate::ids::ConnectionId, number: i64, kind: &str, ref_id: &str) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO forge_refs (connection_id, number, kind, ref_id) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (connection_id, number, kind) DO UPDATE SET ref_id = excluded.ref_id",
                )
                .bind(connection_id)
                .bind(number)
                .bind(kind)
                .bind(ref_id)
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::CommandStore for $store {
            async fn comment_commands(&self, connection_id: &$crate::ids::ConnectionId, comment_id: &str) -> $crate::store::Result<Vec<(String, String)>> {
                Ok(sqlx::query_as(
                    "SELECT command, outcome FROM comment_commands WHERE connection_id = $1 AND comment_id = $2 ORDER BY created_at, command",
                )
                .bind(connection_id)
                .bind(comment_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn record_comment_command(&self, connection_id: &$crate::ids::ConnectionId, comment_id: &str, command: &str, outcome: &str, now: i64) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO comment_commands (connection_id, comment_id, command, outcome, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(connection_id)
                .bind(comment_id)
                .bind(command)
                .bind(outcome)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::LeaseStore for $store {
            async fn try_lease(&self, name: &str, owner: &str, now: i64, until: i64) -> $crate::store::Result<bool> {
                let r = sqlx::query(
                    "INSERT INTO leases (name, owner, until) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until \
                     WHERE leases.until < $4 OR leases.owner = excluded.owner",
                )
                .bind(name)
                .bind(owner)
                .bind(until)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn release_lease(&self, name: &str, owner: &str) -> $crate::store::Result<()> {
                sqlx::query("DELETE FROM leases WHERE name = $1 AND owner = $2")
                    .bind(name)
                    .bind(owner)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::AuditStore for $store {
            async fn record_audit(&self, caller: &str, action: &str, site_id: Option<&$crate::ids::SiteId>, detail: &str) -> $crate::store::Result<()> {
                sqlx::query("INSERT INTO audit_events (id, at, caller, action, site_id, detail) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind($crate::store::new_id())
                    .bind($crate::now_ms())
                    .bind(caller)
                    .bind(action)
                    .bind(site_id)
                    .bind(detail)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn audit_events(&self, site_id: Option<&$crate::ids::SiteId>) -> $crate::store::Result<Vec<$crate::store::AuditEvent>> {
                Ok(sqlx::query_as(
                    "SELECT id, at, caller, action, site_id, detail FROM audit_events \
                     WHERE $1 IS NULL OR site_id = $1 ORDER BY at, id",
                )
                .bind(site_id)
                .fetch_all(&self.pool)
                .await?)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::UsageStore for $store {
            async fn add_site_usage(&self, u: &$crate::store::SiteUsage) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO site_usage (site_id, month, cpu_ms, gib_hours, last_bytes, sampled_at) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (site_id, month) DO UPDATE SET cpu_ms = site_usage.cpu_ms + excluded.cpu_ms, \
                     gib_hours = site_usage.gib_hours + excluded.gib_hours, \
                     last_bytes = CASE WHEN excluded.sampled_at > 0 THEN excluded.last_bytes ELSE site_usage.last_bytes END, \
                     sampled_at = CASE WHEN excluded.sampled_at > 0 THEN excluded.sampled_at ELSE site_usage.sampled_at END",
                )
                .bind(&u.site_id)
                .bind(&u.month)
                .bind(u.cpu_ms)
                .bind(u.gib_hours)
                .bind(u.last_bytes)
                .bind(u.sampled_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn site_usage(&self, month: &str) -> $crate::store::Result<Vec<$crate::store::SiteUsage>> {
                Ok(sqlx::query_as(
                    "SELECT site_id, month, cpu_ms, gib_hours, last_bytes, sampled_at FROM site_usage WHERE month = $1",
                )
                .bind(month)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn last_storage_sample(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<Option<(i64, i64)>> {
                Ok(sqlx::query_as(
                    "SELECT last_bytes, sampled_at FROM site_usage WHERE site_id = $1 AND sampled_at > 0 ORDER BY sampled_at DESC LIMIT 1",
                )
                .bind(site_id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn usage_procs(&self) -> $crate::store::Result<Vec<$crate::store::UsageProc>> {
                Ok(sqlx::query_as("SELECT site_id, pid, start_ticks, cpu_ms FROM usage_procs")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn put_usage_proc(&self, p: &$crate::store::UsageProc) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO usage_procs (site_id, pid, start_ticks, cpu_ms) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (pid, start_ticks) DO UPDATE SET cpu_ms = excluded.cpu_ms, site_id = excluded.site_id",
                )
                .bind(&p.site_id)
                .bind(p.pid)
                .bind(p.start_ticks)
                .bind(p.cpu_ms)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn delete_usage_proc(&self, pid: i64, start_ticks: i64) -> $crate::store::Result<()> {
                sqlx::query("DELETE FROM usage_procs WHERE pid = $1 AND start_ticks = $2")
                    .bind(pid)
                    .bind(start_ticks)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::jobs::JobQueue for $store {
            type Error = $crate::store::StoreError;

            async fn enqueue_job(&self, job: &$crate::store::NewJob, now: i64) -> $crate::store::Result<$crate::store::Job> {
                let mut tx = self.pool.begin().await?;
                $crate::store::sql::lock_job_keys!(tx, vec![job.job_key.as_str()]);
                let row = $crate::store::sql::enqueue_in!(tx, job, now);
                tx.commit().await?;
                Ok(row)
            }

            async fn claim_job(&self, worker: &str, now: i64, lease_until: i64) -> $crate::store::Result<Option<$crate::store::Job>> {
                // Strictly in order per key: a job waits while an older job of its key is queued
                // (e.g. waiting out a retry backoff) or running. The state conditions stand in
                // the outer WHERE too: PostgreSQL re-checks them on
                // a row another worker changed meanwhile, so a lost race claims nothing. The
                // unique index on running jobs per key is the last word.
                let claimed: std::result::Result<Option<$crate::store::Job>, sqlx::Error> = sqlx::query_as(concat!(
                    "UPDATE jobs SET state = 'running', lease_owner = $1, lease_until = $3, attempts = attempts + 1, \
                     updated_at = $2 \
                     WHERE ((state = 'queued' AND run_after <= $2) OR (state = 'running' AND lease_until < $2)) \
                     AND id = (SELECT j.id FROM jobs j \
                        WHERE ((j.state = 'queued' AND j.run_after <= $2) OR (j.state = 'running' AND j.lease_until < $2)) \
                        AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.job_key = j.job_key AND r.id <> j.id \
                            AND (r.state = 'running' OR (r.state = 'queued' \
                                AND (r.created_at < j.created_at OR (r.created_at = j.created_at AND r.id < j.id))))) \
                        ORDER BY j.created_at, j.id LIMIT 1) \
                     RETURNING ",
                    $crate::store::sql::job_columns!()
                ))
                .bind(worker)
                .bind(now)
                .bind(lease_until)
                .fetch_optional(&self.pool)
                .await;
                match claimed {
                    Ok(job) => Ok(job),
                    // Another worker started a job of the same key in the same instant.
                    Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }

            async fn heartbeat_job(&self, id: &$crate::ids::JobId, worker: &str, now: i64, lease_until: i64) -> $crate::store::Result<$crate::store::Heartbeat> {
                let row: Option<(i64,)> = sqlx::query_as(
                    "UPDATE jobs SET lease_until = $1, updated_at = $2 \
                     WHERE id = $3 AND lease_owner = $4 AND state = 'running' RETURNING cancel_requested",
                )
                .bind(lease_until)
                .bind(now)
                .bind(id)
                .bind(worker)
                .fetch_optional(&self.pool)
                .await?;
                Ok(match row {
                    Some((c,)) => $crate::store::Heartbeat::Held { cancel: c != 0 },
                    None => $crate::store::Heartbeat::Lost,
                })
            }

            async fn finish_job(&self, id: &$crate::ids::JobId, worker: &str, end: &$crate::store::JobEnd, now: i64) -> $crate::store::Result<bool> {
                use $crate::store::JobEnd;
                let (state, error, run_after): (&str, Option<&str>, Option<i64>) = match end {
                    JobEnd::Done => ("done", None, None),
                    JobEnd::Retry { error, run_after } => ("retry", Some(error), Some(*run_after)),
                    JobEnd::Failed { error } => ("failed", Some(error), None),
                    JobEnd::Cancelled { reason } => ("cancelled", Some(reason), None),
                };
                let done = sqlx::query(
                    "UPDATE jobs SET \
                       state = CASE WHEN $1 = 'retry' AND attempts < max_attempts THEN 'queued' \
                                    WHEN $1 = 'retry' THEN 'failed' ELSE $1 END, \
                       run_after = COALESCE($2, run_after), last_error = $3, lease_owner = NULL, lease_until = NULL, \
                       updated_at = $4 \
                     WHERE id = $5 AND lease_owner = $6 AND state = 'running'",
                )
                .bind(state)
                .bind(run_after)
                .bind(error)
                .bind(now)
                .bind(id)
                .bind(worker)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn job(&self, id: &$crate::ids::JobId) -> $crate::store::Result<Option<$crate::store::Job>> {
                Ok(sqlx::query_as(concat!("SELECT ", $crate::store::sql::job_columns!(), " FROM jobs WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn jobs_for_key(&self, key: &str) -> $crate::store::Result<Vec<$crate::store::Job>> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::job_columns!(),
                    " FROM jobs WHERE job_key = $1 ORDER BY created_at, id"
                ))
                .bind(key)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn start_job_now(&self, job: &$crate::store::NewJob, worker: &str, now: i64, lease_until: i64) -> $crate::store::Result<Option<$crate::store::Job>> {
                let r = sqlx::query_as(concat!(
                    "INSERT INTO jobs (id, kind, job_key, head_sha, payload, state, attempts, max_attempts, run_after, \
                     lease_owner, lease_until, cancel_requested, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 'running', 1, $6, $7, $8, $9, 0, $7, $7) RETURNING ",
                    $crate::store::sql::job_columns!()
                ))
                .bind($crate::store::new_id())
                .bind(&job.kind)
                .bind(&job.job_key)
                .bind(&job.head_sha)
                .bind(&job.payload)
                .bind(job.max_attempts)
                .bind(now)
                .bind(worker)
                .bind(lease_until)
                .fetch_one(&self.pool)
                .await;
                match r {
                    Ok(j) => Ok(Some(j)),
                    Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                        // Busy, unless the running job is one of this kind whose holder died
                        // (its lease expired): then it is taken over.
                        Ok(sqlx::query_as(concat!(
                            "UPDATE jobs SET lease_owner = $1, lease_until = $2, attempts = attempts + 1, updated_at = $3 \
                             WHERE job_key = $4 AND kind = $5 AND state = 'running' AND lease_until < $3 RETURNING ",
                            $crate::store::sql::job_columns!()
                        ))
                        .bind(worker)
                        .bind(lease_until)
                        .bind(now)
                        .bind(&job.job_key)
                        .bind(&job.kind)
                        .fetch_optional(&self.pool)
                        .await?)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    };
}

/// Store one outbox row on `$exec` (a pool or a transaction): a pending row of the same key has
/// its payload replaced.
macro_rules! enqueue_outbox_in {
    ($exec:expr, $o:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO outbox (id, connection_id, number, kind, coalesce_key, payload, state, attempts, run_after, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7) \
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
        .execute($exec)
        .await?
    };
}

/// The columns of `previews`, in `Preview`'s order.
macro_rules! preview_cols {
    () => {
        "id, connection_id, number, site_name, site_id, state, head_sha, ready_sha, approved_sha, is_fork, \
         reason, port, pid, received_at, created_at, updated_at, title, expires_at, teardown_step, warned_expiry, ttl_ms"
    };
}

pub(super) use enqueue_outbox_in;
pub(super) use impl_store;
pub(super) use preview_cols;
