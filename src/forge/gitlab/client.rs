//! GitLab (REST v4): merge request notes, commit statuses, and an environment per MR
//! (`preview/pr-{iid}`, stopped on destroy). Auth: `PRIVATE-TOKEN` (project, group or personal
//! access token).
//!
//! Requests are the `gitlab` crate's typed endpoints (its builders name and encode the
//! parameters and bodies as GitLab documents them), sent by [`Rest`], endor's own
//! implementation of the crate's `AsyncClient`: it waits for the limiter and sees every answer
//! whole, headers included, so rate limits (`Retry-After`, `RateLimit-Reset`), lost answers
//! and 5xx are classified as for the other forges before the crate reads the body. The few
//! operations the crate has no endpoint for (deleting a note; creating, editing and stopping an
//! environment) are endpoints of our own in [`ops`], built the same way.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use gitlab::api::projects::environments::Environments;
use gitlab::api::projects::hooks::{CreateHook, DeleteHook, EditHook};
use gitlab::api::projects::merge_requests::notes::awards::CreateMergeRequestNoteAward;
use gitlab::api::projects::merge_requests::notes::{
    CreateMergeRequestNote, EditMergeRequestNote, MergeRequestNotes, NoteOrderBy,
};
use gitlab::api::projects::repository::commits::{
    CommitStatusState, CommitStatuses, CommitStatusesOrderBy, CreateCommitStatus,
};
use gitlab::api::users::CurrentUser;
use gitlab::api::{self, ApiError, AsyncQuery, Endpoint, common::SortOrder};
use reqwest::Url;
use serde_json::Value;

use crate::forge::client::{
    CommitState, DeployState, Forge, ForgeError, Limiter, PrRef, STATUS_CONTEXT, classify_status,
    id_of,
};

/// endor's HTTP client as the `gitlab` crate's `AsyncClient`.
pub struct Rest {
    client: reqwest::Client,
    /// The API root with a trailing `/` (`https://gitlab.com/api/v4/`).
    base: Url,
    token: String,
    limiter: Arc<Limiter>,
}

impl Rest {
    pub fn new(
        api_url: &str,
        token: &str,
        timeout: std::time::Duration,
        limiter: Arc<Limiter>,
    ) -> Result<Self, ForgeError> {
        let base = crate::forge::http::api_root(api_url)?;
        let base = Url::parse(&format!("{base}/"))
            .map_err(|_| ForgeError::Permanent(format!("bad API URL {api_url}")))?;
        Ok(Self {
            client: crate::forge::http::client(timeout)?,
            base,
            token: token.to_string(),
            limiter,
        })
    }

    /// One endpoint, its answer as JSON.
    async fn json<E: Endpoint + Sync>(&self, endpoint: E) -> Result<Value, ForgeError> {
        endpoint.query_async(self).await.map_err(forge_error)
    }

    /// One endpoint whose answer is not read (GitLab answers some with an empty body).
    async fn send<E: Endpoint + Sync>(&self, endpoint: E) -> Result<(), ForgeError> {
        api::ignore(endpoint)
            .query_async(self)
            .await
            .map_err(forge_error)
    }
}

impl api::RestClient for Rest {
    type Error = ForgeError;

    fn rest_endpoint(&self, endpoint: &str) -> Result<Url, ApiError<ForgeError>> {
        Ok(self.base.join(endpoint)?)
    }
}

