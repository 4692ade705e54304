//! Site backups through restic into an append-only repository (`rclone serve restic
//! --append-only`, started here on loopback): a damaged site restored equal to before, the
//! repository refusing endor's own attempts to delete or rewrite a backup, a flipped byte in
//! the repository found by `verify`, protection on restore, a restore into a new site, and the
//! repository's passphrase sealed in the store.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use endor::backups::{BackupError, Backups, RetentionOf, Source};
use endor::sites::{Guard, Imports, Sites};
use endor::store::RetentionRow;
use sha2::Digest;
use support::TestStore;

/// `rclone serve restic --append-only` on a free loopback port, over a folder of its own;
/// stopped when dropped.
struct RepoServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// `rclone serve restic ARGS FOLDER` on a free loopback port, listening.
fn rclone(folder: &Path, args: &[&str]) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("rclone")
        .args(["serve", "restic"])
        .args(args)
        .arg("--addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg(folder)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rclone (scripts/backup-tools.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "rclone did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

impl RepoServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (child, port) = rclone(dir.path(), &["--append-only"]);
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("rest:http://127.0.0.1:{}/", self.port)
    }

    fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An off-site repository behind `sshd` on loopback (a configuration of its own, on a free
/// port): the key `push_key` may only run `rclone serve restic --stdio --append-only` over
/// the folder `repo` (a forced command), the key `prune_key` the same without
/// `--append-only`. Stopped when dropped.
struct SshRepo {
    sshd: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl SshRepo {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("repo")).unwrap();
        for key in ["host_key", "push_key", "prune_key"] {
            let made = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .expect("ssh-keygen (scripts/backup-tools.sh installs openssh)");
            assert!(made.success());
        }
        let public = |key: &str| std::fs::read_to_string(d.join(format!("{key}.pub"))).unwrap();
        let repo = d.join("repo").display().to_string();
        std::fs::write(
            d.join("authorized_keys"),
            format!(
                "command=\"rclone serve restic --stdio --append-only {repo}\",restrict {}\
                 command=\"rclone serve restic --stdio {repo}\",restrict {}",
                public("push_key"),
                public("prune_key")
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {0}/host_key\n\
                 AuthorizedKeysFile {0}/authorized_keys\nPermitRootLogin forced-commands-only\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n\
                 UsePAM no\nPidFile {0}/sshd.pid\n",
                d.display()
            ),
        )
        .unwrap();
        let host = public("host_key");
        let mut words = host.split_whitespace();
        std::fs::write(
            d.join("known_hosts"),
            format!(
                "[127.0.0.1]:{port} {} {}\n",
                words.next().unwrap(),
                words.next().unwrap()
            ),
        )
        .unwrap();
        let mut far = Self {
            sshd: None,
            port,
            dir,
        };
        far.restart();
        far
    }

    /// Start sshd again (after [`SshRepo::stop`]); back when it listens.
    fn restart(&mut self) {
        // sshd's privilege separation folder.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let d = self.dir.path();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .expect("sshd (scripts/backup-tools.sh installs openssh-server)");
        self.sshd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The ssh command that reaches the far repository with `key`.
    fn command(&self, key: &str) -> String {
        let d = self.dir.path().display();
        format!(
            "ssh -i {d}/{key} -p {} -o UserKnownHostsFile={d}/known_hosts -o BatchMode=yes \
             -o IdentitiesOnly=yes root@127.0.0.1",
            self.port
        )
    }

    fn snapshots(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("repo/snapshots"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for SshRepo {
    fn drop(&mut self) {
        self.stop();
    }
}

struct World {
    db: TestStore,
    sites: Sites,
    backups: Backups,
    repo: RepoServer,
    config: endor::config::Config,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    world_on(TestStore::sqlite().await).await
}

async fn world_on(db: TestStore) -> World {
    let dir = support::reflink_dir();
    let repo = RepoServer::start();
    let owner = db.store.create_user("owner", None, None).await.unwrap();
    db.store.create_workspace("acme", &owner.id).await.unwrap();
    let mut config = support::config_in(&db.url, dir.path());
    config.backups.repository = repo.url();
    config.backups.cache = dir.path().join("restic-cache");
    let sites = Sites::new(db.store.clone(), &config);
    let backups = Backups::new(db.store.clone(), &config);
    World {
        db,
        sites,
        backups,
        repo,
        config,
        _dir: dir,
    }
}

/// A site `name` with a tree of files, a SQLite database and a PostgreSQL database of its own.
async fn production(w: &World, name: &str) -> String {
    let src = w._dir.path().join(format!("src-{name}"));
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("index.html"), b"<h1>shop</h1>").unwrap();
    std::fs::write(src.join("a/b/big.bin"), vec![9u8; 2 * 1024 * 1024 + 3]).unwrap();
    std::fs::write(src.join("a/notes.txt"), b"keep me").unwrap();
    let sqlite = w._dir.path().join(format!("{name}.db"));
    let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}?mode=rwc",
        sqlite.display()
    ))
    .await
    .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 4999)
         INSERT INTO accounts SELECT i, 1000 FROM n;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::Connection::close(c).await.unwrap();
    let (pg_name, pg_url) = support::pg_source_db().await;
    w.sites
        .create(
            name,
            "acme",
            None,
            Imports {
                files: Some(&src),
                sqlite: Some(&sqlite),
                postgres: Some(&pg_url),
                mariadb: None,
            },
        )
        .await
        .unwrap();
    support::drop_pg_db(&pg_name).await;
    name.to_string()
}

