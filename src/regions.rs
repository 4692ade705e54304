//! Regions (SPEC §12): where a site's files, databases and backups live.
//!
//! A region is configured by `[regions.NAME]`; without any there is one region, `default`, on
//! `storage.root`. A site is created in one concrete region and stays there: a clone, sync,
//! backup or restore stays in the parent's region, and nothing moves a site to another region.
//!
//! How a requested name resolves ([`Regions::resolve`]): a concrete region's own name is that
//! region; otherwise the name is an alias, and of the regions listing it the default region
//! wins when it is one of them, else the first by name. An unknown name is an error that lists
//! what exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Config;

/// One configured region, with its folders made absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub name: String,
    pub storage_root: PathBuf,
    pub aliases: Vec<String>,
    /// PostgreSQL server of the `template` strategy (empty: none).
    pub postgres_admin_url: String,
    /// restic repository of its backups (empty: backups are off there).
    pub backup_repository: String,
    pub shared_storage: bool,
}

/// Every region of a config.
#[derive(Debug, Clone)]
pub struct Regions {
    default: String,
    list: BTreeMap<String, Region>,
    /// `storage.root`: the folder of sites whose region is no longer configured.
    fallback_root: PathBuf,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Regions {
    pub fn new(config: &Config) -> Self {
        let fallback_root = absolute(&config.storage.root);
        let mut list = BTreeMap::new();
        if config.regions.list.is_empty() {
            list.insert(
                config.regions.default.clone(),
                Region {
                    name: config.regions.default.clone(),
                    storage_root: fallback_root.clone(),
                    aliases: Vec::new(),
                    postgres_admin_url: config.postgres.admin_url.clone(),
                    backup_repository: config.backups.repository.clone(),
                    shared_storage: false,
                },
            );
        }
        for (name, r) in &config.regions.list {
            let or = |own: &str, global: &str| {
                if own.trim().is_empty() {
                    global.to_string()
                } else {
                    own.to_string()
                }
            };
            list.insert(
                name.clone(),
                Region {
                    name: name.clone(),
                    storage_root: absolute(&r.storage_root),
                    aliases: r.aliases.clone(),
                    postgres_admin_url: or(&r.postgres_admin_url, &config.postgres.admin_url),
                    backup_repository: or(&r.backup_repository, &config.backups.repository),
                    shared_storage: r.shared_storage,
                },
            );
        }
        Self {
            default: config.regions.default.clone(),
            list,
            fallback_root,
        }
    }

    /// The default region's name.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    pub fn get(&self, name: &str) -> Option<&Region> {
        self.list.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Region> {
        self.list.values()
    }

    /// The concrete region `requested` names (`None`: the default), by the rule in the module
    /// doc.
    pub fn resolve(&self, requested: Option<&str>) -> Result<&Region, String> {
        let name = requested.map(str::trim).unwrap_or(&self.default);
        if let Some(r) = self.list.get(name) {
            return Ok(r);
        }
        let mut matching = self
            .list
            .values()
            .filter(|r| r.aliases.iter().any(|a| a == name));
        let first = matching.next();
        let default = self
            .list
            .get(&self.default)
            .filter(|d| d.aliases.iter().any(|a| a == name));
        default.or(first).ok_or_else(|| {
            let mut known: Vec<&str> = Vec::new();
            for r in self.list.values() {
                known.push(&r.name);
                known.extend(r.aliases.iter().map(String::as_str));
            }
            format!(
                "no region or region alias named {name:?} (known: {})",
                known.join(", ")
            )
        })
    }

    /// The folder sites of region `name` live under (`storage.root` when it is not configured
    /// any more: where such a site was made).
    pub fn root_of(&self, name: &str) -> &Path {
        self.list
            .get(name)
            .map(|r| r.storage_root.as_path())
            .unwrap_or(&self.fallback_root)
    }

    /// The region whose storage root `path` is under (the deepest, should roots nest).
    pub fn region_at(&self, path: &Path) -> Option<&Region> {
        deepest(
            path,
            self.list.values().map(|r| (r.storage_root.as_path(), r)),
        )
    }

    /// The storage root `path` is under (a region's, or `storage.root`), else the default
    /// region's: where its trash and reflink probe are.
    pub fn root_at(&self, path: &Path) -> &Path {
        let roots = self
            .list
            .values()
            .map(|r| r.storage_root.as_path())
            .chain([self.fallback_root.as_path()]);
        deepest(path, roots.map(|r| (r, r))).unwrap_or_else(|| self.root_of(&self.default))
    }

    /// Every folder sites live under, each once.
    pub fn roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = self.list.values().map(|r| r.storage_root.clone()).collect();
        roots.push(self.fallback_root.clone());
        roots.sort();
        roots.dedup();
        roots
    }

    /// The names a site of region `name` answers to: the concrete one first, then its aliases.
    pub fn names_of(&self, name: &str) -> Vec<String> {
        let mut names = vec![name.to_string()];
        if let Some(r) = self.list.get(name) {
            names.extend(r.aliases.iter().cloned());
        }
        names
    }
}

