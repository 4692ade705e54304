//! Reporting back to the forge, end to end: real previews (git, webhooks, workers, gateway)
//! whose status comment, commit statuses and deployments land on a fake GitHub, GitLab and
//! Gitea that record every request and inject faults.

mod support;

use endor::store::PreviewState;
use std::time::{Duration, Instant};

use endor::config::Config;
use support::TestStore;
use support::fake_forge::{BOT, FakeForge, TOKEN};
use support::preview::*;

const STATIC_SITE: &str =
    "[preview]\nbuild = [\"mkdir -p out\", \"cp index.html out/\"]\nroot = \"out\"\n";
const MARKER: &str = "<!-- endor:status -->";

fn github(forge: &FakeForge) -> impl FnOnce(&mut Config) {
    let url = forge.github_url();
    move |c: &mut Config| {
        c.github.api_url = url;
        c.github.token = TOKEN.into();
        c.writeback.rate_per_second = 50.0;
        c.writeback.timeout = endor::duration::HumanDuration(Duration::from_secs(2));
    }
}

/// Statuses must be pending* then one final state (coalescing may skip some pendings).
fn in_order(states: &[String], last: &str) {
    assert!(!states.is_empty(), "no status");
    assert_eq!(states.last().unwrap(), last, "{states:?}");
    assert!(
        states[..states.len() - 1]
            .iter()
            .all(|s| s == "pending" || s == "running"),
        "{states:?}"
    );
}

/// Open, push, close on GitHub: one marked comment showing the final state, statuses in order
/// on each head, deployments for `preview/pr-7` ending `inactive`.
async fn github_lifecycle(forge: &FakeForge) {
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, github(forge)).await;
    let (repo, conn) = h.repo("shop", STATIC_SITE).await;
    // A duplicate left by a crash, and another user's comment that spoofs the marker.
    let (dup, dup2, spoof) = forge.with(|f| {
        (
            f.plant("octo/shop", 7, BOT, &format!("{MARKER}\nold")),
            f.plant("octo/shop", 7, BOT, &format!("{MARKER}\nolder crash")),
            f.plant("octo/shop", 7, "mallory", &format!("{MARKER}\nfake")),
        )
    });
    let title = "<!-- endor:status --> <script>x</script> @admin **bold** | [link](http://evil)";
    let sha1 = repo.push_pr("f", 7, "one");
    let open = Pr {
        title,
        ..Pr::new("opened", 7, &sha1, "f", "octo/shop")
    };
    assert_eq!(h.pr_event(&conn, "octo/shop", open).await, 202);
    h.ready(&conn.0, 7, None).await;
    h.settled(&conn.0).await;
    let body = forge.with(|f| f.comments[&dup].body.clone());
    assert!(
        forge.with(|f| !f.comments.contains_key(&dup2)),
        "a duplicate status comment is deleted"
    );
    assert!(body.contains("| State | ready |"), "{body}");
    assert!(
        body.contains("http://shop-pr-7.preview.localhost:"),
        "{body}"
    );
    assert_eq!(body.matches("<!--").count(), 1, "{body}");
    assert!(
        body.contains("&lt;script&gt;") && !body.contains("<script"),
        "{body}"
    );
    assert!(!body.contains("@admin"), "{body}");

    let sha2 = repo.push_pr("f", 7, "two");
    assert_eq!(
        h.pr_event(
            &conn,
            "octo/shop",
            Pr {
                title,
                ..Pr::new("synchronize", 7, &sha2, "f", "octo/shop")
            }
        )
        .await,
        202
    );
    h.wait(&conn.0, 7, &[PreviewState::Ready], Some(&sha2))
        .await;
    assert_eq!(
        h.pr_event(
            &conn,
            "octo/shop",
            Pr::new("closed", 7, &sha2, "f", "octo/shop")
        )
        .await,
        202
    );
    h.wait(&conn.0, 7, &[PreviewState::Destroyed], None).await;
    h.settled(&conn.0).await;

    forge.with(|f| {
        let marked: Vec<_> = f
            .comments_on("octo/shop", 7)
            .into_iter()
            .filter(|c| c.body.starts_with(MARKER) && c.author == BOT)
            .collect();
        assert_eq!(marked.len(), 1, "exactly one status comment: {marked:?}");
        assert_eq!(marked[0].id, dup, "the existing comment is reused");
        assert!(
            marked[0].body.contains("| State | destroyed |"),
            "{}",
            marked[0].body
        );
        assert_eq!(
            f.comments[&spoof].body,
            format!("{MARKER}\nfake"),
            "another user's comment is never touched"
        );
        in_order(&f.statuses_for(&sha1), "success");
        in_order(&f.statuses_for(&sha2), "success");
        assert!(f.statuses.iter().all(|s| s.context == "endor/preview"));
        assert!(
            f.statuses.iter().filter(|s| s.state == "success").all(|s| s
                .target_url
                .as_deref()
                .is_some_and(|u| u.starts_with("http://shop-pr-7.preview.localhost:"))),
            "{:?}",
            f.statuses
        );
        // Deployments for the PR's environment only, each for a head of the PR; after the
        // destroy none is left active (coalescing may skip a head's own deployment when a
        // newer state was already waiting).
        assert!(!f.deployments.is_empty());
        assert!(
            f.deployments
                .iter()
                .all(|d| d.environment == "preview/pr-7")
        );
        assert!(f.deployments.iter().all(|d| d.sha == sha1 || d.sha == sha2));
        assert!(
            f.deployments
                .iter()
                .all(|d| d.states.last().map(String::as_str) == Some("inactive")),
            "{:?}",
            f.deployments
        );
        assert!(
            f.deployments
                .iter()
                .any(|d| d.states.contains(&"success".to_string()))
        );
        assert!(
            f.requests
                .iter()
                .all(|r| r.status != 401 && r.status != 422),
            "{:?}",
            f.requests
                .iter()
                .filter(|r| r.status >= 400)
                .collect::<Vec<_>>()
        );
    });
    let metrics = h.state.metrics.encode();
    assert!(
        metrics.contains("endor_writebacks_total{kind=\"comment\",outcome=\"done\"}"),
        "{metrics}"
    );
    // Every request of the lifecycle (retries, lost answers and all) is one GitHub's own REST
    // API description allows.
    forge.assert_conforms("github", true);
    h.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_one_comment_statuses_and_deployments() {
    let forge = FakeForge::start().await;
    github_lifecycle(&forge).await;
}

