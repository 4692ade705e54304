//! `endor delivery`: stored webhook deliveries.

use clap::Subcommand;
use endor::config::Config;

use super::{emit, open_store};

#[derive(Subcommand)]
pub enum DeliveryCmd {
    /// List stored deliveries, newest first.
    List {
        #[arg(long)]
        connection: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

pub async fn run(cmd: DeliveryCmd, json: bool, config: &Config) -> anyhow::Result<()> {
    let DeliveryCmd::List { connection, limit } = cmd;
    let store = open_store(config).await?;
    let connection = connection.map(endor::ids::ConnectionId::from);
    let list = store.list_deliveries(connection.as_ref(), limit).await?;
    emit(json, &list, |l| {
        l.iter()
            .map(|d| {
                format!(
                    "{}\t{}\t{}\t{}\t{}",
                    d.delivery_key,
                    d.forge,
                    d.event,
                    d.action.as_deref().unwrap_or("-"),
                    d.outcome
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}
