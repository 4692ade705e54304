//! The durable job queue's workers. Jobs live in the store (`jobs` table, see
//! `Store::enqueue_job` and friends), so a crash or restart loses nothing: a job whose worker
//! died is taken again once its lease expires.
//!
//! Rules, enforced by the store: at most one running job per key (a PR); a superseding job
//! cancels the queued ones of its key and asks the running one to stop (newest head wins);
//! every claim takes a lease that the worker extends by heartbeats; a worker that lost its
//! lease writes nothing. Transient errors are retried with exponential backoff and jitter until
//! `max_attempts`; permanent ones fail at once. Handlers must be idempotent: a job may run again
//! after a crash.
//!
//! This module knows nothing of what a job does: a [`JobHandler`] does the work.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::watch;
use tracing::Instrument;

mod kind;
mod queue;

pub use kind::JobKind;
pub use queue::{Heartbeat, Job, JobEnd, JobQueue, NewJob};

/// The key of a pull request's jobs: `{connection id}#{number}`. Jobs of one key run one at a
/// time, in order.
pub fn pr_key(connection_id: impl std::fmt::Display, number: impl std::fmt::Display) -> String {
    format!("{connection_id}#{number}")
}

/// The connection id and PR number of a key made by [`pr_key`].
pub fn parse_pr_key(key: &str) -> Option<(&str, i64)> {
    key.split_once('#')
        .and_then(|(c, n)| Some((c, n.parse().ok()?)))
}

/// How a handler's run ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Worth trying again later (a network blip, a busy resource).
    #[error("{0}")]
    Transient(String),
    /// Trying again will not help (bad configuration, a build that fails).
    #[error("{0}")]
    Permanent(String),
    /// The handler stopped because the job was cancelled, after cleaning up what it started.
    #[error("cancelled")]
    Cancelled,
}

/// What a running handler can ask its worker.
#[derive(Clone)]
pub struct JobContext {
    cancel: watch::Receiver<bool>,
}

impl JobContext {
    /// True once a newer job of the same key asked this one to stop, or the lease was lost.
    /// Handlers check it between steps and return [`JobError::Cancelled`].
    pub fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves when the job is cancelled (for `select!` around long steps).
    pub async fn until_cancelled(&mut self) {
        let _ = self.cancel.wait_for(|c| *c).await;
    }

    /// The cancellation signal itself, for code that watches it on its own (a build).
    pub fn signal(&self) -> watch::Receiver<bool> {
        self.cancel.clone()
    }
}

#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    async fn run(&self, job: &Job, ctx: JobContext) -> Result<(), JobError>;
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub workers: usize,
    pub lease: Duration,
    /// How often an idle worker looks for work.
    pub poll: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Shown as the lease owner, e.g. `host:pid`.
    pub name: String,
    /// Claim only jobs of this region (`serve --region`); `None`: every job.
    pub region: Option<String>,
    /// Wakes idle workers before their poll interval (new jobs queued in this process; jobs
    /// queued by other processes are found by polling).
    pub wake: Option<Arc<tokio::sync::Notify>>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(200),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            name: format!("endor-{}", std::process::id()),
            region: None,
            wake: None,
        }
    }
}

/// Delay before attempt `attempts + 1`: base × 2^(attempts-1), capped, with ±25% jitter.
pub fn backoff(cfg: &WorkerConfig, attempts: i64) -> Duration {
    let exp = cfg
        .backoff_base
        .saturating_mul(1u32 << attempts.clamp(1, 20).saturating_sub(1) as u32);
    let capped = exp.min(cfg.backoff_max);
    let jitter = rand::rng().random_range(0.75..1.25);
    capped.mul_f64(jitter)
}

