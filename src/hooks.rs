//! Webhooks endor makes on the forge for a connection (`repo connect --create-hook`, SPEC
//! §17): created through the forge's API with the connection's generated secret and endor's
//! events, updated when the secret rotates, removed with the connection. A forge that refuses
//! or fails leaves no half-made connection, and a failed update leaves the secrets as they
//! were.

use crate::config::Config;
use crate::forge::client::ForgeError;
use crate::ids::ConnectionId;
use crate::service::{self, Connected, Rotated, ServiceError};
use crate::store::{Connection, Store};
use crate::writeback::ForgeClients;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The forge did not do it (its words, and what endor did about it).
    #[error("{0}")]
    Forge(String),
}

impl From<crate::store::StoreError> for HookError {
    fn from(e: crate::store::StoreError) -> Self {
        HookError::Service(e.into())
    }
}

pub type Result<T> = std::result::Result<T, HookError>;

/// What a lost answer means for a hook the forge may have made anyway.
fn lost(e: &ForgeError, url: &str) -> String {
    if e.unsure() {
        format!(" (the answer was lost: the forge may hold a webhook to {url}; remove it there)")
    } else {
        String::new()
    }
}

/// Connect `repo` to the workspace and create its webhook on the forge. When the forge
/// refuses or fails, the connection is deleted again and the forge's words are returned.
pub async fn connect_with_hook(
    store: &dyn Store,
    cfg: &Config,
    workspace: &str,
    repo: &str,
    api_url: Option<&str>,
    git_url: Option<&str>,
    region: Option<&str>,
) -> Result<Connected> {
    let mut c =
        service::connect_repo_in(store, cfg, workspace, repo, api_url, git_url, region).await?;
    let conn = connection(store, &c.connection_id).await?;
    let made = async {
        let forge = ForgeClients::new(cfg).client(&conn).await?;
        forge
            .create_hook(&conn.repo, &c.webhook_url, conn.secret.expose())
            .await
    }
    .await;
    match made {
        Ok(id) => {
            store.set_connection_hook(&conn.id, Some(&id)).await?;
            tracing::info!(connection = %conn.id, hook = %id, "forge webhook created");
            c.hook_id = Some(id);
            c.instructions = format!(
                "The webhook was created on {} (id {}): nothing to add by hand.",
                conn.forge,
                c.hook_id.as_deref().unwrap_or_default()
            );
            Ok(c)
        }
        Err(e) => {
            store.delete_connection(&conn.id).await?;
            Err(HookError::Forge(format!(
                "{} did not create the webhook: {e}; nothing was connected{}",
                conn.forge,
                lost(&e, &c.webhook_url)
            )))
        }
    }
}

/// Rotate a connection's secret ([`service::rotate_secret`]); when endor made its webhook,
/// the forge's webhook is given the new secret. If the forge does not take it, the secrets are
/// put back as they were and the forge's words returned.
pub async fn rotate_with_hook(
    store: &dyn Store,
    cfg: &Config,
    id: &str,
    retire_old: bool,
) -> Result<Rotated> {
    let before = connection(store, &ConnectionId::from(id)).await?;
    let mut rotated = service::rotate_secret(store, id, retire_old).await?;
    let (Some(hook), Some(secret)) = (&before.hook_id, &rotated.secret) else {
        return Ok(rotated);
    };
    let url = cfg.webhook_url(before.forge.as_str(), before.id.as_str());
    let updated = async {
        let forge = ForgeClients::new(cfg).client(&before).await?;
        forge.update_hook(&before.repo, hook, &url, secret).await
    }
    .await;
    if let Err(e) = updated {
        store
            .set_connection_secrets(&before.id, &before.secret, before.previous_secret.as_ref())
            .await?;
        return Err(HookError::Forge(format!(
            "{} did not update the webhook: {e}; the secrets are as they were (nothing rotated)",
            before.forge
        )));
    }
    tracing::info!(connection = %before.id, hook = %hook, "forge webhook given the new secret");
    rotated.hook_updated = true;
    Ok(rotated)
}

/// Delete a connection; when endor made its webhook, the forge's webhook is removed first
/// (unless `keep_hook`). If the forge does not remove it, nothing is deleted.
pub async fn delete_with_hook(
    store: &dyn Store,
    cfg: &Config,
    id: &str,
    keep_hook: bool,
) -> Result<()> {
    let conn = connection(store, &ConnectionId::from(id)).await?;
    if let (Some(hook), false) = (&conn.hook_id, keep_hook) {
        let removed = async {
            let forge = ForgeClients::new(cfg).client(&conn).await?;
            forge.delete_hook(&conn.repo, hook).await
        }
        .await;
        if let Err(e) = removed {
            return Err(HookError::Forge(format!(
                "{} did not remove the webhook: {e}; nothing was deleted (try again, or keep the hook: --keep-hook)",
                conn.forge
            )));
        }
        tracing::info!(connection = %conn.id, hook = %hook, "forge webhook removed");
    }
    Ok(service::delete_repo(store, id).await?)
}

async fn connection(store: &dyn Store, id: &ConnectionId) -> Result<Connection> {
    store
        .connection(id)
        .await?
        .ok_or_else(|| HookError::Service(ServiceError::NotFound(format!("connection {id}"))))
}
