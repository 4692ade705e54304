//! GitHub deliveries, parsed with octocrab's webhook models.
//!
//! A cheap probe (`action` + the presence of the event's main object) runs first, so actions
//! endor does not act on are answered without a full parse, and new actions GitHub adds later
//! are ignored instead of rejected. Only acted-on actions go through octocrab's full models.

pub mod client;

use octocrab::models::webhook_events::WebhookEventPayload;
use octocrab::models::webhook_events::payload::{
    IssueCommentWebhookEventAction, PullRequestWebhookEventAction,
};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::forge::event::*;
use crate::forge::signature::{self, SignatureError};
use crate::forge::{ForgeKind, PayloadError, parse_json, require_object};
use crate::secret::WebhookSecret;
use http::HeaderMap;

/// A repository path is `owner/name`.
pub const MAX_PATH_SEGMENTS: usize = 2;
/// The header that names the event kind of a delivery.
pub const EVENT_HEADER: &str = "x-github-event";
/// A webhook set to `application/x-www-form-urlencoded` sends the JSON in this field.
pub const FORM_PAYLOAD_FIELD: Option<&str> = Some("payload");
/// The headers that carry the delivery id, in order of preference (SPEC §3).
pub const DELIVERY_HEADERS: &[&str] = &["x-github-delivery"];
/// Event kinds counted by name in metrics (the rest are `other`).
pub const KNOWN_EVENTS: &[&str] = &[
    "pull_request",
    "issue_comment",
    "pull_request_comment",
    "push",
    "installation",
    "installation_repositories",
    "check_run",
];
/// The public API, when neither the config nor the connection names one.
pub const DEFAULT_API_URL: Option<&str> = Some("https://api.github.com");

/// `X-Hub-Signature-256: sha256=HEX` over the raw body.
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[&WebhookSecret],
) -> Result<(), SignatureError> {
    signature::verify_hub_sha256(headers, body, secrets)
}

/// The ref GitHub publishes a PR's head under (fork heads included).
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
            "In the repository: Settings → Webhooks → Add webhook.\n  Payload URL: {url}\n  Content type: application/json\n  Secret: the secret above\n  Events: \"Let me select individual events\" → Pull requests, Issue comments."
        ),
    )
}

#[derive(Deserialize)]
struct Probe {
    action: String,
    #[allow(dead_code)]
    pull_request: Option<IgnoredAny>,
    #[allow(dead_code)]
    comment: Option<IgnoredAny>,
    #[allow(dead_code)]
    issue: Option<IgnoredAny>,
}

pub fn classify(event: &str, body: &[u8]) -> Result<Classified, PayloadError> {
    if !crate::forge::valid_event_name(event) {
        return Err(PayloadError::BadEventHeader);
    }
    match event {
        "ping" => {
            require_object(event, body)?;
            Ok(Classified::Ping)
        }
        "pull_request" => {
            let probe: Probe = parse_json(event, body)?;
            if probe.pull_request.is_none() {
                return Err(PayloadError::invalid(event, "missing field `pull_request`"));
            }
            if !matches!(
                probe.action.as_str(),
                "opened"
                    | "reopened"
                    | "synchronize"
                    | "ready_for_review"
                    | "converted_to_draft"
                    | "closed"
            ) {
                return Ok(Classified::ignored(
                    Some(&probe.action),
                    format!("pull_request action `{}` is not acted on", probe.action),
                ));
            }
            full_parse(event, body)
        }
        "issue_comment" => {
            let probe: Probe = parse_json(event, body)?;
            if probe.comment.is_none() || probe.issue.is_none() {
                return Err(PayloadError::invalid(
                    event,
                    "missing field `comment` or `issue`",
                ));
            }
            if !matches!(probe.action.as_str(), "created" | "edited" | "deleted") {
                return Ok(Classified::ignored(
                    Some(&probe.action),
                    format!("issue_comment action `{}` is not acted on", probe.action),
                ));
            }
            full_parse(event, body)
        }
        "check_run" => check_run(event, body),
        _ => {
            require_object(event, body)?;
            Ok(Classified::ignored(
                None,
                format!("event `{event}` is not acted on"),
            ))
        }
    }
}

