//! `ublk-trace watch [dev N]`: the live view. Without a device: every ublk device with a health
//! column (Enter opens one). Modes: the TUI (default), `--headless --json` (one versioned JSON
//! document per interval), `--dump-screen WxH` (one rendered frame as text, for tests and docs).
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

pub mod headless;
pub mod session;
pub mod sources;
pub mod tui_loop;

use sources::Sources;

/// `dev N` as two words, shared by `watch` and `diagnose`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevTarget {
    /// The word `dev`, followed by the device number N (ublkbN / ublkcN).
    #[arg(value_name = "dev", value_parser = ["dev"], requires = "dev_id")]
    pub dev_word: Option<String>,
    /// Device number.
    #[arg(value_name = "N")]
    pub dev_id: Option<u32>,
}

impl DevTarget {
    pub fn id(&self) -> Option<u32> {
        self.dev_id
    }
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub target: DevTarget,
    /// No TUI: print what is observed to stdout (needs --json).
    #[arg(long)]
    pub headless: bool,
    /// With --headless: one versioned JSON document per interval, one per line.
    #[arg(long, requires = "headless")]
    pub json: bool,
    /// Sampling period in milliseconds (snapshots; the TUI redraws on its own cadence).
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub interval: u64,
    /// With --headless: stop after N documents.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Render one frame of WxH (e.g. 80x24) as plain text to stdout and exit.
    #[arg(long, value_name = "WxH", conflicts_with = "headless")]
    pub dump_screen: Option<String>,
    /// Open the detail view of queue Q, tag T (`0:3`): the probes stream that tag's every
    /// event while it is shown. Needs `dev N`.
    #[arg(long, value_name = "Q:T", value_parser = parse_q_tag, requires = "dev_id")]
    pub detail: Option<(u16, u16)>,
    /// With --dump-screen: sampling rounds to observe before rendering.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub ticks: u32,
    /// Do not load eBPF probes: snapshots only.
    #[arg(long)]
    pub no_probes: bool,
    #[command(flatten)]
    pub per_io: PerIoArg,
    #[command(flatten)]
    pub thresholds: crate::cmd::diagnose::ThresholdArgs,
    /// Where the TUI writes logs (the screen never shows them). Default: a file in $TMPDIR.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub color: crate::cmd::color::ColorArgs,
}

/// `--per-io MODE`, shared by `watch` and `diagnose`.
#[derive(Debug, Clone, clap::Args)]
pub struct PerIoArg {
    /// What runs on every I/O. `light`: only what the driver's memory cannot show (rejected
    /// commands, latency, failed and slow requests); `state`: also every tag's transitions
    /// (where the driver's memory cannot be read, `light` falls back to it); `none`: no
    /// per-I/O program at all.
    #[arg(
        long = "per-io",
        value_enum,
        value_name = "MODE",
        default_value = "light"
    )]
    pub mode: sources::PerIo,
}

/// `Q:T` (queue and tag numbers).
fn parse_q_tag(s: &str) -> Result<(u16, u16), String> {
    let (q, t) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected Q:T, e.g. 0:3"))?;
    let n = |x: &str| {
        x.trim()
            .parse::<u16>()
            .map_err(|e| format!("{s:?}: {x:?} is not a queue or tag number ({e})"))
    };
    Ok((n(q)?, n(t)?))
}

impl WatchArgs {
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.interval.max(50))
    }
}

/// Start the snapshot thread (and the probes unless disabled) feeding one channel.
pub fn start_sources(
    dev: Option<u32>,
    period: Duration,
    no_probes: bool,
    per_io: sources::PerIo,
) -> anyhow::Result<Sources> {
    let mut s = Sources::with_readers(dev, period)?;
    if no_probes {
        // The loop shows this in the header: a fallback is never silent.
        let _ =
            s.tx.send(sources::Msg::ProbesOff("--no-probes given".into()));
    } else {
        let h = sources::spawn_probes(
            s.tx.clone(),
            s.ev_tx.clone(),
            dev,
            per_io,
            s.follow.clone(),
            s.driver_status.clone(),
            s.stop.clone(),
        )
        .context("start the probe thread")?;
        s.add_detached(h);
    }
    Ok(s)
}

pub fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let dev = args.target.id();
    if let Some(spec) = &args.dump_screen {
        let Some((w, h)) = crate::tui::dump::parse_size(spec) else {
            bail!("--dump-screen {spec:?}: expected WxH of at least 20x8, e.g. 80x24");
        };
        return tui_loop::dump_screen(&args, dev, w, h);
    }
    if args.headless {
        if !args.json {
            bail!("--headless needs --json (the only headless format)");
        }
        return headless::run(&args, dev);
    }
    tui_loop::run(&args, dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        w: WatchArgs,
    }

    #[test]
    fn dev_n_parses_and_alone_means_all_devices() {
        let t =
            T::try_parse_from(["x", "dev", "3", "--headless", "--json"]).map_err(|e| e.to_string());
        assert_eq!(t.as_ref().map(|t| t.w.target.id()), Ok(Some(3)));
        let t = T::try_parse_from(["x"]).map_err(|e| e.to_string());
        assert_eq!(t.map(|t| t.w.target.id()), Ok(None));
    }

    #[test]
    fn detail_takes_a_queue_and_a_tag_of_a_device() {
        let t = T::try_parse_from(["x", "dev", "0", "--detail", "1:7"]).map_err(|e| e.to_string());
        assert_eq!(t.map(|t| t.w.detail), Ok(Some((1, 7))));
        assert!(T::try_parse_from(["x", "dev", "0", "--detail", "7"]).is_err());
        assert!(T::try_parse_from(["x", "dev", "0", "--detail", "a:1"]).is_err());
        assert!(
            T::try_parse_from(["x", "--detail", "0:1"]).is_err(),
            "needs dev N"
        );
    }

    #[test]
    fn a_word_other_than_dev_or_a_missing_number_is_refused() {
        assert!(T::try_parse_from(["x", "disk", "3"]).is_err());
        assert!(T::try_parse_from(["x", "dev"]).is_err());
        assert!(
            T::try_parse_from(["x", "--json"]).is_err(),
            "--json needs --headless"
        );
    }
}
