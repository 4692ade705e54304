//! PostgreSQL, strategy `instance`: each site has its own `postgres` server on its own data
//! directory, so a clone is a reflink of a frozen data directory plus a server start — time
//! that does not grow with the data.
//!
//! A generation is made with PostgreSQL's backup protocol, never by dump and restore:
//! `pg_backup_start` (a fast checkpoint; the parent keeps serving) → reflink the data
//! directory → `pg_backup_stop` → reflink `pg_wal` again (so every WAL record up to the backup's
//! end is there) → write `backup_label` → start a temporary server on the copy, which recovers
//! to a consistent point, and shut it down cleanly. Clones of that clean directory start
//! without recovery.
//!
//! Servers run as the `postgres` OS user when endor runs as root (PostgreSQL refuses root),
//! detached from endor (their own process group), listening on a Unix socket in the instance's
//! `run/` folder, which only the site's own group may pass (see [`Access`]); on 127.0.0.1 too
//! only when `postgres.tcp` says so. No shell is involved: every program is run with an
//! argument vector. Credentials (`pg_hba.conf`, rewritten at every start): the superuser
//! `endor` only by peer authentication of endor's own OS user (no password exists for it, so
//! the site's code cannot become it even through its own socket), and an application role
//! `app` that owns database `app`, with a fresh random password per clone.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use super::common::{
    Access, clone_data_dir, free_port, fresh_password, load_record, prepare_socket, remove_alias,
    save_record, socket_alias,
};
use super::files::{TreeOptions, clone_tree, remove_tree};
use super::{CloneError, CloneStats, Strategy};

pub const APP_ROLE: &str = "app";
const SUPERUSER: &str = "endor";

/// Where PostgreSQL's programs are and whom servers run as.
#[derive(Debug, Clone)]
pub struct PgTools {
    bin: PathBuf,
    /// uid/gid to run servers as (when endor is root).
    run_as: Option<(u32, u32)>,
    /// Statements slower than this (ms) go to the server's log (`logs.slow_query_ms`).
    slow_ms: u64,
}

/// One per-site server: its data directory and how to reach it. Saved as `instance.json`
/// beside the data directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// The TCP port with `tcp`; otherwise only the number in the socket's name.
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

/// The socket's port number when there is no TCP port: each server has a folder of its own.
const SOCKET_PORT: u16 = 5432;

impl Instance {
    fn new(access: Access, password: String) -> Result<Self, CloneError> {
        Ok(Self {
            port: if access.tcp {
                free_port()?
            } else {
                SOCKET_PORT
            },
            password,
            tcp: access.tcp,
            group: access.group,
        })
    }

    /// The application's URL for the instance in `dir`: through its socket (libpq's `host`
    /// parameter naming a folder), or 127.0.0.1 when it listens there.
    pub fn url(&self, dir: &Path) -> String {
        if self.tcp {
            format!(
                "postgres://{APP_ROLE}:{}@127.0.0.1:{}/{APP_ROLE}",
                self.password, self.port
            )
        } else {
            format!(
                "postgres://{APP_ROLE}:{}@localhost:{}/{APP_ROLE}?host={}",
                self.password,
                self.port,
                run_dir(dir).display()
            )
        }
    }
}

/// The layout of one instance directory: `data/`, `run/` (socket), `server.log`,
/// `instance.json`.
pub fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// The short name of the server's socket folder (see [`socket_alias`]).
pub fn run_dir(dir: &Path) -> PathBuf {
    socket_alias("pg", dir)
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CloneError + 'a {
    CloneError::io(op, path)
}

