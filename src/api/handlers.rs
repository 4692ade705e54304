//! The API's handlers. Each one runs after `authorize` let its caller through (the caller is
//! in the request's extensions) and calls the service layer the CLI calls.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Api, ApiError, Caller, Role};
use crate::ids::WorkspaceId;
use crate::service;
use crate::sites::Guard;

pub(super) type Res = Result<Response, ApiError>;

pub(super) fn ok<T: serde::Serialize>(status: StatusCode, value: &T) -> Res {
    Ok((status, axum::Json(value)).into_response())
}

fn no_content() -> Res {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Request bodies larger than this are refused (413) before being parsed.
pub const MAX_BODY: usize = 64 * 1024;

/// Read and parse a JSON body (at most [`MAX_BODY`] bytes); an empty body reads as `{}`.
/// Unknown fields are refused by the types.
pub(super) async fn body<T: DeserializeOwned>(raw: Body) -> Result<T, ApiError> {
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

pub(super) fn guard(caller: &Caller, bypass_protection: bool) -> Guard {
    Guard {
        bypass_protection,
        caller: Some(caller.audit_name()),
    }
}

// Request bodies. Their schemas carry the rules the validators enforce (lengths, patterns,
// enums, non-empty lists), so a generated client can check a request before sending it; the
// server checks them all again (and a few the document cannot say, such as reserved tags).

/// A workspace, user or region name: 1-64 letters, digits, `-`, `_`, `.`, not starting with
/// `-` or `.`.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$";
/// A site name: a DNS label of lowercase letters, digits and `-`.
pub const SITE_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/// A tag as sent (trimmed and lowercased by the server).
pub const TAG_PATTERN: &str = "^[A-Za-z0-9_.-]{1,63}$";
/// A month of usage.
/// A repository as `owner/name` (GitLab: nested groups), or a connection id.
pub const REPO_PATTERN: &str = "^[A-Za-z0-9_.][A-Za-z0-9_./-]{0,254}$";
/// A pull/merge request's number.
pub const PR_NUMBER_PATTERN: &str = "^[1-9][0-9]{0,17}$";
/// A preview state's name.
pub const PREVIEW_STATE_PATTERN: &str = "^(queued|awaiting-approval|skipped|cloning|building|starting|ready|failed|destroying|destroyed|expired)$";
pub const MONTH_PATTERN: &str = "^[0-9]{4}-(0[1-9]|1[0-2])$";

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    #[schema(
        pattern = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameWorkspace {
    #[schema(
        pattern = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// An existing user's login.
    #[schema(
        pattern = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub login: String,
    /// owner, billing, developer: a non-empty mix.
    #[schema(value_type = Vec<Role>, min_items = 1)]
    pub roles: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRoles {
    /// owner, billing, developer: a non-empty mix (the last owner keeps owner).
    #[schema(value_type = Vec<Role>, min_items = 1)]
    pub roles: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConnection {
    /// `github:OWNER/NAME`, `gitlab:GROUP/NAME` or `gitea:OWNER/NAME`.
    #[schema(
        pattern = "^(github|gitlab|gitea):[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)+$",
        max_length = 262
    )]
    pub repo: String,
    /// The forge's API (http or https), when not the forge's default.
    #[schema(pattern = "^https?://[^\\s]+$", max_length = 2048)]
    pub api_url: Option<String>,
    /// http(s), ssh or git URL (`file://` only through the CLI: it reads the server's disk).
    #[schema(pattern = "^(https?|ssh|git)://[^\\s]+$", max_length = 2048)]
    pub git_url: Option<String>,
    /// The region its previews are made in: a region or an alias (default: the configured
    /// default region).
    #[schema(max_length = 64)]
    pub region: Option<String>,
    /// Create the repository's webhook through the forge's API (the server's forge token):
    /// nothing to paste by hand. Rotations update it; deleting the connection removes it.
    #[serde(default)]
    pub create_hook: bool,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// Stop accepting the previous secret (no new one is issued).
    #[serde(default)]
    pub retire_old: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Default `default`.
    #[schema(
        pattern = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub region: Option<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bypass {
    /// Needed to delete a protected site (the bypass is audited).
    #[serde(default)]
    pub bypass_protection: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    /// The new site (or an existing one of the same workspace, whose data is replaced).
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Clear every write bit in the clone's files.
    #[serde(default)]
    pub read_only: bool,
    /// Needed to clone into an existing protected site (audited).
    #[serde(default)]
    pub bypass_protection: bool,
    /// The region the clone must be in (a region or an alias): the source's own, or refused.
    #[schema(max_length = 64)]
    pub region: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// The site whose newest generation is cloned into this one (the caller must be a
    /// developer where it lives).
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub from: String,
    /// Replace the files (with `db` false and this false: both).
    #[serde(default)]
    pub files: bool,
    /// Replace the databases.
    #[serde(default)]
    pub db: bool,
    /// Needed to sync into a protected site (audited).
    #[serde(default)]
    pub bypass_protection: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Protection {
    pub protected: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// How much longer the preview lives: `90m`, `24h`, `3d` (capped at `previews.max_ttl`
    /// from now).
    #[schema(pattern = "^[0-9]+(s|m|h|d)$", max_length = 32)]
    pub by: String,
}

/// A preview's new expiry.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ExtendedView {
    pub site: String,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// The same, as UTC text.
    pub expires: String,
    /// The request went past `previews.max_ttl` and was cut to it.
    pub capped: bool,
}

// Replies the handlers build themselves (the rest are the service layer's types).

/// The caller and their workspaces.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Me {
    pub login: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub workspaces: Vec<WorkspaceRoles>,
}

/// A workspace of the caller's, with the caller's roles there.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WorkspaceRoles {
    pub name: String,
    pub id: WorkspaceId,
    pub created_at: i64,
    #[schema(value_type = Vec<Role>)]
    pub roles: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Member {
    pub login: String,
    #[schema(value_type = Vec<Role>)]
    pub roles: Vec<String>,
}

/// A member's roles in a workspace, as they are after the call.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Membership {
    pub workspace: String,
    pub login: String,
    #[schema(value_type = Vec<Role>)]
    pub roles: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SiteTags {
    pub site: String,
    pub tags: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SiteProtection {
    pub site: String,
    pub protected: bool,
}

pub async fn me(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    let me = Me {
        workspaces: workspaces(&api, &c).await?,
        login: c.user.login,
        name: c.user.name,
        email: c.user.email,
    };
    ok(StatusCode::OK, &me)
}

async fn workspaces(api: &Api, c: &Caller) -> Result<Vec<WorkspaceRoles>, ApiError> {
    Ok(api
        .store
        .user_workspaces(&c.user.id)
        .await?
        .into_iter()
        .map(|(w, roles)| WorkspaceRoles {
            name: w.name,
            id: w.id,
            created_at: w.created_at,
            roles,
        })
        .collect())
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
    ok(StatusCode::OK, &workspaces(&api, &c).await?)
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

/// A change to a workspace's settings: a value, or `default` (the config's).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    /// How long its sites' logs are kept: `30d`, `12h`… (1m to 3650d), or `default`.
    #[schema(pattern = "^([0-9]{1,9}[smhd]|default)$", nullable = false)]
    pub log_retention: Option<String>,
    /// How big each of its sites' logs may grow: `256MiB`, `2GiB`… (1MiB to 1TiB), or `default`.
    #[schema(
        pattern = "^([0-9]{1,13}(B|KiB|MiB|GiB|TiB)?|default)$",
        nullable = false
    )]
    pub log_max_bytes_per_site: Option<String>,
}

pub async fn show_settings(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    use service::Setting;
    let ws = &c.workspace()?.name;
    let v = service::workspace_settings(
        api.store.as_ref(),
        &api.config,
        ws,
        Setting::Keep,
        Setting::Keep,
        &c.audit_name(),
    )
    .await?;
    ok(StatusCode::OK, &v)
}

pub async fn change_settings(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    use service::Setting;
    let b: SettingsChange = body(raw).await?;
    let retention = Setting::parse("log_retention", b.log_retention.as_deref())?;
    let cap = Setting::parse(
        "log_max_bytes_per_site",
        b.log_max_bytes_per_site.as_deref(),
    )?;
    let ws = &c.workspace()?.name;
    let who = c.audit_name();
    let v = service::workspace_settings(api.store.as_ref(), &api.config, ws, retention, cap, &who)
        .await?;
    ok(StatusCode::OK, &v)
}

pub async fn list_members(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    let members = api
        .store
        .list_members(&c.workspace()?.id)
        .await?
        .into_iter()
        .map(|(login, roles)| Member { login, roles })
        .collect::<Vec<_>>();
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
    crate::notify::Notifier::new(api.store.clone(), &api.config)
        .added_event(ws, &b.login, &roles)
        .await;
    ok(
        StatusCode::CREATED,
        &Membership {
            workspace: ws.clone(),
            login: b.login,
            roles,
        },
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
        &Membership {
            workspace: ws.clone(),
            login: login.clone(),
            roles,
        },
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
    let (store, ws) = (api.store.as_ref(), &c.workspace()?.name);
    let (api_url, git_url) = (b.api_url.as_deref(), b.git_url.as_deref());
    let region = b.region.as_deref();
    let conn = if b.create_hook {
        crate::hooks::connect_with_hook(store, &api.config, ws, &b.repo, api_url, git_url, region)
            .await?
    } else {
        service::connect_repo_in(store, &api.config, ws, &b.repo, api_url, git_url, region).await?
    };
    ok(StatusCode::CREATED, &conn)
}

/// The connection the path names, when it belongs to the path's workspace.
/// The connection `id`, when it belongs to the caller's workspace (else 404).
async fn own_connection(
    api: &Api,
    c: &Caller,
    id: &str,
) -> Result<crate::store::Connection, ApiError> {
    match api.store.connection(&id.into()).await? {
        Some(conn) if conn.workspace_id == c.workspace()?.id => Ok(conn),
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
    let r =
        crate::hooks::rotate_with_hook(api.store.as_ref(), &api.config, id, b.retire_old).await?;
    ok(StatusCode::OK, &r)
}

pub async fn delete_connection(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    let id = &params["connection_id"];
    own_connection(&api, &c, id).await?;
    let keep_hook = match q.get("keep_hook").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid("keep_hook: true or false")),
    };
    crate::hooks::delete_with_hook(api.store.as_ref(), &api.config, id, keep_hook).await?;
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
    api.sites
        .create(
            &b.name,
            &c.workspace()?.name,
            b.region.as_deref(),
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

pub async fn list_previews(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    use crate::previews::{PreviewState, story};
    let repo = q.get("repo").map(String::as_str);
    let repo_ok = |r: &str| {
        r.len() <= 255
            && r.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_./-".contains(&b))
    };
    if let Some(r) = repo
        && !repo_ok(r)
    {
        return Err(ApiError::invalid(format!(
            "repo `{}` is not owner/name or a connection id",
            r.escape_debug()
        )));
    }
    let state = match q.get("state") {
        None => None,
        Some(s) => Some(PreviewState::parse(s).ok_or_else(|| {
            ApiError::invalid(format!("unknown preview state `{}`", s.escape_debug()))
        })?),
    };
    let filter = story::Filter {
        workspace: Some(&c.workspace()?.id),
        repo,
        state,
    };
    ok(
        StatusCode::OK,
        &story::list(api.store.as_ref(), &api.config, &filter).await?,
    )
}

pub async fn show_preview(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Res {
    let id = &params["connection_id"];
    let number: i64 = params["number"]
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::invalid("number must be a positive integer"))?;
    let conn = own_connection(&api, &c, id).await?;
    ok(
        StatusCode::OK,
        &crate::previews::story::show(api.store.as_ref(), &api.config, &conn, number).await?,
    )
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
    api.sites
        .same_region(&c.site()?.name, b.region.as_deref())
        .await?;
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
    ok(
        StatusCode::OK,
        &SiteTags {
            site: site.name.clone(),
            tags,
        },
    )
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

pub async fn extend(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: ExtendRequest = body(raw).await?;
    let by: crate::duration::HumanDuration =
        b.by.parse()
            .map_err(|e| ApiError::invalid(format!("by: {e}")))?;
    if by.0.is_zero() {
        return Err(ApiError::invalid("by: a duration above zero, like 24h"));
    }
    // Never more than the cap (the expiry is cut to it anyway; a huge value must not wrap).
    let by = crate::duration::HumanDuration(by.0.min(api.config.previews.max_ttl.0));
    let site = c.site()?;
    let not_preview = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_a_preview",
            format!(
                "site {} is not a live pull request preview: it has no expiry to extend",
                site.name
            ),
        )
    };
    let preview = api
        .store
        .preview_by_site_name(&site.name)
        .await?
        .ok_or_else(not_preview)?;
    let conn = api
        .store
        .connection(&preview.connection_id)
        .await?
        .ok_or_else(not_preview)?;
    let done = api
        .runner()
        .await
        .extend(&conn, preview.number as u64, by.0)
        .await
        .map_err(|e| ApiError::from(crate::store::StoreError::Unavailable(e.to_string())))?
        .ok_or_else(not_preview)?;
    ok(
        StatusCode::OK,
        &ExtendedView {
            site: site.name.clone(),
            expires_at: done.expires_at,
            expires: crate::duration::format_utc(done.expires_at),
            capped: done.capped,
        },
    )
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
        &SiteProtection {
            site: site.name.clone(),
            protected: b.protected,
        },
    )
}

pub async fn show_access(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    let site = c.site()?;
    let v = crate::access::view(
        api.store.as_ref(),
        api.store.keyring(),
        &site.name,
        &site.id,
    )
    .await?;
    ok(StatusCode::OK, &v)
}

pub async fn change_access(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: crate::access::AccessChange = body(raw).await?;
    let site = c.site()?;
    let v = crate::access::change(
        api.store.as_ref(),
        api.store.keyring(),
        &site.name,
        &site.id,
        &b,
    )
    .await?;
    if !b.is_empty() {
        let limits =
            crate::service::log_limits(api.store.as_ref(), &api.config, &site.workspace_id).await?;
        crate::logs::Logs::new(&logs_root(&api), limits).write(
            &site.id,
            crate::logs::Entry::now(
                crate::logs::Service::Endor,
                None,
                format!("access changed by {}: {}", c.audit_name(), v.summary()),
            )
            .with("event", "access"),
        );
    }
    ok(StatusCode::OK, &v)
}

/// A comma-separated list of log services.
pub const LOG_SERVICES_PATTERN: &str = "^(build|web|exec|access|error|endor|postgres|mariadb)(,(build|web|exec|access|error|endor|postgres|mariadb)){0,7}$";
/// `10m` (ago: `s`, `m`, `h`, `d`) or an RFC 3339 time.
pub const LOG_TIME_PATTERN: &str = "^([0-9]{1,9}[smhd]|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))$";
pub const LOG_GREP_PATTERN: &str = "^[^\\x00-\\x1f]{1,200}$";
pub const LOG_LINES_PATTERN: &str = "^[1-9][0-9]{0,4}$";
pub const BOOL_PATTERN: &str = "^(true|false)$";

/// Lines a JSON reply (or the start of a follow) holds when `n` is not given.
const LOG_LINES_DEFAULT: usize = 1000;
/// A follow stream ends after this; an `EventSource` reconnects with `Last-Event-ID` and
/// misses nothing (and a server shutting down never waits long for its followers).
const FOLLOW_FOR: std::time::Duration = std::time::Duration::from_secs(60);
/// At most this many lines per read of a follow.
const FOLLOW_BATCH: usize = 10_000;

/// One line of a site's log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogLine {
    /// Resumes right after this line (`Last-Event-ID` of a follow).
    id: String,
    /// Milliseconds since the Unix epoch.
    time: i64,
    #[schema(pattern = "^(build|web|exec|access|error|endor|postgres|mariadb)$")]
    service: String,
    /// `stdout` or `stderr` for a process's output.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<String>,
    text: String,
    /// Structured parts (an access line's status, visitor, bytes…).
    #[schema(value_type = Object)]
    fields: serde_json::Map<String, serde_json::Value>,
    /// The site's name (a workspace's lines).
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    site: Option<String>,
}

