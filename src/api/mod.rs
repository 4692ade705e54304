//! The JSON API under `/api/v1` (SPEC §2): bearer tokens, one route table, authorization by
//! construction, and the OpenAPI document built from the same table.
//!
//! Every route is a row of [`ROUTES`]: method, path, the roles it needs ([`Need`]) and its
//! handler. [`router`] mounts each row behind [`authorize`], which runs before the handler:
//! it turns the bearer token into a user (401 when missing, unknown or revoked), finds the
//! workspace the path names (`{ws}`, or the workspace of `{site}`), and refuses with 403 a
//! caller without one of the needed roles there. A handler cannot be mounted without a row,
//! and a row cannot be written without a `Need`; `tests/api.rs` walks the table against every
//! kind of caller, and `/api/v1/openapi.json` is generated from it.
//!
//! The rules themselves (names, last owner, tags, protection, access settings) live in the
//! service layer (`crate::service`, `crate::sites`, `crate::access`), which the CLI calls too.

mod backups;
mod handlers;
mod openapi;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};

use crate::config::Config;
pub use crate::service::Role;
use crate::service::ServiceError;
use crate::sites::{SiteError, Sites};
use crate::store::{Site, Store, StoreError, User, Workspace};

pub use openapi::{LINKS, error_statuses, openapi, operation_id};

/// What the API's handlers share.
pub struct Api {
    pub store: Arc<dyn Store>,
    pub config: Config,
    pub sites: Sites,
    pub backups: crate::backups::Backups,
    /// Runs ad-hoc commands in sites' sandboxes (made at the first `exec`).
    runner: tokio::sync::OnceCell<Arc<crate::previews::Lifecycle>>,
}

impl Api {
    pub fn new(store: Arc<dyn Store>, config: &Config) -> Arc<Self> {
        Arc::new(Self {
            sites: Sites::new(store.clone(), config),
            backups: crate::backups::Backups::new(store.clone(), config),
            store,
            config: config.clone(),
            runner: Default::default(),
        })
    }

    async fn runner(&self) -> Arc<crate::previews::Lifecycle> {
        self.runner
            .get_or_init(|| async {
                crate::previews::Lifecycle::standalone(self.store.clone(), &self.config)
            })
            .await
            .clone()
    }
}

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any valid token (routes about the caller themself).
    Token,
    /// One of these roles in the workspace the path names.
    Roles(&'static [Role]),
}

const OWNER: Need = Need::Roles(&[Role::Owner]);
const DEVELOPER: Need = Need::Roles(&[Role::Developer]);
const MEMBERS: Need = Need::Roles(&[Role::Owner, Role::Developer]);
const BILLING: Need = Need::Roles(&[Role::Owner, Role::Billing]);

type Handler = fn(MethodFilter) -> MethodRouter<Arc<Api>>;

/// A route's JSON request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyDoc {
    /// Its schema (a component of the OpenAPI document).
    pub schema: &'static str,
    /// Must a body be sent? (An optional one reads as `{}` when empty.)
    pub required: bool,
}

const fn required(schema: &'static str) -> Option<BodyDoc> {
    Some(BodyDoc {
        schema,
        required: true,
    })
}

const fn optional(schema: &'static str) -> Option<BodyDoc> {
    Some(BodyDoc {
        schema,
        required: false,
    })
}

/// A query parameter: name, pattern, description.
pub type QueryDoc = (&'static str, &'static str, &'static str);

/// An error a route sends beyond those every route of its kind sends (401; 400 for a body,
/// path or query; 403 and 404 for a role-checked route; 413 for a body): the status and the
/// `error.code`s it comes with.
pub type ErrorDoc = (u16, &'static [&'static str]);

/// One row of the route table.
pub struct ApiRoute {
    pub method: Method,
    /// Relative to `/api/v1`, axum syntax (`{param}`).
    pub path: &'static str,
    pub need: Need,
    pub summary: &'static str,
    /// The status of a successful call.
    pub ok: StatusCode,
    /// The success body's schema (a component; `Name[]` for an array of them), `None` for 204.
    pub reply: Option<&'static str>,
    /// The JSON body it takes, if any.
    pub body: Option<BodyDoc>,
    pub query: &'static [QueryDoc],
    pub errors: &'static [ErrorDoc],
    /// The success body's media type.
    pub media: &'static str,
    handler: Handler,
}

