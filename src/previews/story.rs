//! Every preview's story in one place (`endor preview list` / `show`, and the API): its state,
//! the step and reason of its last failure, the steps of its last run, the deliveries that drove
//! it, and what endor posted or would have posted to the forge (held write-backs included).
//! Read-only: it only looks at the store.

use serde::Serialize;

use crate::config::Config;
use crate::forge::ForgeKind;
use crate::ids::{ConnectionId, WorkspaceId};
use crate::sites::StepReport;
use crate::store::{Connection, Delivery, OutboxItem, OutboxKind, Preview, Store, StoreError};
use crate::writeback::Payload;

use super::state::PreviewState;

/// How many of a preview's deliveries its story shows (the newest).
const DELIVERIES_SHOWN: i64 = 50;

/// A preview, a line of `endor preview list`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PreviewLine {
    /// `REPO#N`: what `endor preview show` takes.
    pub name: String,
    pub repo: String,
    #[schema(value_type = String)]
    pub forge: ForgeKind,
    pub connection_id: ConnectionId,
    pub number: i64,
    pub site: String,
    pub state: PreviewState,
    /// The PR's title (untrusted text).
    pub title: Option<String>,
    pub head_sha: Option<String>,
    /// The head the preview serves (a failed update keeps serving the last good one).
    pub ready_sha: Option<String>,
    /// Where it is served, while it is.
    pub url: Option<String>,
    /// The state's reason: why it failed, what it waits for.
    pub reason: Option<String>,
    /// For a failed preview: the step that failed (`fetch`, `config`, `clone`, `build`,
    /// `start`, `health`, `route`).
    pub failed_step: Option<String>,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
}

/// A delivery that drove a preview, and what became of the job it queued.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryLine {
    pub id: String,
    pub delivery_key: String,
    pub event: String,
    pub action: Option<String>,
    pub outcome: String,
    pub received_at: i64,
    /// `queued`, `running`, `done`, `failed`, `cancelled` (a newer event of the PR superseded it).
    pub job_state: Option<String>,
    pub job_error: Option<String>,
}

/// A write-back endor posted, will post, or would have posted.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Post {
    /// `comment` (the sticky status comment), `status`, `check` (a GitHub App's check run),
    /// `deployment`, `reply`, `reaction`.
    pub kind: OutboxKind,
    /// `done` (sent), `pending`, `sending`, `failed`, `superseded`, `unsent` (held).
    pub state: String,
    /// Why it was not sent, or the last error sending it.
    pub note: Option<String>,
    /// What it says: the comment's Markdown, the status's state and description, …
    pub text: String,
    pub at: i64,
}

/// One preview's whole story (`endor preview show REPO#N`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PreviewStory {
    pub preview: PreviewLine,
    /// The steps of the last run, in order.
    pub steps: Vec<StepReport>,
    /// The deliveries about this PR, oldest first (the newest 50).
    pub deliveries: Vec<DeliveryLine>,
    /// The newest status comment, commit status or check run and deployment, and every reply
    /// and reaction.
    pub posts: Vec<Post>,
}

/// Filters of [`list`].
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    pub workspace: Option<&'a WorkspaceId>,
    /// A repository (`owner/name`, any case) or a connection id.
    pub repo: Option<&'a str>,
    pub state: Option<PreviewState>,
}

/// Why a story cannot be told.
#[derive(Debug, thiserror::Error)]
pub enum StoryError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn line(
    config: &Config,
    conn: &Connection,
    p: &Preview,
    failed_step: Option<String>,
) -> PreviewLine {
    // A failed or running update keeps the last good version serving.
    use PreviewState as S;
    let serving = match p.state {
        S::Ready => true,
        S::Failed | S::Queued | S::Cloning | S::Building | S::Starting | S::AwaitingApproval => {
            p.ready_sha.is_some()
        }
        S::Skipped | S::Destroying | S::Destroyed | S::Expired => false,
    };
    let url = serving.then(|| {
        format!(
            "http://{}.{}:{}/",
            p.site_name,
            config.gateway.domain,
            config.gateway.listen.port()
        )
    });
    PreviewLine {
        name: format!("{}#{}", conn.repo, p.number),
        repo: conn.repo.clone(),
        forge: conn.forge,
        connection_id: conn.id.clone(),
        number: p.number,
        site: p.site_name.clone(),
        state: p.state,
        title: p.title.clone(),
        head_sha: p.head_sha.clone(),
        ready_sha: p.ready_sha.clone(),
        url,
        reason: p.reason.clone(),
        failed_step,
        updated_at: p.updated_at,
        expires_at: p.expires_at,
    }
}

/// Every preview (failed, destroyed and expired ones included), newest activity first.
pub async fn list(
    store: &dyn Store,
    config: &Config,
    filter: &Filter<'_>,
) -> Result<Vec<PreviewLine>, StoryError> {
    let conns: Vec<Connection> = store
        .list_connections(filter.workspace)
        .await?
        .into_iter()
        .filter(|c| match filter.repo {
            Some(r) => c.repo.eq_ignore_ascii_case(r) || c.id.as_str() == r,
            None => true,
        })
        .collect();
    if let Some(r) = filter.repo
        && conns.is_empty()
    {
        return Err(StoryError::NotFound(format!(
            "repository {r} is not connected"
        )));
    }
    let mut out = Vec::new();
    for p in store.list_previews().await? {
        if filter.state.is_some_and(|s| s != p.state) {
            continue;
        }
        let Some(conn) = conns.iter().find(|c| c.id == p.connection_id) else {
            continue;
        };
        let failed = match p.state {
            PreviewState::Failed => failed_step(
                &store
                    .last_run_steps(&p.id)
                    .await?
                    .into_iter()
                    .map(StepReport::from)
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        };
        out.push(line(config, conn, &p, failed));
    }
    out.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(a.name.cmp(&b.name)));
    Ok(out)
}