/// The same lifecycle with every second call failing (502) and a 429 `Retry-After: 2` first:
/// the same final state, no duplicate, and nothing sent during the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_with_faults_and_rate_limits() {
    let forge = FakeForge::start().await;
    forge.with(|f| {
        f.faults.fail_every = Some(2);
        f.faults.rate_limited = Some((1, 2));
    });
    github_lifecycle(&forge).await;
    forge.with(|f| {
        let i = f
            .requests
            .iter()
            .position(|r| r.status == 429)
            .expect("a 429 was answered");
        // Requests already under way when the 429 arrived may land just after it; after
        // that, nothing until the 2 s are over.
        let at = f.requests[i].at;
        let during: Vec<_> = f
            .requests
            .iter()
            .filter(|r| {
                r.at > at + Duration::from_millis(100) && r.at < at + Duration::from_millis(1900)
            })
            .map(|r| (r.at - at, r.path.clone()))
            .collect();
        assert!(during.is_empty(), "Retry-After: 2 not honored: {during:?}");
        assert!(
            f.requests
                .iter()
                .any(|r| r.at >= at + Duration::from_millis(1900))
        );
        assert!(f.requests.iter().filter(|r| r.status == 502).count() >= 3);
    });
}

/// Requests the forge carries out but answers too late (the client times out after 2 s): the
/// retries find what was written (the comment by its marker) and nothing is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_with_timeouts() {
    let forge = FakeForge::start().await;
    forge.with(|f| f.faults.slow = Some((4, Duration::from_secs(4))));
    github_lifecycle(&forge).await;
    forge.with(|f| {
        assert_eq!(
            f.faults.slow.map(|s| s.0),
            Some(0),
            "the slow calls happened"
        )
    });
}

