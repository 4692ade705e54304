//! endor's gateway against nginx, side by side in one run (`scripts/bench/gateway-vs-nginx`):
//! `cargo bench --bench gateway_nginx -- [--seconds N] [--connections N] [--rounds N]`.
//!
//! nginx (Debian's, one worker) is set up as the same thing the gateway is, in front of the
//! same backend (a one-thread hyper server answering "hello"):
//! - a reverse proxy without per-site rules;
//! - a reverse proxy with the rules a preview can have: basic auth (an apr1 htpasswd file,
//!   checked on every request, as nginx does), a CIDR allow/deny list, the robots header;
//! - a static folder (`root`, `sendfile on`), on kept-alive connections and on a new connection
//!   per request.
//!
//! Both log each request (nginx's access log buffered, as endor's is). Each case is loaded
//! `--rounds` times, endor then nginx, from the same client; it prints each side's requests/s
//! and p50/p99 latency, the ratio endor/nginx, and, for the proxies, the latency each adds
//! over the backend loaded directly.

mod common;

use common::*;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn main() {
    if side_mode() {
        return;
    }
    let secs = arg("--seconds", 5);
    let conns = arg("--connections", 64) as usize;
    let rounds = arg("--rounds", 2);
    let nginx = which("nginx").unwrap_or_else(|| {
        panic!("nginx is not installed: scripts/bench/gateway-vs-nginx installs it")
    });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (api, gw) = (free_port(), free_port());
    let cfg = write_config(d, api, gw, None);
    endor(&cfg, &["user", "create", "owner"]);
    endor(&cfg, &["workspace", "create", "acme", "--owner", "owner"]);
    for site in ["ruled", "bare", "docs"] {
        endor(&cfg, &["site", "create", site, "--workspace", "acme"]);
    }
    endor(
        &cfg,
        &[
            "site",
            "access",
            "ruled",
            "--basic-auth",
            "bench:bench-password",
            "--allow",
            "127.0.0.0/8",
            "--deny",
            "10.0.0.0/8",
            "--deny",
            "192.168.0.0/16",
        ],
    );
    // The backend, and the static folder both serve.
    let site_port = free_port();
    let _site = Kill(
        Command::new(std::env::current_exe().unwrap())
            .args(["--serve-site", &site_port.to_string()])
            .spawn()
            .unwrap(),
    );
    wait_for(site_port);
    let root = d.join("static");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "hello").unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    use endor::gateway::Route;
    put_route(&rt, d, Route::local(site_port).row("ruled", true));
    put_route(&rt, d, Route::local(site_port).row("bare", true));
    put_route(&rt, d, Route::Static(root.clone()).row("docs", true));
    let _serve = endor_serve(&cfg, gw);
    wait_for(gw);

    let (n_bare, n_ruled, n_static) = (free_port(), free_port(), free_port());
    let htpasswd = openssl_apr1("bench-password");
    std::fs::write(d.join("htpasswd"), format!("bench:{htpasswd}\n")).unwrap();
    // nginx's worker (nobody, when started as root) reads the folder and the password file.
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(d.join("htpasswd"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        d.join("nginx.conf"),
        nginx_conf(d, site_port, n_bare, n_ruled, n_static, &root),
    )
    .unwrap();
    let _nginx = Nginx(
        Command::new(&nginx)
            .args(["-p", &d.display().to_string(), "-c"])
            .arg(d.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for p in [n_bare, n_ruled, n_static] {
        wait_for(p);
    }
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bench:bench-password")
    );
    // Both refuse a visitor without the password.
    for (port, host) in [(gw, "ruled.preview.localhost"), (n_ruled, "ruled")] {
        let status = rt.block_on(async {
            reqwest::Client::new()
                .get(format!("http://127.0.0.1:{port}/"))
                .header("host", host)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
        assert_eq!(status, 401, "port {port}");
    }
    // The gateway's settings cache must have seen the routes; warm both up.
    std::thread::sleep(Duration::from_millis(1500));
    let gw_addr: SocketAddr = format!("127.0.0.1:{gw}").parse().unwrap();
    let dur = Duration::from_secs(secs);
    let direct = rt.block_on(load(
        format!("http://127.0.0.1:{site_port}/"),
        None,
        None,
        conns,
        dur,
    ));
    println!(
        "backend loaded directly: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms ({conns} connections, {secs} s)",
        direct.rate(),
        direct.pct(0.5),
        direct.pct(0.99)
    );
    struct Case {
        name: &'static str,
        host: &'static str,
        nginx_port: u16,
        auth: bool,
        conns: usize,
        keep_alive: bool,
        proxied: bool,
    }
    let cases = [
        Case {
            name: "proxy, no rules",
            host: "bare",
            nginx_port: n_bare,
            auth: false,
            conns,
            keep_alive: true,
            proxied: true,
        },
        Case {
            name: "proxy, basic auth + CIDR + robots",
            host: "ruled",
            nginx_port: n_ruled,
            auth: true,
            conns,
            keep_alive: true,
            proxied: true,
        },
        Case {
            name: "static index.html, kept alive",
            host: "docs",
            nginx_port: n_static,
            auth: false,
            conns,
            keep_alive: true,
            proxied: false,
        },
        Case {
            name: "static index.html, 1 kept-alive connection",
            host: "docs",
            nginx_port: n_static,
            auth: false,
            conns: 1,
            keep_alive: true,
            proxied: false,
        },
        Case {
            name: "static index.html, a connection per request",
            host: "docs",
            nginx_port: n_static,
            auth: false,
            conns,
            keep_alive: false,
            proxied: false,
        },
    ];
    println!(
        "{:<46} {:>6} {:>10} {:>8} {:>8} {:>10} {:>8} {:>8} {:>7}",
        "case", "round", "endor/s", "p50 ms", "p99 ms", "nginx/s", "p50 ms", "p99 ms", "ratio"
    );
    for case in &cases {
        let auth = case.auth.then(|| auth.clone());
        let (mut e_sum, mut n_sum) = (0.0, 0.0);
        let (mut e_p99, mut n_p99) = (0.0f64, 0.0f64);
        for round in 1..=rounds {
            let e = rt.block_on(load_with(
                format!("http://{gw_addr}/"),
                Some(format!("{}.preview.localhost", case.host)),
                auth.clone(),
                case.conns,
                dur,
                case.keep_alive,
            ));
            let n = rt.block_on(load_with(
                format!("http://127.0.0.1:{}/", case.nginx_port),
                Some(case.host.to_string()),
                auth.clone(),
                case.conns,
                dur,
                case.keep_alive,
            ));
            assert!(
                e.bad == 0 && n.bad == 0,
                "{}: {} / {} bad",
                case.name,
                e.bad,
                n.bad
            );
            println!(
                "{:<46} {:>6} {:>10.0} {:>8.2} {:>8.2} {:>10.0} {:>8.2} {:>8.2} {:>7.2}",
                case.name,
                round,
                e.rate(),
                e.pct(0.5),
                e.pct(0.99),
                n.rate(),
                n.pct(0.5),
                n.pct(0.99),
                e.rate() / n.rate()
            );
            e_sum += e.rate();
            n_sum += n.rate();
            e_p99 = e_p99.max(e.pct(0.99));
            n_p99 = n_p99.max(n.pct(0.99));
        }
        let added = if case.proxied {
            format!(
                "; p99 added over the backend: endor {:.2} ms, nginx {:.2} ms",
                e_p99 - direct.pct(0.99),
                n_p99 - direct.pct(0.99)
            )
        } else {
            format!("; worst p99: endor {e_p99:.2} ms, nginx {n_p99:.2} ms")
        };
        println!(
            "  => {}: endor/nginx = {:.2} over {rounds} rounds{added}",
            case.name,
            e_sum / n_sum
        );
    }
}

/// nginx as the gateway is: one worker, the backend kept alive, each request logged (buffered).
fn nginx_conf(d: &Path, site: u16, bare: u16, ruled: u16, stat: u16, root: &Path) -> String {
    format!(
        r#"worker_processes 1;
error_log {d}/nginx-error.log;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log {d}/nginx-access.log combined buffer=64k flush=1s;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;
  fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  default_type text/html;
  upstream backend {{ server 127.0.0.1:{site}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{bare};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  server {{
    listen 127.0.0.1:{ruled};
    location / {{
      allow 127.0.0.0/8; deny 10.0.0.0/8; deny 192.168.0.0/16;
      auth_basic "preview"; auth_basic_user_file {d}/htpasswd;
      add_header X-Robots-Tag "noindex, nofollow" always;
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
    }}
  }}
  server {{
    listen 127.0.0.1:{stat};
    root {root};
    location / {{ }}
  }}
}}
"#,
        d = d.display(),
        root = root.display()
    )
}

/// An apr1 (Apache MD5) hash of `password`, as `htpasswd -m` writes it.
fn openssl_apr1(password: &str) -> String {
    let out = Command::new("openssl")
        .args(["passwd", "-apr1", password])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// nginx's master, stopped with SIGTERM so it takes its worker along (a killed master leaves
/// the worker running).
struct Nginx(std::process::Child);
impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}
