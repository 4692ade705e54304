//! The preview gateway on `gateway.listen`: requests are routed by `Host`
//! (`{site}.{gateway.domain}`) to what the store's `routes` table says — a static folder, a
//! site process at its host's advertised address, a "building" page (503), "gone" (410) — and unknown hosts get 404.
//! Previews carry `X-Robots-Tag: noindex, nofollow` unless the route turns it off. Routes live
//! in the store, so several gateway processes answer alike. A site's access settings
//! (`crate::access`) are checked first: basic auth (401 without the credentials) and the
//! robots toggle. Bodies stream both ways and WebSocket (any `Upgrade`) connections are passed
//! through to the site's process. CIDR allow/deny rules see the peer's address (or, behind a
//! trusted proxy, the `X-Forwarded-For` client); they are checked before basic auth (403).
//! Each request of a site is a line of its `access` log, and what went wrong one of its `error`
//! log (`log.rs`).

mod log;

pub use log::AccessLog;

use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;

use crate::store::{RouteRow, Store};

/// Where a site's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Building,
    Static(PathBuf),
    /// The site's process at the address its worker host advertises (`runtime.advertise`).
    Proxy(std::net::SocketAddr),
    Gone,
    /// The launch failed: a page says so, and names the preview (`REPO#N`) whose story
    /// `endor preview show` tells.
    Failed(Option<String>),
}

