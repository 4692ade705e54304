//! Removing a site's data for good, and sweeping what no live site owns: directories are
//! renamed into `.trash` first, servers stopped before their directory goes.

use super::*;

impl Sites {
    pub(super) async fn discard(&self, site: &Site) -> Result<()> {
        self.store
            .set_site_state(&site.id, SiteState::Deleting)
            .await?;
        // Servers first: a running server must never lose its directory under it.
        self.stop_servers(&self.dir(site)).await?;
        self.trash(&self.dir(site))?;
        self.store.delete_resources(&site.id).await?;
        for g in self.store.generations(&site.id).await? {
            self.store.delete_generation(&g.id).await?;
        }
        self.store
            .set_site_state(&site.id, SiteState::Deleted)
            .await?;
        Ok(())
    }

    /// Move `path` into the trash and empty the trash. A crash between the two leaves only
    /// trash, which the sweep removes.
    pub(super) fn trash(&self, path: &Path) -> Result<()> {
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        let trash = self.root_of_path(path).join(".trash");
        std::fs::create_dir_all(&trash).map_err(CloneError::io("mkdir", &trash))?;
        let dest = trash.join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::rename(path, &dest).map_err(CloneError::io("rename", path))?;
        remove_tree(&dest)?;
        Ok(())
    }

    /// Remove what no live site owns: directories under the storage root that are not a live
    /// site's (older than `grace`, so a site being created is never swept) and the trash.
    pub async fn sweep(&self, grace: std::time::Duration, dry_run: bool) -> Result<SweepReport> {
        let mut report = SweepReport {
            dry_run,
            ..Default::default()
        };
        let live: std::collections::HashSet<SiteId> = self
            .store
            .list_sites()
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        let entries = self
            .regions
            .roots()
            .into_iter()
            .filter_map(|root| std::fs::read_dir(root).ok())
            .flat_map(|d| d.flatten());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let orphan = if name == ".trash" {
                std::fs::read_dir(&path)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false)
            } else if name.starts_with(".endor-probe-") || name == ".endor-reflink" {
                // The reflink probe's file and its remembered answer are not a site's.
                false
            } else {
                !live.contains(&SiteId::from(name.as_str())) && older_than(&path, grace)
            };
            if !orphan {
                continue;
            }
            report.removed.push(path.clone());
            if !dry_run {
                self.stop_servers(&path).await?;
                if name == ".trash" {
                    remove_tree(&path)?;
                } else {
                    self.trash(&path)?;
                }
            }
        }
        if !report.removed.is_empty() {
            tracing::info!(
                count = report.removed.len(),
                dry_run,
                "orphaned site data swept"
            );
        }
        Ok(report)
    }
}

fn older_than(path: &Path, grace: std::time::Duration) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().unwrap_or_default() >= grace)
        .unwrap_or(true)
}
