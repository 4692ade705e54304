//! Typed configuration: built-in defaults, then a TOML file, then `ENDOR__SECTION__KEY`
//! environment variables. Unknown keys and ill-typed values are errors that name the key.
//!
//! Where the file comes from: `--config FILE`, else `ENDOR_CONFIG`, else `config/endor.toml`
//! when it exists in the working directory, else none (the defaults alone: `endor serve` in an
//! empty folder just works).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::size::ByteSize;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub gateway: GatewayConfig,
    pub store: StoreConfig,
    pub storage: StorageConfig,
    pub regions: RegionsConfig,
    pub secrets: SecretsConfig,
    pub backups: BackupsConfig,
    pub webhooks: WebhooksConfig,
    pub postgres: PostgresConfig,
    pub mariadb: MariadbConfig,
    pub previews: PreviewsConfig,
    pub runtime: RuntimeConfig,
    pub jobs: JobsConfig,
    pub writeback: WritebackConfig,
    pub commands: CommandsConfig,
    pub reaper: ReaperConfig,
    pub usage: UsageConfig,
    pub dashboard: DashboardConfig,
    pub email: EmailConfig,
    pub logs: LogsConfig,
    pub github: ForgeConfig,
    pub gitlab: ForgeConfig,
    pub gitea: ForgeConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Webhooks, JSON API and dashboard.
    pub listen: SocketAddr,
    /// How forges reach this server; webhook URLs printed by `repo connect` start with it.
    pub public_url: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            public_url: "http://127.0.0.1:8080".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub domain: String,
    /// Proxies in front of the gateway (CIDRs) whose `X-Forwarded-For` is believed; from any
    /// other peer the header is ignored.
    pub trusted_proxies: Vec<String>,
    /// How long (ms) the gateway reuses a site's route and access settings, and a static
    /// preview's small answers (files up to 256 KiB, 32 MiB in all), before reading them
    /// again (0: every request reads the store and the folder). Changes apply within this time.
    pub cache_ttl_ms: u64,
    /// Each request of a site is a line of its `access` log (and a refusal or an app not
    /// answering one of its `error` log).
    pub access_log: bool,
    /// Longest a site's app may take to start answering a request (its status and headers);
    /// past it the visitor gets 504 and the site's `error` log a line. 0: no limit.
    pub upstream_timeout: HumanDuration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8081).into(),
            domain: "preview.localhost".into(),
            trusted_proxies: Vec::new(),
            cache_ttl_ms: 1000,
            access_log: true,
            upstream_timeout: HumanDuration(std::time::Duration::from_secs(60)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (embedded default) or `postgres://...`.
    pub url: String,
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/endor.db".into(),
            max_connections: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Where site files and SQLite site databases live.
    pub root: PathBuf,
    /// One bare git mirror per repository connection.
    pub git: PathBuf,
    /// Site logs (`{logs}/{site id}/{service}.log`).
    pub logs: PathBuf,
    /// The older name of `secrets.master_key_file`, still read when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<PathBuf>,
}

/// Regions (SPEC §12): `[regions] default = "NAME"` and one `[regions.NAME]` table per region.
/// Without any `[regions.*]` there is one region, `default`, on `storage.root`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegionsConfig {
    /// The region of a site created without `--region` (and of a repository connected without
    /// one).
    pub default: String,
    /// `[regions.NAME]` tables, by concrete name.
    #[serde(flatten)]
    pub list: std::collections::BTreeMap<String, RegionConfig>,
}

impl Default for RegionsConfig {
    fn default() -> Self {
        Self {
            default: "default".into(),
            list: Default::default(),
        }
    }
}

