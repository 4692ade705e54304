//! Hostile PR code under the default sandbox: a PR's build steps and start command try to reach
//! what is not theirs (other sites' files and databases, endor's store and keys, other
//! processes), to fork without end and to take more memory than their limit. Each attempt must
//! fail while the preview it attacks and endor keep serving. Every attack script also does one
//! thing it is allowed to do, so a script that did not run cannot pass for a blocked one.

mod support;

use std::path::Path;
use std::time::Duration;

use endor::ids::ConnectionId;
use endor::size::ByteSize;
use endor::store::{Preview, PreviewState};
use support::TestStore;
use support::preview::*;

const VICTIM_TOML: &str = r#"
[preview]
parent = "production"
build = ["test -f app.py"]
start = "/usr/bin/python3 app.py"
health = "/health"
"#;

/// Each probe prints `NAME: SUCCEEDED` or `NAME: blocked`.
fn attack_script(targets: &[(&str, String)]) -> String {
    let mut s = String::from(
        "try() { name=$1; shift; if \"$@\" >/dev/null 2>&1; then echo \"$name: SUCCEEDED\"; else echo \"$name: blocked\"; fi; }\n",
    );
    for (name, cmd) in targets {
        s.push_str(&format!("try {name} sh -c '{cmd}'\n"));
    }
    s
}

/// The attacker's config: the probes and a fork bomb as build steps (each appending to
/// `report.txt`; the bomb's processes are counted with shell builtins only, as forks fail
/// while it runs: even the wait for it to grow is in its own shell, which a failed fork ends), and `kill -9 -1`, then `start` serving the checkout. Locally the kill is a
/// build step of its own; in containers (`in_start`), where every step runs in one container
/// under a step runner, it goes first in the start command (a step that kills every process it
/// can ends its own build there).
fn attacker_toml(start: &str, in_start: bool) -> String {
    let kill = "kill -9 -1; echo \\\"after-kill: alive\\\" >> report.txt";
    let (kill_step, start) = if in_start {
        (String::new(), format!("{kill}; {start}"))
    } else {
        (format!("  \"{kill}\",\n"), start.to_string())
    };
    format!(
        r#"
[preview]
parent = "production"
build = [
  "sh attack.sh > report.txt 2>&1",
  "sh bomb.sh; set -- /proc/[0-9]*; echo \"bomb-procs: $#\" >> report.txt; true",
{kill_step}]
start = "{start}"
health = "/report.txt"
"#
    )
}

