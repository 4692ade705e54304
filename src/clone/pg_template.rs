//! PostgreSQL, strategy `template`: site databases live on one shared server
//! (`postgres.admin_url`); a clone is `CREATE DATABASE clone TEMPLATE generation`.
//!
//! The generation is made from the parent with `pg_dump | psql` into a database of its own:
//! consistent (pg_dump reads one snapshot) and never blocking the parent. `CREATE DATABASE ...
//! TEMPLATE parent` would need every connection to the parent gone for the length of a copy,
//! which is not a brief lock. Clones copy the generation database, whose time grows with its
//! size (the shared server copies files); strategy `instance` is the size-independent one.
//!
//! Each site database has a login role of its own (`{db}_owner`, random password) that owns
//! every object inside it; the databases themselves belong to the admin, so moving object
//! ownership (`REASSIGN OWNED`) in a clone never touches another database. Names are derived
//! from ids we generate (hex), and quoted anyway. The site's directory keeps `template.json`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::common::{fresh_password, load_record, save_record};
use super::{CloneError, CloneStats, Strategy};

#[derive(Debug, Clone)]
pub struct Template {
    admin_url: String,
}

/// One site database on the shared server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateDb {
    pub db: String,
    pub role: String,
    pub password: String,
    pub host: String,
    pub port: u16,
}

impl TemplateDb {
    pub fn url(&self) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{}",
            self.role, self.password, self.host, self.port, self.db
        )
    }
}

fn refused(what: &str) -> impl FnOnce(sqlx::Error) -> CloneError + '_ {
    move |e| CloneError::Refused(format!("{what}: {e}"))
}

/// `"name"`, for identifiers we generated (hex and `_` only; checked).
fn ident(name: &str) -> Result<String, CloneError> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(CloneError::Refused(format!(
            "unsafe database name {name:?}"
        )));
    }
    Ok(format!("\"{name}\""))
}

impl Template {
    pub fn new(admin_url: &str) -> Result<Self, CloneError> {
        if !(admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://")) {
            return Err(CloneError::Refused(
                "postgres.admin_url must be a postgres:// URL".into(),
            ));
        }
        Ok(Self {
            admin_url: admin_url.to_string(),
        })
    }

    async fn admin(&self) -> Result<PgConnection, CloneError> {
        PgConnection::connect(&self.admin_url)
            .await
            .map_err(refused("connect to postgres.admin_url"))
    }

    /// The admin URL pointed at another database (for psql).
    fn admin_url_for(&self, db: &str) -> String {
        let base = self.admin_url.split('?').next().unwrap_or(&self.admin_url);
        match base.rsplit_once('/') {
            Some((head, _))
                if head.contains("://") && head.len() > head.find("://").unwrap_or(0) + 3 =>
            {
                format!("{head}/{db}")
            }
            _ => format!("{base}/{db}"),
        }
    }

