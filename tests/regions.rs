//! Regions and many hosts (SPEC §9, §12), with the real binary: one PostgreSQL store, one
//! process answering webhooks and running the gateway, and three worker processes — two in
//! `eu-frankfurt` (shared storage), one in `us-east` — each advertising its own loopback
//! address as its host (127.0.0.2, .3, .4), and later a third European one (127.0.0.5).

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use endor::config::RegionConfig;
use endor::ids::ConnectionId;
use endor::store::{Preview, PreviewState, Store};
use serde_json::Value;
use support::TestStore;
use support::preview::*;

/// A static-file app on every address (`runtime.advertise` is not loopback's 127.0.0.1).
const TOML: &str = "[preview]\nbuild = [\"echo built > out.txt\"]\nstart = \"/usr/bin/python3 -m http.server $PORT --bind 0.0.0.0\"\nhealth = \"/out.txt\"\n";
/// The same, with a build long enough to kill its worker in the middle of it.
const SLOW_TOML: &str = "[preview]\nbuild = [\"sleep 4\", \"echo built > out.txt\"]\nstart = \"/usr/bin/python3 -m http.server $PORT --bind 0.0.0.0\"\nhealth = \"/out.txt\"\n";

const FRA_A: &str = "127.0.0.2";
const USE: &str = "127.0.0.3";
const FRA_B: &str = "127.0.0.4";
/// A European host that joins later.
const FRA_C: &str = "127.0.0.5";

fn region(root: PathBuf, aliases: &[&str], shared: bool) -> RegionConfig {
    RegionConfig {
        storage_root: root,
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        shared_storage: shared,
        ..Default::default()
    }
}

/// Connect `octo/{name}` in `region` through the CLI; its connection, and the region it got.
fn connect(
    s: &ServedBinary,
    name: &str,
    toml: &str,
    region: &str,
) -> (Repo, (ConnectionId, String), String) {
    let (repo, conn, answer) = s.repo_with(name, toml, &["--region", region]);
    (repo, conn, answer["region"].as_str().unwrap().to_string())
}

