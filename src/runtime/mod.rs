//! Running a site's code: build steps and the supervised start process, and the health check.
//!
//! Build and start commands come from the repository's `.endor.toml` on its default branch —
//! the repository's own build definition, run like a CI runner runs its steps (`/bin/sh -c`);
//! no text from a PR event (branch names, titles, comments) is ever put into them. They run
//! with a cleared environment (endor's own variables and secrets never reach PR code) plus the
//! variables given, in their own process group (a timeout kills every process they started),
//! and, when endor runs as root, as an unprivileged user (`runtime.user`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

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

/// Who and where commands run.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub dir: PathBuf,
    /// Extra environment (PORT, DATABASE_URL, ENDOR_FILES_DIR, ENDOR_SITE).
    pub env: Vec<(String, String)>,
    /// uid/gid to run as (set when endor is root).
    pub run_as: Option<(u32, u32)>,
}

impl Sandbox {
    /// Resolve `runtime.user` when running as root; otherwise commands run as ourselves.
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
        })
    }

    fn command(&self, script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script).current_dir(&self.dir).env_clear();
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
        c
    }

    /// Give the sandbox's directory to its user (the checkout is written by endor).
    pub fn hand_over(&self) -> Result<(), RuntimeError> {
        if let Some((uid, gid)) = self.run_as {
            chown_tree(&self.dir, uid, gid)?;
        }
        Ok(())
    }
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

/// A child's stdout and stderr, read as one stream of chunks in the order they arrive.
struct Output {
    out: Option<tokio::process::ChildStdout>,
    err: Option<tokio::process::ChildStderr>,
    buf_o: [u8; 8192],
    buf_e: [u8; 8192],
}

impl Output {
    fn of(child: &mut Child) -> Self {
        Self {
            out: child.stdout.take(),
            err: child.stderr.take(),
            buf_o: [0; 8192],
            buf_e: [0; 8192],
        }
    }

    /// The next chunk of either pipe; `None` once both are closed. An empty chunk means a pipe
    /// just closed.
    async fn next(&mut self) -> Option<&[u8]> {
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
                match r { Ok(0) | Err(_) => { *out = None; &[] } Ok(n) => &buf_o[..n] }
            }
            r = async { match err.as_mut() { Some(e) => e.read(buf_e).await, None => std::future::pending().await } } => {
                match r { Ok(0) | Err(_) => { *err = None; &[] } Ok(n) => &buf_e[..n] }
            }
        })
    }
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

/// How much of one run of a site process's output is kept in its log (the rest is drained and
/// dropped, with a note).
const SITE_LOG_CAP: usize = 1 << 20;

/// Append a process's stdout and stderr to `path` as they arrive, until both close; past `cap`
/// bytes the output is read and dropped (one note says so).
async fn follow_output(child: &mut Child, path: &Path, cap: usize) {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .ok();
    let mut output = Output::of(child);
    let (mut written, mut noted) = (0usize, false);
    while let Some(chunk) = output.next().await {
        let Some(f) = file.as_mut() else { continue };
        let keep = chunk.len().min(cap.saturating_sub(written));
        if keep > 0 && f.write_all(&chunk[..keep]).await.is_err() {
            file = None;
            continue;
        }
        if keep < chunk.len() && !noted {
            noted = true;
            let _ = f
                .write_all(b"\n[endor] output past this point is not kept (1 MiB per run)\n")
                .await;
        }
        written += chunk.len();
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
        let mut child = sandbox.command(step).spawn()?;
        let pid = child.id().unwrap_or(0);
        let mut log = std::mem::take(&mut report.log);
        let mut truncated = report.truncated;
        let mut cancel_rx = cancel.clone();
        let cancelled = async move {
            match cancel_rx.as_mut() {
                Some(c) => {
                    let _ = c.wait_for(|v| *v).await;
                }
                None => std::future::pending().await,
            }
        };
        let mut was_cancelled = false;
        let finished = tokio::select! {
            r = tokio::time::timeout(step_timeout, async {
                collect(&mut child, &mut log, output_cap, &mut truncated).await;
                child.wait().await
            }) => r,
            _ = cancelled => {
                was_cancelled = true;
                kill_group(pid);
                Ok(child.wait().await)
            }
        };
        if was_cancelled {
            report.log = log;
            report.truncated = truncated;
            report.ok = false;
            report.cancelled = true;
            append(
                &mut report.log,
                b"\n[endor] build cancelled: a newer head arrived\n",
                usize::MAX,
                &mut report.truncated,
            );
            break;
        }
        report.log = log;
        report.truncated = truncated;
        let (exit_code, timed_out) = match finished {
            Ok(status) => (status?.code(), false),
            Err(_) => {
                kill_group(pid);
                let _ = child.wait().await;
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
                (None, true)
            }
        };
        // Whatever the step left running in its group goes with it.
        kill_group(pid);
        report.steps.push(StepReport {
            command: step.clone(),
            exit_code,
            timed_out,
            duration_ms: started.elapsed().as_millis() as u64,
        });
        if timed_out || exit_code != Some(0) {
            report.ok = false;
            break;
        }
    }
    Ok(report)
}

/// A start command kept running: restarted with backoff when it exits, until stopped.
pub struct Supervised {
    stop: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervised {
    /// Start `command`; its output is appended to `log_path`.
    pub fn start(sandbox: Sandbox, command: String, log_path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(AtomicU32::new(0));
        let restarts = Arc::new(AtomicU32::new(0));
        let (s, p, r) = (stop.clone(), pid.clone(), restarts.clone());
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            while !s.load(Ordering::SeqCst) {
                let started = Instant::now();
                match sandbox.command(&command).spawn() {
                    Ok(mut child) => {
                        p.store(child.id().unwrap_or(0), Ordering::SeqCst);
                        // Written as it arrives, so the log can be followed while the site
                        // runs; the pipes are always drained, so a chatty site never blocks.
                        follow_output(&mut child, &log_path, SITE_LOG_CAP).await;
                        let status = child.wait().await;
                        if s.load(Ordering::SeqCst) {
                            return;
                        }
                        tracing::warn!(command = %command, status = ?status.ok(), "site process exited; restarting");
                    }
                    Err(e) => tracing::warn!(error = %e, "site process could not start"),
                }
                r.fetch_add(1, Ordering::SeqCst);
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(200);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
        Self {
            stop,
            pid,
            restarts,
            task,
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
        let pid = self.pid();
        if pid != 0 {
            kill_group(pid);
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// GET `http://127.0.0.1:{port}{path}` until it answers 2xx or 3xx, or `timeout` passes.
pub async fn health_check(port: u16, path: &str, timeout: Duration) -> Result<u16, RuntimeError> {
    if !path.starts_with('/') || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(RuntimeError::Invalid(format!(
            "bad health path `{}`",
            path.escape_debug()
        )));
    }
    let url = format!("http://127.0.0.1:{port}{path}");
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match probe(port, path).await {
            Ok(code) if (200..400).contains(&code) => return Ok(code),
            Ok(code) => last = format!("status {code}"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(RuntimeError::Unhealthy {
        url,
        secs: timeout.as_secs(),
        last,
    })
}

async fn probe(port: u16, path: &str) -> std::io::Result<u16> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: endor-health\r\n\r\n")
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
