//! The API's backup routes (SPEC §13): a site's backups listed, made, restored, verified and
//! drilled, and its backup settings (schedule, retention) and its workspace's retention. What
//! needs a credential endor's pushing side does not hold (`forget`), the whole repository
//! (`verify --all`) and endor's own store (`drill --store`) stay with the operator's CLI.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::handlers::{Res, body, guard, ok};
use super::{Api, ApiError, Caller};
use crate::backups::{BackupError, Backups, RetentionOf, RetentionView, Scheduled, Source};
use crate::store::{Backup, RetentionRow};

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::NotConfigured => {
                Self::new(StatusCode::CONFLICT, "not_configured", e.to_string())
            }
            BackupError::NotFound(what) => Self::not_found(what),
            BackupError::Invalid(m) => Self::invalid(m),
            BackupError::Tool(m) => Self::new(StatusCode::BAD_GATEWAY, "backup_failed", m),
            BackupError::Site(s) => s.into(),
            BackupError::Store(s) => s.into(),
        }
    }
}

/// Where to read a backup: `repository` (the primary, the default) or `offsite`.
#[derive(Deserialize, Default, Clone, Copy, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    #[default]
    Repository,
    Offsite,
}

impl From<ReadFrom> for Source {
    fn from(f: ReadFrom) -> Self {
        match f {
            ReadFrom::Repository => Source::Repository,
            ReadFrom::Offsite => Source::Offsite,
        }
    }
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBackup {
    /// Tags on the backup: 1-64 letters, digits, `-`, `_` or `.` each.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub tags: Vec<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Restore into this site (made when it does not exist) instead of the backed-up one.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", nullable = false)]
    pub into: Option<String>,
    /// Needed to restore into a protected site (the bypass is audited).
    #[serde(default)]
    pub bypass_protection: bool,
    /// Read the primary or the off-site repository; by default the copy this host kept
    /// when it has one, else the primary.
    #[schema(nullable = false)]
    pub from: Option<ReadFrom>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    #[serde(default)]
    pub from: ReadFrom,
}

/// A retention policy to set: counts (a value left out keeps what was set, or falls
/// through), or `default: true` to forget what was set here.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionChange {
    #[schema(minimum = 0, maximum = 100000, nullable = false)]
    pub keep_last: Option<i64>,
    #[schema(minimum = 0, maximum = 100000, nullable = false)]
    pub keep_daily: Option<i64>,
    #[schema(minimum = 0, maximum = 100000, nullable = false)]
    pub keep_weekly: Option<i64>,
    #[schema(minimum = 0, maximum = 100000, nullable = false)]
    pub keep_monthly: Option<i64>,
    #[serde(default)]
    pub default: bool,
}

