//! A thousand previews on one box (`scripts/bench/thousand`):
//! `cargo bench --bench thousand -- [--static N] [--apps N] [--seconds N] [--connections N]
//! [--rounds N]`.
//!
//! A fresh SQLite store gets `--static` (1,000) ready static previews — each a site, its
//! preview row (PR, head, expiry) and a route to a folder of its own holding `index.html` —
//! and `--apps` (100) ready previews routed to running app processes (this binary in
//! `--serve-site PORT` mode, one thread each; started here, not by endor, so endor's
//! supervision of them — their log pipes — is not in its figures). Then the real `endor serve`
//! (release) runs over it, and the bench prints:
//! - `endor site list` over them all (the CLI as a user runs it, a process each), median of 5;
//! - the gateway's req/s and p50/p99 on one static preview and spread over all of them (each
//!   request the next site), likewise one app and all of them, alternated `--rounds` times;
//!   the ratio all/one;
//! - endor serve's RSS with the sites loaded, before the load and at its peak.
//!
//! The reaper's pass over 1,000 expired previews is `scripts/bench/reap`.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use endor::config::Config;
use endor::gateway::Route;
use endor::store::{Preview, PreviewState};

fn main() {
    if side_mode() {
        return;
    }
    let n_static = arg("--static", 1000) as usize;
    let n_apps = arg("--apps", 100) as usize;
    let secs = arg("--seconds", 5);
    let conns = arg("--connections", 64) as usize;
    let rounds = arg("--rounds", 2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (api, gw) = (free_port(), free_port());
    let cfg = write_config(d, api, gw, None);
    let me = std::env::current_exe().unwrap();
    // Distinct ports (a port free_port gave back can come again).
    let mut app_ports: Vec<u16> = Vec::new();
    while app_ports.len() < n_apps {
        let p = free_port();
        if p != api && p != gw && !app_ports.contains(&p) {
            app_ports.push(p);
        }
    }
    let _apps: Vec<Kill> = app_ports
        .iter()
        .map(|p| {
            Kill(
                Command::new(&me)
                    .args(["--serve-site", &p.to_string()])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    rt.block_on(plant(d, n_static, &app_ports));
    println!(
        "planted {n_static} static previews and {n_apps} app previews in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for p in &app_ports {
        wait_for(*p);
    }
    let serve = endor_serve(&cfg, gw);
    let pid = serve.0.id();

    let mut list_ms: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let out = endor(&cfg, &["site", "list"]);
            let took = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(out.lines().count(), n_static + n_apps, "site list: {out}");
            took
        })
        .collect();
    list_ms.sort_by(f64::total_cmp);
    println!(
        "endor site list over {} sites: median {:.0} ms (min {:.0}, max {:.0}; 5 runs, a process each)",
        n_static + n_apps,
        list_ms[2],
        list_ms[0],
        list_ms[4]
    );

    let host = |kind: &str, i: usize| format!("{kind}-pr-{i}.preview.localhost");
    let statics: Vec<String> = (1..=n_static).map(|i| host("web", i)).collect();
    let apps: Vec<String> = (1..=n_apps).map(|i| host("app", i)).collect();
    let url = format!("http://127.0.0.1:{gw}/index.html");
    // Every site visited once first: routes and answers in the gateway's caches, as on a
    // box whose previews are in use.
    let _ = rt.block_on(load_hosts(
        url.clone(),
        statics.iter().chain(&apps).cloned().collect(),
        None,
        conns,
        Duration::from_secs(1),
        true,
    ));
    let rss_before = status_kb(&pid.to_string(), "VmRSS:");
    let dur = Duration::from_secs(secs);
    println!(
        "{:<40} {:>5} {:>10} {:>8} {:>8}",
        "case", "round", "req/s", "p50 ms", "p99 ms"
    );
    for (what, all) in [("static", &statics), ("app", &apps)] {
        let (mut one_rate, mut all_rate) = (0.0, 0.0);
        for round in 1..=rounds {
            for (label, hosts) in [
                (format!("{what}: one preview"), vec![all[0].clone()]),
                (format!("{what}: all {} previews", all.len()), all.clone()),
            ] {
                let spread = hosts.len() > 1;
                let r = rt.block_on(load_hosts(url.clone(), hosts, None, conns, dur, true));
                assert!(r.ok > 0 && r.bad == 0, "{label}: {} failed", r.bad);
                println!(
                    "{label:<40} {round:>5} {:>10.0} {:>8.2} {:>8.2}",
                    r.rate(),
                    r.pct(0.5),
                    r.pct(0.99)
                );
                if spread {
                    all_rate += r.rate();
                } else {
                    one_rate += r.rate();
                }
            }
        }
        println!(
            "  => {what}: req/s over all {} / over one = {:.2} ({rounds} rounds)",
            all.len(),
            all_rate / one_rate
        );
    }
    println!(
        "endor serve RSS with {} sites: {} MiB before the load, peak {} MiB",
        n_static + n_apps,
        rss_before / 1024,
        status_kb(&pid.to_string(), "VmHWM:") / 1024
    );
}

/// The store `endor serve` will read: a workspace, a connected repository, and the ready
/// previews with their sites and routes.
async fn plant(d: &Path, n_static: usize, app_ports: &[u16]) {
    let url = format!("sqlite://{}/endor.db", d.display());
    let mut config = Config::default();
    config.store.url = url.clone();
    config.storage.root = d.join("sites");
    config.storage.git = d.join("git");
    config.storage.logs = d.join("logs");
    let store = endor::store::open(&url, 4, &d.join("secret.key"))
        .await
        .unwrap();
    let (ws, conn) = acme_with_repo(store.as_ref(), &config, "github:octo/web").await;
    let sites = endor::sites::Sites::new(store.clone(), &config);
    let now = endor::now_ms();
    let routes = (1..=n_static)
        .map(|i| {
            let public = d.join(format!("checkouts/web-{i}/public"));
            std::fs::create_dir_all(&public).unwrap();
            std::fs::write(public.join("index.html"), "hello").unwrap();
            (format!("web-pr-{i}"), Route::Static(public))
        })
        .chain(
            app_ports
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("app-pr-{}", i + 1), Route::local(*p))),
        );
    for (number, (name, route)) in routes.enumerate() {
        let site = sites.create_empty(&name, &ws.id, "default").await.unwrap();
        store.put_route(&route.row(&name, true)).await.unwrap();
        store
            .put_preview(&Preview {
                site_id: Some(site.id),
                state: PreviewState::Ready,
                head_sha: Some("a".repeat(40)),
                ready_sha: Some("a".repeat(40)),
                received_at: Some(now),
                expires_at: Some(now + 86_400_000),
                ..Preview::new(conn.clone(), number as i64 + 1, name, now)
            })
            .await
            .unwrap();
    }
}