/// Every file below `dir` (its folders walked, symlinks not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let (mut out, mut stack) = (Vec::new(), vec![dir.to_path_buf()]);
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Everything a site holds, comparable: every file's path and SHA-256, every SQLite table's
/// rows, the PostgreSQL totals.
async fn fingerprint(w: &World, name: &str) -> BTreeMap<String, String> {
    let shown = w.sites.show(name).await.unwrap();
    let mut out = BTreeMap::new();
    let root = &shown.files_dir;
    for p in files_under(root) {
        let digest = sha2::Sha256::digest(std::fs::read(&p).unwrap());
        out.insert(
            format!("file {}", p.strip_prefix(root).unwrap().display()),
            hex::encode(digest),
        );
    }
    for url in &shown.database_urls {
        if url.starts_with("sqlite:") {
            let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(url)
                .await
                .unwrap();
            let rows: Vec<(i64, i64)> =
                sqlx::query_as("SELECT id, balance FROM accounts ORDER BY id")
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_default();
            out.insert("sqlite accounts".into(), format!("{rows:?}"));
        } else if url.starts_with("postgres") {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(url)
                .await
                .unwrap();
            let totals: Result<(i64, i64), _> =
                sqlx::query_as("SELECT count(*), coalesce(sum(balance), 0)::bigint FROM accounts")
                    .fetch_one(&mut c)
                    .await;
            out.insert(
                "postgres accounts".into(),
                format!("{:?}", totals.map_err(|e| e.to_string())),
            );
        }
    }
    out
}

/// The URL of `name`'s database whose URL starts with `scheme`.
async fn db_url(w: &World, name: &str, scheme: &str) -> String {
    let shown = w.sites.show(name).await.unwrap();
    shown
        .database_urls
        .iter()
        .find(|u| u.starts_with(scheme))
        .unwrap()
        .clone()
}

async fn sqlite_file(w: &World, name: &str) -> PathBuf {
    let url = db_url(w, name, "sqlite:").await;
    PathBuf::from(
        url.trim_start_matches("sqlite://")
            .split('?')
            .next()
            .unwrap(),
    )
}

/// Damage every part of a site: a file deleted and another changed, a page of its SQLite file
/// overwritten, its PostgreSQL table dropped.
async fn damage(w: &World, name: &str) {
    let shown = w.sites.show(name).await.unwrap();
    std::fs::remove_file(shown.files_dir.join("a/notes.txt")).unwrap();
    std::fs::write(shown.files_dir.join("index.html"), b"defaced").unwrap();
    let db = sqlite_file(w, name).await;
    let mut bytes = std::fs::read(&db).unwrap();
    for b in &mut bytes[4096..8192] {
        *b = 0xAB;
    }
    std::fs::write(&db, bytes).unwrap();
    let pg = db_url(w, name, "postgres").await;
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&pg)
        .await
        .unwrap();
    sqlx::query("DROP TABLE accounts")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::Connection::close(c).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_site_is_restored_equal_to_before() {
    let w = world().await;
    let site = production(&w, "production").await;
    let before = fingerprint(&w, &site).await;
    assert!(before.len() >= 5, "{before:?}");
    let b = w
        .backups
        .create(&site, &["nightly".into()], "cli:test")
        .await
        .unwrap();
    assert_eq!(b.site_name, site);
    assert!(b.files >= 4 && b.bytes > 2 * 1024 * 1024, "{b:?}");
    assert_eq!(b.tags, "nightly");
    let resources: Vec<(String, String)> = serde_json::from_str(&b.resources).unwrap();
    assert!(
        resources.contains(&("postgres".into(), "main".into())),
        "{resources:?}"
    );
    assert!(
        resources.contains(&("sqlite".into(), "main".into())),
        "{resources:?}"
    );
    damage(&w, &site).await;
    assert_ne!(fingerprint(&w, &site).await, before);
    // By a prefix of its id, as a user types it.
    let r = w
        .backups
        .restore(&b.id[..8], None, Guard::cli(false))
        .await
        .unwrap();
    assert!(!r.created);
    assert_eq!(r.from, "local", "this host kept a copy");
    assert_eq!(fingerprint(&w, &site).await, before);
    // The same from the repository itself.
    damage(&w, &site).await;
    let r = w
        .backups
        .restore_from(&b.id, None, Guard::cli(false), Source::Repository)
        .await
        .unwrap();
    assert_eq!(r.from, "repository");
    assert_eq!(fingerprint(&w, &site).await, before);
    // A second backup after a small change adds little (restic deduplicates).
    let shown = w.sites.show(&site).await.unwrap();
    std::fs::write(shown.files_dir.join("a/new.txt"), b"one more file").unwrap();
    let second = w.backups.create(&site, &[], "cli:test").await.unwrap();
    assert!(
        second.bytes_added < b.bytes_added / 4,
        "{second:?} vs {b:?}"
    );
    let listed = w.backups.list(Some(&site)).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, second.id, "newest first");
    // The repository's passphrase is in the store, sealed: not in the SQLite file.
    let pass =
        w.db.store
            .backup_passphrase(&w.repo.url())
            .await
            .unwrap()
            .unwrap();
    let store_file = w.db.url.trim_start_matches("sqlite://").to_string();
    for f in [store_file.clone(), format!("{store_file}-wal")] {
        if let Ok(bytes) = std::fs::read(&f) {
            assert!(!String::from_utf8_lossy(&bytes).contains(&pass), "{f}");
        }
    }
    w.db.cleanup().await;
}

