//! The preview lifecycle: what a repository asks for (`config.rs`), the state machine's rules
//! (`state.rs`), the work that turns PR events into live previews and back (`lifecycle.rs`, with
//! `launch.rs` and `teardown.rs`),
//! what each state shows on the forge (`report.rs`, `comment.rs`), and each preview's story as
//! a user reads it (`story.rs`: `endor preview list/show`), and ad-hoc commands in a site's
//! sandbox (`exec.rs`: `endor site exec`). Knows no forge API and
//! no comment grammar: slash-commands call its public API.

pub mod actions;
mod assets;
mod comment;
pub mod config;
mod events;
pub mod exec;
mod hosts;
mod launch;
pub mod lifecycle;
pub mod report;
pub mod state;
pub mod story;
mod teardown;

pub use crate::runtime::Pipe;
pub use lifecycle::{Lifecycle, site_name};
pub use state::PreviewState;
