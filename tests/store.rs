//! The store suite: every test runs on SQLite and on PostgreSQL.

mod support;

use endor::forge::ForgeKind;
use endor::ids::{ConnectionId, WorkspaceId};
use endor::secret::WebhookSecret;
use endor::store::OutboxKind;
use endor::store::PreviewState;
use endor::store::{DeliveryOutcome, Inserted, NewConnection, NewDelivery, StoreError};
use support::TestStore;

both_backends!(
    users_and_identities,
    workspaces_have_their_creator_as_owner,
    connections_lifecycle,
    connection_needs_a_real_secret,
    deliveries_are_deduplicated_per_connection,
    readiness_requires_migrations,
    deliveries_and_their_jobs_commit_together,
    previews_and_their_steps,
    outbox_coalesces_and_keeps_order,
    commands_tags_and_access,
    members_keep_an_owner,
    tokens_audit_and_usage,
    every_forge_is_accepted_by_the_store,
    unknown_stored_names_are_errors,
    connections_are_found_by_repository_and_installation,
    gateway_changes_count_what_a_gateway_keeps,
    sessions_invitations_and_notifications,
);

/// The dashboard's rows: a password ends sessions; an invitation is taken once; a
/// notification is stored once per event and user, claimed by one sender under a lease, and
/// marked sent or retried.
async fn sessions_invitations_and_notifications(db: &TestStore) {
    use endor::store::{Invitation, NewNotification, NotificationPref};
    let s = db.store.as_ref();
    let u = s
        .create_user("ann", None, Some("ann@example.com"))
        .await
        .unwrap();
    let ws = s.create_workspace("w", &u.id).await.unwrap();
    assert_eq!(s.user_password("ann").await.unwrap().unwrap().1, None);
    s.create_session("h1", &u.id, "csrf1", endor::now_ms() + 60_000)
        .await
        .unwrap();
    s.create_session("old", &u.id, "c", endor::now_ms() - 1)
        .await
        .unwrap();
    let got = s.session("h1", endor::now_ms()).await.unwrap().unwrap();
    assert_eq!(
        (got.user.login.as_str(), got.csrf.as_str()),
        ("ann", "csrf1")
    );
    assert!(
        s.session("old", endor::now_ms()).await.unwrap().is_none(),
        "expired"
    );
    s.set_password_hash(&u.id, Some("$argon2id$x"))
        .await
        .unwrap();
    assert_eq!(
        s.user_password("ann").await.unwrap().unwrap().1.as_deref(),
        Some("$argon2id$x")
    );
    assert!(
        s.session("h1", endor::now_ms()).await.unwrap().is_none(),
        "a new password ends sessions"
    );
    s.create_session("h2", &u.id, "csrf2", endor::now_ms() + 60_000)
        .await
        .unwrap();
    s.delete_session("h2").await.unwrap();
    assert!(s.session("h2", endor::now_ms()).await.unwrap().is_none());
    let now = endor::now_ms();
    s.create_invitation(&Invitation {
        token_hash: "t".into(),
        workspace_id: ws.id.clone(),
        email: "bob@example.com".into(),
        roles: "developer".into(),
        invited_by: "ann".into(),
        created_at: now,
        expires_at: now + 60_000,
        accepted_at: None,
    })
    .await
    .unwrap();
    assert_eq!(
        s.invitation("t").await.unwrap().unwrap().email,
        "bob@example.com"
    );
    assert!(s.accept_invitation("t", now).await.unwrap());
    assert!(!s.accept_invitation("t", now).await.unwrap(), "once");
    let n = |key: &str, mail: bool| NewNotification {
        user_id: u.id.clone(),
        workspace_id: Some(ws.id.clone()),
        kind: "preview_ready".into(),
        event_key: key.into(),
        subject: "s".into(),
        body: "b".into(),
        link: None,
        inbox: true,
        mail_to: mail.then(|| "ann@example.com".into()),
    };
    assert_eq!(
        s.add_notifications(&[n("e1", true), n("e2", false)], now)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.add_notifications(&[n("e1", true)], now).await.unwrap(),
        0,
        "once per event"
    );
    assert_eq!(s.unread_count(&u.id).await.unwrap(), 2);
    let claimed = s.claim_mails(now, now + 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].event_key.as_str(), claimed[0].attempts),
        ("e1", 1)
    );
    assert!(
        s.claim_mails(now, now + 1_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    let again = s.claim_mails(now + 2_000, now + 3_000, 10).await.unwrap();
    assert_eq!(again.len(), 1, "a lapsed lease is taken over");
    s.mail_failed(&again[0].id, "down", Some(now + 5_000))
        .await
        .unwrap();
    assert!(
        s.claim_mails(now + 4_000, now + 6_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "not due"
    );
    let due = s.claim_mails(now + 5_000, now + 6_000, 10).await.unwrap();
    assert_eq!(due[0].attempts, 3);
    s.mail_sent(&due[0].id, now + 5_001).await.unwrap();
    assert!(
        s.claim_mails(now + 99_000, now + 100_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.mark_read(&u.id, Some(&due[0].id), now).await.unwrap(), 1);
    assert_eq!(s.unread_count(&u.id).await.unwrap(), 1);
    assert_eq!(s.mark_read(&u.id, None, now).await.unwrap(), 1);
    assert_eq!(s.inbox(&u.id, 10).await.unwrap().len(), 2);
    let p = NotificationPref {
        kind: "reaped".into(),
        inbox: false,
        email: true,
    };
    s.set_notification_pref(&u.id, &p).await.unwrap();
    s.set_notification_pref(&u.id, &p).await.unwrap();
    assert_eq!(s.notification_prefs(&u.id).await.unwrap(), vec![p]);
    let members = s.member_users(&ws.id).await.unwrap();
    assert_eq!(members[0].0.email.as_deref(), Some("ann@example.com"));
    assert_eq!(members[0].1, vec!["owner".to_string()]);
}

/// The gateway's change counter moves with every write to what it keeps of a site (routes,
/// access settings, the site's name, state and protection), and not with other writes.
async fn gateway_changes_count_what_a_gateway_keeps(db: &TestStore) {
    use endor::store::{NewSite, SiteAccess, SiteState};
    let s = db.store.as_ref();
    let ws = workspace(db, "w").await;
    let mut last = s.gateway_changes().await.unwrap();
    let mut moved = async |what: &str, expected: bool| {
        let now = s.gateway_changes().await.unwrap();
        assert_eq!(now > last, expected, "{what}: {last} -> {now}");
        assert!(now >= last, "{what}: the counter went back");
        last = now;
    };
    let site = s
        .create_site(&NewSite {
            name: "counted".into(),
            workspace_id: ws.clone(),
            region: "default".into(),
            parent_id: None,
            read_only: false,
        })
        .await
        .unwrap();
    moved("site created", true).await;
    s.add_site_tag(&site.id, "team-a").await.unwrap();
    moved("a tag (not kept by a gateway)", false).await;
    s.set_site_state(&site.id, SiteState::Active).await.unwrap();
    moved("state", true).await;
    s.set_site_protected(&site.id, true).await.unwrap();
    moved("protection", true).await;
    let route = endor::gateway::Route::local(4000).row("counted", true);
    s.put_route(&route).await.unwrap();
    moved("route inserted", true).await;
    s.put_route(&endor::gateway::Route::Gone.row("counted", true))
        .await
        .unwrap();
    moved("route replaced", true).await;
    s.put_site_access(&SiteAccess {
        site_id: site.id.clone(),
        robots: 0,
        basic_user: None,
        basic_hash: None,
        basic_sealed: None,
        updated_at: 1,
        allow_cidrs: Some("10.0.0.0/8".into()),
        deny_cidrs: None,
    })
    .await
    .unwrap();
    moved("access settings", true).await;
    s.delete_route("counted").await.unwrap();
    moved("route deleted", true).await;
    s.set_site_state(&site.id, SiteState::Deleted)
        .await
        .unwrap();
    moved("site deleted", true).await;
}

/// A delivery to the GitHub App's webhook finds its connection by repository, in any case;
/// deleted connections and other forges' are not found; installations and their state kept.
async fn connections_are_found_by_repository_and_installation(db: &TestStore) {
    let s = db.store.as_ref();
    let ws = workspace(db, "repos").await;
    let web = new_connection(db, &ws, "Acme/Web").await;
    let other = new_connection(db, &ws, "acme/other").await;
    let found = s
        .connections_for_repo(ForgeKind::Github, "acme/web")
        .await
        .unwrap();
    assert_eq!(found.iter().map(|c| &c.id).collect::<Vec<_>>(), [&web.id]);
    assert!(
        s.connections_for_repo(ForgeKind::Gitea, "acme/web")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.connections_for_repo(ForgeKind::Github, "acme/we%")
            .await
            .unwrap()
            .is_empty()
    );
    s.delete_connection(&other.id).await.unwrap();
    assert!(
        s.connections_for_repo(ForgeKind::Github, "ACME/OTHER")
            .await
            .unwrap()
            .is_empty()
    );
    // An installation and its state; the connection it made.
    let inst = endor::store::GithubInstallation {
        id: 9_000_000_001,
        app_id: 4242,
        account: "acme".into(),
        workspace_id: ws.clone(),
        suspended_at: None,
        deleted_at: None,
        created_at: 1,
    };
    s.put_installation(&inst).await.unwrap();
    assert_eq!(s.installation(inst.id).await.unwrap(), Some(inst.clone()));
    assert!(
        s.set_installation_state(inst.id, true, false)
            .await
            .unwrap()
    );
    let got = s.installation(inst.id).await.unwrap().unwrap();
    assert!(got.suspended_at.is_some() && got.deleted_at.is_none());
    assert!(s.set_installation_state(inst.id, true, true).await.unwrap());
    assert!(
        s.installation(inst.id)
            .await
            .unwrap()
            .unwrap()
            .deleted_at
            .is_some()
    );
    assert!(!s.set_installation_state(42, true, true).await.unwrap());
    assert!(
        s.set_connection_installation(&web.id, Some(inst.id))
            .await
            .unwrap()
    );
    let c = s.connection(&web.id).await.unwrap().unwrap();
    assert_eq!(c.installation_id, Some(inst.id));
}

/// A job kind or preview state the code does not know (a row written by a newer endor, or by
/// hand) is an error when read, never taken for another value.
async fn unknown_stored_names_are_errors(db: &TestStore) {
    use sqlx::Connection as _;
    let s = db.store.as_ref();
    let ws = workspace(db, "names").await;
    let c = new_connection(db, &ws, "o/names").await;
    let key = endor::jobs::pr_key(&c.id, 1);
    let job_sql = "INSERT INTO jobs (id, kind, job_key, head_sha, payload, state, attempts, max_attempts, \
                   run_after, cancel_requested, created_at, updated_at) \
                   VALUES ('j-odd', 'rebuild_everything', $1, NULL, '{}', 'queued', 0, 3, 0, 0, 0, 0)";
    let preview_sql = "INSERT INTO previews (id, connection_id, number, site_name, state, is_fork, \
                       created_at, updated_at) VALUES ('p-odd', $1, 2, 'odd-pr-2', 'levitating', 0, 0, 0)";
    // The same two rows, written past the store on either backend.
    macro_rules! plant {
        ($conn:ty) => {{
            let mut conn = <$conn>::connect(&db.url).await.unwrap();
            for (sql, arg) in [(job_sql, key.as_str()), (preview_sql, c.id.as_str())] {
                sqlx::query(sql).bind(arg).execute(&mut conn).await.unwrap();
            }
        }};
    }
    if db.url.starts_with("sqlite:") {
        plant!(sqlx::SqliteConnection);
    } else {
        plant!(sqlx::PgConnection);
    }
    let jobs = s.jobs_for_key(&key).await;
    assert!(jobs.is_err(), "an unknown job kind was read as {jobs:?}");
    let preview = s.preview(&c.id, 2).await;
    assert!(
        preview.is_err(),
        "an unknown preview state was read as {preview:?}"
    );
}

/// The store's forge constraint (a CHECK in the migrations) accepts every `ForgeKind`: adding a
/// forge without the migration that widens it fails here, not silently in production.
async fn every_forge_is_accepted_by_the_store(db: &TestStore) {
    let s = db.store.as_ref();
    let ws = workspace(db, "forges").await;
    let u = s.create_user("forge-user", None, None).await.unwrap();
    for &forge in ForgeKind::ALL {
        let c = s
            .create_connection(&NewConnection {
                workspace_id: ws.clone(),
                forge,
                repo: format!("o/{forge}"),
                api_url: None,
                git_url: None,
                secret: WebhookSecret::generate(),
                region: "default".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{forge}: a connection is refused: {e}"));
        assert_eq!(s.connection(&c.id).await.unwrap().unwrap().forge, forge);
        s.link_identity(&u.id, forge, &format!("login-{forge}"))
            .await
            .unwrap_or_else(|e| panic!("{forge}: an identity is refused: {e}"));
        assert_eq!(
            s.user_by_identity(forge, &format!("login-{forge}"))
                .await
                .unwrap()
                .unwrap()
                .id,
            u.id
        );
    }
}

async fn tokens_audit_and_usage(db: &TestStore) {
    use endor::store::{NewSite, SiteState, SiteUsage, UsageProc};
    let s = db.store.as_ref();
    let u = s.create_user("ann", None, None).await.unwrap();
    let ws = s.create_workspace("acme", &u.id).await.unwrap();
    assert_eq!(
        s.workspace_by_id(&ws.id).await.unwrap().unwrap().name,
        "acme"
    );
    assert_eq!(
        s.user_workspaces(&u.id).await.unwrap(),
        vec![(ws.clone(), vec!["owner".to_string()])]
    );
    // Tokens: found by hash while live, never after revocation; one user cannot revoke
    // another's.
    let t = s.create_token(&u.id, "ci", "hash-1").await.unwrap();
    let (found, id) = s.token_user("hash-1", 1_000).await.unwrap().unwrap();
    assert_eq!((found.login.as_str(), id.as_str()), ("ann", t.id.as_str()));
    assert!(s.token_user("hash-2", 1_000).await.unwrap().is_none());
    assert_eq!(
        s.list_tokens(&u.id).await.unwrap()[0].last_used_at,
        Some(1_000)
    );
    let other = s.create_user("bob", None, None).await.unwrap();
    assert!(!s.revoke_token(&other.id, &t.id).await.unwrap());
    assert!(s.revoke_token(&u.id, &t.id).await.unwrap());
    assert!(!s.revoke_token(&u.id, &t.id).await.unwrap());
    assert!(s.token_user("hash-1", 2_000).await.unwrap().is_none());
    assert!(s.list_tokens(&u.id).await.unwrap()[0].revoked_at.is_some());
    assert!(matches!(
        s.create_token(&other.id, "dup", "hash-1").await,
        Err(StoreError::Db(_))
    ));
    // Audit lines, all or per site.
    s.record_audit(
        "cli:root",
        "bypass_protection",
        Some(&"site-1".into()),
        "delete prod",
    )
    .await
    .unwrap();
    s.record_audit("api:ann", "bypass_protection", None, "x")
        .await
        .unwrap();
    assert_eq!(s.audit_events(None).await.unwrap().len(), 2);
    let one = s.audit_events(Some(&"site-1".into())).await.unwrap();
    assert_eq!((one.len(), one[0].caller.as_str()), (1, "cli:root"));
    // Usage: increments add up per site and month; a CPU-only increment keeps the last
    // storage sample.
    let site = s
        .create_site(&NewSite {
            name: "web".into(),
            workspace_id: ws.id.clone(),
            region: "default".into(),
            parent_id: None,
            read_only: false,
        })
        .await
        .unwrap();
    let inc = |cpu, gib, bytes, at| SiteUsage {
        site_id: site.id.clone(),
        month: "2026-11".into(),
        cpu_ms: cpu,
        gib_hours: gib,
        last_bytes: bytes,
        sampled_at: at,
    };
    s.add_site_usage(&inc(100, 0.5, 1000, 10)).await.unwrap();
    s.add_site_usage(&inc(50, 0.25, 2000, 20)).await.unwrap();
    s.add_site_usage(&inc(7, 0.0, 0, 0)).await.unwrap();
    let rows = s.site_usage("2026-11").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].cpu_ms, rows[0].last_bytes, rows[0].sampled_at),
        (157, 2000, 20)
    );
    assert!((rows[0].gib_hours - 0.75).abs() < 1e-9);
    assert_eq!(
        s.last_storage_sample(&site.id).await.unwrap(),
        Some((2000, 20))
    );
    assert!(s.site_usage("2026-10").await.unwrap().is_empty());
    let p = UsageProc {
        site_id: site.id.clone(),
        pid: 42,
        start_ticks: 7,
        cpu_ms: 10,
    };
    s.put_usage_proc(&p).await.unwrap();
    s.put_usage_proc(&UsageProc {
        cpu_ms: 20,
        ..p.clone()
    })
    .await
    .unwrap();
    assert_eq!(s.usage_procs().await.unwrap()[0].cpu_ms, 20);
    s.delete_usage_proc(42, 7).await.unwrap();
    assert!(s.usage_procs().await.unwrap().is_empty());
    // Sites alive in a window, deleted ones included.
    let c = site.created_at;
    assert_eq!(
        s.workspace_sites_between(&ws.id, c - 10, c + 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.workspace_sites_between(&ws.id, c + 10, c + 20)
            .await
            .unwrap()
            .len()
            == 1
    );
    assert!(
        s.workspace_sites_between(&ws.id, c - 20, c - 10)
            .await
            .unwrap()
            .is_empty()
    );
    s.set_site_state(&site.id, SiteState::Deleted)
        .await
        .unwrap();
    let gone = s
        .workspace_sites_between(&ws.id, c - 10, endor::now_ms() + 10)
        .await
        .unwrap();
    assert_eq!(gone.len(), 1);
    assert!(gone[0].deleted_at.is_some());
    let later = endor::now_ms() + 60_000;
    assert!(
        s.workspace_sites_between(&ws.id, later, later + 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn members_keep_an_owner(db: &TestStore) {
    let s = db.store.as_ref();
    let ws = workspace(db, "w").await;
    let owner = s.user_by_login("w-owner").await.unwrap().unwrap();
    let b = s.create_user("bea", None, None).await.unwrap();
    let c = s.create_user("cai", None, None).await.unwrap();
    let roles = |r: &[&str]| r.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    s.add_member(&ws, &b.id, &roles(&["billing", "developer"]))
        .await
        .unwrap();
    assert!(matches!(
        s.add_member(&ws, &b.id, &roles(&["owner"])).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.member_roles(&ws, &b.id).await.unwrap(),
        vec!["billing", "developer"]
    );
    // The only owner can be neither demoted nor removed.
    assert!(matches!(
        s.change_member(&ws, &owner.id, &roles(&["developer"]))
            .await,
        Err(StoreError::LastOwner)
    ));
    assert!(matches!(
        s.change_member(&ws, &owner.id, &[]).await,
        Err(StoreError::LastOwner)
    ));
    assert!(matches!(
        s.change_member(&ws, &c.id, &roles(&["owner"])).await,
        Err(StoreError::NotFound(_))
    ));
    // With a second owner, the first may go.
    s.change_member(&ws, &b.id, &roles(&["owner", "billing"]))
        .await
        .unwrap();
    s.change_member(&ws, &owner.id, &[]).await.unwrap();
    assert!(s.member_roles(&ws, &owner.id).await.unwrap().is_empty());
    assert_eq!(
        s.list_members(&ws).await.unwrap(),
        vec![("bea".to_string(), roles(&["owner", "billing"]))]
    );
    // Two owners demoting each other at the same moment: one of them stays owner.
    s.add_member(&ws, &c.id, &roles(&["owner"])).await.unwrap();
    for _ in 0..5 {
        let dev = roles(&["developer"]);
        let (x, y) = tokio::join!(
            s.change_member(&ws, &b.id, &dev),
            s.change_member(&ws, &c.id, &dev)
        );
        assert!(x.is_err() || y.is_err(), "both owners were demoted at once");
        let owners = s
            .list_members(&ws)
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, r)| r.iter().any(|x| x == "owner"))
            .count();
        assert!(owners >= 1, "no owner left");
        // Make both owners again for the next round.
        for id in [&b.id, &c.id] {
            s.change_member(&ws, id, &roles(&["owner"])).await.unwrap();
        }
    }
    s.rename_workspace(&ws, "w2").await.unwrap();
    assert!(s.workspace_by_name("w2").await.unwrap().is_some());
}

async fn commands_tags_and_access(db: &TestStore) {
    use endor::store::{NewSite, SiteAccess, SiteState};
    let s = db.store.as_ref();
    let ws = workspace(db, "w").await;
    let c = new_connection(db, &ws, "o/a").await;
    // A comment's commands run once: a second record of the same command is ignored.
    assert!(s.comment_commands(&c.id, "42").await.unwrap().is_empty());
    s.record_comment_command(&c.id, "42", "deploy", "ok", 1)
        .await
        .unwrap();
    s.record_comment_command(&c.id, "42", "deploy", "error", 2)
        .await
        .unwrap();
    s.record_comment_command(&c.id, "42", "extend 2d", "ok", 3)
        .await
        .unwrap();
    assert_eq!(
        s.comment_commands(&c.id, "42").await.unwrap(),
        vec![
            ("deploy".to_string(), "ok".to_string()),
            ("extend 2d".into(), "ok".into())
        ]
    );
    assert!(s.comment_commands(&c.id, "43").await.unwrap().is_empty());

    // Comment jobs are not cancelled by a later push of their PR (their commands must run).
    let comment = NewDelivery {
        job: Some(endor::jobs::NewJob {
            kind: endor::jobs::JobKind::Comment,
            supersede: false,
            ..with_job(&c.id, "x", 5).job.unwrap()
        }),
        ..delivery(&c.id, "c1")
    };
    s.insert_deliveries(&[comment, with_job(&c.id, "p1", 5)])
        .await
        .unwrap();
    s.insert_deliveries(&[with_job(&c.id, "p2", 5)])
        .await
        .unwrap();
    use endor::jobs::JobKind;
    let states: Vec<_> = s
        .jobs_for_key(&format!("{}#5", c.id))
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.kind, j.state))
        .collect();
    assert_eq!(
        states,
        vec![
            (JobKind::Comment, "queued".to_string()),
            (JobKind::PullRequest, "cancelled".into()),
            (JobKind::PullRequest, "queued".into()),
        ]
    );

    let site = s
        .create_site(&NewSite {
            name: "a-pr-5".into(),
            workspace_id: ws.clone(),
            region: "local".into(),
            parent_id: None,
            read_only: false,
        })
        .await
        .unwrap();
    assert!(s.add_site_tag(&site.id, "qa").await.unwrap());
    assert!(!s.add_site_tag(&site.id, "qa").await.unwrap());
    assert!(s.add_site_tag(&site.id, "demo").await.unwrap());
    assert_eq!(s.site_tags(&site.id).await.unwrap(), vec!["demo", "qa"]);
    assert!(s.remove_site_tag(&site.id, "qa").await.unwrap());
    assert!(!s.remove_site_tag(&site.id, "qa").await.unwrap());
    assert_eq!(s.site_tags(&site.id).await.unwrap(), vec!["demo"]);

    assert!(s.site_access(&site.id).await.unwrap().is_none());
    let mut a = SiteAccess::default_for(&site.id);
    a.basic_user = Some("endor".into());
    a.basic_hash = Some("$2b$hash".into());
    s.put_site_access(&a).await.unwrap();
    a.robots = 0;
    s.put_site_access(&a).await.unwrap();
    assert_eq!(s.site_access(&site.id).await.unwrap().unwrap(), a);
    assert_eq!(s.site_access_by_name("a-pr-5").await.unwrap().unwrap(), a);
    // A deleted site's settings do not answer for its name.
    s.set_site_state(&site.id, SiteState::Deleted)
        .await
        .unwrap();
    assert!(s.site_access_by_name("a-pr-5").await.unwrap().is_none());
}

async fn outbox_coalesces_and_keeps_order(db: &TestStore) {
    use endor::store::{NewOutbox, OutboxEnd};
    let s = db.store.as_ref();
    let ws = workspace(db, "w").await;
    let c = new_connection(db, &ws, "o/a").await;
    let item = |key: &str, payload: &str| NewOutbox {
        connection_id: c.id.clone(),
        number: 1,
        kind: OutboxKind::parse(key.split('#').nth(1).unwrap()).unwrap(),
        coalesce_key: key.into(),
        payload: payload.into(),
        held: None,
    };
    // Two pending items of one key: only the newest payload is kept.
    s.enqueue_outbox(&item("pr1#comment", "queued"), 100)
        .await
        .unwrap();
    s.enqueue_outbox(&item("pr1#comment", "building"), 101)
        .await
        .unwrap();
    s.enqueue_outbox(&item("sha#status", "pending"), 102)
        .await
        .unwrap();
    let claimed = s.claim_outbox("w1", 200, 10_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let comment = claimed
        .iter()
        .find(|i| i.kind == OutboxKind::Comment)
        .unwrap()
        .clone();
    assert_eq!(comment.payload, "building");
    assert_eq!((comment.state.as_str(), comment.attempts), ("sending", 1));
    // A newer item of a key being sent waits for it (order per key).
    s.enqueue_outbox(&item("pr1#comment", "ready"), 300)
        .await
        .unwrap();
    assert!(
        s.claim_outbox("w2", 400, 10_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A failed send of an item with a newer one waiting is superseded, not retried.
    let retry = OutboxEnd::Retry {
        error: "503".into(),
        run_after: 500,
    };
    assert!(
        s.finish_outbox(&comment.id, "w1", &retry, 450)
            .await
            .unwrap()
    );
    let next = s.claim_outbox("w2", 460, 10_000, 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].payload, "ready");
    // Only the holder ends an item.
    assert!(
        !s.finish_outbox(&next[0].id, "w1", &OutboxEnd::Done, 470)
            .await
            .unwrap()
    );
    assert!(
        s.finish_outbox(&next[0].id, "w2", &OutboxEnd::Done, 470)
            .await
            .unwrap()
    );
    // An expired lease is taken over.
    let status = claimed
        .iter()
        .find(|i| i.kind == OutboxKind::Status)
        .unwrap();
    let again = s.claim_outbox("w3", 20_000, 30_000, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].attempts),
        (status.id.as_str(), 2)
    );
    assert!(
        !s.finish_outbox(&status.id, "w1", &OutboxEnd::Done, 20_001)
            .await
            .unwrap()
    );
    // A retry without a newer item goes back to pending, due at run_after.
    let later = OutboxEnd::Retry {
        error: "429".into(),
        run_after: 25_000,
    };
    assert!(
        s.finish_outbox(&status.id, "w3", &later, 20_002)
            .await
            .unwrap()
    );
    assert!(
        s.claim_outbox("w3", 24_999, 30_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.claim_outbox("w3", 25_000, 30_000, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let states: Vec<String> = s
        .outbox_items(&c.id)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.state)
        .collect();
    assert_eq!(states, ["superseded", "sending", "done"]);
    // A held item (no credentials) is stored unsent with its reason, twice over (no
    // coalescing), and never claimed.
    let held = |payload: &str| NewOutbox {
        held: Some("not sent: no credentials for github".into()),
        number: 2,
        ..item("pr2#comment", payload)
    };
    s.enqueue_outbox(&held("queued"), 30_000).await.unwrap();
    s.enqueue_outbox(&held("ready"), 30_001).await.unwrap();
    assert!(
        s.claim_outbox("w4", 90_000, 99_000, 10)
            .await
            .unwrap()
            .iter()
            .all(|i| i.number != 2)
    );
    let pr2: Vec<_> = s
        .pr_outbox(&c.id, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.payload, i.state, i.last_error))
        .collect();
    let why = Some("not sent: no credentials for github".to_string());
    assert_eq!(
        pr2,
        [
            ("queued".into(), "unsent".into(), why.clone()),
            ("ready".into(), "unsent".into(), why)
        ]
    );
    assert_eq!(s.pr_outbox(&c.id, 1).await.unwrap().len(), 3);
    // Forge ids.
    assert!(s.forge_ref(&c.id, 1, "comment").await.unwrap().is_none());
    s.put_forge_ref(&c.id, 1, "comment", "42").await.unwrap();
    s.put_forge_ref(&c.id, 1, "comment", "43").await.unwrap();
    assert_eq!(
        s.forge_ref(&c.id, 1, "comment").await.unwrap().as_deref(),
        Some("43")
    );
}

async fn previews_and_their_steps(db: &TestStore) {
    use endor::store::{Preview, PreviewStep};
    let s = db.store.as_ref();
    let ws = workspace(db, "w").await;
    let c = new_connection(db, &ws, "o/a").await;
    assert!(s.preview(&c.id, 4).await.unwrap().is_none());
    let mut p = Preview {
        id: "p1".into(),
        head_sha: Some("a".repeat(40)),
        received_at: Some(10),
        title: Some("Add <b>checkout</b>".into()),
        expires_at: Some(99),
        ..Preview::new(c.id.clone(), 4, "a-pr-4".into(), 10)
    };
    s.put_preview(&p).await.unwrap();
    p.state = PreviewState::Ready;
    p.port = Some(4242);
    p.updated_at = 20;
    // Same connection and number: replaced, not added (even under another id).
    s.put_preview(&Preview {
        id: "p2".into(),
        ..p.clone()
    })
    .await
    .unwrap();
    let got = s.preview(&c.id, 4).await.unwrap().unwrap();
    assert_eq!(
        (got.id.as_str(), got.state, got.port),
        ("p1", PreviewState::Ready, Some(4242))
    );
    assert_eq!(s.list_previews().await.unwrap().len(), 1);
    assert_eq!(got.title.as_deref(), Some("Add <b>checkout</b>"));
    assert_eq!(got.expires_at, Some(99));
    assert_eq!(
        s.preview_by_site_name("a-pr-4").await.unwrap().unwrap().id,
        endor::ids::PreviewId::from("p1")
    );
    let step = |run: &str, name: &str, seq, at| PreviewStep {
        preview_id: "p1".into(),
        run_id: run.into(),
        step: name.into(),
        seq,
        started_at: at,
        ended_at: None,
        ok: None,
        detail: None,
    };
    s.put_step(&step("r1", "fetch", 1, 100)).await.unwrap();
    s.put_step(&step("r1", "clone", 2, 110)).await.unwrap();
    s.put_step(&step("r2", "fetch", 1, 200)).await.unwrap();
    let mut done = step("r2", "fetch", 1, 200);
    done.ended_at = Some(250);
    done.ok = Some(1);
    s.put_step(&done).await.unwrap();
    let last = s.last_run_steps(&"p1".into()).await.unwrap();
    assert_eq!(last.len(), 1, "only the newest run: {last:?}");
    assert_eq!(
        (last[0].run_id.as_str(), last[0].ended_at),
        ("r2", Some(250))
    );
}

fn with_job(conn: &ConnectionId, key: &str, pr: u64) -> NewDelivery {
    NewDelivery {
        job: Some(endor::jobs::NewJob {
            kind: endor::jobs::JobKind::PullRequest,
            job_key: format!("{conn}#{pr}"),
            head_sha: Some(key.into()),
            payload: "{}".into(),
            max_attempts: 5,
            supersede: true,
        }),
        number: Some(pr as i64),
        ..delivery(conn, key)
    }
}

async fn deliveries_and_their_jobs_commit_together(db: &TestStore) {
    let s = db.store.as_ref();
    let ws = workspace(db, "w").await;
    let c = new_connection(db, &ws, "o/a").await;
    let pr = format!("{}#7", c.id);
    s.insert_deliveries(&[with_job(&c.id, "d1", 7), with_job(&c.id, "d2", 7)])
        .await
        .unwrap();
    let jobs = s.jobs_for_key(&pr).await.unwrap();
    assert_eq!(jobs.len(), 2);
    // The second push superseded the first, inside the same batch.
    assert_eq!(
        (jobs[0].state.as_str(), jobs[1].state.as_str()),
        ("cancelled", "queued")
    );
    // A redelivery creates no job.
    s.insert_deliveries(&[with_job(&c.id, "d2", 7)])
        .await
        .unwrap();
    assert_eq!(s.jobs_for_key(&pr).await.unwrap().len(), 2);
    // Each delivery names its PR and the job it queued, with that job's state now.
    let of_pr = s.pr_deliveries(&c.id, 7, 10).await.unwrap();
    let seen: Vec<_> = of_pr
        .iter()
        .map(|d| (d.delivery_key.as_str(), d.number, d.job_state.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("d1", Some(7), Some("cancelled")),
            ("d2", Some(7), Some("queued"))
        ]
    );
    assert_eq!(of_pr[1].job_id.as_deref(), Some(jobs[1].id.as_str()));
    assert!(s.pr_deliveries(&c.id, 8, 10).await.unwrap().is_empty());
    // A redelivery at the end of a batch supersedes nothing: the new job before it stays queued.
    let pr9 = format!("{}#9", c.id);
    s.insert_deliveries(&[with_job(&c.id, "e1", 9)])
        .await
        .unwrap();
    s.insert_deliveries(&[with_job(&c.id, "e2", 9), with_job(&c.id, "e1", 9)])
        .await
        .unwrap();
    let states: Vec<_> = s
        .jobs_for_key(&pr9)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.state)
        .collect();
    assert_eq!(states, vec!["cancelled", "queued"]);
    // A failed batch leaves neither deliveries nor jobs.
    assert!(
        s.insert_deliveries(&[
            with_job(&c.id, "d3", 8),
            delivery(&"no-such-connection".into(), "d4")
        ])
        .await
        .is_err()
    );
    assert!(
        s.jobs_for_key(&format!("{}#8", c.id))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn users_and_identities(db: &TestStore) {
    let s = db.store.as_ref();
    let u = s
        .create_user("alice", Some("Alice"), Some("a@example.com"))
        .await
        .unwrap();
    assert_eq!(u.login, "alice");
    assert!(matches!(
        s.create_user("alice", None, None).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.user_by_login("alice").await.unwrap().unwrap().id, u.id);
    assert!(s.user_by_login("bob").await.unwrap().is_none());

    s.link_identity(&u.id, ForgeKind::Github, "Octocat")
        .await
        .unwrap();
    // Forge logins are case-insensitive.
    assert_eq!(
        s.user_by_identity(ForgeKind::Github, "octocat")
            .await
            .unwrap()
            .unwrap()
            .id,
        u.id
    );
    assert!(
        s.user_by_identity(ForgeKind::Gitlab, "octocat")
            .await
            .unwrap()
            .is_none()
    );
    let b = s.create_user("bob", None, None).await.unwrap();
    assert!(matches!(
        s.link_identity(&b.id, ForgeKind::Github, "OCTOCAT").await,
        Err(StoreError::Conflict(_))
    ));
}

async fn workspaces_have_their_creator_as_owner(db: &TestStore) {
    let s = db.store.as_ref();
    let u = s.create_user("owner", None, None).await.unwrap();
    let other = s.create_user("other", None, None).await.unwrap();
    let ws = s.create_workspace("acme", &u.id).await.unwrap();
    assert_eq!(
        s.member_roles(&ws.id, &u.id).await.unwrap(),
        vec!["owner".to_string()]
    );
    assert!(s.member_roles(&ws.id, &other.id).await.unwrap().is_empty());
    assert!(matches!(
        s.create_workspace("acme", &u.id).await,
        Err(StoreError::Conflict(_))
    ));
    // A failed creation leaves nothing behind (the member insert is in the same transaction).
    assert!(
        s.create_workspace("ghost", &"no-such-user".into())
            .await
            .is_err()
    );
    assert!(s.workspace_by_name("ghost").await.unwrap().is_none());
    s.create_workspace("beta", &u.id).await.unwrap();
    let names: Vec<_> = s
        .list_workspaces()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, vec!["acme", "beta"]);
}

async fn new_connection(db: &TestStore, ws: &WorkspaceId, repo: &str) -> endor::store::Connection {
    db.store
        .create_connection(&NewConnection {
            workspace_id: ws.clone(),
            forge: ForgeKind::Github,
            repo: repo.to_string(),
            api_url: None,
            git_url: Some("file:///tmp/x.git".into()),
            secret: WebhookSecret::generate(),
            region: "default".into(),
        })
        .await
        .unwrap()
}

async fn workspace(db: &TestStore, name: &str) -> WorkspaceId {
    let u = db
        .store
        .create_user(&format!("{name}-owner"), None, None)
        .await
        .unwrap();
    db.store.create_workspace(name, &u.id).await.unwrap().id
}

async fn connections_lifecycle(db: &TestStore) {
    let s = db.store.as_ref();
    let ws1 = workspace(db, "one").await;
    let ws2 = workspace(db, "two").await;
    let a = new_connection(db, &ws1, "o/a").await;
    let b = new_connection(db, &ws2, "o/b").await;
    let got = s.connection(&a.id).await.unwrap().unwrap();
    assert_eq!(got.repo, "o/a");
    assert_eq!(got.secret.expose(), a.secret.expose());
    assert!(got.previous_secret.is_none());
    assert_eq!(got.git_url.as_deref(), Some("file:///tmp/x.git"));
    assert_eq!(s.list_connections(None).await.unwrap().len(), 2);
    assert_eq!(s.list_connections(Some(&ws2)).await.unwrap()[0].id, b.id);

    let fresh = WebhookSecret::generate();
    assert!(
        s.set_connection_secrets(&a.id, &fresh, Some(&a.secret))
            .await
            .unwrap()
    );
    let got = s.connection(&a.id).await.unwrap().unwrap();
    assert_eq!(got.accepted_secrets().len(), 2);
    assert_eq!(got.secret.expose(), fresh.expose());
    assert!(s.set_connection_secrets(&a.id, &fresh, None).await.unwrap());
    assert_eq!(
        s.connection(&a.id)
            .await
            .unwrap()
            .unwrap()
            .accepted_secrets()
            .len(),
        1
    );

    assert!(s.delete_connection(&a.id).await.unwrap());
    assert!(!s.delete_connection(&a.id).await.unwrap());
    assert!(s.connection(&a.id).await.unwrap().is_none());
    assert!(!s.set_connection_secrets(&a.id, &fresh, None).await.unwrap());
    assert_eq!(s.list_connections(None).await.unwrap().len(), 1);
    assert!(s.connection(&"nope".into()).await.unwrap().is_none());
}

async fn connection_needs_a_real_secret(db: &TestStore) {
    let ws = workspace(db, "w").await;
    let r = db
        .store
        .create_connection(&NewConnection {
            workspace_id: ws,
            forge: ForgeKind::Gitlab,
            repo: "g/r".into(),
            api_url: None,
            git_url: None,
            secret: WebhookSecret::from_stored(String::new()),
            region: "default".into(),
        })
        .await;
    assert!(r.is_err(), "a connection without a secret was stored");
}

fn delivery(conn: &ConnectionId, key: &str) -> NewDelivery {
    NewDelivery {
        id: endor::ids::DeliveryId::generate(),
        connection_id: conn.clone(),
        delivery_key: key.to_string(),
        forge: ForgeKind::Github,
        event: "pull_request".into(),
        action: Some("opened".into()),
        number: None,
        outcome: DeliveryOutcome::Queued,
        reason: None,
        normalized: Some("{}".into()),
        payload: vec![0, 159, 146, 150, b'{'],
        received_at: endor::now_ms(),
        job: None,
    }
}

async fn deliveries_are_deduplicated_per_connection(db: &TestStore) {
    let s = db.store.as_ref();
    let ws = workspace(db, "w").await;
    let a = new_connection(db, &ws, "o/a").await;
    let b = new_connection(db, &ws, "o/b").await;
    let out = s
        .insert_deliveries(&[
            delivery(&a.id, "k1"),
            delivery(&a.id, "k2"),
            delivery(&a.id, "k1"),
            delivery(&b.id, "k1"),
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Inserted::New,
            Inserted::New,
            Inserted::Duplicate,
            Inserted::New
        ]
    );
    assert_eq!(
        s.insert_deliveries(&[delivery(&a.id, "k2")]).await.unwrap(),
        vec![Inserted::Duplicate]
    );
    assert_eq!(s.count_deliveries(Some(&a.id)).await.unwrap(), 2);
    assert_eq!(s.count_deliveries(None).await.unwrap(), 3);
    let listed = s.list_deliveries(Some(&a.id), 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed[0].payload,
        vec![0, 159, 146, 150, b'{'],
        "binary payloads round-trip"
    );
    assert_eq!(listed[0].outcome, "queued");
    // A batch that fails (unknown connection: foreign key) stores none of its deliveries.
    let r = s
        .insert_deliveries(&[
            delivery(&a.id, "k3"),
            delivery(&"no-such-connection".into(), "k4"),
        ])
        .await;
    assert!(r.is_err());
    assert_eq!(s.count_deliveries(None).await.unwrap(), 3);
}

async fn readiness_requires_migrations(db: &TestStore) {
    db.store.ready().await.unwrap();
    // A second migrate is a no-op.
    db.store.migrate().await.unwrap();
    db.store.ready().await.unwrap();
}

#[tokio::test]
async fn an_unmigrated_store_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let s = endor::store::connect(&url, 2, support::test_keyring())
        .await
        .unwrap();
    assert!(s.ready().await.is_err());
    s.migrate().await.unwrap();
    s.ready().await.unwrap();
}