macro_rules! route {
    ($method:ident $path:literal, $need:expr, $ok:ident => $reply:expr, body $body:expr, query $query:expr, errors $errors:expr, $summary:literal, $h:path) => {
        route!($method $path, $need, $ok => $reply, media "application/json", body $body, query $query, errors $errors, $summary, $h)
    };
    ($method:ident $path:literal, $need:expr, $ok:ident => $reply:expr, media $media:literal, body $body:expr, query $query:expr, errors $errors:expr, $summary:literal, $h:path) => {
        ApiRoute {
            method: Method::$method,
            path: $path,
            need: $need,
            summary: $summary,
            ok: StatusCode::$ok,
            reply: $reply,
            body: $body,
            query: $query,
            errors: $errors,
            media: $media,
            handler: |m| axum::routing::on(m, $h),
        }
    };
}

use backups as b;
use handlers as h;

const NONE: &[ErrorDoc] = &[];
const NO_QUERY: &[QueryDoc] = &[];
const CONFLICT: &[ErrorDoc] = &[(409, &["conflict"])];
const LAST_OWNER: &[ErrorDoc] = &[(409, &["last_owner"])];
const BUSY: &[ErrorDoc] = &[(409, &["busy"])];
const CREATE_SITE: &[ErrorDoc] = &[(409, &["conflict", "busy"])];
const GUARDED: &[ErrorDoc] = &[(409, &["protected", "busy"])];
const BACKUP: &[ErrorDoc] = &[
    (409, &["busy", "not_configured"]),
    (502, &["backup_failed"]),
];
const RESTORE: &[ErrorDoc] = &[
    (409, &["protected", "busy", "not_configured"]),
    (502, &["backup_failed"]),
];
const BACKUPS_OFF: &[ErrorDoc] = &[(409, &["not_configured"])];
const FORGE: &[ErrorDoc] = &[(502, &["forge_failed"])];

/// What a log reader may ask (a site's or a workspace's).
const LOG_QUERY: &[QueryDoc] = &[
    (
        "service",
        handlers::LOG_SERVICES_PATTERN,
        "Only these services, comma-separated (default: all)",
    ),
    (
        "since",
        handlers::LOG_TIME_PATTERN,
        "Lines from this time on: 10m (ago) or an RFC 3339 time",
    ),
    (
        "until",
        handlers::LOG_TIME_PATTERN,
        "Lines before this time: 1h (ago) or an RFC 3339 time",
    ),
    (
        "grep",
        handlers::LOG_GREP_PATTERN,
        "Only lines containing this text (in the line or a field)",
    ),
    (
        "n",
        handlers::LOG_LINES_PATTERN,
        "The last N lines (default 1000)",
    ),
    (
        "follow",
        handlers::BOOL_PATTERN,
        "With Accept: text/event-stream: Server-Sent Events as lines come (a workspace's: sites made meanwhile included), resumable with Last-Event-ID; a stream ends after 60 s",
    ),
];