impl Route {
    /// A process on this host's loopback at `port`.
    pub fn local(port: u16) -> Self {
        Route::Proxy(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    pub fn row(&self, site_name: &str, robots: bool) -> RouteRow {
        let (kind, target) = match self {
            Route::Building => ("building", None),
            Route::Static(p) => ("static", Some(p.display().to_string())),
            // A loopback port alone, as before there were other hosts.
            Route::Proxy(a) if a.ip() == std::net::Ipv4Addr::LOCALHOST => {
                ("proxy", Some(a.port().to_string()))
            }
            Route::Proxy(a) => ("proxy", Some(a.to_string())),
            Route::Gone => ("gone", None),
            Route::Failed(preview) => ("failed", preview.clone()),
        };
        RouteRow {
            site_name: site_name.into(),
            kind: kind.into(),
            target,
            robots: robots as i64,
            updated_at: crate::now_ms(),
        }
    }

    fn from_row(r: &RouteRow) -> Option<Self> {
        Some(match r.kind.as_str() {
            "building" => Route::Building,
            "gone" => Route::Gone,
            "failed" => Route::Failed(r.target.clone()),
            "static" => Route::Static(PathBuf::from(r.target.as_ref()?)),
            "proxy" => {
                let t = r.target.as_ref()?;
                match t.parse::<u16>() {
                    Ok(port) => Route::local(port),
                    Err(_) => Route::Proxy(t.parse().ok()?),
                }
            }
            _ => return None,
        })
    }
}

pub struct Gateway {
    store: Arc<dyn Store>,
    domain: String,
    client: Client<HttpConnector, Body>,
    auth: crate::access::AuthCache,
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Route and access settings per site name, read at most once per `cache_ttl`, and kept
    /// while the store's change counter stays the same.
    cache: std::sync::Mutex<std::collections::HashMap<String, Cached>>,
    cache_ttl: std::time::Duration,
    /// The store's change counter (`Store::gateway_changes`) and when it was read.
    changes: std::sync::Mutex<Option<(i64, std::time::Instant)>>,
    /// Where each site's access and error lines go (none: not logged).
    access_log: std::sync::OnceLock<AccessLog>,
    /// Longest (ms) an app may take to start answering (0: no limit).
    upstream_timeout_ms: std::sync::atomic::AtomicU64,
    /// Static previews' small answers, kept for `cache_ttl` like routes (none when it is 0).
    files: std::sync::Mutex<FileCache>,
}

/// Small static answers in memory: a kept answer is sent without touching the disk (no
/// blocking-pool round trips). Like a route, it stays good past `cache_ttl` while the store's
/// change counter does not move: a preview's folder is a checkout of one version, written by
/// nobody once it is served (a new version is a new folder, so a new key; `site exec`, which
/// may write there, moves the counter when it ends).
#[derive(Default)]
struct FileCache {
    /// When each answer was last known good, the counter then, the answer.
    answers: std::collections::HashMap<FileKey, (std::time::Instant, i64, Arc<KeptAnswer>)>,
    /// Body bytes held, at most [`FILE_CACHE_BYTES`].
    bytes: usize,
}

/// What a static answer depends on: the folder, the path asked for, the encodings accepted
/// (the `.br`/`.gz` choice). Requests with Range or date conditions are never kept or
/// answered from here.
#[derive(Hash, PartialEq, Eq)]
struct FileKey {
    root: PathBuf,
    path: String,
    accept: Vec<u8>,
}

/// A `200` answer as the folder gave it (with its `ETag` and `Vary`).
struct KeptAnswer {
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

/// Largest file kept in memory, and all of them together.
const FILE_CACHE_ONE: u64 = 256 * 1024;
const FILE_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Good as of the instant; read when the store's change counter was the number.
type Cached = (std::time::Instant, i64, Arc<(Option<RouteRow>, SiteView)>);

/// What the gateway needs of a site besides its route.
#[derive(Clone, Default)]
struct SiteView {
    /// Its logs are kept under its id.
    id: Option<crate::ids::SiteId>,
    access: Option<crate::store::SiteAccess>,
    /// A protected (production) site never gets `X-Robots-Tag`.
    protected: bool,
}

/// Sites remembered before the cache starts again from empty.
const CACHE_MAX: usize = 10_000;

impl Gateway {
    /// A gateway reading the store on every request, trusting no proxy.
    pub fn new(store: Arc<dyn Store>, domain: &str) -> Arc<Self> {
        Self::with_proxies(store, domain, &[])
    }

    /// A gateway that believes `X-Forwarded-For` from these proxies (CIDRs, validated by the
    /// config; a bad one is skipped).
    pub fn with_proxies(store: Arc<dyn Store>, domain: &str, trusted: &[String]) -> Arc<Self> {
        Self::with_options(store, domain, trusted, std::time::Duration::ZERO)
    }

    /// As configured (`[gateway]`).
    pub fn from_config(store: Arc<dyn Store>, c: &crate::config::GatewayConfig) -> Arc<Self> {
        let gw = Self::with_options(
            store,
            &c.domain,
            &c.trusted_proxies,
            std::time::Duration::from_millis(c.cache_ttl_ms),
        );
        gw.time_out_after(c.upstream_timeout.0);
        gw
    }

    /// Answer 504 when an app has not started answering within `d` (zero: wait as long as
    /// it takes).
    pub fn time_out_after(&self, d: std::time::Duration) {
        self.upstream_timeout_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn with_options(
        store: Arc<dyn Store>,
        domain: &str,
        trusted: &[String],
        cache_ttl: std::time::Duration,
    ) -> Arc<Self> {
        // Small requests and answers go out at once (no Nagle wait behind an unacked one).
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Arc::new(Self {
            store,
            domain: domain.to_ascii_lowercase(),
            client,
            auth: Default::default(),
            trusted_proxies: trusted
                .iter()
                .filter_map(|c| crate::access::parse_cidr(c).ok())
                .collect(),
            cache: Default::default(),
            cache_ttl,
            changes: Default::default(),
            access_log: Default::default(),
            upstream_timeout_ms: std::sync::atomic::AtomicU64::new(60_000),
            files: Default::default(),
        })
    }

    /// Write each site's access and error lines to `log` from now on.
    pub fn log_to(&self, log: AccessLog) {
        let _ = self.access_log.set(log);
    }

    /// The site's route and access settings, from the cache while fresh (shared, not copied:
    /// a request on the hot path allocates nothing for them). Past `cache_ttl`, a kept entry
    /// stays good while the store's change counter is the number it was read under: the
    /// counter is read once per period whatever the number of sites, so a lookup costs the
    /// same with a thousand as with one; a change anywhere has every site read again, within
    /// the period.
    async fn lookup(&self, site: &str) -> crate::store::Result<Arc<(Option<RouteRow>, SiteView)>> {
        if self.cache_ttl.is_zero() {
            return Ok(Arc::new(self.load(site).await?));
        }
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, _, found)) = cache.get(site)
                && at.elapsed() < self.cache_ttl
            {
                return Ok(found.clone());
            }
        }
        let (changes, checked) = self.changes().await?;
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, seen, found)) = cache.get_mut(site)
                && renewed(at, *seen, (changes, checked))
            {
                return Ok(found.clone());
            }
        }
        // The counter was read before the rows: a change after it bumps it past `changes`.
        let found = Arc::new(self.load(site).await?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            site.to_string(),
            (std::time::Instant::now(), changes, found.clone()),
        );
        Ok(found)
    }

    /// The store's change counter, read at most once per `cache_ttl`, and when it was read.
    async fn changes(&self) -> crate::store::Result<(i64, std::time::Instant)> {
        if let Some(read) = self.fresh_changes() {
            return Ok(read);
        }
        let at = std::time::Instant::now();
        let n = self.store.gateway_changes().await?;
        *self.changes.lock().unwrap_or_else(|e| e.into_inner()) = Some((n, at));
        Ok((n, at))
    }

    /// The site's route and access settings, from the store.
    async fn load(&self, site: &str) -> crate::store::Result<(Option<RouteRow>, SiteView)> {
        let route = self.store.route(site).await?;
        let access = match &route {
            Some(_) => match self.store.site_by_name(site).await? {
                Some(s) => SiteView {
                    access: self.store.site_access(&s.id).await?,
                    protected: s.protected,
                    id: Some(s.id),
                },
                None => SiteView::default(),
            },
            None => SiteView::default(),
        };
        Ok((route, access))
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new().fallback(handle).with_state(self)
    }

    /// The router as a service that knows each connection's peer address (CIDR rules need it).
    pub fn app(
        self: Arc<Self>,
    ) -> axum::extract::connect_info::IntoMakeServiceWithConnectInfo<Router, std::net::SocketAddr>
    {
        self.router()
            .into_make_service_with_connect_info::<std::net::SocketAddr>()
    }

    /// The site name a Host header addresses, if it is one of ours.
    fn site_of(&self, host: &str) -> Option<String> {
        let host = host.trim().to_ascii_lowercase();
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
            _ => host,
        };
        let label = host.strip_suffix(&self.domain)?.strip_suffix('.')?;
        crate::sites::validate_site_name(label).ok()?;
        Some(label.to_string())
    }
}

