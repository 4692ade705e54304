//! What a job does, stored by name in `jobs.kind`.

crate::ids::stored_enum! {
    /// The kinds of background work; the worker dispatches on it (`previews::Lifecycle` runs
    /// PR events, resumes and expiries; `commands` runs comments).
    pub enum JobKind {
        /// A pull request event: launch, update or tear down its preview.
        PullRequest = "pull_request",
        /// A PR comment: its slash-commands.
        Comment = "comment",
        /// Relaunch a ready preview whose process is gone (after a restart of endor).
        Resume = "resume",
        /// The reaper's teardown of an expired preview (finished by a worker if the reaper died).
        Expire = "expire",
    }
}

impl JobKind {
    /// The one kind a newer job of the same key never cancels: a comment's commands must run
    /// even when a push arrives after it.
    pub const NEVER_SUPERSEDED: JobKind = JobKind::Comment;

    /// Is a queued job of this kind cancelled when a newer job of its key supersedes it?
    pub fn superseded_by_newer(self) -> bool {
        self != Self::NEVER_SUPERSEDED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for k in JobKind::ALL {
            assert_eq!(JobKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(JobKind::parse("Comment"), None);
        assert!(serde_json::from_str::<JobKind>("\"rebuild\"").is_err());
        assert_eq!(
            serde_json::to_string(&JobKind::PullRequest).unwrap(),
            "\"pull_request\""
        );
    }

    #[test]
    fn only_comments_survive_a_newer_job() {
        let kept: Vec<_> = JobKind::ALL
            .iter()
            .filter(|k| !k.superseded_by_newer())
            .collect();
        assert_eq!(kept, [&JobKind::Comment]);
    }
}
