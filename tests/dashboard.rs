//! The dashboard (SPEC §14) over real HTTP: the page table against a written policy for every
//! kind of caller, sign-in and its limits, cookies and CSRF, the forms doing what the API
//! does, and notifications mailed through a real SMTP server (aiosmtpd) exactly once.

mod support;

use std::collections::HashMap;

use endor::dashboard::{Access, PAGES, auth};
use endor::service;
use endor::store::Store;
use support::{TestServer, TestStore};

/// Who may use each page: written here by hand from SPEC §14 and the API's roles, not read
/// from the table. `anyone`, `signed-in`, or the roles (any of them) in the workspace.
const POLICY: &[(&str, &str, &str)] = &[
    ("GET", "/", "signed-in"),
    ("GET", "/sign-in", "anyone"),
    ("POST", "/sign-in", "anyone"),
    ("POST", "/sign-out", "signed-in"),
    ("GET", "/invitations/{token}", "anyone"),
    ("POST", "/invitations/{token}", "anyone"),
    ("GET", "/unsubscribe/{token}", "anyone"),
    ("POST", "/unsubscribe/{token}", "anyone"),
    ("GET", "/assets/endor.css", "anyone"),
    ("GET", "/assets/endor.js", "anyone"),
    ("POST", "/workspaces", "signed-in"),
    ("GET", "/notifications", "signed-in"),
    ("POST", "/notifications/read", "signed-in"),
    ("GET", "/settings", "signed-in"),
    ("POST", "/settings/password", "signed-in"),
    ("POST", "/settings/tokens", "signed-in"),
    ("POST", "/settings/tokens/{token_id}/revoke", "signed-in"),
    ("POST", "/settings/notifications", "signed-in"),
    ("GET", "/w/{ws}", "owner developer billing"),
    ("POST", "/w/{ws}/rename", "owner"),
    ("GET", "/w/{ws}/sites", "owner developer"),
    ("POST", "/w/{ws}/sites", "developer"),
    ("GET", "/w/{ws}/members", "owner developer"),
    ("POST", "/w/{ws}/members", "owner"),
    ("POST", "/w/{ws}/members/{login}/roles", "owner"),
    ("POST", "/w/{ws}/members/{login}/remove", "owner"),
    ("POST", "/w/{ws}/invitations", "owner"),
    ("GET", "/w/{ws}/repositories", "owner developer"),
    ("POST", "/w/{ws}/repositories", "owner"),
    (
        "GET",
        "/w/{ws}/repositories/{connection_id}",
        "owner developer",
    ),
    (
        "POST",
        "/w/{ws}/repositories/{connection_id}/rotate",
        "owner",
    ),
    (
        "POST",
        "/w/{ws}/repositories/{connection_id}/delete",
        "owner",
    ),
    ("GET", "/w/{ws}/previews", "owner developer"),
    (
        "GET",
        "/w/{ws}/previews/{connection_id}/{number}",
        "owner developer",
    ),
    ("GET", "/w/{ws}/usage", "owner billing"),
    ("GET", "/s/{site}", "owner developer"),
    ("GET", "/s/{site}/logs/live", "owner developer"),
    ("POST", "/s/{site}/clone", "developer"),
    ("POST", "/s/{site}/sync", "developer"),
    ("POST", "/s/{site}/snapshot", "developer"),
    ("POST", "/s/{site}/tags", "developer"),
    ("POST", "/s/{site}/tags/{tag}/remove", "developer"),
    ("POST", "/s/{site}/protection", "developer"),
    ("POST", "/s/{site}/extend", "developer"),
    ("POST", "/s/{site}/access", "developer"),
    ("POST", "/s/{site}/delete", "developer"),
    ("POST", "/s/{site}/backups", "developer"),
    ("POST", "/s/{site}/backups/{backup}/restore", "developer"),
    ("POST", "/s/{site}/backups/drill", "developer"),
];

/// A browser without JavaScript: one cookie jar, no redirects followed.
struct Visitor {
    http: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
}

struct Answer {
    status: u16,
    location: String,
    set_cookies: Vec<String>,
    body: String,
}

