//! Database servers' own logs, shipped into a site's `postgres` / `mariadb` services: the
//! servers write their files (PostgreSQL its stderr, MariaDB its error log and slow log), and
//! [`Logs::ship`] appends what is new since the last look as structured lines, a slow
//! statement with its duration and text as fields. Where each file was read up to is kept in
//! `{logs}/{site}/shipped.json`, so a restart of endor neither repeats nor skips lines.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{Entry, Logs, Service, printable, site_dir};
use crate::ids::SiteId;

/// A file a database server writes, and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerLog {
    /// PostgreSQL's stderr (`%m [%p] ` prefixed lines; slow statements as
    /// `duration: … ms  statement: …`).
    Postgres(PathBuf),
    /// MariaDB's error log.
    MariadbErrors(PathBuf),
    /// MariaDB's slow query log (a block of `#` lines, then the statement).
    MariadbSlow(PathBuf),
}

impl ServerLog {
    /// The file `path` a server writes, by what it is (`postgres`, `mariadb`, `mariadb-slow`:
    /// `crate::clone::server_logs`).
    pub fn named(what: &str, path: PathBuf) -> Option<Self> {
        match what {
            "postgres" => Some(Self::Postgres(path)),
            "mariadb" => Some(Self::MariadbErrors(path)),
            "mariadb-slow" => Some(Self::MariadbSlow(path)),
            _ => None,
        }
    }

    fn path(&self) -> &Path {
        match self {
            Self::Postgres(p) | Self::MariadbErrors(p) | Self::MariadbSlow(p) => p,
        }
    }

    fn service(&self) -> Service {
        match self {
            Self::Postgres(_) => Service::Postgres,
            _ => Service::Mariadb,
        }
    }

    /// The entries of `text` (whole lines) and how many of its bytes they used (the rest, an
    /// unfinished slow-log block, waits for the next look).
    fn parse(&self, text: &str, max: usize) -> (Vec<Entry>, usize) {
        let line: fn(&str, usize) -> Entry = match self {
            Self::Postgres(_) => postgres_line,
            Self::MariadbErrors(_) => mariadb_error_line,
            Self::MariadbSlow(_) => return mariadb_slow_blocks(text, max),
        };
        // A line without a time of its own (a statement's next line) has the one before's.
        let mut last: Option<i64> = None;
        let entries = text
            .lines()
            .map(|l| {
                let (mut e, own) = (line(l, max), has_time(l));
                match (own, last) {
                    (true, _) => last = Some(e.time),
                    (false, Some(t)) => e.time = t,
                    (false, None) => {}
                }
                e
            })
            .collect();
        (entries, text.len())
    }
}

/// A server's file is emptied once read to its end past this size (it is kept in the site's
/// log, capped there).
const ROTATE_AT: u64 = 8 << 20;
/// At most this much of a file is read at one look.
const READ_AT_MOST: u64 = 4 << 20;

impl Logs {
    /// Append to `site`'s logs what each of `files` gained since the last look. Returns the
    /// lines appended.
    pub fn ship(&self, site: &SiteId, files: &[ServerLog]) -> std::io::Result<usize> {
        let state = site_dir(self.root(), site).join("shipped.json");
        let mut offsets: BTreeMap<String, u64> = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let max = self.limits_of(site).max_line_bytes;
        let mut appended = 0;
        let mut changed = false;
        for f in files {
            let key = f.path().display().to_string();
            let Ok(mut file) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(f.path())
            else {
                continue;
            };
            let len = file.metadata()?.len();
            let mut from = offsets.get(&key).copied().unwrap_or(0);
            if from > len {
                // Emptied or replaced since: from its start.
                from = 0;
            }
            if from == len {
                continue;
            }
            file.seek(SeekFrom::Start(from))?;
            let mut bytes = Vec::new();
            (&mut file).take(READ_AT_MOST).read_to_end(&mut bytes)?;
            // Whole lines only: a line being written waits.
            let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes[..=end]);
            let (entries, used) = f.parse(&text, max);
            // `used` counts bytes of the (lossy) text: map it back onto the file's bytes.
            let used = if used == text.len() {
                end + 1
            } else {
                used.min(end + 1)
            };
            if !entries.is_empty() {
                self.append(site, f.service(), &entries)?;
                appended += entries.len();
            }
            let mut at = from + used as u64;
            if at == len && at >= ROTATE_AT {
                // Read to its end and big: start it again (the server appends, O_APPEND).
                file.set_len(0)?;
                at = 0;
            }
            offsets.insert(key, at);
            changed = true;
        }
        if changed {
            std::fs::create_dir_all(site_dir(self.root(), site))?;
            let tmp = state.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec(&offsets).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, &state)?;
        }
        Ok(appended)
    }
}

