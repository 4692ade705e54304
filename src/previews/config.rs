//! `.endor.toml`, read from a repository's **default branch** (never from the PR head, which an
//! outsider controls). A file that does not parse is a failed preview with the parse error
//! shown, never a crash.

use serde::Deserialize;

use crate::config::LimitsConfig;
use crate::duration::HumanDuration;
use crate::runtime::Limits;
use crate::size::ByteSize;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    #[serde(default)]
    pub preview: PreviewConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreviewConfig {
    /// Site whose files and databases are cloned; none means an empty site.
    pub parent: Option<String>,
    /// Expiry after the last activity; the workspace default when absent.
    pub ttl: Option<HumanDuration>,
    /// Commands run in the checkout, in order.
    pub build: Vec<String>,
    /// A process to run (gets PORT, DATABASE_URL, ENDOR_FILES_DIR, ENDOR_SITE).
    pub start: Option<String>,
    /// Without `start`, the folder the gateway serves statically.
    pub root: Option<String>,
    /// Path that must answer 2xx/3xx before the site counts as ready.
    pub health: String,
    /// With `runtime.kind = "docker"`: the image build steps and the start command run in.
    pub image: Option<String>,
    /// Lower limits than `[runtime.limits]` for this repository's previews (higher ones are
    /// capped at the configured limits).
    pub limits: RepoLimits,
}

/// `[preview.limits]`: each optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepoLimits {
    pub memory: Option<ByteSize>,
    pub cpus: Option<f64>,
    pub processes: Option<u32>,
    pub disk: Option<ByteSize>,
}

impl RepoLimits {
    /// The limits a preview gets: the configured ones, lowered where the repository asks.
    pub fn within(&self, host: &LimitsConfig) -> Limits {
        Limits {
            memory: self
                .memory
                .map_or(host.memory.0, |m| m.0.min(host.memory.0)),
            cpus: self.cpus.map_or(host.cpus, |c| c.min(host.cpus)),
            processes: self
                .processes
                .map_or(host.processes, |p| p.min(host.processes)),
            disk: self.disk.map_or(host.disk.0, |d| d.0.min(host.disk.0)),
        }
    }
}

