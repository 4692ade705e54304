//! One PR's story can be followed in the logs: every line that the lifecycle, the slash-commands,
//! the job worker, the write-back and the reaper write while working for a PR carries the PR
//! (its number and repository) through the span it runs in. The log is captured as JSON, as
//! `endor serve --log-format json` writes it, from a whole life: open, push, a comment, the
//! write-backs, expiry by the reaper.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use endor::config::Config;
use endor::duration::HumanDuration;
use endor::store::PreviewState;
use serde_json::Value;
use support::TestStore;
use support::fake_forge::{FakeForge, TOKEN};
use support::preview::*;

/// The captured log: one JSON document per line.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// A field of the line or of any span it was written in.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line["fields"].get(name).or_else(|| {
        line["spans"]
            .as_array()?
            .iter()
            .rev()
            .find_map(|s| s.get(name))
    })
}

/// The rooms whose lines must name the PR they work for.
const ROOMS: &[&str] = &[
    "endor::previews",
    "endor::commands",
    "endor::jobs",
    "endor::worker",
    "endor::writeback",
    "endor::forge",
    "endor::reaper",
];

/// Lines about the process, not about one PR (said once per pass or per start).
const NOT_ABOUT_A_PR: &[&str] = &["reaper pass"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_prs_story_is_on_every_line() {
    let log = Captured::default();
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_env_filter("endor=debug")
        .with_writer(log.clone())
        .init();

    let forge = FakeForge::start().await;
    let url = forge.github_url();
    let db = TestStore::sqlite().await;
    let h = Harness::start_with(&db, move |c: &mut Config| {
        c.github.api_url = url;
        c.github.token = TOKEN.into();
        c.writeback.rate_per_second = 100.0;
        c.writeback.burst = 50;
        c.reaper.grace = HumanDuration(Duration::from_secs(3600));
    })
    .await;
    let (repo, conn) = h
        .repo(
            "spans",
            "[preview]\nttl = \"2s\"\nbuild = [\"mkdir -p out\", \"cp index.html out/\"]\nroot = \"out\"\n",
        )
        .await;

    // Open, then push: two launches.
    let sha1 = repo.push_pr("f", 7, "one");
    let opened = Pr::new("opened", 7, &sha1, "f", "octo/spans");
    assert_eq!(h.pr_event(&conn, "octo/spans", opened).await, 202);
    h.ready(&conn.0, 7, None).await;
    let sha2 = repo.push_pr("f", 7, "two");
    let pushed = Pr::new("synchronize", 7, &sha2, "f", "octo/spans");
    assert_eq!(h.pr_event(&conn, "octo/spans", pushed).await, 202);
    h.wait(&conn.0, 7, &[PreviewState::Ready], Some(&sha2))
        .await;
    h.settled(&conn.0).await;

    // Past its TTL the reaper expires it; the write-backs say so.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let report = endor::reaper::Reaper::standalone(h.state.store.clone(), &h.state.config)
        .pass(false)
        .await
        .unwrap();
    assert_eq!(report.expired, vec!["spans-pr-7".to_string()], "{report:?}");
    h.settled(&conn.0).await;
    h.stop().await;

    let lines = log.lines();
    let mut checked = 0;
    let mut missing = Vec::new();
    let mut seen_rooms = std::collections::BTreeSet::new();
    for line in &lines {
        let target = line["target"].as_str().unwrap_or_default();
        let Some(room) = ROOMS.iter().find(|r| target.starts_with(*r)) else {
            continue;
        };
        let message = field(line, "message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if NOT_ABOUT_A_PR.contains(&message) {
            continue;
        }
        checked += 1;
        seen_rooms.insert(*room);
        let pr = field(line, "pr").and_then(Value::as_i64);
        let repo = field(line, "repo").and_then(Value::as_str);
        if pr != Some(7) || repo != Some("octo/spans") {
            missing.push(line.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {checked} lines do not name the PR:\n{}",
        missing.len(),
        missing.join("\n")
    );
    // The story was really told by each room, not filtered away.
    for room in [
        "endor::previews",
        "endor::jobs",
        "endor::writeback",
        "endor::reaper",
    ] {
        assert!(
            seen_rooms.contains(room),
            "no line from {room}: {seen_rooms:?}"
        );
    }
    // The webhook receiver names the delivery and the PR too.
    let deliveries: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("endor::webhooks"))
        })
        .collect();
    assert!(!deliveries.is_empty());
    for l in deliveries {
        assert_eq!(field(l, "pr").and_then(Value::as_i64), Some(7), "{l}");
        assert!(field(l, "delivery").is_some(), "{l}");
    }
}
