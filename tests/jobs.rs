//! The durable job queue on SQLite and PostgreSQL: store-level rules with an explicit clock,
//! then real worker pools.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use endor::jobs::{
    Heartbeat, Job, JobContext, JobEnd, JobError, JobHandler, NewJob, WorkerConfig, WorkerPool,
};
use endor::store::Store;
use support::TestStore;

both_backends!(
    one_running_job_per_key,
    newest_head_wins,
    expired_leases_are_taken_over,
    retries_then_failure,
    strict_order_per_key_across_retries,
    worker_pool_runs_everything_once_per_key_in_order,
    cancelled_jobs_stop_and_the_newest_runs,
    a_wake_up_beats_the_poll_interval,
);

/// With a poll interval of 10 minutes, only the wake-up can make an idle worker take a job.
async fn a_wake_up_beats_the_poll_interval(db: &TestStore) {
    let wake = Arc::new(tokio::sync::Notify::new());
    let recorder = Arc::new(Recorder::default());
    let cfg = WorkerConfig {
        poll: Duration::from_secs(600),
        wake: Some(wake.clone()),
        ..fast()
    };
    let pool = WorkerPool::spawn(db.store.clone(), recorder.clone(), cfg);
    // Let every worker find the queue empty and go to sleep.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = db
        .store
        .enqueue_job(&job("pr-w", "w", false), endor::now_ms())
        .await
        .unwrap();
    wake.notify_waiters();
    wait_until(db.store.as_ref(), &["pr-w".to_string()], |jobs| {
        jobs.iter().all(|j| j.state == "done")
    })
    .await;
    assert_eq!(
        db.store.job(&queued.id).await.unwrap().unwrap().state,
        "done"
    );
    pool.shutdown().await;
}

fn job(key: &str, head: &str, supersede: bool) -> NewJob {
    NewJob {
        // The test handler does not look at the kind.
        kind: endor::jobs::JobKind::PullRequest,
        job_key: key.into(),
        head_sha: Some(head.into()),
        payload: format!("{{\"head\":\"{head}\"}}"),
        max_attempts: 3,
        supersede,
    }
}

async fn one_running_job_per_key(db: &TestStore) {
    let s = db.store.as_ref();
    let a1 = s.enqueue_job(&job("pr-1", "a", false), 1000).await.unwrap();
    let a2 = s.enqueue_job(&job("pr-1", "b", false), 1001).await.unwrap();
    let b1 = s.enqueue_job(&job("pr-2", "c", false), 1002).await.unwrap();
    let first = s.claim_job("w1", 2000, 60_000).await.unwrap().unwrap();
    assert_eq!(first.id, a1.id, "oldest first");
    assert_eq!(first.state, "running");
    assert_eq!(first.attempts, 1);
    // pr-1 is busy: the next claim skips a2 and takes pr-2's job.
    let second = s.claim_job("w2", 2000, 60_000).await.unwrap().unwrap();
    assert_eq!(second.id, b1.id);
    assert!(
        s.claim_job("w3", 2000, 60_000).await.unwrap().is_none(),
        "a2 must wait for a1"
    );
    assert!(
        s.finish_job(&a1.id, "w1", &JobEnd::Done, 3000)
            .await
            .unwrap()
    );
    let third = s.claim_job("w3", 3000, 60_000).await.unwrap().unwrap();
    assert_eq!(third.id, a2.id);
    // Only the holder can end a job.
    assert!(
        !s.finish_job(&a2.id, "w1", &JobEnd::Done, 3001)
            .await
            .unwrap()
    );
    assert_eq!(s.job(&a1.id).await.unwrap().unwrap().state, "done");
}

