//! Helpers the database engines share: credentials, ports, small JSON records beside an
//! instance, short runtime directories, and finding instances under a directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::CloneError;

/// 144 random bits, hex: a password that needs no quoting anywhere.
pub(crate) fn fresh_password() -> String {
    let mut b = [0u8; 18];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A port nobody listens on right now (the kernel's pick).
pub(crate) fn free_port() -> Result<u16, CloneError> {
    let any = Path::new("127.0.0.1:0");
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(CloneError::io("bind", any))?;
    Ok(l.local_addr().map_err(CloneError::io("bind", any))?.port())
}

/// Bytes of the regular files under `path`.
pub fn tree_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += tree_size(&e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// Who may reach a per-site server, and how. A server listens on a Unix socket inside its
/// instance directory (`run/`, mode 0710, owned by the server's OS user, group `group`): only
/// processes of that group — the site's own processes — and root can pass the folder to the
/// socket. TCP on 127.0.0.1 is opened only with `tcp` (`postgres.tcp` / `mariadb.tcp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Access {
    /// The gid allowed through the socket's folder (the site's own gid, or `runtime.user`'s
    /// without isolation); `None`: nobody but the server's user and root (endor's own use,
    /// or endor not running as root, when everything runs as one uid anyway).
    pub group: Option<u32>,
    /// Also listen on 127.0.0.1, on a port of its own.
    pub tcp: bool,
}

/// What an instance record without `tcp` means: its server listens on 127.0.0.1.
pub(crate) fn listened_on_tcp() -> bool {
    true
}

/// The folder that holds a server's socket, inside its instance directory.
pub fn socket_dir(dir: &Path) -> PathBuf {
    dir.join("run")
}

/// The short name under which a server's socket folder is reached: Unix socket paths are
/// limited to 107 bytes and instance directories can be longer, so `{alias root}/{prefix}-{hash
/// of dir}` is a symlink to [`socket_dir`]. The alias root is `/run/endor` (root's alone) when
/// endor runs as root, else `/tmp/endor-{uid}` (0700, checked to be ours).
pub fn socket_alias(prefix: &str, dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    alias_root().join(format!("{prefix}-{}", hex::encode(&digest[..10])))
}

fn alias_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    match unsafe { libc::geteuid() } {
        0 => PathBuf::from("/run/endor"),
        uid => PathBuf::from(format!("/tmp/endor-{uid}")),
    }
}

/// Make `dir`'s socket folder (owned by `server` — the server's uid/gid, `None` when endor is
/// not root — with `access.group` allowed through) and point its alias at it. The alias root
/// must belong to endor and be writable by nobody else: a symlink planted there by another
/// user would send endor's own connections elsewhere.
pub(crate) fn prepare_socket(
    dir: &Path,
    alias: &Path,
    server: Option<(u32, u32)>,
    access: Access,
) -> Result<(), CloneError> {
    use std::os::unix::fs::MetadataExt;
    let real = socket_dir(dir);
    std::fs::create_dir_all(&real).map_err(CloneError::io("mkdir", &real))?;
    let (mode, owner) = match (server, access.group) {
        (Some((uid, _)), Some(group)) => (0o710, Some((uid, group))),
        (Some(s), None) => (0o700, Some(s)),
        (None, _) => (0o700, None),
    };
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&real, Some(uid), Some(gid))
            .map_err(CloneError::io("chown", &real))?;
    }
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode))
        .map_err(CloneError::io("chmod", &real))?;
    let root = alias.parent().unwrap_or(Path::new("/"));
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(root).map_err(CloneError::io("mkdir", root))?;
            let mode = if me == 0 { 0o755 } else { 0o700 };
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode))
                .map_err(CloneError::io("chmod", root))?;
        }
        Err(e) => return Err(CloneError::io("stat", root)(e)),
        Ok(m) if !m.is_dir() || m.uid() != me || m.mode() & 0o022 != 0 => {
            return Err(CloneError::Refused(format!(
                "{} must be a folder of uid {me} that nobody else can write (it holds the database sockets' names)",
                root.display()
            )));
        }
        Ok(_) => {}
    }
    // Replace whatever alias is there in one rename: never a moment without one.
    let tmp = root.join(format!(
        ".{}.new",
        alias.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&real, &tmp).map_err(CloneError::io("symlink", &tmp))?;
    std::fs::rename(&tmp, alias).map_err(CloneError::io("rename", alias))
}

/// Remove a server's alias (its socket folder goes with the instance directory).
pub(crate) fn remove_alias(alias: &Path) {
    if std::fs::symlink_metadata(alias).is_ok_and(|m| m.file_type().is_symlink()) {
        let _ = std::fs::remove_file(alias);
    }
}

/// Write `value` as `dir/file` (JSON, mode 0600: it holds credentials).
pub(crate) fn save_record<T: Serialize>(
    dir: &Path,
    file: &str,
    value: &T,
) -> Result<(), CloneError> {
    std::fs::create_dir_all(dir).map_err(CloneError::io("mkdir", dir))?;
    let p = dir.join(file);
    let text = serde_json::to_string(value).map_err(|e| CloneError::Refused(e.to_string()))?;
    // Whole and private from the start: never a moment readable by others, never half written.
    crate::unix::replace_file_atomic(&p, text.as_bytes(), 0o600)
        .map_err(CloneError::io("write", &p))
}

pub(crate) fn load_record<T: DeserializeOwned>(dir: &Path, file: &str) -> Result<T, CloneError> {
    let p = dir.join(file);
    let text = std::fs::read_to_string(&p).map_err(CloneError::io("read", &p))?;
    serde_json::from_str(&text).map_err(|e| CloneError::Refused(format!("{}: {e}", p.display())))
}

/// Directories under `root` (up to four levels down, not entering `data/`) that contain
/// `marker` (a relative path such as `data/postmaster.pid`).
pub(crate) fn find_marked(root: &Path, marker: &str) -> Vec<PathBuf> {
    fn go(dir: &Path, marker: &str, depth: usize, out: &mut Vec<PathBuf>) {
        if dir.join(marker).exists() {
            out.push(dir.to_path_buf());
            return;
        }
        if depth >= 4 {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) && e.file_name() != "data" {
                    go(&e.path(), marker, depth + 1, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    go(root, marker, 0, &mut out);
    out
}

/// Make an instance directory `dst` and clone a generation's data directory into `dst/data`:
/// the first half of every instance clone.
pub(crate) fn clone_data_dir(
    gen_data: &Path,
    dst: &Path,
    reflink: bool,
) -> Result<super::CloneStats, CloneError> {
    std::fs::create_dir_all(dst).map_err(CloneError::io("mkdir", dst))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755))
        .map_err(CloneError::io("chmod", dst))?;
    super::files::clone_tree(
        gen_data,
        &dst.join("data"),
        super::files::TreeOptions::new(reflink),
    )
}
