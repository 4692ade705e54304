//! Backups and their repositories' passphrases (sealed).

macro_rules! impl_backups {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::BackupStore for $store {
            async fn backup_passphrase(&self, url: &str) -> $crate::store::Result<Option<String>> {
                let row: Option<(String,)> =
                    sqlx::query_as("SELECT passphrase FROM backup_repositories WHERE url = $1")
                        .bind(url)
                        .fetch_optional(&self.pool)
                        .await?;
                row.map(|(p,)| {
                    $crate::store::sql::open_secret(&self.keyring, p).map(|s| s.expose().to_string())
                })
                .transpose()
            }

            async fn keep_backup_passphrase(&self, url: &str, passphrase: &str) -> $crate::store::Result<String> {
                sqlx::query(
                    "INSERT INTO backup_repositories (url, passphrase, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (url) DO NOTHING",
                )
                .bind(url)
                .bind(self.keyring.seal(passphrase))
                .bind($crate::now_ms())
                .execute(&self.pool)
                .await?;
                self.backup_passphrase(url).await?.ok_or_else(|| {
                    $crate::store::StoreError::Corrupt(format!("the passphrase of {url} vanished"))
                })
            }

            async fn insert_backup(&self, b: &$crate::store::Backup) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO backups (id, site_id, site_name, repository, snapshot_id, source_path, tags, \
                     resources, files, bytes, bytes_added, created_at, created_by, manifest) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                )
                .bind(&b.id)
                .bind(&b.site_id)
                .bind(&b.site_name)
                .bind(&b.repository)
                .bind(&b.snapshot_id)
                .bind(&b.source_path)
                .bind(&b.tags)
                .bind(&b.resources)
                .bind(b.files)
                .bind(b.bytes)
                .bind(b.bytes_added)
                .bind(b.created_at)
                .bind(&b.created_by)
                .bind(&b.manifest)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn backups(&self, site_id: Option<&$crate::ids::SiteId>) -> $crate::store::Result<Vec<$crate::store::Backup>> {
                Ok(sqlx::query_as(
                    concat!("SELECT ", $crate::store::sql::backups::backup_columns!(), " FROM backups b \
                     WHERE ($1 IS NULL OR b.site_id = $1) ORDER BY b.created_at DESC, b.id DESC"),
                )
                .bind(site_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn insert_drill(&self, d: &$crate::store::Drill) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO backup_drills (id, backup_id, at, ok, detail, duration_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&d.id)
                .bind(&d.backup_id)
                .bind(d.at)
                .bind(d.ok as i32)
                .bind(&d.detail)
                .bind(d.duration_ms)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn delete_backups(&self, snapshot_ids: &[String]) -> $crate::store::Result<u64> {
                let mut tx = self.pool.begin().await?;
                let mut n = 0;
                for id in snapshot_ids {
                    sqlx::query(
                        "DELETE FROM backup_drills WHERE backup_id IN \
                         (SELECT id FROM backups WHERE $1 LIKE snapshot_id || '%')",
                    )
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    // restic names a snapshot by its full id; a backup row keeps the short
                    // one restic printed (hex: no LIKE wildcard in it).
                    n += sqlx::query("DELETE FROM backups WHERE $1 LIKE snapshot_id || '%'")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                Ok(n)
            }

            async fn drill_counts(&self) -> $crate::store::Result<(i64, i64)> {
                let (passed, failed): (i64, i64) = sqlx::query_as(
                    "SELECT CAST(COALESCE(SUM(CASE WHEN ok = 1 THEN 1 ELSE 0 END), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(CASE WHEN ok = 1 THEN 0 ELSE 1 END), 0) AS BIGINT) FROM backup_drills",
                )
                .fetch_one(&self.pool)
                .await?;
                Ok((passed, failed))
            }

            async fn backup_schedules(&self) -> $crate::store::Result<Vec<($crate::ids::SiteId, bool)>> {
                let rows: Vec<($crate::ids::SiteId, i64)> =
                    sqlx::query_as("SELECT site_id, CAST(scheduled AS BIGINT) FROM site_backup_settings")
                        .fetch_all(&self.pool)
                        .await?;
                Ok(rows.into_iter().map(|(s, on)| (s, on != 0)).collect())
            }

            async fn set_backup_schedule(
                &self,
                site_id: &$crate::ids::SiteId,
                scheduled: Option<bool>,
            ) -> $crate::store::Result<()> {
                match scheduled {
                    Some(on) => {
                        sqlx::query(
                            "INSERT INTO site_backup_settings (site_id, scheduled) VALUES ($1, $2) \
                             ON CONFLICT (site_id) DO UPDATE SET scheduled = excluded.scheduled",
                        )
                        .bind(site_id)
                        .bind(on as i64)
                        .execute(&self.pool)
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM site_backup_settings WHERE site_id = $1")
                            .bind(site_id)
                            .execute(&self.pool)
                            .await?;
                    }
                }
                Ok(())
            }

            async fn backup_retention(
                &self,
                scope: $crate::store::RetentionScope,
                id: &str,
            ) -> $crate::store::Result<Option<$crate::store::RetentionRow>> {
                Ok(sqlx::query_as(
                    "SELECT CAST(keep_last AS BIGINT) AS keep_last, CAST(keep_daily AS BIGINT) AS keep_daily, \
                     CAST(keep_weekly AS BIGINT) AS keep_weekly, CAST(keep_monthly AS BIGINT) AS keep_monthly \
                     FROM backup_retention WHERE scope = $1 AND scope_id = $2",
                )
                .bind(scope.as_str())
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn set_backup_retention(
                &self,
                scope: $crate::store::RetentionScope,
                id: &str,
                policy: Option<$crate::store::RetentionRow>,
            ) -> $crate::store::Result<()> {
                match policy {
                    Some(p) => {
                        sqlx::query(
                            "INSERT INTO backup_retention (scope, scope_id, keep_last, keep_daily, keep_weekly, keep_monthly) \
                             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope, scope_id) DO UPDATE SET \
                             keep_last = excluded.keep_last, keep_daily = excluded.keep_daily, \
                             keep_weekly = excluded.keep_weekly, keep_monthly = excluded.keep_monthly",
                        )
                        .bind(scope.as_str())
                        .bind(id)
                        .bind(p.keep_last)
                        .bind(p.keep_daily)
                        .bind(p.keep_weekly)
                        .bind(p.keep_monthly)
                        .execute(&self.pool)
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM backup_retention WHERE scope = $1 AND scope_id = $2")
                            .bind(scope.as_str())
                            .bind(id)
                            .execute(&self.pool)
                            .await?;
                    }
                }
                Ok(())
            }

            async fn forget_offsite_copies(&self, snapshot_ids: &[String]) -> $crate::store::Result<u64> {
                let mut n = 0;
                for id in snapshot_ids {
                    // The ids kept are restic's (hex): no LIKE wildcard in them.
                    n += sqlx::query(
                        "UPDATE backups SET offsite_snapshot_id = NULL WHERE $1 LIKE offsite_snapshot_id || '%'",
                    )
                    .bind(id)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                }
                Ok(n)
            }

            async fn set_offsite_snapshot(&self, backup_id: &str, snapshot_id: &str) -> $crate::store::Result<()> {
                sqlx::query("UPDATE backups SET offsite_snapshot_id = $1 WHERE id = $2")
                    .bind(snapshot_id)
                    .bind(backup_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn backup(&self, id: &str) -> $crate::store::Result<Option<$crate::store::Backup>> {
                if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                    return Ok(None);
                }
                let mut rows: Vec<$crate::store::Backup> = sqlx::query_as(
                    concat!("SELECT ", $crate::store::sql::backups::backup_columns!(), " FROM backups b \
                     WHERE b.id LIKE $1 OR b.snapshot_id LIKE $1 LIMIT 2"),
                )
                // Hex digits and dashes only (checked above): no LIKE wildcard in it.
                .bind(format!("{id}%"))
                .fetch_all(&self.pool)
                .await?;
                Ok(if rows.len() == 1 { rows.pop() } else { None })
            }
        }
    };
}

pub(in crate::store) use impl_backups;

macro_rules! backup_columns {
    () => {
        "b.id, b.site_id, b.site_name, b.repository, b.snapshot_id, b.source_path, b.tags, b.resources, \
         b.files, b.bytes, b.bytes_added, b.created_at, b.created_by, b.manifest, b.offsite_snapshot_id, \
         (SELECT MAX(d.at) FROM backup_drills d WHERE d.backup_id = b.id) AS last_drill_at, \
         (SELECT CAST(d.ok AS BIGINT) FROM backup_drills d WHERE d.backup_id = b.id ORDER BY d.at DESC, d.id DESC LIMIT 1) AS last_drill_ok"
    };
}
pub(in crate::store) use backup_columns;