async fn newest_head_wins(db: &TestStore) {
    let s = db.store.as_ref();
    let a = s.enqueue_job(&job("pr-1", "a", true), 1000).await.unwrap();
    let running = s.claim_job("w1", 1000, 60_000).await.unwrap().unwrap();
    assert_eq!(running.id, a.id);
    let b = s.enqueue_job(&job("pr-1", "b", true), 1100).await.unwrap();
    let c = s.enqueue_job(&job("pr-1", "c", true), 1200).await.unwrap();
    // b was queued and is cancelled by c; a runs and is asked to stop.
    assert_eq!(s.job(&b.id).await.unwrap().unwrap().state, "cancelled");
    assert_eq!(
        s.heartbeat_job(&a.id, "w1", 1300, 61_000).await.unwrap(),
        Heartbeat::Held { cancel: true }
    );
    assert!(
        s.finish_job(
            &a.id,
            "w1",
            &JobEnd::Cancelled {
                reason: "superseded".into()
            },
            1400
        )
        .await
        .unwrap()
    );
    let next = s.claim_job("w2", 1500, 60_000).await.unwrap().unwrap();
    assert_eq!(
        (next.id.as_str(), next.head_sha.as_deref()),
        (c.id.as_str(), Some("c"))
    );
    let states: Vec<_> = s
        .jobs_for_key("pr-1")
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.state)
        .collect();
    assert_eq!(states, vec!["cancelled", "cancelled", "running"]);
    // A non-superseding job (e.g. a comment command) cancels nothing.
    s.enqueue_job(&job("pr-1", "c", false), 1600).await.unwrap();
    assert_eq!(
        s.heartbeat_job(&c.id, "w2", 1700, 61_000).await.unwrap(),
        Heartbeat::Held { cancel: false }
    );
}

async fn expired_leases_are_taken_over(db: &TestStore) {
    let s = db.store.as_ref();
    let a = s.enqueue_job(&job("pr-1", "a", true), 1000).await.unwrap();
    s.claim_job("dead-worker", 1000, 2000)
        .await
        .unwrap()
        .unwrap();
    // Before the lease ends nobody else may take it.
    assert!(s.claim_job("w2", 1999, 30_000).await.unwrap().is_none());
    let again = s.claim_job("w2", 2001, 30_000).await.unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.attempts), (a.id.as_str(), 2));
    assert_eq!(again.lease_owner.as_deref(), Some("w2"));
    // The worker that died (and came back) has lost the job: its writes are refused.
    assert_eq!(
        s.heartbeat_job(&a.id, "dead-worker", 2100, 9000)
            .await
            .unwrap(),
        Heartbeat::Lost
    );
    assert!(
        !s.finish_job(&a.id, "dead-worker", &JobEnd::Done, 2100)
            .await
            .unwrap()
    );
    assert!(
        s.finish_job(&a.id, "w2", &JobEnd::Done, 2200)
            .await
            .unwrap()
    );
}

async fn retries_then_failure(db: &TestStore) {
    let s = db.store.as_ref();
    let a = s.enqueue_job(&job("pr-1", "a", true), 1000).await.unwrap();
    for attempt in 1..=3 {
        let now = 1000 + attempt * 10_000;
        let j = s.claim_job("w", now, now + 5000).await.unwrap().unwrap();
        assert_eq!(j.attempts, attempt);
        let end = JobEnd::Retry {
            error: format!("blip {attempt}"),
            run_after: now + 5000,
        };
        assert!(s.finish_job(&a.id, "w", &end, now).await.unwrap());
        if attempt < 3 {
            let q = s.job(&a.id).await.unwrap().unwrap();
            assert_eq!((q.state.as_str(), q.run_after), ("queued", now + 5000));
            assert!(
                s.claim_job("w", now + 4999, now + 9000)
                    .await
                    .unwrap()
                    .is_none(),
                "claimed before run_after"
            );
        }
    }
    let failed = s.job(&a.id).await.unwrap().unwrap();
    assert_eq!(failed.state, "failed", "attempts used up");
    assert_eq!(failed.last_error.as_deref(), Some("blip 3"));
    let b = s
        .enqueue_job(&job("pr-2", "b", true), 50_000)
        .await
        .unwrap();
    s.claim_job("w", 50_000, 60_000).await.unwrap().unwrap();
    s.finish_job(
        &b.id,
        "w",
        &JobEnd::Failed {
            error: "bad config".into(),
        },
        50_001,
    )
    .await
    .unwrap();
    assert_eq!(
        s.job(&b.id).await.unwrap().unwrap().state,
        "failed",
        "permanent errors fail at once"
    );
}

