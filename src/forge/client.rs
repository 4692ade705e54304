//! Talking to a forge's API: the [`Forge`] trait each forge's `client.rs` implements (comments,
//! commit statuses, deployments, reactions), how an answer is classified (rate limits,
//! `Retry-After`, lost requests), the per-host [`Limiter`], and helpers the clients share.
//! The outbox (`crate::writeback`) drives the clients; nothing here knows the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The commit status context endor writes.
pub const STATUS_CONTEXT: &str = "endor/preview";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    /// Worth trying again (5xx, timeouts, rate limits), after `retry_after` when the forge said.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
        /// The request may have been carried out (it timed out or the connection broke
        /// after it was sent): a retry must first look for what it did.
        unsure: bool,
    },
    #[error("{0}")]
    Permanent(String),
    #[error("not found on the forge")]
    NotFound,
}

impl ForgeError {
    pub fn transient(message: impl Into<String>) -> Self {
        ForgeError::Transient {
            message: message.into(),
            retry_after: None,
            unsure: false,
        }
    }

    /// The request failed on the way (timeout, broken connection): the forge may have done it.
    pub fn lost(message: impl Into<String>) -> Self {
        ForgeError::Transient {
            message: message.into(),
            retry_after: None,
            unsure: true,
        }
    }

    /// The request may have been carried out: a retry must first look for what it did.
    pub fn unsure(&self) -> bool {
        matches!(self, ForgeError::Transient { unsure: true, .. })
    }
}

/// A pull/merge request on its forge.
#[derive(Debug, Clone, Copy)]
pub struct PrRef<'a> {
    /// `owner/name` (GitLab: the full project path).
    pub repo: &'a str,
    pub number: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitState {
    Pending,
    Success,
    Failure,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployState {
    InProgress,
    Success,
    Failure,
    Inactive,
}

/// Where a check run stands (GitHub Checks: `status`, and `conclusion` once completed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    /// Queued, waiting for a member to approve a fork's head.
    Waiting,
    InProgress,
    Success,
    Failure,
    /// The preview is gone (destroyed or expired): completed, neutral.
    Gone,
}

impl CheckState {
    /// GitHub's `status` and `conclusion` for it.
    pub fn github(self) -> (&'static str, Option<&'static str>) {
        match self {
            CheckState::Waiting => ("queued", None),
            CheckState::InProgress => ("in_progress", None),
            CheckState::Success => ("completed", Some("success")),
            CheckState::Failure => ("completed", Some("failure")),
            CheckState::Gone => ("completed", Some("neutral")),
        }
    }
}

/// A button on a check run; pressing it sends a `check_run` `requested_action` event with
/// its identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckAction {
    Redeploy,
    Destroy,
}

impl CheckAction {
    /// The identifier GitHub sends back (at most 20 characters).
    pub fn identifier(self) -> &'static str {
        match self {
            CheckAction::Redeploy => "redeploy",
            CheckAction::Destroy => "destroy",
        }
    }

    pub fn from_identifier(id: &str) -> Option<Self> {
        match id {
            "redeploy" => Some(CheckAction::Redeploy),
            "destroy" => Some(CheckAction::Destroy),
            _ => None,
        }
    }

    /// The button's label (at most 20 characters) and description (at most 40).
    pub fn label(self) -> (&'static str, &'static str) {
        match self {
            CheckAction::Redeploy => ("Redeploy", "Build and start the preview again"),
            CheckAction::Destroy => ("Destroy", "Delete the preview and its data now"),
        }
    }
}

/// The check run `endor/preview` of one head, as endor wants it shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRun {
    pub state: CheckState,
    /// The PR number, kept as the run's `external_id` (GitHub lists no PR on a check run
    /// of a fork's head, so a button press is traced back through it).
    pub number: u64,
    /// The preview URL, when it is served.
    pub details_url: Option<String>,
    pub title: String,
    /// Markdown: the URL, the steps and their timings, the error.
    pub summary: String,
    pub actions: Vec<CheckAction>,
}

