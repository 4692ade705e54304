//! A site's logs: its services' streams ([`Service`]), each kept as structured lines
//! ([`Entry`]: time, service, stream, text, fields) in segments under
//! `{storage.logs}/{site id}/{service}/`, and read back by position ([`Cursor`]), filtered
//! (`read.rs`).
//!
//! Writing never blocks a site: [`Logs::append`] writes whole lines to the newest segment
//! (starting a new one past a size) and, when the site's segments together pass
//! `logs.max_bytes_per_site`, removes its oldest ones; a reader that asks for what is gone gets
//! one line saying how much was dropped. Text is kept printable: bytes that are not UTF-8 and
//! control characters are escaped (`\xNN`), and a line longer than `logs.max_line_bytes` is cut
//! with a marker. Logs go with the site, after retention (the reaper).

mod read;
mod servers;

pub use read::{
    Cursor, Cursors, Filter, Record, line_text, parse_time, read, read_since, read_sites,
    read_sites_since,
};
pub use servers::ServerLog;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::ids::SiteId;

crate::ids::stored_enum! {
    /// The services of a site that write a log.
    pub enum Service {
        /// The build steps' output, each build after the last.
        Build = "build",
        /// The site process's output, each line marked with its stream.
        Web = "web",
        /// Ad-hoc commands (`endor site exec`): who ran what, its output, how it ended.
        Exec = "exec",
        /// The gateway's access log for the site: one line per request.
        Access = "access",
        /// The gateway's errors for the site: app not answering, refusals.
        Error = "error",
        /// The site's own events: launched, updated, failed, reaped.
        Endor = "endor",
        /// The site's own PostgreSQL server's log, slow statements included.
        Postgres = "postgres",
        /// The site's own MariaDB server's error log and its slow statements.
        Mariadb = "mariadb",
    }
}

impl Service {
    /// The service a user named, or an error that lists the ones there are.
    pub fn named(name: &str) -> Result<Self, String> {
        Self::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
            format!(
                "no log service `{}`: a site has {}",
                name.escape_debug(),
                known.join(", ")
            )
        })
    }
}

/// Which stream of a process a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a site's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Milliseconds since the Unix epoch.
    pub time: i64,
    pub service: Service,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
    /// Left out of an access line as stored (its fields say it all); made when read.
    #[serde(default)]
    pub text: String,
    /// Structured parts (an access line's status, address, bytes…).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl Entry {
    /// A line of `service` now, from text that is already printable.
    pub fn now(service: Service, stream: Option<Stream>, text: String) -> Self {
        Self {
            time: crate::now_ms(),
            service,
            stream,
            text,
            fields: Default::default(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.fields.insert(key.to_string(), value.into());
        self
    }
}

/// How big logs may grow and how long they are kept (`[logs]`, or a workspace's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Every log of a site together; past it the oldest segments go.
    pub max_bytes_per_site: u64,
    /// A longer line is cut, with a marker.
    pub max_line_bytes: usize,
    /// Lines older than this are not shown, and the reaper removes them.
    pub retention: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes_per_site: 64 << 20,
            max_line_bytes: 16 << 10,
            retention: std::time::Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Limits {
    /// A service starts a new segment past this size: a thirty-second of the site's share,
    /// so dropping the oldest segment loses a small part of a log.
    fn segment_bytes(&self) -> u64 {
        (self.max_bytes_per_site / 32).max(4 << 10)
    }

    /// What the site's closed segments may hold: with every service's newest segment full
    /// besides, the site is still within its cap.
    fn closed_budget(&self) -> u64 {
        self.max_bytes_per_site
            .saturating_sub(Service::ALL.len() as u64 * self.segment_bytes())
    }
}

impl From<&crate::config::LogsConfig> for Limits {
    fn from(c: &crate::config::LogsConfig) -> Self {
        Self {
            max_bytes_per_site: c.max_bytes_per_site.0,
            max_line_bytes: c.max_line_bytes.0 as usize,
            retention: c.retention.0,
        }
    }
}

/// The folder of a site's logs.
pub fn site_dir(root: &Path, site: &SiteId) -> PathBuf {
    root.join(site.as_str())
}

/// A service's segments, oldest first: `(start position, path)`. A segment is named by the
/// position (bytes of the service's log before it) of its first line, in hex.
pub(crate) fn segments(root: &Path, site: &SiteId, service: Service) -> Vec<(u64, PathBuf)> {
    let dir = site_dir(root, site).join(service.as_str());
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let start = name.to_str()?.strip_suffix(".jsonl")?;
            Some((u64::from_str_radix(start, 16).ok()?, e.path()))
        })
        .collect();
    out.sort();
    out
}

