//! Persistence behind one narrow trait, [`Store`], with two implementations that share every
//! query and every test: SQLite (the embedded default, WAL, `synchronous=FULL`) and
//! PostgreSQL. The SQL is written once (`sql.rs`), in the dialect both accept (`$N`
//! placeholders, `ON CONFLICT`, `RETURNING`, integers for timestamps in Unix milliseconds);
//! only the DDL differs, in `migrations/sqlite` and `migrations/postgres`.
//!
//! This module knows nothing of HTTP or forges' payloads: it stores what it is given.

mod group_commit;
mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

pub use group_commit::DeliveryWriter;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::forge::ForgeKind;
pub use crate::ids::{ConnectionId, DeliveryId, JobId, PreviewId, SiteId, UserId, WorkspaceId};
use crate::jobs::{JobQueue, NewJob};
use crate::secret::WebhookSecret;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("a workspace keeps at least one owner: give another member the owner role first")]
    LastOwner,
    /// A bounded resource (a configured range) has nothing left.
    #[error("{0}")]
    Exhausted(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct User {
    pub id: UserId,
    pub login: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub name: String,
    pub created_at: i64,
}

/// What a workspace sets for itself over endor's config (`None`: the config's value).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkspaceSettings {
    pub workspace_id: WorkspaceId,
    /// How long its sites' logs are kept (`logs.retention`), ms.
    pub log_retention_ms: Option<i64>,
    /// How big each of its sites' logs may grow (`logs.max_bytes_per_site`).
    pub log_max_bytes: Option<i64>,
}

/// A repository connected to a workspace: where its webhooks arrive and how they are checked.
#[derive(Debug, Clone)]
pub struct Connection {
    pub id: ConnectionId,
    pub workspace_id: WorkspaceId,
    pub forge: ForgeKind,
    /// `owner/name` (GitLab: full namespace path).
    pub repo: String,
    pub api_url: Option<String>,
    pub git_url: Option<String>,
    pub secret: WebhookSecret,
    /// The secret before the last rotation, accepted until retired.
    pub previous_secret: Option<WebhookSecret>,
    pub created_at: i64,
    /// The forge's webhook endor created for it (`None`: added by hand).
    pub hook_id: Option<String>,
    /// The GitHub App installation it came from (`None`: connected by hand).
    pub installation_id: Option<i64>,
    /// The concrete region its previews are made in ([`crate::regions`]).
    pub region: String,
}

impl Connection {
    /// Every secret a delivery may currently be signed with.
    pub fn accepted_secrets(&self) -> Vec<&WebhookSecret> {
        std::iter::once(&self.secret)
            .chain(self.previous_secret.as_ref())
            .collect()
    }
}

/// A GitHub App made through the manifest flow, its secrets opened.
#[derive(Clone, Serialize)]
pub struct GithubApp {
    pub app_id: i64,
    pub slug: String,
    pub name: String,
    /// The account that owns it (a user or an organization).
    pub owner: String,
    pub html_url: String,
    pub client_id: String,
    #[serde(skip)]
    pub client_secret: String,
    /// What GitHub signs the app's webhook deliveries with.
    #[serde(skip)]
    pub webhook_secret: WebhookSecret,
    /// The app's private key, PEM.
    #[serde(skip)]
    pub pem: String,
    pub workspace_id: WorkspaceId,
    pub created_at: i64,
}

impl std::fmt::Debug for GithubApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubApp")
            .field("app_id", &self.app_id)
            .field("slug", &self.slug)
            .field("owner", &self.owner)
            .field("workspace_id", &self.workspace_id)
            .finish_non_exhaustive()
    }
}

/// An installation of a GitHub App endor made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct GithubInstallation {
    pub id: i64,
    pub app_id: i64,
    /// The account it is installed on.
    pub account: String,
    pub workspace_id: WorkspaceId,
    pub suspended_at: Option<i64>,
    pub deleted_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewConnection {
    pub workspace_id: WorkspaceId,
    pub forge: ForgeKind,
    pub repo: String,
    pub api_url: Option<String>,
    pub git_url: Option<String>,
    pub secret: WebhookSecret,
    /// A concrete region's name.
    pub region: String,
}

/// What the webhook receiver decided about a delivery it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryOutcome {
    /// An event endor acts on; work will be done for it.
    Queued,
    /// Authentic and well-formed, but nothing to do.
    Ignored,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Queued => "queued",
            DeliveryOutcome::Ignored => "ignored",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: DeliveryId,
    pub connection_id: ConnectionId,
    /// The forge's delivery id (or one we generated when the forge sent none); unique per
    /// connection, which is what makes redeliveries duplicates.
    pub delivery_key: String,
    pub forge: ForgeKind,
    pub event: String,
    pub action: Option<String>,
    /// The pull/merge request the event is about (acted-on deliveries).
    pub number: Option<i64>,
    pub outcome: DeliveryOutcome,
    pub reason: Option<String>,
    /// The normalized [`crate::forge::ForgeEvent`] as JSON, for acted-on deliveries.
    pub normalized: Option<String>,
    /// The raw body exactly as received (after form decoding for GitHub's form content type).
    pub payload: Vec<u8>,
    pub received_at: i64,
    /// The work this delivery asks for, queued in the same transaction (never for a
    /// redelivery).
    pub job: Option<NewJob>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Delivery {
    pub id: DeliveryId,
    pub connection_id: ConnectionId,
    pub delivery_key: String,
    pub forge: String,
    pub event: String,
    pub action: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub normalized: Option<String>,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub received_at: i64,
    /// The pull/merge request the event is about (acted-on deliveries).
    pub number: Option<i64>,
    /// The job the delivery queued, and that job's state now (`queued`, `running`, `done`,
    /// `failed`, `cancelled`: superseded by a newer event of the same PR).
    pub job_id: Option<String>,
    pub job_state: Option<String>,
    pub job_error: Option<String>,
}

