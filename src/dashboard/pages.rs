//! The dashboard's pages and forms: each reads or changes through the JSON API as the
//! signed-in user (see the module above), then renders a template or goes back with a message.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Ctx, Failed, auth, cookie, flash, redirect, refusal, seg};
use crate::api::Role;

/// Sites shown per page of the sites list.
pub const SITES_PER_PAGE: usize = 100;

fn failed_page(c: &Ctx, f: Failed) -> Response {
    refusal(&c.dash, c, f.status, &f.message)
}

/// Run a form's API call, then go back to `back` with what happened.
async fn act(
    c: &Ctx,
    method: Method,
    path: &str,
    body: Option<Value>,
    back: &str,
    done: &str,
) -> Response {
    match c.api(method, path, body).await {
        Ok(_) => flash(&c.dash, back, done, true),
        Err(f) => flash(&c.dash, back, &f.message, false),
    }
}

fn checked(c: &Ctx, k: &str) -> bool {
    matches!(c.field(k), "on" | "true" | "1" | "yes")
}

/// The roles a form offers, in the order it shows them (a box `role_{name}` each).
const ROLE_BOXES: [Role; 3] = [Role::Owner, Role::Developer, Role::Billing];

/// The roles ticked in a form.
fn roles_ticked(c: &Ctx) -> Vec<&'static str> {
    ROLE_BOXES
        .iter()
        .map(|r| r.as_str())
        .filter(|r| checked(c, &format!("role_{r}")))
        .collect()
}

fn ws(c: &Ctx) -> String {
    c.caller
        .as_ref()
        .and_then(|c| c.workspace.as_ref())
        .map(|w| w.name.clone())
        .unwrap_or_default()
}

/// The API path of the page's workspace, with `rest` after it (`/workspaces/acme/sites`).
fn ws_api(c: &Ctx, rest: &str) -> String {
    format!("/workspaces/{}{rest}", seg(&ws(c)))
}

/// A dashboard page of the page's workspace (`/w/acme/members`).
fn ws_page(c: &Ctx, rest: &str) -> String {
    format!("/w/{}{rest}", seg(&ws(c)))
}