/// `endor serve` is killed right after its state changes were stored while the forge was down:
/// the next process sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_backs_survive_sigkill() {
    let forge = FakeForge::start().await;
    forge.with(|f| f.faults.down = true);
    let served = ServedBinary::start(github(&forge)).await;
    let (repo, conn) = served.repo("svc", STATIC_SITE);
    let sha = repo.push_pr("f", 3, "after-crash");
    assert_eq!(
        served
            .pr_event(
                &conn,
                "octo/svc",
                Pr::new("opened", 3, &sha, "f", "octo/svc")
            )
            .await,
        202
    );
    let store = served.store().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = store.preview(&conn.0, 3).await.unwrap();
        if p.as_ref().is_some_and(|p| p.state == PreviewState::Ready) {
            break;
        }
        assert!(Instant::now() < deadline, "not ready: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The write-backs are stored, and could not be sent.
    let pending = store.outbox_items(&conn.0).await.unwrap();
    assert!(
        pending
            .iter()
            .any(|i| i.kind == endor::store::OutboxKind::Comment && i.state != "done"),
        "{pending:?}"
    );
    let served = served.kill_and_restart().await;
    forge.with(|f| f.faults.down = false);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = forge.with(|f| {
            let c = f.comments_on("octo/svc", 3);
            c.len() == 1
                && c[0].body.contains("| State | ready |")
                && f.statuses_for(&sha).last().map(String::as_str) == Some("success")
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "write-backs not sent after restart: {:?}",
            store.outbox_items(&conn.0).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.stop();
}

/// Open, push, close on GitLab and Gitea: one marked note/comment showing the final state,
/// statuses in order on both heads, the GitLab environment stopped.
async fn gitlab_gitea_lifecycle(forge: &FakeForge) {
    let (gl, gt) = (forge.gitlab_url(), forge.gitea_url());
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, move |c| {
        c.gitlab.api_url = gl;
        c.gitlab.token = TOKEN.into();
        c.gitea.api_url = gt;
        c.gitea.token = TOKEN.into();
        c.writeback.rate_per_second = 50.0;
        c.writeback.timeout = endor::duration::HumanDuration(Duration::from_secs(2));
    })
    .await;
    let gl = Repo::new(h.dir.path(), "glshop", STATIC_SITE);
    let gl_conn = h.connect_spec("gitlab:grp/sub/glshop", &gl.url()).await;
    let gt = Repo::new(h.dir.path(), "gtshop", STATIC_SITE);
    let gt_conn = h.connect_spec("gitea:octo/gtshop", &gt.url()).await;
    let mut heads = Vec::new();
    for (step, (gl_action, gt_action)) in [
        ("open", "opened"),
        ("update", "synchronized"),
        ("close", "closed"),
    ]
    .into_iter()
    .enumerate()
    {
        let (gl_sha, gt_sha) = if step < 2 {
            let shas = (
                gl.push_pr("mr", 4, &format!("gitlab-{step}")),
                gt.push_pr("feat", 2, &format!("gitea-{step}")),
            );
            heads.push(shas.clone());
            shas
        } else {
            heads.last().unwrap().clone()
        };
        assert_eq!(
            h.gitlab_event(&gl_conn, gitlab_mr("grp/sub/glshop", 4, &gl_sha, gl_action))
                .await,
            202
        );
        assert_eq!(
            h.gitea_event(&gt_conn, gitea_pr("octo/gtshop", 2, &gt_sha, gt_action))
                .await,
            202
        );
        let want: &[PreviewState] = if step < 2 {
            &[PreviewState::Ready, PreviewState::Failed]
        } else {
            &[PreviewState::Destroyed]
        };
        for (conn, n, sha) in [(&gl_conn, 4, &gl_sha), (&gt_conn, 2, &gt_sha)] {
            let p = h.wait(&conn.connection_id, n, want, Some(sha)).await;
            assert_ne!(p.state, PreviewState::Failed, "{p:?}");
            h.settled(&conn.connection_id).await;
        }
    }
    forge.with(|f| {
        for (repo, n) in [("grp/sub/glshop", 4), ("octo/gtshop", 2)] {
            let comments = f.comments_on(repo, n);
            assert_eq!(comments.len(), 1, "{repo}: {comments:?}");
            assert!(comments[0].body.starts_with(MARKER));
            assert!(
                comments[0].body.contains("| State | destroyed |"),
                "{}",
                comments[0].body
            );
        }
        for (gl_sha, gt_sha) in &heads {
            in_order(&f.statuses_for(gl_sha), "success");
            in_order(&f.statuses_for(gt_sha), "success");
        }
        let env = f
            .environments
            .iter()
            .find(|e| e.name == "preview/pr-4")
            .expect("an environment");
        assert_eq!(env.project, "grp/sub/glshop");
        assert_eq!(env.state, "stopped");
        assert!(
            f.requests
                .iter()
                .all(|r| r.status != 401 && r.status != 422)
        );
        // GitLab is called through the `gitlab` crate's endpoints: bodies form-encoded as
        // its builders make them, statuses read newest first by id, as asked.
        let gitlab: Vec<_> = f
            .requests
            .iter()
            .filter(|r| r.path.starts_with("/api/v4/"))
            .collect();
        assert!(gitlab.iter().any(|r| r.form));
        for r in &gitlab {
            assert_eq!(
                r.form,
                !r.body.is_null(),
                "{} {} {}",
                r.method,
                r.path,
                r.body
            );
            if r.method == "GET" && r.path.contains("/statuses") {
                assert!(r.path.contains("order_by=id&sort=desc"), "{}", r.path);
            }
        }
    });
    forge.assert_conforms("gitea", true);
    forge.assert_conforms("gitlab", true);
    h.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_and_gitea_write_backs() {
    let forge = FakeForge::start().await;
    gitlab_gitea_lifecycle(&forge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_and_gitea_with_faults_and_rate_limits() {
    let forge = FakeForge::start().await;
    forge.with(|f| {
        f.faults.fail_every = Some(2);
        f.faults.rate_limited = Some((1, 2));
    });
    gitlab_gitea_lifecycle(&forge).await;
    forge.with(|f| assert!(f.requests.iter().any(|r| r.status == 429)));
}

/// GitLab and Gitea carry out a note, a commit status and an environment but answer too late
/// (the client gives up after 2 s): the retries look first (the marked note by id, the newest
/// status, the environment by name) and nothing is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_and_gitea_with_lost_answers() {
    let forge = FakeForge::start().await;
    let lost = [
        "POST /api/v4/projects/grp%2Fsub%2Fglshop/merge_requests/4/notes",
        "POST /api/v4/projects/grp%2Fsub%2Fglshop/statuses/*state=success",
        "POST /api/v4/projects/grp%2Fsub%2Fglshop/environments",
        "POST /api/v1/repos/octo/gtshop/statuses/*\"state\":\"success\"",
    ];
    forge.with(|f| {
        f.faults.slow_matching = lost
            .iter()
            .map(|t| (t.to_string(), 1, Duration::from_secs(4)))
            .collect()
    });
    gitlab_gitea_lifecycle(&forge).await;
    forge.with(|f| {
        for (text, left, _) in &f.faults.slow_matching {
            assert_eq!(*left, 0, "no answer to `{text}` was lost");
        }
        let gets = |needle: &str| {
            f.requests
                .iter()
                .filter(|r| r.method == "GET" && r.path.contains(needle))
                .count()
        };
        assert!(gets("/api/v4/projects/grp%2Fsub%2Fglshop/repository/commits/") > 0);
        assert!(gets("/api/v4/projects/grp%2Fsub%2Fglshop/merge_requests/4/notes") > 0);
        assert!(gets("/api/v1/repos/octo/gtshop/commits/") > 0);
        assert_eq!(
            f.environments
                .iter()
                .filter(|e| e.name == "preview/pr-4")
                .count(),
            1
        );
    });
}

/// A Gitea pull request with 120 comments, endor's status comment among them: through open,
/// push and close with 502s, a 429 and answers lost to timeouts, the status comment is found in
/// the one unpaginated listing (never counted twice), edited in place and never deleted, no
/// other comment is touched or added, and statuses are read newest first as asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gitea_pr_with_many_comments_keeps_its_one_status_comment() {
    let forge = FakeForge::start().await;
    let gt = forge.gitea_url();
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, move |c| {
        c.gitea.api_url = gt;
        c.gitea.token = TOKEN.into();
        c.writeback.rate_per_second = 50.0;
        c.writeback.timeout = endor::duration::HumanDuration(Duration::from_secs(2));
    })
    .await;
    let repo = Repo::new(h.dir.path(), "busy", STATIC_SITE);
    let conn = h.connect_spec("gitea:octo/busy", &repo.url()).await;
    // 120 comments: people talking, endor's own other remarks, a spoofed marker, and endor's
    // status comment 50th.
    let (ours, before) = forge.with(|f| {
        let mut ours = 0;
        for i in 0..120 {
            let id = match i {
                49 => f.plant(
                    "octo/busy",
                    3,
                    BOT,
                    &format!("{MARKER}\nfrom an earlier run"),
                ),
                7 | 77 => f.plant("octo/busy", 3, BOT, &format!("an earlier reply {i}")),
                90 => f.plant("octo/busy", 3, "mallory", &format!("{MARKER}\nfake")),
                _ => f.plant(
                    "octo/busy",
                    3,
                    &format!("user{}", i % 5),
                    &format!("comment {i}"),
                ),
            };
            if i == 49 {
                ours = id;
            }
        }
        let before: Vec<(u64, String, String)> = f
            .comments_on("octo/busy", 3)
            .into_iter()
            .filter(|c| c.id != ours)
            .map(|c| (c.id, c.author, c.body))
            .collect();
        f.faults.fail_every = Some(3);
        f.faults.rate_limited = Some((1, 2));
        f.faults.slow = Some((2, Duration::from_secs(4)));
        (ours, before)
    });
    let mut shas = Vec::new();
    for (step, action) in ["opened", "synchronized", "closed"].into_iter().enumerate() {
        let sha = if step < 2 {
            let s = repo.push_pr("feat", 3, &format!("busy-{step}"));
            shas.push(s.clone());
            s
        } else {
            shas.last().unwrap().clone()
        };
        assert_eq!(
            h.gitea_event(&conn, gitea_pr("octo/busy", 3, &sha, action))
                .await,
            202
        );
        let want: &[PreviewState] = if step < 2 {
            &[PreviewState::Ready, PreviewState::Failed]
        } else {
            &[PreviewState::Destroyed]
        };
        let p = h.wait(&conn.connection_id, 3, want, Some(&sha)).await;
        assert_ne!(p.state, PreviewState::Failed, "{p:?}");
        h.settled(&conn.connection_id).await;
    }
    forge.with(|f| {
        let all = f.comments_on("octo/busy", 3);
        assert_eq!(all.len(), 120, "no comment added or lost");
        let marked: Vec<_> = all
            .iter()
            .filter(|c| c.author == BOT && c.body.starts_with(MARKER))
            .collect();
        assert_eq!(marked.len(), 1, "{marked:?}");
        assert_eq!(
            marked[0].id, ours,
            "the existing status comment is kept and edited"
        );
        assert!(
            marked[0].body.contains("| State | destroyed |"),
            "{}",
            marked[0].body
        );
        let after: Vec<(u64, String, String)> = all
            .into_iter()
            .filter(|c| c.id != ours)
            .map(|c| (c.id, c.author, c.body))
            .collect();
        assert_eq!(after, before, "no other comment is touched");
        assert!(
            !f.requests
                .iter()
                .any(|r| r.method == "DELETE" && r.path.contains("/issues/comments/")),
            "nothing deleted"
        );
        // The comment listing is asked without pagination parameters Gitea does not have;
        // statuses are asked in a specified order.
        for r in &f.requests {
            if r.method == "GET" && r.path.contains("/comments") {
                assert!(
                    !r.path.contains("limit=") && !r.path.contains("page="),
                    "{}",
                    r.path
                );
            }
            if r.method == "GET" && r.path.contains("/statuses") {
                assert!(r.path.contains("sort="), "{}", r.path);
            }
        }
        for sha in &shas {
            in_order(&f.statuses_for(sha), "success");
        }
        assert!(f.requests.iter().any(|r| r.status == 429));
    });
    // Every request (and every answer of the fake) is one Gitea's swagger allows.
    forge.assert_conforms("gitea", true);
    h.stop().await;
    db.cleanup().await;
}

/// As a GitHub App: the installation is found with the app's JWT, installation tokens are
/// minted and renewed before they expire, and the app's bot owns the one status comment. The
/// head gets a check run in place of a commit status; the answer to its creation is lost
/// (slower than the client waits), and the retry finds that run instead of making a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_app_installation_tokens() {
    use support::fake_forge::APP_ID;
    let forge = FakeForge::start().await;
    // Tokens live 32 s; octocrab renews them 30 s before expiry, so every 2 s here.
    forge.with(|f| {
        f.token_lifetime = Duration::from_secs(32);
        f.faults.slow_matching = vec![(
            "POST /repos/octo/appshop/check-runs".into(),
            1,
            Duration::from_secs(3),
        )]
    });
    let keydir = tempfile::tempdir().unwrap();
    let key = support::rsa_key(keydir.path());
    let url = forge.github_url();
    let db = TestStore::sqlite().await;
    let key_path = key.clone();
    let h = Harness::start_with(&db, move |c| {
        c.github.api_url = url;
        c.github.app_id = Some(APP_ID);
        c.github.private_key_file = Some(key_path);
        c.writeback.rate_per_second = 50.0;
        c.writeback.timeout = endor::duration::HumanDuration(Duration::from_secs(2));
    })
    .await;
    let (repo, conn) = h.repo("appshop", STATIC_SITE).await;
    let sha = repo.push_pr("f", 5, "app");
    assert_eq!(
        h.pr_event(
            &conn,
            "octo/appshop",
            Pr::new("opened", 5, &sha, "f", "octo/appshop")
        )
        .await,
        202
    );
    h.wait(&conn.0, 5, &[PreviewState::Ready], None).await;
    h.settled(&conn.0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        h.pr_event(
            &conn,
            "octo/appshop",
            Pr::new("closed", 5, &sha, "f", "octo/appshop")
        )
        .await,
        202
    );
    h.wait(&conn.0, 5, &[PreviewState::Destroyed], None).await;
    h.settled(&conn.0).await;
    forge.with(|f| {
        assert!(
            f.installation_tokens.len() >= 2,
            "the installation token was not renewed: {:?}",
            f.installation_tokens
        );
        let comments = f.comments_on("octo/appshop", 5);
        assert_eq!(comments.len(), 1, "{comments:?}");
        assert_eq!(comments[0].author, "endor-app[bot]");
        assert!(comments[0].body.contains("| State | destroyed |"));
        // One check run for the head, whatever the lost answer; no commit status.
        let runs: Vec<_> = f.check_runs.iter().filter(|r| r.head_sha == sha).collect();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0].app, "endor-app[bot]");
        assert!(
            runs[0].history.contains(&"completed/success".to_string()),
            "{runs:?}"
        );
        assert_eq!(
            runs[0].history.last().map(String::as_str),
            Some("completed/neutral")
        );
        assert!(
            f.requests
                .iter()
                .any(|r| r.method == "GET" && r.path.contains("/check-runs?")),
            "the retry looked for the run first"
        );
        assert!(f.statuses.is_empty(), "{:?}", f.statuses);
        assert!(
            f.requests.iter().all(|r| r.status != 401),
            "{:?}",
            f.requests
                .iter()
                .filter(|r| r.status == 401)
                .collect::<Vec<_>>()
        );
    });
    forge.assert_conforms("github", true);
    h.stop().await;
    db.cleanup().await;
}

