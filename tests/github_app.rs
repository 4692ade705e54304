//! A GitHub App made in one click (SPEC §17), on the fake GitHub: the link `github app create`
//! prints, the page that posts the manifest, GitHub's redirect exchanged for the app, whose
//! key and secrets are kept sealed; bad, tampered, expired and replayed links refused; and the
//! app's own webhook, `POST /webhooks/github`, taking deliveries signed with the app's secret
//! for each connected repository.

mod support;

use endor::apps;
use endor::config::Config;
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

/// The app GitHub makes from the manifest (`app_id`, `slug`, key `pem`), through the link
/// `github app create` prints and the callback; its webhook secret.
async fn make_app(
    s: &dyn Store,
    config: &Config,
    forge: &FakeForge,
    app_id: u64,
    slug: &str,
    pem: &str,
) -> String {
    let (code, made) = forge.manifest_code(app_id, slug, pem);
    let link = apps::start(s, config, "acme", None, None).await.unwrap();
    let state = reqwest::Url::parse(&link)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    apps::finish(s, config, &code, &state).await.unwrap();
    made["webhook_secret"].as_str().unwrap().to_string()
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
        support::github_delivery(&http, &url, event, body, &secret).send()
    };
    // No app here yet: nothing to check a signature with.
    let r = send("pull_request", body.clone(), "whatever-secret-123".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let secret = make_app(s, &config, &forge, 5151, "endor-acme", "pem").await;

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
    // Events that name no repository and are not the installation's: 200, ignored.
    let r = send(
        "ping",
        fixture("github.ping.with-app_id.json"),
        secret.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ignored");
    // Another app's installation (GitHub's example names app 29310): refused.
    let r = send(
        "installation",
        fixture("github.installation.created.json"),
        secret.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        s.list_deliveries(Some(&c.connection_id), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// GitHub's example payload `name`, as the app `app_id`'s installation `installation`.
fn installation_payload(name: &str, app_id: u64, installation: u64) -> Value {
    let mut v: Value = serde_json::from_slice(&fixture(name)).unwrap();
    v["installation"]["id"] = installation.into();
    v["installation"]["app_id"] = app_id.into();
    v
}

/// Installation events of the app endor made connect its repositories to the app's
/// workspace, and write-back to them goes through the installation's tokens; suspended, it
/// stops and says so; uninstalled, its repositories are disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installations_connect_repositories_and_write_through_the_app() {
    use endor::writeback::{ForgeClients, PrRef};
    use support::fake_forge::APP_ID;
    let forge = FakeForge::start().await;
    let (server, config) = world(&forge, TestStore::sqlite().await).await;
    let s: &dyn Store = server.store();
    let http = reqwest::Client::new();
    let keydir = tempfile::tempdir().unwrap();
    let pem = std::fs::read_to_string(support::rsa_key(keydir.path())).unwrap();
    let secret = make_app(s, &config, &forge, APP_ID, "endor-app", &pem).await;
    let url = server.url("/webhooks/github");
    let send = |event: &'static str, v: &Value, secret: &str| {
        let body = serde_json::to_vec(v).unwrap();
        support::github_delivery(&http, &url, event, body, secret).send()
    };
    let repos = || async {
        let mut r: Vec<(String, Option<i64>, Option<String>)> = s
            .list_connections(None)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.repo, c.installation_id, c.git_url))
            .collect();
        r.sort();
        r
    };
    const INST: u64 = 957387;

    let created = installation_payload("github.installation.created.json", APP_ID, INST);
    // Not signed by the app: refused, nothing connected.
    let r = send("installation", &created, "not-the-secret-at-all")
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(repos().await.is_empty());
    // Another app's installation: refused.
    let foreign = installation_payload("github.installation.created.json", 29310, INST);
    let r = send("installation", &foreign, &secret).await.unwrap();
    assert_eq!(r.status(), 400);

    for _ in 0..2 {
        // Twice: a redelivery connects nothing twice.
        let r = send("installation", &created, &secret).await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let git = |r: &str| Some(format!("https://github.example/{r}.git"));
    assert_eq!(
        repos().await,
        [(
            "Codertocat/Hello-World".to_string(),
            Some(INST as i64),
            git("Codertocat/Hello-World")
        )]
    );
    let added = installation_payload("github.installation_repositories.added.json", APP_ID, INST);
    let r = send("installation_repositories", &added, &secret)
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["change"]["connected"],
        serde_json::json!(["Codertocat/Space"])
    );
    assert_eq!(repos().await.len(), 2);
    let mut removed = installation_payload(
        "github.installation_repositories.removed.json",
        APP_ID,
        INST,
    );
    removed["repositories_removed"][0]["full_name"] = "Codertocat/Space".into();
    let r = send("installation_repositories", &removed, &secret)
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["change"]["disconnected"],
        serde_json::json!(["Codertocat/Space"])
    );
    assert_eq!(repos().await.len(), 1);

    // Write-back to an installed repository goes through the installation's token, as the
    // app's bot, with no [github] token or app in the config.
    let conn = s.list_connections(None).await.unwrap().remove(0);
    let forges = ForgeClients::new(&config).with_store(server.state.store.clone());
    assert!(forges.enabled(&conn));
    let client = forges.client(&conn).await.unwrap();
    let pr = PrRef {
        repo: &conn.repo,
        number: 1,
    };
    client.create_comment(&pr, "preview ready").await.unwrap();
    let authors: Vec<String> =
        forge.with(|f| f.comments.values().map(|c| c.author.clone()).collect());
    assert_eq!(authors, ["endor-app[bot]"]);
    assert!(forge.with(|f| !f.installation_tokens.is_empty()));

    // Suspended: write-back stops and says so; unsuspended, it goes again.
    let mut suspend = created.clone();
    suspend["action"] = "suspend".into();
    assert_eq!(
        send("installation", &suspend, &secret)
            .await
            .unwrap()
            .status(),
        200
    );
    let fresh = ForgeClients::new(&config).with_store(server.state.store.clone());
    let err = fresh.client(&conn).await.err().unwrap();
    assert!(err.to_string().contains("suspended"), "{err}");
    // Accepting new permissions does not lift a suspension.
    let mut accepted = created.clone();
    accepted["action"] = "new_permissions_accepted".into();
    assert_eq!(
        send("installation", &accepted, &secret)
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(fresh.client(&conn).await.is_err());
    suspend["action"] = "unsuspend".into();
    assert_eq!(
        send("installation", &suspend, &secret)
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(fresh.client(&conn).await.is_ok());

    // Uninstalled: its repositories are disconnected, and nothing is written for them.
    let deleted = installation_payload("github.installation.deleted.json", APP_ID, INST);
    let r = send("installation", &deleted, &secret).await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["change"]["disconnected"],
        serde_json::json!(["Codertocat/Hello-World"])
    );
    assert!(repos().await.is_empty());
    let err = ForgeClients::new(&config)
        .with_store(server.state.store.clone())
        .client(&conn)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("uninstalled"), "{err}");
    forge.assert_conforms("github", true);
}

