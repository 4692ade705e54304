//! `endor serve`, `endor migrate`, `endor reap`: the server and its one-off passes.

use endor::config::Config;
use endor::server::{self, AppState};

use super::{create_store, emit};

/// `endor serve --roles …`.
pub async fn serve(
    roles: String,
    config: Config,
    config_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let roles = match server::Roles::parse(&roles) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: --roles: {e}");
            std::process::exit(2);
        }
    };
    // Endor's secrets private, PR code confined as configured: or no start at all.
    let host = endor::runtime::Host::new(&config);
    super::doctor::prepare(&config)?;
    let files = super::doctor::check_files(&config, config_file.as_deref());
    let problems = super::doctor::problems(&host, &files);
    if !problems.is_empty() {
        anyhow::bail!(
            "endor serve cannot start safely:\n  - {}\n(endor doctor prints every check)",
            problems.join("\n  - ")
        );
    }
    let report = host.report();
    let enforced: Vec<&str> = report
        .iter()
        .filter(|c| c.enforced)
        .map(|c| c.what)
        .collect();
    tracing::info!(enforced = %enforced.join(", "), "PR code confinement (endor doctor prints each check)");
    if !host.isolated() {
        tracing::warn!(
            "runtime.isolation = \"none\": pull requests' code runs unconfined on this host and can read every site's data"
        );
    }
    let listener = if roles.api {
        Some(
            tokio::net::TcpListener::bind(config.server.listen)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {} (server.listen): {e}",
                        config.server.listen
                    )
                })?,
        )
    } else {
        None
    };
    let gateway = if roles.gateway {
        Some(
            tokio::net::TcpListener::bind(config.gateway.listen)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {} (gateway.listen): {e}",
                        config.gateway.listen
                    )
                })?,
        )
    } else {
        None
    };
    banner(&config, config_file.as_deref());
    let state = AppState::start(config).await?;
    server::serve_roles(state, roles, listener, gateway, shutdown_signal()).await
}

/// What a new user needs to see at start: where the store and config are, where webhooks
/// arrive, what previews' addresses look like, and to which forges endor writes back.
fn banner(config: &Config, config_file: Option<&std::path::Path>) {
    use endor::forge::ForgeKind;
    let write_back: Vec<String> = ForgeKind::ALL
        .iter()
        .map(|f| {
            if f.has_credentials(f.config(config)) {
                format!("{f} on")
            } else {
                format!("{f} off (no [{f}] token: status comments are not posted)")
            }
        })
        .collect();
    tracing::info!(
        store = %endor::store::redacted_url(&config.store.url),
        config = %config_file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into()),
        webhooks = %format!("{}/webhooks/{{forge}}/{{connection_id}}", config.server.public_url.trim_end_matches('/')),
        previews = %format!("http://{{site}}.{}:{}/", config.gateway.domain, config.gateway.listen.port()),
        write_back = %write_back.join("; "),
        "endor serve"
    );
}

/// `endor migrate`.
pub async fn migrate(json: bool, config: &Config) -> anyhow::Result<()> {
    create_store(config).await?;
    emit(json, &serde_json::json!({"status": "migrated"}), |_| {
        "migrations applied".into()
    })
}

/// `endor reap [--dry-run]`.
pub async fn reap(dry_run: bool, json: bool, config: &Config) -> anyhow::Result<()> {
    let store = super::open_store(config).await?;
    let reaper = endor::reaper::Reaper::standalone(store, config);
    let r = reaper.pass(dry_run).await?;
    emit(json, &r, |r| {
        if let Some(why) = &r.skipped {
            return format!("skipped: {why}");
        }
        let mut out = format!(
            "{}expired {}, finished {}, busy {}, warned {}, failed {}; swept {} dirs, {} processes, {} routes in {} ms",
            if r.dry_run {
                "(dry run) would have "
            } else {
                ""
            },
            r.expired.len(),
            r.resumed.len(),
            r.busy.len(),
            r.warned.len(),
            r.failed.len(),
            r.swept.dirs,
            r.swept.processes,
            r.swept.routes,
            r.duration_ms
        );
        for name in &r.expired {
            out.push_str(&format!("\nexpired\t{name}"));
        }
        for (name, e) in &r.failed {
            out.push_str(&format!("\nfailed\t{name}\t{e}"));
        }
        out
    })
}
/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
