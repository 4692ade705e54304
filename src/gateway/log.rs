//! The gateway's `access` and `error` logs of each site: one access line per request (time,
//! visitor address as resolved through `gateway.trusted_proxies`, method, path, status, bytes,
//! duration, user agent, basic-auth user), written when the answer's body has gone out (or the
//! visitor left), and an error line for what went wrong (the app not answering, refusals).
//!
//! A request only takes cheap handles of what its line needs (the method, the URI and the
//! headers are shared, not copied) and sends them to one writer task, which makes the text and
//! the JSON and appends each site's lines together every few milliseconds: a request never
//! waits on a file and pays for no formatting.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Method, Uri};
use hyper::body::{Frame, SizeHint};
use serde::Serialize;

use crate::ids::SiteId;
use crate::logs::{Entry, Logs, Service, printable};

/// Why the gateway refused or failed a request, attached to the answer it made (the error log
/// line's text).
#[derive(Debug, Clone)]
pub struct Failure(pub String);

/// A request as its lines need it (its handles are shared, not copied, by a clone).
#[derive(Clone)]
pub struct Seen {
    started: Instant,
    time: i64,
    method: Method,
    uri: Uri,
    visitor: Option<std::net::IpAddr>,
    user_agent: Option<HeaderValue>,
    authorization: Option<HeaderValue>,
}

impl Seen {
    pub fn of(req: &axum::extract::Request, visitor: Option<std::net::IpAddr>) -> Self {
        let h = req.headers();
        Self {
            started: Instant::now(),
            time: crate::now_ms(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            visitor,
            user_agent: h.get(axum::http::header::USER_AGENT).cloned(),
            authorization: h.get(axum::http::header::AUTHORIZATION).cloned(),
        }
    }
}

/// What the writer is sent.
enum Line {
    Access {
        site: SiteId,
        seen: Seen,
        status: u16,
        bytes: u64,
        duration_ms: f64,
    },
    Error {
        site: SiteId,
        seen: Seen,
        status: u16,
        why: String,
    },
}

/// Where the gateway's lines go.
#[derive(Clone)]
pub struct AccessLog {
    tx: tokio::sync::mpsc::UnboundedSender<Line>,
}

/// How long the writer gathers lines before appending them: each site's lines of a gathering
/// are one write, so with many sites a longer gathering means fewer writes (a thousand sites
/// under load: about a write per request at 5 ms). Lines are serialized as they come, so what
/// waits is their bytes. Followers poll every 50 ms.
const GATHER: Duration = Duration::from_millis(100);

impl AccessLog {
    /// A log writing into `logs` from a task of its own (it ends when every sender is gone,
    /// after writing what it holds).
    pub fn start(logs: Logs) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Line>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(1024);
            let mut out: std::collections::HashMap<(SiteId, Service), Vec<u8>> = Default::default();
            // When the lines held now are written (none held: wait for the next line).
            let mut due: Option<tokio::time::Instant> = None;
            loop {
                let n = match due {
                    Some(at) => {
                        match tokio::time::timeout_at(at, rx.recv_many(&mut batch, 4096)).await {
                            Ok(n) => n,
                            Err(_) => {
                                write_out(&logs, &mut out);
                                due = None;
                                continue;
                            }
                        }
                    }
                    None => rx.recv_many(&mut batch, 4096).await,
                };
                if n == 0 {
                    write_out(&logs, &mut out);
                    return;
                }
                let at = *due.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
                for line in batch.drain(..) {
                    let (site, service, entry) = line.into_entry();
                    let buf = out.entry((site, service)).or_default();
                    if serde_json::to_writer(&mut *buf, &entry).is_ok() {
                        buf.push(b'\n');
                    }
                }
                // Under a steady load lines are always waiting, so the timeout above would
                // never fire: the time is checked here too.
                if tokio::time::Instant::now() >= at {
                    write_out(&logs, &mut out);
                    due = None;
                }
            }
        });
        Self { tx }
    }
}