fn segment_path(root: &Path, site: &SiteId, service: Service, start: u64) -> PathBuf {
    site_dir(root, site)
        .join(service.as_str())
        .join(format!("{start:016x}.jsonl"))
}

/// The segment a service is writing: its file, where it starts, how long it is.
struct Open {
    file: std::fs::File,
    start: u64,
    len: u64,
}

/// Writes sites' logs. Cheap to clone; one per process is enough (it keeps each service's
/// newest segment open).
#[derive(Clone)]
pub struct Logs {
    root: PathBuf,
    limits: Limits,
    /// Sites whose workspace set its own limits ([`Logs::set_overrides`]).
    overrides: Arc<std::sync::RwLock<HashMap<SiteId, Limits>>>,
    open: Arc<Mutex<HashMap<(SiteId, Service), Open>>>,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs").field("root", &self.root).finish()
    }
}

impl Logs {
    pub fn new(root: &Path, limits: Limits) -> Self {
        Self {
            root: std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()),
            limits,
            overrides: Default::default(),
            open: Default::default(),
        }
    }

    /// The limits of every site whose workspace set its own (the others have the config's);
    /// replaces the ones set before.
    pub fn set_overrides(&self, overrides: HashMap<SiteId, Limits>) {
        *self.overrides.write().unwrap_or_else(|p| p.into_inner()) = overrides;
    }

    /// One site's own limits (its workspace's), beside the others set.
    pub fn set_limits(&self, site: &SiteId, limits: Limits) {
        self.overrides
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(site.clone(), limits);
    }

    /// A site's limits: its workspace's, or the config's.
    pub fn limits_of(&self, site: &SiteId) -> Limits {
        self.overrides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(site)
            .copied()
            .unwrap_or(self.limits)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Append lines to one of a site's logs (all of `entries` must be of `service`).
    pub fn append(
        &self,
        site: &SiteId,
        service: Service,
        entries: &[Entry],
    ) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(entries.len() * 128);
        for e in entries {
            serde_json::to_writer(&mut bytes, e).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
        }
        self.append_lines(site, service, &bytes)
    }

    /// Append plain lines of text (taken from `lines`, all stamped now) to one of a site's
    /// logs, marked with `stream` when they are a process's output.
    pub fn append_text(
        &self,
        site: &SiteId,
        service: Service,
        stream: Option<Stream>,
        lines: &mut Vec<String>,
    ) -> std::io::Result<()> {
        /// A line as stored (the shape of an [`Entry`]), written without copying its text.
        #[derive(Serialize)]
        struct Line<'a> {
            time: i64,
            service: Service,
            #[serde(skip_serializing_if = "Option::is_none")]
            stream: Option<Stream>,
            text: &'a str,
        }
        let time = crate::now_ms();
        let mut bytes = Vec::with_capacity(lines.iter().map(|l| l.len() + 64).sum());
        for text in lines.drain(..) {
            let line = Line {
                time,
                service,
                stream,
                text: &text,
            };
            serde_json::to_writer(&mut bytes, &line).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
        }
        self.append_lines(site, service, &bytes)
    }

    /// Append lines already written as JSON (each an [`Entry`] of `service`, each ending with
    /// a newline).
    pub fn append_lines(
        &self,
        site: &SiteId,
        service: Service,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let key = (site.clone(), service);
        if !open.contains_key(&key) {
            // Go on in the newest segment on disk (another process may have written it).
            let start = segments(&self.root, site, service)
                .last()
                .map_or(0, |(start, _)| *start);
            let o = self.open_segment(site, service, start)?;
            open.insert(key.clone(), o);
        }
        let limits = self.limits_of(site);
        let full = open
            .get(&key)
            .is_some_and(|o| o.len >= limits.segment_bytes());
        if full {
            if let Some(old) = open.remove(&key) {
                // The segment's real length: another writer (another endor process) may have
                // appended to it too, and positions must stay those of the bytes on disk.
                let len = old.file.metadata().map_or(old.len, |m| m.len());
                let o = self.open_segment(site, service, old.start + len)?;
                open.insert(key.clone(), o);
            }
            self.enforce_cap(site, &limits)?;
        }
        let Some(o) = open.get_mut(&key) else {
            return Ok(());
        };
        o.file.write_all(bytes)?;
        o.len += bytes.len() as u64;
        Ok(())
    }

    /// One line now.
    pub fn write(&self, site: &SiteId, entry: Entry) {
        if let Err(e) = self.append(site, entry.service, std::slice::from_ref(&entry)) {
            tracing::warn!(site = %site, service = %entry.service, error = %e, "a site log could not be written");
        }
    }

    fn open_segment(&self, site: &SiteId, service: Service, start: u64) -> std::io::Result<Open> {
        crate::unix::create_private_dir(&self.root)?;
        let dir = site_dir(&self.root, site).join(service.as_str());
        std::fs::create_dir_all(&dir)?;
        let path = segment_path(&self.root, site, service, start);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let len = file.metadata()?.len();
        Ok(Open { file, start, len })
    }

    /// Past the site's cap, remove its oldest segments (by modification time), never a
    /// service's newest.
    fn enforce_cap(&self, site: &SiteId, limits: &Limits) -> std::io::Result<()> {
        let mut all = Vec::new();
        for s in Service::ALL {
            let segs = segments(&self.root, site, *s);
            let newest = segs.last().map(|(_, p)| p.clone());
            for (_, p) in segs {
                let Ok(m) = std::fs::metadata(&p) else {
                    continue;
                };
                if Some(&p) != newest.as_ref() {
                    all.push((m.modified().ok(), m.len(), p));
                }
            }
        }
        all.sort_by_key(|(t, _, p)| (*t, p.clone()));
        let mut closed: u64 = all.iter().map(|(_, len, _)| *len).sum();
        for (_, len, p) in all {
            if closed <= limits.closed_budget() {
                break;
            }
            closed = closed.saturating_sub(len);
            std::fs::remove_file(&p)?;
        }
        Ok(())
    }
}