crate::ids::stored_enum! {
    /// A site's lifecycle in the store. `deleted` rows are kept (history; the name becomes free).
    pub enum SiteState {
        Creating = "creating",
        Active = "active",
        Deleting = "deleting",
        Deleted = "deleted",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    pub id: SiteId,
    pub name: String,
    pub workspace_id: WorkspaceId,
    pub region: String,
    pub parent_id: Option<SiteId>,
    pub protected: bool,
    pub read_only: bool,
    pub state: SiteState,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
    /// The uid (and gid) the site's code and database servers run as, from
    /// `runtime.uid_range`; released when the site is deleted.
    pub uid: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct NewSite {
    pub name: String,
    pub workspace_id: WorkspaceId,
    pub region: String,
    pub parent_id: Option<SiteId>,
    pub read_only: bool,
}

/// One resource a site owns, and how it was last made (the clone engine's report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SiteResource {
    pub site_id: SiteId,
    /// `files`, `sqlite`, `postgres`, `mariadb`.
    pub kind: String,
    pub name: String,
    /// `reflink`, `copy`, `vacuum-into`, `template`, `instance`, `import`, ...
    pub strategy: String,
    /// A path under the storage root, or a database URL without credentials.
    pub location: String,
    pub bytes_logical: i64,
    pub bytes_written: i64,
    pub duration_us: i64,
    pub updated_at: i64,
}

/// A frozen, consistent copy of a site's data that clones start from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Generation {
    pub id: String,
    pub site_id: SiteId,
    pub seq: i64,
    pub created_at: i64,
}

/// What the gateway serves for a site name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct RouteRow {
    pub site_name: String,
    /// `building`, `static`, `proxy`, `gone`.
    pub kind: String,
    pub target: Option<String>,
    pub robots: i64,
    pub updated_at: i64,
}

crate::ids::stored_enum! {
    /// Where a preview is in its lifecycle. The machine's rules (what follows what, when the
    /// reaper acts, what each state shows on the forge) live in the previews room; the store
    /// only keeps the name.
    ///
    /// ```text
    /// queued ─► cloning ─► building ─► starting ─► ready
    ///    │         └──────────┴───────────┴──────► failed
    ///    ├─► skipped (draft)   ├─► awaiting-approval (fork)
    /// any ─► destroying ─► destroyed | expired
    /// ```
    pub enum PreviewState {
        Queued = "queued",
        AwaitingApproval = "awaiting-approval",
        /// A draft, while `previews.drafts` is off.
        Skipped = "skipped",
        Cloning = "cloning",
        Building = "building",
        Starting = "starting",
        Ready = "ready",
        Failed = "failed",
        Destroying = "destroying",
        Destroyed = "destroyed",
        /// Destroyed by the reaper: past `expires_at`.
        Expired = "expired",
    }
}

/// A pull/merge request's preview: its lifecycle state (see `crate::previews`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Preview {
    pub id: PreviewId,
    pub connection_id: ConnectionId,
    pub number: i64,
    pub site_name: String,
    pub site_id: Option<SiteId>,
    pub state: PreviewState,
    pub head_sha: Option<String>,
    pub ready_sha: Option<String>,
    pub approved_sha: Option<String>,
    pub is_fork: i64,
    pub reason: Option<String>,
    pub port: Option<i64>,
    pub pid: Option<i64>,
    pub received_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The PR's title (untrusted text).
    pub title: Option<String>,
    /// When the preview expires (last activity + TTL), ms.
    pub expires_at: Option<i64>,
    /// A teardown in progress: `{final state}/{last step done}`.
    pub teardown_step: Option<String>,
    /// The expiry the status comment last warned about.
    pub warned_expiry: Option<i64>,
    /// Time to live after the last activity (ms), from `.endor.toml` or the default.
    pub ttl_ms: Option<i64>,
    /// The worker host its process runs on (`runtime.advertise`); `None`: recorded before
    /// there were several hosts (this host).
    pub host: Option<String>,
}

impl Preview {
    /// A new preview of PR `number`, queued, with nothing launched yet.
    pub fn new(connection_id: ConnectionId, number: i64, site_name: String, now: i64) -> Self {
        Self {
            id: PreviewId::generate(),
            connection_id,
            number,
            site_name,
            site_id: None,
            state: PreviewState::Queued,
            head_sha: None,
            ready_sha: None,
            approved_sha: None,
            is_fork: 0,
            reason: None,
            port: None,
            pid: None,
            received_at: None,
            created_at: now,
            updated_at: now,
            title: None,
            expires_at: None,
            teardown_step: None,
            warned_expiry: None,
            ttl_ms: None,
            host: None,
        }
    }
}

