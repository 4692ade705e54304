//! A static preview's folder, made ready to be served by the gateway (which runs as endor,
//! outside the sandbox): every symbolic link must stay inside the folder, or the launch fails
//! (else a link to `/etc` or to endor's store would be served); text assets get `.gz` and `.br`
//! siblings, compressed once here, so the gateway serves them compressed at no cost per
//! request (`ServeDir`'s precompressed files, as nginx's `gzip_static`).
//!
//! Nothing runs in the preview after its build, so the folder checked here is the folder
//! served.

use std::io::Write;
use std::path::{Path, PathBuf};

/// At most this many entries are looked at (a build that makes more fails the launch).
const MAX_ENTRIES: usize = 200_000;
/// Files outside these sizes are not compressed (too small to gain, too big to wait for).
const MIN_COMPRESS: u64 = 512;
const MAX_COMPRESS: u64 = 16 << 20;
/// At most this many bytes are compressed per launch; the rest is served as it is.
const COMPRESS_BUDGET: u64 = 128 << 20;
/// The extensions of text assets worth compressing.
const TEXT: &[&str] = &[
    "html",
    "htm",
    "css",
    "js",
    "mjs",
    "cjs",
    "json",
    "map",
    "svg",
    "txt",
    "xml",
    "md",
    "csv",
    "wasm",
    "ico",
    "webmanifest",
    "rss",
    "atom",
    "ttf",
    "otf",
];

/// What preparing the folder did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub files: usize,
    /// Files given `.gz` and `.br` siblings.
    pub compressed: usize,
}

impl std::fmt::Display for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} files, {} compressed", self.files, self.compressed)
    }
}

/// Check `root` (inside `checkout`) for links that leave it, and compress its text assets.
/// The error says which link, relative to the folder.
pub fn prepare(checkout: &Path, root: &Path, shown_root: &str) -> Result<Prepared, String> {
    let checkout = checkout
        .canonicalize()
        .map_err(|e| format!("the checkout: {e}"))?;
    let real_root = root
        .canonicalize()
        .map_err(|e| format!("preview.root `{shown_root}`: {e}"))?;
    if !real_root.starts_with(&checkout) {
        return Err(format!(
            "preview.root `{shown_root}` is a link to a place outside the checkout: a static preview serves only its own files"
        ));
    }
    let mut out = Prepared::default();
    let mut budget = COMPRESS_BUDGET;
    let mut stack = vec![real_root.clone()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(format!(
                    "preview.root `{shown_root}` holds more than {MAX_ENTRIES} files and folders"
                ));
            }
            let path = entry.path();
            // Never follows a link: the entry itself.
            let kind = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if kind.is_symlink() {
                check_link(&real_root, &path, shown_root)?;
            } else if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                out.files += 1;
                if compress(&path, &mut budget) {
                    out.compressed += 1;
                }
            }
        }
    }
    Ok(out)
}

/// A link must lead inside the folder (or nowhere: a dangling link serves nothing).
fn check_link(root: &Path, link: &Path, shown_root: &str) -> Result<(), String> {
    let rel = link
        .strip_prefix(root)
        .unwrap_or(link)
        .display()
        .to_string();
    match link.canonicalize() {
        Ok(target) if target.starts_with(root) => Ok(()),
        Ok(_) => Err(format!(
            "`{}` in preview.root `{shown_root}` is a link to a place outside it: a static preview serves only its own files",
            rel.escape_debug()
        )),
        // A link to nothing (or into a loop) serves nothing.
        Err(_) => Ok(()),
    }
}

/// Write `FILE.gz` and `FILE.br` beside a text asset, unless the build made them, they would
/// not be smaller, or the budget is spent. Failing to write them only loses the compression.
fn compress(path: &Path, budget: &mut u64) -> bool {
    let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
        return false;
    };
    if !TEXT.contains(&ext.to_ascii_lowercase().as_str()) {
        return false;
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    let len = meta.len();
    if !(MIN_COMPRESS..=MAX_COMPRESS).contains(&len) || len > *budget {
        return false;
    }
    let siblings = [sibling(path, "gz"), sibling(path, "br")];
    if siblings
        .iter()
        .any(|s| std::fs::symlink_metadata(s).is_ok())
    {
        return false;
    }
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    *budget -= len;
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&data).and_then(|_| e.finish())
    };
    let br = {
        let mut out = Vec::new();
        let params = brotli::enc::BrotliEncoderParams {
            quality: 9,
            lgwin: 22,
            ..Default::default()
        };
        brotli::BrotliCompress(&mut &data[..], &mut out, &params).map(|_| out)
    };
    let (Ok(gz), Ok(br)) = (gz, br) else {
        return false;
    };
    // Worth it only if it saves a tenth.
    if gz.len() as u64 * 10 > len * 9 {
        return false;
    }
    let wrote = write_new(&siblings[0], &gz) && write_new(&siblings[1], &br);
    if !wrote {
        for s in &siblings {
            let _ = std::fs::remove_file(s);
        }
    }
    wrote
}

fn sibling(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Write a new file (never through a link or over a file the build made).
fn write_new(path: &Path, data: &[u8]) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_out_fail_links_in_pass_and_text_is_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let code = dir.path().join("code");
        let out = code.join("out");
        std::fs::create_dir_all(out.join("v2")).unwrap();
        let page = "<p>hello</p>\n".repeat(200);
        std::fs::write(out.join("v2/index.html"), &page).unwrap();
        std::fs::write(out.join("tiny.css"), "a{}").unwrap();
        std::fs::write(out.join("logo.png"), vec![7u8; 4096]).unwrap();
        std::os::unix::fs::symlink("v2", out.join("latest")).unwrap();
        std::os::unix::fs::symlink("/nowhere/at/all", out.join("dangling")).unwrap();
        let done = prepare(&code, &out, "out").unwrap();
        assert_eq!(
            done,
            Prepared {
                files: 3,
                compressed: 1
            }
        );
        let gz = std::fs::read(out.join("v2/index.html.gz")).unwrap();
        let mut back = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back)
            .unwrap();
        assert_eq!(back, page);
        let br = std::fs::read(out.join("v2/index.html.br")).unwrap();
        let mut back = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut back).unwrap();
        assert_eq!(back, page.as_bytes());
        assert!(!out.join("tiny.css.gz").exists() && !out.join("logo.png.gz").exists());
        // Again: the siblings are there, nothing is written twice.
        assert_eq!(prepare(&code, &out, "out").unwrap().compressed, 0);

        // A link out of the folder, however deep, however it is written.
        for target in ["/etc", "../..", "../../../code"] {
            let bad = out.join("v2/leak");
            std::os::unix::fs::symlink(target, &bad).unwrap();
            let e = prepare(&code, &out, "out").unwrap_err();
            assert!(e.contains("`v2/leak`") && e.contains("outside"), "{e}");
            std::fs::remove_file(&bad).unwrap();
        }
        // A sibling the build made as a link is never written through.
        std::fs::write(out.join("app.js"), "let x = 1;\n".repeat(100)).unwrap();
        std::os::unix::fs::symlink("app.js", out.join("app.js.gz")).unwrap();
        prepare(&code, &out, "out").unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("app.js")).unwrap(),
            "let x = 1;\n".repeat(100)
        );
        // The folder itself a link out of the checkout.
        std::os::unix::fs::symlink("/etc", code.join("etc")).unwrap();
        let e = prepare(&code, &code.join("etc"), "etc").unwrap_err();
        assert!(e.contains("outside the checkout"), "{e}");
    }
}
