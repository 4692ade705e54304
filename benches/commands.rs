//! Slash-command grammar: parsing a 64 KB comment with 10 commands and large code blocks
//! (target ≤ 1 ms). `cargo bench --bench commands`

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use endor::commands::grammar::parse;

fn comment() -> String {
    let mut text = String::new();
    let commands = [
        "/preview deploy",
        "/preview extend 2d",
        "/preview sync db",
        "/preview tag add qa",
        "/preview robots off",
        "/preview password on",
        "/preview status",
        "/preview help",
        "/preview sync files",
        "/preview destroy",
    ];
    for (i, c) in commands.iter().enumerate() {
        text.push_str(&format!(
            "Some prose about change {i}, with `inline code` and **bold**.\n\n"
        ));
        text.push_str(c);
        text.push_str("\n\n```rust\n");
        let block_end = (i + 1) * 64 * 1024 / commands.len();
        while text.len() < block_end {
            text.push_str("fn main() { println!(\"/preview destroy inside code\"); }\n");
        }
        text.push_str("```\n\n> /preview destroy in a quote\n\n");
    }
    text
}

fn bench(c: &mut Criterion) {
    let text = comment();
    assert!(text.len() >= 64 * 1024);
    assert_eq!(parse(&text, "/preview").commands.len(), 10);
    c.bench_function("parse 64 KB comment, 10 commands", |b| {
        b.iter(|| parse(black_box(&text), "/preview"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
