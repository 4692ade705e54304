//! The preview lifecycle: what a repository asks for (`config.rs`) and the state machine that
//! turns PR events into live previews and back (`lifecycle.rs`), and what slash-commands in PR
//! comments do to a preview (`commands.rs`).

mod commands;
pub mod config;
pub mod lifecycle;

pub use lifecycle::{Lifecycle, site_name};