fn attacker_files(probes: &[(&str, String)]) -> [(&'static str, String); 2] {
    [
        ("attack.sh", attack_script(probes)),
        // The wait is inside the bomb's own shell: when the process limit makes its fork fail,
        // dash ends that shell (status 2), not the step that counts.
        ("bomb.sh", "b() { b | b & }; b; sleep 2".to_string()),
    ]
}

fn commit_files(repo: &Repo, files: &[(&str, String)]) {
    for (name, text) in files {
        std::fs::write(repo.work.join(name), text).unwrap();
    }
    git(&repo.work, &["add", "-A"]);
    git(&repo.work, &["commit", "-qm", "files"]);
    git(&repo.work, &["push", "-q", "origin", "main"]);
}

/// The victim: a running preview (`shop-pr-1`) of another repository, with its own files and
/// database cloned from `production`.
async fn victim(h: &Harness) -> ((ConnectionId, String), Preview) {
    sqlite_parent(&h.sites(), h.dir.path(), 10).await;
    let (repo, conn) = h.repo("shop", VICTIM_TOML).await;
    let sha = repo.push_pr("feature", 1, "victim");
    let pr = Pr::new("opened", 1, &sha, "feature", "octo/shop");
    assert_eq!(h.pr_event(&conn, "octo/shop", pr).await, 202);
    let p = h.ready(&conn.0, 1, None).await;
    (conn, p)
}

/// A PR of repository `name` (number `n`) with `toml` as its config and `files` committed;
/// waits until it is ready or failed.
async fn hostile(h: &Harness, name: &str, n: u64, toml: &str, files: &[(&str, String)]) -> Preview {
    let (repo, conn) = h.repo(name, toml).await;
    if !files.is_empty() {
        commit_files(&repo, files);
    }
    let sha = repo.push_pr(name, n, name);
    let full = format!("octo/{name}");
    let pr = Pr::new("opened", n, &sha, name, &full);
    assert_eq!(h.pr_event(&conn, &full, pr).await, 202);
    h.wait(
        &conn.0,
        n,
        &[PreviewState::Ready, PreviewState::Failed],
        None,
    )
    .await
}

/// Launch the hostile PR `evil` #2 (must get ready), read its `report.txt` through the
/// gateway, and check every probe: `own-*` succeeded, every other one was blocked. Returns the
/// report and the process count its fork bomb reached (when it had one).
async fn evil_report(
    h: &Harness,
    toml: &str,
    files: &[(&str, String)],
    probes: &[(&str, String)],
) -> (String, Option<usize>) {
    let evil = hostile(h, "evil", 2, toml, files).await;
    assert_eq!(evil.state, PreviewState::Ready, "{:?}", evil.reason);
    let (code, report) = h.get("evil-pr-2", "/report.txt").await;
    assert_eq!(code, 200, "{report}");
    let got = lines(&report);
    for (name, _) in probes {
        let want = if name.starts_with("own-") {
            "SUCCEEDED"
        } else {
            "blocked"
        };
        assert!(
            got.contains(&(*name, want)),
            "{name} should be {want}:\n{report}"
        );
    }
    let procs = got
        .iter()
        .find(|(n, _)| *n == "bomb-procs")
        .map(|(_, v)| v.trim().parse().unwrap());
    (report, procs)
}

fn lines(report: &str) -> Vec<(&str, &str)> {
    report.lines().filter_map(|l| l.split_once(": ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_pr_code_reaches_only_its_own_site() {
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, |c| {
        c.runtime.limits.processes = 64;
        c.runtime.limits.memory = ByteSize(64 << 20);
    })
    .await;
    let (victim_conn, victim) = victim(&h).await;
    assert_eq!(h.post("shop-pr-1", "/victim-note").await, 200);
    let sites = h.sites();
    let v = sites.show("shop-pr-1").await.unwrap();
    let p = sites.show("production").await.unwrap();
    let victim_dir = sites.root().join(&v.id);
    let parent_dir = sites.root().join(&p.id);
    let victim_files = victim_dir.join("live/files");
    let victim_db = victim_dir.join("live/sqlite/main.db");
    let parent_db = parent_dir.join("live/sqlite/main.db");
    assert!(victim_db.exists() && parent_db.exists());
    let store_file = db.url.trim_start_matches("sqlite://").to_string();
    let key = h.state.config.master_key_file().to_path_buf();
    assert!(key.exists(), "made when the store was opened");
    let endor_pid = std::process::id();
    let victim_port = victim.port.unwrap();

    let d = |p: &Path| p.display().to_string();
    let probes: Vec<(&str, String)> = vec![
        // Allowed: its own files and database (the control).
        (
            "own-files",
            "echo mine > \"$ENDOR_FILES_DIR/mine.txt\"".into(),
        ),
        ("own-db", "test -s \"${DATABASE_URL#sqlite://}\"".into()),
        // Not allowed.
        (
            "read-victim-files",
            format!("cat {}/logo.txt", d(&victim_files)),
        ),
        ("read-victim-db", format!("head -c 16 {}", d(&victim_db))),
        ("read-parent-db", format!("head -c 16 {}", d(&parent_db))),
        // The storage root shows only the folders of this site's own mounts.
        (
            "list-other-sites",
            format!("ls -a {} | grep -q {}", d(sites.root()), v.id),
        ),
        ("read-store", format!("head -c 16 {store_file}")),
        ("read-secret-key", format!("head -c 1 {}", d(&key))),
        (
            "write-parent-files",
            format!("echo pwned > {}/live/files/pwned.txt", d(&parent_dir)),
        ),
        (
            "write-victim-files",
            format!("echo pwned > {}/pwned.txt", d(&victim_files)),
        ),
        (
            "write-victim-db",
            format!("echo pwned >> {}", d(&victim_db)),
        ),
        (
            "read-endor-environ",
            format!("head -c 1 /proc/{endor_pid}/environ"),
        ),
        ("signal-endor", format!("kill -0 {endor_pid}")),
        (
            "see-host-processes",
            "test $(ls /proc | grep -c \"^[0-9]\") -gt 20".into(),
        ),
        ("read-host-root", "ls /root".into()),
    ];
    let evil_toml = &attacker_toml(
        "/usr/bin/python3 -m http.server $PORT --bind 127.0.0.1",
        false,
    );
    let files = attacker_files(&probes);
    let (report, procs) = evil_report(&h, evil_toml, &files, &probes).await;
    // The fork bomb ran into the process limit inside its own PID namespace.
    let procs = procs.unwrap_or_else(|| panic!("no bomb count:\n{report}"));
    assert!(procs <= 64, "the bomb made {procs} processes:\n{report}");
    let e = h.store().site_by_name("evil-pr-2").await.unwrap().unwrap();
    if let Some(g) = endor::runtime::Host::new(&h.state.config).group(e.id.as_str()) {
        assert!(
            g.fork_refusals() > 0,
            "the process limit never refused a fork"
        );
    }
    assert!(report.contains("after-kill: alive"), "{report}");

    // Nothing of theirs was touched, and the victim, its parent and endor still serve.
    assert!(!victim_files.join("pwned.txt").exists());
    assert!(!parent_dir.join("live/files/pwned.txt").exists());
    let (code, body) = h.get("shop-pr-1", "/").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("notes=victim-note"), "{body}");
    assert_eq!(
        h.preview(&victim_conn.0, 1).await.unwrap().port,
        Some(victim_port)
    );

    // Each site has a uid of its own, and its data folders are its own, 0700.
    let uid_of = |name: &str| {
        let name = name.to_string();
        let store = h.state.store.clone();
        async move { store.site_by_name(&name).await.unwrap().unwrap().uid }
    };
    let (vu, eu) = (uid_of("shop-pr-1").await, uid_of("evil-pr-2").await);
    assert!(vu.is_some() && eu.is_some() && vu != eu, "{vu:?} {eu:?}");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&victim_files).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (vu.unwrap(), 0o700));

    // A memory hog: the kernel kills it at the limit, and the preview says why.
    let hog_toml = r#"
