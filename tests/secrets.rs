//! Secrets at rest: every secret the store keeps is sealed with the master key (the store's
//! files and a `pg_dump` hold none of their values), secrets stored before sealing are sealed
//! when the store is opened, and `endor secrets rotate` killed at random points leaves every
//! secret readable, then finishes.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use endor::forge::ForgeKind;
use endor::secret::{Keyring, WebhookSecret};
use endor::store::{NewConnection, NewSite, Store};
use support::TestStore;

/// A workspace with `n` connections (every fifth with a previous secret too) and a site with
/// generated basic-auth credentials; every secret's value, by where it is kept.
async fn fill(store: &dyn Store, n: usize) -> BTreeMap<String, String> {
    let user = store.create_user("ann", None, None).await.unwrap();
    let ws = store.create_workspace("acme", &user.id).await.unwrap();
    let mut values = BTreeMap::new();
    for i in 0..n {
        let secret = WebhookSecret::generate();
        let c = store
            .create_connection(&NewConnection {
                workspace_id: ws.id.clone(),
                forge: ForgeKind::Github,
                repo: format!("acme/repo{i}"),
                api_url: None,
                git_url: None,
                secret: secret.clone(),
                region: "default".into(),
            })
            .await
            .unwrap();
        values.insert(format!("{}:secret", c.id), secret.expose().to_string());
        if i % 5 == 0 {
            let next = WebhookSecret::generate();
            store
                .set_connection_secrets(&c.id, &next, Some(&secret))
                .await
                .unwrap();
            values.insert(format!("{}:secret", c.id), next.expose().to_string());
            values.insert(format!("{}:previous", c.id), secret.expose().to_string());
        }
    }
    let site = store
        .create_site(&NewSite {
            name: "production".into(),
            workspace_id: ws.id.clone(),
            region: "local".into(),
            parent_id: None,
            read_only: false,
        })
        .await
        .unwrap();
    endor::access::set_generated_password(store, store.keyring(), &site.id, true)
        .await
        .unwrap();
    let view = endor::access::view(store, store.keyring(), "production", &site.id)
        .await
        .unwrap();
    let password = view.basic_auth.unwrap().password.unwrap();
    values.insert("production:password".into(), password);
    values
}

/// Every secret as the store gives it back now.
async fn read_back(store: &dyn Store) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for c in store.list_connections(None).await.unwrap() {
        out.insert(format!("{}:secret", c.id), c.secret.expose().to_string());
        if let Some(p) = &c.previous_secret {
            out.insert(format!("{}:previous", c.id), p.expose().to_string());
        }
    }
    let site = store.site_by_name("production").await.unwrap().unwrap();
    let view = endor::access::view(store, store.keyring(), "production", &site.id)
        .await
        .unwrap();
    out.insert(
        "production:password".into(),
        view.basic_auth.unwrap().password.unwrap(),
    );
    out
}

fn assert_nothing_plain(what: &str, bytes: &[u8], values: &BTreeMap<String, String>) {
    let text = String::from_utf8_lossy(bytes);
    for (k, v) in values {
        assert!(!text.contains(v.as_str()), "{what} holds {k} in plain text");
    }
}

