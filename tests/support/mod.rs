//! Shared test helpers: throw-away stores on both backends and an in-process server on a random
//! port. PostgreSQL tests use the machine's server (`ENDOR_TEST_PG`, default
//! `postgres://postgres@127.0.0.1:5432`), each test in a database of its own.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub mod fake_forge;
pub mod preview;

use endor::config::Config;
use endor::server::{self, AppState};
use endor::store::{self, Store};
use sqlx::Connection as _;

pub fn pg_base() -> String {
    std::env::var("ENDOR_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A store that lives as long as this value: a temp SQLite file, or a fresh PostgreSQL database
/// that is dropped on `cleanup()` (the test script also drops leftovers named `endor_test_*`).
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub url: String,
    pg_db: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// The master key the tests' stores and servers share (one file for the test run, so a
/// store opened by a test and a server started on its config read each other's secrets).
pub fn test_master_key() -> std::path::PathBuf {
    std::env::temp_dir().join("endor-test-keys/master.key")
}

/// The keyring of [`test_master_key`].
pub fn test_keyring() -> std::sync::Arc<endor::secret::Keyring> {
    std::sync::Arc::new(endor::secret::Keyring::load(&test_master_key()).unwrap())
}

impl TestStore {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("endor.db").display());
        let store = store::connect(&url, 8, test_keyring()).await.unwrap();
        store.migrate().await.unwrap();
        Self {
            store,
            url,
            pg_db: None,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> Self {
        let name = format!("endor_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_base()))
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432 (scripts/test.sh starts it)");
        // The name is generated above from a UUID: safe to splice into DDL.
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.ok();
        let url = format!("{}/{}", pg_base(), name);
        let store = store::connect(&url, 8, test_keyring()).await.unwrap();
        store.migrate().await.unwrap();
        Self {
            store,
            url,
            pg_db: Some(name),
            _dir: None,
        }
    }

    pub async fn cleanup(self) {
        let Self { store, pg_db, .. } = self;
        drop(store);
        if let Some(name) = pg_db
            && let Ok(mut admin) =
                sqlx::PgConnection::connect(&format!("{}/postgres", pg_base())).await
        {
            let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await;
        }
    }
}

/// A config on the store `url` whose storage (sites, logs, git mirrors, secret key) is all
/// under `dir`.
pub fn config_in(url: &str, dir: &Path) -> Config {
    let mut config = Config::default();
    config.store.url = url.to_string();
    config.storage.root = dir.join("sites");
    config.storage.logs = dir.join("logs");
    config.storage.git = dir.join("git");
    config.secrets.master_key_file = test_master_key();
    config
}

/// The API's cast: workspace `acme` (owner `own`, billing `bill`, developer `dev`) and workspace
/// `other` (`out`, owner and developer); the users must exist.
pub async fn acme_and_other(s: &dyn Store) {
    use endor::service;
    service::create_workspace(s, "acme", "own").await.unwrap();
    service::add_member(s, "acme", "bill", &["billing".into()])
        .await
        .unwrap();
    service::add_member(s, "acme", "dev", &["developer".into()])
        .await
        .unwrap();
    service::create_workspace(s, "other", "out").await.unwrap();
    service::set_member_roles(s, "other", "out", &["owner".into(), "developer".into()])
        .await
        .unwrap();
}

/// In workspace `acme` (see [`acme_and_other`]): sites `web` (tagged `qa`) and `web-2`, the
/// repository `acme/web` connected, its PR 1 failed at its config step and its PR 2 live (site
/// `web-pr-2`). The connection.
pub async fn acme_sites_and_repo(s: &Arc<dyn Store>, config: &Config) -> endor::service::Connected {
    use endor::sites::{Imports, Sites};
    let sites = Sites::new(s.clone(), config);
    for name in ["web", "web-2"] {
        sites
            .create(name, "acme", None, Imports::default())
            .await
            .unwrap();
    }
    sites.tag("web", "qa", true).await.unwrap();
    let conn =
        endor::service::connect_repo(s.as_ref(), config, "acme", "github:acme/web", None, None)
            .await
            .unwrap();
    // PR 1 failed at its config step; PR 2 is live: its site `web-pr-2` expires in an hour.
    sites
        .create("web-pr-2", "acme", None, Imports::default())
        .await
        .unwrap();
    for (number, state, reason, expires) in [
        (
            1,
            endor::store::PreviewState::Failed,
            Some(".endor.toml: unknown field `bulid`".to_string()),
            None,
        ),
        (
            2,
            endor::store::PreviewState::Ready,
            None,
            Some(endor::now_ms() + 3_600_000),
        ),
    ] {
        let mut p = endor::store::Preview::new(
            conn.connection_id.clone(),
            number,
            format!("web-pr-{number}"),
            endor::now_ms() + number,
        );
        (p.state, p.reason, p.expires_at) = (state, reason, expires);
        s.put_preview(&p).await.unwrap();
    }
    conn
}

/// A free TCP port on loopback (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running server on 127.0.0.1:random.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub db: TestStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(db: TestStore) -> Self {
        let mut config = Config::default();
        config.store.url = db.url.clone();
        Self::start_with(db, config).await
    }

    /// A server on `db` with `config` (its listen address and public URL replaced).
    pub async fn start_with(db: TestStore, mut config: Config) -> Self {
        config.store.url = db.url.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        config.server.listen = addr;
        config.server.public_url = format!("http://{addr}");
        let state = AppState::start(config).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = state.clone();
        tokio::spawn(async move {
            server::serve(s, listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            state,
            db,
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn store(&self) -> &dyn Store {
        self.state.store.as_ref()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let Self { state, db, .. } = self;
        drop(state);
        db.cleanup().await;
    }
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/webhooks")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Expand one async test body into a SQLite and a PostgreSQL test.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::support::TestStore::sqlite().await;
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::support::TestStore::postgres().await;
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

/// A source database on the machine's server, like a customer's production database: table
/// `accounts` with 100 rows of balance 1000. Returns (name, url).
pub async fn pg_source_db() -> (String, String) {
    let name = format!("endor_test_src_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_base()))
        .await
        .unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{}/{}", pg_base(), name);
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, 1000 FROM generate_series(0, 99) g;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    (name, url)
}

pub async fn drop_pg_db(name: &str) {
    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_base()))
        .await
        .unwrap();
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// (rows, total balance) of `accounts` at a PostgreSQL URL.
pub async fn pg_totals(url: &str) -> (i64, i64) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_as("SELECT COUNT(*), SUM(balance)::bigint FROM accounts")
        .fetch_one(&mut c)
        .await
        .unwrap()
}

/// Run SQL on a MariaDB server over TCP (password through the environment).
pub fn maria_sql(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    q: &str,
) -> Result<String, String> {
    maria_run(
        &["-h", "127.0.0.1", "-P", &port.to_string()],
        user,
        password,
        db,
        q,
    )
}

/// `q` through the `mariadb` client reaching the server with `how` (host and port, or socket).
fn maria_run(
    how: &[&str],
    user: &str,
    password: &str,
    db: &str,
    q: &str,
) -> Result<String, String> {
    let out = std::process::Command::new("mariadb")
        .env("MYSQL_PWD", password)
        .arg("--no-defaults")
        .args(how)
        .args(["-u", user, "-N", "-B", db, "-e", q])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `q` as the user of a mysql:// URL of an endor instance (by its socket or its port).
pub fn maria_url_sql(url: &str, q: &str) -> Result<String, String> {
    let rest = url.strip_prefix("mysql://").unwrap();
    let (auth, hostdb) = rest.split_once('@').unwrap();
    let (user, pw) = auth.split_once(':').unwrap();
    let (hostport, dbq) = hostdb.split_once('/').unwrap();
    let (db, socket) = match dbq.split_once("?socket=") {
        Some((db, socket)) => (db, Some(socket)),
        None => (dbq, None),
    };
    match socket {
        Some(socket) => maria_run(&["--socket", socket], user, pw, db, q),
        None => {
            let port = hostport.rsplit_once(':').unwrap().1;
            maria_run(&["-h", "127.0.0.1", "-P", port], user, pw, db, q)
        }
    }
}

/// A source database on the machine's MariaDB with the same `accounts` table. Returns
/// (name, url).
pub fn maria_source_db() -> (String, String) {
    let name = format!("endor_test_src_{}", uuid::Uuid::new_v4().simple());
    maria_sql(
        3306,
        "root",
        "",
        "mysql",
        &format!(
            "CREATE DATABASE {name}; CREATE TABLE {name}.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB; \
             INSERT INTO {name}.accounts SELECT seq, 1000 FROM seq_0_to_99;"
        ),
    )
    .unwrap();
    (name.clone(), format!("mysql://root@127.0.0.1:3306/{name}"))
}

pub fn drop_maria_db(name: &str) {
    maria_sql(
        3306,
        "root",
        "",
        "mysql",
        &format!("DROP DATABASE IF EXISTS {name}"),
    )
    .unwrap();
}

/// "rows\ttotal" of `accounts` at a mysql:// URL of an endor instance.
pub fn maria_totals(url: &str) -> String {
    maria_url_sql(url, "SELECT COUNT(*), SUM(balance) FROM accounts").unwrap()
}

/// A POST of `body` to `url` as GitHub delivers a webhook: the `event`, a fresh delivery id,
/// JSON, signed with `secret` (`X-Hub-Signature-256`).
pub fn github_delivery(
    http: &reqwest::Client,
    url: &str,
    event: &str,
    body: Vec<u8>,
    secret: &str,
) -> reqwest::RequestBuilder {
    let signature = endor::forge::signature::sign_hex(secret.as_bytes(), &body);
    http.post(url)
        .header("x-github-event", event)
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-hub-signature-256", format!("sha256={signature}"))
        .header("content-type", "application/json")
        .body(body)
}

/// A new 2048-bit RSA private key (PEM) in `dir`, made by openssl: a GitHub App's key.
pub fn rsa_key(dir: &Path) -> std::path::PathBuf {
    let key = dir.join("app.pem");
    let made = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    key
}

/// A fresh directory on the reflink filesystem (`ENDOR_TEST_REFLINK_DIR`, mounted by
/// scripts/test.sh), reachable by the database servers' OS users.
pub fn reflink_dir() -> tempfile::TempDir {
    let base = std::env::var("ENDOR_TEST_REFLINK_DIR").expect(
        "ENDOR_TEST_REFLINK_DIR is not set: run the suite with scripts/test.sh, which mounts an XFS image with reflink",
    );
    std::fs::create_dir_all(&base).unwrap();
    let d = tempfile::tempdir_in(base).unwrap();
    open_up(d.path());
    d
}

/// A fresh directory on the root disk (ext4: no reflink).
pub fn plain_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    open_up(d.path());
    d
}

/// Per-site database servers run as other OS users, which must reach their directories.
fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The text of one service's log of a site, a line each (what `endor site logs` shows, without
/// times).
pub fn log_text(logs: &Path, site: &endor::ids::SiteId, service: endor::logs::Service) -> String {
    let (lines, _) =
        endor::logs::read_since(logs, site, &[service], &Default::default(), None).unwrap();
    lines
        .iter()
        .map(|r| format!("{}\n", r.entry.text))
        .collect()
}