[preview]
build = ["/usr/bin/python3 -c 'x = bytearray(128 * 1024 * 1024); print(len(x))'"]
root = "."
"#;
    let hog = hostile(&h, "hog", 3, hog_toml, &[]).await;
    assert_eq!(hog.state, PreviewState::Failed);
    let reason = hog.reason.unwrap_or_default();
    assert!(reason.contains("memory limit (64MiB)"), "{reason}");
    assert_eq!(h.get("shop-pr-1", "/health").await.0, 200);
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.stop().await;
}

/// With `runtime.network = "isolated"`, a preview has a network namespace of its own: the
/// gateway still reaches its app (its port is forwarded from the host's loopback), but from
/// inside, neither another preview's port nor the host's database servers answer, on the
/// loopback or through the namespace's gateway address.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_network_reaches_neither_the_host_nor_other_previews() {
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, |c| {
        c.runtime.network = endor::config::NetworkMode::Isolated;
    })
    .await;
    let (_, victim) = victim(&h).await;
    let victim_port = victim.port.unwrap();
    // The victim answers on the host's loopback (through its forwarded port).
    assert_eq!(h.get("shop-pr-1", "/health").await.0, 200);

    let probe = format!(
        r#"
import socket, struct
def gateway():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        f = line.split()
        if f[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<L", int(f[2], 16)))
targets = [("victim-port", "127.0.0.1", {victim_port}), ("host-postgres", "127.0.0.1", 5432),
           ("host-mariadb", "127.0.0.1", 3306)]
gw = gateway()
if gw:
    targets += [("victim-port-via-gateway", gw, {victim_port}), ("host-postgres-via-gateway", gw, 5432)]
out = open("report.txt", "w")
for name, host, port in targets:
    try:
        socket.create_connection((host, port), 2).close()
        out.write(name + ": SUCCEEDED\n")
    except OSError:
        out.write(name + ": blocked\n")
out.write("gateway: " + str(gw) + "\n")
"#
    );
    let evil_toml = r#"
[preview]
parent = "production"
build = ["/usr/bin/python3 probe.py"]
start = "/usr/bin/python3 -m http.server $PORT --bind 127.0.0.1"
health = "/report.txt"
"#;
    let evil = hostile(&h, "evil", 2, evil_toml, &[("probe.py", probe)]).await;
    assert_eq!(evil.state, PreviewState::Ready, "{:?}", evil.reason);
    // The gateway reaches the isolated app: that is how the report is read.
    let (code, report) = h.get("evil-pr-2", "/report.txt").await;
    assert_eq!(code, 200, "{report}");
    let got = lines(&report);
    for name in ["victim-port", "host-postgres", "host-mariadb"] {
        assert!(got.contains(&(name, "blocked")), "{name}:\n{report}");
    }
    assert!(
        !report.contains("SUCCEEDED"),
        "something outside answered:\n{report}"
    );
    assert_eq!(h.get("shop-pr-1", "/health").await.0, 200);
    h.stop().await;
}

/// Disk: what a preview writes (build output in its checkout, new files in its files folder)
/// counts against its disk limit; past it the build stops and the preview says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writing_past_the_disk_limit_fails_with_the_reason() {
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, |c| c.runtime.limits.disk = ByteSize(8 << 20)).await;
    let toml = r#"
[preview]
build = [
  "dd if=/dev/zero of=small bs=1M count=3",
  "dd if=/dev/zero of=\"$ENDOR_FILES_DIR/big\" bs=1M count=16",
]
root = "."
"#;
    let p = hostile(&h, "filler", 4, toml, &[]).await;
    assert_eq!(p.state, PreviewState::Failed);
    let reason = p.reason.unwrap_or_default();
    assert!(
        reason.contains("of=\"$ENDOR_FILES_DIR/big\"") && reason.contains("disk limit (8MiB)"),
        "{reason}"
    );
    let site = h.sites().show("filler-pr-4").await.unwrap();
    let log = support::log_text(
        &h.dir.path().join("logs"),
        &site.id,
        endor::logs::Service::Build,
    );
    assert!(
        log.contains("$ dd if=/dev/zero of=small") && log.contains("[endor] the step was stopped"),
        "{log}"
    );
    h.stop().await;
}

