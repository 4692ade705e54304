//! Build steps and site processes: real shells, real processes, real ports.

mod support;

use std::sync::Arc;
use std::time::Duration;

use endor::runtime::{Sandbox, Supervised, build, health_check};

fn sandbox(dir: &std::path::Path, env: Vec<(String, String)>) -> Sandbox {
    // Reachable by the unprivileged user the commands run as (when the tests run as root).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = Sandbox::new(dir, env, "nobody").unwrap();
    s.hand_over().unwrap();
    s
}

#[tokio::test]
async fn steps_run_in_order_with_a_clean_environment() {
    let d = tempfile::tempdir().unwrap();
    // SAFETY (test): set before any thread reads the environment for this variable.
    unsafe { std::env::set_var("ENDOR_TEST_SECRET_TOKEN", "hunter2") };
    let sb = sandbox(
        d.path(),
        vec![
            ("PORT".into(), "4321".into()),
            ("ENDOR_SITE".into(), "shop-pr-1".into()),
        ],
    );
    let r = build(
        &sb,
        &[
            "echo one > out.txt".into(),
            "echo two >> out.txt; env; id -u".into(),
        ],
        Duration::from_secs(30),
        1 << 20,
    )
    .await
    .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.steps.len(), 2);
    assert_eq!(
        std::fs::read_to_string(d.path().join("out.txt")).unwrap(),
        "one\ntwo\n"
    );
    let log = String::from_utf8_lossy(&r.log);
    assert!(
        log.contains("PORT=4321") && log.contains("ENDOR_SITE=shop-pr-1"),
        "{log}"
    );
    assert!(
        !log.contains("hunter2") && !log.contains("ENDOR_TEST_SECRET_TOKEN"),
        "endor's environment leaked: {log}"
    );
    assert!(log.contains("$ echo one > out.txt"), "{log}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            log.lines().any(|l| l.trim() == "65534"),
            "build ran as root: {log}"
        );
    }
}

#[tokio::test]
async fn a_failing_step_stops_the_build() {
    let d = tempfile::tempdir().unwrap();
    let sb = sandbox(d.path(), vec![]);
    let r = build(
        &sb,
        &[
            "true".into(),
            "echo broken >&2; exit 3".into(),
            "touch never".into(),
        ],
        Duration::from_secs(30),
        1 << 20,
    )
    .await
    .unwrap();
    assert!(!r.ok);
    assert_eq!(r.steps.len(), 2);
    assert_eq!(r.steps[1].exit_code, Some(3));
    assert!(String::from_utf8_lossy(&r.log).contains("broken"));
    assert!(!d.path().join("never").exists());
}

#[tokio::test]
async fn a_step_that_hangs_is_killed_with_everything_it_started() {
    let d = tempfile::tempdir().unwrap();
    let sb = sandbox(d.path(), vec![]);
    let r = build(
        &sb,
        &["sleep 600 & echo $! > bg.pid; sleep 600".into()],
        Duration::from_secs(1),
        1 << 20,
    )
    .await
    .unwrap();
    assert!(!r.ok && r.steps[0].timed_out, "{r:?}");
    let bg: i32 = std::fs::read_to_string(d.path().join("bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Dead means gone or a zombie waiting for its new parent to reap it.
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|st| {
                st.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().next())
                    != Some("Z")
            })
            .unwrap_or(false)
    };
    let mut tries = 0;
    while alive(bg) && tries < 40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tries += 1;
    }
    assert!(!alive(bg), "a background process of the step survived");
}

#[tokio::test]
async fn output_is_capped() {
    let d = tempfile::tempdir().unwrap();
    let sb = sandbox(d.path(), vec![]);
    let r = build(
        &sb,
        &["head -c 5000000 /dev/zero | tr '\\0' x".into()],
        Duration::from_secs(30),
        64 * 1024,
    )
    .await
    .unwrap();
    assert!(r.ok, "{r:?}");
    assert!(r.truncated);
    assert!(r.log.len() <= 64 * 1024);
}

use support::free_port;

#[tokio::test]
async fn the_start_process_is_health_checked_restarted_and_stopped() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("index.html"), "hello").unwrap();
    let port = free_port();
    let sb = sandbox(d.path(), vec![("PORT".into(), port.to_string())]);
    let proc = Supervised::start(
        sb,
        "exec /usr/bin/python3 -m http.server \"$PORT\" --bind 127.0.0.1".into(),
        endor::runtime::WebLog::new(
            endor::logs::Logs::new(&d.path().join("logs"), Default::default()),
            endor::ids::SiteId::from("web"),
        ),
        "web".into(),
        None,
    );
    assert_eq!(
        health_check(port, "/", Duration::from_secs(20))
            .await
            .unwrap(),
        200
    );
    // It dies; the supervisor brings it back.
    let first = proc.pid();
    // SAFETY: kill(2) on the process we started.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        health_check(port, "/", Duration::from_secs(20))
            .await
            .unwrap(),
        200
    );
    assert!(proc.restarts() >= 1);
    assert_ne!(proc.pid(), first);
    proc.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the port is still taken after stop"
    );
}

