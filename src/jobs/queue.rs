//! The durable queue's records and the operations a worker needs from whatever keeps them
//! ([`JobQueue`], implemented by the store). Defined here, below the store, so the worker pool
//! knows nothing of the store and the store imports the queue's vocabulary, not the reverse.

use async_trait::async_trait;
use serde::Serialize;

use super::JobKind;

/// A unit of background work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: crate::ids::JobId,
    pub kind: JobKind,
    pub job_key: String,
    pub head_sha: Option<String>,
    pub payload: String,
    /// `queued`, `running`, `done`, `failed`, `cancelled`.
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_after: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub cancel_requested: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: JobKind,
    pub job_key: String,
    pub head_sha: Option<String>,
    pub payload: String,
    pub max_attempts: i64,
    /// Newest wins: queued jobs of the same key are cancelled and the running one is asked to
    /// stop.
    pub supersede: bool,
}

/// How a worker ends its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Done,
    /// Try again at `run_after` (ms), or fail for good when attempts are used up.
    Retry {
        error: String,
        run_after: i64,
    },
    Failed {
        error: String,
    },
    Cancelled {
        reason: String,
    },
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lease is extended; `cancel` says a newer job asked this one to stop.
    Held { cancel: bool },
    /// Another worker owns the job now (this lease expired): stop at once, write nothing.
    Lost,
}

/// What the worker pool needs from the place jobs are kept (the store implements it for both
/// backends, in the same SQL as everything else).
#[async_trait]
pub trait JobQueue: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Queue a job (and, with `supersede`, cancel older queued jobs of its key and ask the
    /// running one to stop), atomically.
    async fn enqueue_job(&self, job: &NewJob, now: i64) -> Result<Job, Self::Error>;
    /// Take the oldest runnable job whose key has no other running job and no older queued
    /// job (strict order per key), or a running job whose lease expired; it becomes `running` under `worker`'s lease until `lease_until`.
    async fn claim_job(
        &self,
        worker: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<Job>, Self::Error> {
        self.claim_job_in(worker, None, now, lease_until).await
    }
    /// As [`JobQueue::claim_job`], among the jobs of `region` only (`None`: any job).
    async fn claim_job_in(
        &self,
        worker: &str,
        region: Option<&str>,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<Job>, Self::Error>;
    /// Extend `worker`'s lease on a running job.
    async fn heartbeat_job(
        &self,
        id: &crate::ids::JobId,
        worker: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Heartbeat, Self::Error>;
    /// End a job `worker` holds; false if the lease was lost (nothing is written then).
    async fn finish_job(
        &self,
        id: &crate::ids::JobId,
        worker: &str,
        end: &JobEnd,
        now: i64,
    ) -> Result<bool, Self::Error>;
    async fn job(&self, id: &crate::ids::JobId) -> Result<Option<Job>, Self::Error>;
    /// Oldest first.
    async fn jobs_for_key(&self, key: &str) -> Result<Vec<Job>, Self::Error>;

    /// Insert `job` already running under `worker`'s lease; `None` when a job of its key is
    /// running (the key is busy).
    async fn start_job_now(
        &self,
        job: &NewJob,
        worker: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<Job>, Self::Error>;
}
