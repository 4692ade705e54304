//! `endor delivery`: stored webhook deliveries.

use clap::Subcommand;
use endor::config::Config;

use super::{emit, open_store};

#[derive(Subcommand)]
pub enum DeliveryCmd {
    /// List stored deliveries, newest first: key, forge, event, action, PR, and what became
    /// of it (the state of the job it queued, or why it was ignored).
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
        if l.is_empty() {
            return "no deliveries".into();
        }
        l.iter()
            .map(|d| {
                // What became of it: the job's state for acted-on deliveries (`queued` until
                // a worker takes it), the reason for ignored ones.
                let fate = match (&d.job_state, &d.reason) {
                    (Some(st), _) => format!("job {st}"),
                    (None, Some(r)) => format!("{}: {r}", d.outcome),
                    (None, None) => d.outcome.clone(),
                };
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    d.delivery_key,
                    d.forge,
                    d.event,
                    d.action.as_deref().unwrap_or("-"),
                    d.number
                        .map(|n| format!("#{n}"))
                        .unwrap_or_else(|| "-".into()),
                    fate
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}
