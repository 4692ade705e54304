//! The lines of a site's `endor` log: what happened to the site as its preview's state changed
//! (launched, updated, failed, torn down…), written by the lifecycle.

use crate::logs::{Entry, Service};
use crate::store::Preview;

use super::state::PreviewState;

/// The line for a preview that just entered its state.
pub(super) fn state_line(p: &Preview) -> Entry {
    let short = |s: &Option<String>| {
        s.as_deref()
            .map(|s| crate::git::short_sha(s).to_string())
            .unwrap_or_else(|| "-".into())
    };
    let reason = p.reason.as_deref().unwrap_or("");
    let text = match p.state {
        PreviewState::Ready => format!("ready at {}", short(&p.ready_sha)),
        PreviewState::Failed => format!("failed: {reason}"),
        PreviewState::Destroyed | PreviewState::Expired => {
            format!("{}: {reason}", p.state)
        }
        s if reason.is_empty() => s.to_string(),
        s => format!("{s}: {reason}"),
    };
    Entry::now(Service::Endor, None, text)
        .with("event", p.state.as_str())
        .with("preview", p.number)
        .with("head", p.head_sha.clone())
}
