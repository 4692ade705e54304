//! Running a site's code: build steps and the supervised start process, and the health check.
//!
//! Build and start commands come from the repository's `.endor.toml` on its default branch —
//! the repository's own build definition, run like a CI runner runs its steps (`/bin/sh -c`);
//! no text from a PR event (branch names, titles, comments) is ever put into them. They run
//! with a cleared environment (endor's own variables and secrets never reach PR code) plus the
//! variables given, in their own process group (a timeout kills every process they started),
//! and, when endor runs as root, as an unprivileged user (`runtime.user`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Invalid(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("health check of {url} did not pass within {secs} s: {last}")]
    Unhealthy {
        url: String,
        secs: u64,
        last: String,
    },
}

pub mod cgroup;
pub mod disk;
pub mod docker;
pub mod jail;

use crate::config::{Config, Isolation, NetworkMode, RuntimeKind};
use cgroup::{Cgroups, Group};
use disk::DiskWatch;
use jail::Jail;

/// What one site's processes may use together.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub memory: u64,
    pub cpus: f64,
    pub processes: u32,
    pub disk: u64,
}

/// Who and where commands run.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub dir: PathBuf,
    /// Extra environment (PORT, DATABASE_URL, ENDOR_FILES_DIR, ENDOR_SITE).
    pub env: Vec<(String, String)>,
    /// uid/gid to run as (set when endor is root).
    pub run_as: Option<(u32, u32)>,
    /// The namespaces the code runs in (none with `runtime.isolation = "none"`).
    pub jail: Option<Jail>,
    /// The site's control group (its limits), where the host has one.
    pub cgroup: Option<Group>,
    /// The memory limit, for saying why a process was killed.
    pub memory_limit: Option<u64>,
    /// What the site's code has written, against its disk limit.
    pub disk: Option<DiskWatch>,
    /// With `runtime.kind = "docker"`: the engine and what the site's containers are made of.
    pub docker: Option<(docker::Engine, docker::Spec)>,
}

impl Sandbox {
    /// No isolation: resolve `runtime.user` when running as root; otherwise commands run as
    /// ourselves.
    pub fn new(
        dir: impl Into<PathBuf>,
        env: Vec<(String, String)>,
        user: &str,
    ) -> Result<Self, RuntimeError> {
        // SAFETY: geteuid has no preconditions.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(
                crate::unix::lookup_user(user)
                    .map_err(|e| RuntimeError::Invalid(format!("runtime.user: {e}")))?,
            )
        } else {
            None
        };
        Ok(Self {
            dir: dir.into(),
            env,
            run_as,
            jail: None,
            cgroup: None,
            memory_limit: None,
            disk: None,
            docker: None,
        })
    }

    /// `/bin/sh -c script` as [`Sandbox::command_argv`] runs it.
    fn command(&self, script: &str) -> std::io::Result<(Command, Vec<std::fs::File>)> {
        self.command_argv(&["/bin/sh".into(), "-c".into(), script.into()])
    }

    /// The command running `argv` (a program and its arguments, no shell between), and the
    /// files its child must still have open when it is spawned.
    fn command_argv(&self, argv: &[OsString]) -> std::io::Result<(Command, Vec<std::fs::File>)> {
        let mut keep = Vec::new();
        let Some((program, rest)) = argv.split_first() else {
            return Err(std::io::Error::other("no command to run"));
        };
        let mut c = match &self.jail {
            None => {
                let mut c = Command::new(program);
                c.args(rest);
                c
            }
            Some(j) => {
                keep = jail::open_dirs(&j.writable)?;
                let (program, args) = j.argv(&self.dir, argv, &Group::raw_fds(&keep));
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        };
        let bind_fds = Group::raw_fds(&keep);
        c.current_dir(&self.dir).env_clear();
        c.env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.dir)
            .env("LANG", "C.UTF-8");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.run_as {
            // Dropping from root, std also clears the supplementary groups before setuid.
            c.uid(uid).gid(gid);
        }
        let mut procs = match &self.cgroup {
            Some(g) => g.open_procs()?,
            None => Vec::new(),
        };
        let fds = Group::raw_fds(&procs);
        procs.extend(keep);
        let jailed = self.jail.is_some();
        // SAFETY: runs in the child between fork and exec; it only calls write(2) and prctl(2).
        unsafe {
            c.pre_exec(move || {
                Group::enter_from_child(&fds)?;
                jail::keep_open(&bind_fds)?;
                if jailed && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok((c, procs))
    }

    fn spawn(&self, script: &str) -> std::io::Result<Child> {
        let (mut c, _procs) = self.command(script)?;
        c.spawn()
    }

    fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, Group::oom_kills)
    }

    /// Why a process that just ended was killed, if its group ran out of memory since
    /// `kills_before`.
    fn oom_note(&self, kills_before: u64) -> Option<String> {
        (self.oom_kills() > kills_before).then(|| self.memory_note())
    }

    fn memory_note(&self) -> String {
        match self.memory_limit {
            Some(m) => format!(
                "was killed: the site's processes reached their memory limit ({})",
                crate::size::ByteSize(m)
            ),
            None => "was killed: out of memory".into(),
        }
    }

    /// Give the sandbox's directory to its user (the checkout is written by endor).
    pub fn hand_over(&self) -> Result<(), RuntimeError> {
        hand_over(&self.dir, self.run_as)
    }
}

/// `GET /_ping` on the Docker Engine's socket: `Ok` when it answers `OK`.
fn docker_ping() -> Result<(), String> {
    use std::io::{Read, Write};
    let fail = |e: &dyn std::fmt::Display| {
        format!(
            "runtime.kind = \"docker\" but the Docker Engine does not answer on /var/run/docker.sock: {e}"
        )
    };
    let mut s =
        std::os::unix::net::UnixStream::connect("/var/run/docker.sock").map_err(|e| fail(&e))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| fail(&e))?;
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| fail(&e))?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(fail(&answer.lines().next().unwrap_or("no answer")))
    }
}

