//! A GitHub App made in one click (SPEC §17), through GitHub's app-manifest flow:
//!
//! 1. `endor github app create --workspace W [--org ORG]` prints a link to endor's own
//!    `/github/app/new?state=…`. The state is sealed with the master key: it names the
//!    workspace and expires in an hour, so nobody can forge or replay it later.
//! 2. That page posts the app's manifest to GitHub: its name, its webhook
//!    (`{public_url}/webhooks/github`), its permissions and events, and where to come back.
//! 3. GitHub sends the browser back to `/github/app/callback?code=…&state=…`. endor exchanges
//!    the code (`POST /app-manifests/{code}/conversions`) for the app's id, private key and
//!    webhook secret, and keeps them sealed in the store.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Config;
use crate::ids::WorkspaceId;
use crate::store::{GithubApp, Store, StoreError};

/// How long a link from `github app create` works.
const STATE_TTL_MS: i64 = 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    /// GitHub did not do it (its words).
    #[error("GitHub: {0}")]
    Forge(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, AppError>;

/// What the sealed state carries through GitHub and back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppState {
    pub workspace_id: WorkspaceId,
    /// The organization the app is made in (`None`: the person's own account).
    pub org: Option<String>,
    pub name: String,
    /// Until when (ms) the link works.
    pub expires_at: i64,
}

/// An app name as GitHub takes it: 1-34 letters, digits, spaces, `-`, `_` or `.`.
fn validate_name(name: &str) -> Result<()> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= 34
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(AppError::Invalid(format!(
            "app name `{}`: 1-34 letters, digits, spaces, `-`, `_` or `.`",
            name.escape_debug()
        )))
    }
}

/// A GitHub organization login: letters, digits and single `-`, at most 39.
fn validate_org(org: &str) -> Result<()> {
    let ok = !org.is_empty()
        && org.len() <= 39
        && !org.starts_with('-')
        && !org.ends_with('-')
        && !org.contains("--")
        && org.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AppError::Invalid(format!(
            "organization `{}`: letters, digits and single hyphens",
            org.escape_debug()
        )))
    }
}

/// The link an owner opens to make the workspace's GitHub App.
pub async fn start(
    store: &dyn Store,
    cfg: &Config,
    workspace: &str,
    org: Option<&str>,
    name: Option<&str>,
) -> Result<String> {
    let ws = store
        .workspace_by_name(workspace)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("workspace {workspace}")))?;
    if let Some(o) = org {
        validate_org(o)?;
    }
    let name = name.map_or_else(|| format!("endor {}", ws.name), str::to_string);
    validate_name(&name)?;
    let state = AppState {
        workspace_id: ws.id,
        org: org.map(str::to_string),
        name,
        expires_at: crate::now_ms() + STATE_TTL_MS,
    };
    let sealed = store
        .keyring()
        .seal(&serde_json::to_string(&state).unwrap_or_default());
    let mut url = reqwest::Url::parse(&format!("{}/github/app/new", public(cfg)))
        .map_err(|e| AppError::Invalid(format!("server.public_url: {e}")))?;
    url.query_pairs_mut().append_pair("state", &sealed);
    Ok(url.to_string())
}

fn public(cfg: &Config) -> &str {
    cfg.server.public_url.trim_end_matches('/')
}

/// The state of a link, if endor sealed it and it has not expired.
pub fn open_state(store: &dyn Store, state: &str) -> Result<AppState> {
    let bad = || {
        AppError::Invalid("this link is not one endor made, or it has expired: run `endor github app create` again".into())
    };
    let plain = store.keyring().open(state).map_err(|_| bad())?;
    let s: AppState = serde_json::from_str(&plain).map_err(|_| bad())?;
    if s.expires_at < crate::now_ms() {
        return Err(bad());
    }
    Ok(s)
}

/// The manifest GitHub makes the app from.
pub fn manifest(cfg: &Config, name: &str) -> Value {
    let base = public(cfg);
    json!({
        "name": name,
        "url": base,
        "hook_attributes": {"url": format!("{base}/webhooks/github"), "active": true},
        "redirect_url": format!("{base}/github/app/callback"),
        "public": false,
        "default_permissions": {
            "pull_requests": "write",
            "issues": "write",
            "statuses": "write",
            "deployments": "write",
            "checks": "write",
            "repository_hooks": "write",
            "contents": "read",
            "metadata": "read",
        },
        "default_events": ["pull_request", "issue_comment", "check_run"],
    })
}

