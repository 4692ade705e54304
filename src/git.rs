//! Git, through the `git` program with argument vectors (never a shell) and a cleared
//! environment: one cached bare mirror per repository connection (fetched, never re-cloned),
//! files read from the default branch, and a PR head checked out into a directory of its own
//! with `git archive` (so checkouts never share an index or a worktree).
//!
//! Only commit ids and refs endor builds itself (`refs/pull/{n}/head`, numbers only) reach git's
//! command line; branch names from a PR never do. `GIT_ALLOW_PROTOCOL` limits transports to
//! file, git, http(s) and ssh, so an `ext::` URL cannot run a command.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {op} failed: {detail}")]
    Failed { op: &'static str, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub struct GitMirrors {
    root: PathBuf,
}

impl GitError {
    /// Does git say the repository is not there (as opposed to a host it could not reach,
    /// or a passing failure)? Fetching it again will not help.
    pub fn is_missing_repository(&self) -> bool {
        let GitError::Failed { detail, .. } = self else {
            return false;
        };
        let d = detail.to_ascii_lowercase();
        [
            "does not appear to be a git repository",
            "repository not found",
            "does not exist",
            "no such file or directory",
            "not a git repository",
        ]
        .iter()
        .any(|m| d.contains(m))
    }
}

/// The first 12 characters of a commit id, as people are shown it.
pub fn short_sha(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// What `git ls-remote` says of a URL (see [`probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// It answered with its branches.
    Fetchable,
    /// It answered: there is no repository there.
    Missing(String),
    /// No answer that settles it: the host could not be reached, credentials were asked for,
    /// or the time ran out. It may still work from the server.
    Unsure(String),
}

/// Can `url` be fetched from here? `git ls-remote --heads`, with the same cleared environment
/// and transports as fetches, for at most `timeout`.
pub async fn probe(url: &str, timeout: std::time::Duration) -> Probe {
    if url.starts_with('-') || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Probe::Missing("bad git url".into());
    }
    let mut c = git(None);
    c.args(["ls-remote", "--heads"]).arg(url);
    match tokio::time::timeout(timeout, run(c, "ls-remote")).await {
        Err(_) => Probe::Unsure(format!("no answer within {} s", timeout.as_secs())),
        Ok(Ok(_)) => Probe::Fetchable,
        Ok(Err(e)) if e.is_missing_repository() => Probe::Missing(e.to_string()),
        Ok(Err(e)) => Probe::Unsure(e.to_string()),
    }
}

/// A full commit id (SHA-1 or SHA-256), lowercase hex.
pub fn validate_sha(sha: &str) -> Result<(), GitError> {
    if (sha.len() == 40 || sha.len() == 64)
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(GitError::Invalid(format!(
            "not a commit id: `{}`",
            sha.escape_debug()
        )))
    }
}

fn git(dir: Option<&Path>) -> Command {
    let mut c = Command::new("git");
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_ALLOW_PROTOCOL", "file:git:http:https:ssh")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(d) = dir {
        c.arg("--git-dir").arg(d);
    }
    c
}

async fn run(mut c: Command, op: &'static str) -> Result<Vec<u8>, GitError> {
    let out = c.output().await?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr)
            .trim()
            .chars()
            .take(2000)
            .collect();
        return Err(GitError::Failed { op, detail });
    }
    Ok(out.stdout)
}

