//! Gitea (REST `/api/v1`): issue comments on the PR, commit statuses and reactions. Gitea has no
//! deployments API: deployments are a no-op there. Auth: `Authorization: token ...`.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::json;

use crate::forge::client::{
    CommitState, DeployState, Forge, ForgeError, Limiter, PrRef, github_state, id_of,
};
use crate::forge::http::RawClient;

pub struct Gitea {
    http: RawClient,
}

impl Gitea {
    pub fn new(
        api_url: &str,
        token: &str,
        timeout: std::time::Duration,
        limiter: Arc<Limiter>,
    ) -> Result<Self, ForgeError> {
        Ok(Self {
            http: RawClient::new(
                api_url,
                ("Authorization", format!("token {token}")),
                timeout,
                limiter,
            )?,
        })
    }
}

/// A repository webhook as endor wants it: JSON to `url` signed with `secret`, its events, and
/// active (Gitea's `active` defaults to false).
fn hook_body(url: &str, secret: &str) -> serde_json::Value {
    json!({
        "config": {"url": url, "content_type": "json", "secret": secret},
        "events": crate::forge::gitea::EVENTS,
        "active": true,
    })
}

#[async_trait]
impl Forge for Gitea {
    async fn create_comment(&self, pr: &PrRef<'_>, body: &str) -> Result<String, ForgeError> {
        let v = self
            .http
            .call(
                Method::POST,
                &format!("/repos/{}/issues/{}/comments", pr.repo, pr.number),
                Some(&json!({"body": body})),
            )
            .await?;
        id_of(&v)
    }

    async fn edit_comment(&self, pr: &PrRef<'_>, id: &str, body: &str) -> Result<(), ForgeError> {
        self.http
            .call(
                Method::PATCH,
                &format!("/repos/{}/issues/comments/{id}", pr.repo),
                Some(&json!({"body": body})),
            )
            .await?;
        Ok(())
    }

    async fn delete_comment(&self, pr: &PrRef<'_>, id: &str) -> Result<(), ForgeError> {
        match self
            .http
            .call(
                Method::DELETE,
                &format!("/repos/{}/issues/comments/{id}", pr.repo),
                None,
            )
            .await
        {
            Ok(_) | Err(ForgeError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn marked_comments(
        &self,
        pr: &PrRef<'_>,
        marker: &str,
    ) -> Result<Vec<String>, ForgeError> {
        let me = self.http.me("login").await?;
        // `issueGetComments` has no pagination (only `since`/`before`): one call answers every
        // comment of the pull request.
        let path = format!("/repos/{}/issues/{}/comments", pr.repo, pr.number);
        let v = self.http.call(Method::GET, &path, None).await?;
        let all = v.as_array().map(Vec::as_slice).unwrap_or_default();
        crate::forge::client::marked_in(all, "/user/login", &me, marker)
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
        self.http
            .call(
                Method::POST,
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
            .http
            .call(
                Method::GET,
                // `repoListStatusesByRef` leaves the default order unsaid: newest first, asked.
                &format!("/repos/{repo}/commits/{sha}/statuses?sort=highestindex&limit=50"),
                None,
            )
            .await?;
        // Gitea's CommitStatus answers its state as `status` (`state` is the request's name).
        Ok(crate::forge::client::newest_status_is(
            &v,
            true,
            "context",
            "status",
            github_state(state),
        ))
    }

    async fn find_deployment(
        &self,
        _pr: &PrRef<'_>,
        _sha: &str,
    ) -> Result<Option<String>, ForgeError> {
        Ok(None)
    }

    async fn create_deployment(
        &self,
        _pr: &PrRef<'_>,
        _sha: &str,
    ) -> Result<Option<String>, ForgeError> {
        Ok(None)
    }

    async fn set_deployment(
        &self,
        _pr: &PrRef<'_>,
        _id: &str,
        _state: DeployState,
        _url: Option<&str>,
    ) -> Result<(), ForgeError> {
        Ok(())
    }

    async fn account(&self) -> Result<String, ForgeError> {
        self.http.me("login").await
    }

    async fn create_hook(&self, repo: &str, url: &str, secret: &str) -> Result<String, ForgeError> {
        let mut body = hook_body(url, secret);
        body["type"] = json!("gitea");
        let v = self
            .http
            .call(Method::POST, &format!("/repos/{repo}/hooks"), Some(&body))
            .await?;
        id_of(&v)
    }

    async fn update_hook(
        &self,
        repo: &str,
        id: &str,
        url: &str,
        secret: &str,
    ) -> Result<(), ForgeError> {
        let body = hook_body(url, secret);
        self.http
            .call(
                Method::PATCH,
                &format!("/repos/{repo}/hooks/{id}"),
                Some(&body),
            )
            .await?;
        Ok(())
    }

    async fn delete_hook(&self, repo: &str, id: &str) -> Result<(), ForgeError> {
        match self
            .http
            .call(Method::DELETE, &format!("/repos/{repo}/hooks/{id}"), None)
            .await
        {
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
        self.http
            .call(
                Method::POST,
                &format!("/repos/{}/issues/comments/{comment_id}/reactions", pr.repo),
                Some(&json!({"content": reaction})),
            )
            .await?;
        Ok(())
    }
}
