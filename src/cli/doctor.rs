//! `endor doctor`: what this host enforces on PR code (sandbox, uids, network, limits) and
//! whether endor's own files are private. `serve` runs the same checks and refuses to start
//! when one that matters fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use endor::config::Config;
use endor::runtime::{Capability, Host};
use serde::Serialize;

use super::emit;

#[derive(Debug, Serialize)]
pub struct Report {
    pub isolation: Vec<Capability>,
    pub files: Vec<FileCheck>,
    /// Problems that make `endor serve` refuse to start.
    pub problems: Vec<String>,
}

/// One of endor's own files or folders, and whether others can read it.
#[derive(Debug, Serialize)]
pub struct FileCheck {
    pub what: &'static str,
    pub path: PathBuf,
    /// `0600`, or `missing`.
    pub mode: String,
    pub private: bool,
}

/// The store file of a `sqlite:` URL.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Endor's own secrets: the store (webhook secrets, tokens), the secret key, the config file.
/// Private means no permission bits for group or others on a file; a folder may keep the
/// others' `x` (traverse only: database servers run as their own users reach the storage root
/// through it) but nothing else.
pub fn check_files(config: &Config, config_file: Option<&Path>) -> Vec<FileCheck> {
    let mut out = Vec::new();
    let mut check = |what, path: &Path, dir: bool| {
        let (mode, private) = match std::fs::metadata(path) {
            Ok(m) => {
                let mode = m.permissions().mode() & 0o777;
                let allowed = if dir { 0o711 } else { 0o700 };
                (format!("{mode:04o}"), mode & !allowed == 0)
            }
            Err(_) => ("missing".to_string(), true),
        };
        out.push(FileCheck {
            what,
            path: path.to_path_buf(),
            mode,
            private,
        });
    };
    if let Some(store) = sqlite_path(&config.store.url) {
        check("store", &store, false);
    }
    check("master key", config.master_key_file(), false);
    if let Some(f) = config_file {
        check("config file", f, false);
    }
    check("git mirrors", &config.storage.git, true);
    check("site logs", &config.storage.logs, true);
    out
}

/// Make endor's own folders that do not exist yet, private (0700).
pub fn prepare(config: &Config) -> std::io::Result<()> {
    endor::unix::create_private_dir(&config.storage.git)?;
    endor::unix::create_private_dir(&config.storage.logs)
}

/// What makes `serve` refuse: files others can read, a sandbox asked for and not working.
pub fn problems(host: &Host, files: &[FileCheck]) -> Vec<String> {
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| !f.private)
        .map(|f| {
            format!(
                "{} {} can be read by other users (mode {}): chmod {} {}",
                f.what,
                f.path.display(),
                f.mode,
                if f.what.ends_with("folder")
                    || f.what.starts_with("git")
                    || f.what.starts_with("site")
                {
                    "700"
                } else {
                    "600"
                },
                f.path.display()
            )
        })
        .collect();
    if let Err(e) = host.check() {
        out.push(e.to_string());
    }
    out
}

/// How a site's database servers can be reached: only through their socket (the site's own
/// group), or also on a loopback port.
fn database_servers(config: &Config) -> Capability {
    let tcp: Vec<&str> = [
        ("postgres.tcp", config.postgres.tcp),
        ("mariadb.tcp", config.mariadb.tcp),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    Capability {
        what: "databases",
        enforced: tcp.is_empty(),
        detail: if tcp.is_empty() {
            "per-site servers listen only on a socket in the site's folder that the site's own processes alone can pass".into()
        } else {
            format!(
                "{} = true: per-site servers also listen on 127.0.0.1, reachable by every preview on a shared network (with the password)",
                tcp.join(", ")
            )
        },
    }
}

/// `endor doctor`.
pub fn run(json: bool, config: &Config, config_file: Option<&Path>) -> anyhow::Result<()> {
    let host = Host::new(config);
    let files = check_files(config, config_file);
    let problems = problems(&host, &files);
    let mut isolation = host.report();
    isolation.push(database_servers(config));
    let report = Report {
        isolation,
        files,
        problems,
    };
    emit(json, &report, |r| {
        let mut s = String::from("PR code on this host:\n");
        for c in &r.isolation {
            s.push_str(&format!(
                "  {:<14} {:<12} {}\n",
                c.what,
                if c.enforced {
                    "enforced"
                } else {
                    "NOT enforced"
                },
                c.detail
            ));
        }
        s.push_str("endor's own files:\n");
        for f in &r.files {
            s.push_str(&format!(
                "  {:<14} {:<8} {} {}\n",
                f.what,
                f.mode,
                if f.private {
                    "private"
                } else {
                    "READABLE BY OTHERS"
                },
                f.path.display()
            ));
        }
        if r.problems.is_empty() {
            s.push_str("endor serve can start.");
        } else {
            s.push_str("endor serve refuses to start:\n");
            for p in &r.problems {
                s.push_str(&format!("  - {p}\n"));
            }
        }
        s.trim_end().to_string()
    })?;
    if !report.problems.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