/// A process no longer wanted (its site torn down by another endor process: the store says
/// so) is not restarted when it dies, and its pid is not kept for a later stop to signal.
#[tokio::test]
async fn a_process_no_longer_wanted_is_not_restarted() {
    let d = tempfile::tempdir().unwrap();
    let asked = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let a = asked.clone();
    let wanted: endor::runtime::StillWanted = Arc::new(move || {
        a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { false })
    });
    let proc = Supervised::start(
        sandbox(d.path(), vec![]),
        "exec sleep 60".into(),
        endor::runtime::WebLog::new(
            endor::logs::Logs::new(&d.path().join("logs"), Default::default()),
            endor::ids::SiteId::from("gone"),
        ),
        "gone".into(),
        Some(wanted),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while proc.pid() == 0 {
        assert!(std::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = proc.pid();
    // SAFETY: kill(2) on the process we started.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    while asked.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "never asked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proc.restarts(), 0, "asked once, then let go");
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(proc.pid(), 0, "the dead process's pid is forgotten");
    proc.stop().await;
}

/// A site process's output is in its log while it runs (not only once it exits), each line
/// marked with its stream; binary output is escaped, a 10 MB line is cut with a marker, and a
/// flood of 100 MB never blocks the process nor takes the site's logs past their cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_log_is_written_while_the_process_runs() {
    use endor::logs::{Limits, Logs, Service, Stream};
    let d = tempfile::tempdir().unwrap();
    let work = d.path().to_path_buf();
    let logs_dir = tempfile::tempdir().unwrap();
    let cap = 4u64 << 20;
    let logs = Logs::new(
        &logs_dir.path().join("logs"),
        Limits {
            max_bytes_per_site: cap,
            max_line_bytes: 16 << 10,
            ..Default::default()
        },
    );
    let site = endor::ids::SiteId::from("s1");
    let proc = Supervised::start(
        sandbox(&work, vec![]),
        "echo started; echo oops >&2; printf '\\377\\033[31mbin\\n'; \
         head -c 10000000 /dev/zero | tr '\\0' y; echo; \
         yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -c 100000000; echo; \
         echo after > flood-done; echo the-end; exec sleep 60"
            .into(),
        endor::runtime::WebLog::new(logs.clone(), site.clone()),
        "web".into(),
        None,
    );
    let root = logs_dir.path().join("logs");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = work.join("flood-done").exists();
        let (lines, _) =
            endor::logs::read_since(&root, &site, &[Service::Web], &Default::default(), Some(1))
                .unwrap();
        if done && lines.last().is_some_and(|r| r.entry.text == "the-end") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the running process's output never reached its log (flood done: {done}, last: {:?})",
            lines.last()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let size: u64 = walk(&root)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(size <= cap, "the site's logs hold {size} bytes, past {cap}");
    let (lines, _) =
        endor::logs::read_since(&root, &site, &[Service::Web], &Default::default(), None).unwrap();
    // The start of the flood is gone (the cap), and the reader is told.
    assert!(
        lines[0]
            .entry
            .text
            .contains("older lines of this log are gone"),
        "{:?}",
        lines[0]
    );
    let last = lines.last().unwrap();
    assert_eq!(
        (last.entry.text.as_str(), last.entry.stream),
        ("the-end", Some(Stream::Stdout))
    );
    // Still running: the log was written before the process ended.
    // SAFETY: kill(2) with signal 0 only asks whether the process we started exists.
    assert!(proc.pid() != 0 && unsafe { libc::kill(proc.pid() as i32, 0) } == 0);
    proc.stop().await;

    // The first lines, in a site whose cap the flood did not reach.
    let small = endor::ids::SiteId::from("s2");
    let proc = Supervised::start(
        sandbox(&work, vec![]),
        "echo started; echo oops >&2; printf '\\377\\033[31mbin\\n'; \
         head -c 10000000 /dev/zero | tr '\\0' y; echo; echo the-end; exec sleep 60"
            .into(),
        endor::runtime::WebLog::new(logs.clone(), small.clone()),
        "web".into(),
        None,
    );
    let lines = loop {
        let (lines, _) =
            endor::logs::read_since(&root, &small, &[Service::Web], &Default::default(), None)
                .unwrap();
        if lines.last().is_some_and(|r| r.entry.text == "the-end") {
            break lines;
        }
        assert!(std::time::Instant::now() < deadline, "{lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let has = |text: &str, stream| {
        lines
            .iter()
            .any(|r| r.entry.text == text && r.entry.stream == Some(stream))
    };
    assert!(
        has("started", Stream::Stdout) && has("oops", Stream::Stderr),
        "{lines:?}"
    );
    assert!(
        has("\\xff\\x1b[31mbin", Stream::Stdout),
        "binary output escaped: {lines:?}"
    );
    let long = lines
        .iter()
        .find(|r| r.entry.text.starts_with("yyy"))
        .unwrap();
    assert!(
        long.entry.text.len() < 17_000
            && long.entry.text.ends_with(&format!(
                "[endor: line cut, {} more bytes]",
                10_000_000 - (16 << 10)
            )),
        "{}",
        &long.entry.text[long.entry.text.len() - 60..]
    );
    proc.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_health_check_that_never_passes_fails_clearly() {
    let port = free_port();
    let err = health_check(port, "/", Duration::from_millis(500))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port}/")) && err.contains("did not pass"),
        "{err}"
    );
    assert!(
        health_check(port, "no-slash", Duration::from_millis(100))
            .await
            .is_err()
    );
}
