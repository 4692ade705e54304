//! The preview lifecycle end to end: real git (a bare repository on disk is the PR's remote),
//! signed webhooks shaped like GitHub's (the fixtures, rewritten), the real server, workers and
//! gateway, real parent databases (SQLite and PostgreSQL), real site processes.

mod support;

use endor::store::PreviewState;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::TestStore;
use support::preview::*;

const APP_TOML: &str = r#"
[preview]
parent = "production"
build = ["test -f app.py", "echo built > built.txt"]
start = "/usr/bin/python3 app.py"
health = "/health"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_push_close_with_a_sqlite_parent() {
    let db = TestStore::sqlite().await;
    let h = Harness::start(&db).await;
    sqlite_parent(&h.sites(), h.dir.path(), 100).await;
    let (repo, conn) = h.repo("shop", APP_TOML).await;
    let site = "shop-pr-7";

    // Unknown before the PR opens.
    assert_eq!(h.get(site, "/").await.0, 404);
    let sha1 = repo.push_pr("feature", 7, "first");
    let pr = |action, sha| Pr::new(action, 7, sha, "feature", "octo/shop");
    assert_eq!(
        h.pr_event(&conn, "octo/shop", pr("opened", &sha1)).await,
        202
    );
    let p = h.ready(&conn.0, 7, None).await;
    assert_eq!(p.ready_sha.as_deref(), Some(sha1.as_str()));
    assert_eq!(p.site_name, site);

    // The PR's code on a copy of the parent's data.
    let (code, body) = h.get(site, "/").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "page=first logo=parent-logo accounts=100 notes=");
    assert_eq!(h.post(site, "/kept-note").await, 200);
    assert!(h.get(site, "/").await.1.ends_with("notes=kept-note"));

    // Every step timed; the build log kept; the launch measured.
    let details = h.sites().show(site).await.unwrap();
    let steps: Vec<_> = details
        .preview
        .as_ref()
        .unwrap()
        .steps
        .iter()
        .map(|s| (s.step.clone(), s.ok))
        .collect();
    let names: Vec<_> = steps.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "fetch", "config", "clone", "build", "start", "health", "route"
        ]
    );
    assert!(steps.iter().all(|s| s.1 == Some(true)), "{steps:?}");
    let log = support::log_text(
        &h.dir.path().join("logs"),
        &details.id,
        endor::logs::Service::Build,
    );
    assert!(log.contains("$ echo built > built.txt"), "{log}");
    let metrics = h
        .http
        .get(format!("http://{}/metrics", h.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("endor_preview_launch_seconds_count 1"),
        "{metrics}"
    );

    // A push: new code, the data written in the preview kept.
    let sha2 = repo.push_pr("feature", 7, "second");
    assert_eq!(
        h.pr_event(&conn, "octo/shop", pr("synchronize", &sha2))
            .await,
        202
    );
    let p2 = h.ready(&conn.0, 7, Some(&sha2)).await;
    assert_eq!(p2.site_id, p.site_id, "an update keeps the site");
    let (code, body) = h.get(site, "/").await;
    assert_eq!(code, 200);
    assert_eq!(
        body,
        "page=second logo=parent-logo accounts=100 notes=kept-note"
    );
    let (old_pid, old_port) = (p.pid.unwrap(), p.port.unwrap());
    eventually("the old process stops after the update", || {
        !pid_alive(old_pid)
    })
    .await;
    assert!(!port_open(old_port));

    // Close: 410, and nothing left.
    let site_dir = details
        .files_dir
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(site_dir.exists());
    assert_eq!(
        h.pr_event(&conn, "octo/shop", pr("closed", &sha2)).await,
        202
    );
    let p3 = h.wait(&conn.0, 7, &[PreviewState::Destroyed], None).await;
    assert_eq!(h.get(site, "/").await.0, 410);
    assert!(!site_dir.exists(), "site files left behind");
    // Its logs stay for logs.retention: what happened can still be read, the teardown last.
    let logs_dir = h.dir.path().join("logs");
    let events = support::log_text(&logs_dir, &details.id, endor::logs::Service::Endor);
    assert!(
        events.contains("\nready at ")
            && events.contains("\ntorn down: ")
            && events.contains("\ndestroyed"),
        "{events}"
    );
    // Past the retention, the reaper removes them.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut config = h.state.config.clone();
    config.logs.retention = endor::duration::HumanDuration(Duration::ZERO);
    let reaper = endor::reaper::Reaper::standalone(h.state.store.clone(), &config);
    let pass = reaper.pass(false).await.unwrap();
    assert!(pass.swept.logs.sites >= 1, "{pass:?}");
    assert!(
        !logs_dir.join(&details.id).exists(),
        "logs left behind past retention"
    );
    let (pid, port) = (p2.pid.unwrap(), p2.port.unwrap());
    eventually("the site process is gone", || !pid_alive(pid)).await;
    assert!(!port_open(port), "port still open");
    assert!(p3.pid.is_none() && p3.port.is_none());
    assert!(h.store().site_by_name(site).await.unwrap().is_none());
    // The parent is untouched.
    assert!(
        h.store()
            .site_by_name("production")
            .await
            .unwrap()
            .is_some()
    );
    h.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_parent_on_a_postgres_store() {
    let db = TestStore::postgres().await;
    let h = Harness::start(&db).await;
    let src_name = pg_parent(&h.sites(), h.dir.path()).await;
    let (repo, conn) = h.repo("api", APP_TOML).await;
    let sha = repo.push_pr("feature", 3, "pg-preview");
    let pr = |action| Pr::new(action, 3, &sha, "feature", "octo/api");
    assert_eq!(h.pr_event(&conn, "octo/api", pr("opened")).await, 202);
    h.ready(&conn.0, 3, None).await;
    let (code, body) = h.get("api-pr-3", "/").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "page=pg-preview logo=pg-logo accounts=100 notes=");
    assert_eq!(h.post("api-pr-3", "/only-in-preview").await, 200);
    // The parent's database does not see the preview's writes.
    let parent = h.sites().show("production").await.unwrap();
    let preview = h.sites().show("api-pr-3").await.unwrap();
    assert_ne!(parent.database_urls, preview.database_urls);
    let pg_dir = preview
        .resources
        .iter()
        .find(|r| r.kind == "postgres")
        .unwrap()
        .location
        .clone();
    assert!(Path::new(&pg_dir).exists());

    assert_eq!(h.pr_event(&conn, "octo/api", pr("closed")).await, 202);
    h.wait(&conn.0, 3, &[PreviewState::Destroyed], None).await;
    assert_eq!(h.get("api-pr-3", "/").await.0, 410);
    assert!(
        !Path::new(&pg_dir).exists(),
        "the preview's PostgreSQL data is gone"
    );
    // No server of the preview left: every running postgres belongs to another directory.
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(&pg_dir),
        "a postgres server of the destroyed preview is still running"
    );
    h.sites()
        .delete("production", Default::default())
        .await
        .unwrap();
    support::drop_pg_db(&src_name).await;
    h.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn newest_head_wins() {
    let db = TestStore::sqlite().await;
    let h = Harness::start(&db).await;
    let (repo, conn) = h.repo("web", "[preview]\nbuild = [\"sleep 2\"]\n").await;
    let sha1 = repo.push_pr("f", 1, "one");
    let sha2 = repo.push_pr("f", 1, "two");
    for (action, sha) in [("opened", &sha1), ("synchronize", &sha2)] {
        let pr = Pr::new(action, 1, sha, "f", "octo/web");
        assert_eq!(h.pr_event(&conn, "octo/web", pr).await, 202);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let p = h.ready(&conn.0, 1, Some(&sha2)).await;
    assert_eq!(p.ready_sha.as_deref(), Some(sha2.as_str()));
    let (code, body) = h.get("web-pr-1", "/index.html").await;
    assert_eq!((code, body.trim()), (200, "two"));
    // The first head's job was cancelled and never routed: one launch in all.
    let jobs = h
        .store()
        .jobs_for_key(&format!("{}#1", conn.0))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].state, "cancelled", "{jobs:?}");
    assert_eq!(jobs[1].state, "done");
    assert!(
        h.state
            .metrics
            .encode()
            .contains("endor_preview_launch_seconds_count 1")
    );
    h.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_are_clear_and_harmless() {
    let db = TestStore::sqlite().await;
    let h = Harness::start(&db).await;
    // (repository, .endor.toml, the reason, the step that failed)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "buildfail",
            "[preview]\nbuild = [\"echo compiling\", \"exit 3\"]\nroot = \".\"\n",
            "build step `exit 3` failed with exit code 3",
            "build",
        ),
        (
            "startexit",
            "[preview]\nstart = \"exit 1\"\nhealth = \"/\"\n",
            "did not pass",
            "health",
        ),
        (
            "unhealthy",
            "[preview]\nstart = \"/usr/bin/python3 -m http.server $PORT --bind 127.0.0.1\"\nhealth = \"/no-such-page\"\n",
            "status 404",
            "health",
        ),
        ("nottoml", "this is [not toml\n", ".endor.toml:", "config"),
        (
            "typo",
            "[preview]\nbulid = [\"true\"]\n",
            "unknown field `bulid`",
            "config",
        ),
        (
            "noparent",
            "[preview]\nparent = \"nonexistent\"\n",
            "preview.parent: no site named nonexistent",
            "clone",
        ),
        // A git URL with no repository behind it: failed at once, not after five retries.
        (
            "nogit",
            "",
            "does not appear to be a git repository",
            "fetch",
        ),
    ];
    let mut conns = Vec::new();
    for (name, toml, _, _) in cases {
        let repo = Repo::new(h.dir.path(), name, toml);
        let url = match *name {
            "nogit" => format!("file://{}", h.dir.path().join("no-such-repo.git").display()),
            _ => repo.url(),
        };
        let conn = h.connect(&format!("octo/{name}"), &url).await;
        let sha = repo.push_pr("f", 1, name);
        let full = format!("octo/{name}");
        let pr = Pr::new("opened", 1, &sha, "f", &full);
        assert_eq!(h.pr_event(&conn, &full, pr).await, 202);
        conns.push(conn);
    }
    for ((name, _, reason, step), conn) in cases.iter().zip(&conns) {
        let p = h
            .wait(
                &conn.0,
                1,
                &[PreviewState::Ready, PreviewState::Failed],
                None,
            )
            .await;
        assert_eq!(p.state, PreviewState::Failed, "{name}: {p:?}");
        let got = p.reason.clone().unwrap_or_default();
        assert!(
            got.contains(reason),
            "{name}: reason {got:?}, wanted {reason:?}"
        );
        // The story names the step that failed; a missing repository is not retried.
        let c = h.store().connection(&conn.0).await.unwrap().unwrap();
        let story = endor::previews::story::show(h.store(), &h.state.config, &c, 1)
            .await
            .unwrap();
        assert_eq!(
            story.preview.failed_step.as_deref(),
            Some(*step),
            "{name}: {:?}",
            story.steps
        );
        if *name == "nogit" {
            let jobs = h
                .store()
                .jobs_for_key(&format!("{}#1", conn.0))
                .await
                .unwrap();
            assert_eq!(jobs[0].attempts, 1, "{jobs:?}");
        }
        // The gateway says it failed and names the command that says why; no process is left.
        let (code, body) = h.get(&format!("{name}-pr-1"), "/").await;
        assert_eq!(code, 503, "{name}");
        assert!(body.contains("Preview failed"), "{name}: {body}");
        assert!(
            body.contains(&format!("endor preview show octo/{name}#1")),
            "{name}: {body}"
        );
        if let Some(pid) = p.pid {
            eventually("a failed preview's process is stopped", || !pid_alive(pid)).await;
        }
    }
    let log = h.sites().show("buildfail-pr-1").await.unwrap();
    let text = support::log_text(
        &h.dir.path().join("logs"),
        &log.id,
        endor::logs::Service::Build,
    );
    assert!(text.contains("compiling"), "{text}");

    // A hostile branch name is only data: the preview builds, nothing runs it.
    let (repo, conn) = h.repo("hostile", "[preview]\nbuild = [\"true\"]\n").await;
    let branch = "$(touch${IFS}pwned)";
    let sha = repo.push_pr(branch, 1, "hostile");
    let pr = Pr::new(
        "opened",
        1,
        &sha,
        "$(touch pwned)`touch pwned2`;touch pwned3",
        "octo/hostile",
    );
    assert_eq!(h.pr_event(&conn, "octo/hostile", pr).await, 202);
    h.ready(&conn.0, 1, None).await;
    let find = Command::new("find")
        .args([
            h.dir.path().to_str().unwrap(),
            "/tmp",
            "-maxdepth",
            "6",
            "-name",
            "pwned*",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&find.stdout).trim().is_empty(),
        "{}",
        String::from_utf8_lossy(&find.stdout)
    );
    assert!(!Path::new("pwned").exists());

    // No .endor.toml on the default branch: served as static files, and the story says so.
    let (repo, conn) = h.repo("plain", "").await;
    git(&repo.work, &["rm", "-q", ".endor.toml"]);
    git(&repo.work, &["commit", "-qm", "no config"]);
    git(&repo.work, &["push", "-q", "origin", "main"]);
    let sha = repo.push_pr("f", 1, "plain page");
    let pr = Pr::new("opened", 1, &sha, "f", "octo/plain");
    assert_eq!(h.pr_event(&conn, "octo/plain", pr).await, 202);
    h.ready(&conn.0, 1, None).await;
    assert_eq!(h.get("plain-pr-1", "/index.html").await.1, "plain page\n");
    let c = h.store().connection(&conn.0).await.unwrap().unwrap();
    let story = endor::previews::story::show(h.store(), &h.state.config, &c, 1)
        .await
        .unwrap();
    let config = story.steps.iter().find(|s| s.step == "config").unwrap();
    assert!(
        config
            .detail
            .as_deref()
            .unwrap()
            .starts_with("no .endor.toml on main"),
        "{config:?}"
    );

    // The server is unharmed.
    let r = h
        .http
        .get(format!("http://{}/healthz", h.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    h.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forks_wait_for_approval_and_drafts_are_skipped() {
    let db = TestStore::sqlite().await;
    let h = Harness::start(&db).await;
    let (repo, conn) = h.repo("lib", "[preview]\nbuild = [\"touch ran\"]\n").await;
    let sha = repo.push_pr("evil", 5, "fork");
    let fork = Pr::new("opened", 5, &sha, "evil", "mallory/lib");
    assert_eq!(h.pr_event(&conn, "octo/lib", fork).await, 202);
    let p = h
        .wait(&conn.0, 5, &[PreviewState::AwaitingApproval], None)
        .await;
    assert!(p.reason.unwrap().contains("/preview deploy"));
    assert!(p.site_id.is_none());
    assert!(h.store().site_by_name("lib-pr-5").await.unwrap().is_none());
    assert!(
        h.store().last_run_steps(&p.id).await.unwrap().is_empty(),
        "nothing ran"
    );
    assert_eq!(h.get("lib-pr-5", "/").await.0, 404);

    let sha6 = repo.push_pr("wip", 6, "draft");
    let draft = Pr {
        draft: true,
        ..Pr::new("opened", 6, &sha6, "wip", "octo/lib")
    };
    assert_eq!(h.pr_event(&conn, "octo/lib", draft).await, 202);
    let p = h.wait(&conn.0, 6, &[PreviewState::Skipped], None).await;
    assert!(p.reason.unwrap().contains("draft"));
    assert!(h.store().site_by_name("lib-pr-6").await.unwrap().is_none());
    h.stop().await;
    db.cleanup().await;
}

/// `endor serve` killed with SIGKILL in the middle of a build: after a restart the job is
/// taken again once its lease runs out, the preview becomes ready, and nothing is doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_build_then_restart() {
    let served = ServedBinary::start(|_| {}).await;
    let (repo, conn) = served.repo(
        "slow",
        "[preview]\nbuild = [\"sleep 4\", \"echo done > done.txt\"]\n",
    );
    let store = served.store().await;
    let sha = repo.push_pr("f", 9, "survived");
    let pr = Pr::new("opened", 9, &sha, "f", "octo/slow");
    assert_eq!(served.pr_event(&conn, "octo/slow", pr).await, 202);
    // Wait for the build to be under way, then kill the server.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = store.preview(&conn.0, 9).await.unwrap();
        if p.as_ref()
            .is_some_and(|p| p.state == PreviewState::Building)
        {
            break;
        }
        assert!(Instant::now() < deadline, "never started building: {p:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = served.kill_and_restart().await; // SIGKILL
    let deadline = Instant::now() + Duration::from_secs(90);
    let p = loop {
        let p = store.preview(&conn.0, 9).await.unwrap().unwrap();
        if p.state == PreviewState::Ready || p.state == PreviewState::Failed {
            break p;
        }
        assert!(Instant::now() < deadline, "not ready after restart: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(p.state, PreviewState::Ready, "{p:?}");
    // Nothing doubled: one site of that name ever, one checkout, one finished job.
    let sites: Vec<_> = store
        .list_sites()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "slow-pr-9")
        .collect();
    assert_eq!(sites.len(), 1);
    let code_dirs = std::fs::read_dir(
        served
            .dir
            .path()
            .join("sites")
            .join(&sites[0].id)
            .join("code"),
    )
    .unwrap()
    .count();
    assert_eq!(code_dirs, 1);
    let jobs = store.jobs_for_key(&format!("{}#9", conn.0)).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, "done");
    assert!(jobs[0].attempts >= 2, "{jobs:?}");
    let gw = served.config.gateway.listen;
    let r = served
        .http
        .get(format!("http://{gw}/done.txt"))
        .header("host", "slow-pr-9.preview.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), "done");
    // The CLI shows the state, the timed steps and the build log.
    let list = served.cli(&["site", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("slow-pr-9\tready\thttp://slow-pr-9.preview.localhost:")),
        "{list}"
    );
    let text = served.cli(&["site", "show", "slow-pr-9"]);
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .starts_with("preview:     octo/slow#9 ready"),
        "{text}"
    );
    let show: Value =
        serde_json::from_str(&served.cli(&["--json", "site", "show", "slow-pr-9"])).unwrap();
    assert_eq!(show["preview"]["state"], "ready");
    assert_eq!(show["preview"]["ready_sha"], sha.as_str());
    let steps: Vec<&str> = show["preview"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["fetch", "config", "clone", "build", "start", "route"]
    );
    assert!(show["preview"]["steps"][3]["duration_ms"].as_i64().unwrap() >= 4000);
    let log = served.cli(&["site", "logs", "slow-pr-9", "--service", "build"]);
    assert!(
        log.contains("$ sleep 4") && log.contains("$ echo done > done.txt"),
        "{log}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_endor"))
        .args(["--config", served.cfg_path.to_str().unwrap()])
        .args(["site", "logs", "slow-pr-9", "--service", "../../etc/passwd"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--service"));
    served.stop();
}

/// GitLab merge requests (token auth, `refs/merge-requests/N/head`) and Gitea pull requests
/// (HMAC) launch and destroy previews the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_and_gitea_previews() {
    let db = TestStore::sqlite().await;
    let h = Harness::start(&db).await;
    let toml = "[preview]\nbuild = [\"mkdir -p out\", \"cp index.html out/\"]\nroot = \"out\"\n";

    // GitLab: the forge publishes MR heads under refs/merge-requests/N/head.
    let gl = Repo::new(h.dir.path(), "glshop", toml);
    let c = h.connect_spec("gitlab:grp/sub/glshop", &gl.url()).await;
    let sha = gl.push_pr("mr-branch", 1, "from-gitlab");
    git(
        &gl.work,
        &[
            "push",
            "-q",
            "origin",
            &format!("{sha}:refs/merge-requests/4/head"),
        ],
    );
    assert_eq!(
        h.gitlab_event(&c, gitlab_mr("grp/sub/glshop", 4, &sha, "open"))
            .await,
        202
    );
    let p = h.ready(&c.connection_id, 4, None).await;
    assert_eq!(p.site_name, "glshop-pr-4");
    let (code, body) = h.get("glshop-pr-4", "/index.html").await;
    assert_eq!((code, body.trim()), (200, "from-gitlab"));
    assert_eq!(
        h.gitlab_event(&c, gitlab_mr("grp/sub/glshop", 4, &sha, "close"))
            .await,
        202
    );
    h.wait(&c.connection_id, 4, &[PreviewState::Destroyed], None)
        .await;
    assert_eq!(h.get("glshop-pr-4", "/").await.0, 410);

    // Gitea.
    let gt = Repo::new(h.dir.path(), "gtshop", toml);
    let c = h.connect_spec("gitea:octo/gtshop", &gt.url()).await;
    let sha = gt.push_pr("feat", 2, "from-gitea");
    assert_eq!(
        h.gitea_event(&c, gitea_pr("octo/gtshop", 2, &sha, "opened"))
            .await,
        202
    );
    h.ready(&c.connection_id, 2, None).await;
    let (code, body) = h.get("gtshop-pr-2", "/index.html").await;
    assert_eq!((code, body.trim()), (200, "from-gitea"));
    h.stop().await;
    db.cleanup().await;
}

/// A restart of endor stops the site processes it supervised; the next `serve` relaunches
/// every ready preview whose process is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_previews_come_back_after_a_restart() {
    let db = TestStore::sqlite().await;
    let h = Harness::start(&db).await;
    let (repo, conn) = h
        .repo(
            "svc",
            "[preview]\nstart = \"/usr/bin/python3 -m http.server $PORT --bind 127.0.0.1\"\n",
        )
        .await;
    let sha = repo.push_pr("f", 2, "served");
    let pr = Pr::new("opened", 2, &sha, "f", "octo/svc");
    assert_eq!(h.pr_event(&conn, "octo/svc", pr).await, 202);
    let p = h.ready(&conn.0, 2, None).await;
    assert_eq!(h.get("svc-pr-2", "/index.html").await.1.trim(), "served");
    let pid = p.pid.unwrap();
    let dir = h.stop_keeping_files().await;
    eventually("the process stops with endor", || !pid_alive(pid)).await;

    let h = Harness::start_in(&db, dir, false).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let p2 = loop {
        let p = h.preview(&conn.0, 2).await.unwrap();
        if p.state == PreviewState::Ready && p.pid != Some(pid) {
            break p;
        }
        assert!(Instant::now() < deadline, "not relaunched: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(p2.ready_sha.as_deref(), Some(sha.as_str()));
    assert!(pid_alive(p2.pid.unwrap()));
    assert_eq!(h.get("svc-pr-2", "/index.html").await.1.trim(), "served");
    h.stop().await;
    db.cleanup().await;
}

/// Scale-out (SPEC §1, §9): one process runs the API and the gateway, another the workers and
/// the reaper, sharing only a PostgreSQL store. A webhook received by the first is built by the
/// second and served by the first; closing the PR tears it down the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_roles_over_one_postgres_store() {
    let db = TestStore::postgres().await;
    let url = db.url.clone();
    let served = ServedBinary::start_split(move |c| c.store.url = url).await;
    let (repo, conn) = served.repo(
        "split",
        "[preview]\nbuild = [\"echo built-elsewhere > out.txt\"]\n",
    );
    let store = served.store().await;
    let sha = repo.push_pr("f", 3, "split");
    let pr = Pr::new("opened", 3, &sha, "f", "octo/split");
    assert_eq!(served.pr_event(&conn, "octo/split", pr).await, 202);
    let deadline = Instant::now() + Duration::from_secs(90);
    let p = loop {
        let p = store.preview(&conn.0, 3).await.unwrap();
        if let Some(p) =
            p.filter(|p| p.state == PreviewState::Ready || p.state == PreviewState::Failed)
        {
            break p;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(p.state, PreviewState::Ready, "{p:?}");
    let gw = served.config.gateway.listen;
    let get = || {
        served
            .http
            .get(format!("http://{gw}/out.txt"))
            .header("host", "split-pr-3.preview.localhost")
            .send()
    };
    let r = get().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), "built-elsewhere");
    let pr = Pr::new("closed", 3, &sha, "f", "octo/split");
    assert_eq!(served.pr_event(&conn, "octo/split", pr).await, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if get().await.unwrap().status() == 410 {
            break;
        }
        assert!(Instant::now() < deadline, "never torn down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.stop();
    db.cleanup().await;
}

/// A preview under steady load through ten pushes: every answer is a 2xx. The new version goes
/// live only once healthy, and the old process keeps answering until no gateway can still
/// route to it (the gateway's route cache), so a push never shows visitors a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_pushes_under_load_without_a_single_error() {
    let db = TestStore::sqlite().await;
    let h = Harness::start(&db).await;
    sqlite_parent(&h.sites(), h.dir.path(), 10).await;
    let (repo, conn) = h.repo("shop", APP_TOML).await;
    let site = "shop-pr-9";
    let pr = |action, sha| Pr::new(action, 9, sha, "feature", "octo/shop");
    let sha = repo.push_pr("feature", 9, "v0");
    assert_eq!(
        h.pr_event(&conn, "octo/shop", pr("opened", &sha)).await,
        202
    );
    h.ready(&conn.0, 9, None).await;
    assert_eq!(h.get(site, "/").await.0, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, gateway, http) = (stop.clone(), h.gateway, h.http.clone());
        tokio::spawn(async move {
            let (mut ok, mut bad) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http
                    .get(format!("http://{gateway}/"))
                    .header("host", format!("{site}.preview.localhost"))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => bad.push(format!(
                        "{} {}",
                        r.status().as_u16(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => bad.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, bad)
        })
    };
    for i in 1..=10 {
        let head = repo.push_pr("feature", 9, &format!("v{i}"));
        let event = Pr::new("synchronize", 9, &head, "feature", "octo/shop");
        assert_eq!(h.pr_event(&conn, "octo/shop", event).await, 202);
        let p = h.ready(&conn.0, 9, Some(&head)).await;
        eprintln!("DEBUGREADY {i} port={:?} at={}", p.port, endor::now_ms());
    }
    // Past the last swap's grace, then stop the load.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad) = load.await.unwrap();
    assert!(
        bad.is_empty(),
        "{} of {} answers were not 2xx: {bad:?}",
        bad.len(),
        ok as usize + bad.len()
    );
    assert!(ok > 50, "the load ran ({ok} answers)");
    assert!(h.get(site, "/").await.1.starts_with("page=v10"));
    h.stop().await;
    db.cleanup().await;
}

/// A new user's first try, without forge credentials: a `.endor.toml` typo, a typo'd command
/// and `/preview help`. Everything endor would have posted is kept and shown by `endor preview
/// show` (marked not sent); the failure names its step; the record outlives the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preview_s_story_is_told_without_credentials() {
    let served = ServedBinary::start(|_| {}).await;
    let (repo, conn) = served.repo("shop", "[preview]\nbulid = [\"true\"]\n");
    let sha = repo.push_pr("feature", 1, "first");
    let pr = Pr::new("opened", 1, &sha, "feature", "octo/shop");
    assert_eq!(served.pr_event(&conn, "octo/shop", pr).await, 202);
    let store = served.store().await;
    let comment = GhComment {
        number: 1,
        id: 501,
        action: "created",
        author: "newcomer",
        body: "/preview destory\n/preview help",
        previous: None,
    };
    let api = served.config.server.listen;
    assert_eq!(
        send_comment(&served.http, api, &conn, "octo/shop", comment).await,
        202
    );
    // Wait for the failure and for the reply to the comment to be stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = store.preview(&conn.0, 1).await.unwrap();
        let posts = store.pr_outbox(&conn.0, 1).await.unwrap();
        let failed = p.is_some_and(|p| p.state == PreviewState::Failed);
        if failed && posts.iter().any(|i| i.kind.as_str() == "reply") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failure or no reply: {posts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let show: Value =
        serde_json::from_str(&served.cli(&["--json", "preview", "show", "octo/shop#1"])).unwrap();
    assert_eq!(show["preview"]["state"], "failed", "{show}");
    assert_eq!(show["preview"]["failed_step"], "config", "{show}");
    assert!(
        show["preview"]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown field `bulid`"),
        "{show}"
    );
    let posts = show["posts"].as_array().unwrap();
    let of = |kind: &str| -> Vec<&Value> { posts.iter().filter(|p| p["kind"] == kind).collect() };
    // Nothing was sent; each says why.
    assert!(!posts.is_empty());
    for p in posts {
        assert_eq!(p["state"], "unsent", "{p}");
        assert_eq!(p["note"], "not sent: no credentials for github", "{p}");
    }
    // The status comment, as it would read on the PR: failed, with the reason.
    let comment = of("comment");
    assert_eq!(comment.len(), 1, "{posts:?}");
    let body = comment[0]["text"].as_str().unwrap();
    assert!(body.contains("bulid"), "{body}");
    // The commit status of the head.
    let status = of("status");
    assert!(
        status[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("failure on "),
        "{status:?}"
    );
    // The reply to the comment: "did you mean" and the help text.
    let reply = of("reply");
    assert_eq!(reply.len(), 1, "{posts:?}");
    let text = reply[0]["text"].as_str().unwrap();
    assert!(text.contains("destroy"), "{text}");
    assert!(text.contains("/preview extend"), "{text}");
    // The deliveries that drove it, with their jobs.
    let events: Vec<(&str, &str)> = show["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["event"].as_str().unwrap(),
                d["job_state"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.contains(&("issue_comment", "done")), "{events:?}");
    assert!(events.iter().any(|e| e.0 == "pull_request"), "{events:?}");

    // The same for people.
    let text = served.cli(&["preview", "show", "octo/shop#1"]);
    for want in [
        "octo/shop#1\tfailed\tsite shop-pr-1",
        "failed:  at config: .endor.toml: unknown field `bulid`",
        "config  FAILED",
        "[not sent: no credentials for github]",
        "issue_comment created",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    let list = served.cli(&["preview", "list", "--state", "failed"]);
    assert!(
        list.starts_with(
            "octo/shop#1\tfailed\tshop-pr-1\t-\tconfig: .endor.toml: unknown field `bulid`"
        ),
        "{list}"
    );
    let deliveries = served.cli(&["delivery", "list"]);
    assert!(
        deliveries
            .lines()
            .any(|l| l.contains("issue_comment\tcreated\t#1\tjob done")),
        "{deliveries}"
    );
    // A wrong name, a wrong state: clear errors.
    for (args, want) in [
        (&["preview", "show", "octo/shop"][..], "is not REPO#NUMBER"),
        (
            &["preview", "show", "octo/nope#1"],
            "repository octo/nope is not connected",
        ),
        (
            &["preview", "show", "octo/shop#2"],
            "no preview of octo/shop#2",
        ),
        (
            &["preview", "list", "--state", "exploded"],
            "unknown state `exploded`",
        ),
        // The preview failed before its site was made: site show points at its story.
        (
            &["site", "show", "shop-pr-1"],
            "it is the site of preview octo/shop#1 (failed), which has none now; endor preview show octo/shop#1 says why",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_endor"))
            .args(["--config", served.cfg_path.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }

    // Closed: the preview's record stays, destroyed.
    let pr = Pr::new("closed", 1, &sha, "feature", "octo/shop");
    assert_eq!(served.pr_event(&conn, "octo/shop", pr).await, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.preview(&conn.0, 1).await.unwrap().unwrap().state != PreviewState::Destroyed {
        assert!(Instant::now() < deadline, "not destroyed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = served.cli(&["preview", "list", "--repo", "octo/shop"]);
    assert!(
        list.starts_with("octo/shop#1\tdestroyed\tshop-pr-1"),
        "{list}"
    );
    served.stop();
}

/// `endor site logs SITE --service web -f` shows what the app prints while it runs: a line
/// printed at start and one printed for a request made after the follower started.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn site_logs_follow_the_app_as_it_prints() {
    const LOG_APP: &str = r#"
import os, http.server
print("started on", os.environ["PORT"])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("visited", self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;
    let served = ServedBinary::start(|_| {}).await;
    let toml = "[preview]\nstart = \"/usr/bin/python3 logapp.py\"\nhealth = \"/health\"\n";
    let (repo, conn) = served.repo("logs", toml);
    std::fs::write(repo.work.join("logapp.py"), LOG_APP).unwrap();
    git(&repo.work, &["add", "logapp.py"]);
    git(&repo.work, &["commit", "-qm", "app"]);
    git(&repo.work, &["push", "-q", "origin", "main"]);
    let sha = repo.push_pr("f", 1, "logs");
    let pr = Pr::new("opened", 1, &sha, "f", "octo/logs");
    assert_eq!(served.pr_event(&conn, "octo/logs", pr).await, 202);
    let store = served.store().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = store.preview(&conn.0, 1).await.unwrap();
        match p.map(|p| p.state) {
            Some(PreviewState::Ready) => break,
            Some(PreviewState::Failed) => panic!("failed: {:?}", store.preview(&conn.0, 1).await),
            _ => {}
        }
        assert!(Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut follower = Command::new(env!("CARGO_BIN_EXE_endor"))
        .args(["--config", served.cfg_path.to_str().unwrap()])
        .args(["site", "logs", "logs-pr-1", "--service", "web", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(want) => return,
                Ok(l) => seen.push(l),
                Err(_) => panic!("{want:?} never followed; saw {seen:?}"),
            }
        }
    };
    wait_for("started on");
    // A request made now: its line arrives while the app keeps running.
    let gw = served.config.gateway.listen;
    let r = served
        .http
        .get(format!("http://{gw}/marker-7f3"))
        .header("host", "logs-pr-1.preview.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for("visited /marker-7f3");
    let p = store.preview(&conn.0, 1).await.unwrap().unwrap();
    assert!(pid_alive(p.pid.unwrap()), "the app is still running");
    let _ = follower.kill();
    let _ = follower.wait();
    served.stop();
}

/// One owner of running sites, the store: `endor reap` and `endor site delete`, run while
/// `endor serve` supervises the sites' processes, tear them down; `serve` lets them go (no
/// restart, no loop, its messages name the site), and both previews answer 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_teardowns_during_serve_leave_no_restart_loop() {
    let served = ServedBinary::start(|_| {}).await;
    let app = "[preview]\nstart = \"exec /usr/bin/python3 -m http.server $PORT --bind 127.0.0.1\"\nhealth = \"/\"\n";
    let store = served.store().await;
    let mut conns = Vec::new();
    for (name, ttl) in [("reaped", "ttl = \"2s\"\n"), ("deleted", "")] {
        let (repo, conn) = served.repo(name, &format!("{app}{ttl}"));
        let sha = repo.push_pr("f", 1, name);
        let full = format!("octo/{name}");
        let pr = Pr::new("opened", 1, &sha, "f", &full);
        assert_eq!(served.pr_event(&conn, &full, pr).await, 202);
        conns.push(conn);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pids = Vec::new();
    for conn in &conns {
        loop {
            let p = store.preview(&conn.0, 1).await.unwrap();
            if let Some(p) = p.filter(|p| p.state == PreviewState::Ready) {
                pids.push(p.pid.unwrap());
                break;
            }
            assert!(Instant::now() < deadline, "not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Past the 2 s TTL of `reaped`: a reaper pass from the CLI expires it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = served.cli(&["reap"]);
    assert!(out.contains("expired\treaped-pr-1"), "{out}");
    // `deleted`'s site goes from under its preview.
    served.cli(&["site", "delete", "deleted-pr-1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.preview(&conns[1].0, 1).await.unwrap().unwrap().state != PreviewState::Destroyed {
        assert!(
            Instant::now() < deadline,
            "serve never let the deleted site go"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = store.preview(&conns[1].0, 1).await.unwrap().unwrap();
    assert_eq!(
        p.reason.as_deref(),
        Some("its site deleted-pr-1 was deleted")
    );
    // Long enough for a restart loop to show (its first retries come within 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for pid in &pids {
        assert!(!pid_alive(*pid), "pid {pid} still runs");
    }
    for site in ["reaped-pr-1", "deleted-pr-1"] {
        let r = served
            .http
            .get(format!("http://{}/", served.config.gateway.listen))
            .header("host", format!("{site}.preview.localhost"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 410, "{site}");
    }
    let log = std::fs::read_to_string(served.cfg_path.with_extension("serve-.err")).unwrap();
    assert!(!log.contains("could not start"), "{log}");
    assert!(!log.contains("restarting"), "{log}");
    assert!(
        log.contains("site=reaped-pr-1") && log.contains("not restarted"),
        "{log}"
    );
    // A site deleted while serve is down is not relaunched when serve comes back: its preview
    // is destroyed, with the reason.
    let (repo, conn) = served.repo("offline", app);
    let sha = repo.push_pr("f", 1, "offline");
    let pr = Pr::new("opened", 1, &sha, "f", "octo/offline");
    assert_eq!(served.pr_event(&conn, "octo/offline", pr).await, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.preview(&conn.0, 1).await.unwrap().map(|p| p.state) != Some(PreviewState::Ready) {
        assert!(Instant::now() < deadline, "offline not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let served = served
        .kill_then_restart(|s| {
            s.cli(&["site", "delete", "offline-pr-1"]);
        })
        .await;
    let p = store.preview(&conn.0, 1).await.unwrap().unwrap();
    assert_eq!(p.state, PreviewState::Destroyed, "{p:?}");
    assert_eq!(
        p.reason.as_deref(),
        Some("its site offline-pr-1 was deleted")
    );
    served.stop();
}
