//! The `endor` binary, black-box: commands in a scratch directory, config errors, and a real
//! `endor serve` process killed with SIGKILL under load.

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use endor::forge::signature::sign_hex;
use serde_json::Value;

fn endor(dir: &Path, args: &[&str]) -> Output {
    endor_env(dir, args, &[])
}

fn endor_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_endor"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("ENDOR_CONFIG")
        .env("ENDOR_LOG", "debug");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let out = endor(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = endor(dir.path(), &["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "serve",
        "migrate",
        "user",
        "workspace",
        "repo",
        "delivery",
        "site",
        "reap",
        "usage",
        "audit",
        "doctor",
    ] {
        assert!(text.contains(cmd), "--help lacks {cmd}: {text}");
    }
    let repo = String::from_utf8_lossy(&endor(dir.path(), &["repo", "--help"]).stdout).into_owned();
    for cmd in ["connect", "list", "rotate-secret", "delete"] {
        assert!(repo.contains(cmd), "repo --help lacks {cmd}");
    }
}

#[test]
fn users_workspaces_and_repository_connections() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let user = ok_json(
        d,
        &[
            "user",
            "create",
            "alice",
            "--email",
            "alice@example.com",
            "--name",
            "Alice",
            "--json",
        ],
    );
    assert_eq!(user["login"], "alice");
    ok_json(d, &["user", "link", "alice", "github:alice-gh", "--json"]);
    let ws = ok_json(
        d,
        &["workspace", "create", "acme", "--owner", "alice", "--json"],
    );
    assert_eq!(ws["name"], "acme");
    assert_eq!(
        ok_json(d, &["workspace", "list", "--json"])[0]["name"],
        "acme"
    );
    assert!(
        d.join("data/endor.db").exists(),
        "the embedded default store lives in data/"
    );
    // Members and roles: a non-empty mix; the last owner stays.
    ok_json(d, &["user", "create", "bob", "--json"]);
    let added = ok_json(
        d,
        &[
            "workspace",
            "member",
            "add",
            "acme",
            "bob",
            "--role",
            "billing",
            "--role",
            "developer",
            "--json",
        ],
    );
    assert_eq!(added["roles"], serde_json::json!(["billing", "developer"]));
    let last = endor(
        d,
        &[
            "workspace",
            "member",
            "roles",
            "acme",
            "alice",
            "--role",
            "developer",
        ],
    );
    assert!(!last.status.success());
    assert!(
        stderr(&last).contains("at least one owner"),
        "{}",
        stderr(&last)
    );
    let gone = endor(d, &["workspace", "member", "remove", "acme", "alice"]);
    assert!(
        stderr(&gone).contains("at least one owner"),
        "{}",
        stderr(&gone)
    );
    assert!(
        !endor(
            d,
            &[
                "workspace",
                "member",
                "roles",
                "acme",
                "bob",
                "--role",
                "admin"
            ]
        )
        .status
        .success()
    );
    ok_json(
        d,
        &[
            "workspace",
            "member",
            "roles",
            "acme",
            "bob",
            "--role",
            "owner",
            "--json",
        ],
    );
    ok_json(
        d,
        &["workspace", "member", "remove", "acme", "alice", "--json"],
    );
    let members = ok_json(d, &["workspace", "member", "list", "acme", "--json"]);
    assert_eq!(
        members,
        serde_json::json!([{"login": "bob", "roles": ["owner"]}])
    );
    ok_json(
        d,
        &[
            "workspace",
            "member",
            "add",
            "acme",
            "alice",
            "--role",
            "owner",
            "--json",
        ],
    );
    let renamed = ok_json(d, &["workspace", "rename", "acme", "acme2", "--json"]);
    assert_eq!(renamed["name"], "acme2");
    assert!(
        !endor(d, &["workspace", "rename", "acme2", "../x"])
            .status
            .success()
    );
    ok_json(d, &["workspace", "rename", "acme2", "acme", "--json"]);

    // A git URL with no repository behind it is refused (previews would fail at once)...
    let connect = [
        "repo",
        "connect",
        "acme",
        "github:Codertocat/Hello-World",
        "--git-url",
        "file:///srv/git/hello.git",
        "--json",
    ];
    let out = endor(d, &connect);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot fetch file:///srv/git/hello.git")
            && err.contains("does not appear to be a git repository")
            && err.contains("--no-check"),
        "{err}"
    );
    // ... and connected with --no-check, for a repository that is not there yet.
    let out = endor(d, &[&connect[..], &["--no-check"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = c["connection_id"].as_str().unwrap().to_string();
    let secret = c["secret"].as_str().unwrap().to_string();
    assert_eq!(
        c["webhook_url"],
        format!("http://127.0.0.1:8080/webhooks/github/{id}")
    );
    assert_eq!(secret.len(), 64);
    assert_eq!(c["content_type"], "application/json");
    assert!(c["instructions"].as_str().unwrap().contains("Payload URL"));
    assert!(
        !stderr(&out).contains(&secret),
        "the secret reached the log"
    );

    // Text mode prints the same facts for people.
    let text = endor(
        d,
        &[
            "repo",
            "connect",
            "acme",
            "gitlab:group/sub/project",
            "--api-url",
            "https://gitlab.example.com",
        ],
    );
    let text_out = String::from_utf8_lossy(&text.stdout);
    assert!(
        text_out.contains("webhook URL:")
            && text_out.contains("secret:")
            && text_out.contains("Secret token"),
        "{text_out}"
    );

    let list = ok_json(d, &["repo", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        !list.to_string().contains(&secret),
        "repo list shows a secret"
    );
    assert_eq!(list[0]["git_url"], "file:///srv/git/hello.git");

    let rotated = ok_json(d, &["repo", "rotate-secret", &id, "--json"]);
    assert_eq!(rotated["previous_accepted"], true);
    assert_ne!(rotated["secret"].as_str().unwrap(), secret);
    assert_eq!(
        ok_json(d, &["repo", "list", "--workspace", "acme", "--json"])[0]["rotating"],
        true
    );
    let retired = ok_json(d, &["repo", "rotate-secret", &id, "--retire-old", "--json"]);
    assert_eq!(retired["previous_accepted"], false);
    assert!(retired["secret"].is_null());

    ok_json(d, &["repo", "delete", &id, "--json"]);
    assert_eq!(
        ok_json(d, &["repo", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let again = endor(d, &["repo", "delete", &id]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("not found"));
}

#[test]
fn hostile_names_are_refused_and_run_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok_json(d, &["user", "create", "alice", "--json"]);
    ok_json(
        d,
        &["workspace", "create", "acme", "--owner", "alice", "--json"],
    );
    for args in [
        vec!["user", "create", "../etc"],
        vec!["user", "create", "a;touch pwned"],
        vec!["user", "create", "-rf"],
        vec!["workspace", "create", "$(touch pwned)", "--owner", "alice"],
        vec!["repo", "connect", "acme", "github:a/$(touch pwned)"],
        vec!["repo", "connect", "acme", "github:../../etc"],
        vec!["repo", "connect", "acme", "bitbucket:a/b"],
        vec![
            "repo",
            "connect",
            "acme",
            "github:a/b",
            "--git-url",
            "-upload-pack=touch pwned",
        ],
        vec!["repo", "connect", "nope", "github:a/b"],
        vec!["user", "link", "alice", "github:a b"],
    ] {
        let out = endor(d, &args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr(&out).lines().any(|l| l.starts_with("error: ")),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(!d.join("pwned").exists());
    assert_eq!(
        ok_json(d, &["repo", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("ENDOR__SERVER__LISTEN", "not-an-address")],
            "server.listen",
        ),
        (vec![("ENDOR__STORE__URL", "mysql://x")], "store.url"),
        (vec![("ENDOR__SERVER__BOGUS", "1")], "bogus"),
        (
            vec![("ENDOR__STORE__MAX_CONNECTIONS", "-3")],
            "store.max_connections",
        ),
        (
            vec![("ENDOR__SERVER__PUBLIC_URL", "ftp://x")],
            "server.public_url",
        ),
    ];
    for (env, key) in cases {
        let out = endor_env(d, &["migrate"], &env);
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        assert!(stderr(&out).contains(key), "{env:?}: {}", stderr(&out));
    }
    std::fs::write(d.join("bad.toml"), "[server]\nlissten = \"127.0.0.1:1\"\n").unwrap();
    let out = endor(d, &["--config", "bad.toml", "migrate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("lissten"), "{}", stderr(&out));
    std::fs::write(d.join("bad2.toml"), "[webhooks]\nmax_batch = \"many\"\n").unwrap();
    let out = endor(d, &["--config", "bad2.toml", "migrate"]);
    assert!(
        stderr(&out).contains("webhooks.max_batch"),
        "{}",
        stderr(&out)
    );
    let out = endor(d, &["--config", "missing.toml", "migrate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.toml"));
    // A good file and an env override: the env wins.
    std::fs::write(
        d.join("good.toml"),
        "[store]\nurl = \"sqlite://other/x.db\"\n",
    )
    .unwrap();
    let out = endor_env(
        d,
        &["--config", "good.toml", "migrate"],
        &[("ENDOR__STORE__URL", "sqlite://third/y.db")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d.join("third/y.db").exists() && !d.join("other").exists());
}

use support::free_port;

struct Served {
    child: Child,
    port: u16,
    gateway_port: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `serve(…)` on `port` writes its log.
fn serve_log(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("endor-test-serve-{port}.log"))
}

fn serve(dir: &Path) -> Served {
    let port = free_port();
    let gateway_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_endor"))
        .current_dir(dir)
        .arg("serve")
        .env("ENDOR__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "ENDOR__GATEWAY__LISTEN",
            format!("127.0.0.1:{gateway_port}"),
        )
        .env("ENDOR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(serve_log(port)).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "endor serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Served {
        child,
        port,
        gateway_port,
    }
}

/// `endor serve` in an empty folder, no config: the defaults just work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_in_an_empty_folder() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path());
    let base = format!("http://127.0.0.1:{}", s.port);
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(dir.path().join("data/endor.db").exists());
    // The gateway runs beside the API: an unknown preview host is a 404 page.
    let gw = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/", s.gateway_port))
        .header("host", "nothing-here.preview.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(gw.status(), 404);
    assert!(gw.text().await.unwrap().contains("No such preview"));
    // The banner says where things are and that write-back is off without credentials.
    let log = std::fs::read_to_string(serve_log(s.port)).unwrap();
    let banner = log
        .lines()
        .find(|l| l.contains("endor serve") && l.contains("store="))
        .unwrap_or_else(|| panic!("no banner in {log}"));
    for want in [
        "store=sqlite://data/endor.db",
        "config=built-in defaults",
        "webhooks=http://127.0.0.1:8080/webhooks/{forge}/{connection_id}",
        "previews=http://{site}.preview.localhost:",
        "github off (no [github] token",
    ] {
        assert!(banner.contains(want), "{want}: {banner}");
    }
    let _ = std::fs::remove_file(serve_log(s.port));
}

/// SIGKILL during a burst of deliveries: every delivery that got a 202 is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    ok_json(&d, &["user", "create", "alice", "--json"]);
    ok_json(
        &d,
        &["workspace", "create", "acme", "--owner", "alice", "--json"],
    );
    let c = ok_json(
        &d,
        &[
            "repo",
            "connect",
            "acme",
            "github:Codertocat/Hello-World",
            "--json",
        ],
    );
    let id = c["connection_id"].as_str().unwrap().to_string();
    let body = support::fixture("github.pull_request.opened.json");
    let sig = format!(
        "sha256={}",
        sign_hex(c["secret"].as_str().unwrap().as_bytes(), &body)
    );
    let mut server = serve(&d);
    let url = format!("http://127.0.0.1:{}/webhooks/github/{id}", server.port);

    let client = reqwest::Client::new();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (client, url, body, sig, acked) = (
            client.clone(),
            url.clone(),
            body.clone(),
            sig.clone(),
            acked.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < stop {
                n += 1;
                let key = format!("w{w}-{n}");
                let r = client
                    .post(&url)
                    .header("x-github-event", "pull_request")
                    .header("x-github-delivery", &key)
                    .header("x-hub-signature-256", &sig)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => acked.lock().unwrap().push(key),
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "too few deliveries before the kill ({}) to mean anything",
        acked.len()
    );

    let stored = ok_json(&d, &["delivery", "list", "--limit", "1000000", "--json"]);
    let keys: std::collections::HashSet<&str> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["delivery_key"].as_str().unwrap())
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|k| !keys.contains(k.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged deliveries lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(keys.len() >= acked.len());
    // And the server comes back on the same store.
    let again = serve(&d);
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{}/readyz", again.port))
            .await
            .unwrap()
            .status(),
        200
    );
}

/// `endor site ...` end to end through the binary, on reflink storage.
#[test]
fn site_commands_report_strategies() {
    let base = std::env::var("ENDOR_TEST_REFLINK_DIR")
        .expect("ENDOR_TEST_REFLINK_DIR is not set: run the suite with scripts/test.sh");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    let d = dir.path();
    ok_json(d, &["user", "create", "alice", "--json"]);
    ok_json(
        d,
        &["workspace", "create", "acme", "--owner", "alice", "--json"],
    );
    std::fs::create_dir_all(d.join("in/sub")).unwrap();
    std::fs::write(d.join("in/sub/a.txt"), b"hello").unwrap();
    let created = ok_json(
        d,
        &[
            "site",
            "create",
            "prod",
            "--workspace",
            "acme",
            "--files",
            "in",
            "--json",
        ],
    );
    assert_eq!(created["site"], "prod");
    let cloned = ok_json(d, &["site", "clone", "prod", "prod-pr-1", "--json"]);
    assert_eq!(cloned["generation"], 1);
    let files = &cloned["resources"][0];
    assert_eq!(
        (files["kind"].as_str(), files["strategy"].as_str()),
        (Some("files"), Some("reflink"))
    );
    assert_eq!(files["bytes_logical"], 5);
    assert_eq!(files["bytes_written"], 0);
    assert!(files["duration_ms"].is_f64() || files["duration_ms"].is_u64());
    let show = ok_json(d, &["site", "show", "prod-pr-1", "--json"]);
    assert_eq!(show["parent"], "prod");
    assert_eq!(show["state"], "active");
    assert_eq!(show["resources"][0]["strategy"], "reflink");
    let fdir = std::path::PathBuf::from(show["files_dir"].as_str().unwrap());
    assert_eq!(std::fs::read(fdir.join("sub/a.txt")).unwrap(), b"hello");
    let list = ok_json(d, &["site", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    // The list (read in bulk) says what show (one site) says.
    for entry in list.as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        assert_eq!(
            *entry,
            ok_json(d, &["site", "show", name, "--json"]),
            "{name}"
        );
    }
    // Access settings: generated credentials shown to the operator (sealed in the store, the
    // key file 0600), a chosen password never shown, bad values refused.
    let none = ok_json(d, &["site", "access", "prod-pr-1", "--json"]);
    assert_eq!(
        (none["robots"].as_bool(), none["basic_auth"].is_null()),
        (Some(true), true)
    );
    let generated = ok_json(
        d,
        &[
            "site",
            "access",
            "prod-pr-1",
            "--basic-auth",
            "generate",
            "--robots",
            "off",
            "--json",
        ],
    );
    let password = generated["basic_auth"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(password.len(), 24);
    assert_eq!(generated["robots"], false);
    let again = ok_json(d, &["site", "access", "prod-pr-1", "--json"]);
    assert_eq!(again["basic_auth"]["password"], password.as_str());
    let db = std::fs::read(d.join("data/endor.db")).unwrap();
    assert!(
        !db.windows(password.len()).any(|w| w == password.as_bytes()),
        "the password is in the store in plain text"
    );
    let key = std::fs::metadata(d.join("data/secret.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
    let chosen = ok_json(
        d,
        &[
            "site",
            "access",
            "prod-pr-1",
            "--basic-auth",
            "ops:long-enough-pw",
            "--json",
        ],
    );
    assert_eq!(chosen["basic_auth"]["user"], "ops");
    assert!(chosen["basic_auth"]["password"].is_null());
    // Each change is an event of the site's (a look is not); passwords are never in it.
    let out = endor(d, &["site", "logs", "prod-pr-1", "--service", "endor"]);
    let log = String::from_utf8_lossy(&out.stdout).into_owned();
    let changes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("access changed by"))
        .collect();
    assert_eq!(changes.len(), 2, "{log}");
    assert!(changes[1].contains("basic auth on (user ops)"), "{log}");
    assert!(
        !log.contains(&password) && !log.contains("long-enough-pw"),
        "{log}"
    );
    for bad in [
        &["--basic-auth", "ops:short"][..],
        &["--basic-auth", "no-colon"],
        &["--robots", "maybe"],
    ] {
        let mut args = vec!["site", "access", "prod-pr-1"];
        args.extend_from_slice(bad);
        let out = endor(d, &args);
        assert!(!out.status.success(), "{bad:?} was accepted");
    }
    // Tags: accepted ones listed and filterable, production look-alikes and `endor*` refused.
    for ok in ["qa", "Demo-1", "release.2026"] {
        ok_json(d, &["site", "tag", "add", "prod-pr-1", ok, "--json"]);
    }
    for bad in [
        "production",
        "PRODUCTION",
        "Prod.",
        "prod",
        "prd",
        "production-1",
        "endor-x",
        "a b",
        "../x",
    ] {
        let out = endor(d, &["site", "tag", "add", "prod-pr-1", bad]);
        assert!(!out.status.success(), "tag {bad} accepted");
    }
    assert!(stderr(&endor(d, &["site", "tag", "add", "prod-pr-1", "Prod."])).contains("protect"));
    let tagged = ok_json(d, &["site", "tag", "rm", "prod-pr-1", "qa", "--json"]);
    assert_eq!(
        tagged["tags"],
        serde_json::json!(["demo-1", "release.2026"])
    );
    let by_tag = ok_json(d, &["site", "list", "--tag", "DEMO-1", "--json"]);
    assert_eq!(by_tag.as_array().unwrap().len(), 1);
    assert_eq!(by_tag[0]["name"], "prod-pr-1");
    assert!(
        ok_json(d, &["site", "list", "--tag", "qa", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let cidr = ok_json(
        d,
        &[
            "site",
            "access",
            "prod-pr-1",
            "--allow",
            "10.0.0.1/8",
            "--allow",
            "::1",
            "--deny",
            "10.9.0.0/16",
            "--json",
        ],
    );
    assert_eq!(cidr["allow"], serde_json::json!(["10.0.0.0/8", "::1/128"]));
    assert_eq!(cidr["deny"], serde_json::json!(["10.9.0.0/16"]));
    assert!(
        !endor(d, &["site", "access", "prod-pr-1", "--allow", "nope"])
            .status
            .success()
    );
    let cleared = ok_json(
        d,
        &["site", "access", "prod-pr-1", "--clear-cidr", "--json"],
    );
    assert_eq!(
        (
            cleared["allow"].as_array().unwrap().len(),
            cleared["deny"].as_array().unwrap().len()
        ),
        (0, 0)
    );
    let off = ok_json(
        d,
        &[
            "site",
            "access",
            "prod-pr-1",
            "--basic-auth",
            "off",
            "--json",
        ],
    );
    assert!(off["basic_auth"].is_null());
    ok_json(d, &["site", "protect", "prod", "on", "--json"]);
    let refused = endor(d, &["site", "delete", "prod"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("protected"),
        "{}",
        stderr(&refused)
    );
    ok_json(d, &["site", "delete", "prod-pr-1", "--json"]);
    assert!(!fdir.exists());
    let bad = endor(d, &["site", "create", "../evil", "--workspace", "acme"]);
    assert!(!bad.status.success());
}

#[test]
fn protection_bypass_tokens_and_usage_on_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok_json(d, &["user", "create", "alice", "--json"]);
    ok_json(
        d,
        &["workspace", "create", "acme", "--owner", "alice", "--json"],
    );
    for site in ["prod", "staging"] {
        ok_json(
            d,
            &["site", "create", site, "--workspace", "acme", "--json"],
        );
    }
    ok_json(d, &["site", "protect", "prod", "on", "--json"]);
    // Every guarded operation: refused without the flag, done with it and audited.
    let guarded: [&[&str]; 3] = [
        &["site", "clone", "staging", "prod"],
        &["site", "sync", "staging", "prod"],
        &["site", "delete", "prod"],
    ];
    for (i, args) in guarded.iter().enumerate() {
        let refused = endor(d, args);
        assert!(!refused.status.success(), "{args:?}");
        assert!(
            stderr(&refused).contains("--bypass-protection"),
            "{}",
            stderr(&refused)
        );
        let mut with = args.to_vec();
        with.push("--bypass-protection");
        let done = endor(d, &with);
        assert!(done.status.success(), "{with:?}: {}", stderr(&done));
        assert!(
            stderr(&done).contains("production protection bypassed"),
            "no audit log line: {}",
            stderr(&done)
        );
        let audit = ok_json(d, &["audit", "--json"]);
        assert_eq!(audit.as_array().unwrap().len(), i + 2);
        assert!(audit[i + 1]["caller"].as_str().unwrap().starts_with("cli:"));
    }
    let audit = ok_json(d, &["audit", "--json"]);
    let details: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["detail"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        details,
        [
            "protection on for prod",
            "clone into prod",
            "sync into prod",
            "delete prod"
        ]
    );
    // The trail of a deleted site is still there by its name (its delete is in it).
    let trail = ok_json(d, &["audit", "--site", "prod", "--json"]);
    assert_eq!(trail.as_array().unwrap().len(), 4, "{trail}");
    assert_eq!(trail[3]["detail"], "delete prod");
    assert!(!endor(d, &["audit", "--site", "never-was"]).status.success());
    // Turning protection off is audited too, and `endor audit` shows it as text.
    ok_json(d, &["site", "protect", "staging", "on", "--json"]);
    ok_json(d, &["site", "protect", "staging", "off", "--json"]);
    let text = endor(d, &["audit"]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.contains("\tunprotect\tprotection off for staging") && last.contains("\tcli:"),
        "{text}"
    );
    // API tokens: printed once, listed without the secret, revocable.
    let t = ok_json(d, &["user", "token", "alice", "--name", "ci", "--json"]);
    let token = t["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("endor_") && token.len() > 40);
    let list = ok_json(d, &["user", "tokens", "alice", "--json"]);
    assert_eq!(list[0]["name"], "ci");
    assert!(list[0]["revoked_at"].is_null());
    assert!(!list.to_string().contains(&token));
    let id = t["id"].as_str().unwrap();
    ok_json(d, &["user", "revoke-token", "alice", id, "--json"]);
    assert!(ok_json(d, &["user", "tokens", "alice", "--json"])[0]["revoked_at"].is_i64());
    assert!(
        !endor(d, &["user", "revoke-token", "alice", id])
            .status
            .success()
    );
    assert!(!endor(d, &["user", "token", "nobody"]).status.success());
    // Usage: a sample, then the month's report with rates and a line per site.
    let r = ok_json(d, &["usage", "acme", "--sample", "--json"]);
    assert_eq!(r["workspace"], "acme");
    assert_eq!(r["rates"]["currency"], "USD");
    let names: Vec<_> = r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["site"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"staging".to_string()), "{r}");
    assert!(
        !endor(d, &["usage", "acme", "--month", "2026-13"])
            .status
            .success()
    );
    assert!(!endor(d, &["usage", "nope"]).status.success());
}

/// `endor serve --roles`: a subset of the roles per process; a bad role stops it with exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_only_the_roles_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let start = |roles: &str| {
        let (api, gw) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_endor"))
            .current_dir(d)
            .args(["serve", "--roles", roles])
            .env("ENDOR__SERVER__LISTEN", format!("127.0.0.1:{api}"))
            .env("ENDOR__GATEWAY__LISTEN", format!("127.0.0.1:{gw}"))
            .env("ENDOR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (
            Served {
                child,
                port: api,
                gateway_port: gw,
            },
            api,
            gw,
        )
    };
    let up = |port: u16| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nothing on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Gateway only: the gateway answers, the API port stays closed.
    let (gateway_only, api, gw) = start("gateway");
    up(gw);
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{gw}/"))
        .header("host", "nothing-here.preview.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::net::TcpStream::connect(("127.0.0.1", api)).is_err());
    drop(gateway_only);
    // API and workers: the API answers, the gateway port stays closed.
    let (api_only, api, gw) = start("api,worker");
    up(api);
    let r = reqwest::get(format!("http://127.0.0.1:{api}/readyz"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(std::net::TcpStream::connect(("127.0.0.1", gw)).is_err());
    drop(api_only);
    for bad in ["api,bogus", "", "API"] {
        let out = endor(d, &["serve", "--roles", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(stderr(&out).contains("--roles"), "{}", stderr(&out));
    }
}

/// `endor doctor` says what the host enforces and which of endor's files others can read;
/// `serve` refuses to start while one can (the config names every secret endor keeps).
#[test]
fn serve_refuses_files_others_can_read_and_doctor_says_why() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("endor.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[gateway]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg_s = cfg.to_str().unwrap();

    let out = endor(dir.path(), &["--config", cfg_s, "serve"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("config file") && err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );

    let out = endor(dir.path(), &["--config", cfg_s, "--json", "doctor"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["isolation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["what"].as_str().unwrap())
        .collect();
    for what in [
        "sandbox",
        "uid per site",
        "network",
        "memory limit",
        "process limit",
        "databases",
    ] {
        assert!(names.contains(&what), "{what} missing: {v}");
    }
    let databases = v["isolation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "databases")
        .unwrap();
    assert_eq!(databases["enforced"], true, "{databases}");
    assert!(
        v["problems"][0].as_str().unwrap().contains("endor.toml"),
        "{v}"
    );

    // Made private, it passes; the store endor creates is private from the start.
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = endor(dir.path(), &["--config", cfg_s, "user", "create", "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("data/endor.db")), 0o600);
    assert_eq!(mode(&dir.path().join("data")), 0o711);
    let out = endor(dir.path(), &["--config", cfg_s, "doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("endor serve can start"), "{text}");

    // A store others can read is refused too.
    std::fs::set_permissions(
        dir.path().join("data/endor.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = endor(dir.path(), &["--config", cfg_s, "serve"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("store"), "{}", stderr(&out));
}

/// Output piped into a reader that goes away (`endor … | head`) ends the command quietly, not
/// with a panic; a log written to a pipe or file has no colour codes; `ENDOR_LOG=debug` does
/// not flood with the driver's SQL.
#[test]
fn a_closed_pipe_ends_quietly_and_logs_stay_plain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok_json(d, &["user", "create", "alice", "--json"]);
    ok_json(
        d,
        &["workspace", "create", "acme", "--owner", "alice", "--json"],
    );
    for i in 0..3 {
        ok_json(
            d,
            &[
                "site",
                "create",
                &format!("s{i}"),
                "--workspace",
                "acme",
                "--json",
            ],
        );
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_endor"))
        .current_dir(d)
        .args(["site", "list", "--json"])
        .env_remove("ENDOR_CONFIG")
        .env("ENDOR_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before a byte is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
    // The same command's log, into a pipe: plain text, no SQL of the driver's.
    let out = endor_env(d, &["site", "list"], &[("ENDOR_LOG", "debug")]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains('\u{1b}'),
        "colour codes in a piped log: {err:?}"
    );
    assert!(!err.contains("sqlx::query"), "{err}");
}

/// The README's "Connecting a repository" commands, word for word, in an empty folder: every
/// line succeeds (a README that drifts from the CLI fails here).
#[test]
fn the_readme_connecting_commands_run_verbatim() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Connecting a repository")
        .nth(1)
        .expect("the section is in the README");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("its first shell block");
    let dir = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for line in block.lines() {
        let command = line.split(" #").next().unwrap().trim();
        if command.is_empty() {
            continue;
        }
        let words: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(words[0], "endor", "{line}");
        let out = endor(dir.path(), &words[1..]);
        assert!(
            out.status.success(),
            "`{command}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 6, "{ran} commands");
    let members = ok_json(
        dir.path(),
        &["workspace", "member", "list", "acme", "--json"],
    );
    assert_eq!(members.as_array().unwrap().len(), 2, "{members}");
    // Nothing has arrived yet, and the lists say so.
    for (args, want) in [
        (&["delivery", "list"][..], "no deliveries"),
        (&["preview", "list"], "no previews"),
    ] {
        let out = endor(dir.path(), args);
        assert!(out.status.success(), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
    }
}

/// The README's quickstart, held here line for line (a change to either fails this test):
/// `endor serve` in an empty folder, with no config, answers on 127.0.0.1:8080 and makes its
/// store in `data/`; `scripts/test.sh` is there to run. `cargo install --path .` is the build
/// the suite has already made (`endor` here is that binary); it is not run again from inside
/// the suite, nor is the suite itself.
#[test]
fn the_readme_quickstart_runs_verbatim() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("## Quickstart")
        .nth(1)
        .and_then(|s| s.split("```sh\n").nth(1))
        .and_then(|b| b.split("```").next())
        .expect("the quickstart's shell block");
    let commands: Vec<&str> = block
        .lines()
        .map(|l| l.split(" #").next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        commands,
        ["cargo install --path .", "endor serve", "scripts/test.sh"]
    );
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(
        manifest.contains("name = \"endor\""),
        "cargo install gives `endor`"
    );
    let script = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test.sh"));
    use std::os::unix::fs::PermissionsExt;
    assert!(script.metadata().unwrap().permissions().mode() & 0o111 != 0);

    let dir = tempfile::tempdir().unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_endor"))
        .current_dir(dir.path())
        .arg("serve")
        .env_remove("ENDOR_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let healthy = loop {
        if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:8080") {
            use std::io::{Read, Write};
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut got = String::new();
            let _ = s.read_to_string(&mut got);
            break got;
        }
        if std::time::Instant::now() > deadline || serve.try_wait().unwrap().is_some() {
            let _ = serve.kill();
            let out = serve.wait_with_output().unwrap();
            panic!(
                "endor serve did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let out = serve.wait_with_output().unwrap();
    assert!(healthy.starts_with("HTTP/1.1 200"), "{healthy}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("data/endor.db").exists());
}

/// A command run from another folder than `endor serve`'s does not make a new, empty store
/// there: it says where it looked and what to do; the store is made only by `serve`,
/// `migrate` or the first `user create`.
#[test]
fn commands_refuse_to_make_a_store_they_only_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for args in [
        &["site", "list"][..],
        &["site", "show", "shop-pr-1"],
        &["repo", "list"],
        &["audit"],
        &["delivery", "list"],
        &["preview", "list"],
        &["preview", "show", "acme/shop#1"],
        &["workspace", "list"],
        &["user", "tokens", "alice"],
    ] {
        let out = endor(d, args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("no store at") && err.contains("--config"),
            "{args:?}: {err}"
        );
        assert!(!d.join("data").exists(), "{args:?} made a store");
    }
    ok_json(d, &["user", "create", "alice", "--json"]);
    assert!(d.join("data/endor.db").exists());
    assert!(endor(d, &["workspace", "list"]).status.success());
}

/// `endor site exec SITE -- CMD ARGS…`: the command runs as it is (no shell between: `;` and
/// `$(…)` in an argument stay text) in the site's sandbox as the site's own uid, in its files
/// folder, with its environment; stdout and stderr stay apart, the command's exit code is
/// endor's, and the site's `exec` log keeps who ran what and how it ended. Wrong sites, hostile
/// names and a missing command are refused with a clear error.
#[test]
fn site_exec_runs_a_command_in_the_sites_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok_json(d, &["user", "create", "alice", "--json"]);
    ok_json(
        d,
        &["workspace", "create", "acme", "--owner", "alice", "--json"],
    );
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in/logo.txt"), b"logo").unwrap();
    for site in ["prod", "other"] {
        ok_json(
            d,
            &[
                "site",
                "create",
                site,
                "--workspace",
                "acme",
                "--files",
                "in",
                "--json",
            ],
        );
    }
    let other = ok_json(d, &["site", "show", "other", "--json"]);
    let other_files = other["files_dir"].as_str().unwrap().to_string();

    let out = endor(
        d,
        &[
            "site",
            "exec",
            "prod",
            "--",
            "sh",
            "-c",
            "id -u; cat logo.txt; echo; echo \"$ENDOR_SITE\"; echo oops >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let uid: u32 = lines[0].parse().unwrap_or_else(|_| panic!("{text}"));
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        assert!(uid >= 200_000, "ran as {uid}, not the site's own uid");
    }
    assert_eq!(&lines[1..], ["logo", "prod"], "{text}");
    assert!(stderr(&out).contains("oops"), "{}", stderr(&out));
    assert!(!text.contains("oops"));

    // No shell between: the argument is printed as it is.
    let literal = "a; echo pwned $(id)";
    let out = endor(d, &["site", "exec", "prod", "--", "printf", "%s", literal]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), literal);

    // Another site's files are not there.
    let out = endor(
        d,
        &[
            "site",
            "exec",
            "prod",
            "--",
            "cat",
            &format!("{other_files}/logo.txt"),
        ],
    );
    assert!(!out.status.success(), "read another site's files");

    // The exec log: who, what, how it ended.
    let log = endor(d, &["site", "logs", "prod", "--service", "exec"]);
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(log.contains("exec by cli:"), "{log}");
    assert!(log.contains("exit code 3"), "{log}");
    assert!(log.contains("oops"), "{log}");
    assert!(
        log.contains(&serde_json::to_string(literal).unwrap()),
        "{log}"
    );

    for (args, says) in [
        (
            &["site", "exec", "nope", "--", "true"][..],
            "no site named nope",
        ),
        (&["site", "exec", "../x", "--", "true"][..], "site name"),
        (&["site", "exec", "prod", "--", ""][..], "no command"),
        (
            &["site", "exec", "prod", "--", "/no/such/program"][..],
            "/no/such/program",
        ),
    ] {
        let out = endor(d, args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.to_lowercase().contains(&says.to_lowercase()),
            "{args:?}: {err}"
        );
    }
    let out = endor(d, &["site", "exec", "prod"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap wants a command: {}",
        stderr(&out)
    );
}

/// `endor logs --workspace W [-f]`: every site of the workspace, its lines interleaved by time
/// and prefixed with the site, another workspace's not; with `-f`, lines written later.
#[test]
fn workspace_logs_interleave_its_sites() {
    use endor::logs::{Entry, Logs, Service};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok_json(d, &["user", "create", "alice", "--json"]);
    ok_json(
        d,
        &["workspace", "create", "acme", "--owner", "alice", "--json"],
    );
    ok_json(
        d,
        &["workspace", "create", "beta", "--owner", "alice", "--json"],
    );
    let mut ids = std::collections::HashMap::new();
    for (site, ws) in [("prod", "acme"), ("stage", "acme"), ("hidden", "beta")] {
        ok_json(d, &["site", "create", site, "--workspace", ws, "--json"]);
        let v = ok_json(d, &["site", "show", site, "--json"]);
        ids.insert(site, endor::ids::SiteId::from(v["id"].as_str().unwrap()));
    }
    let logs = Logs::new(&d.join("data/logs"), Default::default());
    let now = endor::now_ms();
    let at = |ago: i64, text: &str| Entry {
        time: now - ago,
        ..Entry::now(Service::Endor, None, text.into())
    };
    logs.append(
        &ids["prod"],
        Service::Endor,
        &[at(3000, "p1"), at(1000, "p3")],
    )
    .unwrap();
    logs.write(&ids["stage"], at(2000, "s2"));
    logs.write(&ids["hidden"], at(1500, "secret"));
    let out = endor(d, &["logs", "--workspace", "acme"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let got: Vec<(&str, &str)> = text
        .lines()
        .map(|l| (l.split(' ').next().unwrap(), l.rsplit(' ').next().unwrap()))
        .collect();
    assert_eq!(
        got,
        [("prod", "p1"), ("stage", "s2"), ("prod", "p3")],
        "{text}"
    );
    let out = endor(d, &["--json", "logs", "--workspace", "acme", "-s", "endor"]);
    let first: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["site"].clone(), first["text"].clone()),
        (serde_json::json!("prod"), serde_json::json!("p1"))
    );
    let bad = endor(d, &["logs", "--workspace", "nope"]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("nope"),
        "{}",
        stderr(&bad)
    );

    // Following: a line written later arrives.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_endor"))
        .current_dir(d)
        .args(["logs", "--workspace", "acme", "-f", "-n", "0"])
        .env_remove("ENDOR_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    logs.write(
        &ids["stage"],
        Entry::now(Service::Endor, None, "s-later".into()),
    );
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the new line never came");
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        line.starts_with("stage ") && line.ends_with("s-later"),
        "{line}"
    );

    // The workspace's own log settings: shown, set, refused when out of range, reset.
    let v = ok_json(d, &["workspace", "settings", "acme", "--json"]);
    assert_eq!(v["effective_log_retention"], "7d");
    let out = endor(
        d,
        &[
            "workspace",
            "settings",
            "acme",
            "--log-retention",
            "30d",
            "--log-max-bytes",
            "128MiB",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("30d (set for this workspace)"),
        "{text}{}",
        stderr(&out)
    );
    assert!(
        text.contains("at most 128MiB per site (set for this workspace)"),
        "{text}"
    );
    for (flag, bad) in [("--log-retention", "banana"), ("--log-max-bytes", "1KiB")] {
        let out = endor(d, &["workspace", "settings", "acme", flag, bad]);
        assert!(
            !out.status.success()
                && stderr(&out)
                    .contains(flag.trim_start_matches('-').split('-').next_back().unwrap()),
            "{flag} {bad}: {}",
            stderr(&out)
        );
    }
    let v = ok_json(
        d,
        &[
            "workspace",
            "settings",
            "acme",
            "--log-retention",
            "default",
            "--json",
        ],
    );
    assert_eq!(
        (
            v["log_retention"].clone(),
            v["log_max_bytes_per_site"].clone()
        ),
        (Value::Null, serde_json::json!("128MiB"))
    );
    // Lines past the workspace's retention are not shown.
    logs.write(&ids["prod"], at(120_000, "ancient"));
    ok_json(
        d,
        &[
            "workspace",
            "settings",
            "acme",
            "--log-retention",
            "1m",
            "--json",
        ],
    );
    let out = endor(d, &["logs", "--workspace", "acme"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(" p1") && !text.contains("ancient"), "{text}");
    let out = endor(d, &["site", "logs", "prod"]);
    assert!(out.status.success());
}
