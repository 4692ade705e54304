//! Dashboard benchmark (issue: the dashboard). Run: `cargo bench --bench dashboard --
//! [--sites N] [--requests N]` (or `scripts/bench/dashboard`).
//!
//! A workspace with 1,000 sites (made through `Sites::create`, as `endor site create` makes
//! them, on SQLite) and the dashboard's router in process, signed in through a session:
//! 1. server time to answer the sites page (`GET /w/acme/sites`, first page), p50/p99/max over
//!    the requests (target p99 <= 50 ms): session, roles, the API call, the page rendered;
//! 2. bytes a first visit of the sites page transfers: the page and everything it loads (its
//!    style sheet; the page loads no script and nothing from another host), target <= 100 KB.

mod common;

use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use common::arg;
use tower::ServiceExt;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sites_n = arg("--sites", 1000) as usize;
    let requests = arg("--requests", 300) as usize;
    let dir = tempfile::tempdir().unwrap();
    let mut config = endor::config::Config::default();
    config.store.url = format!("sqlite://{}", dir.path().join("endor.db").display());
    config.storage.root = dir.path().join("sites");
    config.storage.logs = dir.path().join("logs");
    config.storage.git = dir.path().join("git");
    config.secrets.master_key_file = dir.path().join("master.key");
    let store = endor::store::open(&config.store.url, 8, &config.secrets.master_key_file)
        .await
        .unwrap();
    let s = store.as_ref();
    endor::service::create_user(s, "dev", None, Some("dev@example.com"))
        .await
        .unwrap();
    endor::service::create_workspace(s, "acme", "dev")
        .await
        .unwrap();
    endor::service::set_member_roles(s, "acme", "dev", &["owner".into(), "developer".into()])
        .await
        .unwrap();
    let sites = endor::sites::Sites::new(store.clone(), &config);
    let made = Instant::now();
    for i in 0..sites_n {
        let name = format!("site-{i:04}");
        sites
            .create(&name, "acme", None, endor::sites::Imports::default())
            .await
            .unwrap();
        if i % 10 == 0 {
            sites.tag(&name, "qa", true).await.unwrap();
        }
    }
    eprintln!(
        "{sites_n} sites made in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let user = s.user_by_login("dev").await.unwrap().unwrap();
    let (cookie, _) = endor::dashboard::auth::start_session(s, &user, 3_600_000)
        .await
        .unwrap();
    let app = endor::dashboard::router(endor::api::Api::new(store.clone(), &config));
    let get = |path: &str| {
        Request::get(path)
            .header(
                "cookie",
                format!("{}={cookie}", endor::dashboard::auth::SESSION_COOKIE),
            )
            .body(Body::empty())
            .unwrap()
    };
    let run = |path: &'static str| {
        let app = app.clone();
        let req = get(path);
        async move {
            let t = Instant::now();
            let r = app.oneshot(req).await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let head: usize = r
                .headers()
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>()
                + 17;
            let body = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap();
            (t.elapsed().as_secs_f64() * 1000.0, head + body.len(), body)
        }
    };
    // Warm up, then measure.
    for _ in 0..10 {
        run("/w/acme/sites").await;
    }
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        times.push(run("/w/acme/sites").await.0);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    let (_, page_bytes, page) = run("/w/acme/sites").await;
    let page = String::from_utf8_lossy(&page);
    let mut first_visit = page_bytes;
    let mut loaded = vec![format!("/w/acme/sites {page_bytes} B")];
    for asset in ["/assets/endor.css", "/assets/endor.js"] {
        if page.contains(asset) {
            let (_, b, _) = run(if asset.ends_with("css") {
                "/assets/endor.css"
            } else {
                "/assets/endor.js"
            })
            .await;
            first_visit += b;
            loaded.push(format!("{asset} {b} B"));
        }
    }
    // What the page loads (style sheets, scripts, images), each from this server (a path).
    let offsite = ["<link ", "<script ", "<img "].iter().any(|tag| {
        page.split(tag).skip(1).any(|rest| {
            let attrs = rest.split('>').next().unwrap_or("");
            ["href=\"", "src=\""].iter().any(|a| {
                attrs
                    .split(a)
                    .nth(1)
                    .is_some_and(|v| !v.starts_with('/') || v.starts_with("//"))
            })
        })
    });
    println!(
        "dashboard, {sites_n} sites (SQLite, in-process router, {requests} requests after 10 warm-up):"
    );
    println!(
        "  sites page server time: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= 50 ms)",
        pct(0.50),
        pct(0.99),
        times[times.len() - 1]
    );
    println!(
        "  first visit of the sites page: {:.1} KB in {} requests ({}); loads from another host: {} (target <= 100 KB, none)",
        first_visit as f64 / 1000.0,
        loaded.len(),
        loaded.join(", "),
        if offsite { "yes" } else { "none" }
    );
}