/// endor's own credential cannot delete or rewrite a backup: the repository refuses (403),
/// and the backup is still there and restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_repository_refuses_to_delete_or_rewrite_a_backup() {
    let w = world().await;
    let site = production(&w, "production").await;
    let b = w.backups.create(&site, &[], "cli:test").await.unwrap();
    let snapshots: Vec<String> = std::fs::read_dir(w.repo.dir.path().join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(snapshots.len(), 1);
    assert!(snapshots[0].starts_with(&b.snapshot_id));
    let http = reqwest::Client::new();
    let path = format!("snapshots/{}", snapshots[0]);
    let del = http.delete(w.repo.http(&path)).send().await.unwrap();
    assert_eq!(del.status(), 403);
    let over = http
        .post(w.repo.http(&path))
        .body("rewritten")
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 403);
    let config = http.delete(w.repo.http("config")).send().await.unwrap();
    assert_eq!(config.status(), 403);
    assert!(
        w.repo
            .dir
            .path()
            .join("snapshots")
            .join(&snapshots[0])
            .exists()
    );
    let r = w
        .backups
        .restore_from(&b.id, None, Guard::cli(false), Source::Repository)
        .await;
    assert!(r.is_ok(), "{r:?}");
    w.db.cleanup().await;
}

/// One flipped byte in the repository's data is found by `verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_finds_a_flipped_byte_in_the_repository() {
    let w = world().await;
    let site = production(&w, "production").await;
    let b = w.backups.create(&site, &[], "cli:test").await.unwrap();
    let v = w.backups.verify(false).await.unwrap();
    assert!(v.ok, "{v:?}");
    // One backup read back and checked against its manifest.
    let one = w
        .backups
        .verify_backup(&b.id, Source::Repository)
        .await
        .unwrap();
    assert!(one.ok, "{one:?}");
    assert_eq!(one.backup.as_deref(), Some(b.id.as_str()));
    assert!(one.detail.contains("files"), "{one:?}");
    for bad in ["nope", "'; DROP TABLE backups; --"] {
        assert!(matches!(
            w.backups.verify_backup(bad, Source::Repository).await,
            Err(BackupError::NotFound(_))
        ));
    }
    // The largest pack holds the files' data.
    let mut packs = files_under(&w.repo.dir.path().join("data"));
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let pack = packs.last().unwrap();
    let mut bytes = std::fs::read(pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(pack, bytes).unwrap();
    let v = w.backups.verify(false).await.unwrap();
    assert!(!v.ok, "{v:?}");
    let one = w
        .backups
        .verify_backup(&b.id, Source::Repository)
        .await
        .unwrap();
    assert!(!one.ok, "{one:?}");
    w.db.cleanup().await;
}

/// Restoring into a protected site needs the bypass (audited); a restore `--into` a new name
/// makes a site in the same workspace holding the backup's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_are_guarded_and_can_make_a_new_site() {
    let w = world().await;
    let site = production(&w, "production").await;
    let before = fingerprint(&w, &site).await;
    let b = w.backups.create(&site, &[], "cli:test").await.unwrap();
    w.sites
        .protect(&site, true, &Guard::cli(false))
        .await
        .unwrap();
    let refused = w.backups.restore(&b.id, None, Guard::cli(false)).await;
    assert!(
        matches!(
            refused,
            Err(BackupError::Site(endor::sites::SiteError::Protected(..)))
        ),
        "{refused:?}"
    );
    w.backups
        .restore(&b.id, None, Guard::cli(true))
        .await
        .unwrap();
    let audit = w.db.store.audit_events(None).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "bypass_protection" && e.detail.starts_with("restore into")),
        "{audit:?}"
    );
    let r = w
        .backups
        .restore(&b.id, Some("production-copy"), Guard::cli(false))
        .await
        .unwrap();
    assert!(r.created);
    assert_eq!(fingerprint(&w, "production-copy").await, before);
    // Bad input: an unknown backup, a short or hostile id, a bad tag, a bad site name.
    for id in [
        "0123456789abcdef",
        "abc",
        "'; DROP TABLE backups; --",
        "%%%%%%%%",
    ] {
        assert!(
            matches!(
                w.backups.restore(id, None, Guard::cli(false)).await,
                Err(BackupError::NotFound(_))
            ),
            "{id}"
        );
    }
    assert!(matches!(
        w.backups.create(&site, &["a b".into()], "cli:test").await,
        Err(BackupError::Invalid(_))
    ));
    assert!(
        w.backups
            .restore(&b.id, Some("Bad_Name"), Guard::cli(false))
            .await
            .is_err()
    );
    assert!(matches!(
        w.backups.list(Some("nope")).await,
        Err(BackupError::NotFound(_))
    ));
    w.db.cleanup().await;
}

/// Move money between accounts in `url` (SQLite or PostgreSQL), one transfer per
/// transaction, until `stop`; the number of transfers.
fn transfers(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    macro_rules! run {
        ($pool:ty) => {
            tokio::spawn(async move {
                let pool = <$pool>::connect(&url).await.unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let (from, to, amount) =
                        ((n * 7) % 100, (n * 13 + 1) % 100, (n % 50) as i64 + 1);
                    let mut tx = pool.begin().await.unwrap();
                    for (id, delta) in [(from, -amount), (to, amount)] {
                        sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
                            .bind(delta)
                            .bind(id as i64)
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                    }
                    tx.commit().await.unwrap();
                }
                n
            })
        };
    }
    if url.starts_with("sqlite:") {
        run!(sqlx::SqlitePool)
    } else {
        run!(sqlx::PgPool)
    }
}

