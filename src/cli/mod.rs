//! The command groups of the `endor` binary, one file each. Each is a thin call into the
//! library: parse (clap), call, print text or `--json`. No rule lives here; a rule the CLI
//! needs is a library function the API can call too.

pub mod audit;
pub mod backup;
pub mod delivery;
pub mod doctor;
pub mod github;
pub mod preview;
pub mod repo;
pub mod secrets;
pub mod serve;
pub mod site;
pub mod usage;
pub mod user;
pub mod workspace;

use std::sync::Arc;

use endor::config::Config;
use endor::store::{self, Store};
use serde::Serialize;

/// Print `value` as JSON, or through `text` for people.
pub fn emit<T: Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", text(value));
    }
    Ok(())
}

/// Open the configured store, migrated.
/// The store of `config`, which must exist already: a command run from another folder than
/// `endor serve`'s would otherwise make a new, empty store there and then find nothing.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(file) = store::sqlite_file(&config.store.url)
        && !file.exists()
    {
        anyhow::bail!(
            "no store at {}: run endor from the folder `endor serve` runs in, or pass the same --config \
             (a new store is made by `endor serve`, `endor migrate` or `endor user create`)",
            file.display()
        );
    }
    create_store(config).await
}

/// The store of `config`, made (and migrated) when it does not exist yet.
pub async fn create_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    store::open(
        &config.store.url,
        config.store.max_connections,
        config.master_key_file(),
    )
    .await
}
