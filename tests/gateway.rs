//! The preview gateway over real HTTP: routing by Host, statuses, static files, a proxied site
//! process, the robots header.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use endor::gateway::{Gateway, Route};
use support::TestStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Gw {
    addr: SocketAddr,
    db: TestStore,
}

async fn start() -> Gw {
    start_cached(Duration::ZERO).await
}

/// A gateway that keeps routes and small static answers for `ttl` (0: keeps nothing).
async fn start_cached(ttl: Duration) -> Gw {
    let db = TestStore::sqlite().await;
    let gw = Gateway::with_options(db.store.clone(), "preview.localhost", &[], ttl);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, gw.app()).await.unwrap() });
    Gw { addr, db }
}

impl Gw {
    async fn route(&self, site: &str, route: Route, robots: bool) {
        self.db
            .store
            .put_route(&route.row(site, robots))
            .await
            .unwrap();
    }

    async fn get(&self, host: &str, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("http://{}{}", self.addr, path))
            .header("host", host)
            .send()
            .await
            .unwrap()
    }

    /// A request exactly as written (no client-side path normalization).
    async fn raw(&self, host: &str, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Checks every 20 ms until `check` holds; fails with `what` after 3 s (a cache period of
/// the tests' gateways is at most 300 ms).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < Duration::from_secs(3), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_with_the_right_statuses() {
    let gw = start().await;
    gw.route("shop-pr-1", Route::Building, true).await;
    gw.route("shop-pr-2", Route::Gone, true).await;
    let r = gw.get("shop-pr-1.preview.localhost:8081", "/").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(r.headers()["x-robots-tag"], "noindex, nofollow");
    assert_eq!(
        gw.get("shop-pr-2.preview.localhost", "/x").await.status(),
        410
    );
    for host in [
        "unknown.preview.localhost",
        "example.com",
        "preview.localhost",
        "..preview.localhost",
        "a.b.preview.localhost",
        "-x.preview.localhost",
        "",
    ] {
        assert_eq!(gw.get(host, "/").await.status(), 404, "{host:?}");
    }
    // The case of the Host header does not matter; the site label must be a DNS label.
    assert_eq!(
        gw.get("SHOP-PR-2.Preview.Localhost", "/").await.status(),
        410
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_sites_and_traversal() {
    let gw = start().await;
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("public");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("index.html"), "<h1>pr 3</h1>").unwrap();
    std::fs::write(root.join("sub/file.txt"), "deep").unwrap();
    std::fs::write(d.path().join("secret.txt"), "do not serve").unwrap();
    gw.route("docs-pr-3", Route::Static(root.clone()), true)
        .await;
    let host = "docs-pr-3.preview.localhost";
    let r = gw.get(host, "/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-robots-tag"], "noindex, nofollow");
    assert_eq!(r.text().await.unwrap(), "<h1>pr 3</h1>");
    assert_eq!(
        gw.get(host, "/sub/file.txt").await.text().await.unwrap(),
        "deep"
    );
    assert_eq!(gw.get(host, "/missing").await.status(), 404);
    for path in [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
    ] {
        let raw = gw.raw(host, path).await;
        assert!(
            !raw.contains("do not serve"),
            "{path} escaped the root: {raw}"
        );
    }
}

/// A static file is served as a static host serves it: the `.br` or `.gz` sibling the launch
/// made when the visitor accepts it (`Vary: Accept-Encoding`), an `ETag` and `Last-Modified`,
/// and `304` to a visitor who has it already (by `If-None-Match` or `If-Modified-Since`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_compressed_with_validators() {
    // Read from the folder each time, and kept in memory (the same answers either way).
    for ttl in [Duration::ZERO, Duration::from_secs(60)] {
        compressed_with_validators(start_cached(ttl).await).await;
    }
}