async fn strict_order_per_key_across_retries(db: &TestStore) {
    let s = db.store.as_ref();
    let a = s.enqueue_job(&job("pr-1", "a", false), 1000).await.unwrap();
    let b = s.enqueue_job(&job("pr-1", "b", false), 1001).await.unwrap();
    s.claim_job("w", 1000, 9000).await.unwrap().unwrap();
    let retry = JobEnd::Retry {
        error: "blip".into(),
        run_after: 5000,
    };
    assert!(s.finish_job(&a.id, "w", &retry, 1100).await.unwrap());
    // a waits out its backoff; b, queued after it on the same key, must not overtake it.
    assert!(
        s.claim_job("w", 2000, 9000).await.unwrap().is_none(),
        "b overtook a retrying a"
    );
    assert_eq!(
        s.claim_job("w", 5000, 9000).await.unwrap().unwrap().id,
        a.id
    );
    assert!(s.finish_job(&a.id, "w", &JobEnd::Done, 5100).await.unwrap());
    assert_eq!(
        s.claim_job("w", 5200, 9000).await.unwrap().unwrap().id,
        b.id
    );
}

/// Records every run; fails the first attempt of some jobs; checks no two runs of one key
/// overlap and no job runs twice at once.
#[derive(Default)]
struct Recorder {
    running_keys: Mutex<HashMap<String, usize>>,
    runs: Mutex<Vec<(String, endor::ids::JobId)>>,
    overlaps: AtomicUsize,
}

#[async_trait]
impl JobHandler for Recorder {
    async fn run(&self, job: &Job, _ctx: JobContext) -> Result<(), JobError> {
        {
            let mut k = self.running_keys.lock().unwrap();
            let n = k.entry(job.job_key.clone()).or_default();
            if *n > 0 {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            *n += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        *self
            .running_keys
            .lock()
            .unwrap()
            .get_mut(&job.job_key)
            .unwrap() -= 1;
        self.runs
            .lock()
            .unwrap()
            .push((job.job_key.clone(), job.id.clone()));
        if job
            .head_sha
            .as_deref()
            .is_some_and(|h| h.ends_with("-flaky"))
            && job.attempts == 1
        {
            return Err(JobError::Transient("first attempt fails".into()));
        }
        Ok(())
    }
}

fn fast() -> WorkerConfig {
    WorkerConfig {
        workers: 4,
        lease: Duration::from_secs(5),
        poll: Duration::from_millis(10),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        name: "test".into(),
        region: None,
        wake: None,
    }
}

async fn wait_until(store: &dyn Store, keys: &[String], pred: impl Fn(&[Job]) -> bool) {
    for _ in 0..1000 {
        let mut all = Vec::new();
        for k in keys {
            all.extend(store.jobs_for_key(k).await.unwrap());
        }
        if pred(&all) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("jobs did not settle");
}

async fn worker_pool_runs_everything_once_per_key_in_order(db: &TestStore) {
    let keys: Vec<String> = (0..5).map(|i| format!("pr-{i}")).collect();
    let mut ids = Vec::new();
    for n in 0..40 {
        let head = if n % 7 == 0 {
            format!("h{n}-flaky")
        } else {
            format!("h{n}")
        };
        ids.push(
            db.store
                .enqueue_job(&job(&keys[n % 5], &head, false), endor::now_ms())
                .await
                .unwrap()
                .id,
        );
    }
    let recorder = Arc::new(Recorder::default());
    let pool = WorkerPool::spawn(db.store.clone(), recorder.clone(), fast());
    wait_until(db.store.as_ref(), &keys, |jobs| {
        jobs.iter().all(|j| j.state == "done")
    })
    .await;
    pool.shutdown().await;
    assert_eq!(
        recorder.overlaps.load(Ordering::SeqCst),
        0,
        "two jobs of one key ran at once"
    );
    let runs = recorder.runs.lock().unwrap().clone();
    assert_eq!(
        runs.len(),
        40 + 6,
        "each job once, plus one retry of each flaky job"
    );
    // Per key, jobs started in the order they were queued (retries run again before the next).
    for k in &keys {
        let order: Vec<&endor::ids::JobId> = runs
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, id)| id)
            .collect();
        let mut dedup = order.clone();
        dedup.dedup();
        let queued: Vec<&endor::ids::JobId> = ids
            .iter()
            .enumerate()
            .filter(|(n, _)| &keys[n % 5] == k)
            .map(|(_, id)| id)
            .collect();
        assert_eq!(dedup, queued, "key {k} ran out of order");
    }
}

/// Waits for cancellation, the way a long build step would.
struct Cancellable {
    started: AtomicUsize,
}

#[async_trait]
impl JobHandler for Cancellable {
    async fn run(&self, job: &Job, mut ctx: JobContext) -> Result<(), JobError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        if job.head_sha.as_deref() == Some("old") {
            tokio::select! {
                _ = ctx.until_cancelled() => return Err(JobError::Cancelled),
                _ = tokio::time::sleep(Duration::from_secs(30)) => return Err(JobError::Permanent("never cancelled".into())),
            }
        }
        assert!(!ctx.cancelled());
        Ok(())
    }
}

