//! The clone engine against real filesystems: a loop-mounted XFS with reflink
//! (`ENDOR_TEST_REFLINK_DIR`, made by `scripts/reflink-fs.sh`, which `scripts/test.sh` runs) and
//! the ext4 root disk (no reflink: the copy fallback).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use endor::clone::files::{TreeOptions, clone_tree, remove_tree};
use endor::clone::{Strategy, probe, sqlite};
use endor::config::Config;
use endor::sites::{Guard, Imports, SiteError, Sites};
use filetime::FileTime;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Pool, Sqlite};
use support::{TestStore, plain_dir, reflink_dir};

#[test]
fn probe_tells_reflink_from_plain_storage() {
    let x = reflink_dir();
    assert!(
        probe::reflink_supported(x.path()).unwrap(),
        "XFS with reflink=1 must probe as reflink"
    );
    let e = plain_dir();
    assert!(
        !probe::reflink_supported(e.path()).unwrap(),
        "ext4 must probe as copy"
    );
    // The probe leaves nothing behind but its remembered answer (so the next command neither
    // probes nor warns again), which names the filesystem it holds for.
    let left: Vec<_> = fs::read_dir(x.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from(".endor-reflink")]);
    let marker = e.path().join(".endor-reflink");
    assert!(fs::read_to_string(&marker).unwrap().trim().ends_with(" no"));
    // An answer remembered for another filesystem is not believed: probed again.
    fs::write(&marker, "1 yes\n").unwrap();
    let fresh = plain_dir();
    fs::write(fresh.path().join(".endor-reflink"), "1 yes\n").unwrap();
    assert!(!probe::reflink_supported(fresh.path()).unwrap());
}

