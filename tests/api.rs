//! The JSON API: the authorization matrix over the whole route table, tokens, errors, the
//! OpenAPI document, role invariants and production protection through the API.

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use endor::api::{self, Api, Need, ROUTES, Role};
use endor::service;
use endor::sites::{Imports, Sites};
use endor::store::Store;
use serde_json::{Value, json};
use support::TestStore;
use tower::ServiceExt;

/// The kinds of caller every route is tried with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Owner,
    Billing,
    Developer,
    /// Owner and developer of another workspace, member of nothing here.
    Outsider,
    NoToken,
    BadToken,
    Revoked,
}

const EVERYONE: [Who; 7] = [
    Who::Owner,
    Who::Billing,
    Who::Developer,
    Who::Outsider,
    Who::NoToken,
    Who::BadToken,
    Who::Revoked,
];

/// A workspace `acme` (owner `own`, billing `bill`, developer `dev`), a workspace `other`
/// (`out`), sites `web` and `web-2` in acme with a tag, a connection, and tokens.
struct World {
    _db: TestStore,
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    app: axum::Router,
    tokens: std::collections::HashMap<&'static str, String>,
    /// A second token of each user, for the revoke route.
    spare: std::collections::HashMap<&'static str, String>,
    revoked: String,
    connection: String,
    /// The configuration its server runs with: backups go to a local restic repository
    /// (made on first use).
    config: endor::config::Config,
    /// The backup of `web` that routes under `/backups/` act on.
    backup: Option<String>,
}

impl World {
    async fn new() -> Self {
        Self::on(TestStore::sqlite().await).await
    }

    async fn on(db: TestStore) -> Self {
        Self::with_backups(db, true).await
    }

    /// A world for `route`: a backup of `web` made first when the route acts on one.
    async fn for_route(route: &api::ApiRoute) -> Self {
        let mut w = Self::new().await;
        if route.path.contains("/backups/") {
            let b = endor::backups::Backups::new(w.store.clone(), &w.config)
                .create("web", &[], "test")
                .await
                .unwrap();
            w.backup = Some(b.id);
        }
        w
    }

    /// A world whose server has backups off (`backups.repository` empty), with a row of a
    /// backup of `web` made while they were on.
    async fn backups_off() -> Self {
        let mut w = Self::with_backups(TestStore::sqlite().await, false).await;
        let web = w.store.site_by_name("web").await.unwrap().unwrap();
        let id = endor::store::new_id();
        w.store
            .insert_backup(&endor::store::Backup {
                id: id.clone(),
                site_id: web.id,
                site_name: "web".into(),
                repository: "rest:http://127.0.0.1:9/".into(),
                snapshot_id: "0badc0de".into(),
                source_path: "/gone".into(),
                tags: String::new(),
                resources: "[]".into(),
                files: 0,
                bytes: 0,
                bytes_added: 0,
                created_at: endor::now_ms(),
                created_by: "test".into(),
                manifest: "{}".into(),
                last_drill_at: None,
                last_drill_ok: None,
                offsite_snapshot_id: None,
            })
            .await
            .unwrap();
        w.backup = Some(id);
        w
    }

    async fn with_backups(db: TestStore, backups: bool) -> Self {
        let dir = support::plain_dir();
        let mut config = support::config_in(&db.url, dir.path());
        if backups {
            config.backups.repository = dir.path().join("restic-repo").display().to_string();
            config.backups.cache = dir.path().join("restic-cache");
        }
        let store = db.store.clone();
        let s = store.as_ref();
        let mut tokens = std::collections::HashMap::new();
        let mut spare = std::collections::HashMap::new();
        for login in ["own", "bill", "dev", "out", "newbie"] {
            service::create_user(s, login, None, None).await.unwrap();
            tokens.insert(
                login,
                service::issue_token(s, login, "t").await.unwrap().token,
            );
            spare.insert(
                login,
                service::issue_token(s, login, "spare").await.unwrap().id,
            );
        }
        support::acme_and_other(s).await;
        let revoked = service::issue_token(s, "dev", "old").await.unwrap();
        service::revoke_token(s, "dev", &revoked.id).await.unwrap();
        let conn = support::acme_sites_and_repo(&store, &config).await;
        let app = api::router(Api::new(store.clone(), &config));
        World {
            _db: db,
            _dir: dir,
            store,
            app,
            tokens,
            spare,
            revoked: revoked.token,
            connection: conn.connection_id.to_string(),
            config,
            backup: None,
        }
    }

    /// Drop the store (a PostgreSQL test database with it).
    async fn finish(self) {
        let World {
            _db, store, app, ..
        } = self;
        drop((store, app));
        _db.cleanup().await;
    }

    fn login(who: Who) -> &'static str {
        match who {
            Who::Owner => "own",
            Who::Billing => "bill",
            Who::Developer | Who::Revoked => "dev",
            Who::Outsider => "out",
            Who::NoToken | Who::BadToken => "own",
        }
    }

    fn token(&self, who: Who) -> Option<String> {
        match who {
            Who::NoToken => None,
            Who::BadToken => Some("endor_not-a-token-anyone-was-given".into()),
            Who::Revoked => Some(self.revoked.clone()),
            w => Some(self.tokens[Self::login(w)].clone()),
        }
    }

    async fn call(
        &self,
        who: Who,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let token = self.token(who);
        self.raw(token.as_deref(), method, path, body.map(|b| b.to_string()))
            .await
    }

    async fn raw(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Body::from(body.unwrap_or_default())).unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let www = resp.headers().get("www-authenticate").cloned();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(www.as_ref().map(|v| v.to_str().unwrap()), Some("Bearer"));
        }
        (status, v)
    }
}

/// A request that succeeds when the caller may make it, for every route of the table. A route
/// without one fails the matrix test: no route ships without being tried.
fn sample(w: &World, method: &Method, path: &str, who: Who) -> Option<(String, Option<Value>)> {
    let p = |s: &str| format!("/api/v1{s}");
    let conn = &w.connection;
    // Routes on a backup without one in this world: any id (refused before it is looked up).
    let backup = w
        .backup
        .as_deref()
        .unwrap_or("0193c3b1-0000-7000-8000-000000000000");
    Some(match (method.as_str(), path) {
        ("GET", "/me") => (p("/me"), None),
        ("GET", "/tokens") => (p("/tokens"), None),
        ("DELETE", "/tokens/{token_id}") => {
            (p(&format!("/tokens/{}", w.spare[World::login(who)])), None)
        }
        ("GET", "/workspaces") => (p("/workspaces"), None),
        ("POST", "/workspaces") => (p("/workspaces"), Some(json!({"name": "fresh-ws"}))),
        ("PATCH", "/workspaces/{ws}") => (p("/workspaces/acme"), Some(json!({"name": "acme-2"}))),
        ("GET", "/workspaces/{ws}/members") => (p("/workspaces/acme/members"), None),
        ("GET", "/workspaces/{ws}/logs") => (p("/workspaces/acme/logs?service=web&n=10"), None),
        ("GET", "/workspaces/{ws}/settings") => (p("/workspaces/acme/settings"), None),
        ("PATCH", "/workspaces/{ws}/settings") => (
            p("/workspaces/acme/settings"),
            Some(json!({"log_retention": "30d"})),
        ),
        ("POST", "/workspaces/{ws}/members") => (
            p("/workspaces/acme/members"),
            Some(json!({"login": "newbie", "roles": ["developer"]})),
        ),
        ("PUT", "/workspaces/{ws}/members/{login}") => (
            p("/workspaces/acme/members/dev"),
            Some(json!({"roles": ["developer", "billing"]})),
        ),
        ("DELETE", "/workspaces/{ws}/members/{login}") => (p("/workspaces/acme/members/dev"), None),
        ("GET", "/workspaces/{ws}/connections") => (p("/workspaces/acme/connections"), None),
        ("POST", "/workspaces/{ws}/connections") => (
            p("/workspaces/acme/connections"),
            Some(json!({"repo": "gitea:acme/api"})),
        ),
        ("POST", "/workspaces/{ws}/connections/{connection_id}/rotate-secret") => (
            p(&format!(
                "/workspaces/acme/connections/{conn}/rotate-secret"
            )),
            None,
        ),
        ("DELETE", "/workspaces/{ws}/connections/{connection_id}") => {
            (p(&format!("/workspaces/acme/connections/{conn}")), None)
        }
        ("GET", "/workspaces/{ws}/sites") => (p("/workspaces/acme/sites?tag=qa"), None),
        ("POST", "/workspaces/{ws}/sites") => {
            (p("/workspaces/acme/sites"), Some(json!({"name": "fresh"})))
        }
        ("GET", "/workspaces/{ws}/usage") => (p("/workspaces/acme/usage"), None),
        ("GET", "/workspaces/{ws}/previews") => (
            p("/workspaces/acme/previews?repo=acme/web&state=failed"),
            None,
        ),
        ("GET", "/workspaces/{ws}/connections/{connection_id}/previews/{number}") => (
            p(&format!("/workspaces/acme/connections/{conn}/previews/1")),
            None,
        ),
        ("GET", "/sites/{site}") => (p("/sites/web"), None),
        ("DELETE", "/sites/{site}") => (p("/sites/web"), None),
        ("POST", "/sites/{site}/clone") => {
            (p("/sites/web/clone"), Some(json!({"name": "web-copy"})))
        }
        ("POST", "/sites/{site}/sync") => (p("/sites/web-2/sync"), Some(json!({"from": "web"}))),
        ("POST", "/sites/{site}/snapshot") => (p("/sites/web/snapshot"), None),
        ("PUT", "/sites/{site}/tags/{tag}") => (p("/sites/web/tags/demo"), None),
        ("DELETE", "/sites/{site}/tags/{tag}") => (p("/sites/web/tags/qa"), None),
        ("PUT", "/sites/{site}/protection") => {
            (p("/sites/web/protection"), Some(json!({"protected": true})))
        }
        ("POST", "/sites/{site}/extend") => {
            (p("/sites/web-pr-2/extend"), Some(json!({"by": "24h"})))
        }
        ("GET", "/sites/{site}/access") => (p("/sites/web/access"), None),
        ("GET", "/sites/{site}/logs") => (p("/sites/web/logs?service=web,endor&n=10"), None),
        ("POST", "/sites/{site}/exec") => {
            (p("/sites/web/exec"), Some(json!({"command": ["true"]})))
        }
        ("PATCH", "/sites/{site}/access") => {
            (p("/sites/web/access"), Some(json!({"robots": false})))
        }
        ("GET", "/sites/{site}/backups") => (p("/sites/web/backups"), None),
        ("POST", "/sites/{site}/backups") => {
            (p("/sites/web/backups"), Some(json!({"tags": ["api"]})))
        }
        ("POST", "/sites/{site}/backups/{backup}/restore") => (
            p(&format!("/sites/web/backups/{backup}/restore")),
            Some(json!({"into": "web-restored"})),
        ),
        ("POST", "/sites/{site}/backups/{backup}/verify") => {
            (p(&format!("/sites/web/backups/{backup}/verify")), None)
        }
        ("POST", "/sites/{site}/backups/drill") => (p("/sites/web/backups/drill"), None),
        ("GET", "/sites/{site}/backup-settings") => (p("/sites/web/backup-settings"), None),
        ("PATCH", "/sites/{site}/backup-settings") => (
            p("/sites/web/backup-settings"),
            Some(json!({"scheduled": "on", "retention": {"keep_last": 3}})),
        ),
        ("GET", "/workspaces/{ws}/backup-retention") => {
            (p("/workspaces/acme/backup-retention"), None)
        }
        ("PATCH", "/workspaces/{ws}/backup-retention") => (
            p("/workspaces/acme/backup-retention"),
            Some(json!({"keep_last": 5})),
        ),
        _ => return None,
    })
}

