//! GitHub's REST API through octocrab (its client stack: rustls, auth headers, GitHub App
//! installation tokens). Calls use octocrab's raw requests so that the status and the rate
//! limit headers (`Retry-After`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`) reach the outbox.

use std::sync::Arc;

use async_trait::async_trait;
use axum::http;
use octocrab::Octocrab;
use serde_json::{Value, json};

use crate::forge::client::{
    CheckRun, CommitState, DeployState, Forge, ForgeError, Limiter, PrRef, STATUS_CONTEXT,
    classify_status, github_state, id_of,
};

/// Has `[github]` a token, or a GitHub App (id and key file)?
pub fn has_credentials(cfg: &crate::config::ForgeConfig) -> bool {
    !cfg.token.is_empty() || (cfg.app_id.is_some() && cfg.private_key_file.is_some())
}

/// The GitHub App client (its JWT) from `[github] app_id` and `private_key_file`.
pub fn app(
    api: &str,
    cfg: &crate::config::ForgeConfig,
    timeout: std::time::Duration,
) -> Result<Octocrab, ForgeError> {
    let (Some(id), Some(path)) = (cfg.app_id, cfg.private_key_file.as_ref()) else {
        return Err(ForgeError::Permanent("no GitHub App configured".into()));
    };
    let pem = std::fs::read(path).map_err(|e| {
        ForgeError::Permanent(format!("[github] private_key_file {}: {e}", path.display()))
    })?;
    app_with_key(api, id, &pem, timeout).map_err(|e| {
        ForgeError::Permanent(format!("[github] private_key_file {}: {e}", path.display()))
    })
}

/// The GitHub App client (its JWT) of app `id` with the PEM private key `pem`.
pub fn app_with_key(
    api: &str,
    id: u64,
    pem: &[u8],
    timeout: std::time::Duration,
) -> Result<Octocrab, ForgeError> {
    let key = octocrab::EncodingKey::from_rsa_pem(pem)
        .map_err(|e| ForgeError::Permanent(format!("not an RSA key in PEM: {e}")))?;
    Octocrab::builder()
        .base_uri(api)
        .map_err(|e| ForgeError::Permanent(format!("github api_url: {e}")))?
        .app(octocrab::models::AppId(id), key)
        .set_connect_timeout(Some(timeout))
        .set_read_timeout(Some(timeout))
        .set_write_timeout(Some(timeout))
        .build()
        .map_err(|e| ForgeError::Permanent(format!("github app client: {e}")))
}

/// Exchange the one-time `code` of GitHub's app-manifest flow for the app it made
/// (`POST /app-manifests/{code}/conversions`, no credentials): GitHub's answer, whole.
pub async fn convert_manifest(
    api: &str,
    code: &str,
    timeout: std::time::Duration,
) -> Result<Value, ForgeError> {
    if code.is_empty() || code.len() > 100 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ForgeError::Permanent(
            "the manifest code is missing or malformed".into(),
        ));
    }
    let api = crate::forge::http::api_root(api)?;
    let resp = crate::forge::http::client(timeout)?
        .post(format!("{api}/app-manifests/{code}/conversions"))
        .header("accept", "application/vnd.github+json")
        .send()
        .await
        .map_err(|e| ForgeError::lost(format!("the conversion did not answer: {e}")))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| ForgeError::lost(format!("the conversion's answer: {e}")))?;
    if !status.is_success() {
        let said: String = text.chars().take(300).collect();
        return Err(ForgeError::Permanent(format!(
            "the conversion answered {status}: {said} (a code works once, for an hour)"
        )));
    }
    serde_json::from_str(&text)
        .map_err(|e| ForgeError::Permanent(format!("the conversion's answer: {e}")))
}

pub struct GitHub {
    octo: Octocrab,
    limiter: Arc<Limiter>,
    /// The account endor writes as (its comments are the only ones it edits or deletes).
    login: tokio::sync::OnceCell<String>,
}

