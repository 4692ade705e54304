//! Prometheus metrics served at `GET /metrics`. One registry per process; families are added
//! here as capabilities land, so `/metrics` lists only what is really measured.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub forge: &'static str,
    /// The event kind for authenticated deliveries; `-` for rejected ones (an unauthenticated
    /// header must not create label values).
    pub event: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: String,
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Jobs run by this process, by kind and how they ended.
    pub jobs: Family<JobLabels, Counter>,
    /// Seconds from a PR event's arrival to its preview passing the health check.
    pub launch_seconds: Histogram,
    /// Write-backs to forges, by kind and how each attempt ended.
    pub writebacks: Family<JobLabels, Counter>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Seconds from a delivery's arrival to its durable commit.
    pub delivery_store_seconds: Histogram,
    /// Reaper passes, by outcome (done, skipped: another reaper held the lease, failed).
    pub reaper_runs: Family<OutcomeLabels, Counter>,
    /// Previews the reaper tore down (expired, or an unfinished teardown finished).
    pub sites_reaped: Counter,
    /// Orphans swept, by kind (dirs, processes, routes).
    pub orphans_swept: Family<KindLabels, Counter>,
    /// Backup drills recorded in the store (by any process), by outcome (passed, failed):
    /// read from the store at each scrape.
    pub backup_drills: Family<OutcomeLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("endor");
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by forge, event and outcome",
            deliveries.clone(),
        );
        let delivery_store_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ]);
        registry.register(
            "webhook_store_seconds",
            "Time from a delivery's arrival to its durable commit",
            delivery_store_seconds.clone(),
        );
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register(
            "jobs",
            "Jobs run, by kind and outcome (done, retry, failed, cancelled)",
            jobs.clone(),
        );
        let launch_seconds = Histogram::new([
            0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ]);
        registry.register(
            "preview_launch_seconds",
            "Time from a pull request event's arrival to its preview being ready",
            launch_seconds.clone(),
        );
        let writebacks = Family::<JobLabels, Counter>::default();
        registry.register(
            "writebacks",
            "Write-back attempts to forges, by kind (comment, status, deployment) and outcome (done, retry, failed)",
            writebacks.clone(),
        );
        let reaper_runs = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reaper_runs",
            "Reaper passes by outcome (done, skipped, failed)",
            reaper_runs.clone(),
        );
        let sites_reaped = Counter::default();
        registry.register(
            "sites_reaped",
            "Previews torn down by the reaper",
            sites_reaped.clone(),
        );
        let orphans_swept = Family::<KindLabels, Counter>::default();
        registry.register(
            "orphans_swept",
            "Orphaned resources removed by the reaper, by kind (dirs, processes, routes)",
            orphans_swept.clone(),
        );
        let backup_drills = Family::<OutcomeLabels, Gauge>::default();
        registry.register(
            "backup_drills",
            "Backup restore drills recorded in the store, by outcome (passed, failed)",
            backup_drills.clone(),
        );
        Self {
            backup_drills,
            reaper_runs,
            sites_reaped,
            orphans_swept,
            registry,
            jobs,
            launch_seconds,
            writebacks,
            deliveries,
            delivery_store_seconds,
        }
    }
}

impl Metrics {
    pub fn delivery(&self, forge: &'static str, event: &str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                forge,
                event: event.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn job(&self, kind: &str, outcome: &'static str) {
        self.jobs
            .get_or_create(&JobLabels {
                kind: kind.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn writeback(&self, kind: &str, outcome: &'static str) {
        self.writebacks
            .get_or_create(&JobLabels {
                kind: kind.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
