//! What the benchmarks that drive a real `endor serve` share: arguments, ports, processes,
//! the `endor` CLI, and an HTTP load generator with its percentiles.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub fn arg(name: &str, default: u64) -> u64 {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn endor(cfg: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_endor"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "endor {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Default)]
pub struct Run {
    pub ok: usize,
    pub bad: usize,
    pub lat_us: Vec<u32>,
    pub secs: f64,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    pub fn pct(&self, p: f64) -> f64 {
        let i = ((self.lat_us.len().max(1) as f64 - 1.0) * p).round() as usize;
        self.lat_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }
}

pub async fn load(
    url: String,
    host: Option<String>,
    auth: Option<String>,
    conns: usize,
    dur: Duration,
) -> Run {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (url, host, auth) = (url.clone(), host.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut run = Run::default();
            while start.elapsed() < dur {
                let t = Instant::now();
                let mut r = client.get(&url);
                if let Some(h) = &host {
                    r = r.header("host", h);
                }
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                match r.send().await {
                    Ok(resp) => {
                        let ok = resp.status() == 200;
                        let body = resp.bytes().await.unwrap_or_default();
                        if ok && &body[..] == b"hello" {
                            run.ok += 1;
                            run.lat_us.push(t.elapsed().as_micros() as u32);
                        } else {
                            run.bad += 1;
                        }
                    }
                    Err(_) => run.bad += 1,
                }
            }
            run
        }));
    }
    let mut total = Run::default();
    for t in tasks {
        let r = t.await.unwrap();
        total.ok += r.ok;
        total.bad += r.bad;
        total.lat_us.extend(r.lat_us);
    }
    total.secs = start.elapsed().as_secs_f64();
    total.lat_us.sort_unstable();
    total
}

pub fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
