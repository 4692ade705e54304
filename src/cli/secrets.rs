//! `endor secrets`: the master key that seals the secrets in the store.

use clap::Subcommand;
use endor::config::Config;
use serde::Serialize;

use super::{emit, open_store};

#[derive(Subcommand)]
pub enum SecretsCmd {
    /// Which key seals how many of the store's secrets, and the key file.
    Status,
    /// Seal every secret in the store under a new master key (safe to interrupt: run it again).
    Rotate,
}

#[derive(Serialize)]
struct Status {
    master_key_file: String,
    key: String,
    /// Every key on disk (more than one while a rotation is unfinished).
    keys_on_disk: Vec<String>,
    sealed: std::collections::BTreeMap<String, u64>,
}

pub async fn run(cmd: SecretsCmd, json: bool, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    match cmd {
        SecretsCmd::Status => {
            let keyring = store.keyring();
            let status = Status {
                master_key_file: config.master_key_file().display().to_string(),
                key: keyring.current_id(),
                keys_on_disk: keyring.key_ids(),
                sealed: store.sealed_counts().await?,
            };
            emit(json, &status, |s| {
                let counts: Vec<String> = s
                    .sealed
                    .iter()
                    .map(|(k, n)| format!("{n} under {k}"))
                    .collect();
                format!(
                    "master key {} ({})\nkeys on disk: {}\nsecrets sealed: {}",
                    s.key,
                    s.master_key_file,
                    s.keys_on_disk.join(", "),
                    if counts.is_empty() {
                        "none yet".to_string()
                    } else {
                        counts.join(", ")
                    }
                )
            })
        }
        SecretsCmd::Rotate => {
            let caller = endor::sites::Guard::cli(false)
                .caller
                .unwrap_or_else(|| "cli".into());
            let r = endor::service::rotate_master_key(store.as_ref(), &caller).await?;
            emit(json, &r, |r| {
                format!(
                    "master key {} replaced by {}: {} secrets sealed again",
                    r.old_key, r.new_key, r.resealed
                )
            })
        }
    }
}