/// The visitor's address: the peer's, or what a trusted proxy says it forwarded for. Worked
/// out only for the rules that need it (CIDR lists, basic auth's per-address limit).
fn visitor(req: &Request, trusted: &[ipnet::IpNet]) -> Option<std::net::IpAddr> {
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|h| h.to_str().ok());
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| crate::access::client_ip(c.0.ip(), forwarded, trusted))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>{title}</title><body style=\"font-family:sans-serif;margin:3em\"><h1>{title}</h1><p>{text}</p></body>"
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn handle(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let site = gw.site_of(host);
    // A span per request, at debug level: at info it would cost about 5% of the proxy's
    // throughput (benches/gateway.rs, measured), and the gateway's own warnings name the site.
    let span = tracing::debug_span!(
        "request",
        site = site.as_deref().unwrap_or("-"),
        method = %req.method(),
        path = %req.uri().path(),
    );
    let Some(log) = gw.access_log.get().cloned() else {
        return serve(gw, site, req).instrument(span).await.0;
    };
    let seen = log::Seen::of(&req, visitor(&req, &gw.trusted_proxies));
    match serve(gw, site, req).instrument(span).await {
        (resp, Some(id)) => log::finish(&log, id, seen, resp),
        (resp, None) => resp,
    }
}

/// The answer, and the id of the site it was for (when there is one: its logs).
async fn serve(
    gw: Arc<Gateway>,
    site: Option<String>,
    req: Request,
) -> (Response, Option<crate::ids::SiteId>) {
    let Some(site) = site else {
        let r = page(
            StatusCode::NOT_FOUND,
            "No such preview",
            "This address does not belong to any preview.",
        );
        return (r, None);
    };
    // The route and the site's access settings (checked before anything is served).
    let found = match gw.lookup(&site).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(site = %site, error = %e, "route lookup failed");
            let r = page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The gateway cannot read its routes right now.",
            );
            return (r, None);
        }
    };
    let (row, view) = match &*found {
        (Some(r), v) => (r, v),
        (None, _) => {
            let r = page(
                StatusCode::NOT_FOUND,
                "No such preview",
                "This address does not belong to any preview.",
            );
            return (r, None);
        }
    };
    let id = view.id.clone();
    let refused = |r: Response, why: &str| (failed(r, why.to_string()), id.clone());
    let access = &view.access;
    if let Some(a) = &access
        && (a.allow_cidrs.is_some() || a.deny_cidrs.is_some())
        && !visitor(&req, &gw.trusted_proxies).is_some_and(|ip| crate::access::admitted(a, ip))
    {
        let r = page(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "This preview does not accept visitors from your address.",
        );
        return refused(
            r,
            "refused: the visitor's address is not allowed (CIDR rules)",
        );
    }
    if let Some(a) = &access
        && a.basic_hash.is_some()
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let visitor = visitor(&req, &gw.trusted_proxies)
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let checked = gw.auth.check(a, given, visitor).await;
        if let crate::access::AuthCheck::Throttled { retry_after_secs } = checked {
            tracing::warn!(site = %site, visitor = %visitor, "too many wrong passwords; refused for now");
            let mut r = page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts",
                "Too many wrong passwords from your address; try again later.",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return refused(r, "refused: too many wrong passwords from this address");
        }
        if checked != crate::access::AuthCheck::Ok {
            let mut r = page(
                StatusCode::UNAUTHORIZED,
                "Password required",
                "This preview is protected by a password.",
            );
            if let Ok(v) =
                HeaderValue::from_str(&format!("Basic realm=\"{site}\", charset=\"UTF-8\""))
            {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            let why = if given.is_some() {
                "refused: wrong user or password (basic auth)"
            } else {
                "refused: no password given (basic auth)"
            };
            return refused(r, why);
        }
    }
    let robots =
        row.robots != 0 && !view.protected && access.as_ref().is_none_or(|a| a.robots != 0);
    let mut resp = match Route::from_row(row) {
        Some(Route::Building) => {
            let mut r = page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Preview is being built",
                "This preview is not ready yet; this page will work in a moment.",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        Some(Route::Gone) => page(
            StatusCode::GONE,
            "Preview removed",
            "This preview expired or was deleted.",
        ),
        Some(Route::Failed(preview)) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Preview failed",
            &match preview {
                Some(p) => format!(
                    "This preview could not be built or started. Why: <code>endor preview show {}</code> \
                     (members; also in the pull request's status comment when endor can post there).",
                    html_escape(&p)
                ),
                None => "This preview could not be built or started; <code>endor preview list --state failed</code> says why.".into(),
            },
        ),
        Some(Route::Static(root)) => serve_static(&gw, root, req).await,
        Some(Route::Proxy(addr)) => proxy(&gw, req, addr, &site).await,
        None => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Bad route",
            "This preview's route is invalid.",
        ),
    };
    if robots {
        resp.headers_mut().insert(
            "x-robots-tag",
            HeaderValue::from_static("noindex, nofollow"),
        );
    }
    (resp, id)
}

