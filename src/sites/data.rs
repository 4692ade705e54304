//! A site's data over time: generations (frozen, consistent copies) and what is made from
//! them — a clone into a new or an existing site, a sync, a snapshot.

use super::*;

impl Sites {
    /// Freeze a consistent generation of the site's files and databases.
    pub async fn snapshot(&self, name: &str) -> Result<OperationReport> {
        validate_site_name(name)?;
        self.locked(&[(name, Mode::Exclusive)], "snapshot", async {
            let site = self.get_active(name).await?;
            self.snapshot_site(&site, true).await
        })
        .await
    }

    /// Freeze a generation of `site`; with `prune`, only the newest two are kept (never under
    /// a shared lock: another reader may be cloning an older one).
    pub(super) async fn snapshot_site(&self, site: &Site, prune: bool) -> Result<OperationReport> {
        let started = std::time::Instant::now();
        let reflink = self.reflink(site)?;
        let gen_row = self.store.add_generation(&site.id).await?;
        let dir = self.generation_dir(site, gen_row.seq);
        let live = self.live(site);
        let made = async {
            std::fs::create_dir_all(dir.join("sqlite")).map_err(CloneError::io("mkdir", &dir))?;
            let mut resources = Vec::new();
            let files = clone_tree(
                &live.join("files"),
                &dir.join("files"),
                TreeOptions::new(reflink),
            )?;
            resources.push(report("files", "files", &dir.join("files"), &files));
            for r in self.store.site_resources(&site.id).await? {
                if r.kind == "sqlite" {
                    let dest = dir.join("sqlite").join(format!("{}.db", r.name));
                    let s = sqlite::snapshot(Path::new(&r.location), &dest, reflink).await?;
                    resources.push(report("sqlite", &r.name, &dest, &s));
                } else if r.kind == "postgres" || r.kind == "mariadb" {
                    let dest = dir.join(&r.kind).join(&r.name);
                    let s = self
                        .server(&r.kind, Path::new(&r.location), true)?
                        .snapshot(Path::new(&r.location), &dest, reflink)
                        .await?;
                    resources.push(report(&r.kind, &r.name, &dest, &s));
                }
            }
            Ok::<_, SiteError>(resources)
        }
        .await;
        match made {
            Ok(resources) => {
                if prune {
                    self.prune_generations(site, 2).await?;
                }
                tracing::info!(site = %site.name, generation = gen_row.seq, "generation frozen");
                Ok(OperationReport {
                    site: site.name.clone(),
                    generation: Some(gen_row.seq),
                    duration_ms: started.elapsed().as_millis() as u64,
                    resources,
                })
            }
            Err(e) => {
                self.store.delete_generation(&gen_row.id).await?;
                self.trash(&dir)?;
                Err(e)
            }
        }
    }

    /// Keep the newest `keep` generations; older ones are removed.
    pub(super) async fn prune_generations(&self, site: &Site, keep: usize) -> Result<()> {
        let gens = self.store.generations(&site.id).await?;
        for g in gens.iter().take(gens.len().saturating_sub(keep)) {
            self.trash(&self.generation_dir(site, g.seq))?;
            self.store.delete_generation(&g.id).await?;
        }
        Ok(())
    }

    /// Copy the newest generation of `src` (freezing one if none exists) into `dst`'s live data.
    pub(super) async fn clone_generation_into(
        &self,
        src: &Site,
        dst: &Site,
        live: &Path,
        read_only: bool,
        files: bool,
        db: bool,
    ) -> Result<(i64, Vec<ResourceReport>)> {
        let seq = match self.store.generations(&src.id).await?.last() {
            Some(g) => g.seq,
            None => self
                .snapshot_site(src, false)
                .await?
                .generation
                .unwrap_or(1),
        };
        let gen_dir = self.generation_dir(src, seq);
        let reflink = self.reflink(dst)?;
        let mut out = Vec::new();
        if files {
            let dest = live.join("files");
            let s = clone_tree(
                &gen_dir.join("files"),
                &dest,
                TreeOptions {
                    read_only,
                    ..TreeOptions::new(reflink)
                },
            )?;
            out.push(
                self.record(dst, "files", "files", &self.live(dst).join("files"), &s)
                    .await?,
            );
        }
        if db {
            std::fs::create_dir_all(live.join("sqlite")).map_err(CloneError::io("mkdir", live))?;
            for r in self.store.site_resources(&src.id).await? {
                if r.kind == "postgres" || r.kind == "mariadb" {
                    // A server runs from its directory: the target's is stopped and replaced in
                    // place (a brief outage of the target only, never of the source).
                    let gen_res = gen_dir.join(&r.kind).join(&r.name);
                    let server = self.server(&r.kind, &gen_res, true)?;
                    let target = self.live(dst).join(&r.kind).join(&r.name);
                    server.remove(&target).await?;
                    self.trash(&target)?;
                    let parent = self.live(dst).join(&r.kind);
                    std::fs::create_dir_all(&parent).map_err(CloneError::io("mkdir", &parent))?;
                    let access = self.db_access(dst, &r.kind).await?;
                    let s = server
                        .clone_generation(
                            &gen_dir.join(&r.kind).join(&r.name),
                            &target,
                            reflink,
                            access,
                        )
                        .await?;
                    out.push(self.record(dst, &r.kind, &r.name, &target, &s).await?);
                }
                if r.kind == "sqlite" {
                    let file = format!("{}.db", r.name);
                    let s = sqlite::clone_snapshot(
                        &gen_dir.join("sqlite").join(&file),
                        &live.join("sqlite").join(&file),
                        reflink,
                    )?;
                    out.push(
                        self.record(
                            dst,
                            "sqlite",
                            &r.name,
                            &self.live(dst).join("sqlite").join(&file),
                            &s,
                        )
                        .await?,
                    );
                }
            }
        }
        Ok((seq, out))
    }

