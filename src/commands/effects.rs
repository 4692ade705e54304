//! Slash-command jobs: a PR comment's commands, checked against the author's workspace roles
//! and carried out on the PR's preview through the previews' public API (one function per
//! verb, in [`CommentRunner::apply`]); the reply (a reaction, or a comment for errors, refusals
//! and help) goes through the outbox.
//!
//! Permission: the comment author's forge login → the endor user it is linked to → that user's
//! roles in the workspace of the repository's connection. Mutating commands need `developer`;
//! `status` and `help` anyone. Comments by endor itself, by accounts the forge flags as bots, and
//! endor's own marked comments are ignored.

use std::sync::Arc;

use super::grammar::{self, CidrOp, Command, SyncWhat};
use super::{Outcome, Reply};
use crate::config::Config;
use crate::forge::client::CheckAction;
use crate::forge::{CheckActionEvent, CommentAction, CommentEvent, EventKind, ForgeEvent};
use crate::jobs::{Job, JobContext, JobError};
use crate::previews::Lifecycle;
use crate::previews::actions::{Deployed, SyncParts, Synced};
use crate::store::{Connection, Site, Store};
use crate::writeback::{ForgeClients, Payload};

/// Runs `comment` jobs.
pub struct CommentRunner {
    store: Arc<dyn Store>,
    config: Config,
    previews: Arc<Lifecycle>,
    forges: Arc<ForgeClients>,
    /// Wakes the outbox sender when a reply was stored.
    outbox_wake: Arc<tokio::sync::Notify>,
}

fn transient(e: impl std::fmt::Display) -> JobError {
    JobError::Transient(e.to_string())
}

/// Who wrote the comment, as far as the workspace is concerned.
enum Caller {
    /// The forge account is linked to no endor user.
    Unlinked,
    /// Linked, but not a member of the connection's workspace.
    Outsider {
        user: String,
    },
    Member {
        user: String,
        roles: Vec<String>,
    },
}

impl Caller {
    fn is_developer(&self) -> bool {
        matches!(self, Caller::Member { roles, .. } if roles.iter().any(|r| r == crate::service::Role::Developer.as_str()))
    }

    /// Why a mutating command is refused; names the role it needs.
    fn refusal(&self, forge: &str, login: &str, workspace: &str) -> String {
        let login = grammar::clip(login);
        let workspace = grammar::clip(workspace);
        let need = format!("this command needs the developer role in workspace `{workspace}`");
        match self {
            Caller::Unlinked => format!(
                "{need}; the {forge} account `{login}` is not linked to an endor user (an owner can run `endor user link USER {forge}:{login}`)"
            ),
            Caller::Outsider { user } => format!(
                "{need}; endor user `{}` is not a member of it",
                grammar::clip(user)
            ),
            Caller::Member { user, roles } => format!(
                "{need}; endor user `{}` has only `{}`",
                grammar::clip(user),
                roles.join(", ")
            ),
        }
    }
}

