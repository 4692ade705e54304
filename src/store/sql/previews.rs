//! Previews, their steps, and the slash-commands that ran.

macro_rules! impl_previews {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::PreviewStore for $store {
            async fn put_preview_with_outbox(&self, p: &$crate::store::Preview, rows: &[$crate::store::NewOutbox], now: i64) -> $crate::store::Result<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO previews (id, connection_id, number, site_name, site_id, state, head_sha, ready_sha, \
                     approved_sha, is_fork, reason, port, pid, received_at, created_at, updated_at, title, expires_at, \
                     teardown_step, warned_expiry, ttl_ms, host) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22) \
                     ON CONFLICT (connection_id, number) DO UPDATE SET site_name = excluded.site_name, \
                     site_id = excluded.site_id, state = excluded.state, head_sha = excluded.head_sha, \
                     ready_sha = excluded.ready_sha, approved_sha = excluded.approved_sha, is_fork = excluded.is_fork, \
                     reason = excluded.reason, port = excluded.port, pid = excluded.pid, \
                     received_at = excluded.received_at, updated_at = excluded.updated_at, title = excluded.title, \
                     expires_at = excluded.expires_at, teardown_step = excluded.teardown_step, \
                     warned_expiry = excluded.warned_expiry, ttl_ms = excluded.ttl_ms, host = excluded.host",
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
                .bind(&p.host)
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

            async fn all_last_run_steps(&self) -> $crate::store::Result<Vec<$crate::store::PreviewStep>> {
                Ok(sqlx::query_as(
                    "SELECT s.preview_id, s.run_id, s.step, s.seq, s.started_at, s.ended_at, s.ok, s.detail \
                     FROM preview_steps s WHERE s.run_id = (SELECT t.run_id FROM preview_steps t \
                     WHERE t.preview_id = s.preview_id ORDER BY t.started_at DESC, t.seq DESC LIMIT 1) \
                     ORDER BY s.preview_id, s.seq",
                )
                .fetch_all(&self.pool)
                .await?)
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
    };
}

pub(in crate::store) use impl_previews;
