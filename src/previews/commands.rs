//! Slash-command jobs: a PR comment's commands, checked against the author's workspace roles
//! and carried out on the PR's preview; the reply (a reaction, or a comment for errors, refusals
//! and help) goes through the outbox.
//!
//! Permission: the comment author's forge login → the endor user it is linked to → that user's
//! roles in the workspace of the repository's connection. Mutating commands need `developer`;
//! `status` and `help` anyone. Comments by endor itself, by accounts the forge flags as bots, and
//! endor's own marked comments are ignored.

use crate::commands::grammar::{self, Command, SyncWhat};
use crate::commands::{self, Outcome};
use crate::forge::{CommentAction, CommentEvent, EventKind, ForgeEvent};
use crate::jobs::{JobContext, JobError};
use crate::store::{Connection, Job, Preview};
use crate::writeback::Payload;

use super::lifecycle::{Lifecycle, Target, state};

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

impl Lifecycle {
    pub(super) async fn handle_comment(&self, job: &Job, ctx: JobContext) -> Result<(), JobError> {
        let ev: ForgeEvent = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::Permanent(format!("unreadable job payload: {e}")))?;
        let EventKind::Comment(c) = &ev.kind else {
            return Ok(());
        };
        if c.action == CommentAction::Deleted {
            return Ok(());
        }
        let prefix = self.config.commands.prefix.as_str();
        let now = grammar::parse(&c.body, prefix);
        if now.commands.is_empty() && now.errors.is_empty() && now.refused == 0 {
            return Ok(());
        }
        let conn = self.connection(job).await?;
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
        let to_run = commands::to_run(&now, before.as_ref(), &done_elsewhere);
        let errors = commands::new_errors(&now, before.as_ref());
        let refused = match &before {
            Some(b) => now.refused.saturating_sub(b.refused),
            None => now.refused,
        };
        if to_run.is_empty() && errors.is_empty() && refused == 0 {
            return Ok(());
        }
        let caller = self.caller(&conn, &c.author).await?;
        let workspace = self
            .store
            .list_workspaces()
            .await
            .map_err(transient)?
            .into_iter()
            .find(|w| w.id == conn.workspace_id)
            .map(|w| w.name)
            .unwrap_or_default();
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
            self.store
                .record_comment_command(
                    &conn.id,
                    &comment_key,
                    &text,
                    &encode(&job.id, &outcome),
                    crate::now_ms(),
                )
                .await
                .map_err(transient)?;
            results.push((text, outcome));
        }
        // A developer's command is activity: the expiry moves to now + the preview's TTL
        // (never earlier than it was).
        if caller.is_developer() && results.iter().any(|(_, o)| matches!(o, Outcome::Done(_))) {
            self.touch(&conn, c.number).await?;
        }
        self.reply(&conn, c, job, &results, &errors, refused).await
    }

    async fn touch(&self, conn: &Connection, number: u64) -> Result<(), JobError> {
        let Some(mut p) = self.live_preview(conn, number).await? else {
            return Ok(());
        };
        let (Some(ttl), Some(exp)) = (p.ttl_ms, p.expires_at) else {
            return Ok(());
        };
        let wanted = crate::now_ms() + ttl;
        if wanted > exp {
            p.expires_at = Some(wanted);
            self.save(&mut p).await?;
        }
        Ok(())
    }

    /// Endor's own comments, accounts the forge flags as bots, and marked endor comments.
    async fn written_by_a_bot(&self, conn: &Connection, c: &CommentEvent) -> bool {
        if c.author_is_bot || c.body.trim_start().starts_with("<!-- endor:") {
            return true;
        }
        if !self.forges.enabled(conn.forge) {
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
        if !self.forges.enabled(conn.forge) {
            return Ok(());
        }
        let prefix = &self.config.commands.prefix;
        let payload = match commands::reply(&c.author, prefix, results, errors, refused) {
            None => return Ok(()),
            Some(commands::Reply::Reaction(r)) => Payload::Reaction {
                repo: conn.repo.clone(),
                comment_id: c.comment_id.to_string(),
                content: r.into(),
            },
            Some(commands::Reply::Comment(body)) => {
                let key = format!("{}-{}", c.comment_id, job.id);
                Payload::Reply {
                    repo: conn.repo.clone(),
                    body: format!("{}\n{body}", crate::writeback::reply_marker(&key)),
                    key,
                }
            }
        };
        self.store
            .enqueue_outbox(&payload.row(&conn.id, c.number as i64), crate::now_ms())
            .await
            .map_err(transient)?;
        self.outbox_wake.notify_waiters();
        Ok(())
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
            Command::Status => {
                let p = self
                    .store
                    .preview(&conn.id, c.number as i64)
                    .await
                    .map_err(transient)?;
                let Some(p) = p else {
                    return Ok(self.no_preview());
                };
                let rows: Vec<_> = self
                    .write_backs(&p)
                    .await?
                    .into_iter()
                    .filter(|r| r.kind == "comment")
                    .collect();
                for r in &rows {
                    self.store
                        .enqueue_outbox(r, crate::now_ms())
                        .await
                        .map_err(transient)?;
                }
                Ok(Outcome::Done(None))
            }
            Command::Destroy => {
                let Some(mut p) = self.live_preview(conn, c.number).await? else {
                    return Ok(Outcome::Done(Some(
                        "there was no preview to destroy".into(),
                    )));
                };
                let why = format!("destroyed by {} with a command", c.author);
                self.destroy(&mut p, &why).await?;
                Ok(Outcome::Done(None))
            }
            Command::Extend(d) => {
                let Some(mut p) = self.live_preview(conn, c.number).await? else {
                    return Ok(self.no_preview());
                };
                let now = crate::now_ms();
                let max = self.config.previews.max_ttl;
                let cap = now + max.0.as_millis() as i64;
                let wanted = p.expires_at.unwrap_or(now).max(now) + d.as_millis() as i64;
                let capped = wanted > cap;
                p.expires_at = Some(wanted.min(cap));
                let (st, reason) = (p.state.clone(), p.reason.clone());
                self.set_state(&mut p, &st, reason).await?;
                let when = crate::duration::format_utc(wanted.min(cap));
                Ok(Outcome::Done(Some(if capped {
                    format!("expires {when} (capped by previews.max_ttl = {max})")
                } else {
                    format!("expires {when}")
                })))
            }
            Command::Sync(what) => {
                let Some(site) = self.site_of(conn, c.number).await? else {
                    return Ok(self.no_preview());
                };
                let Some(parent_id) = &site.parent_id else {
                    return Ok(Outcome::Failed(
                        "this preview has no parent site to sync from".into(),
                    ));
                };
                let Some(parent) = self.store.site(parent_id).await.map_err(transient)? else {
                    return Ok(Outcome::Failed("the parent site is gone".into()));
                };
                let (files, db) = match what {
                    SyncWhat::Files => (true, false),
                    SyncWhat::Db => (false, true),
                    SyncWhat::All => (true, true),
                };
                match self
                    .sites
                    .sync(
                        &parent.name,
                        &site.name,
                        files,
                        db,
                        crate::sites::Guard::default(),
                    )
                    .await
                {
                    Ok(r) => {
                        self.hand_over(&site)?;
                        Ok(Outcome::Done(Some(format!(
                            "from `{}` in {} ms",
                            parent.name, r.duration_ms
                        ))))
                    }
                    Err(crate::sites::SiteError::Store(e)) => Err(transient(e)),
                    Err(e) => Ok(Outcome::Failed(e.to_string())),
                }
            }
            Command::TagAdd(t) | Command::TagRm(t) => {
                let Some(site) = self.site_of(conn, c.number).await? else {
                    return Ok(self.no_preview());
                };
                let tag = match crate::access::validate_tag(t) {
                    Ok(t) => t,
                    Err(e) => return Ok(Outcome::Failed(e)),
                };
                let changed = if matches!(cmd, Command::TagAdd(_)) {
                    self.store.add_site_tag(&site.id, &tag).await
                } else {
                    self.store.remove_site_tag(&site.id, &tag).await
                }
                .map_err(transient)?;
                Ok(Outcome::Done(
                    (!changed).then(|| "nothing to change".into()),
                ))
            }
            Command::Password(on) => {
                let Some(site) = self.site_of(conn, c.number).await? else {
                    return Ok(self.no_preview());
                };
                let sealer = self.sealer()?;
                crate::access::set_generated_password(self.store.as_ref(), &sealer, &site.id, *on)
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
            Command::Cidr(op) => {
                let Some(site) = self.site_of(conn, c.number).await? else {
                    return Ok(self.no_preview());
                };
                let (allow, deny, clear) = match op {
                    crate::commands::grammar::CidrOp::Allow(c) => (vec![c.clone()], vec![], false),
                    crate::commands::grammar::CidrOp::Deny(c) => (vec![], vec![c.clone()], false),
                    crate::commands::grammar::CidrOp::Clear => (vec![], vec![], true),
                };
                match crate::access::set_cidrs(self.store.as_ref(), &site.id, &allow, &deny, clear)
                    .await
                {
                    Ok(()) => Ok(Outcome::Done(None)),
                    Err(crate::access::AccessError::Invalid(e)) => Ok(Outcome::Failed(e)),
                    Err(e) => Err(JobError::Transient(e.to_string())),
                }
            }
            Command::Robots(on) => {
                let Some(site) = self.site_of(conn, c.number).await? else {
                    return Ok(self.no_preview());
                };
                crate::access::set_robots(self.store.as_ref(), &site.id, *on)
                    .await
                    .map_err(transient)?;
                Ok(Outcome::Done(None))
            }
        }
    }

    fn no_preview(&self) -> Outcome {
        Outcome::Failed(format!(
            "this pull request has no preview; comment `{} deploy` to make one",
            self.config.commands.prefix
        ))
    }

    fn sealer(&self) -> Result<crate::secret::Sealer, JobError> {
        if let Some(s) = self.sealer.get() {
            return Ok(s.clone());
        }
        let s = crate::secret::Sealer::from_file(&self.config.storage.secret_key)
            .map_err(|e| JobError::Permanent(e.to_string()))?;
        Ok(self.sealer.get_or_init(|| s).clone())
    }

    /// The PR's preview unless it was destroyed (or never made).
    async fn live_preview(
        &self,
        conn: &Connection,
        number: u64,
    ) -> Result<Option<Preview>, JobError> {
        Ok(self
            .store
            .preview(&conn.id, number as i64)
            .await
            .map_err(transient)?
            .filter(|p| !matches!(p.state.as_str(), state::DESTROYED | state::DESTROYING)))
    }

    /// The live site of the PR's preview.
    async fn site_of(
        &self,
        conn: &Connection,
        number: u64,
    ) -> Result<Option<crate::store::Site>, JobError> {
        let Some(p) = self.live_preview(conn, number).await? else {
            return Ok(None);
        };
        let Some(id) = &p.site_id else {
            return Ok(None);
        };
        Ok(self
            .store
            .site(id)
            .await
            .map_err(transient)?
            .filter(|s| s.state == crate::store::SiteState::Active))
    }

    /// Build (or rebuild) the PR at its current head; on a fork PR, approve exactly that head.
    async fn deploy(
        &self,
        job: &Job,
        ctx: &JobContext,
        conn: &Connection,
        c: &CommentEvent,
    ) -> Result<Outcome, JobError> {
        let mut p = self.load_or_new(conn, c.number).await?;
        let head = match c.head_sha.clone().or_else(|| p.head_sha.clone()) {
            Some(h) => h,
            None => match self.discover_head(conn, c.number).await {
                Some(h) => h,
                None => {
                    return Ok(Outcome::Failed(
                        "endor has not seen this pull request's head commit yet; push a commit or reopen it".into(),
                    ));
                }
            },
        };
        let short = &head[..head.len().min(12)];
        if p.is_fork != 0 {
            // The approval covers the head the commenter saw: a head that arrived after the
            // comment (or differs from the one the forge says the comment was made on) is
            // not approved.
            let newer_head = match &c.head_sha {
                Some(seen) => p.head_sha.as_deref().is_some_and(|h| h != seen),
                None => p.received_at.is_some_and(|t| t > job.created_at),
            };
            if newer_head {
                let current = p.head_sha.clone().unwrap_or_default();
                return Ok(Outcome::Failed(format!(
                    "a new commit `{}` arrived after this comment; review it and comment `{} deploy` again to approve it",
                    &current[..current.len().min(12)],
                    self.config.commands.prefix
                )));
            }
            p.approved_sha = Some(head.clone());
        }
        p.head_sha = Some(head.clone());
        let target = Target {
            number: c.number,
            head_sha: head.clone(),
            received_at: job.created_at,
        };
        match self
            .launch_or_fail(job, ctx.clone(), conn, &mut p, target)
            .await
        {
            Ok(()) => Ok(Outcome::Done(Some(format!("ready at `{short}`")))),
            Err(JobError::Cancelled) => Ok(Outcome::Done(Some(
                "superseded by a newer push, which is being built".into(),
            ))),
            Err(JobError::Transient(e)) if job.attempts < job.max_attempts => {
                Err(JobError::Transient(e))
            }
            Err(JobError::Transient(e) | JobError::Permanent(e)) => Ok(Outcome::Failed(e)),
        }
    }

    /// The PR's head from the repository (its PR ref), when no event told endor.
    async fn discover_head(&self, conn: &Connection, number: u64) -> Option<String> {
        let url = conn.git_url.as_deref()?;
        let r = crate::git::pr_ref(conn.forge, number);
        self.git
            .fetch(&conn.id, url, std::slice::from_ref(&r))
            .await
            .ok()?;
        self.git.resolve(&conn.id, &r).await.ok()
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
