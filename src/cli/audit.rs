//! `endor audit`: the audit trail.

use endor::config::Config;

use super::emit;

pub async fn run(site: Option<String>, json: bool, config: &Config) -> anyhow::Result<()> {
    let store = super::open_store(config).await?;
    let sites = endor::sites::Sites::new(store, config);
    let events = sites.audit_trail(site.as_deref()).await?;
    emit(json, &events, |l| {
        l.iter()
            .map(|e| {
                format!(
                    "{}\t{}\t{}\t{}",
                    chrono::DateTime::from_timestamp_millis(e.at)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default(),
                    e.caller,
                    e.action,
                    e.detail
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}
