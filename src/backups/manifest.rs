//! A backup's manifest: every file's SHA-256 in the generation backed up (the files, the
//! SQLite files, and the PostgreSQL and MariaDB data directories byte for byte), and every
//! SQLite table's row count and checksum. A drill restores the backup and compares, then asks
//! every PostgreSQL and MariaDB table of the started scratch site for a count.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::BackupError;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Path (relative to the generation) → SHA-256, hex.
    pub files: BTreeMap<String, String>,
    /// `DB/TABLE` → (rows, SHA-256 of the rows in sorted order).
    pub tables: BTreeMap<String, (i64, String)>,
}

fn io(p: &Path, e: std::io::Error) -> BackupError {
    BackupError::Tool(format!("{}: {e}", p.display()))
}

/// A table or column name as an SQL identifier: double-quoted, inner quotes doubled (names
/// come from the site's own database; they are never spliced in any other way).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Manifest {
    /// The manifest of the generation in `dir`.
    pub async fn of(dir: &Path) -> Result<Self, BackupError> {
        let mut m = Manifest::default();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).map_err(|e| io(&d, e))? {
                let entry = entry.map_err(|e| io(&d, e))?;
                let path = entry.path();
                let kind = entry.file_type().map_err(|e| io(&path, e))?;
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    let rel = path
                        .strip_prefix(dir)
                        .unwrap_or(&path)
                        .display()
                        .to_string();
                    m.files.insert(rel, file_sha256(&path)?);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(dir.join("sqlite")) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "db") {
                    let db = p
                        .file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .to_string();
                    for (table, v) in sqlite_tables(&p).await? {
                        m.tables.insert(format!("{db}/{table}"), v);
                    }
                }
            }
        }
        Ok(m)
    }

    /// What differs from `want` (empty: nothing).
    pub fn differences(&self, want: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        for (f, sum) in &want.files {
            match self.files.get(f) {
                None => out.push(format!("file {f} is missing")),
                Some(s) if s != sum => out.push(format!("file {f} differs")),
                _ => {}
            }
        }
        for f in self.files.keys().filter(|f| !want.files.contains_key(*f)) {
            out.push(format!("file {f} was not backed up"));
        }
        for (t, (rows, sum)) in &want.tables {
            match self.tables.get(t) {
                None => out.push(format!("table {t} is missing")),
                Some((r, _)) if r != rows => {
                    out.push(format!("table {t} has {r} rows, not {rows}"))
                }
                Some((_, s)) if s != sum => out.push(format!("table {t}'s rows differ")),
                _ => {}
            }
        }
        out
    }
}

fn file_sha256(path: &Path) -> Result<String, BackupError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Every table of a SQLite file (opened read-only): its rows and a checksum of them.
pub async fn sqlite_tables(file: &Path) -> Result<BTreeMap<String, (i64, String)>, BackupError> {
    use sqlx::Connection;
    let db = |e: sqlx::Error| BackupError::Tool(format!("{}: {e}", file.display()));
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(file)
        .read_only(true)
        .immutable(true);
    let mut c = sqlx::SqliteConnection::connect_with(&opts)
        .await
        .map_err(db)?;
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut c)
    .await
    .map_err(db)?;
    let mut out = BTreeMap::new();
    for (table,) in tables {
        let cols: Vec<(String,)> = sqlx::query_as("SELECT name FROM pragma_table_info($1)")
            .bind(&table)
            .fetch_all(&mut c)
            .await
            .map_err(db)?;
        if cols.is_empty() {
            continue;
        }
        let row = cols
            .iter()
            .map(|(c,)| format!("quote({})", ident(c)))
            .collect::<Vec<_>>()
            .join(" || '|' || ");
        let mut rows: Vec<(String,)> =
            sqlx::query_as(&format!("SELECT {row} FROM {}", ident(&table)))
                .fetch_all(&mut c)
                .await
                .map_err(db)?;
        rows.sort();
        let mut h = sha2::Sha256::new();
        for (r,) in &rows {
            h.update(r.as_bytes());
            h.update(b"\n");
        }
        out.insert(table, (rows.len() as i64, hex::encode(h.finalize())));
    }
    c.close().await.map_err(db)?;
    Ok(out)
}

/// Every table of a running PostgreSQL database answers a count: its rows by table.
pub async fn postgres_tables(url: &str) -> Result<BTreeMap<String, i64>, BackupError> {
    use sqlx::Connection;
    let db = |e: sqlx::Error| BackupError::Tool(format!("postgres: {e}"));
    let mut c = sqlx::PgConnection::connect(url).await.map_err(db)?;
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&mut c)
    .await
    .map_err(db)?;
    let mut out = BTreeMap::new();
    for (schema, table) in tables {
        let (n,): (i64,) = sqlx::query_as(&format!(
            "SELECT count(*) FROM {}.{}",
            ident(&schema),
            ident(&table)
        ))
        .fetch_one(&mut c)
        .await
        .map_err(db)?;
        out.insert(format!("{schema}.{table}"), n);
    }
    c.close().await.map_err(db)?;
    Ok(out)
}

/// Every table of a running MariaDB database answers a count: its rows by table. Through the
/// `mariadb` client (no shell; the password in its environment), at the app's `mysql://` URL
/// (by its socket or 127.0.0.1).
pub async fn mariadb_tables(url: &str) -> Result<BTreeMap<String, i64>, BackupError> {
    let u = reqwest::Url::parse(url).map_err(|e| BackupError::Tool(format!("mariadb URL: {e}")))?;
    let db = u.path().trim_start_matches('/').to_string();
    let mut how: Vec<String> = vec!["--no-defaults".into(), "-u".into(), u.username().into()];
    match u.query_pairs().find(|(k, _)| k == "socket") {
        Some((_, socket)) => how.push(format!("--socket={socket}")),
        None => how.extend([
            "-h".into(),
            "127.0.0.1".into(),
            "-P".into(),
            u.port().unwrap_or(3306).to_string(),
        ]),
    }
    let password = u.password().unwrap_or_default().to_string();
    let run = |sql: String| {
        let mut c = tokio::process::Command::new("mariadb");
        c.args(&how)
            .args(["-N", "-B", &db, "-e", &sql])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/bin")
            .env("MYSQL_PWD", &password)
            .stdin(std::process::Stdio::null());
        async move {
            let out = c
                .output()
                .await
                .map_err(|e| BackupError::Tool(format!("cannot run mariadb: {e}")))?;
            if !out.status.success() {
                return Err(BackupError::Tool(format!(
                    "mariadb: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    };
    let tables = run("SELECT table_name FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'"
        .into())
    .await?;
    let mut out = BTreeMap::new();
    for table in tables.lines().map(str::trim).filter(|t| !t.is_empty()) {
        let quoted = format!("`{}`", table.replace('`', "``"));
        let n = run(format!("SELECT COUNT(*) FROM {quoted}")).await?;
        let n: i64 = n
            .trim()
            .parse()
            .map_err(|_| BackupError::Tool(format!("mariadb: count of {table}: {n}")))?;
        out.insert(table.to_string(), n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(super::ident("accounts"), "\"accounts\"");
        assert_eq!(
            super::ident("a\"; DROP TABLE x; --"),
            "\"a\"\"; DROP TABLE x; --\""
        );
    }
}
