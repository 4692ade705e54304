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

/// `/tmp/{prefix}-{hash of dir}`: Unix socket paths are limited to 107 bytes, so sockets live
/// in a short directory that is found again from the instance's path.
pub(crate) fn runtime_dir(prefix: &str, dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    PathBuf::from(format!("/tmp/{prefix}-{}", hex::encode(&digest[..10])))
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
