//! Reporting back to the forge: the sticky status comment (`render.rs`).

pub mod render;