#[derive(Deserialize)]
struct CheckRunDelivery {
    action: String,
    check_run: CheckRunObject,
    requested_action: Option<RequestedAction>,
    repository: Option<OwnedRepo>,
    sender: Option<OwnedLogin>,
}

#[derive(Deserialize)]
struct OwnedRepo {
    full_name: String,
}

#[derive(Deserialize)]
struct OwnedLogin {
    login: String,
}

/// Outside text as a reason shows it: at most 64 characters, control characters escaped.
fn shown(text: &str) -> String {
    text.chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

#[derive(Deserialize)]
struct CheckRunObject {
    id: u64,
    name: String,
    head_sha: String,
    external_id: Option<String>,
    #[serde(default)]
    pull_requests: Vec<PrNumber>,
}

#[derive(Deserialize)]
struct RequestedAction {
    identifier: String,
}

#[derive(Deserialize)]
struct PrNumber {
    number: u64,
}

/// A `check_run` delivery: a press of a button on endor's own run `endor/preview` (its
/// actions, or GitHub's "Re-run") acts; the rest (runs being created and completed, other
/// apps' runs) is ignored.
fn check_run(event: &str, body: &[u8]) -> Result<Classified, PayloadError> {
    let d: CheckRunDelivery = parse_json(event, body)?;
    let via = match d.action.as_str() {
        "requested_action" => CheckVia::RequestedAction,
        "rerequested" => CheckVia::Rerequested,
        other => {
            return Ok(Classified::ignored(
                Some(other),
                format!("check_run action `{other}` is not acted on"),
            ));
        }
    };
    let ignored = |reason: String| Ok(Classified::ignored(Some(via.as_str()), reason));
    let run = &d.check_run;
    if run.name != crate::forge::client::STATUS_CONTEXT {
        return ignored(format!("check run `{}` is not endor's", shown(&run.name)));
    }
    let action = match (via, &d.requested_action) {
        (CheckVia::Rerequested, _) => crate::forge::client::CheckAction::Redeploy,
        (CheckVia::RequestedAction, Some(r)) => {
            match crate::forge::client::CheckAction::from_identifier(&r.identifier) {
                Some(a) => a,
                None => {
                    return ignored(format!(
                        "check run action `{}` is not one of endor's",
                        shown(&r.identifier)
                    ));
                }
            }
        }
        (CheckVia::RequestedAction, None) => {
            return Err(PayloadError::invalid(
                event,
                "missing field `requested_action`",
            ));
        }
    };
    // endor writes the PR number as the run's external id; GitHub also lists the PRs of a
    // head branch in the same repository.
    let number = run
        .external_id
        .as_deref()
        .and_then(|x| x.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .or_else(|| run.pull_requests.first().map(|p| p.number));
    let Some(number) = number else {
        return ignored("the check run names no pull request".into());
    };
    let repo = d
        .repository
        .map(|r| r.full_name)
        .ok_or_else(|| PayloadError::invalid(event, "missing `repository.full_name`"))?;
    let sender = d.sender.map(|s| s.login).unwrap_or_default();
    Ok(Classified::Acted(ForgeEvent {
        forge: ForgeKind::Github,
        repo,
        sender: sender.clone(),
        kind: EventKind::CheckAction(CheckActionEvent {
            via,
            action,
            number,
            head_sha: run.head_sha.clone(),
            check_run_id: run.id,
            author: sender,
        }),
    }))
}

/// The envelope fields every acted-on event needs, borrowed from the body.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    repository: Option<RepoName<'a>>,
    #[serde(borrow)]
    sender: Option<Login<'a>>,
}

#[derive(Deserialize)]
struct RepoName<'a> {
    #[serde(borrow)]
    full_name: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct Login<'a> {
    #[serde(borrow)]
    login: std::borrow::Cow<'a, str>,
}