/// Every route of the API. Adding a route means adding a row here, with the roles it needs.
pub static ROUTES: &[ApiRoute] = &[
    route!(GET "/me", Need::Token, OK => Some("Me"), body None, query NO_QUERY, errors NONE,
        "The caller and their workspaces with roles", h::me),
    route!(GET "/tokens", Need::Token, OK => Some("ApiToken[]"), body None, query NO_QUERY, errors NONE,
        "The caller's API tokens (never the tokens themselves)", h::list_tokens),
    route!(DELETE "/tokens/{token_id}", Need::Token, NO_CONTENT => None, body None, query NO_QUERY, errors &[(404, &["not_found"])],
        "Revoke one of the caller's tokens", h::revoke_token),
    route!(GET "/workspaces", Need::Token, OK => Some("WorkspaceRoles[]"), body None, query NO_QUERY, errors NONE,
        "Workspaces the caller is a member of", h::list_workspaces),
    route!(POST "/workspaces", Need::Token, CREATED => Some("Workspace"), body required("NewWorkspace"), query NO_QUERY, errors CONFLICT,
        "Create a workspace; the caller is its first owner", h::create_workspace),
    route!(PATCH "/workspaces/{ws}", OWNER, OK => Some("Workspace"), body required("RenameWorkspace"), query NO_QUERY, errors CONFLICT,
        "Rename a workspace", h::rename_workspace),
    route!(GET "/workspaces/{ws}/members", MEMBERS, OK => Some("Member[]"), body None, query NO_QUERY, errors NONE,
        "Members and their roles", h::list_members),
    route!(POST "/workspaces/{ws}/members", OWNER, CREATED => Some("Membership"), body required("NewMember"), query NO_QUERY, errors CONFLICT,
        "Add an existing user with roles", h::add_member),
    route!(PUT "/workspaces/{ws}/members/{login}", OWNER, OK => Some("Membership"), body required("MemberRoles"), query NO_QUERY, errors LAST_OWNER,
        "Replace a member's roles (the last owner keeps owner)", h::set_member_roles),
    route!(DELETE "/workspaces/{ws}/members/{login}", OWNER, NO_CONTENT => None, body None, query NO_QUERY, errors LAST_OWNER,
        "Remove a member (never the last owner)", h::remove_member),
    route!(GET "/workspaces/{ws}/connections", MEMBERS, OK => Some("ConnectionInfo[]"), body None, query NO_QUERY, errors NONE,
        "Connected repositories", h::list_connections),
    route!(POST "/workspaces/{ws}/connections", OWNER, CREATED => Some("Connected"), body required("NewConnection"), query NO_QUERY, errors FORGE,
        "Connect a repository: webhook URL and secret (shown once); with create_hook, the forge's webhook made through its API", h::connect),
    route!(POST "/workspaces/{ws}/connections/{connection_id}/rotate-secret", OWNER, OK => Some("Rotated"), body optional("RotateSecret"), query NO_QUERY, errors FORGE,
        "Issue a new webhook secret (given to the forge's webhook endor made), or retire the previous one", h::rotate_secret),
    route!(DELETE "/workspaces/{ws}/connections/{connection_id}", OWNER, NO_CONTENT => None, body None,
        query &[("keep_hook", handlers::BOOL_PATTERN, "Leave the forge's webhook endor made in place (default: removed)")], errors FORGE,
        "Delete a connection (and the forge's webhook endor made)", h::delete_connection),
    route!(GET "/workspaces/{ws}/sites", MEMBERS, OK => Some("SiteDetails[]"), body None,
        query &[("tag", handlers::TAG_PATTERN, "Only sites with this tag (case-insensitive)")], errors NONE,
        "Sites of a workspace (`?tag=` filters)", h::list_sites),
    route!(POST "/workspaces/{ws}/sites", DEVELOPER, CREATED => Some("SiteDetails"), body required("NewSite"), query NO_QUERY, errors CREATE_SITE,
        "Create an empty site", h::create_site),
    route!(GET "/workspaces/{ws}/usage", BILLING, OK => Some("UsageReport"), body None,
        query &[("month", handlers::MONTH_PATTERN, "The month, YYYY-MM (default: this one)")], errors NONE,
        "Usage and cost per site for a month (`?month=YYYY-MM`)", h::usage),
    route!(GET "/workspaces/{ws}/logs", MEMBERS, OK => Some("LogLine[]"), body None,
        query LOG_QUERY,
        errors NONE,
        "Every site's log lines, interleaved by time, each with its site", h::workspace_logs),
    route!(GET "/workspaces/{ws}/settings", MEMBERS, OK => Some("WorkspaceSettingsView"), body None, query NO_QUERY, errors NONE,
        "The workspace's own settings (log retention and cap) and what applies", h::show_settings),
    route!(PATCH "/workspaces/{ws}/settings", OWNER, OK => Some("WorkspaceSettingsView"), body required("SettingsChange"), query NO_QUERY, errors NONE,
        "Change the workspace's log retention or cap (`default`: back to the config's)", h::change_settings),
    route!(GET "/workspaces/{ws}/previews", MEMBERS, OK => Some("PreviewLine[]"), body None,
        query &[("repo", handlers::REPO_PATTERN, "Only this repository's (owner/name, any case, or a connection id)"),
                ("state", handlers::PREVIEW_STATE_PATTERN, "Only previews in this state")], errors NONE,
        "Every preview of the workspace, failed and destroyed ones included, newest activity first", h::list_previews),
    route!(GET "/workspaces/{ws}/connections/{connection_id}/previews/{number}", MEMBERS, OK => Some("PreviewStory"), body None, query NO_QUERY, errors NONE,
        "A preview's story: state, failure, steps, deliveries, and what endor posted or would post", h::show_preview),
    route!(GET "/sites/{site}", MEMBERS, OK => Some("SiteDetails"), body None, query NO_QUERY, errors NONE,
        "A site: state, URL, databases, parent, tags, expiry, strategies", h::show_site),
    route!(DELETE "/sites/{site}", DEVELOPER, NO_CONTENT => None, body optional("Bypass"), query NO_QUERY, errors GUARDED,
        "Delete a site and everything it owns", h::delete_site),
    route!(POST "/sites/{site}/clone", DEVELOPER, CREATED => Some("OperationReport"), body required("CloneRequest"), query NO_QUERY, errors GUARDED,
        "Clone the site into a new (or existing) site", h::clone_site),
    route!(POST "/sites/{site}/sync", DEVELOPER, OK => Some("OperationReport"), body required("SyncRequest"), query NO_QUERY, errors GUARDED,
        "Replace the site's files and/or databases by a clone of another site", h::sync_site),
    route!(POST "/sites/{site}/snapshot", DEVELOPER, OK => Some("OperationReport"), body None, query NO_QUERY, errors BUSY,
        "Freeze a consistent generation", h::snapshot_site),
    route!(PUT "/sites/{site}/tags/{tag}", DEVELOPER, OK => Some("SiteTags"), body None, query NO_QUERY, errors NONE,
        "Add a tag", h::add_tag),
    route!(DELETE "/sites/{site}/tags/{tag}", DEVELOPER, OK => Some("SiteTags"), body None, query NO_QUERY, errors NONE,
        "Remove a tag", h::remove_tag),
    route!(PUT "/sites/{site}/protection", DEVELOPER, OK => Some("SiteProtection"), body required("Protection"), query NO_QUERY, errors NONE,
        "Turn production protection on or off (audited either way)", h::protect),
    route!(POST "/sites/{site}/extend", DEVELOPER, OK => Some("ExtendedView"), body required("ExtendRequest"), query NO_QUERY, errors &[(409, &["not_a_preview"])],
        "Keep a pull request's preview longer (capped at previews.max_ttl from now)", h::extend),
    route!(GET "/sites/{site}/logs", MEMBERS, OK => Some("LogLine[]"), body None,
        query LOG_QUERY,
        errors NONE,
        "A site's log lines, every service interleaved by time (build, web, exec, access, error, endor, postgres, mariadb)", h::site_logs),
    route!(POST "/sites/{site}/exec", DEVELOPER, OK => Some("ExecEvent"), media "application/x-ndjson", body required("ExecRequest"), query NO_QUERY, errors CONFLICT,
        "Run a command in the site's sandbox with its environment: its output streamed as JSON lines, then how it ended (logged in the site's `exec` log)", h::exec),
    route!(GET "/sites/{site}/access", MEMBERS, OK => Some("AccessView"), body None, query NO_QUERY, errors NONE,
        "HTTP access settings (generated credentials included)", h::show_access),
    route!(PATCH "/sites/{site}/access", DEVELOPER, OK => Some("AccessView"), body optional("AccessChange"), query NO_QUERY, errors NONE,
        "Change HTTP access settings", h::change_access),
    route!(GET "/sites/{site}/backups", MEMBERS, OK => Some("Backup[]"), body None, query NO_QUERY, errors NONE,
        "The site's backups, newest first, each with its newest drill", b::list_backups),
    route!(POST "/sites/{site}/backups", DEVELOPER, CREATED => Some("Backup"), body optional("NewBackup"), query NO_QUERY, errors BACKUP,
        "Back the site up now (files and every database, consistent while it serves), copied off-site when one is configured", b::create_backup),
    route!(POST "/sites/{site}/backups/{backup}/restore", DEVELOPER, OK => Some("Restored"), body optional("RestoreRequest"), query NO_QUERY, errors RESTORE,
        "Make the site's data (or, `into`, another site's, made when missing) what the backup holds; a protected target needs bypass_protection (audited)", b::restore_backup),
    route!(POST "/sites/{site}/backups/{backup}/verify", DEVELOPER, OK => Some("Verified"), body optional("ReadRequest"), query NO_QUERY, errors BACKUPS_OFF,
        "Read the backup back from its repository and check every file and table against its manifest", b::verify_backup),
    route!(POST "/sites/{site}/backups/drill", DEVELOPER, OK => Some("DrillReport"), body optional("ReadRequest"), query NO_QUERY, errors BACKUPS_OFF,
        "Restore the newest backup into a scratch site, check it against its manifest, remove it, and record the outcome", b::drill_site),
    route!(GET "/sites/{site}/backup-settings", MEMBERS, OK => Some("BackupSettings"), body None, query NO_QUERY, errors NONE,
        "Whether the site is backed up on schedule, and the retention policy that applies to it", b::show_backup_settings),
    route!(PATCH "/sites/{site}/backup-settings", DEVELOPER, OK => Some("BackupSettings"), body required("BackupSettingsChange"), query NO_QUERY, errors NONE,
        "Turn scheduled backups on or off (or back to the default), set the site's retention policy", b::change_backup_settings),
    route!(GET "/workspaces/{ws}/backup-retention", MEMBERS, OK => Some("RetentionView"), body None, query NO_QUERY, errors NONE,
        "The retention policy the workspace sets for its sites' backups, and what applies", b::show_workspace_retention),
    route!(PATCH "/workspaces/{ws}/backup-retention", OWNER, OK => Some("RetentionView"), body required("RetentionChange"), query NO_QUERY, errors NONE,
        "Set the workspace's retention policy (`default`: back to the config's)", b::change_workspace_retention),
];