/// Reactions and plain replies (used by slash-commands) through each forge's client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_and_replies_on_every_forge() {
    use endor::writeback::{ForgeClients, PrRef};
    let forge = FakeForge::start().await;
    let db = TestStore::sqlite().await;
    let mut config = Config::default();
    forge.point(&mut config);
    config.writeback.rate_per_second = 100.0;
    let s = db.store.as_ref();
    endor::service::create_user(s, "owner", None, None)
        .await
        .unwrap();
    endor::service::create_workspace(s, "acme", "owner")
        .await
        .unwrap();
    let clients = ForgeClients::new(&config);
    for (spec, repo, emoji) in [
        ("github:octo/a", "octo/a", "+1"),
        ("gitlab:grp/b", "grp/b", "thumbsup"),
        ("gitea:octo/c", "octo/c", "+1"),
    ] {
        let c = endor::service::connect_repo(s, &config, "acme", spec, None, None)
            .await
            .unwrap();
        let conn = s.connection(&c.connection_id).await.unwrap().unwrap();
        let client = clients.client(&conn).await.unwrap();
        let pr = PrRef { repo, number: 3 };
        let id = client
            .create_comment(
                &pr,
                "Unknown command `/preview dploy`: did you mean `deploy`?",
            )
            .await
            .unwrap();
        client.react(&pr, &id, "+1").await.unwrap();
        forge.with(|f| {
            let comments = f.comments_on(repo, 3);
            assert_eq!(comments.len(), 1, "{spec}");
            assert!(comments[0].body.contains("did you mean"));
            assert_eq!(
                f.reactions.last(),
                Some(&(id.parse().unwrap(), emoji.to_string())),
                "{spec}"
            );
        });
    }
    forge.assert_conforms("github", true);
    forge.assert_conforms("gitea", true);
    forge.assert_conforms("gitlab", true);
    // Without credentials for a forge, nothing is attempted.
    let bare = ForgeClients::new(&Config::default());
    let conn = s.list_connections(None).await.unwrap().remove(0);
    assert!(!bare.enabled(&conn));
    let err = bare.client(&conn).await.err().unwrap();
    assert!(err.to_string().contains("credentials"), "{err}");
    db.cleanup().await;
}