/// Who may call each route, written out here independently of the table's `Need`s (SPEC §2:
/// owners manage members, name and connections; developers manage sites; billing sees usage;
/// members see their workspace's sites and connections), so a loosened declaration fails.
fn policy(method: &Method, path: &str) -> &'static [Who] {
    use Who::*;
    const ANY: &[Who] = &[Owner, Billing, Developer, Outsider];
    const OWNERS: &[Who] = &[Owner];
    const DEVS: &[Who] = &[Developer];
    const READERS: &[Who] = &[Owner, Developer];
    const BILLERS: &[Who] = &[Owner, Billing];
    match (method.as_str(), path) {
        (_, "/me" | "/tokens" | "/tokens/{token_id}" | "/workspaces") => ANY,
        (
            "GET",
            "/workspaces/{ws}/members"
            | "/workspaces/{ws}/connections"
            | "/workspaces/{ws}/sites"
            | "/workspaces/{ws}/previews"
            | "/workspaces/{ws}/logs"
            | "/workspaces/{ws}/settings"
            | "/workspaces/{ws}/backup-retention"
            | "/workspaces/{ws}/connections/{connection_id}/previews/{number}",
        ) => READERS,
        (_, p)
            if p.starts_with("/workspaces/{ws}/members")
                || p.starts_with("/workspaces/{ws}/connections") =>
        {
            OWNERS
        }
        (
            "PATCH",
            "/workspaces/{ws}" | "/workspaces/{ws}/settings" | "/workspaces/{ws}/backup-retention",
        ) => OWNERS,
        (_, "/workspaces/{ws}/usage") => BILLERS,
        (
            "GET",
            "/sites/{site}"
            | "/sites/{site}/access"
            | "/sites/{site}/logs"
            | "/sites/{site}/backups"
            | "/sites/{site}/backup-settings",
        ) => READERS,
        (_, p) if p.starts_with("/sites/") || p == "/workspaces/{ws}/sites" => DEVS,
        _ => panic!("no policy for {method} {path}"),
    }
}

fn allowed(need: Need, who: Who) -> bool {
    let roles: &[Role] = match who {
        Who::NoToken | Who::BadToken | Who::Revoked => return false,
        Who::Outsider => &[],
        Who::Owner => &[Role::Owner],
        Who::Billing => &[Role::Billing],
        Who::Developer => &[Role::Developer],
    };
    match need {
        Need::Token => true,
        Need::Roles(needed) => needed.iter().any(|r| roles.contains(r)),
    }
}

#[tokio::test]
async fn authorization_matrix_over_every_route() {
    let mut cells = 0;
    let mut missing = Vec::new();
    for route in ROUTES {
        let probe = World::new().await;
        if sample(&probe, &route.method, route.path, Who::Owner).is_none() {
            missing.push(format!("{} {}", route.method, route.path));
            continue;
        }
        for who in EVERYONE {
            assert_eq!(
                allowed(route.need, who),
                policy(&route.method, route.path).contains(&who),
                "{} {} declares {:?}, which does not match the policy for {who:?}",
                route.method,
                route.path,
                route.need
            );
        }
        // Refused callers first, on one world: a refusal must change nothing, so the allowed
        // callers after them (each on a fresh world) still find what they act on.
        for who in EVERYONE.into_iter().filter(|w| !allowed(route.need, *w)) {
            let (path, body) = sample(&probe, &route.method, route.path, who).unwrap();
            let (status, v) = probe.call(who, route.method.clone(), &path, body).await;
            let want = match who {
                Who::NoToken | Who::BadToken | Who::Revoked => StatusCode::UNAUTHORIZED,
                _ => StatusCode::FORBIDDEN,
            };
            assert_eq!(status, want, "{who:?} {} {path}: {v}", route.method);
            assert!(
                v["error"]["code"].is_string(),
                "{who:?} {} {path}: {v}",
                route.method
            );
            assert!(v["error"]["message"].is_string());
            cells += 1;
        }
        for who in EVERYONE.into_iter().filter(|w| allowed(route.need, *w)) {
            let w = World::for_route(route).await;
            let (path, body) = sample(&w, &route.method, route.path, who).unwrap();
            let (status, v) = w.call(who, route.method.clone(), &path, body).await;
            assert_eq!(status, route.ok, "{who:?} {} {path}: {v}", route.method);
            cells += 1;
        }
    }
    assert!(
        missing.is_empty(),
        "routes without a sample request: {missing:?}"
    );
    assert_eq!(cells, ROUTES.len() * EVERYONE.len());
}

#[tokio::test]
async fn openapi_document_matches_the_route_table() {
    let w = World::new().await;
    // Served without a token.
    let (status, doc) = w.raw(None, Method::GET, "/api/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let rel = path.strip_prefix("/api/v1").unwrap();
            let route = ROUTES
                .iter()
                .find(|r| r.path == rel && r.method.as_str().eq_ignore_ascii_case(method))
                .unwrap_or_else(|| panic!("{method} {path} is documented but not routed"));
            assert!(op["responses"][route.ok.as_u16().to_string()].is_object());
            assert_eq!(op["security"][0]["bearer"], json!([]));
            if let Some(body) = route.body {
                let r = &op["requestBody"]["content"]["application/json"]["schema"]["$ref"];
                let name = body.schema;
                assert_eq!(r, &json!(format!("#/components/schemas/{name}")));
                assert!(doc["components"]["schemas"][name].is_object(), "{name}");
                assert_eq!(op["requestBody"]["required"], json!(body.required));
            }
            // A success body has the schema of the handler's Rust type, and every schema it
            // refers to is in the document.
            let ok = &op["responses"][route.ok.as_u16().to_string()];
            match route.reply {
                Some(reply) => {
                    let schema = &ok["content"][route.media]["schema"];
                    let name = reply.trim_end_matches("[]");
                    let r = if reply.ends_with("[]") {
                        assert_eq!(schema["type"], "array");
                        &schema["items"]["$ref"]
                    } else {
                        &schema["$ref"]
                    };
                    assert_eq!(r, &json!(format!("#/components/schemas/{name}")));
                }
                None => assert_eq!(route.ok, StatusCode::NO_CONTENT),
            }
            for link in ok["links"].as_object().into_iter().flat_map(|l| l.values()) {
                let id = link["operationId"].as_str().unwrap();
                assert!(
                    ROUTES.iter().any(|r| api::operation_id(r) == id),
                    "a link to {id}"
                );
            }
            if matches!(route.need, Need::Roles(_)) {
                assert!(op["responses"]["403"].is_object());
            }
        }
    }
    assert_eq!(operations, ROUTES.len());
    // And every documented route answers (not the JSON 404 of unknown paths).
    let (status, v) = w.call(Who::Owner, Method::GET, "/api/v1/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
}

