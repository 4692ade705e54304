//! Slash-commands in PR comments. Built so far: the grammar (`grammar.rs`), a pure module; the
//! dispatch with permissions and the effects are the rest of the slash-command issue.

pub mod grammar;