impl RetentionChange {
    /// What to tell [`Backups::set_retention`]; `None` when nothing is to change.
    fn policy(&self) -> Result<Option<Option<RetentionRow>>, ApiError> {
        let row = RetentionRow {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
        };
        match (self.default, row == RetentionRow::default()) {
            (true, true) => Ok(Some(None)),
            (true, false) => Err(ApiError::invalid(
                "send either counts or \"default\": true, not both",
            )),
            (false, true) => Ok(None),
            (false, false) => Ok(Some(Some(row))),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupSettingsChange {
    /// Whether `endor serve` backs the site up on `backups.schedule`: `on`, `off`, or
    /// `default` (on for protected sites).
    #[schema(pattern = "^(on|off|default)$", nullable = false)]
    pub scheduled: Option<String>,
    #[schema(nullable = false)]
    pub retention: Option<RetentionChange>,
}

/// A site's backup settings.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BackupSettings {
    pub schedule: Scheduled,
    pub retention: RetentionView,
}

/// The backup `id` of the path's site (404 for another site's, even in the same workspace).
async fn backup_of_site(backups: &Backups, c: &Caller, id: &str) -> Result<Backup, ApiError> {
    let site = c.site()?;
    match backups.find(id).await? {
        Some(b) if b.site_id == site.id => Ok(b),
        _ => Err(ApiError::not_found(format!(
            "backup {id} of site {}",
            site.name
        ))),
    }
}

pub async fn list_backups(State(api): State<Arc<Api>>, Extension(c): Extension<Caller>) -> Res {
    let list = api.backups.of_site(&c.site()?.id).await?;
    ok(StatusCode::OK, &list)
}

pub async fn create_backup(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: NewBackup = body(raw).await?;
    if b.tags.len() > 16 {
        return Err(ApiError::invalid("at most 16 tags"));
    }
    let made = api
        .backups
        .create(&c.site()?.name, &b.tags, &c.audit_name())
        .await?;
    ok(StatusCode::CREATED, &made)
}

pub async fn restore_backup(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Path((_, backup)): Path<(String, String)>,
    raw: Body,
) -> Res {
    let r: RestoreRequest = body(raw).await?;
    let b = backup_of_site(&api.backups, &c, &backup).await?;
    if let Some(into) = &r.into {
        crate::sites::validate_site_name(into)?;
        // Another workspace's site is not this caller's to overwrite, nor to learn about.
        if let Some(target) = api.store.site_by_name(into).await?
            && Some(&target.workspace_id) != c.workspace.as_ref().map(|w| &w.id)
        {
            return Err(ApiError::not_found(format!("site {into}")));
        }
    }
    let from = r.from.map_or(Source::Nearest, Source::from);
    let done = api
        .backups
        .restore_from(
            &b.id,
            r.into.as_deref(),
            guard(&c, r.bypass_protection),
            from,
        )
        .await?;
    ok(StatusCode::OK, &done)
}

pub async fn verify_backup(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    Path((_, backup)): Path<(String, String)>,
    raw: Body,
) -> Res {
    let r: ReadRequest = body(raw).await?;
    let b = backup_of_site(&api.backups, &c, &backup).await?;
    let v = api.backups.verify_backup(&b.id, r.from.into()).await?;
    ok(StatusCode::OK, &v)
}

pub async fn drill_site(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let r: ReadRequest = body(raw).await?;
    let d = api.backups.drill(&c.site()?.name, r.from.into()).await?;
    ok(StatusCode::OK, &d)
}

async fn settings_of(api: &Api, site: &str) -> Result<BackupSettings, ApiError> {
    Ok(BackupSettings {
        schedule: api.backups.schedule(site).await?,
        retention: api.backups.retention(RetentionOf::Site(site)).await?,
    })
}

pub async fn show_backup_settings(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
) -> Res {
    ok(StatusCode::OK, &settings_of(&api, &c.site()?.name).await?)
}

pub async fn change_backup_settings(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: BackupSettingsChange = body(raw).await?;
    let site = &c.site()?.name;
    let scheduled = match b.scheduled.as_deref() {
        None => None,
        Some("on") => Some(Some(true)),
        Some("off") => Some(Some(false)),
        Some("default") => Some(None),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "scheduled `{}`: use on, off or default",
                other.escape_debug()
            )));
        }
    };
    let retention = b.retention.as_ref().map(|r| r.policy()).transpose()?;
    if let Some(own) = scheduled {
        api.backups.set_schedule(site, own).await?;
    }
    if let Some(Some(policy)) = retention {
        api.backups
            .set_retention(RetentionOf::Site(site), policy)
            .await?;
    }
    ok(StatusCode::OK, &settings_of(&api, site).await?)
}

pub async fn show_workspace_retention(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
) -> Res {
    let ws = &c.workspace()?.name;
    let v = api.backups.retention(RetentionOf::Workspace(ws)).await?;
    ok(StatusCode::OK, &v)
}

pub async fn change_workspace_retention(
    State(api): State<Arc<Api>>,
    Extension(c): Extension<Caller>,
    raw: Body,
) -> Res {
    let b: RetentionChange = body(raw).await?;
    let ws = &c.workspace()?.name;
    let of = RetentionOf::Workspace(ws);
    let v = match b.policy()? {
        Some(policy) => api.backups.set_retention(of, policy).await?,
        None => api.backups.retention(of).await?,
    };
    ok(StatusCode::OK, &v)
}
