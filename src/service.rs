//! Operations on users, workspaces and repository connections, shared by the CLI and (later)
//! the JSON API, so that no rule is checked in only one of them. Validation of user-supplied
//! names lives here.

use serde::Serialize;

use crate::config::Config;
use crate::forge::{ForgeKind, RepoRef};
use crate::ids::{ConnectionId, WorkspaceId};
use crate::secret::WebhookSecret;
use crate::store::{NewConnection, Store, StoreError, User, Workspace};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, ServiceError>;

/// Logins and workspace names: 1–64 characters of letters, digits, `-`, `_`, `.`, not starting
/// with `-` or `.` (they end up in URLs, paths and command lines).
pub fn validate_name(kind: &str, s: &str) -> Result<()> {
    if crate::config::plain_name(s) {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "invalid {kind} `{}`: use 1-64 letters, digits, `-`, `_` or `.`, not starting with `-` or `.`",
            s.escape_debug()
        )))
    }
}

fn validate_url(key: &str, url: &str, schemes: &[&str]) -> Result<()> {
    let scheme_ok = schemes.iter().any(|s| url.starts_with(&format!("{s}://")));
    if !scheme_ok || url.len() > 2048 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ServiceError::Invalid(format!(
            "invalid {key} `{}`: expected a {} URL without spaces",
            url.escape_debug(),
            schemes.join("/")
        )));
    }
    Ok(())
}

pub async fn create_user(
    store: &dyn Store,
    login: &str,
    name: Option<&str>,
    email: Option<&str>,
) -> Result<User> {
    validate_name("login", login)?;
    if let Some(e) = email
        && (!e.contains('@') || e.len() > 254 || e.chars().any(char::is_control))
    {
        return Err(ServiceError::Invalid(format!(
            "invalid email `{}`",
            e.escape_debug()
        )));
    }
    Ok(store.create_user(login, name, email).await?)
}

/// A token as issued: the secret appears here and nowhere else, ever.
#[derive(Debug, Serialize)]
pub struct IssuedToken {
    pub id: String,
    pub login: String,
    pub name: String,
    pub token: String,
}

/// The stored form of a bearer token: tokens carry 256 random bits, so SHA-256 is enough (no
/// salt or slow hash needed against guessing), and lookups stay one indexed query.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Issue an API token for `login` (`endor user token`).
pub async fn issue_token(store: &dyn Store, login: &str, name: &str) -> Result<IssuedToken> {
    use base64::Engine;
    use rand::RngCore;
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ServiceError::Invalid(
            "a token name is 1-64 printable characters".into(),
        ));
    }
    let u = user(store, login).await?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = format!(
        "endor_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let t = store.create_token(&u.id, name, &token_hash(&token)).await?;
    Ok(IssuedToken {
        id: t.id,
        login: u.login,
        name: t.name,
        token,
    })
}

/// The user a presented bearer token belongs to; `None` for unknown or revoked tokens.
pub async fn authenticate(store: &dyn Store, token: &str) -> Result<Option<User>> {
    if !token.starts_with("endor_") || token.len() > 100 {
        return Ok(None);
    }
    Ok(store
        .token_user(&token_hash(token), crate::now_ms())
        .await?
        .map(|(u, _)| u))
}

pub async fn list_tokens(store: &dyn Store, login: &str) -> Result<Vec<crate::store::ApiToken>> {
    let u = user(store, login).await?;
    Ok(store.list_tokens(&u.id).await?)
}

pub async fn revoke_token(store: &dyn Store, login: &str, token_id: &str) -> Result<()> {
    let u = user(store, login).await?;
    if store.revoke_token(&u.id, token_id).await? {
        Ok(())
    } else {
        Err(ServiceError::NotFound(format!(
            "live token {token_id} of {login}"
        )))
    }
}

async fn user(store: &dyn Store, login: &str) -> Result<User> {
    store
        .user_by_login(login)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("user {login}")))
}

/// `identity` is `github:NAME`, `gitlab:NAME` or `gitea:NAME`.
pub async fn link_identity(store: &dyn Store, login: &str, identity: &str) -> Result<()> {
    let (forge, name) = identity
        .split_once(':')
        .and_then(|(f, n)| Some((ForgeKind::parse(&f.to_ascii_lowercase())?, n)))
        .ok_or_else(|| {
            ServiceError::Invalid(format!(
                "identity must be FORGE:LOGIN (github, gitlab or gitea), got `{}`",
                identity.escape_debug()
            ))
        })?;
    validate_name("forge login", name.trim_end_matches("[bot]"))?;
    let u = user(store, login).await?;
    Ok(store.link_identity(&u.id, forge, name).await?)
}