/// Backups taken while a writer moves money between accounts in the site's SQLite and
/// PostgreSQL databases restore with the exact totals: each backup is one consistent moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_writes_restores_with_the_exact_total() {
    let w = world().await;
    let site = production(&w, "production").await;
    let shown = w.sites.show(&site).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = shown
        .database_urls
        .iter()
        .filter(|u| u.starts_with("sqlite:") || u.starts_with("postgres"))
        .map(|u| transfers(u.clone(), stop.clone()))
        .collect();
    assert_eq!(writers.len(), 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut taken = Vec::new();
    for _ in 0..2 {
        taken.push(w.backups.create(&site, &[], "cli:test").await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for wr in writers {
        assert!(wr.await.unwrap() > 10, "a writer barely ran");
    }
    for (i, b) in taken.iter().enumerate() {
        let copy = format!("restored-{i}");
        let r = w
            .backups
            .restore_from(&b.id, Some(&copy), Guard::cli(false), Source::Repository)
            .await
            .unwrap();
        assert_eq!(r.from, "repository");
        let f = fingerprint(&w, &copy).await;
        // SQLite: 5,000 accounts of 1,000 before the writer, whose transfers keep the sum.
        let rows: Vec<(i64, i64)> = {
            let url = db_url(&w, &copy, "sqlite:").await;
            let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
                .await
                .unwrap();
            sqlx::query_as("SELECT id, balance FROM accounts")
                .fetch_all(&mut c)
                .await
                .unwrap()
        };
        assert_eq!(rows.len(), 5000);
        assert_eq!(
            rows.iter().map(|r| r.1).sum::<i64>(),
            5_000_000,
            "backup {i}"
        );
        assert_eq!(f["postgres accounts"], "Ok((100, 100000))", "backup {i}");
    }
    w.db.cleanup().await;
}

/// `endor serve` backs up on `backups.schedule`: a protected site by default, another once it
/// says `on`, none that says `off`, each once per tick; and the CLI's words for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_backs_up_scheduled_sites() {
    let repo = RepoServer::start();
    let url = repo.url();
    let served = support::preview::ServedBinary::start(move |c| {
        c.backups.repository = url;
        c.backups.schedule = "*/2 * * * * *".into();
    })
    .await;
    let public = served.dir.path().join("public");
    std::fs::create_dir_all(&public).unwrap();
    std::fs::write(public.join("index.html"), b"hi").unwrap();
    for name in ["production", "staging", "scratch"] {
        served.cli(&[
            "site",
            "create",
            name,
            "--workspace",
            "acme",
            "--files",
            public.to_str().unwrap(),
        ]);
    }
    served.cli(&["site", "protect", "production", "on"]);
    let said = served.cli(&["backup", "schedule", "staging", "on"]);
    assert!(
        said.contains("staging: backed up on backups.schedule"),
        "{said}"
    );
    let said = served.cli(&["backup", "schedule", "scratch", "default"]);
    assert!(
        said.contains("not backed up") && said.contains("(the default)"),
        "{said}"
    );
    let store = served.store().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let names = loop {
        let all = store.backups(None).await.unwrap();
        let mut names: Vec<String> = all.iter().map(|b| b.site_name.clone()).collect();
        names.sort();
        names.dedup();
        if names.len() >= 2 && all.len() >= 4 {
            assert!(
                all.iter()
                    .all(|b| b.tags == "scheduled" && b.created_by == "schedule")
            );
            break names;
        }
        assert!(Instant::now() < deadline, "scheduled backups: {all:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(names, ["production", "staging"]);
    // Each tick backs a site up once, however many ticks have passed.
    let all = store.backups(None).await.unwrap();
    for site in ["production", "staging"] {
        let mut times: Vec<i64> = all
            .iter()
            .filter(|b| b.site_name == site)
            .map(|b| b.created_at / 2000)
            .collect();
        let n = times.len();
        times.dedup();
        assert_eq!(times.len(), n, "{site}: two backups in one tick");
    }
    let listed = served.cli(&["backup", "list", "production"]);
    assert!(
        listed.contains("production") && listed.contains("scheduled"),
        "{listed}"
    );
    served.cli(&["backup", "schedule", "production", "off"]);
    // A drill from the CLI: recorded, shown by `backup list`, counted on /metrics.
    let drilled = served.cli(&["backup", "drill", "production", "--json"]);
    let drilled: serde_json::Value = serde_json::from_str(&drilled).unwrap();
    assert_eq!(drilled[0]["ok"], true, "{drilled}");
    // The drilled backup's line (a scheduled pass already under way may have added a newer
    // one meanwhile).
    let id = drilled[0]["backup"].as_str().unwrap();
    let listed = served.cli(&["backup", "list", "production"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_default();
    assert!(line.contains("drill: passed"), "{id}: {listed}");
    // One backup read back from the CLI, and the site's retention set over [backups]'s.
    let verified = served.cli(&["backup", "verify", id, "--json"]);
    let verified: serde_json::Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(
        (&verified["ok"], &verified["backup"]),
        (&serde_json::json!(true), &serde_json::json!(id))
    );
    let kept = served.cli(&["backup", "retention", "production", "--keep-last", "4"]);
    assert!(
        kept.contains("keeps last 4, daily 7, weekly 4, monthly 6"),
        "{kept}"
    );
    let kept = served.cli(&["backup", "retention", "production", "--default"]);
    assert!(
        kept.contains("keeps last 7") && kept.contains("inherited"),
        "{kept}"
    );
    let metrics = served.metrics().await;
    assert!(
        metrics.contains("endor_backup_drills{outcome=\"passed\"} 1"),
        "{metrics}"
    );
}

/// A drill restores the newest backup into a scratch site, checks it against the manifest and
/// removes it; a backup whose data was damaged in the repository, or whose restore differs
/// from its manifest, fails the drill loudly, and every outcome is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drills_pass_on_good_backups_and_fail_loudly_on_damaged_ones() {
    let w = world().await;
    let site = production(&w, "production").await;
    let b = w.backups.create(&site, &[], "cli:test").await.unwrap();
    let r = w.backups.drill(&site, Source::Repository).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert!(
        r.detail
            .contains("1 PostgreSQL and 0 MariaDB tables answer"),
        "{r:?}"
    );
    let live: Vec<_> =
        w.db.store
            .list_sites()
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.state == endor::store::SiteState::Active)
            .map(|s| s.name)
            .collect();
    assert_eq!(live, ["production"], "the scratch site is gone");
    let listed = w.backups.list(Some(&site)).await.unwrap();
    assert_eq!(listed[0].last_drill_ok, Some(1));
    // A manifest the restore does not match.
    let mut tampered: endor::backups::Manifest = serde_json::from_str(&b.manifest).unwrap();
    let some_file = tampered.files.keys().next().unwrap().clone();
    tampered.files.insert(some_file.clone(), "0".repeat(64));
    let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&w.db.url)
        .await
        .unwrap();
    sqlx::query("UPDATE backups SET manifest = $1 WHERE id = $2")
        .bind(serde_json::to_string(&tampered).unwrap())
        .bind(&b.id)
        .execute(&mut c)
        .await
        .unwrap();
    let r = w.backups.drill(&site, Source::Repository).await.unwrap();
    assert!(
        !r.ok && r.detail.contains(&format!("file {some_file} differs")),
        "{r:?}"
    );
    // Damaged data in the repository: every pack flipped.
    let second = w.backups.create(&site, &[], "cli:test").await.unwrap();
    for pack in files_under(&w.repo.dir.path().join("data")) {
        let mut bytes = std::fs::read(&pack).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xFF;
        std::fs::write(&pack, bytes).unwrap();
    }
    let r = w.backups.drill(&site, Source::Repository).await.unwrap();
    assert_eq!(r.backup, second.id);
    assert!(!r.ok, "{r:?}");
    let listed = w.backups.list(Some(&site)).await.unwrap();
    assert_eq!(listed[0].last_drill_ok, Some(0));
    assert_eq!(w.db.store.drill_counts().await.unwrap(), (1, 2));
    // Each drill is in the site's audit trail; a failed one as the event to tell.
    let events =
        w.db.store
            .audit_events(Some(&listed[0].site_id))
            .await
            .unwrap();
    let said = |action: &str| events.iter().filter(|e| e.action == action).count();
    assert_eq!((said("backup.drill"), said("backup.drill_failed")), (1, 2));
    // And the workspace's owner is told of each failed drill, once each, with a link to it.
    let told: Vec<_> = w.db.store.all_notifications().await.unwrap();
    let failed: Vec<_> = told.iter().filter(|n| n.kind == "drill_failed").collect();
    assert_eq!(failed.len(), 2, "{told:?}");
    assert!(
        failed
            .iter()
            .all(|n| n.link.as_deref() == Some(&*format!("/s/{site}")))
    );
    assert!(!told.iter().any(|n| n.kind == "backup_failed"));
    w.db.cleanup().await;
}

/// `backup forget` removes what the retention policy does not keep, only through a credential
/// that may delete: the pushing URL is refused, a pruning server over the same folder (its own
/// user and password, no `--append-only`) does it; the store forgets the same backups.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forget_keeps_the_policy_s_backups_through_the_pruning_credential_only() {
    let w = world().await;
    let site = production(&w, "production").await;
    let mut made = Vec::new();
    for _ in 0..4 {
        made.push(w.backups.create(&site, &[], "cli:test").await.unwrap());
    }
    // [backups] keeps 7 last; the workspace keeps 3 last and nothing by day, week or month;
    // the site says 2 last: the site's value over the workspace's, value by value.
    let ws = w
        .backups
        .set_retention(
            RetentionOf::Workspace("acme"),
            Some(RetentionRow {
                keep_last: Some(3),
                keep_daily: Some(0),
                keep_weekly: Some(0),
                keep_monthly: Some(0),
            }),
        )
        .await
        .unwrap();
    assert_eq!(ws.applies.keep_last, 3);
    let own = RetentionRow {
        keep_last: Some(2),
        ..Default::default()
    };
    let view = w
        .backups
        .set_retention(RetentionOf::Site(&site), Some(own))
        .await
        .unwrap();
    assert_eq!(view.own, Some(own));
    assert_eq!(
        (
            view.applies.keep_last,
            view.applies.keep_daily,
            view.applies.keep_weekly,
            view.applies.keep_monthly
        ),
        (2, 0, 0, 0)
    );
    // Refused, and nothing changed: a negative count, a policy keeping nothing, unknown names.
    for (of, keep_last) in [
        (RetentionOf::Site(&site), -1),
        (RetentionOf::Site(&site), 0),
        (RetentionOf::Site("nope"), 1),
        (RetentionOf::Workspace("'; DROP TABLE sites; --"), 1),
    ] {
        let bad = RetentionRow {
            keep_last: Some(keep_last),
            ..Default::default()
        };
        assert!(
            w.backups.set_retention(of, Some(bad)).await.is_err(),
            "{of:?} {keep_last}"
        );
    }
    assert_eq!(
        w.backups
            .retention(RetentionOf::Site(&site))
            .await
            .unwrap()
            .own,
        Some(own)
    );
    let backups = &w.backups;
    // The same folder through a server that may delete, with its own credential.
    let (mut pruner, port) = rclone(
        w.repo.dir.path(),
        &["--user", "pruner", "--pass", "s3cret-prune"],
    );
    let via = format!("rest:http://pruner:s3cret-prune@127.0.0.1:{port}/");
    let dry = backups.forget(Some(&site), &via, None, true).await.unwrap();
    assert_eq!(dry[0].removed.len(), 2);
    assert_eq!(dry[0].kept.keep_last, 2);
    assert_eq!(w.backups.list(Some(&site)).await.unwrap().len(), 4);
    let done = backups
        .forget(Some(&site), &via, None, false)
        .await
        .unwrap();
    assert_eq!(done[0].removed.len(), 2);
    let left: Vec<String> = w
        .backups
        .list(Some(&site))
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(
        left,
        [made[3].id.clone(), made[2].id.clone()],
        "the newest two are kept"
    );
    let snapshots = std::fs::read_dir(w.repo.dir.path().join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(snapshots, 2);
    // This host keeps copies of the newest two backups only (backups.local_copies).
    let site_id = w.db.store.site_by_name(&site).await.unwrap().unwrap().id;
    let copies: Vec<String> =
        std::fs::read_dir(w.config.storage.root.join(site_id.as_str()).join("backups"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert!(copies.contains(&made[3].id) && copies.contains(&made[2].id));
    w.backups
        .restore(&made[3].id, None, Guard::cli(false))
        .await
        .unwrap();
    // Without the site's own policy, the workspace's applies.
    let view = w
        .backups
        .set_retention(RetentionOf::Site(&site), None)
        .await
        .unwrap();
    assert_eq!((view.own, view.applies.keep_last), (None, 3));
    let _ = pruner.kill();
    let _ = pruner.wait();
    w.db.cleanup().await;
}

/// The backup rows on both store backends: listed newest first with their last drill, found
/// by a prefix of their id or snapshot id (not by a hostile or ambiguous one), drills counted,
/// schedules kept, rows forgotten by a snapshot's full id, passphrases sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_rows_on_both_backends() {
    for db in [TestStore::sqlite().await, TestStore::postgres().await] {
        let s = db.store.clone();
        let owner = s.create_user("owner", None, None).await.unwrap();
        let ws = s.create_workspace("acme", &owner.id).await.unwrap();
        let site = s
            .create_site(&endor::store::NewSite {
                name: "production".into(),
                workspace_id: ws.id.clone(),
                region: "default".into(),
                parent_id: None,
                read_only: false,
            })
            .await
            .unwrap();
        let row = |i: i64, snap: &str| endor::store::Backup {
            id: endor::store::new_id(),
            site_id: site.id.clone(),
            site_name: "production".into(),
            repository: "rest:http://x/".into(),
            snapshot_id: snap.into(),
            source_path: "/g/1".into(),
            tags: String::new(),
            resources: "[]".into(),
            files: 1,
            bytes: 2,
            bytes_added: 3,
            created_at: 1_000 + i,
            created_by: "cli:t".into(),
            manifest: "{}".into(),
            last_drill_at: None,
            last_drill_ok: None,
            offsite_snapshot_id: None,
        };
        let (a, b) = (row(1, "aaaaaaaa"), row(2, "bbbbbbbb"));
        s.insert_backup(&a).await.unwrap();
        s.insert_backup(&b).await.unwrap();
        s.insert_drill(&endor::store::Drill {
            id: endor::store::new_id(),
            backup_id: b.id.clone(),
            at: 5,
            ok: 1,
            detail: "fine".into(),
            duration_ms: 9,
        })
        .await
        .unwrap();
        let listed = s.backups(Some(&site.id)).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].id, b.id);
        assert_eq!(
            (listed[0].last_drill_at, listed[0].last_drill_ok),
            (Some(5), Some(1))
        );
        assert_eq!(listed[1].last_drill_ok, None);
        assert_eq!(s.backup(&a.id).await.unwrap().unwrap().id, a.id);
        assert_eq!(s.backup("bbbbbbbb").await.unwrap().unwrap().id, b.id);
        for bad in ["aaaa", "%", "' OR 1=1 --", &a.id[..8]] {
            // Too short, hostile, or (two uuid v7 ids made together share 8) ambiguous.
            let found = s.backup(bad).await.unwrap();
            assert!(
                found.is_none() || bad == &a.id[..8] && found.unwrap().id == a.id,
                "{bad}"
            );
        }
        assert_eq!(s.drill_counts().await.unwrap(), (1, 0));
        s.set_backup_schedule(&site.id, Some(true)).await.unwrap();
        assert_eq!(
            s.backup_schedules().await.unwrap(),
            [(site.id.clone(), true)]
        );
        s.set_backup_schedule(&site.id, None).await.unwrap();
        assert!(s.backup_schedules().await.unwrap().is_empty());
        // Retention per site and per workspace; a value left unset stays NULL.
        use endor::store::RetentionScope::{Site, Workspace};
        let policy = RetentionRow {
            keep_last: Some(3),
            keep_daily: None,
            keep_weekly: Some(0),
            keep_monthly: Some(12),
        };
        s.set_backup_retention(Site, site.id.as_str(), Some(policy))
            .await
            .unwrap();
        assert_eq!(
            s.backup_retention(Site, site.id.as_str()).await.unwrap(),
            Some(policy)
        );
        assert_eq!(
            s.backup_retention(Workspace, site.id.as_str())
                .await
                .unwrap(),
            None
        );
        s.set_backup_retention(Site, site.id.as_str(), None)
            .await
            .unwrap();
        assert_eq!(
            s.backup_retention(Site, site.id.as_str()).await.unwrap(),
            None
        );
        // Off-site copies recorded, and forgotten by restic's full id.
        s.set_offsite_snapshot(&a.id, &format!("dddddddd{}", "e".repeat(56)))
            .await
            .unwrap();
        assert!(
            s.backup(&a.id)
                .await
                .unwrap()
                .unwrap()
                .offsite_snapshot_id
                .is_some()
        );
        assert_eq!(
            s.forget_offsite_copies(&[format!("dddddddd{}", "e".repeat(56))])
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            s.backup(&a.id).await.unwrap().unwrap().offsite_snapshot_id,
            None
        );
        let full = format!("bbbbbbbb{}", "c".repeat(56));
        assert_eq!(s.delete_backups(&[full]).await.unwrap(), 1);
        assert_eq!(s.backups(None).await.unwrap().len(), 1);
        assert_eq!(s.drill_counts().await.unwrap(), (0, 0));
        let kept = s
            .keep_backup_passphrase("rest:http://x/", "first")
            .await
            .unwrap();
        assert_eq!(kept, "first");
        assert_eq!(
            s.keep_backup_passphrase("rest:http://x/", "second")
                .await
                .unwrap(),
            "first",
            "the first passphrase stays"
        );
        db.cleanup().await;
    }
}

/// A drill of endor's own store, on both backends: it is copied while it serves (SQLite online
/// copy, `pg_dump`), written to the repository, restored from there into a fresh file or
/// database, and its workspaces, members, connections (secrets opened), sites and backups are
/// all found again; recorded in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_itself_is_drilled_on_both_backends() {
    for db in [TestStore::sqlite().await, TestStore::postgres().await] {
        let w = world_on(db).await;
        let ws = w.db.store.workspace_by_name("acme").await.unwrap().unwrap();
        w.db.store
            .create_connection(&endor::store::NewConnection {
                workspace_id: ws.id.clone(),
                forge: endor::forge::ForgeKind::Github,
                repo: "acme/shop".into(),
                api_url: None,
                git_url: None,
                secret: endor::secret::WebhookSecret::generate(),
                region: "default".into(),
            })
            .await
            .unwrap();
        let site = production(&w, "production").await;
        w.backups.create(&site, &[], "cli:test").await.unwrap();
        let d = w.backups.drill_store("cli:test").await.unwrap();
        assert!(d.ok, "{d:?}");
        assert_eq!(d.counts["workspaces"], 1);
        assert_eq!(d.counts["connections"], 1);
        assert!(d.counts["sites"] >= 1 && d.counts["backups"] == 1, "{d:?}");
        assert!(d.counts["sealed secrets"] >= 2, "{d:?}");
        let audit = w.db.store.audit_events(None).await.unwrap();
        assert!(
            audit
                .iter()
                .any(|e| e.action == "backup.drill_store" && e.detail.starts_with("passed")),
            "{audit:?}"
        );
        w.db.cleanup().await;
    }
}

