//! Passwords, browser sessions, invitations, notifications and their mail outbox.

macro_rules! impl_dashboard {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::DashboardStore for $store {
            async fn set_password_hash(&self, user_id: &$crate::ids::UserId, hash: Option<&str>) -> $crate::store::Result<()> {
                let mut tx = self.pool.begin().await?;
                let r = sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                    .bind(user_id)
                    .bind(hash)
                    .execute(&mut *tx)
                    .await?;
                if r.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound("user".into()));
                }
                sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn user_password(&self, login: &str) -> $crate::store::Result<Option<($crate::store::User, Option<String>)>> {
                let row: Option<($crate::ids::UserId, String, Option<String>, Option<String>, i64, Option<String>)> = sqlx::query_as(
                    "SELECT id, login, name, email, created_at, password_hash FROM users WHERE login = $1",
                )
                .bind(login)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|(id, login, name, email, created_at, hash)| {
                    ($crate::store::User { id, login, name, email, created_at }, hash)
                }))
            }

            async fn user_by_id(&self, id: &$crate::ids::UserId) -> $crate::store::Result<Option<$crate::store::User>> {
                Ok(sqlx::query_as("SELECT id, login, name, email, created_at FROM users WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn member_users(&self, workspace_id: &$crate::ids::WorkspaceId) -> $crate::store::Result<Vec<($crate::store::User, Vec<String>)>> {
                let rows: Vec<($crate::ids::UserId, String, Option<String>, Option<String>, i64, String)> = sqlx::query_as(
                    "SELECT u.id, u.login, u.name, u.email, u.created_at, m.roles FROM members m \
                     JOIN users u ON u.id = m.user_id WHERE m.workspace_id = $1 ORDER BY u.login",
                )
                .bind(workspace_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, login, name, email, created_at, roles)| {
                        (
                            $crate::store::User { id, login, name, email, created_at },
                            $crate::store::sql::role_list(&roles),
                        )
                    })
                    .collect())
            }

            async fn create_session(&self, id_hash: &str, user_id: &$crate::ids::UserId, csrf: &str, expires_at: i64) -> $crate::store::Result<()> {
                let now = $crate::now_ms();
                // Expired sessions go when new ones come: the table holds live ones.
                sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                sqlx::query("INSERT INTO sessions (id_hash, user_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(id_hash)
                    .bind(user_id)
                    .bind(csrf)
                    .bind(now)
                    .bind(expires_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn session(&self, id_hash: &str, now: i64) -> $crate::store::Result<Option<$crate::store::Session>> {
                let row: Option<($crate::ids::UserId, String, Option<String>, Option<String>, i64, String, i64)> = sqlx::query_as(
                    "SELECT u.id, u.login, u.name, u.email, u.created_at, s.csrf, s.expires_at FROM sessions s \
                     JOIN users u ON u.id = s.user_id WHERE s.id_hash = $1 AND s.expires_at > $2",
                )
                .bind(id_hash)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|(id, login, name, email, created_at, csrf, expires_at)| $crate::store::Session {
                    user: $crate::store::User { id, login, name, email, created_at },
                    csrf,
                    expires_at,
                }))
            }

            async fn delete_session(&self, id_hash: &str) -> $crate::store::Result<()> {
                sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                    .bind(id_hash)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn create_invitation(&self, i: &$crate::store::Invitation) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO invitations (token_hash, workspace_id, email, roles, invited_by, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&i.token_hash)
                .bind(&i.workspace_id)
                .bind(&i.email)
                .bind(&i.roles)
                .bind(&i.invited_by)
                .bind(i.created_at)
                .bind(i.expires_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn invitation(&self, token_hash: &str) -> $crate::store::Result<Option<$crate::store::Invitation>> {
                Ok(sqlx::query_as(
                    "SELECT token_hash, workspace_id, email, roles, invited_by, created_at, expires_at, accepted_at \
                     FROM invitations WHERE token_hash = $1",
                )
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn accept_invitation(&self, token_hash: &str, now: i64) -> $crate::store::Result<bool> {
                let r = sqlx::query("UPDATE invitations SET accepted_at = $2 WHERE token_hash = $1 AND accepted_at IS NULL AND expires_at > $2")
                    .bind(token_hash)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn add_notifications(&self, list: &[$crate::store::NewNotification], now: i64) -> $crate::store::Result<u64> {
                let mut tx = self.pool.begin().await?;
                let mut stored = 0;
                for n in list {
                    let r = sqlx::query(
                        "INSERT INTO notifications (id, user_id, workspace_id, kind, inbox, event_key, subject, body, link, \
                         created_at, mail_state, mail_to, run_after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $10) \
                         ON CONFLICT (event_key, user_id) DO NOTHING",
                    )
                    .bind($crate::store::new_id())
                    .bind(&n.user_id)
                    .bind(n.workspace_id.as_ref())
                    .bind(&n.kind)
                    .bind(n.inbox as i64)
                    .bind(&n.event_key)
                    .bind(&n.subject)
                    .bind(&n.body)
                    .bind(n.link.as_deref())
                    .bind(now)
                    .bind(if n.mail_to.is_some() { "pending" } else { "none" })
                    .bind(n.mail_to.as_deref())
                    .execute(&mut *tx)
                    .await?;
                    stored += r.rows_affected();
                }
                tx.commit().await?;
                Ok(stored)
            }

            async fn inbox(&self, user_id: &$crate::ids::UserId, limit: i64) -> $crate::store::Result<Vec<$crate::store::Notification>> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ", $crate::store::sql::dashboard::notification_columns!(),
                    " FROM notifications WHERE user_id = $1 AND inbox = 1 ORDER BY created_at DESC, id DESC LIMIT $2"
                ))
                .bind(user_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn unread_count(&self, user_id: &$crate::ids::UserId) -> $crate::store::Result<i64> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM notifications WHERE user_id = $1 AND inbox = 1 AND read_at IS NULL")
                    .bind(user_id)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(n)
            }

            async fn mark_read(&self, user_id: &$crate::ids::UserId, id: Option<&str>, now: i64) -> $crate::store::Result<u64> {
                let r = sqlx::query(
                    "UPDATE notifications SET read_at = $3 WHERE user_id = $1 AND read_at IS NULL AND ($2 IS NULL OR id = $2)",
                )
                .bind(user_id)
                .bind(id)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected())
            }

            async fn claim_mails(&self, now: i64, lease_until: i64, limit: i64) -> $crate::store::Result<Vec<$crate::store::Notification>> {
                Ok(sqlx::query_as(concat!(
                    "UPDATE notifications SET mail_state = 'sending', lease_until = $2, attempts = attempts + 1 WHERE id IN (",
                    "SELECT id FROM notifications WHERE (mail_state = 'pending' AND run_after <= $1) ",
                    "OR (mail_state = 'sending' AND lease_until < $1) ORDER BY run_after, id LIMIT $3) ",
                    "AND (mail_state = 'pending' OR (mail_state = 'sending' AND lease_until < $1)) RETURNING ",
                    $crate::store::sql::dashboard::notification_columns!()
                ))
                .bind(now)
                .bind(lease_until)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn mail_sent(&self, id: &str, now: i64) -> $crate::store::Result<()> {
                sqlx::query("UPDATE notifications SET mail_state = 'sent', sent_at = $2, lease_until = NULL, last_error = NULL WHERE id = $1")
                    .bind(id)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn mail_failed(&self, id: &str, error: &str, run_after: Option<i64>) -> $crate::store::Result<()> {
                sqlx::query(
                    "UPDATE notifications SET mail_state = $2, run_after = COALESCE($3, run_after), lease_until = NULL, \
                     last_error = $4 WHERE id = $1",
                )
                .bind(id)
                .bind(if run_after.is_some() { "pending" } else { "failed" })
                .bind(run_after)
                .bind(error)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn all_notifications(&self) -> $crate::store::Result<Vec<$crate::store::Notification>> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ", $crate::store::sql::dashboard::notification_columns!(),
                    " FROM notifications ORDER BY created_at, id"
                ))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn notification_prefs(&self, user_id: &$crate::ids::UserId) -> $crate::store::Result<Vec<$crate::store::NotificationPref>> {
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                    "SELECT kind, inbox, email FROM notification_prefs WHERE user_id = $1 ORDER BY kind",
                )
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(kind, inbox, email)| $crate::store::NotificationPref { kind, inbox: inbox != 0, email: email != 0 })
                    .collect())
            }

            async fn set_notification_pref(&self, user_id: &$crate::ids::UserId, p: &$crate::store::NotificationPref) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO notification_prefs (user_id, kind, inbox, email) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (user_id, kind) DO UPDATE SET inbox = excluded.inbox, email = excluded.email",
                )
                .bind(user_id)
                .bind(&p.kind)
                .bind(p.inbox as i64)
                .bind(p.email as i64)
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }
    };
}

macro_rules! notification_columns {
    () => {
        "id, user_id, workspace_id, kind, inbox, event_key, subject, body, link, created_at, read_at, \
         mail_state, mail_to, attempts, last_error, sent_at"
    };
}

pub(in crate::store) use impl_dashboard;
pub(in crate::store) use notification_columns;