/// Append each log's gathered lines (one write per log), and forget big buffers.
fn write_out(logs: &Logs, out: &mut std::collections::HashMap<(SiteId, Service), Vec<u8>>) {
    // Only the logs written to since: with a thousand sites, most have nothing.
    for ((site, service), bytes) in out.iter_mut().filter(|(_, b)| !b.is_empty()) {
        if let Err(e) = logs.append_lines(site, *service, bytes) {
            tracing::warn!(site = %site, error = %e, "the access log could not be written");
        }
        bytes.clear();
    }
    out.retain(|_, b| b.capacity() < 1 << 20);
}

/// An access line's fields, in the order they are written.
#[derive(Serialize)]
struct AccessFields<'a> {
    visitor: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
}

/// An access line as stored (the shape of an [`Entry`]; its text is made from the fields when
/// read).
#[derive(Serialize)]
struct AccessEntry<'a> {
    time: i64,
    service: Service,
    fields: AccessFields<'a>,
}

impl Line {
    fn into_entry(self) -> (SiteId, Service, LineEntry) {
        match self {
            Line::Access {
                site,
                seen,
                status,
                bytes,
                duration_ms,
            } => (
                site,
                Service::Access,
                LineEntry::Access {
                    seen,
                    status,
                    bytes,
                    duration_ms,
                },
            ),
            Line::Error {
                site,
                seen,
                status,
                why,
            } => (site, Service::Error, LineEntry::Error { seen, status, why }),
        }
    }
}

enum LineEntry {
    Access {
        seen: Seen,
        status: u16,
        bytes: u64,
        duration_ms: f64,
    },
    Error {
        seen: Seen,
        status: u16,
        why: String,
    },
}

fn path_of(seen: &Seen) -> String {
    printable(
        seen.uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
        2048,
    )
}

fn visitor_of(seen: &Seen) -> String {
    seen.visitor
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

impl Serialize for LineEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LineEntry::Access {
                seen,
                status,
                bytes,
                duration_ms,
            } => {
                let (path, visitor) = (path_of(seen), visitor_of(seen));
                let user_agent = seen
                    .user_agent
                    .as_ref()
                    .map(|v| printable(v.as_bytes(), 512));
                let user = seen
                    .authorization
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .and_then(basic_user);
                AccessEntry {
                    time: seen.time,
                    service: Service::Access,
                    fields: AccessFields {
                        visitor: &visitor,
                        method: seen.method.as_str(),
                        path: &path,
                        status: *status,
                        bytes: *bytes,
                        duration_ms: (duration_ms * 10.0).round() / 10.0,
                        user_agent,
                        user,
                    },
                }
                .serialize(s)
            }
            LineEntry::Error { seen, status, why } => {
                let path = path_of(seen);
                Entry {
                    time: seen.time,
                    ..Entry::now(
                        Service::Error,
                        None,
                        format!("{} {path} {status}: {why}", seen.method),
                    )
                }
                .with("status", *status)
                .with("method", seen.method.as_str())
                .with("path", path)
                .with("visitor", seen.visitor.map(|v| v.to_string()))
                .serialize(s)
            }
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
    Some(printable(user, 256))
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
        let _ = log.tx.send(Line::Error {
            site: site.clone(),
            seen: seen.clone(),
            status,
            why: why.clone(),
        });
    }
    // A small body of a known size (a page, a small file) is not wrapped: it goes out in one
    // piece, so its line goes now, with that size.
    if let Some(bytes) = hyper::body::Body::size_hint(resp.body())
        .exact()
        .filter(|b| *b <= SMALL_BODY)
    {
        let duration_ms = seen.started.elapsed().as_secs_f64() * 1000.0;
        let _ = log.tx.send(Line::Access {
            site,
            seen,
            status,
            bytes,
            duration_ms,
        });
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let counted = Counted {
        inner: body,
        bytes: 0,
        done: Some((log.clone(), site, seen, status)),
    };
    axum::response::Response::from_parts(parts, Body::new(counted))
}

/// Bodies up to this size are logged when the answer starts (see [`finish`]).
const SMALL_BODY: u64 = 64 << 10;

/// An answer's body that counts what goes out and sends the access line at its end.
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
        let duration_ms = seen.started.elapsed().as_secs_f64() * 1000.0;
        let _ = log.tx.send(Line::Access {
            site,
            seen,
            status,
            bytes: self.bytes,
            duration_ms,
        });
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
