//! (owner: see lib.rs)