/// The conformance check can fail: requests GitHub's description does not allow (a query
/// parameter it does not declare, a state it does not know, a method it does not have) are
/// named, and a fake answer missing what the description requires is named too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_check_refuses_what_github_does_not_allow() {
    let forge = FakeForge::start().await;
    let http = reqwest::Client::new();
    let call = |m: reqwest::Method, p: &str, body: Option<serde_json::Value>| {
        let r = http
            .request(m, format!("{}{p}", forge.github_url()))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("user-agent", "endor-test");
        with_json(r, body).send()
    };
    call(
        reqwest::Method::POST,
        "/repos/o/r/issues/7/comments",
        Some(serde_json::json!({"body": "ok"})),
    )
    .await
    .unwrap();
    // Allowed so far.
    forge.assert_conforms("github", true);
    for (m, p, b) in [
        (
            reqwest::Method::GET,
            "/repos/o/r/issues/7/comments?limit=50&page=1",
            None,
        ),
        (
            reqwest::Method::POST,
            "/repos/o/r/statuses/abc",
            Some(serde_json::json!({"state": "building", "context": "endor/preview"})),
        ),
        (
            reqwest::Method::PUT,
            "/repos/o/r/issues/comments/1",
            Some(serde_json::json!({"body": "x"})),
        ),
    ] {
        let _ = call(m, p, b).await.unwrap();
    }
    // GitHub's description takes JSON bodies only.
    http.post(format!(
        "{}/repos/o/r/issues/7/comments",
        forge.github_url()
    ))
    .header("authorization", format!("Bearer {TOKEN}"))
    .header("user-agent", "endor-test")
    .form(&[("body", "ok")])
    .send()
    .await
    .unwrap();
    let why = refusals(&forge, "github");
    for want in [
        "sends a form-encoded body, which the description does not take",
        "query parameter `limit` is not declared",
        "'building' is not one of",
        "PUT /repos/o/r/issues/comments/1: no such operation",
    ] {
        assert!(why.contains(want), "{want}: {why}");
    }
}