async fn compressed_with_validators(gw: Gw) {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let page = "<p>compress me</p>\n".repeat(300);
    std::fs::write(d.path().join("index.html"), &page).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(page.as_bytes()).unwrap();
    std::fs::write(d.path().join("index.html.gz"), gz.finish().unwrap()).unwrap();
    let mut br = Vec::new();
    brotli::BrotliCompress(&mut page.as_bytes(), &mut br, &Default::default()).unwrap();
    std::fs::write(d.path().join("index.html.br"), &br).unwrap();
    gw.route("web-pr-1", Route::Static(d.path().to_path_buf()), true)
        .await;
    let host = "web-pr-1.preview.localhost";
    let http = reqwest::Client::new();
    let get = |accept: &'static str, extra: Option<(&'static str, String)>| {
        let mut r = http
            .get(format!("http://{}/index.html", gw.addr))
            .header("host", host)
            .header("accept-encoding", accept);
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        r.send()
    };
    let mut tags = Vec::new();
    for (accept, encoding) in [
        ("br, gzip", Some("br")),
        ("gzip", Some("gzip")),
        ("identity", None),
    ] {
        let r = get(accept, None).await.unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        assert_eq!(
            h.get("content-encoding").map(|v| v.to_str().unwrap()),
            encoding,
            "{accept}"
        );
        assert_eq!(h["vary"], "accept-encoding");
        assert!(h.contains_key("last-modified"));
        let tag = h["etag"].to_str().unwrap().to_string();
        let body = r.bytes().await.unwrap();
        let plain = match encoding {
            Some("br") => {
                let mut out = Vec::new();
                brotli::BrotliDecompress(&mut &body[..], &mut out).unwrap();
                out
            }
            Some(_) => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out)
                    .unwrap();
                out
            }
            None => body.to_vec(),
        };
        assert_eq!(plain, page.as_bytes(), "{accept}");
        // A visitor with this copy gets 304 and no body.
        let again = get(accept, Some(("if-none-match", tag.clone())))
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{accept}");
        assert_eq!(again.headers()["etag"].to_str().unwrap(), tag);
        assert!(again.bytes().await.unwrap().is_empty());
        tags.push(tag);
    }
    // Each encoding has its own tag; another tag, or none, gets the file.
    tags.dedup();
    assert_eq!(tags.len(), 3, "{tags:?}");
    let other = get("identity", Some(("if-none-match", "\"0-0\"".into())))
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    let modified = other.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();
    let since = get("identity", Some(("if-modified-since", modified)))
        .await
        .unwrap();
    assert_eq!(since.status(), 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_site_process_and_robots_toggle() {
    let gw = start().await;
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("index.html"), "from the process").unwrap();
    std::fs::write(d.path().join("big.bin"), vec![b'z'; 10 * 1024 * 1024]).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(d.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    endor::runtime::health_check(port, "/", Duration::from_secs(20))
        .await
        .unwrap();
    gw.route("app-pr-4", Route::local(port), false).await;
    let host = "app-pr-4.preview.localhost";
    let r = gw.get(host, "/").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("x-robots-tag").is_none(),
        "robots off must drop the header"
    );
    assert_eq!(r.text().await.unwrap(), "from the process");
    let big = gw.get(host, "/big.bin").await.bytes().await.unwrap();
    assert_eq!(big.len(), 10 * 1024 * 1024);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(gw.get(host, "/").await.status(), 502);
    // Turning robots back on takes effect at the next request (routes are read from the store).
    gw.route("app-pr-4", Route::Gone, true).await;
    let r = gw.get(host, "/").await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-robots-tag"].to_str().unwrap()
        ),
        (410, "noindex, nofollow")
    );
}

/// Read from `s` until the end of an HTTP head.
async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.unwrap();
        assert!(n == 1, "connection closed in the head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through() {
    let gw = start().await;
    // A site process that accepts the upgrade and then answers every byte upper-cased.
    let site = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = site.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = site.accept().await.unwrap();
        let head = read_head(&mut s).await.to_ascii_lowercase();
        assert!(head.contains("upgrade: websocket"), "{head}");
        assert!(
            head.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
            "{head}"
        );
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            s.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
        }
    });
    gw.route("chat", Route::local(port), true).await;
    let mut c = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(
        b"GET /socket HTTP/1.1\r\nHost: chat.preview.localhost\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut c))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in ["hello", "both ways, many times"] {
        c.write_all(msg.as_bytes()).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg.to_ascii_uppercase().as_bytes());
    }
    gw.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_previews_say_so() {
    let gw = start().await;
    gw.route("broken", Route::Failed(Some("acme/<b>shop#8".into())), true)
        .await;
    let r = gw.get("broken.preview.localhost", "/").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_none());
    let page = r.text().await.unwrap();
    assert!(page.contains("Preview failed"), "{page}");
    // The page names the command that says why (the name escaped).
    assert!(
        page.contains("endor preview show acme/&lt;b&gt;shop#8"),
        "{page}"
    );
    gw.db.cleanup().await;
}