/// A running pool of workers; dropping the handle does not stop them, `shutdown` does.
pub struct WorkerPool {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WorkerPool {
    pub fn spawn<Q: JobQueue + ?Sized + 'static>(
        store: Arc<Q>,
        handler: Arc<dyn JobHandler>,
        cfg: WorkerConfig,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..cfg.workers.max(1))
            .map(|i| {
                let worker = format!("{}/{i}", cfg.name);
                tokio::spawn(worker_loop(
                    store.clone(),
                    handler.clone(),
                    cfg.clone(),
                    worker,
                    stopped.clone(),
                ))
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stop taking new jobs and wait for the running ones to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn worker_loop<Q: JobQueue + ?Sized + 'static>(
    store: Arc<Q>,
    handler: Arc<dyn JobHandler>,
    cfg: WorkerConfig,
    worker: String,
    mut stopped: watch::Receiver<bool>,
) {
    while !*stopped.borrow() {
        let now = crate::now_ms();
        match store
            .claim_job_in(
                &worker,
                cfg.region.as_deref(),
                now,
                now + cfg.lease.as_millis() as i64,
            )
            .await
        {
            Ok(Some(job)) => {
                let span = job_span(&job);
                run_one(&store, &handler, &cfg, &worker, job)
                    .instrument(span)
                    .await
            }
            Ok(None) => {
                let woken = async {
                    match &cfg.wake {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(cfg.poll) => {}
                    _ = woken => {}
                    _ = stopped.changed() => {}
                }
            }
            Err(e) => {
                tracing::warn!(worker = %worker, error = %e, "claiming a job failed");
                tokio::time::sleep(cfg.poll.max(Duration::from_millis(500))).await;
            }
        }
    }
}

/// The span a job runs in: what it is about. Its PR comes from the key; the handler records
/// the repository and the site once it has loaded them, so every line of the job names them.
fn job_span(job: &Job) -> tracing::Span {
    let (connection, pr) = match parse_pr_key(&job.job_key) {
        Some((c, n)) => (c, Some(n)),
        None => ("", None),
    };
    tracing::info_span!(
        "job",
        job = %job.id,
        kind = %job.kind,
        attempt = job.attempts,
        connection,
        pr,
        repo = tracing::field::Empty,
        site = tracing::field::Empty,
    )
}

async fn run_one<Q: JobQueue + ?Sized + 'static>(
    store: &Arc<Q>,
    handler: &Arc<dyn JobHandler>,
    cfg: &WorkerConfig,
    worker: &str,
    job: Job,
) {
    let (cancel_tx, cancel_rx) = watch::channel(job.cancel_requested != 0);
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Heartbeats keep the lease and carry cancellation requests to the handler.
    let beat = {
        let (store, worker, id, lease, lost) = (
            store.clone(),
            worker.to_string(),
            job.id.clone(),
            cfg.lease,
            lost.clone(),
        );
        tokio::spawn(
            async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let now = crate::now_ms();
                    match store
                        .heartbeat_job(&id, &worker, now, now + lease.as_millis() as i64)
                        .await
                    {
                        Ok(Heartbeat::Held { cancel }) => {
                            if cancel {
                                let _ = cancel_tx.send(true);
                            }
                        }
                        Ok(Heartbeat::Lost) => {
                            lost.store(true, std::sync::atomic::Ordering::SeqCst);
                            let _ = cancel_tx.send(true);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying"),
                    }
                }
            }
            .in_current_span(),
        )
    };
    let result = handler.run(&job, JobContext { cancel: cancel_rx }).await;
    beat.abort();
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::warn!("lease lost while running: another worker owns the job now");
        return;
    }
    let now = crate::now_ms();
    let end = match &result {
        Ok(()) => JobEnd::Done,
        Err(JobError::Cancelled) => JobEnd::Cancelled {
            reason: "cancelled: superseded by a newer job".into(),
        },
        Err(JobError::Permanent(e)) => JobEnd::Failed { error: e.clone() },
        Err(JobError::Transient(e)) => JobEnd::Retry {
            error: e.clone(),
            run_after: now + backoff(cfg, job.attempts).as_millis() as i64,
        },
    };
    match store.finish_job(&job.id, worker, &end, now).await {
        Ok(true) => tracing::info!(outcome = ?end, "job ended"),
        Ok(false) => tracing::warn!("job ended but its lease was gone: nothing written"),
        Err(e) => {
            tracing::error!(error = %e, "recording the end of a job failed; it will run again after its lease")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cfg = WorkerConfig {
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            ..Default::default()
        };
        let b1 = backoff(&cfg, 1);
        assert!(
            b1 >= Duration::from_millis(1500) && b1 <= Duration::from_millis(2500),
            "{b1:?}"
        );
        let b3 = backoff(&cfg, 3);
        assert!(
            b3 >= Duration::from_secs(6) && b3 <= Duration::from_secs(10),
            "{b3:?}"
        );
        assert!(backoff(&cfg, 50) <= Duration::from_secs(75));
    }
}