/// One site as the host runs it.
#[derive(Debug, Clone)]
pub struct SiteBox {
    /// The site's id: names its control group.
    pub key: String,
    /// Its own uid (and gid), when endor runs as root with isolation.
    pub uid: Option<u32>,
    /// Folders its code may write besides the working directory.
    pub writable: Vec<PathBuf>,
    /// Its database servers' socket folders, as `(short name, real folder)`: shown at the
    /// short name its `DATABASE_URL` uses (the real folder is inside `writable`).
    pub sockets: Vec<(PathBuf, PathBuf)>,
    /// Folders whose new data counts against the disk limit (besides the working directory).
    pub quota_dirs: Vec<PathBuf>,
    pub limits: Limits,
    /// With `runtime.kind = "docker"`: the repository's image, if it names one.
    pub image: Option<String>,
}

/// What this host does to confine PR code, decided once from `[runtime]`.
#[derive(Debug, Clone)]
pub struct Host {
    /// With `runtime.kind = "docker"`: the engine and the default image.
    docker: Option<(docker::Engine, String)>,
    isolation: Isolation,
    network: NetworkMode,
    bwrap: Option<PathBuf>,
    pasta: Option<PathBuf>,
    cgroups: Option<Cgroups>,
    root: bool,
    user: String,
    /// `runtime.advertise`: where a site's port is reachable from gateways.
    advertise: std::net::IpAddr,
}

/// One line of what the host enforces (for `endor doctor`).
#[derive(Debug, Clone, Serialize)]
pub struct Capability {
    pub what: &'static str,
    pub enforced: bool,
    pub detail: String,
}

impl Host {
    pub fn new(config: &Config) -> Self {
        let cfg = &config.runtime;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let sandboxed = cfg.isolation == Isolation::Sandbox && cfg.kind == RuntimeKind::Local;
        let docker = (cfg.kind == RuntimeKind::Docker)
            .then(|| {
                docker::Engine::connect()
                    .ok()
                    .map(|e| (e, cfg.image.clone()))
            })
            .flatten();
        Self {
            docker,
            isolation: if cfg.kind == RuntimeKind::Docker {
                Isolation::Sandbox
            } else {
                cfg.isolation
            },
            network: cfg.network,
            bwrap: jail::find_program("bwrap").filter(|_| sandboxed),
            pasta: jail::find_program("pasta").filter(|_| sandboxed),
            // Limits need a group endor may make: as root, with isolation.
            cgroups: (root && sandboxed)
                .then(|| Cgroups::detect(&cfg.cgroup_root))
                .flatten(),
            root,
            user: cfg.user.clone(),
            advertise: cfg.advertise,
        }
    }

    /// The address this host's previews are reached at (`runtime.advertise`).
    pub fn advertise(&self) -> std::net::IpAddr {
        self.advertise
    }

    pub fn isolated(&self) -> bool {
        self.isolation == Isolation::Sandbox
    }

    /// Whether PR code runs in containers (`runtime.kind = "docker"`).
    pub fn containers(&self) -> bool {
        self.docker.is_some()
    }

    /// Whether sites get their own uid (root with isolation).
    pub fn per_site_uids(&self) -> bool {
        self.root && self.isolated()
    }

    /// What this host enforces, one line each.
    pub fn report(&self) -> Vec<Capability> {
        let mut out = Vec::new();
        let mut line = |what, enforced, detail: String| {
            out.push(Capability {
                what,
                enforced,
                detail,
            })
        };
        if let Some((_, image)) = &self.docker {
            match docker_ping() {
                Ok(()) => line(
                    "containers",
                    true,
                    format!(
                        "runtime.kind = \"docker\": Docker Engine at /var/run/docker.sock, default image {image}; a bridge network per site, all capabilities dropped, no new privileges"
                    ),
                ),
                Err(e) => line("containers", false, e),
            }
            line(
                "uid per site",
                self.root,
                "containers run as the site's uid".into(),
            );
            for what in ["memory limit", "cpu limit", "process limit"] {
                line(what, true, "the container's own limits".into());
            }
            line(
                "disk limit",
                true,
                "what a site writes into its bound folders is measured every 0.5 s".into(),
            );
            return out;
        }
        if !self.isolated() {
            line(
                "isolation",
                false,
                "runtime.isolation = \"none\": PR code runs unconfined as runtime.user".into(),
            );
            return out;
        }
        match (&self.bwrap, self.sandbox_works()) {
            (Some(b), Ok(())) => line(
                "sandbox",
                true,
                format!(
                    "bubblewrap ({}): own PID/IPC/UTS namespaces, system read-only, private /tmp, no new privileges",
                    b.display()
                ),
            ),
            (Some(b), Err(e)) => line(
                "sandbox",
                false,
                format!("{} does not work here: {e}", b.display()),
            ),
            (None, _) => line(
                "sandbox",
                false,
                "bubblewrap (bwrap) is not installed: apt-get install bubblewrap".into(),
            ),
        }
        line(
            "uid per site",
            self.root,
            if self.root {
                "each site runs as a uid of its own from runtime.uid_range, its folders 0700".into()
            } else {
                "endor does not run as root: every site runs as endor's own uid".into()
            },
        );
        match self.network {
            NetworkMode::Shared => line(
                "network",
                false,
                "runtime.network = \"shared\": previews reach the network as the host does".into(),
            ),
            NetworkMode::Isolated => match self.network_works() {
                Ok(p) => line(
                    "network",
                    true,
                    format!(
                        "a namespace per preview through pasta ({}), app port forwarded from the host's loopback, no route to the host's services",
                        p.display()
                    ),
                ),
                Err(e) => line("network", false, e),
            },
        }
        match &self.cgroups {
            Some(c) => {
                line("memory limit", true, c.describe());
                line("cpu limit", true, c.describe());
                line("process limit", true, c.describe());
            }
            None => {
                let why = if self.root {
                    "no cgroup hierarchy with memory, cpu and pids that endor can write".to_string()
                } else {
                    "endor does not run as root".to_string()
                };
                for what in ["memory limit", "cpu limit", "process limit"] {
                    line(what, false, why.clone());
                }
            }
        }
        line(
            "disk limit",
            true,
            "what a site writes (checkout, files, SQLite) is measured every 0.5 s; past runtime.limits.disk its build step or process is stopped".into(),
        );
        out
    }

