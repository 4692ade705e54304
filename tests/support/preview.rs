//! The preview harness shared by the lifecycle and write-back tests: real git repositories
//! (a bare "remote" per repository), signed webhooks made from the real fixtures, and an
//! in-process `endor serve` (API, gateway, workers, outbox) over a throw-away store.

use endor::ids::ConnectionId;
use endor::store::PreviewState;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use endor::config::Config;
use endor::duration::HumanDuration;
use endor::forge::signature::sign_hex;
use endor::server::{self, AppState};
use endor::service;
use endor::sites::{Imports, Sites};
use endor::store::{Preview, Store};
use serde_json::Value;

use super::{TestStore, fixture};

/// The site process used by these tests: serves the checkout's `index.html`, a file of the
/// parent's files, and what its database holds; `POST /write` adds a row.
pub const APP: &str = r#"
import os, sqlite3, subprocess, http.server
port = int(os.environ["PORT"])
db = os.environ.get("DATABASE_URL", "")
files = os.environ["ENDOR_FILES_DIR"]

def sql(q):
    if db.startswith("sqlite://"):
        c = sqlite3.connect(db[len("sqlite://"):])
        c.execute("CREATE TABLE IF NOT EXISTS notes (t TEXT)")
        rows = c.execute(q).fetchall()
        c.commit()
        c.close()
        return rows
    out = subprocess.run(["psql", db, "-Atc", "CREATE TABLE IF NOT EXISTS notes (t TEXT); " + q],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()
    return [tuple(l.split("|")) for l in out if l and l != "CREATE TABLE"]

class H(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        b = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, "ok")
        page = open("index.html").read().strip()
        logo = open(os.path.join(files, "logo.txt")).read().strip()
        accounts = sql("SELECT COUNT(*) FROM accounts")[0][0]
        notes = ",".join(r[0] for r in sql("SELECT t FROM notes ORDER BY t"))
        self.reply(200, f"page={page} logo={logo} accounts={accounts} notes={notes}")
    def do_POST(self):
        sql("INSERT INTO notes VALUES ('" + self.path.strip("/").replace("'", "") + "')")
        self.reply(200, "written")
    def log_message(self, *a):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository: a working copy and the bare "remote" the connection fetches from.
pub struct Repo {
    pub work: PathBuf,
    pub remote: PathBuf,
}

impl Repo {
    /// `main` holds `.endor.toml` (the given text), `app.py` and `index.html`.
    pub fn new(base: &Path, name: &str, endor_toml: &str) -> Self {
        let work = base.join(format!("{name}-work"));
        let remote = base.join(format!("{name}.git"));
        std::fs::create_dir_all(&work).unwrap();
        git(
            base,
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                remote.to_str().unwrap(),
            ],
        );
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join(".endor.toml"), endor_toml).unwrap();
        std::fs::write(work.join("app.py"), APP).unwrap();
        std::fs::write(work.join("index.html"), "main\n").unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "main"]);
        git(
            &work,
            &["remote", "add", "origin", remote.to_str().unwrap()],
        );
        git(&work, &["push", "-q", "origin", "main"]);
        Self { work, remote }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.remote.display())
    }

    /// Commit `index.html` = `content` on `branch` and publish it as PR `number`'s head, as a
    /// forge does (`refs/pull/N/head`). Returns the head SHA.
    pub fn push_pr(&self, branch: &str, number: u64, content: &str) -> String {
        let exists = Command::new("git")
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ])
            .current_dir(&self.work)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        if exists {
            git(&self.work, &["checkout", "-q", branch]);
        } else {
            git(&self.work, &["checkout", "-q", "-b", branch, "main"]);
        }
        std::fs::write(self.work.join("index.html"), format!("{content}\n")).unwrap();
        git(&self.work, &["commit", "-qam", content]);
        let sha = git(&self.work, &["rev-parse", "HEAD"]);
        git(
            &self.work,
            &[
                "push",
                "-q",
                "-f",
                "origin",
                &format!("HEAD:refs/heads/{branch}"),
                &format!("HEAD:refs/pull/{number}/head"),
            ],
        );
        git(&self.work, &["checkout", "-q", "main"]);
        sha
    }
}

/// What a pull request event says (written into a real GitHub payload).
pub struct Pr<'a> {
    pub action: &'a str,
    pub number: u64,
    pub sha: &'a str,
    pub branch: &'a str,
    pub head_repo: &'a str,
    pub draft: bool,
    /// The PR's title; empty keeps the fixture's.
    pub title: &'a str,
}

