//! The small public API of previews that slash-commands (and any other front door) call:
//! deploy, destroy, extend, touch, sync, the status report and the live site of a PR. Each
//! takes the PR by its connection and number and answers in the previews' own terms; the
//! caller decides what to tell the user. Permission checks are the caller's.

use std::time::Duration;

use crate::jobs::{Job, JobContext, JobError};
use crate::sites::SiteError;
use crate::store::{Connection, Preview, Site, SiteState};

use super::lifecycle::{Lifecycle, Target, transient};
use super::state;

/// How a deploy asked for by a person ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deployed {
    /// Live at this head.
    Ready { head: String },
    /// A newer push arrived while building; that one is being built.
    Superseded,
    /// Nothing was built, and why (no head known, or a fork head newer than the request).
    NotBuilt(String),
    /// The build or start failed, and why.
    Failed(String),
}

/// What to sync from the parent site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncParts {
    pub files: bool,
    pub databases: bool,
}

/// How a sync from the parent ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    Done { parent: String, duration_ms: u64 },
    NoParent,
    ParentGone,
    Failed(String),
}

/// A new expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extended {
    pub expires_at: i64,
    /// The request went past `previews.max_ttl` and was cut to it.
    pub capped: bool,
}

impl Lifecycle {
    /// The PR's preview unless it was destroyed (or never made).
    pub async fn live_preview(
        &self,
        conn: &Connection,
        number: u64,
    ) -> Result<Option<Preview>, JobError> {
        Ok(self
            .store
            .preview(&conn.id, number as i64)
            .await
            .map_err(transient)?
            .filter(|p| state::is_live(p.state)))
    }

    /// The active site of the PR's live preview.
    pub async fn site_of(&self, conn: &Connection, number: u64) -> Result<Option<Site>, JobError> {
        let Some(p) = self.live_preview(conn, number).await? else {
            return Ok(None);
        };
        let Some(id) = &p.site_id else {
            return Ok(None);
        };
        Ok(self
            .store
            .site(id)
            .await
            .map_err(transient)?
            .filter(|s| s.state == SiteState::Active))
    }

    /// Build (or rebuild) PR `number` at its current head, as `job` (which asked for it at
    /// `job.created_at`). `seen_head` is the head the request was made on, when the forge says.
    /// On a fork PR this approves exactly that head: a head that arrived after the request (or
    /// differs from the one it was made on) is not built.
    pub async fn deploy(
        &self,
        job: &Job,
        ctx: &JobContext,
        conn: &Connection,
        number: u64,
        seen_head: Option<&str>,
        prefix: &str,
    ) -> Result<Deployed, JobError> {
        let mut p = self.load_or_new(conn, number).await?;
        let head = match seen_head.map(str::to_string).or_else(|| p.head_sha.clone()) {
            Some(h) => h,
            None => match self.discover_head(conn, number).await {
                Some(h) => h,
                None => {
                    return Ok(Deployed::NotBuilt(
                        "endor has not seen this pull request's head commit yet; push a commit or reopen it".into(),
                    ));
                }
            },
        };
        if p.is_fork != 0 {
            let newer_head = match seen_head {
                Some(seen) => p.head_sha.as_deref().is_some_and(|h| h != seen),
                None => p.received_at.is_some_and(|t| t > job.created_at),
            };
            if newer_head {
                let current = p.head_sha.clone().unwrap_or_default();
                return Ok(Deployed::NotBuilt(format!(
                    "a new commit `{}` arrived after this comment; review it and comment `{prefix} deploy` again to approve it",
                    crate::git::short_sha(&current),
                )));
            }
            p.approved_sha = Some(head.clone());
        }
        p.head_sha = Some(head.clone());
        let target = Target {
            number,
            head_sha: head.clone(),
            received_at: job.created_at,
        };
        match self
            .launch_or_fail(job, ctx.clone(), conn, &mut p, target)
            .await
        {
            Ok(()) => Ok(Deployed::Ready { head }),
            Err(JobError::Cancelled) => Ok(Deployed::Superseded),
            Err(JobError::Transient(e)) if job.attempts < job.max_attempts => {
                Err(JobError::Transient(e))
            }
            Err(JobError::Transient(e) | JobError::Permanent(e)) => Ok(Deployed::Failed(e)),
        }
    }

