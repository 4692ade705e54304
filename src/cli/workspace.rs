//! `endor workspace`: workspaces and their members.

use clap::Subcommand;
use endor::config::Config;
use endor::service;

use super::{emit, open_store};

#[derive(Subcommand)]
pub enum WorkspaceCmd {
    /// Create a workspace; the owner is its first member.
    Create {
        name: String,
        #[arg(long)]
        owner: String,
    },
    /// List workspaces.
    List,
    /// Rename a workspace.
    Rename { name: String, new_name: String },
    /// Workspace members.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Show or change the workspace's own settings (over the config's `[logs]`).
    Settings {
        workspace: String,
        /// How long its sites' logs are kept (`30d`), or `default`.
        #[arg(long)]
        log_retention: Option<String>,
        /// How big each of its sites' logs may grow (`256MiB`), or `default`.
        #[arg(long)]
        log_max_bytes: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum MemberCmd {
    /// Add an existing user to a workspace with one or more roles.
    Add {
        workspace: String,
        login: String,
        /// owner, billing or developer (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Replace a member's roles (the last owner keeps `owner`).
    Roles {
        workspace: String,
        login: String,
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Remove a member (never the last owner).
    Remove { workspace: String, login: String },
    /// List a workspace's members and their roles.
    List { workspace: String },
}

pub async fn run(cmd: WorkspaceCmd, json: bool, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    match cmd {
        WorkspaceCmd::Settings {
            workspace,
            log_retention,
            log_max_bytes,
        } => {
            let retention = service::Setting::parse("--log-retention", log_retention.as_deref())?;
            let cap = service::Setting::parse("--log-max-bytes", log_max_bytes.as_deref())?;
            let who = endor::sites::Guard::cli(false)
                .caller
                .unwrap_or_else(|| "cli".into());
            let v = service::workspace_settings(
                store.as_ref(),
                config,
                &workspace,
                retention,
                cap,
                &who,
            )
            .await?;
            emit(json, &v, |v| {
                let own = |o: &Option<String>| match o {
                    Some(_) => "set for this workspace",
                    None => "the config's",
                };
                format!(
                    "{}: logs kept {} ({}), at most {} per site ({})",
                    v.workspace,
                    v.effective_log_retention,
                    own(&v.log_retention),
                    v.effective_log_max_bytes_per_site,
                    own(&v.log_max_bytes_per_site)
                )
            })
        }
        WorkspaceCmd::Create { name, owner } => {
            let ws = service::create_workspace(store.as_ref(), &name, &owner).await?;
            emit(json, &ws, |w| {
                format!("created workspace {} ({}) owned by {owner}", w.name, w.id)
            })
        }
        WorkspaceCmd::Member(MemberCmd::Add {
            workspace,
            login,
            roles,
        }) => {
            let roles = service::add_member(store.as_ref(), &workspace, &login, &roles).await?;
            endor::notify::Notifier::new(store.clone(), config)
                .added_event(&workspace, &login, &roles)
                .await;
            emit(
                json,
                &serde_json::json!({"workspace": workspace, "login": login, "roles": roles}),
                |_| format!("{login} joined {workspace} as {}", roles.join(", ")),
            )
        }
        WorkspaceCmd::Member(MemberCmd::Roles {
            workspace,
            login,
            roles,
        }) => {
            let roles =
                service::set_member_roles(store.as_ref(), &workspace, &login, &roles).await?;
            emit(
                json,
                &serde_json::json!({"workspace": workspace, "login": login, "roles": roles}),
                |_| format!("{login} in {workspace}: {}", roles.join(", ")),
            )
        }
        WorkspaceCmd::Member(MemberCmd::Remove { workspace, login }) => {
            service::remove_member(store.as_ref(), &workspace, &login).await?;
            emit(
                json,
                &serde_json::json!({"workspace": workspace, "removed": login}),
                |_| format!("{login} removed from {workspace}"),
            )
        }
        WorkspaceCmd::Member(MemberCmd::List { workspace }) => {
            let ws = service::workspace(store.as_ref(), &workspace).await?;
            let members: Vec<serde_json::Value> = store
                .list_members(&ws.id)
                .await?
                .into_iter()
                .map(|(login, roles)| serde_json::json!({"login": login, "roles": roles}))
                .collect();
            emit(json, &members, |m| {
                m.iter()
                    .map(|v| {
                        format!(
                            "{}\t{}",
                            v["login"].as_str().unwrap_or(""),
                            v["roles"]
                                .as_array()
                                .map(|r| r
                                    .iter()
                                    .filter_map(|x| x.as_str())
                                    .collect::<Vec<_>>()
                                    .join(","))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        WorkspaceCmd::Rename { name, new_name } => {
            let ws = service::rename_workspace(store.as_ref(), &name, &new_name).await?;
            emit(json, &ws, |w| format!("workspace {name} is now {}", w.name))
        }
        WorkspaceCmd::List => {
            let list = store.list_workspaces().await?;
            emit(json, &list, |l| {
                l.iter()
                    .map(|w| format!("{}\t{}", w.name, w.id))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
    }
}