impl Visitor {
    fn new(server: &TestServer) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: server.url(""),
            cookies: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Answer {
        let req = if self.cookies.is_empty() {
            req
        } else {
            req.header("cookie", self.cookie_header())
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let set_cookies: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for c in &set_cookies {
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), v.to_string());
            }
        }
        let body = resp.text().await.unwrap_or_default();
        Answer {
            status,
            location,
            set_cookies,
            body,
        }
    }

    /// A GET whose body, when it is an event stream, is not read: the content type stands for
    /// it.
    async fn open_stream(&mut self, path: &str) -> Answer {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        let header = |k: &str| {
            resp.headers()
                .get(k)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let (status, location, kind) = (
            resp.status().as_u16(),
            header("location"),
            header("content-type"),
        );
        // Anything but the stream itself is a whole page.
        let body = if kind.starts_with("text/event-stream") {
            kind
        } else {
            resp.text().await.unwrap_or_default()
        };
        Answer {
            status,
            location,
            set_cookies: Vec::new(),
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    /// Post a form as a browser would: with the CSRF token of the page it came from.
    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let csrf = self.csrf().await;
        let mut all: Vec<(&str, &str)> = vec![("_csrf", &csrf)];
        all.extend_from_slice(fields);
        self.post_raw(path, &all).await
    }

    async fn post_raw(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let req = self.http.post(format!("{}{path}", self.base)).form(fields);
        self.send(req).await
    }

    /// Post a form whose answer is a page of its own (200): that page.
    async fn post_page(&mut self, path: &str, fields: &[(&str, &str)]) -> String {
        let a = self.post(path, fields).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        a.body
    }

    /// Post a form, then read the page `then` (where its message shows).
    async fn post_then(&mut self, path: &str, fields: &[(&str, &str)], then: &str) -> String {
        self.post(path, fields).await;
        self.get(then).await.body
    }

    /// Sign in with the form.
    async fn sign_in(&mut self, login: &str, password: &str) -> Answer {
        self.post("/sign-in", &[("login", login), ("password", password)])
            .await
    }

    /// The CSRF token a page of this visitor carries (the sign-in page when signed out).
    async fn csrf(&mut self) -> String {
        let page = if self.cookies.contains_key(auth::SESSION_COOKIE) {
            self.get("/settings").await
        } else {
            self.get("/sign-in").await
        };
        csrf_of(&page.body).unwrap_or_default()
    }
}

fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"_csrf\" value=\"")? + "name=\"_csrf\" value=\"".len();
    Some(html[at..].split('"').next()?.to_string())
}

/// A server with workspace `acme` (owner `own`, billing `bill`, developer `dev`), `other`
/// (`out`), sites `web` (tagged qa) and `web-2`, a connection with PR 1, and a password for
/// each user.
struct World {
    server: TestServer,
    _dir: tempfile::TempDir,
    connection: String,
}

const PASSWORD: &str = "correct horse battery";

impl World {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(tune: impl FnOnce(&mut endor::config::Config)) -> Self {
        let db = TestStore::sqlite().await;
        let dir = support::plain_dir();
        let mut config = support::config_in(&db.url, dir.path());
        tune(&mut config);
        let s = db.store.clone();
        for login in ["own", "bill", "dev", "out", "newbie"] {
            service::create_user(
                s.as_ref(),
                login,
                None,
                Some(&format!("{login}@example.com")),
            )
            .await
            .unwrap();
        }
        support::acme_and_other(s.as_ref()).await;
        let conn = support::acme_sites_and_repo(&s, &config).await;
        let server = TestServer::start_with(db, config).await;
        World {
            server,
            _dir: dir,
            connection: conn.connection_id.to_string(),
        }
    }

    fn store(&self) -> &dyn Store {
        self.server.store()
    }

    /// A visitor signed in as `login` (a session made in the store: argon2 runs once, in the
    /// sign-in test, not for every caller).
    async fn visitor(&self, login: &str) -> Visitor {
        let mut v = Visitor::new(&self.server);
        if let Some(user) = self.store().user_by_login(login).await.unwrap() {
            let (cookie, _) = auth::start_session(self.store(), &user, 3_600_000)
                .await
                .unwrap();
            v.cookies.insert(auth::SESSION_COOKIE.into(), cookie);
        }
        v
    }

