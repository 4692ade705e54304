//! Notifications (SPEC §13): events told to the members they concern, in the dashboard's inbox
//! and by mail, each exactly once.
//!
//! [`Notifier::workspace_event`] / [`Notifier::user_event`] store one notification per
//! recipient, keyed by (event key, user): an event raised twice (a retried job, two workers)
//! is stored once. A notification to mail carries `mail_state = pending`; [`Notifier::send_due`]
//! (run by `endor serve`) claims due mails under a lease, hands each to the SMTP server, and
//! marks it sent, or pending again with a longer wait when the server is down, or failed after
//! `email.max_attempts`. Mails are composed here from names, states and links only: no
//! secret, token, log line or error text from a site ever goes into one.

use std::sync::Arc;

use crate::config::Config;
use crate::store::{NewNotification, Notification, NotificationPref, Store, User};

/// The kinds of event, their labels, and whether billing-only members hear of them.
pub const KINDS: &[(&str, &str)] = &[
    ("preview_ready", "A preview is ready"),
    ("preview_failed", "A preview failed"),
    ("expiring_soon", "A preview expires soon"),
    ("reaped", "A preview was removed after it expired"),
    ("backup_failed", "A backup failed"),
    ("drill_failed", "A backup drill failed"),
    ("added_to_workspace", "You were added to a workspace"),
];

/// Is `kind` one of [`KINDS`]?
pub fn is_kind(kind: &str) -> bool {
    KINDS.iter().any(|(k, _)| *k == kind)
}

/// One event to tell.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    /// What makes it this event and no other (two raises of it are one notification).
    pub key: String,
    pub subject: String,
    pub body: String,
    /// A dashboard path (`/s/site`), made absolute with `server.public_url` in mails.
    pub link: Option<String>,
}

/// Stores and mails notifications.
#[derive(Clone)]
pub struct Notifier {
    store: Arc<dyn Store>,
    config: Config,
}

/// The wait before the `attempts`-th retry of a mail: `first` doubling, at most an hour.
pub fn retry_after_ms(first: i64, attempts: i64) -> i64 {
    let exp = attempts.clamp(1, 20) - 1;
    (first.max(1) << exp.min(20)).min(3_600_000)
}

impl Notifier {
    pub fn new(store: Arc<dyn Store>, config: &Config) -> Self {
        Self {
            store,
            config: config.clone(),
        }
    }

    fn mail_on(&self) -> bool {
        !self.config.email.smtp_url.is_empty()
    }

    /// The notification of `event` for `user`, their preference applied (`None`: they chose
    /// neither the inbox nor mail for this kind).
    async fn for_user(
        &self,
        user: &User,
        workspace: Option<&crate::ids::WorkspaceId>,
        event: &Event,
    ) -> crate::store::Result<Option<NewNotification>> {
        let prefs = self.store.notification_prefs(&user.id).await?;
        let p = prefs
            .into_iter()
            .find(|p| p.kind == event.kind)
            .unwrap_or(NotificationPref {
                kind: event.kind.into(),
                inbox: true,
                email: true,
            });
        let mail_to = user
            .email
            .clone()
            .filter(|e| p.email && self.mail_on() && e.parse::<lettre::Address>().is_ok());
        if !p.inbox && mail_to.is_none() {
            return Ok(None);
        }
        Ok(Some(NewNotification {
            user_id: user.id.clone(),
            workspace_id: workspace.cloned(),
            kind: event.kind.into(),
            event_key: event.key.clone(),
            subject: event.subject.clone(),
            body: event.body.clone(),
            link: event.link.clone(),
            inbox: p.inbox,
            mail_to,
        }))
    }

    /// Tell every member of the workspace who works on its sites (owners and developers;
    /// billing-only members see usage and nothing else). Errors are logged, never raised:
    /// a notification never fails the work it tells of.
    pub async fn workspace_event(&self, workspace: &crate::ids::WorkspaceId, event: Event) {
        if let Err(e) = self.try_workspace_event(workspace, &event).await {
            tracing::warn!(kind = event.kind, error = %e, "notification not stored");
        }
    }