#[async_trait]
impl api::AsyncClient for Rest {
    async fn rest_async(
        &self,
        request: http::request::Builder,
        body: Vec<u8>,
    ) -> Result<http::Response<Bytes>, ApiError<ForgeError>> {
        let fail = |e: ForgeError| ApiError::client(e);
        let request = request
            .header("PRIVATE-TOKEN", &self.token)
            .body(body)
            .map_err(|e| fail(ForgeError::Permanent(format!("building a request: {e}"))))?;
        let request = reqwest::Request::try_from(request)
            .map_err(|e| fail(ForgeError::Permanent(format!("building a request: {e}"))))?;
        self.limiter.acquire().await;
        let resp = self
            .client
            .execute(request)
            .await
            .map_err(|e| fail(ForgeError::lost(format!("request failed: {e}"))))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| fail(ForgeError::lost(format!("reading the answer: {e}"))))?;
        // Every error answer is classified here, where its headers are at hand; the crate
        // only ever reads successes.
        if let Some(err) = classify_status(
            status,
            &headers,
            &String::from_utf8_lossy(&bytes),
            &self.limiter,
        ) {
            return Err(fail(err));
        }
        let mut answer = http::Response::new(bytes);
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

/// What a failed query means: endor's own classification when the request failed or GitLab
/// refused it (see [`Rest`]), otherwise an answer the crate could not read.
fn forge_error(e: ApiError<ForgeError>) -> ForgeError {
    match e {
        ApiError::Client { source } => source,
        other => ForgeError::Permanent(format!("GitLab's answer: {other}")),
    }
}

/// A numeric GitLab id (notes, environments) from the text endor keeps.
fn numeric(id: &str) -> Result<u64, ForgeError> {
    id.parse()
        .map_err(|_| ForgeError::Permanent(format!("`{id}` is not a GitLab id")))
}

/// A builder's refusal (a value the endpoint does not take) is permanent.
fn built<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, ForgeError> {
    r.map_err(|e| ForgeError::Permanent(format!("GitLab request: {e}")))
}

/// Endpoints the `gitlab` crate does not have, as GitLab documents them (notes API: delete a
/// merge request note; environments API: create, update, stop), and one page of a listing.
mod ops {
    use gitlab::api::common::NameOrId;
    use gitlab::api::endpoint_prelude::*;

    /// One operation of GitLab's API the crate has no endpoint for, its form fields given.
    pub struct Op<'a> {
        method: Method,
        path: String,
        form: Vec<(&'static str, &'a str)>,
    }

    impl<'a> Op<'a> {
        /// `DELETE /projects/:id/merge_requests/:iid/notes/:note_id`.
        pub fn delete_note(project: &str, merge_request: u64, note: u64) -> Self {
            Self::new(
                Method::DELETE,
                project,
                &format!("merge_requests/{merge_request}/notes/{note}"),
                vec![],
            )
        }

        /// `POST /projects/:id/environments` (`name` required, `tier`).
        pub fn create_environment(project: &str, name: &'a str, tier: &'a str) -> Self {
            let form = vec![("name", name), ("tier", tier)];
            Self::new(Method::POST, project, "environments", form)
        }

        /// `PUT /projects/:id/environments/:environment_id` (`external_url`).
        pub fn edit_environment(project: &str, environment: u64, external_url: &'a str) -> Self {
            let form = vec![("external_url", external_url)];
            Self::new(
                Method::PUT,
                project,
                &format!("environments/{environment}"),
                form,
            )
        }

        /// `POST /projects/:id/environments/:environment_id/stop`.
        pub fn stop_environment(project: &str, environment: u64) -> Self {
            let path = format!("environments/{environment}/stop");
            Self::new(Method::POST, project, &path, vec![])
        }

        fn new(
            method: Method,
            project: &str,
            rest: &str,
            form: Vec<(&'static str, &'a str)>,
        ) -> Self {
            // The crate's own escaping of a project path (`group%2Fname`).
            let project = NameOrId::from(project);
            Self {
                method,
                path: format!("projects/{project}/{rest}"),
                form,
            }
        }
    }

    impl Endpoint for Op<'_> {
        fn method(&self) -> Method {
            self.method.clone()
        }

        fn endpoint(&self) -> Cow<'static, str> {
            self.path.clone().into()
        }

        fn body(&self) -> Result<Option<(&'static str, Vec<u8>)>, BodyError> {
            let mut params = FormParams::default();
            for (k, v) in &self.form {
                params.push(*k, *v);
            }
            params.into_body()
        }
    }

    /// Page `page` (`per_page` items) of a listing the crate builds. endor walks the pages
    /// itself so that comments are told apart by id (`marked_in_pages`): a server that
    /// ignores paging must not make it loop, nor count one comment many times.
    pub struct OnePage<E> {
        pub endpoint: E,
        pub page: u32,
        pub per_page: u32,
    }

    impl<E: Endpoint + Pageable> Endpoint for OnePage<E> {
        fn method(&self) -> Method {
            self.endpoint.method()
        }

        fn endpoint(&self) -> Cow<'static, str> {
            self.endpoint.endpoint()
        }

        fn parameters(&self) -> QueryParams<'_> {
            let mut params = self.endpoint.parameters();
            params
                .push("per_page", u64::from(self.per_page))
                .push("page", u64::from(self.page));
            params
        }
    }
}