/// Who is calling, resolved by [`authorize`] before the handler runs.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    /// The workspace the path names and the caller's roles there.
    pub workspace: Option<Workspace>,
    pub roles: Vec<String>,
    /// The site the path names.
    pub site: Option<Site>,
    /// `api` (a bearer token) or `web` (a dashboard session).
    pub via: &'static str,
}

/// A user the dashboard signed in (its session checked, its form's CSRF token too), put on
/// an in-process request to this API in place of a bearer token. Only code can set a request
/// extension: a client cannot send one.
#[derive(Debug, Clone)]
pub struct SignedIn(pub User);

impl Caller {
    /// `user`, calling through `via`, before the path is resolved.
    pub fn new(user: User, via: &'static str) -> Self {
        Self {
            user,
            workspace: None,
            roles: Vec::new(),
            site: None,
            via,
        }
    }

    /// How the caller is named in audit lines.
    pub fn audit_name(&self) -> String {
        format!("{}:{}", self.via, self.user.login)
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|r| r == role.as_str())
    }

    fn workspace(&self) -> Result<&Workspace, ApiError> {
        self.workspace
            .as_ref()
            .ok_or_else(|| ApiError::internal("route without a workspace"))
    }

    fn site(&self) -> Result<&Site, ApiError> {
        self.site
            .as_ref()
            .ok_or_else(|| ApiError::internal("route without a site"))
    }
}