/// A site's HTTP access settings at the gateway (no row: robots header on, no basic auth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SiteAccess {
    pub site_id: SiteId,
    pub robots: i64,
    pub basic_user: Option<String>,
    /// bcrypt hash of the password: what the gateway checks.
    pub basic_hash: Option<String>,
    /// The generated password, encrypted (`crate::secret::Keyring`): what members are shown.
    pub basic_sealed: Option<String>,
    pub updated_at: i64,
    /// Comma-separated CIDRs admitted (none: everyone) and refused (deny wins).
    pub allow_cidrs: Option<String>,
    pub deny_cidrs: Option<String>,
}

impl SiteAccess {
    pub fn default_for(site_id: &SiteId) -> Self {
        Self {
            site_id: site_id.clone(),
            robots: 1,
            basic_user: None,
            basic_hash: None,
            basic_sealed: None,
            updated_at: crate::now_ms(),
            allow_cidrs: None,
            deny_cidrs: None,
        }
    }
}

/// One timed launch step of one run (a job) of a preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct PreviewStep {
    pub preview_id: PreviewId,
    pub run_id: JobId,
    pub step: String,
    pub seq: i64,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub ok: Option<i64>,
    pub detail: Option<String>,
}

crate::ids::stored_enum! {
    /// What an outbox row writes to the forge.
    pub enum OutboxKind {
        /// The sticky status comment.
        Comment = "comment",
        Status = "status",
        Deployment = "deployment",
        /// A reply comment to a slash-command comment.
        Reply = "reply",
        /// A reaction on a slash-command comment.
        Reaction = "reaction",
        /// The check run of a head (GitHub App connections).
        Check = "check",
    }
}

/// A write-back to a forge waiting in the durable outbox (see `crate::writeback`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct OutboxItem {
    pub id: String,
    pub connection_id: ConnectionId,
    pub number: i64,
    pub kind: OutboxKind,
    pub coalesce_key: String,
    pub payload: String,
    /// `pending`, `sending`, `done`, `superseded`, `failed`, `unsent` (see [`NewOutbox::held`]).
    pub state: String,
    pub attempts: i64,
    pub run_after: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewOutbox {
    pub connection_id: ConnectionId,
    pub number: i64,
    pub kind: OutboxKind,
    /// Items of one key are sent in order, one at a time; a pending item not yet sent is
    /// replaced by a newer one of its key.
    pub coalesce_key: String,
    pub payload: String,
    /// Why it will not be sent (no credentials for the forge): kept as `unsent` with this
    /// reason, so what endor would have posted stays visible (`endor preview show`).
    pub held: Option<String>,
}

/// How a sender ends an outbox item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxEnd {
    Done,
    /// Send again at `run_after` (ms); superseded instead when a newer item of the key waits.
    Retry {
        error: String,
        run_after: i64,
    },
    Failed {
        error: String,
    },
}

/// The persistence operations endor needs, nothing more: one trait per aggregate, all
/// implemented by both backends from the one body of SQL in `sql.rs`.
#[async_trait]
pub trait Store:
    UserStore
    + WorkspaceStore
    + ConnectionStore
    + DeliveryStore
    + SiteStore
    + AccessStore
    + RouteStore
    + PreviewStore
    + OutboxStore
    + CommandStore
    + LeaseStore
    + AuditStore
    + BackupStore
    + UsageStore
    + DashboardStore
    + JobQueue<Error = StoreError>
    + Send
    + Sync
    + 'static
{
    fn backend(&self) -> Backend;
    /// The master key's keyring: what the store seals its secrets with (webhook secrets) and
    /// what callers seal theirs with (generated passwords).
    fn keyring(&self) -> &std::sync::Arc<crate::secret::Keyring>;
    /// Seal again every secret the store holds that is plain text (written before sealing)
    /// or, with `target`, sealed under another key than `target` (a rotation); the number of
    /// values sealed. A value changed meanwhile by someone else is left to them.
    async fn reseal_secrets(&self, target: Option<&str>) -> Result<u64>;
    /// A consistent copy of a SQLite store in the new file `path`, taken while it serves
    /// (`VACUUM INTO`); a PostgreSQL store is copied with `pg_dump` instead.
    async fn copy_to(&self, path: &std::path::Path) -> Result<()>;
    /// How many stored secrets each key seals (`plain` for those not sealed yet).
    async fn sealed_counts(&self) -> Result<std::collections::BTreeMap<String, u64>>;
    /// Apply this backend's embedded migrations.
    async fn migrate(&self) -> Result<()>;
    /// The store answers and every embedded migration is applied.
    async fn ready(&self) -> Result<()>;
}

