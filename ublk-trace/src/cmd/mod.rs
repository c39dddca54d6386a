//! Subcommands: each turns parsed flags into library calls and returns an exit code.
//! Exit codes: 0 ok, 1 findings (diagnose) or a failed check (doctor), 2 usage error or
//! failure (mapped in main). Each subcommand's `--help` lists its own ([`exit_status`]).
pub mod color;
pub mod diagnose;
pub mod doctor;
pub mod record;
pub mod report;
pub mod state;
pub mod watch;

/// The "Exit status" block of each subcommand's `--help` and man page.
pub mod exit_status {
    pub const DOCTOR: &str = "\
Exit status:
  0  every required check passed (warnings allowed): this machine can trace ublk
  1  at least one check failed (each FAIL line names its fix); same with --json
  2  bad arguments";
    pub const RECORD: &str = "\
Exit status:
  0  the recording (or the --from conversion) was written
  2  bad arguments, or it could not record: probes failed to load, output not writable";
    pub const REPORT: &str = "\
Exit status:
  0  the report was printed (findings in it do not change the code)
  2  bad arguments, or the file is unreadable or not a recording or bundle";
    pub const WATCH: &str = "\
Exit status:
  0  quit by the user (q, Ctrl-C), --count documents printed, or the screen was dumped
  2  bad arguments, no terminal for the TUI, or the sources could not start";
    pub const DIAGNOSE: &str = "\
Exit status:
  0  no problem found (SLOW findings alone are informational)
  1  at least one finding names a problem
  2  bad arguments, or it could not observe (or write the bundle)";
    pub const STATE: &str = "\
Exit status:
  0  the driver's state was read and printed
  2  bad arguments, or it cannot be read here (the message names why: no /proc/kcore,
     lockdown, not root, ublk_drv not loaded, a layout this kernel lacks)";
    pub const TOP: &str = "\
Exit status:
  0  success;  1  doctor: a check failed, diagnose: a problem was found;
  2  bad arguments or an error (the message names the fix). Each subcommand's --help has its own.";
}
