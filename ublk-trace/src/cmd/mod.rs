//! Subcommands: each turns parsed flags into library calls and returns an exit code.
//! Exit codes: 0 ok, 1 findings (diagnose) or a failed check (doctor --strict), 2 error.
pub mod diagnose;
pub mod doctor;
pub mod record;
pub mod report;
pub mod state;
pub mod watch;
