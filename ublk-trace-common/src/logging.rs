//! The binaries' minimal `log` backend to stderr: level from `-v`, overridable with
//! `UBLK_LOG=debug`. One copy for `ublk-server` and `ublk-trace` (kept in-tree instead of
//! env_logger to keep the dependency tree small). Feature `logging`; never built for eBPF.
use log::{LevelFilter, Log, Metadata, Record};
use std::eprintln;

/// How each line starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// `ublk-server: [WARN] message`: the program's name, for a server whose stderr is mixed
    /// with its workload's.
    Program(&'static str),
    /// `[WARN ublk_trace::probe] message`: the module, for the tracer's many subsystems.
    Target,
}

struct StderrLogger {
    prefix: Prefix,
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        match self.prefix {
            Prefix::Program(name) => eprintln!("{name}: [{}] {}", r.level(), r.args()),
            Prefix::Target => eprintln!("[{} {}] {}", r.level(), r.target(), r.args()),
        }
    }
    fn flush(&self) {}
}

/// Level from the `-v` count, unless `UBLK_LOG` names one (error, warn, info, debug, trace).
pub fn level_for(verbose: u8, env: Option<&str>) -> LevelFilter {
    if let Some(l) = env.and_then(|s| s.parse::<LevelFilter>().ok()) {
        return l;
    }
    match verbose {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Install the logger once per process; a second call (tests) keeps the first.
pub fn init(verbose: u8, prefix: Prefix) {
    let env = std::env::var("UBLK_LOG").ok();
    let logger = std::boxed::Box::leak(std::boxed::Box::new(StderrLogger { prefix }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level_for(verbose, env.as_deref()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_verbosity() {
        assert_eq!(level_for(0, None), LevelFilter::Warn);
        assert_eq!(level_for(1, None), LevelFilter::Info);
        assert_eq!(level_for(2, None), LevelFilter::Debug);
        assert_eq!(level_for(0, Some("trace")), LevelFilter::Trace);
        assert_eq!(level_for(3, Some("bogus")), LevelFilter::Trace);
    }
}