    fn path(&self, template: &str) -> String {
        template
            .replace("{ws}", "acme")
            .replace("{site}", "web")
            .replace("{login}", "newbie")
            .replace("{connection_id}", &self.connection)
            .replace("{number}", "1")
            .replace("{tag}", "qa")
            .replace("{token}", "not-a-token")
            .replace("{token_id}", "no-such-token")
            .replace("{backup}", "no-such-backup")
    }
}

fn access_text(a: Access) -> String {
    match a {
        Access::Anyone => "anyone".into(),
        Access::SignedIn => "signed-in".into(),
        Access::Roles(r) => r.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" "),
    }
}

#[tokio::test]
async fn every_page_checks_the_written_policy_for_every_caller() {
    // The table says what the policy says, row for row.
    assert_eq!(
        PAGES.len(),
        POLICY.len(),
        "a page without a policy line (or the reverse)"
    );
    for page in PAGES {
        let line = POLICY
            .iter()
            .find(|(m, p, _)| *m == page.method.as_str() && *p == page.path)
            .unwrap_or_else(|| panic!("{} {} has no policy line", page.method, page.path));
        assert_eq!(
            access_text(page.access),
            line.2,
            "{} {}",
            page.method,
            page.path
        );
    }
    let w = World::new().await;
    // Callers that change nothing go first; the allowed ones last.
    let callers = [
        ("anonymous", None, ""),
        ("out", Some("out"), ""),
        ("bill", Some("bill"), "billing"),
        ("dev", Some("dev"), "developer"),
        ("own", Some("own"), "owner"),
    ];
    for (method, path, allowed) in POLICY {
        if *allowed == "anyone" {
            continue;
        }
        let url = w.path(path);
        for (name, login, role) in callers {
            let mut v = w.visitor(login.unwrap_or("nobody")).await;
            let a = if path.ends_with("/logs/live") {
                // A live log streams for a minute: its status and headers are the answer.
                v.open_stream(&url).await
            } else if *method == "GET" {
                v.get(&url).await
            } else {
                v.post(&url, &[]).await
            };
            let want = match (login, *allowed) {
                (None, _) => "sign-in",
                (Some(_), "signed-in") => "yes",
                (Some(_), roles) if !role.is_empty() && roles.split(' ').any(|r| r == role) => {
                    "yes"
                }
                _ => "403",
            };
            let what = format!("{method} {url} as {name}: {} {}", a.status, a.location);
            match want {
                "sign-in" => {
                    assert_eq!(a.status, 303, "{what}");
                    assert!(a.location.starts_with("/sign-in"), "{what}");
                }
                "403" => {
                    assert_eq!(a.status, 403, "{what}");
                    assert!(a.body.contains("role"), "{what}: {}", a.body);
                }
                _ => {
                    assert!(a.status != 403 && a.status < 500, "{what}: {}", a.body);
                    if *path != "/sign-out" {
                        assert!(!a.location.starts_with("/sign-in"), "{what}");
                    }
                }
            }
        }
    }
    w.server.stop().await;
}