impl LogLine {
    fn of_site(mut self, site: String) -> Self {
        self.site = Some(site);
        self
    }
}

impl From<crate::logs::Record> for LogLine {
    fn from(r: crate::logs::Record) -> Self {
        let stream = r.entry.stream.map(|s| {
            match s {
                crate::logs::Stream::Stdout => "stdout",
                crate::logs::Stream::Stderr => "stderr",
            }
            .to_string()
        });
        Self {
            id: r.id,
            time: r.entry.time,
            service: r.entry.service.to_string(),
            stream,
            text: r.entry.text,
            fields: r.entry.fields,
            site: None,
        }
    }
}

/// `GET /sites/{site}/logs`: the site's log lines, interleaved by time (the last `n`, 1000 by
/// default); with `follow=true` and `Accept: text/event-stream`, Server-Sent Events as lines
/// come, resumable with `Last-Event-ID`.
/// What a log reader asked for (`service`, `since`, `until`, `grep`, `n`, `follow` and the
/// `Accept` and `Last-Event-ID` headers), checked.
struct LogQuery {
    services: Vec<crate::logs::Service>,
    filter: crate::logs::Filter,
    n: usize,
    /// Follow as Server-Sent Events (`follow=true` with `Accept: text/event-stream`).
    sse: bool,
    /// Where a reconnecting follower was (`Last-Event-ID`).
    resume: Option<String>,
}

