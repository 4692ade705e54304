//! The dashboard (SPEC §14): server-rendered pages under `/` for people who live in a browser.
//!
//! Every page and form is a row of [`PAGES`]: method, path, who may use it ([`Access`]) and its
//! handler. [`router`] mounts each row behind one gate, which runs before the handler: it
//! finds the session from its cookie (a signed-out visitor is sent to `/sign-in`), checks the
//! CSRF token of every form, and admits the caller to the workspace or site the path names
//! with the API's own check (`api::admit`: 404, or 403 without one of the row's roles).
//! `tests/dashboard.rs` walks the table against every kind of caller and a written policy,
//! like the API's matrix.
//!
//! Pages read and change things through the JSON API itself, called in process with the
//! signed-in user ([`crate::api::SignedIn`]) in place of a bearer token: a form can do exactly
//! what the API lets its user do, with the API's checks and messages, and no rule is written
//! twice. Templates are in `templates/dashboard/`, compiled into the binary; nothing is loaded
//! from another host, and no page needs JavaScript except the live log.

pub mod auth;
mod pages;
mod views;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tower::ServiceExt;

use crate::api::{Api, Caller, Role, SignedIn};
use crate::store::{Session, User};

/// Who may use a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not (sign-in, invitations, unsubscribe links, assets).
    Anyone,
    /// Any signed-in user (pages about the user themself).
    SignedIn,
    /// One of these roles in the workspace the path names (`{ws}`, or `{site}`'s).
    Roles(&'static [Role]),
}

pub const OWNER: Access = Access::Roles(&[Role::Owner]);
pub const DEVELOPER: Access = Access::Roles(&[Role::Developer]);
pub const MEMBERS: Access = Access::Roles(&[Role::Owner, Role::Developer]);
pub const BILLING: Access = Access::Roles(&[Role::Owner, Role::Billing]);
pub const ANY_ROLE: Access = Access::Roles(&[Role::Owner, Role::Developer, Role::Billing]);

type PageFuture = Pin<Box<dyn Future<Output = Response> + Send>>;
type Handler = fn(Ctx) -> PageFuture;

/// One row of the page table.
pub struct Page {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    handler: Handler,
}

macro_rules! page {
    ($method:ident $path:literal, $access:expr, $summary:literal, $h:path) => {
        Page {
            method: Method::$method,
            path: $path,
            access: $access,
            summary: $summary,
            handler: |c| Box::pin($h(c)),
        }
    };
}

use pages as p;

