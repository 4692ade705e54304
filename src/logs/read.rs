//! Reading a site's logs back: the lines of some of its services after a [`Cursor`], merged by
//! time and filtered, each with the cursor that resumes right after it (what an SSE event id
//! carries: a reconnect with `Last-Event-ID` loses and repeats nothing).

use std::collections::{BTreeMap, HashMap};
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

/// The whole lines of one service's log after `from`, at most `limit` (a line still being
/// written is left for the next read), and whether more are there. When the site's cap
/// removed what `from` points into, a line says how much.
fn read_service(
    root: &Path,
    site: &SiteId,
    s: Service,
    from: u64,
    limit: usize,
) -> std::io::Result<(Vec<Raw>, bool)> {
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
            if out.len() >= limit {
                return Ok((out, true));
            }
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
    Ok((out, false))
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

/// Where a reader is in the logs of several sites (a workspace's): each site's [`Cursor`].
/// Written `SITE=web:1f40,access:a0;SITE=` (a site named with nothing after `=` had no lines
/// yet); a site it does not name appeared since, and is read from its beginning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursors(BTreeMap<SiteId, Cursor>);

/// At most this many sites in one [`Cursors`] (a header a client sends back).
const MAX_CURSOR_SITES: usize = 10_000;

impl Cursors {
    pub fn encode(&self) -> String {
        encode_sites(self.0.iter())
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for part in text.split(';').filter(|p| !p.is_empty()) {
            let bad = || format!("not a site's log position: `{}`", part.escape_debug());
            let (site, cursor) = part.split_once('=').ok_or_else(bad)?;
            let id_ok = !site.is_empty()
                && site.len() <= 64
                && site.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !id_ok {
                return Err(bad());
            }
            map.insert(SiteId::from(site.to_string()), Cursor::parse(cursor)?);
            if map.len() > MAX_CURSOR_SITES {
                return Err(format!("more than {MAX_CURSOR_SITES} sites"));
            }
        }
        Ok(Self(map))
    }
}

fn encode_sites<'a>(sites: impl Iterator<Item = (&'a SiteId, &'a Cursor)>) -> String {
    sites
        .map(|(site, c)| format!("{site}={}", c.encode()))
        .collect::<Vec<_>>()
        .join(";")
}

/// Lines, each with the index of its site, and every site's cursor after them.
type Merged = (Vec<(usize, Record)>, Vec<Cursor>);

/// Lines of `services` of every site in `sites` after `from` (one cursor per site), merged
/// by time, filtered, at most `max`; each record's id made by `id` from every site's cursor
/// after it. Returns each line with the index of its site, and the cursors after the last line
/// looked at (lines the filter drops are passed, not re-read).
fn merge(
    root: &Path,
    sites: &[SiteId],
    services: &[Service],
    mut cursors: Vec<Cursor>,
    filter: &Filter,
    max: usize,
    id: impl Fn(&[Cursor]) -> String,
) -> std::io::Result<Merged> {
    let mut all: Vec<(usize, usize, Raw)> = Vec::new();
    // Per log read: how many of its lines are left to merge, and whether it had more than
    // were read (then the merge stops at its last line read: what comes after it in time
    // may be among its lines not read yet).
    let mut left: HashMap<(usize, usize), (usize, bool)> = HashMap::new();
    for (k, site) in sites.iter().enumerate() {
        for (i, s) in services.iter().enumerate() {
            let (lines, more) = read_service(root, site, *s, cursors[k].at(*s), max)?;
            left.insert((k, i), (lines.len(), more));
            all.extend(lines.into_iter().map(|r| (k, i, r)));
        }
    }
    // By time; within one service of one site in the order written (its positions).
    all.sort_by_key(|(k, i, r)| (r.entry.time, *k, *i, r.end));
    let mut out = Vec::new();
    for (k, i, r) in all {
        if out.len() >= max {
            break;
        }
        let last_read = left.get_mut(&(k, i)).is_some_and(|(n, more)| {
            *n -= 1;
            *n == 0 && *more
        });
        cursors[k].0.insert(r.entry.service.as_str(), r.end);
        if filter.keeps(&r.entry) || r.entry.time == 0 {
            out.push((
                k,
                Record {
                    id: id(&cursors),
                    entry: r.entry,
                },
            ));
        }
        if last_read {
            break;
        }
    }
    Ok((out, cursors))
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
    let sites = std::slice::from_ref(site);
    let (lines, mut cursors) = merge(
        root,
        sites,
        services,
        vec![from.clone()],
        filter,
        max,
        |c| c[0].encode(),
    )?;
    let lines = lines.into_iter().map(|(_, r)| r).collect();
    Ok((lines, cursors.pop().unwrap_or_default()))
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
    keep_last(&mut lines, tail);
    Ok((lines, cursor))
}

fn keep_last<T>(lines: &mut Vec<T>, tail: Option<usize>) {
    if let Some(n) = tail {
        let cut = lines.len().saturating_sub(n);
        lines.drain(..cut);
    }
}