async fn cancelled_jobs_stop_and_the_newest_runs(db: &TestStore) {
    let handler = Arc::new(Cancellable {
        started: AtomicUsize::new(0),
    });
    let cfg = WorkerConfig {
        lease: Duration::from_millis(300),
        ..fast()
    };
    let pool = WorkerPool::spawn(db.store.clone(), handler.clone(), cfg);
    let old = db
        .store
        .enqueue_job(&job("pr-9", "old", true), endor::now_ms())
        .await
        .unwrap();
    let keys = vec!["pr-9".to_string()];
    wait_until(db.store.as_ref(), &keys, |jobs| {
        jobs.iter().any(|j| j.state == "running")
    })
    .await;
    let new = db
        .store
        .enqueue_job(&job("pr-9", "new", true), endor::now_ms())
        .await
        .unwrap();
    wait_until(db.store.as_ref(), &keys, |jobs| {
        jobs.iter()
            .all(|j| j.state == "done" || j.state == "cancelled")
    })
    .await;
    pool.shutdown().await;
    assert_eq!(
        db.store.job(&old.id).await.unwrap().unwrap().state,
        "cancelled"
    );
    assert_eq!(db.store.job(&new.id).await.unwrap().unwrap().state, "done");
    assert_eq!(handler.started.load(Ordering::SeqCst), 2);
}

/// Several processes sharing one PostgreSQL store (SPEC §9): two pools on separate
/// connections, many jobs, none run twice, keys never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_share_one_postgres_queue() {
    let db = TestStore::postgres().await;
    let second = endor::store::connect(&db.url, 8, support::test_keyring())
        .await
        .unwrap();
    let keys: Vec<String> = (0..8).map(|i| format!("pr-{i}")).collect();
    for n in 0..120 {
        db.store
            .enqueue_job(&job(&keys[n % 8], &format!("h{n}"), false), endor::now_ms())
            .await
            .unwrap();
    }
    let recorder = Arc::new(Recorder::default());
    let a = WorkerPool::spawn(
        db.store.clone(),
        recorder.clone(),
        WorkerConfig {
            name: "a".into(),
            ..fast()
        },
    );
    let b = WorkerPool::spawn(
        second.clone(),
        recorder.clone(),
        WorkerConfig {
            name: "b".into(),
            ..fast()
        },
    );
    wait_until(db.store.as_ref(), &keys, |jobs| {
        jobs.iter().all(|j| j.state == "done")
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(recorder.overlaps.load(Ordering::SeqCst), 0);
    let runs = recorder.runs.lock().unwrap().clone();
    let mut ids: Vec<_> = runs.iter().map(|(_, id)| id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (runs.len(), ids.len()),
        (120, 120),
        "a job ran twice or not at all"
    );
    let states: std::collections::HashSet<String> = {
        let mut o = std::collections::HashSet::new();
        for k in &keys {
            for j in db.store.jobs_for_key(k).await.unwrap() {
                assert_eq!(j.attempts, 1);
                o.insert(j.state);
            }
        }
        o
    };
    assert_eq!(states, ["done".to_string()].into_iter().collect());
    drop(second);
    db.cleanup().await;
}