impl GitMirrors {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The mirror of a connection (connection ids are UUIDs we generate).
    pub fn mirror(&self, connection_id: &str) -> Result<PathBuf, GitError> {
        if connection_id.is_empty()
            || !connection_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'-')
        {
            return Err(GitError::Invalid(format!(
                "bad connection id `{}`",
                connection_id.escape_debug()
            )));
        }
        Ok(self.root.join(format!("{connection_id}.git")))
    }

    /// Fetch branches and the given PR refs from `url` into the connection's mirror, creating
    /// it on first use. Returns the remote's default branch.
    pub async fn fetch(
        &self,
        connection_id: &str,
        url: &str,
        refs: &[String],
    ) -> Result<String, GitError> {
        if url.starts_with('-') || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(GitError::Invalid("bad git url".into()));
        }
        for r in refs {
            let ok = r.starts_with("refs/")
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'-' || b == b'_');
            if !ok {
                return Err(GitError::Invalid(format!("bad ref `{}`", r.escape_debug())));
            }
        }
        let mirror = self.mirror(connection_id)?;
        if !mirror.join("HEAD").exists() {
            // Mirrors are endor's: nobody else reads them.
            crate::unix::create_private_dir(&self.root)?;
            let mut init = git(None);
            init.args(["init", "--bare", "--quiet"]).arg(&mirror);
            run(init, "init").await?;
        }
        let mut fetch = git(Some(&mirror));
        fetch
            .args(["fetch", "--quiet", "--prune", "--no-tags", "--force"])
            .arg(url)
            .arg("+refs/heads/*:refs/heads/*");
        for r in refs {
            fetch.arg(format!("+{r}:{r}"));
        }
        run(fetch, "fetch").await?;
        let mut head = git(None);
        head.args(["ls-remote", "--symref"]).arg(url).arg("HEAD");
        let out = String::from_utf8_lossy(&run(head, "ls-remote").await?).into_owned();
        let branch = out
            .lines()
            .find_map(|l| {
                l.strip_prefix("ref: refs/heads/")
                    .and_then(|r| r.split_whitespace().next())
            })
            .unwrap_or("main")
            .to_string();
        Ok(branch)
    }

    /// The commit a ref or branch of the mirror points at.
    pub async fn resolve(&self, connection_id: &str, rev: &str) -> Result<String, GitError> {
        let ok = !rev.starts_with('-')
            && rev
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
        if !ok {
            return Err(GitError::Invalid(format!(
                "bad revision `{}`",
                rev.escape_debug()
            )));
        }
        let mut c = git(Some(&self.mirror(connection_id)?));
        c.args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .arg(format!("{rev}^{{commit}}"));
        Ok(String::from_utf8_lossy(&run(c, "rev-parse").await?)
            .trim()
            .to_string())
    }

    /// A file of the commit `sha`, or `None` when it has no such file.
    pub async fn read_file(
        &self,
        connection_id: &str,
        sha: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, GitError> {
        validate_sha(sha)?;
        let mut c = git(Some(&self.mirror(connection_id)?));
        c.args(["cat-file", "blob"]).arg(format!("{sha}:{path}"));
        match run(c, "cat-file").await {
            Ok(b) => Ok(Some(b)),
            Err(GitError::Failed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write the tree of commit `sha` into `dest` (created; must not exist).
    pub async fn checkout(
        &self,
        connection_id: &str,
        sha: &str,
        dest: &Path,
    ) -> Result<(), GitError> {
        validate_sha(sha)?;
        if dest.exists() {
            return Err(GitError::Invalid(format!(
                "{} already exists",
                dest.display()
            )));
        }
        std::fs::create_dir_all(dest)?;
        let mut archive = git(Some(&self.mirror(connection_id)?));
        archive
            .args(["archive", "--format=tar"])
            .arg(sha)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut archive = archive.spawn()?;
        let stdout = archive
            .stdout
            .take()
            .ok_or_else(|| GitError::Invalid("git archive has no stdout".into()))?;
        let stdout: Stdio = stdout
            .try_into()
            .map_err(|e: std::io::Error| GitError::Io(e))?;
        let mut tar = Command::new("tar");
        tar.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .args([
                "-x",
                "--no-same-owner",
                "--no-same-permissions",
                "-f",
                "-",
                "-C",
            ])
            .arg(dest)
            .stdin(stdout)
            .stderr(Stdio::piped());
        let tar_out = tar.output().await?;
        let arch_out = archive.wait_with_output().await?;
        if !arch_out.status.success() {
            return Err(GitError::Failed {
                op: "archive",
                detail: String::from_utf8_lossy(&arch_out.stderr).trim().to_string(),
            });
        }
        if !tar_out.status.success() {
            return Err(GitError::Failed {
                op: "tar",
                detail: String::from_utf8_lossy(&tar_out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shas_and_refs() {
        validate_sha(&"a".repeat(40)).unwrap();
        validate_sha(&"0".repeat(64)).unwrap();
        for bad in [
            "HEAD",
            "main",
            &"A".repeat(40),
            &"a".repeat(39),
            "$(touch x)",
            "--upload-pack=x",
        ] {
            assert!(validate_sha(bad).is_err(), "{bad}");
        }
    }
}
