//! The preview lifecycle (being built): what a repository asks for (`config.rs`), and, to
//! come, the state machine that turns PR events into sites. Knows nothing of comments.

pub mod config;