/// Users, their forge identities and API tokens.
#[async_trait]
pub trait UserStore: Send + Sync {
    async fn create_user(
        &self,
        login: &str,
        name: Option<&str>,
        email: Option<&str>,
    ) -> Result<User>;
    async fn user_by_login(&self, login: &str) -> Result<Option<User>>;
    /// Link a forge identity (`github:octocat`) to a user; one user per identity.
    async fn link_identity(&self, user_id: &UserId, forge: ForgeKind, login: &str) -> Result<()>;
    async fn user_by_identity(&self, forge: ForgeKind, login: &str) -> Result<Option<User>>;
    /// A new API token of `user_id`, kept as its hash only.
    async fn create_token(
        &self,
        user_id: &UserId,
        name: &str,
        token_hash: &str,
    ) -> Result<ApiToken>;
    /// The user a live (not revoked) token belongs to, and the token's id.
    async fn token_user(&self, token_hash: &str, now: i64) -> Result<Option<(User, String)>>;
    async fn list_tokens(&self, user_id: &UserId) -> Result<Vec<ApiToken>>;
    /// Revoke one of `user_id`'s tokens; false when there is no such live token.
    async fn revoke_token(&self, user_id: &UserId, token_id: &str) -> Result<bool>;
}

/// Workspaces and their members' roles.
#[async_trait]
pub trait WorkspaceStore: Send + Sync {
    /// Create a workspace with `owner_id` as its first owner, atomically.
    async fn create_workspace(&self, name: &str, owner_id: &UserId) -> Result<Workspace>;
    async fn workspace_by_name(&self, name: &str) -> Result<Option<Workspace>>;
    async fn list_workspaces(&self) -> Result<Vec<Workspace>>;
    async fn workspace_by_id(&self, id: &WorkspaceId) -> Result<Option<Workspace>>;
    /// The workspaces `user_id` is a member of, with their roles there.
    async fn user_workspaces(&self, user_id: &UserId) -> Result<Vec<(Workspace, Vec<String>)>>;
    /// The member's roles in a workspace (empty when not a member).
    async fn member_roles(
        &self,
        workspace_id: &WorkspaceId,
        user_id: &UserId,
    ) -> Result<Vec<String>>;
    /// Add a member with these roles (comma-joined); `Conflict` when already a member.
    async fn add_member(
        &self,
        workspace_id: &WorkspaceId,
        user_id: &UserId,
        roles: &[String],
    ) -> Result<()>;
    /// Set a member's roles, or remove the member (`roles` empty). `LastOwner` when the
    /// workspace would be left without an owner; `NotFound` when not a member. Serialized per
    /// workspace (its row is locked first), so concurrent demotions cannot both pass.
    async fn change_member(
        &self,
        workspace_id: &WorkspaceId,
        user_id: &UserId,
        roles: &[String],
    ) -> Result<()>;
    /// Members of a workspace: (login, roles), by login.
    async fn list_members(&self, workspace_id: &WorkspaceId) -> Result<Vec<(String, Vec<String>)>>;
    async fn rename_workspace(&self, workspace_id: &WorkspaceId, name: &str) -> Result<()>;
    /// A workspace's own settings (every one `None` when it has set none).
    async fn workspace_settings(&self, workspace_id: &WorkspaceId) -> Result<WorkspaceSettings>;
    async fn put_workspace_settings(&self, s: &WorkspaceSettings) -> Result<()>;
}

/// Repository connections and their webhook secrets.
#[async_trait]
pub trait ConnectionStore: Send + Sync {
    async fn create_connection(&self, c: &NewConnection) -> Result<Connection>;
    /// A live (not deleted) connection.
    async fn connection(&self, id: &ConnectionId) -> Result<Option<Connection>>;
    async fn list_connections(&self, workspace_id: Option<&WorkspaceId>)
    -> Result<Vec<Connection>>;
    /// Replace the accepted secrets of a live connection; false if there is none.
    async fn set_connection_secrets(
        &self,
        id: &ConnectionId,
        secret: &WebhookSecret,
        previous: Option<&WebhookSecret>,
    ) -> Result<bool>;
    /// Soft-delete: the connection stops accepting deliveries; its history stays.
    async fn delete_connection(&self, id: &ConnectionId) -> Result<bool>;
    /// Keep a GitHub App (its key and secrets sealed); one with the same slug is replaced.
    async fn put_github_app(&self, app: &GithubApp) -> Result<()>;
    /// Every GitHub App endor made, oldest first, their secrets opened.
    async fn github_apps(&self) -> Result<Vec<GithubApp>>;
    /// The live connections of a repository on a forge (`repo` in any case), oldest first.
    async fn connections_for_repo(&self, forge: ForgeKind, repo: &str) -> Result<Vec<Connection>>;
    /// Record an installation (again: its account and workspace updated, not deleted).
    async fn put_installation(&self, i: &GithubInstallation) -> Result<()>;
    async fn installation(&self, id: i64) -> Result<Option<GithubInstallation>>;
    /// Mark an installation suspended (or not) and, with `deleted`, deleted.
    async fn set_installation_state(&self, id: i64, suspended: bool, deleted: bool)
    -> Result<bool>;
    /// Record the installation a connection came from.
    async fn set_connection_installation(
        &self,
        id: &ConnectionId,
        installation: Option<i64>,
    ) -> Result<bool>;
    /// Record (or forget) the forge's webhook endor created for a connection.
    async fn set_connection_hook(&self, id: &ConnectionId, hook_id: Option<&str>) -> Result<bool>;
}

