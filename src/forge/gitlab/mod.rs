//! GitLab deliveries. The `gitlab` crate no longer ships hook types, so these are our own serde
//! structs holding only the fields endor reads; unknown fields are ignored, so GitLab adding
//! fields never breaks ingestion. For the hooks endor acts on (merge requests, notes), `object_kind`
//! must agree with the `X-Gitlab-Event` header; every other hook is ignored with a 2xx.

pub mod client;

use serde::Deserialize;

use crate::forge::event::*;
use crate::forge::signature::{self, SignatureError};
use crate::forge::{ForgeKind, PayloadError, parse_json, require_object};
use crate::secret::WebhookSecret;
use http::HeaderMap;

/// A repository path is `group/subgroup/…/name`: groups nest (GitLab allows 20 levels).
pub const MAX_PATH_SEGMENTS: usize = 20;
/// The header that names the event kind of a delivery.
pub const EVENT_HEADER: &str = "x-gitlab-event";
/// Deliveries are always JSON bodies.
pub const FORM_PAYLOAD_FIELD: Option<&str> = None;
/// The headers that carry the delivery id, in order of preference (SPEC §3).
pub const DELIVERY_HEADERS: &[&str] = &["idempotency-key", "x-gitlab-event-uuid"];
/// Event kinds counted by name in metrics (the rest are `other`).
pub const KNOWN_EVENTS: &[&str] = &[
    "Merge Request Hook",
    "Note Hook",
    "Confidential Note Hook",
    "Push Hook",
];
/// gitlab.com's API, when neither the config nor the connection names one.
pub const DEFAULT_API_URL: Option<&str> = Some("https://gitlab.com/api/v4");

/// `X-Gitlab-Token`: the secret itself, compared in constant time.
pub fn verify(
    headers: &HeaderMap,
    _body: &[u8],
    secrets: &[&WebhookSecret],
) -> Result<(), SignatureError> {
    signature::verify_token(headers, "x-gitlab-token", "X-Gitlab-Token", secrets)
}

/// The ref GitLab publishes a merge request's head under.
pub fn pr_ref(number: u64) -> String {
    format!("refs/merge-requests/{number}/head")
}

/// The events a project's webhook must send, and how to add it by hand.
pub fn setup(url: &str) -> (Vec<&'static str>, String) {
    (
        vec!["Merge request events", "Comments"],
        format!(
            "In the project: Settings → Webhooks → Add new webhook.\n  URL: {url}\n  Secret token: the secret above\n  Trigger: Merge request events, Comments."
        ),
    )
}

#[derive(Deserialize)]
struct KindProbe {
    object_kind: String,
}

#[derive(Deserialize)]
struct User {
    username: String,
}

#[derive(Deserialize)]
struct Project {
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct Commit {
    id: String,
}

#[derive(Deserialize)]
struct Change<T> {
    previous: Option<T>,
    current: Option<T>,
}

#[derive(Deserialize)]
struct MrHook {
    user: User,
    project: Project,
    object_attributes: MrAttributes,
    changes: Option<MrChanges>,
}

#[derive(Deserialize)]
struct MrAttributes {
    iid: u64,
    title: String,
    source_branch: String,
    target_branch: String,
    source_project_id: u64,
    target_project_id: u64,
    action: Option<String>,
    oldrev: Option<String>,
    last_commit: Option<Commit>,
    draft: Option<bool>,
    work_in_progress: Option<bool>,
    source: Option<Project>,
}

#[derive(Deserialize)]
struct MrChanges {
    draft: Option<Change<bool>>,
    work_in_progress: Option<Change<bool>>,
}

#[derive(Deserialize)]
struct NoteHook {
    user: User,
    project: Project,
    object_attributes: NoteAttributes,
    merge_request: Option<NoteMergeRequest>,
}

#[derive(Deserialize)]
struct NoteAttributes {
    id: u64,
    note: String,
    noteable_type: String,
    #[serde(default)]
    system: bool,
    action: Option<String>,
}

#[derive(Deserialize)]
struct NoteMergeRequest {
    iid: u64,
    last_commit: Option<Commit>,
}

/// The `object_kind` each hook endor acts on must carry. Every other hook is ignored with a
/// 2xx whatever its `object_kind` (GitLab sends work items under `Issue Hook` with
/// `object_kind: work_item`, and disables hooks that keep getting 4xx).
fn expected_kind(event: &str) -> Option<&'static str> {
    Some(match event {
        "Merge Request Hook" => "merge_request",
        "Note Hook" | "Confidential Note Hook" => "note",
        _ => return None,
    })
}

/// GitLab's project and group access tokens act through bot users named `project_N_bot_…` /
/// `group_N_bot_…`; MR hooks carry no bot flag, so the name is what there is.
fn is_bot_login(login: &str) -> bool {
    let rest = login
        .strip_prefix("project_")
        .or_else(|| login.strip_prefix("group_"));
    match rest {
        Some(r) => {
            let digits = r.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && r[digits..].starts_with("_bot")
        }
        None => login.ends_with("[bot]"),
    }
}

pub fn classify(event: &str, body: &[u8]) -> Result<Classified, PayloadError> {
    if event.is_empty()
        || event.len() > 64
        || !event.bytes().all(|b| b.is_ascii_alphabetic() || b == b' ')
    {
        return Err(PayloadError::BadEventHeader);
    }
    let Some(kind) = expected_kind(event) else {
        require_object(event, body)?;
        return Ok(Classified::ignored(
            None,
            format!("event `{event}` is not acted on"),
        ));
    };
    let probe: KindProbe = parse_json(event, body)?;
    if probe.object_kind != kind {
        return Err(PayloadError::invalid(
            event,
            format!(
                "object_kind `{}` does not match the event header",
                probe.object_kind
            ),
        ));
    }
    match kind {
        "merge_request" => merge_request(event, body),
        _ => note(event, body),
    }
}