/// A name of a workspace, user or region: 1-64 letters, digits, `-`, `_` or `.`, not starting
/// with `-` or `.`.
pub fn plain_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with(['-', '.'])
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl RegionsConfig {
    /// Names, a storage root each, the default configured, aliases that are not also region
    /// names.
    pub fn check(&self) -> Result<(), String> {
        let valid = |kind: &str, n: &str| {
            if plain_name(n) {
                Ok(())
            } else {
                Err(format!(
                    "invalid {kind} `{}`: use 1-64 letters, digits, `-`, `_` or `.`, not starting with `-` or `.`",
                    n.escape_debug()
                ))
            }
        };
        valid("regions.default", &self.default)?;
        if self.list.is_empty() {
            return Ok(());
        }
        if !self.list.contains_key(&self.default) {
            return Err(format!(
                "default = \"{}\" is not one of the configured regions ({})",
                self.default,
                self.list.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        for (name, region) in &self.list {
            valid("region", name)?;
            if region.storage_root.as_os_str().is_empty() {
                return Err(format!("[regions.{name}] needs storage_root"));
            }
            for alias in &region.aliases {
                valid("region alias", alias)?;
                if self.list.contains_key(alias) {
                    return Err(format!(
                        "[regions.{name}] alias \"{alias}\" is also the name of a region"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One region: where its sites' files, databases and backups live.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegionConfig {
    /// The folder every site of the region lives under (in place of `storage.root`).
    pub storage_root: PathBuf,
    /// Abstract names that resolve to this region (`europe`, `eu`).
    pub aliases: Vec<String>,
    /// The PostgreSQL server of the `template` strategy in this region (else
    /// `postgres.admin_url`).
    pub postgres_admin_url: String,
    /// The restic repository of this region's backups (else `backups.repository`).
    pub backup_repository: String,
    /// Every worker host of the region sees `storage_root` (a shared file system): a preview of
    /// a lost host is started again by another worker of the region; else it is marked failed.
    pub shared_storage: bool,
}

/// Backups of sites (`endor backup`): where restic writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupsConfig {
    /// The restic repository backups are written to; empty: backups are off. It should
    /// refuse deletes and overwrites (`rclone serve restic --append-only`):
    /// `rest:http://127.0.0.1:8093/`. Its passphrase is made on first use and kept sealed in
    /// the store.
    pub repository: String,
    /// The restic program.
    pub restic: PathBuf,
    /// restic's cache (made private).
    pub cache: PathBuf,
    /// When `endor serve` backs up the sites that are scheduled (protected sites unless they
    /// say otherwise; others that say so): cron, 6 fields, seconds first, UTC.
    pub schedule: String,
    /// What `endor backup forget` keeps of each site's backups (restic's policy): the newest
    /// `keep_last`, and the newest of each of the last `keep_daily` days, `keep_weekly`
    /// weeks and `keep_monthly` months.
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    /// How many of each site's newest backups are also kept on this host as copy-on-write
    /// copies beside the site, restored without reading the repository.
    pub local_copies: u32,
    /// An off-site restic repository every new backup is also copied to (`restic copy`);
    /// empty: none. With `offsite_ssh` it is an `rclone:` repository reached over SSH.
    pub offsite: String,
    /// The SSH command (no shell: words, quotes allowed) restic runs to reach `offsite`, whose
    /// host answers that key with a forced command serving an append-only repository:
    /// `command="rclone serve restic --stdio --append-only /srv/endor",restrict ssh-ed25519 …`.
    pub offsite_ssh: String,
}

impl BackupsConfig {
    pub fn parsed_schedule(&self) -> Result<cron::Schedule, String> {
        parse_cron(&self.schedule)
    }

    /// The retention policy `[backups]` sets for every site.
    pub fn retention(&self) -> Retention {
        Retention {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
        }
    }
}

/// What `backup forget` keeps of a site's backups (restic's policy): the newest `keep_last`,
/// and the newest of each of the last `keep_daily` days, `keep_weekly` weeks and
/// `keep_monthly` months.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Retention {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl Default for BackupsConfig {
    fn default() -> Self {
        Self {
            repository: String::new(),
            restic: "restic".into(),
            cache: "data/backups/cache".into(),
            schedule: "0 0 3 * * *".into(),
            keep_last: 7,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 6,
            local_copies: 2,
            offsite: String::new(),
            offsite_ssh: String::new(),
        }
    }
}

/// The master key that seals the secrets endor keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// 32 random bytes, made (mode 0600) on first start; seals webhook secrets and generated
    /// basic-auth passwords in the store. `endor secrets rotate` replaces it.
    pub master_key_file: PathBuf,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            master_key_file: "data/secret.key".into(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            root: "data/sites".into(),
            git: "data/git".into(),
            logs: "data/logs".into(),
            secret_key: None,
        }
    }
}

/// Sites' logs (`endor site logs`): how long they are kept and how big they may grow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    /// Lines older than this are removed by the reaper (a deleted site's logs too).
    pub retention: HumanDuration,
    /// Every log of one site together; past it its oldest lines go (a reader is told).
    pub max_bytes_per_site: ByteSize,
    /// A longer line is cut, with a marker counting the rest.
    pub max_line_bytes: ByteSize,
    /// Per-site database servers log statements that take longer (ms) to the site's
    /// `postgres` / `mariadb` log; 0 logs none.
    pub slow_query_ms: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            retention: HumanDuration(std::time::Duration::from_secs(7 * 24 * 3600)),
            max_bytes_per_site: ByteSize(64 << 20),
            max_line_bytes: ByteSize(16 << 10),
            slow_query_ms: 500,
        }
    }
}

/// Usage metering (what billing members see) and the rates that price it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// How often `endor serve` samples CPU and physical storage of every live site.
    pub sample_interval: HumanDuration,
    /// Shown beside every cost.
    pub currency: String,
    /// Price of one hour of a site existing.
    pub site_hour: f64,
    /// Price of one GiB of physically used storage kept for a month (730 hours).
    pub gib_month: f64,
    /// Price of one hour of CPU time of a site's processes.
    pub cpu_hour: f64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            sample_interval: HumanDuration(std::time::Duration::from_secs(300)),
            currency: "USD".into(),
            site_hour: 0.005,
            gib_month: 0.10,
            cpu_hour: 0.04,
        }
    }
}