/// GitHub's example `check_run` `requested_action` delivery, as a press of `button` by `who`
/// on endor's run `run` of PR `number` at `sha` in `repo`, through installation `inst`.
fn press(
    repo: &str,
    run: u64,
    number: u64,
    sha: &str,
    who: &str,
    button: &str,
    inst: u64,
) -> Value {
    let mut v: Value =
        serde_json::from_slice(&fixture("github.check_run.requested_action.json")).unwrap();
    let r = &mut v["check_run"];
    r["id"] = run.into();
    r["name"] = "endor/preview".into();
    r["head_sha"] = sha.into();
    r["external_id"] = number.to_string().into();
    // A fork's head lists no pull request: the external id endor wrote is what counts.
    r["pull_requests"] = serde_json::json!([]);
    v["requested_action"]["identifier"] = button.into();
    v["sender"]["login"] = who.into();
    v["repository"]["full_name"] = repo.into();
    v["installation"]["id"] = inst.into();
    v
}

/// A pull request on a repository the app was installed on: a preview, and the check run
/// `endor/preview` on its head (in progress, then success with the URL, the steps and the
/// buttons) in place of a commit status. `Redeploy` pressed by someone who is not a developer
/// of the workspace is refused with a comment and builds nothing; pressed by a developer, the
/// preview is built again under a new run. `Destroy` destroys it and the run ends neutral.
/// Other apps' runs and unknown buttons are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_installed_repository_gets_a_check_run_whose_buttons_obey_roles() {
    use endor::store::PreviewState;
    use support::fake_forge::{APP_ID, CheckRun};
    use support::preview::{Harness, Pr, Repo, eventually, pr_body};
    const INST: u64 = 957387;
    const SITE: &str =
        "[preview]\nbuild = [\"mkdir -p out\", \"cp index.html out/\"]\nroot = \"out\"\n";
    let forge = FakeForge::start().await;
    // The forge's git: the installation connects `{web_url}/octo/shop.git`.
    let remotes = tempfile::tempdir().unwrap();
    let repo = Repo::new(remotes.path(), "octo/shop", SITE);
    let db = TestStore::sqlite().await;
    let (api, web) = (
        forge.github_url(),
        format!("file://{}", remotes.path().display()),
    );
    let h = Harness::start_with(&db, move |c| {
        c.github.api_url = api;
        c.github.web_url = web;
        c.writeback.rate_per_second = 50.0;
    })
    .await;
    let s: &dyn Store = h.store();
    let config = h.state.config.clone();
    let keydir = tempfile::tempdir().unwrap();
    let pem = std::fs::read_to_string(support::rsa_key(keydir.path())).unwrap();
    let secret = make_app(s, &config, &forge, APP_ID, "endor-app", &pem).await;
    // `dev` is a developer of the workspace; `outsider` is linked but not a member.
    for login in ["dev", "outsider"] {
        service::create_user(s, login, None, None).await.unwrap();
        service::link_identity(s, login, &format!("github:{login}-gh"))
            .await
            .unwrap();
    }
    service::add_member(s, "acme", "dev", &["developer".into()])
        .await
        .unwrap();
    let url = format!("http://{}/webhooks/github", h.api);
    let send = |event: &'static str, v: Value| {
        let body = serde_json::to_vec(&v).unwrap();
        support::github_delivery(&h.http, &url, event, body, &secret).send()
    };

    let mut created = installation_payload("github.installation.created.json", APP_ID, INST);
    created["repositories"][0]["full_name"] = "octo/shop".into();
    created["repositories"][0]["name"] = "shop".into();
    assert_eq!(send("installation", created).await.unwrap().status(), 200);
    let conn = s.list_connections(None).await.unwrap().remove(0);
    assert_eq!(conn.repo, "octo/shop");

    let sha = repo.push_pr("f", 7, "one");
    let open = pr_body("octo/shop", Pr::new("opened", 7, &sha, "f", "octo/shop"));
    let r = send("pull_request", open).await.unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let first = h.ready(&conn.id, 7, None).await;
    h.settled(&conn.id).await;
    let runs = || forge.with(|f| f.check_runs.clone());
    let [run]: [CheckRun; 1] = runs().try_into().unwrap();
    assert_eq!(
        (run.name.as_str(), run.head_sha.as_str(), run.app.as_str()),
        ("endor/preview", sha.as_str(), "endor-app[bot]")
    );
    assert_eq!(run.external_id, "7");
    assert_eq!(run.history.first().map(String::as_str), Some("in_progress"));
    assert_eq!(
        run.history.last().map(String::as_str),
        Some("completed/success")
    );
    assert!(
        run.details_url
            .as_deref()
            .is_some_and(|u| u.starts_with("http://shop-pr-7.preview.localhost:")),
        "{run:?}"
    );
    assert_eq!(run.title, "Preview ready");
    for step in ["fetch", "build", "start"] {
        assert!(
            run.summary.contains(&format!("| {step} |")),
            "{}",
            run.summary
        );
    }
    assert!(!run.summary.contains("<!--"), "{}", run.summary);
    assert_eq!(run.actions, ["redeploy", "destroy"]);
    // The check run takes the commit status's place.
    assert!(forge.with(|f| f.statuses.is_empty()));
    let steps_started = |p: &endor::store::Preview| {
        let id = p.id.clone();
        async move {
            s.last_run_steps(&id)
                .await
                .unwrap()
                .iter()
                .map(|x| x.started_at)
                .min()
                .unwrap()
        }
    };
    let first_launch = steps_started(&first).await;

    // Pressed by an account that is no developer here: refused, said in a comment.
    let r = send(
        "check_run",
        press(
            "octo/shop",
            run.id,
            7,
            &sha,
            "outsider-gh",
            "redeploy",
            INST,
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    h.settled(&conn.id).await;
    let refusal = || {
        forge.with(|f| {
            f.comments_on("octo/shop", 7)
                .into_iter()
                .find(|c| c.body.contains("**Redeploy** button: refused"))
        })
    };
    eventually("the refusal", || refusal().is_some()).await;
    let refusal = refusal().unwrap();
    // The login is mentioned, Markdown-escaped.
    assert!(refusal.body.contains("@outsider\\-gh"), "{}", refusal.body);
    assert!(refusal.body.contains("developer role"), "{}", refusal.body);
    assert_eq!(refusal.author, "endor-app[bot]");
    // An account linked to nobody: refused too.
    let r = send(
        "check_run",
        press("octo/shop", run.id, 7, &sha, "rando", "destroy", INST),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    eventually("the second refusal", || {
        forge.with(|f| {
            f.comments_on("octo/shop", 7).iter().any(|c| {
                c.body.contains("**Destroy** button: refused") && c.body.contains("not linked")
            })
        })
    })
    .await;
    let p = h.preview(&conn.id, 7).await.unwrap();
    assert_eq!(p.state, PreviewState::Ready);
    assert_eq!(steps_started(&p).await, first_launch, "nothing was built");

    // Buttons endor does not have, and other apps' runs: 200, ignored.
    let r = send(
        "check_run",
        press("octo/shop", run.id, 7, &sha, "dev-gh", "merge", INST),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let mut foreign = press("octo/shop", run.id, 7, &sha, "dev-gh", "redeploy", INST);
    foreign["check_run"]["name"] = "API Review".into();
    let r = send("check_run", foreign).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ignored");

    // Pressed by a developer: built again, under a new run of the same head.
    let r = send(
        "check_run",
        press("octo/shop", run.id, 7, &sha, "dev-gh", "redeploy", INST),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let p = h.wait(&conn.id, 7, &[PreviewState::Ready], None).await;
        if steps_started(&p).await > first_launch {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never redeployed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    h.settled(&conn.id).await;
    let all = runs();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        all[0].history.last().map(String::as_str),
        Some("completed/success")
    );
    assert_eq!(all[1].head_sha, sha);
    assert_eq!(
        all[1].history.last().map(String::as_str),
        Some("completed/success")
    );
    assert!(forge.with(|f| {
        f.comments_on("octo/shop", 7)
            .iter()
            .all(|c| !c.body.contains("**Redeploy** button: done"))
    }));

    // Destroy, by the developer: the preview goes, and its run ends neutral, without buttons.
    let r = send(
        "check_run",
        press("octo/shop", all[1].id, 7, &sha, "dev-gh", "destroy", INST),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    h.wait(&conn.id, 7, &[PreviewState::Destroyed], None).await;
    h.settled(&conn.id).await;
    let all = runs();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        all[1].history.last().map(String::as_str),
        Some("completed/neutral")
    );
    assert_eq!(all[1].title, "Preview destroyed");
    assert!(all[1].actions.is_empty());
    assert!(forge.with(|f| f.statuses.is_empty()));
    forge.assert_conforms("github", true);
    h.stop().await;
    db.cleanup().await;
}