#[tokio::test]
async fn tokens_are_kept_hashed_and_revocable() {
    let w = World::new().await;
    let (status, me) = w
        .call(Who::Developer, Method::GET, "/api/v1/me", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["login"], "dev");
    assert_eq!(me["workspaces"][0]["name"], "acme");
    assert_eq!(me["workspaces"][0]["roles"], json!(["developer"]));
    // The token list shows ids and labels, never a token.
    let (_, list) = w
        .call(Who::Developer, Method::GET, "/api/v1/tokens", None)
        .await;
    let text = list.to_string();
    assert!(!text.contains(&w.tokens["dev"]));
    assert_eq!(list.as_array().unwrap().len(), 3);
    // No token appears in the store's file.
    let db_path = w._db.url.strip_prefix("sqlite://").unwrap().to_string();
    let mut raw = std::fs::read(&db_path).unwrap();
    if let Ok(wal) = std::fs::read(format!("{db_path}-wal")) {
        raw.extend(wal);
    }
    for t in w.tokens.values() {
        assert!(!raw.windows(t.len()).any(|win| win == t.as_bytes()));
    }
    // Revoking through the API: the token is refused from then on, others still work.
    let own = w.store.user_by_login("dev").await.unwrap().unwrap();
    let first = w.store.list_tokens(&own.id).await.unwrap()[0].id.clone();
    let (status, _) = w
        .call(
            Who::Developer,
            Method::DELETE,
            &format!("/api/v1/tokens/{first}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, v) = w
        .call(Who::Developer, Method::GET, "/api/v1/me", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    // Someone else's token id is not the caller's to revoke.
    let other = w.store.user_by_login("own").await.unwrap().unwrap();
    let theirs = w.store.list_tokens(&other.id).await.unwrap()[0].id.clone();
    let (status, _) = w
        .call(
            Who::Owner,
            Method::DELETE,
            &format!("/api/v1/tokens/{theirs}x"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Odd Authorization headers are plain 401s.
    for h in [
        "Basic b3duOnB3",
        "Bearer",
        "Bearer ",
        "bearer endor_",
        "Bearer endor_\u{7f}",
    ] {
        let req = Request::builder()
            .uri("/api/v1/me")
            .header("authorization", h)
            .body(Body::empty());
        let Ok(req) = req else { continue };
        let resp = w.app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{h}");
    }
}

#[tokio::test]
async fn bad_bodies_get_json_errors_and_change_nothing() {
    let w = World::new().await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "/api/v1/workspaces/acme/members",
            "{not json",
            "invalid_json",
        ),
        (
            "/api/v1/workspaces/acme/members",
            r#"{"login":"newbie","roles":["developer"],"admin":true}"#,
            "invalid_json",
        ),
        (
            "/api/v1/workspaces/acme/members",
            r#"{"login":"newbie","roles":[]}"#,
            "invalid",
        ),
        (
            "/api/v1/workspaces/acme/members",
            r#"{"login":"newbie","roles":["root"]}"#,
            "invalid",
        ),
        (
            "/api/v1/workspaces/acme/members",
            r#"{"login":"ghost","roles":["developer"]}"#,
            "not_found",
        ),
        ("/api/v1/workspaces", r#"{"name":"../etc"}"#, "invalid"),
        ("/api/v1/workspaces", r#"{"name":"acme"}"#, "conflict"),
        (
            "/api/v1/workspaces/acme/connections",
            r#"{"repo":"github:acme/x","git_url":"file:///etc"}"#,
            "invalid",
        ),
        (
            "/api/v1/workspaces/acme/connections",
            r#"{"repo":"github:acme/x; rm -rf /"}"#,
            "invalid",
        ),
    ];
    for (path, body, code) in cases {
        let (status, v) = w
            .raw(
                Some(&w.tokens["own"]),
                Method::POST,
                path,
                Some(body.to_string()),
            )
            .await;
        assert!(status.is_client_error(), "{path} {body}: {status} {v}");
        assert_eq!(v["error"]["code"], *code, "{path} {body}: {v}");
    }
    // A huge body is refused before parsing.
    let huge = format!(
        r#"{{"login":"newbie","roles":["developer"],"pad":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let (status, v) = w
        .raw(
            Some(&w.tokens["own"]),
            Method::POST,
            "/api/v1/workspaces/acme/members",
            Some(huge),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"]["code"], "too_large");
    let ws = service::workspace(w.store.as_ref(), "acme").await.unwrap();
    assert_eq!(w.store.list_members(&ws.id).await.unwrap().len(), 3);
    // Hostile site names and tags through the developer routes.
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/workspaces/acme/sites",
            json!({"name": "../../x"}),
        ),
        (
            Method::POST,
            "/api/v1/workspaces/acme/sites",
            json!({"name": "a;b"}),
        ),
        (
            Method::POST,
            "/api/v1/sites/web/clone",
            json!({"name": "Web Copy"}),
        ),
        (
            Method::PUT,
            "/api/v1/sites/web/tags/production",
            Value::Null,
        ),
        (Method::PUT, "/api/v1/sites/web/tags/Prod.", Value::Null),
        (Method::PUT, "/api/v1/sites/web/tags/endor-x", Value::Null),
        (
            Method::PATCH,
            "/api/v1/sites/web/access",
            json!({"allow": ["10.0.0.0/33"]}),
        ),
        (
            Method::PATCH,
            "/api/v1/sites/web/access",
            json!({"basic_auth": "ops:short"}),
        ),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (status, v) = w.call(Who::Developer, method.clone(), path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {v}");
    }
    let (_, tags) = w
        .call(Who::Developer, Method::GET, "/api/v1/sites/web", None)
        .await;
    assert_eq!(tags["tags"], json!(["qa"]));
    let (_, access) = w
        .call(
            Who::Developer,
            Method::GET,
            "/api/v1/sites/web/access",
            None,
        )
        .await;
    assert_eq!(access["allow"], json!([]));
    assert!(access["basic_auth"].is_null());
    // What the framework itself rejects (bytes that are not UTF-8 in a path segment or a
    // query) is a JSON error too, with the same status.
    for (method, path) in [
        (Method::GET, "/api/v1/workspaces/%FF/members"),
        (Method::GET, "/api/v1/sites/%C3%28"),
        (Method::PUT, "/api/v1/sites/web/tags/%FF"),
    ] {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("authorization", format!("Bearer {}", w.tokens["own"]));
        req = req.header("content-length", "0");
        let resp = w
            .app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{method} {path}");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/json",
            "{method} {path}"
        );
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], "invalid", "{method} {path}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("UTF-8"),
            "{v}"
        );
    }
}

#[tokio::test]
async fn role_invariants_through_the_api_sqlite() {
    role_invariants(World::new().await).await;
}

#[tokio::test]
async fn role_invariants_through_the_api_postgres() {
    role_invariants(World::on(TestStore::postgres().await).await).await;
}

async fn role_invariants(w: World) {
    // The last owner can be neither demoted nor removed.
    let (status, v) = w
        .call(
            Who::Owner,
            Method::PUT,
            "/api/v1/workspaces/acme/members/own",
            Some(json!({"roles": ["developer"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(v["error"]["code"], "last_owner");
    let (status, _) = w
        .call(
            Who::Owner,
            Method::DELETE,
            "/api/v1/workspaces/acme/members/own",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Multi-role: billing + developer sees usage and sites; billing alone only usage.
    let (status, _) = w
        .call(
            Who::Owner,
            Method::PUT,
            "/api/v1/workspaces/acme/members/bill",
            Some(json!({"roles": ["billing", "developer"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/api/v1/workspaces/acme/usage",
        "/api/v1/sites/web",
        "/api/v1/workspaces/acme/sites",
    ] {
        let (status, _) = w.call(Who::Billing, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _) = w
        .call(
            Who::Owner,
            Method::PUT,
            "/api/v1/workspaces/acme/members/bill",
            Some(json!({"roles": ["billing"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = w
        .call(Who::Billing, Method::GET, "/api/v1/sites/web", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has only billing"),
        "{v}"
    );
    // A second owner can take over; then the first may step down.
    w.call(
        Who::Owner,
        Method::PUT,
        "/api/v1/workspaces/acme/members/dev",
        Some(json!({"roles": ["owner", "developer"]})),
    )
    .await;
    let (status, _) = w
        .call(
            Who::Owner,
            Method::PUT,
            "/api/v1/workspaces/acme/members/own",
            Some(json!({"roles": ["billing"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = w
        .call(
            Who::Owner,
            Method::PATCH,
            "/api/v1/workspaces/acme",
            Some(json!({"name": "acme-2"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A workspace created through the API has its caller as owner.
    let (status, ws) = w
        .call(
            Who::Outsider,
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "mine"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ws}");
    let (_, list) = w
        .call(Who::Outsider, Method::GET, "/api/v1/workspaces", None)
        .await;
    let mine: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["name"] == "mine")
        .collect();
    assert_eq!(mine[0]["roles"], json!(["owner"]));
    // The tag filter.
    let (_, sites) = w
        .call(
            Who::Developer,
            Method::GET,
            "/api/v1/workspaces/acme/sites?tag=QA",
            None,
        )
        .await;
    let names: Vec<_> = sites
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("web")]);
    w.finish().await;
}

#[tokio::test]
async fn protection_guards_every_operation_with_an_audit_line_sqlite() {
    protection(World::new().await).await;
}

#[tokio::test]
async fn protection_guards_every_operation_with_an_audit_line_postgres() {
    protection(World::on(TestStore::postgres().await).await).await;
}

async fn protection(w: World) {
    let (status, _) = w
        .call(
            Who::Developer,
            Method::PUT,
            "/api/v1/sites/web/protection",
            Some(json!({"protected": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let guarded: [(Method, &str, Value, StatusCode); 3] = [
        (
            Method::POST,
            "/api/v1/sites/web-2/clone",
            json!({"name": "web"}),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/api/v1/sites/web/sync",
            json!({"from": "web-2"}),
            StatusCode::OK,
        ),
        (
            Method::DELETE,
            "/api/v1/sites/web",
            json!({}),
            StatusCode::NO_CONTENT,
        ),
    ];
    let site = w.store.site_by_name("web").await.unwrap().unwrap();
    for (method, path, body, ok) in &guarded {
        let (status, v) = w
            .call(Who::Developer, method.clone(), path, Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "protected");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("bypass_protection")
        );
        // Only the line of turning protection on: a refusal writes none.
        let audit = w.store.audit_events(Some(&site.id)).await.unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(
            (audit[0].caller.as_str(), audit[0].action.as_str()),
            ("api:dev", "protect")
        );
        let _ = ok;
    }
    // With the bypass each one goes through, and each leaves an audit line naming the caller.
    for (i, (method, path, body, ok)) in guarded.iter().enumerate() {
        let mut body = body.clone();
        body["bypass_protection"] = json!(true);
        let (status, v) = w
            .call(Who::Developer, method.clone(), path, Some(body))
            .await;
        assert_eq!(status, *ok, "{method} {path}: {v}");
        let audit = w.store.audit_events(Some(&site.id)).await.unwrap();
        assert_eq!(audit.len(), i + 2);
        let last = audit.last().unwrap();
        assert_eq!(last.caller, "api:dev");
        assert_eq!(last.action, "bypass_protection");
    }
    let audit = w.store.audit_events(Some(&site.id)).await.unwrap();
    let details: Vec<_> = audit.iter().map(|a| a.detail.as_str()).collect();
    assert_eq!(
        details,
        [
            "protection on for web",
            "clone into web",
            "sync into web",
            "delete web"
        ]
    );
    // Protection dropped before a delete is never silent: turning it off is an audit line of
    // its own, with the caller, and the delete that follows needs no bypass.
    let (status, _) = w
        .call(
            Who::Developer,
            Method::PUT,
            "/api/v1/sites/web-2/protection",
            Some(json!({"protected": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = w
        .call(
            Who::Developer,
            Method::PUT,
            "/api/v1/sites/web-2/protection",
            Some(json!({"protected": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = w
        .call(Who::Developer, Method::DELETE, "/api/v1/sites/web-2", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let all = w.store.audit_events(None).await.unwrap();
    let tail: Vec<_> = all[4..]
        .iter()
        .map(|a| (a.caller.as_str(), a.action.as_str(), a.detail.as_str()))
        .collect();
    assert_eq!(
        tail,
        [
            ("api:dev", "protect", "protection on for web-2"),
            ("api:dev", "unprotect", "protection off for web-2"),
        ]
    );
    w.finish().await;
}

/// Previews through the API: listed per workspace with filters, one shown by connection and
/// number; bad filters are 400, another workspace's connection and unknown PRs are 404.
#[tokio::test]
async fn previews_are_listed_and_shown_within_their_workspace() {
    let w = World::new().await;
    let get = |path: String| {
        let w = &w;
        async move { w.call(Who::Developer, Method::GET, &path, None).await }
    };
    let (s, v) = get("/api/v1/workspaces/acme/previews".into()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Newest activity first: the live #2, then the failed #1.
    assert_eq!(v[0]["name"], "acme/web#2");
    assert_eq!(v[1]["name"], "acme/web#1");
    assert_eq!(v[1]["state"], "failed");
    assert_eq!(v[1]["reason"], ".endor.toml: unknown field `bulid`");
    assert!(v[1]["url"].is_null(), "{v}");
    for q in ["?state=building", "?repo=acme/other"] {
        let (s, v) = get(format!("/api/v1/workspaces/acme/previews{q}")).await;
        match q {
            "?state=building" => {
                assert_eq!((s, v.as_array().unwrap().len()), (StatusCode::OK, 0))
            }
            _ => assert_eq!(
                (s, v["error"]["code"].clone()),
                (StatusCode::NOT_FOUND, json!("not_found"))
            ),
        }
    }
    for q in ["?state=exploded", "?repo=-rf", "?repo=a%20b"] {
        let (s, v) = get(format!("/api/v1/workspaces/acme/previews{q}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert_eq!(v["error"]["code"], "invalid", "{q}: {v}");
    }
    let conn = &w.connection;
    let (s, v) = get(format!(
        "/api/v1/workspaces/acme/connections/{conn}/previews/1"
    ))
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["preview"]["site"], "web-pr-1");
    assert!(v["steps"].as_array().unwrap().is_empty());
    let (s, v) = get(format!(
        "/api/v1/workspaces/acme/connections/{conn}/previews/9"
    ))
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no preview of acme/web#9"),
        "{v}"
    );
    // Extending the live preview: bad durations refused, a huge one capped, not wrapped.
    for (by, want) in [
        ("", StatusCode::BAD_REQUEST),
        ("0s", StatusCode::BAD_REQUEST),
        ("soon", StatusCode::BAD_REQUEST),
        ("-1h", StatusCode::BAD_REQUEST),
        ("99999999999999d", StatusCode::BAD_REQUEST),
        ("9999d", StatusCode::OK),
    ] {
        let (s, v) = w
            .call(
                Who::Developer,
                Method::POST,
                "/api/v1/sites/web-pr-2/extend",
                Some(json!({"by": by})),
            )
            .await;
        assert_eq!(s, want, "{by}: {v}");
        if s == StatusCode::OK {
            assert_eq!(v["capped"], true, "{v}");
            let cap = endor::now_ms() + w.config.previews.max_ttl.0.as_millis() as i64;
            let at = v["expires_at"].as_i64().unwrap();
            assert!(at > endor::now_ms() && at <= cap, "{v}");
        }
    }
    for n in ["0", "-1", "x", "99999999999999999999"] {
        let (s, _) = get(format!(
            "/api/v1/workspaces/acme/connections/{conn}/previews/{n}"
        ))
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{n}");
    }
    // The outsider's own workspace does not see acme's connection.
    let (s, _) = w
        .call(
            Who::Outsider,
            Method::GET,
            &format!("/api/v1/workspaces/other/connections/{conn}/previews/1"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    w.finish().await;
}

#[tokio::test]
async fn the_api_is_served_by_endor_serve_s_listener() {
    let db = TestStore::sqlite().await;
    let server = support::TestServer::start(db).await;
    let s = server.store();
    service::create_user(s, "own", None, None).await.unwrap();
    let t = service::issue_token(s, "own", "t").await.unwrap();
    let http = reqwest::Client::new();
    let r = http
        .get(server.url("/api/v1/me"))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["login"], "own");
    let r = http.get(server.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(server.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

/// A request that makes `route` answer `status` with `code`, for each (status, code) the route
/// documents beyond those every route of its kind sends: the conflicts, the last owner, the
/// protected site and the busy one. `None` when the test has no way to make it happen (the
/// test fails then: every documented answer must be reached).
async fn provoke(
    w: &World,
    route: &api::ApiRoute,
    status: u16,
    code: &str,
) -> Option<(Who, String, Option<Value>)> {
    let p = |s: &str| format!("/api/v1{s}");
    let hold = |site: &str| {
        let store = w.store.clone();
        let lease = format!("site:{site}");
        async move {
            let now = endor::now_ms();
            assert!(
                store
                    .try_lease(&lease, "snapshot test", now, now + 60_000)
                    .await
                    .unwrap()
            );
        }
    };
    let protect = |site: &'static str| {
        let store = w.store.clone();
        async move {
            let s = store.site_by_name(site).await.unwrap().unwrap();
            store.set_site_protected(&s.id, true).await.unwrap();
        }
    };
    Some(match (route.method.as_str(), route.path, status, code) {
        ("POST", "/sites/{site}/extend", 409, "not_a_preview") => (
            Who::Developer,
            p("/sites/web/extend"),
            Some(json!({"by": "24h"})),
        ),
        ("DELETE", "/tokens/{token_id}", 404, "not_found") => (
            Who::Owner,
            p("/tokens/0193c3b1-0000-7000-8000-000000000000"),
            None,
        ),
        ("POST", "/workspaces", 409, "conflict") => {
            (Who::Owner, p("/workspaces"), Some(json!({"name": "other"})))
        }
        ("PATCH", "/workspaces/{ws}", 409, "conflict") => (
            Who::Owner,
            p("/workspaces/acme"),
            Some(json!({"name": "other"})),
        ),
        ("POST", "/workspaces/{ws}/members", 409, "conflict") => (
            Who::Owner,
            p("/workspaces/acme/members"),
            Some(json!({"login": "dev", "roles": ["billing"]})),
        ),
        ("PUT", "/workspaces/{ws}/members/{login}", 409, "last_owner") => (
            Who::Owner,
            p("/workspaces/acme/members/own"),
            Some(json!({"roles": ["developer"]})),
        ),
        ("DELETE", "/workspaces/{ws}/members/{login}", 409, "last_owner") => {
            (Who::Owner, p("/workspaces/acme/members/own"), None)
        }
        ("POST", "/sites/{site}/exec", 409, "conflict") => {
            let s = w.store.site_by_name("web").await.unwrap().unwrap();
            w.store
                .set_site_state(&s.id, endor::store::SiteState::Creating)
                .await
                .unwrap();
            (
                Who::Developer,
                p("/sites/web/exec"),
                Some(json!({"command": ["true"]})),
            )
        }
        ("POST", "/workspaces/{ws}/sites", 409, "conflict") => (
            Who::Developer,
            p("/workspaces/acme/sites"),
            Some(json!({"name": "web"})),
        ),
        ("POST", "/workspaces/{ws}/sites", 409, "busy") => {
            hold("fresh").await;
            (
                Who::Developer,
                p("/workspaces/acme/sites"),
                Some(json!({"name": "fresh"})),
            )
        }
        ("DELETE", "/sites/{site}", 409, "protected") => {
            protect("web").await;
            (Who::Developer, p("/sites/web"), None)
        }
        ("POST", "/sites/{site}/clone", 409, "protected") => {
            protect("web-2").await;
            (
                Who::Developer,
                p("/sites/web/clone"),
                Some(json!({"name": "web-2"})),
            )
        }
        ("POST", "/sites/{site}/sync", 409, "protected") => {
            protect("web-2").await;
            (
                Who::Developer,
                p("/sites/web-2/sync"),
                Some(json!({"from": "web"})),
            )
        }
        ("POST", "/workspaces/{ws}/connections", 502, "forge_failed") => (
            // No Gitea token on this server: the hook cannot be made, nothing is connected.
            Who::Owner,
            p("/workspaces/acme/connections"),
            Some(json!({"repo": "gitea:acme/api", "create_hook": true})),
        ),
        (
            _,
            "/workspaces/{ws}/connections/{connection_id}"
            | "/workspaces/{ws}/connections/{connection_id}/rotate-secret",
            502,
            "forge_failed",
        ) => {
            // A connection whose hook endor made, on a server without a GitHub token.
            let id = endor::ids::ConnectionId::from(w.connection.as_str());
            w.store.set_connection_hook(&id, Some("1")).await.unwrap();
            let (path, body) = sample(w, &route.method, route.path, Who::Owner)?;
            (Who::Owner, path, body)
        }
        ("POST", "/sites/{site}/backups/{backup}/restore", 409, code) => {
            // Into the backed-up site itself, protected or held by another operation.
            if code == "protected" {
                protect("web").await;
            } else {
                hold("web").await;
            }
            let (path, _) = sample(w, &route.method, route.path, Who::Developer)?;
            (Who::Developer, path, None)
        }
        (_, _, 409, "not_configured") => {
            // A world with backups off (see the caller).
            let (path, body) = sample(w, &route.method, route.path, Who::Developer)?;
            (Who::Developer, path, body)
        }
        ("POST", "/sites/{site}/backups", 502, "backup_failed") => {
            // Where the repository should be, a file: restic cannot make it.
            std::fs::write(&w.config.backups.repository, b"not a repository").unwrap();
            let (path, body) = sample(w, &route.method, route.path, Who::Developer)?;
            (Who::Developer, path, body)
        }
        ("POST", "/sites/{site}/backups/{backup}/restore", 502, "backup_failed") => {
            // The repository's snapshots gone, read from the repository (not this host's
            // copy).
            let snapshots = std::path::Path::new(&w.config.backups.repository).join("snapshots");
            for f in std::fs::read_dir(snapshots).unwrap() {
                std::fs::remove_file(f.unwrap().path()).unwrap();
            }
            let (path, _) = sample(w, &route.method, route.path, Who::Developer)?;
            (Who::Developer, path, Some(json!({"from": "repository"})))
        }
        (_, _, 409, "busy") => {
            hold("web").await;
            let (path, body) = sample(w, &route.method, route.path, Who::Developer)?;
            let path = path.replace("/sites/web-2/", "/sites/web/");
            let body = body.map(|mut b| {
                if b.get("from").is_some() {
                    b["from"] = json!("web-2");
                }
                b
            });
            (Who::Developer, path, body)
        }
        _ => return None,
    })
}

/// The OpenAPI document against the routes' behaviour: every status each operation documents
/// is reached by a request here, with an `error.code` the document lists for it, and no
/// request of this test gets a status the document does not list.
#[tokio::test]
async fn every_documented_status_of_every_route_is_reached() {
    let doc = api::openapi();
    let mut unreached = Vec::new();
    for route in ROUTES {
        let op = &doc["paths"][format!("/api/v1{}", route.path)]
            [route.method.as_str().to_ascii_lowercase()];
        let documented: std::collections::BTreeSet<u16> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.parse().unwrap())
            .collect();
        let errors = api::error_statuses(route);
        let mut reached = std::collections::BTreeSet::new();
        let mut check = |what: &str, status: StatusCode, v: &Value| {
            let s = status.as_u16();
            assert!(
                documented.contains(&s),
                "{} {} ({what}) answered {s}, which the document does not list: {v}",
                route.method,
                route.path
            );
            if s != route.ok.as_u16() {
                let code = v["error"]["code"].as_str().unwrap_or_default();
                let codes = op["responses"][s.to_string()]["content"]["application/json"]["schema"]
                    ["properties"]["error"]["properties"]["code"]["enum"]
                    .as_array()
                    .unwrap();
                assert!(
                    codes.contains(&json!(code)),
                    "{} {} ({what}) answered {s} `{code}`, not among {codes:?}",
                    route.method,
                    route.path
                );
            }
            reached.insert(s);
        };
        let has_param = route.path.contains('{');
        // 401: no token.
        {
            let w = World::new().await;
            let (path, body) = sample(&w, &route.method, route.path, Who::Owner).unwrap();
            let (s, v) = w
                .call(Who::NoToken, route.method.clone(), &path, body)
                .await;
            check("no token", s, &v);
        }
        if let Need::Roles(_) = route.need {
            // 403: a member without the role (or a member of another workspace).
            let w = World::new().await;
            let who = [Who::Billing, Who::Developer, Who::Owner, Who::Outsider]
                .into_iter()
                .find(|w| !allowed(route.need, *w))
                .unwrap();
            let (path, body) = sample(&w, &route.method, route.path, who).unwrap();
            let (s, v) = w.call(who, route.method.clone(), &path, body).await;
            check("without the role", s, &v);
            // 404: the workspace or site the path names does not exist.
            let (path, body) = sample(&w, &route.method, route.path, Who::Owner).unwrap();
            let path = path
                .replacen("/workspaces/acme", "/workspaces/nope", 1)
                .replacen("/sites/web-2", "/sites/nope", 1)
                .replacen("/sites/web", "/sites/nope", 1);
            let (s, v) = w.call(Who::Owner, route.method.clone(), &path, body).await;
            check("unknown workspace or site", s, &v);
        }
        if route.body.is_some() || has_param || !route.query.is_empty() {
            // 400: a body that is not JSON, else bytes that are not UTF-8 in the path.
            let w = World::new().await;
            let who = *policy(&route.method, route.path).first().unwrap();
            let (path, _) = sample(&w, &route.method, route.path, who).unwrap();
            let (path, body) = if route.body.is_some() {
                (path, Some("{not json".to_string()))
            } else {
                // The last path segment that is a parameter, as bytes that are not UTF-8.
                let segs: Vec<&str> = route.path.split('/').collect();
                let i = segs.iter().rposition(|s| s.starts_with('{')).unwrap() + 2;
                let mut real: Vec<String> = path.split('/').map(String::from).collect();
                real[i] = "%FF".into();
                (real.join("/"), None)
            };
            let token = w.token(who);
            let (s, v) = w
                .raw(token.as_deref(), route.method.clone(), &path, body)
                .await;
            check("a bad request", s, &v);
        }
        if route.body.is_some() {
            // 413: a body over the limit.
            let w = World::new().await;
            let who = *policy(&route.method, route.path).first().unwrap();
            let (path, _) = sample(&w, &route.method, route.path, who).unwrap();
            let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100_000));
            let token = w.token(who);
            let (s, v) = w
                .raw(token.as_deref(), route.method.clone(), &path, Some(huge))
                .await;
            check("a huge body", s, &v);
        }
        // The route's own answers, each code of each.
        for (status, codes) in route.errors {
            for code in *codes {
                let w = if *code == "not_configured" {
                    World::backups_off().await
                } else {
                    World::for_route(route).await
                };
                let Some((who, path, body)) = provoke(&w, route, *status, code).await else {
                    unreached.push(format!("{} {} {status} {code}", route.method, route.path));
                    continue;
                };
                let (s, v) = w.call(who, route.method.clone(), &path, body).await;
                assert_eq!(s.as_u16(), *status, "{} {path}: {v}", route.method);
                assert_eq!(v["error"]["code"], *code, "{} {path}: {v}", route.method);
                check(code, s, &v);
            }
        }
        // Success last.
        {
            let w = World::for_route(route).await;
            let who = *policy(&route.method, route.path).first().unwrap();
            let (path, body) = sample(&w, &route.method, route.path, who).unwrap();
            let (s, v) = w.call(who, route.method.clone(), &path, body).await;
            check("success", s, &v);
        }
        let mut want: std::collections::BTreeSet<u16> = errors.keys().copied().collect();
        want.insert(route.ok.as_u16());
        assert_eq!(want, documented, "{} {}", route.method, route.path);
        let missed: Vec<_> = documented.difference(&reached).collect();
        if !missed.is_empty() {
            unreached.push(format!("{} {}: {missed:?}", route.method, route.path));
        }
    }
    assert!(
        unreached.is_empty(),
        "documented but never reached: {unreached:#?}"
    );
}

/// Users `own`, `bill`, `dev` (their roles in `acme`) and `out` (of `other`), with a token
/// each.
async fn owner_biller_developer_outsider(
    s: &dyn endor::store::Store,
) -> std::collections::HashMap<&'static str, String> {
    let mut tokens = std::collections::HashMap::new();
    for login in ["own", "bill", "dev", "out"] {
        service::create_user(s, login, None, None).await.unwrap();
        tokens.insert(
            login,
            service::issue_token(s, login, "t").await.unwrap().token,
        );
    }
    support::acme_and_other(s).await;
    tokens
}

/// Server-Sent Events as `GET /sites/{site}/logs?follow=true` sends them: `(id, data)` pairs,
/// read from `resp` until `want` of them came (keep-alive comments skipped).
async fn sse_events(
    resp: &mut reqwest::Response,
    buf: &mut String,
    want: usize,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while out.len() < want {
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let (mut id, mut data) = (String::new(), String::new());
            for line in event.lines() {
                if let Some(v) = line
                    .strip_prefix("id: ")
                    .or_else(|| line.strip_prefix("id:"))
                {
                    id = v.to_string();
                } else if let Some(v) = line
                    .strip_prefix("data: ")
                    .or_else(|| line.strip_prefix("data:"))
                {
                    data.push_str(v);
                }
            }
            if !data.is_empty() {
                out.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
        if out.len() >= want {
            break;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.push_str(&String::from_utf8_lossy(&c)),
            other => panic!("the stream ended or stalled after {out:?}: {other:?}"),
        }
    }
    out
}

/// A site's logs over the API: lines of the services asked for, filtered, the last N; billing
/// members get 403; a follower (Server-Sent Events) sees a new line as it is written, and after
/// a dropped connection resumes with `Last-Event-ID`: nothing lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_logs_are_read_and_followed_over_the_api() {
    use endor::logs::{Entry, Logs, Service, Stream};
    let db = TestStore::sqlite().await;
    let dir = support::plain_dir();
    let config = support::config_in(&db.url, dir.path());
    let s = db.store.as_ref();
    let tokens = owner_biller_developer_outsider(s).await;
    let sites = Sites::new(db.store.clone(), &config);
    sites
        .create("web", "acme", None, Imports::default())
        .await
        .unwrap();
    let id = sites.show("web").await.unwrap().id;
    let logs = Logs::new(&config.storage.logs, Default::default());
    let out = |text: &str| Entry::now(Service::Web, Some(Stream::Stdout), text.into());
    logs.append(&id, Service::Web, &[out("one"), out("two")])
        .unwrap();
    logs.write(
        &id,
        Entry::now(Service::Access, None, "127.0.0.2 GET /x 200 5".into()).with("status", 200),
    );
    let server = support::TestServer::start_with(db, config).await;
    let client = reqwest::Client::new();
    let get = |who: &str, q: &str| {
        client
            .get(server.url(&format!("/api/v1/sites/web/logs{q}")))
            .bearer_auth(&tokens[who])
    };
    let json = |r: reqwest::Response| async move {
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (st, v) = json(get("dev", "?service=web").send().await.unwrap()).await;
    assert_eq!(st, 200, "{v}");
    let texts: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one", "two"]);
    assert_eq!(v[0]["stream"], "stdout");
    assert_eq!(v[0]["service"], "web");
    let (_, v) = json(get("own", "?grep=GET").send().await.unwrap()).await;
    assert_eq!(
        (
            v.as_array().unwrap().len(),
            v[0]["fields"]["status"].clone()
        ),
        (1, json!(200))
    );
    let (_, v) = json(get("dev", "?n=1").send().await.unwrap()).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (st, v) = json(get("bill", "").send().await.unwrap()).await;
    assert_eq!(st, 403, "billing members do not read logs: {v}");
    let (st, _) = json(get("out", "").send().await.unwrap()).await;
    assert_eq!(st, 403);
    for bad in [
        "?since=banana",
        "?service=web,nope",
        "?n=0",
        "?follow=maybe",
    ] {
        let (st, v) = json(get("dev", bad).send().await.unwrap()).await;
        assert_eq!(
            (st, v["error"]["code"].clone()),
            (400, json!("invalid")),
            "{bad}: {v}"
        );
    }

    // Follow.
    let follow = |last: Option<&str>| {
        let mut r = get("dev", "?service=web&follow=true").header("accept", "text/event-stream");
        if let Some(id) = last {
            r = r.header("last-event-id", id);
        }
        r.send()
    };
    let mut resp = follow(None).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut buf = String::new();
    let first = sse_events(&mut resp, &mut buf, 2).await;
    assert_eq!(
        (first[0].1["text"].clone(), first[1].1["text"].clone()),
        (json!("one"), json!("two"))
    );
    logs.write(&id, out("three"));
    let next = sse_events(&mut resp, &mut buf, 1).await;
    assert_eq!(next[0].1["text"], "three");
    let last_id = next[0].0.clone();
    assert_eq!(next[0].1["id"], last_id.as_str());
    drop(resp);
    // Written while nobody follows.
    logs.append(&id, Service::Web, &[out("four"), out("five")])
        .unwrap();
    let mut resp = follow(Some(&last_id)).await.unwrap();
    let mut buf = String::new();
    let resumed = sse_events(&mut resp, &mut buf, 2).await;
    let texts: Vec<&str> = resumed
        .iter()
        .map(|e| e.1["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["four", "five"],
        "resumed after `three`: nothing lost, nothing twice"
    );
    logs.write(&id, out("six"));
    let more = sse_events(&mut resp, &mut buf, 1).await;
    assert_eq!(more[0].1["text"], "six");
    drop(resp);
    let bad = follow(Some("web:zz")).await.unwrap();
    assert_eq!(bad.status(), 400);
    server.stop().await;
}

/// A workspace's logs over the API: every site's lines merged, each with its site, not another
/// workspace's; billing gets 403; a follower sees a site made meanwhile, and resumes after a
/// dropped connection with nothing lost or twice. Its settings: retention and cap of its own,
/// `default` back to the config's, bad values refused; a shorter retention hides older lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_logs_are_followed_and_its_settings_override_the_config() {
    use endor::logs::{Entry, Logs, Service, Stream};
    let db = TestStore::sqlite().await;
    let dir = support::plain_dir();
    let config = support::config_in(&db.url, dir.path());
    let s = db.store.as_ref();
    let tokens = owner_biller_developer_outsider(s).await;
    let sites = Sites::new(db.store.clone(), &config);
    for (name, ws) in [("web", "acme"), ("api", "acme"), ("theirs", "other")] {
        sites
            .create(name, ws, None, Imports::default())
            .await
            .unwrap();
    }
    let id = |name: &'static str| {
        let sites = &sites;
        async move { sites.show(name).await.unwrap().id }
    };
    let (web, api, theirs) = (id("web").await, id("api").await, id("theirs").await);
    let logs = Logs::new(&config.storage.logs, Default::default());
    let at = |ago_ms: i64, text: &str| Entry {
        time: endor::now_ms() - ago_ms,
        ..Entry::now(Service::Web, Some(Stream::Stdout), text.into())
    };
    // An old line (two minutes ago), then lines of both sites, interleaved.
    logs.write(&web, at(120_000, "old"));
    logs.write(&web, at(30, "w1"));
    logs.write(&api, at(20, "a1"));
    logs.write(&web, at(10, "w2"));
    logs.write(&theirs, at(5, "not ours"));
    let store = db.store.clone();
    let server = support::TestServer::start_with(db, config.clone()).await;
    let client = reqwest::Client::new();
    let get = |who: &str, path: &str| {
        client
            .get(server.url(&format!("/api/v1/workspaces/acme/{path}")))
            .bearer_auth(&tokens[who])
    };
    let json = |r: reqwest::Response| async move {
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let seen = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| {
                format!(
                    "{} {}",
                    l["site"].as_str().unwrap(),
                    l["text"].as_str().unwrap()
                )
            })
            .collect()
    };
    let (st, v) = json(get("dev", "logs?service=web").send().await.unwrap()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(seen(&v), ["web old", "web w1", "api a1", "web w2"]);
    let (st, _) = json(get("bill", "logs").send().await.unwrap()).await;
    assert_eq!(st, 403, "billing members do not read logs");
    let (st, _) = json(get("out", "logs").send().await.unwrap()).await;
    assert_eq!(st, 403);

    // Follow: the last two lines, a new line, a site made meanwhile.
    let follow = |last: Option<&str>| {
        let mut r =
            get("dev", "logs?service=web&n=2&follow=true").header("accept", "text/event-stream");
        if let Some(id) = last {
            r = r.header("last-event-id", id);
        }
        r.send()
    };
    let mut resp = follow(None).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut buf = String::new();
    let texts = |events: &[(String, Value)]| -> Vec<String> {
        events
            .iter()
            .map(|(_, l)| {
                format!(
                    "{} {}",
                    l["site"].as_str().unwrap(),
                    l["text"].as_str().unwrap()
                )
            })
            .collect()
    };
    let first = sse_events(&mut resp, &mut buf, 2).await;
    assert_eq!(texts(&first), ["api a1", "web w2"]);
    logs.write(&api, at(0, "a2"));
    sites
        .create("docs", "acme", None, Imports::default())
        .await
        .unwrap();
    let docs = sites.show("docs").await.unwrap().id;
    logs.write(&docs, at(0, "d1"));
    let next = sse_events(&mut resp, &mut buf, 2).await;
    // Resume from the last event received: what was written while away, once.
    let last = next[1].0.clone();
    let mut got = texts(&next);
    got.sort();
    assert_eq!(got, ["api a2", "docs d1"]);
    drop(resp);
    logs.write(&web, at(0, "w3"));
    logs.write(&docs, at(0, "d2"));
    let mut resp = follow(Some(&last)).await.unwrap();
    let mut buf = String::new();
    let mut resumed = texts(&sse_events(&mut resp, &mut buf, 2).await);
    resumed.sort();
    assert_eq!(
        resumed,
        ["docs d2", "web w3"],
        "nothing lost, nothing twice"
    );
    drop(resp);
    let bad = follow(Some("not-a-site web:1")).await.unwrap();
    assert_eq!(bad.status(), 400);

    // Settings: the config's at first.
    let (st, v) = json(get("dev", "settings").send().await.unwrap()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["log_retention"], Value::Null);
    assert_eq!(v["effective_log_retention"], "7d");
    let patch = |who: &str, body: Value| {
        client
            .patch(server.url("/api/v1/workspaces/acme/settings"))
            .bearer_auth(&tokens[who])
            .json(&body)
            .send()
    };
    let (st, v) = json(
        patch(
            "own",
            json!({"log_retention": "1m", "log_max_bytes_per_site": "256MiB"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["log_retention"].clone(),
            v["effective_log_max_bytes_per_site"].clone()
        ),
        (json!("1m"), json!("256MiB"))
    );
    // The change is in the audit trail, with its caller (a look is not).
    let audit = store.audit_events(None).await.unwrap();
    let changes: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "workspace.settings")
        .collect();
    assert_eq!(changes.len(), 1, "{audit:?}");
    assert_eq!(changes[0].caller, "api:own");
    assert!(
        changes[0].detail.contains("log retention 1m") && changes[0].detail.contains("256MiB"),
        "{:?}",
        changes[0]
    );
    // What the writers and the reaper apply: this workspace's sites, not another's.
    let own = service::log_overrides(store.as_ref(), &config)
        .await
        .unwrap();
    assert_eq!(own[&web].retention, std::time::Duration::from_secs(60));
    assert_eq!(own[&api].max_bytes_per_site, 256 << 20);
    assert!(!own.contains_key(&theirs));
    // A minute's retention: the line of two minutes ago is no longer shown.
    let (_, v) = json(get("dev", "logs?service=web").send().await.unwrap()).await;
    assert!(!seen(&v).contains(&"web old".to_string()), "{v}");
    for bad in [
        json!({"log_retention": "banana"}),
        json!({"log_retention": "5s"}),
        json!({"log_max_bytes_per_site": "2TiB"}),
        json!({"log_max_bytes_per_site": "12"}),
        json!({"nope": "1d"}),
    ] {
        let (st, v) = json(patch("own", bad.clone()).await.unwrap()).await;
        assert_eq!(st, 400, "{bad}: {v}");
    }
    let (st, _) = json(patch("dev", json!({"log_retention": "1d"})).await.unwrap()).await;
    assert_eq!(st, 403, "only owners change settings");
    let (_, v) = json(
        patch("own", json!({"log_retention": "default"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (
            v["log_retention"].clone(),
            v["effective_log_retention"].clone()
        ),
        (Value::Null, json!("7d"))
    );
    assert_eq!(v["log_max_bytes_per_site"], "256MiB");
    server.stop().await;
}

/// `POST /sites/{site}/exec`: a command in the site's sandbox, its output streamed as JSON
/// lines and its exit code last; no shell between; bad commands refused before anything runs;
/// a site that is not active refused; the `exec` log names the caller; a caller that goes away
/// ends the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_a_command_s_output_and_its_exit_code() {
    let db = TestStore::sqlite().await;
    let dir = support::plain_dir();
    let config = support::config_in(&db.url, dir.path());
    let s = db.store.as_ref();
    let tokens = owner_biller_developer_outsider(s).await;
    let src = dir.path().join("in");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("logo.txt"), "logo").unwrap();
    let sites = Sites::new(db.store.clone(), &config);
    for name in ["web", "idle"] {
        sites
            .create(
                name,
                "acme",
                None,
                Imports {
                    files: Some(&src),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let idle = sites.show("idle").await.unwrap().id;
    s.set_site_state(&idle, endor::store::SiteState::Creating)
        .await
        .unwrap();
    let server = support::TestServer::start_with(db, config).await;
    let client = reqwest::Client::new();
    let exec = |who: &str, site: &str, body: Value| {
        client
            .post(server.url(&format!("/api/v1/sites/{site}/exec")))
            .bearer_auth(&tokens[who])
            .json(&body)
            .send()
    };
    let lines = |text: String| -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // A route for it: what the command may write, gateways must read again (the change
    // counter moves once it ends).
    server
        .store()
        .put_route(&endor::gateway::Route::Static(src.clone()).row("web", true))
        .await
        .unwrap();
    let counted = server.store().gateway_changes().await.unwrap();
    let r = exec(
        "dev",
        "web",
        json!({"command": ["sh", "-c", "cat logo.txt; echo; echo \"$ENDOR_SITE\"; echo oops >&2; exit 3"]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let events = lines(r.text().await.unwrap());
    let text = |stream: &str| -> String {
        events
            .iter()
            .filter(|e| e["stream"] == stream)
            .map(|e| e["text"].as_str().unwrap())
            .collect()
    };
    assert_eq!(text("stdout"), "logo\nweb\n", "{events:?}");
    assert_eq!(text("stderr"), "oops\n");
    let last = events.last().unwrap();
    assert_eq!(
        (last["done"].clone(), last["exit_code"].clone()),
        (json!(true), json!(3)),
        "{events:?}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.store().gateway_changes().await.unwrap() == counted {
        assert!(
            std::time::Instant::now() < deadline,
            "site exec ended and the change counter did not move"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // No shell between: the argument comes back as it is.
    let literal = "a; echo pwned $(id)";
    let r = exec("dev", "web", json!({"command": ["printf", "%s", literal]}))
        .await
        .unwrap();
    let events = lines(r.text().await.unwrap());
    assert_eq!(events[0]["text"], literal, "{events:?}");
    // Refused before anything runs.
    for bad in [
        json!({"command": []}),
        json!({"command": [""]}),
        json!({"command": ["a\u{0}b"]}),
        json!({"command": "ls"}),
        json!({"command": ["x".repeat(4097)]}),
    ] {
        let r = exec("dev", "web", bad.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = exec("dev", "idle", json!({"command": ["true"]}))
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a site that is not active runs nothing");
    for who in ["own", "bill", "out"] {
        let r = exec(who, "web", json!({"command": ["true"]}))
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{who}: developers only");
    }
    // A program that does not exist: the stream says so and ends.
    let r = exec("dev", "web", json!({"command": ["/no/such/program"]}))
        .await
        .unwrap();
    let events = lines(r.text().await.unwrap());
    let last = events.last().unwrap();
    assert!(
        last["error"].is_string() || (last["done"] == true && last["exit_code"] != 0),
        "{events:?}"
    );
    // The exec log: who ran what, how it ended.
    let r = client
        .get(server.url("/api/v1/sites/web/logs?service=exec"))
        .bearer_auth(&tokens["dev"])
        .send()
        .await
        .unwrap();
    let log: Vec<String> = r
        .json::<Vec<Value>>()
        .await
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        log.iter()
            .any(|l| l.contains("exec by api:dev") && l.contains("exit code 3")),
        "{log:?}"
    );
    // A caller that reads too slowly: the command is not held up, and every byte is either
    // sent or counted as dropped.
    let mut r = exec(
        "dev",
        "web",
        json!({"command": ["sh", "-c", "yes | head -c 50000000"]}),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut body = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        body.extend_from_slice(&c);
    }
    let events = lines(String::from_utf8(body).unwrap());
    let sent: usize = events
        .iter()
        .filter_map(|e| e["text"].as_str())
        .map(str::len)
        .sum();
    let dropped: u64 = events.iter().filter_map(|e| e["dropped"].as_u64()).sum();
    assert!(
        dropped > 0,
        "nothing dropped: the reader was not slow enough"
    );
    assert_eq!(sent as u64 + dropped, 50_000_000);
    assert_eq!(events.last().unwrap()["exit_code"], 0);
    // A caller that goes away: the command ends with it.
    let mut r = exec(
        "dev",
        "web",
        json!({"command": ["sh", "-c", "echo started; exec sleep 301.25"]}),
    )
    .await
    .unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("started"));
    let running = || {
        std::process::Command::new("pgrep")
            .args(["-f", "sleep 301.25"])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(running());
    drop(r);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command outlived its caller"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await;
}

/// A site's backups through the API: made with tags, listed, restored into the site (the
/// bypass needed when it is protected, and audited) or into a new site, never into another
/// workspace's site nor from another site's backup; verified and drilled; its schedule and
/// retention set over the workspace's; bad values refused with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_through_the_api() {
    let w = World::new().await;
    let dev = Who::Developer;
    let p = |s: &str| format!("/api/v1{s}");
    Sites::new(w.store.clone(), &w.config)
        .create("theirs", "other", None, Imports::default())
        .await
        .unwrap();
    for bad in [json!({"tags": ["a b"]}), json!({"tags": ["x"], "extra": 1})] {
        let (s, v) = w
            .call(dev, Method::POST, &p("/sites/web/backups"), Some(bad))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
    let (s, made) = w
        .call(
            dev,
            Method::POST,
            &p("/sites/web/backups"),
            Some(json!({"tags": ["before-migration"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    let id = made["id"].as_str().unwrap().to_string();
    assert_eq!(made["tags"], "before-migration");
    let (s, list) = w
        .call(Who::Owner, Method::GET, &p("/sites/web/backups"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(list[0].get("manifest").is_none(), "{list}");
    // Another site's backup is not found under this one; nor are hostile ids.
    for path in [
        format!("/sites/web-2/backups/{id}/restore"),
        "/sites/web/backups/'%3B%20DROP%20TABLE%20backups%3B%20--/restore".to_string(),
        "/sites/web/backups/0193c3b1/restore".to_string(),
    ] {
        let (s, v) = w.call(dev, Method::POST, &p(&path), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
    }
    // Into another workspace's site: not found (nothing learnt, nothing written).
    let (s, v) = w
        .call(
            dev,
            Method::POST,
            &p(&format!("/sites/web/backups/{id}/restore")),
            Some(json!({"into": "theirs"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // Into a new site in this workspace.
    let (s, r) = w
        .call(
            dev,
            Method::POST,
            &p(&format!("/sites/web/backups/{id}/restore")),
            Some(json!({"into": "web-back", "from": "repository"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (r["created"].clone(), r["from"].clone()),
        (json!(true), json!("repository"))
    );
    let back = w.store.site_by_name("web-back").await.unwrap().unwrap();
    assert_eq!(
        back.workspace_id,
        w.store
            .site_by_name("web")
            .await
            .unwrap()
            .unwrap()
            .workspace_id
    );
    // Into the protected site itself: the bypass is needed, and audited.
    let web = w.store.site_by_name("web").await.unwrap().unwrap();
    w.store.set_site_protected(&web.id, true).await.unwrap();
    let restore = p(&format!("/sites/web/backups/{id}/restore"));
    let (s, v) = w.call(dev, Method::POST, &restore, None).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("protected"))
    );
    let (s, v) = w
        .call(
            dev,
            Method::POST,
            &restore,
            Some(json!({"bypass_protection": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let audit = w.store.audit_events(Some(&web.id)).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.caller == "api:dev" && e.action == "bypass_protection"),
        "{audit:?}"
    );
    // Verified and drilled.
    let (s, v) = w
        .call(
            dev,
            Method::POST,
            &p(&format!("/sites/web/backups/{id}/verify")),
            None,
        )
        .await;
    assert_eq!((s, v["ok"].clone()), (StatusCode::OK, json!(true)), "{v}");
    let (s, v) = w
        .call(
            dev,
            Method::POST,
            &p(&format!("/sites/web/backups/{id}/verify")),
            Some(json!({"from": "offsite"})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "no off-site repository here: {v}"
    );
    let (s, d) = w
        .call(dev, Method::POST, &p("/sites/web/backups/drill"), None)
        .await;
    assert_eq!((s, d["ok"].clone()), (StatusCode::OK, json!(true)), "{d}");
    let (_, list) = w
        .call(dev, Method::GET, &p("/sites/web/backups"), None)
        .await;
    assert_eq!(list[0]["last_drill_ok"], 1);
    // Settings: the workspace keeps 5 last, the site 3; the site is scheduled.
    let (s, v) = w
        .call(
            Who::Owner,
            Method::PATCH,
            &p("/workspaces/acme/backup-retention"),
            Some(json!({"keep_last": 5, "keep_daily": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = w
        .call(
            dev,
            Method::PATCH,
            &p("/sites/web/backup-settings"),
            Some(json!({"scheduled": "off", "retention": {"keep_last": 3}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["schedule"]["scheduled"], false, "{v}");
    assert_eq!(v["retention"]["applies"]["keep_last"], 3);
    assert_eq!(
        v["retention"]["applies"]["keep_daily"], 0,
        "the workspace's"
    );
    for bad in [
        json!({"scheduled": "maybe"}),
        json!({"retention": {"keep_last": -1}}),
        json!({"retention": {"keep_last": 2, "default": true}}),
        json!({"retention": {"keep_lats": 2}}),
    ] {
        let (s, v) = w
            .call(
                dev,
                Method::PATCH,
                &p("/sites/web/backup-settings"),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (s, v) = w
        .call(
            Who::Owner,
            Method::GET,
            &p("/sites/web/backup-settings"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["retention"]["own"]["keep_last"], 3, "unchanged: {v}");
    assert_eq!(v["schedule"]["own"], false);
    let (_, v) = w
        .call(
            dev,
            Method::PATCH,
            &p("/sites/web/backup-settings"),
            Some(json!({"scheduled": "default", "retention": {"default": true}})),
        )
        .await;
    assert_eq!(v["retention"]["applies"]["keep_last"], 5, "{v}");
    assert_eq!(v["schedule"]["scheduled"], true, "protected: on by default");
    w.finish().await;
}