pub async fn create_workspace(
    store: &dyn Store,
    name: &str,
    owner_login: &str,
) -> Result<Workspace> {
    validate_name("workspace name", name)?;
    let owner = user(store, owner_login).await?;
    Ok(store.create_workspace(name, &owner.id).await?)
}

/// A workspace role (SPEC §2); stored and shown by its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Billing,
    Developer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Owner, Role::Billing, Role::Developer];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Billing => "billing",
            Role::Developer => "developer",
        }
    }
}

/// Add an existing user to a workspace with a non-empty mix of roles.
pub async fn add_member(
    store: &dyn Store,
    workspace_name: &str,
    login: &str,
    roles: &[String],
) -> Result<Vec<String>> {
    let clean = clean_roles(roles)?;
    let ws = workspace(store, workspace_name).await?;
    let u = user(store, login).await?;
    store.add_member(&ws.id, &u.id, &clean).await?;
    Ok(clean)
}

fn clean_roles(roles: &[String]) -> Result<Vec<String>> {
    let mut clean: Vec<String> = Vec::new();
    for r in roles {
        let r = r.trim().to_ascii_lowercase();
        if !Role::ALL.iter().any(|known| known.as_str() == r) {
            return Err(ServiceError::Invalid(format!(
                "unknown role `{}`: use owner, billing or developer",
                r.escape_debug()
            )));
        }
        if !clean.contains(&r) {
            clean.push(r);
        }
    }
    if clean.is_empty() {
        return Err(ServiceError::Invalid(
            "a member needs at least one role (--role owner|billing|developer)".into(),
        ));
    }
    Ok(clean)
}

/// Replace a member's roles (a non-empty mix); the last owner cannot lose `owner`.
pub async fn set_member_roles(
    store: &dyn Store,
    workspace_name: &str,
    login: &str,
    roles: &[String],
) -> Result<Vec<String>> {
    let clean = clean_roles(roles)?;
    let ws = workspace(store, workspace_name).await?;
    let u = user(store, login).await?;
    store.change_member(&ws.id, &u.id, &clean).await?;
    Ok(clean)
}

/// Remove a member; the last owner cannot be removed.
pub async fn remove_member(store: &dyn Store, workspace_name: &str, login: &str) -> Result<()> {
    let ws = workspace(store, workspace_name).await?;
    let u = user(store, login).await?;
    Ok(store.change_member(&ws.id, &u.id, &[]).await?)
}

pub async fn rename_workspace(store: &dyn Store, name: &str, new_name: &str) -> Result<Workspace> {
    validate_name("workspace name", new_name)?;
    let ws = workspace(store, name).await?;
    store.rename_workspace(&ws.id, new_name).await?;
    workspace(store, new_name).await
}

pub async fn workspace(store: &dyn Store, name: &str) -> Result<Workspace> {
    store
        .workspace_by_name(name)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("workspace {name}")))
}

/// What `repo connect` prints: the secret appears here and nowhere else, ever.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Connected {
    pub connection_id: ConnectionId,
    pub workspace: String,
    pub forge: ForgeKind,
    pub repo: String,
    /// The concrete region its previews are made in.
    pub region: String,
    pub webhook_url: String,
    pub secret: String,
    pub content_type: &'static str,
    pub events: Vec<&'static str>,
    pub instructions: String,
    /// Set when the git URL could not be checked from here (see [`check_git_url`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The forge's webhook endor created (`--create-hook`): nothing to add by hand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_id: Option<String>,
}

/// Connect `repo` to the workspace, its previews made in the default region.
pub async fn connect_repo(
    store: &dyn Store,
    cfg: &Config,
    workspace_name: &str,
    repo: &str,
    api_url: Option<&str>,
    git_url: Option<&str>,
) -> Result<Connected> {
    connect_repo_in(store, cfg, workspace_name, repo, api_url, git_url, None).await
}