/// What endor asks of a forge. One implementation per forge; the outbox drives them.
#[async_trait]
pub trait Forge: Send + Sync {
    async fn create_comment(&self, pr: &PrRef<'_>, body: &str) -> Result<String, ForgeError>;
    /// `NotFound` when the comment is gone.
    async fn edit_comment(&self, pr: &PrRef<'_>, id: &str, body: &str) -> Result<(), ForgeError>;
    /// Gone already counts as done.
    async fn delete_comment(&self, pr: &PrRef<'_>, id: &str) -> Result<(), ForgeError>;
    /// Ids of endor's own comments on the PR whose body starts with `marker`, oldest first.
    async fn marked_comments(
        &self,
        pr: &PrRef<'_>,
        marker: &str,
    ) -> Result<Vec<String>, ForgeError>;
    async fn commit_status(
        &self,
        repo: &str,
        sha: &str,
        state: CommitState,
        target_url: Option<&str>,
        description: &str,
    ) -> Result<(), ForgeError>;
    /// Is the newest `endor/preview` status of `sha` already `state`? Asked before a retry,
    /// so a status whose answer was lost (a timeout) is not posted twice.
    async fn has_status(
        &self,
        repo: &str,
        sha: &str,
        state: CommitState,
    ) -> Result<bool, ForgeError>;
    /// The PR's deployment for `sha` if one exists (asked before creating one again after a
    /// lost answer).
    async fn find_deployment(
        &self,
        pr: &PrRef<'_>,
        sha: &str,
    ) -> Result<Option<String>, ForgeError>;
    /// Does each head get a deployment of its own (GitHub), or is there one per PR that every
    /// head reuses (a GitLab environment)?
    fn deployment_per_head(&self) -> bool {
        true
    }
    /// A deployment (GitHub) or environment (GitLab) `preview/pr-{n}` for the head `sha`;
    /// `None` where the forge has no such thing (Gitea).
    async fn create_deployment(
        &self,
        pr: &PrRef<'_>,
        sha: &str,
    ) -> Result<Option<String>, ForgeError>;
    /// Set the state of the deployment `id` (`url` is the preview's, when it is served).
    async fn set_deployment(
        &self,
        pr: &PrRef<'_>,
        id: &str,
        state: DeployState,
        url: Option<&str>,
    ) -> Result<(), ForgeError>;
    /// The login endor writes as (its comments come back as comment events, ignored).
    async fn account(&self) -> Result<String, ForgeError>;
    /// Create the repository's webhook: endor's events (pull/merge requests and their
    /// comments) delivered as JSON to `url`, signed with `secret`; the hook's id.
    async fn create_hook(&self, repo: &str, url: &str, secret: &str) -> Result<String, ForgeError>;
    /// Point the webhook `id` at `url` with `secret` (after a rotation).
    async fn update_hook(
        &self,
        repo: &str,
        id: &str,
        url: &str,
        secret: &str,
    ) -> Result<(), ForgeError>;
    /// Remove the webhook `id`; gone already counts as done.
    async fn delete_hook(&self, repo: &str, id: &str) -> Result<(), ForgeError>;
    /// Create the check run `endor/preview` on `sha`; its id.
    async fn create_check_run(
        &self,
        repo: &str,
        sha: &str,
        check: &CheckRun,
    ) -> Result<String, ForgeError> {
        let _ = (repo, sha, check);
        Err(ForgeError::Permanent(
            "check runs are written by a GitHub App only".into(),
        ))
    }
    /// Set the check run `id` to `check`.
    async fn update_check_run(
        &self,
        repo: &str,
        id: &str,
        check: &CheckRun,
    ) -> Result<(), ForgeError> {
        let _ = (repo, id, check);
        Err(ForgeError::Permanent(
            "check runs are written by a GitHub App only".into(),
        ))
    }
    /// The check run `endor/preview` of `sha`, if one exists (asked before creating one
    /// again after a lost answer).
    async fn find_check_run(&self, repo: &str, sha: &str) -> Result<Option<String>, ForgeError> {
        let _ = (repo, sha);
        Ok(None)
    }
    /// A reaction (`+1`, `eyes`, `confused` ...) on a comment.
    async fn react(
        &self,
        pr: &PrRef<'_>,
        comment_id: &str,
        reaction: &str,
    ) -> Result<(), ForgeError>;
}

/// The error a forge's answer means, if it is one. Rate limits (429, or 403 with an exhausted
/// quota) also pause the limiter of that API until the forge's reset time.
pub fn classify_status(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    limiter: &Limiter,
) -> Option<ForgeError> {
    if status.is_success() {
        return None;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now_secs = crate::now_ms() / 1000;
    let retry_after = header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .or_else(|| {
            let exhausted =
                header("x-ratelimit-remaining").or(header("ratelimit-remaining")) == Some("0");
            let reset = header("x-ratelimit-reset")
                .or(header("ratelimit-reset"))
                .and_then(|v| v.trim().parse::<i64>().ok());
            match (exhausted, reset) {
                (true, Some(r)) => Some(Duration::from_secs((r - now_secs).clamp(1, 3600) as u64)),
                _ => None,
            }
        });
    let text: String = body.trim().chars().take(300).collect();
    let limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN
            && (retry_after.is_some() || text.to_ascii_lowercase().contains("rate limit")));
    if limited {
        let wait = retry_after.unwrap_or(Duration::from_secs(60));
        limiter.pause(wait);
        return Some(ForgeError::Transient {
            message: format!("rate limited ({status}), waiting {} s", wait.as_secs()),
            retry_after: Some(wait),
            unsure: false,
        });
    }
    Some(match status {
        StatusCode::NOT_FOUND | StatusCode::GONE => ForgeError::NotFound,
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => ForgeError::Transient {
            message: format!("forge answered {s}: {text}"),
            retry_after,
            unsure: false,
        },
        s => ForgeError::Permanent(format!("forge answered {s}: {text}")),
    })
}

/// A per-API rate limit: `rate` requests per second on average, bursts of `burst`; paused
/// entirely while the forge says we are rate limited.
pub struct Limiter {
    interval: Duration,
    burst: u32,
    state: std::sync::Mutex<LimiterState>,
    sent: AtomicU64,
}

struct LimiterState {
    /// When the next request would be due if requests were evenly spaced.
    tat: Instant,
    paused_until: Option<Instant>,
}

impl Limiter {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / rate_per_second.max(0.001)),
            burst: burst.max(1),
            state: std::sync::Mutex::new(LimiterState {
                tat: Instant::now(),
                paused_until: None,
            }),
            sent: AtomicU64::new(0),
        }
    }