impl CommentRunner {
    pub fn new(
        store: Arc<dyn Store>,
        config: &Config,
        previews: Arc<Lifecycle>,
        forges: Arc<ForgeClients>,
        outbox_wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            store,
            config: config.clone(),
            previews,
            forges,
            outbox_wake,
        }
    }

    /// Run a `comment` job: the comment's new commands, once each, then the reply.
    pub async fn run(&self, job: &Job, ctx: JobContext) -> Result<(), JobError> {
        let ev: ForgeEvent = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::Permanent(format!("unreadable job payload: {e}")))?;
        let c = match &ev.kind {
            EventKind::Comment(c) => c,
            EventKind::CheckAction(a) => return self.run_check_action(job, ctx, &ev, a).await,
            EventKind::PullRequest(_) => return Ok(()),
        };
        if c.action == CommentAction::Deleted {
            return Ok(());
        }
        let prefix = self.config.commands.prefix.as_str();
        let now = grammar::parse(&c.body, prefix);
        if now.commands.is_empty() && now.errors.is_empty() && now.refused == 0 {
            return Ok(());
        }
        let conn = self.previews.connection(job).await?;
        if self.written_by_a_bot(&conn, c).await {
            tracing::debug!(author = %c.author, "comment by a bot ignored");
            return Ok(());
        }
        let before = match (c.action, &c.previous_body) {
            (CommentAction::Edited, Some(b)) => Some(grammar::parse(b, prefix)),
            _ => None,
        };
        let comment_key = c.comment_id.to_string();
        let recorded = self
            .store
            .comment_commands(&conn.id, &comment_key)
            .await
            .map_err(transient)?;
        // What earlier attempts of this job ran count as this job's results; what other jobs
        // (the comment before an edit) ran is not run again.
        let mine = format!("{}|", job.id);
        let done_elsewhere: Vec<String> = recorded
            .iter()
            .filter(|(_, o)| !o.starts_with(&mine))
            .map(|(c, _)| c.clone())
            .collect();
        let to_run = super::to_run(&now, before.as_ref(), &done_elsewhere);
        let errors = super::new_errors(&now, before.as_ref());
        let refused = match &before {
            Some(b) => now.refused.saturating_sub(b.refused),
            None => now.refused,
        };
        if to_run.is_empty() && errors.is_empty() && refused == 0 {
            return Ok(());
        }
        for e in &errors {
            tracing::info!(pr = c.number, author = %c.author, line = %e.line.escape_debug(), error = %e.message, "slash-command not understood");
        }
        let caller = self.caller(&conn, &c.author).await?;
        let workspace = self.workspace_name(&conn).await?;
        let mut results = Vec::new();
        for cmd in to_run {
            let text = cmd.canonical();
            if let Some((_, o)) = recorded.iter().find(|(c, _)| *c == text) {
                // Ran in an earlier attempt of this job (which then failed): keep its result.
                results.push((text, decode(o)));
                continue;
            }
            let outcome = if cmd.mutating() && !caller.is_developer() {
                Outcome::Refused(caller.refusal(&ev.forge.to_string(), &c.author, &workspace))
            } else {
                self.apply(job, &ctx, &conn, c, &cmd).await?
            };
            tracing::info!(
                pr = c.number, author = %c.author, command = %text, outcome = outcome.label(),
                "slash-command"
            );
            self.record(&conn, &comment_key, &text, job, &outcome)
                .await?;
            results.push((text, outcome));
        }
        // A developer's command is activity: the expiry moves to now + the preview's TTL
        // (never earlier than it was).
        if caller.is_developer() && results.iter().any(|(_, o)| matches!(o, Outcome::Done(_))) {
            self.previews.touch(&conn, c.number).await?;
        }
        self.reply(&conn, c, job, &results, &errors, refused).await
    }

    /// A press of a button on the check run (`Redeploy`, `Destroy`, GitHub's "Re-run"): the
    /// slash-command it stands for, once per press, under the same role rule; a refusal or a
    /// failure is answered with a comment on the PR (a press has no comment to react to).
    async fn run_check_action(
        &self,
        job: &Job,
        ctx: JobContext,
        ev: &ForgeEvent,
        a: &CheckActionEvent,
    ) -> Result<(), JobError> {
        let conn = self.previews.connection(job).await?;
        let cmd = match a.action {
            CheckAction::Redeploy => Command::Deploy,
            CheckAction::Destroy => Command::Destroy,
        };
        let text = cmd.canonical();
        // Each press is its own delivery and job: recorded under the job, so a retried job
        // keeps what its earlier attempt did.
        let key = format!("check-run-{}-{}", a.check_run_id, job.id);
        let recorded = self
            .store
            .comment_commands(&conn.id, &key)
            .await
            .map_err(transient)?;
        let caller = self.caller(&conn, &a.author).await?;
        let outcome = match recorded.iter().find(|(c, _)| *c == text) {
            Some((_, o)) => decode(o),
            None => {
                let outcome = if caller.is_developer() {
                    // A fork's approval covers the head the button is on (a newer head is
                    // refused); otherwise the PR's current head is built.
                    let fork = self
                        .store
                        .preview(&conn.id, a.number as i64)
                        .await
                        .map_err(transient)?
                        .is_some_and(|p| p.is_fork != 0);
                    let c = CommentEvent {
                        action: CommentAction::Created,
                        number: a.number,
                        comment_id: a.check_run_id,
                        body: String::new(),
                        previous_body: None,
                        author: a.author.clone(),
                        author_is_bot: false,
                        head_sha: fork.then(|| a.head_sha.clone()),
                    };
                    self.apply(job, &ctx, &conn, &c, &cmd).await?
                } else {
                    let workspace = self.workspace_name(&conn).await?;
                    Outcome::Refused(caller.refusal(&ev.forge.to_string(), &a.author, &workspace))
                };
                tracing::info!(
                    pr = a.number, author = %a.author, command = %text, via = a.via.as_str(),
                    outcome = outcome.label(), "check run button"
                );
                self.record(&conn, &key, &text, job, &outcome).await?;
                outcome
            }
        };
        let (message, verdict) = match &outcome {
            Outcome::Done(_) => {
                if caller.is_developer() && a.action == CheckAction::Redeploy {
                    self.previews.touch(&conn, a.number).await?;
                }
                return Ok(());
            }
            Outcome::Refused(m) => (m, "refused"),
            Outcome::Failed(m) | Outcome::Text(m) => (m, "failed"),
        };
        let (label, _) = a.action.label();
        let body = format!(
            "@{}\n\n- the check run's **{label}** button: {verdict} — {}\n",
            crate::forge::markdown::escape_md(&a.author),
            super::md(message)
        );
        let payload = Payload::Reply {
            repo: conn.repo.clone(),
            body: format!("{}\n{body}", crate::forge::markdown::reply_marker(&key)),
            key,
        };
        self.send(&conn, &payload, a.number).await
    }

    /// Record how a command of a comment (or a button press, `key`) ended, so a retried job
    /// does not run it again.
    async fn record(
        &self,
        conn: &Connection,
        key: &str,
        text: &str,
        job: &Job,
        outcome: &Outcome,
    ) -> Result<(), JobError> {
        self.store
            .record_comment_command(
                &conn.id,
                key,
                text,
                &encode(job.id.as_str(), outcome),
                crate::now_ms(),
            )
            .await
            .map_err(transient)
    }

    /// The name of the connection's workspace (refusals name it).
    async fn workspace_name(&self, conn: &Connection) -> Result<String, JobError> {
        Ok(self
            .store
            .workspace_by_id(&conn.workspace_id)
            .await
            .map_err(transient)?
            .map(|w| w.name)
            .unwrap_or_default())
    }

    /// Store a reply in the outbox and wake its sender.
    async fn send(
        &self,
        conn: &Connection,
        payload: &Payload,
        number: u64,
    ) -> Result<(), JobError> {
        self.store
            .enqueue_outbox(
                &self.forges.row(conn, payload, number as i64),
                crate::now_ms(),
            )
            .await
            .map_err(transient)?;
        self.outbox_wake.notify_waiters();
        Ok(())
    }

    /// Endor's own comments, accounts the forge flags as bots, and marked endor comments.
    async fn written_by_a_bot(&self, conn: &Connection, c: &CommentEvent) -> bool {
        if c.author_is_bot || c.body.trim_start().starts_with("<!-- endor:") {
            return true;
        }
        if !self.forges.enabled(conn) {
            return false;
        }
        let account = match self.forges.client(conn).await {
            Ok(f) => f.account().await,
            Err(e) => Err(e),
        };
        match account {
            Ok(a) => a.eq_ignore_ascii_case(&c.author),
            Err(e) => {
                tracing::warn!(error = %e, "could not learn endor's own forge account");
                false
            }
        }
    }

    async fn caller(&self, conn: &Connection, login: &str) -> Result<Caller, JobError> {
        let Some(user) = self
            .store
            .user_by_identity(conn.forge, login)
            .await
            .map_err(transient)?
        else {
            return Ok(Caller::Unlinked);
        };
        let roles = self
            .store
            .member_roles(&conn.workspace_id, &user.id)
            .await
            .map_err(transient)?;
        Ok(if roles.is_empty() {
            Caller::Outsider { user: user.login }
        } else {
            Caller::Member {
                user: user.login,
                roles,
            }
        })
    }

    async fn reply(
        &self,
        conn: &Connection,
        c: &CommentEvent,
        job: &Job,
        results: &[(String, Outcome)],
        errors: &[&grammar::ParseError],
        refused: usize,
    ) -> Result<(), JobError> {
        let prefix = &self.config.commands.prefix;
        let payload = match super::reply(&c.author, prefix, results, errors, refused) {
            None => return Ok(()),
            Some(Reply::Reaction(r)) => Payload::Reaction {
                repo: conn.repo.clone(),
                comment_id: c.comment_id.to_string(),
                content: r.into(),
            },
            Some(Reply::Comment(body)) => {
                let key = format!("{}-{}", c.comment_id, job.id);
                Payload::Reply {
                    repo: conn.repo.clone(),
                    body: format!("{}\n{body}", crate::forge::markdown::reply_marker(&key)),
                    key,
                }
            }
        };
        self.send(conn, &payload, c.number).await
    }

    /// Carry out one permitted command. Transient failures are returned (the job is retried
    /// and the command runs again); everything else is an outcome.
    async fn apply(
        &self,
        job: &Job,
        ctx: &JobContext,
        conn: &Connection,
        c: &CommentEvent,
        cmd: &Command,
    ) -> Result<Outcome, JobError> {
        match cmd {
            Command::Deploy => self.deploy(job, ctx, conn, c).await,
            Command::Help => Ok(Outcome::Text(grammar::help(&self.config.commands.prefix))),
            Command::Status => self.status(conn, c).await,
            Command::Destroy => self.destroy(conn, c).await,
            Command::Extend(d) => self.extend(conn, c, *d).await,
            Command::Sync(what) => self.sync(conn, c, *what).await,
            Command::TagAdd(_)
            | Command::TagRm(_)
            | Command::Password(_)
            | Command::Cidr(_)
            | Command::Robots(_) => {
                // These change the PR's live site: there must be one.
                let Some(site) = self.previews.site_of(conn, c.number).await? else {
                    return Ok(self.no_preview());
                };
                match cmd {
                    Command::TagAdd(t) => self.tag(&site, t, true).await,
                    Command::TagRm(t) => self.tag(&site, t, false).await,
                    Command::Password(on) => self.password(&site, *on).await,
                    Command::Cidr(op) => self.cidr(&site, op).await,
                    Command::Robots(on) => self.robots(&site, *on).await,
                    // The arm above admits only the five site commands matched here.
                    _ => unreachable!("not a site command"),
                }
            }
        }
    }

    async fn deploy(
        &self,
        job: &Job,
        ctx: &JobContext,
        conn: &Connection,
        c: &CommentEvent,
    ) -> Result<Outcome, JobError> {
        let prefix = &self.config.commands.prefix;
        let deployed = self
            .previews
            .deploy(job, ctx, conn, c.number, c.head_sha.as_deref(), prefix)
            .await?;
        Ok(match deployed {
            Deployed::Ready { head } => {
                Outcome::Done(Some(format!("ready at `{}`", &head[..head.len().min(12)])))
            }
            Deployed::Superseded => Outcome::Done(Some(
                "superseded by a newer push, which is being built".into(),
            )),
            Deployed::NotBuilt(why) | Deployed::Failed(why) => Outcome::Failed(why),
        })
    }

    async fn status(&self, conn: &Connection, c: &CommentEvent) -> Result<Outcome, JobError> {
        Ok(if self.previews.repost_status(conn, c.number).await? {
            Outcome::Done(None)
        } else {
            self.no_preview()
        })
    }

    async fn destroy(&self, conn: &Connection, c: &CommentEvent) -> Result<Outcome, JobError> {
        let why = format!("destroyed by {} with a command", c.author);
        Ok(if self.previews.destroy_pr(conn, c.number, &why).await? {
            Outcome::Done(None)
        } else {
            Outcome::Done(Some("there was no preview to destroy".into()))
        })
    }

    async fn extend(
        &self,
        conn: &Connection,
        c: &CommentEvent,
        by: std::time::Duration,
    ) -> Result<Outcome, JobError> {
        let Some(e) = self.previews.extend(conn, c.number, by).await? else {
            return Ok(self.no_preview());
        };
        let when = crate::duration::format_utc(e.expires_at);
        Ok(Outcome::Done(Some(if e.capped {
            format!(
                "expires {when} (capped by previews.max_ttl = {})",
                self.config.previews.max_ttl
            )
        } else {
            format!("expires {when}")
        })))
    }

    async fn sync(
        &self,
        conn: &Connection,
        c: &CommentEvent,
        what: SyncWhat,
    ) -> Result<Outcome, JobError> {
        let Some(site) = self.previews.site_of(conn, c.number).await? else {
            return Ok(self.no_preview());
        };
        let parts = SyncParts {
            files: matches!(what, SyncWhat::Files | SyncWhat::All),
            databases: matches!(what, SyncWhat::Db | SyncWhat::All),
        };
        Ok(match self.previews.sync_from_parent(&site, parts).await? {
            Synced::Done {
                parent,
                duration_ms,
            } => Outcome::Done(Some(format!("from `{parent}` in {duration_ms} ms"))),
            Synced::NoParent => {
                Outcome::Failed("this preview has no parent site to sync from".into())
            }
            Synced::ParentGone => Outcome::Failed("the parent site is gone".into()),
            Synced::Failed(e) => Outcome::Failed(e),
        })
    }

    async fn tag(&self, site: &Site, tag: &str, add: bool) -> Result<Outcome, JobError> {
        let tag = match crate::access::validate_tag(tag) {
            Ok(t) => t,
            Err(e) => return Ok(Outcome::Failed(e)),
        };
        let changed = if add {
            self.store.add_site_tag(&site.id, &tag).await
        } else {
            self.store.remove_site_tag(&site.id, &tag).await
        }
        .map_err(transient)?;
        Ok(Outcome::Done(
            (!changed).then(|| "nothing to change".into()),
        ))
    }

    async fn password(&self, site: &Site, on: bool) -> Result<Outcome, JobError> {
        let sealer = self.store.keyring();
        crate::access::set_generated_password(self.store.as_ref(), sealer, &site.id, on)
            .await
            .map_err(|e| match e {
                crate::access::AccessError::Store(e) => transient(e),
                other => JobError::Permanent(other.to_string()),
            })?;
        Ok(Outcome::Done(on.then(|| {
            format!(
                "members see the credentials with `endor site access {}`",
                site.name
            )
        })))
    }

    async fn cidr(&self, site: &Site, op: &CidrOp) -> Result<Outcome, JobError> {
        let (allow, deny, clear) = match op {
            CidrOp::Allow(c) => (vec![c.clone()], vec![], false),
            CidrOp::Deny(c) => (vec![], vec![c.clone()], false),
            CidrOp::Clear => (vec![], vec![], true),
        };
        match crate::access::set_cidrs(self.store.as_ref(), &site.id, &allow, &deny, clear).await {
            Ok(()) => Ok(Outcome::Done(None)),
            Err(crate::access::AccessError::Invalid(e)) => Ok(Outcome::Failed(e)),
            Err(e) => Err(JobError::Transient(e.to_string())),
        }
    }

    async fn robots(&self, site: &Site, on: bool) -> Result<Outcome, JobError> {
        crate::access::set_robots(self.store.as_ref(), &site.id, on)
            .await
            .map_err(transient)?;
        Ok(Outcome::Done(None))
    }

    fn no_preview(&self) -> Outcome {
        Outcome::Failed(format!(
            "this pull request has no preview; comment `{} deploy` to make one",
            self.config.commands.prefix
        ))
    }
}

/// A recorded outcome: `{job id}|{label}|{text}`.
fn encode(job: &str, o: &Outcome) -> String {
    let text = match o {
        Outcome::Done(n) => n.clone().unwrap_or_default(),
        Outcome::Refused(t) | Outcome::Failed(t) | Outcome::Text(t) => t.clone(),
    };
    format!("{job}|{}|{text}", o.label())
}

fn decode(s: &str) -> Outcome {
    let mut parts = s.splitn(3, '|');
    let (_, label, text) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    let text = text.to_string();
    match label {
        Some("refused") => Outcome::Refused(text),
        Some("failed") => Outcome::Failed(text),
        Some("text") => Outcome::Text(text),
        _ => Outcome::Done((!text.is_empty()).then_some(text)),
    }
}