    async fn try_workspace_event(
        &self,
        workspace: &crate::ids::WorkspaceId,
        event: &Event,
    ) -> crate::store::Result<()> {
        let mut list = Vec::new();
        for (user, roles) in self.store.member_users(workspace).await? {
            if !roles.iter().any(|r| r == "owner" || r == "developer") {
                continue;
            }
            if let Some(n) = self.for_user(&user, Some(workspace), event).await? {
                list.push(n);
            }
        }
        self.store.add_notifications(&list, crate::now_ms()).await?;
        Ok(())
    }

    /// Tell one user (added to a workspace).
    pub async fn user_event(
        &self,
        user: &User,
        workspace: Option<&crate::ids::WorkspaceId>,
        event: Event,
    ) {
        let stored = match self.for_user(user, workspace, &event).await {
            Ok(Some(n)) => self.store.add_notifications(&[n], crate::now_ms()).await,
            Ok(None) => Ok(0),
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            tracing::warn!(kind = event.kind, error = %e, "notification not stored");
        }
    }

    /// The event of a preview's new state, if it is one to tell, to its workspace.
    pub async fn preview_event(&self, p: &crate::store::Preview) {
        use crate::store::PreviewState as S;
        let sha = p.head_sha.as_deref().unwrap_or("-");
        let short = crate::git::short_sha(sha);
        let (kind, key, subject, body) = match p.state {
            S::Ready => (
                "preview_ready",
                format!("preview_ready:{}:{sha}", p.id),
                format!("Preview {} is ready", p.site_name),
                format!(
                    "The preview of pull request #{} is ready at commit {short}.",
                    p.number
                ),
            ),
            S::Failed => (
                "preview_failed",
                format!("preview_failed:{}:{sha}", p.id),
                format!("Preview {} failed", p.site_name),
                format!(
                    "The preview of pull request #{} failed at commit {short}. Its steps and log are on the site's page.",
                    p.number
                ),
            ),
            S::Expired => (
                "reaped",
                format!("reaped:{}", p.id),
                format!("Preview {} was removed", p.site_name),
                format!(
                    "The preview of pull request #{} expired and was removed with everything it owned.",
                    p.number
                ),
            ),
            _ => return,
        };
        self.connection_event(p, kind, key, subject, body).await;
    }

    /// A preview's coming expiry.
    pub async fn expiry_event(&self, p: &crate::store::Preview) {
        let Some(at) = p.expires_at else { return };
        let when = crate::duration::format_utc(at);
        self.connection_event(
            p,
            "expiring_soon",
            format!("expiring_soon:{}:{at}", p.id),
            format!("Preview {} expires soon", p.site_name),
            format!(
                "The preview of pull request #{} expires at {when}. Comment `/preview extend 24h` on the pull request to keep it longer.",
                p.number
            ),
        )
        .await;
    }

