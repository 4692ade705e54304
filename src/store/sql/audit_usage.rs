//! The audit trail and usage samples.

macro_rules! impl_audit_usage {
    ($store:ty) => {
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
    };
}

pub(in crate::store) use impl_audit_usage;