/// CIDR rules from real source addresses (clients bound to 127.0.0.2, 127.0.0.3 and ::1
/// against a dual-stack gateway), deny winning, a spoofed `X-Forwarded-For` from an untrusted
/// peer ignored and believed from a trusted proxy; basic auth after the CIDR check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cidr_rules_from_real_source_addresses() {
    use endor::store::SiteAccess;
    let db = TestStore::sqlite().await;
    let store = db.store.clone();
    let site = site_row(store.as_ref(), "app-pr-1").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "hello").unwrap();
    store
        .put_route(&Route::Static(dir.path().to_path_buf()).row("app-pr-1", true))
        .await
        .unwrap();
    let gw = Gateway::with_proxies(store.clone(), "preview.localhost", &["127.0.0.3/32".into()]);
    let listener = tokio::net::TcpListener::bind("[::]:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, gw.app()).await.unwrap() });
    let get = |from: &str, xff: Option<&str>, auth: Option<&str>| {
        let from: std::net::IpAddr = from.parse().unwrap();
        let (xff, auth) = (xff.map(str::to_string), auth.map(str::to_string));
        async move {
            let target = if from.is_ipv6() {
                format!("http://[::1]:{port}/")
            } else {
                format!("http://127.0.0.1:{port}/")
            };
            let c = reqwest::Client::builder()
                .local_address(from)
                .build()
                .unwrap();
            let mut r = c.get(target).header("host", "app-pr-1.preview.localhost");
            if let Some(x) = xff {
                r = r.header("x-forwarded-for", x);
            }
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.send().await.unwrap().status().as_u16()
        }
    };
    let set = |allow: Option<&str>, deny: Option<&str>| {
        let store = store.clone();
        let site_id = site.id.clone();
        let (allow, deny) = (allow.map(str::to_string), deny.map(str::to_string));
        async move {
            let mut a = store
                .site_access(&site_id)
                .await
                .unwrap()
                .unwrap_or_else(|| SiteAccess::default_for(&site_id));
            a.allow_cidrs = allow;
            a.deny_cidrs = deny;
            store.put_site_access(&a).await.unwrap();
        }
    };
    // No rules: everyone.
    for from in ["127.0.0.2", "127.0.0.3", "::1"] {
        assert_eq!(get(from, None, None).await, 200, "{from}");
    }
    // Allow one IPv4 host.
    set(Some("127.0.0.2/32"), None).await;
    assert_eq!(get("127.0.0.2", None, None).await, 200);
    assert_eq!(get("127.0.0.3", None, None).await, 403);
    assert_eq!(get("::1", None, None).await, 403);
    // Allow IPv6 loopback only.
    set(Some("::1/128"), None).await;
    assert_eq!(get("::1", None, None).await, 200);
    assert_eq!(get("127.0.0.2", None, None).await, 403);
    // Deny wins over allow.
    set(Some("127.0.0.0/8"), Some("127.0.0.2/32")).await;
    assert_eq!(get("127.0.0.2", None, None).await, 403);
    assert_eq!(get("127.0.0.4", None, None).await, 200);
    // X-Forwarded-For: ignored from an untrusted peer, believed from the trusted proxy.
    set(Some("10.0.0.0/8"), None).await;
    assert_eq!(
        get("127.0.0.2", Some("10.1.2.3"), None).await,
        403,
        "spoof believed"
    );
    assert_eq!(get("127.0.0.3", Some("10.1.2.3"), None).await, 200);
    assert_eq!(
        get("127.0.0.3", Some("10.1.2.3, 127.0.0.2"), None).await,
        403
    );
    assert_eq!(get("127.0.0.3", None, None).await, 403);
    // Basic auth comes after the address check.
    set(Some("127.0.0.2/32"), None).await;
    endor::access::set_chosen_password(store.as_ref(), &site.id, "ops", "long-enough-pw")
        .await
        .unwrap();
    use base64::Engine;
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ops:long-enough-pw")
    );
    let bad = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ops:wrong-password")
    );
    assert_eq!(get("127.0.0.2", None, None).await, 401);
    assert_eq!(get("127.0.0.2", None, Some(&bad)).await, 401);
    assert_eq!(get("127.0.0.2", None, Some(&good)).await, 200);
    assert_eq!(get("127.0.0.3", None, Some(&good)).await, 403);
    // A flood of wrong passwords from one address: refused with 429 once over the limit
    // (one wrong attempt above, nine more here), without a password check; the credentials it
    // already proved still work.
    for n in 0..(endor::access::MAX_FAILURES - 1) {
        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ops:guess-{n}"))
        );
        assert_eq!(get("127.0.0.2", None, Some(&wrong)).await, 401, "guess {n}");
    }
    assert_eq!(get("127.0.0.2", None, Some(&bad)).await, 429);
    assert_eq!(get("127.0.0.2", None, Some(&good)).await, 200);
    db.cleanup().await;
}