    async fn connection_event(
        &self,
        p: &crate::store::Preview,
        kind: &'static str,
        key: String,
        subject: String,
        body: String,
    ) {
        let conn = match self.store.connection(&p.connection_id).await {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "notification not stored");
                return;
            }
        };
        let link = Some(if p.state == crate::store::PreviewState::Expired {
            format!(
                "/w/{}/previews",
                self.workspace_name(&conn.workspace_id).await
            )
        } else {
            format!("/s/{}", p.site_name)
        });
        self.workspace_event(
            &conn.workspace_id,
            Event {
                kind,
                key,
                subject,
                body,
                link,
            },
        )
        .await;
    }

    async fn workspace_name(&self, id: &crate::ids::WorkspaceId) -> String {
        self.store
            .workspace_by_id(id)
            .await
            .ok()
            .flatten()
            .map(|w| w.name)
            .unwrap_or_default()
    }

    /// A site's backup (`drill`: its drill) failed.
    pub async fn backup_event(&self, site: &crate::store::Site, drill: bool, key: &str) {
        let (kind, what) = if drill {
            ("drill_failed", "A restore drill of a backup")
        } else {
            ("backup_failed", "A backup")
        };
        self.workspace_event(
            &site.workspace_id,
            Event {
                kind,
                key: format!("{kind}:{key}"),
                subject: format!(
                    "{} of {} failed",
                    if drill { "Backup drill" } else { "Backup" },
                    site.name
                ),
                body: format!(
                    "{what} of site {} failed. The outcome is on the site's page.",
                    site.name
                ),
                link: Some(format!("/s/{}", site.name)),
            },
        )
        .await;
    }

    /// `login` was added to `workspace` with `roles` (by the API, the CLI or an invitation).
    pub async fn added_event(&self, workspace: &str, login: &str, roles: &[String]) {
        let (Ok(Some(ws)), Ok(Some(user))) = (
            self.store.workspace_by_name(workspace).await,
            self.store.user_by_login(login).await,
        ) else {
            return;
        };
        let event = Event {
            kind: "added_to_workspace",
            key: format!("added_to_workspace:{}:{}", ws.id, crate::now_ms()),
            subject: format!("You were added to workspace {}", ws.name),
            body: format!(
                "You are now a member of workspace {} with the roles: {}.",
                ws.name,
                roles.join(", ")
            ),
            link: Some(format!("/w/{}", ws.name)),
        };
        self.user_event(&user, Some(&ws.id), event).await;
    }

    /// Mail an invitation link to `email` at once (no outbox: the person has no account to
    /// keep a notification in; the owner is shown the link either way). `Ok(false)`: no mail
    /// server is configured.
    pub async fn invitation_mail(
        &self,
        email: &str,
        workspace: &str,
        by: &str,
        roles: &[&str],
        link: &str,
    ) -> anyhow::Result<bool> {
        use lettre::AsyncTransport;
        if !self.mail_on() {
            return Ok(false);
        }
        let m = lettre::Message::builder()
            .from(self.config.email.from.parse()?)
            .to(email.parse()?)
            .subject(format!("{by} invites you to workspace {workspace} on endor"))
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(format!(
                "{by} invites you to workspace {workspace} as {}.\n\nAccept (the link works once, and expires in {}):\n{link}\n",
                roles.join(", "),
                self.config.dashboard.invitation_ttl
            ))?;
        self.transport()?.send(m).await?;
        Ok(true)
    }

    /// Mail every due notification; the number handed to the SMTP server.
    pub async fn send_due(&self) -> anyhow::Result<usize> {
        if !self.mail_on() {
            return Ok(0);
        }
        let now = crate::now_ms();
        let batch = self.store.claim_mails(now, now + 60_000, 50).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let transport = self.transport()?;
        let mut sent = 0;
        for n in batch {
            match self.send_one(&transport, &n).await {
                Ok(()) => {
                    self.store.mail_sent(&n.id, crate::now_ms()).await?;
                    sent += 1;
                }
                Err(e) => {
                    let give_up = n.attempts >= self.config.email.max_attempts as i64;
                    let next = (!give_up).then(|| {
                        crate::now_ms()
                            + retry_after_ms(
                                self.config.email.retry_after.0.as_millis() as i64,
                                n.attempts,
                            )
                    });
                    tracing::warn!(notification = %n.id, attempts = n.attempts, error = %e, "mail not sent");
                    self.store.mail_failed(&n.id, &e.to_string(), next).await?;
                }
            }
        }
        Ok(sent)
    }

    fn transport(&self) -> anyhow::Result<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>> {
        type T = lettre::AsyncSmtpTransport<lettre::Tokio1Executor>;
        Ok(T::from_url(&connection_url(&self.config.email))?
            .timeout(Some(std::time::Duration::from_secs(20)))
            .build())
    }

    /// The mail of one notification.
    pub fn message(&self, n: &Notification) -> anyhow::Result<lettre::Message> {
        use lettre::message::header::ContentType;
        let to = n
            .mail_to
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("no address"))?;
        let base = self.config.server.public_url.trim_end_matches('/');
        let unsubscribe = format!(
            "{base}/unsubscribe/{}",
            unsubscribe_token(self.store.keyring(), &n.user_id, &n.kind)
        );
        let mut text = format!("{}\n", n.body);
        if let Some(link) = &n.link {
            text.push_str(&format!("\n{base}{link}\n"));
        }
        text.push_str(&format!(
            "\n--\nYou get this mail because you are a member of a workspace on endor ({base}).\nNo more mails of this kind: {unsubscribe}\nAll your notification settings: {base}/settings\n"
        ));
        Ok(lettre::Message::builder()
            .from(self.config.email.from.parse()?)
            .to(to.parse()?)
            .subject(&n.subject)
            .message_id(Some(format!("<{}@endor>", n.id)))
            .header(ListUnsubscribe(format!("<{unsubscribe}>")))
            .header(ContentType::TEXT_PLAIN)
            .body(text)?)
    }

    async fn send_one(
        &self,
        transport: &lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
        n: &Notification,
    ) -> anyhow::Result<()> {
        use lettre::AsyncTransport;
        let m = self.message(n)?;
        transport.send(m).await?;
        Ok(())
    }

    /// Send due mails every two seconds until `stop`.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        if !self.mail_on() {
            return;
        }
        loop {
            if let Err(e) = self.send_due().await {
                tracing::warn!(error = %e, "mail outbox pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// The `List-Unsubscribe` header (RFC 2369).
#[derive(Clone)]
struct ListUnsubscribe(String);

impl lettre::message::header::Header for ListUnsubscribe {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_string()))
    }
    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// The connection URL lettre reads (host, port, percent-encoded credentials) for `[email]`:
/// `email.tls` becomes its scheme (`tls`: `smtps://`, implicit TLS) or its `tls` parameter
/// (`starttls`: `tls=required`); `none` leaves plain `smtp://`.
fn connection_url(email: &crate::config::EmailConfig) -> String {
    let url = email.smtp_url.as_str();
    match email.tls.as_str() {
        "tls" => url.replacen("smtp://", "smtps://", 1),
        "starttls" => {
            let join = if url.contains('?') { '&' } else { '?' };
            format!("{url}{join}tls=required")
        }
        _ => url.to_string(),
    }
}

/// The token of an unsubscribe link: the user and kind sealed with the master key (it cannot
/// be forged, and it names nothing a reader could use).
pub fn unsubscribe_token(
    keyring: &crate::secret::Keyring,
    user: &crate::ids::UserId,
    kind: &str,
) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(keyring.seal(&format!("{user} {kind}")))
}

