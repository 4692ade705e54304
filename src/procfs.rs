//! Reading `/proc`: which processes endor started for which site, how old they are and how
//! much CPU they used. Shared by the reaper (orphans) and usage metering.

use std::path::PathBuf;

/// Processes endor started for sites under one of `roots`: (pid, site id), read from
/// `/proc/{pid}/environ` (`ENDOR_FILES_DIR={root}/{site id}/...`).
pub fn site_processes(roots: &[PathBuf]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let files = env
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"ENDOR_FILES_DIR="))
            .map(|v| PathBuf::from(String::from_utf8_lossy(v).into_owned()));
        let has_site = env
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(b"ENDOR_SITE="));
        if let (Some(files), true) = (files, has_site)
            && let Some(rest) = roots.iter().find_map(|r| files.strip_prefix(r).ok())
            && let Some(id) = rest.components().next()
        {
            out.push((pid, id.as_os_str().to_string_lossy().into_owned()));
        }
    }
    out
}

/// How long the process has been running: its start (`/proc/{pid}/stat` field 22, clock
/// ticks after boot) against `/proc/uptime`.
pub fn process_age(pid: u32) -> Option<std::time::Duration> {
    let start = *stat_fields(pid)?.get(19)?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(std::time::Duration::from_secs_f64(
        (uptime - start as f64 / clock_ticks() as f64).max(0.0),
    ))
}

fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is not a number: read it as 0.
    Some(
        after
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// A process's CPU so far, in milliseconds: its own user + system time and that of its
/// children it has waited for (fields 14-17), with its start time (field 22, clock ticks
/// after boot) that tells it apart from a later process with the same pid.
pub fn process_cpu(pid: u32) -> Option<(u64, u64)> {
    let f = stat_fields(pid)?;
    // After the name, field N of stat(5) is at index N - 3.
    let ticks: u64 = f.get(11..15)?.iter().sum();
    let start = *f.get(19)?;
    Some((start, ticks * 1000 / clock_ticks()))
}
