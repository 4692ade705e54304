//! MariaDB `instance` strategy against the machine's real MariaDB binaries, on the reflink
//! filesystem (`ENDOR_TEST_REFLINK_DIR`).

mod support;

use support::{maria_sql as sql, reflink_dir};

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use endor::clone::mariadb::{Instance, MariaTools, data_dir};
use endor::clone::{Access, Strategy};

fn totals(i: &Instance) -> String {
    sql(
        i.port,
        "app",
        &i.password,
        "app",
        "SELECT COUNT(*), SUM(balance) FROM accounts",
    )
    .unwrap()
}

fn rows(i: &Instance) -> String {
    sql(
        i.port,
        "app",
        &i.password,
        "app",
        "SELECT id, balance FROM accounts ORDER BY id",
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_generation_is_consistent_under_writes_and_clones_are_isolated() {
    scenario(MariaTools::detect("mysql").unwrap(), Strategy::Instance).await;
}

/// Without mariadb-backup the generation is made by mariadb-dump: slower, still consistent,
/// and reported as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_fallback_without_mariadb_backup() {
    scenario(
        MariaTools::detect("mysql").unwrap().with_backup_tool(None),
        Strategy::Import,
    )
    .await;
}

/// The scenarios measure the filesystem's used space around each clone, so they must not run
/// at the same time (tests of one binary run in parallel).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn scenario(tools: MariaTools, generation_strategy: Strategy) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let d = reflink_dir();
    let src = format!("endor_test_src_{}", uuid::Uuid::new_v4().simple());
    sql(
        3306,
        "root",
        "",
        "mysql",
        &format!(
            "CREATE DATABASE {src}; CREATE TABLE {src}.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB; \
             INSERT INTO {src}.accounts SELECT seq, 1000 FROM seq_0_to_99;"
        ),
    )
    .unwrap();
    let parent = d.path().join("parent");
    // With `mariadb.tcp` on: the checks below reach each server by its port (the socket-only
    // default is tested through previews in tests/isolation.rs).
    let tcp = Access {
        tcp: true,
        ..Access::default()
    };
    let inst = tools.create(&parent, tcp).await.unwrap();
    tools
        .import(&parent, &format!("mysql://root@127.0.0.1:3306/{src}"))
        .await
        .unwrap();
    assert_eq!(totals(&inst), "100\t100000");

    // A writer streams money transfers into the parent through one client connection.
    let stop = Arc::new(AtomicBool::new(false));
    let mut client = Command::new("mariadb")
        .env("MYSQL_PWD", &inst.password)
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &inst.port.to_string(),
            "-u",
            "app",
            "app",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (a, b, amt) = ((n * 7) % 100, (n * 13 + 1) % 100, n % 50 + 1);
                writeln!(
                    stdin,
                    "START TRANSACTION; UPDATE accounts SET balance = balance - {amt} WHERE id = {a}; \
                     UPDATE accounts SET balance = balance + {amt} WHERE id = {b}; COMMIT;"
                )
                .unwrap();
            }
            drop(stdin);
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gen_dir = d.path().join("gen");
    let snap = tools.snapshot(&parent, &gen_dir).await.unwrap();
    assert_eq!(snap.strategy, generation_strategy);
    stop.store(true, Ordering::Relaxed);
    let sent = writer.join().unwrap();
    client.wait().unwrap();
    assert!(sent > 50, "writer barely ran: {sent}");

    let mut clones = Vec::new();
    for i in 0..2 {
        let dst = d.path().join(format!("clone-{i}"));
        let used = |p: &std::path::Path| {
            let out = Command::new("df")
                .args(["--output=used", "-B1"])
                .arg(p)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        };
        let before = used(d.path());
        let (ci, stats) = tools
            .clone_generation(&gen_dir, &dst, true, tcp)
            .await
            .unwrap();
        Command::new("sync").status().unwrap();
        // A clone shares its data: what it writes is what the server touches at start, not
        // the redo log rewritten (that was 116 MB per clone before generations were settled).
        let written = used(d.path()).saturating_sub(before);
        assert!(
            written < 48 * 1024 * 1024,
            "clone {i} wrote {written} bytes"
        );
        assert_eq!(stats.strategy, Strategy::Instance);
        assert_eq!(stats.bytes_written, 0);
        assert_eq!(totals(&ci), "100\t100000", "clone {i} is inconsistent");
        assert_ne!(ci.password, inst.password);
        clones.push((dst, ci));
    }
    // Row-level equality: with the writer stopped, a fresh generation's clone equals the parent.
    let gen2 = d.path().join("gen2");
    tools.snapshot(&parent, &gen2).await.unwrap();
    let (c2, _) = tools
        .clone_generation(&gen2, &d.path().join("clone-2"), true, tcp)
        .await
        .unwrap();
    assert_eq!(rows(&c2), rows(&inst));
    assert_eq!(rows(&c2).lines().count(), 100);
    tools.stop(&d.path().join("clone-2")).await.unwrap();
    // Isolation, and per-clone credentials.
    sql(
        clones[0].1.port,
        "app",
        &clones[0].1.password,
        "app",
        "UPDATE accounts SET balance = 0",
    )
    .unwrap();
    assert_eq!(totals(&inst), "100\t100000");
    assert_eq!(totals(&clones[1].1), "100\t100000");
    assert!(
        sql(
            clones[0].1.port,
            "app",
            &clones[1].1.password,
            "app",
            "SELECT 1"
        )
        .is_err()
    );
    assert!(
        sql(clones[0].1.port, "root", "", "mysql", "SELECT 1").is_err(),
        "root is reachable over TCP"
    );

    for dir in [
        parent.as_path(),
        clones[0].0.as_path(),
        clones[1].0.as_path(),
    ] {
        let pid: i32 = std::fs::read_to_string(data_dir(dir).join("mariadbd.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        tools.stop(dir).await.unwrap();
        // SAFETY: signal 0 only probes.
        assert!(
            unsafe { libc::kill(pid, 0) } != 0,
            "mariadbd {pid} still runs"
        );
        tools.stop(dir).await.unwrap();
    }
    for port in [inst.port, clones[0].1.port, clones[1].1.port] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still taken"
        );
    }
    sql(3306, "root", "", "mysql", &format!("DROP DATABASE {src}")).unwrap();
}
