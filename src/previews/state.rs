//! The preview state machine's rules, apart from the work of each step (`lifecycle.rs`):
//! when the reaper acts on a preview, how an interrupted teardown is resumed, which previews a
//! slash-command may act on. The states themselves are [`PreviewState`], stored by name.

use crate::store::Preview;
pub use crate::store::PreviewState;

/// What the reaper must do to a preview now: finish its unfinished teardown (into the state it
/// was heading for), expire it (past `expires_at`), or nothing.
pub fn expiry_action(p: &Preview, now: i64) -> Option<PreviewState> {
    use PreviewState as S;
    if p.state == S::Destroying {
        return Some(match teardown_target(p) {
            Some(S::Expired) => S::Expired,
            _ => S::Destroyed,
        });
    }
    // Gone already, or never launched (skipped, awaiting approval without a site): nothing
    // to expire.
    let live = !matches!(p.state, S::Destroyed | S::Expired)
        && (p.site_id.is_some() || !matches!(p.state, S::Skipped | S::AwaitingApproval));
    (live && p.expires_at.is_some_and(|e| e <= now)).then_some(S::Expired)
}

/// A teardown in progress records `{final state}/{last step done}`: the state it heads for.
pub fn teardown_target(p: &Preview) -> Option<PreviewState> {
    p.teardown_step
        .as_deref()
        .and_then(|s| s.split('/').next())
        .and_then(PreviewState::parse)
}

/// The step a teardown records once `step` is done, on its way to `final_state`.
pub fn teardown_step(final_state: PreviewState, step: &str) -> String {
    format!("{final_state}/{step}")
}

/// Is the preview still there for a slash-command to act on (not destroyed, not being
/// destroyed)?
pub fn is_live(state: PreviewState) -> bool {
    !matches!(state, PreviewState::Destroyed | PreviewState::Destroying)
}

/// Is the preview torn down, or being torn down (its process must not run)?
pub fn torn_down(state: PreviewState) -> bool {
    matches!(
        state,
        PreviewState::Destroying | PreviewState::Destroyed | PreviewState::Expired
    )
}

/// The reason a teardown records.
pub fn why_torn_down(p: &Preview, final_state: PreviewState) -> String {
    match (final_state, p.reason.as_deref()) {
        (PreviewState::Expired, _) => "expired: no activity within its time to live".into(),
        (_, Some(r)) if p.state == PreviewState::Destroying => r.to_string(),
        _ => "destroyed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preview(state: PreviewState) -> Preview {
        Preview {
            site_id: Some("site".into()),
            state,
            expires_at: Some(100),
            ..Preview::new("c".into(), 1, "s-pr-1".into(), 0)
        }
    }

    #[test]
    fn the_reaper_expires_live_previews_past_their_expiry() {
        use PreviewState as S;
        assert_eq!(expiry_action(&preview(S::Ready), 100), Some(S::Expired));
        assert_eq!(expiry_action(&preview(S::Ready), 99), None);
        assert_eq!(expiry_action(&preview(S::Expired), 1000), None);
        assert_eq!(expiry_action(&preview(S::Destroyed), 1000), None);
        let mut skipped = preview(S::Skipped);
        skipped.site_id = None;
        assert_eq!(expiry_action(&skipped, 1000), None);
    }

    #[test]
    fn an_interrupted_teardown_resumes_towards_its_target() {
        use PreviewState as S;
        let mut p = preview(S::Destroying);
        p.teardown_step = Some(teardown_step(S::Expired, "route"));
        assert_eq!(expiry_action(&p, 0), Some(S::Expired));
        p.teardown_step = Some(teardown_step(S::Destroyed, "begin"));
        assert_eq!(expiry_action(&p, 0), Some(S::Destroyed));
        p.teardown_step = None;
        assert_eq!(expiry_action(&p, 0), Some(S::Destroyed));
        assert!(!is_live(S::Destroying) && is_live(S::Expired) && is_live(S::Ready));
        assert!(torn_down(S::Destroying) && torn_down(S::Destroyed) && torn_down(S::Expired));
        assert!(!torn_down(S::Ready) && !torn_down(S::Failed) && !torn_down(S::Queued));
    }
}
