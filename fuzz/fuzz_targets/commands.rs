//! Fuzz the slash-command grammar: any comment text, any prefix, never a panic, and the
//! invariants the dispatcher relies on hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The same source files endor compiles (see fuzz/Cargo.toml).
#[allow(dead_code)]
#[path = "../../src/duration.rs"]
mod duration;
#[allow(dead_code)]
#[path = "../../src/commands/grammar.rs"]
mod grammar;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line (when short) is the prefix, so odd prefixes are tried too.
    let (prefix, comment) = match text.split_once('\n') {
        Some((p, rest)) if !p.is_empty() && p.len() <= 32 && !p.contains(char::is_whitespace) => {
            (p, rest)
        }
        _ => ("/preview", text),
    };
    let parsed = grammar::parse(comment, prefix);
    assert!(parsed.commands.len() + parsed.errors.len() <= grammar::MAX_COMMANDS);
    for e in &parsed.errors {
        assert!(e.line.chars().count() <= 41, "error lines are clipped");
        assert!(!e.message.is_empty());
    }
    let _ = grammar::help(prefix);
});
