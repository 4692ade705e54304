//! The dashboard in a real headless browser (SPEC §14): Debian's chromium, driven by
//! `tests/browser/dashboard.mjs` (playwright-core), against the real server with its workers
//! and gateway. A person signs in, connects a repository, watches a preview appear after the
//! forge's webhook and follows its log live, creates a site, clones it, tags the clone, turns
//! its password on and deletes it by typing its name. Every page is screenshotted (kept in
//! `target/test-artifacts/dashboard/`) and checked by axe-core: no serious or critical
//! accessibility violation, and no request to another host.
//!
//! Needs `scripts/browser-tools.sh` (chromium, playwright-core, axe-core); scripts/test.sh
//! runs it.

mod support;

use std::process::Command;

use serde_json::Value;
use support::TestStore;
use support::preview::*;

const STATIC_TOML: &str = r#"
[preview]
build = ["echo building the preview", "mkdir -p out", "cp index.html out/index.html"]
root = "out"
"#;

/// `git daemon` serving `dir` on a free port (the dashboard takes git://, not file://).
struct GitDaemon(std::process::Child);

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_uses_the_dashboard_in_a_real_browser() {
    let modules =
        std::env::var("ENDOR_TEST_BROWSER_DIR").unwrap_or_else(|_| "/var/tmp/endor/browser".into());
    let modules = std::path::Path::new(&modules).join("node_modules");
    assert!(
        modules.join("playwright-core").is_dir() && modules.join("axe-core").is_dir(),
        "run scripts/browser-tools.sh first (scripts/test.sh does)"
    );
    let db = TestStore::sqlite().await;
    let h = Harness::start(&db).await;
    let s = h.store();
    endor::service::set_member_roles(s, "acme", "owner", &["owner".into(), "developer".into()])
        .await
        .unwrap();
    let password = "a long browser password";
    endor::dashboard::auth::set_password(s, "owner", password)
        .await
        .unwrap();
    let repo = Repo::new(h.dir.path(), "shop", STATIC_TOML);
    let sha = repo.push_pr("feature", 1, "hello from the pull request");
    let port = support::free_port();
    // git-daemon itself (not `git daemon`, whose child would outlive a kill), its output
    // nowhere: a child holding the test's stdout would keep the suite's pipe open.
    let exec_path = Command::new("git").arg("--exec-path").output().unwrap();
    let exec_path = String::from_utf8(exec_path.stdout).unwrap();
    let _daemon = GitDaemon(
        Command::new(std::path::Path::new(exec_path.trim()).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", h.dir.path().display()))
            .arg(h.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("git daemon listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let payload = pr_body(
        "octo/shop",
        Pr::new("opened", 1, &sha, "feature", "octo/shop"),
    );
    let payload_file = h.dir.path().join("pull_request.json");
    std::fs::write(&payload_file, serde_json::to_vec(&payload).unwrap()).unwrap();
    let shots =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/dashboard");
    let _ = std::fs::remove_dir_all(&shots);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.mjs");
    let owner = s.user_by_login("owner").await.unwrap().unwrap();
    let unsubscribe = format!(
        "http://{}/unsubscribe/{}",
        h.api,
        endor::notify::unsubscribe_token(s.keyring(), &owner.id, "preview_failed")
    );
    let out = tokio::process::Command::new("node")
        .arg(script)
        .env("ENDOR_BASE", format!("http://{}", h.api))
        .env("ENDOR_GATEWAY", h.gateway.to_string())
        .env("ENDOR_LOGIN", "owner")
        .env("ENDOR_PASSWORD", password)
        .env("ENDOR_GIT_URL", format!("git://127.0.0.1:{port}/shop.git"))
        .env("ENDOR_PAYLOAD", &payload_file)
        .env("ENDOR_SHOTS", &shots)
        .env("ENDOR_MODULES", &modules)
        .env("ENDOR_UNSUBSCRIBE", &unsubscribe)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the browser script printed no report ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert!(
        out.status.success() && report["ok"] == true,
        "{}\n{stderr}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    // Every page visited was screenshotted and had no serious or critical violation.
    let pages = report["pages"].as_array().unwrap();
    let names: Vec<&str> = pages.iter().map(|p| p["name"].as_str().unwrap()).collect();
    for want in [
        "sign-in",
        "workspaces",
        "repositories",
        "repository-connected",
        "repository",
        "previews",
        "preview",
        "site-live-log",
        "sites",
        "site-created",
        "clone-tagged-with-password",
        "site-deleted",
        "members",
        "usage",
        "notifications",
        "settings",
        "invitation-made",
        "invitation",
        "token-issued",
        "unsubscribe",
        "refused",
    ] {
        assert!(names.contains(&want), "{want} not visited: {names:?}");
    }
    let mut bad = Vec::new();
    for p in pages {
        let shot = std::path::Path::new(p["screenshot"].as_str().unwrap());
        assert!(
            shot.metadata().map(|m| m.len() > 1000).unwrap_or(false),
            "{} has no screenshot",
            p["name"]
        );
        for v in p["violations"].as_array().unwrap() {
            if matches!(v["impact"].as_str(), Some("serious" | "critical")) {
                bad.push(format!("{}: {} {}", p["name"], v["id"], v["nodes"]));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "accessibility violations:\n{}",
        bad.join("\n")
    );
    assert_eq!(
        report["offsite"],
        serde_json::json!([]),
        "requests to other hosts"
    );
    // What the browser did is what the store holds.
    assert!(s.site_by_name("shop").await.unwrap().is_some());
    assert!(s.site_by_name("shop-copy").await.unwrap().is_none());
    let inbox = s.inbox(&owner.id, 10).await.unwrap();
    assert!(
        inbox.iter().any(|n| n.kind == "preview_ready"),
        "the owner heard of the ready preview: {inbox:?}"
    );
    // The unsubscribe link turned that kind's mail off.
    let prefs = s.notification_prefs(&owner.id).await.unwrap();
    assert!(
        prefs
            .iter()
            .any(|p| p.kind == "preview_failed" && !p.email && p.inbox),
        "{prefs:?}"
    );
    h.stop().await;
}