    /// An error when PR code cannot run the way the config asks (`serve` refuses to start).
    pub fn check(&self) -> Result<(), RuntimeError> {
        if self.docker.is_some() {
            return docker_ping().map_err(RuntimeError::Invalid);
        }
        if !self.isolated() {
            return Ok(());
        }
        match &self.bwrap {
            None => {
                return Err(RuntimeError::Invalid(
                    "runtime.isolation = \"sandbox\" needs bubblewrap (apt-get install bubblewrap); set runtime.isolation = \"none\" to run PR code unconfined".into(),
                ));
            }
            Some(_) => self.sandbox_works().map_err(|e| {
                RuntimeError::Invalid(format!(
                    "the sandbox does not work on this host: {e}; set runtime.isolation = \"none\" to run PR code unconfined"
                ))
            })?,
        }
        if self.network == NetworkMode::Isolated {
            self.network_works().map_err(RuntimeError::Invalid)?;
        }
        Ok(())
    }

    fn sandbox_works(&self) -> Result<(), String> {
        let Some(bwrap) = &self.bwrap else {
            return Err("no bwrap".into());
        };
        let jail = Jail {
            bwrap: bwrap.clone(),
            writable: vec![],
            links: vec![],
            network: None,
        };
        let (program, args) = jail.argv(
            Path::new("/"),
            &["/bin/sh".into(), "-c".into(), "exit 0".into()],
            &[],
        );
        let mut c = std::process::Command::new(program);
        c.args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if self.root {
            use std::os::unix::process::CommandExt;
            c.uid(65534).gid(65534);
        }
        let out = c.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn network_works(&self) -> Result<PathBuf, String> {
        let pasta = self.pasta.clone().ok_or(
            "runtime.network = \"isolated\" needs pasta (apt-get install passt)".to_string(),
        )?;
        let tun = std::fs::metadata("/dev/net/tun")
            .map_err(|e| format!("runtime.network = \"isolated\" needs /dev/net/tun: {e}"))?;
        use std::os::unix::fs::PermissionsExt;
        if self.root && tun.permissions().mode() & 0o006 != 0o006 {
            return Err("runtime.network = \"isolated\": /dev/net/tun must be usable by site uids (mode 0666, as udev makes it)".into());
        }
        Ok(pasta)
    }

    /// How to run commands of `site` in `dir` with `env`; `port` is forwarded into an
    /// isolated network.
    pub fn sandbox(
        &self,
        site: &SiteBox,
        dir: &Path,
        env: Vec<(String, String)>,
        port: Option<u16>,
    ) -> Result<Sandbox, RuntimeError> {
        if let Some((engine, image)) = &self.docker {
            let mut binds = vec![dir.to_path_buf()];
            binds.extend(site.writable.iter().cloned());
            let mut quota = vec![dir.to_path_buf()];
            quota.extend(site.quota_dirs.iter().cloned());
            return Ok(Sandbox {
                dir: dir.to_path_buf(),
                env: env.clone(),
                run_as: site.uid.filter(|_| self.root).map(|u| (u, u)),
                jail: None,
                cgroup: None,
                memory_limit: Some(site.limits.memory),
                disk: Some(DiskWatch::new(quota, site.limits.disk)),
                docker: Some((
                    engine.clone(),
                    docker::Spec {
                        image: site.image.clone().unwrap_or_else(|| image.clone()),
                        key: site.key.clone(),
                        uid: site.uid.filter(|_| self.root),
                        workdir: dir.to_path_buf(),
                        binds,
                        sockets: site.sockets.clone(),
                        env,
                        limits: site.limits.clone(),
                        port: port.map(|p| std::net::SocketAddr::new(self.advertise, p)),
                    },
                )),
            });
        }
        if !self.isolated() {
            return Sandbox::new(dir, env, &self.user);
        }
        let bwrap = self
            .bwrap
            .clone()
            .ok_or_else(|| RuntimeError::Invalid("bubblewrap (bwrap) is not installed".into()))?;
        let run_as = self.owner(site)?;
        let network = match self.network {
            NetworkMode::Shared => None,
            NetworkMode::Isolated => Some((
                self.network_works().map_err(RuntimeError::Invalid)?,
                port.map(|p| std::net::SocketAddr::new(self.advertise, p)),
            )),
        };
        let mut writable = vec![dir.to_path_buf()];
        writable.extend(site.writable.iter().cloned());
        let cgroup = match &self.cgroups {
            Some(c) => Some(c.group(&site.key, &site.limits)?),
            None => None,
        };
        let mut dirs = vec![dir.to_path_buf()];
        dirs.extend(site.quota_dirs.iter().cloned());
        let disk = Some(DiskWatch::new(dirs, site.limits.disk));
        Ok(Sandbox {
            dir: dir.to_path_buf(),
            env,
            run_as,
            jail: Some(Jail {
                bwrap,
                writable,
                links: site.sockets.clone(),
                network,
            }),
            cgroup,
            memory_limit: Some(site.limits.memory),
            disk,
            docker: None,
        })
    }

    /// Whom a site's code runs as (and its data belongs to): its own uid with isolation, else
    /// `runtime.user`, when endor is root; nobody else when it is not.
    pub fn owner(&self, site: &SiteBox) -> Result<Option<(u32, u32)>, RuntimeError> {
        if !self.root {
            return Ok(None);
        }
        if self.isolated() {
            return match site.uid {
                Some(uid) => Ok(Some((uid, uid))),
                None => Err(RuntimeError::Invalid(format!(
                    "site {} has no uid of its own",
                    site.key
                ))),
            };
        }
        crate::unix::lookup_user(&self.user)
            .map(Some)
            .map_err(|e| RuntimeError::Invalid(format!("runtime.user: {e}")))
    }

    /// Kill whatever the site left running and remove its control group (or its containers
    /// and network).
    pub async fn release(&self, key: &str) {
        if let Some(c) = &self.cgroups {
            c.existing(key).remove();
        }
        if let Some((engine, _)) = &self.docker {
            engine.release(key).await;
        }
    }

    /// The site's control group, for reading what happened in it.
    pub fn group(&self, key: &str) -> Option<Group> {
        self.cgroups.as_ref().map(|c| c.existing(key))
    }
}

/// Give `dir` and everything under it to `owner` (nothing to do without one).
pub fn hand_over(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), RuntimeError> {
    if let Some((uid, gid)) = owner {
        chown_tree(dir, uid, gid)?;
    }
    Ok(())
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Kill a process group (the build step and everything it started).
fn kill_group(pid: u32) {
    // SAFETY: kill(2) on the group we created with process_group(0); negative pid = group.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub command: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// Why the kernel killed it, when it did (its memory limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub killed: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub ok: bool,
    /// Ended early because the job was cancelled.
    pub cancelled: bool,
    pub steps: Vec<StepReport>,
    /// Merged stdout and stderr of every step, cut at the cap.
    #[serde(skip)]
    pub log: Vec<u8>,
    pub truncated: bool,
}

impl BuildReport {
    /// The build ended early: a newer head arrived.
    fn mark_cancelled(&mut self) {
        self.ok = false;
        self.cancelled = true;
        append(
            &mut self.log,
            b"\n[endor] build cancelled: a newer head arrived\n",
            usize::MAX,
            &mut self.truncated,
        );
    }
}

/// A child's stdout and stderr, read as one stream of chunks in the order they arrive.
struct Output {
    out: Option<tokio::process::ChildStdout>,
    err: Option<tokio::process::ChildStderr>,
    buf_o: Vec<u8>,
    buf_e: Vec<u8>,
}

/// What one read of a pipe takes at most (a pipe holds 64 KiB: a chatty process's whole
/// backlog in one read, one log write).
const PIPE_READ: usize = 64 << 10;

impl Output {
    fn of(child: &mut Child) -> Self {
        Self {
            out: child.stdout.take(),
            err: child.stderr.take(),
            buf_o: vec![0; PIPE_READ],
            buf_e: vec![0; PIPE_READ],
        }
    }

    /// The next chunk of either pipe; `None` once both are closed. An empty chunk means a pipe
    /// just closed.
    async fn next(&mut self) -> Option<&[u8]> {
        self.next_of().await.map(|(_, chunk)| chunk)
    }

    /// [`Output::next`], saying which pipe the chunk came from.
    async fn next_of(&mut self) -> Option<(Pipe, &[u8])> {
        if self.out.is_none() && self.err.is_none() {
            return None;
        }
        let Self {
            out,
            err,
            buf_o,
            buf_e,
        } = self;
        Some(tokio::select! {
            r = async { match out.as_mut() { Some(o) => o.read(buf_o).await, None => std::future::pending().await } } => {
                match r { Ok(0) | Err(_) => { *out = None; (Pipe::Out, &[][..]) } Ok(n) => (Pipe::Out, &buf_o[..n]) }
            }
            r = async { match err.as_mut() { Some(e) => e.read(buf_e).await, None => std::future::pending().await } } => {
                match r { Ok(0) | Err(_) => { *err = None; (Pipe::Err, &[][..]) } Ok(n) => (Pipe::Err, &buf_e[..n]) }
            }
        })
    }
}

/// Which pipe a chunk of a process's output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Out,
    Err,
}

/// How an ad-hoc command ended: its exit code (none when it was killed), and why the kernel or
/// the disk watch killed it.
#[derive(Debug, Clone)]
pub struct ExecEnd {
    pub exit_code: Option<i32>,
    pub killed: Option<String>,
}

/// In a container, `argv` comes in environment variables (never spliced into a script) and is
/// run as it is.
const EXEC_RUNNER: &str = r#"i=0
set --
while [ "$i" -lt "$ENDOR_ARGC" ]; do
  eval "arg=\${ENDOR_ARG_$i}"
  set -- "$@" "$arg"
  i=$((i + 1))
done
exec "$@""#;

/// Run `argv` as it is (a program and its arguments, no shell between) in the site's sandbox
/// (or a container of the site), handing each chunk of its output to `sink` as it arrives.
/// What it leaves running is killed when it ends; the site's limits hold.
pub async fn exec(
    sandbox: &Sandbox,
    argv: &[String],
    mut sink: impl FnMut(Pipe, &[u8]),
) -> Result<ExecEnd, RuntimeError> {
    if argv.is_empty() {
        return Err(RuntimeError::Invalid("no command to run".into()));
    }
    if let Some((engine, spec)) = &sandbox.docker {
        let mut env = vec![("ENDOR_ARGC".to_string(), argv.len().to_string())];
        env.extend(
            argv.iter()
                .enumerate()
                .map(|(i, a)| (format!("ENDOR_ARG_{i}"), a.clone())),
        );
        let (id, mut output) = engine
            .start(spec, EXEC_RUNNER, &env)
            .await
            .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        let drain = async {
            while let Some((pipe, c)) = output.next().await {
                sink(pipe, &c)
            }
        };
        let (ended, killed) = finish_container(sandbox, engine, &id, drain).await;
        return Ok(ExecEnd {
            exit_code: ended
                .and_then(|e| e.exit_code)
                .map(|c| c as i32)
                .filter(|_| killed.is_none()),
            killed,
        });
    }
    let kills_before = sandbox.oom_kills();
    let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
    let (mut c, _procs) = sandbox.command_argv(&argv)?;
    let mut child = c.spawn()?;
    let pid = child.id().unwrap_or(0);
    let over_disk = tokio::select! {
        _ = async {
            let mut output = Output::of(&mut child);
            while let Some((pipe, chunk)) = output.next_of().await {
                if !chunk.is_empty() {
                    sink(pipe, chunk);
                }
            }
        } => false,
        _ = over_limit(sandbox.disk.as_ref()) => true,
    };
    if over_disk {
        kill_group(pid);
    }
    let status = child.wait().await?;
    kill_group(pid);
    let killed = sandbox.oom_note(kills_before).or_else(|| {
        over_disk
            .then(|| sandbox.disk.as_ref().map(DiskWatch::note))
            .flatten()
    });
    Ok(ExecEnd {
        exit_code: status.code(),
        killed,
    })
}

/// Wait for a container whose output `drain` reads to end (or for its site to pass its disk
/// limit: then it is stopped), and remove it. How it ended (`None`: stopped at the disk limit),
/// and why it was killed: the disk limit, or the kernel killing one of its processes for
/// memory (read before the container's cgroup goes).
async fn finish_container(
    sandbox: &Sandbox,
    engine: &docker::Engine,
    id: &str,
    drain: impl std::future::Future<Output = ()>,
) -> (Option<docker::Ended>, Option<String>) {
    let over_disk = tokio::select! {
        _ = drain => false,
        _ = over_limit(sandbox.disk.as_ref()) => true,
    };
    let ended = if over_disk {
        None
    } else {
        Some(engine.wait(id).await)
    };
    let oom = engine.oom_kills(id) > 0 || ended.as_ref().is_some_and(|e| e.oom_killed);
    engine.remove(id).await;
    let why = match &ended {
        None => sandbox.disk.as_ref().map(DiskWatch::note),
        Some(_) if oom => Some(sandbox.memory_note()),
        Some(_) => None,
    };
    (ended, why)
}

/// Read a child's two pipes into one capped buffer (and keep draining past the cap so the
/// child never blocks on a full pipe).
async fn collect(child: &mut Child, log: &mut Vec<u8>, cap: usize, truncated: &mut bool) {
    let mut output = Output::of(child);
    while let Some(chunk) = output.next().await {
        append(log, chunk, cap, truncated);
    }
}

fn append(log: &mut Vec<u8>, chunk: &[u8], cap: usize, truncated: &mut bool) {
    let room = cap.saturating_sub(log.len());
    if chunk.len() > room {
        *truncated = true;
    }
    log.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

/// Where a site process's output goes: its `web` log, whole lines marked with their stream
/// (the logs' cap per site bounds it; the pipes are always drained, so a flood never blocks
/// the process).
#[derive(Debug, Clone)]
pub struct WebLog {
    logs: crate::logs::Logs,
    site: crate::ids::SiteId,
}

impl WebLog {
    pub fn new(logs: crate::logs::Logs, site: crate::ids::SiteId) -> Self {
        Self { logs, site }
    }

    /// A line of endor's own about the process (no stream).
    fn note(&self, text: &str) {
        self.logs.write(
            &self.site,
            crate::logs::Entry::now(crate::logs::Service::Web, None, text.to_string()),
        );
    }

    fn lines(&self, stream: crate::logs::Stream, lines: &mut Vec<String>) {
        if let Err(e) =
            self.logs
                .append_text(&self.site, crate::logs::Service::Web, Some(stream), lines)
        {
            tracing::warn!(site = %self.site, error = %e, "the web log could not be written");
        }
    }
}

/// Write a process's stdout and stderr to its log as whole lines as they arrive, until both
/// close.
async fn follow_output(child: &mut Child, log: &WebLog) {
    use crate::logs::{LineSplitter, Stream};
    let max = log.logs.limits().max_line_bytes;
    let (mut out, mut err) = (LineSplitter::default(), LineSplitter::default());
    let mut lines = Vec::new();
    let mut output = Output::of(child);
    while let Some((pipe, chunk)) = output.next_of().await {
        let (splitter, stream) = match pipe {
            Pipe::Out => (&mut out, Stream::Stdout),
            Pipe::Err => (&mut err, Stream::Stderr),
        };
        if chunk.is_empty() {
            // The pipe closed: what is left of its last line.
            lines.extend(splitter.flush(max));
        } else {
            splitter.push(chunk, max, &mut lines);
        }
        log.lines(stream, &mut lines);
    }
}

/// Returns once the sandbox's code has written past its disk limit (never without one).
async fn over_limit(disk: Option<&DiskWatch>) {
    match disk {
        Some(d) => d.exceeded().await,
        None => std::future::pending().await,
    }
}

/// Run the build steps in order; the first failure (or timeout) ends the build.
pub async fn build(
    sandbox: &Sandbox,
    steps: &[String],
    step_timeout: Duration,
    output_cap: usize,
) -> Result<BuildReport, RuntimeError> {
    build_cancellable(sandbox, steps, step_timeout, output_cap, None).await
}

/// How one build step ended.
struct StepEnd {
    exit_code: Option<i32>,
    timed_out: bool,
    cancelled: bool,
    /// Why the kernel or the disk watch stopped it.
    killed: Option<String>,
}

/// Returns once `cancel` turns true (never without one).
async fn until_cancelled(cancel: Option<tokio::sync::watch::Receiver<bool>>) {
    match cancel {
        Some(mut c) => {
            let _ = c.wait_for(|v| *v).await;
        }
        None => std::future::pending().await,
    }
}

/// One step as a process (in the jail, when there is one).
async fn run_step(
    sandbox: &Sandbox,
    step: &str,
    step_timeout: Duration,
    cap: usize,
    log: &mut Vec<u8>,
    truncated: &mut bool,
    cancel: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<StepEnd, RuntimeError> {
    let kills_before = sandbox.oom_kills();
    let mut child = sandbox.spawn(step)?;
    let pid = child.id().unwrap_or(0);
    let mut over_disk = false;
    let finished = tokio::select! {
        r = tokio::time::timeout(step_timeout, async {
            tokio::select! {
                _ = collect(&mut child, log, cap, truncated) => {}
                _ = over_limit(sandbox.disk.as_ref()) => {
                    over_disk = true;
                    kill_group(pid);
                }
            }
            child.wait().await
        }) => Some(r),
        _ = until_cancelled(cancel) => None,
    };
    // Whatever the step left running in its group goes with it.
    kill_group(pid);
    let Some(finished) = finished else {
        let _ = child.wait().await;
        return Ok(StepEnd {
            exit_code: None,
            timed_out: false,
            cancelled: true,
            killed: None,
        });
    };
    let (exit_code, timed_out) = match finished {
        Ok(status) => (status?.code(), false),
        Err(_) => {
            let _ = child.wait().await;
            (None, true)
        }
    };
    Ok(StepEnd {
        exit_code,
        timed_out,
        cancelled: false,
        killed: sandbox.oom_note(kills_before).or_else(|| {
            over_disk
                .then(|| sandbox.disk.as_ref().map(DiskWatch::note))
                .flatten()
        }),
    })
}

/// Every build step in one container (a container costs a few hundred milliseconds to make):
/// a fixed script runs the steps, given as environment variables (never spliced into the
/// script), one after the other, and prints a marker line with a per-build nonce before and
/// after each, with its exit code; endor splits the output into steps by those lines. What a
/// step leaves running is killed before the next starts. A step's timeout, a cancel or the
/// disk limit kill the container. (A step that itself kills every process it can ends its
/// own build: in one container, the script is one of them.)
struct ContainerBuild<'a> {
    sandbox: &'a Sandbox,
    engine: &'a docker::Engine,
    spec: &'a docker::Spec,
    step_timeout: Duration,
    cap: usize,
}

const STEP_RUNNER: &str = r#"i=0
while [ "$i" -lt "$ENDOR_STEPS" ]; do
  eval "step=\${ENDOR_STEP_$i}"
  printf '\n%s start %s\n' "$ENDOR_MARK" "$i"
  sh -c "$step"
  rc=$?
  # Whatever the step left running goes with it (kill -1 spares its caller and PID 1).
  kill -9 -1 2>/dev/null; kill -9 -1 2>/dev/null
  printf '\n%s end %s %s\n' "$ENDOR_MARK" "$i" "$rc"
  [ "$rc" -eq 0 ] || exit "$rc"
  i=$((i + 1))
done"#;

/// What the container build saw of one step.
struct Seen {
    started: Instant,
    exit_code: Option<i32>,
    duration_ms: Option<u64>,
    /// Set when the kernel killed one of its processes for memory.
    oom: bool,
}

impl ContainerBuild<'_> {
    async fn run(
        &self,
        steps: &[String],
        report: &mut BuildReport,
        cancel: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<(), RuntimeError> {
        let mark = format!("ENDOR-STEP-{}", uuid::Uuid::new_v4().simple());
        let mut env = vec![
            ("ENDOR_MARK".to_string(), mark.clone()),
            ("ENDOR_STEPS".to_string(), steps.len().to_string()),
        ];
        for (i, st) in steps.iter().enumerate() {
            env.push((format!("ENDOR_STEP_{i}"), st.clone()));
        }
        let (id, mut output) = self
            .engine
            .start(self.spec, STEP_RUNNER, &env)
            .await
            .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        let mut seen: Vec<Seen> = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut held_blank = false;
        let mut oom_seen = 0;
        let (mut cancelled, mut timed_out, mut over_disk) = (false, false, false);
        let mut cancel_wait = std::pin::pin!(until_cancelled(cancel));
        let mut disk_wait = std::pin::pin!(over_limit(self.sandbox.disk.as_ref()));
        loop {
            let deadline = seen
                .last()
                .filter(|s| s.exit_code.is_none())
                .map(|s| s.started + self.step_timeout);
            let step_over = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                chunk = output.next() => match chunk {
                    // A build's log is one stream (its steps' output, in order).
                    Some((_, c)) => {
                        pending.extend_from_slice(&c);
                        while let Some(n) = pending.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = pending.drain(..=n).collect();
                            let text = String::from_utf8_lossy(&line[..line.len() - 1]).to_string();
                            self.line(&text, &line, &mark, steps, &mut seen, &mut held_blank, report);
                            // A step that just ended: did the kernel kill one of its processes?
                            if let Some(last) = seen.last_mut().filter(|s| s.exit_code.is_some() && !s.oom) {
                                let kills = self.engine.oom_kills(&id);
                                if kills > oom_seen {
                                    oom_seen = kills;
                                    last.oom = true;
                                }
                            }
                        }
                    }
                    None => break,
                },
                _ = &mut cancel_wait => { cancelled = true; break; }
                _ = step_over => { timed_out = true; break; }
                _ = &mut disk_wait => { over_disk = true; break; }
            }
        }
        if !pending.is_empty() {
            append(&mut report.log, &pending, self.cap, &mut report.truncated);
        }
        let ended = if cancelled || timed_out || over_disk {
            None
        } else {
            Some(self.engine.wait(&id).await)
        };
        // Read before the container (and its cgroup) goes.
        let late_oom = self.engine.oom_kills(&id) > oom_seen;
        self.engine.remove(&id).await;
        if cancelled {
            report.mark_cancelled();
            return Ok(());
        }
        let oom = ended.as_ref().is_some_and(|e| e.oom_killed) || late_oom;
        let last = seen.len().saturating_sub(1);
        for (i, st) in seen.iter().enumerate() {
            let unfinished = st.exit_code.is_none();
            // The last step, unfinished or failed, when the container's count of memory kills
            // grew after the step's own look (the count can lag its exit line).
            let killed = if st.oom || (i == last && oom && (unfinished || st.exit_code != Some(0)))
            {
                Some(self.sandbox.memory_note())
            } else if i == last && over_disk {
                self.sandbox.disk.as_ref().map(DiskWatch::note)
            } else {
                None
            };
            let step_timed_out = i == last && unfinished && timed_out;
            if step_timed_out {
                append(
                    &mut report.log,
                    format!(
                        "\n[endor] step timed out after {} s\n",
                        self.step_timeout.as_secs()
                    )
                    .as_bytes(),
                    usize::MAX,
                    &mut report.truncated,
                );
            }
            if let Some(k) = &killed {
                append(
                    &mut report.log,
                    format!("\n[endor] the step {k}\n").as_bytes(),
                    usize::MAX,
                    &mut report.truncated,
                );
            }
            let exit_code = if killed.is_some() && st.exit_code == Some(0) {
                Some(1)
            } else {
                st.exit_code
            };
            report.steps.push(StepReport {
                command: steps.get(i).cloned().unwrap_or_default(),
                exit_code,
                timed_out: step_timed_out,
                killed,
                duration_ms: st
                    .duration_ms
                    .unwrap_or_else(|| st.started.elapsed().as_millis() as u64),
            });
        }
        let all_passed = seen.len() == steps.len()
            && report
                .steps
                .iter()
                .all(|s| s.exit_code == Some(0) && !s.timed_out);
        if !all_passed || ended.is_some_and(|e| e.exit_code != Some(0)) {
            report.ok = false;
        }
        Ok(())
    }