fn site_name(c: &Ctx) -> String {
    c.caller
        .as_ref()
        .and_then(|c| c.site.as_ref())
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

// ---- signed out ----

pub async fn sign_in_page(c: Ctx) -> Response {
    let next = super::local_path(c.query.get("next").map(String::as_str).unwrap_or("/"));
    if c.session.is_some() {
        return redirect(&next);
    }
    form_page(
        &c,
        "sign_in.html",
        "Sign in",
        json!({"next": next}),
        StatusCode::OK,
    )
}

/// A signed-out form page: its CSRF token paired with a fresh cookie.
fn form_page(c: &Ctx, template: &str, title: &str, mut ctx: Value, status: StatusCode) -> Response {
    let pre = auth::random_token();
    ctx["csrf"] = pre.clone().into();
    let mut r = c.dash.render(c, template, title, ctx);
    *r.status_mut() = status;
    r.headers_mut().append(
        header::SET_COOKIE,
        cookie(&c.dash, auth::PRE_COOKIE, &pre, 3600),
    );
    r
}

pub async fn sign_in(c: Ctx) -> Response {
    let login = c.field("login").trim().to_string();
    let next = super::local_path(c.form.get("next").map(String::as_str).unwrap_or("/"));
    let now = crate::now_ms();
    let keys = [
        format!("ip:{}", c.peer),
        format!("login:{}", login.to_lowercase()),
    ];
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    if let Some(wait) = c.dash.attempts.blocked(&keys, now) {
        let mut r = form_page(
            &c,
            "sign_in.html",
            "Sign in",
            json!({"next": next, "login": login, "error": format!("Too many failed sign-ins. Try again in {wait} seconds.")}),
            StatusCode::TOO_MANY_REQUESTS,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return r;
    }
    let store = c.dash.api.store.clone();
    let user = match auth::check_sign_in(store.as_ref(), &login, c.field("password")).await {
        Ok(u) => u,
        Err(e) => return refusal(&c.dash, &c, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let Some(user) = user else {
        c.dash.attempts.failed(&keys, now);
        return form_page(
            &c,
            "sign_in.html",
            "Sign in",
            json!({"next": next, "login": login, "error": "Wrong login or password."}),
            StatusCode::UNAUTHORIZED,
        );
    };
    signed_in(&c, &user, &next).await
}

/// Start a session for `user` and go to `next`.
async fn signed_in(c: &Ctx, user: &crate::store::User, next: &str) -> Response {
    let ttl = c.dash.api.config.dashboard.session_ttl.0.as_millis() as i64;
    match auth::start_session(c.dash.api.store.as_ref(), user, ttl).await {
        Ok((value, _)) => {
            let mut r = redirect(next);
            r.headers_mut().append(
                header::SET_COOKIE,
                cookie(&c.dash, auth::SESSION_COOKIE, &value, ttl / 1000),
            );
            r.headers_mut()
                .append(header::SET_COOKIE, cookie(&c.dash, auth::PRE_COOKIE, "", 0));
            r
        }
        Err(e) => refusal(&c.dash, c, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

pub async fn sign_out(c: Ctx) -> Response {
    if let Some(v) = super::cookie_value(&c.headers, auth::SESSION_COOKIE) {
        let _ = c.dash.api.store.delete_session(&auth::token_hash(v)).await;
    }
    let mut r = redirect("/sign-in");
    r.headers_mut().append(
        header::SET_COOKIE,
        cookie(&c.dash, auth::SESSION_COOKIE, "", 0),
    );
    r
}

async fn open_invitation(
    c: &Ctx,
) -> Result<(crate::store::Invitation, crate::store::Workspace), Response> {
    let store = &c.dash.api.store;
    let gone = || {
        refusal(
            &c.dash,
            c,
            StatusCode::NOT_FOUND,
            "This invitation link is not valid: it was used, it expired, or it was mistyped. Ask an owner of the workspace for a new one.",
        )
    };
    let inv = match store.invitation(&auth::token_hash(c.param("token"))).await {
        Ok(Some(i)) if i.accepted_at.is_none() && i.expires_at > crate::now_ms() => i,
        _ => return Err(gone()),
    };
    match store.workspace_by_id(&inv.workspace_id).await {
        Ok(Some(w)) => Ok((inv, w)),
        _ => Err(gone()),
    }
}

pub async fn invitation_page(c: Ctx) -> Response {
    let (inv, w) = match open_invitation(&c).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ctx = json!({"workspace": w.name, "email": inv.email, "roles": inv.roles, "invited_by": inv.invited_by, "token": c.param("token"), "signed_in": c.session.is_some()});
    if c.session.is_some() {
        return c.dash.render(&c, "invitation.html", "Invitation", ctx);
    }
    form_page(&c, "invitation.html", "Invitation", ctx, StatusCode::OK)
}

pub async fn accept_invitation(c: Ctx) -> Response {
    let (inv, w) = match open_invitation(&c).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let store = c.dash.api.store.clone();
    let roles: Vec<String> = inv.roles.split(',').map(str::to_string).collect();
    let back = format!("/invitations/{}", seg(c.param("token")));
    // A new account, or the signed-in one.
    let user = match &c.session {
        Some(s) => s.user.clone(),
        None => {
            let login = c.field("login").trim();
            let password = c.field("password");
            if password != c.field("password2") {
                return flash(&c.dash, &back, "The two passwords differ.", false);
            }
            if let Err(e) = auth::check_password(password) {
                return flash(&c.dash, &back, &e.to_string(), false);
            }
            match crate::service::create_user(store.as_ref(), login, None, Some(&inv.email)).await {
                Ok(u) => {
                    if let Err(e) = auth::set_password(store.as_ref(), &u.login, password).await {
                        return flash(&c.dash, &back, &e.to_string(), false);
                    }
                    u
                }
                Err(e) => return flash(&c.dash, &back, &e.to_string(), false),
            }
        }
    };
    match store
        .accept_invitation(&inv.token_hash, crate::now_ms())
        .await
    {
        Ok(true) => {}
        _ => return flash(&c.dash, "/", "This invitation was used already.", false),
    }
    if let Err(e) = crate::service::add_member(store.as_ref(), &w.name, &user.login, &roles).await {
        return refusal(&c.dash, &c, StatusCode::CONFLICT, &e.to_string());
    }
    crate::notify::Notifier::new(store.clone(), &c.dash.api.config)
        .added_event(&w.name, &user.login, &roles)
        .await;
    let to = format!("/w/{}", seg(&w.name));
    if c.session.is_some() {
        return flash(&c.dash, &to, &format!("You joined {}.", w.name), true);
    }
    signed_in(&c, &user, &to).await
}

pub async fn unsubscribe_page(c: Ctx) -> Response {
    let Some((_, kind)) =
        crate::notify::open_unsubscribe(c.dash.api.store.keyring(), c.param("token"))
    else {
        return refusal(
            &c.dash,
            &c,
            StatusCode::NOT_FOUND,
            "This unsubscribe link is not valid.",
        );
    };
    let label = crate::notify::KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, l)| *l)
        .unwrap_or("");
    form_page(
        &c,
        "unsubscribe.html",
        "Unsubscribe",
        json!({"kind": kind, "label": label, "token": c.param("token")}),
        StatusCode::OK,
    )
}

pub async fn unsubscribe(c: Ctx) -> Response {
    let store = c.dash.api.store.clone();
    let Some((user, kind)) = crate::notify::open_unsubscribe(store.keyring(), c.param("token"))
    else {
        return refusal(
            &c.dash,
            &c,
            StatusCode::NOT_FOUND,
            "This unsubscribe link is not valid.",
        );
    };
    let prefs = store.notification_prefs(&user).await.unwrap_or_default();
    let inbox = prefs
        .iter()
        .find(|p| p.kind == kind)
        .map(|p| p.inbox)
        .unwrap_or(true);
    let p = crate::store::NotificationPref {
        kind: kind.clone(),
        inbox,
        email: false,
    };
    match store.set_notification_pref(&user, &p).await {
        Ok(()) => c.dash.render(&c, "message.html", "Unsubscribed", json!({"message": format!("No more mails of this kind ({kind}). You can turn them back on in your settings."), "status": 200})),
        Err(e) => refusal(&c.dash, &c, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

pub async fn css(_c: Ctx) -> Response {
    asset(super::views::CSS, "text/css; charset=utf-8")
}

pub async fn js(_c: Ctx) -> Response {
    asset(super::views::JS, "text/javascript; charset=utf-8")
}

// ---- the user ----

pub async fn home(c: Ctx) -> Response {
    match c.api(Method::GET, "/workspaces", None).await {
        Ok(list) => c
            .dash
            .render(&c, "home.html", "Workspaces", json!({"workspaces": list})),
        Err(f) => failed_page(&c, f),
    }
}

pub async fn create_workspace(c: Ctx) -> Response {
    let name = c.field("name").trim().to_string();
    match c
        .api(Method::POST, "/workspaces", Some(json!({"name": name})))
        .await
    {
        Ok(_) => flash(
            &c.dash,
            &format!("/w/{}/sites", seg(&name)),
            &format!("Workspace {name} created."),
            true,
        ),
        Err(f) => flash(&c.dash, "/", &f.message, false),
    }
}

pub async fn notifications(c: Ctx) -> Response {
    let store = &c.dash.api.store;
    match store.inbox(&c.user().id, 200).await {
        Ok(list) => c.dash.render(
            &c,
            "notifications.html",
            "Notifications",
            json!({"notifications": list}),
        ),
        Err(e) => refusal(&c.dash, &c, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

pub async fn mark_read(c: Ctx) -> Response {
    let id = Some(c.field("id")).filter(|s| !s.is_empty());
    match c
        .dash
        .api
        .store
        .mark_read(&c.user().id, id, crate::now_ms())
        .await
    {
        Ok(_) => redirect("/notifications"),
        Err(e) => flash(&c.dash, "/notifications", &e.to_string(), false),
    }
}

pub async fn settings(c: Ctx) -> Response {
    let store = &c.dash.api.store;
    let tokens = match c.api(Method::GET, "/tokens", None).await {
        Ok(t) => t,
        Err(f) => return failed_page(&c, f),
    };
    let prefs = store
        .notification_prefs(&c.user().id)
        .await
        .unwrap_or_default();
    let kinds: Vec<Value> = crate::notify::KINDS
        .iter()
        .map(|(k, label)| {
            let p = prefs.iter().find(|p| p.kind == *k);
            json!({"kind": k, "label": label, "inbox": p.is_none_or(|p| p.inbox), "email": p.is_none_or(|p| p.email)})
        })
        .collect();
    c.dash.render(
        &c,
        "settings.html",
        "Settings",
        json!({"tokens": tokens, "kinds": kinds, "email": c.user().email, "mail_on": !c.dash.api.config.email.smtp_url.is_empty(), "min_password": auth::MIN_PASSWORD}),
    )
}

pub async fn change_password(c: Ctx) -> Response {
    let store = c.dash.api.store.clone();
    let user = c.user().clone();
    match auth::check_sign_in(store.as_ref(), &user.login, c.field("current")).await {
        Ok(Some(_)) => {}
        _ => {
            return flash(
                &c.dash,
                "/settings",
                "The current password is wrong.",
                false,
            );
        }
    }
    if c.field("password") != c.field("password2") {
        return flash(&c.dash, "/settings", "The two new passwords differ.", false);
    }
    if let Err(e) = auth::set_password(store.as_ref(), &user.login, c.field("password")).await {
        return flash(&c.dash, "/settings", &e.to_string(), false);
    }
    // Every session ended with the old password; this one starts again.
    signed_in(&c, &user, "/settings").await
}

pub async fn issue_token(c: Ctx) -> Response {
    let name = Some(c.field("name").trim())
        .filter(|s| !s.is_empty())
        .unwrap_or("dashboard");
    match crate::service::issue_token(c.dash.api.store.as_ref(), &c.user().login, name).await {
        Ok(t) => c.dash.render(&c, "message.html", "API token", json!({"message": format!("Token {} ({name}) made. Copy it now: it is shown only this once.", t.id), "secret": t.token, "status": 200, "back": "/settings"})),
        Err(e) => flash(&c.dash, "/settings", &e.to_string(), false),
    }
}

pub async fn revoke_token(c: Ctx) -> Response {
    let path = format!("/tokens/{}", seg(c.param("token_id")));
    act(
        &c,
        Method::DELETE,
        &path,
        None,
        "/settings",
        "Token revoked.",
    )
    .await
}

pub async fn set_prefs(c: Ctx) -> Response {
    let store = &c.dash.api.store;
    for (k, _) in crate::notify::KINDS {
        let p = crate::store::NotificationPref {
            kind: k.to_string(),
            inbox: checked(&c, &format!("inbox_{k}")),
            email: checked(&c, &format!("email_{k}")),
        };
        if let Err(e) = store.set_notification_pref(&c.user().id, &p).await {
            return flash(&c.dash, "/settings", &e.to_string(), false);
        }
    }
    flash(
        &c.dash,
        "/settings",
        "Notification preferences saved.",
        true,
    )
}

// ---- a workspace ----

pub async fn workspace(c: Ctx) -> Response {
    if c.has(Role::Owner) || c.has(Role::Developer) {
        redirect(&ws_page(&c, "/sites"))
    } else {
        redirect(&ws_page(&c, "/usage"))
    }
}

pub async fn rename_workspace(c: Ctx) -> Response {
    let name = c.field("name").trim().to_string();
    let path = ws_api(&c, "");
    match c
        .api(Method::PATCH, &path, Some(json!({"name": name})))
        .await
    {
        Ok(_) => flash(
            &c.dash,
            &format!("/w/{}/members", seg(&name)),
            "Workspace renamed.",
            true,
        ),
        Err(f) => flash(&c.dash, &ws_page(&c, "/members"), &f.message, false),
    }
}

pub async fn sites(c: Ctx) -> Response {
    let tag = c
        .query
        .get("tag")
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let mut path = ws_api(&c, "/sites");
    if let Some(t) = &tag {
        path.push_str(&format!("?tag={}", seg(t)));
    }
    let list = match c.api(Method::GET, &path, None).await {
        Ok(Value::Array(l)) => l,
        Ok(_) => Vec::new(),
        Err(f) => return failed_page(&c, f),
    };
    let total = list.len();
    let pages = total.div_ceil(SITES_PER_PAGE).max(1);
    let page: usize = c
        .query
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let shown: Vec<Value> = list
        .into_iter()
        .skip((page - 1) * SITES_PER_PAGE)
        .take(SITES_PER_PAGE)
        .map(|mut s| {
            // Only what the list shows goes to the template.
            let expires = s["preview"]["expires"].take();
            let pstate = s["preview"]["state"].take();
            json!({"name": s["name"].take(), "state": s["state"].take(), "url": s["url"].take(), "tags": s["tags"].take(),
                   "parent": s["parent"].take(), "protected": s["protected"].take(), "region": s["region"].take(),
                   "expires": expires, "preview_state": pstate})
        })
        .collect();
    c.dash.render(
        &c,
        "sites.html",
        "Sites",
        json!({"sites": shown, "total": total, "page": page, "pages": pages, "tag": tag,
               "prev": (page > 1).then(|| page - 1), "next": (page < pages).then(|| page + 1),
               "can_create": c.has(Role::Developer)}),
    )
}

pub async fn create_site(c: Ctx) -> Response {
    let name = c.field("name").trim().to_string();
    let mut body = json!({"name": name});
    if !c.field("region").trim().is_empty() {
        body["region"] = c.field("region").trim().into();
    }
    match c.api(Method::POST, &ws_api(&c, "/sites"), Some(body)).await {
        Ok(_) => flash(
            &c.dash,
            &format!("/s/{}", seg(&name)),
            &format!("Site {name} created."),
            true,
        ),
        Err(f) => flash(&c.dash, &ws_page(&c, "/sites"), &f.message, false),
    }
}

pub async fn members(c: Ctx) -> Response {
    match c.api(Method::GET, &ws_api(&c, "/members"), None).await {
        Ok(list) => {
            let owners = list
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter(|m| {
                            m["roles"]
                                .as_array()
                                .is_some_and(|r| r.iter().any(|r| r == "owner"))
                        })
                        .count()
                })
                .unwrap_or(0);
            c.dash.render(
                &c,
                "members.html",
                "Members",
                json!({"members": list, "owners": owners, "is_owner": c.has(Role::Owner), "role_boxes": ROLE_BOXES.map(Role::as_str)}),
            )
        }
        Err(f) => failed_page(&c, f),
    }
}

/// A form of the members page: its API call under the workspace's members (`rest` after
/// them), then back to the members page with what happened.
async fn members_act(
    c: &Ctx,
    method: Method,
    rest: &str,
    body: Option<Value>,
    done: &str,
) -> Response {
    let path = ws_api(c, &format!("/members{rest}"));
    act(c, method, &path, body, &ws_page(c, "/members"), done).await
}

/// The member a form is about, as a path segment (`/dev`).
fn member_rest(c: &Ctx) -> String {
    format!("/{}", seg(c.param("login")))
}

pub async fn add_member(c: Ctx) -> Response {
    let login = c.field("login").trim().to_string();
    let body = json!({"login": login, "roles": roles_ticked(&c)});
    members_act(&c, Method::POST, "", Some(body), &format!("{login} added.")).await
}

pub async fn set_roles(c: Ctx) -> Response {
    let body = json!({"roles": roles_ticked(&c)});
    members_act(
        &c,
        Method::PUT,
        &member_rest(&c),
        Some(body),
        "Roles saved.",
    )
    .await
}

pub async fn remove_member(c: Ctx) -> Response {
    let done = format!("{} removed.", c.param("login"));
    members_act(&c, Method::DELETE, &member_rest(&c), None, &done).await
}

pub async fn invite(c: Ctx) -> Response {
    let back = ws_page(&c, "/members");
    let email = c.field("email").trim().to_string();
    if email.parse::<lettre::Address>().is_err() {
        return flash(&c.dash, &back, "That is not a mail address.", false);
    }
    let roles = roles_ticked(&c);
    if roles.is_empty() {
        return flash(&c.dash, &back, "Tick at least one role.", false);
    }
    let token = auth::random_token();
    let now = crate::now_ms();
    let Some(workspace) = c.caller.as_ref().and_then(|c| c.workspace.clone()) else {
        return flash(&c.dash, &back, "no workspace", false);
    };
    let inv = crate::store::Invitation {
        token_hash: auth::token_hash(&token),
        workspace_id: workspace.id.clone(),
        email: email.clone(),
        roles: roles.join(","),
        invited_by: c.user().login.clone(),
        created_at: now,
        expires_at: now + c.dash.api.config.dashboard.invitation_ttl.0.as_millis() as i64,
        accepted_at: None,
    };
    if let Err(e) = c.dash.api.store.create_invitation(&inv).await {
        return flash(&c.dash, &back, &e.to_string(), false);
    }
    let link = format!(
        "{}/invitations/{token}",
        c.dash.api.config.server.public_url.trim_end_matches('/')
    );
    let mailed = crate::notify::Notifier::new(c.dash.api.store.clone(), &c.dash.api.config)
        .invitation_mail(&email, &workspace.name, &c.user().login, &roles, &link)
        .await;
    let said = match mailed {
        Ok(true) => format!(
            "Invitation mailed to {email}. The link works once, for {}; you can also pass it on yourself:",
            c.dash.api.config.dashboard.invitation_ttl
        ),
        Ok(false) => format!(
            "No mail server is configured: pass this link to {email} yourself. It works once, for {}:",
            c.dash.api.config.dashboard.invitation_ttl
        ),
        Err(e) => format!(
            "The mail to {email} could not be sent ({e}): pass this link on yourself. It works once:"
        ),
    };
    c.dash.render(
        &c,
        "message.html",
        "Invitation",
        json!({"message": said, "secret": link, "status": 200, "back": back}),
    )
}

pub async fn repositories(c: Ctx) -> Response {
    match c.api(Method::GET, &ws_api(&c, "/connections"), None).await {
        Ok(list) => {
            let regions = c.dash.api.sites.regions();
            let names: Vec<&str> = regions.all().map(|r| r.name.as_str()).collect();
            c.dash.render(&c, "repositories.html", "Repositories", json!({"connections": list, "is_owner": c.has(Role::Owner), "regions": names, "default_region": regions.default_name()}))
        }
        Err(f) => failed_page(&c, f),
    }
}

pub async fn connect(c: Ctx) -> Response {
    let back = ws_page(&c, "/repositories");
    let forge = c.field("forge");
    let repo = c.field("repo").trim();
    let mut body = json!({"repo": format!("{forge}:{repo}")});
    for k in ["git_url", "api_url", "region"] {
        if !c.field(k).trim().is_empty() {
            body[k] = c.field(k).trim().into();
        }
    }
    match c
        .api(Method::POST, &ws_api(&c, "/connections"), Some(body))
        .await
    {
        Ok(v) => c.dash.render(
            &c,
            "connected.html",
            "Repository connected",
            json!({"c": v, "back": back}),
        ),
        Err(f) => flash(&c.dash, &back, &f.message, false),
    }
}

pub async fn repository(c: Ctx) -> Response {
    let w = ws(&c);
    let id = c.param("connection_id").to_string();
    let list = match c.api(Method::GET, &ws_api(&c, "/connections"), None).await {
        Ok(Value::Array(l)) => l,
        Ok(_) => Vec::new(),
        Err(f) => return failed_page(&c, f),
    };
    let Some(conn) = list.into_iter().find(|x| x["connection_id"] == id.as_str()) else {
        return refusal(
            &c.dash,
            &c,
            StatusCode::NOT_FOUND,
            &format!("connection {id} not found in workspace {w}"),
        );
    };
    let deliveries = c
        .dash
        .api
        .store
        .list_deliveries(Some(&id.clone().into()), 50)
        .await
        .unwrap_or_default();
    c.dash.render(
        &c,
        "repository.html",
        "Repository",
        json!({"c": conn, "deliveries": deliveries, "is_owner": c.has(Role::Owner)}),
    )
}

pub async fn rotate(c: Ctx) -> Response {
    let id = seg(c.param("connection_id"));
    let back = ws_page(&c, &format!("/repositories/{id}"));
    let path = ws_api(&c, &format!("/connections/{id}/rotate-secret"));
    let retire = checked(&c, "retire_old");
    match c.api(Method::POST, &path, Some(json!({"retire_old": retire}))).await {
        Ok(v) if retire => flash(&c.dash, &back, if v["previous_accepted"] == false { "The previous secret is no longer accepted." } else { "Done." }, true),
        Ok(v) => c.dash.render(&c, "message.html", "New webhook secret", json!({"message": "The new webhook secret. Put it in the forge's webhook settings now: it is shown only this once. The previous secret is still accepted until you retire it.", "secret": v["secret"], "status": 200, "back": back})),
        Err(f) => flash(&c.dash, &back, &f.message, false),
    }
}

pub async fn delete_connection(c: Ctx) -> Response {
    let path = ws_api(
        &c,
        &format!("/connections/{}", seg(c.param("connection_id"))),
    );
    act(
        &c,
        Method::DELETE,
        &path,
        None,
        &ws_page(&c, "/repositories"),
        "Connection deleted.",
    )
    .await
}

pub async fn previews(c: Ctx) -> Response {
    match c.api(Method::GET, &ws_api(&c, "/previews"), None).await {
        Ok(list) => c
            .dash
            .render(&c, "previews.html", "Previews", json!({"previews": list})),
        Err(f) => failed_page(&c, f),
    }
}

pub async fn preview(c: Ctx) -> Response {
    let n = c.param("number");
    if n.parse::<i64>().is_err() {
        return refusal(
            &c.dash,
            &c,
            StatusCode::NOT_FOUND,
            "no such pull request number",
        );
    }
    let path = ws_api(
        &c,
        &format!(
            "/connections/{}/previews/{n}",
            seg(c.param("connection_id"))
        ),
    );
    match c.api(Method::GET, &path, None).await {
        Ok(story) => c
            .dash
            .render(&c, "preview.html", "Preview", json!({"story": story})),
        Err(f) => failed_page(&c, f),
    }
}

pub async fn usage(c: Ctx) -> Response {
    let mut path = ws_api(&c, "/usage");
    if let Some(m) = c.query.get("month").filter(|m| !m.is_empty()) {
        path.push_str(&format!("?month={}", seg(m)));
    }
    match c.api(Method::GET, &path, None).await {
        Ok(report) => c
            .dash
            .render(&c, "usage.html", "Usage", json!({"report": report})),
        Err(f) => failed_page(&c, f),
    }
}

// ---- a site ----

pub async fn site(c: Ctx) -> Response {
    let details = match c.api(Method::GET, &site_api(&c, ""), None).await {
        Ok(d) => d,
        Err(f) => return failed_page(&c, f),
    };
    let access = c
        .api(Method::GET, &site_api(&c, "/access"), None)
        .await
        .unwrap_or(Value::Null);
    let backups = c
        .api(Method::GET, &site_api(&c, "/backups"), None)
        .await
        .unwrap_or(Value::Null);
    let logs = c
        .api(Method::GET, &site_api(&c, "/logs?n=200"), None)
        .await
        .unwrap_or(Value::Null);
    let usage = if c.has(Role::Owner) || c.has(Role::Billing) {
        c.api(Method::GET, &ws_api(&c, "/usage"), None)
            .await
            .ok()
            .and_then(|r| {
                let line = r["sites"]
                    .as_array()?
                    .iter()
                    .find(|l| l["site"] == details["name"])?
                    .clone();
                Some(json!({"line": line, "currency": r["rates"]["currency"], "month": r["month"]}))
            })
    } else {
        None
    };
    c.dash.render(
        &c,
        "site.html",
        "Site",
        json!({"site": details, "access": access, "backups": backups, "logs": logs, "usage": usage,
               "can_change": c.has(Role::Developer), "backups_on": !c.dash.api.config.backups.repository.is_empty()}),
    )
}

pub async fn live_logs(c: Ctx) -> Response {
    // New lines only: after the last line the page showed (`?after=`), or after the last one
    // a reconnecting browser got (Last-Event-ID); with neither, from now on.
    let last = c.headers.get("last-event-id").cloned().or_else(|| {
        c.query
            .get("after")
            .and_then(|a| HeaderValue::from_str(a).ok())
    });
    let path = if last.is_some() {
        site_api(&c, "/logs?follow=true")
    } else {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        site_api(&c, &format!("/logs?follow=true&since={}", seg(&now)))
    };
    let user = c.user().clone();
    let extra: Vec<(header::HeaderName, HeaderValue)> = last
        .into_iter()
        .map(|v| (header::HeaderName::from_static("last-event-id"), v))
        .collect();
    match c
        .dash
        .api_response(
            &user,
            Method::GET,
            &path,
            None,
            Some("text/event-stream"),
            extra,
        )
        .await
    {
        Ok(mut r) => {
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(f) => failed_page(&c, f),
    }
}

fn site_back(c: &Ctx) -> String {
    format!("/s/{}", seg(&site_name(c)))
}

/// The API path of the page's site, with `rest` after it (`/sites/web/tags`).
fn site_api(c: &Ctx, rest: &str) -> String {
    format!("/sites/{}{rest}", seg(&site_name(c)))
}

/// A form about the page's site: its API call, then back to the site's page with what
/// happened.
async fn site_act(
    c: &Ctx,
    method: Method,
    rest: &str,
    body: Option<Value>,
    done: &str,
) -> Response {
    act(c, method, &site_api(c, rest), body, &site_back(c), done).await
}

pub async fn clone_site(c: Ctx) -> Response {
    let s = site_name(&c);
    let name = c.field("name").trim().to_string();
    let body = json!({"name": name, "read_only": checked(&c, "read_only"), "bypass_protection": checked(&c, "bypass_protection")});
    match c
        .api(Method::POST, &site_api(&c, "/clone"), Some(body))
        .await
    {
        Ok(_) => flash(
            &c.dash,
            &format!("/s/{}", seg(&name)),
            &format!("{s} cloned into {name}."),
            true,
        ),
        Err(f) => flash(&c.dash, &site_back(&c), &f.message, false),
    }
}

pub async fn sync_site(c: Ctx) -> Response {
    let body = json!({"from": c.field("from").trim(), "files": checked(&c, "files"), "db": checked(&c, "db"), "bypass_protection": checked(&c, "bypass_protection")});
    site_act(&c, Method::POST, "/sync", Some(body), "Synced.").await
}

pub async fn snapshot(c: Ctx) -> Response {
    site_act(&c, Method::POST, "/snapshot", None, "Generation frozen.").await
}

pub async fn add_tag(c: Ctx) -> Response {
    let tag = c.field("tag").trim().to_string();
    if tag.is_empty() {
        return flash(&c.dash, &site_back(&c), "Type a tag first.", false);
    }
    let rest = format!("/tags/{}", seg(&tag));
    site_act(&c, Method::PUT, &rest, None, &format!("Tag {tag} added.")).await
}

pub async fn remove_tag(c: Ctx) -> Response {
    let tag = c.param("tag").to_string();
    let rest = format!("/tags/{}", seg(&tag));
    site_act(
        &c,
        Method::DELETE,
        &rest,
        None,
        &format!("Tag {tag} removed."),
    )
    .await
}

pub async fn protect(c: Ctx) -> Response {
    let on = checked(&c, "protected");
    let done = if on { "Protected." } else { "Protection off." };
    site_act(
        &c,
        Method::PUT,
        "/protection",
        Some(json!({"protected": on})),
        done,
    )
    .await
}

pub async fn extend(c: Ctx) -> Response {
    let by = c.field("by").trim().to_string();
    match c
        .api(
            Method::POST,
            &site_api(&c, "/extend"),
            Some(json!({"by": by})),
        )
        .await
    {
        Ok(v) => {
            let capped = if v["capped"] == true {
                " (the longest allowed)"
            } else {
                ""
            };
            flash(
                &c.dash,
                &site_back(&c),
                &format!("Expires {}{capped}.", v["expires"].as_str().unwrap_or("")),
                true,
            )
        }
        Err(f) => flash(&c.dash, &site_back(&c), &f.message, false),
    }
}

pub async fn access(c: Ctx) -> Response {
    let mut body = json!({"robots": checked(&c, "robots")});
    match c.field("password") {
        "generate" | "off" => body["basic_auth"] = c.field("password").into(),
        _ => {}
    }
    if c.form.contains_key("allow") || c.form.contains_key("deny") {
        let list = |k: &str| -> Vec<String> {
            c.field(k)
                .split([',', ' ', '\n', '\r'])
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        };
        body["clear_cidr"] = true.into();
        body["allow"] = json!(list("allow"));
        body["deny"] = json!(list("deny"));
    }
    site_act(
        &c,
        Method::PATCH,
        "/access",
        Some(body),
        "Access settings saved.",
    )
    .await
}

pub async fn delete_site(c: Ctx) -> Response {
    let s = site_name(&c);
    if c.field("confirm") != s {
        return flash(
            &c.dash,
            &site_back(&c),
            &format!("Type the site's name ({s}) to delete it. Nothing was deleted."),
            false,
        );
    }
    let body = json!({"bypass_protection": checked(&c, "bypass_protection")});
    match c.api(Method::DELETE, &site_api(&c, ""), Some(body)).await {
        Ok(_) => flash(
            &c.dash,
            &ws_page(&c, "/sites"),
            &format!("Site {s} deleted."),
            true,
        ),
        Err(f) => flash(&c.dash, &site_back(&c), &f.message, false),
    }
}

pub async fn backup(c: Ctx) -> Response {
    site_act(&c, Method::POST, "/backups", None, "Backed up.").await
}

pub async fn restore(c: Ctx) -> Response {
    let rest = format!("/backups/{}/restore", seg(c.param("backup")));
    let body = json!({"bypass_protection": checked(&c, "bypass_protection")});
    site_act(&c, Method::POST, &rest, Some(body), "Restored.").await
}

pub async fn drill(c: Ctx) -> Response {
    match c
        .api(Method::POST, &site_api(&c, "/backups/drill"), None)
        .await
    {
        Ok(v) => flash(
            &c.dash,
            &site_back(&c),
            &format!(
                "Drill {}: {}",
                if v["ok"] == true { "passed" } else { "FAILED" },
                v["detail"].as_str().unwrap_or("")
            ),
            v["ok"] == true,
        ),
        Err(f) => flash(&c.dash, &site_back(&c), &f.message, false),
    }
}