/// Notes read a page at a time.
const PER_PAGE: u32 = 100;

pub struct GitLab {
    rest: Rest,
    /// The account the token writes as, read once.
    login: tokio::sync::OnceCell<String>,
}

impl GitLab {
    pub fn new(
        api_url: &str,
        token: &str,
        timeout: std::time::Duration,
        limiter: Arc<Limiter>,
    ) -> Result<Self, ForgeError> {
        Ok(Self {
            rest: Rest::new(api_url, token, timeout, limiter)?,
            login: tokio::sync::OnceCell::new(),
        })
    }

    fn environment_name(pr: &PrRef<'_>) -> String {
        format!("preview/pr-{}", pr.number)
    }

    async fn environment(&self, pr: &PrRef<'_>) -> Result<Option<String>, ForgeError> {
        let name = Self::environment_name(pr);
        let list = built(
            Environments::builder()
                .project(pr.repo)
                .name(name.as_str())
                .build(),
        )?;
        let v = self.rest.json(list).await?;
        v.as_array()
            .and_then(|a| a.iter().find(|e| e["name"].as_str() == Some(name.as_str())))
            .map(id_of)
            .transpose()
    }

    async fn me(&self) -> Result<String, ForgeError> {
        self.login
            .get_or_try_init(|| async {
                let v = self
                    .rest
                    .json(
                        CurrentUser::builder()
                            .build()
                            .map_err(|e| ForgeError::Permanent(format!("GitLab request: {e}")))?,
                    )
                    .await?;
                v["username"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ForgeError::Permanent("GitLab's /user has no username".into()))
            })
            .await
            .cloned()
    }
}

#[async_trait]
impl Forge for GitLab {
    async fn create_comment(&self, pr: &PrRef<'_>, body: &str) -> Result<String, ForgeError> {
        let note = built(
            CreateMergeRequestNote::builder()
                .project(pr.repo)
                .merge_request(pr.number)
                .body(body)
                .build(),
        )?;
        id_of(&self.rest.json(note).await?)
    }

    async fn edit_comment(&self, pr: &PrRef<'_>, id: &str, body: &str) -> Result<(), ForgeError> {
        let note = built(
            EditMergeRequestNote::builder()
                .project(pr.repo)
                .merge_request(pr.number)
                .note(numeric(id)?)
                .body(body)
                .build(),
        )?;
        self.rest.send(note).await
    }

    async fn delete_comment(&self, pr: &PrRef<'_>, id: &str) -> Result<(), ForgeError> {
        let note = ops::Op::delete_note(pr.repo, pr.number, numeric(id)?);
        match self.rest.send(note).await {
            Ok(()) | Err(ForgeError::NotFound) => Ok(()),
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
            let notes = built(
                MergeRequestNotes::builder()
                    .project(pr.repo)
                    .merge_request(pr.number)
                    .order_by(NoteOrderBy::CreatedAt)
                    .sort(SortOrder::Ascending)
                    .build(),
            )?;
            self.rest
                .json(ops::OnePage {
                    endpoint: notes,
                    page: n,
                    per_page: PER_PAGE,
                })
                .await
        };
        crate::forge::client::marked_in_pages(
            page,
            PER_PAGE as usize,
            "/author/username",
            &me,
            marker,
        )
        .await
    }

    async fn commit_status(
        &self,
        repo: &str,
        sha: &str,
        state: CommitState,
        target_url: Option<&str>,
        description: &str,
    ) -> Result<(), ForgeError> {
        let description: String = description.chars().take(140).collect();
        let mut status = CreateCommitStatus::builder();
        status
            .project(repo)
            .commit(sha)
            .state(status_state(state))
            .name(STATUS_CONTEXT)
            .description(description.as_str());
        if let Some(u) = target_url {
            status.target_url(u);
        }
        self.rest.send(built(status.build())?).await
    }

