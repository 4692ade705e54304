//! Disk limits per site, by watching: what a site's code writes (its checkout, its files and
//! SQLite folders) is measured every half second while its processes run, and past the
//! limit the build step or the site process is stopped, with the reason in its log.
//!
//! The kernels this runs on may lack filesystem quotas (XFS and ext4 project quotas need
//! them), so this is the equivalent that works everywhere: it counts the blocks allocated
//! beyond what the folders held when the sandbox was made (data a clone shares with its
//! parent is already there and does not count), and it can overshoot by what a process
//! writes in half a second.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct DiskWatch {
    dirs: Vec<PathBuf>,
    baseline: u64,
    pub limit: u64,
}

impl DiskWatch {
    /// Start counting writes into `dirs` from what they hold now.
    pub fn new(dirs: Vec<PathBuf>, limit: u64) -> Self {
        let baseline = dirs.iter().map(|d| allocated(d)).sum();
        Self {
            dirs,
            baseline,
            limit,
        }
    }

    /// Bytes allocated since the start.
    pub fn written(&self) -> u64 {
        let now: u64 = self.dirs.iter().map(|d| allocated(d)).sum();
        now.saturating_sub(self.baseline)
    }

    /// Returns once more than the limit has been written (never, otherwise).
    pub async fn exceeded(&self) {
        loop {
            tokio::time::sleep(EVERY).await;
            let me = self.clone();
            let written = tokio::task::spawn_blocking(move || me.written())
                .await
                .unwrap_or(0);
            if written > self.limit {
                return;
            }
        }
    }

    pub fn note(&self) -> String {
        format!(
            "was stopped: the site wrote more than its disk limit ({})",
            crate::size::ByteSize(self.limit)
        )
    }
}

/// Blocks allocated under `path` (not following links, not crossing into other
/// filesystems), in bytes.
fn allocated(path: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let dev = top.dev();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.dev() != dev {
            continue;
        }
        total += m.blocks() * 512;
        if m.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_what_is_written_after_the_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("before"), vec![1u8; 1 << 20]).unwrap();
        let w = DiskWatch::new(vec![dir.path().to_path_buf()], 2 << 20);
        assert!(w.written() < 64 << 10, "{}", w.written());
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/after"), vec![1u8; 3 << 20]).unwrap();
        assert!(w.written() >= 3 << 20, "{}", w.written());
    }
}
