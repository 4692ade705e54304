//! The default sandbox: PR code runs under bubblewrap (`bwrap`), a small, widely used tool
//! that sets up Linux namespaces, instead of hand-written `unshare` code.
//!
//! What the code sees: the system (`/usr`, `/etc`, the `/bin`/`/lib` links) read-only; its
//! checkout and its site's data folders read-write at their real paths; a private `/tmp`,
//! `/dev/shm` and minimal `/dev`; a `/proc` of its own PID namespace (no other process of
//! the host is visible or signalable). Nothing else: not the storage root, not endor's data,
//! not other sites. `bwrap` runs as the site's uid (an unprivileged user namespace), with
//! `no_new_privs` set, and dies with endor.
//!
//! With an isolated network the sandbox runs inside `pasta`, which gives it a network
//! namespace of its own: the app's port is forwarded from the host's loopback only (so the
//! gateway still reaches it), the namespace's gateway address is not mapped to the host
//! (`--no-map-gw`), and no port of the host or of another preview is reachable from inside.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The system folders shown read-only (when they exist; a symlink is recreated as one).
const SYSTEM: [&str; 10] = [
    "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/srv",
];

#[derive(Debug, Clone)]
pub struct Jail {
    pub bwrap: PathBuf,
    /// Folders the code may write (its checkout, its site's files and databases).
    pub writable: Vec<PathBuf>,
    /// Symlinks `(name, target)` made inside: the short names of the site's database socket
    /// folders (the targets are inside `writable`).
    pub links: Vec<(PathBuf, PathBuf)>,
    /// Set for an isolated network: pasta, and the address and port to forward from the host
    /// (`runtime.advertise`, loopback by default).
    pub network: Option<(PathBuf, Option<std::net::SocketAddr>)>,
}

impl Jail {
    /// The program and arguments that run `cmd` (a program and its arguments, as they are) in
    /// `cwd` inside the jail; `fds[i]` is an open descriptor of `writable[i]` (bound by
    /// descriptor, so the site's uid needs no way through the folders above it).
    pub fn argv(&self, cwd: &Path, cmd: &[OsString], fds: &[i32]) -> (PathBuf, Vec<OsString>) {
        let mut a: Vec<OsString> = Vec::new();
        let mut arg = |s: &str| a.push(s.into());
        for flag in [
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "preview",
        ] {
            arg(flag);
        }
        for dir in SYSTEM {
            let p = Path::new(dir);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(p) {
                        a.push("--symlink".into());
                        a.push(target.into_os_string());
                        a.push(dir.into());
                    }
                }
                Ok(m) if m.is_dir() => {
                    a.push("--ro-bind".into());
                    a.push(dir.into());
                    a.push(dir.into());
                }
                _ => {}
            }
        }
        for flag in [
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm",
            "--tmpfs", "/var/tmp", "--tmpfs", "/run",
        ] {
            a.push(flag.into());
        }
        for (w, fd) in self.writable.iter().zip(fds) {
            a.push("--bind-fd".into());
            a.push(fd.to_string().into());
            a.push(w.clone().into_os_string());
        }
        for (name, target) in &self.links {
            if let Some(parent) = name.parent() {
                // Made on the private /run; passable by the site's uid (bwrap's default is 0700).
                for flag in ["--perms", "0755", "--dir"] {
                    a.push(flag.into());
                }
                a.push(parent.as_os_str().to_owned());
            }
            a.push("--symlink".into());
            a.push(target.clone().into_os_string());
            a.push(name.clone().into_os_string());
        }
        a.push("--chdir".into());
        a.push(cwd.as_os_str().to_owned());
        a.push("--".into());
        a.extend(cmd.iter().cloned());
        match &self.network {
            None => (self.bwrap.clone(), a),
            Some((pasta, port)) => {
                let mut p: Vec<OsString> = [
                    "--config-net",
                    "--quiet",
                    "--foreground",
                    "--no-map-gw",
                    "-u",
                    "none",
                    "-T",
                    "none",
                    "-U",
                    "none",
                ]
                .iter()
                .map(OsString::from)
                .collect();
                p.push("-t".into());
                // Forwarded from the advertised address only (loopback by default): nobody
                // else reaches the app.
                p.push(match port {
                    Some(a) => format!("{}/{}", a.ip(), a.port()).into(),
                    None => "none".into(),
                });
                p.push("--".into());
                p.push(self.bwrap.clone().into_os_string());
                p.extend(a);
                (pasta.clone(), p)
            }
        }
    }
}

/// Open each folder as a path descriptor for `--bind-fd` (closed on exec by default; the
/// child keeps the ones it is given with [`keep_open`]).
pub fn open_dirs(dirs: &[PathBuf]) -> std::io::Result<Vec<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    dirs.iter()
        .map(|d| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(d)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", d.display())))
        })
        .collect()
}

/// In the child between fork and exec: let `fds` survive the exec (async-signal-safe).
pub fn keep_open(fds: &[i32]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: fcntl(2) on descriptors the parent opened and the child inherited.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `name` found in the usual system folders (endor runs with a cleared PATH for PR code).
pub fn find_program(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
