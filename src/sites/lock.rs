//! One operation at a time per site, across every process sharing the store.
//!
//! A site's lock is a lease in the store's `leases` table, by site name (a clone's target may
//! not exist yet): `site:{name}` for an operation that changes the site (create, snapshot,
//! delete, teardown, the target of a clone or sync), one `site-shared:{name}:{holder}` per
//! operation that only reads it (the source of a clone or sync), so many previews can clone one
//! parent at once. An exclusive holder and a shared one each write their own lease first and
//! then look for the other kind; when both look at once both see the other and back off, so two
//! never hold a site together. A lease lasts [`TTL_MS`] and is renewed while the operation runs:
//! a process that dies mid-operation frees its sites within that time.
//!
//! A caller that finds a site busy gets [`SiteError::Busy`] at once (the API answers 409
//! `busy`, the CLI exits non-zero), unless its `Sites` waits for locks (the preview worker).

use std::time::Duration;

use super::*;

/// How long a lease lasts without renewal.
const TTL_MS: i64 = 30_000;
/// How often a held lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Mode {
    /// The operation changes the site: nobody else may act on it.
    Exclusive,
    /// The operation reads the site: other readers may, nobody may change it.
    Shared,
}

fn exclusive_lease(site: &str) -> String {
    format!("site:{site}")
}

fn shared_prefix(site: &str) -> String {
    format!("site-shared:{site}:")
}

/// The operation a lease's owner names (`{operation} {holder id}`).
fn operation(owner: &str) -> &str {
    owner.split(' ').next().unwrap_or(owner)
}

/// The leases one operation holds; released by [`Held::release`], or on drop when the
/// operation's future is dropped midway.
pub(super) struct Held {
    store: Arc<dyn Store>,
    owner: String,
    leases: Vec<String>,
    renew: Option<tokio::task::JoinHandle<()>>,
}

impl Held {
    pub(super) async fn release(mut self) {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
        for l in std::mem::take(&mut self.leases) {
            if let Err(e) = self.store.release_lease(&l, &self.owner).await {
                tracing::warn!(lease = %l, error = %e, "a site lock could not be released; it expires");
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
        let leases = std::mem::take(&mut self.leases);
        if leases.is_empty() {
            return;
        }
        let (store, owner) = (self.store.clone(), self.owner.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for l in leases {
                    let _ = store.release_lease(&l, &owner).await;
                }
            });
        }
    }
}

impl Sites {
    /// Take every lock of `wants` for the operation `op`, or none: [`SiteError::Busy`] names
    /// the operation in the way. Waits up to `lock_wait` for busy sites first.
    pub(super) async fn lock(&self, wants: &[(&str, Mode)], op: &'static str) -> Result<Held> {
        let mut wants = wants.to_vec();
        wants.sort();
        let owner = format!("{op} {}", uuid::Uuid::new_v4().simple());
        let deadline = std::time::Instant::now() + self.lock_wait;
        loop {
            let mut held = Held {
                store: self.store.clone(),
                owner: owner.clone(),
                leases: Vec::new(),
                renew: None,
            };
            let mut busy = None;
            for (site, mode) in &wants {
                match self.lock_one(&mut held, site, *mode).await? {
                    None => {}
                    Some(why) => {
                        busy = Some(why);
                        break;
                    }
                }
            }
            let Some(why) = busy else {
                held.renew = Some(self.renewal(held.leases.clone(), owner.clone()));
                return Ok(held);
            };
            held.release().await;
            if std::time::Instant::now() >= deadline {
                return Err(SiteError::Busy(why));
            }
            let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]);
            tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
        }
    }

    /// Take one lease into `held`; `Some(why)` when the site is busy (nothing kept for it).
    async fn lock_one(&self, held: &mut Held, site: &str, mode: Mode) -> Result<Option<String>> {
        let now = crate::now_ms();
        let store = self.store.as_ref();
        let busy = |holder: &str| {
            format!(
                "site {site} is busy: {} in progress; try again when it is done",
                operation(holder)
            )
        };
        let exclusive = exclusive_lease(site);
        match mode {
            Mode::Exclusive => {
                if !store
                    .try_lease(&exclusive, &held.owner, now, now + TTL_MS)
                    .await?
                {
                    let holder = self.exclusive_holder(site, now).await?.unwrap_or_default();
                    return Ok(Some(busy(&holder)));
                }
                held.leases.push(exclusive);
                if let Some((_, reader)) = store
                    .leases_with_prefix(&shared_prefix(site), now)
                    .await?
                    .into_iter()
                    .next()
                {
                    return Ok(Some(busy(&reader)));
                }
            }
            Mode::Shared => {
                let mine = format!("{}{}", shared_prefix(site), held.owner.replace(' ', "-"));
                store
                    .try_lease(&mine, &held.owner, now, now + TTL_MS)
                    .await?;
                held.leases.push(mine);
                if let Some(writer) = self.exclusive_holder(site, now).await? {
                    return Ok(Some(busy(&writer)));
                }
            }
        }
        Ok(None)
    }

    /// The owner of `site`'s unexpired exclusive lease, if any (the prefix also matches
    /// longer names, `site:web` → `site:web-2`: only the exact name counts).
    async fn exclusive_holder(&self, site: &str, now: i64) -> Result<Option<String>> {
        let exclusive = exclusive_lease(site);
        Ok(self
            .store
            .leases_with_prefix(&exclusive, now)
            .await?
            .into_iter()
            .find(|(n, _)| *n == exclusive)
            .map(|(_, o)| o))
    }

    fn renewal(&self, leases: Vec<String>, owner: String) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let now = crate::now_ms();
                for l in &leases {
                    match store.try_lease(l, &owner, now, now + TTL_MS).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(lease = %l, "a site lock expired while held"),
                        Err(e) => {
                            tracing::warn!(lease = %l, error = %e, "a site lock could not be renewed")
                        }
                    }
                }
            }
        })
    }

    /// Run `work` holding the locks of `wants`; they are released whatever it returns.
    pub(super) async fn locked<T>(
        &self,
        wants: &[(&str, Mode)],
        op: &'static str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let held = self.lock(wants, op).await?;
        let out = work.await;
        held.release().await;
        out
    }

    /// The site `name` ready to be acted on: `Busy` while it is still being created or is
    /// half deleted (a crash), `NotFound` once gone.
    pub(super) async fn get_active(&self, name: &str) -> Result<Site> {
        let site = self.get(name).await?;
        match site.state {
            SiteState::Active => Ok(site),
            SiteState::Creating => Err(SiteError::Busy(format!(
                "site {name} is still being created"
            ))),
            SiteState::Deleting | SiteState::Deleted => {
                Err(SiteError::Busy(format!("site {name} is being deleted")))
            }
        }
    }
}
