//! Clone a directory tree: every regular file by reflink (or copy), in parallel; directories,
//! symlinks (as links, never followed), modes, owners and mtimes preserved; empty directories
//! kept. Sockets, FIFOs and devices are skipped (and counted in the log).
//!
//! A per-file reflink of a tree is not atomic: a tree that changes while it is cloned gives a
//! mix. Consistency comes from cloning frozen generations, not the live tree (see `sites.rs`).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use filetime::FileTime;

use super::{CloneError, CloneStats, Strategy};

#[derive(Debug, Clone, Copy)]
pub struct TreeOptions {
    /// Try reflink first (as the storage probe says); copy otherwise.
    pub reflink: bool,
    /// Clear every write bit in the clone.
    pub read_only: bool,
    /// Worker threads for file copies.
    pub threads: usize,
}

impl TreeOptions {
    pub fn new(reflink: bool) -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() * 2)
            .unwrap_or(4)
            .clamp(2, 8);
        Self {
            reflink,
            read_only: false,
            threads,
        }
    }
}

struct Entry {
    rel: PathBuf,
    meta: fs::Metadata,
}

/// Clone `src` into `dst`, which must not exist yet.
pub fn clone_tree(src: &Path, dst: &Path, opts: TreeOptions) -> Result<CloneStats, CloneError> {
    let started = Instant::now();
    let root_meta = fs::symlink_metadata(src).map_err(CloneError::io("stat", src))?;
    if !root_meta.is_dir() {
        return Err(CloneError::Refused(format!(
            "{} is not a directory",
            src.display()
        )));
    }
    if dst.exists() {
        return Err(CloneError::Refused(format!(
            "{} already exists",
            dst.display()
        )));
    }
    let (mut dirs, mut files, mut links, mut skipped) = (Vec::new(), Vec::new(), Vec::new(), 0u64);
    walk(
        src,
        Path::new(""),
        &mut dirs,
        &mut files,
        &mut links,
        &mut skipped,
    )?;
    if skipped > 0 {
        tracing::warn!(src = %src.display(), skipped, "special files (sockets, FIFOs, devices) not cloned");
    }

    // Directories first, writable while we fill them; final modes and times at the end.
    fs::create_dir(dst).map_err(CloneError::io("mkdir", dst))?;
    for d in &dirs {
        let p = dst.join(&d.rel);
        fs::create_dir(&p).map_err(CloneError::io("mkdir", &p))?;
    }

    let written = AtomicU64::new(0);
    let fallbacks = AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    let first_error: std::sync::Mutex<Option<CloneError>> = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..opts.threads.max(1).min(files.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(e) = files.get(i) else { break };
                    if first_error.lock().map(|g| g.is_some()).unwrap_or(true) {
                        break;
                    }
                    match clone_file(&src.join(&e.rel), &dst.join(&e.rel), &e.meta, opts) {
                        Ok(FileOutcome::Reflinked) => {}
                        Ok(FileOutcome::Copied { fallback }) => {
                            written.fetch_add(e.meta.len(), Ordering::Relaxed);
                            if fallback {
                                fallbacks.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(err) => {
                            if let Ok(mut g) = first_error.lock() {
                                g.get_or_insert(err);
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(err) = first_error.into_inner().unwrap_or(None) {
        return Err(err);
    }

    for l in &links {
        let from = src.join(&l.rel);
        let to = dst.join(&l.rel);
        let target = fs::read_link(&from).map_err(CloneError::io("readlink", &from))?;
        std::os::unix::fs::symlink(&target, &to).map_err(CloneError::io("symlink", &to))?;
        preserve_owner(&to, &l.meta)?;
        let mtime = FileTime::from_last_modification_time(&l.meta);
        filetime::set_symlink_file_times(&to, FileTime::from_last_access_time(&l.meta), mtime)
            .map_err(CloneError::io("set times", &to))?;
    }

    // Deepest directories first, so setting a parent's mtime is the last change inside it.
    for d in dirs.iter().rev().chain(std::iter::once(&Entry {
        rel: PathBuf::new(),
        meta: root_meta,
    })) {
        finish(&dst.join(&d.rel), &d.meta, opts.read_only)?;
    }

    let bytes_logical: u64 = files.iter().map(|e| e.meta.len()).sum();
    let bytes_written = written.into_inner();
    let fallbacks = fallbacks.into_inner();
    let strategy = if opts.reflink && bytes_written == 0 {
        Strategy::Reflink
    } else {
        Strategy::Copy
    };
    if opts.reflink && fallbacks > 0 {
        tracing::warn!(src = %src.display(), fallbacks, "reflink failed midway for some files; they were copied");
    }
    Ok(CloneStats {
        strategy,
        bytes_logical,
        bytes_written,
        files: files.len() as u64,
        fallbacks,
        duration_us: started.elapsed().as_micros() as u64,
    })
}

fn walk(
    base: &Path,
    rel: &Path,
    dirs: &mut Vec<Entry>,
    files: &mut Vec<Entry>,
    links: &mut Vec<Entry>,
    skipped: &mut u64,
) -> Result<(), CloneError> {
    let dir = base.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(CloneError::io("read dir", &dir))?
        .collect::<Result<_, _>>()
        .map_err(CloneError::io("read dir", &dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = rel.join(entry.file_name());
        let path = base.join(&rel);
        // symlink_metadata: a symlink is cloned as a link, never followed.
        let meta = fs::symlink_metadata(&path).map_err(CloneError::io("stat", &path))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            dirs.push(Entry {
                rel: rel.clone(),
                meta,
            });
            walk(base, &rel, dirs, files, links, skipped)?;
        } else if ft.is_file() {
            files.push(Entry { rel, meta });
        } else if ft.is_symlink() {
            links.push(Entry { rel, meta });
        } else {
            *skipped += 1;
        }
    }
    Ok(())
}

pub enum FileOutcome {
    Reflinked,
    Copied { fallback: bool },
}

/// Errors after which a copy can still succeed: the filesystem cannot share these extents.
fn reflink_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV)
            | Some(libc::EOPNOTSUPP)
            | Some(libc::EINVAL)
            | Some(libc::ENOTTY)
            | Some(libc::ENOSYS)
    )
}

/// Clone one regular file (reflink, else copy), with its mode, owner and times.
pub fn clone_file(
    from: &Path,
    to: &Path,
    meta: &fs::Metadata,
    opts: TreeOptions,
) -> Result<FileOutcome, CloneError> {
    let mut outcome = FileOutcome::Copied { fallback: false };
    if opts.reflink {
        match reflink_copy::reflink(from, to) {
            Ok(()) => outcome = FileOutcome::Reflinked,
            Err(e) if reflink_unsupported(&e) => {
                let _ = fs::remove_file(to);
                outcome = FileOutcome::Copied { fallback: true };
            }
            Err(e) => {
                return Err(CloneError::Io {
                    op: "reflink",
                    path: from.to_path_buf(),
                    source: e,
                });
            }
        }
    }
    if !matches!(outcome, FileOutcome::Reflinked) {
        fs::copy(from, to).map_err(CloneError::io("copy", from))?;
    }
    preserve_owner(to, meta)?;
    let mut mode = meta.permissions().mode();
    if opts.read_only {
        mode &= !0o222;
    }
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .map_err(CloneError::io("chmod", to))?;
    filetime::set_file_times(
        to,
        FileTime::from_last_access_time(meta),
        FileTime::from_last_modification_time(meta),
    )
    .map_err(CloneError::io("set times", to))?;
    Ok(outcome)
}

fn finish(dir: &Path, meta: &fs::Metadata, read_only: bool) -> Result<(), CloneError> {
    preserve_owner(dir, meta)?;
    let mut mode = meta.permissions().mode();
    if read_only {
        mode &= !0o222;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(CloneError::io("chmod", dir))?;
    filetime::set_file_times(
        dir,
        FileTime::from_last_access_time(meta),
        FileTime::from_last_modification_time(meta),
    )
    .map_err(CloneError::io("set times", dir))
}

/// Keep the owner when we can (running as root); as anyone else the clone is ours.
fn preserve_owner(path: &Path, meta: &fs::Metadata) -> Result<(), CloneError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
        .map_err(CloneError::io("chown", path))
}

/// Remove a tree that may contain read-only directories (a `--read-only` clone).
pub fn remove_tree(path: &Path) -> Result<(), CloneError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(CloneError::Io {
                op: "stat",
                path: path.to_path_buf(),
                source: e,
            });
        }
        Ok(m) if !m.is_dir() => {
            return fs::remove_file(path).map_err(CloneError::io("remove", path));
        }
        Ok(_) => {}
    }
    make_writable(path)?;
    fs::remove_dir_all(path).map_err(CloneError::io("remove", path))
}

fn make_writable(dir: &Path) -> Result<(), CloneError> {
    let meta = fs::symlink_metadata(dir).map_err(CloneError::io("stat", dir))?;
    if meta.permissions().mode() & 0o700 != 0o700 {
        fs::set_permissions(
            dir,
            fs::Permissions::from_mode(meta.permissions().mode() | 0o700),
        )
        .map_err(CloneError::io("chmod", dir))?;
    }
    for entry in fs::read_dir(dir).map_err(CloneError::io("read dir", dir))? {
        let entry = entry.map_err(CloneError::io("read dir", dir))?;
        if entry
            .file_type()
            .map_err(CloneError::io("stat", dir))?
            .is_dir()
        {
            make_writable(&entry.path())?;
        }
    }
    Ok(())
}