impl<'a> Pr<'a> {
    pub fn new(
        action: &'a str,
        number: u64,
        sha: &'a str,
        branch: &'a str,
        head_repo: &'a str,
    ) -> Self {
        Self {
            action,
            number,
            sha,
            branch,
            head_repo,
            draft: false,
            title: "",
        }
    }
}

/// Post a signed GitHub `pull_request` delivery for `repo`; returns the HTTP status.
pub async fn send_pr(
    http: &reqwest::Client,
    api: SocketAddr,
    conn: &(ConnectionId, String),
    repo: &str,
    pr: Pr<'_>,
) -> u16 {
    let body = pr_body(repo, pr);
    post_github(http, api, conn, "pull_request", &body).await
}

/// A GitHub `pull_request` delivery for `repo` (the real fixture of its action, rewritten).
pub fn pr_body(repo: &str, pr: Pr<'_>) -> Value {
    let fixture_name = match pr.action {
        "closed" => "github.pull_request.closed.unmerged.json",
        "synchronize" => "github.pull_request.synchronize.json",
        _ => "github.pull_request.opened.json",
    };
    let mut body: Value = serde_json::from_slice(&fixture(fixture_name)).unwrap();
    body["action"] = pr.action.into();
    body["number"] = pr.number.into();
    body["repository"]["full_name"] = repo.into();
    let p = &mut body["pull_request"];
    p["number"] = pr.number.into();
    p["draft"] = pr.draft.into();
    p["head"]["sha"] = pr.sha.into();
    p["head"]["ref"] = pr.branch.into();
    p["head"]["repo"]["full_name"] = pr.head_repo.into();
    if !pr.title.is_empty() {
        p["title"] = pr.title.into();
    }
    p["base"]["repo"]["full_name"] = repo.into();
    body
}

/// Sign `body` with the connection's secret and post it as GitHub would, as event `event`.
pub async fn post_github(
    http: &reqwest::Client,
    api: SocketAddr,
    conn: &(ConnectionId, String),
    event: &str,
    body: &Value,
) -> u16 {
    let bytes = serde_json::to_vec(body).unwrap();
    let sig = format!("sha256={}", sign_hex(conn.1.as_bytes(), &bytes));
    http.post(format!("http://{api}/webhooks/github/{}", conn.0))
        .header("x-github-event", event)
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-hub-signature-256", sig)
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A GitHub `issue_comment` on a PR (see [`send_comment`]).
pub struct GhComment<'a> {
    pub number: u64,
    pub id: u64,
    /// `created`, `edited`, `deleted`.
    pub action: &'a str,
    pub author: &'a str,
    pub body: &'a str,
    /// The body before an edit.
    pub previous: Option<&'a str>,
}

/// Post a signed GitHub `issue_comment` (the real fixture of its action) to the server at `api`.
pub async fn send_comment(
    http: &reqwest::Client,
    api: SocketAddr,
    conn: &(ConnectionId, String),
    repo: &str,
    c: GhComment<'_>,
) -> u16 {
    let name = format!("github.issue_comment.{}.on-pr.json", c.action);
    let mut b: Value = serde_json::from_slice(&fixture(&name)).unwrap();
    b["action"] = c.action.into();
    b["repository"]["full_name"] = repo.into();
    b["issue"]["number"] = c.number.into();
    b["comment"]["id"] = c.id.into();
    b["comment"]["body"] = c.body.into();
    b["comment"]["user"]["login"] = c.author.into();
    b["comment"]["user"]["type"] = if c.author.ends_with("[bot]") {
        "Bot"
    } else {
        "User"
    }
    .into();
    match c.previous {
        Some(p) => b["changes"] = serde_json::json!({"body": {"from": p}}),
        None => {
            if let Some(o) = b.as_object_mut() {
                o.remove("changes");
            }
        }
    }
    post_github(http, api, conn, "issue_comment", &b).await
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub state: Arc<AppState>,
    pub gateway: SocketAddr,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
    pub http: reqwest::Client,
    pub api: SocketAddr,
}

