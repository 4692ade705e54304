//! restic, run as a program (never through a shell): the repository and its passphrase are
//! given in its environment, every argument separately.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::BackupError;

pub struct Restic {
    pub bin: PathBuf,
    pub repository: String,
    pub password: SecretString,
    pub cache: PathBuf,
    /// restic's extended options (`-o key=value`), e.g. `rclone.program` for an off-site
    /// repository reached over SSH.
    pub options: Vec<String>,
}

/// The last line restic prints for `backup --json`.
#[derive(Debug, Deserialize)]
pub struct Summary {
    pub snapshot_id: String,
    pub total_files_processed: u64,
    pub total_bytes_processed: u64,
    pub data_added: u64,
}

impl Restic {
    /// Run restic with `args` in `cwd`; its standard output, or its error text.
    pub async fn run(&self, args: &[&str], cwd: Option<&Path>) -> Result<String, BackupError> {
        self.run_with(args, cwd, None).await
    }

    /// As [`Restic::run`], with `input` written to restic's standard input.
    async fn run_with(
        &self,
        args: &[&str],
        cwd: Option<&Path>,
        input: Option<&str>,
    ) -> Result<String, BackupError> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.cache)
            .env("RESTIC_REPOSITORY", &self.repository)
            .env("RESTIC_PASSWORD", self.password.expose_secret())
            .env("RESTIC_CACHE_DIR", &self.cache)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let cannot = |e: std::io::Error| {
            BackupError::Tool(format!("cannot run {}: {e}", self.bin.display()))
        };
        let mut child = cmd.spawn().map_err(cannot)?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            // restic reads one line; a closed pipe after it is restic's business.
            let _ = stdin.write_all(format!("{text}\n").as_bytes()).await;
        }
        let out = child.wait_with_output().await.map_err(cannot)?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        // restic's own words, the lines that say what failed (not its Go stack).
        let said: Vec<&str> = err
            .lines()
            .filter(|l| !l.starts_with('\t') && !l.starts_with("goroutine") && !l.trim().is_empty())
            .take(6)
            .collect();
        Err(BackupError::Tool(format!(
            "restic {}: {}",
            args.first().copied().unwrap_or(""),
            said.join("; ")
        )))
    }

    /// Make the repository unless it exists.
    pub async fn init(&self) -> Result<(), BackupError> {
        match self.run(&["init"], None).await {
            Ok(_) => Ok(()),
            Err(BackupError::Tool(m)) if m.contains("already") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Make this repository unless it exists, with `from`'s chunker parameters, so copies of
    /// `from`'s snapshots deduplicate here as they do there.
    pub async fn init_like(&self, from: &Restic) -> Result<(), BackupError> {
        let args = [
            "init",
            "--copy-chunker-params",
            "--from-repo",
            from.repository.as_str(),
            "--from-password-file",
            "/dev/stdin",
        ];
        match self
            .run_with(&args, None, Some(from.password.expose_secret()))
            .await
        {
            Ok(_) => Ok(()),
            Err(BackupError::Tool(m)) if m.contains("already") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Back up the current folder of `dir` with `tags`.
    pub async fn backup(&self, dir: &Path, tags: &[String]) -> Result<Summary, BackupError> {
        let mut args = vec!["backup", "--json", "--host", "endor"];
        for t in tags {
            args.push("--tag");
            args.push(t);
        }
        args.push(".");
        let out = self.run(&args, Some(dir)).await?;
        out.lines()
            .rev()
            .find_map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .filter(|v| v["message_type"] == "summary")
                    .and_then(|v| serde_json::from_value(v).ok())
            })
            .ok_or_else(|| BackupError::Tool("restic backup printed no summary".into()))
    }

    /// Restore snapshot `id` into the empty folder `dest` (a backup of `.` restores its
    /// contents at the target's top).
    pub async fn restore(&self, id: &str, dest: &Path) -> Result<(), BackupError> {
        let target = dest.display().to_string();
        self.run(&["restore", id, "--target", &target], None)
            .await?;
        Ok(())
    }

    /// Apply a retention policy to the snapshots tagged `tag` (one group), removing what it does
    /// not keep and pruning their data; the ids of the snapshots removed.
    pub async fn forget(
        &self,
        tag: &str,
        keep: &crate::config::Retention,
        dry_run: bool,
    ) -> Result<Vec<String>, BackupError> {
        let (last, daily, weekly, monthly) = (
            keep.keep_last.to_string(),
            keep.keep_daily.to_string(),
            keep.keep_weekly.to_string(),
            keep.keep_monthly.to_string(),
        );
        let mut args = vec![
            "forget",
            "--json",
            "--tag",
            tag,
            "--group-by",
            "host",
            "--keep-last",
            &last,
            "--keep-daily",
            &daily,
            "--keep-weekly",
            &weekly,
            "--keep-monthly",
            &monthly,
        ];
        args.push(if dry_run { "--dry-run" } else { "--prune" });
        let out = self.run(&args, None).await?;
        let groups: Vec<serde_json::Value> = out
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_default();
        Ok(groups
            .iter()
            .flat_map(|g| g["remove"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s["id"].as_str().map(str::to_string))
            .collect())
    }

    /// Copy snapshot `id` of `from` into this repository (`restic copy`); the copy's id. The
    /// source's passphrase goes through restic's standard input, never a file or the command
    /// line.
    pub async fn copy_from(&self, from: &Restic, id: &str) -> Result<String, BackupError> {
        let source = from.repository.as_str();
        self.run_with(
            &[
                "copy",
                "--from-repo",
                source,
                "--from-password-file",
                "/dev/stdin",
                id,
            ],
            None,
            Some(from.password.expose_secret()),
        )
        .await?;
        // The copy names its original: find it (restic 0.14's copy prints no JSON).
        let out = self.run(&["snapshots", "--json"], None).await?;
        let all: Vec<serde_json::Value> = serde_json::from_str(out.trim())
            .map_err(|e| BackupError::Tool(format!("restic snapshots: {e}")))?;
        all.iter()
            .filter(|s| s["original"].as_str().is_some_and(|o| o.starts_with(id)))
            .find_map(|s| s["id"].as_str().map(str::to_string))
            .ok_or_else(|| BackupError::Tool(format!("restic copy: no copy of {id} found")))
    }

    /// Read every byte of the repository back and check it (`restic check --read-data`).
    pub async fn check(&self) -> Result<String, BackupError> {
        self.run(&["check", "--read-data"], None).await
    }
}
