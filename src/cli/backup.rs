//! `endor backup`: site backups (create, list, restore, verify).

use clap::Subcommand;
use endor::backups::{Backups, RetentionOf, Source};
use endor::config::Config;
use endor::store::RetentionRow;

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
        #[arg(long, conflicts_with = "from_offsite")]
        from_repository: bool,
        /// Read the backup's copy in the off-site repository (backups.offsite).
        #[arg(long)]
        from_offsite: bool,
    },
    /// Read one backup back and check every file and table against its manifest, or (--all,
    /// or no BACKUP) the whole repository; exit 1 when anything is damaged.
    Verify {
        #[arg(conflicts_with = "all")]
        backup: Option<String>,
        #[arg(long)]
        all: bool,
        /// The off-site repository (backups.offsite) instead of the primary.
        #[arg(long)]
        offsite: bool,
    },
    /// Remove the backups [backups]'s retention policy does not keep (one site's, or all),
    /// through a credential that may delete: --via the same repository's pruning URL.
    Forget {
        site: Option<String>,
        #[arg(long, value_name = "PRUNE_URL")]
        via: String,
        /// Also apply it to the off-site repository through this SSH command: a key whose
        /// forced command may delete (not backups.offsite_ssh's, which only appends).
        #[arg(long, value_name = "SSH_COMMAND")]
        offsite_ssh: Option<String>,
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show or set what `forget` keeps of a site's backups (or, --workspace, of every site in
    /// a workspace); a value not set falls through to the workspace's, then [backups]'s.
    Retention {
        #[arg(required_unless_present = "workspace", conflicts_with = "workspace")]
        site: Option<String>,
        #[arg(long)]
        workspace: Option<String>,
        #[arg(long)]
        keep_last: Option<i64>,
        #[arg(long)]
        keep_daily: Option<i64>,
        #[arg(long)]
        keep_weekly: Option<i64>,
        #[arg(long)]
        keep_monthly: Option<i64>,
        /// Forget what was set here: the workspace's (or [backups]'s) policy applies.
        #[arg(long, conflicts_with_all = ["keep_last", "keep_daily", "keep_weekly", "keep_monthly"])]
        default: bool,
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
        /// Restore from the off-site repository (backups.offsite) instead of the primary.
        #[arg(long, conflicts_with = "store")]
        offsite: bool,
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
            from_offsite,
        } => {
            let guard = endor::sites::Guard::cli(bypass_protection);
            let from = match (from_repository, from_offsite) {
                (_, true) => Source::Offsite,
                (true, _) => Source::Repository,
                _ => Source::Nearest,
            };
            let r = backups
                .restore_from(&backup, into.as_deref(), guard, from)
                .await?;
            emit(json, &r, |r| {
                format!(
                    "backup {} restored into {}{} from the {} in {} ms",
                    r.backup,
                    r.site,
                    if r.created { " (new site)" } else { "" },
                    match r.from {
                        "local" => "local copy",
                        "offsite" => "off-site repository",
                        _ => "repository",
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
        BackupCmd::Drill { site, offsite, .. } => {
            let from = if offsite {
                Source::Offsite
            } else {
                Source::Repository
            };
            let reports = match site {
                Some(s) => vec![backups.drill(&s, from).await?],
                None => backups.drill_all(from).await?,
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
        BackupCmd::Forget {
            site,
            via,
            offsite_ssh,
            dry_run,
        } => {
            let done = backups
                .forget(site.as_deref(), &via, offsite_ssh.as_deref(), dry_run)
                .await?;
            emit(json, &done, |d| {
                d.iter()
                    .map(|f| {
                        format!(
                            "{}: {} {}{} (keeping last {}, daily {}, weekly {}, monthly {})",
                            f.site,
                            f.removed.len(),
                            if f.dry_run {
                                "backups would be removed"
                            } else {
                                "backups removed"
                            },
                            if offsite_ssh.is_some() {
                                format!(", {} off-site", f.removed_offsite.len())
                            } else {
                                String::new()
                            },
                            f.kept.keep_last,
                            f.kept.keep_daily,
                            f.kept.keep_weekly,
                            f.kept.keep_monthly
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        BackupCmd::Verify {
            backup,
            all: _,
            offsite,
        } => {
            let from = if offsite {
                Source::Offsite
            } else {
                Source::Repository
            };
            let v = match backup {
                Some(b) => backups.verify_backup(&b, from).await?,
                None => backups.verify(offsite).await?,
            };
            emit(json, &v, |v| {
                format!(
                    "{}{}: {}\n{}",
                    v.backup
                        .as_ref()
                        .map(|b| format!("backup {b} in "))
                        .unwrap_or_default(),
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
        BackupCmd::Retention {
            site,
            workspace,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            default,
        } => {
            let of = match (&site, &workspace) {
                (Some(s), _) => RetentionOf::Site(s),
                (None, Some(w)) => RetentionOf::Workspace(w),
                (None, None) => unreachable!("clap requires a site or --workspace"),
            };
            let row = RetentionRow {
                keep_last,
                keep_daily,
                keep_weekly,
                keep_monthly,
            };
            let view = if default {
                backups.set_retention(of, None).await?
            } else if row == RetentionRow::default() {
                backups.retention(of).await?
            } else {
                backups.set_retention(of, Some(row)).await?
            };
            emit(json, &view, |v| {
                let a = v.applies;
                format!(
                    "{} {}: keeps last {}, daily {}, weekly {}, monthly {}{}",
                    v.scope,
                    v.name,
                    a.keep_last,
                    a.keep_daily,
                    a.keep_weekly,
                    a.keep_monthly,
                    if v.own.is_some() {
                        ""
                    } else {
                        " (nothing set here: inherited)"
                    }
                )
            })
        }
    }
}
