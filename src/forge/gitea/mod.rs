//! Gitea deliveries: our own serde structs with the fields endor reads. Gitea names comment
//! deliveries `issue_comment` (with `is_pull: true` on PRs); some senders use
//! `pull_request_comment`, which is accepted too.

pub mod client;

use serde::Deserialize;

use crate::forge::event::*;
use crate::forge::signature::{self, SignatureError};
use crate::forge::{ForgeKind, PayloadError, parse_json, require_object};
use crate::secret::WebhookSecret;
use http::HeaderMap;

/// A repository path is `owner/name`.
pub const MAX_PATH_SEGMENTS: usize = 2;
/// The header that names the event kind of a delivery.
pub const EVENT_HEADER: &str = "x-gitea-event";
/// Deliveries are always JSON bodies.
pub const FORM_PAYLOAD_FIELD: Option<&str> = None;
/// The headers that carry the delivery id, in order of preference (SPEC §3).
pub const DELIVERY_HEADERS: &[&str] = &["x-gitea-delivery"];
/// Event kinds counted by name in metrics (the rest are `other`).
pub const KNOWN_EVENTS: &[&str] = &[
    "pull_request",
    "pull_request_sync",
    "issue_comment",
    "pull_request_comment",
    "push",
];
/// Gitea is self-hosted: there is no default API.
pub const DEFAULT_API_URL: Option<&str> = None;

/// `X-Gitea-Signature` (bare hex HMAC-SHA256); newer versions also send
/// `X-Hub-Signature-256`, accepted when the first is absent.
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&WebhookSecret],
) -> Result<(), SignatureError> {
    if let Ok(sig) = signature::header(headers, "x-gitea-signature") {
        signature::verify_hmac_hex(sig, "X-Gitea-Signature", body, secrets)
    } else if headers.contains_key("x-hub-signature-256") {
        signature::verify_hub_sha256(headers, body, secrets)
    } else {
        Err(SignatureError::Missing("X-Gitea-Signature"))
    }
}

/// The ref Gitea publishes a PR's head under.
pub fn pr_ref(number: u64) -> String {
    format!("refs/pull/{number}/head")
}

/// The events a repository's webhook must send, and how to add it by hand.
/// The events endor's webhook subscribes to.
pub const EVENTS: &[&str] = &["pull_request", "issue_comment"];

pub fn setup(url: &str) -> (Vec<&'static str>, String) {
    (
        EVENTS.to_vec(),
        format!(
            "In the repository: Settings → Webhooks → Add Webhook → Gitea.\n  Target URL: {url}\n  HTTP method: POST, POST content type: application/json\n  Secret: the secret above\n  Trigger on: Custom events → Pull request, Issue comment."
        ),
    )
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct Repo {
    id: Option<u64>,
    full_name: String,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    ref_: String,
    sha: String,
    repo_id: Option<u64>,
    repo: Option<Repo>,
}

#[derive(Deserialize)]
struct PullRequest {
    title: String,
    user: User,
    head: Branch,
    base: Branch,
    #[serde(default)]
    merged: bool,
    #[serde(default)]
    draft: bool,
}

#[derive(Deserialize)]
struct PrHook {
    action: String,
    number: u64,
    pull_request: PullRequest,
    repository: Repo,
    sender: User,
}

#[derive(Deserialize)]
struct Issue {
    number: u64,
    pull_request: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Comment {
    id: u64,
    body: String,
    user: User,
}

#[derive(Deserialize)]
struct Old {
    from: String,
}

#[derive(Deserialize)]
struct Changes {
    body: Option<Old>,
}

#[derive(Deserialize)]
struct CommentHook {
    action: String,
    issue: Issue,
    comment: Comment,
    repository: Repo,
    sender: User,
    #[serde(default)]
    is_pull: bool,
    changes: Option<Changes>,
}

pub fn classify(event: &str, body: &[u8]) -> Result<Classified, PayloadError> {
    if !crate::forge::valid_event_name(event) {
        return Err(PayloadError::BadEventHeader);
    }
    match event {
        "issue_comment" | "pull_request_comment" => comment(event, body),
        "pull_request" | "pull_request_sync" => pull_request(event, body),
        _ => {
            require_object(event, body)?;
            Ok(Classified::ignored(
                None,
                format!("event `{event}` is not acted on"),
            ))
        }
    }
}

fn pull_request(event: &str, body: &[u8]) -> Result<Classified, PayloadError> {
    let hook: PrHook = parse_json(event, body)?;
    let pr = &hook.pull_request;
    let action = match hook.action.as_str() {
        "opened" => PrAction::Opened,
        "reopened" => PrAction::Reopened,
        "synchronized" => PrAction::Synchronized,
        "closed" if pr.merged => PrAction::Merged,
        "closed" => PrAction::Closed,
        other => {
            return Ok(Classified::ignored(
                Some(other),
                format!("pull_request action `{other}` is not acted on"),
            ));
        }
    };
    let head_repo = pr.head.repo.as_ref().map(|r| r.full_name.clone());
    let is_fork = match (
        pr.head.repo_id.or(pr.head.repo.as_ref().and_then(|r| r.id)),
        pr.base.repo_id,
    ) {
        (Some(h), Some(b)) => h != b,
        _ => head_repo
            .as_deref()
            .is_none_or(|h| !h.eq_ignore_ascii_case(&hook.repository.full_name)),
    };
    Ok(Classified::Acted(ForgeEvent {
        forge: ForgeKind::Gitea,
        repo: hook.repository.full_name.clone(),
        sender: hook.sender.login.clone(),
        kind: EventKind::PullRequest(PullRequestEvent {
            action,
            number: hook.number,
            title: pr.title.clone(),
            head_sha: pr.head.sha.clone(),
            head_ref: pr.head.ref_.clone(),
            head_repo,
            is_fork,
            base_ref: pr.base.ref_.clone(),
            author: pr.user.login.clone(),
            draft: pr.draft,
        }),
    }))
}

fn comment(event: &str, body: &[u8]) -> Result<Classified, PayloadError> {
    let hook: CommentHook = parse_json(event, body)?;
    let action = match hook.action.as_str() {
        "created" => CommentAction::Created,
        "edited" => CommentAction::Edited,
        "deleted" => CommentAction::Deleted,
        other => {
            return Ok(Classified::ignored(
                Some(other),
                format!("comment action `{other}` is not acted on"),
            ));
        }
    };
    if !hook.is_pull && hook.issue.pull_request.is_none() {
        return Ok(Classified::ignored(
            Some(action.as_str()),
            "comment is not on a pull request",
        ));
    }
    let author = hook.comment.user.login.clone();
    Ok(Classified::Acted(ForgeEvent {
        forge: ForgeKind::Gitea,
        repo: hook.repository.full_name.clone(),
        sender: hook.sender.login.clone(),
        kind: EventKind::Comment(CommentEvent {
            action,
            number: hook.issue.number,
            comment_id: hook.comment.id,
            body: hook.comment.body.clone(),
            previous_body: hook.changes.and_then(|c| c.body).map(|b| b.from),
            author_is_bot: author.ends_with("[bot]"),
            author,
            head_sha: None,
        }),
    }))
}