    async fn has_status(
        &self,
        repo: &str,
        sha: &str,
        state: CommitState,
    ) -> Result<bool, ForgeError> {
        // Newest first, by GitLab's own order (the id), not by a default the API leaves open.
        let list = built(
            CommitStatuses::builder()
                .project(repo)
                .commit(sha)
                .name(STATUS_CONTEXT)
                .order_by(CommitStatusesOrderBy::Id)
                .sort(SortOrder::Descending)
                .build(),
        )?;
        let v = self
            .rest
            .json(ops::OnePage {
                endpoint: list,
                page: 1,
                per_page: PER_PAGE,
            })
            .await?;
        Ok(crate::forge::client::newest_status_is(
            &v,
            true,
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
        let name = Self::environment_name(pr);
        let create = ops::Op::create_environment(pr.repo, &name, "development");
        match self.rest.json(create).await {
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
        let environment = numeric(id)?;
        match (state, url) {
            (DeployState::Inactive, _) => {
                let stop = ops::Op::stop_environment(pr.repo, environment);
                self.rest.send(stop).await?;
            }
            (DeployState::Success, Some(u)) => {
                let edit = ops::Op::edit_environment(pr.repo, environment, u);
                self.rest.send(edit).await?;
            }
            // GitLab environments have no in-progress or failed state of their own: the
            // commit status says it.
            _ => {}
        }
        Ok(())
    }

    async fn account(&self) -> Result<String, ForgeError> {
        self.me().await
    }

    async fn create_hook(&self, repo: &str, url: &str, secret: &str) -> Result<String, ForgeError> {
        // Merge request events and comments; GitLab sends pushes unless told not to.
        let hook = built(
            CreateHook::builder()
                .project(repo)
                .url(url)
                .token(secret)
                .push_events(false)
                .merge_requests_events(true)
                .note_events(true)
                .enable_ssl_verification(true)
                .build(),
        )?;
        id_of(&self.rest.json(hook).await?)
    }

    async fn update_hook(
        &self,
        repo: &str,
        id: &str,
        url: &str,
        secret: &str,
    ) -> Result<(), ForgeError> {
        let hook = built(
            EditHook::builder()
                .project(repo)
                .hook_id(numeric(id)?)
                .url(url)
                .token(secret)
                .push_events(false)
                .merge_requests_events(true)
                .note_events(true)
                .enable_ssl_verification(true)
                .build(),
        )?;
        self.rest.send(hook).await
    }

    async fn delete_hook(&self, repo: &str, id: &str) -> Result<(), ForgeError> {
        let hook = built(
            DeleteHook::builder()
                .project(repo)
                .hook_id(numeric(id)?)
                .build(),
        )?;
        match self.rest.send(hook).await {
            Ok(()) | Err(ForgeError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
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
        let award = built(
            CreateMergeRequestNoteAward::builder()
                .project(pr.repo)
                .merge_request(pr.number)
                .note(numeric(comment_id)?)
                .name(name)
                .build(),
        )?;
        self.rest.send(award).await
    }
}

/// The status GitLab shows for a state, as written.
fn status_state(state: CommitState) -> CommitStatusState {
    match state {
        CommitState::Pending => CommitStatusState::Running,
        CommitState::Success => CommitStatusState::Success,
        CommitState::Failure | CommitState::Error => CommitStatusState::Failed,
    }
}

/// The same state as GitLab lists it (`status`).
fn status_name(state: CommitState) -> &'static str {
    match state {
        CommitState::Pending => "running",
        CommitState::Success => "success",
        CommitState::Failure | CommitState::Error => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitlab::api::RestClient;

    #[test]
    fn endpoints_are_under_the_api_root_with_the_project_path_encoded() {
        let rest = Rest::new(
            "https://git.example.com/api/v4/",
            "t",
            std::time::Duration::from_secs(1),
            Arc::new(Limiter::new(1.0, 1)),
        )
        .unwrap();
        let note = ops::Op::delete_note("grp/sub/my.app", 7, 9);
        assert_eq!(
            rest.rest_endpoint(&note.endpoint()).unwrap().as_str(),
            "https://git.example.com/api/v4/projects/grp%2Fsub%2Fmy.app/merge_requests/7/notes/9"
        );
        assert!(
            Rest::new(
                "ftp://x",
                "t",
                std::time::Duration::from_secs(1),
                Arc::new(Limiter::new(1.0, 1))
            )
            .is_err()
        );
        assert!(numeric("12").is_ok() && numeric("12; drop").is_err());
    }
}
