//! Helpers the guest tests of `ublk-server` and `ublk-trace` share: where the project's
//! binaries are, waits on children and their output with deadlines, tasks in D state, shell
//! one-liners, and the SKIP line xtask counts. Every wait is bounded: a hung device must fail
//! a test, not hang the guest. A dev-dependency only; nothing here ships.
pub mod bins;
pub mod child;
pub mod shell;
pub mod tasks;

/// Say on the console that `test` did not run and why: unbuffered stderr, on a line of its
/// own (libtest has printed `test NAME ... `), so xtask counts it as skipped, not passed.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\nSKIP: {test}: {why}");
}
