//! Write-back benchmark (issue: reporting back to the forge). A burst of 500 preview state
//! changes over 100 PRs (each PR: building → ready → building at a new head → ready →
//! destroyed), stored in the outbox exactly as the lifecycle stores them, sent by the real
//! sender to a fake GitHub with a rate limit. Prints the API calls per state change, the peak
//! requests per second the forge saw, duplicates, and the time until the forge shows every
//! PR's final state, against the time the rate limit allows.
//!
//! `cargo bench --bench writeback [-- --rate 20 --prs 100]`

#[path = "../tests/support/fake_forge.rs"]
#[allow(dead_code)]
mod fake_forge;

use std::sync::Arc;
use std::time::{Duration, Instant};

use endor::config::Config;
use endor::previews::report::rows_for;
use endor::store::Preview;
use endor::store::PreviewState;
use endor::writeback::{ForgeClients, Sender};
use fake_forge::{BOT, FakeForge, TOKEN};

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sha(n: u64, round: u64) -> String {
    format!("{:040x}", n * 1000 + round)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rate = arg("--rate", 20.0);
    let prs = arg("--prs", 100.0) as u64;
    let burst = 10u32;
    let forge = FakeForge::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("endor.db").display());
    let store = endor::store::open(&url, 4, &dir.path().join("master.key"))
        .await
        .unwrap();
    let mut config = Config::default();
    config.store.url = url;
    config.github.api_url = forge.github_url();
    config.github.token = TOKEN.into();
    config.writeback.rate_per_second = rate;
    config.writeback.burst = burst;
    endor::service::create_user(store.as_ref(), "owner", None, None)
        .await
        .unwrap();
    endor::service::create_workspace(store.as_ref(), "acme", "owner")
        .await
        .unwrap();
    let conn = endor::service::connect_repo(
        store.as_ref(),
        &config,
        "acme",
        "github:octo/shop",
        None,
        None,
    )
    .await
    .unwrap();
    let forges = Arc::new(ForgeClients::new(&config));
    let wake = Arc::new(tokio::sync::Notify::new());
    let sender = Sender::spawn(
        store.clone(),
        forges.clone(),
        wake.clone(),
        Arc::new(endor::metrics::Metrics::default()),
    );

    // The burst: every PR goes through five reported states, as fast as the store takes them.
    let started = Instant::now();
    let rounds: [(PreviewState, u64); 5] = [
        (PreviewState::Queued, 1),
        (PreviewState::Ready, 1),
        (PreviewState::Queued, 2),
        (PreviewState::Ready, 2),
        (PreviewState::Destroyed, 2),
    ];
    let mut changes = 0u64;
    for (state, round) in rounds {
        for n in 1..=prs {
            let p = Preview {
                id: format!("p{n}").into(),
                state,
                head_sha: Some(sha(n, round)),
                updated_at: endor::now_ms(),
                title: Some(format!("Change number {n}")),
                ..Preview::new(
                    conn.connection_id.clone(),
                    n as i64,
                    format!("shop-pr-{n}"),
                    0,
                )
            };
            let rows = rows_for(store.as_ref(), &forges, &config, &p)
                .await
                .unwrap();
            store
                .put_preview_with_outbox(&p, &rows, endor::now_ms())
                .await
                .unwrap();
            wake.notify_waiters();
            changes += 1;
        }
    }
    let enqueued = started.elapsed();

    // Settled: every PR's comment says destroyed, no deployment is left active, the last
    // head's status is success.
    let settled = loop {
        let done = forge.with(|f| {
            (1..=prs).all(|n| {
                let marked: Vec<_> = f
                    .comments_on("octo/shop", n)
                    .into_iter()
                    .filter(|c| c.author == BOT)
                    .collect();
                marked.len() == 1
                    && marked[0].body.contains("| State | destroyed |")
                    && f.statuses_for(&sha(n, 2)).last().map(String::as_str) == Some("success")
            }) && f
                .deployments
                .iter()
                .all(|d| d.states.last().map(String::as_str) == Some("inactive"))
        });
        if done {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not settled after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sender.shutdown().await;

    let (calls, peak, duplicates) = forge.with(|f| {
        let times: Vec<Instant> = f.requests.iter().map(|r| r.at).collect();
        let mut peak = 0usize;
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(1))
                .count();
            peak = peak.max(in_window);
        }
        let duplicates: usize = (1..=prs)
            .map(|n| {
                f.comments_on("octo/shop", n)
                    .iter()
                    .filter(|c| c.author == BOT)
                    .count()
                    .saturating_sub(1)
            })
            .sum();
        (f.requests.len(), peak, duplicates)
    });
    let allowed = (calls.saturating_sub(burst as usize)) as f64 / rate;
    println!(
        "## Write-back: {changes} state changes over {prs} PRs, limit {rate}/s (burst {burst})"
    );
    println!();
    println!(
        "stored in the outbox in       {:.3} s",
        enqueued.as_secs_f64()
    );
    println!("API calls made                {calls}");
    println!(
        "API calls per state change    {:.2}   (target <= 2)",
        calls as f64 / changes as f64
    );
    println!("peak requests in any 1 s      {peak}   (limit {rate}/s + burst {burst})");
    println!("duplicate status comments     {duplicates}");
    println!(
        "all settled after             {:.2} s   (the limit allows {:.2} s for {calls} calls: {:.2}x)",
        settled.as_secs_f64(),
        allowed,
        settled.as_secs_f64() / allowed.max(0.001)
    );
}