/// The dashboard's sign-in (SPEC §14).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// How long a sign-in lasts.
    pub session_ttl: HumanDuration,
    /// How long an invitation link can be used.
    pub invitation_ttl: HumanDuration,
    /// Failed sign-ins allowed per visitor address and per login in a minute; more are refused
    /// (429) until the minute has passed.
    pub sign_in_attempts: u32,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            session_ttl: HumanDuration(std::time::Duration::from_secs(7 * 24 * 3600)),
            invitation_ttl: HumanDuration(std::time::Duration::from_secs(7 * 24 * 3600)),
            sign_in_attempts: 10,
        }
    }
}

/// How notifications are mailed (SPEC §13). Without `smtp_url`, notifications go to the
/// dashboard's inbox only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// `smtp://host:port` (empty: no mail). User and password may be given in it.
    pub smtp_url: String,
    /// The sender, e.g. `endor <endor@example.com>`.
    pub from: String,
    /// `none` (plain SMTP, for a relay on loopback), `starttls` (upgrade, required) or `tls`
    /// (implicit TLS, usually port 465).
    pub tls: String,
    /// How many times a mail is tried before it is given up.
    pub max_attempts: u32,
    /// The wait before the first retry of a mail; each next one waits twice as long, at most
    /// an hour.
    pub retry_after: HumanDuration,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_url: String::new(),
            from: "endor <endor@localhost>".into(),
            tls: "starttls".into(),
            max_attempts: 20,
            retry_after: HumanDuration(std::time::Duration::from_secs(10)),
        }
    }
}

/// The reaper: expired previews destroyed, orphans swept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReaperConfig {
    /// When passes run inside `endor serve`: cron with seconds first (6 fields).
    pub schedule: String,
    /// How long before expiry the status comment warns.
    pub warn_before: HumanDuration,
    /// Orphans younger than this are left alone (a site being created is never swept).
    pub grace: HumanDuration,
    /// Run passes inside `endor serve` at all.
    pub enabled: bool,
    /// How long a pass (and each teardown it starts) holds its lease; a reaper killed midway
    /// is taken over once it expires. Renewed as the pass goes.
    pub lease: HumanDuration,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        Self {
            schedule: "0 */5 * * * *".into(),
            warn_before: HumanDuration(std::time::Duration::from_secs(24 * 3600)),
            grace: HumanDuration(std::time::Duration::from_secs(600)),
            enabled: true,
            lease: HumanDuration(std::time::Duration::from_secs(60)),
        }
    }
}

impl ReaperConfig {
    /// The parsed schedule; the error names what is wrong.
    pub fn parsed_schedule(&self) -> Result<cron::Schedule, String> {
        parse_cron(&self.schedule)
    }
}

/// Run `work` at each upcoming time of `schedule` (given that time, in ms) until `stop` says
/// so; a late run delays the next, never bunches them up.
pub async fn on_schedule<F, Fut>(
    schedule: cron::Schedule,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut work: F,
) where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let Some(next) = schedule.upcoming(chrono::Utc).next() else {
            return;
        };
        let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        work(next.timestamp_millis()).await;
    }
}