impl LogQuery {
    fn parse(
        q: &HashMap<String, String>,
        headers: &axum::http::HeaderMap,
        retention: std::time::Duration,
    ) -> Result<Self, ApiError> {
        use crate::logs::{Filter, Service};
        let services = match q.get("service") {
            None => Service::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(Service::named)
                .collect::<Result<Vec<_>, _>>()
                .map_err(ApiError::invalid)?,
        };
        let now = crate::now_ms();
        let time = |k: &str| {
            q.get(k)
                .map(|t| {
                    crate::logs::parse_time(t, now)
                        .map_err(|e| ApiError::invalid(format!("{k}: {e}")))
                })
                .transpose()
        };
        let grep = q.get("grep").cloned();
        if grep
            .as_deref()
            .is_some_and(|g| g.is_empty() || g.len() > 200 || g.chars().any(char::is_control))
        {
            return Err(ApiError::invalid(
                "grep: 1-200 characters, no control characters",
            ));
        }
        let filter = Filter {
            since: time("since")?,
            until: time("until")?,
            grep,
        }
        .within(retention, now);
        let n = match q.get("n") {
            None => LOG_LINES_DEFAULT,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=99_999).contains(n))
                .ok_or_else(|| ApiError::invalid("n: a number of lines, 1-99999"))?,
        };
        let follow = match q.get("follow").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(ApiError::invalid("follow: true or false")),
        };
        let sse = follow
            && headers
                .get(axum::http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/event-stream"));
        let resume = headers
            .get("last-event-id")
            .map(|v| {
                v.to_str()
                    .map(str::to_string)
                    .map_err(|_| ApiError::invalid("Last-Event-ID: not text"))
            })
            .transpose()?;
        Ok(Self {
            services,
            filter,
            n,
            sse,
            resume,
        })
    }
}

