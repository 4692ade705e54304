//! What a backup needs of a site: a frozen generation held while it is read, and a
//! generation restored from elsewhere made the site's data.

use super::*;

/// The resources a generation directory holds: `(kind, name)` for `files`, each
/// `sqlite/NAME.db`, and each `postgres/NAME` and `mariadb/NAME`.
pub fn generation_resources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if dir.join("files").is_dir() {
        out.push(("files".to_string(), "files".to_string()));
    }
    for kind in ["sqlite", "postgres", "mariadb"] {
        let Ok(entries) = std::fs::read_dir(dir.join(kind)) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| match kind {
                "sqlite" => n.strip_suffix(".db").map(str::to_string),
                _ => Some(n),
            })
            .collect();
        names.sort();
        out.extend(names.into_iter().map(|n| (kind.to_string(), n)));
    }
    out
}

impl Sites {
    /// Freeze a generation of `name` and run `work` on it (the site and the generation's
    /// directory) while holding the site shared: other readers (clones, previews) go on, and
    /// nothing prunes the generation before `work` is done. The site serves throughout.
    pub async fn read_frozen<T, Fut>(
        &self,
        name: &str,
        work: impl FnOnce(Site, PathBuf) -> Fut,
    ) -> Result<T>
    where
        Fut: std::future::Future<Output = T>,
    {
        validate_site_name(name)?;
        let seq = self
            .locked(&[(name, Mode::Exclusive)], "back up", async {
                let site = self.get_active(name).await?;
                let report = self.snapshot_site(&site, true).await?;
                Ok(report.generation.unwrap_or_default())
            })
            .await?;
        self.locked(&[(name, Mode::Shared)], "back up", async {
            let site = self.get_active(name).await?;
            let dir = self.generation_dir(&site, seq);
            if !dir.is_dir() {
                return Err(SiteError::Busy(format!(
                    "site {name}: the generation to back up was replaced meanwhile; try again"
                )));
            }
            Ok(work(site, dir).await)
        })
        .await
    }

    /// Keep a copy-on-write copy of a backed-up generation beside the site
    /// (`{site}/backups/{backup id}`), so that a restore on this host need not read the
    /// repository; only the newest `keep` copies stay.
    pub fn keep_local_copy(
        &self,
        site: &Site,
        generation: &Path,
        backup_id: &str,
        keep: usize,
    ) -> Result<()> {
        let dir = self.dir(site).join("backups");
        std::fs::create_dir_all(&dir).map_err(CloneError::io("mkdir", &dir))?;
        if keep > 0 {
            clone_tree(
                generation,
                &dir.join(backup_id),
                TreeOptions::new(self.reflink(site)?),
            )?;
        }
        let mut copies: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(CloneError::io("read", &dir))?
            .flatten()
            .map(|e| e.path())
            .collect();
        // Backup ids are UUIDv7: their order is their age.
        copies.sort();
        for old in copies.iter().take(copies.len().saturating_sub(keep)) {
            self.trash(old)?;
        }
        Ok(())
    }

    /// The local copy of backup `backup_id` of the site with id `site_id`, if this host has it.
    pub fn local_copy(&self, site_id: &SiteId, backup_id: &str) -> Option<PathBuf> {
        self.regions.roots().into_iter().find_map(|root| {
            let p = root.join(site_id.as_str()).join("backups").join(backup_id);
            p.is_dir().then_some(p)
        })
    }

    /// Fill `to` with a copy-on-write copy of `from` (a local backup copy).
    pub fn copy_generation(&self, from: &Path, to: &Path) -> Result<()> {
        let _ = std::fs::remove_dir(to);
        clone_tree(from, to, TreeOptions::new(self.reflink_at(to)?))?;
        Ok(())
    }

    /// The folder of `name`'s newest generation.
    pub async fn newest_generation_dir(&self, name: &str) -> Result<PathBuf> {
        let site = self.get(name).await?;
        let g = self
            .store
            .generations(&site.id)
            .await?
            .last()
            .cloned()
            .ok_or_else(|| SiteError::NotFound(format!("a generation of {name}")))?;
        Ok(self.generation_dir(&site, g.seq))
    }

    /// Make `name`'s data what `fill` puts in a fresh generation directory (files/, sqlite/,
    /// postgres/, mariadb/ as a snapshot lays them out), guarded like a sync (a protected site
    /// needs the bypass, which is audited). The new generation becomes the site's newest,
    /// and its live data is rebuilt from it as a sync does; a failed `fill` leaves the site
    /// as it was.
    pub async fn restore_with<E, Fut>(
        &self,
        name: &str,
        guard: Guard,
        fill: impl FnOnce(PathBuf) -> Fut,
    ) -> Result<std::result::Result<OperationReport, E>>
    where
        Fut: std::future::Future<Output = std::result::Result<(), E>>,
    {
        validate_site_name(name)?;
        self.locked(&[(name, Mode::Exclusive)], "restore", async {
            let started = std::time::Instant::now();
            let site = self.get_active(name).await?;
            self.guard(&site, "restore into", &guard).await?;
            let gen_row = self.store.add_generation(&site.id).await?;
            let dir = self.generation_dir(&site, gen_row.seq);
            std::fs::create_dir_all(&dir).map_err(CloneError::io("mkdir", &dir))?;
            if let Err(e) = fill(dir.clone()).await {
                self.store.delete_generation(&gen_row.id).await?;
                self.trash(&dir)?;
                return Ok(Err(e));
            }
            // A site restored from another's backup has no rows for its databases yet.
            let known = self.store.site_resources(&site.id).await?;
            for (kind, rname) in generation_resources(&dir) {
                if kind == "files" || known.iter().any(|r| r.kind == kind && r.name == rname) {
                    continue;
                }
                let location = match kind.as_str() {
                    "sqlite" => self.live(&site).join("sqlite").join(format!("{rname}.db")),
                    _ => self.live(&site).join(&kind).join(&rname),
                };
                self.store
                    .put_resource(&SiteResource {
                        site_id: site.id.clone(),
                        kind: kind.clone(),
                        name: rname.clone(),
                        strategy: "restore".into(),
                        location: location.display().to_string(),
                        bytes_logical: 0,
                        bytes_written: 0,
                        duration_us: 0,
                        updated_at: crate::now_ms(),
                    })
                    .await?;
            }
            let report = self.replace_data(&site, &site, true, true, started).await?;
            self.prune_generations(&site, 2).await?;
            tracing::info!(site = %site.name, generation = gen_row.seq, "site restored");
            Ok(Ok(report))
        })
        .await
    }
}