/// An off-site repository over SSH on loopback: each backup is copied there; endor's key
/// reaches only an append-only server (a forced command), so its own attempt to delete the
/// copy is refused by the far side; a damaged site is restored from the copy, which verifies
/// and drills; a backup made while the far host is down is said, kept, and copied by the next
/// pass; forgetting there takes the pruning key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offsite_copies_over_ssh_are_append_only_and_restore() {
    let w = world().await;
    let mut far = SshRepo::start();
    let mut config = w.config.clone();
    config.backups.offsite = "rclone:offsite:".into();
    config.backups.offsite_ssh = far.command("push_key");
    let backups = Backups::new(w.db.store.clone(), &config);
    let site = production(&w, "production").await;
    let before = fingerprint(&w, &site).await;
    let b = backups
        .create(&site, &["nightly".into()], "cli:test")
        .await
        .unwrap();
    let copy = b.offsite_snapshot_id.clone().expect("copied off-site");
    assert_eq!(far.snapshots(), 1);
    assert_eq!(
        backups.list(Some(&site)).await.unwrap()[0].offsite_snapshot_id,
        Some(copy.clone())
    );

    // endor's own key, passphrase and all, cannot delete the copy: the far side refuses.
    let pass =
        w.db.store
            .backup_passphrase("rclone:offsite:")
            .await
            .unwrap()
            .expect("the off-site passphrase is kept");
    let program = format!("rclone.program={}", far.command("push_key"));
    let refused = Command::new("restic")
        .args([
            "-o",
            &program,
            "-r",
            "rclone:offsite:",
            "forget",
            "--prune",
            &copy,
        ])
        .env("RESTIC_PASSWORD", &pass)
        .env("RESTIC_CACHE_DIR", w._dir.path().join("attacker-cache"))
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "the append-only server deleted a snapshot"
    );
    assert_eq!(far.snapshots(), 1, "the copy is still there");

    // A damaged site restored from the off-site copy is equal to before.
    damage(&w, &site).await;
    let r = backups
        .restore_from(&b.id, None, Guard::cli(false), Source::Offsite)
        .await
        .unwrap();
    assert_eq!(r.from, "offsite");
    assert_eq!(fingerprint(&w, &site).await, before);
    let v = backups.verify(true).await.unwrap();
    assert!(v.ok && v.repository == "rclone:offsite:", "{v:?}");
    let one = backups.verify_backup(&b.id, Source::Offsite).await.unwrap();
    assert!(one.ok, "{one:?}");
    let drill = backups.drill(&site, Source::Offsite).await.unwrap();
    assert!(drill.ok, "{drill:?}");

    // The far host down: the backup is written to the primary, the failure said; the next
    // pass copies it.
    far.stop();
    let err = backups.create(&site, &[], "cli:test").await.unwrap_err();
    assert!(
        err.to_string().contains("copying it off-site failed"),
        "{err}"
    );
    let newest = backups.list(Some(&site)).await.unwrap()[0].clone();
    assert_ne!(newest.id, b.id);
    assert_eq!(newest.offsite_snapshot_id, None);
    far.restart();
    let copied = backups.copy_missing_offsite().await.unwrap();
    assert_eq!(copied, vec![newest.id.clone()]);
    assert_eq!(far.snapshots(), 2);

    // Forgetting: keep the newest one, in the primary through its pruning server and off-site
    // through the pruning key (the pushing key's command is refused).
    backups
        .set_retention(
            RetentionOf::Site(&site),
            Some(RetentionRow {
                keep_last: Some(1),
                keep_daily: Some(0),
                keep_weekly: Some(0),
                keep_monthly: Some(0),
            }),
        )
        .await
        .unwrap();
    let (mut pruner, port) = rclone(w.repo.dir.path(), &["--user", "p", "--pass", "pw"]);
    let via = format!("rest:http://p:pw@127.0.0.1:{port}/");
    let push = far.command("push_key");
    assert!(matches!(
        backups.forget(Some(&site), &via, Some(&push), false).await,
        Err(BackupError::Invalid(_))
    ));
    let prune = far.command("prune_key");
    let done = backups
        .forget(Some(&site), &via, Some(&prune), false)
        .await
        .unwrap();
    assert_eq!(
        (done[0].removed.len(), done[0].removed_offsite.len()),
        (1, 1)
    );
    assert_eq!(far.snapshots(), 1);
    let left = backups.list(Some(&site)).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, newest.id);
    assert!(left[0].offsite_snapshot_id.is_some());
    let _ = pruner.kill();
    let _ = pruner.wait();
    w.db.cleanup().await;
}