fn merge_request(event: &str, body: &[u8]) -> Result<Classified, PayloadError> {
    let hook: MrHook = parse_json(event, body)?;
    let a = &hook.object_attributes;
    let action_name = a.action.as_deref().unwrap_or("");
    let draft_change = hook
        .changes
        .as_ref()
        .and_then(|c| c.draft.as_ref().or(c.work_in_progress.as_ref()))
        .map(|c| (c.previous, c.current));
    let action = match action_name {
        "open" => PrAction::Opened,
        "reopen" => PrAction::Reopened,
        "close" => PrAction::Closed,
        "merge" => PrAction::Merged,
        "update" if a.oldrev.is_some() => PrAction::Synchronized,
        "update" if draft_change == Some((Some(true), Some(false))) => PrAction::ReadyForReview,
        "update" if draft_change == Some((Some(false), Some(true))) => PrAction::ConvertedToDraft,
        "update" => {
            return Ok(Classified::ignored(
                Some("update"),
                "merge request update without new commits",
            ));
        }
        other => {
            return Ok(Classified::ignored(
                Some(other),
                format!("merge request action `{other}` is not acted on"),
            ));
        }
    };
    let head_sha = a
        .last_commit
        .as_ref()
        .map(|c| c.id.clone())
        .ok_or_else(|| PayloadError::invalid(event, "missing `object_attributes.last_commit`"))?;
    let is_fork = a.source_project_id != a.target_project_id;
    Ok(Classified::Acted(ForgeEvent {
        forge: ForgeKind::Gitlab,
        repo: hook.project.path_with_namespace.clone(),
        sender: hook.user.username.clone(),
        kind: EventKind::PullRequest(PullRequestEvent {
            action,
            number: a.iid,
            title: a.title.clone(),
            head_sha,
            head_ref: a.source_branch.clone(),
            head_repo: a.source.as_ref().map(|p| p.path_with_namespace.clone()),
            is_fork,
            base_ref: a.target_branch.clone(),
            author: hook.user.username.clone(),
            draft: a.draft.or(a.work_in_progress).unwrap_or(false),
        }),
    }))
}

fn note(event: &str, body: &[u8]) -> Result<Classified, PayloadError> {
    let hook: NoteHook = parse_json(event, body)?;
    let a = &hook.object_attributes;
    let action = match a.action.as_deref() {
        None | Some("create") => CommentAction::Created,
        Some("update") => CommentAction::Edited,
        Some(other) => {
            return Ok(Classified::ignored(
                Some(other),
                format!("note action `{other}` is not acted on"),
            ));
        }
    };
    if a.noteable_type != "MergeRequest" {
        return Ok(Classified::ignored(
            Some(action.as_str()),
            "note is not on a merge request",
        ));
    }
    if a.system {
        return Ok(Classified::ignored(Some(action.as_str()), "system note"));
    }
    let mr = hook.merge_request.as_ref().ok_or_else(|| {
        PayloadError::invalid(event, "missing `merge_request` on a merge request note")
    })?;
    Ok(Classified::Acted(ForgeEvent {
        forge: ForgeKind::Gitlab,
        repo: hook.project.path_with_namespace.clone(),
        sender: hook.user.username.clone(),
        kind: EventKind::Comment(CommentEvent {
            action,
            number: mr.iid,
            comment_id: a.id,
            body: a.note.clone(),
            previous_body: None,
            author: hook.user.username.clone(),
            author_is_bot: is_bot_login(&hook.user.username),
            head_sha: mr.last_commit.as_ref().map(|c| c.id.clone()),
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bot_logins() {
        assert!(is_bot_login("project_42_bot_abc"));
        assert!(is_bot_login("group_7_bot"));
        assert!(!is_bot_login("project_bot"));
        assert!(!is_bot_login("jane"));
    }

    #[test]
    fn header_and_object_kind_must_agree() {
        let note = br#"{"object_kind":"note"}"#;
        assert!(matches!(
            classify("Merge Request Hook", note),
            Err(PayloadError::Invalid { .. })
        ));
        assert!(matches!(
            classify("Merge Request Hook", b"[]"),
            Err(PayloadError::Invalid { .. })
        ));
        assert!(matches!(
            classify("Bogus\nHook", note),
            Err(PayloadError::BadEventHeader)
        ));
        assert_eq!(
            classify("Member Hook", br#"{"object_kind":"member"}"#).unwrap(),
            Classified::ignored(None, "event `Member Hook` is not acted on")
        );
        // Kinds endor does not act on are ignored whatever object_kind a newer GitLab sends
        // under their header (a work item under `Issue Hook`), as long as the body is JSON.
        for (event, body) in [
            ("Issue Hook", &br#"{"object_kind":"work_item"}"#[..]),
            ("Issue Hook", br#"{"object_kind":"issue"}"#),
            ("Confidential Issue Hook", br#"{"object_kind":"work_item"}"#),
            ("Pipeline Hook", br#"{"object_kind":"pipeline","x":1}"#),
            ("Push Hook", br#"{"object_kind":"push"}"#),
            ("Emoji Hook", br#"{"object_kind":"emoji"}"#),
        ] {
            assert_eq!(
                classify(event, body).unwrap(),
                Classified::ignored(None, format!("event `{event}` is not acted on"))
            );
        }
        assert!(classify("Issue Hook", b"not json").is_err());
    }
}