/// Text for an HTML attribute or body.
pub fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The page that posts the manifest to GitHub (the browser submits it at once; a button does
/// it without scripts).
pub fn form_page(store: &dyn Store, cfg: &Config, state: &str) -> Result<String> {
    let s = open_state(store, state)?;
    let web = cfg.github.web_url.trim_end_matches('/');
    let web = if web.is_empty() {
        "https://github.com"
    } else {
        web
    };
    let mut action = reqwest::Url::parse(&match &s.org {
        Some(org) => format!("{web}/organizations/{org}/settings/apps/new"),
        None => format!("{web}/settings/apps/new"),
    })
    .map_err(|e| AppError::Invalid(format!("github.web_url: {e}")))?;
    action.query_pairs_mut().append_pair("state", state);
    let manifest = manifest(cfg, &s.name).to_string();
    Ok(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Create the GitHub App {name}</title></head>\n<body>\n<main>\n<h1>Create the GitHub App “{name}”</h1>\n<p>GitHub will ask you to confirm; then it sends you back here and endor keeps the app's key sealed.</p>\n<form id=\"manifest\" method=\"post\" action=\"{action}\">\n<input type=\"hidden\" name=\"manifest\" value=\"{manifest}\">\n<button type=\"submit\">Continue to GitHub</button>\n</form>\n</main>\n<script>document.getElementById('manifest').submit();</script>\n</body></html>\n",
        name = html(&s.name),
        action = html(action.as_str()),
        manifest = html(&manifest),
    ))
}

/// What GitHub answers a manifest conversion with (the fields endor keeps).
#[derive(Deserialize)]
struct Conversion {
    id: i64,
    slug: String,
    name: String,
    html_url: String,
    client_id: String,
    client_secret: String,
    webhook_secret: Option<String>,
    pem: String,
    owner: Option<Owner>,
}

#[derive(Deserialize)]
struct Owner {
    login: String,
}

/// Exchange GitHub's one-time `code` for the app and keep it (sealed), bound to the state's
/// workspace.
pub async fn finish(store: &dyn Store, cfg: &Config, code: &str, state: &str) -> Result<GithubApp> {
    let s = open_state(store, state)?;
    if code.is_empty() || code.len() > 100 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AppError::Invalid(
            "GitHub's code is missing or malformed".into(),
        ));
    }
    let api = if cfg.github.api_url.is_empty() {
        crate::forge::github::DEFAULT_API_URL.unwrap_or_default()
    } else {
        cfg.github.api_url.as_str()
    };
    let answer = crate::forge::github::client::convert_manifest(api, code, cfg.writeback.timeout.0)
        .await
        .map_err(|e| AppError::Forge(e.to_string()))?;
    let c: Conversion = serde_json::from_value(answer)
        .map_err(|e| AppError::Forge(format!("the conversion's answer is not an app: {e}")))?;
    let webhook_secret = c
        .webhook_secret
        .filter(|w| w.len() >= 16)
        .ok_or_else(|| AppError::Forge("the app came without a webhook secret".into()))?;
    let app = GithubApp {
        app_id: c.id,
        slug: c.slug,
        name: c.name,
        owner: c.owner.map(|o| o.login).unwrap_or_default(),
        html_url: c.html_url,
        client_id: c.client_id,
        client_secret: c.client_secret,
        webhook_secret: crate::secret::WebhookSecret::from_stored(webhook_secret),
        pem: c.pem,
        workspace_id: s.workspace_id,
        created_at: crate::now_ms(),
    };
    store.put_github_app(&app).await?;
    tracing::info!(app = app.app_id, slug = %app.slug, "GitHub App made through its manifest");
    Ok(app)
}

/// The page GitHub's redirect lands on: what was made, and where to install it.
pub fn done_page(app: &GithubApp) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>GitHub App {name} created</title></head>\n<body>\n<main>\n<h1>GitHub App “{name}” created</h1>\n<p>App id {id}, owned by {owner}. Its private key and webhook secret are kept sealed by endor.</p>\n<p><a href=\"{install}\">Install it on your repositories</a>.</p>\n</main>\n</body></html>\n",
        name = html(&app.name),
        id = app.app_id,
        owner = html(&app.owner),
        install = html(&format!(
            "{}/installations/new",
            app.html_url.trim_end_matches('/')
        )),
    )
}

/// What an installation event did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InstallationChange {
    pub installation: i64,
    pub action: String,
    /// Repositories connected (`owner/name`).
    pub connected: Vec<String>,
    /// Repositories disconnected.
    pub disconnected: Vec<String>,
}

#[derive(Deserialize)]
struct InstallationEvent {
    action: String,
    installation: InstallationRef,
    #[serde(default)]
    repositories: Vec<RepoRef>,
    #[serde(default)]
    repositories_added: Vec<RepoRef>,
    #[serde(default)]
    repositories_removed: Vec<RepoRef>,
}

#[derive(Deserialize)]
struct InstallationRef {
    id: i64,
    app_id: Option<i64>,
    account: Option<Owner>,
}

#[derive(Deserialize)]
struct RepoRef {
    full_name: String,
}