/// A 6-field cron expression (seconds first), with an error that says how to write one.
fn parse_cron(schedule: &str) -> Result<cron::Schedule, String> {
    let fields = schedule.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(format!(
            "`{}` has {fields} fields; write 6 (seconds first), e.g. \"0 */5 * * * *\"",
            schedule.escape_debug()
        ));
    }
    schedule.parse::<cron::Schedule>().map_err(|e| {
        format!(
            "`{}` is not a cron expression: {e}",
            schedule.escape_debug()
        )
    })
}

/// Slash-commands in PR comments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// What a command line starts with (`/preview deploy`).
    pub prefix: String,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            prefix: "/preview".into(),
        }
    }
}

/// What every repository's previews get unless its `.endor.toml` says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreviewsConfig {
    /// Build previews of draft PRs too.
    pub drafts: bool,
    /// Expiry after the last activity when `.endor.toml` names no `ttl`.
    pub default_ttl: HumanDuration,
    /// The longest `ttl` (or `/preview extend`) allowed.
    pub max_ttl: HumanDuration,
}

impl Default for PreviewsConfig {
    fn default() -> Self {
        Self {
            drafts: false,
            default_ttl: HumanDuration(std::time::Duration::from_secs(72 * 3600)),
            max_ttl: HumanDuration(std::time::Duration::from_secs(30 * 86_400)),
        }
    }
}

/// How PR code runs: build steps and the site process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Unprivileged OS user builds and site processes run as when endor runs as root and
    /// `runtime.isolation = "none"` (with isolation, each site has a uid of its own).
    pub user: String,
    /// Longest a single build step may run.
    pub build_timeout: HumanDuration,
    /// Most bytes of build output kept in the build log.
    pub output_cap: usize,
    /// Longest a started site may take to pass its health check.
    pub health_timeout: HumanDuration,
    /// Where PR code runs: `local` (processes on this host, confined per `isolation`) or
    /// `docker` (containers through the Docker Engine API).
    pub kind: RuntimeKind,
    /// With `kind = "docker"`: the image when `.endor.toml` names none.
    pub image: String,
    /// How PR code is confined: `sandbox` (bubblewrap namespaces, a uid per site, cgroup
    /// limits) or `none` (which must be said explicitly; `serve` warns at every start).
    pub isolation: Isolation,
    /// `shared`: previews reach the network as the host does; `isolated`: a network namespace
    /// of their own (through pasta), with no route to the host's loopback services or to other
    /// previews.
    pub network: NetworkMode,
    /// uids (and gids) given to sites, one each (`first-last`).
    pub uid_range: UidRange,
    /// Where the cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
    /// Limits of each site's processes; `.endor.toml` `[preview.limits]` may only lower them.
    pub limits: LimitsConfig,
    /// The address gateways reach this host's previews at (recorded with each route). Other
    /// than loopback, a preview's app must listen on every address (`0.0.0.0:$PORT`).
    pub advertise: std::net::IpAddr,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            user: "nobody".into(),
            build_timeout: HumanDuration(std::time::Duration::from_secs(600)),
            output_cap: 1024 * 1024,
            health_timeout: HumanDuration(std::time::Duration::from_secs(60)),
            kind: RuntimeKind::Local,
            image: "debian:bookworm-slim".into(),
            isolation: Isolation::Sandbox,
            network: NetworkMode::Shared,
            uid_range: UidRange {
                first: 200_000,
                last: 299_999,
            },
            cgroup_root: "/sys/fs/cgroup".into(),
            limits: LimitsConfig::default(),
            advertise: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Local,
    Docker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Sandbox,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Shared,
    Isolated,
}

/// `runtime.uid_range = "200000-299999"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

impl std::str::FromStr for UidRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "runtime.uid_range `{}`: write FIRST-LAST, both above 999 and below 4294967294, FIRST <= LAST",
                s.escape_debug()
            )
        };
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        // Below 1000 are system accounts; 65534 is nobody; u32::MAX - 1 and MAX mean "none".
        if first < 1000 || first > last || last >= u32::MAX - 1 || (first..=last).contains(&65534) {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

impl From<UidRange> for String {
    fn from(r: UidRange) -> String {
        format!("{}-{}", r.first, r.last)
    }
}

impl<'de> Deserialize<'de> for UidRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `[runtime.limits]`: what one site's processes may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Memory of all the site's processes together; past it the kernel kills one of them.
    pub memory: ByteSize,
    /// CPU time, in cores (0.5 = half a core).
    pub cpus: f64,
    /// Processes and threads at once (a fork bomb stops here).
    pub processes: u32,
    /// What the site's code may write into its checkout, files and SQLite folders (measured
    /// while it runs; past it the step or process is stopped).
    pub disk: ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            memory: ByteSize(512 << 20),
            cpus: 1.0,
            processes: 256,
            disk: ByteSize(2 << 30),
        }
    }
}