fn logs_root(api: &Api) -> std::path::PathBuf {
    std::path::absolute(&api.config.storage.logs)
        .unwrap_or_else(|_| api.config.storage.logs.clone())
}

fn log_read_failed(e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "reading logs");
    ApiError::internal("reading the logs failed")
}

pub async fn site_logs(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Res {
    let site = c.site()?;
    // The caller's site is at hand: its workspace's limits, without reading the site again.
    let limits =
        crate::service::log_limits(api.store.as_ref(), &api.config, &site.workspace_id).await?;
    let site = site.id.clone();
    logs_reply(api, LogSource::Site(site), limits.retention, &q, &headers).await
}

/// Every site of a workspace's lines, merged by time, each with its site's name; followed as
/// Server-Sent Events like a site's (a site made while following comes in from its start).
pub async fn workspace_logs(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Res {
    let ws = c.workspace()?.id.clone();
    let limits = crate::service::log_limits(api.store.as_ref(), &api.config, &ws).await?;
    logs_reply(
        api,
        LogSource::Workspace(ws),
        limits.retention,
        &q,
        &headers,
    )
    .await
}

/// Whose logs a reader reads: one site's, or every site's of a workspace (listed again at
/// each look of a follower, so new sites join and deleted ones leave).
#[derive(Clone)]
enum LogSource {
    Site(crate::ids::SiteId),
    Workspace(crate::ids::WorkspaceId),
}

type SiteNames = HashMap<crate::ids::SiteId, String>;

impl LogSource {
    /// The sites to read, and their names when lines are to carry them.
    async fn sites(
        &self,
        api: &Api,
    ) -> Result<(Vec<crate::ids::SiteId>, Option<SiteNames>), ApiError> {
        match self {
            Self::Site(id) => Ok((vec![id.clone()], None)),
            Self::Workspace(ws) => {
                let list = api.sites.list(Some(ws), None).await?;
                let names = list
                    .iter()
                    .map(|s| (s.id.clone(), s.name.clone()))
                    .collect();
                Ok((list.into_iter().map(|s| s.id).collect(), Some(names)))
            }
        }
    }
}

fn log_lines(
    lines: Vec<(crate::ids::SiteId, crate::logs::Record)>,
    names: &Option<SiteNames>,
) -> Vec<LogLine> {
    lines
        .into_iter()
        .map(|(site, r)| {
            let line = LogLine::from(r);
            match names {
                Some(names) => line.of_site(names.get(&site).cloned().unwrap_or_default()),
                None => line,
            }
        })
        .collect()
}

/// The lines a reader asked for: JSON (the last `n`), or Server-Sent Events that resume
/// after `Last-Event-ID` (the [`crate::logs::Cursors`] of the last line received).
async fn logs_reply(
    api: Arc<Api>,
    source: LogSource,
    retention: std::time::Duration,
    q: &HashMap<String, String>,
    headers: &axum::http::HeaderMap,
) -> Res {
    use crate::logs::Cursors;
    let LogQuery {
        services,
        filter,
        n,
        sse,
        resume,
    } = LogQuery::parse(q, headers, retention)?;
    let root = logs_root(&api);
    let (ids, names) = source.sites(&api).await?;
    if !sse {
        let (lines, _) = crate::logs::read_sites_since(&root, &ids, &services, &filter, Some(n))
            .map_err(log_read_failed)?;
        return ok(StatusCode::OK, &log_lines(lines, &names));
    }
    // Where to start: after the last event the client saw, or the last `n` lines.
    let resume = resume
        .map(|v| Cursors::parse(&v).map_err(|e| ApiError::invalid(format!("Last-Event-ID: {e}"))))
        .transpose()?;
    let (first, cursors) = match resume {
        Some(from) => crate::logs::read_sites(&root, &ids, &services, &from, &filter, FOLLOW_BATCH),
        None => crate::logs::read_sites_since(&root, &ids, &services, &filter, Some(n)),
    }
    .map_err(log_read_failed)?;
    let first = log_lines(first, &names);
    let next = move |cursors: Cursors| {
        let (api, source, root, services, filter) = (
            api.clone(),
            source.clone(),
            root.clone(),
            services.clone(),
            filter.clone(),
        );
        async move {
            let Ok((ids, names)) = source.sites(&api).await else {
                return (Vec::new(), cursors);
            };
            match crate::logs::read_sites(&root, &ids, &services, &cursors, &filter, FOLLOW_BATCH) {
                Ok((lines, cursors)) => (log_lines(lines, &names), cursors),
                Err(_) => (Vec::new(), cursors),
            }
        }
    };
    Ok(follow_stream(first, cursors, next).into_response())
}

/// Server-Sent Events: `first`, then what `next` reads from where the last read ended (looked
/// for every 50 ms), each line with the id that resumes after it; ends after [`FOLLOW_FOR`].
fn follow_stream<C, F, Fut>(
    first: Vec<LogLine>,
    cursor: C,
    next: F,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
>
where
    C: Send + 'static,
    F: Fn(C) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = (Vec<LogLine>, C)> + Send,
{
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    let until = tokio::time::Instant::now() + FOLLOW_FOR;
    let batches = futures_util::stream::unfold(
        (Some(first), cursor, next, false),
        move |(first, cursor, next, behind)| async move {
            let (lines, cursor) = match first {
                Some(lines) => (lines, cursor),
                None => {
                    // A follower behind (its last read was a full batch) reads on at once.
                    if !behind {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    if tokio::time::Instant::now() >= until {
                        return None;
                    }
                    next(cursor).await
                }
            };
            let behind = lines.len() >= FOLLOW_BATCH;
            Some((lines, (None, cursor, next, behind)))
        },
    );
    let events = batches.flat_map(|lines| {
        futures_util::stream::iter(lines.into_iter().map(|l| {
            let id = l.id.clone();
            let data = serde_json::to_string(&l).unwrap_or_default();
            Ok(Event::default().id(id).data(data))
        }))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// One argument of an ad-hoc command: 1-4096 characters, no NUL.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct ExecArg(String);

impl utoipa::PartialSchema for ExecArg {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[^\\x00]{1,4096}$"))
            .min_length(Some(1))
            .max_length(Some(4096))
            .description(Some("One argument: 1-4096 characters, no NUL"))
            .into()
    }
}

impl utoipa::ToSchema for ExecArg {}

/// `POST /sites/{site}/exec`: the command, as a program and its arguments (no shell between;
/// ask for one: `["sh", "-c", "…"]`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    #[schema(min_items = 1, max_items = 256)]
    pub command: Vec<ExecArg>,
}

/// One JSON line of an exec's reply: output as it comes (`stream` and `text`), output the
/// caller read too slowly for (`dropped`), and last how the command ended (`exit_code` and
/// `killed`) or why it could not run (`error`).
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ExecEvent {
    /// `stdout` or `stderr`.
    #[schema(pattern = "^(stdout|stderr)$", nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<&'static str>,
    /// Output, as written (bytes that are not UTF-8 replaced).
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    /// Bytes of output not sent: the caller read slower than the command wrote (the `exec`
    /// log keeps them, up to `runtime.output_cap`).
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped: Option<u64>,
    /// Last line: the command ended (its exit code; null when a signal or endor ended it).
    #[serde(skip_serializing_if = "Option::is_none")]
    done: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    /// Why endor ended it (memory, disk).
    #[serde(skip_serializing_if = "Option::is_none")]
    killed: Option<String>,
    /// Last line: the command could not run.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Output lines an exec holds for a slow caller before it drops (and counts) output.
const EXEC_BACKLOG: usize = 256;

/// Text of output chunks that may split a UTF-8 character: an unfinished one waits for the
/// next chunk.
#[derive(Default)]
struct Utf8Carry(Vec<u8>);

impl Utf8Carry {
    fn text(&mut self, chunk: &[u8]) -> String {
        self.0.extend_from_slice(chunk);
        let keep = match std::str::from_utf8(&self.0) {
            Ok(_) => 0,
            // An unfinished character at the end (at most 3 bytes) waits.
            Err(e) if e.error_len().is_none() => self.0.len() - e.valid_up_to(),
            Err(_) => 0,
        };
        let rest = self.0.split_off(self.0.len() - keep);
        let text = String::from_utf8_lossy(&self.0).into_owned();
        self.0 = rest;
        text
    }
}

pub async fn exec(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>, raw: Body) -> Res {
    let b: ExecRequest = body(raw).await?;
    let argv: Vec<String> = b.command.into_iter().map(|a| a.0).collect();
    if argv.is_empty() || argv.len() > 256 {
        return Err(ApiError::invalid("command: 1-256 arguments"));
    }
    if argv
        .iter()
        .any(|a| a.is_empty() || a.chars().count() > 4096 || a.contains('\0'))
    {
        return Err(ApiError::invalid(
            "command: each argument 1-4096 bytes, no NUL",
        ));
    }
    let site = c.site()?.clone();
    if site.state != crate::store::SiteState::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("site {} is {}: nothing runs there", site.name, site.state),
        ));
    }
    let runner = api.runner().await;
    let limits =
        crate::service::log_limits(api.store.as_ref(), &api.config, &site.workspace_id).await?;
    runner.logs().set_limits(&site.id, limits);
    let who = c.audit_name();
    let (tx, rx) = tokio::sync::mpsc::channel::<ExecEvent>(EXEC_BACKLOG);
    let task = tokio::spawn(async move {
        let (mut out, mut err) = (Utf8Carry::default(), Utf8Carry::default());
        let mut dropped = 0u64;
        let ended = runner
            .exec(&site.name, &argv, &who, |pipe, chunk| {
                let (carry, stream) = match pipe {
                    crate::previews::Pipe::Out => (&mut out, "stdout"),
                    crate::previews::Pipe::Err => (&mut err, "stderr"),
                };
                let text = carry.text(chunk);
                if dropped > 0
                    && tx
                        .try_send(ExecEvent {
                            dropped: Some(dropped),
                            ..Default::default()
                        })
                        .is_ok()
                {
                    dropped = 0;
                }
                let event = ExecEvent {
                    stream: Some(stream),
                    text: Some(text),
                    ..Default::default()
                };
                // Never held up by a slow caller: what it cannot take now is counted (and
                // nothing is sent before the count of what was dropped, to keep the order).
                if dropped > 0 || tx.try_send(event).is_err() {
                    dropped += chunk.len() as u64;
                }
            })
            .await;
        let last = match ended {
            Ok(end) => ExecEvent {
                dropped: (dropped > 0).then_some(dropped),
                done: Some(true),
                exit_code: end.exit_code,
                killed: end.killed,
                ..Default::default()
            },
            Err(e) => ExecEvent {
                error: Some(e.to_string()),
                ..Default::default()
            },
        };
        let _ = tx.send(last).await;
    });
    // A caller that goes away ends the command (dropping the task kills its process).
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let guard = AbortOnDrop(task.abort_handle());
    let lines = futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((
            Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(line)),
            (rx, guard),
        ))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}
