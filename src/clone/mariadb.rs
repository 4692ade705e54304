//! MariaDB, strategy `instance`: each site has its own `mariadbd` on its own data directory;
//! a clone is a reflink of a prepared generation plus a server start.
//!
//! A generation is made by `mariadb-backup --backup` from the running parent (InnoDB stays
//! online; a brief backup lock at the end for non-InnoDB tables), then `--prepare`, which makes
//! the copy a consistent, directly startable data directory. That copy takes time proportional
//! to the data, once per generation; clones of it do not. Where `mariadb-backup` is missing,
//! the generation is made from a `mariadb-dump --single-transaction` of the parent into a fresh
//! instance instead (also consistent, also once per generation, slower), and the report says so.
//!
//! Servers run as the `mysql` OS user when endor is root, detached, on a Unix socket in the
//! instance's `run/` folder, which only the site's own group may pass (see [`Access`]); with
//! networking skipped unless `mariadb.tcp` says so (then on 127.0.0.1). Control goes through
//! the `mariadb` client with argument vectors (no shell). Credentials: `root` only by the
//! socket's peer check of the OS user root (so not by the site's code), and an application
//! user `app` that owns database `app`, with a fresh random password per clone.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::common::{
    Access, clone_data_dir, free_port, fresh_password, load_record, prepare_socket, remove_alias,
    save_record, socket_alias, tree_size,
};
use super::{CloneError, CloneStats, Strategy};

pub const APP: &str = "app";

#[derive(Debug, Clone)]
pub struct MariaTools {
    /// uid/gid servers run as (when endor is root).
    run_as: Option<(u32, u32)>,
    os_user: String,
    /// `mariadb-backup`, when installed.
    backup_tool: Option<PathBuf>,
    /// Statements slower than this (ms) go to the server's slow log (`logs.slow_query_ms`).
    slow_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// The TCP port, used only with `tcp`.
    pub port: u16,
    pub password: String,
    /// Also listening on 127.0.0.1. A record without it is of a server started before
    /// sockets were the default, which listens there.
    #[serde(default = "super::common::listened_on_tcp")]
    pub tcp: bool,
    /// The group allowed through the socket's folder.
    #[serde(default)]
    pub group: Option<u32>,
}

impl Instance {
    fn new(access: Access, password: String) -> Result<Self, CloneError> {
        Ok(Self {
            port: if access.tcp { free_port()? } else { 0 },
            password,
            tcp: access.tcp,
            group: access.group,
        })
    }

    /// The application's URL for the instance in `dir`: through its socket, or 127.0.0.1
    /// when it listens there.
    pub fn url(&self, dir: &Path) -> String {
        if self.tcp {
            format!(
                "mysql://{APP}:{}@127.0.0.1:{}/{APP}",
                self.password, self.port
            )
        } else {
            format!(
                "mysql://{APP}:{}@localhost/{APP}?socket={}",
                self.password,
                socket(dir).display()
            )
        }
    }
}

pub fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// The short name of the socket folder (see [`socket_alias`]).
pub fn run_dir(dir: &Path) -> PathBuf {
    socket_alias("my", dir)
}

fn socket(dir: &Path) -> PathBuf {
    run_dir(dir).join("mysqld.sock")
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CloneError + 'a {
    CloneError::io(op, path)
}

/// Parts of a `mysql://` or `mariadb://` URL.
struct SourceUrl {
    user: String,
    password: Option<String>,
    host: String,
    port: u16,
    db: String,
}

fn parse_url(url: &str) -> Result<SourceUrl, CloneError> {
    let bad = || {
        CloneError::Refused("--mariadb must be mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE".into())
    };
    let rest = url
        .strip_prefix("mysql://")
        .or_else(|| url.strip_prefix("mariadb://"))
        .ok_or_else(bad)?;
    let (auth, rest) = rest.rsplit_once('@').ok_or_else(bad)?;
    let (hostport, db) = rest.split_once('/').ok_or_else(bad)?;
    let (user, password) = match auth.split_once(':') {
        Some((u, p)) => (u.to_string(), Some(p.to_string())),
        None => (auth.to_string(), None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
        None => (hostport.to_string(), 3306),
    };
    // Each part is passed as one argument; none may look like an option.
    let ident_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    };
    if !ident_ok(&user) || !ident_ok(&host) || !ident_ok(db) {
        return Err(bad());
    }
    Ok(SourceUrl {
        user,
        password,
        host,
        port,
        db: db.to_string(),
    })
}