    /// A new site `dst` whose data is a clone of `src`'s newest generation. When `dst` exists
    /// already, its files and databases are replaced by the clone (a clone *into* it: guarded
    /// like a sync, so a protected `dst` needs the bypass).
    pub async fn clone_site(
        &self,
        src: &str,
        dst: &str,
        read_only: bool,
        guard: Guard,
    ) -> Result<OperationReport> {
        self.reading_into(
            src,
            dst,
            "clone",
            self.clone_locked(src, dst, read_only, guard),
        )
        .await
    }

    /// Run `work`, an operation `op` that reads `src` and replaces `dst`'s data, under their
    /// locks (shared on the source, exclusive on the target), once both names are valid and
    /// not the same site.
    async fn reading_into<T>(
        &self,
        src: &str,
        dst: &str,
        op: &'static str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        validate_site_name(src)?;
        validate_site_name(dst)?;
        if src == dst {
            return Err(SiteError::Invalid(format!(
                "cannot {op} a site into itself"
            )));
        }
        self.locked(&[(src, Mode::Shared), (dst, Mode::Exclusive)], op, work)
            .await
    }

    async fn clone_locked(
        &self,
        src: &str,
        dst: &str,
        read_only: bool,
        guard: Guard,
    ) -> Result<OperationReport> {
        let started = std::time::Instant::now();
        let source = self.get_active(src).await?;
        if let Some(existing) = self.store.site_by_name(dst).await? {
            if existing.id == source.id {
                return Err(SiteError::Invalid("cannot clone a site into itself".into()));
            }
            if existing.workspace_id != source.workspace_id {
                return Err(SiteError::Invalid(format!(
                    "site {dst} is in another workspace than {src}"
                )));
            }
            self.guard(&existing, "clone into", &guard).await?;
            return self
                .replace_data(&source, &existing, true, true, started)
                .await;
        }
        let site = self
            .store
            .create_site(&NewSite {
                name: dst.into(),
                workspace_id: source.workspace_id.clone(),
                region: source.region.clone(),
                parent_id: Some(source.id.clone()),
                read_only,
            })
            .await?;
        let live = self.live(&site);
        let made = async {
            std::fs::create_dir_all(&live).map_err(CloneError::io("mkdir", &live))?;
            self.clone_generation_into(&source, &site, &live, read_only, true, true)
                .await
        }
        .await;
        match made {
            Ok((seq, resources)) => {
                self.store
                    .set_site_state(&site.id, SiteState::Active)
                    .await?;
                tracing::info!(src = %src, site = %dst, generation = seq, "site cloned");
                Ok(OperationReport {
                    site: dst.into(),
                    generation: Some(seq),
                    duration_ms: started.elapsed().as_millis() as u64,
                    resources,
                })
            }
            Err(e) => {
                self.discard(&site).await?;
                Err(e)
            }
        }
    }

    /// Replace `dst`'s files and/or databases by a fresh clone of `src`'s newest generation.
    /// The new data is built beside the old and swapped in by renames.
    pub async fn sync(
        &self,
        src: &str,
        dst: &str,
        files: bool,
        db: bool,
        guard: Guard,
    ) -> Result<OperationReport> {
        self.reading_into(
            src,
            dst,
            "sync",
            self.sync_locked(src, dst, files, db, guard),
        )
        .await
    }

    async fn sync_locked(
        &self,
        src: &str,
        dst: &str,
        files: bool,
        db: bool,
        guard: Guard,
    ) -> Result<OperationReport> {
        let started = std::time::Instant::now();
        let source = self.get_active(src).await?;
        let target = self.get_active(dst).await?;
        self.guard(&target, "sync into", &guard).await?;
        let (files, db) = if files || db {
            (files, db)
        } else {
            (true, true)
        };
        self.replace_data(&source, &target, files, db, started)
            .await
    }

    /// Build `target`'s new files and/or databases beside the old from `source`'s newest
    /// generation and swap them in by renames.
    pub(super) async fn replace_data(
        &self,
        source: &Site,
        target: &Site,
        files: bool,
        db: bool,
        started: std::time::Instant,
    ) -> Result<OperationReport> {
        let dst = target.name.as_str();
        if source.region != target.region {
            return Err(SiteError::Invalid(format!(
                "{} is in region {} and {dst} in region {}: data does not move across regions",
                source.name, source.region, target.region
            )));
        }
        let staging = self
            .dir(target)
            .join(format!("incoming-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&staging).map_err(CloneError::io("mkdir", &staging))?;
        let made = self
            .clone_generation_into(source, target, &staging, target.read_only, files, db)
            .await;
        let (seq, resources) = match made {
            Ok(v) => v,
            Err(e) => {
                self.trash(&staging)?;
                return Err(e);
            }
        };
        let live = self.live(target);
        let swap = |name: &str| -> Result<()> {
            let new = staging.join(name);
            if !new.exists() {
                return Ok(());
            }
            let cur = live.join(name);
            self.trash(&cur)?;
            std::fs::rename(&new, &cur).map_err(CloneError::io("rename", &new))?;
            Ok(())
        };
        if files {
            swap("files")?;
        }
        if db {
            swap("sqlite")?;
        }
        self.trash(&staging)?;
        Ok(OperationReport {
            site: dst.into(),
            generation: Some(seq),
            duration_ms: started.elapsed().as_millis() as u64,
            resources,
        })
    }
}
