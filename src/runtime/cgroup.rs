//! One control group per site: memory, CPU and process limits for everything the site runs
//! (build steps, its start command), found by the kernel, not by endor, so a fork bomb or a
//! leak stays inside the site.
//!
//! cgroup v2 (one unified tree with `memory`, `cpu` and `pids` enabled) is used where the
//! root offers it; otherwise the v1 hierarchies `memory/`, `cpu/` and `pids/` under the same
//! root. Groups are `endor/{site id}` in each. A process enters the group before it runs any
//! PR code: the group's `cgroup.procs` files are opened by endor and the child writes its own
//! pid (`0`) into them between fork and exec.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::Limits;

const PARENT: &str = "endor";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The cgroup hierarchies this host lets endor use.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    root: PathBuf,
}

/// One site's group (a directory per v1 controller, one directory on v2).
#[derive(Debug, Clone)]
pub struct Group {
    version: Version,
    /// memory (v1) or the group (v2) first, then cpu and pids on v1.
    dirs: Vec<PathBuf>,
}

impl Cgroups {
    /// The hierarchies under `root` where endor can make groups with memory, CPU and process
    /// limits; `None` when there are none (not root, no controllers, read-only).
    pub fn detect(root: &Path) -> Option<Self> {
        let v2 = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| v2.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") && has("cpu") {
            let parent = root.join(PARENT);
            if std::fs::create_dir_all(&parent).is_ok()
                && std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids +cpu").is_ok()
                && std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu")
                    .is_ok()
            {
                return Some(Self {
                    version: Version::V2,
                    root: root.to_path_buf(),
                });
            }
            return None;
        }
        let v1_ok = ["memory", "cpu", "pids"]
            .iter()
            .all(|c| std::fs::create_dir_all(root.join(c).join(PARENT)).is_ok());
        v1_ok.then(|| Self {
            version: Version::V1,
            root: root.to_path_buf(),
        })
    }

    /// `cgroup v1 (memory, cpu, pids)` or `cgroup v2 (...)`: for `endor doctor`.
    pub fn describe(&self) -> String {
        match self.version {
            Version::V1 => format!("cgroup v1 at {} (memory, cpu, pids)", self.root.display()),
            Version::V2 => format!("cgroup v2 at {} (memory, cpu, pids)", self.root.display()),
        }
    }

    fn dirs(&self, name: &str) -> Vec<PathBuf> {
        match self.version {
            Version::V2 => vec![self.root.join(PARENT).join(name)],
            Version::V1 => ["memory", "cpu", "pids"]
                .iter()
                .map(|c| self.root.join(c).join(PARENT).join(name))
                .collect(),
        }
    }

    /// The group `name` (a site id) with `limits` written into it; made when missing.
    pub fn group(&self, name: &str, limits: &Limits) -> std::io::Result<Group> {
        let g = Group {
            version: self.version,
            dirs: self.dirs(name),
        };
        for d in &g.dirs {
            std::fs::create_dir_all(d)?;
        }
        g.set_limits(limits)?;
        Ok(g)
    }

    /// The group `name` as it is (for reading what happened in it, or removing it).
    pub fn existing(&self, name: &str) -> Group {
        Group {
            version: self.version,
            dirs: self.dirs(name),
        }
    }
}

/// The number after `key ` in a cgroup file of `key value` lines (`memory.events`,
/// `pids.events`, v1's `memory.oom_control`); 0 when the file or the line is not there.
pub fn counter(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

fn put(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("writing {value} to {}: {e}", dir.join(file).display()),
        )
    })
}

impl Group {
    fn set_limits(&self, l: &Limits) -> std::io::Result<()> {
        let quota = ((l.cpus * 100_000.0) as u64).max(1000);
        match self.version {
            Version::V2 => {
                let d = &self.dirs[0];
                put(d, "memory.max", &l.memory.to_string())?;
                // No swap to hide in: the limit is the limit.
                let _ = put(d, "memory.swap.max", "0");
                put(d, "cpu.max", &format!("{quota} 100000"))?;
                put(d, "pids.max", &l.processes.to_string())?;
            }
            Version::V1 => {
                let (mem, cpu, pids) = (&self.dirs[0], &self.dirs[1], &self.dirs[2]);
                // memsw must stay >= the memory limit: lower order depends on the direction.
                let _ = put(mem, "memory.memsw.limit_in_bytes", "-1");
                put(mem, "memory.limit_in_bytes", &l.memory.to_string())?;
                let _ = put(mem, "memory.memsw.limit_in_bytes", &l.memory.to_string());
                put(cpu, "cpu.cfs_period_us", "100000")?;
                put(cpu, "cpu.cfs_quota_us", &quota.to_string())?;
                put(pids, "pids.max", &l.processes.to_string())?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files, opened for writing by endor: a child writes `0` to each
    /// between fork and exec (see [`Group::enter_from_child`]).
    pub(super) fn open_procs(&self) -> std::io::Result<Vec<File>> {
        self.dirs
            .iter()
            .map(|d| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("cgroup.procs"))
            })
            .collect()
    }

    /// Called in the child after fork, before exec: only async-signal-safe calls.
    pub(super) fn enter_from_child(fds: &[i32]) -> std::io::Result<()> {
        for &fd in fds {
            // SAFETY: write(2) on a file descriptor the parent opened and the child inherited.
            let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    pub(super) fn raw_fds(files: &[File]) -> Vec<i32> {
        files.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// How many times the kernel killed a process of this group for memory.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        counter(&self.dirs[0].join(file), "oom_kill")
    }

    /// How many forks the process limit refused.
    pub fn fork_refusals(&self) -> u64 {
        let dir = self.dirs.last().expect("a group has a directory");
        counter(&dir.join("pids.events"), "max")
    }

    /// The pids in the group now.
    pub fn pids(&self) -> Vec<i32> {
        let dir = self.dirs.last().expect("a group has a directory");
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kill every process of the group (what a site leaves behind dies with it).
    pub fn kill_all(&self) {
        if self.version == Version::V2
            && std::fs::write(self.dirs[0].join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        // v1: a fork bomb may fork while we kill; a few rounds catch the stragglers.
        for _ in 0..20 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) on a pid read from the group; a reused pid cannot enter it.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Kill what is left and remove the group's directories.
    pub fn remove(&self) {
        self.kill_all();
        for d in &self.dirs {
            for _ in 0..50 {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        }
    }
}
