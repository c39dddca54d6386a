//! Environment checks, each with the fix named.