/// A static preview's file: the `.br` / `.gz` sibling the launch made when the visitor
/// accepts it (`Vary: Accept-Encoding`), `Last-Modified` and an `ETag` (from the modification
/// time, the length and the encoding, as nginx makes it), `304` for a visitor that has it.
async fn serve_static(gw: &Gateway, root: std::path::PathBuf, req: Request) -> Response {
    let if_none_match = req.headers().get(header::IF_NONE_MATCH).cloned();
    let method = req.method().clone();
    let head_or_get = matches!(method, http::Method::GET | http::Method::HEAD);
    // Kept answers serve plain GETs and HEADs; ranges and date conditions go to the folder.
    let key = (head_or_get
        && !gw.cache_ttl.is_zero()
        && ![
            header::RANGE,
            header::IF_RANGE,
            header::IF_MODIFIED_SINCE,
            header::IF_UNMODIFIED_SINCE,
            header::IF_MATCH,
        ]
        .iter()
        .any(|h| req.headers().contains_key(h)))
    .then(|| FileKey {
        root: root.clone(),
        path: req.uri().path().to_string(),
        accept: req
            .headers()
            .get(header::ACCEPT_ENCODING)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
    });
    if let Some(k) = &key
        && let Some(kept) = gw.kept_answer(k)
    {
        let mut resp = Response::new(match method {
            http::Method::HEAD => Body::empty(),
            _ => Body::from(kept.body.clone()),
        });
        *resp.headers_mut() = kept.headers.clone();
        return not_modified_if_matched(resp, if_none_match.as_ref());
    }
    let serve = tower_http::services::ServeDir::new(root)
        .precompressed_br()
        .precompressed_gzip();
    let mut resp = match serve.oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(never) => match never {},
    };
    let status = resp.status();
    if !(status.is_success() || status == StatusCode::NOT_MODIFIED) {
        return resp;
    }
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    let Some(tag) = etag(resp.headers()) else {
        return resp;
    };
    if status == StatusCode::OK {
        resp.headers_mut().insert(header::ETAG, tag.clone());
    }
    let small = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= FILE_CACHE_ONE);
    if let Some(k) = key
        && method == http::Method::GET
        && status == StatusCode::OK
        && small
    {
        use http_body_util::BodyExt;
        let (parts, body) = resp.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Read error",
                "This file could not be read.",
            );
        };
        gw.keep_answer(k, parts.headers.clone(), body.clone());
        resp = Response::from_parts(parts, Body::from(body));
    }
    if status == StatusCode::OK {
        return not_modified_if_matched(resp, if_none_match.as_ref());
    }
    resp
}

