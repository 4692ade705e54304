//! Webhook ingress load benchmark (issue: foundation). Run: `scripts/bench/webhooks` or
//! `cargo bench --bench webhook_load -- [--seconds N] [--connections N]`.
//!
//! Starts the real `endor serve` binary (release build) and sends signed 28 KB `pull_request`
//! deliveries, each with a unique delivery id, over loopback from N concurrent connections:
//!   (a) SQLite store, (b) PostgreSQL store, (c) `GET /healthz` of the same server (ceiling),
//!   (d) the peer `@octokit/webhooks` 13 (Node; verify + parse, stored nowhere) with the same
//!   deliveries and secret, in the same run (installed by `scripts/bench/webhooks`).
//! Reports deliveries/s and p50/p99 latency for each and the ratio (a)/(c); then kills a loaded
//! server with SIGKILL and counts stored rows against the 202 replies it sent.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use endor::forge::signature::sign_hex;
use serde_json::Value;

const FIXTURE: &str = "tests/fixtures/webhooks/github.pull_request.opened.json";

struct Args {
    seconds: u64,
    connections: usize,
    pg: String,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 10,
        connections: 64,
        pg: std::env::var("ENDOR_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        match argv[i].as_str() {
            "--seconds" => {
                a.seconds = argv[i + 1].parse().expect("--seconds N");
                i += 1;
            }
            "--connections" => {
                a.connections = argv[i + 1].parse().expect("--connections N");
                i += 1;
            }
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    a
}

fn endor(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_endor"));
    cmd.current_dir(dir)
        .args(args)
        .arg("--json")
        .env("ENDOR_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run endor");
    assert!(
        out.status.success(),
        "endor {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, env: &[(&str, &str)]) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_endor"));
    cmd.current_dir(dir)
        .arg("serve")
        .env("ENDOR__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "ENDOR__GATEWAY__LISTEN",
            format!(
                "127.0.0.1:{}",
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            ),
        )
        .env("ENDOR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn endor serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "endor serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, port }
}

/// One workspace + connection in `dir` on the store `env` selects; returns (id, signature).
/// The connection's id, the signature header of `body` and the secret.
fn prepare(dir: &Path, env: &[(&str, &str)], body: &[u8]) -> (String, String, String) {
    endor(dir, env, &["user", "create", "bench"]);
    endor(
        dir,
        env,
        &["workspace", "create", "bench", "--owner", "bench"],
    );
    let c = endor(
        dir,
        env,
        &["repo", "connect", "bench", "github:Codertocat/Hello-World"],
    );
    let sig = format!(
        "sha256={}",
        sign_hex(c["secret"].as_str().unwrap().as_bytes(), body)
    );
    (
        c["connection_id"].as_str().unwrap().to_string(),
        sig,
        c["secret"].as_str().unwrap().to_string(),
    )
}

/// The peer, `@octokit/webhooks` behind Node's http server (`benches/peers/`), installed by
/// `scripts/bench/webhooks` in `ENDOR_BENCH_OCTOKIT`; `None` when it is not there.
fn octokit_peer(secret: &str, port: u16) -> Option<Child> {
    let dir = std::env::var("ENDOR_BENCH_OCTOKIT").ok()?;
    let script = Path::new(&dir).join("octokit-webhooks.mjs");
    if !script.exists() {
        return None;
    }
    let child = Command::new("node")
        .arg(&script)
        .env("PORT", port.to_string())
        .env("SECRET", secret)
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child)
}

#[derive(Default)]
struct Run {
    ok: usize,
    other: usize,
    errors: usize,
    lat_us: Vec<u32>,
    secs: f64,
    acked: Vec<String>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
        self.lat_us[i] as f64 / 1000.0
    }
}

#[derive(Clone)]
enum Target {
    Webhook {
        url: String,
        sig: String,
        body: bytes::Bytes,
        tag: String,
    },
    Health {
        url: String,
    },
}