pub fn harness_config(dir: &Path, store_url: &str) -> Config {
    let mut config = Config::default();
    config.store.url = store_url.to_string();
    config.storage.root = dir.join("sites");
    config.storage.git = dir.join("git");
    config.storage.logs = dir.join("logs");
    config.secrets.master_key_file = crate::support::test_master_key();
    config.jobs.lease = HumanDuration(Duration::from_secs(3));
    config.jobs.workers = 4;
    config.runtime.health_timeout = HumanDuration(Duration::from_secs(8));
    config.runtime.build_timeout = HumanDuration(Duration::from_secs(60));
    // Tests drive reaper passes themselves (tests/reaper.rs turns the schedule on where needed).
    config.reaper.enabled = false;
    // Tests look at the gateway right after changing a route or a setting.
    config.gateway.cache_ttl_ms = 0;
    config
}

impl Harness {
    pub async fn start(db: &TestStore) -> Self {
        Self::start_with(db, |_| {}).await
    }

    /// A server whose config `tweak` adjusts (forge URLs and tokens, say).
    pub async fn start_with(db: &TestStore, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_in_with(db, super::reflink_dir(), true, tweak).await
    }

    /// A server over `dir` (storage, mirrors, logs); `fresh` creates the owner and workspace.
    pub async fn start_in(db: &TestStore, dir: tempfile::TempDir, fresh: bool) -> Self {
        Self::start_in_with(db, dir, fresh, |_| {}).await
    }