/// Does a server's line start with its time (`2026-11-30 22:50:01`)?
fn has_time(line: &str) -> bool {
    line.get(..19)
        .is_some_and(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").is_ok())
}

/// An entry at `time` (now when the line does not say).
fn entry(service: Service, time: Option<i64>, text: &str, max: usize) -> Entry {
    let mut e = Entry::now(service, None, printable(text.as_bytes(), max));
    if let Some(t) = time {
        e.time = t;
    }
    e
}

/// `2026-11-30 22:50:01.123 UTC [1234] LOG:  duration: 301.456 ms  statement: SELECT …`
fn postgres_line(line: &str, max: usize) -> Entry {
    let time = line
        .get(..27)
        .and_then(|t| t.strip_suffix(" UTC"))
        .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.3f").ok())
        .map(|t| t.and_utc().timestamp_millis());
    let rest = if time.is_some() { &line[28..] } else { line };
    let mut e = entry(Service::Postgres, time, rest, max);
    if let Some((_, after)) = rest.split_once("duration: ")
        && let Some((ms, statement)) = after.split_once(" ms  statement: ")
        && let Ok(ms) = ms.trim().parse::<f64>()
    {
        e = e
            .with("slow", true)
            .with("duration_ms", ms)
            .with("statement", printable(statement.as_bytes(), max));
    }
    e
}

/// `2026-11-30 22:50:01 0 [Note] …`
fn mariadb_error_line(line: &str, max: usize) -> Entry {
    let time = line
        .get(..19)
        .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").ok())
        .map(|t| t.and_utc().timestamp_millis());
    entry(Service::Mariadb, time, line, max)
}

/// One statement of a slow log, as its lines come.
#[derive(Default)]
struct SlowBlock<'a> {
    seconds: Option<f64>,
    time: Option<i64>,
    user: Option<String>,
    statement: Vec<&'a str>,
}

impl SlowBlock<'_> {
    fn entry(self, max: usize) -> Entry {
        let statement = self.statement.join(" ");
        let ms = self.seconds.unwrap_or(0.0) * 1000.0;
        let mut e = entry(
            Service::Mariadb,
            self.time,
            &format!("slow query {ms:.1} ms: {statement}"),
            max,
        )
        .with("slow", true)
        .with("duration_ms", ms)
        .with("statement", printable(statement.as_bytes(), max));
        if let Some(u) = self.user {
            e = e.with("user", u);
        }
        e
    }
}

