//! Several worker hosts on one store (SPEC §9, §12): each preview records the host its process
//! runs on (`runtime.advertise`); each worker keeps a lease `host:{address}` alive while it
//! runs. When a host's lease runs out, the ready previews it ran are taken over: started again
//! by a worker of their region when the region's storage is shared, else marked failed with
//! that reason (by any worker: nobody else can reach their files). One worker takes over each preview (a `takeover:{preview}` lease), and a
//! resume never starts a preview whose host is alive.

use std::collections::{HashMap, HashSet};

use super::lifecycle::Lifecycle;
use crate::gateway::Route;
use crate::previews::PreviewState;
use crate::store::Preview;

/// What the lease names of worker hosts start with.
const HOST_LEASE: &str = "host:";

/// The lease name of a worker host.
fn host_lease(host: &str) -> String {
    format!("{HOST_LEASE}{host}")
}

impl Lifecycle {
    /// This host's address, as previews and routes record it.
    pub fn host_address(&self) -> String {
        self.config.runtime.advertise.to_string()
    }

    fn host_lease_ms(&self) -> i64 {
        self.config.jobs.lease.0.as_millis() as i64
    }

    /// Keep this host's lease (it says the host's previews are served from here).
    pub async fn keep_host_alive(&self) -> crate::store::Result<bool> {
        let me = self.host_address();
        let now = crate::now_ms();
        self.store
            .try_lease(&host_lease(&me), &me, now, now + self.host_lease_ms())
            .await
    }

    /// Let go of this host's lease (at shutdown, once its site processes are stopped): its
    /// previews are taken over at once instead of after the lease.
    pub async fn release_host(&self) {
        let me = self.host_address();
        let _ = self.store.release_lease(&host_lease(&me), &me).await;
    }

    /// The worker hosts whose lease is alive.
    pub async fn live_hosts(&self) -> crate::store::Result<HashSet<String>> {
        Ok(self
            .store
            .leases_with_prefix(HOST_LEASE, crate::now_ms())
            .await?
            .into_iter()
            .map(|(name, _)| name[HOST_LEASE.len()..].to_string())
            .collect())
    }

    /// Whether preview `p`'s process runs on another host that is alive (a resume here would
    /// start it twice).
    pub(super) async fn runs_elsewhere(&self, p: &Preview) -> bool {
        match &p.host {
            Some(h) if *h != self.host_address() => {
                self.live_hosts().await.is_ok_and(|live| live.contains(h))
            }
            _ => false,
        }
    }

    /// Take over the ready previews of lost hosts: in a shared-storage region, a worker of that
    /// region (or one of no region) starts them again; elsewhere any worker marks them failed.
    /// Returns how many were resumed and how many marked failed.
    pub async fn take_over_lost_hosts(&self) -> crate::store::Result<(usize, usize)> {
        let me = self.host_address();
        let live = self.live_hosts().await?;
        let lost: Vec<Preview> = self
            .store
            .list_previews()
            .await?
            .into_iter()
            .filter(|p| p.state == PreviewState::Ready)
            .filter(|p| {
                p.host
                    .as_ref()
                    .is_some_and(|h| *h != me && !live.contains(h))
            })
            .collect();
        if lost.is_empty() {
            return Ok((0, 0));
        }
        let regions = self.sites.regions();
        let mine = &self.config.jobs.region;
        let mut conns = HashMap::new();
        let (mut resumed, mut failed) = (0, 0);
        for mut p in lost {
            if !conns.contains_key(&p.connection_id) {
                let c = self.store.connection(&p.connection_id).await?;
                conns.insert(p.connection_id.clone(), c);
            }
            let Some(conn) = conns.get(&p.connection_id).cloned().flatten() else {
                continue;
            };
            let shared = regions.get(&conn.region).is_some_and(|r| r.shared_storage);
            // Starting it again is for a worker of its region; saying it is lost, for anyone.
            if shared && !mine.is_empty() && conn.region != *mine {
                continue;
            }
            let now = crate::now_ms();
            let lease = format!("takeover:{}", p.id);
            if !self
                .store
                .try_lease(&lease, &me, now, now + 4 * self.host_lease_ms())
                .await?
            {
                continue;
            }
            let host = p.host.clone().unwrap_or_default();
            if shared {
                self.store.enqueue_job(&self.resume_job(&p), now).await?;
                tracing::warn!(site = %p.site_name, lost = %host, "worker host lost: the preview starts again on another worker of its region");
                resumed += 1;
            } else {
                let why = format!(
                    "its worker host {host} was lost, and region {} does not share its storage \
                     between hosts (regions.{}.shared_storage): push again once a worker of the region \
                     reaches its storage",
                    conn.region, conn.region
                );
                let page = Route::Failed(Some(format!("{}#{}", conn.repo, p.number)));
                self.runs_nowhere(&mut p, page, PreviewState::Failed, why)
                    .await;
                failed += 1;
            }
        }
        Ok((resumed, failed))
    }
}