    pub async fn start_in_with(
        db: &TestStore,
        dir: tempfile::TempDir,
        fresh: bool,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = harness_config(dir.path(), &db.url);
        tweak(&mut config);
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        config.server.listen = api.local_addr().unwrap();
        config.server.public_url = format!("http://{}", config.server.listen);
        config.gateway.listen = gw.local_addr().unwrap();
        let gateway = config.gateway.listen;
        let api_addr = config.server.listen;
        let state = AppState::start(config).await.unwrap();
        if fresh {
            service::create_user(state.store.as_ref(), "owner", None, None)
                .await
                .unwrap();
            service::create_workspace(state.store.as_ref(), "acme", "owner")
                .await
                .unwrap();
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = state.clone();
        let task = tokio::spawn(async move {
            server::serve_with_gateway(s, api, gw, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            dir,
            state,
            gateway,
            stop: Some(stop),
            task: Some(task),
            http: reqwest::Client::new(),
            api: api_addr,
        }
    }

    pub fn store(&self) -> &dyn Store {
        self.state.store.as_ref()
    }

    pub fn sites(&self) -> Sites {
        Sites::new(self.state.store.clone(), &self.state.config)
    }

    /// A repository `octo/{name}` with this `.endor.toml`, connected from GitHub.
    pub async fn repo(&self, name: &str, endor_toml: &str) -> (Repo, (ConnectionId, String)) {
        let repo = Repo::new(self.dir.path(), name, endor_toml);
        let conn = self.connect(&format!("octo/{name}"), &repo.url()).await;
        (repo, conn)
    }

    /// Connect `owner/name` on GitHub with its git URL; returns (connection id, secret).
    pub async fn connect(&self, repo: &str, git_url: &str) -> (ConnectionId, String) {
        let c = self.connect_spec(&format!("github:{repo}"), git_url).await;
        (c.connection_id, c.secret)
    }

    /// Connect `forge:owner/name` with its git URL.
    pub async fn connect_spec(&self, spec: &str, git_url: &str) -> service::Connected {
        service::connect_repo(
            self.store(),
            &self.state.config,
            "acme",
            spec,
            None,
            Some(git_url),
        )
        .await
        .unwrap()
    }

    /// Post a signed GitHub `pull_request` delivery for `repo`; returns the HTTP status.
    pub async fn pr_event(&self, conn: &(ConnectionId, String), repo: &str, pr: Pr<'_>) -> u16 {
        send_pr(&self.http, self.api, conn, repo, pr).await
    }

    pub async fn preview(&self, conn: &ConnectionId, number: u64) -> Option<Preview> {
        self.store().preview(conn, number as i64).await.unwrap()
    }

    /// Wait until the preview has settled (ready or failed, at `sha` when given) and check
    /// that it is ready.
    pub async fn ready(&self, conn: &ConnectionId, number: u64, sha: Option<&str>) -> Preview {
        let p = self
            .wait(
                conn,
                number,
                &[PreviewState::Ready, PreviewState::Failed],
                sha,
            )
            .await;
        assert_eq!(p.state, PreviewState::Ready, "{p:?}");
        p
    }

    /// Wait until no write-back of the connection is pending or being sent; none may have
    /// failed.
    pub async fn settled(&self, conn: &ConnectionId) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let items = self.store().outbox_items(conn).await.unwrap();
            if items
                .iter()
                .all(|i| i.state != "pending" && i.state != "sending")
            {
                assert!(
                    items.iter().all(|i| i.state != "failed"),
                    "a write-back failed: {items:?}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "write-backs never settled: {items:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the preview reaches one of `states` (and, when given, is at `sha`).
    pub async fn wait(
        &self,
        conn: &ConnectionId,
        number: u64,
        states: &[PreviewState],
        sha: Option<&str>,
    ) -> Preview {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(p) = self.preview(conn, number).await
                && states.contains(&p.state)
                && sha.is_none_or(|s| p.head_sha.as_deref() == Some(s))
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "preview {conn}#{number} never reached {states:?}: {:?}",
                self.preview(conn, number).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET through the gateway with `Host: {site}.preview.localhost`.
    pub async fn get(&self, site: &str, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("http://{}{path}", self.gateway))
            .header("host", format!("{site}.preview.localhost"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn post(&self, site: &str, path: &str) -> u16 {
        self.http
            .post(format!("http://{}{path}", self.gateway))
            .header("host", format!("{site}.preview.localhost"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn stop(self) {
        self.stop_keeping_files().await;
    }

    /// Shut the server down (gracefully) and hand back its directory.
    pub async fn stop_keeping_files(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        self.dir
    }
}

pub fn pid_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

pub fn port_open(port: i64) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port as u16)).is_ok()
}

pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real `endor serve` binary over a directory of its own (SQLite store, storage, mirrors,
/// logs), for tests that kill it.
pub struct ServedBinary {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub cfg_path: PathBuf,
    pub store_url: String,
    pub http: reqwest::Client,
    child: std::process::Child,
    /// More `serve` processes on the same config (`start_split`).
    extra: Vec<std::process::Child>,
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl ServedBinary {
    /// Write the config (`tweak` applied), create the owner and workspace, start `serve`.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut s = Self::prepare(tweak);
        s.child = s.spawn(&[]).await;
        s
    }

    /// As `start`, but two processes on one config: `--roles api,gateway` and `--roles
    /// worker,reaper` (scale-out: they share only the store).
    pub async fn start_split(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut s = Self::prepare(tweak);
        s.child = s.spawn(&["--roles", "api,gateway"]).await;
        let worker = Command::new(env!("CARGO_BIN_EXE_endor"))
            .args(["--config", s.cfg_path.to_str().unwrap(), "serve"])
            .args(["--roles", "worker,reaper"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        s.extra.push(worker);
        s
    }

    /// The config written (`tweak` applied), owner and workspace made, nothing started: start
    /// processes with [`ServedBinary::start_api`] and [`ServedBinary::add_process`].
    pub fn prepared(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::prepare(tweak)
    }

    /// Start the process that answers on `server.listen` (`serve ARGS`), and wait for it.
    pub async fn start_api(&mut self, args: &[&str]) {
        self.child = self.spawn(args).await;
    }

    /// Start one more `serve ARGS` on the same config with `envs` set (its stderr in
    /// `{config}.{name}.err`); returns its pid.
    pub fn add_process(&mut self, name: &str, args: &[&str], envs: &[(&str, &str)]) -> u32 {
        let err =
            std::fs::File::create(self.cfg_path.with_extension(format!("{name}.err"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_endor"))
            .args(["--config", self.cfg_path.to_str().unwrap(), "serve"])
            .args(args)
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.extra.push(child);
        pid
    }

    /// What process `name` wrote on stderr.
    pub fn process_errors(&self, name: &str) -> String {
        std::fs::read_to_string(self.cfg_path.with_extension(format!("{name}.err")))
            .unwrap_or_default()
    }

    fn prepare(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = super::reflink_dir();
        let store_url = format!("sqlite://{}", dir.path().join("endor.db").display());
        let mut config = harness_config(dir.path(), &store_url);
        config.server.listen = free_addr();
        config.server.public_url = format!("http://{}", config.server.listen);
        config.gateway.listen = free_addr();
        tweak(&mut config);
        let cfg_path = dir.path().join("endor.toml");
        std::fs::write(&cfg_path, toml::to_string(&config).unwrap()).unwrap();
        // Endor's config is for endor's eyes only (serve refuses it otherwise).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let store_url = config.store.url.clone();
        let s = Self {
            child: Command::new("true").spawn().unwrap(),
            dir,
            config,
            cfg_path,
            store_url,
            http: reqwest::Client::new(),
            extra: Vec::new(),
        };
        s.cli(&["user", "create", "owner"]);
        s.cli(&["workspace", "create", "acme", "--owner", "owner"]);
        s
    }

    /// What the served process's `/metrics` says now.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.config.server.listen))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Run an `endor` command on the same config; its stdout (it must succeed).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_endor"))
            .args(["--config", self.cfg_path.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "endor {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    async fn spawn(&self, args: &[&str]) -> std::process::Child {
        // Its stderr goes to a file, shown when it does not start.
        let err_path = self
            .cfg_path
            .with_extension(format!("serve-{}.err", args.join("-")));
        let err = std::fs::File::create(&err_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_endor"))
            .args(["--config", self.cfg_path.to_str().unwrap(), "serve"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let api = self.config.server.listen;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .http
            .get(format!("http://{api}/healthz"))
            .send()
            .await
            .is_err()
        {
            let exited = child.try_wait().unwrap().is_some();
            assert!(
                Instant::now() < deadline && !exited,
                "serve did not start: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child
    }

    /// A repository `octo/{name}` connected from GitHub through the CLI.
    pub fn repo(&self, name: &str, endor_toml: &str) -> (Repo, (ConnectionId, String)) {
        let (repo, conn, _) = self.repo_with(name, endor_toml, &[]);
        (repo, conn)
    }

    /// As [`ServedBinary::repo`], with more `repo connect` arguments; also what it answered.
    pub fn repo_with(
        &self,
        name: &str,
        endor_toml: &str,
        extra: &[&str],
    ) -> (Repo, (ConnectionId, String), Value) {
        let repo = Repo::new(self.dir.path(), name, endor_toml);
        let spec = format!("github:octo/{name}");
        let url = repo.url();
        let mut args = vec![
            "--json",
            "repo",
            "connect",
            "acme",
            &spec,
            "--git-url",
            &url,
        ];
        args.extend_from_slice(extra);
        let connected: Value = serde_json::from_str(&self.cli(&args)).unwrap();
        let conn = (
            ConnectionId::from(connected["connection_id"].as_str().unwrap()),
            connected["secret"].as_str().unwrap().to_string(),
        );
        (repo, conn, connected)
    }

    pub async fn pr_event(&self, conn: &(ConnectionId, String), repo: &str, pr: Pr<'_>) -> u16 {
        send_pr(&self.http, self.config.server.listen, conn, repo, pr).await
    }

    /// A store handle on the same database.
    pub async fn store(&self) -> Arc<dyn Store> {
        endor::store::connect(&self.store_url, 2, crate::support::test_keyring())
            .await
            .unwrap()
    }

    /// SIGKILL the server and start a new one on the same directory.
    pub async fn kill_and_restart(self) -> Self {
        self.kill_then_restart(|_| {}).await
    }

    /// SIGKILL the server, run `meanwhile` (CLI commands while no server runs), start a new
    /// one on the same directory.
    pub async fn kill_then_restart(mut self, meanwhile: impl FnOnce(&Self)) -> Self {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        meanwhile(&self);
        self.child = self.spawn(&[]).await;
        self
    }

    pub fn stop(mut self) {
        self.kill_all();
    }

    fn kill_all(&mut self) {
        for c in std::iter::once(&mut self.child).chain(self.extra.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A failed test leaves no server running behind it.
impl Drop for ServedBinary {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A GitLab `Merge Request Hook` body (the real fixture) for MR `iid` of `project` at `sha`.
pub fn gitlab_mr(project: &str, iid: u64, sha: &str, action: &str) -> Vec<u8> {
    let mut b: Value = serde_json::from_slice(&fixture("gitlab.merge_request.open.json")).unwrap();
    b["project"]["path_with_namespace"] = project.into();
    let a = &mut b["object_attributes"];
    a["action"] = action.into();
    a["iid"] = iid.into();
    a["last_commit"]["id"] = sha.into();
    a["source_project_id"] = a["target_project_id"].clone();
    a["draft"] = false.into();
    a["work_in_progress"] = false.into();
    if action == "update" {
        // A push: GitLab names the previous head.
        a["oldrev"] = "0".repeat(40).into();
    }
    serde_json::to_vec(&b).unwrap()
}

/// A Gitea `pull_request` body (the real fixture) for PR `number` of `repo` at `sha`, with
/// `action` (`opened`, `synchronized`, `closed`).
pub fn gitea_pr(repo: &str, number: u64, sha: &str, action: &str) -> Vec<u8> {
    let mut b: Value = serde_json::from_slice(&fixture("gitea.pull_request.opened.json")).unwrap();
    b["action"] = action.into();
    b["number"] = number.into();
    b["repository"]["full_name"] = repo.into();
    let pr = &mut b["pull_request"];
    pr["draft"] = false.into();
    pr["head"]["sha"] = sha.into();
    pr["head"]["repo_id"] = pr["base"]["repo_id"].clone();
    pr["head"]["repo"]["full_name"] = repo.into();
    serde_json::to_vec(&b).unwrap()
}

impl Harness {
    /// Post a GitLab `Merge Request Hook` delivery (token auth); returns the status.
    pub async fn gitlab_event(&self, c: &service::Connected, body: Vec<u8>) -> u16 {
        self.gitlab_hook(c, "Merge Request Hook", body).await
    }

    /// Post a GitLab delivery of kind `event` (`X-Gitlab-Event`); returns the status.
    pub async fn gitlab_hook(&self, c: &service::Connected, event: &str, body: Vec<u8>) -> u16 {
        self.http
            .post(format!(
                "http://{}/webhooks/gitlab/{}",
                self.api, c.connection_id
            ))
            .header("x-gitlab-event", event)
            .header("x-gitlab-token", c.secret.clone())
            .header("x-gitlab-event-uuid", uuid::Uuid::new_v4().to_string())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Post a signed Gitea `pull_request` delivery; returns the status.
    pub async fn gitea_event(&self, c: &service::Connected, body: Vec<u8>) -> u16 {
        self.gitea_hook(c, "pull_request", body).await
    }

    /// Post a signed Gitea delivery of kind `event` (`X-Gitea-Event`); returns the status.
    pub async fn gitea_hook(&self, c: &service::Connected, event: &str, body: Vec<u8>) -> u16 {
        self.http
            .post(format!(
                "http://{}/webhooks/gitea/{}",
                self.api, c.connection_id
            ))
            .header("x-gitea-event", event)
            .header("x-gitea-delivery", uuid::Uuid::new_v4().to_string())
            .header("x-gitea-signature", sign_hex(c.secret.as_bytes(), &body))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// A SQLite database at `path` holding `n` accounts (made, or its accounts replaced), written
/// with the sqlite3 module of the system Python.
pub fn sqlite_accounts(path: &Path, n: usize) {
    let ok = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             c.execute('CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, balance INTEGER)'); \
             c.execute('DELETE FROM accounts'); \
             c.executemany('INSERT INTO accounts VALUES (?, 1000)', [(i,) for i in range(int(sys.argv[2]))]); \
             c.commit()",
        )
        .arg(path)
        .arg(n.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "could not write {}", path.display());
}

/// A parent site `production` in workspace `acme`: `files/logo.txt` (`parent-logo`) and a
/// SQLite database of `accounts` accounts, its sources under `dir/parent-src`.
/// A site `production` (workspace `acme`) with `logo.txt` = `pg-logo` and a PostgreSQL
/// database imported from a fresh source database (100 accounts) into a server of its own;
/// returns the source database's name.
pub async fn pg_parent(sites: &Sites, dir: &Path) -> String {
    let (src_name, src_url) = super::pg_source_db().await;
    let files = dir.join("parent-files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("logo.txt"), "pg-logo").unwrap();
    sites
        .create(
            "production",
            "acme",
            None,
            Imports {
                files: Some(&files),
                postgres: Some(&src_url),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    src_name
}

/// A parent site `production` with files, a PostgreSQL and a MariaDB database (each on a
/// server of its own). Returns the source databases' names, to drop at the end.
pub async fn db_parent(sites: &Sites, dir: &Path) -> (String, String) {
    let (pg_name, pg_url) = super::pg_source_db().await;
    let (maria_name, maria_url) = super::maria_source_db();
    let files = dir.join("parent-files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("logo.txt"), "pg-logo").unwrap();
    sites
        .create(
            "production",
            "acme",
            None,
            Imports {
                files: Some(&files),
                postgres: Some(&pg_url),
                mariadb: Some(&maria_url),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    (pg_name, maria_name)
}

pub async fn sqlite_parent(sites: &Sites, dir: &Path, accounts: usize) {
    let src = dir.join("parent-src");
    std::fs::create_dir_all(src.join("files")).unwrap();
    std::fs::write(src.join("files/logo.txt"), "parent-logo").unwrap();
    let db = src.join("prod.db");
    sqlite_accounts(&db, accounts);
    sites
        .create(
            "production",
            "acme",
            None,
            Imports {
                files: Some(&src.join("files")),
                sqlite: Some(&db),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}
