//! Slash-commands end to end: real comment payloads of GitHub, GitLab and Gitea (the fixtures,
//! bodies and authors rewritten), signed and posted to the real server; real previews (git,
//! workers, gateway, site processes); replies and reactions landing on a fake forge.

mod support;

use endor::store::PreviewState;
use std::path::Path;
use std::time::{Duration, Instant};

use endor::config::Config;
use endor::service;
use serde_json::Value;
use support::TestStore;
use support::fake_forge::{BOT, FakeForge, TOKEN};
use support::fixture;
use support::preview::*;

const APP_TOML: &str = r#"
[preview]
parent = "production"
build = ["test -f app.py"]
start = "/usr/bin/python3 app.py"
health = "/health"
"#;

fn forges(forge: &FakeForge) -> impl FnOnce(&mut Config) {
    let (gh, gl, gt) = (forge.github_url(), forge.gitlab_url(), forge.gitea_url());
    move |c: &mut Config| {
        c.github.api_url = gh;
        c.github.token = TOKEN.into();
        c.gitlab.api_url = gl;
        c.gitlab.token = TOKEN.into();
        c.gitea.api_url = gt;
        c.gitea.token = TOKEN.into();
        c.writeback.rate_per_second = 100.0;
        c.writeback.burst = 50;
        c.writeback.timeout = endor::duration::HumanDuration(Duration::from_secs(2));
    }
}

/// The people of the permission matrix, linked on all three forges as `{login}-user`:
/// `dev` (developer), `payer` (billing only), `outsider` (linked, not a member). The account
/// `rando` is linked to nobody.
async fn people(h: &Harness) {
    let s = h.store();
    for login in ["dev", "payer", "outsider"] {
        service::create_user(s, login, None, None).await.unwrap();
        for forge in ["github", "gitlab", "gitea"] {
            service::link_identity(s, login, &format!("{forge}:{login}-user"))
                .await
                .unwrap();
        }
    }
    service::add_member(s, "acme", "dev", &["developer".into()])
        .await
        .unwrap();
    service::add_member(s, "acme", "payer", &["billing".into()])
        .await
        .unwrap();
}

/// Post a signed GitHub `issue_comment` (the real fixture of `action`) on PR `number`.
#[allow(clippy::too_many_arguments)]
async fn gh_comment(
    h: &Harness,
    conn: &(endor::ids::ConnectionId, String),
    repo: &str,
    number: u64,
    id: u64,
    action: &str,
    author: &str,
    body: &str,
    previous: Option<&str>,
) -> u16 {
    let c = GhComment {
        number,
        id,
        action,
        author,
        body,
        previous,
    };
    send_comment(&h.http, h.api, conn, repo, c).await
}