#[tokio::test]
async fn sign_in_sessions_cookies_and_the_attempt_limit() {
    let w = World::with(|c| c.dashboard.sign_in_attempts = 5).await;
    auth::set_password(w.store(), "dev", PASSWORD)
        .await
        .unwrap();
    let mut v = Visitor::new(&w.server);
    // A page needing a session sends the visitor to sign in, remembering where they were.
    let a = v.get("/w/acme/sites?tag=qa").await;
    assert_eq!(a.status, 303);
    assert_eq!(a.location, "/sign-in?next=%2Fw%2Facme%2Fsites%3Ftag%3Dqa");
    let page = v.get(&a.location).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("value=\"/w/acme/sites?tag=qa\""),
        "{}",
        page.body
    );
    let pre = page
        .set_cookies
        .iter()
        .find(|c| c.starts_with("endor_pre="))
        .unwrap();
    assert!(pre.contains("HttpOnly") && pre.contains("SameSite=Lax") && !pre.contains("Secure"));
    // Without the form's token: refused, whatever the password.
    let a = v
        .post_raw("/sign-in", &[("login", "dev"), ("password", PASSWORD)])
        .await;
    assert_eq!(a.status, 403);
    assert!(!v.cookies.contains_key(auth::SESSION_COOKIE));
    // Wrong password: 401, the same words as an unknown login.
    let wrong = v.sign_in("dev", "not the password").await;
    assert_eq!(wrong.status, 401);
    let unknown = v.sign_in("nobody", PASSWORD).await;
    assert_eq!(unknown.status, 401);
    assert!(wrong.body.contains("Wrong login or password."));
    assert!(unknown.body.contains("Wrong login or password."));
    // Right password, and the page asked for first.
    let a = v
        .post(
            "/sign-in",
            &[
                ("login", "dev"),
                ("password", PASSWORD),
                ("next", "/w/acme/sites?tag=qa"),
            ],
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.location, "/w/acme/sites?tag=qa");
    let session = a
        .set_cookies
        .iter()
        .find(|c| c.starts_with("endor_session="))
        .unwrap();
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=604800"] {
        assert!(session.contains(flag), "{session} lacks {flag}");
    }
    assert!(!session.contains("Secure"), "plain HTTP: no Secure flag");
    let sites = v.get("/w/acme/sites?tag=qa").await;
    assert_eq!(sites.status, 200);
    assert!(sites.body.contains("<a href=\"/s/web\">web</a>"));
    assert!(
        !sites.body.contains("/s/web-2\""),
        "the tag filter shows only qa sites"
    );
    // Only a hash of the cookie is stored.
    let cookie = v.cookies[auth::SESSION_COOKIE].clone();
    assert!(
        w.store()
            .session(&cookie, endor::now_ms())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        w.store()
            .session(&auth::token_hash(&cookie), endor::now_ms())
            .await
            .unwrap()
            .is_some()
    );
    // An open redirect through next= goes home instead.
    let mut v2 = Visitor::new(&w.server);
    let a = v2
        .post(
            "/sign-in",
            &[
                ("login", "dev"),
                ("password", PASSWORD),
                ("next", "//evil.example/x"),
            ],
        )
        .await;
    assert_eq!((a.status, a.location.as_str()), (303, "/"));
    // Sign-out ends the session in the store: the old cookie no longer works.
    let a = v.post("/sign-out", &[]).await;
    assert_eq!((a.status, a.location.as_str()), (303, "/sign-in"));
    let mut replay = Visitor::new(&w.server);
    replay.cookies.insert(auth::SESSION_COOKIE.into(), cookie);
    assert_eq!(replay.get("/settings").await.status, 303);
    // Failed attempts are limited per address and per login: with the two failures above,
    // five from this address within the minute use the limit up, and the next attempt is
    // refused before the password is even checked, the right one included.
    let mut flood = Visitor::new(&w.server);
    for _ in 0..3 {
        let a = flood.sign_in("own", "guess guess guess").await;
        assert_eq!(a.status, 401);
    }
    let a = flood.sign_in("dev", PASSWORD).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.body.contains("Too many failed sign-ins"));
    // The API's tokens keep working for scripts.
    let t = service::issue_token(w.store(), "dev", "script")
        .await
        .unwrap();
    let r = reqwest::Client::new()
        .get(w.server.url("/api/v1/me"))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    w.server.stop().await;
}