impl PgTools {
    /// Find the newest PostgreSQL under `/usr/lib/postgresql/*/bin` (or `bin_dir` if given).
    pub fn detect(bin_dir: Option<&Path>, os_user: &str) -> Result<Self, CloneError> {
        let bin = match bin_dir {
            Some(b) => b.to_path_buf(),
            None => {
                let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                    .map_err(err("read dir", Path::new("/usr/lib/postgresql")))?
                    .flatten()
                    .filter_map(|e| {
                        Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin")))
                    })
                    .collect();
                versions.sort();
                versions.pop().map(|(_, p)| p).ok_or_else(|| {
                    CloneError::Refused(
                        "no PostgreSQL server found under /usr/lib/postgresql".into(),
                    )
                })?
            }
        };
        if !bin.join("postgres").exists() {
            return Err(CloneError::Refused(format!(
                "no postgres binary in {}",
                bin.display()
            )));
        }
        // SAFETY: geteuid has no preconditions.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(lookup_user(os_user)?)
        } else {
            None
        };
        Ok(Self {
            bin,
            run_as,
            slow_ms: 0,
        })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.env_clear()
            .env("LC_ALL", "C.UTF-8")
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c
    }

    /// Give a directory to the server's user.
    fn own(&self, path: &Path) -> Result<(), CloneError> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(err("chown", path))?;
        }
        Ok(())
    }

    fn run(&self, mut c: Command, what: &str) -> Result<(), CloneError> {
        let out = c.output().map_err(err("run", &self.bin))?;
        if !out.status.success() {
            return Err(CloneError::Refused(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// A new, empty instance in `dir` with the `app` role and database; started.
    pub async fn create(&self, dir: &Path, access: Access) -> Result<Instance, CloneError> {
        std::fs::create_dir_all(dir).map_err(err("mkdir", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(err("chmod", dir))?;
        let data = data_dir(dir);
        std::fs::create_dir_all(&data).map_err(err("mkdir", &data))?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
            .map_err(err("chmod", &data))?;
        self.own(&data)?;
        let mut init = self.cmd("initdb");
        init.arg("-D").arg(&data).args([
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-instructions",
        ]);
        self.run(init, "initdb").map_err(|e| match (&e, self.run_as) {
            (CloneError::Refused(m), Some(_)) if m.contains("Permission denied") => CloneError::Refused(format!(
                "{m} (the storage root and every directory above it must be reachable by the OS user that runs PostgreSQL, postgres.os_user)"
            )),
            _ => e,
        })?;
        let inst = Instance::new(access, fresh_password())?;
        self.start(dir, &inst).await?;
        let mut c = self
            .superuser(dir, inst.port, "postgres")
            .await
            .map_err(|e| CloneError::Refused(e.to_string()))?;
        // Role and database names are constants; the password is hex we generated: utility
        // statements take no bind parameters, and nothing here comes from a user.
        sqlx::query(&format!(
            "CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{}'",
            inst.password
        ))
        .execute(&mut c)
        .await
        .map_err(|e| CloneError::Refused(format!("create role: {e}")))?;
        sqlx::query(&format!("CREATE DATABASE {APP_ROLE} OWNER {APP_ROLE}"))
            .execute(&mut c)
            .await
            .map_err(|e| CloneError::Refused(format!("create database: {e}")))?;
        let _ = c.close().await;
        save(dir, &inst)?;
        Ok(inst)
    }

    /// Log statements slower than `ms` (0: none).
    pub fn slow_queries(mut self, ms: u64) -> Self {
        self.slow_ms = ms;
        self
    }

    /// Start the server of `dir` on `inst.port`, detached, and wait until it accepts
    /// connections (recovery included).
    pub async fn start(&self, dir: &Path, inst: &Instance) -> Result<(), CloneError> {
        let run = run_dir(dir);
        let access = Access {
            group: inst.group,
            tcp: inst.tcp,
        };
        prepare_socket(dir, &run, self.run_as, access)?;
        self.write_hba(dir)?;
        let log_path = dir.join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(err("open", &log_path))?;
        self.own(&log_path)?;
        let mut c = self.cmd("postgres");
        c.arg("-D")
            .arg(data_dir(dir))
            .arg("-p")
            .arg(inst.port.to_string())
            .arg("-k")
            .arg(&run)
            .arg("-c")
            .arg(if inst.tcp {
                "listen_addresses=127.0.0.1"
            } else {
                "listen_addresses="
            })
            .args(["-c", "max_connections=30", "-c", "shared_buffers=16MB"])
            // Lines endor ships into the site's `postgres` log (logs::ServerLog).
            .args(["-c", "log_timezone=UTC", "-c", "log_line_prefix=%m [%p] "])
            .arg("-c")
            .arg(match self.slow_ms {
                0 => "log_min_duration_statement=-1".to_string(),
                ms => format!("log_min_duration_statement={ms}"),
            })
            .stdout(log.try_clone().map_err(err("open", &log_path))?)
            .stderr(log)
            // Its own process group: the server outlives the endor command that started it
            // and does not get the terminal's signals.
            .process_group(0);
        let mut child = c.spawn().map_err(err("spawn postgres", &self.bin))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(conn) = self.superuser(dir, inst.port, "postgres").await {
                let _ = conn.close().await;
                // Reap the child in the background; the server is detached, not our job.
                std::thread::spawn(move || child.wait());
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: String = tail
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(CloneError::Refused(format!(
                    "postgres exited ({status}) at start: {tail}"
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(CloneError::Refused(
                    "postgres did not accept connections within 60 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn superuser(
        &self,
        dir: &Path,
        port: u16,
        db: &str,
    ) -> Result<PgConnection, sqlx::Error> {
        PgConnectOptions::new()
            .socket(run_dir(dir))
            .port(port)
            .username(SUPERUSER)
            .database(db)
            .log_statements(tracing::log::LevelFilter::Trace)
            .connect()
            .await
    }

    /// Stop the server of `dir` if one runs (fast shutdown: clients are disconnected, a
    /// shutdown checkpoint is written). Idempotent.
    pub async fn stop(&self, dir: &Path) -> Result<(), CloneError> {
        let pid_file = data_dir(dir).join("postmaster.pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
            .filter(|p| *p > 1)
        else {
            return Ok(());
        };
        // SAFETY: kill(2) with a pid read from the server's own pid file; signal 0 only probes.
        let alive = |pid| unsafe { libc::kill(pid, 0) } == 0;
        if !alive(pid) {
            return Ok(());
        }
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(pid) {
            if Instant::now() > deadline {
                // SAFETY: as above; the server ignored a fast shutdown for 30 s.
                unsafe { libc::kill(pid, libc::SIGQUIT) };
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        remove_alias(&run_dir(dir));
        Ok(())
    }

    /// Who may log in how, written before every start (a copy made from an older generation
    /// gets it too): `endor` by peer authentication of endor's and the server's OS users only,
    /// `app` with its password.
    fn write_hba(&self, dir: &Path) -> Result<(), CloneError> {
        let data = data_dir(dir);
        let hba = "# Written by endor at every start of this server.\n\
                   local all endor peer map=endor\n\
                   local all app scram-sha-256\n\
                   host all app 127.0.0.1/32 scram-sha-256\n";
        // SAFETY: geteuid has no preconditions.
        let mut users = vec![unsafe { libc::geteuid() }];
        users.extend(self.run_as.map(|(uid, _)| uid));
        let mut ident = String::from("# Written by endor at every start of this server.\n");
        for name in users.into_iter().filter_map(crate::unix::user_name) {
            ident.push_str(&format!("endor {name} endor\n"));
        }
        for (file, text) in [("pg_hba.conf", hba.to_string()), ("pg_ident.conf", ident)] {
            let path = data.join(file);
            crate::unix::replace_file_atomic(&path, text.as_bytes(), 0o600)
                .map_err(err("write", &path))?;
            self.own(&path)?;
        }
        Ok(())
    }

    /// Import a database from `source_url` into the instance (pg_dump | psql; time
    /// proportional to its size: the one time data is copied).
    pub async fn import(
        &self,
        dir: &Path,
        inst: &Instance,
        source_url: &str,
    ) -> Result<(), CloneError> {
        let mut dump = self.cmd("pg_dump");
        // pg_dump runs as us (it reads a remote server), psql as the server's user over its
        // socket.
        dump.uid(unsafe { libc::geteuid() })
            .gid(unsafe { libc::getegid() });
        dump.args(["--no-owner", "--no-acl", "--format=plain", "--dbname"])
            .arg(source_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut dump = dump.spawn().map_err(err("spawn pg_dump", &self.bin))?;
        let dump_out = dump
            .stdout
            .take()
            .ok_or_else(|| CloneError::Refused("pg_dump has no stdout".into()))?;
        let mut psql = self.cmd("psql");
        psql.env("PGPASSWORD", &inst.password)
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(run_dir(dir))
            .arg("-p")
            .arg(inst.port.to_string())
            .args(["-U", APP_ROLE, "-d", APP_ROLE])
            .stdin(Stdio::from(dump_out))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let psql_out = tokio::task::spawn_blocking(move || psql.output())
            .await
            .map_err(|e| CloneError::Refused(e.to_string()))?;
        let dump_out = tokio::task::spawn_blocking(move || dump.wait_with_output())
            .await
            .map_err(|e| CloneError::Refused(e.to_string()))?;
        let dump_out = dump_out.map_err(err("pg_dump", &self.bin))?;
        let psql_out = psql_out.map_err(err("psql", &self.bin))?;
        if !dump_out.status.success() {
            return Err(CloneError::Refused(format!(
                "pg_dump failed: {}",
                redact(&String::from_utf8_lossy(&dump_out.stderr), source_url)
            )));
        }
        if !psql_out.status.success() {
            return Err(CloneError::Refused(format!(
                "restore failed: {}",
                String::from_utf8_lossy(&psql_out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Freeze a consistent generation of the running instance `live` into `gen` (see the
    /// module doc). The parent keeps serving throughout.
    pub async fn snapshot(
        &self,
        live: &Path,
        gen_dir: &Path,
        reflink: bool,
    ) -> Result<CloneStats, CloneError> {
        let started = Instant::now();
        let inst = load(live)?;
        std::fs::create_dir_all(gen_dir).map_err(err("mkdir", gen_dir))?;
        std::fs::set_permissions(gen_dir, std::fs::Permissions::from_mode(0o755))
            .map_err(err("chmod", gen_dir))?;
        let sql = |e: sqlx::Error| CloneError::Refused(format!("backup protocol: {e}"));
        let mut c = self
            .superuser(live, inst.port, "postgres")
            .await
            .map_err(sql)?;
        sqlx::query("SELECT pg_backup_start('endor generation', true)")
            .execute(&mut c)
            .await
            .map_err(sql)?;
        let opts = TreeOptions::new(reflink);
        let copied = clone_tree(&data_dir(live), &data_dir(gen_dir), opts);
        let stop: Result<(String,), _> =
            sqlx::query_as("SELECT labelfile FROM pg_backup_stop(false)")
                .fetch_one(&mut c)
                .await;
        let _ = c.close().await;
        let mut stats = copied?;
        let (label,) = stop.map_err(sql)?;
        // Every WAL record up to the end of the backup.
        let wal = data_dir(gen_dir).join("pg_wal");
        remove_tree(&wal)?;
        let wal_stats = clone_tree(&data_dir(live).join("pg_wal"), &wal, opts)?;
        stats.bytes_written += wal_stats.bytes_written;
        for f in ["postmaster.pid", "postmaster.opts"] {
            let _ = std::fs::remove_file(data_dir(gen_dir).join(f));
        }
        let label_path = data_dir(gen_dir).join("backup_label");
        std::fs::write(&label_path, label).map_err(err("write", &label_path))?;
        self.own(&label_path)?;
        // Recover once, then shut down cleanly: clones of a clean directory start fast.
        // Endor's alone while it recovers: no group through its socket folder.
        let temp = Instance::new(Access::default(), inst.password.clone())?;
        self.start(gen_dir, &temp).await?;
        self.stop(gen_dir).await?;
        save(gen_dir, &temp)?;
        Ok(CloneStats {
            strategy: instance_strategy(stats.strategy),
            duration_us: started.elapsed().as_micros() as u64,
            ..stats
        })
    }

    /// A new instance in `dst` from the clean generation in `gen`: reflink, start, and a fresh
    /// password for `app`.
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
        let mut c = self
            .superuser(dst, inst.port, "postgres")
            .await
            .map_err(|e| CloneError::Refused(e.to_string()))?;
        sqlx::query(&format!(
            "ALTER ROLE {APP_ROLE} PASSWORD '{}'",
            inst.password
        ))
        .execute(&mut c)
        .await
        .map_err(|e| CloneError::Refused(format!("set password: {e}")))?;
        let _ = c.close().await;
        save(dst, &inst)?;
        Ok((
            inst,
            CloneStats {
                strategy: instance_strategy(stats.strategy),
                duration_us: started.elapsed().as_micros() as u64,
                ..stats
            },
        ))
    }
}

fn instance_strategy(files: Strategy) -> Strategy {
    if files == Strategy::Reflink {
        Strategy::Instance
    } else {
        Strategy::InstanceCopy
    }
}

/// Remove the password of a URL from a message.
fn redact(msg: &str, url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(auth, _)| auth.split_once(':'))
    {
        Some((_, pw)) if !pw.is_empty() => msg.replace(pw, "***"),
        _ => msg.trim().to_string(),
    }
}

/// The uid/gid a database server runs as (servers refuse to run as root).
pub(crate) fn lookup_user(name: &str) -> Result<(u32, u32), CloneError> {
    crate::unix::lookup_user(name).map_err(|e| {
        CloneError::Refused(format!(
            "{e}: database servers cannot run as root (postgres.os_user, mariadb.os_user)"
        ))
    })
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
    fn urls_name_the_socket_unless_tcp_and_old_records_keep_their_port() {
        let dir = Path::new("/srv/endor/sites/0193/live/postgres/main");
        let socket: Instance =
            serde_json::from_str(r#"{"port":5432,"password":"pw","tcp":false,"group":200001}"#)
                .unwrap();
        assert_eq!(
            socket.url(dir),
            format!(
                "postgres://app:pw@localhost:5432/app?host={}",
                run_dir(dir).display()
            )
        );
        assert!(run_dir(dir).as_os_str().len() + "/.s.PGSQL.5432".len() < 108);
        let old: Instance = serde_json::from_str(r#"{"port":41234,"password":"pw"}"#).unwrap();
        assert!(old.tcp && old.group.is_none());
        assert_eq!(old.url(dir), "postgres://app:pw@127.0.0.1:41234/app");
    }
}
