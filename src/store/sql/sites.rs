//! Sites, their resources, generations, tags, access settings and routes.

macro_rules! impl_sites {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::SiteStore for $store {
            async fn create_site(&self, s: &$crate::store::NewSite) -> $crate::store::Result<$crate::store::Site> {
                let row: $crate::store::sql::SiteRow = sqlx::query_as(concat!(
                    "INSERT INTO sites (id, name, workspace_id, region, parent_id, read_only, state, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'creating', $7) RETURNING ",
                    $crate::store::sql::site_columns!()
                ))
                .bind($crate::store::new_id())
                .bind(&s.name)
                .bind(&s.workspace_id)
                .bind(&s.region)
                .bind(&s.parent_id)
                .bind(s.read_only as i64)
                .bind($crate::now_ms())
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_unique(&format!("site {}", s.name)))?;
                row.try_into()
            }

            async fn set_site_state(&self, id: &$crate::ids::SiteId, state: $crate::store::SiteState) -> $crate::store::Result<()> {
                let deleted_at = (state == $crate::store::SiteState::Deleted).then($crate::now_ms);
                // A deleted site gives its uid back.
                sqlx::query("UPDATE sites SET state = $1, deleted_at = COALESCE($2, deleted_at), \
                             uid = CASE WHEN $1 = 'deleted' THEN NULL ELSE uid END WHERE id = $3")
                    .bind(state.as_str())
                    .bind(deleted_at)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn set_site_protected(&self, id: &$crate::ids::SiteId, protected: bool) -> $crate::store::Result<()> {
                sqlx::query("UPDATE sites SET protected = $1 WHERE id = $2")
                    .bind(protected as i64)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn assign_site_uid(&self, id: &$crate::ids::SiteId, first: u32, last: u32) -> $crate::store::Result<u32> {
                for _ in 0..16 {
                    let current: Option<(Option<i64>,)> = sqlx::query_as("SELECT uid FROM sites WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                    match current {
                        None => return Err($crate::store::StoreError::NotFound(format!("site {id}"))),
                        Some((Some(uid),)) => return Ok(uid as u32),
                        Some((None,)) => {}
                    }
                    let taken: Vec<(i64,)> = sqlx::query_as(
                        "SELECT uid FROM sites WHERE uid >= $1 AND uid <= $2 ORDER BY uid",
                    )
                    .bind(first as i64)
                    .bind(last as i64)
                    .fetch_all(&self.pool)
                    .await?;
                    // The lowest uid of the range no site holds.
                    let mut free = first as i64;
                    for (t,) in taken {
                        if t == free { free += 1 } else if t > free { break }
                    }
                    if free > last as i64 {
                        return Err($crate::store::StoreError::Exhausted(format!(
                            "every uid of runtime.uid_range {first}-{last} is held by a live site"
                        )));
                    }
                    // Another process may take the same one first: the unique index says so
                    // and the next round picks again.
                    match sqlx::query("UPDATE sites SET uid = $1 WHERE id = $2 AND uid IS NULL")
                        .bind(free)
                        .bind(id)
                        .execute(&self.pool)
                        .await
                    {
                        Ok(_) => continue,
                        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err($crate::store::StoreError::Unavailable("no uid could be assigned after 16 tries".into()))
            }

            async fn site_by_name(&self, name: &str) -> $crate::store::Result<Option<$crate::store::Site>> {
                let row: Option<$crate::store::sql::SiteRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::site_columns!(),
                    " FROM sites WHERE name = $1 AND state <> 'deleted'"
                ))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn sites_ever_named(&self, name: &str) -> $crate::store::Result<Vec<$crate::ids::SiteId>> {
                let rows: Vec<($crate::ids::SiteId,)> =
                    sqlx::query_as("SELECT id FROM sites WHERE name = $1 ORDER BY created_at, id")
                        .bind(name)
                        .fetch_all(&self.pool)
                        .await?;
                Ok(rows.into_iter().map(|r| r.0).collect())
            }

            async fn site(&self, id: &$crate::ids::SiteId) -> $crate::store::Result<Option<$crate::store::Site>> {
                let row: Option<$crate::store::sql::SiteRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::site_columns!(),
                    " FROM sites WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn list_sites(&self) -> $crate::store::Result<Vec<$crate::store::Site>> {
                let rows: Vec<$crate::store::sql::SiteRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::site_columns!(),
                    " FROM sites WHERE state <> 'deleted' ORDER BY name"
                ))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn put_resource(&self, r: &$crate::store::SiteResource) -> $crate::store::Result<()> {
                sqlx::query(concat!(
                    "INSERT INTO site_resources (",
                    $crate::store::sql::resource_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (site_id, kind, name) DO UPDATE SET strategy = excluded.strategy, \
                     location = excluded.location, bytes_logical = excluded.bytes_logical, \
                     bytes_written = excluded.bytes_written, duration_us = excluded.duration_us, \
                     updated_at = excluded.updated_at"
                ))
                .bind(&r.site_id)
                .bind(&r.kind)
                .bind(&r.name)
                .bind(&r.strategy)
                .bind(&r.location)
                .bind(r.bytes_logical)
                .bind(r.bytes_written)
                .bind(r.duration_us)
                .bind(r.updated_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn site_resources(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<Vec<$crate::store::SiteResource>> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::resource_columns!(),
                    " FROM site_resources WHERE site_id = $1 ORDER BY kind, name"
                ))
                .bind(site_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn delete_resources(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<()> {
                sqlx::query("DELETE FROM site_resources WHERE site_id = $1")
                    .bind(site_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn add_generation(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<$crate::store::Generation> {
                Ok(sqlx::query_as(
                    "INSERT INTO generations (id, site_id, seq, created_at) \
                     SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3 FROM generations WHERE site_id = $2 \
                     RETURNING id, site_id, seq, created_at",
                )
                .bind($crate::store::new_id())
                .bind(site_id)
                .bind($crate::now_ms())
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_unique("generation"))?)
            }

            async fn generations(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<Vec<$crate::store::Generation>> {
                Ok(sqlx::query_as(
                    "SELECT id, site_id, seq, created_at FROM generations WHERE site_id = $1 ORDER BY seq",
                )
                .bind(site_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn all_site_resources(&self) -> $crate::store::Result<Vec<$crate::store::SiteResource>> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::resource_columns!(),
                    " FROM site_resources ORDER BY site_id, kind, name"
                ))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn all_generations(&self) -> $crate::store::Result<Vec<$crate::store::Generation>> {
                Ok(sqlx::query_as("SELECT id, site_id, seq, created_at FROM generations ORDER BY site_id, seq")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn all_site_tags(&self) -> $crate::store::Result<Vec<($crate::ids::SiteId, String)>> {
                Ok(sqlx::query_as("SELECT site_id, tag FROM site_tags ORDER BY site_id, tag")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn site_tags(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<Vec<String>> {
                let rows: Vec<(String,)> = sqlx::query_as("SELECT tag FROM site_tags WHERE site_id = $1 ORDER BY tag")
                    .bind(site_id)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.into_iter().map(|r| r.0).collect())
            }

            async fn add_site_tag(&self, site_id: &$crate::ids::SiteId, tag: &str) -> $crate::store::Result<bool> {
                let r = sqlx::query("INSERT INTO site_tags (site_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(site_id)
                    .bind(tag)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn remove_site_tag(&self, site_id: &$crate::ids::SiteId, tag: &str) -> $crate::store::Result<bool> {
                let r = sqlx::query("DELETE FROM site_tags WHERE site_id = $1 AND tag = $2")
                    .bind(site_id)
                    .bind(tag)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn delete_generation(&self, id: &str) -> $crate::store::Result<()> {
                sqlx::query("DELETE FROM generations WHERE id = $1").bind(id).execute(&self.pool).await?;
                Ok(())
            }

            async fn workspace_sites_between(&self, workspace_id: &$crate::ids::WorkspaceId, from: i64, to: i64) -> $crate::store::Result<Vec<$crate::store::Site>> {
                let rows: Vec<$crate::store::sql::SiteRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::store::sql::site_columns!(),
                    " FROM sites WHERE workspace_id = $1 AND created_at < $3 AND (deleted_at IS NULL OR deleted_at >= $2) ORDER BY name, created_at"
                ))
                .bind(workspace_id)
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::AccessStore for $store {
            async fn site_access(&self, site_id: &$crate::ids::SiteId) -> $crate::store::Result<Option<$crate::store::SiteAccess>> {
                Ok(sqlx::query_as(
                    "SELECT site_id, robots, basic_user, basic_hash, basic_sealed, updated_at, allow_cidrs, deny_cidrs FROM site_access WHERE site_id = $1",
                )
                .bind(site_id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn site_access_by_name(&self, site_name: &str) -> $crate::store::Result<Option<$crate::store::SiteAccess>> {
                Ok(sqlx::query_as(
                    "SELECT a.site_id, a.robots, a.basic_user, a.basic_hash, a.basic_sealed, a.updated_at, a.allow_cidrs, a.deny_cidrs \
                     FROM site_access a JOIN sites s ON s.id = a.site_id WHERE s.name = $1 AND s.state <> 'deleted'",
                )
                .bind(site_name)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn put_site_access(&self, a: &$crate::store::SiteAccess) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO site_access (site_id, robots, basic_user, basic_hash, basic_sealed, updated_at, allow_cidrs, deny_cidrs) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (site_id) DO UPDATE SET robots = excluded.robots, \
                     basic_user = excluded.basic_user, basic_hash = excluded.basic_hash, \
                     basic_sealed = excluded.basic_sealed, updated_at = excluded.updated_at, \
                     allow_cidrs = excluded.allow_cidrs, deny_cidrs = excluded.deny_cidrs",
                )
                .bind(&a.site_id)
                .bind(a.robots)
                .bind(&a.basic_user)
                .bind(&a.basic_hash)
                .bind(&a.basic_sealed)
                .bind(a.updated_at)
                .bind(&a.allow_cidrs)
                .bind(&a.deny_cidrs)
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::RouteStore for $store {
            async fn put_route(&self, r: &$crate::store::RouteRow) -> $crate::store::Result<()> {
                sqlx::query(
                    "INSERT INTO routes (site_name, kind, target, robots, updated_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (site_name) DO UPDATE SET kind = excluded.kind, target = excluded.target, \
                     robots = excluded.robots, updated_at = excluded.updated_at",
                )
                .bind(&r.site_name)
                .bind(&r.kind)
                .bind(&r.target)
                .bind(r.robots)
                .bind(r.updated_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn route(&self, site_name: &str) -> $crate::store::Result<Option<$crate::store::RouteRow>> {
                Ok(sqlx::query_as("SELECT site_name, kind, target, robots, updated_at FROM routes WHERE site_name = $1")
                    .bind(site_name)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn delete_route(&self, site_name: &str) -> $crate::store::Result<()> {
                sqlx::query("DELETE FROM routes WHERE site_name = $1").bind(site_name).execute(&self.pool).await?;
                Ok(())
            }

            async fn list_routes(&self) -> $crate::store::Result<Vec<$crate::store::RouteRow>> {
                Ok(sqlx::query_as("SELECT site_name, kind, target, robots, updated_at FROM routes ORDER BY site_name")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn gateway_changes(&self) -> $crate::store::Result<i64> {
                let (n,): (i64,) = sqlx::query_as("SELECT n FROM gateway_changes WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(n)
            }
        }
    };
}

pub(in crate::store) use impl_sites;
