//! endor: pull/merge requests → ephemeral preview sites.
//!
//! The binary (`src/main.rs`) is only the command line; everything it does lives here so that
//! tests and benchmarks drive the same code. See `ARCHITECTURE.md` for the map.

pub mod access;
pub mod api;
pub mod app;
pub mod apps;
pub mod backups;
pub mod clone;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod duration;
pub mod forge;
pub mod gateway;
pub mod git;
pub mod hooks;
pub mod ids;
pub mod jobs;
pub mod logs;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod previews;
pub mod procfs;
pub mod reaper;
pub mod regions;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod service;
pub mod sites;
pub mod size;
pub mod store;
pub mod telemetry;
pub mod unix;
pub mod usage;
pub mod webhooks;
pub mod worker;
pub mod writeback;

/// Milliseconds since the Unix epoch; the store keeps every timestamp in this form so that
/// SQLite and PostgreSQL rows compare the same way.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