/// Every page and form of the dashboard. Adding one means adding a row here, with who may use it.
pub static PAGES: &[Page] = &[
    page!(GET "/", Access::SignedIn, "Your workspaces", p::home),
    page!(GET "/sign-in", Access::Anyone, "Sign in", p::sign_in_page),
    page!(POST "/sign-in", Access::Anyone, "Sign in with login and password", p::sign_in),
    page!(POST "/sign-out", Access::SignedIn, "Sign out", p::sign_out),
    page!(GET "/invitations/{token}", Access::Anyone, "An invitation to a workspace", p::invitation_page),
    page!(POST "/invitations/{token}", Access::Anyone, "Accept an invitation (and set a password)", p::accept_invitation),
    page!(GET "/unsubscribe/{token}", Access::Anyone, "Stop mails of one kind", p::unsubscribe_page),
    page!(POST "/unsubscribe/{token}", Access::Anyone, "Stop mails of one kind (one click)", p::unsubscribe),
    page!(GET "/assets/endor.css", Access::Anyone, "The style sheet", p::css),
    page!(GET "/assets/endor.js", Access::Anyone, "The live log's script", p::js),
    page!(POST "/workspaces", Access::SignedIn, "Create a workspace", p::create_workspace),
    page!(GET "/notifications", Access::SignedIn, "Your notifications", p::notifications),
    page!(POST "/notifications/read", Access::SignedIn, "Mark notifications read", p::mark_read),
    page!(GET "/settings", Access::SignedIn, "Password, API tokens, notification preferences", p::settings),
    page!(POST "/settings/password", Access::SignedIn, "Change your password", p::change_password),
    page!(POST "/settings/tokens", Access::SignedIn, "Issue an API token", p::issue_token),
    page!(POST "/settings/tokens/{token_id}/revoke", Access::SignedIn, "Revoke an API token", p::revoke_token),
    page!(POST "/settings/notifications", Access::SignedIn, "Notification preferences", p::set_prefs),
    page!(GET "/w/{ws}", ANY_ROLE, "A workspace (its sites, or its usage for billing members)", p::workspace),
    page!(POST "/w/{ws}/rename", OWNER, "Rename the workspace", p::rename_workspace),
    page!(GET "/w/{ws}/sites", MEMBERS, "Sites: state, URL, tags, expiry, parent, protection", p::sites),
    page!(POST "/w/{ws}/sites", DEVELOPER, "Create a site", p::create_site),
    page!(GET "/w/{ws}/members", MEMBERS, "Members and their roles", p::members),
    page!(POST "/w/{ws}/members", OWNER, "Add a member", p::add_member),
    page!(POST "/w/{ws}/members/{login}/roles", OWNER, "Set a member's roles", p::set_roles),
    page!(POST "/w/{ws}/members/{login}/remove", OWNER, "Remove a member", p::remove_member),
    page!(POST "/w/{ws}/invitations", OWNER, "Invite someone by email", p::invite),
    page!(GET "/w/{ws}/repositories", MEMBERS, "Connected repositories", p::repositories),
    page!(POST "/w/{ws}/repositories", OWNER, "Connect a repository", p::connect),
    page!(GET "/w/{ws}/repositories/{connection_id}", MEMBERS, "A repository: webhook setup and recent deliveries", p::repository),
    page!(POST "/w/{ws}/repositories/{connection_id}/rotate", OWNER, "Rotate the webhook secret", p::rotate),
    page!(POST "/w/{ws}/repositories/{connection_id}/delete", OWNER, "Delete a connection", p::delete_connection),
    page!(GET "/w/{ws}/previews", MEMBERS, "Previews by pull request", p::previews),
    page!(GET "/w/{ws}/previews/{connection_id}/{number}", MEMBERS, "A preview and what endor posted", p::preview),
    page!(GET "/w/{ws}/usage", BILLING, "Usage and cost", p::usage),
    page!(GET "/s/{site}", MEMBERS, "A site: steps, logs, usage, backups, settings", p::site),
    page!(GET "/s/{site}/logs/live", MEMBERS, "The site's log as Server-Sent Events", p::live_logs),
    page!(POST "/s/{site}/clone", DEVELOPER, "Clone the site", p::clone_site),
    page!(POST "/s/{site}/sync", DEVELOPER, "Sync the site from another", p::sync_site),
    page!(POST "/s/{site}/snapshot", DEVELOPER, "Freeze a generation", p::snapshot),
    page!(POST "/s/{site}/tags", DEVELOPER, "Add a tag", p::add_tag),
    page!(POST "/s/{site}/tags/{tag}/remove", DEVELOPER, "Remove a tag", p::remove_tag),
    page!(POST "/s/{site}/protection", DEVELOPER, "Protect or unprotect", p::protect),
    page!(POST "/s/{site}/extend", DEVELOPER, "Keep a preview longer", p::extend),
    page!(POST "/s/{site}/access", DEVELOPER, "Password, address list, robots header", p::access),
    page!(POST "/s/{site}/delete", DEVELOPER, "Delete the site (its name typed to confirm)", p::delete_site),
    page!(POST "/s/{site}/backups", DEVELOPER, "Back up now", p::backup),
    page!(POST "/s/{site}/backups/{backup}/restore", DEVELOPER, "Restore a backup", p::restore),
    page!(POST "/s/{site}/backups/drill", DEVELOPER, "Drill the newest backup", p::drill),
];

/// What the pages share.
pub struct Dashboard {
    pub(crate) api: Arc<Api>,
    api_router: Router,
    pub(crate) attempts: auth::Attempts,
    templates: minijinja::Environment<'static>,
    /// Cookies carry `Secure` (the public URL is https).
    secure: bool,
}

/// What a handler gets: the dashboard, who is calling, the path's parameters, the query and
/// the form.
pub struct Ctx {
    pub dash: Arc<Dashboard>,
    pub session: Option<Session>,
    pub caller: Option<Caller>,
    pub params: HashMap<String, String>,
    pub query: HashMap<String, String>,
    pub form: HashMap<String, String>,
    pub headers: HeaderMap,
    /// The visitor's address (for the sign-in limit).
    pub peer: String,
    /// The flash message of the last form, shown once.
    pub flash: Option<(String, bool)>,
}

impl Ctx {
    pub fn user(&self) -> &User {
        &self
            .session
            .as_ref()
            .expect("a signed-in page has a session")
            .user
    }

    pub fn param(&self, k: &str) -> &str {
        self.params.get(k).map(String::as_str).unwrap_or_default()
    }

    pub fn field(&self, k: &str) -> &str {
        self.form.get(k).map(String::as_str).unwrap_or_default()
    }

    /// A call to the API as the signed-in user.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failed> {
        self.dash.api_call(self.user(), method, path, body).await
    }

    pub fn has(&self, role: Role) -> bool {
        self.caller.as_ref().is_some_and(|c| c.has(role))
    }
}

