//! Webhooks endor makes on the forge (`repo connect --create-hook`, SPEC §17), on the fake
//! GitHub, GitLab and Gitea: created with the connection's secret and endor's events (and a
//! ping signed with that secret is accepted by endor), given the new secret on rotation,
//! removed with the connection; a forge that refuses or fails leaves no half-made connection
//! and no changed secret; every request and answer held to the forges' API descriptions.

mod support;

use endor::config::Config;
use endor::hooks::{self, HookError};
use endor::service;
use endor::store::Store;
use support::fake_forge::FakeForge;
use support::{TestServer, TestStore};

async fn world(forge: &FakeForge) -> (TestServer, Config) {
    let mut config = Config::default();
    forge.point(&mut config);
    config.secrets.master_key_file = support::test_master_key();
    let server = TestServer::start_with(TestStore::sqlite().await, config).await;
    let s = server.store();
    service::create_user(s, "own", None, None).await.unwrap();
    service::create_workspace(s, "acme", "own").await.unwrap();
    let config = server.state.config.clone();
    (server, config)
}

fn hooks_of(forge: &FakeForge, repo: &str) -> Vec<support::fake_forge::Hook> {
    forge.with(|f| f.hooks.iter().filter(|h| h.repo == repo).cloned().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_are_created_rotated_and_removed_on_every_forge() {
    let forge = FakeForge::start().await;
    let (server, config) = world(&forge).await;
    let s: &dyn Store = server.store();
    let http = reqwest::Client::new();
    for (repo, path, events) in [
        (
            "github:acme/web",
            "acme/web",
            vec!["pull_request", "issue_comment"],
        ),
        (
            "gitlab:grp/sub/app",
            "grp/sub/app",
            vec!["merge_requests_events", "note_events"],
        ),
        (
            "gitea:acme/api",
            "acme/api",
            vec!["pull_request", "issue_comment"],
        ),
    ] {
        let c = hooks::connect_with_hook(s, &config, "acme", repo, None, None, None)
            .await
            .unwrap();
        let made = hooks_of(&forge, path);
        assert_eq!(made.len(), 1, "{repo}: {made:?}");
        let h = &made[0];
        assert_eq!(c.hook_id.as_deref(), Some(h.id.to_string().as_str()));
        assert_eq!((&h.url, &h.secret), (&c.webhook_url, &c.secret), "{repo}");
        assert_eq!(h.events, events, "{repo}: endor's events, no pushes");
        assert!(h.active, "{repo}: Gitea's hooks are inactive unless told");
        assert!(c.instructions.contains("nothing to add by hand"), "{c:?}");
        let listed = service::list_repos(s, &config, Some("acme")).await.unwrap();
        let row = listed
            .iter()
            .find(|l| l.connection_id == c.connection_id)
            .unwrap();
        assert_eq!(row.hook_id, c.hook_id);

        if repo.starts_with("github:") {
            // What the forge will sign with is what endor accepts.
            let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
            let ping = |secret: &str| {
                support::github_delivery(&http, &c.webhook_url, "ping", body.to_vec(), secret)
                    .send()
            };
            assert_eq!(ping(&h.secret).await.unwrap().status(), 200);
            assert_eq!(ping("not-the-secret").await.unwrap().status(), 401);
        }

        // Rotation: the forge's hook gets the new secret; the old one stays accepted here.
        let id = c.connection_id.to_string();
        let r = hooks::rotate_with_hook(s, &config, &id, false)
            .await
            .unwrap();
        assert!(r.hook_updated && r.previous_accepted, "{r:?}");
        let now = hooks_of(&forge, path);
        assert_eq!(now[0].secret, r.secret.clone().unwrap(), "{repo}");
        assert_eq!(now[0].url, c.webhook_url);
        // Retiring the old secret leaves the forge alone.
        let calls = forge.with(|f| f.requests.len());
        let r = hooks::rotate_with_hook(s, &config, &id, true)
            .await
            .unwrap();
        assert!(!r.hook_updated && !r.previous_accepted);
        assert_eq!(forge.with(|f| f.requests.len()), calls);

        // Deleting the connection removes the hook.
        hooks::delete_with_hook(s, &config, &id, false)
            .await
            .unwrap();
        assert!(hooks_of(&forge, path).is_empty(), "{repo}");
        assert!(s.connection(&c.connection_id).await.unwrap().is_none());
    }
    for f in ["github", "gitlab", "gitea"] {
        forge.assert_conforms(f, true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forge_that_refuses_leaves_nothing_half_made() {
    let forge = FakeForge::start().await;
    let (server, config) = world(&forge).await;
    let s: &dyn Store = server.store();
    // Creation refused (422), or the forge down (503): no connection, no hook.
    for (refuse, down) in [(Some(422), false), (None, true)] {
        forge.with(|f| {
            f.faults.refuse_hooks = refuse;
            f.faults.down = down;
        });
        for repo in ["github:acme/web", "gitlab:grp/app", "gitea:acme/api"] {
            let err = hooks::connect_with_hook(s, &config, "acme", repo, None, None, None)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, HookError::Forge(m) if m.contains("nothing was connected")),
                "{repo}: {err}"
            );
            assert!(
                s.list_connections(None).await.unwrap().is_empty(),
                "{repo}: a connection was left"
            );
        }
    }
    forge.with(|f| {
        f.faults.refuse_hooks = None;
        f.faults.down = false;
    });
    assert!(forge.with(|f| f.hooks.is_empty()));

    // Without the forge's token nothing is connected either.
    let mut tokenless = config.clone();
    tokenless.gitea.token = String::new();
    assert!(
        hooks::connect_with_hook(s, &tokenless, "acme", "gitea:acme/api", None, None, None)
            .await
            .is_err()
    );
    assert!(s.list_connections(None).await.unwrap().is_empty());

    // A rotation the forge refuses leaves both secrets as they were.
    let c = hooks::connect_with_hook(s, &config, "acme", "gitea:acme/api", None, None, None)
        .await
        .unwrap();
    let id = c.connection_id.to_string();
    let before = s.connection(&c.connection_id).await.unwrap().unwrap();
    forge.with(|f| f.faults.refuse_hooks = Some(500));
    let err = hooks::rotate_with_hook(s, &config, &id, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nothing rotated"), "{err}");
    let after = s.connection(&c.connection_id).await.unwrap().unwrap();
    assert_eq!(after.secret.expose(), before.secret.expose());
    assert!(after.previous_secret.is_none());
    assert_eq!(hooks_of(&forge, "acme/api")[0].secret, c.secret);

    // A deletion the forge refuses deletes nothing; --keep-hook deletes without asking it.
    let err = hooks::delete_with_hook(s, &config, &id, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nothing was deleted"), "{err}");
    assert!(s.connection(&c.connection_id).await.unwrap().is_some());
    hooks::delete_with_hook(s, &config, &id, true)
        .await
        .unwrap();
    assert!(s.connection(&c.connection_id).await.unwrap().is_none());
    assert_eq!(hooks_of(&forge, "acme/api").len(), 1, "kept on the forge");
    // Unknown and hostile connection ids.
    for bad in [
        "0193c3b1-0000-7000-8000-000000000000",
        "'; DROP TABLE connections; --",
    ] {
        assert!(matches!(
            hooks::delete_with_hook(s, &config, bad, false).await,
            Err(HookError::Service(_))
        ));
    }
}
