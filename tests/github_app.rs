//! A GitHub App made in one click (SPEC §17), on the fake GitHub: the link `github app create`
//! prints, the page that posts the manifest, GitHub's redirect exchanged for the app, whose
//! key and secrets are kept sealed; bad, tampered, expired and replayed links refused; and the
//! app's own webhook, `POST /webhooks/github`, taking deliveries signed with the app's secret
//! for each connected repository.

mod support;

use endor::apps;
use endor::config::Config;
use endor::forge::signature::sign_hex;
use endor::service;
use endor::store::Store;
use serde_json::Value;
use support::fake_forge::FakeForge;
use support::{TestServer, TestStore, fixture};

async fn world(forge: &FakeForge, db: TestStore) -> (TestServer, Config) {
    let mut config = Config::default();
    config.github.api_url = forge.github_url();
    config.github.web_url = "https://github.example".into();
    config.secrets.master_key_file = support::test_master_key();
    let server = TestServer::start_with(db, config).await;
    let s = server.store();
    service::create_user(s, "own", None, None).await.unwrap();
    service::create_workspace(s, "acme", "own").await.unwrap();
    let config = server.state.config.clone();
    (server, config)
}

/// An attribute's value as the browser reads it.
fn unescape(v: &str) -> String {
    v.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn between<'a>(text: &'a str, from: &str, to: &str) -> &'a str {
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("{from} in {text}"))
        + from.len();
    let len = text[start..].find(to).unwrap();
    &text[start..start + len]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_is_made_through_its_manifest_and_kept_sealed() {
    let forge = FakeForge::start().await;
    let db = TestStore::sqlite().await;
    let file = std::path::PathBuf::from(db.url.strip_prefix("sqlite://").unwrap());
    let (server, config) = world(&forge, db).await;
    let s: &dyn Store = server.store();
    let http = reqwest::Client::new();

    // Bad requests for a link: unknown workspace, hostile organization, a name GitHub refuses.
    assert!(matches!(
        apps::start(s, &config, "nope", None, None).await,
        Err(apps::AppError::NotFound(_))
    ));
    for (org, name) in [
        (Some("../../evil"), None),
        (Some("a--b"), None),
        (None, Some("x".repeat(35))),
        (None, Some("<script>".to_string())),
    ] {
        assert!(
            matches!(
                apps::start(s, &config, "acme", org, name.as_deref()).await,
                Err(apps::AppError::Invalid(_))
            ),
            "{org:?} {name:?}"
        );
    }

    let link = apps::start(s, &config, "acme", Some("acme-org"), None)
        .await
        .unwrap();
    assert!(
        link.starts_with(&server.url("/github/app/new?state=")),
        "{link}"
    );
    let page = http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let page = page.text().await.unwrap();
    let action = unescape(between(&page, "action=\"", "\""));
    assert!(
        action
            .starts_with("https://github.example/organizations/acme-org/settings/apps/new?state="),
        "{action}"
    );
    let state = reqwest::Url::parse(&action)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let manifest: Value = serde_json::from_str(&unescape(between(
        &page,
        "name=\"manifest\" value=\"",
        "\"",
    )))
    .unwrap();
    assert_eq!(manifest["name"], "endor acme");
    assert_eq!(
        manifest["hook_attributes"]["url"],
        server.url("/webhooks/github")
    );
    assert_eq!(manifest["redirect_url"], server.url("/github/app/callback"));
    assert_eq!(manifest["public"], false);
    assert_eq!(manifest["default_permissions"]["pull_requests"], "write");
    assert_eq!(manifest["default_permissions"]["checks"], "write");
    for e in ["pull_request", "issue_comment", "check_run"] {
        assert!(
            manifest["default_events"]
                .as_array()
                .unwrap()
                .contains(&e.into()),
            "{e}"
        );
    }

    // A tampered or foreign state gets 400 and no page; so does an expired one.
    let expired = s.keyring().seal(
        &serde_json::json!({
            "workspace_id": s.workspace_by_name("acme").await.unwrap().unwrap().id,
            "org": null, "name": "endor acme", "expires_at": 1
        })
        .to_string(),
    );
    for bad in ["", "v2:00000000:AAAA", &format!("{state}x"), &expired] {
        let r = http
            .get(server.url("/github/app/new"))
            .query(&[("state", bad)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert!(!r.text().await.unwrap().contains("<form"));
    }

    // GitHub made the app and redirects back with a code: exchanged once, kept sealed.
    let pem =
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEfake0123456789\n-----END RSA PRIVATE KEY-----\n";
    let (code, made) = forge.manifest_code(5151, "endor-acme", pem);
    let callback = |code: &str, state: &str| {
        http.get(server.url("/github/app/callback"))
            .query(&[("code", code), ("state", state)])
            .send()
    };
    // Refused before GitHub is asked: a foreign state, a hostile code.
    assert_eq!(callback(&code, "forged").await.unwrap().status(), 400);
    assert_eq!(callback("../../x", &state).await.unwrap().status(), 400);
    assert_eq!(callback("", &state).await.unwrap().status(), 400);
    let done = callback(&code, &state).await.unwrap();
    assert_eq!(done.status(), 200);
    let done = done.text().await.unwrap();
    assert!(
        done.contains("https://github.com/apps/endor-acme/installations/new"),
        "{done}"
    );
    assert!(!done.contains("PRIVATE KEY"));
    let kept = s.github_apps().await.unwrap();
    assert_eq!(kept.len(), 1);
    let app = &kept[0];
    assert_eq!((app.app_id, app.slug.as_str()), (5151, "endor-acme"));
    assert_eq!(app.owner, "acme-org");
    assert_eq!(app.pem, pem);
    assert_eq!(app.webhook_secret.expose(), made["webhook_secret"]);
    assert_eq!(app.client_secret, made["client_secret"]);
    assert_eq!(
        app.workspace_id,
        s.workspace_by_name("acme").await.unwrap().unwrap().id
    );
    // A code works once.
    let again = callback(&code, &state).await.unwrap();
    assert_eq!(again.status(), 502);
    assert_eq!(s.github_apps().await.unwrap().len(), 1);

    // Nothing of the app's secrets is in the store's files in plain text.
    let mut bytes = Vec::new();
    for e in std::fs::read_dir(file.parent().unwrap()).unwrap().flatten() {
        if e.file_name().to_string_lossy().contains("db") {
            bytes.extend(std::fs::read(e.path()).unwrap());
        }
    }
    assert!(!bytes.is_empty());
    for secret in [
        made["webhook_secret"].as_str().unwrap(),
        made["client_secret"].as_str().unwrap(),
        "MIIEfake0123456789",
    ] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is in the store in plain text"
        );
    }
    forge.assert_conforms("github", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_webhook_takes_signed_deliveries_of_connected_repositories() {
    let forge = FakeForge::start().await;
    let (server, config) = world(&forge, TestStore::sqlite().await).await;
    let s: &dyn Store = server.store();
    let http = reqwest::Client::new();
    let url = server.url("/webhooks/github");
    let body = fixture("github.pull_request.synchronize.with-installation.json");
    let send = |event: &'static str, body: Vec<u8>, secret: String| {
        http.post(&url)
            .header("x-github-event", event)
            .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
            .header(
                "x-hub-signature-256",
                format!("sha256={}", sign_hex(secret.as_bytes(), &body)),
            )
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // No app here yet: nothing to check a signature with.
    let r = send("pull_request", body.clone(), "whatever-secret-123".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let (code, made) = forge.manifest_code(5151, "endor-acme", "pem");
    let link = apps::start(s, &config, "acme", None, None).await.unwrap();
    let state = reqwest::Url::parse(&link)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    apps::finish(s, &config, &code, &state).await.unwrap();
    let secret = made["webhook_secret"].as_str().unwrap().to_string();

    // Signed with the app's secret, for a repository not connected: 200, ignored, not stored.
    let r = send("pull_request", body.clone(), secret.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ignored");
    assert!(
        v["reason"].as_str().unwrap().contains("no connection"),
        "{v}"
    );

    // Connected: queued as a delivery of that connection.
    let c = service::connect_repo(s, &config, "acme", "github:gagbo/ouro-closures", None, None)
        .await
        .unwrap();
    let r = send("pull_request", body.clone(), secret.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let stored = s.list_deliveries(Some(&c.connection_id), 10).await.unwrap();
    assert_eq!(stored.len(), 1);

    // The connection's own secret, a wrong one, or none: 401.
    for wrong in [c.secret.clone(), "not-the-app-secret".into()] {
        let r = send("pull_request", body.clone(), wrong).await.unwrap();
        assert_eq!(r.status(), 401);
    }
    // The installation's own events name no repository: 200, ignored.
    let r = send(
        "installation",
        fixture("github.installation.created.json"),
        secret.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ignored");
    assert_eq!(
        s.list_deliveries(Some(&c.connection_id), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}
