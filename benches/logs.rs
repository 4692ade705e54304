//! Logs benchmark (issue: customer logs). Run: `cargo bench --bench logs -- [--seconds N]`
//! (or `scripts/bench/logs`).
//!
//! Against a real `endor serve` (release build) and a site process supervised as `serve`
//! supervises one (its output into the site's `web` log through the same code):
//! 1. the time from a line written by the app to the line received by a Server-Sent Events
//!    follower of the API and by `endor site logs -f`, p50/p99 (target p99 <= 100 ms), at 200
//!    lines/s;
//! 2. lines per second one site can write with a follower attached (100-byte lines; target
//!    >= 100,000/s), and the app's slowdown against writing to /dev/null;
//! 3. the gateway's requests/s for a static preview with the access log on and off (target:
//!    at most 5 % lower with it on), alternated twice.

mod common;

use common::*;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// 200 lines a second, each with the time it was written (ns since the epoch).
const TICKER: &str = r#"
import sys, time
n = int(sys.argv[1])
for i in range(n):
    sys.stdout.write("tick %d %d\n" % (i, time.time_ns()))
    sys.stdout.flush()
    time.sleep(0.005)
print("done", flush=True)
"#;

/// `n` lines of 100 bytes as fast as the app can, then a marker.
const FLOOD: &str = r#"
import sys, time
n = int(sys.argv[1])
line = ("x" * 99 + "\n").encode()
out = sys.stdout.buffer
chunk = line * 1000
start = time.monotonic()
for _ in range(n // 1000):
    out.write(chunk)
out.flush()
sys.stdout.write("flood-done %.6f\n" % (time.monotonic() - start))
sys.stdout.flush()
"#;

/// Writes `rate` 100-byte lines a second (a chunk every 10 ms) for `secs` seconds, then
/// `paced-done N LATE` (lines written, seconds it ran past its schedule).
const PACED: &str = r#"
import sys, time
rate, secs = int(sys.argv[1]), float(sys.argv[2])
per = rate // 100
chunk = (("x" * 99 + "\n") * per).encode()
out = sys.stdout.buffer
start = time.monotonic()
n = 0
for i in range(int(secs * 100)):
    wait = start + i * 0.01 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    out.write(chunk)
    out.flush()
    n += per
late = time.monotonic() - start - secs
sys.stdout.write("paced-done %d %.3f\n" % (n, late))
sys.stdout.flush()
"#;

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len().max(1) - 1) as f64 * p).round() as usize]
}

/// A site process as `serve` runs one, its output into the site's `web` log.
fn supervise(dir: &Path, site: &str, script: &str, arg: &str) -> endor::runtime::Supervised {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(work.join("app.py"), script).unwrap();
    let sandbox = endor::runtime::Sandbox::new(&work, vec![], "nobody").unwrap();
    let logs = endor::logs::Logs::new(&dir.join("logs"), Default::default());
    endor::runtime::Supervised::start(
        sandbox,
        // Once the app is done it sleeps: an app that exits would be started again.
        format!("python3 app.py {arg}; exec sleep 3600"),
        endor::runtime::WebLog::new(logs, endor::ids::SiteId::from(site)),
        "app".into(),
        None,
    )
}