#[tokio::test]
async fn cookies_are_secure_behind_https() {
    let db = TestStore::sqlite().await;
    let dir = support::plain_dir();
    let mut config = support::config_in(&db.url, dir.path());
    config.server.public_url = "https://endor.example".into();
    let api = endor::api::Api::new(db.store.clone(), &config);
    let app = endor::dashboard::router(api);
    use tower::ServiceExt;
    let r = app
        .oneshot(
            axum::http::Request::get("/sign-in")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let c = r.headers()["set-cookie"].to_str().unwrap();
    assert!(c.contains("; Secure"), "{c}");
    db.cleanup().await;
}

#[tokio::test]
async fn forms_without_their_token_change_nothing() {
    let w = World::new().await;
    let mut v = w.visitor("dev").await;
    for fields in [vec![], vec![("_csrf", "0".repeat(64))]] {
        let mut all: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.push(("name", "made-by-csrf"));
        let a = v.post_raw("/w/acme/sites", &all).await;
        assert_eq!(a.status, 403, "{}", a.body);
        assert!(a.body.contains("token of your session"));
        let mut all: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.push(("confirm", "web"));
        assert_eq!(v.post_raw("/s/web/delete", &all).await.status, 403);
    }
    assert!(
        w.store()
            .site_by_name("made-by-csrf")
            .await
            .unwrap()
            .is_none()
    );
    assert!(w.store().site_by_name("web").await.unwrap().is_some());
    // Another user's token does not do either.
    let mut other = w.visitor("own").await;
    let theirs = other.csrf().await;
    let a = v
        .post_raw(
            "/w/acme/sites",
            &[("_csrf", &theirs), ("name", "made-by-csrf")],
        )
        .await;
    assert_eq!(a.status, 403);
    assert!(
        w.store()
            .site_by_name("made-by-csrf")
            .await
            .unwrap()
            .is_none()
    );
    w.server.stop().await;
}

#[tokio::test]
async fn a_billing_member_sees_usage_and_nothing_else() {
    let w = World::new().await;
    let mut v = w.visitor("bill").await;
    let a = v.get("/w/acme").await;
    assert_eq!((a.status, a.location.as_str()), (303, "/w/acme/usage"));
    let usage = v.get("/w/acme/usage").await;
    assert_eq!(usage.status, 200);
    assert!(usage.body.contains("Usage in"));
    assert!(
        !usage.body.contains("/w/acme/sites\""),
        "no link to what they cannot see"
    );
    for path in [
        "/w/acme/sites",
        "/w/acme/members",
        "/w/acme/repositories",
        "/w/acme/previews",
        "/s/web",
    ] {
        let a = v.get(path).await;
        assert_eq!(a.status, 403, "{path}");
        assert!(
            !a.body.contains("web-2"),
            "{path} tells nothing of the sites"
        );
    }
    let home = v.get("/").await;
    assert!(home.body.contains("acme") && home.body.contains("billing"));
    w.server.stop().await;
}

#[tokio::test]
async fn forms_do_what_the_api_does_and_say_so() {
    let w = World::new().await;
    let mut dev = w.visitor("dev").await;
    // Create, clone, tag, password on.
    let a = dev.post("/w/acme/sites", &[("name", "shop")]).await;
    assert_eq!((a.status, a.location.as_str()), (303, "/s/shop"));
    let page = dev.get("/s/shop").await;
    assert!(
        page.body.contains("Site shop created."),
        "the flash shows once"
    );
    assert!(!dev.get("/s/shop").await.body.contains("Site shop created."));
    let a = dev.post("/s/shop/clone", &[("name", "shop-copy")]).await;
    assert_eq!(a.location, "/s/shop-copy");
    let copy = dev.get("/s/shop-copy").await;
    assert!(
        copy.body.contains("<a href=\"/s/shop\">shop</a>"),
        "the parent is shown"
    );
    dev.post("/s/shop-copy/tags", &[("tag", "review")]).await;
    let tags = w
        .store()
        .site_tags(
            &w.store()
                .site_by_name("shop-copy")
                .await
                .unwrap()
                .unwrap()
                .id,
        )
        .await
        .unwrap();
    assert_eq!(tags, vec!["review".to_string()]);
    dev.post(
        "/s/shop-copy/access",
        &[("password", "generate"), ("robots", "on")],
    )
    .await;
    let page = dev.get("/s/shop-copy").await;
    assert!(page.body.contains("Access settings saved."));
    assert!(page.body.contains("Password: on"), "{}", page.body);
    // The API's rules, with its words: a tag that looks like production, a bad name.
    let page = dev
        .post_then(
            "/s/shop-copy/tags",
            &[("tag", "production")],
            "/s/shop-copy",
        )
        .await;
    assert!(page.contains("protect the site instead"));
    let a = dev
        .post("/w/acme/sites", &[("name", "<script>alert(1)</script>")])
        .await;
    assert_eq!(a.location, "/w/acme/sites");
    let page = dev.get("/w/acme/sites").await;
    assert!(page.body.contains("flash bad"));
    assert!(!page.body.contains("<script>alert"), "user text is escaped");
    // Delete only when the name is typed.
    let page = dev
        .post_then(
            "/s/shop-copy/delete",
            &[("confirm", "shop")],
            "/s/shop-copy",
        )
        .await;
    assert!(w.store().site_by_name("shop-copy").await.unwrap().is_some());
    assert!(
        page.contains("Type the site&#39;s name (shop-copy) to delete it. Nothing was deleted.")
    );
    let a = dev
        .post("/s/shop-copy/delete", &[("confirm", "shop-copy")])
        .await;
    assert_eq!(a.location, "/w/acme/sites");
    assert!(w.store().site_by_name("shop-copy").await.unwrap().is_none());
    // An owner connects a repository: the secret is shown on that page, once.
    let mut own = w.visitor("own").await;
    let shown = own
        .post_page(
            "/w/acme/repositories",
            &[("forge", "github"), ("repo", "acme/shop")],
        )
        .await;
    let conn = w
        .store()
        .connections_for_repo(endor::forge::ForgeKind::Github, "acme/shop")
        .await
        .unwrap()
        .remove(0);
    let secret = conn.secret.expose().to_string();
    assert!(shown.contains(&secret));
    assert!(shown.contains("/webhooks/github/"));
    let later = own.get(&format!("/w/acme/repositories/{}", conn.id)).await;
    assert_eq!(later.status, 200);
    assert!(!later.body.contains(&secret), "never shown again");
    // Deliveries appear on the repository's page, like a forge's "recent deliveries".
    let body = support::fixture("github.pull_request.opened.json");
    let http = reqwest::Client::new();
    let url = w.server.url(&format!("/webhooks/github/{}", conn.id));
    let r = support::github_delivery(&http, &url, "pull_request", body, &secret)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let later = own.get(&format!("/w/acme/repositories/{}", conn.id)).await;
    // (The example payload is of another repository: ignored, and said why.)
    assert!(
        later.body.contains("<td>pull_request.opened</td>"),
        "{}",
        later.body
    );
    assert!(
        later.body.contains("not the connected acme/shop"),
        "{}",
        later.body
    );
    // Members: the last owner cannot be removed, and the page says why.
    let a = own.post("/w/acme/members/own/remove", &[]).await;
    assert_eq!(a.location, "/w/acme/members");
    let page = own.get("/w/acme/members").await;
    assert!(
        page.body.contains("keeps at least one owner"),
        "{}",
        page.body
    );
    // Add a member, change their roles, remove them: each as the store then holds it.
    let ws = w.store().workspace_by_name("acme").await.unwrap().unwrap();
    let roles_of = async |login: &str| {
        w.store()
            .list_members(&ws.id)
            .await
            .unwrap()
            .into_iter()
            .find(|(l, _)| l == login)
            .map(|(_, r)| r)
    };
    let page = own
        .post_then(
            "/w/acme/members",
            &[("login", "newbie"), ("role_developer", "on")],
            "/w/acme/members",
        )
        .await;
    assert!(page.contains("newbie added."));
    assert_eq!(
        roles_of("newbie").await,
        Some(vec!["developer".to_string()])
    );
    own.post(
        "/w/acme/members/newbie/roles",
        &[("role_developer", "on"), ("role_billing", "on")],
    )
    .await;
    assert_eq!(
        roles_of("newbie").await,
        Some(vec!["developer".to_string(), "billing".to_string()])
    );
    let page = own
        .post_then("/w/acme/members/newbie/remove", &[], "/w/acme/members")
        .await;
    assert!(page.contains("newbie removed."));
    assert_eq!(roles_of("newbie").await, None);
    let page = own.get("/w/acme/members").await;
    // Each member's roles are the boxes ticked on their row; a new member gets developer.
    let boxes = |html: &str| -> Vec<String> {
        html.split("<input type=\"checkbox\" name=\"")
            .skip(1)
            .map(|b| b.split('>').next().unwrap().replace('"', ""))
            .collect()
    };
    let all = boxes(&page.body);
    let row = |login: &str| {
        let at = page.body.find(&format!("<td>{login}</td>")).unwrap();
        boxes(&page.body[at..])[..3].to_vec()
    };
    assert_eq!(
        row("bill"),
        ["role_owner ", "role_developer ", "role_billing checked"]
    );
    assert_eq!(
        row("dev"),
        ["role_owner ", "role_developer checked", "role_billing "]
    );
    assert_eq!(
        all[all.len() - 6..],
        [
            "role_owner ",
            "role_developer checked",
            "role_billing ",
            "role_owner ",
            "role_developer checked",
            "role_billing ",
        ],
        "the add and invite forms"
    );
    w.server.stop().await;
}

#[tokio::test]
async fn an_invitation_makes_an_account_once() {
    let w = World::new().await;
    let mut own = w.visitor("own").await;
    let shown = own
        .post_page(
            "/w/acme/invitations",
            &[("email", "new@example.com"), ("role_developer", "on")],
        )
        .await;
    assert!(shown.contains("No mail server is configured"));
    let at = shown.find("/invitations/").unwrap();
    let link: String = shown[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '/' || *c == '-')
        .collect();
    let mut guest = Visitor::new(&w.server);
    let page = guest.get(&link).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("workspace <strong>acme</strong>"));
    // Two passwords that differ: said once on the page (which sets a cookie of its own), and
    // nothing made.
    let join = |page: &Answer, again: &'static str| {
        let pre = csrf_of(&page.body).unwrap();
        [
            ("_csrf".to_string(), pre),
            ("login".into(), "newcomer".into()),
            ("password".into(), PASSWORD.into()),
            ("password2".into(), again.into()),
        ]
    };
    let fields = join(&page, "something else entirely");
    let fields: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let a = guest.post_raw(&link, &fields).await;
    assert_eq!((a.status, a.location.as_str()), (303, link.as_str()));
    let page = guest.get(&link).await;
    assert!(page.body.contains("The two passwords differ."));
    let page = guest.get(&link).await;
    assert!(
        !page.body.contains("The two passwords differ."),
        "shown once"
    );
    assert!(w.store().user_by_login("newcomer").await.unwrap().is_none());
    let fields = join(&page, PASSWORD);
    let fields: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let a = guest.post_raw(&link, &fields).await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, "/w/acme"),
        "{}",
        a.body
    );
    assert_eq!(
        guest.get("/w/acme/sites").await.status,
        200,
        "a developer now"
    );
    let ws = w.store().workspace_by_name("acme").await.unwrap().unwrap();
    let members = w.store().list_members(&ws.id).await.unwrap();
    assert!(
        members
            .iter()
            .any(|(l, r)| l == "newcomer" && r == &["developer"])
    );
    // They were told, in their inbox.
    let inbox = guest.get("/notifications").await;
    assert!(
        inbox.body.contains("You were added to workspace acme"),
        "{}",
        inbox.body
    );
    // The link works once.
    let mut again = Visitor::new(&w.server);
    assert_eq!(again.get(&link).await.status, 404);
    assert_eq!(again.get("/invitations/made-up").await.status, 404);
    w.server.stop().await;
}

