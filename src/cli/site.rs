//! `endor site`: sites, their data, generations, clones, access, logs.

use std::path::PathBuf;

use clap::Subcommand;
use endor::config::Config;

use super::{emit, open_store};

#[derive(Subcommand)]
pub enum SiteCmd {
    /// Create a site and import its files and databases once.
    Create {
        site: String,
        #[arg(long)]
        workspace: String,
        /// A region or a region alias (`europe`); default `regions.default`. A site stays in
        /// its region for good.
        #[arg(long)]
        region: Option<String>,
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
        /// The region the clone must be in (a region or an alias): SRC's own, or refused.
        #[arg(long)]
        region: Option<String>,
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
    /// Print a site's logs, every service interleaved by time (or the ones named): build,
    /// web (the app's stdout/stderr), exec, access, error, endor (its events), postgres and
    /// mariadb (its own database servers' logs, slow statements included).
    Logs {
        site: String,
        /// Only this service (repeatable).
        #[arg(long = "service", short = 's', value_name = "SERVICE")]
        services: Vec<String>,
        /// Lines from this time on: `10m` (ago) or an RFC 3339 time.
        #[arg(long, value_name = "10m|TIME")]
        since: Option<String>,
        /// Lines before this time: `1h` (ago) or an RFC 3339 time.
        #[arg(long, value_name = "1h|TIME")]
        until: Option<String>,
        /// Only lines containing this text (in the line or a field).
        #[arg(long, value_name = "TEXT")]
        grep: Option<String>,
        /// The last N lines (then, with -f, what comes).
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<usize>,
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
    /// Run a command in a site's sandbox (its uid, limits, folders and database sockets) with
    /// its environment (DATABASE_URL, ENDOR_FILES_DIR, ENDOR_SITE): output streamed, the
    /// command's exit code returned, the run kept in the site's `exec` log.
    Exec {
        site: String,
        /// The command and its arguments, after `--`: run as they are, no shell between.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Delete a site and every resource it owns.
    Delete {
        site: String,
        #[arg(long)]
        bypass_protection: bool,
    },
}

#[derive(Subcommand)]
pub enum TagCmd {
    /// Add a tag to a site.
    Add { site: String, tag: String },
    /// Remove a tag from a site.
    Rm { site: String, tag: String },
}

pub async fn run(cmd: SiteCmd, json: bool, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let sites = endor::sites::Sites::new(store.clone(), config);
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
            let r = sites
                .create(&site, &workspace, region.as_deref(), imports)
                .await?;
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
            let d = match sites.show(&site).await {
                Ok(d) => d,
                Err(endor::sites::SiteError::NotFound(what)) => {
                    // A preview that failed before its site was made, or was torn down.
                    match store.preview_by_site_name(&site).await? {
                        Some(p) => {
                            let repo = store
                                .connection(&p.connection_id)
                                .await?
                                .map(|c| c.repo)
                                .unwrap_or_default();
                            anyhow::bail!(
                                "{what} not found: it is the site of preview {repo}#{n} ({}), which has none now; endor preview show {repo}#{n} says why",
                                p.state,
                                n = p.number
                            )
                        }
                        None => anyhow::bail!("{what} not found"),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            emit(json, &d, show_text)
        }
        SiteCmd::Logs {
            site,
            services,
            since,
            until,
            grep,
            lines,
            follow,
        } => {
            let services = services
                .iter()
                .map(|s| endor::logs::Service::named(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("--service: {e}"))?;
            let now = endor::now_ms();
            let time = |flag: &str, v: &Option<String>| {
                v.as_deref()
                    .map(|t| endor::logs::parse_time(t, now))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
            };
            let d = sites.show(&site).await?;
            let retention = endor::service::site_log_limits(store.as_ref(), config, &d.id)
                .await?
                .retention;
            let filter = endor::logs::Filter {
                since: time("--since", &since)?,
                until: time("--until", &until)?,
                grep,
            }
            .within(retention, now);
            let logs = std::path::absolute(&config.storage.logs)?;
            print_logs(&logs, &d.id, &services, &filter, lines, follow, json).await
        }
        SiteCmd::Exec { site, command } => {
            use std::io::Write;
            let lifecycle = endor::previews::Lifecycle::standalone(store.clone(), config);
            let who = endor::sites::Guard::cli(false)
                .caller
                .unwrap_or_else(|| "cli".into());
            let end = lifecycle
                .exec(&site, &command, &who, |pipe, chunk| {
                    let _ = match pipe {
                        endor::runtime::Pipe::Out => std::io::stdout().write_all(chunk),
                        endor::runtime::Pipe::Err => std::io::stderr().write_all(chunk),
                    };
                })
                .await?;
            let _ = std::io::stdout().flush();
            if let Some(why) = &end.killed {
                eprintln!("endor: the command {why}");
            }
            // The command's own exit code; a kill reads as a shell shows it (128 + SIGKILL).
            std::process::exit(end.exit_code.unwrap_or(137))
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
            let v = endor::access::change(store.as_ref(), store.keyring(), &d.name, &d.id, &change)
                .await?;
            if !change.is_empty() {
                let who = endor::sites::Guard::cli(false)
                    .caller
                    .unwrap_or_else(|| "cli".into());
                let limits = endor::service::site_log_limits(store.as_ref(), config, &d.id).await?;
                endor::logs::Logs::new(&config.storage.logs, limits).write(
                    &d.id,
                    endor::logs::Entry::now(
                        endor::logs::Service::Endor,
                        None,
                        format!("access changed by {who}: {}", v.summary()),
                    )
                    .with("event", "access"),
                );
            }
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
            region,
        } => {
            let guard = endor::sites::Guard::cli(bypass_protection);
            sites.same_region(&src, region.as_deref()).await?;
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
            sites
                .protect(&site, state == "on", &endor::sites::Guard::cli(false))
                .await?;
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

/// `site show` for people: the site's state, and its preview's (a site stays `active` when
/// its preview's newest build failed: the last good version still serves).
fn show_text(d: &endor::sites::SiteDetails) -> String {
    let mut out = vec![format!("{}\t{}\t{}", d.name, d.state, d.url)];
    if let Some(p) = &d.preview {
        let mut line = format!("preview:     {} {}", p.name, p.state);
        if let Some(r) = &p.reason {
            line.push_str(&format!(": {}", r.lines().next().unwrap_or("")));
        }
        if p.state == endor::store::PreviewState::Failed {
            line.push_str(&format!(" (endor preview show {})", p.name));
        }
        out.push(line);
        if let Some(e) = &p.expires {
            out.push(format!("expires:     {e}"));
        }
    }
    if let Some(parent) = &d.parent {
        out.push(format!("parent:      {parent}"));
    }
    out.push(format!("region:      {}", d.region_names.join(", ")));
    out.push(format!(
        "protected:   {}",
        if d.protected { "yes" } else { "no" }
    ));
    out.push(format!("files:       {}", d.files_dir.display()));
    for u in &d.database_urls {
        out.push(format!("database:    {u}"));
    }
    if !d.tags.is_empty() {
        out.push(format!("tags:        {}", d.tags.join(", ")));
    }
    out.push(format!(
        "generations: {}",
        d.generations
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.join("\n")
}

/// Print a site's log lines (a JSON object a line with --json), and with `follow` what is
/// appended, as it comes.
/// At most this many lines per read of a follow.
const FOLLOW_BATCH: usize = 10_000;

async fn print_logs(
    root: &std::path::Path,
    site: &endor::ids::SiteId,
    services: &[endor::logs::Service],
    filter: &endor::logs::Filter,
    tail: Option<usize>,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    let services = if services.is_empty() {
        endor::logs::Service::ALL
    } else {
        services
    };
    let (mut lines, mut cursor) = endor::logs::read_since(root, site, services, filter, tail)?;
    loop {
        let mut out = std::io::stdout().lock();
        for r in &lines {
            print_record(&mut out, None, r, json)?;
        }
        out.flush()?;
        drop(out);
        if !follow {
            return Ok(());
        }
        // Behind (the last read was a full batch): read on at once.
        if lines.len() < FOLLOW_BATCH {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        (lines, cursor) = endor::logs::read(root, site, services, &cursor, filter, FOLLOW_BATCH)?;
    }
}

/// `endor logs --workspace W`: every site's lines, merged by time, each prefixed with its site
/// (and with `follow`, what comes, sites made meanwhile included).
pub async fn workspace_logs(
    workspace: &str,
    services: &[String],
    grep: Option<String>,
    tail: usize,
    follow: bool,
    json: bool,
    config: &Config,
) -> anyhow::Result<()> {
    use std::collections::HashMap;
    use std::io::Write;
    let services = services
        .iter()
        .map(|s| endor::logs::Service::named(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--service: {e}"))?;
    let services = if services.is_empty() {
        endor::logs::Service::ALL.to_vec()
    } else {
        services
    };
    let store = open_store(config).await?;
    let ws = store
        .workspace_by_name(workspace)
        .await?
        .ok_or_else(|| anyhow::anyhow!("workspace {workspace} not found"))?;
    let sites = endor::sites::Sites::new(store.clone(), config);
    let root = std::path::absolute(&config.storage.logs)?;
    let retention = endor::service::log_limits(store.as_ref(), config, &ws.id)
        .await?
        .retention;
    let filter = endor::logs::Filter {
        grep,
        ..Default::default()
    }
    .within(retention, endor::now_ms());
    let mut cursors: Option<endor::logs::Cursors> = None;
    loop {
        // The workspace's sites as they are now: one made while following is read from its
        // start, one deleted is let go.
        let list = sites.list(Some(&ws.id), None).await?;
        let names: HashMap<endor::ids::SiteId, String> = list
            .iter()
            .map(|s| (s.id.clone(), s.name.clone()))
            .collect();
        let ids: Vec<endor::ids::SiteId> = list.into_iter().map(|s| s.id).collect();
        let (lines, next) = match &cursors {
            None => endor::logs::read_sites_since(&root, &ids, &services, &filter, Some(tail))?,
            Some(from) => {
                endor::logs::read_sites(&root, &ids, &services, from, &filter, FOLLOW_BATCH)?
            }
        };
        cursors = Some(next);
        let mut out = std::io::stdout().lock();
        for (site, r) in &lines {
            let name = names.get(site).map(String::as_str).unwrap_or("-");
            print_record(&mut out, Some(name), r, json)?;
        }
        out.flush()?;
        drop(out);
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// One log line as `site logs` / `logs --workspace` print it: text, or a JSON object (with its
/// site when there are several).
fn print_record(
    out: &mut impl std::io::Write,
    site: Option<&str>,
    r: &endor::logs::Record,
    json: bool,
) -> anyhow::Result<()> {
    match (json, site) {
        (true, None) => serde_json::to_writer(&mut *out, r)?,
        (true, Some(site)) => {
            let mut v = serde_json::to_value(r)?;
            v["site"] = serde_json::Value::String(site.to_string());
            serde_json::to_writer(&mut *out, &v)?;
        }
        (false, None) => write!(out, "{}", endor::logs::line_text(&r.entry))?,
        (false, Some(site)) => write!(out, "{site} {}", endor::logs::line_text(&r.entry))?,
    }
    writeln!(out)?;
    Ok(())
}
