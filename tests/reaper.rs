//! The reaper end to end: real previews that expire (status comment on a fake forge), a
//! scheduled pass inside `endor serve`, the real `endor reap` binary killed at each teardown
//! step, planted orphans, and two replicas on one PostgreSQL store.

mod support;

use endor::store::PreviewState;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use endor::config::Config;
use endor::duration::HumanDuration;
use endor::gateway::Route;
use endor::sites::{Imports, Sites};
use endor::store::{Preview, Store};
use serde_json::Value;
use support::TestStore;
use support::fake_forge::{FakeForge, TOKEN};
use support::preview::*;

fn toml_with_ttl(ttl: &str) -> String {
    format!(
        "[preview]\nttl = \"{ttl}\"\nbuild = [\"mkdir -p out\", \"cp index.html out/\"]\nroot = \"out\"\n"
    )
}

fn github(forge: &FakeForge) -> impl FnOnce(&mut Config) {
    let url = forge.github_url();
    move |c: &mut Config| {
        c.github.api_url = url;
        c.github.token = TOKEN.into();
        c.writeback.rate_per_second = 100.0;
        c.writeback.burst = 50;
        c.reaper.grace = HumanDuration(Duration::from_secs(3600));
    }
}

fn reaper_of(h: &Harness, config: &Config) -> endor::reaper::Reaper {
    endor::reaper::Reaper::standalone(h.state.store.clone(), config)
}

fn status_comment(forge: &FakeForge, repo: &str, n: u64) -> Vec<String> {
    forge.with(|f| {
        f.comments_on(repo, n)
            .into_iter()
            .filter(|c| c.body.starts_with("<!-- endor:status -->"))
            .map(|c| c.body)
            .collect()
    })
}