impl Default for PreviewConfig {
    fn default() -> Self {
        Self {
            parent: None,
            ttl: None,
            build: Vec::new(),
            start: None,
            root: None,
            health: "/".into(),
            image: None,
            limits: RepoLimits::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(".endor.toml: {0}")]
pub struct RepoConfigError(pub String);

const MAX_CONFIG_BYTES: usize = 64 * 1024;

impl RepoConfig {
    pub fn parse(text: &str) -> Result<Self, RepoConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(RepoConfigError(format!(
                "file is over {MAX_CONFIG_BYTES} bytes"
            )));
        }
        let cfg: RepoConfig = toml::from_str(text).map_err(|e| {
            // One line (it goes into a status, a comment and `preview list`): the message and
            // where, without the excerpt toml draws under it.
            let message = e.message().trim().replace('\n', " ");
            RepoConfigError(match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("{message} (line {line}, column {column})")
                }
                None => message,
            })
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), RepoConfigError> {
        let p = &self.preview;
        if let Some(parent) = &p.parent {
            crate::sites::validate_site_name(parent)
                .map_err(|e| RepoConfigError(format!("preview.parent: {e}")))?;
        }
        if let Some(root) = &p.root {
            let bad = root.starts_with('/')
                || root.split('/').any(|s| s == "..")
                || root.contains('\0')
                || root.is_empty();
            if bad {
                return Err(RepoConfigError(format!(
                    "preview.root `{}` must be a relative path inside the repository",
                    root.escape_debug()
                )));
            }
        }
        if !p.health.starts_with('/') || p.health.chars().any(|c| c.is_control() || c == ' ') {
            return Err(RepoConfigError(format!(
                "preview.health `{}` must be a path starting with /",
                p.health.escape_debug()
            )));
        }
        if p.build.len() > 50
            || p.build
                .iter()
                .any(|c| c.trim().is_empty() || c.contains('\0'))
        {
            return Err(RepoConfigError(
                "preview.build must be at most 50 non-empty commands".into(),
            ));
        }
        if p.start
            .as_deref()
            .is_some_and(|s| s.trim().is_empty() || s.contains('\0'))
        {
            return Err(RepoConfigError(
                "preview.start must be a non-empty command".into(),
            ));
        }
        if p.image.as_deref().is_some_and(|i| {
            i.is_empty()
                || i.len() > 255
                || i.starts_with('-')
                || !i
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
        }) {
            return Err(RepoConfigError(
                "preview.image must be an image reference such as python:3.12-slim".into(),
            ));
        }
        let l = &p.limits;
        if l.cpus.is_some_and(|c| !(c.is_finite() && c >= 0.01)) {
            return Err(RepoConfigError(
                "preview.limits.cpus must be a number of cores of at least 0.01".into(),
            ));
        }
        if l.processes.is_some_and(|n| n < 8) {
            return Err(RepoConfigError(
                "preview.limits.processes must be at least 8".into(),
            ));
        }
        if l.memory.is_some_and(|m| m.0 < 16 << 20) {
            return Err(RepoConfigError(
                "preview.limits.memory must be at least 16MiB".into(),
            ));
        }
        if p.start.is_some() && p.root.is_some() {
            return Err(RepoConfigError("preview.start and preview.root exclude each other: a site is either a process or a static folder".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example() {
        let cfg = RepoConfig::parse(
            r#"
            [preview]
            parent = "production"
            ttl = "72h"
            build = ["npm ci", "npm run build"]
            start = "node server.js"
            health = "/healthz"
            "#,
        )
        .unwrap();
        let p = cfg.preview;
        assert_eq!(p.parent.as_deref(), Some("production"));
        assert_eq!(p.ttl.unwrap().0.as_secs(), 72 * 3600);
        assert_eq!(p.build, vec!["npm ci", "npm run build"]);
        assert_eq!(p.start.as_deref(), Some("node server.js"));
        assert_eq!(p.health, "/healthz");
    }

    #[test]
    fn repository_limits_only_lower_the_configured_ones() {
        let cfg = RepoConfig::parse(
            r#"
            [preview.limits]
            memory = "128MiB"
            cpus = 4.0
            processes = 64
            "#,
        )
        .unwrap();
        let host = LimitsConfig::default();
        let l = cfg.preview.limits.within(&host);
        assert_eq!(l.memory, 128 << 20);
        assert_eq!(l.cpus, 1.0, "capped at runtime.limits.cpus");
        assert_eq!(l.processes, 64);
        assert_eq!(l.disk, host.disk.0);
        for bad in [
            "[preview.limits]\nmemory = \"1MiB\"",
            "[preview.limits]\ncpus = -1.0",
            "[preview.limits]\nprocesses = 1",
            "[preview.limits]\nswap = \"1GiB\"",
            "[preview.limits]\nmemory = \"lots\"",
        ] {
            assert!(RepoConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_file_means_defaults() {
        let cfg = RepoConfig::parse("").unwrap();
        assert_eq!(cfg.preview, PreviewConfig::default());
        assert_eq!(
            RepoConfig::parse("[preview]\nroot = \"public\"\n")
                .unwrap()
                .preview
                .root
                .as_deref(),
            Some("public")
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, needle) in [
            ("this is not toml", "expected"),
            ("[preview]\nttl = \"3 weeks\"", "invalid duration"),
            ("[preview]\nttl = \"0h\"", "invalid duration"),
            ("[preview]\nparent = \"../etc\"", "preview.parent"),
            ("[preview]\nroot = \"../../etc\"", "preview.root"),
            ("[preview]\nroot = \"/etc\"", "preview.root"),
            ("[preview]\nhealth = \"healthz\"", "preview.health"),
            ("[preview]\nbuild = [\"\"]", "preview.build"),
            (
                "[preview]\nstart = \"x\"\nroot = \"public\"",
                "exclude each other",
            ),
            ("[preview]\nparnet = \"production\"", "unknown field"),
            ("[previews]\nparent = \"production\"", "unknown field"),
            ("[preview]\nbuild = \"npm ci\"", "invalid type"),
        ] {
            let err = RepoConfig::parse(text).unwrap_err().to_string();
            assert!(err.starts_with(".endor.toml: "), "{err}");
            assert!(
                err.contains(needle),
                "{text:?} gave {err:?}, expected {needle:?}"
            );
        }
        assert!(
            RepoConfig::parse(&"#".repeat(70_000))
                .unwrap_err()
                .to_string()
                .contains("over")
        );
    }
}