/// What a retention pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub segments: usize,
    pub bytes: u64,
    /// Sites whose logs are all gone (deleted sites past retention).
    pub sites: usize,
}

/// Remove what is past retention under `root` (a site's own in `retention_of`, else
/// `retention`): every segment last written before it, but a live site's newest segment of
/// each service (still being written; its old lines are not shown, [`read`] filters them); a
/// site that is not live loses its folder once nothing of it is younger.
pub fn prune(
    root: &Path,
    retention: std::time::Duration,
    retention_of: &HashMap<SiteId, std::time::Duration>,
    live: &std::collections::HashSet<SiteId>,
) -> std::io::Result<Pruned> {
    let now = std::time::SystemTime::now();
    let mut out = Pruned::default();
    let Ok(dirs) = std::fs::read_dir(root) else {
        return Ok(out);
    };
    for d in dirs.flatten() {
        let Some(name) = d.file_name().to_str().map(SiteId::from) else {
            continue;
        };
        if !d.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let is_live = live.contains(&name);
        let cutoff = now - retention_of.get(&name).copied().unwrap_or(retention);
        let mut left = 0usize;
        for s in Service::ALL {
            let segs = segments(root, &name, *s);
            let newest = segs.last().map(|(_, p)| p.clone());
            for (_, p) in segs {
                let Ok(m) = std::fs::metadata(&p) else {
                    continue;
                };
                let old = m.modified().is_ok_and(|t| t < cutoff);
                if old && !(is_live && Some(&p) == newest.as_ref()) {
                    std::fs::remove_file(&p)?;
                    out.segments += 1;
                    out.bytes += m.len();
                } else {
                    left += 1;
                }
            }
        }
        if !is_live && left == 0 {
            std::fs::remove_dir_all(d.path())?;
            out.sites += 1;
        }
    }
    Ok(out)
}