/// The job workers of `endor serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Jobs run at once by this process (each PR still runs one job at a time).
    pub workers: usize,
    /// A claimed job's lease; heartbeats extend it, and a job whose worker died is taken
    /// again once it runs out.
    pub lease: HumanDuration,
    /// Attempts before a transient failure becomes permanent.
    pub max_attempts: i64,
    /// Run only the jobs of this region's sites (`serve --region`); empty: every region's.
    pub region: String,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            lease: HumanDuration(std::time::Duration::from_secs(30)),
            max_attempts: 5,
            region: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Largest body accepted; larger deliveries get 413 (SPEC §3: 25 MiB).
    pub max_body_bytes: usize,
    /// Most deliveries written in one store transaction (group commit).
    pub max_batch: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 25 * 1024 * 1024,
            max_batch: 256,
        }
    }
}

/// Per-site PostgreSQL servers (clone strategy `instance`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Directory of PostgreSQL's programs; empty = the newest under /usr/lib/postgresql.
    pub bin_dir: String,
    /// OS user the servers run as when endor runs as root (PostgreSQL refuses root).
    pub os_user: String,
    /// `instance` (a server per site), `template` (databases on the shared server at
    /// `admin_url`), or `auto`: instance when PostgreSQL's programs and the OS user are there,
    /// else template when `admin_url` is set.
    pub strategy: String,
    /// Superuser URL of the shared server for strategy `template`.
    pub admin_url: String,
    /// Per-site servers also listen on 127.0.0.1 (a port each; `DATABASE_URL` then names it).
    /// Off: only their Unix socket, which only the site's own processes can reach.
    pub tcp: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            bin_dir: String::new(),
            os_user: "postgres".into(),
            strategy: "auto".into(),
            admin_url: String::new(),
            tcp: false,
        }
    }
}

/// Per-site MariaDB servers (clone strategy `instance`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MariadbConfig {
    /// OS user the servers run as when endor runs as root.
    pub os_user: String,
    /// Per-site servers also listen on 127.0.0.1 (see `postgres.tcp`).
    pub tcp: bool,
}

impl Default for MariadbConfig {
    fn default() -> Self {
        Self {
            os_user: "mysql".into(),
            tcp: false,
        }
    }
}

/// The outbox that reports back to the forges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WritebackConfig {
    /// Requests per second to one forge API (per API host), on average.
    pub rate_per_second: f64,
    /// Requests allowed at once above the average.
    pub burst: u32,
    /// Write-backs of different PRs sent side by side.
    pub concurrency: usize,
    /// Attempts before a write-back that keeps failing is given up.
    pub max_attempts: i64,
    /// Lease of a write-back being sent (a crashed sender's items are sent again after it).
    pub lease: HumanDuration,
    /// Longest one forge API request may take before it counts as failed (and is retried).
    pub timeout: HumanDuration,
}

impl Default for WritebackConfig {
    fn default() -> Self {
        Self {
            rate_per_second: 1.0,
            burst: 10,
            concurrency: 8,
            max_attempts: 20,
            lease: HumanDuration(std::time::Duration::from_secs(60)),
            timeout: HumanDuration(std::time::Duration::from_secs(30)),
        }
    }
}

/// Credentials and API base of one forge. Secrets here are never logged (`Debug` redacts them).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForgeConfig {
    /// API base URL; empty means the public service (GitHub and GitLab) or none (Gitea).
    pub api_url: String,
    /// Personal or project access token.
    pub token: String,
    /// GitHub App id (GitHub only).
    pub app_id: Option<u64>,
    /// GitHub App private key, PEM (GitHub only).
    pub private_key_file: Option<PathBuf>,
    /// The forge's web address, where a browser goes (GitHub: the app-manifest form posts
    /// there); empty: `https://github.com`.
    pub web_url: String,
}

impl std::fmt::Debug for ForgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForgeConfig")
            .field("api_url", &self.api_url)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "[REDACTED]"
                },
            )
            .field("app_id", &self.app_id)
            .field("private_key_file", &self.private_key_file)
            .field("web_url", &self.web_url)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("bad config: {0}")]
    Invalid(String),
    #[error("bad config: key `{key}`: {problem}")]
    Key { key: &'static str, problem: String },
}

