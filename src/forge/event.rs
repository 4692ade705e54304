//! The forge-neutral event every delivery is normalized into. Everything downstream (jobs,
//! previews, commands) reads these, never a forge's payload.

use serde::{Deserialize, Serialize};

use super::ForgeKind;

/// What one authenticated delivery turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// GitHub's `ping` on hook creation: answered 200, nothing stored.
    Ping,
    /// A well-formed event that endor does not act on; stored as `ignored`, answered 200.
    Ignored {
        action: Option<String>,
        reason: String,
    },
    /// An event that endor acts on; stored as `queued`, answered 202.
    Acted(ForgeEvent),
}

impl Classified {
    pub(crate) fn ignored(action: Option<&str>, reason: impl Into<String>) -> Self {
        Classified::Ignored {
            action: action.map(str::to_string),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgeEvent {
    pub forge: ForgeKind,
    /// The repository the event happened in (`owner/name`, GitLab: full namespace path).
    pub repo: String,
    /// Login of the account that caused the delivery.
    pub sender: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl ForgeEvent {
    /// The PR/MR number the event is about.
    pub fn number(&self) -> u64 {
        match &self.kind {
            EventKind::PullRequest(p) => p.number,
            EventKind::Comment(c) => c.number,
            EventKind::CheckAction(a) => a.number,
        }
    }

    /// The action's wire name, as stored beside the delivery.
    pub fn action_name(&self) -> &'static str {
        match &self.kind {
            EventKind::PullRequest(p) => p.action.as_str(),
            EventKind::Comment(c) => c.action.as_str(),
            EventKind::CheckAction(a) => a.via.as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    PullRequest(PullRequestEvent),
    Comment(CommentEvent),
    /// A button on endor's check run was pressed (GitHub Checks).
    CheckAction(CheckActionEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrAction {
    Opened,
    Reopened,
    Synchronized,
    ReadyForReview,
    ConvertedToDraft,
    Closed,
    Merged,
}

impl PrAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PrAction::Opened => "opened",
            PrAction::Reopened => "reopened",
            PrAction::Synchronized => "synchronized",
            PrAction::ReadyForReview => "ready_for_review",
            PrAction::ConvertedToDraft => "converted_to_draft",
            PrAction::Closed => "closed",
            PrAction::Merged => "merged",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestEvent {
    pub action: PrAction,
    pub number: u64,
    pub title: String,
    pub head_sha: String,
    pub head_ref: String,
    /// The repository the head branch lives in; `None` when the forge no longer knows it
    /// (a deleted fork), which counts as a fork.
    pub head_repo: Option<String>,
    pub is_fork: bool,
    pub base_ref: String,
    /// The PR author's login (GitLab does not name the author in MR hooks: there it is the
    /// account that triggered the event).
    pub author: String,
    pub draft: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommentAction {
    Created,
    Edited,
    Deleted,
}

impl CommentAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CommentAction::Created => "created",
            CommentAction::Edited => "edited",
            CommentAction::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentEvent {
    pub action: CommentAction,
    /// The PR/MR the comment is on.
    pub number: u64,
    pub comment_id: u64,
    pub body: String,
    /// The body before an edit, where the forge sends it.
    pub previous_body: Option<String>,
    pub author: String,
    pub author_is_bot: bool,
    /// The PR head at the time of the comment, where the forge sends it (GitLab does).
    pub head_sha: Option<String>,
}

/// How a check run's button reached endor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckVia {
    /// One of the run's own buttons (`check_run` `requested_action`).
    RequestedAction,
    /// GitHub's "Re-run" (`check_run` `rerequested`): a redeploy.
    Rerequested,
}

impl CheckVia {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckVia::RequestedAction => "requested_action",
            CheckVia::Rerequested => "rerequested",
        }
    }
}

/// A press of a button on endor's check run `endor/preview`: carried out like the
/// slash-command it stands for, under the same role rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckActionEvent {
    pub via: CheckVia,
    pub action: super::client::CheckAction,
    /// The PR the check run is for (its `external_id`, written by endor).
    pub number: u64,
    /// The head the check run is on.
    pub head_sha: String,
    pub check_run_id: u64,
    /// Who pressed it.
    pub author: String,
}