/// Another site's database servers: they listen on no port, their socket folders are not in a
/// hostile preview's sandbox (neither at the short name its URL uses nor at the real path),
/// and outside any sandbox only the site's own uid passes them. A preview reaches its own
/// servers through its socket as `app` only: never as PostgreSQL's superuser or MariaDB's
/// root, so nothing of the server (which runs outside the sandbox) is its to command.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_sites_database_servers_refuse_a_hostile_preview() {
    let db = TestStore::sqlite().await;
    let h = Harness::start(&db).await;
    let (pg_src, maria_src) = db_parent(&h.sites(), h.dir.path()).await;
    let (repo, conn) = h.repo("api", VICTIM_TOML).await;
    let sha = repo.push_pr("feature", 1, "victim");
    let pr = Pr::new("opened", 1, &sha, "feature", "octo/api");
    assert_eq!(h.pr_event(&conn, "octo/api", pr).await, 202);
    h.ready(&conn.0, 1, None).await;
    let sites = h.sites();
    let victim = sites.show("api-pr-1").await.unwrap();
    let parent = sites.show("production").await.unwrap();
    let url = |d: &endor::sites::SiteDetails, scheme: &str| -> String {
        d.database_urls
            .iter()
            .find(|u| u.starts_with(scheme))
            .unwrap_or_else(|| panic!("no {scheme} URL in {:?}", d.database_urls))
            .clone()
    };
    let (vpg, vmy, ppg) = (
        url(&victim, "postgres"),
        url(&victim, "mysql"),
        url(&parent, "postgres"),
    );
    let password = |u: &str| {
        u.split_once("app:")
            .unwrap()
            .1
            .split_once('@')
            .unwrap()
            .0
            .to_string()
    };
    let instance = |d: &endor::sites::SiteDetails, kind: &str| {
        sites
            .root()
            .join(d.id.as_str())
            .join("live")
            .join(kind)
            .join("main")
    };
    let (vpg_dir, vmy_dir, ppg_dir) = (
        instance(&victim, "postgres"),
        instance(&victim, "mariadb"),
        instance(&parent, "postgres"),
    );
    let pg_alias = |d: &Path| endor::clone::postgres::run_dir(d).display().to_string();
    let my_alias = |d: &Path| endor::clone::mariadb::run_dir(d).display().to_string();
    let real = |d: &Path| d.join("run").display().to_string();
    assert_eq!(
        vpg,
        format!(
            "postgres://app:{}@localhost:5432/app?host={}",
            password(&vpg),
            pg_alias(&vpg_dir)
        )
    );
    assert!(
        vmy.ends_with(&format!("?socket={}/mysqld.sock", my_alias(&vmy_dir))),
        "{vmy}"
    );

    // No TCP: none of their servers' processes listens on a port.
    let pids: Vec<String> = [
        vpg_dir.join("data/postmaster.pid"),
        ppg_dir.join("data/postmaster.pid"),
        vmy_dir.join("data/mariadbd.pid"),
    ]
    .iter()
    .map(|f| {
        let text = std::fs::read_to_string(f).unwrap();
        text.lines().next().unwrap().trim().to_string()
    })
    .collect();
    let ss = std::process::Command::new("ss")
        .args(["-H", "-ltnp"])
        .output()
        .unwrap();
    let listening = String::from_utf8_lossy(&ss.stdout).into_owned();
    for pid in &pids {
        assert!(
            !listening.contains(&format!("pid={pid},")),
            "server {pid} listens on TCP:\n{listening}"
        );
    }

    // Outside any sandbox (as with runtime.isolation = "none"): the socket folders let the
    // site's own uid through and nobody else's.
    let uid_of = |d: &endor::sites::SiteDetails| {
        let store = h.state.store.clone();
        let id = d.id.clone();
        async move { store.site(&id).await.unwrap().unwrap().uid.unwrap() }
    };
    let (victim_uid, parent_uid) = (uid_of(&victim).await, uid_of(&parent).await);
    let psql_as = |uid: u32, url: &str| {
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new("psql")
            .args(["-X", "-w", "-A", "-t", "-c", "select 1", url])
            .env_clear()
            .env("PGCONNECT_TIMEOUT", "3")
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(
        psql_as(victim_uid, &vpg),
        (true, String::new()),
        "the victim's own uid"
    );
    for (uid, u) in [(parent_uid, &vpg), (65534, &vpg), (victim_uid, &ppg)] {
        let (ok, err) = psql_as(uid, u);
        assert!(
            !ok && err.contains("Permission denied"),
            "uid {uid} reached {u}: {err}"
        );
    }

    let psql = "PGCONNECT_TIMEOUT=3 psql -X -w -A -t -c \"select 1\"";
    let maria = "mariadb --no-defaults --connect-timeout=3 -e \"select 1\"";
    let own_socket = "\"${DATABASE_URL#*host=}\"";
    let own_maria = "$(dirname \"${DATABASE_URL#*host=}\")/my-*/mysqld.sock";
    let (vpw, vmpw, ppw) = (password(&vpg), password(&vmy), password(&ppg));
    let probes: Vec<(&str, String)> = vec![
        // Allowed: its own servers through their sockets (the controls).
        ("own-db", format!("{psql} \"$DATABASE_URL\"")),
        ("own-mariadb-socket", format!("test -S {own_maria}")),
        // Its own servers, as their superusers: refused.
        (
            "su-own-pg-endor",
            format!("{psql} -h {own_socket} -p 5432 -U endor postgres"),
        ),
        (
            "su-own-pg-postgres",
            format!("{psql} -h {own_socket} -p 5432 -U postgres postgres"),
        ),
        (
            "su-own-mariadb-root",
            format!("{maria} -S {own_maria} -uroot mysql"),
        ),
        (
            "su-own-mariadb-mysql",
            format!("{maria} -S {own_maria} -umysql mysql"),
        ),
        // Other sites' servers, with their own passwords, by every path.
        ("victim-pg-url", format!("{psql} \"{vpg}\"")),
        (
            "victim-pg-real",
            format!(
                "PGPASSWORD={vpw} {psql} -h {} -p 5432 -U app app",
                real(&vpg_dir)
            ),
        ),
        ("victim-pg-listing", format!("ls {}", real(&vpg_dir))),
        (
            "victim-mariadb-alias",
            format!(
                "MYSQL_PWD={vmpw} {maria} -S {}/mysqld.sock -uapp app",
                my_alias(&vmy_dir)
            ),
        ),
        (
            "victim-mariadb-real",
            format!(
                "MYSQL_PWD={vmpw} {maria} -S {}/mysqld.sock -uapp app",
                real(&vmy_dir)
            ),
        ),
        ("parent-pg-url", format!("{psql} \"{ppg}\"")),
        (
            "parent-pg-real",
            format!(
                "PGPASSWORD={ppw} {psql} -h {} -p 5432 -U app app",
                real(&ppg_dir)
            ),
        ),
        // And the old ways in: the machine's loopback ports of the victim's servers.
        (
            "victim-pg-tcp",
            format!("PGPASSWORD={vpw} {psql} -h 127.0.0.1 -p 5432 -U app app"),
        ),
    ];
    let evil_toml = r#"
[preview]
parent = "production"
build = ["sh attack.sh > report.txt 2>&1"]
root = "."
"#;
    evil_report(
        &h,
        evil_toml,
        &[("attack.sh", attack_script(&probes))],
        &probes,
    )
    .await;
    // The victim's app still reaches its own database through its socket in its sandbox.
    let (code, body) = h.get("api-pr-1", "/").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("logo=pg-logo accounts=100"), "{body}");
    h.stop().await;
    support::drop_pg_db(&pg_src).await;
    support::drop_maria_db(&maria_src);
}

