//! `endor github`: the workspace's GitHub App, made through GitHub's app-manifest flow.

use clap::Subcommand;
use endor::config::Config;

use super::{emit, open_store};

#[derive(Subcommand)]
pub enum GithubCmd {
    /// The GitHub App, made in one click.
    #[command(subcommand)]
    App(AppCmd),
}

#[derive(Subcommand)]
pub enum AppCmd {
    /// Print the link that makes a GitHub App for the workspace: it posts the app's manifest
    /// (webhook, permissions, events) to GitHub, and GitHub sends you back to endor, which
    /// keeps the app's key and secrets sealed. The link works for an hour.
    Create {
        #[arg(long)]
        workspace: String,
        /// Make it in this organization (default: your own account).
        #[arg(long)]
        org: Option<String>,
        /// The app's name on GitHub (default: `endor WORKSPACE`).
        #[arg(long)]
        name: Option<String>,
    },
    /// The GitHub Apps endor made (never their keys).
    List,
}

pub async fn run(cmd: GithubCmd, json: bool, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    match cmd {
        GithubCmd::App(AppCmd::Create {
            workspace,
            org,
            name,
        }) => {
            let url = endor::apps::start(
                store.as_ref(),
                config,
                &workspace,
                org.as_deref(),
                name.as_deref(),
            )
            .await?;
            emit(json, &serde_json::json!({"url": url}), |_| {
                format!(
                    "Open this link in a browser signed in to GitHub (it works for an hour):\n\n  {url}\n\n\
                     GitHub asks you to confirm the app, then sends you back to endor at\n  {}/github/app/callback\n\
                     (server.public_url must reach this server from your browser).",
                    config.server.public_url.trim_end_matches('/')
                )
            })
        }
        GithubCmd::App(AppCmd::List) => {
            let apps = store.github_apps().await?;
            emit(json, &apps, |l| {
                if l.is_empty() {
                    return "no GitHub App yet: endor github app create --workspace W".into();
                }
                l.iter()
                    .map(|a| format!("{}\t{}\t{}\t{}", a.app_id, a.slug, a.owner, a.html_url))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
    }
}