/// `304` (with the validators and `Vary`, no body) when the visitor's `If-None-Match` names
/// this `200` answer's `ETag`; the answer itself otherwise.
fn not_modified_if_matched(resp: Response, if_none_match: Option<&HeaderValue>) -> Response {
    let Some(tag) = resp.headers().get(header::ETAG) else {
        return resp;
    };
    let tag = tag.to_str().unwrap_or("");
    let matched = if_none_match
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == tag)
        });
    if !matched {
        return resp;
    }
    let mut not_modified = Response::new(Body::empty());
    *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
    for name in [
        header::ETAG,
        header::LAST_MODIFIED,
        header::VARY,
        header::CONTENT_ENCODING,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            not_modified.headers_mut().insert(name, v.clone());
        }
    }
    not_modified
}

impl Gateway {
    /// The counter as last read, while that reading is within the period.
    fn fresh_changes(&self) -> Option<(i64, std::time::Instant)> {
        let read = *self.changes.lock().unwrap_or_else(|e| e.into_inner());
        read.filter(|(_, at)| at.elapsed() < self.cache_ttl)
    }

    fn kept_answer(&self, k: &FileKey) -> Option<Arc<KeptAnswer>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let (at, seen, kept) = files.answers.get_mut(k)?;
        if at.elapsed() < self.cache_ttl {
            return Some(kept.clone());
        }
        // Past the period: good while the counter (read for this request's route at most a
        // period ago) has not moved since the answer was kept.
        renewed(at, *seen, self.fresh_changes()?).then(|| kept.clone())
    }

    fn keep_answer(&self, k: FileKey, headers: http::HeaderMap, body: bytes::Bytes) {
        // The counter read before the file was: a change after it moves it past this.
        let Some((seen, _)) = self.fresh_changes() else {
            return;
        };
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if files.bytes + body.len() > FILE_CACHE_BYTES || files.answers.len() >= CACHE_MAX {
            files.answers.clear();
            files.bytes = 0;
        }
        files.bytes += body.len();
        let kept = Arc::new(KeptAnswer { headers, body });
        if let Some((_, _, old)) = files
            .answers
            .insert(k, (std::time::Instant::now(), seen, kept))
        {
            files.bytes -= old.body.len();
        }
    }
}