/// Closed loop: `conns` tasks, each with its own keep-alive connection, sending back to back
/// until `dur` has passed or `stop` is set.
async fn load(
    target: Target,
    conns: usize,
    dur: Duration,
    stop: Arc<AtomicBool>,
    keep_keys: bool,
) -> Run {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conns {
        let target = target.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut run = Run::default();
            let mut n = 0u64;
            while start.elapsed() < dur && !stop.load(Ordering::Relaxed) {
                n += 1;
                let t = Instant::now();
                let (req, key) = match &target {
                    Target::Webhook {
                        url,
                        sig,
                        body,
                        tag,
                    } => {
                        let key = format!("{tag}-{w}-{n}");
                        (
                            client
                                .post(url)
                                .header("x-github-event", "pull_request")
                                .header("x-github-delivery", &key)
                                .header("x-hub-signature-256", sig)
                                .header("content-type", "application/json")
                                .body(body.clone()),
                            Some(key),
                        )
                    }
                    Target::Health { url } => (client.get(url), None),
                };
                match req.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let _ = resp.bytes().await;
                        if status == 202 || (status == 200 && key.is_none()) {
                            run.ok += 1;
                            run.lat_us
                                .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            if keep_keys && let Some(k) = key {
                                run.acked.push(k);
                            }
                        } else {
                            run.other += 1;
                        }
                    }
                    Err(_) => {
                        run.errors += 1;
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            run
        }));
    }
    let mut total = Run::default();
    for t in tasks {
        let r = t.await.unwrap();
        total.ok += r.ok;
        total.other += r.other;
        total.errors += r.errors;
        total.lat_us.extend(r.lat_us);
        total.acked.extend(r.acked);
    }
    total.secs = start.elapsed().as_secs_f64();
    total.lat_us.sort_unstable();
    total
}

