//! A site's logs: which services a site has a log for ([`Service`]), where each is kept
//! (`{storage.logs}/{site id}/{service}.log`), and reading what was appended since an offset
//! (what `endor site logs -f` follows). Logs go with the site.

use std::path::{Path, PathBuf};

crate::ids::stored_enum! {
    /// The services of a site that write a log.
    pub enum Service {
        /// The build steps' output, rewritten by each build.
        Build = "build",
        /// The site process's output.
        Web = "web",
        /// Ad-hoc commands (`endor site exec`): who ran what, its output, how it ended.
        Exec = "exec",
    }
}

impl Service {
    /// The service a user named, or an error that lists the ones there are.
    pub fn named(name: &str) -> Result<Self, String> {
        Self::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
            format!(
                "no log service `{}`: a site has {}",
                name.escape_debug(),
                known.join(", ")
            )
        })
    }
}

/// The log file of one of a site's services.
pub fn path(logs: &Path, site_id: &crate::ids::SiteId, service: Service) -> PathBuf {
    logs.join(site_id.as_str()).join(format!("{service}.log"))
}

/// Make the folder of a site's logs; the logs root, when missing, readable by endor alone.
pub fn create_dir(logs: &Path, site_id: &crate::ids::SiteId) -> std::io::Result<()> {
    crate::unix::create_private_dir(logs)?;
    std::fs::create_dir_all(logs.join(site_id.as_str()))
}

/// What a log holds past `offset`, and the offset to read from next. A log shorter than
/// `offset` was rewritten (a new build): it is read from the start. `None` when there is no
/// log (yet).
pub fn read_since(path: &Path, offset: usize) -> std::io::Result<Option<(Vec<u8>, usize)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let from = if bytes.len() < offset { 0 } else { offset };
    let end = bytes.len();
    Ok(Some((bytes[from..].to_vec(), end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_named_and_unknown_ones_listed() {
        assert_eq!(Service::named("web"), Ok(Service::Web));
        let e = Service::named("../../etc/passwd").unwrap_err();
        assert!(e.contains("build, web, exec"), "{e}");
        assert_eq!(
            path(Path::new("/l"), &"s1".into(), Service::Build),
            PathBuf::from("/l/s1/build.log")
        );
    }

    #[test]
    fn reading_follows_appends_and_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("web.log");
        assert!(read_since(&p, 0).unwrap().is_none());
        std::fs::write(&p, b"one\n").unwrap();
        let (got, at) = read_since(&p, 0).unwrap().unwrap();
        assert_eq!((got.as_slice(), at), (&b"one\n"[..], 4));
        std::fs::write(&p, b"one\ntwo\n").unwrap();
        assert_eq!(read_since(&p, at).unwrap().unwrap().0, b"two\n");
        std::fs::write(&p, b"x\n").unwrap();
        assert_eq!(read_since(&p, 8).unwrap().unwrap(), (b"x\n".to_vec(), 2));
    }
}