/// Whether something kept while the change counter was `seen` is still good by the reading
/// `(counter, when read)`; if so it is good as of that reading (`at` moves there).
fn renewed(
    at: &mut std::time::Instant,
    seen: i64,
    (n, checked): (i64, std::time::Instant),
) -> bool {
    if n != seen {
        return false;
    }
    *at = checked;
    true
}

/// `"{modified, hex}-{length, hex}[-{encoding}]"` of a file's answer.
fn etag(h: &http::HeaderMap) -> Option<HeaderValue> {
    let modified = h.get(header::LAST_MODIFIED)?.to_str().ok()?;
    let modified = httpdate::parse_http_date(modified).ok()?;
    let secs = modified
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let len: u64 = h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()?;
    let enc = match h
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        Some(e) if e.bytes().all(|b| b.is_ascii_alphanumeric()) => format!("-{e}"),
        _ => String::new(),
    };
    HeaderValue::from_str(&format!("\"{secs:x}-{len:x}{enc}\"")).ok()
}

/// `r`, marked for the site's error log with `why` ([`log::Failure`]).
fn failed(mut r: Response, why: String) -> Response {
    r.extensions_mut().insert(log::Failure(why));
    r
}

/// Forward to the site's process at `addr`, streaming both bodies.
async fn proxy(gw: &Gateway, req: Request, addr: std::net::SocketAddr, site: &str) -> Response {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let Ok(uri) = format!("http://{addr}{path}").parse() else {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "Unusable request path.",
        );
    };
    parts.uri = uri;
    let upgrade = parts.headers.contains_key(header::UPGRADE);
    let mut req = Request::from_parts(parts, body);
    // The visitor's side of an upgraded connection, taken before the request moves on.
    let downstream = upgrade.then(|| hyper::upgrade::on(&mut req));
    let limit = gw
        .upstream_timeout_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let answer = gw.client.request(req);
    let answer = if limit == 0 {
        answer.await
    } else {
        match tokio::time::timeout(std::time::Duration::from_millis(limit), answer).await {
            Ok(a) => a,
            Err(_) => {
                tracing::warn!(site = %site, upstream = %addr, "site process did not answer in time");
                return failed(
                    page(
                        StatusCode::GATEWAY_TIMEOUT,
                        "Preview too slow",
                        "The preview's process did not answer in time.",
                    ),
                    format!("the app did not answer within {limit} ms (gateway.upstream_timeout)"),
                );
            }
        }
    };
    match answer {
        Ok(mut r) if r.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let upstream = hyper::upgrade::on(&mut r);
            if let Some(downstream) = downstream {
                let site = site.to_string();
                tokio::spawn(async move {
                    match (downstream.await, upstream.await) {
                        (Ok(d), Ok(u)) => {
                            let mut d = hyper_util::rt::TokioIo::new(d);
                            let mut u = hyper_util::rt::TokioIo::new(u);
                            let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                        }
                        (d, u) => tracing::warn!(
                            site = %site,
                            upstream = %addr,
                            visitor_error = d.err().map(|e| e.to_string()),
                            site_error = u.err().map(|e| e.to_string()),
                            "upgrade failed"
                        ),
                    }
                });
            }
            r.map(Body::new)
        }
        Ok(r) => r.map(Body::new),
        Err(e) => {
            tracing::warn!(site = %site, upstream = %addr, error = %e, "site process did not answer");
            failed(
                page(
                    StatusCode::BAD_GATEWAY,
                    "Preview not answering",
                    "The preview's process did not answer.",
                ),
                format!("the app did not answer on {addr}: {e}"),
            )
        }
    }
}
