//! Criterion: webhook signature verification (and payload classification) on a 28 KB body.
//! Run: `cargo bench --bench signature`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use endor::forge::ForgeKind;
use endor::forge::signature::{sign_hex, verify};
use endor::secret::WebhookSecret;
use http::{HeaderMap, HeaderValue};

fn bench(c: &mut Criterion) {
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/webhooks/github.pull_request.opened.json"
    ))
    .unwrap();
    let secret = WebhookSecret::generate();
    let mut headers = HeaderMap::new();
    let sig = format!("sha256={}", sign_hex(secret.expose().as_bytes(), &body));
    headers.insert("x-hub-signature-256", HeaderValue::from_str(&sig).unwrap());
    let mut g = c.benchmark_group("webhook");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("verify_hmac_sha256_28KB", |b| {
        b.iter(|| {
            verify(
                ForgeKind::Github,
                &headers,
                std::hint::black_box(&body),
                &[&secret],
            )
            .unwrap()
        })
    });
    let old = WebhookSecret::generate();
    g.bench_function("verify_hmac_sha256_28KB_two_secrets", |b| {
        b.iter(|| {
            verify(
                ForgeKind::Github,
                &headers,
                std::hint::black_box(&body),
                &[&old, &secret],
            )
            .unwrap()
        })
    });
    g.bench_function("classify_pull_request_28KB", |b| {
        b.iter(|| {
            ForgeKind::Github
                .classify("pull_request", std::hint::black_box(&body))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