    /// Wait until a request may be sent.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                match st.paused_until {
                    Some(p) if p > now => p - now,
                    _ => {
                        st.paused_until = None;
                        let tat = st.tat.max(now);
                        let allowed_at = tat.checked_sub(self.interval * (self.burst - 1));
                        match allowed_at {
                            Some(at) if at > now => at - now,
                            _ => {
                                st.tat = tat + self.interval;
                                self.sent.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Send nothing for `d` (the forge said so).
    pub fn pause(&self, d: Duration) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let until = Instant::now() + d;
        st.paused_until = Some(st.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Requests let through so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// A JSON `id` (number or string) as text.
pub fn id_of(v: &serde_json::Value) -> Result<String, ForgeError> {
    match &v["id"] {
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::String(s) => Ok(s.clone()),
        _ => Err(ForgeError::Permanent(
            "the forge answered without an id".into(),
        )),
    }
}

/// Ids of the comments, over the pages of a listing (`page(n)`, `per_page` items a page),
/// whose author (at JSON pointer `author`) is `me` and whose body starts with `marker`.
pub(crate) async fn marked_in_pages<F, Fut>(
    mut page: F,
    per_page: usize,
    author: &str,
    me: &str,
    marker: &str,
) -> Result<Vec<String>, ForgeError>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, ForgeError>>,
{
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for n in 1..=50 {
        let v = page(n).await?;
        let items = v.as_array().cloned().unwrap_or_default();
        // Comments are told apart by id, never counted: a server that ignores the page
        // parameter answers the same list again, and its comments are not duplicates.
        let mut fresh = Vec::new();
        for c in &items {
            if seen.insert(id_of(c)?) {
                fresh.push(c.clone());
            }
        }
        out.extend(marked_in(&fresh, author, me, marker)?);
        if items.len() < per_page || fresh.is_empty() {
            break;
        }
    }
    Ok(out)
}

/// The ids of `me`'s comments in `list` (a JSON array) whose body starts with `marker`, each
/// once, in the list's order.
pub(crate) fn marked_in(
    list: &[serde_json::Value],
    author: &str,
    me: &str,
    marker: &str,
) -> Result<Vec<String>, ForgeError> {
    let mut out: Vec<String> = Vec::new();
    for c in list {
        let mine = c.pointer(author).and_then(|a| a.as_str()) == Some(me);
        if mine && c["body"].as_str().is_some_and(|b| b.starts_with(marker)) {
            let id = id_of(c)?;
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

/// A commit state as GitHub and Gitea name it.
pub fn github_state(state: CommitState) -> &'static str {
    match state {
        CommitState::Pending => "pending",
        CommitState::Success => "success",
        CommitState::Failure => "failure",
        CommitState::Error => "error",
    }
}

/// The JSON of an `endor/preview` commit status; GitHub and Gitea name the context
/// `context`, GitLab `name`.
pub fn status_body(
    context_key: &str,
    state: &str,
    target_url: Option<&str>,
    description: &str,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "state": state,
        context_key: STATUS_CONTEXT,
        "description": description.chars().take(140).collect::<String>(),
    });
    if let Some(u) = target_url {
        body["target_url"] = u.into();
    }
    body
}

/// Is the newest `endor/preview` status of a listing in `state`? (`newest_first` as the
/// forge lists them; the context and state under `context_key` and `state_key`.)
pub fn newest_status_is(
    list: &serde_json::Value,
    newest_first: bool,
    context_key: &str,
    state_key: &str,
    state: &str,
) -> bool {
    let ours = |s: &&serde_json::Value| s[context_key].as_str() == Some(STATUS_CONTEXT);
    let items = list.as_array().map(Vec::as_slice).unwrap_or_default();
    let newest = if newest_first {
        items.iter().find(ours)
    } else {
        items.iter().rev().find(ours)
    };
    newest.and_then(|s| s[state_key].as_str()) == Some(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn answers_are_classified() {
        let l = Limiter::new(100.0, 1);
        let ok = classify_status(StatusCode::CREATED, &HeaderMap::new(), "", &l);
        assert!(ok.is_none());
        assert_eq!(
            classify_status(StatusCode::NOT_FOUND, &HeaderMap::new(), "", &l),
            Some(ForgeError::NotFound)
        );
        assert!(matches!(
            classify_status(StatusCode::UNPROCESSABLE_ENTITY, &HeaderMap::new(), "bad", &l),
            Some(ForgeError::Permanent(m)) if m.contains("422")
        ));
        assert!(matches!(
            classify_status(StatusCode::BAD_GATEWAY, &HeaderMap::new(), "", &l),
            Some(ForgeError::Transient {
                retry_after: None,
                unsure: false,
                ..
            })
        ));
        // 429 with Retry-After.
        let e = classify_status(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "7".into())]),
            "",
            &l,
        );
        assert!(
            matches!(e, Some(ForgeError::Transient { retry_after: Some(d), .. }) if d == Duration::from_secs(7))
        );
        // GitHub's primary limit: 403, remaining 0, reset at an epoch second.
        let reset = (crate::now_ms() / 1000 + 42).to_string();
        let e = classify_status(
            StatusCode::FORBIDDEN,
            &headers(&[
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", reset.clone()),
            ]),
            "API rate limit exceeded",
            &l,
        );
        let Some(ForgeError::Transient {
            retry_after: Some(d),
            ..
        }) = e
        else {
            panic!("{e:?}")
        };
        assert!((40..=43).contains(&d.as_secs()), "{d:?}");
        // GitLab's RateLimit-* headers.
        let e = classify_status(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[
                ("ratelimit-remaining", "0".into()),
                ("ratelimit-reset", reset),
            ]),
            "",
            &l,
        );
        assert!(matches!(
            e,
            Some(ForgeError::Transient {
                retry_after: Some(_),
                ..
            })
        ));
        // A 403 that is not a rate limit is permanent.
        assert!(matches!(
            classify_status(
                StatusCode::FORBIDDEN,
                &HeaderMap::new(),
                "Resource not accessible",
                &l
            ),
            Some(ForgeError::Permanent(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_spaces_requests_and_pauses() {
        let l = Limiter::new(10.0, 3);
        let start = tokio::time::Instant::now();
        for _ in 0..13 {
            l.acquire().await;
        }
        // 3 at once, then one every 100 ms.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(990) && took <= Duration::from_millis(1100),
            "{took:?}"
        );
        l.pause(Duration::from_secs(5));
        let before = tokio::time::Instant::now();
        l.acquire().await;
        assert!(before.elapsed() >= Duration::from_secs(5));
        assert_eq!(l.sent(), 14);
    }
}
