//! Everything that differs between GitHub, GitLab and Gitea, both ways, one folder per forge
//! (`github/`, `gitlab/`, `gitea/`): how a delivery proves it is authentic, how a payload
//! becomes one forge-neutral [`ForgeEvent`], which events exist, where PR heads live in git,
//! how a webhook is set up, and (`client.rs` in each folder) the write-back client behind the
//! [`client::Forge`] trait. [`ForgeKind`] is the one list of forges: each of its methods
//! matches every forge, so a new variant makes the compiler name every place to fill in.
//! This module knows nothing of sites or the store.

pub mod client;
pub mod event;
pub mod gitea;
pub mod github;
pub mod gitlab;
mod http;
pub mod markdown;
pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use client::{Forge, ForgeError, Limiter};

pub use event::{
    CheckActionEvent, CheckVia, Classified, CommentAction, CommentEvent, EventKind, ForgeEvent,
    PrAction, PullRequestEvent,
};

crate::ids::stored_enum! {
    /// The forges endor can connect repositories from: the one list (config sections, the
    /// store's constraint and every per-forge piece are checked against it).
    pub enum ForgeKind {
        Github = "github",
        Gitlab = "gitlab",
        Gitea = "gitea",
    }
}

impl ForgeKind {
    /// The header that names the event kind of a delivery.
    pub fn event_header(self) -> &'static str {
        match self {
            ForgeKind::Github => github::EVENT_HEADER,
            ForgeKind::Gitlab => gitlab::EVENT_HEADER,
            ForgeKind::Gitea => gitea::EVENT_HEADER,
        }
    }

    /// The headers that carry the forge's delivery id, in order of preference (SPEC §3).
    pub fn delivery_headers(self) -> &'static [&'static str] {
        match self {
            ForgeKind::Github => github::DELIVERY_HEADERS,
            ForgeKind::Gitlab => gitlab::DELIVERY_HEADERS,
            ForgeKind::Gitea => gitea::DELIVERY_HEADERS,
        }
    }

    /// The event kinds metrics count by name (bounded label cardinality).
    pub fn known_events(self) -> &'static [&'static str] {
        match self {
            ForgeKind::Github => github::KNOWN_EVENTS,
            ForgeKind::Gitlab => gitlab::KNOWN_EVENTS,
            ForgeKind::Gitea => gitea::KNOWN_EVENTS,
        }
    }

    /// Metric label for an authenticated event header: a known kind by name, else `other`.
    pub fn event_label(self, event: &str) -> &'static str {
        self.known_events()
            .iter()
            .find(|k| **k == event)
            .copied()
            .unwrap_or("other")
    }

    /// How many `/`-separated segments a repository path may have (GitLab nests groups).
    pub fn max_path_segments(self) -> usize {
        match self {
            ForgeKind::Github => github::MAX_PATH_SEGMENTS,
            ForgeKind::Gitlab => gitlab::MAX_PATH_SEGMENTS,
            ForgeKind::Gitea => gitea::MAX_PATH_SEGMENTS,
        }
    }

    /// Does endor write to this forge as an app rather than with a token (GitHub App mode:
    /// `[github] app_id` and no token)?
    pub fn writes_as_app(self, cfg: &crate::config::ForgeConfig) -> bool {
        match self {
            ForgeKind::Github => cfg.token.is_empty(),
            ForgeKind::Gitlab | ForgeKind::Gitea => false,
        }
    }

    /// The form field that holds the JSON when the forge posts a form
    /// (`application/x-www-form-urlencoded`), for forges that can.
    pub fn form_payload_field(self) -> Option<&'static str> {
        match self {
            ForgeKind::Github => github::FORM_PAYLOAD_FIELD,
            ForgeKind::Gitlab => gitlab::FORM_PAYLOAD_FIELD,
            ForgeKind::Gitea => gitea::FORM_PAYLOAD_FIELD,
        }
    }

    /// Is the delivery authentic under one of `secrets`?
    pub fn verify(
        self,
        headers: &::http::HeaderMap,
        body: &[u8],
        secrets: &[&crate::secret::WebhookSecret],
    ) -> Result<(), signature::SignatureError> {
        match self {
            ForgeKind::Github => github::verify(headers, body, secrets),
            ForgeKind::Gitlab => gitlab::verify(headers, body, secrets),
            ForgeKind::Gitea => gitea::verify(headers, body, secrets),
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

    /// The git ref the forge publishes PR `number`'s head under.
    pub fn pr_ref(self, number: u64) -> String {
        match self {
            ForgeKind::Github => github::pr_ref(number),
            ForgeKind::Gitlab => gitlab::pr_ref(number),
            ForgeKind::Gitea => gitea::pr_ref(number),
        }
    }

    /// The events a webhook pointed at `url` must send, and how to add it by hand.
    pub fn setup(self, url: &str) -> (Vec<&'static str>, String) {
        match self {
            ForgeKind::Github => github::setup(url),
            ForgeKind::Gitlab => gitlab::setup(url),
            ForgeKind::Gitea => gitea::setup(url),
        }
    }

    /// The API when neither the config nor the connection names one.
    pub fn default_api_url(self) -> Option<&'static str> {
        match self {
            ForgeKind::Github => github::DEFAULT_API_URL,
            ForgeKind::Gitlab => gitlab::DEFAULT_API_URL,
            ForgeKind::Gitea => gitea::DEFAULT_API_URL,
        }
    }

    /// Does this section of the config let endor write to the forge?
    pub fn has_credentials(self, cfg: &crate::config::ForgeConfig) -> bool {
        match self {
            ForgeKind::Github => github::client::has_credentials(cfg),
            ForgeKind::Gitlab | ForgeKind::Gitea => !cfg.token.is_empty(),
        }
    }

    /// A write-back client for one repository.
    pub async fn client(self, r: Reach<'_>) -> Result<Arc<dyn Forge>, ForgeError> {
        Ok(match self {
            ForgeKind::Github => match r.github_app {
                Some(app) => {
                    Arc::new(github::client::GitHub::as_installation(app, r.repo, r.limiter).await?)
                }
                None => Arc::new(github::client::GitHub::with_token(
                    r.api, r.token, r.timeout, r.limiter,
                )?),
            },
            ForgeKind::Gitlab => Arc::new(gitlab::client::GitLab::new(
                r.api, r.token, r.timeout, r.limiter,
            )?),
            ForgeKind::Gitea => Arc::new(gitea::client::Gitea::new(
                r.api, r.token, r.timeout, r.limiter,
            )?),
        })
    }

    /// This forge's section of the config (`[github]`, `[gitlab]`, `[gitea]`).
    pub fn config(self, config: &crate::config::Config) -> &crate::config::ForgeConfig {
        match self {
            ForgeKind::Github => &config.github,
            ForgeKind::Gitlab => &config.gitlab,
            ForgeKind::Gitea => &config.gitea,
        }
    }
}