/// Parse an acted-on event into octocrab's typed payload. The payload struct is deserialized
/// straight from the bytes: `WebhookEvent::try_from_header_and_body` would first build a whole
/// `serde_json::Value` tree (4x slower on a 28 KB pull request, measured by `benches/signature`).
fn full_parse(event: &str, body: &[u8]) -> Result<Classified, PayloadError> {
    let env: Envelope = parse_json(event, body)?;
    let repo = env
        .repository
        .map(|r| r.full_name.into_owned())
        .ok_or_else(|| PayloadError::invalid(event, "missing `repository.full_name`"))?;
    let sender = env.sender.map(|s| s.login.into_owned()).unwrap_or_default();
    let specific = match event {
        "pull_request" => WebhookEventPayload::PullRequest(Box::new(parse_json(event, body)?)),
        "issue_comment" => WebhookEventPayload::IssueComment(Box::new(parse_json(event, body)?)),
        _ => {
            return Ok(Classified::ignored(
                None,
                format!("event `{event}` is not acted on"),
            ));
        }
    };
    let kind = match specific {
        WebhookEventPayload::PullRequest(p) => {
            let pr = &p.pull_request;
            let action = match p.action {
                PullRequestWebhookEventAction::Opened => PrAction::Opened,
                PullRequestWebhookEventAction::Reopened => PrAction::Reopened,
                PullRequestWebhookEventAction::Synchronize => PrAction::Synchronized,
                PullRequestWebhookEventAction::ReadyForReview => PrAction::ReadyForReview,
                PullRequestWebhookEventAction::ConvertedToDraft => PrAction::ConvertedToDraft,
                PullRequestWebhookEventAction::Closed
                    if pr.merged == Some(true) || pr.merged_at.is_some() =>
                {
                    PrAction::Merged
                }
                PullRequestWebhookEventAction::Closed => PrAction::Closed,
                _ => {
                    return Ok(Classified::ignored(
                        None,
                        "pull_request action is not acted on",
                    ));
                }
            };
            let head_repo = pr.head.repo.as_ref().and_then(|r| r.full_name.clone());
            let base_repo = pr.base.repo.as_ref().and_then(|r| r.full_name.clone());
            let is_fork = match (&head_repo, &base_repo) {
                (Some(h), Some(b)) => !h.eq_ignore_ascii_case(b),
                _ => true,
            };
            EventKind::PullRequest(PullRequestEvent {
                action,
                number: p.number,
                title: pr.title.clone().unwrap_or_default(),
                head_sha: pr.head.sha.clone(),
                head_ref: pr.head.ref_field.clone(),
                head_repo,
                is_fork,
                base_ref: pr.base.ref_field.clone(),
                author: pr
                    .user
                    .as_ref()
                    .map(|u| u.login.clone())
                    .unwrap_or_default(),
                draft: pr.draft.unwrap_or(false),
            })
        }
        WebhookEventPayload::IssueComment(c) => {
            if c.issue.pull_request.is_none() {
                return Ok(Classified::ignored(
                    Some(action_name(&c.action)),
                    "comment is not on a pull request",
                ));
            }
            let action = match c.action {
                IssueCommentWebhookEventAction::Created => CommentAction::Created,
                IssueCommentWebhookEventAction::Edited => CommentAction::Edited,
                IssueCommentWebhookEventAction::Deleted => CommentAction::Deleted,
                _ => {
                    return Ok(Classified::ignored(
                        None,
                        "issue_comment action is not acted on",
                    ));
                }
            };
            let user = &c.comment.user;
            EventKind::Comment(CommentEvent {
                action,
                number: c.issue.number,
                comment_id: c.comment.id.0,
                body: c.comment.body.clone().unwrap_or_default(),
                previous_body: c.changes.as_ref().map(|ch| ch.body.from.clone()),
                author: user.login.clone(),
                author_is_bot: user.r#type == "Bot" || user.login.ends_with("[bot]"),
                head_sha: None,
            })
        }
        _ => {
            return Ok(Classified::ignored(
                None,
                format!("event `{event}` is not acted on"),
            ));
        }
    };
    Ok(Classified::Acted(ForgeEvent {
        forge: ForgeKind::Github,
        repo,
        sender,
        kind,
    }))
}

