//! The `endor` command line: parse arguments, load config, call the library. Nothing else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use endor::config::Config;
use endor::server::{self, AppState};
use endor::service;
use endor::store::{self, Store};
use endor::telemetry::{self, LogFormat};
use serde::Serialize;

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
    },
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
    /// Sites: their files and databases, generations, clones.
    #[command(subcommand)]
    Site(SiteCmd),
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

#[derive(Subcommand)]
enum SiteCmd {
    /// Create a site and import its files and databases once.
    Create {
        site: String,
        #[arg(long)]
        workspace: String,
        #[arg(long, default_value = "default")]
        region: String,
        /// A directory whose tree becomes the site's files.
        #[arg(long)]
        files: Option<PathBuf>,
        /// A SQLite database file to import (consistently, even while in use).
        #[arg(long)]
        sqlite: Option<PathBuf>,
        /// A PostgreSQL database to import into a server of the site's own.
        #[arg(long)]
        postgres: Option<String>,
        /// A MariaDB/MySQL database (mysql://USER[:PASSWORD]@HOST[:PORT]/DB) to import into a
        /// server of the site's own.
        #[arg(long)]
        mariadb: Option<String>,
    },
    /// List sites (`--tag TAG`: only those with the tag).
    List {
        #[arg(long)]
        tag: Option<String>,
    },
    /// Site tags (`production` look-alikes and the `endor` prefix are refused).
    #[command(subcommand)]
    Tag(TagCmd),
    /// A site's state, URL, paths, databases, parent, generations and clone strategies.
    Show { site: String },
    /// Freeze a consistent generation of a site's files and databases.
    Snapshot { site: String },
    /// Make a new site DST from the newest generation of SRC (taking one if none exists).
    Clone {
        src: String,
        dst: String,
        /// Clear every write bit in the clone's files.
        #[arg(long)]
        read_only: bool,
        /// Clone into DST even when it exists and is protected (logged with the caller).
        #[arg(long)]
        bypass_protection: bool,
    },
    /// Replace DST's data by a fresh clone of SRC's newest generation (both when neither flag).
    Sync {
        src: String,
        dst: String,
        #[arg(long)]
        files: bool,
        #[arg(long)]
        db: bool,
        #[arg(long)]
        bypass_protection: bool,
    },
    /// Protect a site (no sync into it, no delete) or lift the protection.
    Protect {
        site: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Print a site's log: the build log (`--service build`) or its process's output
    /// (`--service web`).
    Logs {
        site: String,
        #[arg(long, default_value = "build")]
        service: String,
        /// Keep printing what is appended.
        #[arg(short, long)]
        follow: bool,
    },
    /// Show a site's HTTP access settings (generated credentials included), or change them.
    Access {
        site: String,
        /// `generate` (new credentials), `off`, or USER:PASSWORD.
        #[arg(long, value_name = "generate|off|USER:PASSWORD")]
        basic_auth: Option<String>,
        /// Send `X-Robots-Tag: noindex, nofollow` (on) or not (off).
        #[arg(long, value_name = "on|off")]
        robots: Option<String>,
        /// Admit only these addresses (CIDR; repeatable).
        #[arg(long, value_name = "CIDR")]
        allow: Vec<String>,
        /// Refuse these addresses (CIDR; repeatable; deny wins).
        #[arg(long, value_name = "CIDR")]
        deny: Vec<String>,
        /// Drop every allow and deny rule (before adding the ones given).
        #[arg(long)]
        clear_cidr: bool,
    },
    /// Delete a site and every resource it owns.
    Delete {
        site: String,
        #[arg(long)]
        bypass_protection: bool,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user.
    Create {
        login: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Link a forge identity (github:NAME, gitlab:NAME, gitea:NAME) to a user.
    Link { login: String, identity: String },
    /// Issue an API bearer token for a user (printed once; only its hash is kept).
    Token {
        login: String,
        /// A label to tell tokens apart.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List a user's API tokens (ids, labels, last use, revocation; never the tokens).
    Tokens { login: String },
    /// Revoke one of a user's API tokens: it is refused (401) from then on.
    RevokeToken { login: String, token_id: String },
}

#[derive(Subcommand)]
enum WorkspaceCmd {
    /// Create a workspace; the owner is its first member.
    Create {
        name: String,
        #[arg(long)]
        owner: String,
    },
    /// List workspaces.
    List,
    /// Rename a workspace.
    Rename { name: String, new_name: String },
    /// Workspace members.
    #[command(subcommand)]
    Member(MemberCmd),
}

#[derive(Subcommand)]
enum TagCmd {
    /// Add a tag to a site.
    Add { site: String, tag: String },
    /// Remove a tag from a site.
    Rm { site: String, tag: String },
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Add an existing user to a workspace with one or more roles.
    Add {
        workspace: String,
        login: String,
        /// owner, billing or developer (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Replace a member's roles (the last owner keeps `owner`).
    Roles {
        workspace: String,
        login: String,
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Remove a member (never the last owner).
    Remove { workspace: String, login: String },
    /// List a workspace's members and their roles.
    List { workspace: String },
}

#[derive(Subcommand)]
enum RepoCmd {
    /// Connect a repository (github:OWNER/NAME, gitlab:GROUP/NAME, gitea:OWNER/NAME) to a
    /// workspace; prints the webhook URL and its secret (shown this once).
    Connect {
        workspace: String,
        repo: String,
        /// The forge's API base (GitHub Enterprise, a GitLab or Gitea host).
        #[arg(long)]
        api_url: Option<String>,
        /// Where to fetch the repository from (any URL git accepts, file:// included).
        #[arg(long)]
        git_url: Option<String>,
    },
    /// List connected repositories.
    List {
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Issue a new webhook secret; the old one stays accepted until --retire-old.
    RotateSecret {
        connection_id: String,
        /// Stop accepting the previous secret (no new secret is issued).
        #[arg(long)]
        retire_old: bool,
    },
    /// Delete a connection: its webhook URL stops accepting deliveries.
    Delete { connection_id: String },
}

#[derive(Subcommand)]
enum DeliveryCmd {
    /// List stored deliveries, newest first.
    List {
        #[arg(long)]
        connection: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(run(cli.command, cli.json, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Print `value` as JSON, or through `text` for people.
fn emit<T: Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", text(value));
    }
    Ok(())
}

/// Print a log file (as one JSON string with --json), and with `follow` what is appended.
async fn print_log(path: &std::path::Path, follow: bool, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut offset = 0usize;
    loop {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => Vec::new(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                anyhow::bail!("no such log yet ({})", path.display())
            }
            Err(e) => return Err(e.into()),
        };
        if bytes.len() < offset {
            offset = 0; // rewritten (a new build)
        }
        let new = &bytes[offset..];
        if json && !follow {
            println!(
                "{}",
                serde_json::json!({"log": String::from_utf8_lossy(new)})
            );
        } else {
            std::io::stdout().write_all(new)?;
            std::io::stdout().flush()?;
        }
        offset = bytes.len();
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store = store::connect(&config.store.url, config.store.max_connections).await?;
    store.migrate().await?;
    Ok(store)
}

async fn run(command: Command, json: bool, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve { roles } => {
            let roles = match server::Roles::parse(&roles) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: --roles: {e}");
                    std::process::exit(2);
                }
            };
            let listener = if roles.api {
                Some(
                    tokio::net::TcpListener::bind(config.server.listen)
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "cannot listen on {} (server.listen): {e}",
                                config.server.listen
                            )
                        })?,
                )
            } else {
                None
            };
            let gateway = if roles.gateway {
                Some(
                    tokio::net::TcpListener::bind(config.gateway.listen)
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "cannot listen on {} (gateway.listen): {e}",
                                config.gateway.listen
                            )
                        })?,
                )
            } else {
                None
            };
            let state = AppState::start(config).await?;
            server::serve_roles(state, roles, listener, gateway, shutdown_signal()).await
        }
        Command::Reap { dry_run } => {
            let store = open_store(&config).await?;
            let reaper = endor::reaper::Reaper::standalone(store, &config);
            let r = reaper.pass(dry_run).await?;
            emit(json, &r, |r| {
                if let Some(why) = &r.skipped {
                    return format!("skipped: {why}");
                }
                let mut out = format!(
                    "{}expired {}, finished {}, busy {}, warned {}, failed {}; swept {} dirs, {} processes, {} routes in {} ms",
                    if r.dry_run {
                        "(dry run) would have "
                    } else {
                        ""
                    },
                    r.expired.len(),
                    r.resumed.len(),
                    r.busy.len(),
                    r.warned.len(),
                    r.failed.len(),
                    r.swept.dirs,
                    r.swept.processes,
                    r.swept.routes,
                    r.duration_ms
                );
                for name in &r.expired {
                    out.push_str(&format!("\nexpired\t{name}"));
                }
                for (name, e) in &r.failed {
                    out.push_str(&format!("\nfailed\t{name}\t{e}"));
                }
                out
            })
        }
        Command::Migrate => {
            open_store(&config).await?;
            emit(json, &serde_json::json!({"status": "migrated"}), |_| {
                "migrations applied".into()
            })
        }
        Command::User(cmd) => {
            let store = open_store(&config).await?;
            match cmd {
                UserCmd::Create { login, email, name } => {
                    let u = service::create_user(
                        store.as_ref(),
                        &login,
                        name.as_deref(),
                        email.as_deref(),
                    )
                    .await?;
                    emit(json, &u, |u| format!("created user {} ({})", u.login, u.id))
                }
                UserCmd::Token { login, name } => {
                    let t = service::issue_token(store.as_ref(), &login, &name).await?;
                    emit(json, &t, |t| {
                        format!(
                            "token {} for {}: {}\n(shown this once; revoke it with `endor user revoke-token {} {}`)",
                            t.id, t.login, t.token, t.login, t.id
                        )
                    })
                }
                UserCmd::Tokens { login } => {
                    let list = service::list_tokens(store.as_ref(), &login).await?;
                    emit(json, &list, |l| {
                        l.iter()
                            .map(|t| {
                                format!(
                                    "{}\t{}\t{}",
                                    t.id,
                                    t.name,
                                    if t.revoked_at.is_some() {
                                        "revoked"
                                    } else {
                                        "live"
                                    }
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                }
                UserCmd::RevokeToken { login, token_id } => {
                    service::revoke_token(store.as_ref(), &login, &token_id).await?;
                    emit(
                        json,
                        &serde_json::json!({"user": login, "revoked": token_id}),
                        |_| format!("revoked token {token_id} of {login}"),
                    )
                }
                UserCmd::Link { login, identity } => {
                    service::link_identity(store.as_ref(), &login, &identity).await?;
                    emit(
                        json,
                        &serde_json::json!({"user": login, "identity": identity}),
                        |_| format!("linked {identity} to {login}"),
                    )
                }
            }
        }
        Command::Workspace(cmd) => {
            let store = open_store(&config).await?;
            match cmd {
                WorkspaceCmd::Create { name, owner } => {
                    let ws = service::create_workspace(store.as_ref(), &name, &owner).await?;
                    emit(json, &ws, |w| {
                        format!("created workspace {} ({}) owned by {owner}", w.name, w.id)
                    })
                }
                WorkspaceCmd::Member(MemberCmd::Add {
                    workspace,
                    login,
                    roles,
                }) => {
                    let roles =
                        service::add_member(store.as_ref(), &workspace, &login, &roles).await?;
                    emit(
                        json,
                        &serde_json::json!({"workspace": workspace, "login": login, "roles": roles}),
                        |_| format!("{login} joined {workspace} as {}", roles.join(", ")),
                    )
                }
                WorkspaceCmd::Member(MemberCmd::Roles {
                    workspace,
                    login,
                    roles,
                }) => {
                    let roles =
                        service::set_member_roles(store.as_ref(), &workspace, &login, &roles)
                            .await?;
                    emit(
                        json,
                        &serde_json::json!({"workspace": workspace, "login": login, "roles": roles}),
                        |_| format!("{login} in {workspace}: {}", roles.join(", ")),
                    )
                }
                WorkspaceCmd::Member(MemberCmd::Remove { workspace, login }) => {
                    service::remove_member(store.as_ref(), &workspace, &login).await?;
                    emit(
                        json,
                        &serde_json::json!({"workspace": workspace, "removed": login}),
                        |_| format!("{login} removed from {workspace}"),
                    )
                }
                WorkspaceCmd::Member(MemberCmd::List { workspace }) => {
                    let ws = service::workspace(store.as_ref(), &workspace).await?;
                    let members: Vec<serde_json::Value> = store
                        .list_members(&ws.id)
                        .await?
                        .into_iter()
                        .map(|(login, roles)| serde_json::json!({"login": login, "roles": roles}))
                        .collect();
                    emit(json, &members, |m| {
                        m.iter()
                            .map(|v| {
                                format!(
                                    "{}\t{}",
                                    v["login"].as_str().unwrap_or(""),
                                    v["roles"]
                                        .as_array()
                                        .map(|r| r
                                            .iter()
                                            .filter_map(|x| x.as_str())
                                            .collect::<Vec<_>>()
                                            .join(","))
                                        .unwrap_or_default()
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                }
                WorkspaceCmd::Rename { name, new_name } => {
                    let ws = service::rename_workspace(store.as_ref(), &name, &new_name).await?;
                    emit(json, &ws, |w| format!("workspace {name} is now {}", w.name))
                }
                WorkspaceCmd::List => {
                    let list = store.list_workspaces().await?;
                    emit(json, &list, |l| {
                        l.iter()
                            .map(|w| format!("{}\t{}", w.name, w.id))
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                }
            }
        }
        Command::Repo(cmd) => {
            let store = open_store(&config).await?;
            match cmd {
                RepoCmd::Connect {
                    workspace,
                    repo,
                    api_url,
                    git_url,
                } => {
                    let c = service::connect_repo(
                        store.as_ref(),
                        &config,
                        &workspace,
                        &repo,
                        api_url.as_deref(),
                        git_url.as_deref(),
                    )
                    .await?;
                    emit(json, &c, |c| {
                        format!(
                            "connected {}:{} to workspace {}\n\nconnection id: {}\nwebhook URL:   {}\nsecret:        {}\n(the secret is shown this once; rotate it with `endor repo rotate-secret {}`)\n\n{}",
                            c.forge,
                            c.repo,
                            c.workspace,
                            c.connection_id,
                            c.webhook_url,
                            c.secret,
                            c.connection_id,
                            c.instructions
                        )
                    })
                }
                RepoCmd::List { workspace } => {
                    let list =
                        service::list_repos(store.as_ref(), &config, workspace.as_deref()).await?;
                    emit(json, &list, |l| {
                        l.iter()
                            .map(|c| {
                                format!(
                                    "{}\t{}:{}\t{}{}",
                                    c.connection_id,
                                    c.forge,
                                    c.repo,
                                    c.webhook_url,
                                    if c.rotating { "\t(rotating)" } else { "" }
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                }
                RepoCmd::RotateSecret {
                    connection_id,
                    retire_old,
                } => {
                    let r =
                        service::rotate_secret(store.as_ref(), &connection_id, retire_old).await?;
                    emit(json, &r, |r| match &r.secret {
                        Some(s) => format!(
                            "new secret: {s}\nthe previous secret stays accepted until `endor repo rotate-secret {} --retire-old`",
                            r.connection_id
                        ),
                        None => {
                            "previous secret retired: only the current secret is accepted".into()
                        }
                    })
                }
                RepoCmd::Delete { connection_id } => {
                    service::delete_repo(store.as_ref(), &connection_id).await?;
                    emit(json, &serde_json::json!({"deleted": connection_id}), |_| {
                        format!("deleted connection {connection_id}")
                    })
                }
            }
        }
        Command::Site(cmd) => {
            let store = open_store(&config).await?;
            let sites = endor::sites::Sites::new(store.clone(), &config);
            let op = |r: &endor::sites::OperationReport| {
                let mut lines = vec![format!(
                    "{}{} in {} ms",
                    r.site,
                    r.generation
                        .map(|g| format!(" (generation {g})"))
                        .unwrap_or_default(),
                    r.duration_ms
                )];
                for res in &r.resources {
                    lines.push(format!(
                        "  {} {}: {} — {} bytes, {} written, {:.3} ms",
                        res.kind,
                        res.name,
                        res.strategy,
                        res.bytes_logical,
                        res.bytes_written,
                        res.duration_ms
                    ));
                }
                lines.join("\n")
            };
            match cmd {
                SiteCmd::Create {
                    site,
                    workspace,
                    region,
                    files,
                    sqlite,
                    postgres,
                    mariadb,
                } => {
                    let imports = endor::sites::Imports {
                        files: files.as_deref(),
                        sqlite: sqlite.as_deref(),
                        postgres: postgres.as_deref(),
                        mariadb: mariadb.as_deref(),
                    };
                    let r = sites.create(&site, &workspace, &region, imports).await?;
                    emit(json, &r, op)
                }
                SiteCmd::Tag(cmd) => {
                    let (site, tag, add) = match cmd {
                        TagCmd::Add { site, tag } => (site, tag, true),
                        TagCmd::Rm { site, tag } => (site, tag, false),
                    };
                    let tags = sites.tag(&site, &tag, add).await?;
                    emit(
                        json,
                        &serde_json::json!({"site": site, "tags": tags}),
                        |_| format!("{site}: {}", tags.join(", ")),
                    )
                }
                SiteCmd::List { tag } => {
                    let list = sites.list(None, tag.as_deref()).await?;
                    emit(json, &list, |l| {
                        l.iter()
                            .map(|s| {
                                let state = match &s.preview {
                                    Some(p) => p.state.to_string(),
                                    None => s.state.as_str().to_string(),
                                };
                                format!("{}\t{}\t{}", s.name, state, s.url)
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                }
                SiteCmd::Show { site } => {
                    let d = sites.show(&site).await?;
                    emit(json, &d, |d| {
                        serde_json::to_string_pretty(d).unwrap_or_default()
                    })
                }
                SiteCmd::Logs {
                    site,
                    service,
                    follow,
                } => {
                    let d = sites.show(&site).await?;
                    if service.is_empty()
                        || !service
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    {
                        anyhow::bail!("--service must be a service name such as build or web");
                    }
                    let logs = std::path::absolute(&config.storage.logs)?;
                    let path = endor::previews::Lifecycle::log_path(&logs, &d.id, &service);
                    print_log(&path, follow, json).await
                }
                SiteCmd::Access {
                    site,
                    basic_auth,
                    robots,
                    allow,
                    deny,
                    clear_cidr,
                } => {
                    let d = sites.show(&site).await?;
                    let sealer = endor::secret::Sealer::from_file(&config.storage.secret_key)?;
                    let robots = match robots.as_deref() {
                        None => None,
                        Some("on") => Some(true),
                        Some("off") => Some(false),
                        Some(_) => anyhow::bail!("--robots must be on or off"),
                    };
                    let change = endor::access::AccessChange {
                        basic_auth,
                        robots,
                        allow,
                        deny,
                        clear_cidr,
                    };
                    let v = endor::access::change(store.as_ref(), &sealer, &d.name, &d.id, &change)
                        .await?;
                    emit(json, &v, |v| {
                        let auth = match &v.basic_auth {
                            None => "off".to_string(),
                            Some(c) => match &c.password {
                                Some(p) => format!("user {} password {p}", c.user),
                                None => format!("user {} (password chosen, not shown)", c.user),
                            },
                        };
                        format!(
                            "site:       {}\nbasic auth: {auth}\nrobots:     {}\nallow:      {}\ndeny:       {}",
                            v.site,
                            if v.robots { "noindex, nofollow" } else { "off" },
                            if v.allow.is_empty() {
                                "everyone".into()
                            } else {
                                v.allow.join(", ")
                            },
                            if v.deny.is_empty() {
                                "nobody".into()
                            } else {
                                v.deny.join(", ")
                            },
                        )
                    })
                }
                SiteCmd::Snapshot { site } => emit(json, &sites.snapshot(&site).await?, op),
                SiteCmd::Clone {
                    src,
                    dst,
                    read_only,
                    bypass_protection,
                } => {
                    let guard = endor::sites::Guard::cli(bypass_protection);
                    emit(
                        json,
                        &sites.clone_site(&src, &dst, read_only, guard).await?,
                        op,
                    )
                }
                SiteCmd::Sync {
                    src,
                    dst,
                    files,
                    db,
                    bypass_protection,
                } => {
                    let guard = endor::sites::Guard::cli(bypass_protection);
                    emit(json, &sites.sync(&src, &dst, files, db, guard).await?, op)
                }
                SiteCmd::Protect { site, state } => {
                    sites.protect(&site, state == "on").await?;
                    emit(
                        json,
                        &serde_json::json!({"site": site, "protected": state == "on"}),
                        |_| format!("{site}: protection {state}"),
                    )
                }
                SiteCmd::Delete {
                    site,
                    bypass_protection,
                } => {
                    sites
                        .delete(&site, endor::sites::Guard::cli(bypass_protection))
                        .await?;
                    emit(json, &serde_json::json!({"deleted": site}), |_| {
                        format!("deleted site {site}")
                    })
                }
            }
        }
        Command::Audit { site } => {
            let store = open_store(&config).await?;
            let site_id = match &site {
                None => None,
                Some(name) => Some(
                    store
                        .site_by_name(name)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("site {name} not found"))?
                        .id,
                ),
            };
            let events = store.audit_events(site_id.as_deref()).await?;
            emit(json, &events, |l| {
                l.iter()
                    .map(|e| {
                        format!(
                            "{}\t{}\t{}\t{}",
                            chrono::DateTime::from_timestamp_millis(e.at)
                                .map(|t| t.to_rfc3339())
                                .unwrap_or_default(),
                            e.caller,
                            e.action,
                            e.detail
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Command::Usage {
            workspace,
            month,
            sample,
        } => {
            let store = open_store(&config).await?;
            let ws = service::workspace(store.as_ref(), &workspace).await?;
            if sample {
                let sites = endor::sites::Sites::new(store.clone(), &config);
                endor::usage::sample(store.as_ref(), &sites, endor::now_ms()).await?;
            }
            let r = endor::usage::report(store.as_ref(), &config, &ws, month.as_deref()).await?;
            emit(json, &r, |r| {
                let mut out = format!(
                    "{} {} ({}: {}/site-hour, {}/GiB-month, {}/CPU-hour)\nsite\thours\tphysical bytes\tGiB-hours\tCPU s\tcost",
                    r.workspace,
                    r.month,
                    r.rates.currency,
                    r.rates.site_hour,
                    r.rates.gib_month,
                    r.rates.cpu_hour
                );
                for l in &r.sites {
                    out.push_str(&format!(
                        "\n{}\t{:.2}\t{}\t{:.4}\t{:.1}\t{:.4}",
                        l.site,
                        l.hours_alive,
                        l.physical_bytes,
                        l.gib_hours,
                        l.cpu_seconds,
                        l.cost.total
                    ));
                }
                out.push_str(&format!(
                    "\ntotal\t\t\t\t\t{:.4} {}",
                    r.total.total, r.rates.currency
                ));
                out
            })
        }
        Command::Delivery(DeliveryCmd::List { connection, limit }) => {
            let store = open_store(&config).await?;
            let list = store.list_deliveries(connection.as_deref(), limit).await?;
            emit(json, &list, |l| {
                l.iter()
                    .map(|d| {
                        format!(
                            "{}\t{}\t{}\t{}\t{}",
                            d.delivery_key,
                            d.forge,
                            d.event,
                            d.action.as_deref().unwrap_or("-"),
                            d.outcome
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