/// With `gateway.cache_ttl_ms`, a site's route and settings are read at most once per period;
/// a change is served once the period is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_routes_follow_changes_within_the_ttl() {
    let g = start_cached(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "v1").unwrap();
    g.route("c-pr-1", Route::Static(dir.path().to_path_buf()), true)
        .await;
    assert_eq!(g.get("c-pr-1.preview.localhost", "/").await.status(), 200);
    g.route("c-pr-1", Route::Gone, true).await;
    eventually(
        "the change was not served after the cache period",
        async || g.get("c-pr-1.preview.localhost", "/").await.status() == 410,
    )
    .await;
    g.db.cleanup().await;
}

/// Small static answers are kept in memory for the cache period, and past it while the store's
/// change counter does not move (a changed file is served once something changed and the
/// period is over); HEAD is answered from them; ranges, date conditions and large files always
/// go to the folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_answers_kept_in_memory_while_nothing_changes() {
    let long = start_cached(Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let big = "b".repeat(300 * 1024);
    std::fs::write(dir.path().join("index.html"), "version one").unwrap();
    std::fs::write(dir.path().join("big.txt"), &big).unwrap();
    long.route("k-pr-1", Route::Static(dir.path().to_path_buf()), true)
        .await;
    let host = "k-pr-1.preview.localhost";
    let text = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    assert_eq!(
        text(long.get(host, "/index.html").await).await,
        "version one"
    );
    assert_eq!(
        text(long.get(host, "/big.txt").await).await.len(),
        big.len()
    );
    std::fs::write(dir.path().join("index.html"), "version two!").unwrap();
    std::fs::write(dir.path().join("big.txt"), "small now").unwrap();
    // Within the period: the kept answer, whole, with its validators.
    let kept = long.get(host, "/index.html").await;
    assert_eq!(kept.headers()["content-length"], "11");
    assert!(kept.headers().contains_key("etag"));
    assert_eq!(kept.headers()["x-robots-tag"], "noindex, nofollow");
    assert_eq!(text(kept).await, "version one");
    let head = reqwest::Client::new()
        .head(format!("http://{}/index.html", long.addr))
        .header("host", host)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "11");
    assert!(head.bytes().await.unwrap().is_empty());
    // A range goes to the folder, and so does a file too large to keep.
    let range = reqwest::Client::new()
        .get(format!("http://{}/index.html", long.addr))
        .header("host", host)
        .header("range", "bytes=0-6")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(range.text().await.unwrap(), "version");
    assert_eq!(text(long.get(host, "/big.txt").await).await, "small now");
    // A missing file is never kept as found.
    assert_eq!(long.get(host, "/nope.html").await.status(), 404);
    long.db.cleanup().await;

    // With a short period, the change is served once it is over.
    let short = start_cached(Duration::from_millis(300)).await;
    std::fs::write(dir.path().join("index.html"), "one").unwrap();
    short
        .route("k-pr-2", Route::Static(dir.path().to_path_buf()), true)
        .await;
    let host = "k-pr-2.preview.localhost";
    assert_eq!(text(short.get(host, "/").await).await, "one");
    std::fs::write(dir.path().join("index.html"), "two").unwrap();
    // Past the period the kept answer stays while the store records no change (a served
    // folder is one version's checkout: nobody writes there behind the store's back)...
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(text(short.get(host, "/").await).await, "one");
    // ...and once something changes (here: the route written again, as `site exec` does when
    // it ends), the file is read again within the period.
    short
        .route("k-pr-2", Route::Static(dir.path().to_path_buf()), true)
        .await;
    eventually(
        "the changed file was not served after a change and the cache period",
        async || text(short.get(host, "/").await).await == "two",
    )
    .await;
    short.db.cleanup().await;
}