/// Webhook deliveries (and the jobs they queue, in the same transaction).
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Store a batch of deliveries in one transaction (group commit). Each result says whether
    /// the delivery was new or a redelivery of one already stored.
    async fn insert_deliveries(&self, batch: &[NewDelivery]) -> Result<Vec<Inserted>>;
    async fn count_deliveries(&self, connection_id: Option<&ConnectionId>) -> Result<i64>;
    /// Newest first.
    async fn list_deliveries(
        &self,
        connection_id: Option<&ConnectionId>,
        limit: i64,
    ) -> Result<Vec<Delivery>>;
    /// The deliveries about one pull request, oldest first (at most `limit`, the newest).
    async fn pr_deliveries(
        &self,
        connection_id: &ConnectionId,
        number: i64,
        limit: i64,
    ) -> Result<Vec<Delivery>>;
}

/// Sites, their resources, generations and tags.
#[async_trait]
pub trait SiteStore: Send + Sync {
    /// A new site in state `creating`; the name must be free among sites not deleted.
    async fn create_site(&self, s: &NewSite) -> Result<Site>;
    async fn set_site_state(&self, id: &SiteId, state: SiteState) -> Result<()>;
    async fn set_site_protected(&self, id: &SiteId, protected: bool) -> Result<()>;
    /// The site's own uid: the one it has, or the lowest in `first..=last` that no live site
    /// holds (two live sites never share one; a deleted site's is free again).
    async fn assign_site_uid(&self, id: &SiteId, first: u32, last: u32) -> Result<u32>;
    /// The site of that name that is not deleted.
    async fn site_by_name(&self, name: &str) -> Result<Option<Site>>;
    /// Every site ever named `name`, deleted ones too, oldest first (their audit trail
    /// outlives them).
    async fn sites_ever_named(&self, name: &str) -> Result<Vec<SiteId>>;
    async fn site(&self, id: &SiteId) -> Result<Option<Site>>;
    /// Sites not deleted, by name.
    async fn list_sites(&self) -> Result<Vec<Site>>;
    /// Insert or replace one resource record.
    async fn put_resource(&self, r: &SiteResource) -> Result<()>;
    async fn site_resources(&self, site_id: &SiteId) -> Result<Vec<SiteResource>>;
    async fn delete_resources(&self, site_id: &SiteId) -> Result<()>;
    /// Record a new generation with the next sequence number.
    async fn add_generation(&self, site_id: &SiteId) -> Result<Generation>;
    /// Oldest first.
    async fn generations(&self, site_id: &SiteId) -> Result<Vec<Generation>>;
    async fn delete_generation(&self, id: &str) -> Result<()>;
    /// A site's tags, sorted.
    async fn site_tags(&self, site_id: &SiteId) -> Result<Vec<String>>;
    /// False when the site had the tag already.
    async fn add_site_tag(&self, site_id: &SiteId, tag: &str) -> Result<bool>;
    /// False when the site did not have the tag.
    async fn remove_site_tag(&self, site_id: &SiteId, tag: &str) -> Result<bool>;
    /// Every site's resources, by site, kind and name (one query for a whole list).
    async fn all_site_resources(&self) -> Result<Vec<SiteResource>>;
    /// Every site's generations, by site, oldest first.
    async fn all_generations(&self) -> Result<Vec<Generation>>;
    /// Every site's tags, as `(site id, tag)`, by site and tag.
    async fn all_site_tags(&self) -> Result<Vec<(SiteId, String)>>;
    /// A workspace's sites (deleted ones included) alive at some time in `[from, to)`.
    async fn workspace_sites_between(
        &self,
        workspace_id: &WorkspaceId,
        from: i64,
        to: i64,
    ) -> Result<Vec<Site>>;
}

/// A site's access settings at the gateway.
#[async_trait]
pub trait AccessStore: Send + Sync {
    async fn site_access(&self, site_id: &SiteId) -> Result<Option<SiteAccess>>;
    /// The access settings of the live site of that name (what the gateway checks).
    async fn site_access_by_name(&self, site_name: &str) -> Result<Option<SiteAccess>>;
    async fn put_site_access(&self, a: &SiteAccess) -> Result<()>;
}

/// What the gateway serves for each site name.
#[async_trait]
pub trait RouteStore: Send + Sync {
    /// Insert or replace the route of a site name.
    async fn put_route(&self, route: &RouteRow) -> Result<()>;
    async fn route(&self, site_name: &str) -> Result<Option<RouteRow>>;
    async fn delete_route(&self, site_name: &str) -> Result<()>;
    async fn list_routes(&self) -> Result<Vec<RouteRow>>;
    /// How many changes were made to routes, access settings and sites (name, state,
    /// protection) so far: the same number means what a gateway keeps of them is still good.
    async fn gateway_changes(&self) -> Result<i64>;
}