/// Expired previews are destroyed (410, no data, deployment inactive, comment "expired" with
/// how to bring it back); fresh and extended ones are kept; a dry run changes nothing; the
/// warning edits the one status comment; `/preview deploy` brings an expired one back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_end_to_end() {
    let forge = FakeForge::start().await;
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, github(&forge)).await;
    let (short, c_short) = h.repo("short", &toml_with_ttl("3s")).await;
    let (long, c_long) = h.repo("long", &toml_with_ttl("72h")).await;
    let sha_a = short.push_pr("a", 1, "a");
    let sha_b = long.push_pr("b", 2, "b");
    let sha_c = short.push_pr("c", 3, "c");
    for (conn, repo, n, sha, branch) in [
        (&c_short, "octo/short", 1, &sha_a, "a"),
        (&c_long, "octo/long", 2, &sha_b, "b"),
        (&c_short, "octo/short", 3, &sha_c, "c"),
    ] {
        assert_eq!(
            h.pr_event(conn, repo, Pr::new("opened", n, sha, branch, repo))
                .await,
            202
        );
        let p = h.ready(&conn.0, n, None).await;
        let left = p.expires_at.unwrap() - endor::now_ms();
        assert!(left > 0, "expires_at is in the future");
    }
    // C is extended far beyond its TTL (as `/preview extend` does).
    let mut c = h.preview(&c_short.0, 3).await.unwrap();
    c.expires_at = Some(endor::now_ms() + 3_600_000);
    h.store().put_preview(&c).await.unwrap();
    let a_site = h.sites().show("short-pr-1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(3200)).await;

    let mut config = h.state.config.clone();
    config.reaper.warn_before = HumanDuration(Duration::from_secs(100 * 3600));
    let reaper = reaper_of(&h, &config);
    // Dry run: reported, nothing changed.
    let dry = reaper.pass(true).await.unwrap();
    assert_eq!(dry.expired, vec!["short-pr-1"]);
    assert_eq!(
        h.preview(&c_short.0, 1).await.unwrap().state,
        PreviewState::Ready
    );
    assert_eq!(h.get("short-pr-1", "/").await.0, 200);
    assert!(a_site.files_dir.exists());

    let r = reaper.pass(false).await.unwrap();
    assert_eq!(r.expired, vec!["short-pr-1"], "{r:?}");
    let a = h.preview(&c_short.0, 1).await.unwrap();
    assert_eq!(
        (a.state, a.teardown_step.as_deref()),
        (PreviewState::Expired, None)
    );
    assert_eq!(h.get("short-pr-1", "/").await.0, 410);
    assert!(!a_site.files_dir.exists());
    assert!(
        h.store().site(&a_site.id).await.unwrap().unwrap().state
            == endor::store::SiteState::Deleted
    );
    assert_eq!(h.get("long-pr-2", "/").await.0, 200);
    assert_eq!(h.get("short-pr-3", "/").await.0, 200);
    // B expires within warn_before: warned once, in its one status comment.
    assert!(r.warned.contains(&"long-pr-2".to_string()), "{r:?}");
    h.settled(&c_short.0).await;
    h.settled(&c_long.0).await;
    let comments = status_comment(&forge, "octo/short", 1);
    assert_eq!(comments.len(), 1);
    assert!(comments[0].contains("expired"), "{}", comments[0]);
    assert!(comments[0].contains("/preview deploy"), "{}", comments[0]);
    let dep = forge.with(|f| {
        f.deployments
            .iter()
            .filter(|d| d.repo == "octo/short")
            .map(|d| d.states.last().cloned().unwrap_or_default())
            .collect::<Vec<_>>()
    });
    assert!(dep.iter().any(|s| s == "inactive"), "{dep:?}");
    let b = status_comment(&forge, "octo/long", 2);
    assert_eq!(b.len(), 1);
    assert!(b[0].contains("This preview expires"), "{}", b[0]);
    // A protected site is never reaped, even past its expiry.
    let mut b = h.preview(&c_long.0, 2).await.unwrap();
    let original = b.expires_at;
    h.sites()
        .protect("long-pr-2", true, &Default::default())
        .await
        .unwrap();
    b.expires_at = Some(endor::now_ms() - 1000);
    h.store().put_preview(&b).await.unwrap();
    let kept = reaper.pass(false).await.unwrap();
    assert!(kept.expired.is_empty(), "{kept:?}");
    assert_eq!(h.get("long-pr-2", "/").await.0, 200);
    h.sites()
        .protect("long-pr-2", false, &Default::default())
        .await
        .unwrap();
    b.expires_at = original;
    h.store().put_preview(&b).await.unwrap();
    // A second pass: nothing new to do, no second warning.
    let again = reaper.pass(false).await.unwrap();
    assert!(
        again.expired.is_empty() && again.warned.is_empty(),
        "{again:?}"
    );
    // The workspace's owner was told: each preview ready once, B's coming expiry once, A's
    // removal once.
    let told = h.store().all_notifications().await.unwrap();
    let count = |kind: &str, subject: &str| {
        told.iter()
            .filter(|n| n.kind == kind && n.subject.contains(subject))
            .count()
    };
    assert_eq!(count("preview_ready", "short-pr-1"), 1, "{told:?}");
    assert_eq!(count("expiring_soon", "long-pr-2"), 1, "{told:?}");
    assert_eq!(count("reaped", "short-pr-1"), 1, "{told:?}");
    assert_eq!(count("reaped", "long-pr-2"), 0, "{told:?}");

    // A push to an expired PR brings it back (as `/preview deploy` does).
    let sha_a2 = short.push_pr("a", 1, "a2");
    assert_eq!(
        h.pr_event(
            &c_short,
            "octo/short",
            Pr::new("synchronize", 1, &sha_a2, "a", "octo/short")
        )
        .await,
        202
    );
    h.wait(&c_short.0, 1, &[PreviewState::Ready], Some(&sha_a2))
        .await;
    assert_eq!(h.get("short-pr-1", "/").await.1.trim(), "a2");
    h.stop().await;
    db.cleanup().await;
}

/// A process as a preview's: its own process group, `ENDOR_SITE` and `ENDOR_FILES_DIR` set,
/// listening on a port.
fn site_process(site: &str, files_dir: &Path) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg("import socket,sys,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(600)")
        .arg(port.to_string())
        .env("ENDOR_SITE", site)
        .env("ENDOR_FILES_DIR", files_dir)
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "site process did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

