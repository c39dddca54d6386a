//! Terminal UI over the model: state and keys (`app`), what to show (`view_model`), how to draw
//! it (`draw`, `grid`, `panels`), frames without a terminal (`dump`) and the terminal itself
//! (`term`). No diagnosis logic lives here.
pub mod app;
pub mod build;
pub mod draw;
pub mod dump;
pub mod filter;
pub mod grid;
pub mod panels;
#[cfg(test)]
mod render_tests;
pub mod snapshot_view;
pub mod style;
pub mod term;
pub mod view_model;
