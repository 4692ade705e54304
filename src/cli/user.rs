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
    /// Set a user's dashboard password, read from standard input (typed twice at a terminal,
    /// where it is not echoed; one line from a pipe). Every session of theirs ends.
    Password { login: String },
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
        UserCmd::Password { login } => {
            let password = read_password()?;
            let u = endor::dashboard::auth::set_password(store.as_ref(), &login, &password).await?;
            emit(
                json,
                &serde_json::json!({"user": u.login, "password": "set"}),
                |_| {
                    format!(
                        "password set for {}; they can sign in at {}/sign-in",
                        u.login,
                        config.server.public_url.trim_end_matches('/')
                    )
                },
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

/// A password from standard input: at a terminal, asked twice without echo; else one line.
fn read_password() -> anyhow::Result<String> {
    use std::io::{BufRead, Write};
    let tty = unsafe { libc::isatty(0) } == 1;
    let line = |prompt: &str| -> anyhow::Result<String> {
        if tty {
            eprint!("{prompt}");
            std::io::stderr().flush()?;
        }
        let mut s = String::new();
        std::io::stdin().lock().read_line(&mut s)?;
        if tty {
            eprintln!();
        }
        Ok(s.trim_end_matches(['\n', '\r']).to_string())
    };
    if !tty {
        let p = line("")?;
        anyhow::ensure!(!p.is_empty(), "no password on standard input");
        return Ok(p);
    }
    // No echo while typing.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    let saved = unsafe { libc::tcgetattr(0, &mut term) } == 0;
    let old = term;
    if saved {
        term.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &term) };
    }
    let first = line("New password: ");
    let second = line("Again: ");
    if saved {
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &old) };
    }
    let (first, second) = (first?, second?);
    anyhow::ensure!(first == second, "the two passwords differ; nothing changed");
    Ok(first)
}
