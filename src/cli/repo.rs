//! `endor repo`: repository connections (webhook endpoints).

use clap::Subcommand;
use endor::config::Config;
use endor::service;

use super::{emit, open_store};

#[derive(Subcommand)]
pub enum RepoCmd {
    /// Connect a repository (github:OWNER/NAME, gitlab:GROUP/NAME, gitea:OWNER/NAME) to a
    /// workspace; prints the webhook URL and its secret (shown this once).
    Connect {
        workspace: String,
        repo: String,
        /// The forge's API base (GitHub Enterprise, a GitLab or Gitea host).
        #[arg(long)]
        api_url: Option<String>,
        /// Where to fetch the repository from (any URL git accepts, file:// included).
        /// Checked with `git ls-remote`: a repository that is not there is refused.
        #[arg(long)]
        git_url: Option<String>,
        /// Connect without checking that the git URL can be fetched.
        #[arg(long)]
        no_check: bool,
        /// Create the repository's webhook through the forge's API (the forge's token in the
        /// config): nothing to paste by hand. Kept up to date by rotate-secret, removed by
        /// delete.
        #[arg(long)]
        create_hook: bool,
        /// The region its previews are made in (a region or an alias; default
        /// `regions.default`). A preview's parent site must be in it.
        #[arg(long)]
        region: Option<String>,
    },
    /// List connected repositories.
    List {
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Issue a new webhook secret; the old one stays accepted until --retire-old.
    RotateSecret {
        connection_id: String,
        /// Stop accepting the previous secret (no new secret is issued).
        #[arg(long)]
        retire_old: bool,
    },
    /// Delete a connection: its webhook URL stops accepting deliveries, and the forge's
    /// webhook endor created is removed.
    Delete {
        connection_id: String,
        /// Leave the forge's webhook in place.
        #[arg(long)]
        keep_hook: bool,
    },
}

pub async fn run(cmd: RepoCmd, json: bool, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    match cmd {
        RepoCmd::Connect {
            workspace,
            repo,
            api_url,
            git_url,
            no_check,
            create_hook,
            region,
        } => {
            let warning = match (&git_url, no_check) {
                (Some(url), false) => service::check_git_url(url).await?,
                _ => None,
            };
            if let Some(w) = &warning {
                eprintln!("warning: {w}");
            }
            let (s, api, git) = (store.as_ref(), api_url.as_deref(), git_url.as_deref());
            let region = region.as_deref();
            let mut c = if create_hook {
                endor::hooks::connect_with_hook(s, config, &workspace, &repo, api, git, region)
                    .await?
            } else {
                service::connect_repo_in(s, config, &workspace, &repo, api, git, region).await?
            };
            c.warning = warning;
            emit(json, &c, |c| {
                format!(
                    "connected {}:{} to workspace {}\n\nconnection id: {}\nwebhook URL:   {}\nsecret:        {}\n(the secret is shown this once; rotate it with `endor repo rotate-secret {}`)\n\n{}",
                    c.forge,
                    c.repo,
                    c.workspace,
                    c.connection_id,
                    c.webhook_url,
                    c.secret,
                    c.connection_id,
                    c.instructions
                )
            })
        }
        RepoCmd::List { workspace } => {
            let list = service::list_repos(store.as_ref(), config, workspace.as_deref()).await?;
            emit(json, &list, |l| {
                l.iter()
                    .map(|c| {
                        format!(
                            "{}\t{}:{}\t{}\t{}{}",
                            c.connection_id,
                            c.forge,
                            c.repo,
                            c.region,
                            c.webhook_url,
                            if c.rotating { "\t(rotating)" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        RepoCmd::RotateSecret {
            connection_id,
            retire_old,
        } => {
            let r =
                endor::hooks::rotate_with_hook(store.as_ref(), config, &connection_id, retire_old)
                    .await?;
            emit(json, &r, |r| match &r.secret {
                Some(s) => format!(
                    "new secret: {s}\n{}the previous secret stays accepted until `endor repo rotate-secret {} --retire-old`",
                    if r.hook_updated {
                        "the forge's webhook signs with it already; "
                    } else {
                        ""
                    },
                    r.connection_id
                ),
                None => "previous secret retired: only the current secret is accepted".into(),
            })
        }
        RepoCmd::Delete {
            connection_id,
            keep_hook,
        } => {
            endor::hooks::delete_with_hook(store.as_ref(), config, &connection_id, keep_hook)
                .await?;
            emit(json, &serde_json::json!({"deleted": connection_id}), |_| {
                format!("deleted connection {connection_id}")
            })
        }
    }
}