/// Past the cache period a gateway keeps what it has while the store's change counter stays
/// the same (one read per period for every site), and reads each site again once it moves:
/// a route rewritten behind the triggers' back is not seen until the counter moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_routes_last_while_the_store_says_nothing_changed() {
    let g = start_cached(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "kept").unwrap();
    g.route("n-pr-1", Route::Static(dir.path().to_path_buf()), true)
        .await;
    let host = "n-pr-1.preview.localhost";
    assert_eq!(g.get(host, "/").await.status(), 200);
    // The route rewritten with the counter left alone (as no write of endor's can do).
    let mut raw = sqlx::SqliteConnection::connect(&g.db.url).await.unwrap();
    use sqlx::Connection;
    for t in ["routes_updated", "routes_inserted"] {
        sqlx::query(&format!("DROP TRIGGER {t}"))
            .execute(&mut raw)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE routes SET kind = 'gone', target = NULL WHERE site_name = 'n-pr-1'")
        .execute(&mut raw)
        .await
        .unwrap();
    // Well past the period: still the kept route, each period renewed by one counter read.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(g.get(host, "/").await.status(), 200);
    }
    // The counter moves (any change): the site is read again within the period.
    sqlx::query("UPDATE gateway_changes SET n = n + 1")
        .execute(&mut raw)
        .await
        .unwrap();
    eventually(
        "the change was not served after the counter moved",
        async || g.get(host, "/").await.status() == 410,
    )
    .await;
}

/// A protected (production) site never gets `X-Robots-Tag`, whatever its route says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_sites_get_no_robots_header() {
    let g = start().await;
    let store = g.db.store.clone();
    let site = site_row(store.as_ref(), "prod").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "live").unwrap();
    g.route("prod", Route::Static(dir.path().to_path_buf()), true)
        .await;
    let r = g.get("prod.preview.localhost", "/").await;
    assert_eq!(r.headers()["x-robots-tag"], "noindex, nofollow");
    store.set_site_protected(&site.id, true).await.unwrap();
    let r = g.get("prod.preview.localhost", "/").await;
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("x-robots-tag"));
    g.db.cleanup().await;
}

/// A site row `name` in a fresh workspace (what the gateway's access lookups join on).
async fn site_row(store: &dyn endor::store::Store, name: &str) -> endor::store::Site {
    let owner = store.create_user("o", None, None).await.unwrap();
    let ws = store.create_workspace("w", &owner.id).await.unwrap();
    store
        .create_site(&endor::store::NewSite {
            name: name.into(),
            workspace_id: ws.id,
            region: "default".into(),
            parent_id: None,
            read_only: false,
        })
        .await
        .unwrap()
}