/// An API call that did not succeed: its status and message.
#[derive(Debug, Clone)]
pub struct Failed {
    pub status: StatusCode,
    pub message: String,
}

/// A path segment, percent-encoded (user text in an in-process API path).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Dashboard {
    pub fn new(api: Arc<Api>) -> Arc<Self> {
        let secure = api.config.server.public_url.starts_with("https://");
        let attempts = auth::Attempts::new(api.config.dashboard.sign_in_attempts);
        Arc::new(Self {
            api_router: crate::api::router(api.clone()),
            templates: views::environment(),
            attempts,
            secure,
            api,
        })
    }

    /// Call the JSON API in process as `user`.
    pub async fn api_call(
        &self,
        user: &User,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failed> {
        let resp = self
            .api_response(user, method, path, body, None, Vec::new())
            .await?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 256 << 20)
            .await
            .map_err(|e| Failed {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: e.to_string(),
            })?;
        if status.is_success() {
            return Ok(if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            });
        }
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Err(Failed {
            status,
            message: v["error"]["message"]
                .as_str()
                .unwrap_or(status.canonical_reason().unwrap_or("failed"))
                .to_string(),
        })
    }

    /// The API's raw response (a stream, for live logs).
    pub async fn api_response(
        &self,
        user: &User,
        method: Method,
        path: &str,
        body: Option<Value>,
        accept: Option<&str>,
        extra: Vec<(header::HeaderName, HeaderValue)>,
    ) -> Result<Response, Failed> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        for (k, v) in extra {
            req = req.header(k, v);
        }
        let mut req = req
            .body(match body {
                Some(v) => Body::from(v.to_string()),
                None => Body::empty(),
            })
            .map_err(|e| Failed {
                status: StatusCode::BAD_REQUEST,
                message: e.to_string(),
            })?;
        req.extensions_mut().insert(SignedIn(user.clone()));
        Ok(self
            .api_router
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| match e {}))
    }

    /// Render a template with `ctx` and the layout's values.
    pub fn render(&self, c: &Ctx, name: &str, title: &str, mut ctx: Value) -> Response {
        let t = match self.templates.get_template(name) {
            Ok(t) => t,
            Err(e) => return internal(&e.to_string()),
        };
        if let Value::Object(m) = &mut ctx {
            m.insert("title".into(), title.into());
            if let Some(s) = &c.session {
                m.insert("me".into(), s.user.login.clone().into());
                m.insert("csrf".into(), s.csrf.clone().into());
            }
            if let Some((text, ok)) = &c.flash {
                m.insert("flash".into(), serde_json::json!({"text": text, "ok": ok}));
            }
            if let Some(w) = c.caller.as_ref().and_then(|c| c.workspace.as_ref()) {
                m.entry("ws").or_insert_with(|| w.name.clone().into());
                let roles: Vec<&str> = c
                    .caller
                    .as_ref()
                    .map(|c| c.roles.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                m.insert("roles".into(), serde_json::json!(roles));
            }
        }
        match t.render(minijinja::Value::from_serialize(&ctx)) {
            Ok(html) => html_response(StatusCode::OK, html),
            Err(e) => internal(&format!("{e:#}")),
        }
    }
}

fn internal(why: &str) -> Response {
    tracing::error!(why, "dashboard page not rendered");
    html_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error</title></head><body><main><h1>Something went wrong</h1><p>The page could not be made; the server's log says why.</p></main></body></html>".into(),
    )
}

/// An HTML answer with the headers every page carries.
pub fn html_response(status: StatusCode, html: String) -> Response {
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    r
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// A cookie with the dashboard's flags (HttpOnly, SameSite=Lax, Secure behind HTTPS).
pub fn cookie(dash: &Dashboard, name: &str, value: &str, max_age_s: i64) -> HeaderValue {
    let secure = if dash.secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}"
    ))
    .expect("cookie text is ASCII")
}

/// 303 to `to` (a path of this site).
pub fn redirect(to: &str) -> Response {
    let to = local_path(to);
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&to).unwrap_or(HeaderValue::from_static("/")),
    );
    secure_headers(r.headers_mut());
    r
}

/// `to` when it is a path of this site, else `/` (no open redirect through `next=`).
pub fn local_path(to: &str) -> String {
    let ok = to.starts_with('/')
        && !to.starts_with("//")
        && !to.contains('\\')
        && !to.chars().any(|c| c.is_control());
    if ok { to.to_string() } else { "/".into() }
}

