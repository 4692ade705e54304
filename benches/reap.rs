//! Reaper benchmark (issue: expiry and the reaper). For each count (default 100 and 1,000):
//! that many expired previews, each a real site cloned from a parent with small files (20) and
//! a SQLite database, plus (`--pg N`, default 50 in the largest run) previews whose parent also
//! has a PostgreSQL database (a server per site), are planted in a fresh SQLite store on the
//! reflink storage; then one reaper pass (the library's, as `endor reap` runs it) tears them
//! all down. Printed: sites reaped per second, the pass's duration, and the peak RSS during
//! the pass (VmHWM reset before it) against the RSS before it.
//!
//! cargo bench --bench reap [-- --counts 100,1000 --pg 50]   (scripts/bench/reap sets up XFS)

mod common;

use common::{acme_with_repo, status_kb};
use std::path::Path;
use std::time::Instant;

use endor::config::Config;
use endor::gateway::Route;
use endor::sites::{Imports, Sites};
use endor::store::{Preview, Store};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

async fn pg_source(base: &str) -> String {
    use sqlx::Connection;
    let name = format!("endor_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh starts it)");
    // The name is generated above: safe in DDL.
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{base}/{name}");
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int); \
         INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 1000) g;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    url
}

async fn parent(sites: &Sites, dir: &Path, name: &str, pg: Option<&str>) {
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(src.join("files")).unwrap();
    for i in 0..20 {
        std::fs::write(
            src.join(format!("files/{i}.txt")),
            format!("{i}").repeat(2048),
        )
        .unwrap();
    }
    let db = src.join("app.db");
    let ok = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('CREATE TABLE t (x)'); c.executemany('INSERT INTO t VALUES (?)', [(i,) for i in range(1000)]); c.commit()")
        .arg(&db)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    sites
        .create(
            name,
            "acme",
            None,
            Imports {
                files: Some(&src.join("files")),
                sqlite: Some(&db),
                postgres: pg,
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

async fn plant(
    store: &dyn Store,
    sites: &Sites,
    conn: &endor::ids::ConnectionId,
    number: i64,
    from: &str,
) {
    let name = format!("app-pr-{number}");
    sites
        .clone_site(from, &name, false, endor::sites::Guard::default())
        .await
        .unwrap();
    let site = store.site_by_name(&name).await.unwrap().unwrap();
    store
        .put_route(&Route::Static(sites.files_dir(&site)).row(&name, true))
        .await
        .unwrap();
    let now = endor::now_ms();
    store
        .put_preview(&Preview {
            site_id: Some(site.id),
            state: endor::store::PreviewState::Ready,
            head_sha: Some("a".repeat(40)),
            ready_sha: Some("a".repeat(40)),
            received_at: Some(now),
            expires_at: Some(now - 1000),
            ..Preview::new(conn.clone(), number, name, now)
        })
        .await
        .unwrap();
}

async fn run(base_dir: &Path, count: usize, pg: usize, pg_base: &str) {
    let dir = tempfile::tempdir_in(base_dir).unwrap();
    let url = format!("sqlite://{}", dir.path().join("endor.db").display());
    let mut config = Config::default();
    config.store.url = url.clone();
    config.storage.root = dir.path().join("sites");
    config.storage.git = dir.path().join("git");
    config.storage.logs = dir.path().join("logs");
    config.reaper.lease = endor::duration::HumanDuration(std::time::Duration::from_secs(600));
    let store = endor::store::open(&url, 8, &dir.path().join("master.key"))
        .await
        .unwrap();
    let (_ws, conn) = acme_with_repo(store.as_ref(), &config, "github:octo/app").await;
    let sites = Sites::new(store.clone(), &config);
    parent(&sites, dir.path(), "production", None).await;
    if pg > 0 {
        let src = pg_source(pg_base).await;
        parent(&sites, dir.path(), "production-pg", Some(&src)).await;
    }
    let t = Instant::now();
    for i in 0..count {
        plant(store.as_ref(), &sites, &conn, i as i64 + 1, "production").await;
    }
    for i in 0..pg {
        plant(
            store.as_ref(),
            &sites,
            &conn,
            (count + i) as i64 + 1,
            "production-pg",
        )
        .await;
    }
    let planted = t.elapsed();
    let reaper = endor::reaper::Reaper::standalone(store.clone(), &config);
    let rss_before = status_kb("self", "VmRSS:");
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let report = reaper.pass(false).await.unwrap();
    let took = t.elapsed().as_secs_f64();
    let peak = status_kb("self", "VmHWM:");
    let total = count + pg;
    assert_eq!(report.expired.len(), total, "{:?}", report.failed);
    let left = std::fs::read_dir(&config.storage.root)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.starts_with('.')
        })
        .count();
    println!(
        "{total:>5} sites ({count} files+SQLite, {pg} also PostgreSQL): pass {took:.2} s, {:.0} sites/s; RSS {} MiB before, peak {} MiB during; planted in {:.1} s; site dirs left: {} (the parents)",
        total as f64 / took,
        rss_before / 1024,
        peak / 1024,
        planted.as_secs_f64(),
        left
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var("ENDOR_BENCH_DIR").unwrap_or_else(|_| "/mnt/endor-xfs".into());
    let counts: Vec<usize> = arg("--counts")
        .unwrap_or_else(|| "100,1000".into())
        .split(',')
        .map(|c| c.parse().expect("--counts 100,1000"))
        .collect();
    let pg: usize = arg("--pg").map(|p| p.parse().unwrap()).unwrap_or(50);
    let pg_base = std::env::var("ENDOR_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let last = counts.len() - 1;
    for (i, c) in counts.iter().enumerate() {
        rt.block_on(run(
            Path::new(&base),
            *c,
            if i == last { pg } else { 0 },
            &pg_base,
        ));
    }
}
