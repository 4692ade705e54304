//! `endor user`: users, linked forge identities, API tokens.

use clap::Subcommand;
use endor::config::Config;
use endor::service;

use super::{emit, open_store};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user.
    Create {
        login: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Link a forge identity (github:NAME, gitlab:NAME, gitea:NAME) to a user.
    Link { login: String, identity: String },
    /// Issue an API bearer token for a user (printed once; only its hash is kept).
    Token {
        login: String,
        /// A label to tell tokens apart.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List a user's API tokens (ids, labels, last use, revocation; never the tokens).
    Tokens { login: String },
    /// Revoke one of a user's API tokens: it is refused (401) from then on.
    RevokeToken { login: String, token_id: String },
}

pub async fn run(cmd: UserCmd, json: bool, config: &Config) -> anyhow::Result<()> {
    // The first user is made in a new store; every other user command needs one.
    let store = if matches!(cmd, UserCmd::Create { .. }) {
        super::create_store(config).await?
    } else {
        open_store(config).await?
    };
    match cmd {
        UserCmd::Create { login, email, name } => {
            let u = service::create_user(store.as_ref(), &login, name.as_deref(), email.as_deref())
                .await?;
            emit(json, &u, |u| format!("created user {} ({})", u.login, u.id))
        }
        UserCmd::Token { login, name } => {
            let t = service::issue_token(store.as_ref(), &login, &name).await?;
            emit(json, &t, |t| {
                format!(
                    "token {} for {}: {}\n(shown this once; revoke it with `endor user revoke-token {} {}`)",
                    t.id, t.login, t.token, t.login, t.id
                )
            })
        }
        UserCmd::Tokens { login } => {
            let list = service::list_tokens(store.as_ref(), &login).await?;
            emit(json, &list, |l| {
                l.iter()
                    .map(|t| {
                        format!(
                            "{}\t{}\t{}",
                            t.id,
                            t.name,
                            if t.revoked_at.is_some() {
                                "revoked"
                            } else {
                                "live"
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        UserCmd::RevokeToken { login, token_id } => {
            service::revoke_token(store.as_ref(), &login, &token_id).await?;
            emit(
                json,
                &serde_json::json!({"user": login, "revoked": token_id}),
                |_| format!("revoked token {token_id} of {login}"),
            )
        }
        UserCmd::Link { login, identity } => {
            service::link_identity(store.as_ref(), &login, &identity).await?;
            emit(
                json,
                &serde_json::json!({"user": login, "identity": identity}),
                |_| format!("linked {identity} to {login}"),
            )
        }
    }
}
