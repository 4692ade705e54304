//! Reading a site's logs back: the lines of some of its services after a [`Cursor`], merged by
//! time and filtered, each with the cursor that resumes right after it (what an SSE event id
//! carries: a reconnect with `Last-Event-ID` loses and repeats nothing).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::{Entry, Service, segments};
use crate::ids::SiteId;

/// Where a reader is in each service's log: the position after the last line it has read
/// (a service it has not read: its beginning). Written `web:1f40,access:a0` (hex).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<&'static str, u64>);

impl Cursor {
    pub fn encode(&self) -> String {
        self.0
            .iter()
            .map(|(s, p)| format!("{s}:{p:x}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let bad = || format!("not a log position: `{}`", part.escape_debug());
            let (s, p) = part.split_once(':').ok_or_else(bad)?;
            let service = Service::parse(s).ok_or_else(bad)?;
            let pos = u64::from_str_radix(p, 16).map_err(|_| bad())?;
            map.insert(service.as_str(), pos);
        }
        Ok(Self(map))
    }

    fn at(&self, s: Service) -> u64 {
        self.0.get(s.as_str()).copied().unwrap_or(0)
    }

    /// The cursor at the end of every log of `services` now (a follower that wants only what
    /// comes next).
    pub fn end(root: &Path, site: &SiteId, services: &[Service]) -> Self {
        let mut map = BTreeMap::new();
        for s in services {
            if let Some((start, path)) = segments(root, site, *s).last() {
                let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                map.insert(s.as_str(), start + len);
            }
        }
        Self(map)
    }
}

/// A time a reader names: `10m` (that long ago; `s`, `m`, `h`, `d`) or an RFC 3339 time, as
/// ms since the epoch.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(d) = text.parse::<crate::duration::HumanDuration>() {
        return Ok(now_ms - d.0.as_millis() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            format!(
                "`{}` is neither a duration (10m, 2h, 1d) nor an RFC 3339 time (2026-11-30T12:00:00Z)",
                text.escape_debug()
            )
        })
}

/// A line as a person reads it: `TIME SERVICE[/STREAM] TEXT`.
pub fn line_text(e: &Entry) -> String {
    let time = chrono::DateTime::from_timestamp_millis(e.time)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "-".into());
    match e.stream {
        Some(s) => {
            let s = match s {
                super::Stream::Stdout => "stdout",
                super::Stream::Stderr => "stderr",
            };
            format!("{time} {}/{s} {}", e.service, e.text)
        }
        None => format!("{time} {} {}", e.service, e.text),
    }
}

/// Which lines a reader wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Lines at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// Lines before this time.
    pub until: Option<i64>,
    /// Lines whose text (or a field's value) contains this, case-sensitively.
    pub grep: Option<String>,
}

impl Filter {
    /// The same, but nothing older than `retention` (lines past it are not shown even while
    /// their segment is kept).
    pub fn within(mut self, retention: std::time::Duration, now_ms: i64) -> Self {
        let floor = now_ms - retention.as_millis() as i64;
        self.since = Some(self.since.map_or(floor, |s| s.max(floor)));
        self
    }

    fn keeps(&self, e: &Entry) -> bool {
        self.since.is_none_or(|t| e.time >= t)
            && self.until.is_none_or(|t| e.time < t)
            && self.grep.as_deref().is_none_or(|g| {
                e.text.contains(g)
                    || e.fields.values().any(|v| match v {
                        serde_json::Value::String(s) => s.contains(g),
                        other => other.to_string().contains(g),
                    })
            })
    }
}

/// A line read, with the cursor that resumes after it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Record {
    pub id: String,
    #[serde(flatten)]
    pub entry: Entry,
}

/// A whole line of a service's log and the position after it.
struct Raw {
    entry: Entry,
    end: u64,
}

/// The whole lines of one service's log after `from` (a line still being written is left for
/// the next read). When the site's cap removed what `from` points into, a line says how much.
fn read_service(root: &Path, site: &SiteId, s: Service, from: u64) -> std::io::Result<Vec<Raw>> {
    let segs = segments(root, site, s);
    let mut out = Vec::new();
    let mut pos = from;
    if let Some((first, _)) = segs.first()
        && pos < *first
    {
        let mut note = Entry::now(
            s,
            None,
            format!(
                "[endor] {} bytes of older lines of this log are gone (logs.max_bytes_per_site, logs.retention)",
                first - pos
            ),
        );
        note.time = 0;
        out.push(Raw {
            entry: note,
            end: *first,
        });
        pos = *first;
    }
    for (i, (start, path)) in segs.iter().enumerate() {
        let next = segs.get(i + 1).map(|(n, _)| *n);
        if next.is_some_and(|n| n <= pos) {
            continue;
        }
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            // Removed by the cap between the listing and now: the next read says so.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        };
        let skip = pos.saturating_sub(*start);
        f.seek(SeekFrom::Start(skip))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        let mut at = *start + skip;
        let mut rest = &bytes[..];
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let line = &rest[..nl];
            at += nl as u64 + 1;
            rest = &rest[nl + 1..];
            let entry = match serde_json::from_slice::<Entry>(line) {
                Ok(e) if e.text.is_empty() && e.service == Service::Access => access_text(e),
                Ok(e) => e,
                Err(_) => Entry::now(
                    s,
                    None,
                    format!(
                        "[endor] an unreadable line: {}",
                        super::printable(line, 200)
                    ),
                ),
            };
            out.push(Raw { entry, end: at });
        }
        pos = at;
    }
    Ok(out)
}