/// The item of the deepest root that `path` is under.
fn deepest<'a, T>(path: &Path, roots: impl Iterator<Item = (&'a Path, T)>) -> Option<T> {
    roots
        .filter(|(root, _)| path.starts_with(root))
        .max_by_key(|(root, _)| root.as_os_str().len())
        .map(|(_, item)| item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegionConfig;

    fn config() -> Config {
        let mut c = Config::default();
        c.regions.default = "eu-frankfurt".into();
        for (name, aliases) in [
            ("eu-frankfurt", vec!["europe", "eu"]),
            ("eu-paris", vec!["europe", "eu-west"]),
            ("us-east", vec!["america"]),
        ] {
            c.regions.list.insert(
                name.into(),
                RegionConfig {
                    storage_root: format!("/srv/{name}").into(),
                    aliases: aliases.into_iter().map(String::from).collect(),
                    ..Default::default()
                },
            );
        }
        c
    }

    #[test]
    fn names_and_aliases_resolve_by_the_documented_rule() {
        let r = Regions::new(&config());
        assert_eq!(r.resolve(None).unwrap().name, "eu-frankfurt");
        assert_eq!(r.resolve(Some("eu-paris")).unwrap().name, "eu-paris");
        // Two regions list "europe": the default is one of them and wins.
        assert_eq!(r.resolve(Some("europe")).unwrap().name, "eu-frankfurt");
        assert_eq!(r.resolve(Some("eu-west")).unwrap().name, "eu-paris");
        assert_eq!(r.resolve(Some("america")).unwrap().name, "us-east");
        let e = r.resolve(Some("mars")).unwrap_err();
        assert!(e.contains("\"mars\"") && e.contains("europe"), "{e}");
        assert_eq!(r.root_of("us-east"), Path::new("/srv/us-east"));
        let site = Path::new("/srv/eu-paris/0123/live");
        assert_eq!(r.region_at(site).unwrap().name, "eu-paris");
        assert_eq!(r.root_at(site), Path::new("/srv/eu-paris"));
        assert!(r.region_at(Path::new("/elsewhere")).is_none());
        assert_eq!(
            r.root_at(Path::new("/elsewhere")),
            Path::new("/srv/eu-frankfurt")
        );
        assert_eq!(r.names_of("eu-paris"), ["eu-paris", "europe", "eu-west"]);
    }

    #[test]
    fn an_alias_without_the_default_goes_to_the_first_region_by_name() {
        let mut c = config();
        c.regions.default = "us-east".into();
        let r = Regions::new(&c);
        assert_eq!(r.resolve(Some("europe")).unwrap().name, "eu-frankfurt");
        assert_eq!(r.resolve(None).unwrap().name, "us-east");
    }

    #[test]
    fn without_regions_there_is_one_on_the_storage_root() {
        let c = Config::default();
        let r = Regions::new(&c);
        assert_eq!(r.resolve(None).unwrap().name, "default");
        assert_eq!(r.root_of("default"), absolute(&c.storage.root));
        assert!(r.resolve(Some("europe")).is_err());
        c.regions.check().unwrap();
    }

    #[test]
    fn bad_region_configs_are_refused_with_the_reason() {
        let mut c = config();
        c.regions.default = "nowhere".into();
        assert!(c.regions.check().unwrap_err().contains("not one of"));
        let mut c = config();
        c.regions.list.get_mut("eu-paris").unwrap().storage_root = PathBuf::new();
        assert!(c.regions.check().unwrap_err().contains("storage_root"));
        let mut c = config();
        c.regions.list.get_mut("eu-paris").unwrap().aliases = vec!["us-east".into()];
        assert!(c.regions.check().unwrap_err().contains("also the name"));
        let mut c = config();
        c.regions.list.get_mut("eu-paris").unwrap().aliases = vec!["../x".into()];
        assert!(c.regions.check().is_err());
    }

    #[test]
    fn region_tables_load_from_the_config_file() {
        let dir = std::env::temp_dir().join(format!("endor-regions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("endor.toml");
        std::fs::write(
            &file,
            "[regions]\ndefault = \"eu-frankfurt\"\n\
             [regions.eu-frankfurt]\nstorage_root = \"/srv/fra\"\naliases = [\"europe\"]\n\
             [regions.us-east]\nstorage_root = \"/srv/use\"\nshared_storage = true\n",
        )
        .unwrap();
        let c = Config::load(Some(&file)).unwrap();
        let r = Regions::new(&c);
        assert_eq!(
            r.resolve(Some("europe")).unwrap().storage_root,
            Path::new("/srv/fra")
        );
        assert!(r.get("us-east").unwrap().shared_storage);
        // A misspelt key inside a region table names itself.
        std::fs::write(
            &file,
            "[regions]\ndefault = \"a\"\n[regions.a]\nstorage_root = \"/x\"\nalias = [\"e\"]\n",
        )
        .unwrap();
        let e = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("alias"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