fn action_name(a: &IssueCommentWebhookEventAction) -> &'static str {
    match a {
        IssueCommentWebhookEventAction::Created => "created",
        IssueCommentWebhookEventAction::Edited => "edited",
        IssueCommentWebhookEventAction::Deleted => "deleted",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::client::CheckAction;
    use serde_json::{Value, json};

    /// GitHub's example `requested_action` delivery, on endor's run of PR 7.
    fn press(edit: impl FnOnce(&mut Value)) -> Result<Classified, PayloadError> {
        let mut v: Value = serde_json::from_slice(include_bytes!(
            "../../../tests/fixtures/webhooks/github.check_run.requested_action.json"
        ))
        .unwrap();
        v["check_run"]["name"] = "endor/preview".into();
        v["check_run"]["external_id"] = "7".into();
        v["requested_action"]["identifier"] = "redeploy".into();
        edit(&mut v);
        classify("check_run", &serde_json::to_vec(&v).unwrap())
    }

    fn acted(c: Result<Classified, PayloadError>) -> CheckActionEvent {
        match c {
            Ok(Classified::Acted(ForgeEvent {
                kind: EventKind::CheckAction(a),
                ..
            })) => a,
            other => panic!("not acted: {other:?}"),
        }
    }

    fn ignored(c: Result<Classified, PayloadError>) -> String {
        match c {
            Ok(Classified::Ignored { reason, .. }) => reason,
            other => panic!("not ignored: {other:?}"),
        }
    }

    #[test]
    fn buttons_of_endors_check_run_are_commands() {
        let a = acted(press(|_| {}));
        assert_eq!(
            (a.action, a.via, a.number, a.author.as_str()),
            (
                CheckAction::Redeploy,
                CheckVia::RequestedAction,
                7,
                "codebytere"
            )
        );
        assert_eq!(a.head_sha, "5bd5f196a46b8222fb7484f05faba41a73cf34bd");
        assert_eq!(a.check_run_id, 1494503112);
        let a = acted(press(|v| {
            v["requested_action"]["identifier"] = "destroy".into()
        }));
        assert_eq!(a.action, CheckAction::Destroy);
        // GitHub's "Re-run" is a redeploy.
        let a = acted(press(|v| {
            v["action"] = "rerequested".into();
            v.as_object_mut().unwrap().remove("requested_action");
        }));
        assert_eq!(
            (a.action, a.via),
            (CheckAction::Redeploy, CheckVia::Rerequested)
        );
        // Without endor's external id, the PR GitHub lists (a head branch of the repository).
        let a = acted(press(|v| v["check_run"]["external_id"] = "".into()));
        assert_eq!(a.number, 26764);
    }

    #[test]
    fn other_runs_buttons_and_actions_are_ignored_or_refused() {
        // The example as GitHub sent it: electron's "API Review" run, not endor's.
        assert!(
            ignored(press(|v| v["check_run"]["name"] = "API Review".into())).contains("API Review")
        );
        let hostile = ignored(press(|v| {
            v["requested_action"]["identifier"] = format!("x\u{1b}[31m{}", "y".repeat(500)).into()
        }));
        assert!(
            hostile.len() < 200 && !hostile.contains('\u{1b}'),
            "{hostile}"
        );
        for action in ["created", "completed"] {
            ignored(press(|v| v["action"] = action.into()));
        }
        // No PR to act on: neither endor's id nor a listed PR.
        ignored(press(|v| {
            v["check_run"]["external_id"] = Value::Null;
            v["check_run"]["pull_requests"] = json!([]);
        }));
        // A press without its action, or without a repository: not the JSON the event needs.
        assert!(
            press(|v| {
                v.as_object_mut().unwrap().remove("requested_action");
            })
            .is_err()
        );
        assert!(
            press(|v| {
                v.as_object_mut().unwrap().remove("repository");
            })
            .is_err()
        );
        assert!(classify("check_run", b"[]").is_err());
    }
}
