//! What each preview state shows on the forge: the sticky status comment (`comment.rs`), the
//! commit status of the head and the deployment, as outbox rows stored in the same transaction
//! as the state change. Knows no forge API: the write-back turns the rows into calls.

use super::comment::{CommentView, StepLine, check_summary, check_title, render};
use crate::config::Config;
use crate::store::{NewOutbox, Preview, PreviewState, Store, StoreError};
use crate::writeback::{
    CheckAction, CheckRun, CheckState, CommitState, DeployState, ForgeClients, Payload,
};

/// What the forge should show for the preview's new state: the status comment, the
/// commit status of its head, its deployment. Nothing for internal steps. Without credentials
/// for the forge the rows are still made, held (stored `unsent`: `endor preview show`).
pub async fn rows_for(
    store: &dyn Store,
    forges: &ForgeClients,
    config: &Config,
    p: &Preview,
) -> Result<Vec<NewOutbox>, StoreError> {
    use PreviewState as S;
    use {CommitState as C, DeployState as D};
    let (shown, status, deploy): (S, Option<(C, String)>, Option<D>) = match p.state {
        S::Queued => (
            S::Building,
            Some((C::Pending, "building".into())),
            Some(D::InProgress),
        ),
        S::Ready => (
            S::Ready,
            Some((C::Success, "preview ready".into())),
            Some(D::Success),
        ),
        S::Failed => (
            S::Failed,
            Some((
                C::Failure,
                p.reason.clone().unwrap_or_else(|| "failed".into()),
            )),
            Some(D::Failure),
        ),
        S::Skipped => (S::Skipped, None, None),
        S::AwaitingApproval => (
            S::AwaitingApproval,
            Some((C::Pending, "waiting for a member's /preview deploy".into())),
            None,
        ),
        S::Destroyed => (S::Destroyed, None, Some(D::Inactive)),
        S::Expired => (S::Expired, None, Some(D::Inactive)),
        // Internal steps show nothing new.
        S::Cloning | S::Building | S::Starting | S::Destroying => return Ok(Vec::new()),
    };
    let Some(conn) = store.connection(&p.connection_id).await? else {
        return Ok(Vec::new());
    };
    let sha = p.head_sha.clone().unwrap_or_default();
    let served = p.state == S::Ready;
    let url = served.then(|| {
        format!(
            "http://{}.{}:{}/",
            p.site_name,
            config.gateway.domain,
            config.gateway.listen.port()
        )
    });
    let steps = if matches!(p.state, S::Ready | S::Failed) {
        store
            .last_run_steps(&p.id)
            .await?
            .into_iter()
            .map(|s| StepLine {
                time: match s.ended_at {
                    Some(e) => format!("{} ms", e - s.started_at),
                    None => "—".into(),
                },
                name: s.step,
            })
            .collect()
    } else {
        Vec::new()
    };
    let view = CommentView {
        state: shown,
        title: p.title.clone(),
        site: p.site_name.clone(),
        url: url.clone(),
        head_sha: sha.clone(),
        expires_at: p
            .expires_at
            .filter(|_| served)
            .map(crate::duration::format_utc),
        expiring: served && p.warned_expiry.is_some() && p.warned_expiry == p.expires_at,
        steps,
        error: (p.state == S::Failed).then(|| p.reason.clone()).flatten(),
    };
    let mut out = vec![Payload::Comment {
        repo: conn.repo.clone(),
        body: render(&view),
    }];
    // A GitHub App writes a check run with buttons in place of the commit status.
    let check = forges.uses_checks(&conn).then(|| {
        use CheckAction::{Destroy, Redeploy};
        let (state, actions) = match shown {
            S::Ready => (CheckState::Success, vec![Redeploy, Destroy]),
            S::Failed => (CheckState::Failure, vec![Redeploy, Destroy]),
            S::AwaitingApproval => (CheckState::Waiting, vec![Redeploy]),
            S::Destroyed | S::Expired => (CheckState::Gone, vec![]),
            _ => (CheckState::InProgress, vec![Destroy]),
        };
        CheckRun {
            state,
            number: p.number as u64,
            details_url: url.clone(),
            title: check_title(shown),
            summary: check_summary(&view),
            actions,
        }
    });
    if !sha.is_empty() {
        if let Some(check) = check {
            if shown != S::Skipped {
                out.push(Payload::Check {
                    repo: conn.repo.clone(),
                    sha: sha.clone(),
                    check,
                });
            }
        } else if let Some((state, description)) = status {
            out.push(Payload::Status {
                repo: conn.repo.clone(),
                sha: sha.clone(),
                state,
                target_url: url.clone(),
                description,
            });
        }
        if let Some(state) = deploy {
            out.push(Payload::Deployment {
                repo: conn.repo.clone(),
                sha,
                state,
                url,
            });
        }
    }
    Ok(out.iter().map(|w| forges.row(&conn, w, p.number)).collect())
}