/// A tree with what a site has: nested and empty directories, modes, a relative symlink, a
/// symlink out of the tree (kept as a link, never followed), fixed mtimes, a big file.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("index.html"), b"<h1>hello</h1>").unwrap();
    fs::write(root.join("a/script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("a/script.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("a/b/secret"), b"s3cret").unwrap();
    fs::set_permissions(root.join("a/b/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("a/b/c/big.bin"), vec![7u8; 3 * 1024 * 1024 + 17]).unwrap();
    fs::write(root.join("empty-file"), b"").unwrap();
    std::os::unix::fs::symlink("a/script.sh", root.join("link-in")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-out")).unwrap();
    let t = FileTime::from_unix_time(1_600_000_000, 0);
    for p in [
        "index.html",
        "a/script.sh",
        "a/b/secret",
        "a/b/c/big.bin",
        "empty-file",
    ] {
        filetime::set_file_times(root.join(p), t, t).unwrap();
    }
    filetime::set_symlink_file_times(root.join("link-out"), t, t).unwrap();
    for d in ["a/b/c", "a/b", "a", "empty"] {
        filetime::set_file_times(root.join(d), t, t).unwrap();
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
        mtime: i64,
    },
    File {
        mode: u32,
        mtime: i64,
        content: Vec<u8>,
    },
    Link {
        target: PathBuf,
        mtime: i64,
    },
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn go(base: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for e in fs::read_dir(base.join(rel)).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            let p = base.join(&rel);
            let m = fs::symlink_metadata(&p).unwrap();
            let node = if m.is_dir() {
                go(base, &rel, out);
                Node::Dir {
                    mode: m.mode() & 0o7777,
                    mtime: m.mtime(),
                }
            } else if m.is_symlink() {
                Node::Link {
                    target: fs::read_link(&p).unwrap(),
                    mtime: m.mtime(),
                }
            } else {
                Node::File {
                    mode: m.mode() & 0o7777,
                    mtime: m.mtime(),
                    content: fs::read(&p).unwrap(),
                }
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    go(root, Path::new(""), &mut out);
    out
}

fn tree_clone_is_exact(dir: &Path, reflink: bool) {
    let src = dir.join("src");
    build_tree(&src);
    let dst = dir.join("dst");
    let stats = clone_tree(&src, &dst, TreeOptions::new(reflink)).unwrap();
    assert_eq!(snapshot(&src), snapshot(&dst));
    assert_eq!(stats.files, 5);
    assert_eq!(stats.bytes_logical, 14 + 18 + 6 + 3 * 1024 * 1024 + 17);
    if reflink {
        assert_eq!(stats.strategy, Strategy::Reflink);
        assert_eq!(stats.bytes_written, 0);
    } else {
        assert_eq!(stats.strategy, Strategy::Copy);
        assert_eq!(stats.bytes_written, stats.bytes_logical);
    }
    // The out-of-tree link is a link in the clone, not a copy of /etc/passwd.
    assert!(
        fs::symlink_metadata(dst.join("link-out"))
            .unwrap()
            .is_symlink()
    );
    // Isolation: writes on either side never reach the other.
    fs::write(dst.join("index.html"), b"changed in clone").unwrap();
    fs::write(src.join("a/b/secret"), b"changed in source").unwrap();
    assert_eq!(fs::read(src.join("index.html")).unwrap(), b"<h1>hello</h1>");
    assert_eq!(fs::read(dst.join("a/b/secret")).unwrap(), b"s3cret");
    // An existing destination is refused, never merged into.
    assert!(clone_tree(&src, &dst, TreeOptions::new(reflink)).is_err());
}

#[test]
fn tree_clone_on_reflink_storage() {
    let d = reflink_dir();
    tree_clone_is_exact(d.path(), true);
}

#[test]
fn tree_clone_on_plain_storage() {
    let d = plain_dir();
    tree_clone_is_exact(d.path(), false);
}

/// Asked to reflink where the filesystem cannot (ext4), every file falls back to a copy and
/// the report says so.
#[test]
fn reflink_falls_back_to_copy_per_file() {
    let d = plain_dir();
    build_tree(&d.path().join("src"));
    let stats = clone_tree(
        &d.path().join("src"),
        &d.path().join("dst"),
        TreeOptions::new(true),
    )
    .unwrap();
    assert_eq!(stats.strategy, Strategy::Copy);
    assert_eq!(stats.fallbacks, 5);
    assert_eq!(
        snapshot(&d.path().join("src")),
        snapshot(&d.path().join("dst"))
    );
}

#[test]
fn read_only_clones() {
    let d = reflink_dir();
    build_tree(&d.path().join("src"));
    let dst = d.path().join("ro");
    clone_tree(
        &d.path().join("src"),
        &dst,
        TreeOptions {
            read_only: true,
            ..TreeOptions::new(true)
        },
    )
    .unwrap();
    for (rel, node) in snapshot(&dst) {
        match node {
            Node::Dir { mode, .. } | Node::File { mode, .. } => {
                assert_eq!(mode & 0o222, 0, "{} is writable", rel.display())
            }
            Node::Link { .. } => {}
        }
    }
    remove_tree(&dst).unwrap();
    assert!(!dst.exists());
}

async fn bank(path: &Path) -> Pool<Sqlite> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    for i in 0..100 {
        sqlx::query("INSERT INTO accounts (id, balance) VALUES ($1, 1000)")
            .bind(i)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    pool
}

async fn total(path: &Path) -> (i64, i64) {
    let opts = SqliteConnectOptions::new().filename(path).read_only(false);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap();
    let row: (i64, i64) = sqlx::query_as("SELECT COUNT(*), SUM(balance) FROM accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    row
}

/// Snapshots taken while a writer keeps moving money between accounts always see the total.
async fn consistent_under_writes(dir: &Path, reflink: bool) {
    let live = dir.join("live.db");
    let pool = bank(&live).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let (from, to, amount) = ((n * 7) % 100, (n * 13 + 1) % 100, (n % 50) as i64 + 1);
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
                    .bind(amount)
                    .bind(from as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
                    .bind(amount)
                    .bind(to as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..10 {
        let snap = dir.join(format!("snap-{i}.db"));
        let stats = sqlite::snapshot(&live, &snap, reflink).await.unwrap();
        assert_eq!(
            stats.strategy,
            if reflink {
                Strategy::Reflink
            } else {
                Strategy::VacuumInto
            }
        );
        // Clone the frozen snapshot as a site would, and read the clone.
        let clone = dir.join(format!("clone-{i}.db"));
        sqlite::clone_snapshot(&snap, &clone, reflink).unwrap();
        assert_eq!(
            total(&clone).await,
            (100, 100_000),
            "snapshot {i} is inconsistent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let transfers = writer.await.unwrap();
    assert!(
        transfers > 10,
        "the writer barely ran ({transfers} transfers)"
    );
    // Isolation: a write in a clone does not reach the live database.
    let clone = dir.join("clone-0.db");
    let c = SqlitePoolOptions::new()
        .connect_with(SqliteConnectOptions::new().filename(&clone))
        .await
        .unwrap();
    sqlx::query("UPDATE accounts SET balance = 0")
        .execute(&c)
        .await
        .unwrap();
    c.close().await;
    assert_eq!(total(&live).await, (100, 100_000));
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshots_are_consistent_under_writes_reflink() {
    let d = reflink_dir();
    consistent_under_writes(d.path(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshots_are_consistent_under_writes_vacuum_into() {
    let d = plain_dir();
    consistent_under_writes(d.path(), false).await;
}

struct Fixture {
    db: TestStore,
    sites: Sites,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

async fn fixture(dir: tempfile::TempDir) -> Fixture {
    fixture_with(dir, Config::default()).await
}

async fn fixture_with(dir: tempfile::TempDir, mut config: Config) -> Fixture {
    let db = TestStore::sqlite().await;
    let owner = db.store.create_user("owner", None, None).await.unwrap();
    db.store.create_workspace("acme", &owner.id).await.unwrap();
    let root = dir.path().join("sites");
    config.storage.root = root.clone();
    let sites = Sites::new(db.store.clone(), &config);
    Fixture {
        db,
        sites,
        root,
        _dir: dir,
    }
}

async fn site_lifecycle(dir: tempfile::TempDir, reflink: bool) {
    let f = fixture(dir).await;
    let src_files = f.root.parent().unwrap().join("import-files");
    build_tree(&src_files);
    let src_db = f.root.parent().unwrap().join("import.db");
    bank(&src_db).await.close().await;
    let (pg_name, pg_url) = support::pg_source_db().await;
    let (maria_name, maria_url) = support::maria_source_db();

    let created = f
        .sites
        .create(
            "production",
            "acme",
            None,
            Imports {
                files: Some(&src_files),
                sqlite: Some(&src_db),
                postgres: Some(&pg_url),
                mariadb: Some(&maria_url),
            },
        )
        .await
        .unwrap();
    assert_eq!(created.resources.len(), 4);
    let shown = f.sites.show("production").await.unwrap();
    assert_eq!(snapshot(&shown.files_dir), snapshot(&src_files));
    assert_eq!(shown.database_urls.len(), 3);
    let parent_maria = shown
        .database_urls
        .iter()
        .find(|u| u.starts_with("mysql://"))
        .unwrap()
        .clone();
    assert_eq!(support::maria_totals(&parent_maria), "100\t100000");
    let parent_pg = shown
        .database_urls
        .iter()
        .find(|u| u.starts_with("postgres://"))
        .unwrap()
        .clone();
    assert_eq!(support::pg_totals(&parent_pg).await, (100, 100_000));
    assert!(
        shown
            .url
            .starts_with("http://production.preview.localhost:8081")
    );

    // Clone without a generation: one is frozen first.
    let cloned = f
        .sites
        .clone_site("production", "shop-pr-1", false, Guard::default())
        .await
        .unwrap();
    assert_eq!(cloned.generation, Some(1));
    for r in &cloned.resources {
        let want = match (r.kind.as_str(), reflink) {
            ("postgres" | "mariadb", true) => "instance",
            ("postgres" | "mariadb", false) => "instance-copy",
            (_, true) => "reflink",
            (_, false) => "copy",
        };
        assert_eq!(r.strategy, want, "{r:?}");
    }
    assert_eq!(cloned.resources.len(), 4);
    let clone = f.sites.show("shop-pr-1").await.unwrap();
    assert_eq!(clone.parent.as_deref(), Some("production"));
    assert_eq!(snapshot(&clone.files_dir), snapshot(&shown.files_dir));
    let clone_pg = clone
        .database_urls
        .iter()
        .find(|u| u.starts_with("postgres://"))
        .unwrap()
        .clone();
    assert_ne!(clone_pg, parent_pg);
    assert_eq!(support::pg_totals(&clone_pg).await, (100, 100_000));
    // A write in the clone's database stays there; a sync brings the parent's data back.
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&clone_pg)
        .await
        .unwrap();
    sqlx::query("DELETE FROM accounts WHERE id < 50")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::Connection::close(c).await.unwrap();
    assert_eq!(support::pg_totals(&parent_pg).await, (100, 100_000));
    let clone_maria = clone
        .database_urls
        .iter()
        .find(|u| u.starts_with("mysql://"))
        .unwrap()
        .clone();
    assert_ne!(clone_maria, parent_maria);
    assert_eq!(support::maria_totals(&clone_maria), "100\t100000");
    f.sites
        .sync("production", "shop-pr-1", false, true, Guard::default())
        .await
        .unwrap();
    let clone_pg = f
        .sites
        .show("shop-pr-1")
        .await
        .unwrap()
        .database_urls
        .into_iter()
        .find(|u| u.starts_with("postgres://"))
        .unwrap();
    assert_eq!(support::pg_totals(&clone_pg).await, (100, 100_000));
    let clone_db = PathBuf::from(
        &clone
            .resources
            .iter()
            .find(|r| r.kind == "sqlite")
            .unwrap()
            .location,
    );
    assert_eq!(total(&clone_db).await, (100, 100_000));

    // Writes in the clone stay there.
    fs::write(clone.files_dir.join("index.html"), b"pr content").unwrap();
    assert_eq!(
        fs::read(shown.files_dir.join("index.html")).unwrap(),
        b"<h1>hello</h1>"
    );

    // A newer generation, then sync brings the parent's new data into the clone.
    fs::write(shown.files_dir.join("index.html"), b"v2").unwrap();
    let snap = f.sites.snapshot("production").await.unwrap();
    assert_eq!(snap.generation, Some(2));
    f.sites
        .sync("production", "shop-pr-1", true, false, Guard::default())
        .await
        .unwrap();
    assert_eq!(fs::read(clone.files_dir.join("index.html")).unwrap(), b"v2");

    // Protection guards sync-into and delete unless bypassed.
    f.sites
        .protect("production", true, &Default::default())
        .await
        .unwrap();
    assert!(matches!(
        f.sites
            .sync("shop-pr-1", "production", true, true, Guard::default())
            .await,
        Err(SiteError::Protected(..))
    ));
    assert!(matches!(
        f.sites.delete("production", Guard::default()).await,
        Err(SiteError::Protected(..))
    ));
    f.sites
        .sync(
            "shop-pr-1",
            "production",
            true,
            false,
            Guard {
                bypass_protection: true,
                caller: Some("test".into()),
            },
        )
        .await
        .unwrap();

    // Generations are pruned to the newest two.
    f.sites.snapshot("production").await.unwrap();
    f.sites.snapshot("production").await.unwrap();
    assert_eq!(
        f.sites.show("production").await.unwrap().generations.len(),
        2
    );

    // Delete leaves no directory behind.
    let clone_dir = f.root.join(&clone.id);
    assert!(clone_dir.exists());
    f.sites.delete("shop-pr-1", Guard::default()).await.unwrap();
    assert!(!clone_dir.exists());
    assert!(matches!(
        f.sites.show("shop-pr-1").await,
        Err(SiteError::NotFound(_))
    ));
    // The name is free again.
    f.sites
        .clone_site("production", "shop-pr-1", true, Guard::default())
        .await
        .unwrap();
    f.sites
        .delete(
            "production",
            Guard {
                bypass_protection: true,
                caller: Some("test".into()),
            },
        )
        .await
        .unwrap();
    f.sites.delete("shop-pr-1", Guard::default()).await.unwrap();
    let left: Vec<_> = fs::read_dir(&f.root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".trash" && n != ".endor-reflink")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(fs::read_dir(f.root.join(".trash")).unwrap().count(), 0);
    // No server of these sites still runs.
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let root = f.root.display().to_string();
    let ps = String::from_utf8_lossy(&ps.stdout);
    let left: Vec<_> = ps.lines().filter(|l| l.contains(&root)).collect();
    assert!(left.is_empty(), "servers outlived their site: {left:?}");
    support::drop_pg_db(&pg_name).await;
    support::drop_maria_db(&maria_name);
    f.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_on_reflink_storage() {
    site_lifecycle(reflink_dir(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_on_plain_storage() {
    site_lifecycle(plain_dir(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_removes_orphans_but_not_sites_being_made() {
    let f = fixture(reflink_dir()).await;
    f.sites
        .create("live", "acme", None, Imports::default())
        .await
        .unwrap();
    let live_id = f.sites.show("live").await.unwrap().id;
    let orphan = f.root.join("01a1f3e6-0000-7000-8000-00000000dead");
    fs::create_dir_all(orphan.join("live/files")).unwrap();
    fs::write(orphan.join("live/files/x"), b"x").unwrap();
    // The orphan still has database servers running: the sweep must stop them.
    let pg_tools = endor::clone::postgres::PgTools::detect(None, "postgres").unwrap();
    let orphan_pg = orphan.join("live/postgres/main");
    pg_tools
        .create(&orphan_pg, endor::clone::Access::default())
        .await
        .unwrap();
    let maria_tools = endor::clone::mariadb::MariaTools::detect("mysql").unwrap();
    let orphan_maria = orphan.join("live/mariadb/main");
    maria_tools
        .create(&orphan_maria, endor::clone::Access::default())
        .await
        .unwrap();
    let old = FileTime::from_unix_time(1_600_000_000, 0);
    filetime::set_file_times(&orphan, old, old).unwrap();
    let fresh = f.root.join("01a1f3e6-0000-7000-8000-00000000beef"); // as if mid-creation
    fs::create_dir_all(&fresh).unwrap();
    let trash = f.root.join(".trash/leftover");
    fs::create_dir_all(&trash).unwrap();

    let dry = f
        .sites
        .sweep(Duration::from_secs(3600), true)
        .await
        .unwrap();
    assert_eq!(dry.removed.len(), 2, "{dry:?}");
    assert!(
        orphan.exists() && trash.exists(),
        "a dry run removed something"
    );

    let swept = f
        .sites
        .sweep(Duration::from_secs(3600), false)
        .await
        .unwrap();
    assert_eq!(swept.removed.len(), 2);
    assert!(!orphan.exists() && !trash.exists());
    for alias in [
        endor::clone::postgres::run_dir(&orphan_pg),
        endor::clone::mariadb::run_dir(&orphan_maria),
    ] {
        assert!(
            std::fs::symlink_metadata(&alias).is_err(),
            "an orphan's socket name {} is left",
            alias.display()
        );
    }
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let orphan_path = orphan.display().to_string();
    assert!(
        !String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.contains(&orphan_path)),
        "an orphan's server still runs"
    );
    assert!(
        fresh.exists(),
        "a directory younger than the grace period was swept"
    );
    assert!(f.root.join(&live_id).exists(), "a live site was swept");
    f.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_site_names_are_refused() {
    let f = fixture(plain_dir()).await;
    let long = "a".repeat(64);
    for bad in [
        "../x",
        "/abs",
        "a/b",
        "a\0b",
        "UPPER",
        "-x",
        "x-",
        "é",
        "a b",
        "$(touch pwned)",
        "a;b",
        "",
        long.as_str(),
        "..",
    ] {
        assert!(
            matches!(
                f.sites.create(bad, "acme", None, Imports::default()).await,
                Err(SiteError::Invalid(_))
            ),
            "{bad:?}"
        );
        f.sites
            .create("ok-src", "acme", None, Imports::default())
            .await
            .ok();
        assert!(
            matches!(
                f.sites
                    .clone_site("ok-src", bad, false, Guard::default())
                    .await,
                Err(SiteError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        f.sites
            .create("x", "acme", Some("../../etc"), Imports::default())
            .await,
        Err(SiteError::Invalid(_))
    ));
    // Nothing escaped the storage root; the only directory is the one good site's.
    let parent: Vec<_> = fs::read_dir(f.root.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(parent, vec![std::ffi::OsString::from("sites")]);
    assert!(!Path::new("pwned").exists());
    f.db.cleanup().await;
}

/// Names of databases and roles on the shared server that endor made (`endor_…`).
async fn shared_server_objects() -> Vec<String> {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&format!(
        "{}/postgres",
        support::pg_base()
    ))
    .await
    .unwrap();
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT datname FROM pg_database WHERE datname LIKE 'endor\\_%' AND datname NOT LIKE 'endor\\_test\\_%' \
         UNION ALL SELECT rolname FROM pg_roles WHERE rolname LIKE 'endor\\_%'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    rows.into_iter().map(|r| r.0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_template_strategy() {
    let mut config = Config::default();
    config.postgres.strategy = "template".into();
    config.postgres.admin_url = format!("{}/postgres", support::pg_base());
    let f = fixture_with(plain_dir(), config).await;
    let before = shared_server_objects().await;
    let (src_name, src_url) = support::pg_source_db().await;
    let created = f
        .sites
        .create(
            "production",
            "acme",
            None,
            Imports {
                postgres: Some(&src_url),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let pg = created
        .resources
        .iter()
        .find(|r| r.kind == "postgres")
        .unwrap();
    assert_eq!(pg.strategy, "import");
    let parent_url = f.sites.show("production").await.unwrap().database_urls[0].clone();
    assert!(parent_url.starts_with("postgres://endor_"), "{parent_url}");
    assert_eq!(support::pg_totals(&parent_url).await, (100, 100_000));

    // The generation is consistent while a writer moves money on the parent.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&parent_url)
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.sites.snapshot("production").await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.await.unwrap() > 10);
    pool.close().await;

    let cloned = f
        .sites
        .clone_site("production", "shop-pr-2", false, Guard::default())
        .await
        .unwrap();
    let r = cloned
        .resources
        .iter()
        .find(|r| r.kind == "postgres")
        .unwrap();
    assert_eq!(r.strategy, "template");
    let clone_url = f.sites.show("shop-pr-2").await.unwrap().database_urls[0].clone();
    assert_ne!(clone_url, parent_url);
    assert_eq!(support::pg_totals(&clone_url).await, (100, 100_000));
    // The clone's own role owns its tables and can write; the parent is untouched.
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&clone_url)
        .await
        .unwrap();
    sqlx::query("DELETE FROM accounts WHERE id < 50")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE clone_only (x int)")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::Connection::close(c).await.unwrap();
    assert_eq!(support::pg_totals(&parent_url).await.0, 100);
    // One clone's credentials do not open the parent.
    let (clone_auth, parent_auth) = (
        clone_url.split('@').next().unwrap(),
        parent_url.split('@').next().unwrap(),
    );
    let crossed = parent_url.replacen(parent_auth, clone_auth, 1);
    assert!(
        <sqlx::PgConnection as sqlx::Connection>::connect(&crossed)
            .await
            .is_err(),
        "a clone's role opens the parent"
    );

    f.sites.delete("shop-pr-2", Guard::default()).await.unwrap();
    f.sites
        .delete("production", Guard::default())
        .await
        .unwrap();
    assert_eq!(
        shared_server_objects().await,
        before,
        "databases or roles left on the shared server"
    );
    support::drop_pg_db(&src_name).await;
    f.db.cleanup().await;
}