/// An expired preview as the lifecycle leaves a ready one: a site cloned from `production`,
/// a running process, a proxy route, a `ready` row past its expiry.
async fn planted_preview(
    store: &dyn Store,
    sites: &Sites,
    conn: &endor::ids::ConnectionId,
    number: i64,
    with_process: bool,
) -> (Preview, Option<Child>) {
    let name = format!("app-pr-{number}");
    sites
        .clone_site("production", &name, false, endor::sites::Guard::default())
        .await
        .unwrap();
    let site = store.site_by_name(&name).await.unwrap().unwrap();
    let files = sites.files_dir(&site);
    let (child, port) = if with_process {
        let (c, p) = site_process(&name, &files);
        (Some(c), Some(p))
    } else {
        (None, None)
    };
    store
        .put_route(&match port {
            Some(p) => Route::local(p).row(&name, true),
            None => Route::Static(files.clone()).row(&name, true),
        })
        .await
        .unwrap();
    let now = endor::now_ms();
    let p = Preview {
        site_id: Some(site.id),
        state: PreviewState::Ready,
        head_sha: Some("a".repeat(40)),
        ready_sha: Some("a".repeat(40)),
        port: port.map(i64::from),
        pid: child.as_ref().map(|c| c.id() as i64),
        received_at: Some(now),
        expires_at: Some(now - 1000),
        ..Preview::new(conn.clone(), number, name, now)
    };
    store.put_preview(&p).await.unwrap();
    (p, child)
}

