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
                     resources, files, bytes, bytes_added, created_at, created_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn backups(&self, site_id: Option<&$crate::ids::SiteId>) -> $crate::store::Result<Vec<$crate::store::Backup>> {
                Ok(sqlx::query_as(
                    "SELECT id, site_id, site_name, repository, snapshot_id, source_path, tags, resources, files, \
                     bytes, bytes_added, created_at, created_by FROM backups \
                     WHERE ($1 IS NULL OR site_id = $1) ORDER BY created_at DESC, id DESC",
                )
                .bind(site_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn backup_schedules(&self) -> $crate::store::Result<Vec<($crate::ids::SiteId, bool)>> {
                let rows: Vec<($crate::ids::SiteId, i64)> =
                    sqlx::query_as("SELECT site_id, scheduled FROM site_backup_settings")
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

            async fn backup(&self, id: &str) -> $crate::store::Result<Option<$crate::store::Backup>> {
                if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                    return Ok(None);
                }
                let mut rows: Vec<$crate::store::Backup> = sqlx::query_as(
                    "SELECT id, site_id, site_name, repository, snapshot_id, source_path, tags, resources, files, \
                     bytes, bytes_added, created_at, created_by FROM backups \
                     WHERE id LIKE $1 OR snapshot_id LIKE $1 LIMIT 2",
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
