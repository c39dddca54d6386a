//! A minimal `log` backend to stderr: level from `-v`, overridable with `UBLK_LOG=debug`.
//! (In-tree instead of env_logger to keep the dependency tree small.)
use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            eprintln!("ublk-server: [{}] {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

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

pub fn init(verbose: u8) {
    let env = std::env::var("UBLK_LOG").ok();
    // A second init (tests) keeps the first logger.
    if log::set_logger(&LOGGER).is_ok() {
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
        assert_eq!(level_for(0, Some("trace")), LevelFilter::Trace);
        assert_eq!(level_for(3, Some("bogus")), LevelFilter::Trace);
    }
}