impl GitHub {
    /// A client for `api_url` (`https://api.github.com` or a GitHub Enterprise `/api/v3`) with
    /// a personal access token.
    pub fn with_token(
        api_url: &str,
        token: &str,
        timeout: std::time::Duration,
        limiter: Arc<Limiter>,
    ) -> Result<Self, ForgeError> {
        let octo = Octocrab::builder()
            .base_uri(api_url)
            .map_err(|e| ForgeError::Permanent(format!("github api_url: {e}")))?
            .personal_token(token.to_string())
            .set_connect_timeout(Some(timeout))
            .set_read_timeout(Some(timeout))
            .set_write_timeout(Some(timeout))
            .build()
            .map_err(|e| ForgeError::Permanent(format!("github client: {e}")))?;
        Ok(Self {
            octo,
            limiter,
            login: tokio::sync::OnceCell::new(),
        })
    }

    /// A client acting as a GitHub App's installation on `repo`: the installation is found
    /// with the app's JWT, and octocrab mints installation tokens and renews them before they
    /// expire.
    pub async fn as_installation(
        app: &Octocrab,
        repo: &str,
        limiter: Arc<Limiter>,
    ) -> Result<Self, ForgeError> {
        let v = app_get(app, &format!("/repos/{repo}/installation"), &limiter)
            .await
            .map_err(|e| match e {
                ForgeError::NotFound => {
                    ForgeError::Permanent(format!("the GitHub App is not installed on {repo}"))
                }
                e => e,
            })?;
        let id = v["id"]
            .as_u64()
            .ok_or_else(|| ForgeError::Permanent("github: installation without an id".into()))?;
        let octo = app
            .installation(octocrab::models::InstallationId(id))
            .map_err(|e| ForgeError::Permanent(format!("github installation client: {e}")))?;
        // An installation token cannot read /user: the app writes as `{slug}[bot]`, and its
        // slug is read with the JWT.
        let v = app_get(app, "/app", &limiter).await?;
        let slug = v["slug"]
            .as_str()
            .ok_or_else(|| ForgeError::Permanent("github: /app has no slug".into()))?;
        let login = tokio::sync::OnceCell::new();
        let _ = login.set(format!("{slug}[bot]"));
        Ok(Self {
            octo,
            limiter,
            login,
        })
    }

    /// Send one request (after the rate limiter), and read the answer.
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ForgeError> {
        send(&self.octo, &self.limiter, method, path, body).await
    }

    async fn me(&self) -> Result<String, ForgeError> {
        self.login
            .get_or_try_init(|| async {
                let v = self.call(http::Method::GET, "/user", None).await?;
                v["login"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ForgeError::Permanent("github /user has no login".into()))
            })
            .await
            .cloned()
    }
}

/// A GET with the app's own JWT (octocrab signs it with the app's key).
async fn app_get(app: &Octocrab, url: &str, limiter: &Limiter) -> Result<Value, ForgeError> {
    send(app, limiter, http::Method::GET, url, None).await
}

/// One request through `octo` after `limiter`; the answer's JSON (Null when empty), or the
/// error it means.
async fn send(
    octo: &Octocrab,
    limiter: &Limiter,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, ForgeError> {
    limiter.acquire().await;
    // Paths stay relative: octocrab joins them to the base URI (with its path, for GitHub
    // Enterprise), and adds app and installation auth only to such requests.
    let url = path.to_string();
    let resp = match method {
        http::Method::GET => octo._get(url).await,
        http::Method::POST => octo._post(url, body).await,
        http::Method::PATCH => octo._patch(url, body).await,
        http::Method::DELETE => octo._delete(url, None::<&()>).await,
        other => return Err(ForgeError::Permanent(format!("unsupported method {other}"))),
    }
    .map_err(|e| ForgeError::lost(format!("github: {e}")))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = octo
        .body_to_string(resp)
        .await
        .map_err(|e| ForgeError::lost(format!("github: reading the answer: {e}")))?;
    if let Some(err) = classify_status(status, &headers, &text, limiter) {
        return Err(err);
    }
    Ok(if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    })
}

/// A repository webhook as endor wants it: active, its events, JSON to `url` signed with
/// `secret`, TLS checked.
fn hook_body(url: &str, secret: &str) -> Value {
    json!({
        "active": true,
        "events": crate::forge::github::EVENTS,
        "config": {"url": url, "content_type": "json", "secret": secret, "insecure_ssl": "0"},
    })
}