/// Previews of pull requests and the steps of their runs.
#[async_trait]
pub trait PreviewStore: Send + Sync {
    /// Insert or replace a preview (unique per connection and number).
    async fn put_preview(&self, p: &Preview) -> Result<()> {
        self.put_preview_with_outbox(p, &[], crate::now_ms()).await
    }
    /// [`Store::put_preview`] and the write-backs its new state asks for, in one transaction:
    /// a crash keeps both or neither.
    async fn put_preview_with_outbox(
        &self,
        p: &Preview,
        rows: &[NewOutbox],
        now: i64,
    ) -> Result<()>;
    async fn preview(&self, connection_id: &ConnectionId, number: i64) -> Result<Option<Preview>>;
    /// The newest preview that uses this site name.
    async fn preview_by_site_name(&self, site_name: &str) -> Result<Option<Preview>>;
    async fn list_previews(&self) -> Result<Vec<Preview>>;
    /// Insert or replace one step of a run.
    async fn put_step(&self, s: &PreviewStep) -> Result<()>;
    /// The steps of the preview's newest run, in order.
    async fn last_run_steps(&self, preview_id: &PreviewId) -> Result<Vec<PreviewStep>>;
    /// [`PreviewStore::last_run_steps`] of every preview, by preview, in order.
    async fn all_last_run_steps(&self) -> Result<Vec<PreviewStep>>;
}

/// The durable outbox of write-backs, and the ids forges gave back.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Store a write-back; replaces the payload of a pending item of the same key.
    async fn enqueue_outbox(&self, item: &NewOutbox, now: i64) -> Result<()>;
    /// Take up to `limit` due items (pending, or sending with an expired lease) whose key has
    /// no other item being sent; they become `sending` under `worker`'s lease.
    async fn claim_outbox(
        &self,
        worker: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>>;
    /// End an item `worker` holds; false if its lease was lost.
    async fn finish_outbox(
        &self,
        id: &str,
        worker: &str,
        end: &OutboxEnd,
        now: i64,
    ) -> Result<bool>;
    /// Oldest first.
    async fn outbox_items(&self, connection_id: &ConnectionId) -> Result<Vec<OutboxItem>>;
    /// One pull request's write-backs (sent, pending, failed and unsent), oldest first.
    async fn pr_outbox(&self, connection_id: &ConnectionId, number: i64)
    -> Result<Vec<OutboxItem>>;
    /// An id the forge gave back (the status comment, the deployment) for a PR.
    async fn forge_ref(
        &self,
        connection_id: &ConnectionId,
        number: i64,
        kind: &str,
    ) -> Result<Option<String>>;
    async fn put_forge_ref(
        &self,
        connection_id: &ConnectionId,
        number: i64,
        kind: &str,
        ref_id: &str,
    ) -> Result<()>;
}

/// Which slash-commands of a comment already ran.
#[async_trait]
pub trait CommandStore: Send + Sync {
    /// The commands of a comment that already ran, with their recorded outcomes.
    async fn comment_commands(
        &self,
        connection_id: &ConnectionId,
        comment_id: &str,
    ) -> Result<Vec<(String, String)>>;
    /// Record that a command of a comment ran (a second record of it is ignored).
    async fn record_comment_command(
        &self,
        connection_id: &ConnectionId,
        comment_id: &str,
        command: &str,
        outcome: &str,
        now: i64,
    ) -> Result<()>;
}

/// Named leases (one reaper pass at a time).
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Take (or renew) the named lease until `until` unless another owner holds it unexpired.
    async fn try_lease(&self, name: &str, owner: &str, now: i64, until: i64) -> Result<bool>;
    async fn release_lease(&self, name: &str, owner: &str) -> Result<()>;
    /// The unexpired leases whose name starts with `prefix`: (name, owner).
    async fn leases_with_prefix(&self, prefix: &str, now: i64) -> Result<Vec<(String, String)>>;
}

/// One backup of a site: a restic snapshot in a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Backup {
    pub id: String,
    pub site_id: SiteId,
    pub site_name: String,
    pub repository: String,
    pub snapshot_id: String,
    /// The folder restic recorded (the generation backed up).
    pub source_path: String,
    /// Comma-separated.
    pub tags: String,
    /// JSON `[[kind, name], ...]`.
    pub resources: String,
    pub files: i64,
    pub bytes: i64,
    pub bytes_added: i64,
    pub created_at: i64,
    pub created_by: String,
    /// JSON: every file's SHA-256 and every SQLite table's rows and checksum (a drill checks
    /// a restore against it).
    #[serde(skip)]
    pub manifest: String,
    /// The newest drill of this backup: when, and whether it passed (1) or failed (0).
    pub last_drill_at: Option<i64>,
    pub last_drill_ok: Option<i64>,
    /// The snapshot's copy in the off-site repository, once copied there.
    pub offsite_snapshot_id: Option<String>,
}

/// A retention policy set for a site or a workspace; `None`: the next scope's.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema,
)]
pub struct RetentionRow {
    pub keep_last: Option<i64>,
    pub keep_daily: Option<i64>,
    pub keep_weekly: Option<i64>,
    pub keep_monthly: Option<i64>,
}

/// What a retention policy is set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionScope {
    Site,
    Workspace,
}

impl RetentionScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Site => "site",
            Self::Workspace => "workspace",
        }
    }
}

/// One restore drill of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Drill {
    pub id: String,
    pub backup_id: String,
    pub at: i64,
    pub ok: i64,
    pub detail: String,
    pub duration_ms: i64,
}

