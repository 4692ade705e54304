//! Tearing a preview down (a PR closed, `/preview destroy`, expiry): a persisted sequence of
//! idempotent steps, so a teardown interrupted anywhere is finished by running it again.

use crate::gateway::Route;
use crate::jobs::Job;
use crate::jobs::JobError;
use crate::store::{Preview, SiteState};

use super::state::{self, PreviewState};

use super::lifecycle::{Lifecycle, kill_site_process, site_error, transient};

impl Lifecycle {
    /// Stop the processes, drop the data, answer 410: idempotent, every step safe to repeat.
    pub(super) async fn destroy(&self, preview: &mut Preview, why: &str) -> Result<(), JobError> {
        if preview.state == PreviewState::Destroyed {
            return Ok(());
        }
        self.teardown(
            preview,
            PreviewState::Destroyed,
            &format!("pull request {why}"),
        )
        .await
    }

    /// The reaper's warning: the status comment says the preview expires soon (once per
    /// expiry time).
    pub async fn warn_expiry(&self, p: &mut Preview) -> Result<(), JobError> {
        p.warned_expiry = p.expires_at;
        let (st, reason) = (p.state, p.reason.clone());
        self.set_state(p, st, reason).await?;
        self.notifier.expiry_event(p).await;
        Ok(())
    }

    /// An `expire` job (a reaper's teardown whose reaper died, taken over by a worker):
    /// finish an unfinished teardown, or expire a preview that is still past its expiry.
    pub(super) async fn handle_expire(&self, job: &Job) -> Result<(), JobError> {
        let (conn, number) = Self::key_parts(job)?;
        let Some(mut p) = self
            .store
            .preview(&conn.into(), number)
            .await
            .map_err(transient)?
        else {
            return Ok(());
        };
        match state::expiry_action(&p, crate::now_ms()) {
            Some(final_state) => {
                let why = state::why_torn_down(&p, final_state);
                self.teardown(&mut p, final_state, &why).await
            }
            None => Ok(()),
        }
    }

    /// Tear a preview down for good and end in `final_state` (`destroyed` or `expired`):
    /// a persisted sequence of idempotent steps (`teardown_step` names the last one done), so a
    /// teardown interrupted at any point is finished by running it again.
    pub async fn teardown(
        &self,
        preview: &mut Preview,
        final_state: PreviewState,
        why: &str,
    ) -> Result<(), JobError> {
        let step = |p: &mut Preview, name: &str| {
            p.teardown_step = Some(state::teardown_step(final_state, name));
        };
        // A protected site is never deleted by a PR or the reaper (only by `endor site delete
        // --bypass-protection`).
        if let Some(id) = &preview.site_id
            && let Some(site) = self.store.site(id).await.map_err(transient)?
            && site.protected
            && site.state != SiteState::Deleted
        {
            return Err(JobError::Permanent(format!(
                "site {} is protected: it is not torn down (endor site protect {} off first)",
                site.name, site.name
            )));
        }
        let had_route = self
            .store
            .route(&preview.site_name)
            .await
            .map_err(transient)?
            .is_some();
        step(preview, "begin");
        self.set_state(preview, PreviewState::Destroying, Some(why.to_string()))
            .await?;
        crash_point("begin");
        let proc_ = self.procs.lock().await.remove(&preview.id);
        match proc_ {
            Some(p) => p.stop().await,
            None => {
                if let Some(pid) = preview.pid {
                    kill_site_process(pid as u32, &preview.site_name);
                }
            }
        }
        // Whatever the site's code left running goes, with its control group.
        if let Some(id) = &preview.site_id {
            self.host.release(id.as_str()).await;
        }
        preview.pid = None;
        preview.port = None;
        step(preview, "stop");
        self.save(preview).await?;
        crash_point("stop");
        if had_route || preview.site_id.is_some() {
            self.put_route(&preview.site_name, Route::Gone, true)
                .await?;
        }
        step(preview, "route");
        self.save(preview).await?;
        crash_point("route");
        if let Some(id) = preview.site_id.clone() {
            self.sites.discard_id(&id).await.map_err(site_error)?;
        }
        step(preview, "data");
        self.save(preview).await?;
        crash_point("data");
        // The site's logs stay for `logs.retention` (the reaper removes them then), so what
        // happened can still be read after the PR closed.
        if let Some(id) = preview.site_id.clone() {
            self.event(
                &id,
                crate::logs::Entry::now(
                    crate::logs::Service::Endor,
                    None,
                    format!("torn down: {why}"),
                )
                .with("event", "torn-down"),
            );
        }
        step(preview, "logs");
        self.save(preview).await?;
        crash_point("logs");
        preview.ready_sha = None;
        preview.teardown_step = None;
        preview.warned_expiry = None;
        self.set_state(preview, final_state, Some(why.to_string()))
            .await?;
        tracing::info!(preview = %preview.site_name, state = %final_state, "preview torn down");
        Ok(())
    }
}

/// For the crash-safety tests: `ENDOR_CRASH_AT=teardown:{step}` aborts the process right after
/// that teardown step was stored, as a SIGKILL would.
fn crash_point(step: &str) {
    if let Ok(at) = std::env::var("ENDOR_CRASH_AT")
        && at.strip_prefix("teardown:") == Some(step)
    {
        eprintln!("ENDOR_CRASH_AT: aborting after teardown step {step}");
        std::process::abort();
    }
}