/// How to reach one repository's forge API (what the config and the connection say).
pub struct Reach<'a> {
    pub api: &'a str,
    pub token: &'a str,
    /// `owner/name` (GitLab: the full project path).
    pub repo: &'a str,
    pub timeout: Duration,
    /// Shared by every connection to the same API host.
    pub limiter: Arc<Limiter>,
    /// The GitHub App's client (its JWT), used when there is no token.
    pub github_app: Option<&'a octocrab::Octocrab>,
}

/// An event name as GitHub and Gitea send it: lowercase letters, digits and `_`
/// (`projects_v2_item`), at most 64 bytes. Anything else is a malformed header, and never
/// reaches a metric label or the store.
pub fn valid_event_name(event: &str) -> bool {
    !event.is_empty()
        && event.len() <= 64
        && event
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
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
        let max_segments = forge.max_path_segments();
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
    fn event_names_as_forges_send_them() {
        for ok in [
            "push",
            "pull_request",
            "projects_v2_item",
            "projects_v2_status_update",
        ] {
            assert!(valid_event_name(ok), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in [
            "",
            "Push",
            "pull-request",
            "pull_request\"}",
            "a b",
            long.as_str(),
        ] {
            assert!(!valid_event_name(bad), "{bad}");
        }
    }

    /// Every forge has every piece the compiler cannot check: a name that round-trips, headers,
    /// events, a PR ref git accepts, setup text that names the URL, a section in the shipped
    /// config, and recorded payloads to replay. (The store's constraint is checked by
    /// `tests/store.rs::every_forge_is_accepted_by_the_store`.)
    #[test]
    fn every_forge_has_every_piece() {
        let shipped = include_str!("../../config/endor.toml");
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks");
        let recorded: Vec<String> = std::fs::read_dir(&fixtures)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        for &forge in ForgeKind::ALL {
            let name = forge.as_str();
            assert_eq!(ForgeKind::parse(name), Some(forge));
            assert!(
                forge.event_header().starts_with("x-"),
                "{name}: event header"
            );
            assert!(
                !forge.delivery_headers().is_empty(),
                "{name}: delivery headers"
            );
            assert!(!forge.known_events().is_empty(), "{name}: known events");
            let r = forge.pr_ref(7);
            assert!(
                r.starts_with("refs/") && r.contains('7'),
                "{name}: pr ref {r}"
            );
            let (events, text) = forge.setup("https://endor.example/webhooks/x/1");
            assert!(!events.is_empty(), "{name}: setup events");
            assert!(
                text.contains("https://endor.example/webhooks/x/1"),
                "{name}: setup text"
            );
            assert!(
                shipped.lines().any(|l| l.trim() == format!("[{name}]")),
                "{name}: no [{name}] section in config/endor.toml"
            );
            assert!(
                recorded.iter().any(|f| f.starts_with(&format!("{name}."))),
                "{name}: no recorded payloads in tests/fixtures/webhooks"
            );
            assert!(
                forge.verify(&::http::HeaderMap::new(), b"{}", &[]).is_err(),
                "{name}: an unsigned delivery must be refused"
            );
        }
    }

    #[test]
    fn pr_heads_live_where_each_forge_puts_them() {
        assert_eq!(ForgeKind::Github.pr_ref(7), "refs/pull/7/head");
        assert_eq!(ForgeKind::Gitlab.pr_ref(7), "refs/merge-requests/7/head");
        assert_eq!(ForgeKind::Gitea.pr_ref(7), "refs/pull/7/head");
    }

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