async fn settled(store: &dyn Store, conn: &ConnectionId, n: i64, what: &str) -> Preview {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(p) = store
            .preview(conn, n)
            .await
            .unwrap()
            .filter(|p| matches!(p.state, PreviewState::Ready | PreviewState::Failed))
        {
            return p;
        }
        assert!(Instant::now() < deadline, "{what}: never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until PR `n`'s preview is ready on `host`.
async fn running_on(store: &dyn Store, conn: &ConnectionId, n: i64, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = store.preview(conn, n).await.unwrap().unwrap();
        if p.state == PreviewState::Ready && p.host.as_deref() == Some(host) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PR {n} was not taken over by {host}: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every process below `pid` (children, grandchildren...), read from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The parent is the second field after the command's closing parenthesis.
        let after = &stat[stat.rfind(')').unwrap_or(0) + 1..];
        if let Some(ppid) = after
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u32>().ok())
        {
            parent_of.push((p, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let cur = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// A host dies: the worker and everything it started, at once (SIGKILL).
fn kill_host(pid: u32) {
    let all = descendants(pid);
    for p in std::iter::once(pid).chain(all) {
        // SAFETY: kill(2) with a pid we read; at worst it is gone already.
        unsafe {
            libc::kill(p as i32, libc::SIGKILL);
        }
    }
}

async fn gateway_get(s: &ServedBinary, site: &str, path: &str) -> (u16, String) {
    let gw = s.config.gateway.listen;
    match s
        .http
        .get(format!("http://{gw}{path}"))
        .header("host", format!("{site}.preview.localhost"))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

async fn served_by_gateway(s: &ServedBinary, site: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = gateway_get(s, site, "/out.txt").await;
        if code == 200 && body.trim() == "built" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{site}: the gateway answers {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn site_show(s: &ServedBinary, site: &str) -> Value {
    serde_json::from_str(&s.cli(&["--json", "site", "show", site])).unwrap()
}

fn fails(s: &ServedBinary, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_endor"))
        .args(["--config", s.cfg_path.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "endor {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn under(v: &Value, root: &Path) -> bool {
    Path::new(v["files_dir"].as_str().unwrap()).starts_with(root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regions_place_work_and_one_gateway_serves_every_host() {
    let db = TestStore::postgres().await;
    let url = db.url.clone();
    let mut s = ServedBinary::prepared(|c| {
        c.store.url = url;
        let base = c.storage.root.parent().unwrap().to_path_buf();
        c.regions.default = "eu-frankfurt".into();
        c.regions.list.insert(
            "eu-frankfurt".into(),
            region(base.join("fra"), &["europe", "eu"], true),
        );
        c.regions.list.insert(
            "us-east".into(),
            region(base.join("use"), &["america"], false),
        );
        // An access change reaches the gateway process within this bound.
        c.gateway.cache_ttl_ms = 1000;
    });
    let base = s.dir.path().to_path_buf();
    let (fra_root, use_root) = (base.join("fra"), base.join("use"));
    s.start_api(&["--roles", "api,gateway"]).await;
    let worker = |region: &str, addr: &str| {
        (
            vec!["--roles", "worker", "--region"]
                .into_iter()
                .map(String::from)
                .chain([region.to_string()])
                .collect::<Vec<_>>(),
            addr.to_string(),
        )
    };
    let mut pids = std::collections::HashMap::new();
    for (name, region, addr) in [
        ("fra-a", "eu-frankfurt", FRA_A),
        ("use", "us-east", USE),
        ("fra-b", "eu-frankfurt", FRA_B),
    ] {
        let (args, addr) = worker(region, addr);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = s.add_process(name, &args, &[("ENDOR__RUNTIME__ADVERTISE", &addr)]);
        pids.insert(addr, pid);
    }
    let store = s.store().await;

    // A worker's region must be a configured region's own name.
    let err = fails(&s, &["serve", "--roles", "worker", "--region", "europe"]);
    assert!(err.contains("jobs.region"), "{err}");

    // Repositories are connected to a region; an alias resolves to one concrete region.
    let (fra, fra_conn, r) = connect(&s, "fra", TOML, "europe");
    assert_eq!(r, "eu-frankfurt");
    let (usa, use_conn, r) = connect(&s, "usa", TOML, "america");
    assert_eq!(r, "us-east");
    let err = fails(
        &s,
        &[
            "repo",
            "connect",
            "acme",
            "github:octo/x",
            "--region",
            "mars",
            "--git-url",
            &fra.url(),
        ],
    );
    assert!(err.contains("\"mars\"") && err.contains("america"), "{err}");

    let listed: Value = serde_json::from_str(&s.cli(&["--json", "repo", "list"])).unwrap();
    let regions: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["repo"].as_str().unwrap(), c["region"].as_str().unwrap()))
        .collect();
    assert_eq!(
        regions,
        [("octo/fra", "eu-frankfurt"), ("octo/usa", "us-east")]
    );

    // A PR in each region: built by a worker of its region, served through the one gateway.
    let sha = fra.push_pr("f", 1, "eu");
    assert_eq!(
        s.pr_event(
            &fra_conn,
            "octo/fra",
            Pr::new("opened", 1, &sha, "f", "octo/fra")
        )
        .await,
        202
    );
    let sha = usa.push_pr("f", 1, "us");
    assert_eq!(
        s.pr_event(
            &use_conn,
            "octo/usa",
            Pr::new("opened", 1, &sha, "f", "octo/usa")
        )
        .await,
        202
    );
    let p_fra = settled(store.as_ref(), &fra_conn.0, 1, "fra-pr-1").await;
    let p_use = settled(store.as_ref(), &use_conn.0, 1, "usa-pr-1").await;
    assert_eq!(p_fra.state, PreviewState::Ready, "{p_fra:?}");
    assert_eq!(p_use.state, PreviewState::Ready, "{p_use:?}");
    let fra_host = p_fra.host.clone().unwrap();
    assert!(
        [FRA_A, FRA_B].contains(&fra_host.as_str()),
        "built on {fra_host}"
    );
    assert_eq!(p_use.host.as_deref(), Some(USE));
    served_by_gateway(&s, "fra-pr-1").await;
    served_by_gateway(&s, "usa-pr-1").await;
    let shown = site_show(&s, "fra-pr-1");
    assert_eq!(shown["region"], "eu-frankfurt");
    assert_eq!(
        shown["region_names"],
        serde_json::json!(["eu-frankfurt", "europe", "eu"])
    );
    assert!(under(&shown, &fra_root), "{shown}");
    let shown = site_show(&s, "usa-pr-1");
    assert_eq!(shown["region"], "us-east");
    assert!(under(&shown, &use_root), "{shown}");

    // Sites made by hand: an alias resolves, a clone stays in its parent's region, nothing
    // crosses regions.
    let files = base.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("a.txt"), "a").unwrap();
    let made: Value = serde_json::from_str(&s.cli(&[
        "--json",
        "site",
        "create",
        "eu-parent",
        "--workspace",
        "acme",
        "--region",
        "eu",
        "--files",
        files.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(made["site"], "eu-parent");
    s.cli(&[
        "site",
        "create",
        "us-parent",
        "--workspace",
        "acme",
        "--region",
        "america",
    ]);
    s.cli(&["site", "clone", "eu-parent", "eu-child"]);
    let child = site_show(&s, "eu-child");
    assert_eq!(child["region"], "eu-frankfurt");
    assert!(under(&child, &fra_root), "{child}");
    assert_eq!(
        std::fs::read_to_string(Path::new(child["files_dir"].as_str().unwrap()).join("a.txt"))
            .unwrap(),
        "a"
    );
    let err = fails(
        &s,
        &[
            "site",
            "clone",
            "eu-parent",
            "eu-other",
            "--region",
            "america",
        ],
    );
    assert!(err.contains("stays in its parent's region"), "{err}");
    assert!(store.site_by_name("eu-other").await.unwrap().is_none());
    s.cli(&[
        "site",
        "clone",
        "eu-parent",
        "eu-same",
        "--region",
        "europe",
    ]);
    s.cli(&["site", "delete", "eu-same"]);
    let err = fails(&s, &["site", "clone", "eu-parent", "us-parent"]);
    assert!(err.contains("across regions"), "{err}");
    let err = fails(&s, &["site", "sync", "eu-parent", "us-parent"]);
    assert!(err.contains("across regions"), "{err}");
    let err = fails(
        &s,
        &[
            "site",
            "create",
            "nowhere",
            "--workspace",
            "acme",
            "--region",
            "mars",
        ],
    );
    assert!(err.contains("\"mars\""), "{err}");
    assert!(store.site_by_name("nowhere").await.unwrap().is_none());
    assert_eq!(site_show(&s, "us-parent")["region"], "us-east");

    // An access change made elsewhere (the CLI) applies in the gateway process within its
    // cache period.
    s.cli(&[
        "site",
        "access",
        "usa-pr-1",
        "--basic-auth",
        "ann:secret-pass",
    ]);
    let changed = Instant::now();
    loop {
        if gateway_get(&s, "usa-pr-1", "/out.txt").await.0 == 401 {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(4),
            "the access change never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.cli(&["site", "access", "usa-pr-1", "--basic-auth", "off"]);

    // A slow build in Europe; its worker's host dies in the middle of it: the other European
    // worker finishes the job once the lease is over, and the job ran to its end once.
    let (slow, slow_conn, _) = connect(&s, "slow", SLOW_TOML, "eu-frankfurt");
    let sha = slow.push_pr("f", 2, "slow");
    assert_eq!(
        s.pr_event(
            &slow_conn,
            "octo/slow",
            Pr::new("opened", 2, &sha, "f", "octo/slow")
        )
        .await,
        202
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let running = loop {
        let p = store.preview(&slow_conn.0, 2).await.unwrap();
        if let Some(p) = p.filter(|p| p.state == PreviewState::Building) {
            break p;
        }
        assert!(Instant::now() < deadline, "the slow build never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Which worker holds it: its lease owner is `endor-{pid}/{worker}`.
    let jobs = store
        .jobs_for_key(&endor::jobs::pr_key(&slow_conn.0, 2))
        .await
        .unwrap();
    let job = jobs
        .iter()
        .find(|j| j.state == "running")
        .expect("a running job");
    let owner: u32 = job
        .lease_owner
        .as_deref()
        .unwrap()
        .trim_start_matches("endor-")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let dead = pids
        .iter()
        .find(|(_, p)| **p == owner)
        .map(|(a, _)| a.clone())
        .unwrap();
    assert!(
        [FRA_A, FRA_B].contains(&dead.as_str()),
        "the European job ran on {dead}"
    );
    let survivor = if dead == FRA_A { FRA_B } else { FRA_A };
    kill_host(owner);
    let p = settled(store.as_ref(), &slow_conn.0, 2, "slow-pr-2").await;
    assert_eq!(p.state, PreviewState::Ready, "{p:?} ({running:?})");
    assert_eq!(p.host.as_deref(), Some(survivor));
    let jobs = store
        .jobs_for_key(&endor::jobs::pr_key(&slow_conn.0, 2))
        .await
        .unwrap();
    let done: Vec<_> = jobs
        .iter()
        .filter(|j| j.kind == endor::jobs::JobKind::PullRequest)
        .collect();
    assert_eq!(done.len(), 1, "{jobs:?}");
    assert_eq!(
        (done[0].state.as_str(), done[0].attempts),
        ("done", 2),
        "{jobs:?}"
    );
    served_by_gateway(&s, "slow-pr-2").await;

    // The European preview of the dead host, if it ran there, is started again by the
    // survivor (shared storage).
    if fra_host == dead {
        running_on(store.as_ref(), &fra_conn.0, 1, survivor).await;
    }
    served_by_gateway(&s, "fra-pr-1").await;

    // A new European host joins, and the survivor dies while serving both European previews:
    // the newcomer takes both over once the survivor's lease is over.
    let pid = s.add_process(
        "fra-c",
        &["--roles", "worker", "--region", "eu-frankfurt"],
        &[("ENDOR__RUNTIME__ADVERTISE", FRA_C)],
    );
    pids.insert(FRA_C.to_string(), pid);
    kill_host(pids[survivor]);
    running_on(store.as_ref(), &fra_conn.0, 1, FRA_C).await;
    running_on(store.as_ref(), &slow_conn.0, 2, FRA_C).await;
    served_by_gateway(&s, "fra-pr-1").await;
    served_by_gateway(&s, "slow-pr-2").await;

    // The American host dies; its region's storage is not shared: its preview is marked
    // failed with that reason (by a worker still alive), and the gateway says so.
    kill_host(pids[USE]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let lost = loop {
        let p = store.preview(&use_conn.0, 1).await.unwrap().unwrap();
        if p.state == PreviewState::Failed {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "usa-pr-1 never marked failed: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let why = lost.reason.unwrap_or_default();
    assert!(why.contains(USE) && why.contains("shared_storage"), "{why}");
    let (code, _) = gateway_get(&s, "usa-pr-1", "/").await;
    assert!(code >= 500, "the gateway answers {code} for a lost preview");

    // `site list` (read in a handful of queries for every site) says of each site what
    // `site show` (read one site at a time) says: parents, previews with their steps, tags,
    // resources, generations, regions.
    s.cli(&["site", "tag", "add", "eu-child", "demo"]);
    let list: Value = serde_json::from_str(&s.cli(&["--json", "site", "list"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 6, "{list:?}");
    for entry in list {
        let name = entry["name"].as_str().unwrap();
        assert_eq!(*entry, site_show(&s, name), "{name}: list and show differ");
    }
    let tagged: Value =
        serde_json::from_str(&s.cli(&["--json", "site", "list", "--tag", "demo"])).unwrap();
    assert_eq!(tagged.as_array().unwrap().len(), 1);
    assert_eq!(tagged[0]["parent"], "eu-parent");

    // Nothing ran twice: each European site process lives once.
    let live: HashSet<String> = store
        .list_previews()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.state == PreviewState::Ready)
        .filter_map(|p| p.host)
        .collect();
    assert_eq!(live, HashSet::from([FRA_C.to_string()]));
    for site in ["fra-pr-1", "slow-pr-2"] {
        let found = site_processes(site);
        assert_eq!(found.len(), 1, "{site} runs more than once: {found:?}");
    }
    for name in ["fra-a", "fra-b", "fra-c", "use"] {
        let errors = s.process_errors(name);
        assert!(!errors.contains("panicked"), "{name}: {errors}");
    }
    s.stop();
    db.cleanup().await;
}

/// Site processes (the app, not its sandbox wrappers) whose environment says `ENDOR_SITE=site`.
fn site_processes(site: &str) -> Vec<String> {
    let want = format!("ENDOR_SITE={site}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| {
            let p = e.path();
            let env = std::fs::read(p.join("environ")).unwrap_or_default();
            let cmd = std::fs::read(p.join("cmdline")).unwrap_or_default();
            let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
            env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
                && String::from_utf8_lossy(argv0).contains("python")
        })
        .map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            format!(
                "{stat} {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            )
        })
        .collect()
}