/// `REPO#N` (or `CONNECTION_ID#N`) → the connection and the number.
pub async fn resolve(
    store: &dyn Store,
    workspace: Option<&WorkspaceId>,
    name: &str,
) -> Result<(Connection, i64), StoryError> {
    let (repo, number) = name
        .rsplit_once('#')
        .and_then(|(r, n)| Some((r, n.parse::<i64>().ok().filter(|n| *n > 0)?)))
        .ok_or_else(|| {
            StoryError::Invalid(format!(
                "`{name}` is not REPO#NUMBER (for example acme/shop#7)"
            ))
        })?;
    let matching: Vec<Connection> = store
        .list_connections(workspace)
        .await?
        .into_iter()
        .filter(|c| c.repo.eq_ignore_ascii_case(repo) || c.id.as_str() == repo)
        .collect();
    match matching.as_slice() {
        [] => Err(StoryError::NotFound(format!(
            "repository {repo} is not connected (endor repo list)"
        ))),
        [one] => Ok((one.clone(), number)),
        many => Err(StoryError::Invalid(format!(
            "{repo} is connected {} times; name the connection instead: {}",
            many.len(),
            many.iter()
                .map(|c| format!("{}#{number}", c.id))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// One preview's story.
pub async fn show(
    store: &dyn Store,
    config: &Config,
    conn: &Connection,
    number: i64,
) -> Result<PreviewStory, StoryError> {
    let p = store.preview(&conn.id, number).await?;
    let deliveries = store
        .pr_deliveries(&conn.id, number, DELIVERIES_SHOWN)
        .await?;
    let Some(p) = p else {
        // Deliveries without a preview: a PR endor heard of but has not acted on yet.
        return Err(StoryError::NotFound(if deliveries.is_empty() {
            format!("no preview of {}#{number}", conn.repo)
        } else {
            format!(
                "no preview of {}#{number} yet ({} deliveries received; endor delivery list)",
                conn.repo,
                deliveries.len()
            )
        }));
    };
    let steps: Vec<StepReport> = store
        .last_run_steps(&p.id)
        .await?
        .into_iter()
        .map(StepReport::from)
        .collect();
    let failed = match p.state {
        PreviewState::Failed => failed_step(&steps),
        _ => None,
    };
    Ok(PreviewStory {
        preview: line(config, conn, &p, failed),
        steps,
        deliveries: deliveries.into_iter().map(DeliveryLine::from).collect(),
        posts: posts(store.pr_outbox(&conn.id, number).await?),
    })
}

fn failed_step(steps: &[StepReport]) -> Option<String> {
    steps
        .iter()
        .rev()
        .find(|s| s.ok == Some(false))
        .map(|s| s.step.clone())
}

impl From<Delivery> for DeliveryLine {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id.to_string(),
            delivery_key: d.delivery_key,
            event: d.event,
            action: d.action,
            outcome: d.outcome,
            received_at: d.received_at,
            job_state: d.job_state,
            job_error: d.job_error,
        }
    }
}

/// The newest item of each sticky kind (comment, status or check run per head, deployment per
/// head), and every reply and reaction, oldest first.
fn posts(items: Vec<OutboxItem>) -> Vec<Post> {
    let sticky = |k: OutboxKind| {
        matches!(
            k,
            OutboxKind::Comment | OutboxKind::Status | OutboxKind::Deployment | OutboxKind::Check
        )
    };
    let mut out: Vec<(String, Post)> = Vec::new();
    for item in items {
        let post = Post {
            kind: item.kind,
            state: item.state,
            note: item.last_error,
            text: text(&item.payload),
            at: item.created_at,
        };
        if sticky(item.kind)
            && let Some(i) = out.iter().position(|(k, _)| *k == item.coalesce_key)
        {
            out.remove(i);
        }
        out.push((item.coalesce_key, post));
    }
    out.into_iter().map(|(_, p)| p).collect()
}

/// What a write-back says, as text.
fn text(payload: &str) -> String {
    match serde_json::from_str::<Payload>(payload) {
        Ok(Payload::Comment { body, .. }) | Ok(Payload::Reply { body, .. }) => body,
        Ok(Payload::Status {
            sha,
            state,
            description,
            target_url,
            ..
        }) => {
            let mut t = format!(
                "{} on {}: {description}",
                json_name(&state),
                crate::git::short_sha(&sha)
            );
            if let Some(u) = target_url {
                t.push_str(&format!(" ({u})"));
            }
            t
        }
        Ok(Payload::Deployment {
            sha, state, url, ..
        }) => {
            let mut t = format!("{} for {}", json_name(&state), crate::git::short_sha(&sha));
            if let Some(u) = url {
                t.push_str(&format!(" ({u})"));
            }
            t
        }
        Ok(Payload::Reaction {
            comment_id,
            content,
            ..
        }) => format!("reaction {content} on comment {comment_id}"),
        Ok(Payload::Check { sha, check, .. }) => {
            let mut t = format!(
                "check run {} on {}: {}",
                json_name(&check.state),
                crate::git::short_sha(&sha),
                check.title
            );
            if let Some(u) = check.details_url {
                t.push_str(&format!(" ({u})"));
            }
            t
        }
        Err(_) => payload.to_string(),
    }
}

fn json_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