    /// One line of the container's output: a marker (a step starts or ends) or the steps'
    /// own output. The blank line a marker prints first is dropped.
    #[allow(clippy::too_many_arguments)]
    fn line(
        &self,
        text: &str,
        raw: &[u8],
        mark: &str,
        steps: &[String],
        seen: &mut Vec<Seen>,
        held_blank: &mut bool,
        report: &mut BuildReport,
    ) {
        if let Some(rest) = text.strip_prefix(mark) {
            *held_blank = false;
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                // Only the next step can start (a repeated line changes nothing).
                ["start", i] if i.parse::<usize>().ok() == Some(seen.len()) => {
                    if let Some(step) = steps.get(seen.len()) {
                        append(
                            &mut report.log,
                            format!("$ {step}\n").as_bytes(),
                            self.cap,
                            &mut report.truncated,
                        );
                        seen.push(Seen {
                            started: Instant::now(),
                            exit_code: None,
                            duration_ms: None,
                            oom: false,
                        });
                    }
                }
                ["end", i, rc] if i.parse::<usize>().ok() == seen.len().checked_sub(1) => {
                    if let Some(last) = seen.last_mut().filter(|l| l.exit_code.is_none()) {
                        last.exit_code = rc.parse().ok();
                        last.duration_ms = Some(last.started.elapsed().as_millis() as u64);
                    }
                }
                _ => {}
            }
            return;
        }
        if *held_blank {
            append(&mut report.log, b"\n", self.cap, &mut report.truncated);
            *held_blank = false;
        }
        if text.is_empty() {
            *held_blank = true;
        } else {
            append(&mut report.log, raw, self.cap, &mut report.truncated);
        }
    }
}