/// `runtime.kind = "docker"`: the same hostile PR in containers of a locally built image
/// (`scripts/docker.sh`; nothing is pulled): it reaches neither another site's data nor
/// endor's, its fork bomb and `kill -9 -1` stay inside, another preview's port does not
/// answer from its network, a memory hog is killed with the reason, and the gateway serves
/// both previews through their published loopback ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_previews_are_isolated_the_same_way() {
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, |c| {
        c.runtime.kind = endor::config::RuntimeKind::Docker;
        c.runtime.image = "endor-base:bookworm-py".into();
        c.runtime.limits.processes = 64;
        c.runtime.limits.memory = ByteSize(64 << 20);
    })
    .await;
    let host = endor::runtime::Host::new(&h.state.config);
    host.check()
        .unwrap_or_else(|e| panic!("scripts/docker.sh starts dockerd and builds the image: {e}"));
    sqlite_parent(&h.sites(), h.dir.path(), 10).await;
    // In a container the app listens on 0.0.0.0 (its port is published on the host's loopback).
    let victim_toml = r#"
[preview]
parent = "production"
build = ["cp \"$ENDOR_FILES_DIR/logo.txt\" logo.txt"]
start = "exec python3 -m http.server $PORT --bind 0.0.0.0"
health = "/logo.txt"
"#;
    let victim = hostile(&h, "shop", 1, victim_toml, &[]).await;
    assert_eq!(victim.state, PreviewState::Ready, "{:?}", victim.reason);
    assert_eq!(
        h.get("shop-pr-1", "/logo.txt").await,
        (200, "parent-logo".into())
    );
    let sites = h.sites();
    let v = sites.show("shop-pr-1").await.unwrap();
    let victim_dir = sites.root().join(&v.id);
    let victim_files = victim_dir.join("live/files");
    let store_file = db.url.trim_start_matches("sqlite://").to_string();
    let victim_port = victim.port.unwrap();
    let d = |p: &Path| p.display().to_string();
    let probes: Vec<(&str, String)> = vec![
        (
            "own-files",
            "echo mine > \"$ENDOR_FILES_DIR/mine.txt\"".into(),
        ),
        (
            "read-victim-files",
            format!("cat {}/logo.txt", d(&victim_files)),
        ),
        (
            "read-victim-db",
            format!("head -c 16 {}/live/sqlite/main.db", d(&victim_dir)),
        ),
        (
            "write-victim-files",
            format!("echo pwned > {}/pwned.txt", d(&victim_files)),
        ),
        ("read-store", format!("head -c 16 {store_file}")),
        (
            "see-host-processes",
            "test $(ls /proc | grep -c \"^[0-9]\") -gt 20".into(),
        ),
        (
            "victim-port",
            format!(
                "python3 -c \"import socket; socket.create_connection((\\\"127.0.0.1\\\", {victim_port}), 2)\""
            ),
        ),
    ];
    let evil_toml = &attacker_toml("exec python3 -m http.server $PORT --bind 0.0.0.0", true);
    let files = attacker_files(&probes);
    let (report, procs) = evil_report(&h, evil_toml, &files, &probes).await;
    let procs = procs.unwrap_or_else(|| panic!("no bomb count:\n{report}"));
    assert!(procs <= 64, "the bomb made {procs} processes:\n{report}");
    assert!(report.contains("after-kill: alive"), "{report}");
    assert!(!victim_files.join("pwned.txt").exists());
    assert_eq!(h.get("shop-pr-1", "/logo.txt").await.0, 200);

    // A memory hog: the container is killed at the limit, and the preview says why.
    let hog_toml = r#"