/// A SQLite store in a temporary folder with its own master key: (folder, key file, URL, store).
async fn sqlite_store() -> (tempfile::TempDir, PathBuf, String, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let url = format!("sqlite://{}", dir.path().join("endor.db").display());
    let store = endor::store::open(&url, 2, &key).await.unwrap();
    (dir, key, url, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_holds_no_secret_in_plain_text() {
    let (dir, key, url, store) = sqlite_store().await;
    let file = dir.path().join("endor.db");
    let values = fill(store.as_ref(), 12).await;
    assert_eq!(read_back(store.as_ref()).await, values);
    // The database and its write-ahead log, as they are on disk.
    for f in [file.clone(), dir.path().join("endor.db-wal")] {
        if let Ok(bytes) = std::fs::read(&f) {
            assert_nothing_plain(&f.display().to_string(), &bytes, &values);
        }
    }
    drop(store);
    // Another process with the same key reads them all; with another key, none.
    let again = endor::store::open(&url, 2, &key).await.unwrap();
    assert_eq!(read_back(again.as_ref()).await, values);
    drop(again);
    let wrong = endor::store::connect(
        &url,
        2,
        Arc::new(Keyring::load(&dir.path().join("other.key")).unwrap()),
    )
    .await
    .unwrap();
    let err = wrong.list_connections(None).await.unwrap_err();
    assert!(err.to_string().contains("could not be opened"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_of_the_postgres_store_holds_no_secret() {
    let db = TestStore::postgres().await;
    let values = fill(db.store.as_ref(), 12).await;
    // Nothing in plain text: sealing finds nothing to do; a value put back in plain text
    // (as an older endor stored it) is the one sealed.
    assert_eq!(db.store.reseal_secrets(None).await.unwrap(), 0);
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let plain = values.values().next().unwrap().clone();
    sqlx::query("UPDATE connections SET previous_secret = $1 WHERE previous_secret IS NOT NULL AND id = (SELECT min(id) FROM connections WHERE previous_secret IS NOT NULL)")
        .bind(&plain)
        .execute(&mut c)
        .await
        .unwrap();
    assert_eq!(db.store.reseal_secrets(None).await.unwrap(), 1);
    assert_eq!(db.store.reseal_secrets(None).await.unwrap(), 0);
    let out = Command::new("pg_dump")
        .arg("--data-only")
        .arg(&db.url)
        .output()
        .expect("pg_dump (postgresql-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The dump does hold the connections, sealed.
    let dump = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(dump.contains("acme/repo11") && dump.contains("v2:"));
    assert_nothing_plain("pg_dump", &out.stdout, &values);
    db.cleanup().await;
}

/// A store written before sealing (secrets in plain text) is sealed when it is opened, and
/// its secrets read the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_secrets_of_an_older_store_are_sealed_when_it_is_opened() {
    let (_dir, key, url, store) = sqlite_store().await;
    let values = fill(store.as_ref(), 3).await;
    drop(store);
    // Put the connections' secrets back in plain text, as an older endor stored them.
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    for (k, v) in &values {
        if let Some(id) = k.strip_suffix(":secret") {
            sqlx::query("UPDATE connections SET secret = $1 WHERE id = $2")
                .bind(v)
                .bind(id)
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
    drop(conn);
    let store = endor::store::open(&url, 2, &key).await.unwrap();
    let counts = store.sealed_counts().await.unwrap();
    assert!(!counts.contains_key("plain"), "{counts:?}");
    assert_eq!(read_back(store.as_ref()).await, values);
}

fn endor(config: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_endor"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// `endor ARGS` run to its end; it must succeed.
fn endor_ok(config: &Path, args: &[&str]) -> std::process::Output {
    let out = endor(config, args).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "endor {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn key_files(key: &Path) -> Vec<PathBuf> {
    [".next", ".old"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", key.display())))
        .filter(|p| p.exists())
        .collect()
}

/// `endor secrets rotate` SIGKILLed at random points of its work: after each kill every secret
/// reads back the same in a fresh process; the next run finishes, leaving one key that seals
/// everything, the old key's files gone, and the rotation in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_killed_anywhere_leaves_every_secret_readable() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("keys/master.key");
    let url = format!("sqlite://{}", dir.path().join("endor.db").display());
    let config = dir.path().join("endor.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"{url}\"\n[secrets]\nmaster_key_file = \"{}\"\n",
            key.display()
        ),
    )
    .unwrap();
    let store = endor::store::open(&url, 2, &key).await.unwrap();
    let values = fill(store.as_ref(), 300).await;
    drop(store);
    // How long one whole rotation takes here, to spread the kills over it.
    let started = Instant::now();
    let out = endor_ok(&config, &["secrets", "rotate", "--json"]);
    let whole = started.elapsed();
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["resealed"], values.len() as u64);
    assert_nothing_plain("rotate's output", &out.stdout, &values);
    assert_nothing_plain("rotate's log", &out.stderr, &values);
    let mut cut_midway = 0;
    for round in 0..8u64 {
        let at = whole.mul_f64(0.1 + 0.12 * round as f64);
        let mut child = endor(&config, &["secrets", "rotate"]);
        tokio::time::sleep(at).await;
        let killed = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        // Cut inside the rotation: its key files are still there.
        cut_midway += (killed && !key_files(&key).is_empty()) as usize;
        let store = endor::store::open(&url, 2, &key).await.unwrap();
        assert_eq!(
            read_back(store.as_ref()).await,
            values,
            "after a kill at {at:?} (round {round}); key files left: {:?}",
            key_files(&key)
        );
    }
    assert!(cut_midway > 0, "no kill landed inside a rotation");
    let out = endor_ok(&config, &["secrets", "rotate", "--json"]);
    let last: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(key_files(&key).is_empty(), "{:?}", key_files(&key));
    let store = endor::store::open(&url, 2, &key).await.unwrap();
    let counts = store.sealed_counts().await.unwrap();
    let new_key = last["new_key"].as_str().unwrap();
    assert_eq!(
        counts,
        BTreeMap::from([(new_key.to_string(), values.len() as u64)])
    );
    assert_eq!(store.keyring().current_id(), new_key);
    assert_ne!(new_key, first["new_key"].as_str().unwrap());
    assert_eq!(read_back(store.as_ref()).await, values);
    let audit = store.audit_events(None).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "secrets.rotate" && e.caller.starts_with("cli:")),
        "{audit:?}"
    );
    // `secrets status` names the one key and the counts, and no secret.
    let out = endor_ok(&config, &["secrets", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(new_key) && text.contains("under"), "{text}");
    assert_nothing_plain("status", &out.stdout, &values);
}
