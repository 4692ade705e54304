//! Everything that differs between GitHub, GitLab and Gitea on the way *in*: which forge a
//! connection talks to, how a delivery proves it is authentic, and how a payload becomes one
//! forge-neutral [`ForgeEvent`]. One file per forge; this module knows nothing of sites.

pub mod event;
pub mod gitea;
pub mod github;
pub mod gitlab;
pub mod markdown;
pub mod signature;

use serde::{Deserialize, Serialize};

pub use event::{
    Classified, CommentAction, CommentEvent, EventKind, ForgeEvent, PrAction, PullRequestEvent,
};

/// The forges endor can connect repositories from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Github,
    Gitlab,
    Gitea,
}

impl ForgeKind {
    pub const ALL: [ForgeKind; 3] = [ForgeKind::Github, ForgeKind::Gitlab, ForgeKind::Gitea];

    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
            ForgeKind::Gitea => "gitea",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The header that names the event kind of a delivery.
    pub fn event_header(self) -> &'static str {
        match self {
            ForgeKind::Github => "x-github-event",
            ForgeKind::Gitlab => "x-gitlab-event",
            ForgeKind::Gitea => "x-gitea-event",
        }
    }

    /// The headers that carry the forge's delivery id, in order of preference (SPEC §3).
    pub fn delivery_headers(self) -> &'static [&'static str] {
        match self {
            ForgeKind::Github => &["x-github-delivery"],
            ForgeKind::Gitlab => &["idempotency-key", "x-gitlab-event-uuid"],
            ForgeKind::Gitea => &["x-gitea-delivery"],
        }
    }

    /// Parse and classify one delivery's body (already authenticated).
    pub fn classify(self, event: &str, body: &[u8]) -> Result<Classified, PayloadError> {
        match self {
            ForgeKind::Github => github::classify(event, body),
            ForgeKind::Gitlab => gitlab::classify(event, body),
            ForgeKind::Gitea => gitea::classify(event, body),
        }
    }
}

impl std::fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A body that is not the JSON its event header announces.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("malformed event header")]
    BadEventHeader,
    #[error("body is not valid JSON for event `{event}`: {detail}")]
    Invalid { event: String, detail: String },
}

impl PayloadError {
    pub(crate) fn invalid(event: &str, err: impl std::fmt::Display) -> Self {
        PayloadError::Invalid {
            event: event.to_string(),
            detail: err.to_string(),
        }
    }
}

/// Parse `body` as `T`, mapping the error to [`PayloadError::Invalid`].
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(
    event: &str,
    body: &'a [u8],
) -> Result<T, PayloadError> {
    serde_json::from_slice(body).map_err(|e| PayloadError::invalid(event, e))
}

/// Any JSON object: what an event kind endor does not act on must at least be.
pub(crate) fn require_object(event: &str, body: &[u8]) -> Result<(), PayloadError> {
    parse_json::<serde::de::IgnoredAny>(event, body)?;
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(PayloadError::invalid(event, "expected a JSON object")),
    }
}

/// A repository on a forge, as written on the command line: `github:OWNER/NAME`,
/// `gitlab:GROUP/SUBGROUP/NAME`, `gitea:OWNER/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub forge: ForgeKind,
    /// `owner/name` (GitLab: the full namespace path).
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RepoRefError {
    #[error(
        "repository must be written FORGE:OWNER/NAME (forge is github, gitlab or gitea), got `{0}`"
    )]
    Shape(String),
    #[error("unknown forge `{0}`: expected github, gitlab or gitea")]
    UnknownForge(String),
    #[error(
        "invalid repository path `{0}`: segments may hold letters, digits, `.`, `-` and `_`, and may not be `.` or `..`"
    )]
    BadPath(String),
}

impl RepoRef {
    pub fn parse(s: &str) -> Result<Self, RepoRefError> {
        let (forge, path) = s
            .split_once(':')
            .ok_or_else(|| RepoRefError::Shape(s.to_string()))?;
        let forge = ForgeKind::parse(&forge.to_ascii_lowercase())
            .ok_or_else(|| RepoRefError::UnknownForge(forge.to_string()))?;
        let segments: Vec<&str> = path.split('/').collect();
        let max_segments = if forge == ForgeKind::Gitlab { 20 } else { 2 };
        if segments.len() < 2 || segments.len() > max_segments || path.len() > 255 {
            return Err(RepoRefError::Shape(s.to_string()));
        }
        let segment_ok = |seg: &str| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        if !segments.iter().all(|s| segment_ok(s)) {
            return Err(RepoRefError::BadPath(path.to_string()));
        }
        Ok(RepoRef {
            forge,
            path: path.to_string(),
        })
    }
}

impl std::fmt::Display for RepoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.forge, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_refs_parse() {
        let r = RepoRef::parse("github:Codertocat/Hello-World").unwrap();
        assert_eq!(r.forge, ForgeKind::Github);
        assert_eq!(r.path, "Codertocat/Hello-World");
        assert_eq!(
            RepoRef::parse("gitlab:group/sub/name").unwrap().path,
            "group/sub/name"
        );
        assert_eq!(
            RepoRef::parse("GitHub:a/b").unwrap().forge,
            ForgeKind::Github
        );
    }

    #[test]
    fn hostile_repo_refs_are_refused() {
        for bad in [
            "github:a",
            "github:a/b/c",
            "github:../b",
            "github:a/..",
            "github:a/b;rm -rf",
            "github:a/$(touch x)",
            "github:a/b\0",
            "github:/b",
            "bitbucket:a/b",
            "a/b",
            "github:a/ b",
            "github:a/b\n",
        ] {
            assert!(RepoRef::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