/// An access line's text, from its fields: `VISITOR METHOD PATH STATUS BYTES DURATIONms "UA"
/// [user=USER]`.
fn access_text(mut e: Entry) -> Entry {
    let f = |k: &str| match e.fields.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "-".to_string(),
    };
    let user = match e.fields.get("user") {
        Some(serde_json::Value::String(u)) => format!(" user={u}"),
        _ => String::new(),
    };
    let ms = e
        .fields
        .get("duration_ms")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    e.text = format!(
        "{} {} {} {} {} {ms:.1}ms \"{}\"{user}",
        f("visitor"),
        f("method"),
        f("path"),
        f("status"),
        f("bytes"),
        f("user_agent"),
    );
    e
}

/// Lines of `services` after `from`, merged by time and filtered, at most `max` of them, and
/// the cursor after the last line looked at (lines the filter drops are passed, not re-read).
pub fn read(
    root: &Path,
    site: &SiteId,
    services: &[Service],
    from: &Cursor,
    filter: &Filter,
    max: usize,
) -> std::io::Result<(Vec<Record>, Cursor)> {
    let mut all: Vec<(usize, Raw)> = Vec::new();
    for (i, s) in services.iter().enumerate() {
        all.extend(
            read_service(root, site, *s, from.at(*s))?
                .into_iter()
                .map(|r| (i, r)),
        );
    }
    // By time; within one service in the order written (its positions).
    all.sort_by_key(|(i, r)| (r.entry.time, *i, r.end));
    let mut cursor = from.clone();
    let mut out = Vec::new();
    for (_, r) in all {
        if out.len() >= max {
            break;
        }
        cursor.0.insert(r.entry.service.as_str(), r.end);
        if filter.keeps(&r.entry) || r.entry.time == 0 {
            out.push(Record {
                id: cursor.encode(),
                entry: r.entry,
            });
        }
    }
    Ok((out, cursor))
}

/// Every line of `services` from their beginning, filtered; the last `tail` when given.
pub fn read_since(
    root: &Path,
    site: &SiteId,
    services: &[Service],
    filter: &Filter,
    tail: Option<usize>,
) -> std::io::Result<(Vec<Record>, Cursor)> {
    let (mut lines, cursor) = read(root, site, services, &Cursor::default(), filter, usize::MAX)?;
    if let Some(n) = tail {
        let cut = lines.len().saturating_sub(n);
        lines.drain(..cut);
    }
    Ok((lines, cursor))
}

#[cfg(test)]
mod tests {
    use super::super::{Limits, Logs, Stream};
    use super::*;

    #[test]
    fn lines_merge_by_time_and_a_cursor_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path(), Limits::default());
        let site = SiteId::from("s1");
        let at = |t: i64, s: Service, text: &str| Entry {
            time: t,
            ..Entry::now(s, Some(Stream::Stdout), text.into())
        };
        logs.append(
            &site,
            Service::Web,
            &[at(1, Service::Web, "a"), at(3, Service::Web, "c")],
        )
        .unwrap();
        logs.append(&site, Service::Access, &[at(2, Service::Access, "b GET /")])
            .unwrap();
        let both = [Service::Web, Service::Access];
        let (lines, end) = read(
            dir.path(),
            &site,
            &both,
            &Cursor::default(),
            &Filter::default(),
            2,
        )
        .unwrap();
        let texts: Vec<&str> = lines.iter().map(|r| r.entry.text.as_str()).collect();
        assert_eq!(texts, ["a", "b GET /"]);
        // Resume from the last event id: the rest, nothing twice.
        let from = Cursor::parse(&lines[1].id).unwrap();
        assert_eq!(from, end);
        logs.append(&site, Service::Web, &[at(4, Service::Web, "d")])
            .unwrap();
        let (rest, _) = read(dir.path(), &site, &both, &from, &Filter::default(), 10).unwrap();
        let texts: Vec<&str> = rest.iter().map(|r| r.entry.text.as_str()).collect();
        assert_eq!(texts, ["c", "d"]);
        // Filters.
        let grep = Filter {
            grep: Some("GET".into()),
            ..Default::default()
        };
        let (hits, _) = read_since(dir.path(), &site, &both, &grep, None).unwrap();
        assert_eq!(hits.len(), 1);
        let window = Filter {
            since: Some(2),
            until: Some(4),
            ..Default::default()
        };
        let (hits, _) = read_since(dir.path(), &site, &both, &window, None).unwrap();
        assert_eq!(hits.len(), 2);
        let (tail, _) = read_since(dir.path(), &site, &both, &Filter::default(), Some(1)).unwrap();
        assert_eq!(tail[0].entry.text, "d");
        for bad in ["web", "web:zz", "nope:1", "web:1,x"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_reader_behind_the_cap_is_told_what_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(
            dir.path(),
            Limits {
                max_bytes_per_site: 64 << 10,
                max_line_bytes: 1024,
            },
        );
        let site = SiteId::from("s1");
        for i in 0..2000 {
            logs.write(
                &site,
                Entry::now(Service::Web, None, format!("line {i:05}")),
            );
        }
        let (lines, _) =
            read_since(dir.path(), &site, &[Service::Web], &Filter::default(), None).unwrap();
        assert!(
            lines[0]
                .entry
                .text
                .contains("bytes of older lines of this log are gone")
        );
        assert_eq!(lines.last().unwrap().entry.text, "line 01999");
        let numbers: Vec<&str> = lines[1..].iter().map(|r| r.entry.text.as_str()).collect();
        let mut sorted = numbers.clone();
        sorted.sort();
        assert_eq!(numbers, sorted, "in order, none twice");
    }
}
