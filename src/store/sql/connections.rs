//! Repository connections and the deliveries that arrive on them.

macro_rules! impl_connections {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::ConnectionStore for $store {
            async fn create_connection(
                &self,
                c: &$crate::store::NewConnection,
            ) -> $crate::store::Result<$crate::store::Connection> {
                let row: $crate::store::sql::ConnectionRow = sqlx::query_as(concat!(
                    "INSERT INTO connections (id, workspace_id, forge, repo, api_url, git_url, secret, created_at, region) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
                    $crate::store::sql::connection_columns!()
                ))
                .bind($crate::store::new_id())
                .bind(&c.workspace_id)
                .bind(c.forge.as_str())
                .bind(&c.repo)
                .bind(&c.api_url)
                .bind(&c.git_url)
                .bind($crate::store::sql::sealed_secret(&self.keyring, &c.secret)?)
                .bind($crate::now_ms())
                .bind(&c.region)
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_unique("connection"))?;
                row.open(&self.keyring)
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
                row.map(|r| r.open(&self.keyring)).transpose()
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
                rows.into_iter().map(|r| r.open(&self.keyring)).collect()
            }

            async fn set_connection_secrets(
                &self,
                id: &$crate::ids::ConnectionId,
                secret: &$crate::secret::WebhookSecret,
                previous: Option<&$crate::secret::WebhookSecret>,
            ) -> $crate::store::Result<bool> {
                let sealed = $crate::store::sql::sealed_secret(&self.keyring, secret)?;
                let done = sqlx::query(
                    "UPDATE connections SET secret = $1, previous_secret = $2, rotated_at = $3 \
                     WHERE id = $4 AND deleted_at IS NULL",
                )
                .bind(sealed)
                .bind(previous.map(|p| self.keyring.seal(p.expose())))
                .bind($crate::now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn put_github_app(&self, a: &$crate::store::GithubApp) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO github_apps (slug, app_id, name, owner, html_url, client_id, client_secret, \
                     webhook_secret, pem, workspace_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (slug) DO UPDATE SET app_id = excluded.app_id, name = excluded.name, \
                     owner = excluded.owner, html_url = excluded.html_url, client_id = excluded.client_id, \
                     client_secret = excluded.client_secret, webhook_secret = excluded.webhook_secret, \
                     pem = excluded.pem, workspace_id = excluded.workspace_id",
                )
                .bind(&a.slug)
                .bind(a.app_id)
                .bind(&a.name)
                .bind(&a.owner)
                .bind(&a.html_url)
                .bind(&a.client_id)
                .bind(self.keyring.seal(&a.client_secret))
                .bind($crate::store::sql::sealed_secret(&self.keyring, &a.webhook_secret)?)
                .bind(self.keyring.seal(&a.pem))
                .bind(&a.workspace_id)
                .bind(a.created_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn github_apps(&self) -> $crate::store::Result<Vec<$crate::store::GithubApp>> {
                #[allow(clippy::type_complexity)]
                let rows: Vec<(String, i64, String, String, String, String, String, String, String, $crate::ids::WorkspaceId, i64)> =
                    sqlx::query_as(
                        "SELECT slug, CAST(app_id AS BIGINT), name, owner, html_url, client_id, client_secret, \
                         webhook_secret, pem, workspace_id, CAST(created_at AS BIGINT) FROM github_apps \
                         ORDER BY created_at, slug",
                    )
                    .fetch_all(&self.pool)
                    .await?;
                let open = |v: String| {
                    $crate::store::sql::open_secret(&self.keyring, v).map(|s| s.expose().to_string())
                };
                rows.into_iter()
                    .map(|r| {
                        Ok($crate::store::GithubApp {
                            slug: r.0,
                            app_id: r.1,
                            name: r.2,
                            owner: r.3,
                            html_url: r.4,
                            client_id: r.5,
                            client_secret: open(r.6)?,
                            webhook_secret: $crate::store::sql::open_secret(&self.keyring, r.7)?,
                            pem: open(r.8)?,
                            workspace_id: r.9,
                            created_at: r.10,
                        })
                    })
                    .collect()
            }

            async fn connections_for_repo(
                &self,
                forge: $crate::forge::ForgeKind,
                repo: &str,
            ) -> $crate::store::Result<Vec<$crate::store::Connection>> {
                let rows: Vec<$crate::store::sql::ConnectionRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::connection_columns!(),
                    " FROM connections WHERE forge = $1 AND lower(repo) = lower($2) AND deleted_at IS NULL \
                     ORDER BY created_at, id"
                ))
                .bind(forge.as_str())
                .bind(repo)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(|r| r.open(&self.keyring)).collect()
            }

            async fn put_installation(&self, i: &$crate::store::GithubInstallation) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO github_installations (id, app_id, account, workspace_id, suspended_at, deleted_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, NULL, $6) ON CONFLICT (id) DO UPDATE SET app_id = excluded.app_id, \
                     account = excluded.account, workspace_id = excluded.workspace_id, \
                     suspended_at = excluded.suspended_at, deleted_at = NULL",
                )
                .bind(i.id)
                .bind(i.app_id)
                .bind(&i.account)
                .bind(&i.workspace_id)
                .bind(i.suspended_at)
                .bind(i.created_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn installation(&self, id: i64) -> $crate::store::Result<Option<$crate::store::GithubInstallation>> {
                Ok(sqlx::query_as(
                    "SELECT CAST(id AS BIGINT) AS id, CAST(app_id AS BIGINT) AS app_id, account, workspace_id, \
                     CAST(suspended_at AS BIGINT) AS suspended_at, CAST(deleted_at AS BIGINT) AS deleted_at, \
                     CAST(created_at AS BIGINT) AS created_at FROM github_installations WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn set_installation_state(&self, id: i64, suspended: bool, deleted: bool) -> $crate::store::Result<bool> {
                let now = $crate::now_ms();
                let done = sqlx::query(
                    "UPDATE github_installations SET suspended_at = $1, \
                     deleted_at = CASE WHEN $2 THEN $3 ELSE deleted_at END WHERE id = $4",
                )
                .bind(suspended.then_some(now))
                .bind(deleted)
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn set_connection_installation(
                &self,
                id: &$crate::ids::ConnectionId,
                installation: Option<i64>,
            ) -> $crate::store::Result<bool> {
                let done = sqlx::query("UPDATE connections SET installation_id = $1 WHERE id = $2 AND deleted_at IS NULL")
                    .bind(installation)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn set_connection_hook(
                &self,
                id: &$crate::ids::ConnectionId,
                hook_id: Option<&str>,
            ) -> $crate::store::Result<bool> {
                let done = sqlx::query("UPDATE connections SET hook_id = $1 WHERE id = $2 AND deleted_at IS NULL")
                    .bind(hook_id)
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
                // Each job's id is chosen here so its delivery can name it.
                let job_ids: Vec<Option<String>> = batch
                    .iter()
                    .map(|d| d.job.as_ref().map(|_| $crate::store::new_id()))
                    .collect();
                for (d, job_id) in batch.iter().zip(&job_ids) {
                    let done = sqlx::query(
                        "INSERT INTO deliveries (id, connection_id, delivery_key, forge, event, action, outcome, \
                         reason, normalized, payload, received_at, number, job_id) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
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
                    .bind(d.number)
                    .bind(job_id)
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
                let jobs: Vec<(usize, &$crate::jobs::NewJob, i64, &str)> = batch
                    .iter()
                    .zip(&out)
                    .zip(&job_ids)
                    .enumerate()
                    .filter(|(_, ((_, ins), _))| **ins == $crate::store::Inserted::New)
                    .filter_map(|(i, ((d, _), id))| {
                        Some((i, d.job.as_ref()?, d.received_at, id.as_deref()?))
                    })
                    .collect();
                let mut last_superseding: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
                for (i, j, _, _) in &jobs {
                    if j.supersede {
                        last_superseding.insert(j.job_key.as_str(), *i);
                    }
                }
                let mut superseded: std::collections::HashSet<&str> = std::collections::HashSet::new();
                for (i, job, at, id) in jobs {
                    if job.supersede && superseded.insert(job.job_key.as_str()) {
                        $crate::store::sql::supersede_in!(tx, &job.job_key, at);
                    }
                    let later = job.kind.superseded_by_newer()
                        && last_superseding.get(job.job_key.as_str()).is_some_and(|&last| last > i);
                    $crate::store::sql::insert_job_in!(tx, job, if later { "cancelled" } else { "queued" }, at, id);
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
                Ok(sqlx::query_as(concat!(
                    "SELECT ", $crate::store::sql::delivery_cols!(), " FROM deliveries d LEFT JOIN jobs j ON j.id = d.job_id \
                     WHERE ($1 IS NULL OR d.connection_id = $1) ORDER BY d.received_at DESC, d.id DESC LIMIT $2",
                ))
                .bind(connection_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn pr_deliveries(
                &self,
                connection_id: &$crate::ids::ConnectionId,
                number: i64,
                limit: i64,
            ) -> $crate::store::Result<Vec<$crate::store::Delivery>> {
                let mut rows: Vec<$crate::store::Delivery> = sqlx::query_as(concat!(
                    "SELECT ", $crate::store::sql::delivery_cols!(), " FROM deliveries d LEFT JOIN jobs j ON j.id = d.job_id \
                     WHERE d.connection_id = $1 AND d.number = $2 ORDER BY d.received_at DESC, d.id DESC LIMIT $3",
                ))
                .bind(connection_id)
                .bind(number)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.reverse();
                Ok(rows)
            }
        }
    };
}

pub(in crate::store) use impl_connections;
