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
    let db = TestStore::sqlite().await;
    let gw = Gateway::new(db.store.clone(), "preview.localhost");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, gw.router()).await.unwrap() });
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
    gw.route("app-pr-4", Route::Proxy(port), false).await;
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
    gw.route("chat", Route::Proxy(port), true).await;
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
    gw.route("broken", Route::Failed, true).await;
    let r = gw.get("broken.preview.localhost", "/").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_none());
    assert!(r.text().await.unwrap().contains("Preview failed"));
    gw.db.cleanup().await;
}