/// The same for GitLab (its description transcribed from GitLab's API documentation): an
/// undeclared body field, a state GitLab does not know, a note edit without its body, and an
/// operation it does not have are each named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_check_refuses_what_gitlab_does_not_allow() {
    let forge = FakeForge::start().await;
    let http = reqwest::Client::new();
    let call = |m: reqwest::Method, p: &str, body: Option<serde_json::Value>| {
        let r = http
            .request(m, format!("{}{p}", forge.gitlab_url()))
            .header("private-token", TOKEN);
        with_json(r, body).send()
    };
    let notes = "/projects/grp%2Fr/merge_requests/7/notes";
    call(
        reqwest::Method::POST,
        notes,
        Some(serde_json::json!({"body": "ok"})),
    )
    .await
    .unwrap();
    call(
        reqwest::Method::GET,
        &format!("{notes}?sort=asc&order_by=created_at&per_page=100&page=1"),
        None,
    )
    .await
    .unwrap();
    // GitLab reads a body form-encoded as well (as the `gitlab` crate sends it), its fields
    // typed as the schema says.
    let form = |p: &str, fields: &[(&str, &str)]| {
        http.post(format!("{}{p}", forge.gitlab_url()))
            .header("private-token", TOKEN)
            .form(fields)
            .send()
    };
    let status = "/projects/grp%2Fr/statuses/abc";
    form(
        status,
        &[
            ("state", "running"),
            ("name", "endor/preview"),
            ("pipeline_id", "5"),
        ],
    )
    .await
    .unwrap();
    // Allowed so far.
    forge.assert_conforms("gitlab", true);
    form(status, &[("state", "building")]).await.unwrap();
    form(status, &[("state", "running"), ("pipeline_id", "five")])
        .await
        .unwrap();
    for (m, p, b) in [
        (
            reqwest::Method::POST,
            notes.to_string(),
            Some(serde_json::json!({"body": "x", "sticky": true})),
        ),
        (
            reqwest::Method::POST,
            "/projects/grp%2Fr/statuses/abc".to_string(),
            Some(serde_json::json!({"state": "building", "name": "endor/preview"})),
        ),
        (
            reqwest::Method::PUT,
            format!("{notes}/1"),
            Some(serde_json::json!({})),
        ),
        (
            reqwest::Method::PATCH,
            "/projects/grp%2Fr/environments/1".to_string(),
            Some(serde_json::json!({"external_url": "http://x"})),
        ),
    ] {
        let _ = call(m, &p, b).await.unwrap();
    }
    let why = refusals(&forge, "gitlab");
    for want in [
        "Additional properties are not allowed ('sticky' was unexpected)",
        "'building' is not one of",
        "editMergeRequestNote needs a body",
        "PATCH /projects/grp%2Fr/environments/1: no such operation",
        "body ['state']: 'building' is not one of",
        "body ['pipeline_id']: 'five' is not of type 'integer'",
    ] {
        assert!(why.contains(want), "{want}: {why}");
    }
}

fn with_json(
    r: reqwest::RequestBuilder,
    body: Option<serde_json::Value>,
) -> reqwest::RequestBuilder {
    match body {
        Some(b) => r.json(&b),
        None => r,
    }
}

/// What `assert_conforms` names when it refuses the recorded requests (empty if it does not).
fn refusals(forge: &FakeForge, name: &str) -> String {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        forge.assert_conforms(name, true)
    }))
    .err()
    .and_then(|e| e.downcast::<String>().ok())
    .map(|s| *s)
    .unwrap_or_default()
}