/// 303 back to `to` with a message shown once.
pub fn flash(dash: &Dashboard, to: &str, text: &str, ok: bool) -> Response {
    let mut r = redirect(to);
    use base64::Engine;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let v = format!("{}{encoded}", if ok { "1" } else { "0" });
    r.headers_mut()
        .append(header::SET_COOKIE, cookie(dash, "endor_flash", &v, 60));
    r
}

/// The value of cookie `name`.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A page saying no, with its status.
pub fn refusal(dash: &Dashboard, c: &Ctx, status: StatusCode, text: &str) -> Response {
    let mut r = dash.render(
        c,
        "message.html",
        status.canonical_reason().unwrap_or("Refused"),
        serde_json::json!({"message": text, "status": status.as_u16()}),
    );
    *r.status_mut() = status;
    r
}

/// The dashboard's router: every row of [`PAGES`] behind [`gate`].
pub fn router(api: Arc<Api>) -> Router {
    let dash = Dashboard::new(api);
    let mut by_path: Vec<(&'static str, axum::routing::MethodRouter)> = Vec::new();
    for (i, page) in PAGES.iter().enumerate() {
        let d = dash.clone();
        let filter =
            axum::routing::MethodFilter::try_from(page.method.clone()).expect("a standard method");
        let mr = axum::routing::on(filter, move |req: Request| gate(d.clone(), i, req));
        match by_path.iter_mut().find(|(p, _)| *p == page.path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(mr),
            None => by_path.push((page.path, mr)),
        }
    }
    let mut r = Router::new();
    for (path, mr) in by_path {
        r = r.route(path, mr);
    }
    r
}

/// The largest form accepted.
const MAX_FORM: usize = 1 << 20;

/// The gate every page passes: session → CSRF (forms) → workspace and roles → the handler.
async fn gate(dash: Arc<Dashboard>, index: usize, req: Request) -> Response {
    let page = &PAGES[index];
    let (mut parts, body) = req.into_parts();
    use axum::extract::{FromRequestParts, Path};
    let params: HashMap<String, String> =
        Path::<HashMap<String, String>>::from_request_parts(&mut parts, &())
            .await
            .map(|Path(p)| p)
            .unwrap_or_default();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let session = match cookie_value(&parts.headers, auth::SESSION_COOKIE) {
        Some(v) => dash
            .api
            .store
            .session(&auth::token_hash(v), crate::now_ms())
            .await
            .unwrap_or(None),
        None => None,
    };
    let flash = cookie_value(&parts.headers, "endor_flash").and_then(|v| {
        let ok = v.starts_with('1');
        use base64::Engine;
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.get(1..)?)
            .ok()?;
        let text = String::from_utf8(text).ok()?;
        Some((text, ok))
    });
    let mut c = Ctx {
        dash: dash.clone(),
        session,
        caller: None,
        params,
        query,
        form: HashMap::new(),
        headers: parts.headers.clone(),
        peer,
        flash,
    };
    if page.access != Access::Anyone && c.session.is_none() {
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let to = if page.method == Method::GET && next != "/" {
            format!("/sign-in?next={}", seg(next))
        } else {
            "/sign-in".into()
        };
        return redirect(&to);
    }
    if page.method == Method::POST {
        let bytes = match axum::body::to_bytes(body, MAX_FORM).await {
            Ok(b) => b,
            Err(_) => {
                return refusal(
                    &dash,
                    &c,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "This form is larger than 1 MiB.",
                );
            }
        };
        c.form = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
        let expected = match &c.session {
            Some(s) => Some(s.csrf.clone()),
            None => cookie_value(&c.headers, auth::PRE_COOKIE).map(str::to_string),
        };
        let sent = c.form.get("_csrf").map(String::as_str).unwrap_or_default();
        if !expected.is_some_and(|e| auth::same_token(&e, sent)) {
            return refusal(
                &dash,
                &c,
                StatusCode::FORBIDDEN,
                "This form did not carry the token of your session (it may be from an older page or another site). Reload the page and send it again.",
            );
        }
    }
    if let Access::Roles(roles) = page.access {
        let mut caller = Caller::new(c.user().clone(), "web");
        let admitted = crate::api::admit(&dash.api, &c.params, &mut caller, roles).await;
        c.caller = Some(caller);
        if let Err(e) = admitted {
            return refusal(&dash, &c, e.status, &e.message);
        }
    }
    let mut resp = (page.handler)(c).await;
    let sets_flash = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.as_bytes().starts_with(b"endor_flash="));
    if cookie_value(&parts.headers, "endor_flash").is_some() && !sets_flash {
        // Shown once: the page that showed it clears it.
        resp.headers_mut()
            .append(header::SET_COOKIE, cookie(&dash, "endor_flash", "", 0));
    }
    resp
}
