//! Users, their identities and API tokens; workspaces and members.

macro_rules! impl_accounts {
    ($store:ty) => {
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

            async fn workspace_settings(&self, workspace_id: &$crate::ids::WorkspaceId) -> $crate::store::Result<$crate::store::WorkspaceSettings> {
                let row: Option<$crate::store::WorkspaceSettings> = sqlx::query_as(
                    "SELECT workspace_id, log_retention_ms, log_max_bytes FROM workspace_settings WHERE workspace_id = $1",
                )
                .bind(workspace_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.unwrap_or_else(|| $crate::store::WorkspaceSettings {
                    workspace_id: workspace_id.clone(),
                    log_retention_ms: None,
                    log_max_bytes: None,
                }))
            }

            async fn put_workspace_settings(&self, s: &$crate::store::WorkspaceSettings) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO workspace_settings (workspace_id, log_retention_ms, log_max_bytes) VALUES ($1, $2, $3) \
                     ON CONFLICT (workspace_id) DO UPDATE SET log_retention_ms = excluded.log_retention_ms, \
                     log_max_bytes = excluded.log_max_bytes",
                )
                .bind(&s.workspace_id)
                .bind(s.log_retention_ms)
                .bind(s.log_max_bytes)
                .execute(&self.pool)
                .await?;
                Ok(())
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
    };
}

pub(in crate::store) use impl_accounts;