    /// The PR's head from the repository (its PR ref), when no event told endor.
    async fn discover_head(&self, conn: &Connection, number: u64) -> Option<String> {
        let url = conn.git_url.as_deref()?;
        let r = conn.forge.pr_ref(number);
        self.git
            .fetch(conn.id.as_str(), url, std::slice::from_ref(&r))
            .await
            .ok()?;
        self.git.resolve(conn.id.as_str(), &r).await.ok()
    }

    /// Tear the PR's preview down (until the next push or deploy); false when there was none.
    pub async fn destroy_pr(
        &self,
        conn: &Connection,
        number: u64,
        why: &str,
    ) -> Result<bool, JobError> {
        let Some(mut p) = self.live_preview(conn, number).await? else {
            return Ok(false);
        };
        self.destroy(&mut p, why).await?;
        Ok(true)
    }

    /// Push the expiry `by` further (from now if it passed), capped at now + `previews.max_ttl`;
    /// `None` when the PR has no live preview. The status comment shows the new expiry.
    pub async fn extend(
        &self,
        conn: &Connection,
        number: u64,
        by: Duration,
    ) -> Result<Option<Extended>, JobError> {
        let Some(mut p) = self.live_preview(conn, number).await? else {
            return Ok(None);
        };
        let now = crate::now_ms();
        let cap = now + self.config.previews.max_ttl.0.as_millis() as i64;
        let wanted = p.expires_at.unwrap_or(now).max(now) + by.as_millis() as i64;
        p.expires_at = Some(wanted.min(cap));
        let (st, reason) = (p.state, p.reason.clone());
        self.set_state(&mut p, st, reason).await?;
        Ok(Some(Extended {
            expires_at: wanted.min(cap),
            capped: wanted > cap,
        }))
    }

    /// Activity on the PR: the expiry moves to now + the preview's TTL (never earlier).
    pub async fn touch(&self, conn: &Connection, number: u64) -> Result<(), JobError> {
        let Some(mut p) = self.live_preview(conn, number).await? else {
            return Ok(());
        };
        let (Some(ttl), Some(exp)) = (p.ttl_ms, p.expires_at) else {
            return Ok(());
        };
        let wanted = crate::now_ms() + ttl;
        if wanted > exp {
            p.expires_at = Some(wanted);
            self.save(&mut p).await?;
        }
        Ok(())
    }

    /// Post the PR's status comment again; false when the PR has no preview.
    pub async fn repost_status(&self, conn: &Connection, number: u64) -> Result<bool, JobError> {
        let Some(p) = self
            .store
            .preview(&conn.id, number as i64)
            .await
            .map_err(transient)?
        else {
            return Ok(false);
        };
        let now = crate::now_ms();
        for row in self.write_backs(&p).await? {
            if row.kind == crate::writeback::OutboxKind::Comment {
                self.store
                    .enqueue_outbox(&row, now)
                    .await
                    .map_err(transient)?;
            }
        }
        self.outbox_wake.notify_waiters();
        Ok(true)
    }

    /// Refresh the preview's data from its parent's newest generation; the site's process
    /// keeps running and sees the new data on its next read.
    pub async fn sync_from_parent(
        &self,
        site: &Site,
        parts: SyncParts,
    ) -> Result<Synced, JobError> {
        let Some(parent_id) = &site.parent_id else {
            return Ok(Synced::NoParent);
        };
        let Some(parent) = self.store.site(parent_id).await.map_err(transient)? else {
            return Ok(Synced::ParentGone);
        };
        match self
            .sites
            .sync(
                &parent.name,
                &site.name,
                parts.files,
                parts.databases,
                crate::sites::Guard::default(),
            )
            .await
        {
            Ok(r) => {
                self.hand_over(site).await?;
                self.event(
                    &site.id,
                    crate::logs::Entry::now(
                        crate::logs::Service::Endor,
                        None,
                        format!(
                            "synced from {} ({} ms): {}",
                            parent.name,
                            r.duration_ms,
                            match (parts.files, parts.databases) {
                                (true, false) => "files",
                                (false, true) => "databases",
                                _ => "files and databases",
                            }
                        ),
                    )
                    .with("event", "synced")
                    .with("parent", parent.name.clone()),
                );
                Ok(Synced::Done {
                    parent: parent.name,
                    duration_ms: r.duration_ms,
                })
            }
            Err(SiteError::Store(e)) => Err(transient(e)),
            Err(e) => Ok(Synced::Failed(e.to_string())),
        }
    }
}