    fn host_port(&self) -> (String, u16) {
        let rest = self.admin_url.split_once("://").map(|x| x.1).unwrap_or("");
        let hostport = rest
            .split('/')
            .next()
            .unwrap_or("")
            .rsplit('@')
            .next()
            .unwrap_or("");
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().unwrap_or(5432)),
            None => (
                if hostport.is_empty() {
                    "127.0.0.1".into()
                } else {
                    hostport.to_string()
                },
                5432,
            ),
        }
    }

    /// A database `name` with an owner role of its own: empty, or a copy of `template` whose
    /// objects then pass to the new role (inside the new database only).
    async fn create_db(
        &self,
        name: &str,
        template: Option<&TemplateDb>,
    ) -> Result<TemplateDb, CloneError> {
        let role = format!("{name}_owner");
        let password = fresh_password();
        let mut c = self.admin().await?;
        exec(
            &mut c,
            &format!("CREATE ROLE {} LOGIN PASSWORD '{password}'", ident(&role)?),
        )
        .await
        .map_err(refused("create role"))?;
        let create = match template {
            Some(t) => format!(
                "CREATE DATABASE {} TEMPLATE {}",
                ident(name)?,
                ident(&t.db)?
            ),
            None => format!("CREATE DATABASE {}", ident(name)?),
        };
        exec(&mut c, &create)
            .await
            .map_err(refused("create database"))?;
        // Only the database's own role may connect (PostgreSQL grants CONNECT to PUBLIC).
        exec(
            &mut c,
            &format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", ident(name)?),
        )
        .await
        .map_err(refused("revoke"))?;
        exec(
            &mut c,
            &format!(
                "GRANT ALL ON DATABASE {} TO {}",
                ident(name)?,
                ident(&role)?
            ),
        )
        .await
        .map_err(refused("grant"))?;
        let _ = c.close().await;
        let inside_sql = match template {
            Some(t) => vec![format!(
                "REASSIGN OWNED BY {} TO {}",
                ident(&t.role)?,
                ident(&role)?
            )],
            None => vec![
                format!("GRANT ALL ON SCHEMA public TO {}", ident(&role)?),
                format!("ALTER SCHEMA public OWNER TO {}", ident(&role)?),
            ],
        };
        let mut inside = PgConnection::connect(&self.admin_url_for(name))
            .await
            .map_err(refused("connect"))?;
        for sql in &inside_sql {
            exec(&mut inside, sql).await.map_err(refused("set owner"))?;
        }
        let _ = inside.close().await;
        let (host, port) = self.host_port();
        Ok(TemplateDb {
            db: name.to_string(),
            role,
            password,
            host,
            port,
        })
    }

    /// `pg_dump source | psql target` as the target's owner role.
    async fn copy_in(&self, source_url: &str, target: &TemplateDb) -> Result<(), CloneError> {
        let mut dump = Command::new("pg_dump");
        dump.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .args(["--no-owner", "--no-acl", "--format=plain", "--dbname"])
            .arg(source_url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut dump = dump
            .spawn()
            .map_err(CloneError::io("spawn", Path::new("pg_dump")))?;
        let out = dump
            .stdout
            .take()
            .ok_or_else(|| CloneError::Refused("pg_dump has no stdout".into()))?;
        let mut psql = Command::new("psql");
        psql.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("PGPASSWORD", &target.password)
            .args([
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &target.host,
                "-p",
                &target.port.to_string(),
                "-U",
                &target.role,
                "-d",
                &target.db,
            ])
            .stdin(Stdio::from(out))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let load = tokio::task::spawn_blocking(move || psql.output())
            .await
            .map_err(|e| CloneError::Refused(e.to_string()))?;
        let dumped = tokio::task::spawn_blocking(move || dump.wait_with_output())
            .await
            .map_err(|e| CloneError::Refused(e.to_string()))?;
        let dumped = dumped.map_err(CloneError::io("pg_dump", Path::new("pg_dump")))?;
        let load = load.map_err(CloneError::io("psql", Path::new("psql")))?;
        if !dumped.status.success() {
            return Err(CloneError::Refused(
                "pg_dump failed (check the source URL and its credentials)".into(),
            ));
        }
        if !load.status.success() {
            return Err(CloneError::Refused(format!(
                "restore failed: {}",
                String::from_utf8_lossy(&load.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Import `source_url` into a new site database `name`; its record is saved in `dir`.
    pub async fn import(
        &self,
        dir: &Path,
        name: &str,
        source_url: &str,
    ) -> Result<TemplateDb, CloneError> {
        let db = self.create_db(name, None).await?;
        save(dir, &db)?;
        self.copy_in(source_url, &db).await?;
        Ok(db)
    }

    /// A generation of the site database in `live` as database `name` (record in `gen_dir`).
    pub async fn snapshot(
        &self,
        live: &Path,
        gen_dir: &Path,
        name: &str,
    ) -> Result<CloneStats, CloneError> {
        let started = Instant::now();
        let parent = load(live)?;
        let generation = self.create_db(name, None).await?;
        save(gen_dir, &generation)?;
        self.copy_in(&parent.url(), &generation).await?;
        let size = self.size(name).await?;
        Ok(CloneStats::full_copy(Strategy::Import, size, 0, started))
    }

    /// Clone the generation in `gen_dir` as database `name` with its own role (record in `dst`).
    pub async fn clone_generation(
        &self,
        gen_dir: &Path,
        dst: &Path,
        name: &str,
    ) -> Result<CloneStats, CloneError> {
        let started = Instant::now();
        let generation = load(gen_dir)?;
        let db = self.create_db(name, Some(&generation)).await?;
        save(dst, &db)?;
        let size = self.size(name).await?;
        Ok(CloneStats::full_copy(Strategy::Template, size, 0, started))
    }

    pub async fn size(&self, name: &str) -> Result<u64, CloneError> {
        let mut c = self.admin().await?;
        let (n,): (i64,) = sqlx::query_as("SELECT pg_database_size($1)")
            .bind(name)
            .fetch_one(&mut c)
            .await
            .map_err(refused("size"))?;
        let _ = c.close().await;
        Ok(n as u64)
    }

    /// Drop the database recorded in `dir` and its role. Idempotent.
    pub async fn drop(&self, dir: &Path) -> Result<(), CloneError> {
        let Ok(db) = load(dir) else { return Ok(()) };
        let mut c = self.admin().await?;
        let drop_db = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&db.db)?);
        sqlx::query(&drop_db)
            .execute(&mut c)
            .await
            .map_err(refused("drop database"))?;
        let drop_role = format!("DROP ROLE IF EXISTS {}", ident(&db.role)?);
        sqlx::query(&drop_role)
            .execute(&mut c)
            .await
            .map_err(refused("drop role"))?;
        let _ = c.close().await;
        let _ = std::fs::remove_file(dir.join("template.json"));
        Ok(())
    }
}

pub fn save(dir: &Path, db: &TemplateDb) -> Result<(), CloneError> {
    save_record(dir, "template.json", db)
}

pub fn load(dir: &Path) -> Result<TemplateDb, CloneError> {
    load_record(dir, "template.json")
}

/// Run one SQL statement built by this module (identifiers through `ident`). Through
/// `sqlx::query`, whose future is `Send` for any lifetime (`raw_sql`'s is not, and async job
/// handlers need that).
async fn exec(c: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(c).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(ident("endor_0a1b").unwrap(), "\"endor_0a1b\"");
        for bad in ["", "a\"b", "a;drop", "A", "a b", &"a".repeat(64)] {
            assert!(ident(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn admin_urls() {
        let t =
            Template::new("postgres://postgres@127.0.0.1:5433/postgres?sslmode=disable").unwrap();
        assert_eq!(t.admin_url_for("x"), "postgres://postgres@127.0.0.1:5433/x");
        assert_eq!(t.host_port(), ("127.0.0.1".to_string(), 5433));
        let t = Template::new("postgres://u:p@db.example.com/postgres").unwrap();
        assert_eq!(t.host_port(), ("db.example.com".to_string(), 5432));
        assert!(Template::new("mysql://x").is_err());
    }
}