/// A site with a MariaDB database of its own: backed up, its table dropped, restored to the
/// same rows and total; its drill starts MariaDB on the restored data and every table answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mariadb_site_is_restored_and_drilled() {
    let w = world().await;
    let (maria_name, maria_url) = support::maria_source_db();
    let src = w._dir.path().join("src-shop");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.html"), b"shop").unwrap();
    w.sites
        .create(
            "shop",
            "acme",
            None,
            Imports {
                files: Some(&src),
                sqlite: None,
                postgres: None,
                mariadb: Some(&maria_url),
            },
        )
        .await
        .unwrap();
    support::drop_maria_db(&maria_name);
    let url = |w: &World| {
        let sites = w.sites.clone();
        async move {
            sites
                .show("shop")
                .await
                .unwrap()
                .database_urls
                .into_iter()
                .find(|u| u.starts_with("mysql://"))
                .unwrap()
        }
    };
    assert_eq!(support::maria_totals(&url(&w).await), "100\t100000");
    let b = w.backups.create("shop", &[], "cli:test").await.unwrap();
    support::maria_url_sql(&url(&w).await, "DROP TABLE accounts").unwrap();
    assert!(support::maria_url_sql(&url(&w).await, "SELECT 1 FROM accounts").is_err());
    let r = w
        .backups
        .restore_from(&b.id, None, Guard::cli(false), Source::Repository)
        .await
        .unwrap();
    assert_eq!(r.from, "repository");
    assert_eq!(support::maria_totals(&url(&w).await), "100\t100000");
    let d = w.backups.drill("shop", Source::Repository).await.unwrap();
    assert!(d.ok, "{d:?}");
    assert!(d.detail.contains("1 MariaDB tables answer"), "{d:?}");
    w.db.cleanup().await;
}