impl Config {
    /// Load with the precedence described in the module doc. `explicit` is `--config` or
    /// `ENDOR_CONFIG`.
    /// The config file `load` reads: the one given, or `config/endor.toml` when it exists.
    pub fn file(explicit: Option<&Path>) -> Option<PathBuf> {
        match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from("config/endor.toml")).filter(|p| p.is_file()),
        }
    }

    /// The master key's file: `secrets.master_key_file`, or the older `storage.secret_key`.
    pub fn master_key_file(&self) -> &Path {
        self.storage
            .secret_key
            .as_deref()
            .unwrap_or(&self.secrets.master_key_file)
    }

    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match explicit {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError::Missing(path.to_path_buf()));
                }
                fig = fig.merge(Toml::file_exact(path));
            }
            None => {
                let default_path = Path::new("config/endor.toml");
                if default_path.is_file() {
                    fig = fig.merge(Toml::file_exact(default_path));
                }
            }
        }
        fig = fig.merge(Env::prefixed("ENDOR__").split("__"));
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |key, problem: &str| {
            Err(ConfigError::Key {
                key,
                problem: problem.to_string(),
            })
        };
        if !(self.store.url.starts_with("sqlite:")
            || self.store.url.starts_with("postgres://")
            || self.store.url.starts_with("postgresql://"))
        {
            return key("store.url", "must start with sqlite: or postgres://");
        }
        if let Some(old) = &self.storage.secret_key
            && *old != self.secrets.master_key_file
            && self.secrets.master_key_file != SecretsConfig::default().master_key_file
        {
            return key(
                "storage.secret_key",
                "is the older name of secrets.master_key_file: set only one",
            );
        }
        if !matches!(self.email.tls.as_str(), "none" | "starttls" | "tls") {
            return Err(ConfigError::Key {
                key: "email.tls",
                problem: format!(
                    "`{}` is not one of none, starttls, tls",
                    self.email.tls.escape_debug()
                ),
            });
        }
        if !self.email.smtp_url.is_empty() {
            if !self.email.smtp_url.starts_with("smtp://") {
                return Err(ConfigError::Key {
                    key: "email.smtp_url",
                    problem: "must start with smtp:// (the TLS mode is email.tls)".into(),
                });
            }
            if self.email.from.parse::<lettre::message::Mailbox>().is_err() {
                return Err(ConfigError::Key {
                    key: "email.from",
                    problem: format!("`{}` is not a mail address", self.email.from.escape_debug()),
                });
            }
        }
        if let Err(problem) = self.regions.check() {
            return Err(ConfigError::Key {
                key: "regions",
                problem,
            });
        }
        let configured = if self.regions.list.is_empty() {
            self.jobs.region == self.regions.default
        } else {
            self.regions.list.contains_key(&self.jobs.region)
        };
        if !self.jobs.region.is_empty() && !configured {
            return key(
                "jobs.region",
                "must name a configured region (its concrete name, not an alias)",
            );
        }
        if self.store.max_connections == 0 {
            return key("store.max_connections", "must be at least 1");
        }
        if !(self.server.public_url.starts_with("http://")
            || self.server.public_url.starts_with("https://"))
        {
            return key("server.public_url", "must be an http:// or https:// URL");
        }
        if self.gateway.domain.is_empty() || self.gateway.domain.contains(['/', ':', ' ']) {
            return key(
                "gateway.domain",
                "must be a DNS name such as preview.localhost",
            );
        }
        for p in &self.gateway.trusted_proxies {
            if crate::net::parse_cidr(p).is_err() {
                return key(
                    "gateway.trusted_proxies",
                    "must be CIDRs such as 10.0.0.0/8 or ::1/128",
                );
            }
        }
        if let Err(problem) = self.reaper.parsed_schedule() {
            return key("reaper.schedule", &problem);
        }
        if let Err(problem) = self.backups.parsed_schedule() {
            return key("backups.schedule", &problem);
        }
        for (k, v) in [
            ("usage.site_hour", self.usage.site_hour),
            ("usage.gib_month", self.usage.gib_month),
            ("usage.cpu_hour", self.usage.cpu_hour),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return key(k, "must be a rate of zero or more");
            }
        }
        let p = &self.commands.prefix;
        if p.is_empty() || p.len() > 32 || p.chars().any(char::is_whitespace) {
            return key(
                "commands.prefix",
                "must be 1-32 characters without spaces, such as /preview",
            );
        }
        if self.webhooks.max_body_bytes == 0 {
            return key("webhooks.max_body_bytes", "must be positive");
        }
        if !matches!(
            self.postgres.strategy.as_str(),
            "auto" | "instance" | "template"
        ) {
            return key("postgres.strategy", "must be auto, instance or template");
        }
        if self.postgres.strategy == "template" && self.postgres.admin_url.is_empty() {
            return key(
                "postgres.admin_url",
                "is required when postgres.strategy = \"template\"",
            );
        }
        if !(self.writeback.rate_per_second > 0.0 && self.writeback.rate_per_second.is_finite()) {
            return key("writeback.rate_per_second", "must be a positive number");
        }
        if self.writeback.burst == 0 || self.writeback.concurrency == 0 {
            return key(
                "writeback.burst",
                "burst and concurrency must be at least 1",
            );
        }
        if self.writeback.max_attempts < 1 {
            return key("writeback.max_attempts", "must be at least 1");
        }
        let l = &self.runtime.limits;
        if !(l.cpus.is_finite() && l.cpus >= 0.01 && l.cpus <= 1024.0) {
            return key(
                "runtime.limits.cpus",
                "must be a number of cores from 0.01 to 1024",
            );
        }
        if l.processes < 8 {
            return key("runtime.limits.processes", "must be at least 8");
        }
        if l.memory.0 < 16 << 20 {
            return key("runtime.limits.memory", "must be at least 16MiB");
        }
        if self.jobs.workers == 0 {
            return key("jobs.workers", "must be at least 1");
        }
        if self.jobs.max_attempts < 1 {
            return key("jobs.max_attempts", "must be at least 1");
        }
        if self.previews.default_ttl.0 > self.previews.max_ttl.0 {
            return key("previews.default_ttl", "must not exceed previews.max_ttl");
        }
        if self.runtime.user.is_empty() {
            return key("runtime.user", "must name an OS user");
        }
        if self.runtime.output_cap == 0 {
            return key("runtime.output_cap", "must be positive");
        }
        if self.webhooks.max_batch == 0 {
            return key("webhooks.max_batch", "must be at least 1");
        }
        for (name, f) in [
            ("github.api_url", &self.github),
            ("gitlab.api_url", &self.gitlab),
            ("gitea.api_url", &self.gitea),
        ] {
            if !(f.api_url.is_empty()
                || f.api_url.starts_with("http://")
                || f.api_url.starts_with("https://"))
            {
                return key(name, "must be an http:// or https:// URL");
            }
        }
        Ok(())
    }

    /// The webhook URL a connection's forge should call.
    pub fn webhook_url(&self, forge: &str, connection_id: &str) -> String {
        format!(
            "{}/webhooks/{}/{}",
            self.server.public_url.trim_end_matches('/'),
            forge,
            connection_id
        )
    }
}

