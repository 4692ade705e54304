//! The job worker's dispatcher: the one [`JobHandler`] the pool runs, sending each
//! [`JobKind`] to the room that owns it — PR events, resumes and expiries to
//! `previews::Lifecycle`, comments to `commands::CommentRunner` — and counting outcomes. It sits
//! above both, so previews never import commands.

use std::sync::Arc;

use async_trait::async_trait;

use crate::commands::CommentRunner;
use crate::jobs::{Job, JobContext, JobError, JobHandler, JobKind};
use crate::metrics::Metrics;
use crate::previews::Lifecycle;

pub struct Dispatcher {
    previews: Arc<Lifecycle>,
    comments: CommentRunner,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(previews: Arc<Lifecycle>, comments: CommentRunner, metrics: Arc<Metrics>) -> Self {
        Self {
            previews,
            comments,
            metrics,
        }
    }
}

#[async_trait]
impl JobHandler for Dispatcher {
    async fn run(&self, job: &Job, ctx: JobContext) -> Result<(), JobError> {
        let result = match job.kind {
            JobKind::Comment => self.comments.run(job, ctx).await,
            JobKind::PullRequest | JobKind::Resume | JobKind::Expire => {
                self.previews.run_job(job, ctx).await
            }
        };
        let outcome = match &result {
            Ok(()) => "done",
            Err(JobError::Cancelled) => "cancelled",
            Err(JobError::Transient(_)) => "retry",
            Err(JobError::Permanent(_)) => "failed",
        };
        self.metrics.job(job.kind.as_str(), outcome);
        result
    }
}