/// The API's router: every row of [`ROUTES`] behind [`authorize`], the OpenAPI document, and
/// JSON 404/405 answers for the rest of `/api/v1`.
pub fn router(api: Arc<Api>) -> Router {
    let mut r: Router<Arc<Api>> = Router::new();
    let mut by_path: Vec<(&'static str, MethodRouter<Arc<Api>>)> = Vec::new();
    for route in ROUTES {
        let filter = MethodFilter::try_from(route.method.clone()).expect("a standard method");
        let mr = (route.handler)(filter).route_layer(axum::middleware::from_fn_with_state(
            (api.clone(), route.need),
            authorize,
        ));
        match by_path.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(mr),
            None => by_path.push((route.path, mr)),
        }
    }
    for (path, mr) in by_path {
        r = r.route(
            &format!("/api/v1{path}"),
            mr.fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "this path does not take that method",
                )
            }),
        );
    }
    r.route(
        "/api/v1/openapi.json",
        axum::routing::get(|| async { axum::Json(openapi()) }),
    )
    .route("/api/v1", axum::routing::any(not_found))
    .route("/api/v1/{*rest}", axum::routing::any(not_found))
    .layer(axum::middleware::map_response(json_errors))
    .with_state(api)
}

/// The code a framework rejection of this status gets.
fn rejection_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "invalid",
    }
}