/// The JSON of the check run `endor/preview` as `check` shows it (`sha` only when creating).
fn check_body(sha: Option<&str>, check: &CheckRun) -> Value {
    // GitHub's limits: a summary of at most 65535 characters, at most three actions.
    const SUMMARY_MAX: usize = 65_000;
    let (status, conclusion) = check.state.github();
    let mut summary: String = check.summary.chars().take(SUMMARY_MAX).collect();
    if summary.len() < check.summary.len() {
        summary.push_str("\n\n…");
    }
    let mut body = json!({
        "name": STATUS_CONTEXT,
        "external_id": check.number.to_string(),
        "status": status,
        "output": {"title": check.title, "summary": summary},
        "actions": check.actions.iter().take(3).map(|a| {
            let (label, description) = a.label();
            json!({"label": label, "description": description, "identifier": a.identifier()})
        }).collect::<Vec<_>>(),
    });
    if let Some(c) = conclusion {
        body["conclusion"] = c.into();
    }
    if let Some(sha) = sha {
        body["head_sha"] = sha.into();
    }
    if let Some(u) = &check.details_url {
        body["details_url"] = u.as_str().into();
    }
    body
}

#[async_trait]
impl Forge for GitHub {
    async fn create_check_run(
        &self,
        repo: &str,
        sha: &str,
        check: &CheckRun,
    ) -> Result<String, ForgeError> {
        let path = format!("/repos/{repo}/check-runs");
        let body = check_body(Some(sha), check);
        id_of(&self.call(http::Method::POST, &path, Some(&body)).await?)
    }

    async fn update_check_run(
        &self,
        repo: &str,
        id: &str,
        check: &CheckRun,
    ) -> Result<(), ForgeError> {
        let path = format!("/repos/{repo}/check-runs/{id}");
        let body = check_body(None, check);
        self.call(http::Method::PATCH, &path, Some(&body)).await?;
        Ok(())
    }

    async fn find_check_run(&self, repo: &str, sha: &str) -> Result<Option<String>, ForgeError> {
        let path = format!(
            "/repos/{repo}/commits/{sha}/check-runs?check_name={}&filter=latest&per_page=1",
            STATUS_CONTEXT.replace('/', "%2F")
        );
        let v = self.call(http::Method::GET, &path, None).await?;
        v["check_runs"]
            .as_array()
            .and_then(|a| a.first())
            .map(id_of)
            .transpose()
    }

    async fn create_comment(&self, pr: &PrRef<'_>, body: &str) -> Result<String, ForgeError> {
        let path = format!("/repos/{}/issues/{}/comments", pr.repo, pr.number);
        let v = self
            .call(http::Method::POST, &path, Some(&json!({"body": body})))
            .await?;
        id_of(&v)
    }

    async fn edit_comment(&self, pr: &PrRef<'_>, id: &str, body: &str) -> Result<(), ForgeError> {
        let path = format!("/repos/{}/issues/comments/{id}", pr.repo);
        self.call(http::Method::PATCH, &path, Some(&json!({"body": body})))
            .await?;
        Ok(())
    }