/// The lines of several sites after `from`, merged by time (each with its site), at most
/// `max`; a site `from` does not name is read from its beginning, a site `sites` does not name
/// is forgotten. Each record's id is the [`Cursors`] that resumes after it.
pub fn read_sites(
    root: &Path,
    sites: &[SiteId],
    services: &[Service],
    from: &Cursors,
    filter: &Filter,
    max: usize,
) -> std::io::Result<(Vec<(SiteId, Record)>, Cursors)> {
    let start = sites
        .iter()
        .map(|s| from.0.get(s).cloned().unwrap_or_default())
        .collect();
    let encode = |c: &[Cursor]| encode_sites(sites.iter().zip(c));
    let (lines, cursors) = merge(root, sites, services, start, filter, max, encode)?;
    let lines = lines
        .into_iter()
        .map(|(k, r)| (sites[k].clone(), r))
        .collect();
    Ok((lines, Cursors(sites.iter().cloned().zip(cursors).collect())))
}

/// Every line of several sites from their beginning, merged and filtered; the last `tail`
/// when given.
pub fn read_sites_since(
    root: &Path,
    sites: &[SiteId],
    services: &[Service],
    filter: &Filter,
    tail: Option<usize>,
) -> std::io::Result<(Vec<(SiteId, Record)>, Cursors)> {
    let from = Cursors::default();
    let (mut lines, cursors) = read_sites(root, sites, services, &from, filter, usize::MAX)?;
    keep_last(&mut lines, tail);
    Ok((lines, cursors))
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
    fn several_sites_merge_by_time_and_resume_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path(), Limits::default());
        let (a, b, c) = (SiteId::from("a1"), SiteId::from("b2"), SiteId::from("c3"));
        let at = |t: i64, text: &str| Entry {
            time: t,
            ..Entry::now(Service::Web, Some(Stream::Stdout), text.into())
        };
        logs.append(&a, Service::Web, &[at(1, "a1"), at(4, "a4")])
            .unwrap();
        logs.append(&b, Service::Web, &[at(2, "b2"), at(3, "b3")])
            .unwrap();
        let web = [Service::Web];
        let none = Filter::default();
        let two = [a.clone(), b.clone()];
        let (lines, _) = read_sites_since(dir.path(), &two, &web, &none, Some(3)).unwrap();
        let seen: Vec<(&str, &str)> = lines
            .iter()
            .map(|(s, r)| (s.as_str(), r.entry.text.as_str()))
            .collect();
        assert_eq!(seen, [("b2", "b2"), ("b2", "b3"), ("a1", "a4")]);
        // Resume after "b3": only "a4", then what came since, a new site's from its start.
        let from = Cursors::parse(&lines[1].1.id).unwrap();
        logs.append(&b, Service::Web, &[at(5, "b5")]).unwrap();
        logs.append(&c, Service::Web, &[at(0, "c0")]).unwrap();
        let three = [a.clone(), b.clone(), c.clone()];
        let (rest, end) = read_sites(dir.path(), &three, &web, &from, &none, 100).unwrap();
        let texts: Vec<&str> = rest.iter().map(|(_, r)| r.entry.text.as_str()).collect();
        assert_eq!(texts, ["c0", "a4", "b5"]);
        assert_eq!(Cursors::parse(&rest[2].1.id).unwrap(), end);
        let (after, _) = read_sites(dir.path(), &three, &web, &end, &none, 100).unwrap();
        assert!(after.is_empty());
        for bad in ["a1", "=web:1", "a 1=web:1", "a1=web:zz", "a1=web:1;b2"] {
            assert!(Cursors::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_reader_in_small_batches_gets_every_line_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path(), Limits::default());
        let site = SiteId::from("s1");
        let at = |t: i64, s: Service| Entry {
            time: t,
            ..Entry::now(s, None, format!("{s} {t}"))
        };
        // Web has many lines, access a few, interleaved in time.
        let web: Vec<Entry> = (0..50).map(|t| at(t * 2, Service::Web)).collect();
        logs.append(&site, Service::Web, &web).unwrap();
        let access: Vec<Entry> = [3, 9, 61].iter().map(|t| at(*t, Service::Access)).collect();
        logs.append(&site, Service::Access, &access).unwrap();
        let both = [Service::Web, Service::Access];
        let texts = |v: &[Record]| v.iter().map(|r| r.entry.text.clone()).collect::<Vec<_>>();
        // Without a filter, and with one that drops most web lines.
        for (filter, count) in [
            (Filter::default(), 53),
            (
                Filter {
                    grep: Some("1".into()),
                    ..Default::default()
                },
                7,
            ),
        ] {
            let (all, _) = read_since(dir.path(), &site, &both, &filter, None).unwrap();
            let mut got = Vec::new();
            let mut cursor = Cursor::default();
            for _ in 0..100 {
                let (batch, next) = read(dir.path(), &site, &both, &cursor, &filter, 4).unwrap();
                assert!(batch.len() <= 4);
                got.extend(batch);
                if next == cursor {
                    break;
                }
                cursor = next;
            }
            assert_eq!(texts(&got), texts(&all));
            assert_eq!(got.len(), count, "{:?}", texts(&got));
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
                ..Default::default()
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