/// The user and kind of an unsubscribe token, if it is one.
pub fn open_unsubscribe(
    keyring: &crate::secret::Keyring,
    token: &str,
) -> Option<(crate::ids::UserId, String)> {
    use base64::Engine;
    let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let plain = keyring.open(std::str::from_utf8(&sealed).ok()?).ok()?;
    let (user, kind) = plain.split_once(' ')?;
    is_kind(kind).then(|| (user.to_string().into(), kind.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls() {
        type T = lettre::AsyncSmtpTransport<lettre::Tokio1Executor>;
        let email = |url: &str, tls: &str| crate::config::EmailConfig {
            smtp_url: url.into(),
            tls: tls.into(),
            ..Default::default()
        };
        let url = "smtp://me%40x:p%3Ass@mail.example:2525";
        for (tls, want) in [
            ("none", url.to_string()),
            ("starttls", format!("{url}?tls=required")),
            ("tls", "smtps://me%40x:p%3Ass@mail.example:2525".to_string()),
        ] {
            let made = connection_url(&email(url, tls));
            assert_eq!(made, want);
            assert!(T::from_url(&made).is_ok(), "{made}");
        }
        assert_eq!(
            connection_url(&email("smtp://h?x=1", "starttls")),
            "smtp://h?x=1&tls=required"
        );
        assert!(T::from_url(&connection_url(&email("smtp://127.0.0.1", "none"))).is_ok());
        assert!(T::from_url(&connection_url(&email("http://x", "none"))).is_err());
        assert!(T::from_url(&connection_url(&email("smtp://h:notaport", "none"))).is_err());
    }

    #[test]
    fn retries_wait_longer_up_to_an_hour() {
        assert_eq!(retry_after_ms(10_000, 1), 10_000);
        assert_eq!(retry_after_ms(10_000, 2), 20_000);
        assert_eq!(retry_after_ms(10_000, 30), 3_600_000);
        assert_eq!(retry_after_ms(100, 1), 100);
    }
}
