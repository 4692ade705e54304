//! Usage metering on a reflink filesystem: a clone is charged for what it wrote, not for its
//! logical size; CPU of a site's processes is counted once; the report prices it all.

mod support;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use endor::config::Config;
use endor::service;
use endor::sites::{Guard, Imports, Sites};
use endor::usage;
use support::TestStore;

const MIB: u64 = 1 << 20;

fn random_file(path: &std::path::Path, bytes: u64) {
    use rand::RngCore;
    let mut f = std::fs::File::create(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..bytes / MIB {
        rand::rng().fill_bytes(&mut buf);
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
}

#[tokio::test]
async fn clones_pay_for_what_they_write_and_cpu_is_counted_once() {
    let db = TestStore::sqlite().await;
    let dir = support::reflink_dir();
    let mut config = Config::default();
    config.store.url = db.url.clone();
    config.storage.root = dir.path().join("sites");
    config.usage.site_hour = 0.01;
    config.usage.gib_month = 7.3;
    config.usage.cpu_hour = 3.6;
    let store = db.store.clone();
    let s = store.as_ref();
    service::create_user(s, "own", None, None).await.unwrap();
    let ws = service::create_workspace(s, "acme", "own").await.unwrap();
    let src = dir.path().join("import");
    std::fs::create_dir_all(&src).unwrap();
    random_file(&src.join("big.bin"), 16 * MIB);
    let sites = Sites::new(store.clone(), &config);
    sites
        .create(
            "prod",
            "acme",
            None,
            Imports {
                files: Some(&src),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = sites
        .clone_site("prod", "prod-pr-1", false, Guard::default())
        .await
        .unwrap();
    assert_eq!(
        r.resources[0].strategy, "reflink",
        "the test needs a reflink filesystem"
    );
    // The samples below run over the three hours after creation; they must stay in one month
    // (usage is kept per month), so on a month's last evening the sites are made 6 h older.
    let created = s.site_by_name("prod").await.unwrap().unwrap().created_at;
    if usage::month_of(created) != usage::month_of(created + 3 * 3_600_000) {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query("UPDATE sites SET created_at = created_at - ?")
            .bind(6 * 3_600_000i64)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let prod = s.site_by_name("prod").await.unwrap().unwrap();
    let pr = s.site_by_name("prod-pr-1").await.unwrap().unwrap();

    // What FIEMAP sees: the clone shares every extent, so it owns (almost) nothing.
    let fp = usage::footprint(&sites.site_dir(&pr));
    assert!(fp.logical >= 16 * MIB, "{fp:?}");
    assert!(
        fp.exclusive < MIB / 4,
        "a fresh clone owns {} bytes",
        fp.exclusive
    );

    // First sample an hour after creation: storage accrues from creation.
    let t1 = pr.created_at.max(prod.created_at) + 3_600_000;
    usage::sample(s, &sites, t1).await.unwrap();
    let month = usage::month_of(t1);
    let rows = s.site_usage(&month).await.unwrap();
    let of = |id: &endor::ids::SiteId| rows.iter().find(|u| u.site_id == *id).cloned().unwrap();
    let (u_prod, u_pr) = (of(&prod.id), of(&pr.id));
    assert!(u_prod.last_bytes as u64 >= 16 * MIB, "{u_prod:?}");
    assert!((u_pr.last_bytes as u64) < MIB / 4, "{u_pr:?}");
    // prod: 16 MiB for ~1 h (its creation came a little before the clone's).
    let gib_h = 16.0 / 1024.0;
    assert!(
        u_prod.gib_hours > gib_h * 0.99 && u_prod.gib_hours < gib_h * 1.05,
        "{u_prod:?}"
    );

    // The preview writes 3 MiB over its copy: only those are its own.
    let big = sites.files_dir(&pr).join("big.bin");
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
        f.seek(SeekFrom::Start(4 * MIB)).unwrap();
        let mut buf = vec![0u8; (3 * MIB) as usize];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut buf);
        f.write_all(&buf).unwrap();
        f.sync_all().unwrap();
    }
    // A busy process of the preview (as the runtime starts them: ENDOR_SITE, ENDOR_FILES_DIR).
    let mut child = std::process::Command::new("sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 2000000 ]; do i=$((i+1)); done; exec sleep 60",
        ])
        .env("ENDOR_SITE", &pr.name)
        .env("ENDOR_FILES_DIR", sites.files_dir(&pr))
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until it has burnt at least 0.5 s of CPU.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while endor::procfs::process_cpu(pid).map(|c| c.1).unwrap_or(0) < 500 {
        assert!(
            std::time::Instant::now() < deadline,
            "the busy loop never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t2 = t1 + 3_600_000;
    usage::sample(s, &sites, t2).await.unwrap();
    let cpu_after_first = endor::procfs::process_cpu(pid).unwrap().1 as i64;
    // Let it finish its loop, then sample again: only the difference is added.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if stat.starts_with("sleep") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the busy loop never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_total = endor::procfs::process_cpu(pid).unwrap().1 as i64;
    let t3 = t2 + 60_000;
    usage::sample(s, &sites, t3).await.unwrap();
    // Samples after the process is gone add nothing and forget it.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    let _ = child.wait();
    usage::sample(s, &sites, t3 + 60_000).await.unwrap();
    assert!(s.usage_procs().await.unwrap().is_empty());

    let rows = s.site_usage(&month).await.unwrap();
    let of = |id: &endor::ids::SiteId| rows.iter().find(|u| u.site_id == *id).cloned().unwrap();
    let u_pr = of(&pr.id);
    assert!(
        u_pr.last_bytes as u64 >= 3 * MIB && (u_pr.last_bytes as u64) < 4 * MIB,
        "the clone wrote 3 MiB, is charged {}",
        u_pr.last_bytes
    );
    // Every millisecond the process used, once (a sample reads it; `sh` waits for nobody).
    assert!(cpu_after_first >= 500);
    assert!(
        (u_pr.cpu_ms - cpu_total).abs() <= 20,
        "counted {} ms of {} ms",
        u_pr.cpu_ms,
        cpu_total
    );
    assert_eq!(of(&prod.id).cpu_ms, 0);

    // The report: what billing sees, priced by the configured rates.
    let r = usage::report(s, &config, &ws, Some(&month)).await.unwrap();
    assert_eq!(r.month, month);
    assert_eq!(r.rates.currency, "USD");
    let line = r.sites.iter().find(|l| l.site == "prod-pr-1").unwrap();
    assert_eq!(line.physical_bytes, u_pr.last_bytes);
    assert!((line.cpu_seconds - u_pr.cpu_ms as f64 / 1000.0).abs() < 1e-9);
    let want = usage::price(
        &config.usage,
        line.hours_alive,
        line.gib_hours,
        line.cpu_seconds,
    );
    assert_eq!(line.cost, want);
    assert!(line.cost.cpu > 0.0 && line.cost.storage > 0.0);
    let sum: f64 = r.sites.iter().map(|l| l.cost.total).sum();
    assert!((r.total.total - sum).abs() < 1e-5);
    // A month the sites did not live in has no lines; a malformed month is refused.
    let none = usage::report(s, &config, &ws, Some("2001-01"))
        .await
        .unwrap();
    assert!(none.sites.is_empty());
    assert!(
        usage::report(s, &config, &ws, Some("2026-13"))
            .await
            .is_err()
    );
    // A deleted site keeps its line for the month, with the hours it lived.
    sites.delete("prod-pr-1", Guard::default()).await.unwrap();
    let r = usage::report(s, &config, &ws, Some(&usage::month_of(endor::now_ms())))
        .await
        .unwrap();
    let gone = r.sites.iter().find(|l| l.site == "prod-pr-1").unwrap();
    assert_eq!(gone.state, endor::store::SiteState::Deleted);
    db.cleanup().await;
}

/// `endor serve` samples on its own, every `usage.sample_interval`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_samples_on_its_interval() {
    let db = TestStore::sqlite().await;
    let h = support::preview::Harness::start_with(&db, |c| {
        c.usage.sample_interval = endor::duration::HumanDuration(Duration::from_secs(1));
    })
    .await;
    let src = h.dir.path().join("import");
    std::fs::create_dir_all(&src).unwrap();
    random_file(&src.join("data.bin"), 2 * MIB);
    h.sites()
        .create(
            "web",
            "acme",
            None,
            Imports {
                files: Some(&src),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let site = h.store().site_by_name("web").await.unwrap().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut samples = std::collections::BTreeSet::new();
    while samples.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no samples: {samples:?}"
        );
        if let Some((bytes, at)) = h.store().last_storage_sample(&site.id).await.unwrap() {
            assert!(bytes as u64 >= 2 * MIB, "{bytes}");
            samples.insert(at);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.stop().await;
    db.cleanup().await;
}