/// An `installation` or `installation_repositories` event (its signature already checked
/// against the app's secret): the installation recorded in the workspace of the app it
/// belongs to, its repositories connected there (git over https from GitHub, write-back
/// through the installation) or disconnected; suspended, unsuspended or deleted.
pub async fn installation_event(
    store: &dyn Store,
    cfg: &Config,
    apps: &[GithubApp],
    payload: &[u8],
) -> Result<InstallationChange> {
    let ev: InstallationEvent = serde_json::from_slice(payload)
        .map_err(|e| AppError::Invalid(format!("not an installation event: {e}")))?;
    let app = match ev.installation.app_id {
        Some(id) => apps.iter().find(|a| a.app_id == id),
        None if apps.len() == 1 => apps.first(),
        None => None,
    }
    .ok_or_else(|| AppError::NotFound(format!("the app of installation {}", ev.installation.id)))?;
    let id = ev.installation.id;
    let mut change = InstallationChange {
        installation: id,
        action: ev.action.clone(),
        ..Default::default()
    };
    let record = |suspended: bool| crate::store::GithubInstallation {
        id,
        app_id: app.app_id,
        account: ev
            .installation
            .account
            .as_ref()
            .map(|a| a.login.clone())
            .unwrap_or_default(),
        workspace_id: app.workspace_id.clone(),
        suspended_at: suspended.then(crate::now_ms),
        deleted_at: None,
        created_at: crate::now_ms(),
    };
    match ev.action.as_str() {
        "created" | "unsuspend" | "new_permissions_accepted" => {
            let known = store.installation(id).await?;
            if known.is_none() || ev.action == "created" {
                store.put_installation(&record(false)).await?;
            } else if ev.action == "unsuspend" {
                store.set_installation_state(id, false, false).await?;
            }
            for r in &ev.repositories {
                connect(store, cfg, app, id, &r.full_name, &mut change).await?;
            }
        }
        "suspend" => {
            if store.installation(id).await?.is_none() {
                store.put_installation(&record(true)).await?;
            }
            store.set_installation_state(id, true, false).await?;
        }
        "deleted" => {
            store.set_installation_state(id, true, true).await?;
            for c in installed(store, id).await? {
                disconnect(store, &c, &mut change).await?;
            }
        }
        "added" | "removed" => {
            if store.installation(id).await?.is_none() {
                store.put_installation(&record(false)).await?;
            }
            for r in &ev.repositories_added {
                connect(store, cfg, app, id, &r.full_name, &mut change).await?;
            }
            for r in &ev.repositories_removed {
                for c in installed(store, id).await? {
                    if c.repo.eq_ignore_ascii_case(&r.full_name) {
                        disconnect(store, &c, &mut change).await?;
                    }
                }
            }
        }
        _ => {}
    }
    tracing::info!(installation = id, action = %ev.action, connected = change.connected.len(), disconnected = change.disconnected.len(), "GitHub App installation");
    Ok(change)
}

/// The live connections an installation made.
async fn installed(store: &dyn Store, id: i64) -> Result<Vec<crate::store::Connection>> {
    Ok(store
        .list_connections(None)
        .await?
        .into_iter()
        .filter(|c| c.installation_id == Some(id))
        .collect())
}

/// Connect `full_name` to the app's workspace for installation `id` (once: a repository
/// already connected there is left as it is).
async fn connect(
    store: &dyn Store,
    cfg: &Config,
    app: &GithubApp,
    id: i64,
    full_name: &str,
    change: &mut InstallationChange,
) -> Result<()> {
    let already = store
        .connections_for_repo(crate::forge::ForgeKind::Github, full_name)
        .await?
        .into_iter()
        .any(|c| c.workspace_id == app.workspace_id);
    if already {
        return Ok(());
    }
    let ws = store
        .workspace_by_id(&app.workspace_id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("the workspace of app {}", app.slug)))?;
    let web = cfg.github.web_url.trim_end_matches('/');
    let web = if web.is_empty() {
        "https://github.com"
    } else {
        web
    };
    let git_url = format!("{web}/{full_name}.git");
    let repo = format!("github:{full_name}");
    let c = crate::service::connect_repo(store, cfg, &ws.name, &repo, None, Some(&git_url))
        .await
        .map_err(|e| AppError::Invalid(format!("{full_name}: {e}")))?;
    store
        .set_connection_installation(&c.connection_id, Some(id))
        .await?;
    change.connected.push(full_name.to_string());
    Ok(())
}

async fn disconnect(
    store: &dyn Store,
    c: &crate::store::Connection,
    change: &mut InstallationChange,
) -> Result<()> {
    store.delete_connection(&c.id).await?;
    change.disconnected.push(c.repo.clone());
    Ok(())
}
