//! The write-back outbox and the ids forges gave back.

macro_rules! impl_outbox {
    ($store:ty) => {
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

            async fn pr_outbox(&self, connection_id: &$crate::ids::ConnectionId, number: i64) -> $crate::store::Result<Vec<$crate::store::OutboxItem>> {
                Ok(sqlx::query_as(
                    "SELECT id, connection_id, number, kind, coalesce_key, payload, state, attempts, run_after, lease_owner, \
                     lease_until, last_error, created_at, updated_at FROM outbox WHERE connection_id = $1 AND number = $2 \
                     ORDER BY created_at, id",
                )
                .bind(connection_id)
                .bind(number)
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
    };
}

pub(in crate::store) use impl_outbox;
