//! Unix accounts: the uid/gid of a named OS user, for the processes endor starts as someone
//! else (site builds and processes, per-site database servers).

use std::path::Path;

/// The uid and gid of OS user `name`.
pub fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let cname = std::ffi::CString::new(name).map_err(|_| format!("bad user name {name:?}"))?;
    // SAFETY: getpwnam with a valid C string; the result is read at once, before any other
    // call that could reuse its static buffer.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        return Err(format!("OS user `{name}` does not exist"));
    }
    // SAFETY: pw is non-null and points to a passwd record.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// The name of the user with this uid, when it has one.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: a zeroed passwd filled by getpwuid_r, which writes its strings into `buf`.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated, when getpwuid_r succeeded.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Make `dir` readable by its owner alone (0700) when it does not exist; folders made above it
/// are traverse-only for others (0711), so a storage root beside it stays reachable by the
/// users database servers run as. An existing folder is left as it is.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// A temporary file beside `path`, created with `mode` and holding `bytes`, flushed to disk.
fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    // Unique per process and call: two writers never share a temporary file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tmp_name.push(format!(".tmp-{}-{seq}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

pub fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// Create `path` holding `bytes` (mode `mode`) unless it exists, all at once: the bytes are
/// written to a temporary file first and linked into place, so no reader ever sees the file
/// partly written, and of two writers racing the first one's file stays (`Ok(false)` for the
/// other, whose bytes are dropped).
pub fn create_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<bool> {
    let tmp = write_temp(path, bytes, mode)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_parent(path);
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Write `path` (mode `mode`) replacing what it held, all at once: a temporary file renamed
/// over it, so a reader sees the old bytes or the new, never a part.
pub fn replace_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = write_temp(path, bytes, mode)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_exists_and_nonsense_does_not() {
        assert_eq!(super::lookup_user("root"), Ok((0, 0)));
        assert!(super::lookup_user("no-such-user-here").is_err());
        assert!(super::lookup_user("a\0b").is_err());
    }
}

#[cfg(test)]
mod atomic_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_whole_and_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        assert!(create_file_atomic(&p, b"first", 0o600).unwrap());
        assert!(!create_file_atomic(&p, b"second", 0o600).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        replace_file_atomic(&p, b"third", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"third");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        assert!(create_file_atomic(&d.path().join("no/such/dir/k"), b"x", 0o600).is_err());
    }

    #[test]
    fn racing_creators_agree_on_one_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let winners: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16u8)
                .map(|i| {
                    let p = p.clone();
                    s.spawn(move || {
                        let won = create_file_atomic(&p, &[i; 32], 0o600).unwrap();
                        // Whoever reads, at any time after a creator returned, reads 32 bytes.
                        assert_eq!(std::fs::read(&p).unwrap().len(), 32);
                        won as usize
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