    async fn delete_comment(&self, pr: &PrRef<'_>, id: &str) -> Result<(), ForgeError> {
        let path = format!("/repos/{}/issues/comments/{id}", pr.repo);
        match self.call(http::Method::DELETE, &path, None).await {
            Ok(_) | Err(ForgeError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn marked_comments(
        &self,
        pr: &PrRef<'_>,
        marker: &str,
    ) -> Result<Vec<String>, ForgeError> {
        let me = self.me().await?;
        let page = |n: u32| async move {
            let path = format!(
                "/repos/{}/issues/{}/comments?per_page=100&page={n}",
                pr.repo, pr.number
            );
            self.call(http::Method::GET, &path, None).await
        };
        crate::forge::client::marked_in_pages(page, 100, "/user/login", &me, marker).await
    }

    async fn commit_status(
        &self,
        repo: &str,
        sha: &str,
        state: CommitState,
        target_url: Option<&str>,
        description: &str,
    ) -> Result<(), ForgeError> {
        let body = crate::forge::client::status_body(
            "context",
            github_state(state),
            target_url,
            description,
        );
        self.call(
            http::Method::POST,
            &format!("/repos/{repo}/statuses/{sha}"),
            Some(&body),
        )
        .await?;
        Ok(())
    }

    async fn has_status(
        &self,
        repo: &str,
        sha: &str,
        state: CommitState,
    ) -> Result<bool, ForgeError> {
        let v = self
            .call(
                http::Method::GET,
                &format!("/repos/{repo}/commits/{sha}/statuses?per_page=100"),
                None,
            )
            .await?;
        Ok(crate::forge::client::newest_status_is(
            &v,
            true,
            "context",
            "state",
            github_state(state),
        ))
    }

    async fn find_deployment(
        &self,
        pr: &PrRef<'_>,
        sha: &str,
    ) -> Result<Option<String>, ForgeError> {
        let env = format!("preview/pr-{}", pr.number);
        let v = self
            .call(
                http::Method::GET,
                &format!(
                    "/repos/{}/deployments?sha={sha}&environment={}",
                    pr.repo,
                    env.replace('/', "%2F")
                ),
                None,
            )
            .await?;
        v.as_array().and_then(|a| a.first()).map(id_of).transpose()
    }

    async fn create_deployment(
        &self,
        pr: &PrRef<'_>,
        sha: &str,
    ) -> Result<Option<String>, ForgeError> {
        let body = json!({
            "ref": sha,
            "environment": format!("preview/pr-{}", pr.number),
            "auto_merge": false,
            "required_contexts": [],
            "transient_environment": true,
            "production_environment": false,
            "description": "endor preview",
        });
        let v = self
            .call(
                http::Method::POST,
                &format!("/repos/{}/deployments", pr.repo),
                Some(&body),
            )
            .await?;
        Ok(Some(id_of(&v)?))
    }

    async fn set_deployment(
        &self,
        pr: &PrRef<'_>,
        id: &str,
        state: DeployState,
        url: Option<&str>,
    ) -> Result<(), ForgeError> {
        let state_name = match state {
            DeployState::InProgress => "in_progress",
            DeployState::Success => "success",
            DeployState::Failure => "failure",
            DeployState::Inactive => "inactive",
        };
        let mut body = json!({"state": state_name, "auto_inactive": true});
        if let (Some(u), DeployState::Success) = (url, state) {
            body["environment_url"] = u.into();
        }
        self.call(
            http::Method::POST,
            &format!("/repos/{}/deployments/{id}/statuses", pr.repo),
            Some(&body),
        )
        .await?;
        Ok(())
    }

    async fn account(&self) -> Result<String, ForgeError> {
        self.me().await
    }

    async fn create_hook(&self, repo: &str, url: &str, secret: &str) -> Result<String, ForgeError> {
        let mut body = hook_body(url, secret);
        body["name"] = json!("web");
        let path = format!("/repos/{repo}/hooks");
        id_of(&self.call(http::Method::POST, &path, Some(&body)).await?)
    }

    async fn update_hook(
        &self,
        repo: &str,
        id: &str,
        url: &str,
        secret: &str,
    ) -> Result<(), ForgeError> {
        let path = format!("/repos/{repo}/hooks/{id}");
        let body = hook_body(url, secret);
        self.call(http::Method::PATCH, &path, Some(&body)).await?;
        Ok(())
    }

    async fn delete_hook(&self, repo: &str, id: &str) -> Result<(), ForgeError> {
        let path = format!("/repos/{repo}/hooks/{id}");
        match self.call(http::Method::DELETE, &path, None).await {
            Ok(_) | Err(ForgeError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn react(
        &self,
        pr: &PrRef<'_>,
        comment_id: &str,
        reaction: &str,
    ) -> Result<(), ForgeError> {
        let path = format!("/repos/{}/issues/comments/{comment_id}/reactions", pr.repo);
        self.call(
            http::Method::POST,
            &path,
            Some(&json!({"content": reaction})),
        )
        .await?;
        Ok(())
    }
}
