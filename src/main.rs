//! The `endor` command line: parse arguments, load config, hand the command to its group in
//! `cli/`. Nothing else.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::delivery::DeliveryCmd;
use cli::preview::PreviewCmd;
use cli::repo::RepoCmd;
use cli::site::SiteCmd;
use cli::user::UserCmd;
use cli::workspace::WorkspaceCmd;
use endor::config::Config;
use endor::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "endor",
    version,
    about = "Pull/merge requests → expiring preview sites with copy-on-write clones"
)]
struct Cli {
    /// Config file (default: config/endor.toml when present, else built-in defaults).
    #[arg(long, global = true, env = "ENDOR_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: webhooks, the JSON API, health, readiness and metrics on server.listen,
    /// the preview gateway on gateway.listen, job workers and the reaper.
    Serve {
        /// Which parts run in this process (comma-separated subset); several processes
        /// sharing one PostgreSQL store may each run some.
        #[arg(long, default_value = "api,worker,reaper,gateway")]
        roles: String,
        /// Run only the jobs of this region's sites (a configured region's name; sets
        /// jobs.region). Without it, a worker runs the jobs of every region.
        #[arg(long)]
        region: Option<String>,
    },
    /// What this host enforces on PR code (sandbox, uids, network, limits) and whether
    /// endor's own files are private; exits 1 when `serve` would refuse to start.
    Doctor,
    /// Apply database migrations (serve does this at start too).
    Migrate,
    /// One reaper pass now: destroy expired previews, finish interrupted teardowns, warn
    /// ahead of expiry, sweep orphans.
    Reap {
        /// Report what a pass would do and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Users and their linked forge identities.
    #[command(subcommand)]
    User(UserCmd),
    /// Workspaces.
    #[command(subcommand)]
    Workspace(WorkspaceCmd),
    /// Repository connections (webhook endpoints).
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Stored webhook deliveries.
    #[command(subcommand)]
    Delivery(DeliveryCmd),
    /// Previews of pull requests: every one's state, failure, steps and posts.
    #[command(subcommand)]
    Preview(PreviewCmd),
    /// Sites: their files and databases, generations, clones.
    #[command(subcommand)]
    Site(SiteCmd),
    /// Every site's logs of a workspace, interleaved by time, each line prefixed with its site.
    Logs {
        #[arg(long)]
        workspace: String,
        /// Only this service (repeatable).
        #[arg(long = "service", short = 's', value_name = "SERVICE")]
        services: Vec<String>,
        /// Only lines containing this text.
        #[arg(long, value_name = "TEXT")]
        grep: Option<String>,
        /// The last N lines of each site (then, with -f, what comes).
        #[arg(short = 'n', long = "lines", value_name = "N", default_value = "20")]
        lines: usize,
        /// Keep printing what is appended, new sites' too.
        #[arg(short, long)]
        follow: bool,
    },
    /// Site backups in a restic repository.
    #[command(subcommand)]
    Backup(cli::backup::BackupCmd),
    /// The master key that seals the secrets in the store.
    #[command(subcommand)]
    Secrets(cli::secrets::SecretsCmd),
    /// GitHub: the workspace's GitHub App, made through GitHub's app-manifest flow.
    #[command(subcommand)]
    Github(cli::github::GithubCmd),
    /// The audit trail: bypasses of production protection and who asked.
    Audit {
        /// Only this site's lines.
        #[arg(long)]
        site: Option<String>,
    },
    /// Usage and cost per site of a workspace for a month (what billing members see).
    Usage {
        workspace: String,
        /// YYYY-MM (UTC); default: the current month.
        #[arg(long)]
        month: Option<String>,
        /// Take a sample of every live site's CPU and storage first.
        #[arg(long)]
        sample: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        // A command's output piped into `head` ends quietly when the reader goes, as other
        // command-line tools do, instead of a panic on the broken pipe. (`serve` keeps
        // ignoring SIGPIPE: a visitor closing a socket must not end the server.)
        // SAFETY: restoring a signal's default action before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    telemetry::init(cli.log_format);
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config_file = Config::file(cli.config.as_deref());
    match runtime.block_on(run(cli.command, cli.json, config, config_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One command, to the file of its group.
async fn run(
    command: Command,
    json: bool,
    config: Config,
    config_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    match command {
        Command::Serve { roles, region } => {
            let mut config = config;
            if let Some(r) = region {
                config.jobs.region = r;
                config
                    .validate()
                    .map_err(|e| anyhow::anyhow!("--region: {e}"))?;
            }
            cli::serve::serve(roles, config, config_file).await
        }
        Command::Doctor => cli::doctor::run(json, &config, config_file.as_deref()),
        Command::Migrate => cli::serve::migrate(json, &config).await,
        Command::Reap { dry_run } => cli::serve::reap(dry_run, json, &config).await,
        Command::User(cmd) => cli::user::run(cmd, json, &config).await,
        Command::Workspace(cmd) => cli::workspace::run(cmd, json, &config).await,
        Command::Repo(cmd) => cli::repo::run(cmd, json, &config).await,
        Command::Delivery(cmd) => cli::delivery::run(cmd, json, &config).await,
        Command::Preview(cmd) => cli::preview::run(cmd, json, &config).await,
        Command::Site(cmd) => cli::site::run(cmd, json, &config).await,
        Command::Audit { site } => cli::audit::run(site, json, &config).await,
        Command::Secrets(cmd) => cli::secrets::run(cmd, json, &config).await,
        Command::Github(cmd) => cli::github::run(cmd, json, &config).await,
        Command::Backup(cmd) => cli::backup::run(cmd, json, &config).await,
        Command::Logs {
            workspace,
            services,
            grep,
            lines,
            follow,
        } => {
            cli::site::workspace_logs(&workspace, &services, grep, lines, follow, json, &config)
                .await
        }
        Command::Usage {
            workspace,
            month,
            sample,
        } => cli::usage::run(workspace, month, sample, json, &config).await,
    }
}
