//! `endor usage`: usage and cost per site of a workspace for a month.

use endor::config::Config;
use endor::service;

use super::{emit, open_store};

pub async fn run(
    workspace: String,
    month: Option<String>,
    sample: bool,
    json: bool,
    config: &Config,
) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let ws = service::workspace(store.as_ref(), &workspace).await?;
    if sample {
        let sites = endor::sites::Sites::new(store.clone(), config);
        endor::usage::sample(store.as_ref(), &sites, endor::now_ms()).await?;
    }
    let r = endor::usage::report(store.as_ref(), config, &ws, month.as_deref()).await?;
    emit(json, &r, |r| {
        let mut out = format!(
            "{} {} ({}: {}/site-hour, {}/GiB-month, {}/CPU-hour)\nsite\thours\tphysical bytes\tGiB-hours\tCPU s\tcost",
            r.workspace,
            r.month,
            r.rates.currency,
            r.rates.site_hour,
            r.rates.gib_month,
            r.rates.cpu_hour
        );
        for l in &r.sites {
            out.push_str(&format!(
                "\n{}\t{:.2}\t{}\t{:.4}\t{:.1}\t{:.4}",
                l.site, l.hours_alive, l.physical_bytes, l.gib_hours, l.cpu_seconds, l.cost.total
            ));
        }
        out.push_str(&format!(
            "\ntotal\t\t\t\t\t{:.4} {}",
            r.total.total, r.rates.currency
        ));
        out
    })
}
