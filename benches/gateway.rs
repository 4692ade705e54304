//! Gateway overhead benchmark (issue: workspaces, roles, access control). Run:
//! `cargo bench --bench gateway -- [--seconds N] [--connections N]`.
//!
//! Two small site processes, each answering 200 "hello" over HTTP/1.1 keep-alive: this binary
//! in `--serve-site PORT` mode (hyper, one thread: the cheapest site there is, so the worst case
//! for the ratio) and a Python `http.server` app (the kind of process the preview tests run;
//! `--compiled-only` skips it). Each is loaded directly, then through the real `endor serve`
//! gateway (release build) with basic auth and a CIDR list on for the site, in one run, from N
//! keep-alive connections: requests/s of each, their ratio (gateway/direct, target ≥ 0.7), and
//! the p50/p99 latency the gateway adds. Then a static preview served by the gateway itself,
//! on one kept-alive connection and on N: requests/s and p50/p99.

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

fn main() {
    if side_mode() {
        return;
    }
    let secs = arg("--seconds", 10);
    let conns = arg("--connections", 64) as usize;
    let dir = tempfile::tempdir().unwrap();
    let (api, gw) = (free_port(), free_port());
    let cfg = write_config(dir.path(), api, gw, None);
    endor(&cfg, &["user", "create", "owner"]);
    endor(&cfg, &["workspace", "create", "acme", "--owner", "owner"]);
    endor(&cfg, &["site", "create", "app", "--workspace", "acme"]);
    endor(
        &cfg,
        &[
            "site",
            "access",
            "app",
            "--basic-auth",
            "bench:bench-password",
            "--allow",
            "127.0.0.0/8",
            "--allow",
            "::1",
            "--deny",
            "10.0.0.0/8",
            "--deny",
            "192.168.0.0/16",
        ],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _serve = endor_serve(&cfg, gw);
    let gw_addr: SocketAddr = format!("127.0.0.1:{gw}").parse().unwrap();
    wait_for(gw_addr.port());
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bench:bench-password")
    );
    let dur = Duration::from_secs(secs);
    let python = std::env::args().all(|a| a != "--compiled-only");
    let mut sites = vec![(
        "compiled (hyper, 1 thread)",
        Command::new(std::env::current_exe().unwrap()),
    )];
    if python {
        let mut py = Command::new("python3");
        py.args(["-c", PYTHON_SITE]);
        sites.push(("python http.server", py));
    }
    for (label, mut cmd) in sites {
        let site_port = free_port();
        if label.starts_with("compiled") {
            cmd.args(["--serve-site", &site_port.to_string()]);
        } else {
            cmd.arg(site_port.to_string());
        }
        let _site = Kill(cmd.spawn().unwrap());
        wait_for(site_port);
        put_route(
            &rt,
            dir.path(),
            endor::gateway::Route::local(site_port).row("app", true),
        );
        // The gateway's settings cache (gateway.cache_ttl_ms, 1 s) must see the new route.
        std::thread::sleep(Duration::from_millis(1500));
        println!("site process: {label}");
        rt.block_on(measure(gw_addr, site_port, &auth, conns, dur, secs));
    }
    // A static preview (the common case for front-end work): a folder served by the gateway
    // itself, without access rules, on one kept-alive connection and on N.
    let root = dir.path().join("static");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "hello").unwrap();
    put_route(
        &rt,
        dir.path(),
        endor::gateway::Route::Static(root.clone()).row("docs", true),
    );
    std::thread::sleep(Duration::from_millis(1500));
    println!("static preview (index.html, 5 bytes)");
    for (n, label) in [(1, "1 kept-alive connection"), (conns, "connections")] {
        let r = rt.block_on(load(
            format!("http://{gw_addr}/"),
            Some("docs.preview.localhost".into()),
            None,
            n,
            dur,
        ));
        println!(
            "{n:>3} {label:<24} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} ok, {} bad)",
            r.rate(),
            r.pct(0.5),
            r.pct(0.99),
            r.ok,
            r.bad
        );
    }
}

/// The kind of site process the preview tests run: Python's http.server (HTTP/1.1 keep-alive).
const PYTHON_SITE: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

async fn measure(
    gw_addr: SocketAddr,
    site_port: u16,
    auth: &str,
    conns: usize,
    dur: Duration,
    secs: u64,
) {
    // Warm up both paths (and the gateway's verified-credentials cache).
    load(
        format!("http://{gw_addr}/"),
        Some("app.preview.localhost".into()),
        Some(auth.to_string()),
        4,
        Duration::from_secs(1),
    )
    .await;
    let direct = load(
        format!("http://127.0.0.1:{site_port}/"),
        None,
        None,
        conns,
        dur,
    )
    .await;
    let through = load(
        format!("http://{gw_addr}/"),
        Some("app.preview.localhost".into()),
        Some(auth.to_string()),
        conns,
        dur,
    )
    .await;
    // Without credentials the gateway must refuse.
    let refused = reqwest::Client::new()
        .get(format!("http://{gw_addr}/"))
        .header("host", "app.preview.localhost")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(refused, 401);
    for (name, r) in [
        ("direct", &direct),
        ("gateway (basic auth + CIDR)", &through),
    ] {
        println!(
            "{name:<28} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} ok, {} bad)",
            r.rate(),
            r.pct(0.5),
            r.pct(0.99),
            r.ok,
            r.bad
        );
    }
    println!(
        "gateway/direct = {:.2} (target >= 0.7); added latency p50 {:.2} ms, p99 {:.2} ms; {conns} connections, {secs} s each",
        through.rate() / direct.rate(),
        through.pct(0.5) - direct.pct(0.5),
        through.pct(0.99) - direct.pct(0.99)
    );
}