/// Every error leaves the API as `{"error": {"code", "message"}}`: a rejection the framework
/// answers itself (a path segment that is not UTF-8, a bad query string...) is plain text, and
/// is turned into the JSON body with the same status and its text as the message.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        t => t.to_string(),
    };
    let mut out = crate::app::error_response(status, rejection_code(status), message);
    for name in [header::WWW_AUTHENTICATE, header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API route")
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The gate every route passes: token → user → (workspace, roles) → the route's [`Need`].
async fn authorize(
    State((api, need)): State<(Arc<Api>, Need)>,
    Path(params): Path<HashMap<String, String>>,
    mut req: Request,
    next: Next,
) -> Response {
    let signed_in = req.extensions().get::<SignedIn>().map(|s| s.0.clone());
    let via = if signed_in.is_some() { "web" } else { "api" };
    let user = match bearer(&req) {
        _ if signed_in.is_some() => signed_in,
        None => None,
        Some(token) => match crate::service::authenticate(api.store.as_ref(), token).await {
            Ok(u) => u,
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    let Some(user) = user else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is needed (endor user token LOGIN)",
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    };
    let mut caller = Caller::new(user, via);
    if let Need::Roles(roles) = need
        && let Err(e) = admit(&api, &params, &mut caller, roles).await
    {
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Resolve the workspace (and site) the path names into `caller`, and admit it only with one
/// of `roles` there: 404 for what does not exist, 403 naming the roles needed and those held.
/// The API's gate and the dashboard's both call it.
pub(crate) async fn admit(
    api: &Api,
    params: &HashMap<String, String>,
    caller: &mut Caller,
    roles: &[Role],
) -> Result<(), ApiError> {
    resolve(api, params, caller).await?;
    if roles.iter().any(|r| caller.has(*r)) {
        return Ok(());
    }
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    let ws = caller
        .workspace
        .as_ref()
        .map(|w| w.name.as_str())
        .unwrap_or("");
    let have = if caller.roles.is_empty() {
        "is not a member".to_string()
    } else {
        format!("has only {}", caller.roles.join(", "))
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "this needs the {} role in workspace {ws}; {} {have}",
            names.join(" or "),
            caller.user.login
        ),
    ))
}

/// The workspace (and site) the path names, and the caller's roles there.
async fn resolve(
    api: &Api,
    params: &HashMap<String, String>,
    caller: &mut Caller,
) -> Result<(), ApiError> {
    let store = api.store.as_ref();
    let ws = if let Some(name) = params.get("site") {
        let site = store
            .site_by_name(name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("site {name}")))?;
        let ws = store
            .workspace_by_id(&site.workspace_id)
            .await?
            .ok_or_else(|| ApiError::internal("site without a workspace"))?;
        caller.site = Some(site);
        ws
    } else if let Some(name) = params.get("ws") {
        store
            .workspace_by_name(name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("workspace {name}")))?
    } else {
        return Err(ApiError::internal(
            "a role-checked route names no workspace",
        ));
    };
    caller.roles = store.member_roles(&ws.id, &caller.user.id).await?;
    caller.workspace = Some(ws);
    Ok(())
}

/// `{"error": {"code", "message"}}` with a status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    fn internal(why: &str) -> Self {
        tracing::error!(why, "API internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (see the server log)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::app::error_response(self.status, self.code, self.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{what} already exists"),
            ),
            StoreError::NotFound(what) => Self::not_found(what),
            StoreError::LastOwner => Self::new(StatusCode::CONFLICT, "last_owner", e.to_string()),
            other => Self::internal(&other.to_string()),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(m) => Self::invalid(m),
            ServiceError::NotFound(what) => Self::not_found(what),
            ServiceError::Store(s) => s.into(),
        }
    }
}

impl From<crate::hooks::HookError> for ApiError {
    fn from(e: crate::hooks::HookError) -> Self {
        match e {
            crate::hooks::HookError::Service(s) => s.into(),
            crate::hooks::HookError::Forge(m) => {
                Self::new(StatusCode::BAD_GATEWAY, "forge_failed", m)
            }
        }
    }
}

impl From<SiteError> for ApiError {
    fn from(e: SiteError) -> Self {
        match e {
            SiteError::Invalid(m) => Self::invalid(m),
            SiteError::NotFound(what) => Self::not_found(what),
            SiteError::Protected(site, action) => Self::new(
                StatusCode::CONFLICT,
                "protected",
                format!(
                    "site {site} is protected: send \"bypass_protection\": true to {action} it"
                ),
            ),
            SiteError::Busy(m) => Self::new(StatusCode::CONFLICT, "busy", m),
            SiteError::Store(s) => s.into(),
            SiteError::Clone(c) => Self::internal(&c.to_string()),
        }
    }
}

impl From<crate::previews::story::StoryError> for ApiError {
    fn from(e: crate::previews::story::StoryError) -> Self {
        use crate::previews::story::StoryError as E;
        match e {
            E::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m),
            E::Invalid(m) => Self::invalid(m),
            E::Store(s) => s.into(),
        }
    }
}

impl From<crate::access::AccessError> for ApiError {
    fn from(e: crate::access::AccessError) -> Self {
        match e {
            crate::access::AccessError::Invalid(m) => Self::invalid(m),
            crate::access::AccessError::Store(s) => s.into(),
            other => Self::internal(&other.to_string()),
        }
    }
}
