//! `endor backup`: site backups (create, list, restore, verify).

use clap::Subcommand;
use endor::backups::Backups;
use endor::config::Config;

use super::{emit, open_store};

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Back up a site now (files and every database, consistent while it serves).
    Create {
        site: String,
        /// A tag on the backup (repeat for more).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Backups, newest first (one site's, or all).
    List { site: Option<String> },
    /// Make a site's data what a backup holds: the site it was taken of, or --into another
    /// (made when it does not exist).
    Restore {
        backup: String,
        #[arg(long)]
        into: Option<String>,
        /// Restore into a protected site (logged with the caller).
        #[arg(long)]
        bypass_protection: bool,
        /// Read the repository even when this host kept a local copy of the backup.
        #[arg(long)]
        from_repository: bool,
    },
    /// Read the whole repository back and check it; exit 1 when it is damaged.
    Verify,
    /// Remove the backups [backups]'s retention policy does not keep (one site's, or all),
    /// through a credential that may delete: --via the same repository's pruning URL.
    Forget {
        site: Option<String>,
        #[arg(long, value_name = "PRUNE_URL")]
        via: String,
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore the newest backup of SITE (or of every site, --all) into a scratch site, check
    /// it against the backup's manifest, remove it, and record the outcome; exit 1 when a
    /// drill fails.
    Drill {
        #[arg(required_unless_present_any = ["all", "store"], conflicts_with_all = ["all", "store"])]
        site: Option<String>,
        #[arg(long, conflicts_with = "store")]
        all: bool,
        /// Drill endor's own store instead: back it up into the repository, restore it into a
        /// fresh folder (or database), and find every record again.
        #[arg(long)]
        store: bool,
    },
    /// Whether `endor serve` backs the site up on backups.schedule: on, off, or default
    /// (on for protected sites).
    Schedule {
        site: String,
        #[arg(value_parser = ["on", "off", "default"])]
        state: String,
    },
}

pub async fn run(cmd: BackupCmd, json: bool, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let backups = Backups::new(store, config);
    let who = endor::sites::Guard::cli(false)
        .caller
        .unwrap_or_else(|| "cli".into());
    match cmd {
        BackupCmd::Create { site, tags } => {
            let b = backups.create(&site, &tags, &who).await?;
            emit(json, &b, |b| {
                format!(
                    "backup {} of {}: snapshot {}, {} files, {} bytes ({} added)",
                    b.id, b.site_name, b.snapshot_id, b.files, b.bytes, b.bytes_added
                )
            })
        }
        BackupCmd::List { site } => {
            let list = backups.list(site.as_deref()).await?;
            emit(json, &list, |l| {
                l.iter()
                    .map(|b| {
                        format!(
                            "{}\t{}\t{}\t{}\t{} files\t{}\tdrill: {}",
                            b.id,
                            b.site_name,
                            chrono::DateTime::from_timestamp_millis(b.created_at)
                                .map(|t| t.to_rfc3339())
                                .unwrap_or_default(),
                            &b.snapshot_id[..b.snapshot_id.len().min(8)],
                            b.files,
                            b.tags,
                            match b.last_drill_ok {
                                None => "none",
                                Some(1) => "passed",
                                Some(_) => "FAILED",
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        BackupCmd::Restore {
            backup,
            into,
            bypass_protection,
            from_repository,
        } => {
            let guard = endor::sites::Guard::cli(bypass_protection);
            let r = backups
                .restore_from(&backup, into.as_deref(), guard, !from_repository)
                .await?;
            emit(json, &r, |r| {
                format!(
                    "backup {} restored into {}{} from the {} in {} ms",
                    r.backup,
                    r.site,
                    if r.created { " (new site)" } else { "" },
                    if r.from == "local" {
                        "local copy"
                    } else {
                        "repository"
                    },
                    r.report.duration_ms
                )
            })
        }
        BackupCmd::Schedule { site, state } => {
            let own = match state.as_str() {
                "on" => Some(true),
                "off" => Some(false),
                _ => None,
            };
            let s = backups.set_schedule(&site, own).await?;
            emit(json, &s, |s| {
                format!(
                    "{}: {} on backups.schedule{}",
                    s.site,
                    if s.scheduled {
                        "backed up"
                    } else {
                        "not backed up"
                    },
                    if s.own.is_none() {
                        " (the default)"
                    } else {
                        ""
                    }
                )
            })
        }
        BackupCmd::Drill { store: true, .. } => {
            let d = backups.drill_store(&who).await?;
            emit(json, &d, |d| {
                format!(
                    "store drill {} in {} ms (snapshot {}): {}{}",
                    if d.ok { "passed" } else { "FAILED" },
                    d.duration_ms,
                    d.snapshot,
                    d.detail,
                    d.counts
                        .iter()
                        .map(|(k, v)| format!("\n  {k}: {v}"))
                        .collect::<String>()
                )
            })?;
            if !d.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        BackupCmd::Drill { site, .. } => {
            let reports = match site {
                Some(s) => vec![backups.drill(&s).await?],
                None => backups.drill_all().await?,
            };
            emit(json, &reports, |rs| {
                rs.iter()
                    .map(|r| {
                        format!(
                            "{}\tbackup {}\t{}\t{} ms\t{}",
                            r.site,
                            r.backup,
                            if r.ok { "passed" } else { "FAILED" },
                            r.duration_ms,
                            r.detail
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            if reports.iter().any(|r| !r.ok) {
                std::process::exit(1);
            }
            Ok(())
        }
        BackupCmd::Forget { site, via, dry_run } => {
            let done = backups.forget(site.as_deref(), &via, dry_run).await?;
            emit(json, &done, |d| {
                d.iter()
                    .map(|f| {
                        format!(
                            "{}: {} {}",
                            f.site,
                            f.removed.len(),
                            if f.dry_run {
                                "backups would be removed"
                            } else {
                                "backups removed"
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        BackupCmd::Verify => {
            let v = backups.verify().await?;
            emit(json, &v, |v| {
                format!(
                    "{}: {}\n{}",
                    v.repository,
                    if v.ok { "ok" } else { "DAMAGED" },
                    v.detail
                )
            })?;
            if !v.ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