/// Figment's errors already name the key and the source (file or env var); flatten the chain
/// into one line each.
fn describe(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            let mut kind = e.kind.to_string();
            if let figment::error::Kind::UnknownField(field, _) = &e.kind {
                kind = format!("unknown key `{field}`");
            }
            match (key.is_empty(), source.is_empty()) {
                (false, false) => format!("key `{key}` ({source}): {kind}"),
                (false, true) => format!("key `{key}`: {kind}"),
                _ => kind,
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed `config/endor.toml` documents every key with its default: loading it must
    /// give exactly the built-in defaults.
    #[test]
    fn committed_config_equals_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/endor.toml");
        let from_file: Config = Figment::from(Toml::file_exact(&path)).extract().unwrap();
        assert_eq!(from_file, Config::default());
        // And every section and key of the defaults is written in the file.
        let text = std::fs::read_to_string(&path).unwrap();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        for (section, table) in defaults.as_table().unwrap() {
            assert!(
                text.contains(&format!("[{section}]")),
                "section [{section}] undocumented"
            );
            for (k, _) in table.as_table().unwrap() {
                assert!(
                    text.contains(&format!("{k} ="))
                        || text.contains(&format!("# {k} ="))
                        || text.contains(&format!("[{section}.{k}]")),
                    "key {section}.{k} undocumented"
                );
            }
        }
    }
}
