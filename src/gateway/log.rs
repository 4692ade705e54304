//! The gateway's `access` and `error` logs of each site: one access line per request (time,
//! visitor address as resolved through `gateway.trusted_proxies`, method, path, status, bytes,
//! duration, user agent, basic-auth user), written when the answer's body has gone out (or the
//! visitor left), and an error line for what went wrong (the app not answering, refusals).
//! Lines go through a channel to one writer task that appends them in batches, so a request
//! never waits on a file.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use hyper::body::{Frame, SizeHint};

use crate::ids::SiteId;
use crate::logs::{Entry, Logs, Service};

/// Why the gateway refused or failed a request, attached to the answer it made (the error log
/// line's text).
#[derive(Debug, Clone)]
pub struct Failure(pub String);

/// Where the gateway's lines go.
#[derive(Clone)]
pub struct AccessLog {
    tx: tokio::sync::mpsc::UnboundedSender<(SiteId, Entry)>,
}

impl AccessLog {
    /// A log writing into `logs` from a task of its own (it ends when every sender is gone).
    pub fn start(logs: Logs) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(SiteId, Entry)>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(1024);
            let mut groups: std::collections::HashMap<(SiteId, Service), Vec<Entry>> =
                Default::default();
            while rx.recv_many(&mut batch, 1024).await > 0 {
                // One append per site and service, the lines in the order they came.
                for (site, e) in batch.drain(..) {
                    groups.entry((site, e.service)).or_default().push(e);
                }
                for ((site, service), entries) in groups.drain() {
                    if let Err(e) = logs.append(&site, service, &entries) {
                        tracing::warn!(site = %site, error = %e, "the access log could not be written");
                    }
                }
            }
        });
        Self { tx }
    }

    fn send(&self, site: &SiteId, entry: Entry) {
        let _ = self.tx.send((site.clone(), entry));
    }
}

/// What the access line says of the request (taken before the request moves on).
pub struct Seen {
    pub started: Instant,
    pub method: String,
    pub path: String,
    pub visitor: Option<std::net::IpAddr>,
    pub user_agent: Option<String>,
    pub user: Option<String>,
}

impl Seen {
    pub fn of(req: &axum::extract::Request, visitor: Option<std::net::IpAddr>) -> Self {
        let header = |h| {
            req.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(|v| crate::logs::printable(v.as_bytes(), 512))
        };
        Self {
            started: Instant::now(),
            method: req.method().to_string(),
            path: crate::logs::printable(
                req.uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .as_bytes(),
                2048,
            ),
            visitor,
            user_agent: header(axum::http::header::USER_AGENT),
            user: req
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(basic_user),
        }
    }
}

/// The user name of a `Basic` credential (never its password).
fn basic_user(header: &str) -> Option<String> {
    use base64::Engine;
    let (scheme, b64) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let user = raw.split(|b| *b == b':').next()?;
    Some(crate::logs::printable(user, 256))
}

/// Log the request whose answer is `resp`: its error line now (when the gateway attached a
/// [`Failure`]), its access line when the body has gone out.
pub fn finish(
    log: &AccessLog,
    site: SiteId,
    seen: Seen,
    resp: axum::response::Response,
) -> axum::response::Response {
    let status = resp.status().as_u16();
    if let Some(Failure(why)) = resp.extensions().get::<Failure>() {
        let e = Entry::now(
            Service::Error,
            None,
            format!("{} {} {status}: {why}", seen.method, seen.path),
        )
        .with("status", status)
        .with("method", seen.method.clone())
        .with("path", seen.path.clone())
        .with("visitor", seen.visitor.map(|v| v.to_string()));
        log.send(&site, e);
    }
    let (parts, body) = resp.into_parts();
    let counted = Counted {
        inner: body,
        bytes: 0,
        done: Some((log.clone(), site, seen, status)),
    };
    axum::response::Response::from_parts(parts, Body::new(counted))
}

/// An answer's body that counts what goes out and writes the access line at its end.
struct Counted {
    inner: Body,
    bytes: u64,
    done: Option<(AccessLog, SiteId, Seen, u16)>,
}

impl Counted {
    fn write(&mut self) {
        let Some((log, site, seen, status)) = self.done.take() else {
            return;
        };
        let ms = seen.started.elapsed().as_secs_f64() * 1000.0;
        let visitor = seen
            .visitor
            .map_or_else(|| "-".to_string(), |v| v.to_string());
        let text = format!(
            "{visitor} {} {} {status} {} {ms:.1}ms \"{}\"{}",
            seen.method,
            seen.path,
            self.bytes,
            seen.user_agent.as_deref().unwrap_or("-"),
            seen.user
                .as_deref()
                .map(|u| format!(" user={u}"))
                .unwrap_or_default(),
        );
        let mut e = Entry::now(Service::Access, None, text)
            .with("visitor", visitor)
            .with("method", seen.method)
            .with("path", seen.path)
            .with("status", status)
            .with("bytes", self.bytes)
            .with("duration_ms", (ms * 10.0).round() / 10.0);
        if let Some(ua) = seen.user_agent {
            e = e.with("user_agent", ua);
        }
        if let Some(u) = seen.user {
            e = e.with("user", u);
        }
        log.send(&site, e);
    }
}

impl Drop for Counted {
    /// A visitor that left before the end: what went out is logged.
    fn drop(&mut self) {
        self.write();
    }
}

impl hyper::body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.write(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_user_of_a_basic_credential_is_kept() {
        assert_eq!(
            super::basic_user("Basic YWxpY2U6czNjcmV0").as_deref(),
            Some("alice")
        );
        assert_eq!(super::basic_user("Bearer xyz"), None);
        assert_eq!(super::basic_user("Basic !!!"), None);
    }
}