/// Backups and the passphrases of their repositories.
#[async_trait]
pub trait BackupStore: Send + Sync {
    /// The passphrase of the repository at `url` (opened), if endor made one.
    async fn backup_passphrase(&self, url: &str) -> Result<Option<String>>;
    /// Keep `passphrase` (sealed) for `url` unless one is kept already; the one kept.
    async fn keep_backup_passphrase(&self, url: &str, passphrase: &str) -> Result<String>;
    async fn insert_backup(&self, b: &Backup) -> Result<()>;
    /// Newest first; a site's only, or every site's.
    async fn backups(&self, site_id: Option<&SiteId>) -> Result<Vec<Backup>>;
    /// By id, or by a prefix of it (at least 8 characters) or of its snapshot's id.
    async fn backup(&self, id: &str) -> Result<Option<Backup>>;
    async fn insert_drill(&self, d: &Drill) -> Result<()>;
    /// Forget the backups of these snapshots (full ids, or the short ones a row keeps) and
    /// their drills; how many were forgotten.
    async fn delete_backups(&self, snapshot_ids: &[String]) -> Result<u64>;
    /// Drills by outcome: (passed, failed), over every backup.
    async fn drill_counts(&self) -> Result<(i64, i64)>;
    /// Sites that said whether they are backed up on schedule (the others: if protected).
    async fn backup_schedules(&self) -> Result<Vec<(SiteId, bool)>>;
    /// Say (or, with `None`, forget) whether a site is backed up on schedule.
    async fn set_backup_schedule(&self, site_id: &SiteId, scheduled: Option<bool>) -> Result<()>;
    /// The retention policy set for a site or a workspace (by id), if any.
    async fn backup_retention(
        &self,
        scope: RetentionScope,
        id: &str,
    ) -> Result<Option<RetentionRow>>;
    /// Set (or, with `None`, forget) the retention policy of a site or a workspace.
    async fn set_backup_retention(
        &self,
        scope: RetentionScope,
        id: &str,
        policy: Option<RetentionRow>,
    ) -> Result<()>;
    /// Forget the off-site copies with these snapshot ids (full, or short).
    async fn forget_offsite_copies(&self, snapshot_ids: &[String]) -> Result<u64>;
    /// Record the off-site copy of a backup.
    async fn set_offsite_snapshot(&self, backup_id: &str, snapshot_id: &str) -> Result<()>;
}

/// The audit trail.
#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn record_audit(
        &self,
        caller: &str,
        action: &str,
        site_id: Option<&SiteId>,
        detail: &str,
    ) -> Result<()>;
    async fn audit_events(&self, site_id: Option<&SiteId>) -> Result<Vec<AuditEvent>>;
}

/// Usage samples and the CPU readings of site processes.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Add CPU and GiB-hours to a site's month; `sampled_at > 0` also records `last_bytes`.
    async fn add_site_usage(&self, u: &SiteUsage) -> Result<()>;
    async fn site_usage(&self, month: &str) -> Result<Vec<SiteUsage>>;
    /// The newest storage sample of a site: (bytes, when).
    async fn last_storage_sample(&self, site_id: &SiteId) -> Result<Option<(i64, i64)>>;
    async fn usage_procs(&self) -> Result<Vec<UsageProc>>;
    async fn put_usage_proc(&self, p: &UsageProc) -> Result<()>;
    async fn delete_usage_proc(&self, pid: i64, start_ticks: i64) -> Result<()>;
}

/// An API bearer token (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub user_id: UserId,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// One line of the audit trail (e.g. a bypass of production protection and who asked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AuditEvent {
    pub id: String,
    pub at: i64,
    pub caller: String,
    pub action: String,
    pub site_id: Option<SiteId>,
    pub detail: String,
}

/// A site's usage in one month (UTC `YYYY-MM`), or a sample's increment of it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct SiteUsage {
    pub site_id: SiteId,
    pub month: String,
    pub cpu_ms: i64,
    pub gib_hours: f64,
    pub last_bytes: i64,
    pub sampled_at: i64,
}

/// The last CPU reading of one site process.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageProc {
    pub site_id: SiteId,
    pub pid: i64,
    pub start_ticks: i64,
    pub cpu_ms: i64,
}

/// Open the store named by `url` (`sqlite:...` or `postgres://...`).
/// A store URL as it may be printed: a password in it is replaced by `***`.
pub fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The file of a SQLite store URL (`sqlite://data/endor.db`), `None` for another backend or
/// an in-memory database.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return None;
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let f = opts.get_filename();
    (!f.as_os_str().is_empty() && f != std::path::Path::new(":memory:")).then(|| f.to_path_buf())
}

/// The store at `url`, migrated, its secrets sealed with the master key in `master_key_file`
/// (made on first start); secrets stored before sealing are sealed now.
pub async fn open(
    url: &str,
    max_connections: u32,
    master_key_file: &std::path::Path,
) -> anyhow::Result<Arc<dyn Store>> {
    let keyring = crate::secret::Keyring::load(master_key_file)?;
    let store = connect(url, max_connections, Arc::new(keyring)).await?;
    store.migrate().await?;
    let sealed = store.reseal_secrets(None).await?;
    if sealed > 0 {
        tracing::info!(sealed, "secrets stored in plain text are now sealed");
    }
    Ok(store)
}