fn gone(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

/// `endor reap` killed (abort, as SIGKILL) right after each teardown step: the next pass
/// finishes the teardown and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_teardown_step_the_next_pass_finishes() {
    let dir = support::reflink_dir();
    let store_url = format!("sqlite://{}", dir.path().join("endor.db").display());
    let mut config = harness_config(dir.path(), &store_url);
    config.reaper.lease = HumanDuration(Duration::from_secs(1));
    let cfg_path = dir.path().join("endor.toml");
    std::fs::write(&cfg_path, toml::to_string(&config).unwrap()).unwrap();
    let store = endor::store::connect(&store_url, 2, support::test_keyring())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    endor::service::create_user(store.as_ref(), "owner", None, None)
        .await
        .unwrap();
    endor::service::create_workspace(store.as_ref(), "acme", "owner")
        .await
        .unwrap();
    let conn = endor::service::connect_repo(
        store.as_ref(),
        &config,
        "acme",
        "github:octo/app",
        None,
        Some("file:///nonexistent"),
    )
    .await
    .unwrap()
    .connection_id;
    let sites = Sites::new(store.clone(), &config);
    sqlite_parent(&sites, dir.path(), 100).await;
    let reap = |crash: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_endor"));
        c.args(["--config", cfg_path.to_str().unwrap(), "--json", "reap"]);
        if let Some(step) = crash {
            c.env("ENDOR_CRASH_AT", format!("teardown:{step}"));
        }
        c.output().unwrap()
    };
    // `endor reap --dry-run --json` reports and changes nothing.
    {
        let (p, child) = planted_preview(store.as_ref(), &sites, &conn, 99, false).await;
        assert!(child.is_none());
        let out = Command::new(env!("CARGO_BIN_EXE_endor"))
            .args([
                "--config",
                cfg_path.to_str().unwrap(),
                "reap",
                "--dry-run",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["dry_run"], true);
        assert_eq!(report["expired"], serde_json::json!([p.site_name]));
        assert_eq!(
            store.preview(&conn, 99).await.unwrap().unwrap().state,
            PreviewState::Ready
        );
        assert!(
            config
                .storage
                .root
                .join(p.site_id.as_ref().unwrap())
                .exists()
        );
        let out = reap(None);
        assert!(out.status.success());
        assert_eq!(
            store.preview(&conn, 99).await.unwrap().unwrap().state,
            PreviewState::Expired
        );
    }
    for (i, step) in ["begin", "stop", "route", "data", "logs"]
        .iter()
        .enumerate()
    {
        let number = i as i64 + 1;
        let (p, child) = planted_preview(store.as_ref(), &sites, &conn, number, true).await;
        let mut child = child.unwrap();
        let site_id = p.site_id.clone().unwrap();
        let site_dir = config.storage.root.join(&site_id);
        assert!(site_dir.exists());
        let out = reap(Some(step));
        assert!(!out.status.success(), "the crash point {step} did not fire");
        let mid = store.preview(&conn, number).await.unwrap().unwrap();
        assert_eq!(
            mid.state,
            PreviewState::Destroying,
            "after a crash at {step}"
        );
        assert_eq!(
            mid.teardown_step.as_deref(),
            Some(format!("expired/{step}").as_str())
        );
        // The next pass, once the dead reaper's lease is over, finishes the teardown.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let out = reap(None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report["resumed"],
            serde_json::json!([p.site_name]),
            "{report}"
        );
        let end = store.preview(&conn, number).await.unwrap().unwrap();
        assert_eq!(
            (end.state, end.teardown_step.as_deref(), end.pid),
            (PreviewState::Expired, None, None),
            "after a crash at {step}"
        );
        assert!(!site_dir.exists(), "site data left after a crash at {step}");
        assert_eq!(
            store.site(&site_id).await.unwrap().unwrap().state,
            endor::store::SiteState::Deleted
        );
        assert_eq!(
            store.route(&p.site_name).await.unwrap().unwrap().kind,
            "gone"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(&mut child) {
            assert!(
                Instant::now() < deadline,
                "site process left after a crash at {step}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Its logs stay for logs.retention, the teardown their last event.
        let events = support::log_text(&config.storage.logs, &site_id, endor::logs::Service::Endor);
        assert!(
            events.contains("torn down: "),
            "after a crash at {step}: {events}"
        );
        // Each teardown ran as one `expire` job, taken over once.
        let jobs = store
            .jobs_for_key(&format!("{conn}#{number}"))
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!((jobs[0].state.as_str(), jobs[0].attempts), ("done", 2));
    }
    // Nothing else is left under the storage root: production, trash emptied.
    let left: Vec<_> = std::fs::read_dir(&config.storage.root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".endor-probe") && n != ".trash" && n != ".endor-reflink")
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

/// Processes whose command line names a path under `dir`.
fn processes_in(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

fn set_old(path: &Path) {
    let t = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    filetime::set_file_mtime(path, t).unwrap();
}

/// Orphans of each kind are swept after the grace period; a site being created, and young
/// orphans, are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_swept_and_sites_being_created_are_not() {
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, |c| {
        c.reaper.grace = HumanDuration(Duration::from_secs(1));
    })
    .await;
    let sites = h.sites();
    sqlite_parent(&sites, h.dir.path(), 100).await;
    let root = h.state.config.storage.root.clone();
    // An orphaned site directory (files and a SQLite database) no site row owns.
    let orphan_dir = root.join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(orphan_dir.join("live/files")).unwrap();
    std::fs::create_dir_all(orphan_dir.join("live/sqlite")).unwrap();
    std::fs::write(orphan_dir.join("live/files/a.txt"), "x").unwrap();
    std::fs::write(orphan_dir.join("live/sqlite/main.db"), "db").unwrap();
    set_old(&orphan_dir);
    // An orphaned process (and the port it holds) of a site that is gone.
    let ghost_files = root
        .join(uuid::Uuid::new_v4().to_string())
        .join("live/files");
    let (mut ghost, ghost_port) = site_process("ghost-pr-1", &ghost_files);
    // An orphaned per-site PostgreSQL server: its site row is gone (deleted) but the server
    // still runs in the site's directory.
    let (_src_name, src_url) = support::pg_source_db().await;
    let pg_files = h.dir.path().join("pg-files");
    std::fs::create_dir_all(&pg_files).unwrap();
    sites
        .create(
            "pgsite",
            "acme",
            None,
            Imports {
                files: Some(&pg_files),
                postgres: Some(&src_url),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let pg_site = h.store().site_by_name("pgsite").await.unwrap().unwrap();
    assert!(
        !processes_in(&root.join(&pg_site.id)).is_empty(),
        "no postgres server"
    );
    h.store()
        .set_site_state(&pg_site.id, endor::store::SiteState::Deleted)
        .await
        .unwrap();
    set_old(&root.join(&pg_site.id));
    // An orphaned route.
    let mut route = Route::local(ghost_port).row("ghost-pr-1", true);
    route.updated_at = 1_000;
    h.store().put_route(&route).await.unwrap();
    // A site being created right now: row `creating`, directory present.
    let creating = h
        .store()
        .create_site(&endor::store::NewSite {
            name: "new-pr-1".into(),
            workspace_id: h
                .store()
                .workspace_by_name("acme")
                .await
                .unwrap()
                .unwrap()
                .id,
            region: "default".into(),
            parent_id: None,
            read_only: false,
        })
        .await
        .unwrap();
    let creating_dir = root.join(&creating.id);
    std::fs::create_dir_all(creating_dir.join("live/files")).unwrap();
    set_old(&creating_dir);
    let (mut creating_proc, _) = site_process("new-pr-1", &sites.files_dir(&creating));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A young orphan (inside the grace period).
    let young = root.join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(&young).unwrap();

    let reaper = reaper_of(&h, &h.state.config);
    let dry = reaper.pass(true).await.unwrap();
    assert_eq!(
        (dry.swept.dirs, dry.swept.processes, dry.swept.routes),
        (2, 1, 1),
        "{dry:?}"
    );
    assert!(!processes_in(&root.join(&pg_site.id)).is_empty());
    assert!(orphan_dir.exists() && !gone(&mut ghost));
    let r = reaper.pass(false).await.unwrap();
    assert_eq!(
        (r.swept.dirs, r.swept.processes, r.swept.routes),
        (2, 1, 1),
        "{r:?}"
    );
    assert!(!orphan_dir.exists());
    assert!(!root.join(&pg_site.id).exists());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_in(&root.join(&pg_site.id)).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the orphaned postgres server still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(&mut ghost) {
        assert!(Instant::now() < deadline, "orphaned process left");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ghost_port)).is_err(),
        "port still held"
    );
    assert!(h.store().route("ghost-pr-1").await.unwrap().is_none());
    assert!(creating_dir.exists() && young.exists());
    assert!(
        !gone(&mut creating_proc),
        "a live site's process was killed"
    );
    assert!(sites.show("production").await.unwrap().files_dir.exists());
    let _ = creating_proc.kill();
    let _ = creating_proc.wait();
    h.stop().await;
    db.cleanup().await;
}

/// Two replicas sharing a PostgreSQL store, one pass each at the same moment: every expired
/// preview is torn down exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_reap_each_site_once() {
    let db = TestStore::postgres().await;
    let h = Harness::start(&db).await;
    let sites = h.sites();
    sqlite_parent(&sites, h.dir.path(), 100).await;
    let conn = h.connect("octo/app", "file:///nonexistent").await.0;
    let n = 12;
    for i in 1..=n {
        planted_preview(h.store(), &sites, &conn, i, false).await;
    }
    // A second endor process's view of the same store.
    let second = endor::store::connect(&db.url, 4, support::test_keyring())
        .await
        .unwrap();
    let a = reaper_of(&h, &h.state.config);
    let b = endor::reaper::Reaper::standalone(second, &h.state.config);
    let (ra, rb) = tokio::join!(a.pass(false), b.pass(false));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut all: Vec<String> = ra.expired.iter().chain(&rb.expired).cloned().collect();
    all.sort();
    let mut want: Vec<String> = (1..=n).map(|i| format!("app-pr-{i}")).collect();
    want.sort();
    assert_eq!(all, want, "a: {ra:?} b: {rb:?}");
    for i in 1..=n {
        let jobs = h
            .store()
            .jobs_for_key(&format!("{conn}#{i}"))
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!(
            h.preview(&conn, i as u64).await.unwrap().state,
            PreviewState::Expired
        );
    }
    h.stop().await;
    db.cleanup().await;
}

/// `endor serve` runs passes on `reaper.schedule`; a bad schedule stops it at start, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_schedule_and_refuses_a_bad_one() {
    let served = ServedBinary::start(|c| {
        c.reaper.enabled = true;
        c.reaper.schedule = "*/1 * * * * *".into();
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = served.metrics().await;
        if m.contains("endor_reaper_runs_total{outcome=\"done\"}") {
            for series in [
                "endor_sites_reaped_total",
                "endor_orphans_swept_total{kind=\"dirs\"}",
                "endor_orphans_swept_total{kind=\"processes\"}",
                "endor_orphans_swept_total{kind=\"routes\"}",
            ] {
                assert!(m.contains(series), "{series} missing: {m}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "no scheduled pass ran: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cfg: PathBuf = served.cfg_path.clone();
    for (bad, why) in [
        ("* * *", "fields"),
        ("0 */5 * * * * * *", "fields"),
        ("0 61 * * * *", "cron"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_endor"))
            .args(["--config", cfg.to_str().unwrap(), "serve"])
            .env("ENDOR__REAPER__SCHEDULE", bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("reaper.schedule") && err.contains(why),
            "{bad}: {err}"
        );
    }
    served.stop();
}