/// Connect `repo` to the workspace, its previews made in `region` (a region or an alias,
/// resolved once here; `None`: `regions.default`).
pub async fn connect_repo_in(
    store: &dyn Store,
    cfg: &Config,
    workspace_name: &str,
    repo: &str,
    api_url: Option<&str>,
    git_url: Option<&str>,
    region: Option<&str>,
) -> Result<Connected> {
    let repo = RepoRef::parse(repo).map_err(|e| ServiceError::Invalid(e.to_string()))?;
    if let Some(r) = region {
        validate_name("region", r)?;
    }
    let region = crate::regions::Regions::new(cfg)
        .resolve(region)
        .map_err(ServiceError::Invalid)?
        .name
        .clone();
    if let Some(u) = api_url {
        validate_url("--api-url", u, &["http", "https"])?;
    }
    if let Some(u) = git_url {
        validate_url("--git-url", u, &["http", "https", "ssh", "git", "file"])?;
    }
    let ws = workspace(store, workspace_name).await?;
    let secret = WebhookSecret::generate();
    let conn = store
        .create_connection(&NewConnection {
            workspace_id: ws.id.clone(),
            forge: repo.forge,
            repo: repo.path.clone(),
            api_url: api_url.map(str::to_string),
            git_url: git_url.map(str::to_string),
            secret: secret.clone(),
            region: region.clone(),
        })
        .await?;
    let webhook_url = cfg.webhook_url(repo.forge.as_str(), conn.id.as_str());
    let (events, instructions) = repo.forge.setup(&webhook_url);
    tracing::info!(connection = %conn.id, repo = %repo, workspace = %ws.name, "repository connected");
    Ok(Connected {
        connection_id: conn.id,
        workspace: ws.name,
        forge: repo.forge,
        repo: repo.path,
        region,
        webhook_url,
        secret: secret.expose().to_string(),
        content_type: "application/json",
        events,
        instructions,
        warning: None,
        hook_id: None,
    })
}