/// Wait until every job of the PR has ended.
async fn idle(h: &Harness, conn: &endor::ids::ConnectionId, number: u64) {
    let key = format!("{conn}#{number}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = h.store().jobs_for_key(&key).await.unwrap();
        if jobs
            .iter()
            .all(|j| matches!(j.state.as_str(), "done" | "failed" | "cancelled"))
        {
            assert!(
                jobs.iter().all(|j| j.state != "failed"),
                "a job failed: {jobs:?}"
            );
            return;
        }
        assert!(Instant::now() < deadline, "jobs never ended: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The reply comments endor posted on the PR (status comment excluded).
fn replies(forge: &FakeForge, repo: &str, number: u64) -> Vec<String> {
    forge.with(|f| {
        f.comments_on(repo, number)
            .into_iter()
            .filter(|c| c.author == BOT && c.body.starts_with("<!-- endor:reply"))
            .map(|c| c.body)
            .collect()
    })
}

fn reactions_on(forge: &FakeForge, id: u64) -> Vec<String> {
    forge.with(|f| {
        f.reactions
            .iter()
            .filter(|(c, _)| *c == id)
            .map(|(_, r)| r.clone())
            .collect()
    })
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn get_with(h: &Harness, site: &str, auth: Option<&str>) -> reqwest::Response {
    let mut r = h
        .http
        .get(format!("http://{}/", h.gateway))
        .header("host", format!("{site}.preview.localhost"));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_commands_permissions_and_effects() {
    let forge = FakeForge::start().await;
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, forges(&forge)).await;
    people(&h).await;
    sqlite_parent(&h.sites(), h.dir.path(), 100).await;
    let (repo, conn) = h.repo("shop", APP_TOML).await;
    let site = "shop-pr-7";
    let sha1 = repo.push_pr("feature", 7, "first");
    let pr = Pr::new("opened", 7, &sha1, "feature", "octo/shop");
    assert_eq!(h.pr_event(&conn, "octo/shop", pr).await, 202);
    h.ready(&conn.0, 7, None).await;
    let comment = |id: u64, author: &'static str, body: &'static str| {
        let (h, conn) = (&h, &conn);
        async move {
            let code = gh_comment(h, conn, "octo/shop", 7, id, "created", author, body, None).await;
            assert_eq!(code, 202, "comment {id}");
            idle(h, &conn.0, 7).await;
            h.settled(&conn.0).await;
        }
    };

    // The permission matrix on a mutating command: refused with the role named, nothing done.
    comment(10, "payer-user", "/preview destroy").await;
    comment(11, "outsider-user", "/preview destroy").await;
    comment(12, "rando", "/preview destroy").await;
    let r = replies(&forge, "octo/shop", 7);
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(r.iter().all(
        |b| b.contains("refused") && b.contains("needs the developer role in workspace `acme`")
    ));
    assert!(r[0].contains("`payer` has only `billing`"), "{}", r[0]);
    assert!(r[1].contains("`outsider` is not a member"), "{}", r[1]);
    assert!(
        r[2].contains("`rando` is not linked")
            && r[2].contains("endor user link USER github:rando"),
        "{}",
        r[2]
    );
    // The bot itself, and any bot account: ignored, no reply.
    comment(13, BOT, "/preview destroy").await;
    comment(14, "renovate[bot]", "/preview destroy").await;
    assert_eq!(replies(&forge, "octo/shop", 7).len(), 3);
    assert!(reactions_on(&forge, 13).is_empty() && reactions_on(&forge, 14).is_empty());
    // Commands in code, inline code and quotes are not commands.
    comment(
        15,
        "dev-user",
        "```\n/preview destroy\n```\n> /preview destroy\n\n    /preview destroy\n\n`/preview destroy`",
    )
    .await;
    assert_eq!(
        h.preview(&conn.0, 7).await.unwrap().state,
        PreviewState::Ready
    );
    assert_eq!(h.get(site, "/").await.0, 200);
    // Anyone may ask for the status: a reaction, no reply.
    comment(16, "rando", "/preview status").await;
    assert_eq!(reactions_on(&forge, 16), vec!["+1"]);

    // A developer: tags, robots, password, extend in one comment → one reaction.
    let before = h.preview(&conn.0, 7).await.unwrap().expires_at.unwrap();
    comment(
        20,
        "dev-user",
        "Looks good!\n/preview tag add QA\n/PREVIEW robots off\n/preview password on\n/preview extend 2d",
    )
    .await;
    assert_eq!(reactions_on(&forge, 20), vec!["+1"]);
    assert_eq!(replies(&forge, "octo/shop", 7).len(), 3);
    let details = h.sites().show(site).await.unwrap();
    assert_eq!(details.tags, vec!["qa"]);
    let after = h.preview(&conn.0, 7).await.unwrap().expires_at.unwrap();
    assert!(
        (after - before - 2 * 86_400_000).abs() < 60_000,
        "extend 2d moved expiry by {} ms",
        after - before
    );
    // The status comment shows the expiry.
    let status = forge.with(|f| {
        f.comments_on("octo/shop", 7)
            .into_iter()
            .find(|c| c.body.starts_with("<!-- endor:status -->"))
            .unwrap()
            .body
    });
    assert!(status.contains("Expires"), "{status}");
    // Password on: 401 without credentials; the credentials are nowhere on the forge, and
    // members read them through the store's sealed copy (`endor site access`).
    let r = get_with(&h, site, None).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let view = endor::access::view(h.store(), h.store().keyring(), site, &details.id)
        .await
        .unwrap();
    let creds = view.basic_auth.clone().unwrap();
    let password = creds.password.clone().unwrap();
    assert!(!view.robots);
    let everything_posted: String = forge.with(|f| {
        f.requests
            .iter()
            .map(|r| r.body.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    });
    assert!(!everything_posted.contains(&password));
    assert_eq!(
        get_with(&h, site, Some(&basic(&creds.user, "wrong")))
            .await
            .status(),
        401
    );
    let r = get_with(&h, site, Some(&basic(&creds.user, &password))).await;
    assert_eq!(r.status(), 200);
    // Robots off: no X-Robots-Tag.
    assert!(!r.headers().contains_key("x-robots-tag"));
    let body = r.text().await.unwrap();
    assert!(body.contains("logo=parent-logo accounts=100"), "{body}");
    let auth = basic(&creds.user, &password);

    // An extension past previews.max_ttl (30d) is capped at now + 30d.
    comment(29, "dev-user", "/preview extend 60d").await;
    assert_eq!(reactions_on(&forge, 29), vec!["+1"]);
    let capped = h.preview(&conn.0, 7).await.unwrap().expires_at.unwrap();
    let cap = endor::now_ms() + 30 * 86_400_000;
    assert!(
        capped <= cap && capped > cap - 120_000,
        "extend 60d gave {capped}, cap {cap}"
    );

    // Refused tags, bad arguments, unknown verbs: one reply with each error and the help.
    comment(
        21,
        "dev-user",
        "/preview tag add Prod.\n/preview extend forever\n/preview deplyo",
    )
    .await;
    let r = replies(&forge, "octo/shop", 7);
    assert_eq!(r.len(), 4, "{r:?}");
    let last = r.last().unwrap();
    assert!(last.contains("looks like production"), "{last}");
    assert!(last.contains("invalid duration `forever`"), "{last}");
    assert!(last.contains("did you mean `/preview deploy`"), "{last}");
    assert!(
        last.contains("/preview sync \\[files|db|all\\]") || last.contains("sync"),
        "{last}"
    );
    assert_eq!(h.sites().show(site).await.unwrap().tags, vec!["qa"]);

    // Sync: the parent's newer snapshot reaches the preview.
    let prod = h.sites().show("production").await.unwrap();
    std::fs::write(prod.files_dir.join("logo.txt"), "parent-logo-2").unwrap();
    let prod_db = prod
        .resources
        .iter()
        .find(|r| r.kind == "sqlite")
        .unwrap()
        .location
        .clone();
    sqlite_accounts(Path::new(&prod_db), 150);
    h.sites().snapshot("production").await.unwrap();
    comment(22, "dev-user", "/preview sync files").await;
    assert_eq!(reactions_on(&forge, 22), vec!["+1"]);
    let body = get_with(&h, site, Some(&auth)).await.text().await.unwrap();
    assert!(body.contains("logo=parent-logo-2 accounts=100"), "{body}");
    comment(23, "dev-user", "/preview sync db").await;
    let body = get_with(&h, site, Some(&auth)).await.text().await.unwrap();
    assert!(body.contains("logo=parent-logo-2 accounts=150"), "{body}");

    // Edits run only what they added; a deleted comment runs nothing.
    comment(24, "dev-user", "/preview tag rm qa").await;
    assert!(h.sites().show(site).await.unwrap().tags.is_empty());
    let edited = "Looks good!\n/preview tag add QA\n/PREVIEW robots off\n/preview password on\n/preview extend 2d\n/preview tag add demo";
    let prev = "Looks good!\n/preview tag add QA\n/PREVIEW robots off\n/preview password on\n/preview extend 2d";
    let code = gh_comment(
        &h,
        &conn,
        "octo/shop",
        7,
        20,
        "edited",
        "dev-user",
        edited,
        Some(prev),
    )
    .await;
    assert_eq!(code, 202);
    idle(&h, &conn.0, 7).await;
    h.settled(&conn.0).await;
    // `qa` was not added again, the password was not regenerated, expiry not pushed again.
    assert_eq!(h.sites().show(site).await.unwrap().tags, vec!["demo"]);
    assert_eq!(get_with(&h, site, Some(&auth)).await.status(), 200);
    assert_eq!(
        h.preview(&conn.0, 7).await.unwrap().expires_at.unwrap(),
        capped
    );
    // Even without the old body (as GitLab sends edits), what already ran does not run again.
    let code = gh_comment(
        &h,
        &conn,
        "octo/shop",
        7,
        20,
        "edited",
        "dev-user",
        edited,
        None,
    )
    .await;
    assert_eq!(code, 202);
    idle(&h, &conn.0, 7).await;
    assert_eq!(get_with(&h, site, Some(&auth)).await.status(), 200);
    let code = gh_comment(
        &h,
        &conn,
        "octo/shop",
        7,
        25,
        "deleted",
        "dev-user",
        "/preview destroy",
        None,
    )
    .await;
    assert_eq!(code, 202);
    idle(&h, &conn.0, 7).await;
    assert_eq!(
        h.preview(&conn.0, 7).await.unwrap().state,
        PreviewState::Ready
    );

    // Help from anyone: a reply with the command list.
    comment(26, "rando", "/preview help").await;
    let last = replies(&forge, "octo/shop", 7).pop().unwrap();
    for v in endor::commands::grammar::VERBS {
        assert!(last.contains(&format!("/preview {}", v.name)), "{last}");
    }

    // A protected site takes no pull request deploy (only git tags) and is not destroyed.
    h.sites()
        .protect(site, true, &Default::default())
        .await
        .unwrap();
    comment(30, "dev-user", "/preview deploy").await;
    let last = replies(&forge, "octo/shop", 7).pop().unwrap();
    assert!(last.contains("protected"), "{last}");
    assert_eq!(
        get_with(&h, site, Some(&auth)).await.status(),
        200,
        "the last good version serves on"
    );
    h.sites()
        .protect(site, false, &Default::default())
        .await
        .unwrap();

    // Destroy, then deploy brings it back at the current head.
    comment(27, "dev-user", "/preview destroy").await;
    assert_eq!(
        h.preview(&conn.0, 7).await.unwrap().state,
        PreviewState::Destroyed
    );
    assert_eq!(h.get(site, "/").await.0, 410);
    comment(28, "dev-user", "/preview").await;
    let p = h.preview(&conn.0, 7).await.unwrap();
    assert_eq!(
        (p.state, p.ready_sha.as_deref()),
        (PreviewState::Ready, Some(sha1.as_str()))
    );
    assert_eq!(reactions_on(&forge, 28), vec!["+1"]);
    let (code, body) = h.get(site, "/").await;
    assert_eq!(code, 200, "a new site has no password: {body}");
    h.stop().await;
    db.cleanup().await;
}

/// A fork PR is built only once a developer approves its head, and that approval covers that
/// head only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fork_approval_is_bound_to_one_sha() {
    let forge = FakeForge::start().await;
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, forges(&forge)).await;
    people(&h).await;
    sqlite_parent(&h.sites(), h.dir.path(), 10).await;
    let (repo, conn) = h.repo("shop", APP_TOML).await;
    let site = "shop-pr-9";
    let sha1 = repo.push_pr("fork-branch", 9, "fork-one");
    let pr = |action, sha| Pr::new(action, 9, sha, "fork-branch", "mallory/shop");
    assert_eq!(
        h.pr_event(&conn, "octo/shop", pr("opened", &sha1)).await,
        202
    );
    h.wait(&conn.0, 9, &[PreviewState::AwaitingApproval], None)
        .await;
    assert_eq!(h.get(site, "/").await.0, 404);

    // Not a developer: refused, still waiting, nothing built.
    let code = gh_comment(
        &h,
        &conn,
        "octo/shop",
        9,
        1,
        "created",
        "payer-user",
        "/preview deploy",
        None,
    )
    .await;
    assert_eq!(code, 202);
    idle(&h, &conn.0, 9).await;
    let p = h.preview(&conn.0, 9).await.unwrap();
    assert_eq!(
        (p.state, p.approved_sha.as_deref()),
        (PreviewState::AwaitingApproval, None)
    );
    assert!(p.site_id.is_none());

    // A developer approves: built at exactly that head.
    let code = gh_comment(
        &h,
        &conn,
        "octo/shop",
        9,
        2,
        "created",
        "dev-user",
        "/preview deploy",
        None,
    )
    .await;
    assert_eq!(code, 202);
    idle(&h, &conn.0, 9).await;
    let p = h.preview(&conn.0, 9).await.unwrap();
    assert_eq!(p.state, PreviewState::Ready, "{p:?}");
    assert_eq!(p.approved_sha.as_deref(), Some(sha1.as_str()));
    assert_eq!(p.ready_sha.as_deref(), Some(sha1.as_str()));
    assert!(h.get(site, "/").await.1.starts_with("page=fork-one"));

    // A new push from the fork is not covered: it waits for a new approval, and the approved
    // version keeps serving.
    let sha2 = repo.push_pr("fork-branch", 9, "fork-two");
    assert_eq!(
        h.pr_event(&conn, "octo/shop", pr("synchronize", &sha2))
            .await,
        202
    );
    idle(&h, &conn.0, 9).await;
    let p = h.preview(&conn.0, 9).await.unwrap();
    assert_eq!(p.state, PreviewState::AwaitingApproval, "{p:?}");
    assert_eq!(p.ready_sha.as_deref(), Some(sha1.as_str()));
    assert!(h.get(site, "/").await.1.starts_with("page=fork-one"));
    let code = gh_comment(
        &h,
        &conn,
        "octo/shop",
        9,
        3,
        "created",
        "dev-user",
        "/preview deploy",
        None,
    )
    .await;
    assert_eq!(code, 202);
    idle(&h, &conn.0, 9).await;
    let p = h.preview(&conn.0, 9).await.unwrap();
    assert_eq!(
        (p.state, p.approved_sha.as_deref(), p.ready_sha.as_deref()),
        (
            PreviewState::Ready,
            Some(sha2.as_str()),
            Some(sha2.as_str())
        )
    );
    assert!(h.get(site, "/").await.1.starts_with("page=fork-two"));
    h.stop().await;
    db.cleanup().await;
}

/// GitLab: notes on a merge request (the real `Note Hook` fixture); the approval of a fork's
/// head is bound to the commit the note was written on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_notes() {
    let forge = FakeForge::start().await;
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, forges(&forge)).await;
    people(&h).await;
    sqlite_parent(&h.sites(), h.dir.path(), 10).await;
    let repo = Repo::new(h.dir.path(), "app", APP_TOML);
    let c = h.connect_spec("gitlab:grp/app", &repo.url()).await;
    let sha1 = repo.push_pr("f", 4, "mr-one");
    // Published the GitLab way.
    git(
        &repo.work,
        &[
            "push",
            "-q",
            "-f",
            "origin",
            &format!("{sha1}:refs/merge-requests/4/head"),
        ],
    );
    // From a fork (another source project).
    let mut mr: Value = serde_json::from_slice(&gitlab_mr("grp/app", 4, &sha1, "open")).unwrap();
    mr["object_attributes"]["source_project_id"] = 999_999.into();
    assert_eq!(
        h.gitlab_event(&c, serde_json::to_vec(&mr).unwrap()).await,
        202
    );
    h.wait(&c.connection_id, 4, &[PreviewState::AwaitingApproval], None)
        .await;

    let note = |id: u64, author: &'static str, body: &'static str, last_commit: String| {
        let (h, c) = (&h, &c);
        async move {
            let mut b: Value =
                serde_json::from_slice(&fixture("gitlab.note.merge_request.json")).unwrap();
            b["project"]["path_with_namespace"] = "grp/app".into();
            b["user"]["username"] = author.into();
            b["object_attributes"]["id"] = id.into();
            b["object_attributes"]["note"] = body.into();
            b["merge_request"]["iid"] = 4.into();
            b["merge_request"]["last_commit"]["id"] = last_commit.into();
            let code = h
                .gitlab_hook(c, "Note Hook", serde_json::to_vec(&b).unwrap())
                .await;
            assert_eq!(code, 202);
            idle(h, &c.connection_id, 4).await;
            h.settled(&c.connection_id).await;
        }
    };
    // A note written on an older commit does not approve the current head.
    note(50, "dev-user", "/preview deploy", "1".repeat(40)).await;
    let p = h.preview(&c.connection_id, 4).await.unwrap();
    assert_eq!(p.state, PreviewState::AwaitingApproval);
    let r = replies(&forge, "grp/app", 4);
    assert!(r.last().unwrap().contains("a new commit"), "{r:?}");
    // Billing only: refused.
    note(51, "payer-user", "/preview deploy", sha1.clone()).await;
    assert_eq!(
        h.preview(&c.connection_id, 4).await.unwrap().state,
        PreviewState::AwaitingApproval
    );
    assert!(
        replies(&forge, "grp/app", 4)
            .last()
            .unwrap()
            .contains("has only `billing`")
    );
    // On the current head, by a developer: built; success is an award emoji.
    note(52, "dev-user", "/preview deploy", sha1.clone()).await;
    let p = h.preview(&c.connection_id, 4).await.unwrap();
    assert_eq!(
        (p.state, p.approved_sha.as_deref()),
        (PreviewState::Ready, Some(sha1.as_str()))
    );
    assert_eq!(reactions_on(&forge, 52), vec!["thumbsup"]);
    assert!(h.get("app-pr-4", "/").await.1.starts_with("page=mr-one"));
    note(53, "dev-user", "/preview tag add review", sha1.clone()).await;
    assert_eq!(
        h.sites().show("app-pr-4").await.unwrap().tags,
        vec!["review"]
    );
    note(54, "dev-user", "/preview destroy", sha1.clone()).await;
    assert_eq!(h.get("app-pr-4", "/").await.0, 410);
    h.stop().await;
    db.cleanup().await;
}

/// Gitea: `issue_comment` on a pull request (the real fixture).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitea_comments() {
    let forge = FakeForge::start().await;
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, forges(&forge)).await;
    people(&h).await;
    sqlite_parent(&h.sites(), h.dir.path(), 10).await;
    let repo = Repo::new(h.dir.path(), "web", APP_TOML);
    let c = h.connect_spec("gitea:team/web", &repo.url()).await;
    let sha = repo.push_pr("f", 2, "gitea-one");
    assert_eq!(
        h.gitea_event(&c, gitea_pr("team/web", 2, &sha, "opened"))
            .await,
        202
    );
    h.ready(&c.connection_id, 2, None).await;
    let comment = |id: u64, author: &'static str, body: &'static str| {
        let (h, c) = (&h, &c);
        async move {
            let mut b: Value =
                serde_json::from_slice(&fixture("gitea.issue_comment.on-pr.json")).unwrap();
            b["action"] = "created".into();
            b["repository"]["full_name"] = "team/web".into();
            b["issue"]["number"] = 2.into();
            b["comment"]["id"] = id.into();
            b["comment"]["body"] = body.into();
            b["comment"]["user"]["login"] = author.into();
            let code = h
                .gitea_hook(c, "issue_comment", serde_json::to_vec(&b).unwrap())
                .await;
            assert_eq!(code, 202);
            idle(h, &c.connection_id, 2).await;
            h.settled(&c.connection_id).await;
        }
    };
    assert!(
        get_with(&h, "web-pr-2", None)
            .await
            .headers()
            .contains_key("x-robots-tag")
    );
    comment(70, "dev-user", "/preview robots off").await;
    assert_eq!(reactions_on(&forge, 70), vec!["+1"]);
    assert!(
        !get_with(&h, "web-pr-2", None)
            .await
            .headers()
            .contains_key("x-robots-tag")
    );
    comment(71, "outsider-user", "/preview robots on").await;
    assert!(
        replies(&forge, "team/web", 2)
            .last()
            .unwrap()
            .contains("not a member")
    );
    assert!(
        !get_with(&h, "web-pr-2", None)
            .await
            .headers()
            .contains_key("x-robots-tag")
    );
    comment(72, BOT, "/preview destroy").await;
    assert_eq!(
        h.preview(&c.connection_id, 2).await.unwrap().state,
        PreviewState::Ready
    );
    comment(73, "dev-user", "/preview password on").await;
    assert_eq!(get_with(&h, "web-pr-2", None).await.status(), 401);
    comment(74, "dev-user", "/preview password off").await;
    assert_eq!(get_with(&h, "web-pr-2", None).await.status(), 200);
    // CIDR rules from a comment: this test's address (127.0.0.1) denied, then a bad CIDR
    // refused in a reply, then the rules cleared.
    comment(75, "dev-user", "/preview cidr deny 127.0.0.0/8").await;
    assert_eq!(reactions_on(&forge, 75), vec!["+1"]);
    assert_eq!(get_with(&h, "web-pr-2", None).await.status(), 403);
    comment(76, "dev-user", "/preview cidr allow 10.0.0.0/33").await;
    let reply = replies(&forge, "team/web", 2).last().unwrap().clone();
    assert!(reply.contains("10.0.0.0/33"), "{reply}");
    assert_eq!(get_with(&h, "web-pr-2", None).await.status(), 403);
    comment(77, "dev-user", "/preview cidr clear").await;
    assert_eq!(get_with(&h, "web-pr-2", None).await.status(), 200);
    h.stop().await;
    db.cleanup().await;
}