impl MariaTools {
    pub fn detect(os_user: &str) -> Result<Self, CloneError> {
        for prog in [
            "/usr/sbin/mariadbd",
            "/usr/bin/mariadb-install-db",
            "/usr/bin/mariadb",
        ] {
            if !Path::new(prog).exists() {
                return Err(CloneError::Refused(format!(
                    "{prog} not found: install mariadb-server"
                )));
            }
        }
        // SAFETY: geteuid has no preconditions.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(super::postgres::lookup_user(os_user)?)
        } else {
            None
        };
        let backup_tool = Some(PathBuf::from("/usr/bin/mariadb-backup")).filter(|p| p.exists());
        Ok(Self {
            run_as,
            os_user: os_user.to_string(),
            backup_tool,
            slow_ms: 0,
        })
    }

    /// Use this `mariadb-backup` (or none: generations then fall back to mariadb-dump).
    pub fn with_backup_tool(mut self, tool: Option<PathBuf>) -> Self {
        self.backup_tool = tool;
        self
    }

    fn cmd(&self, program: &str, as_server_user: bool) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("LC_ALL", "C.UTF-8")
            .env("PATH", "/usr/sbin:/usr/bin:/bin")
            .stdin(Stdio::null());
        if as_server_user && let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c
    }

    fn own(&self, path: &Path) -> Result<(), CloneError> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(err("chown", path))?;
        }
        Ok(())
    }

    fn own_tree(&self, path: &Path) -> Result<(), CloneError> {
        if self.run_as.is_none() {
            return Ok(());
        }
        self.own(path)?;
        if path.is_dir() {
            for e in std::fs::read_dir(path)
                .map_err(err("read dir", path))?
                .flatten()
            {
                self.own_tree(&e.path())?;
            }
        }
        Ok(())
    }

    fn output(&self, mut c: Command, what: &str) -> Result<String, CloneError> {
        let out = c.output().map_err(err("run", Path::new(what)))?;
        if !out.status.success() {
            return Err(CloneError::Refused(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run SQL as root through the instance's socket.
    fn sql(&self, dir: &Path, sql: &str) -> Result<String, CloneError> {
        let mut c = self.cmd("/usr/bin/mariadb", false);
        c.arg("--no-defaults")
            .arg(format!("--socket={}", socket(dir).display()))
            .args(["-uroot", "-N", "-B", "-e", sql]);
        self.output(c, "mariadb")
    }

    /// A new, empty instance in `dir` with database and user `app`; started.
    pub async fn create(&self, dir: &Path, access: Access) -> Result<Instance, CloneError> {
        std::fs::create_dir_all(dir).map_err(err("mkdir", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(err("chmod", dir))?;
        let data = data_dir(dir);
        std::fs::create_dir_all(&data).map_err(err("mkdir", &data))?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750))
            .map_err(err("chmod", &data))?;
        self.own(&data)?;
        let mut c = self.cmd("/usr/bin/mariadb-install-db", false);
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--user={}", self.os_user))
            .args(["--auth-root-authentication-method=socket", "--skip-test-db"]);
        self.output(c, "mariadb-install-db")?;
        self.own_tree(&data)?;
        let inst = Instance::new(access, fresh_password())?;
        self.start(dir, &inst).await?;
        // Names are constants and the password is hex we generated.
        self.sql(
            dir,
            &format!(
                "CREATE DATABASE {APP}; CREATE USER '{APP}'@'%' IDENTIFIED BY '{pw}'; \
                 CREATE USER '{APP}'@'localhost' IDENTIFIED BY '{pw}'; \
                 GRANT ALL ON {APP}.* TO '{APP}'@'%'; GRANT ALL ON {APP}.* TO '{APP}'@'localhost';",
                pw = inst.password
            ),
        )?;
        save(dir, &inst)?;
        Ok(inst)
    }

    /// Log statements slower than `ms` (0: none) to `slow.log` beside the server's log.
    pub fn slow_queries(mut self, ms: u64) -> Self {
        self.slow_ms = ms;
        self
    }

    /// Start the server of `dir`, detached, and wait until it answers.
    pub async fn start(&self, dir: &Path, inst: &Instance) -> Result<(), CloneError> {
        let sock = socket(dir);
        let access = Access {
            group: inst.group,
            tcp: inst.tcp,
        };
        prepare_socket(dir, &run_dir(dir), self.run_as, access)?;
        let log = dir.join("server.log");
        let mut c = self.cmd("/usr/sbin/mariadbd", true);
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", data_dir(dir).display()))
            .arg(format!("--socket={}", sock.display()))
            .args(if inst.tcp {
                vec![
                    format!("--port={}", inst.port),
                    "--bind-address=127.0.0.1".to_string(),
                ]
            } else {
                vec!["--skip-networking".to_string()]
            })
            .arg(format!(
                "--pid-file={}",
                data_dir(dir).join("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .args([
                "--innodb-buffer-pool-size=16M",
                "--skip-log-bin",
                "--max-connections=30",
            ])
            .args(match self.slow_ms {
                0 => vec!["--slow-query-log=0".to_string()],
                ms => vec![
                    "--slow-query-log=1".to_string(),
                    format!("--long-query-time={:.3}", ms as f64 / 1000.0),
                    format!("--slow-query-log-file={}", dir.join("slow.log").display()),
                ],
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if self.run_as.is_some() {
            for f in [log.clone(), dir.join("slow.log")] {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&f)
                    .map_err(err("open", &f))?;
                self.own(&f)?;
            }
        }
        let mut child = c
            .spawn()
            .map_err(err("spawn", Path::new("/usr/sbin/mariadbd")))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.sql(dir, "SELECT 1").is_ok() {
                std::thread::spawn(move || child.wait());
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("ERROR") || l.contains("Error"))
                    .rev()
                    .take(8)
                    .collect();
                return Err(CloneError::Refused(format!(
                    "mariadbd exited ({status}) at start: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(CloneError::Refused(
                    "mariadbd did not answer within 60 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop the server of `dir` if one runs (SIGTERM: a clean shutdown). Idempotent.
    pub async fn stop(&self, dir: &Path) -> Result<(), CloneError> {
        let pid_file = data_dir(dir).join("mariadbd.pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let Some(pid) = text.trim().parse::<i32>().ok().filter(|p| *p > 1) else {
            return Ok(());
        };
        // SAFETY: kill(2) with the pid the server wrote; signal 0 only probes.
        let alive = |pid| unsafe { libc::kill(pid, 0) } == 0;
        if alive(pid) {
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(60);
            while alive(pid) {
                if Instant::now() > deadline {
                    // SAFETY: as above; the server ignored SIGTERM for a minute.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let _ = std::fs::remove_file(&pid_file);
        remove_alias(&run_dir(dir));
        Ok(())
    }

    /// Import database `source_url` (`mysql://user:pass@host:port/db`) into `app`:
    /// `mariadb-dump --single-transaction | mariadb`, once (time proportional to size).
    pub async fn import(&self, dir: &Path, source_url: &str) -> Result<(), CloneError> {
        let src = parse_url(source_url)?;
        let mut dump = self.cmd("/usr/bin/mariadb-dump", false);
        if let Some(p) = &src.password {
            dump.env("MYSQL_PWD", p); // not on the command line, where `ps` would show it
        }
        dump.arg("--no-defaults")
            .arg(format!("--host={}", src.host))
            .arg(format!("--port={}", src.port))
            .arg(format!("--user={}", src.user))
            .args([
                "--single-transaction",
                "--routines",
                "--triggers",
                "--no-tablespaces",
                "--skip-add-locks",
            ])
            .arg(&src.db)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.pipe_into(dir, dump, APP).await
    }

    async fn pipe_into(&self, dir: &Path, mut dump: Command, db: &str) -> Result<(), CloneError> {
        let mut dump = dump
            .spawn()
            .map_err(err("spawn", Path::new("mariadb-dump")))?;
        let out = dump
            .stdout
            .take()
            .ok_or_else(|| CloneError::Refused("mariadb-dump has no stdout".into()))?;
        let mut load = self.cmd("/usr/bin/mariadb", false);
        load.arg("--no-defaults")
            .arg(format!("--socket={}", socket(dir).display()))
            .args(["-uroot", db])
            .stdin(Stdio::from(out))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let load_out = tokio::task::spawn_blocking(move || load.output())
            .await
            .map_err(|e| CloneError::Refused(e.to_string()))?;
        let dump_out = tokio::task::spawn_blocking(move || dump.wait_with_output())
            .await
            .map_err(|e| CloneError::Refused(e.to_string()))?;
        let dump_out = dump_out.map_err(err("mariadb-dump", dir))?;
        let load_out = load_out.map_err(err("mariadb", dir))?;
        if !dump_out.status.success() {
            return Err(CloneError::Refused(format!(
                "mariadb-dump failed: {}",
                String::from_utf8_lossy(&dump_out.stderr).trim()
            )));
        }
        if !load_out.status.success() {
            return Err(CloneError::Refused(format!(
                "restore failed: {}",
                String::from_utf8_lossy(&load_out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Freeze a consistent generation of the running instance `live` into `gen_dir`.
    pub async fn snapshot(&self, live: &Path, gen_dir: &Path) -> Result<CloneStats, CloneError> {
        let started = Instant::now();
        let inst = load(live)?;
        std::fs::create_dir_all(gen_dir).map_err(err("mkdir", gen_dir))?;
        std::fs::set_permissions(gen_dir, std::fs::Permissions::from_mode(0o755))
            .map_err(err("chmod", gen_dir))?;
        let target = data_dir(gen_dir);
        let strategy = if let Some(tool) = &self.backup_tool {
            let tool = tool.to_string_lossy().into_owned();
            let mut backup = self.cmd(&tool, false);
            backup
                .arg("--no-defaults")
                .arg("--backup")
                .arg(format!("--datadir={}", data_dir(live).display()))
                .arg(format!("--socket={}", socket(live).display()))
                .arg("--user=root")
                .arg(format!("--target-dir={}", target.display()));
            self.output(backup, "mariadb-backup --backup")?;
            let mut prepare = self.cmd(&tool, false);
            prepare
                .arg("--no-defaults")
                .arg("--prepare")
                .arg(format!("--target-dir={}", target.display()));
            self.output(prepare, "mariadb-backup --prepare")?;
            self.own_tree(&target)?;
            // Start once and shut down cleanly: InnoDB settles its redo log here, once, instead
            // of rewriting ~100 MB in every clone at its first start (measured: 116 MB per
            // clone without this).
            // Endor's alone while it settles: no group through its socket folder.
            let settle = Instance::new(Access::default(), inst.password.clone())?;
            self.start(gen_dir, &settle).await?;
            self.stop(gen_dir).await?;
            Strategy::Instance
        } else {
            tracing::warn!(site_dir = %live.display(), "mariadb-backup is missing: generation made by mariadb-dump (slower, time grows with the data)");
            let fresh = self.create(gen_dir, Access::default()).await?;
            let mut dump = self.cmd("/usr/bin/mariadb-dump", false);
            dump.arg("--no-defaults")
                .arg(format!("--socket={}", socket(live).display()))
                .args([
                    "-uroot",
                    "--single-transaction",
                    "--routines",
                    "--triggers",
                    "--skip-add-locks",
                    APP,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            self.pipe_into(gen_dir, dump, APP).await?;
            self.stop(gen_dir).await?;
            let _ = fresh;
            Strategy::Import
        };
        save(gen_dir, &inst)?;
        let size = tree_size(&target);
        Ok(CloneStats::full_copy(strategy, size, 0, started))
    }

    /// A new instance in `dst` from the generation in `gen_dir`: reflink, start, new password.
    pub async fn clone_generation(
        &self,
        gen_dir: &Path,
        dst: &Path,
        reflink: bool,
        access: Access,
    ) -> Result<(Instance, CloneStats), CloneError> {
        let started = Instant::now();
        let stats = clone_data_dir(&data_dir(gen_dir), dst, reflink)?;
        let inst = Instance::new(access, fresh_password())?;
        self.start(dst, &inst).await?;
        self.sql(
            dst,
            &format!(
                "ALTER USER '{APP}'@'%' IDENTIFIED BY '{pw}'; ALTER USER '{APP}'@'localhost' IDENTIFIED BY '{pw}';",
                pw = inst.password
            ),
        )?;
        save(dst, &inst)?;
        let strategy = if stats.strategy == Strategy::Reflink {
            Strategy::Instance
        } else {
            Strategy::InstanceCopy
        };
        Ok((
            inst,
            CloneStats {
                strategy,
                duration_us: started.elapsed().as_micros() as u64,
                ..stats
            },
        ))
    }
}

pub fn save(dir: &Path, inst: &Instance) -> Result<(), CloneError> {
    save_record(dir, "instance.json", inst)
}

pub fn load(dir: &Path) -> Result<Instance, CloneError> {
    load_record(dir, "instance.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_urls() {
        let u = parse_url("mysql://root:pw@127.0.0.1:3307/shop").unwrap();
        assert_eq!(
            (
                u.user.as_str(),
                u.password.as_deref(),
                u.host.as_str(),
                u.port,
                u.db.as_str()
            ),
            ("root", Some("pw"), "127.0.0.1", 3307, "shop")
        );
        assert_eq!(
            parse_url("mariadb://root@localhost/shop").unwrap().port,
            3306
        );
        for bad in [
            "postgres://x@y/z",
            "mysql://root@h/db;drop",
            "mysql://root@h/",
            "mysql://-e@h/db",
            "mysql://r@h/-db",
            "mysql://r@h:notaport/db",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