/// The complete blocks of a slow log: `# Time:`/`# User@Host:`/`# Query_time: 0.30 …` lines,
/// `SET timestamp=…;`, then the statement up to a line ending in `;`. Lines before the first
/// block (the file's header) are passed over.
fn mariadb_slow_blocks(text: &str, max: usize) -> (Vec<Entry>, usize) {
    let mut out = Vec::new();
    let mut used = 0;
    let mut at = 0;
    let mut block: Option<SlowBlock> = None;
    for line in text.split_inclusive('\n') {
        at += line.len();
        let l = line.trim_end_matches(['\n', '\r']);
        if let Some(meta) = l.strip_prefix("# ") {
            if block.as_ref().is_some_and(|b| !b.statement.is_empty()) {
                // A new block before the last ended with `;`: take what there was.
                out.extend(block.take().map(|b| b.entry(max)));
                used = at - line.len();
            }
            let b = block.get_or_insert_with(SlowBlock::default);
            if let Some(q) = meta.strip_prefix("Query_time: ") {
                b.seconds = q.split_whitespace().next().and_then(|s| s.parse().ok());
            } else if let Some(u) = meta.strip_prefix("User@Host: ") {
                b.user = u.split('[').next().map(|s| s.trim().to_string());
            }
            continue;
        }
        let Some(b) = block.as_mut() else {
            // The header of the file.
            used = at;
            continue;
        };
        if let Some(ts) = l.strip_prefix("SET timestamp=") {
            b.time = ts
                .trim_end_matches(';')
                .parse::<i64>()
                .ok()
                .map(|s| s * 1000);
        } else if !(l.starts_with("use ") && l.ends_with(';') && b.statement.is_empty()) {
            b.statement.push(l);
            if l.ends_with(';') {
                out.extend(block.take().map(|b| b.entry(max)));
                used = at;
            }
        }
    }
    (out, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_lines_keep_their_time_and_slow_statements_their_fields() {
        let e = postgres_line(
            "2026-11-30 22:50:01.123 UTC [1234] LOG:  duration: 301.456 ms  statement: SELECT pg_sleep(0.3)",
            1024,
        );
        assert_eq!(e.service, Service::Postgres);
        assert_eq!(e.time, 1_796_079_001_123);
        assert_eq!(e.fields["duration_ms"], 301.456);
        assert_eq!(e.fields["statement"], "SELECT pg_sleep(0.3)");
        assert!(e.text.starts_with("[1234] LOG:  duration"), "{}", e.text);
        let plain = postgres_line("\tcontinued \u{1b}[31m", 1024);
        assert_eq!(plain.text, "\tcontinued \\x1b[31m");
        assert!(plain.fields.is_empty());
    }

    #[test]
    fn mariadb_slow_blocks_are_whole_statements() {
        let log = "/usr/sbin/mariadbd, Version: 10.11.6-MariaDB-0+deb12u1-log (Debian 12). started with:\n\
Tcp port: 0  Unix socket: /x/mysqld.sock\n\
Time\t\t    Id Command\tArgument\n\
# Time: 261130 22:50:01\n\
# User@Host: app[app] @ localhost []\n\
# Thread_id: 8  Schema: app  QC_hit: No\n\
# Query_time: 0.300412  Lock_time: 0.000000  Rows_sent: 1  Rows_examined: 0\n\
# Rows_affected: 0  Bytes_sent: 64\n\
use app;\n\
SET timestamp=1796079001;\n\
SELECT SLEEP(0.3);\n\
# User@Host: app[app] @ localhost []\n\
# Query_time: 1.5  Lock_time: 0.0\n\
SET timestamp=1796079002;\n\
SELECT *\n";
        let (entries, used) = mariadb_slow_blocks(log, 1024);
        assert_eq!(entries.len(), 1, "{entries:?}");
        let e = &entries[0];
        assert_eq!(e.time, 1_796_079_001_000);
        assert_eq!(e.fields["statement"], "SELECT SLEEP(0.3);");
        assert_eq!(e.fields["user"], "app");
        assert!((e.fields["duration_ms"].as_f64().unwrap() - 300.412).abs() < 1e-6);
        // The unfinished block waits for the rest.
        assert_eq!(&log[used..used + 14], "# User@Host: a");
        let rest = format!("{}  FROM t;\n", &log[used..]);
        let (more, used2) = mariadb_slow_blocks(&rest, 1024);
        assert_eq!(more.len(), 1);
        assert_eq!(used2, rest.len());
        assert_eq!(more[0].fields["statement"], "SELECT *   FROM t;");
    }

    #[test]
    fn shipping_appends_what_is_new_once() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(&dir.path().join("logs"), Default::default());
        let site = SiteId::from("s1");
        let server = dir.path().join("server.log");
        std::fs::write(
            &server,
            "2025-11-30 22:50:01.123 UTC [1] LOG:  ready\npartial",
        )
        .unwrap();
        let files = [ServerLog::Postgres(server.clone())];
        assert_eq!(logs.ship(&site, &files).unwrap(), 1);
        assert_eq!(logs.ship(&site, &files).unwrap(), 0, "nothing new");
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&server)
            .unwrap();
        f.write_all(b" line\n").unwrap();
        // Another writer (a restarted endor) goes on where the first stopped.
        let again = Logs::new(&dir.path().join("logs"), Default::default());
        assert_eq!(again.ship(&site, &files).unwrap(), 1);
        let (lines, _) = super::super::read_since(
            &dir.path().join("logs"),
            &site,
            &[Service::Postgres],
            &Default::default(),
            None,
        )
        .unwrap();
        let texts: Vec<&str> = lines.iter().map(|r| r.entry.text.as_str()).collect();
        assert_eq!(texts, ["[1] LOG:  ready", "partial line"]);
        // A file emptied by someone else: read from its start.
        std::fs::write(&server, "fresh\n").unwrap();
        assert_eq!(logs.ship(&site, &files).unwrap(), 1);
        // A file that is not there: nothing, no error.
        let gone = [ServerLog::MariadbSlow(dir.path().join("nope.log"))];
        assert_eq!(logs.ship(&site, &gone).unwrap(), 0);
    }
}