/// Deliveries to `url` signed `sig`: one second to warm up, then `dur` of load (ids tagged
/// `tag`; the acknowledged ones kept with `keep_keys`).
async fn measured(
    url: &str,
    sig: &str,
    body: &bytes::Bytes,
    tag: &str,
    conns: usize,
    dur: Duration,
    keep_keys: bool,
) -> Run {
    let target = |tag: &str| Target::Webhook {
        url: url.to_string(),
        sig: sig.to_string(),
        body: body.clone(),
        tag: tag.into(),
    };
    let never = Arc::new(AtomicBool::new(false));
    load(
        target("warm"),
        conns,
        Duration::from_secs(1),
        never.clone(),
        false,
    )
    .await;
    load(target(tag), conns, dur, never, keep_keys).await
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn report(name: &str, r: &Run, rss: Option<u64>) {
    println!(
        "{name:<28} {:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ok {:>7}   non-2xx {:>3}   errors {:>3}   peak RSS {} MiB",
        r.rate(),
        r.pct(0.50),
        r.pct(0.99),
        r.ok,
        r.other,
        r.errors,
        rss.map(|k| (k / 1024).to_string())
            .unwrap_or_else(|| "?".into())
    );
}

async fn pg_database(base: &str) -> Option<(String, String)> {
    let name = format!("endor_bench_{}", std::process::id());
    let admin = format!("{base}/postgres");
    let ok = Command::new("psql")
        .args([
            &admin,
            "-qc",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then(|| (name.clone(), format!("{base}/{name}")))
}

/// (b): the same load against a server on a fresh PostgreSQL database.
async fn postgres_run(a: &Args, body: &bytes::Bytes, dur: Duration) -> Option<Run> {
    let Some((name, url_pg)) = pg_database(&a.pg).await else {
        println!(
            "(b) skipped: PostgreSQL not reachable at {} (scripts/services.sh starts it)",
            a.pg
        );
        return None;
    };
    let pdir = tempfile::tempdir().unwrap();
    let env = [
        ("ENDOR__STORE__URL", url_pg.as_str()),
        ("ENDOR__STORE__MAX_CONNECTIONS", "16"),
    ];
    let (id, sig, _) = prepare(pdir.path(), &env, body);
    let server = serve(pdir.path(), &env);
    let url = format!("http://127.0.0.1:{}/webhooks/github/{id}", server.port);
    let r = measured(&url, &sig, body, "pg", a.connections, dur, false).await;
    let rss = peak_rss_kib(server.child.id());
    drop(server);
    report("(b) webhook, PostgreSQL", &r, rss);
    let _ = Command::new("psql")
        .args([
            &format!("{}/postgres", a.pg),
            "-qc",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ])
        .status();
    Some(r)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let dur = Duration::from_secs(a.seconds);
    let body = bytes::Bytes::from(
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)).unwrap(),
    );
    let never = Arc::new(AtomicBool::new(false));
    println!(
        "webhook ingress: {} connections, {} s per run, body {} bytes, {} cores",
        a.connections,
        a.seconds,
        body.len(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // (a) SQLite and (c) the /healthz ceiling of the same server.
    let dir = tempfile::tempdir().unwrap();
    let (id, sig, secret) = prepare(dir.path(), &[], &body);
    let server = serve(dir.path(), &[]);
    let url = format!("http://127.0.0.1:{}/webhooks/github/{id}", server.port);
    let wh = |tag: &str| Target::Webhook {
        url: url.clone(),
        sig: sig.clone(),
        body: body.clone(),
        tag: tag.into(),
    };
    load(
        wh("warm"),
        a.connections,
        Duration::from_secs(1),
        never.clone(),
        false,
    )
    .await;
    let sqlite = load(wh("sqlite"), a.connections, dur, never.clone(), true).await;
    let health = load(
        Target::Health {
            url: format!("http://127.0.0.1:{}/healthz", server.port),
        },
        a.connections,
        dur,
        never.clone(),
        false,
    )
    .await;
    let rss = peak_rss_kib(server.child.id());
    drop(server);
    let stored = endor(
        dir.path(),
        &[],
        &["delivery", "list", "--limit", "100000000"],
    )
    .as_array()
    .unwrap()
    .len();
    report("(a) webhook, SQLite", &sqlite, rss);
    report("(c) GET /healthz", &health, rss);
    println!(
        "    stored rows {} = warm-up + {} acknowledged in (a)",
        stored,
        sqlite.acked.len()
    );

    // (d) The peer, same deliveries, same secret, same load, same run.
    let peer_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let peer = match octokit_peer(&secret, peer_port) {
        Some(mut child) => {
            let url = format!("http://127.0.0.1:{peer_port}/");
            let r = measured(&url, &sig, &body, "peer", a.connections, dur, false).await;
            let rss = peak_rss_kib(child.id());
            let _ = child.kill();
            let _ = child.wait();
            report(
                "(d) @octokit/webhooks 13 (Node, verify + parse, stored nowhere)",
                &r,
                rss,
            );
            Some(r)
        }
        None => {
            println!("(d) @octokit/webhooks: not installed (run scripts/bench/webhooks)");
            None
        }
    };

    // (b) PostgreSQL.
    let pg = postgres_run(&a, &body, dur).await;
    println!("ratio (a)/(c): {:.2}", sqlite.rate() / health.rate());
    if let Some(p) = &peer {
        println!(
            "ratio (a)/(d) endor SQLite to @octokit/webhooks, same run: {:.2} (p99 {:.1} vs {:.1} ms)",
            sqlite.rate() / p.rate(),
            sqlite.pct(0.99),
            p.pct(0.99)
        );
    }

    // SIGKILL during load: every 202 must be a stored row.
    let kdir = tempfile::tempdir().unwrap();
    let (id, sig, _) = prepare(kdir.path(), &[], &body);
    let mut server = serve(kdir.path(), &[]);
    let kurl = format!("http://127.0.0.1:{}/webhooks/github/{id}", server.port);
    let stop = Arc::new(AtomicBool::new(false));
    let target = Target::Webhook {
        url: kurl,
        sig,
        body: body.clone(),
        tag: "kill".into(),
    };
    let handle = tokio::spawn(load(
        target,
        a.connections,
        Duration::from_secs(60),
        stop.clone(),
        true,
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let killed = handle.await.unwrap();
    let rows = endor(
        kdir.path(),
        &[],
        &["delivery", "list", "--limit", "100000000"],
    );
    let keys: std::collections::HashSet<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["delivery_key"].as_str().unwrap())
        .collect();
    let lost = killed
        .acked
        .iter()
        .filter(|k| !keys.contains(k.as_str()))
        .count();
    println!(
        "SIGKILL after 3 s of load: {} deliveries acknowledged (202), {} rows stored, {} acknowledged but lost",
        killed.acked.len(),
        keys.len(),
        lost
    );

    let summary = serde_json::json!({
        "sqlite": {"rps": sqlite.rate(), "p50_ms": sqlite.pct(0.5), "p99_ms": sqlite.pct(0.99)},
        "postgres": pg.as_ref().map(|r| serde_json::json!({"rps": r.rate(), "p50_ms": r.pct(0.5), "p99_ms": r.pct(0.99)})),
        "healthz": {"rps": health.rate(), "p50_ms": health.pct(0.5), "p99_ms": health.pct(0.99)},
        "ratio_sqlite_to_healthz": sqlite.rate() / health.rate(),
        "octokit": peer.as_ref().map(|r| serde_json::json!({"rps": r.rate(), "p50_ms": r.pct(0.5), "p99_ms": r.pct(0.99)})),
        "ratio_sqlite_to_octokit": peer.as_ref().map(|r| sqlite.rate() / r.rate()),
        "sigkill": {"acknowledged": killed.acked.len(), "stored": keys.len(), "lost": lost},
    });
    println!("{summary}");
    if lost > 0 {
        std::process::exit(1);
    }
}