/// Follow the site's web log over the API (Server-Sent Events): each line's text to `tx`
/// with the time it arrived.
async fn sse(url: String, token: String, tx: std::sync::mpsc::Sender<(String, i128)>) {
    let mut resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        // Every whole event in the buffer, then what is left of it kept for the next chunk.
        let mut used = 0;
        while let Some(end) = buf[used..].find("\n\n") {
            let event = &buf[used..used + end];
            used += end + 2;
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    #[derive(serde::Deserialize)]
                    struct Line {
                        text: String,
                    }
                    let v: Line = serde_json::from_str(data).unwrap();
                    if tx.send((v.text, now_ns())).is_err() {
                        return;
                    }
                }
            }
        }
        buf.drain(..used);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = arg("--seconds", 10);
    let dir = tempfile::tempdir().unwrap();
    let (api, gw) = (free_port(), free_port());
    let cfg_on = write_config(dir.path(), api, gw, Some(true));
    let cfg_off = write_config(dir.path(), api, gw, Some(false));
    endor(&cfg_on, &["user", "create", "owner"]);
    endor(
        &cfg_on,
        &["workspace", "create", "acme", "--owner", "owner"],
    );
    endor(&cfg_on, &["site", "create", "app", "--workspace", "acme"]);
    let token: serde_json::Value =
        serde_json::from_str(&endor(&cfg_on, &["--json", "user", "token", "owner"])).unwrap();
    let token = token["token"].as_str().unwrap().to_string();
    let site: serde_json::Value =
        serde_json::from_str(&endor(&cfg_on, &["--json", "site", "show", "app"])).unwrap();
    let site_id = site["id"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    // 1. Latency, at 200 lines/s, to both followers.
    let serving = endor_serve(&cfg_on, api);
    let url = format!("http://127.0.0.1:{api}/api/v1/sites/app/logs?service=web&follow=true&n=1");
    let (tx, sse_rx) = std::sync::mpsc::channel();
    rt.spawn(sse(url, token.clone(), tx));
    let mut cli = Kill(
        Command::new(env!("CARGO_BIN_EXE_endor"))
            .arg("--config")
            .arg(&cfg_on)
            .args(["site", "logs", "app", "--service", "web", "-f", "-n", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = cli.0.stdout.take().unwrap();
    let (ctx, cli_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if ctx.send((line, now_ns())).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let ticks = (secs * 200) as usize;
    let app = rt.block_on(async { supervise(dir.path(), &site_id, TICKER, &ticks.to_string()) });
    let collect = |rx: &std::sync::mpsc::Receiver<(String, i128)>| {
        let mut lat = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(secs + 30);
        while let Ok((text, at)) =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if text.contains("done") {
                break;
            }
            let mut parts = text.split_whitespace().skip_while(|w| *w != "tick");
            if let (Some(_), Some(_), Some(t)) = (parts.next(), parts.next(), parts.next())
                && let Ok(t) = t.parse::<i128>()
            {
                lat.push((at - t) as f64 / 1e6);
            }
        }
        lat
    };
    let mut sse_lat = collect(&sse_rx);
    let mut cli_lat = collect(&cli_rx);
    rt.block_on(app.stop());
    drop(cli);
    println!("latency, app write -> follower, {} lines at 200/s:", ticks);
    for (name, v) in [
        ("API (Server-Sent Events)", &mut sse_lat),
        ("endor site logs -f", &mut cli_lat),
    ] {
        println!(
            "  {name:<26} {:>5} lines  p50 {:>6.1} ms  p99 {:>6.1} ms  (target p99 <= 100 ms)",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.99)
        );
    }

    // 2. Throughput with a follower attached: the app writes as fast as it can (its own time,
    // against the same app writing to /dev/null); the web log takes every line (the app waits
    // on its pipe otherwise) and the follower gets what the cap kept when it read.
    let n: usize = 1_000_000;
    let app_time = |text: &str| -> f64 {
        text.split_whitespace()
            .nth(1)
            .and_then(|t| t.parse().ok())
            .unwrap()
    };
    let null_time = {
        let work = dir.path().join("work");
        std::fs::write(work.join("flood.py"), FLOOD).unwrap();
        let out = Command::new("python3")
            .arg(work.join("flood.py"))
            .arg(n.to_string())
            .stderr(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The lines to /dev/null, the last one (its time) here.
        let mut child = out;
        let mut text = String::new();
        use std::io::Read;
        let mut all = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut all).unwrap();
        assert!(child.wait().unwrap().success());
        let tail = &all[all.len().saturating_sub(64)..];
        text.push_str(String::from_utf8_lossy(tail).lines().last().unwrap());
        app_time(&text)
    };
    let url = format!("http://127.0.0.1:{api}/api/v1/sites/app/logs?service=web&follow=true&n=1");
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(sse(url, token.clone(), tx));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let app = rt.block_on(async { supervise(dir.path(), &site_id, FLOOD, &n.to_string()) });
    let mut received = 0usize;
    let mut done = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while let Ok((text, _)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if text.starts_with("flood-done") {
            done = Some((app_time(&text), t.elapsed().as_secs_f64()));
            break;
        }
        if text.len() == 99 && text.starts_with('x') {
            received += 1;
        }
    }
    let (wrote, followed) = done.expect("the flood never reached the follower");
    rt.block_on(app.stop());
    println!(
        "throughput: the app wrote {n} lines of 100 bytes through the web log in {wrote:.2} s = \
         {:.0} lines/s (target >= 100,000); to /dev/null in {null_time:.2} s: slowdown {:.1}x; \
         the follower got {received} of them (the rest past logs.max_bytes_per_site when it \
         read), its last {followed:.2} s after the start",
        n as f64 / wrote,
        wrote / null_time,
    );

    // 2b. A follower that keeps up: the app paced at 100,000 lines/s; does every line reach it?
    let rate = 100_000usize;
    let paced_secs = secs.min(5);
    let url = format!("http://127.0.0.1:{api}/api/v1/sites/app/logs?service=web&follow=true&n=1");
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(sse(url, token.clone(), tx));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let app = rt.block_on(async {
        supervise(dir.path(), &site_id, PACED, &format!("{rate} {paced_secs}"))
    });
    let mut received = 0usize;
    let mut done = None;
    let deadline = Instant::now() + Duration::from_secs(paced_secs + 120);
    while let Ok((text, _)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if text.starts_with("paced-done") {
            done = Some((text, t.elapsed()));
            break;
        }
        // The line the follow starts with (the last one before) is not the app's.
        if text.len() == 99 && text.starts_with('x') {
            received += 1;
        }
    }
    let (text, at) = done.expect("the paced app never reached the follower");
    rt.block_on(app.stop());
    let parts: Vec<&str> = text.split_whitespace().collect();
    let written: usize = parts[1].parse().unwrap();
    let late: f64 = parts[2].parse().unwrap();
    println!(
        "paced: {written} lines at {rate}/s for {paced_secs} s (the app ran {late:.2} s past its \
         schedule): {received} received by the follower ({}), the last {:.0} ms after the app's \
         schedule ended",
        if received == written {
            "every line"
        } else {
            "LINES MISSING"
        },
        (at.as_secs_f64() - paced_secs as f64) * 1000.0
    );
    drop(serving);

    // 3. The gateway with the access log on and off (a static preview, 64 connections).
    let root = dir.path().join("static");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "hello").unwrap();
    rt.block_on(async {
        let store = endor::store::connect(
            &format!("sqlite://{}/endor.db", dir.path().display()),
            2,
            std::sync::Arc::new(
                endor::secret::Keyring::load(&dir.path().join("master.key")).unwrap(),
            ),
        )
        .await
        .unwrap();
        store
            .put_route(&endor::gateway::Route::Static(root.clone()).row("app", true))
            .await
            .unwrap();
    });
    let dur = Duration::from_secs(secs);
    let mut rates = std::collections::BTreeMap::<bool, Vec<f64>>::new();
    // Alternated ABBA-wise, so a drift of the machine's speed weighs on both alike.
    for on in [true, false, false, true, true, false] {
        let _s = endor_serve(if on { &cfg_on } else { &cfg_off }, api);
        wait_for(gw);
        std::thread::sleep(Duration::from_millis(300));
        let r = rt.block_on(load(
            format!("http://127.0.0.1:{gw}/"),
            Some("app.preview.localhost".into()),
            None,
            64,
            dur,
        ));
        println!(
            "gateway, static preview, access log {:<3}: {:>8.0} req/s  p50 {:>5.2} ms  p99 {:>5.2} ms  ({} ok, {} bad)",
            if on { "on" } else { "off" },
            r.rate(),
            r.pct(0.5),
            r.pct(0.99),
            r.ok,
            r.bad
        );
        rates.entry(on).or_default().push(r.rate());
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (on, off) = (median(&rates[&true]), median(&rates[&false]));
    println!(
        "access log on/off (medians of 3 runs each) = {:.3} ({:+.1} %; target >= 0.95)",
        on / off,
        (on / off - 1.0) * 100.0
    );
}