/// The store at `url`; its secrets are sealed with `keyring` (`secrets.master_key_file`).
pub async fn connect(
    url: &str,
    max_connections: u32,
    keyring: Arc<crate::secret::Keyring>,
) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            SqliteStore::connect(url, max_connections, keyring).await?,
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            PgStore::connect(url, max_connections, keyring).await?,
        ))
    } else {
        Err(StoreError::Unavailable(
            "store.url must start with sqlite: or postgres://".into(),
        ))
    }
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod url_tests {
    #[test]
    fn store_passwords_are_not_printed() {
        assert_eq!(
            super::redacted_url("postgres://endor:s3cret@db:5432/endor"),
            "postgres://endor:***@db:5432/endor"
        );
        assert_eq!(
            super::redacted_url("postgres://endor@db/endor"),
            "postgres://endor@db/endor"
        );
        assert_eq!(
            super::redacted_url("sqlite://data/endor.db"),
            "sqlite://data/endor.db"
        );
    }
}

/// A signed-in browser session (SPEC §14): its user and the CSRF token its forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub csrf: String,
    pub expires_at: i64,
}

/// An invitation to a workspace sent by email (only its token's hash is stored).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Invitation {
    pub token_hash: String,
    pub workspace_id: WorkspaceId,
    pub email: String,
    /// Comma-separated, as in `members.roles`.
    pub roles: String,
    pub invited_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub accepted_at: Option<i64>,
}

/// One event told to one user: a line of their inbox and, when `mail_state` is not `none`,
/// a mail in the outbox.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Notification {
    pub id: String,
    pub user_id: UserId,
    pub workspace_id: Option<String>,
    pub kind: String,
    pub inbox: i64,
    pub event_key: String,
    pub subject: String,
    pub body: String,
    pub link: Option<String>,
    pub created_at: i64,
    pub read_at: Option<i64>,
    pub mail_state: String,
    pub mail_to: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub sent_at: Option<i64>,
}

/// A notification to store (see [`DashboardStore::add_notifications`]).
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub user_id: UserId,
    pub workspace_id: Option<WorkspaceId>,
    pub kind: String,
    pub event_key: String,
    pub subject: String,
    pub body: String,
    pub link: Option<String>,
    /// Shown in the inbox.
    pub inbox: bool,
    /// Mailed to this address.
    pub mail_to: Option<String>,
}

/// A user's choice for one event kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotificationPref {
    pub kind: String,
    pub inbox: bool,
    pub email: bool,
}

/// Passwords, sessions, invitations, notifications and their mail outbox.
#[async_trait]
pub trait DashboardStore: Send + Sync {
    /// Set (or, `None`, clear) a user's password hash; every session of theirs ends.
    async fn set_password_hash(&self, user_id: &UserId, hash: Option<&str>) -> Result<()>;
    /// A user and their password hash, by login.
    async fn user_password(&self, login: &str) -> Result<Option<(User, Option<String>)>>;
    /// A user by id.
    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>>;
    /// A workspace's members with their user rows and roles.
    async fn member_users(&self, workspace_id: &WorkspaceId) -> Result<Vec<(User, Vec<String>)>>;
    async fn create_session(
        &self,
        id_hash: &str,
        user_id: &UserId,
        csrf: &str,
        expires_at: i64,
    ) -> Result<()>;
    /// The session whose cookie hashes to `id_hash`, unless it expired by `now`.
    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<Session>>;
    async fn delete_session(&self, id_hash: &str) -> Result<()>;
    async fn create_invitation(&self, i: &Invitation) -> Result<()>;
    async fn invitation(&self, token_hash: &str) -> Result<Option<Invitation>>;
    /// Mark an invitation taken; false when it was already (a link works once).
    async fn accept_invitation(&self, token_hash: &str, now: i64) -> Result<bool>;
    /// Store notifications; one already stored for the same (event_key, user) is left as
    /// it is. The number stored.
    async fn add_notifications(&self, list: &[NewNotification], now: i64) -> Result<u64>;
    /// A user's inbox, newest first.
    async fn inbox(&self, user_id: &UserId, limit: i64) -> Result<Vec<Notification>>;
    async fn unread_count(&self, user_id: &UserId) -> Result<i64>;
    /// Mark one (or, `None`, every) notification of the user read.
    async fn mark_read(&self, user_id: &UserId, id: Option<&str>, now: i64) -> Result<u64>;
    /// Take up to `limit` mails due by `now` (pending, or sending with a lapsed lease) for
    /// one sender until `lease_until`.
    async fn claim_mails(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<Notification>>;
    /// A mail was accepted by the SMTP server.
    async fn mail_sent(&self, id: &str, now: i64) -> Result<()>;
    /// A mail could not be sent: tried again at `run_after`, or (None) given up.
    async fn mail_failed(&self, id: &str, error: &str, run_after: Option<i64>) -> Result<()>;
    /// Every notification (tests and `doctor`): the mail states.
    async fn all_notifications(&self) -> Result<Vec<Notification>>;
    async fn notification_prefs(&self, user_id: &UserId) -> Result<Vec<NotificationPref>>;
    async fn set_notification_pref(&self, user_id: &UserId, p: &NotificationPref) -> Result<()>;
}
