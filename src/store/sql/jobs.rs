//! The job queue and named leases.

macro_rules! impl_jobs {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::jobs::JobQueue for $store {
            type Error = $crate::store::StoreError;

            async fn enqueue_job(&self, job: &$crate::jobs::NewJob, now: i64) -> $crate::store::Result<$crate::jobs::Job> {
                let mut tx = self.pool.begin().await?;
                $crate::store::sql::lock_job_keys!(tx, vec![job.job_key.as_str()]);
                let row = $crate::store::sql::enqueue_in!(tx, job, now);
                tx.commit().await?;
                Ok(row)
            }

            async fn claim_job_in(&self, worker: &str, region: Option<&str>, now: i64, lease_until: i64) -> $crate::store::Result<Option<$crate::jobs::Job>> {
                // Strictly in order per key: a job waits while an older job of its key is queued
                // (e.g. waiting out a retry backoff) or running. The state conditions stand in
                // the outer WHERE too: PostgreSQL re-checks them on
                // a row another worker changed meanwhile, so a lost race claims nothing. The
                // unique index on running jobs per key is the last word.
                let claimed: std::result::Result<Option<$crate::jobs::Job>, sqlx::Error> = sqlx::query_as(concat!(
                    "UPDATE jobs SET state = 'running', lease_owner = $1, lease_until = $3, attempts = attempts + 1, \
                     updated_at = $2 \
                     WHERE ((state = 'queued' AND run_after <= $2) OR (state = 'running' AND lease_until < $2)) \
                     AND id = (SELECT j.id FROM jobs j \
                        WHERE ((j.state = 'queued' AND j.run_after <= $2) OR (j.state = 'running' AND j.lease_until < $2)) \
                        AND ($4 IS NULL OR j.region = $4) \
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
                .bind(region)
                .fetch_optional(&self.pool)
                .await;
                match claimed {
                    Ok(job) => Ok(job),
                    // Another worker started a job of the same key in the same instant.
                    Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }

            async fn heartbeat_job(&self, id: &$crate::ids::JobId, worker: &str, now: i64, lease_until: i64) -> $crate::store::Result<$crate::jobs::Heartbeat> {
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
                    Some((c,)) => $crate::jobs::Heartbeat::Held { cancel: c != 0 },
                    None => $crate::jobs::Heartbeat::Lost,
                })
            }

            async fn finish_job(&self, id: &$crate::ids::JobId, worker: &str, end: &$crate::jobs::JobEnd, now: i64) -> $crate::store::Result<bool> {
                use $crate::jobs::JobEnd;
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

            async fn job(&self, id: &$crate::ids::JobId) -> $crate::store::Result<Option<$crate::jobs::Job>> {
                Ok(sqlx::query_as(concat!("SELECT ", $crate::store::sql::job_columns!(), " FROM jobs WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn jobs_for_key(&self, key: &str) -> $crate::store::Result<Vec<$crate::jobs::Job>> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::job_columns!(),
                    " FROM jobs WHERE job_key = $1 ORDER BY created_at, id"
                ))
                .bind(key)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn start_job_now(&self, job: &$crate::jobs::NewJob, worker: &str, now: i64, lease_until: i64) -> $crate::store::Result<Option<$crate::jobs::Job>> {
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
                .execute(&self.lease_pool)
                .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn release_lease(&self, name: &str, owner: &str) -> $crate::store::Result<()> {
                sqlx::query("DELETE FROM leases WHERE name = $1 AND owner = $2")
                    .bind(name)
                    .bind(owner)
                    .execute(&self.lease_pool)
                    .await?;
                Ok(())
            }

            async fn leases_with_prefix(&self, prefix: &str, now: i64) -> $crate::store::Result<Vec<(String, String)>> {
                // substr, not LIKE: the prefix is matched as it is, whatever characters it holds.
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT name, owner FROM leases WHERE substr(name, 1, length($1)) = $1 AND until >= $2 ORDER BY name",
                )
                .bind(prefix)
                .bind(now)
                .fetch_all(&self.lease_pool)
                .await?;
                Ok(rows)
            }
        }
    };
}

pub(in crate::store) use impl_jobs;