/// [`build`], also ended (every process of the running step killed) as soon as `cancel`
/// turns true.
pub async fn build_cancellable(
    sandbox: &Sandbox,
    steps: &[String],
    step_timeout: Duration,
    output_cap: usize,
    cancel: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<BuildReport, RuntimeError> {
    let mut report = BuildReport {
        ok: true,
        cancelled: false,
        steps: Vec::new(),
        log: Vec::new(),
        truncated: false,
    };
    if let Some((engine, spec)) = &sandbox.docker {
        let run = ContainerBuild {
            sandbox,
            engine,
            spec,
            step_timeout,
            cap: output_cap,
        };
        run.run(steps, &mut report, cancel).await?;
        return Ok(report);
    }
    for step in steps {
        if cancel.as_ref().is_some_and(|c| *c.borrow()) {
            report.ok = false;
            report.cancelled = true;
            break;
        }
        let started = Instant::now();
        append(
            &mut report.log,
            format!("$ {step}\n").as_bytes(),
            output_cap,
            &mut report.truncated,
        );
        let (log, truncated) = (&mut report.log, &mut report.truncated);
        let mut end = run_step(
            sandbox,
            step,
            step_timeout,
            output_cap,
            log,
            truncated,
            cancel.clone(),
        )
        .await?;
        if end.cancelled {
            report.mark_cancelled();
            break;
        }
        if end.timed_out {
            append(
                &mut report.log,
                format!(
                    "\n[endor] step timed out after {} s\n",
                    step_timeout.as_secs()
                )
                .as_bytes(),
                usize::MAX,
                &mut report.truncated,
            );
        }
        // A quick writer can finish between two looks: one more after the step.
        if end.killed.is_none()
            && let Some(d) = sandbox.disk.clone()
        {
            let limit = d.limit;
            let note = d.note();
            let written = tokio::task::spawn_blocking(move || d.written())
                .await
                .unwrap_or(0);
            if written > limit {
                end.killed = Some(note);
                end.exit_code = end.exit_code.filter(|c| *c != 0).or(Some(1));
            }
        }
        if let Some(k) = &end.killed {
            append(
                &mut report.log,
                format!("\n[endor] the step {k}\n").as_bytes(),
                usize::MAX,
                &mut report.truncated,
            );
        }
        let failed = end.timed_out || end.exit_code != Some(0);
        report.steps.push(StepReport {
            command: step.clone(),
            exit_code: end.exit_code,
            timed_out: end.timed_out,
            killed: end.killed,
            duration_ms: started.elapsed().as_millis() as u64,
        });
        if failed {
            report.ok = false;
            break;
        }
    }
    Ok(report)
}

/// Asked before each restart of a supervised process: is it still wanted? (Another endor
/// process may have torn its site down: the store says so, and the supervisor lets it go.)
pub type StillWanted = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync,
>;

/// A start command kept running: restarted with backoff when it exits, until stopped or no
/// longer wanted.
pub struct Supervised {
    stop: Arc<AtomicBool>,
    /// Wakes the supervisor from its backoff when stopped.
    wake: Arc<tokio::sync::Notify>,
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
    /// The running container, with `runtime.kind = "docker"`.
    container: Arc<std::sync::Mutex<Option<(docker::Engine, String)>>>,
}

impl Supervised {
    /// Start `command` for site `site`; its output goes to `log`. Before each restart
    /// `wanted` (when given) is asked whether the process is still wanted.
    pub fn start(
        sandbox: Sandbox,
        command: String,
        log: WebLog,
        site: String,
        wanted: Option<StillWanted>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(tokio::sync::Notify::new());
        let pid = Arc::new(AtomicU32::new(0));
        let restarts = Arc::new(AtomicU32::new(0));
        let container = Arc::new(std::sync::Mutex::new(None));
        let (s, w, p, r, ct) = (
            stop.clone(),
            wake.clone(),
            pid.clone(),
            restarts.clone(),
            container.clone(),
        );
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            while !s.load(Ordering::SeqCst) {
                let started = Instant::now();
                let kills_before = sandbox.oom_kills();
                if let Some((engine, spec)) = &sandbox.docker {
                    run_container(&sandbox, engine, spec, &command, &log, &s, &ct).await;
                    if s.load(Ordering::SeqCst) || let_go(&wanted, &site).await {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = Duration::from_millis(200);
                    }
                    pause(&w, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
                match sandbox.spawn(&command) {
                    Ok(mut child) => {
                        p.store(child.id().unwrap_or(0), Ordering::SeqCst);
                        // Written as it arrives, so the log can be followed while the site
                        // runs; the pipes are always drained, so a chatty site never blocks.
                        let pid = child.id().unwrap_or(0);
                        {
                            let mut output = std::pin::pin!(follow_output(&mut child, &log));
                            tokio::select! {
                                _ = &mut output => {}
                                _ = over_limit(sandbox.disk.as_ref()) => {
                                    kill_group(pid);
                                    output.await;
                                    if let Some(d) = &sandbox.disk {
                                        log.note(&format!("[endor] the site process {}", d.note()));
                                        tracing::warn!(command = %command, "the site process {}", d.note());
                                    }
                                }
                            }
                        }
                        let status = child.wait().await;
                        // The pid is no longer this site's: a stop must not signal it.
                        p.store(0, Ordering::SeqCst);
                        if s.load(Ordering::SeqCst) {
                            return;
                        }
                        if let_go(&wanted, &site).await {
                            return;
                        }
                        if let Some(why) = sandbox.oom_note(kills_before) {
                            // The site's log says why, where its owner looks.
                            log.note(&format!("[endor] site process {why}; restarting"));
                            tracing::warn!(site = %site, command = %command, "site process {why}; restarting");
                        } else {
                            tracing::warn!(site = %site, command = %command, status = ?status.ok(), "site process exited; restarting");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(site = %site, command = %command, error = %e, "site process could not start");
                        if let_go(&wanted, &site).await {
                            return;
                        }
                    }
                }
                r.fetch_add(1, Ordering::SeqCst);
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(200);
                }
                pause(&w, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
        Self {
            stop,
            wake,
            pid,
            restarts,
            task,
            container,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// How many times the process has been restarted.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// Stop supervising and kill the process group.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let pid = self.pid();
        if pid != 0 {
            kill_group(pid);
        }
        let running = self.container.lock().ok().and_then(|mut c| c.take());
        if let Some((engine, id)) = running {
            engine.remove(&id).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Asked once before each restart: is the process no longer wanted (its site torn down by
/// another endor process)? Then the supervisor lets it go, and says so.
async fn let_go(wanted: &Option<StillWanted>, site: &str) -> bool {
    let Some(wanted) = wanted else {
        return false;
    };
    if wanted().await {
        return false;
    }
    tracing::info!(site = %site, "site process not restarted: the site was torn down by another endor process");
    true
}

/// Sleep `d`, or less when woken (a stop).
async fn pause(wake: &tokio::sync::Notify, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = wake.notified() => {}
    }
}

/// One run of a site's start command in a container: its output written to the log as lines
/// (a container's two streams arrive as one: they are marked stdout), until it ends; why it
/// ended, when the limits ended it.
async fn run_container(
    sandbox: &Sandbox,
    engine: &docker::Engine,
    spec: &docker::Spec,
    command: &str,
    log: &WebLog,
    stopping: &AtomicBool,
    running: &std::sync::Mutex<Option<(docker::Engine, String)>>,
) {
    let (id, mut output) = match engine.start(spec, command, &[]).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "site container could not start");
            log.note(&format!("[endor] the site container could not start: {e}"));
            return;
        }
    };
    if let Ok(mut r) = running.lock() {
        *r = Some((engine.clone(), id.clone()));
    }
    if stopping.load(Ordering::SeqCst) {
        engine.remove(&id).await;
        return;
    }
    let max = log.logs.limits().max_line_bytes;
    let drain = async {
        use crate::logs::{LineSplitter, Stream};
        let (mut out, mut err) = (LineSplitter::default(), LineSplitter::default());
        let mut lines = Vec::new();
        while let Some((pipe, c)) = output.next().await {
            let (splitter, stream) = match pipe {
                Pipe::Out => (&mut out, Stream::Stdout),
                Pipe::Err => (&mut err, Stream::Stderr),
            };
            splitter.push(&c, max, &mut lines);
            log.lines(stream, &mut lines);
        }
        for (splitter, stream) in [(&mut out, Stream::Stdout), (&mut err, Stream::Stderr)] {
            lines.extend(splitter.flush(max));
            log.lines(stream, &mut lines);
        }
    };
    let (ended, why) = finish_container(sandbox, engine, &id, drain).await;
    if stopping.load(Ordering::SeqCst) {
        return;
    }
    match why {
        Some(why) => {
            log.note(&format!("[endor] the site container {why}; restarting"));
            tracing::warn!(command = %command, "the site container {why}; restarting");
        }
        None => {
            tracing::warn!(command = %command, exit = ?ended.and_then(|e| e.exit_code), "site container exited; restarting")
        }
    }
}

/// GET `http://127.0.0.1:{port}{path}` until it answers 2xx or 3xx, or `timeout` passes.
pub async fn health_check(port: u16, path: &str, timeout: Duration) -> Result<u16, RuntimeError> {
    health_check_at(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        path,
        timeout,
    )
    .await
}

/// As [`health_check`], at `addr` (the address gateways will use: `runtime.advertise`).
pub async fn health_check_at(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<u16, RuntimeError> {
    if !path.starts_with('/') || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(RuntimeError::Invalid(format!(
            "bad health path `{}`",
            path.escape_debug()
        )));
    }
    let url = format!("http://{addr}{path}");
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match probe(addr, path).await {
            Ok(code) if (200..400).contains(&code) => return Ok(code),
            Ok(code) => last = format!("status {code}"),
            Err(e) => last = e.to_string(),
        }
        // Often at first (most apps answer within a second), then every 50 ms.
        let pause = if Instant::now() + timeout < deadline + Duration::from_secs(1) {
            10
        } else {
            50
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    Err(RuntimeError::Unhealthy {
        url,
        secs: timeout.as_secs(),
        last,
    })
}

async fn probe(addr: std::net::SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: endor-health\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut head))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not HTTP: {line:?}"),
            )
        })
}
