//! Does reflink work on this storage root? Answered by a real FICLONE of a probe file (not by
//! the filesystem's name), once per root per process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::CloneError;

static CACHE: OnceLock<Mutex<HashMap<PathBuf, bool>>> = OnceLock::new();

/// Whether `root` (created if missing) supports reflink. The first call per root probes; the
/// answer is cached, and a root without reflink is logged once as a warning.
pub fn reflink_supported(root: &Path) -> Result<bool, CloneError> {
    std::fs::create_dir_all(root).map_err(CloneError::io("create", root))?;
    let key = root
        .canonicalize()
        .map_err(CloneError::io("resolve", root))?;
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(v) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(*v);
    }
    // An earlier process's answer for this root on this filesystem: the warning is said once,
    // not by every command.
    let marker = key.join(".endor-reflink");
    let device = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&key).map(|m| m.dev()).unwrap_or(0)
    };
    let remembered = std::fs::read_to_string(&marker).ok().and_then(|t| {
        let (dev, answer) = t.trim().split_once(' ')?;
        (dev.parse::<u64>().ok()? == device).then_some(answer == "yes")
    });
    let supported = match remembered {
        Some(s) => {
            tracing::debug!(root = %key.display(), reflink = s, "reflink support as probed before");
            s
        }
        None => {
            let supported = probe(&key)?;
            if supported {
                tracing::info!(root = %key.display(), "storage root supports reflink: clones are copy-on-write");
            } else {
                tracing::warn!(
                    root = %key.display(),
                    "storage root has no reflink support: clones fall back to copying data (slower, grows with size); use XFS with reflink=1 or btrfs"
                );
            }
            let answer = if supported { "yes" } else { "no" };
            let _ = std::fs::write(&marker, format!("{device} {answer}\n"));
            supported
        }
    };
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, supported);
    Ok(supported)
}

fn probe(root: &Path) -> Result<bool, CloneError> {
    let tag = format!(
        ".endor-probe-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let src = root.join(&tag);
    let dst = root.join(format!("{tag}.clone"));
    std::fs::write(&src, vec![0x5a; 64 * 1024]).map_err(CloneError::io("write", &src))?;
    let ok = reflink_copy::reflink(&src, &dst).is_ok();
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    Ok(ok)
}
