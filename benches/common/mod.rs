//! What the benchmarks that drive a real `endor serve` share: arguments, ports, processes,
//! the `endor` CLI, and an HTTP load generator with its percentiles.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub fn arg(name: &str, default: u64) -> u64 {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn endor(cfg: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_endor"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "endor {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Default)]
pub struct Run {
    pub ok: usize,
    pub bad: usize,
    pub lat_us: Vec<u32>,
    pub secs: f64,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    pub fn pct(&self, p: f64) -> f64 {
        let i = ((self.lat_us.len().max(1) as f64 - 1.0) * p).round() as usize;
        self.lat_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }
}

pub async fn load(
    url: String,
    host: Option<String>,
    auth: Option<String>,
    conns: usize,
    dur: Duration,
) -> Run {
    load_with(url, host, auth, conns, dur, true).await
}

/// [`load`], on kept-alive connections or with a new connection per request.
pub async fn load_with(
    url: String,
    host: Option<String>,
    auth: Option<String>,
    conns: usize,
    dur: Duration,
    keep_alive: bool,
) -> Run {
    load_hosts(
        url,
        host.into_iter().collect(),
        auth,
        conns,
        dur,
        keep_alive,
    )
    .await
}

/// [`load_with`] spread over `hosts` (each request the next one, round robin; none: no
/// `Host` header of its own).
pub async fn load_hosts(
    url: String,
    hosts: Vec<String>,
    auth: Option<String>,
    conns: usize,
    dur: Duration,
    keep_alive: bool,
) -> Run {
    let start = Instant::now();
    let hosts = std::sync::Arc::new(hosts);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (url, hosts, auth) = (url.clone(), hosts.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(usize::from(keep_alive))
                .build()
                .unwrap();
            let mut run = Run::default();
            let mut next = c;
            while start.elapsed() < dur {
                let t = Instant::now();
                let mut r = client.get(&url);
                if !hosts.is_empty() {
                    r = r.header("host", &hosts[next % hosts.len()]);
                    next += conns;
                }
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                match r.send().await {
                    Ok(resp) => {
                        let ok = resp.status() == 200;
                        let body = resp.bytes().await.unwrap_or_default();
                        if ok && &body[..] == b"hello" {
                            run.ok += 1;
                            run.lat_us.push(t.elapsed().as_micros() as u32);
                        } else {
                            run.bad += 1;
                        }
                    }
                    Err(_) => run.bad += 1,
                }
            }
            run
        }));
    }
    let mut total = Run::default();
    for t in tasks {
        let r = t.await.unwrap();
        total.ok += r.ok;
        total.bad += r.bad;
        total.lat_us.extend(r.lat_us);
    }
    total.secs = start.elapsed().as_secs_f64();
    total.lat_us.sort_unstable();
    total
}

pub fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The site: a minimal keep-alive HTTP/1.1 server (hyper), one process.
pub fn serve_site(port: u16) {
    use hyper::service::service_fn;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"hello")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

/// Store a route in the bench's store (the gateway reads it within its cache time).
pub fn put_route(rt: &tokio::runtime::Runtime, dir: &Path, row: endor::store::RouteRow) {
    rt.block_on(async {
        let store = endor::store::connect(
            &format!("sqlite://{}/endor.db", dir.display()),
            2,
            bench_keyring(dir),
        )
        .await
        .unwrap();
        store.put_route(&row).await.unwrap();
    });
}

/// The master key of the bench's store (it holds no secret the bench reads).
pub fn bench_keyring(dir: &Path) -> std::sync::Arc<endor::secret::Keyring> {
    std::sync::Arc::new(endor::secret::Keyring::load(&dir.join("master.key")).unwrap())
}

/// Writes an `endor.toml` for a benchmark's `endor serve` (API on `api`, gateway on `gw`, the
/// store and storage under `dir`, the reaper off), readable by its owner only as `serve`
/// demands. `access_log` sets the gateway's access log when given.
pub fn write_config(dir: &Path, api: u16, gw: u16, access_log: Option<bool>) -> PathBuf {
    let cfg = dir.join(match access_log {
        Some(on) => format!("endor-{on}.toml"),
        None => "endor.toml".to_string(),
    });
    let log = access_log
        .map(|on| format!("access_log = {on}\n"))
        .unwrap_or_default();
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{api}\"\n[gateway]\nlisten = \"127.0.0.1:{gw}\"\n\
             {log}\
             [store]\nurl = \"sqlite://{d}/endor.db\"\n[storage]\nroot = \"{d}/sites\"\n\
             git = \"{d}/git\"\nlogs = \"{d}/logs\"\nsecret_key = \"{d}/secret.key\"\n\
             [reaper]\nenabled = false\n",
            d = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    cfg
}

/// Starts `endor serve` (release build) with `cfg`, quiet, and waits until `port` answers.
pub fn endor_serve(cfg: &Path, port: u16) -> Kill {
    let k = Kill(
        Command::new(env!("CARGO_BIN_EXE_endor"))
            .arg("--config")
            .arg(cfg)
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(port);
    k
}

/// The modes a gateway benchmark's binary answers besides its run: `--serve-site PORT` (the
/// backend, this same binary) and cargo's `--list`. True when one of them was handled.
pub fn side_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-site") {
        serve_site(args[i + 1].parse().unwrap());
        return true;
    }
    args.iter().any(|a| a == "--list")
}

/// A field of `/proc/PID/status` (`pid` may be `self`), in KiB; 0 when it cannot be read.
pub fn status_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// In a bench's fresh store: the user `owner`, its workspace `acme`, and `repo` connected to
/// it (its git remote never fetched). Returns the workspace and the connection.
pub async fn acme_with_repo(
    store: &dyn endor::store::Store,
    config: &endor::config::Config,
    repo: &str,
) -> (endor::store::Workspace, endor::ids::ConnectionId) {
    endor::service::create_user(store, "owner", None, None)
        .await
        .unwrap();
    let ws = endor::service::create_workspace(store, "acme", "owner")
        .await
        .unwrap();
    let conn = endor::service::connect_repo(
        store,
        config,
        "acme",
        repo,
        None,
        Some("file:///nonexistent"),
    )
    .await
    .unwrap()
    .connection_id;
    (ws, conn)
}