/// Each region writes its sites' backups to its own repository (`[regions.NAME]
/// backup_repository`); a restore stays in the backup's region: into a site of another region
/// it is refused, and a new site made by a restore is in the backup's region.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_stay_in_their_region() {
    let db = TestStore::sqlite().await;
    let dir = support::reflink_dir();
    let (eu_repo, us_repo) = (RepoServer::start(), RepoServer::start());
    let owner = db.store.create_user("owner", None, None).await.unwrap();
    db.store.create_workspace("acme", &owner.id).await.unwrap();
    let mut config = support::config_in(&db.url, dir.path());
    // No global repository: each region has its own.
    config.backups.repository = String::new();
    config.backups.cache = dir.path().join("restic-cache");
    config.regions.default = "eu".into();
    for (name, repo) in [("eu", &eu_repo), ("us", &us_repo)] {
        config.regions.list.insert(
            name.into(),
            endor::config::RegionConfig {
                storage_root: dir.path().join(name),
                backup_repository: repo.url(),
                ..Default::default()
            },
        );
    }
    let sites = Sites::new(db.store.clone(), &config);
    let backups = Backups::new(db.store.clone(), &config);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.html"), "eu").unwrap();
    let files = Imports {
        files: Some(&src),
        ..Default::default()
    };
    sites.create("eu-shop", "acme", None, files).await.unwrap();
    sites
        .create("us-shop", "acme", Some("us"), files)
        .await
        .unwrap();

    let b = backups.create("eu-shop", &[], "cli:test").await.unwrap();
    assert_eq!(b.repository, eu_repo.url());
    let u = backups.create("us-shop", &[], "cli:test").await.unwrap();
    assert_eq!(u.repository, us_repo.url());
    let snapshots = |r: &RepoServer| {
        std::fs::read_dir(r.dir.path().join("snapshots"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!((snapshots(&eu_repo), snapshots(&us_repo)), (1, 1));

    // Into a site of another region: refused, nothing changed there.
    let refused = backups
        .restore(&b.id, Some("us-shop"), Guard::cli(false))
        .await;
    match refused {
        Err(BackupError::Invalid(m)) => assert!(m.contains("stays in its region"), "{m}"),
        other => panic!("a restore across regions: {other:?}"),
    }
    // Into a new site: made in the backup's region, under its storage root.
    let r = backups
        .restore(&b.id, Some("eu-copy"), Guard::cli(false))
        .await
        .unwrap();
    assert!(r.created);
    let copy = sites.show("eu-copy").await.unwrap();
    assert_eq!(copy.region, "eu");
    assert!(
        copy.files_dir.starts_with(dir.path().join("eu")),
        "{copy:?}"
    );
    assert_eq!(
        std::fs::read_to_string(copy.files_dir.join("index.html")).unwrap(),
        "eu"
    );
    // The American backup restores in place from its own repository.
    let r = backups
        .restore(&u.id, None, Guard::cli(false))
        .await
        .unwrap();
    assert_eq!(r.site, "us-shop");
    db.cleanup().await;
}
