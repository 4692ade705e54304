//! Two operations meeting on one site: the races a property-based run of the API found, each
//! run many times on both store backends (and, on PostgreSQL, with a second process — the
//! CLI — in the race). Never a 500; the loser gets 409 `busy` or 404; every site either fully
//! exists (active, its files and database on disk) or is fully gone (no folder, no record).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use endor::api::{self, Api};
use endor::service;
use endor::sites::Sites;
use endor::store::{SiteState, Store};
use serde_json::{Value, json};
use support::TestStore;
use tower::ServiceExt;

/// How many rounds of each race per backend.
const ROUNDS: usize = 12;

struct World {
    db: TestStore,
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Arc<dyn Store>,
    sites: Arc<Sites>,
    app: axum::Router,
    token: String,
    /// `ENDOR__…` variables that point the CLI at the same store and storage.
    cli_env: Vec<(String, String)>,
}

/// What one competitor got: an HTTP status, or the CLI's outcome as one.
type Outcome = (String, StatusCode, String);

/// A competitor and the statuses it may end with.
type Racer = (tokio::task::JoinHandle<Outcome>, &'static [StatusCode]);

impl World {
    async fn new(db: TestStore) -> Self {
        let dir = support::plain_dir();
        let config = support::config_in(&db.url, dir.path());
        let store = db.store.clone();
        let s = store.as_ref();
        service::create_user(s, "dev", None, None).await.unwrap();
        let token = service::issue_token(s, "dev", "t").await.unwrap().token;
        service::create_workspace(s, "acme", "dev").await.unwrap();
        service::set_member_roles(s, "acme", "dev", &["owner".into(), "developer".into()])
            .await
            .unwrap();
        // The parent: files and a SQLite database, so every operation has real paths to lose.
        let sites = Arc::new(Sites::new(store.clone(), &config));
        support::preview::sqlite_parent(&sites, dir.path(), 50).await;
        let cli_env = vec![
            ("ENDOR__STORE__URL".into(), db.url.clone()),
            (
                "ENDOR__STORAGE__ROOT".into(),
                config.storage.root.display().to_string(),
            ),
            (
                "ENDOR__STORAGE__LOGS".into(),
                config.storage.logs.display().to_string(),
            ),
            (
                "ENDOR__STORAGE__GIT".into(),
                config.storage.git.display().to_string(),
            ),
            (
                "ENDOR__SECRETS__MASTER_KEY_FILE".into(),
                config.master_key_file().display().to_string(),
            ),
        ];
        World {
            root: std::path::absolute(&config.storage.root).unwrap(),
            app: api::router(Api::new(store.clone(), &config)),
            db,
            _dir: dir,
            store,
            sites,
            token,
            cli_env,
        }
    }

    /// A call through the API, in a task of its own so that competitors really overlap.
    fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> tokio::task::JoinHandle<Outcome> {
        let app = self.app.clone();
        let token = self.token.clone();
        let what = format!("api {method} {path}");
        let path = format!("/api/v1{path}");
        tokio::spawn(async move {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            (what, status, String::from_utf8_lossy(&bytes).into_owned())
        })
    }

    /// The same operation through the CLI, a second process on the same store: success reads
    /// as 200, a refusal as 409 (busy) or 404 (not found), anything else as 500.
    fn cli(&self, args: &[&str]) -> tokio::task::JoinHandle<Outcome> {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_endor"));
        cmd.args(args)
            .env_remove("ENDOR_CONFIG")
            .env("ENDOR_LOG", "warn");
        for (k, v) in &self.cli_env {
            cmd.env(k, v);
        }
        let what = format!("cli {}", args.join(" "));
        tokio::spawn(async move {
            let out = cmd.output().await.unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            let status = if out.status.success() {
                StatusCode::OK
            } else if err.contains("is busy") || err.contains("being deleted") {
                StatusCode::CONFLICT
            } else if err.contains("not found") {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            (what, status, err)
        })
    }

    /// One competitor: through the CLI (`args`) when `cli`, else through the API.
    fn racer(
        &self,
        cli: bool,
        args: &[&str],
        api: (Method, &str, Option<Value>, &'static [StatusCode]),
    ) -> Racer {
        if cli {
            (self.cli(args), CLI)
        } else {
            let (method, path, body, allowed) = api;
            (self.api(method, path, body), allowed)
        }
    }

    async fn clone_of_production(&self, name: &str) {
        self.sites
            .clone_site("production", name, false, Default::default())
            .await
            .unwrap();
    }

    /// Every site is whole or gone: a live record is active with its files and database on
    /// disk and every resource's path present; no folder under the storage root belongs to
    /// anything but a live site, and the trash is empty.
    async fn assert_consistent(&self, round: &str) {
        let live = self.store.list_sites().await.unwrap();
        let mut ids = Vec::new();
        for site in &live {
            assert_eq!(
                site.state,
                SiteState::Active,
                "{round}: {} is {:?}",
                site.name,
                site.state
            );
            let dir = self.root.join(site.id.as_str());
            for p in ["live/files/logo.txt", "live/sqlite/main.db"] {
                assert!(dir.join(p).exists(), "{round}: {} lacks {p}", site.name);
            }
            for r in self.store.site_resources(&site.id).await.unwrap() {
                assert!(
                    Path::new(&r.location).exists(),
                    "{round}: {} resource {} at {} is gone",
                    site.name,
                    r.kind,
                    r.location
                );
            }
            for g in self.store.generations(&site.id).await.unwrap() {
                let gdir = dir.join("generations").join(g.seq.to_string());
                assert!(
                    gdir.join("sqlite/main.db").exists(),
                    "{round}: {} generation {} is not whole",
                    site.name,
                    g.seq
                );
            }
            ids.push(site.id.as_str().to_string());
        }
        for e in std::fs::read_dir(&self.root).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name == ".endor-reflink" {
                continue;
            }
            if name == ".trash" {
                let left = std::fs::read_dir(self.root.join(".trash")).unwrap().count();
                assert_eq!(left, 0, "{round}: the trash holds {left} entries");
                continue;
            }
            assert!(
                ids.contains(&name),
                "{round}: folder {name} belongs to no live site"
            );
        }
    }
}

/// Wait for every competitor; each must have one of the statuses `allowed` lists for it, and
/// none a 5xx. Returns the statuses.
async fn settle(round: &str, racers: Vec<Racer>) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for (h, allowed) in racers {
        let (what, status, body) = h.await.unwrap();
        assert!(
            !status.is_server_error() && allowed.contains(&status),
            "{round}: {what} answered {status}: {body}"
        );
        if status == StatusCode::CONFLICT && what.starts_with("api") {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert!(
                ["busy", "conflict"].contains(&v["error"]["code"].as_str().unwrap()),
                "{round}: {what}: {body}"
            );
        }
        out.push(status);
    }
    out
}

const DELETED: &[StatusCode] = &[
    StatusCode::NO_CONTENT,
    StatusCode::CONFLICT,
    StatusCode::NOT_FOUND,
];
const SNAPPED: &[StatusCode] = &[StatusCode::OK, StatusCode::CONFLICT, StatusCode::NOT_FOUND];
const CLONED: &[StatusCode] = &[
    StatusCode::CREATED,
    StatusCode::CONFLICT,
    StatusCode::NOT_FOUND,
];
const CLI: &[StatusCode] = &[StatusCode::OK, StatusCode::CONFLICT, StatusCode::NOT_FOUND];

/// The four races, `ROUNDS` times each; with `cli`, one competitor of each race is the CLI.
async fn races(w: &World, cli: bool) {
    for i in 0..ROUNDS {
        // 1. A delete racing two snapshots of the same site.
        let round = format!("snapshot/delete round {i}");
        w.clone_of_production("race-a").await;
        let mut racers = vec![
            (w.api(Method::POST, "/sites/race-a/snapshot", None), SNAPPED),
            (w.api(Method::POST, "/sites/race-a/snapshot", None), SNAPPED),
        ];
        racers.insert(
            i % 3,
            w.racer(
                cli,
                &["site", "delete", "race-a"],
                (Method::DELETE, "/sites/race-a", None, DELETED),
            ),
        );
        settle(&round, racers).await;
        w.assert_consistent(&round).await;
        let _ = w.sites.delete("race-a", Default::default()).await;

        // 2. Two deletes racing a clone into the same (existing) name.
        let round = format!("clone-into/delete round {i}");
        w.clone_of_production("race-b").await;
        let mut racers = vec![
            (w.api(Method::DELETE, "/sites/race-b", None), DELETED),
            (
                w.api(
                    Method::POST,
                    "/sites/production/clone",
                    Some(json!({"name": "race-b"})),
                ),
                CLONED,
            ),
        ];
        racers.insert(
            i % 3,
            w.racer(
                cli,
                &["site", "delete", "race-b"],
                (Method::DELETE, "/sites/race-b", None, DELETED),
            ),
        );
        settle(&round, racers).await;
        w.assert_consistent(&round).await;
        let _ = w.sites.delete("race-b", Default::default()).await;

        // 3. A delete racing a clone *from* the site.
        let round = format!("clone-from/delete round {i}");
        w.clone_of_production("race-c").await;
        let deleter = w.racer(
            cli,
            &["site", "delete", "race-c"],
            (Method::DELETE, "/sites/race-c", None, DELETED),
        );
        let cloner = (
            w.api(
                Method::POST,
                "/sites/race-c/clone",
                Some(json!({"name": "race-c-copy"})),
            ),
            CLONED,
        );
        let racers = if i % 2 == 0 {
            vec![deleter, cloner]
        } else {
            vec![cloner, deleter]
        };
        settle(&round, racers).await;
        w.assert_consistent(&round).await;
        for s in ["race-c", "race-c-copy"] {
            let _ = w.sites.delete(s, Default::default()).await;
        }

        // 4. Two clones of the parent at once, and a snapshot of it (which prunes old
        //    generations) in between.
        let round = format!("clone/clone/snapshot round {i}");
        let mut racers = vec![
            (
                w.api(
                    Method::POST,
                    "/sites/production/clone",
                    Some(json!({"name": "race-d1"})),
                ),
                CLONED,
            ),
            (
                w.api(
                    Method::POST,
                    "/sites/production/clone",
                    Some(json!({"name": "race-d2"})),
                ),
                CLONED,
            ),
        ];
        racers.insert(
            i % 3,
            w.racer(
                cli,
                &["site", "snapshot", "production"],
                (Method::POST, "/sites/production/snapshot", None, SNAPPED),
            ),
        );
        settle(&round, racers).await;
        w.assert_consistent(&round).await;
        for s in ["race-d1", "race-d2"] {
            let _ = w.sites.delete(s, Default::default()).await;
        }
        w.assert_consistent(&format!("after round {i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_operations_on_one_site_sqlite() {
    let w = World::new(TestStore::sqlite().await).await;
    races(&w, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_operations_on_one_site_postgres() {
    let w = World::new(TestStore::postgres().await).await;
    races(&w, false).await;
    w.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_operations_across_two_processes_postgres() {
    let w = World::new(TestStore::postgres().await).await;
    races(&w, true).await;
    w.db.cleanup().await;
}

/// A site held by one operation is refused to the next with 409 `busy` naming what holds it,
/// and free again once the first is done; a lock whose holder died expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_site_says_what_holds_it() {
    let w = World::new(TestStore::sqlite().await).await;
    // Hold production the way a second process would: its exclusive lease, taken directly.
    let now = endor::now_ms();
    assert!(
        w.store
            .try_lease("site:production", "delete 0123abcd", now, now + 60_000)
            .await
            .unwrap()
    );
    let (_, status, body) = w
        .api(Method::POST, "/sites/production/snapshot", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "busy");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delete in progress"),
        "{body}"
    );
    let (_, status, _) = w
        .api(
            Method::POST,
            "/sites/production/clone",
            Some(json!({"name": "copy"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        w.store.site_by_name("copy").await.unwrap().is_none(),
        "a refused clone made nothing"
    );
    let (_, status, err) = w.cli(&["site", "snapshot", "production"]).await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    // Released: the next one goes through.
    w.store
        .release_lease("site:production", "delete 0123abcd")
        .await
        .unwrap();
    let (_, status, body) = w
        .api(Method::POST, "/sites/production/snapshot", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    // A lease left by a holder that died (expired) is no obstacle.
    let then = endor::now_ms() - 120_000;
    assert!(
        w.store
            .try_lease("site:production", "snapshot dead", then, then + 1_000)
            .await
            .unwrap()
    );
    let (_, status, body) = w
        .api(Method::POST, "/sites/production/snapshot", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    // Nothing is held once operations are done.
    let held = w
        .store
        .leases_with_prefix("site", endor::now_ms())
        .await
        .unwrap();
    assert!(held.is_empty(), "{held:?}");
}

/// Generated passwords sealed many times at once (the key file's own first use by racing
/// processes is `secret::sealer_tests::many_first_uses_at_once_share_one_whole_key`): every
/// change succeeds with the one master key, and what was stored opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sealing_uses_the_one_master_key() {
    let w = World::new(TestStore::sqlite().await).await;
    let key = w
        .cli_env
        .iter()
        .find(|(k, _)| k == "ENDOR__SECRETS__MASTER_KEY_FILE")
        .unwrap()
        .1
        .clone();
    let calls: Vec<_> = (0..16)
        .map(|_| {
            w.api(
                Method::PATCH,
                "/sites/production/access",
                Some(json!({"basic_auth": "generate"})),
            )
        })
        .collect();
    for c in calls {
        let (what, status, body) = c.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{what}: {body}");
    }
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    // And the credentials stored by any of them open with the key now on disk.
    let (_, status, body) = w
        .api(Method::GET, "/sites/production/access", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["basic_auth"]["password"]
            .as_str()
            .is_some_and(|p| p.len() >= 16),
        "{body}"
    );
}