#[tokio::test]
async fn connecting_offers_the_default_region_first_chosen() {
    let roots = tempfile::tempdir().unwrap();
    let w = World::with(|c| {
        c.regions.default = "europe".into();
        for name in ["asia", "europe"] {
            c.regions.list.insert(
                name.into(),
                endor::config::RegionConfig {
                    storage_root: roots.path().join(name),
                    ..Default::default()
                },
            );
        }
    })
    .await;
    let page = w.visitor("own").await.get("/w/acme/repositories").await;
    assert!(page.body.contains("<option>asia</option>"), "{}", page.body);
    assert!(
        page.body.contains("<option selected>europe</option>"),
        "{}",
        page.body
    );
    w.server.stop().await;
}

/// A real SMTP server on loopback (aiosmtpd), storing each mail in a Maildir; killed when
/// dropped (a panicking test leaves no server holding the suite's output open).
struct Smtp {
    child: std::process::Child,
    dir: Option<tempfile::TempDir>,
}

impl Smtp {
    fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("mail"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 with aiosmtpd (scripts/mail-tools.sh installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            child,
            dir: Some(dir),
        }
    }

    /// Stop the server; the folder of what it received.
    fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().unwrap()
    }

    fn mails(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(dir.join("mail").join(sub)) {
                for e in rd.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap());
                }
            }
        }
        out
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use support::free_port;