/// Real traffic makes each site's access and error lines: the visitor's address from a client
/// bound to 127.0.0.2 and, through a trusted proxy, from its `X-Forwarded-For` (an untrusted
/// peer's header is not believed); method, path, status, bytes, duration, user agent and the
/// basic-auth user (never the password); a 401 and an app not answering in the error log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_and_error_logs_from_real_traffic() {
    use endor::logs::{Filter, Service};
    let db = TestStore::sqlite().await;
    let store = db.store.clone();
    let site = site_row(store.as_ref(), "app-pr-1").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "hello").unwrap();
    store
        .put_route(&Route::Static(dir.path().to_path_buf()).row("app-pr-1", true))
        .await
        .unwrap();
    let logs_dir = tempfile::tempdir().unwrap();
    let logs = endor::logs::Logs::new(logs_dir.path(), Default::default());
    let gw = Gateway::with_proxies(store.clone(), "preview.localhost", &["127.0.0.3/32".into()]);
    gw.log_to(endor::gateway::AccessLog::start(logs.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let gateway = gw.clone();
    tokio::spawn(async move { axum::serve(listener, gw.app()).await.unwrap() });
    let get = |from: &str, path: &str, xff: Option<&str>, auth: Option<&str>| {
        let from: std::net::IpAddr = from.parse().unwrap();
        let (path, xff, auth) = (
            path.to_string(),
            xff.map(str::to_string),
            auth.map(str::to_string),
        );
        async move {
            let c = reqwest::Client::builder()
                .local_address(from)
                .build()
                .unwrap();
            let mut r = c
                .get(format!("http://127.0.0.1:{port}{path}"))
                .header("host", "app-pr-1.preview.localhost")
                .header("user-agent", "endor-test/1");
            if let Some(x) = xff {
                r = r.header("x-forwarded-for", x);
            }
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            // The whole answer read, as a visitor does: one that leaves after the status line
            // is logged with what went out by then (a file's body may not have).
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let _ = r.bytes().await;
            status
        }
    };
    assert_eq!(get("127.0.0.2", "/", None, None).await, 200);
    assert_eq!(
        get("127.0.0.3", "/?q=1", Some("203.0.113.7"), None).await,
        200
    );
    assert_eq!(
        get("127.0.0.2", "/index.html", Some("198.51.100.1"), None).await,
        200
    );
    // Basic auth on: no credentials and wrong ones are refused (and logged as errors).
    endor::access::set_chosen_password(store.as_ref(), &site.id, "alice", "s3cret-pass")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get("127.0.0.2", "/private", None, None).await, 401);
    // alice:wrong-password
    assert_eq!(
        get(
            "127.0.0.2",
            "/private",
            None,
            Some("Basic YWxpY2U6d3JvbmctcGFzc3dvcmQ=")
        )
        .await,
        401
    );
    // A proxied route whose app is not there: 502, an error line naming the port.
    endor::access::set_generated_password(
        store.as_ref(),
        &endor::secret::Keyring::load(&logs_dir.path().join("key")).unwrap(),
        &site.id,
        false,
    )
    .await
    .unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    store
        .put_route(&Route::local(dead_port).row("app-pr-1", true))
        .await
        .unwrap();
    assert_eq!(get("127.0.0.2", "/api", None, None).await, 502);
    // An app that takes the connection but never answers: 504 after the gateway's limit.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((c, _)) = mute.accept().await {
            kept.push(c);
        }
    });
    store
        .put_route(&Route::local(mute_port).row("app-pr-1", true))
        .await
        .unwrap();
    gateway.time_out_after(Duration::from_millis(300));
    assert_eq!(get("127.0.0.2", "/slow", None, None).await, 504);
    held.abort();

    let read = |service| {
        let (lines, _) = endor::logs::read_since(
            logs_dir.path(),
            &site.id,
            &[service],
            &Filter::default(),
            None,
        )
        .unwrap();
        lines
    };
    let mut access = read(Service::Access);
    for _ in 0..100 {
        if access.len() >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        access = read(Service::Access);
    }
    assert_eq!(access.len(), 7, "{access:#?}");
    let f = |i: usize, k: &str| access[i].entry.fields[k].clone();
    assert_eq!(f(0, "visitor"), "127.0.0.2");
    assert_eq!(
        (f(0, "method"), f(0, "path"), f(0, "status")),
        ("GET".into(), "/".into(), 200.into())
    );
    assert_eq!(f(0, "bytes"), 5);
    assert_eq!(f(0, "user_agent"), "endor-test/1");
    assert!(f(0, "duration_ms").as_f64().unwrap() >= 0.0);
    assert_eq!(f(1, "visitor"), "203.0.113.7", "through the trusted proxy");
    assert_eq!(f(1, "path"), "/?q=1");
    assert_eq!(
        f(2, "visitor"),
        "127.0.0.2",
        "an untrusted peer's header is not believed"
    );
    assert_eq!((f(3, "status"), f(4, "status")), (401.into(), 401.into()));
    assert_eq!(f(4, "user"), "alice");
    assert!(!access[4].entry.text.contains("wrong-password"));
    assert_eq!((f(5, "status"), f(6, "status")), (502.into(), 504.into()));
    assert!(
        access[0].entry.text.starts_with("127.0.0.2 GET / 200 5 "),
        "{}",
        access[0].entry.text
    );

    let errors = read(Service::Error);
    let texts: Vec<&str> = errors.iter().map(|r| r.entry.text.as_str()).collect();
    assert_eq!(errors.len(), 4, "{texts:?}");
    assert!(
        texts[0].contains("401") && texts[0].contains("no password given"),
        "{texts:?}"
    );
    assert!(texts[1].contains("wrong user or password"), "{texts:?}");
    assert!(
        texts[2].contains("502") && texts[2].contains(&format!("127.0.0.1:{dead_port}")),
        "{texts:?}"
    );
    assert!(
        texts[3].contains("504") && texts[3].contains("did not answer within 300 ms"),
        "{texts:?}"
    );
    assert_eq!(errors[0].entry.fields["visitor"], "127.0.0.2");
}
