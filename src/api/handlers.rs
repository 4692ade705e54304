//! The API's handlers. Each one runs after `authorize` let its caller through (the caller is
//! in the request's extensions) and calls the service layer the CLI calls.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{Api, ApiError, Caller, Role};
use crate::service;
use crate::sites::Guard;

type Res = Result<Response, ApiError>;

fn ok<T: serde::Serialize>(status: StatusCode, value: &T) -> Res {
    Ok((status, axum::Json(value)).into_response())
}

fn no_content() -> Res {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Request bodies larger than this are refused (413) before being parsed.
pub const MAX_BODY: usize = 64 * 1024;

/// Read and parse a JSON body (at most [`MAX_BODY`] bytes); an empty body reads as `{}`.
/// Unknown fields are refused by the types.
async fn body<T: DeserializeOwned>(raw: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(raw, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request bodies are limited to {MAX_BODY} bytes"),
        )
    })?;
    let raw: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(raw)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))
}

fn guard(caller: &Caller, bypass_protection: bool) -> Guard {
    Guard {
        bypass_protection,
        caller: Some(caller.audit_name()),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    pub name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameWorkspace {
    pub name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    pub login: String,
    /// owner, billing, developer: a non-empty mix.
    pub roles: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRoles {
    pub roles: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConnection {
    /// `github:OWNER/NAME`, `gitlab:GROUP/NAME` or `gitea:OWNER/NAME`.
    pub repo: String,
    pub api_url: Option<String>,
    /// http(s), ssh or git URL (`file://` only through the CLI: it reads the server's disk).
    pub git_url: Option<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    #[serde(default)]
    pub retire_old: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    pub name: String,
    pub region: Option<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bypass {
    #[serde(default)]
    pub bypass_protection: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    /// The new site (or an existing one of the same workspace, whose data is replaced).
    pub name: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub bypass_protection: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// The site whose newest generation is cloned into this one.
    pub from: String,
    #[serde(default)]
    pub files: bool,
    #[serde(default)]
    pub db: bool,
    #[serde(default)]
    pub bypass_protection: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Protection {
    pub protected: bool,
}

pub async fn me(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    let ws = api.store.user_workspaces(&c.user.id).await?;
    let workspaces: Vec<_> = ws
        .iter()
        .map(|(w, roles)| json!({"name": w.name, "id": w.id, "roles": roles}))
        .collect();
    ok(
        StatusCode::OK,
        &json!({"login": c.user.login, "name": c.user.name, "email": c.user.email, "workspaces": workspaces}),
    )
}

pub async fn list_tokens(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    ok(StatusCode::OK, &api.store.list_tokens(&c.user.id).await?)
}

pub async fn revoke_token(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Path(token_id): Path<String>,
) -> Res {
    if api.store.revoke_token(&c.user.id, &token_id).await? {
        no_content()
    } else {
        Err(ApiError::not_found(format!("live token {token_id}")))
    }
}

pub async fn list_workspaces(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    let ws = api.store.user_workspaces(&c.user.id).await?;
    let list: Vec<_> = ws
        .iter()
        .map(|(w, roles)| json!({"name": w.name, "id": w.id, "created_at": w.created_at, "roles": roles}))
        .collect();
    ok(StatusCode::OK, &list)
}

pub async fn create_workspace(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: NewWorkspace = body(raw).await?;
    let ws = service::create_workspace(api.store.as_ref(), &b.name, &c.user.login).await?;
    ok(StatusCode::CREATED, &ws)
}

pub async fn rename_workspace(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: RenameWorkspace = body(raw).await?;
    let ws = service::rename_workspace(api.store.as_ref(), &c.workspace()?.name, &b.name).await?;
    ok(StatusCode::OK, &ws)
}

pub async fn list_members(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    let members: Vec<_> = api
        .store
        .list_members(&c.workspace()?.id)
        .await?
        .into_iter()
        .map(|(login, roles)| json!({"login": login, "roles": roles}))
        .collect();
    ok(StatusCode::OK, &members)
}

pub async fn add_member(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: NewMember = body(raw).await?;
    let ws = &c.workspace()?.name;
    let roles = service::add_member(api.store.as_ref(), ws, &b.login, &b.roles).await?;
    ok(
        StatusCode::CREATED,
        &json!({"workspace": ws, "login": b.login, "roles": roles}),
    )
}

pub async fn set_member_roles(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
    raw: Body,
) -> Res {
    let b: MemberRoles = body(raw).await?;
    let ws = &c.workspace()?.name;
    let login = &params["login"];
    let roles = service::set_member_roles(api.store.as_ref(), ws, login, &b.roles).await?;
    ok(
        StatusCode::OK,
        &json!({"workspace": ws, "login": login, "roles": roles}),
    )
}

pub async fn remove_member(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Res {
    service::remove_member(api.store.as_ref(), &c.workspace()?.name, &params["login"]).await?;
    no_content()
}

pub async fn list_connections(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    let list =
        service::list_repos(api.store.as_ref(), &api.config, Some(&c.workspace()?.name)).await?;
    ok(StatusCode::OK, &list)
}

pub async fn connect(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: NewConnection = body(raw).await?;
    if b.git_url
        .as_deref()
        .is_some_and(|u| u.to_ascii_lowercase().starts_with("file:"))
    {
        return Err(ApiError::invalid(
            "git_url: file:// URLs read the server's own disk; connect such a repository with the CLI (endor repo connect --git-url)",
        ));
    }
    let conn = service::connect_repo(
        api.store.as_ref(),
        &api.config,
        &c.workspace()?.name,
        &b.repo,
        b.api_url.as_deref(),
        b.git_url.as_deref(),
    )
    .await?;
    ok(StatusCode::CREATED, &conn)
}

/// The connection the path names, when it belongs to the path's workspace.
async fn own_connection(api: &Api, c: &Caller, id: &str) -> Result<(), ApiError> {
    match api.store.connection(&id.into()).await? {
        Some(conn) if conn.workspace_id == c.workspace()?.id => Ok(()),
        _ => Err(ApiError::not_found(format!("connection {id}"))),
    }
}

pub async fn rotate_secret(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
    raw: Body,
) -> Res {
    let b: RotateSecret = body(raw).await?;
    let id = &params["connection_id"];
    own_connection(&api, &c, id).await?;
    let r = service::rotate_secret(api.store.as_ref(), id, b.retire_old).await?;
    ok(StatusCode::OK, &r)
}

pub async fn delete_connection(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Res {
    let id = &params["connection_id"];
    own_connection(&api, &c, id).await?;
    service::delete_repo(api.store.as_ref(), id).await?;
    no_content()
}

pub async fn list_sites(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    let list = api
        .sites
        .list(Some(&c.workspace()?.id), q.get("tag").map(String::as_str))
        .await?;
    ok(StatusCode::OK, &list)
}

pub async fn create_site(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: NewSite = body(raw).await?;
    let region = b.region.as_deref().unwrap_or("default");
    api.sites
        .create(
            &b.name,
            &c.workspace()?.name,
            region,
            crate::sites::Imports::default(),
        )
        .await?;
    ok(StatusCode::CREATED, &api.sites.show(&b.name).await?)
}

pub async fn usage(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    let month = q.get("month").map(String::as_str);
    let r = crate::usage::report(api.store.as_ref(), &api.config, c.workspace()?, month)
        .await
        .map_err(|e| match e {
            crate::usage::UsageError::Invalid(m) => ApiError::invalid(m),
            crate::usage::UsageError::Store(s) => s.into(),
        })?;
    ok(StatusCode::OK, &r)
}

pub async fn show_site(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    ok(StatusCode::OK, &api.sites.show(&c.site()?.name).await?)
}

pub async fn delete_site(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: Bypass = body(raw).await?;
    api.sites
        .delete(&c.site()?.name, guard(&c, b.bypass_protection))
        .await?;
    no_content()
}

pub async fn clone_site(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: CloneRequest = body(raw).await?;
    let r = api
        .sites
        .clone_site(
            &c.site()?.name,
            &b.name,
            b.read_only,
            guard(&c, b.bypass_protection),
        )
        .await?;
    ok(StatusCode::CREATED, &r)
}

pub async fn sync_site(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: SyncRequest = body(raw).await?;
    // The source's data is read: the caller must be a developer where it lives too.
    let src = api
        .store
        .site_by_name(&b.from)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("site {}", b.from)))?;
    let roles = api
        .store
        .member_roles(&src.workspace_id, &c.user.id)
        .await?;
    if !roles.iter().any(|r| r == Role::Developer.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "syncing from {} needs the developer role in its workspace",
                b.from
            ),
        ));
    }
    let r = api
        .sites
        .sync(
            &b.from,
            &c.site()?.name,
            b.files,
            b.db,
            guard(&c, b.bypass_protection),
        )
        .await?;
    ok(StatusCode::OK, &r)
}

pub async fn snapshot_site(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    ok(StatusCode::OK, &api.sites.snapshot(&c.site()?.name).await?)
}

async fn tag(api: &Api, c: &Caller, tag: &str, add: bool) -> Res {
    let site = c.site()?;
    let tags = api.sites.tag(&site.name, tag, add).await?;
    ok(StatusCode::OK, &json!({"site": site.name, "tags": tags}))
}

pub async fn add_tag(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Res {
    tag(&api, &c, &params["tag"], true).await
}

pub async fn remove_tag(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Res {
    tag(&api, &c, &params["tag"], false).await
}

pub async fn protect(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: Protection = body(raw).await?;
    let site = c.site()?;
    api.sites
        .protect(&site.name, b.protected, &guard(&c, false))
        .await?;
    ok(
        StatusCode::OK,
        &json!({"site": site.name, "protected": b.protected}),
    )
}

fn sealer(api: &Api) -> Result<crate::secret::Sealer, ApiError> {
    crate::secret::Sealer::from_file(&api.config.storage.secret_key).map_err(|e| {
        tracing::error!(error = %e, "cannot open the secret key");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the secret key cannot be read (see the server log)",
        )
    })
}

pub async fn show_access(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    let site = c.site()?;
    let v = crate::access::view(api.store.as_ref(), &sealer(&api)?, &site.name, &site.id).await?;
    ok(StatusCode::OK, &v)
}

pub async fn change_access(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: crate::access::AccessChange = body(raw).await?;
    let site = c.site()?;
    let v =
        crate::access::change(api.store.as_ref(), &sealer(&api)?, &site.name, &site.id, &b).await?;
    ok(StatusCode::OK, &v)
}