#[tokio::test]
async fn notifications_are_mailed_once_through_an_smtp_outage() {
    let port = free_port();
    let w = World::with(|c| {
        c.email.smtp_url = format!("smtp://127.0.0.1:{port}");
        c.email.tls = "none".into();
        c.email.from = "endor <endor@example.com>".into();
        c.email.retry_after = endor::duration::HumanDuration(std::time::Duration::from_millis(200));
    })
    .await;
    let config = w.server.state.config.clone();
    let store = w.server.state.store.clone();
    let notifier = endor::notify::Notifier::new(store.clone(), &config);
    // dev chose the inbox only for failed previews.
    let dev = store.user_by_login("dev").await.unwrap().unwrap();
    store
        .set_notification_pref(
            &dev.id,
            &endor::store::NotificationPref {
                kind: "preview_failed".into(),
                inbox: true,
                email: false,
            },
        )
        .await
        .unwrap();
    let mut p = store
        .preview(&w.connection.clone().into(), 1)
        .await
        .unwrap()
        .unwrap();
    p.head_sha = Some("0123456789abcdef0123456789abcdef01234567".into());
    p.reason = Some("build failed: token=ghp_SECRET123 leaked in a log".into());
    // Raised twice (a retried job): one notification each.
    notifier.preview_event(&p).await;
    notifier.preview_event(&p).await;
    let all = store.all_notifications().await.unwrap();
    let who: Vec<(String, String)> = all
        .iter()
        .map(|n| (n.mail_to.clone().unwrap_or_default(), n.mail_state.clone()))
        .collect();
    assert_eq!(all.len(), 2, "owner and developer, once each: {who:?}");
    assert!(who.contains(&("own@example.com".into(), "pending".into())));
    assert!(
        who.contains(&(String::new(), "none".into())),
        "dev: inbox only"
    );
    // The SMTP server is down: nothing sent, the mail waits.
    assert_eq!(notifier.send_due().await.unwrap(), 0);
    let n = store.all_notifications().await.unwrap();
    let own_mail = n.iter().find(|n| n.mail_to.is_some()).unwrap();
    assert_eq!(
        (own_mail.mail_state.as_str(), own_mail.attempts),
        ("pending", 1)
    );
    assert!(own_mail.last_error.is_some());
    // It comes back: the next due pass sends it, and later passes send nothing more.
    let smtp = Smtp::start(port);
    let mut sent = 0;
    for _ in 0..50 {
        sent += notifier.send_due().await.unwrap();
        if sent > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(sent, 1);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(notifier.send_due().await.unwrap(), 0);
    let dir = smtp.stop();
    let mails = Smtp::mails(dir.path());
    assert_eq!(mails.len(), 1, "exactly one mail: {mails:#?}");
    let m = &mails[0];
    assert!(m.contains("X-RcptTo: own@example.com"), "{m}");
    assert!(m.contains("Subject: Preview web-pr-1 failed"), "{m}");
    assert!(m.contains("List-Unsubscribe: <http://"), "{m}");
    // No secret in the mail: not the webhook secret, not what a build printed.
    let conn = store
        .connection(&w.connection.clone().into())
        .await
        .unwrap()
        .unwrap();
    assert!(!m.contains(conn.secret.expose()));
    assert!(!m.contains("ghp_SECRET123") && !m.contains("token="), "{m}");
    // The inbox shows it to both members; billing-only bill hears nothing.
    let mut dev_v = w.visitor("dev").await;
    let inbox = dev_v.get("/notifications").await;
    assert!(inbox.body.contains("Preview web-pr-1 failed"));
    let mut bill_v = w.visitor("bill").await;
    assert!(!bill_v.get("/notifications").await.body.contains("web-pr-1"));
    // The unsubscribe link turns that kind's mail off (and only that).
    let start = m.find("/unsubscribe/").unwrap();
    let link: String = m[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '>')
        .collect();
    let link = link.replace("=\n", "");
    let mut anon = Visitor::new(&w.server);
    let page = anon.get(&link).await;
    assert_eq!(page.status, 200, "{link}: {}", page.body);
    let pre = csrf_of(&page.body).unwrap();
    let a = anon.post_raw(&link, &[("_csrf", &pre)]).await;
    assert_eq!(a.status, 200);
    let own = store.user_by_login("own").await.unwrap().unwrap();
    let prefs = store.notification_prefs(&own.id).await.unwrap();
    assert_eq!(
        prefs,
        vec![endor::store::NotificationPref {
            kind: "preview_failed".into(),
            inbox: true,
            email: false
        }]
    );
    // A forged link is refused.
    assert_eq!(anon.get("/unsubscribe/AAAA").await.status, 404);
    w.server.stop().await;
}