[preview]
build = ["python3 -c 'x = bytearray(128 * 1024 * 1024); print(len(x))'"]
root = "."
"#;
    let hog = hostile(&h, "hog", 3, hog_toml, &[]).await;
    assert_eq!(hog.state, PreviewState::Failed);
    let reason = hog.reason.unwrap_or_default();
    assert!(reason.contains("memory limit (64MiB)"), "{reason}");

    // Steps in one container: each with its own output and exit code in the log, the first
    // failure ends the build, nothing after it runs.
    let steps_toml = r#"
[preview]
build = ["echo one", "printf 'no newline'", "echo two; exit 3", "echo never"]
root = "."
"#;
    let failed = hostile(&h, "steps", 4, steps_toml, &[]).await;
    assert_eq!(failed.state, PreviewState::Failed);
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.contains("build step `echo two; exit 3` failed with exit code 3"),
        "{reason}"
    );
    let site = h.sites().show("steps-pr-4").await.unwrap();
    let log = support::log_text(
        &h.dir.path().join("logs"),
        &site.id,
        endor::logs::Service::Build,
    );
    assert!(
        log.contains(
            "$ echo one\none\n$ printf 'no newline'\nno newline\n$ echo two; exit 3\ntwo\n"
        ),
        "{log}"
    );
    assert!(
        !log.contains("never") && !log.contains("ENDOR-STEP"),
        "{log}"
    );

    // A site's own PostgreSQL, in a container: its socket folder is bound at the short name
    // its DATABASE_URL uses (the build connects to it), and there is no port to reach.
    let (pg_src, pg_url) = support::pg_source_db().await;
    h.sites()
        .create(
            "pgprod",
            "acme",
            None,
            endor::sites::Imports {
                postgres: Some(&pg_url),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let connect = "import os, socket\n\
                   d = os.environ[\"DATABASE_URL\"].split(\"host=\")[1]\n\
                   s = socket.socket(socket.AF_UNIX)\n\
                   s.connect(d + \"/.s.PGSQL.5432\")\n\
                   print(\"reached\", d)\n";
    let pg_toml =
        "[preview]\nparent = \"pgprod\"\nbuild = [\"python3 connect.py\"]\nroot = \".\"\n";
    let pg = hostile(
        &h,
        "pgapp",
        5,
        pg_toml,
        &[("connect.py", connect.to_string())],
    )
    .await;
    assert_eq!(pg.state, PreviewState::Ready, "{:?}", pg.reason);
    let site = h.sites().show("pgapp-pr-5").await.unwrap();
    let log = support::log_text(
        &h.dir.path().join("logs"),
        &site.id,
        endor::logs::Service::Build,
    );
    assert!(log.contains("reached /run/endor/pg-"), "{log}");
    // `site exec` in a container of the site: its argv as it is, its environment, its code.
    let lifecycle = endor::previews::Lifecycle::standalone(h.state.store.clone(), &h.state.config);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let argv: Vec<String> = [
        "sh",
        "-c",
        "echo \"$ENDOR_SITE\" \"$1\"; echo oops >&2; exit 4",
        "sh",
        "a; b",
    ]
    .map(String::from)
    .to_vec();
    let end = lifecycle
        .exec("pgapp-pr-5", &argv, "test", |pipe, chunk| match pipe {
            endor::runtime::Pipe::Out => out.extend_from_slice(chunk),
            endor::runtime::Pipe::Err => err.extend_from_slice(chunk),
        })
        .await
        .unwrap();
    assert_eq!(end.exit_code, Some(4), "{}", String::from_utf8_lossy(&out));
    assert_eq!(String::from_utf8_lossy(&out).trim(), "pgapp-pr-5 a; b");
    // A container's stderr stays stderr.
    assert_eq!(String::from_utf8_lossy(&err).trim(), "oops");
    support::drop_pg_db(&pg_src).await;

    // Released, a site leaves no container and no network behind.
    let ids: Vec<String> = h
        .store()
        .list_sites()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    h.stop().await;
    for id in &ids {
        host.release(id).await;
        let docker = |args: &[&str]| {
            let out = std::process::Command::new("docker")
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let label = format!("label=endor.site={id}");
        assert_eq!(docker(&["ps", "-aq", "--filter", &label]), "");
        assert_eq!(docker(&["network", "ls", "-q", "--filter", &label]), "");
    }
}

/// Ownership changes, data does not move: a preview's copy of its parent's 16 MiB is chowned
/// to the preview's own uid and still shares every extent with the parent (what FIEMAP sees
/// as its own stays near zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clone_owned_by_its_site_still_shares_its_extents() {
    use std::os::unix::fs::MetadataExt;
    const MIB: u64 = 1 << 20;
    let db = TestStore::sqlite().await;
    let h = Harness::start(&db).await;
    let src = h.dir.path().join("big-src");
    std::fs::create_dir_all(&src).unwrap();
    let block: Vec<u8> = (0..MIB).map(|i| (i * 7 % 251) as u8).collect();
    let mut data = Vec::new();
    for i in 0..16u8 {
        data.extend(block.iter().map(|b| b ^ i));
    }
    std::fs::write(src.join("big.bin"), &data).unwrap();
    h.sites()
        .create(
            "production",
            "acme",
            None,
            endor::sites::Imports {
                files: Some(&src),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let toml = r#"
[preview]
parent = "production"
build = ["test -s \"$ENDOR_FILES_DIR/big.bin\""]
root = "."
"#;
    let p = hostile(&h, "shop", 1, toml, &[]).await;
    assert_eq!(p.state, PreviewState::Ready, "{:?}", p.reason);
    let site = h.store().site_by_name("shop-pr-1").await.unwrap().unwrap();
    let files = h.sites().files_dir(&site);
    let m = std::fs::metadata(files.join("big.bin")).unwrap();
    assert_eq!(
        Some(m.uid()),
        site.uid,
        "the copy belongs to the preview's uid"
    );
    assert_ne!(site.uid, Some(0));
    let fp = endor::usage::footprint(&files);
    assert!(fp.logical >= 16 * MIB, "{fp:?}");
    assert!(
        fp.exclusive < MIB / 4,
        "after the chown the preview owns {} bytes of its own",
        fp.exclusive
    );
    h.stop().await;
}

/// A site's own database servers write into its logs: `endor serve` ships PostgreSQL's and
/// MariaDB's server logs into the site's `postgres` and `mariadb` services, a statement slower
/// than `logs.slow_query_ms` with its duration and text as fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_servers_logs_and_slow_queries_reach_the_site_s_logs() {
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, |c| c.logs.slow_query_ms = 200).await;
    let (pg_src, maria_src) = db_parent(&h.sites(), h.dir.path()).await;
    let site = h.sites().show("production").await.unwrap();
    let url = |scheme: &str| {
        site.database_urls
            .iter()
            .find(|u| u.starts_with(scheme))
            .unwrap()
            .clone()
    };
    let (pg, my) = (url("postgres"), url("mysql"));
    let run = |program: &str, args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A slow statement on each, and a fast one that is not logged.
    run(
        "psql",
        &[
            "-X",
            "-w",
            "-c",
            "SELECT pg_sleep(0.3)",
            "-c",
            "SELECT 42",
            &pg,
        ],
        &[],
    );
    let password = my.split_once("app:").unwrap().1.split_once('@').unwrap().0;
    let socket = my.split_once("socket=").unwrap().1;
    run(
        "mariadb",
        &[
            "--no-defaults",
            "-S",
            socket,
            "-uapp",
            "app",
            "-e",
            "SELECT SLEEP(0.3); SELECT 42;",
        ],
        &[("MYSQL_PWD", password)],
    );
    let logs = std::path::absolute(&h.state.config.storage.logs).unwrap();
    let lines_of = |service: endor::logs::Service| {
        endor::logs::read_since(&logs, &site.id, &[service], &Default::default(), None)
            .unwrap()
            .0
    };
    let slow = |service: endor::logs::Service, needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let lines = lines_of(service);
            if let Some(r) = lines.iter().find(|r| {
                r.entry
                    .fields
                    .get("statement")
                    .and_then(|s| s.as_str())
                    .is_some_and(|s| s.contains(needle))
            }) {
                return (r.entry.clone(), lines);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no slow {needle} in the {service} log: {lines:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    use endor::logs::Service;
    let (e, lines) = slow(Service::Postgres, "pg_sleep(0.3)");
    let ms = e.fields["duration_ms"].as_f64().unwrap();
    assert!((300.0..10_000.0).contains(&ms), "{e:?}");
    assert_eq!(e.fields["slow"], true);
    assert!(
        !lines.iter().any(|r| r.entry.text.contains("SELECT 42")),
        "a fast statement is not logged"
    );
    // The server's own lines come along (its start).
    assert!(
        lines
            .iter()
            .any(|r| r.entry.text.contains("ready to accept connections")),
        "{lines:#?}"
    );
    let (e, lines) = slow(Service::Mariadb, "SLEEP(0.3)");
    let ms = e.fields["duration_ms"].as_f64().unwrap();
    assert!((300.0..10_000.0).contains(&ms), "{e:?}");
    assert_eq!(e.fields["user"], "app");
    assert!(!lines.iter().any(|r| r.entry.text.contains("SELECT 42")));
    assert!(
        lines
            .iter()
            .any(|r| r.entry.text.contains("ready for connections")),
        "{lines:#?}"
    );
    h.stop().await;
    support::drop_pg_db(&pg_src).await;
    support::drop_maria_db(&maria_src);
}

/// A preview whose app floods its output (100 MB on start) blocks nothing: it goes on to
/// serve, its logs stay under `logs.max_bytes_per_site` (a reader is told what was dropped),
/// and the gateway keeps serving another preview all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_preview_blocks_nothing_and_stays_under_its_cap() {
    let db = TestStore::sqlite().await;
    let cap = 4u64 << 20;
    let h = Harness::start_with(&db, |c| {
        c.logs.max_bytes_per_site = ByteSize(cap);
        // The app serves once its 100 MB are out: on a busy machine that takes a while.
        c.runtime.health_timeout = endor::duration::HumanDuration(Duration::from_secs(180));
    })
    .await;
    victim(&h).await;
    let flood_toml = r#"
[preview]
parent = "production"
build = ["true"]
start = "yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -c 100000000; echo flood-done > flood.txt; exec /usr/bin/python3 -m http.server $PORT --bind 127.0.0.1"
health = "/flood.txt"
"#;
    let flood = {
        let h = &h;
        async move { hostile(h, "flood", 2, flood_toml, &[]).await }
    };
    // Another site through the gateway, again and again, while the flood runs.
    let served = async {
        let (mut ok, mut slowest) = (0usize, Duration::ZERO);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        loop {
            let t = std::time::Instant::now();
            let r = client
                .get(format!("http://{}/health", h.gateway))
                .header("host", "shop-pr-1.preview.localhost")
                .send()
                .await
                .expect("the gateway stopped answering during the flood");
            assert_eq!(r.status(), 200);
            ok += 1;
            slowest = slowest.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
            if FLOOD_DONE.load(std::sync::atomic::Ordering::SeqCst) {
                return (ok, slowest);
            }
        }
    };
    static FLOOD_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let flood = async {
        let p = flood.await;
        FLOOD_DONE.store(true, std::sync::atomic::Ordering::SeqCst);
        p
    };
    let (p, (ok, slowest)) = tokio::join!(flood, served);
    assert_eq!(p.state, PreviewState::Ready, "{:?}", p.reason);
    assert!(ok >= 5, "only {ok} requests served during the flood");
    eprintln!("served {ok} requests during the flood, the slowest in {slowest:?}");
    // The flood went on to serve: it was never blocked on its output.
    assert_eq!(
        h.get("flood-pr-2", "/flood.txt").await,
        (200, "flood-done\n".into())
    );
    let logs = std::path::absolute(&h.state.config.storage.logs).unwrap();
    let site = p.site_id.clone().unwrap();
    let dir = endor::logs::site_dir(&logs, &site);
    let size: u64 = walk(&dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(size <= cap, "the site's logs hold {size} bytes, past {cap}");
    let (lines, _) = endor::logs::read_since(
        &logs,
        &site,
        &[endor::logs::Service::Web],
        &Default::default(),
        None,
    )
    .unwrap();
    assert!(
        lines[0]
            .entry
            .text
            .contains("older lines of this log are gone"),
        "{:?}",
        lines[0]
    );
    h.stop().await;
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A static preview is served by the gateway, which runs as endor, outside the sandbox: a
/// symbolic link the build (or the repository) put in the served folder must not hand out the
/// host's files. A link that leaves the folder fails the launch and says which; a link that
/// stays inside it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_static_preview_cannot_serve_the_host_s_files_through_links() {
    let db = TestStore::sqlite().await;
    let h = Harness::start(&db).await;
    let store_file = db.url.trim_start_matches("sqlite://").to_string();
    for (n, target) in [
        (1, "/etc/hostname".to_string()),
        (2, store_file.clone()),
        (3, "/".into()),
    ] {
        let toml = format!(
            "[preview]\nbuild = [\"mkdir -p out/deep\", \"cp index.html out/\", \"ln -s {target} out/deep/leak\"]\nroot = \"out\"\n"
        );
        let p = hostile(&h, &format!("links{n}"), n, &toml, &[]).await;
        assert_eq!(p.state, PreviewState::Failed, "{target}: {p:?}");
        let reason = p.reason.unwrap_or_default();
        assert!(
            reason.contains("deep/leak") && reason.contains("outside"),
            "{reason}"
        );
        let (code, body) = h.get(&format!("links{n}-pr-{n}"), "/deep/leak").await;
        assert_ne!(code, 200, "{target}: {body}");
    }
    // The served folder itself a link out of the checkout.
    let p = hostile(
        &h,
        "rootlink",
        4,
        "[preview]\nbuild = [\"ln -s /etc out\"]\nroot = \"out\"\n",
        &[],
    )
    .await;
    assert_eq!(p.state, PreviewState::Failed, "{p:?}");
    assert_ne!(h.get("rootlink-pr-4", "/hostname").await.0, 200);
    // Links inside the folder are fine.
    let p = hostile(
        &h,
        "inside",
        5,
        "[preview]\nbuild = [\"mkdir -p out/v2\", \"cp index.html out/v2/\", \"seq 1 3000 > out/v2/n.txt\", \"ln -s v2 out/latest\", \"ln -s ../v2/index.html out/v2/again.html\"]\nroot = \"out\"\n",
        &[],
    )
    .await;
    assert_eq!(p.state, PreviewState::Ready, "{p:?}");
    let (code, body) = h.get("inside-pr-5", "/latest/index.html").await;
    assert_eq!((code, body.trim()), (200, "inside"));
    // The launch compressed its text assets: served as brotli to a visitor who takes it.
    let r = h
        .http
        .get(format!("http://{}/v2/n.txt", h.gateway))
        .header("host", "inside-pr-5.preview.localhost")
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "br");
    let mut plain = Vec::new();
    brotli::BrotliDecompress(&mut &r.bytes().await.unwrap()[..], &mut plain).unwrap();
    assert!(String::from_utf8(plain).unwrap().ends_with("2999\n3000\n"));
    h.stop().await;
}
