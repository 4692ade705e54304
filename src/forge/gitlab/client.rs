//! GitLab (REST v4): merge request notes, commit statuses, and an environment per MR
//! (`preview/pr-{iid}`, stopped on destroy). Auth: `PRIVATE-TOKEN` (project, group or personal
//! access token).

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::json;

use crate::forge::client::{CommitState, DeployState, Forge, ForgeError, Limiter, PrRef, id_of};
use crate::forge::http::RawClient;

pub struct GitLab {
    http: RawClient,
}

/// A project path as GitLab wants it in a URL (`group%2Fsub%2Fname`).
fn project(repo: &str) -> String {
    let mut out = String::with_capacity(repo.len() + 8);
    for b in repo.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl GitLab {
    pub fn new(
        api_url: &str,
        token: &str,
        timeout: std::time::Duration,
        limiter: Arc<Limiter>,
    ) -> Result<Self, ForgeError> {
        Ok(Self {
            http: RawClient::new(
                api_url,
                ("PRIVATE-TOKEN", token.to_string()),
                timeout,
                limiter,
            )?,
        })
    }

    fn notes(pr: &PrRef<'_>) -> String {
        format!(
            "/projects/{}/merge_requests/{}/notes",
            project(pr.repo),
            pr.number
        )
    }

    async fn environment(&self, pr: &PrRef<'_>) -> Result<Option<String>, ForgeError> {
        let name = format!("preview/pr-{}", pr.number);
        let v = self
            .http
            .call(
                Method::GET,
                &format!(
                    "/projects/{}/environments?name={}",
                    project(pr.repo),
                    project(&name)
                ),
                None,
            )
            .await?;
        v.as_array()
            .and_then(|a| a.iter().find(|e| e["name"].as_str() == Some(name.as_str())))
            .map(id_of)
            .transpose()
    }
}

#[async_trait]
impl Forge for GitLab {
    async fn create_comment(&self, pr: &PrRef<'_>, body: &str) -> Result<String, ForgeError> {
        let v = self
            .http
            .call(Method::POST, &Self::notes(pr), Some(&json!({"body": body})))
            .await?;
        id_of(&v)
    }

    async fn edit_comment(&self, pr: &PrRef<'_>, id: &str, body: &str) -> Result<(), ForgeError> {
        self.http
            .call(
                Method::PUT,
                &format!("{}/{id}", Self::notes(pr)),
                Some(&json!({"body": body})),
            )
            .await?;
        Ok(())
    }

    async fn delete_comment(&self, pr: &PrRef<'_>, id: &str) -> Result<(), ForgeError> {
        match self
            .http
            .call(Method::DELETE, &format!("{}/{id}", Self::notes(pr)), None)
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
        let me = self.http.me("username").await?;
        let page = |n: u32| async move {
            let path = format!(
                "{}?sort=asc&order_by=created_at&per_page=100&page={n}",
                Self::notes(pr)
            );
            self.http.call(Method::GET, &path, None).await
        };
        crate::forge::client::marked_in_pages(page, 100, "/author/username", &me, marker).await
    }

    async fn commit_status(
        &self,
        repo: &str,
        sha: &str,
        state: CommitState,
        target_url: Option<&str>,
        description: &str,
    ) -> Result<(), ForgeError> {
        let body =
            crate::forge::client::status_body("name", status_name(state), target_url, description);
        self.http
            .call(
                Method::POST,
                &format!("/projects/{}/statuses/{sha}", project(repo)),
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
                &format!(
                    "/projects/{}/repository/commits/{sha}/statuses?name={}&per_page=100",
                    project(repo),
                    project(crate::forge::client::STATUS_CONTEXT)
                ),
                None,
            )
            .await?;
        // GitLab lists oldest first.
        Ok(crate::forge::client::newest_status_is(
            &v,
            false,
            "name",
            "status",
            status_name(state),
        ))
    }

    async fn find_deployment(
        &self,
        pr: &PrRef<'_>,
        _sha: &str,
    ) -> Result<Option<String>, ForgeError> {
        // The environment is the PR's, whatever the head; its own calls are idempotent.
        self.environment(pr).await
    }

    fn deployment_per_head(&self) -> bool {
        false
    }

    async fn create_deployment(
        &self,
        pr: &PrRef<'_>,
        _sha: &str,
    ) -> Result<Option<String>, ForgeError> {
        // One call in the common case; an environment that exists already (an earlier MR with
        // this number, or a create whose answer was lost) is looked up instead.
        let body = json!({"name": format!("preview/pr-{}", pr.number), "tier": "development"});
        match self
            .http
            .call(
                Method::POST,
                &format!("/projects/{}/environments", project(pr.repo)),
                Some(&body),
            )
            .await
        {
            Ok(v) => Ok(Some(id_of(&v)?)),
            Err(ForgeError::Permanent(m)) if m.contains("already been taken") => {
                self.environment(pr).await
            }
            Err(e) => Err(e),
        }
    }

    async fn set_deployment(
        &self,
        pr: &PrRef<'_>,
        id: &str,
        state: DeployState,
        url: Option<&str>,
    ) -> Result<(), ForgeError> {
        let p = project(pr.repo);
        match (state, url) {
            (DeployState::Inactive, _) => {
                self.http
                    .call(
                        Method::POST,
                        &format!("/projects/{p}/environments/{id}/stop"),
                        None,
                    )
                    .await?;
            }
            (DeployState::Success, Some(u)) => {
                self.http
                    .call(
                        Method::PUT,
                        &format!("/projects/{p}/environments/{id}"),
                        Some(&json!({"external_url": u})),
                    )
                    .await?;
            }
            // GitLab environments have no in-progress or failed state of their own: the
            // commit status says it.
            _ => {}
        }
        Ok(())
    }

    async fn account(&self) -> Result<String, ForgeError> {
        self.http.me("username").await
    }

    async fn react(
        &self,
        pr: &PrRef<'_>,
        comment_id: &str,
        reaction: &str,
    ) -> Result<(), ForgeError> {
        let name = match reaction {
            "+1" => "thumbsup",
            "-1" => "thumbsdown",
            "eyes" => "eyes",
            "confused" => "confused",
            other => other,
        };
        self.http
            .call(
                Method::POST,
                &format!("{}/{comment_id}/award_emoji", Self::notes(pr)),
                Some(&json!({"name": name})),
            )
            .await?;
        Ok(())
    }
}

fn status_name(state: CommitState) -> &'static str {
    match state {
        CommitState::Pending => "running",
        CommitState::Success => "success",
        CommitState::Failure | CommitState::Error => "failed",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn project_paths_are_encoded() {
        assert_eq!(super::project("grp/sub/my.app"), "grp%2Fsub%2Fmy.app");
        assert_eq!(super::project("a b?c"), "a%20b%3Fc");
    }
}
