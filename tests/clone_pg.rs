//! PostgreSQL `instance` strategy against the machine's real PostgreSQL binaries, on the
//! reflink filesystem (`ENDOR_TEST_REFLINK_DIR`).

mod support;

use support::reflink_dir;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use endor::clone::postgres::{PgTools, data_dir, load, run_dir};
use endor::clone::{Access, Strategy};
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPoolOptions};

async fn rows(url: &str) -> Vec<(i32, i64)> {
    let mut c = PgConnection::connect(url).await.unwrap();
    sqlx::query_as("SELECT id, balance FROM accounts ORDER BY id")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

fn pid_of(dir: &Path) -> i32 {
    std::fs::read_to_string(data_dir(dir).join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only probes.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_generation_is_consistent_under_writes_and_clones_are_isolated() {
    let tools = PgTools::detect(None, "postgres").unwrap();
    let d = reflink_dir();
    let (src_name, src_url) = support::pg_source_db().await;
    let parent = d.path().join("parent");
    let inst = tools.create(&parent, Access::default()).await.unwrap();
    let parent_url = inst.url(&parent);
    tools.import(&parent, &inst, &src_url).await.unwrap();
    assert_eq!(support::pg_totals(&parent_url).await, (100, 100_000));

    // A writer moves money on the parent the whole time.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&parent_url)
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
                    .bind(n % 50 + 1)
                    .bind(((n * 7) % 100) as i32)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
                    .bind(n % 50 + 1)
                    .bind(((n * 13 + 1) % 100) as i32)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gen_dir = d.path().join("gen");
    let snap = tools.snapshot(&parent, &gen_dir, true).await.unwrap();
    assert_eq!(snap.strategy, Strategy::Instance);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let transfers = writer.await.unwrap();
    assert!(transfers > 20, "writer barely ran: {transfers}");
    pool.close().await;

    // Row-level equality: with the writer stopped, a fresh generation's clone equals the parent.
    let gen2 = d.path().join("gen2");
    tools.snapshot(&parent, &gen2, true).await.unwrap();
    let c2_dir = d.path().join("clone-2");
    let (c2, _) = tools
        .clone_generation(&gen2, &c2_dir, true, Access::default())
        .await
        .unwrap();
    assert_eq!(rows(&c2.url(&c2_dir)).await, rows(&parent_url).await);
    assert_eq!(rows(&c2.url(&c2_dir)).await.len(), 100);
    tools.stop(&d.path().join("clone-2")).await.unwrap();

    let mut clones = Vec::new();
    for i in 0..2 {
        let dst = d.path().join(format!("clone-{i}"));
        let (ci, stats) = tools
            .clone_generation(&gen_dir, &dst, true, Access::default())
            .await
            .unwrap();
        assert_eq!(stats.strategy, Strategy::Instance);
        assert_eq!(stats.bytes_written, 0, "a reflink clone wrote data");
        assert_eq!(
            support::pg_totals(&ci.url(&dst)).await,
            (100, 100_000),
            "clone {i} is inconsistent"
        );
        // Its own socket, and no TCP port at all.
        assert!(
            !ci.tcp
                && ci
                    .url(&dst)
                    .contains(&format!("host={}", run_dir(&dst).display()))
        );
        assert_ne!(run_dir(&dst), run_dir(&parent));
        assert_ne!(
            ci.password, inst.password,
            "clones share credentials with the parent"
        );
        clones.push((dst, ci));
    }
    // Isolation both ways.
    let (c0, i0) = &clones[0];
    let mut c = PgConnection::connect(&i0.url(c0)).await.unwrap();
    sqlx::query("UPDATE accounts SET balance = 0")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    assert_eq!(support::pg_totals(&parent_url).await, (100, 100_000));
    assert_eq!(
        support::pg_totals(&clones[1].1.url(&clones[1].0)).await,
        (100, 100_000)
    );
    let mut p = PgConnection::connect(&parent_url).await.unwrap();
    sqlx::query("DELETE FROM accounts WHERE id < 10")
        .execute(&mut p)
        .await
        .unwrap();
    p.close().await.unwrap();
    assert_eq!(
        support::pg_totals(&clones[1].1.url(&clones[1].0)).await,
        (100, 100_000)
    );
    // Another clone's password does not open this one.
    let wrong = i0.url(c0).replace(&i0.password, &clones[1].1.password);
    assert!(PgConnection::connect(&wrong).await.is_err());
    assert_eq!(load(c0).unwrap().port, i0.port);

    // Stopping leaves no process and no socket behind.
    for dir in [
        parent.as_path(),
        clones[0].0.as_path(),
        clones[1].0.as_path(),
    ] {
        let pid = pid_of(dir);
        tools.stop(dir).await.unwrap();
        assert!(!alive(pid), "postgres {pid} still runs");
        tools.stop(dir).await.unwrap(); // idempotent
    }
    for dir in [&parent, &clones[0].0, &clones[1].0] {
        assert!(
            std::fs::symlink_metadata(run_dir(dir)).is_err(),
            "{} outlived its server",
            run_dir(dir).display()
        );
    }
    support::drop_pg_db(&src_name).await;
}