/// Printable text of output bytes: UTF-8 kept, other bytes and control characters (but tab)
/// as `\xNN`; past `max` bytes cut, with a marker counting the rest.
pub fn printable(bytes: &[u8], max: usize) -> String {
    // Most text is printable ASCII: taken as it is.
    if bytes.len() <= max
        && bytes.iter().all(|b| (0x20..0x7f).contains(b))
        && let Ok(s) = std::str::from_utf8(bytes)
    {
        return s.to_string();
    }
    let (keep, cut) = if bytes.len() > max {
        (&bytes[..max], bytes.len() - max)
    } else {
        (bytes, 0)
    };
    let mut out = String::with_capacity(keep.len());
    for chunk in keep.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && c != '\t' {
                if (c as u32) < 0x100 {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                } else {
                    out.push_str(&format!("\\u{{{:x}}}", c as u32));
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if cut > 0 {
        out.push_str(&format!(" [endor: line cut, {cut} more bytes]"));
    }
    out
}

/// Splits a process's output into lines as it arrives. A line longer than the limit is cut at
/// it: the rest up to its newline is counted and dropped (never held in memory).
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// Bytes of the current line dropped past the limit.
    dropped: usize,
}

impl LineSplitter {
    /// The whole lines `chunk` completes, as printable text.
    pub fn push(&mut self, chunk: &[u8], max: usize, out: &mut Vec<String>) {
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            self.take(&rest[..nl], max);
            out.push(self.finish(max));
            rest = &rest[nl + 1..];
        }
        self.take(rest, max);
    }

    /// What is left of an unfinished line (the stream closed), if anything.
    pub fn flush(&mut self, max: usize) -> Option<String> {
        (!self.buf.is_empty() || self.dropped > 0).then(|| self.finish(max))
    }

    fn take(&mut self, part: &[u8], max: usize) {
        let room = max.saturating_sub(self.buf.len());
        let keep = part.len().min(room);
        self.buf.extend_from_slice(&part[..keep]);
        self.dropped += part.len() - keep;
    }

    fn finish(&mut self, max: usize) -> String {
        let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
        let mut text = printable(line, max);
        if self.dropped > 0 {
            text.push_str(&format!(" [endor: line cut, {} more bytes]", self.dropped));
        }
        self.buf.clear();
        self.dropped = 0;
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_named_and_unknown_ones_listed() {
        assert_eq!(Service::named("web"), Ok(Service::Web));
        let e = Service::named("../../etc/passwd").unwrap_err();
        assert!(
            e.contains("build, web, exec, access, error, endor, postgres, mariadb"),
            "{e}"
        );
    }

    #[test]
    fn output_is_kept_printable_and_long_lines_cut() {
        assert_eq!(printable(b"caf\xc3\xa9 ok\t!", 100), "café ok\t!");
        assert_eq!(
            printable(b"\x1b[31mred\xff\x00", 100),
            "\\x1b[31mred\\xff\\x00"
        );
        assert_eq!(
            printable(b"abcdef", 3),
            "abc [endor: line cut, 3 more bytes]"
        );
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.push(b"one\ntw", 4, &mut out);
        s.push(b"o\r\nxxxxxxxxxx", 4, &mut out);
        s.push(b"yy\nlast", 4, &mut out);
        assert_eq!(out, ["one", "two", "xxxx [endor: line cut, 8 more bytes]"]);
        assert_eq!(s.flush(4).as_deref(), Some("last"));
        assert_eq!(s.flush(4), None);
    }

    #[test]
    fn retention_removes_old_segments_and_gone_sites() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(
            dir.path(),
            Limits {
                max_bytes_per_site: 128 << 10,
                max_line_bytes: 1024,
                ..Default::default()
            },
        );
        let (live, gone) = (SiteId::from("live"), SiteId::from("gone"));
        // Its workspace keeps logs three days.
        let kept = SiteId::from("kept");
        for site in [&live, &gone, &kept] {
            for i in 0..400 {
                let e = Entry::now(Service::Web, None, format!("{i:0100}"));
                logs.write(
                    site,
                    Entry {
                        time: e.time - 2 * 86_400_000,
                        ..e
                    },
                );
            }
        }
        // Every segment written two days ago.
        let old = filetime::FileTime::from_unix_time(crate::now_ms() / 1000 - 2 * 86_400, 0);
        for site in [&live, &gone, &kept] {
            for (_, p) in segments(dir.path(), site, Service::Web) {
                filetime::set_file_mtime(&p, old).unwrap();
            }
        }
        let before = segments(dir.path(), &live, Service::Web).len();
        assert!(before > 1, "{before}");
        let keep: std::collections::HashSet<SiteId> = [live.clone()].into();
        let day = std::time::Duration::from_secs(86_400);
        let own: HashMap<SiteId, std::time::Duration> = [(kept.clone(), day * 3)].into();
        let pruned = prune(dir.path(), day, &own, &keep).unwrap();
        // The live site keeps only the segment being written; the gone site goes whole; the
        // site with its own retention keeps everything.
        assert_eq!(segments(dir.path(), &live, Service::Web).len(), 1);
        assert_eq!(segments(dir.path(), &kept, Service::Web).len(), before);
        assert!(!site_dir(dir.path(), &gone).exists());
        assert_eq!(pruned.sites, 1);
        assert!(pruned.segments >= before, "{pruned:?}");
        // Younger than the retention: nothing goes.
        logs.write(&live, Entry::now(Service::Endor, None, "now".into()));
        let again = prune(dir.path(), day * 3, &HashMap::new(), &keep).unwrap();
        assert_eq!(again, Pruned::default());
        // A reader does not see what is past the retention in the segment kept.
        let (lines, _) = read_since(
            dir.path(),
            &live,
            Service::ALL,
            &Filter::default().within(std::time::Duration::from_secs(60), crate::now_ms()),
            None,
        )
        .unwrap();
        assert_eq!(
            lines.iter().filter(|r| r.entry.time > 0).count(),
            1,
            "{lines:?}"
        );
    }

    #[test]
    fn segments_rotate_and_the_site_stays_under_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(
            dir.path(),
            Limits {
                max_bytes_per_site: 256 << 10,
                max_line_bytes: 1024,
                ..Default::default()
            },
        );
        let site = SiteId::from("s1");
        let line = "x".repeat(100);
        for _ in 0..100 {
            let batch: Vec<Entry> = (0..50)
                .map(|_| Entry::now(Service::Web, Some(Stream::Stdout), line.clone()))
                .collect();
            logs.append(&site, Service::Web, &batch).unwrap();
        }
        logs.write(&site, Entry::now(Service::Endor, None, "launched".into()));
        let total: u64 = Service::ALL
            .iter()
            .flat_map(|s| segments(dir.path(), &site, *s))
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .sum();
        // Written: about 700 KB; kept: at most the cap.
        assert!(total <= 256 << 10, "{total}");
        // A site whose workspace allows more keeps more, still within its own cap.
        let big = SiteId::from("big");
        let mut own = logs.limits();
        own.max_bytes_per_site = 512 << 10;
        logs.set_overrides([(big.clone(), own)].into());
        assert_eq!(logs.limits_of(&big), own);
        assert_eq!(logs.limits_of(&site), logs.limits());
        for _ in 0..100 {
            let batch: Vec<Entry> = (0..50)
                .map(|_| Entry::now(Service::Web, Some(Stream::Stdout), line.clone()))
                .collect();
            logs.append(&big, Service::Web, &batch).unwrap();
        }
        let kept: u64 = segments(dir.path(), &big, Service::Web)
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(kept > 256 << 10 && kept <= 512 << 10, "{kept}");
        let segs = segments(dir.path(), &site, Service::Web);
        assert!(segs.len() > 1 && segs[0].0 > 0, "{segs:?}");
        // A second writer (another process) goes on where the first stopped.
        let other = Logs::new(dir.path(), logs.limits());
        other.write(&site, Entry::now(Service::Endor, None, "updated".into()));
        let endor = segments(dir.path(), &site, Service::Endor);
        assert_eq!(endor.len(), 1, "{endor:?}");
        let text = std::fs::read_to_string(&endor[0].1).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