/// Before connecting: can the git URL be fetched? A repository that is not there is refused
/// (previews would fail at their first fetch); an answer that settles nothing (the host not
/// reachable from here, credentials asked for, no answer in time) is a warning returned.
pub async fn check_git_url(url: &str) -> Result<Option<String>> {
    match crate::git::probe(url, std::time::Duration::from_secs(15)).await {
        crate::git::Probe::Fetchable => Ok(None),
        crate::git::Probe::Missing(why) => Err(ServiceError::Invalid(format!(
            "cannot fetch {url}: {} (check the URL; --no-check connects anyway)",
            why.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
        ))),
        crate::git::Probe::Unsure(why) => Ok(Some(format!(
            "could not check {url} from here: {}; previews fail at their fetch step until endor can fetch it",
            why.lines().next().unwrap_or("")
        ))),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rotated {
    pub connection_id: String,
    /// The new secret (absent when only retiring the old one).
    pub secret: Option<String>,
    /// Whether the previous secret is still accepted.
    pub previous_accepted: bool,
    /// The forge's webhook endor made was given the new secret.
    pub hook_updated: bool,
}

/// Without `retire_old`: a new secret becomes current and the old one stays accepted.
/// With it: only the current secret is accepted from now on.
pub async fn rotate_secret(store: &dyn Store, id: &str, retire_old: bool) -> Result<Rotated> {
    let id = &ConnectionId::from(id);
    let conn = store
        .connection(id)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("connection {id}")))?;
    let (secret, previous, fresh) = if retire_old {
        (conn.secret.clone(), None, None)
    } else {
        let fresh = WebhookSecret::generate();
        (fresh.clone(), Some(conn.secret.clone()), Some(fresh))
    };
    if !store
        .set_connection_secrets(id, &secret, previous.as_ref())
        .await?
    {
        return Err(ServiceError::NotFound(format!("connection {id}")));
    }
    tracing::info!(connection = %id, retire_old, "webhook secret rotated");
    Ok(Rotated {
        connection_id: id.to_string(),
        secret: fresh.map(|s| s.expose().to_string()),
        previous_accepted: previous.is_some(),
        hook_updated: false,
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectionInfo {
    pub connection_id: ConnectionId,
    pub workspace_id: WorkspaceId,
    pub forge: ForgeKind,
    pub repo: String,
    pub webhook_url: String,
    pub api_url: Option<String>,
    pub git_url: Option<String>,
    pub rotating: bool,
    pub created_at: i64,
    /// The forge's webhook endor created and keeps up to date (`None`: added by hand).
    pub hook_id: Option<String>,
    /// The concrete region its previews are made in.
    pub region: String,
}

pub async fn list_repos(
    store: &dyn Store,
    cfg: &Config,
    workspace_name: Option<&str>,
) -> Result<Vec<ConnectionInfo>> {
    let ws_id = match workspace_name {
        Some(n) => Some(workspace(store, n).await?.id),
        None => None,
    };
    Ok(store
        .list_connections(ws_id.as_ref())
        .await?
        .into_iter()
        .map(|c| ConnectionInfo {
            webhook_url: cfg.webhook_url(c.forge.as_str(), c.id.as_str()),
            connection_id: c.id,
            workspace_id: c.workspace_id,
            forge: c.forge,
            repo: c.repo,
            api_url: c.api_url,
            git_url: c.git_url,
            rotating: c.previous_secret.is_some(),
            created_at: c.created_at,
            hook_id: c.hook_id,
            region: c.region,
        })
        .collect())
}

pub async fn delete_repo(store: &dyn Store, id: &str) -> Result<()> {
    if store.delete_connection(&id.into()).await? {
        tracing::info!(connection = %id, "repository connection deleted");
        Ok(())
    } else {
        Err(ServiceError::NotFound(format!("connection {id}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["alice", "a.b-c_d", "A1"] {
            validate_name("login", ok).unwrap();
        }
        for bad in [
            "",
            "-rf",
            ".hidden",
            "a b",
            "a/b",
            "../x",
            "a;b",
            "$(x)",
            "é",
            &"x".repeat(65),
            "a\0b",
        ] {
            assert!(validate_name("login", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls() {
        validate_url("--git-url", "file:///tmp/repo.git", &["file"]).unwrap();
        assert!(validate_url("--git-url", "-uhttp://x", &["http"]).is_err());
        assert!(validate_url("--git-url", "file:///tmp/a b", &["file"]).is_err());
        assert!(validate_url("--api-url", "ftp://x", &["http", "https"]).is_err());
    }
}

/// A workspace's log settings (`endor workspace settings`, `/workspaces/{ws}/settings`): what
/// it set for itself (`null`: the config's `[logs]`) and what applies to its sites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WorkspaceSettingsView {
    pub workspace: String,
    /// Its own `logs.retention` (`30d`), or null.
    pub log_retention: Option<String>,
    /// Its own `logs.max_bytes_per_site` (`256MiB`), or null.
    pub log_max_bytes_per_site: Option<String>,
    /// The retention its sites' logs have.
    pub effective_log_retention: String,
    /// The cap its sites' logs have.
    pub effective_log_max_bytes_per_site: String,
}

/// A change to one setting: a new value, or back to the config's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting<T> {
    Keep,
    Set(T),
    Default,
}

impl<T: std::str::FromStr> Setting<T>
where
    T::Err: std::fmt::Display,
{
    /// `default` (back to the config's) or a value.
    pub fn parse(name: &str, text: Option<&str>) -> Result<Self> {
        match text {
            None => Ok(Self::Keep),
            Some("default") => Ok(Self::Default),
            Some(t) => t
                .parse()
                .map(Self::Set)
                .map_err(|e| ServiceError::Invalid(format!("{name}: {e}"))),
        }
    }
}

/// Retention a workspace may set: a minute to ten years.
const RETENTION_RANGE: std::ops::RangeInclusive<u64> = 60..=3650 * 86_400;
/// A cap a workspace may set: 1 MiB to 1 TiB.
const LOG_CAP_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(1 << 40);

/// The log limits of a workspace's sites: the config's `[logs]` with the workspace's own.
pub async fn log_limits(
    store: &dyn Store,
    cfg: &Config,
    ws: &WorkspaceId,
) -> Result<crate::logs::Limits> {
    let own = store.workspace_settings(ws).await?;
    Ok(limits_with(cfg, &own))
}

fn limits_with(cfg: &Config, own: &crate::store::WorkspaceSettings) -> crate::logs::Limits {
    let mut limits = crate::logs::Limits::from(&cfg.logs);
    if let Some(ms) = own.log_retention_ms {
        limits.retention = std::time::Duration::from_millis(ms.max(0) as u64);
    }
    if let Some(b) = own.log_max_bytes {
        limits.max_bytes_per_site = b.max(0) as u64;
    }
    limits
}

/// The log limits of a site (its workspace's).
pub async fn site_log_limits(
    store: &dyn Store,
    cfg: &Config,
    site: &crate::ids::SiteId,
) -> Result<crate::logs::Limits> {
    let s = store
        .site(site)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("site {site}")))?;
    log_limits(store, cfg, &s.workspace_id).await
}

/// The limits of every site (deleted ones too: their logs wait for retention) whose
/// workspace set its own: what the log writers and the reaper apply.
pub async fn log_overrides(
    store: &dyn Store,
    cfg: &Config,
) -> Result<std::collections::HashMap<crate::ids::SiteId, crate::logs::Limits>> {
    let mut by_ws: std::collections::HashMap<WorkspaceId, Option<crate::logs::Limits>> =
        Default::default();
    let mut out = std::collections::HashMap::new();
    for site in store.list_sites().await? {
        let limits = match by_ws.get(&site.workspace_id) {
            Some(l) => *l,
            None => {
                let own = store.workspace_settings(&site.workspace_id).await?;
                let l = (own.log_retention_ms.is_some() || own.log_max_bytes.is_some())
                    .then(|| limits_with(cfg, &own));
                by_ws.insert(site.workspace_id.clone(), l);
                l
            }
        };
        if let Some(l) = limits {
            out.insert(site.id, l);
        }
    }
    Ok(out)
}

/// A workspace's log settings, after changing them (owners; the CLI and the API). A change
/// is in the audit trail under `caller`.
pub async fn workspace_settings(
    store: &dyn Store,
    cfg: &Config,
    name: &str,
    retention: Setting<crate::duration::HumanDuration>,
    max_bytes: Setting<crate::size::ByteSize>,
    caller: &str,
) -> Result<WorkspaceSettingsView> {
    let ws = workspace(store, name).await?;
    let mut own = store.workspace_settings(&ws.id).await?;
    let changed = !matches!((retention, max_bytes), (Setting::Keep, Setting::Keep));
    match retention {
        Setting::Keep => {}
        Setting::Default => own.log_retention_ms = None,
        Setting::Set(d) => {
            if !RETENTION_RANGE.contains(&d.0.as_secs()) {
                return Err(ServiceError::Invalid(
                    "log retention: from 1m to 3650d".into(),
                ));
            }
            own.log_retention_ms = Some(d.0.as_millis() as i64);
        }
    }
    match max_bytes {
        Setting::Keep => {}
        Setting::Default => own.log_max_bytes = None,
        Setting::Set(b) => {
            if !LOG_CAP_RANGE.contains(&b.0) {
                return Err(ServiceError::Invalid(
                    "log max bytes per site: from 1MiB to 1TiB".into(),
                ));
            }
            own.log_max_bytes = Some(b.0 as i64);
        }
    }
    if changed {
        store.put_workspace_settings(&own).await?;
    }
    let limits = limits_with(cfg, &own);
    let duration = |ms: i64| {
        crate::duration::HumanDuration(std::time::Duration::from_millis(ms as u64)).to_string()
    };
    if changed {
        let detail = format!(
            "workspace {}: log retention {}, log max bytes per site {}",
            ws.name,
            own.log_retention_ms.map_or("default".into(), duration),
            own.log_max_bytes
                .map_or("default".into(), |b| crate::size::ByteSize(b as u64)
                    .to_string())
        );
        store
            .record_audit(caller, "workspace.settings", None, &detail)
            .await?;
    }
    Ok(WorkspaceSettingsView {
        workspace: ws.name,
        log_retention: own.log_retention_ms.map(duration),
        log_max_bytes_per_site: own
            .log_max_bytes
            .map(|b| crate::size::ByteSize(b as u64).to_string()),
        effective_log_retention: crate::duration::HumanDuration(limits.retention).to_string(),
        effective_log_max_bytes_per_site: crate::size::ByteSize(limits.max_bytes_per_site)
            .to_string(),
    })
}

/// What `endor secrets rotate` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rotation {
    /// The id of the key everything was sealed with before.
    pub old_key: String,
    /// The id of the master key now.
    pub new_key: String,
    /// Values sealed again under the new key.
    pub resealed: u64,
    /// How many stored secrets each key seals now.
    pub sealed: std::collections::BTreeMap<String, u64>,
}

/// Seal every secret in the store under a new master key (see [`crate::secret::Keyring`] for
/// why a crash at any point loses nothing; running it again resumes). Recorded in the audit
/// trail with its caller; no secret is ever logged, only key ids and counts.
pub async fn rotate_master_key(store: &dyn Store, caller: &str) -> Result<Rotation> {
    let keyring = store.keyring();
    let key_error = |e: crate::secret::SealError| ServiceError::Invalid(e.to_string());
    let old_key = keyring.current_id();
    let new_key = keyring.begin_rotation().map_err(key_error)?;
    let mut resealed = store.reseal_secrets(Some(&new_key)).await?;
    keyring.commit_rotation().map_err(key_error)?;
    // Values another process sealed meanwhile with the key it held (or changed while this
    // one read them) are sealed again until none is left under another key.
    for _ in 0..10 {
        resealed += store.reseal_secrets(Some(&new_key)).await?;
        let sealed = store.sealed_counts().await?;
        if sealed.keys().all(|k| *k == new_key) {
            keyring.finish_rotation().map_err(key_error)?;
            store
                .record_audit(
                    caller,
                    "secrets.rotate",
                    None,
                    &format!("master key {old_key} replaced by {new_key}; {resealed} secrets sealed again"),
                )
                .await?;
            return Ok(Rotation {
                old_key,
                new_key,
                resealed,
                sealed,
            });
        }
    }
    Err(ServiceError::Invalid(
        "secrets kept changing under another key; the old key is kept: run it again".into(),
    ))
}
