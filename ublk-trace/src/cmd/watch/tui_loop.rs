//! The interactive loop: keys first (so the UI answers under an event flood), then a bounded
//! drain of source messages into the session, then a draw on its own cadence.
//! Also `--dump-screen`: the same pipeline rendered once into a TestBackend.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossterm::event::{self, Event};
use ratatui::layout::Rect;

use crate::snapshot::read::monotonic_ns;
use crate::tui::app::{Action, App};
use crate::tui::term::{self, TerminalGuard};
use crate::tui::view_model::{DeviceRow, ViewModel};
use crate::tui::{draw, dump, style};

use super::WatchArgs;
use super::session::Session;
use super::sources::{RoundTracker, Sources};

/// Redraw period: comfortable on a TCG guest's console (vm-tui.md: ~20 ms per full frame).
const DRAW_EVERY: Duration = Duration::from_millis(250);
/// Messages applied per pass, so a burst of events cannot delay key handling.
const DRAIN_BUDGET: usize = 512;

/// What the loop is showing and the frame frozen by `p`.
struct Screen {
    dev: Option<u32>,
    frozen: Option<(Option<ViewModel>, Vec<DeviceRow>)>,
}

/// Do what a key asked. Returns false to quit.
fn on_action(a: Action, screen: &mut Screen, session: &mut Session, sources: &Sources) -> bool {
    match a {
        Action::Quit => return false,
        Action::OpenDevice(d) => {
            screen.dev = Some(d);
            sources.focus.set(Some(d));
        }
        Action::CloseDevice => {
            screen.dev = None;
            session.detail = None;
            sources.focus.set(None);
            sources.follow.set(None);
        }
        Action::SelectTag { q_id, tag } => {
            session.detail = Some((q_id, tag));
            // The probes stream this tag's every event while it is selected.
            sources.follow.set(screen.dev.map(|d| (d, q_id, tag)));
        }
        Action::UnselectTag => {
            session.detail = None;
            sources.follow.set(None);
        }
        Action::None | Action::Redraw => {}
    }
    true
}

/// Handle every key already waiting. Returns (keep running, something changed).
fn handle_keys(
    app: &mut App,
    screen: &mut Screen,
    session: &mut Session,
    sources: &Sources,
) -> anyhow::Result<(bool, bool)> {
    let mut changed = false;
    while event::poll(Duration::ZERO).context("poll the terminal for keys")? {
        match event::read().context("read a key")? {
            Event::Key(k) => {
                let a = app.on_key(k);
                changed |= a != Action::None;
                if !on_action(a, screen, session, sources) {
                    return Ok((false, changed));
                }
            }
            Event::Resize(..) => changed = true,
            _ => {}
        }
    }
    Ok((true, changed))
}

/// The frame's data: fresh, or the frozen one while paused.
fn frame_data(
    app: &App,
    screen: &mut Screen,
    session: &Session,
) -> (Option<ViewModel>, Vec<DeviceRow>) {
    if app.paused
        && let Some(f) = &screen.frozen
    {
        return f.clone();
    }
    let now = monotonic_ns();
    let data = (
        screen.dev.map(|d| session.view(d, now)),
        session.device_rows(now),
    );
    screen.frozen = app.paused.then(|| data.clone());
    data
}

pub fn run(args: &WatchArgs, dev: Option<u32>) -> anyhow::Result<ExitCode> {
    let sources = super::start_sources(dev, args.period(), args.no_probes, args.per_io.mode)?;
    let mut session = Session::new();
    session.set_thresholds(args.thresholds.to_thresholds());
    let mut app = match dev {
        Some(_) => App::for_device(),
        None => App::for_device_list(),
    };
    start_detail(args, dev, &mut app, &mut session, &sources);
    let mut screen = Screen { dev, frozen: None };
    let log_path = args.log_file.clone().unwrap_or_else(term::default_log_path);
    let color = args.color.enabled();
    let mut guard = TerminalGuard::enter(&log_path).context("start the TUI")?;
    let mut next_draw = Instant::now();
    while !term::stop_requested() {
        let (running, changed) = handle_keys(&mut app, &mut screen, &mut session, &sources)?;
        if !running {
            break;
        }
        if changed {
            next_draw = Instant::now();
        }
        for msg in std::iter::from_fn(|| sources.try_recv()).take(DRAIN_BUDGET) {
            session.apply(msg);
        }
        if Instant::now() >= next_draw {
            let (vm, rows) = frame_data(&app, &mut screen, &session);
            let size = guard.terminal.size().context("read the terminal size")?;
            if let Some(vm) = &vm {
                app.set_grid_shape(draw::grid_shape(
                    Rect::new(0, 0, size.width, size.height),
                    vm,
                ));
            }
            app.set_devices(rows.iter().map(|r| r.dev_id).collect());
            guard
                .terminal
                .draw(|f| {
                    draw::ui(f, &app, vm.as_ref(), &rows);
                    if !color {
                        style::strip_colors(f.buffer_mut());
                    }
                })
                .context("draw the screen")?;
            next_draw = Instant::now() + DRAW_EVERY;
        }
        let wait = next_draw.saturating_duration_since(Instant::now());
        event::poll(wait.min(Duration::from_millis(50))).context("wait for a key")?;
    }
    drop(guard);
    report_log_file(&log_path);
    Ok(ExitCode::SUCCESS)
}

/// Tell the user about logs written while the screen was ours; drop an empty file.
fn report_log_file(path: &std::path::Path) {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => {
            eprintln!("ublk-trace: logs of this session are in {}", path.display())
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// `--detail Q:T`: open on that tag's detail, its events streamed from the start.
fn start_detail(
    args: &WatchArgs,
    dev: Option<u32>,
    app: &mut App,
    session: &mut Session,
    sources: &Sources,
) {
    if let (Some((q, t)), Some(d)) = (args.detail, dev) {
        app.start_in_detail();
        session.detail = Some((q, t));
        sources.follow.set(Some((d, q, t)));
    }
}

/// Observe for `args.ticks` sampling rounds, then print one frame of `w` x `h`.
pub fn dump_screen(args: &WatchArgs, dev: Option<u32>, w: u16, h: u16) -> anyhow::Result<ExitCode> {
    let sources = super::start_sources(dev, args.period(), args.no_probes, args.per_io.mode)?;
    let mut session = Session::new();
    session.set_thresholds(args.thresholds.to_thresholds());
    let mut detail_app = App::for_device();
    start_detail(args, dev, &mut detail_app, &mut session, &sources);
    let mut rounds = 0u32;
    let mut tracker = RoundTracker::default();
    // Bounded even if a source stalls: ticks periods plus slack for slow snapshots.
    let give_up = Instant::now() + args.period() * (args.ticks + 2) + Duration::from_secs(5);
    while (rounds < args.ticks.max(1) || !session.source_known()) && Instant::now() < give_up {
        match sources.recv(Duration::from_millis(100)) {
            Ok(msg) => {
                let ends_round = tracker.observe(&msg, dev);
                session.apply(msg);
                rounds += u32::from(ends_round);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let now = monotonic_ns();
    let (mut app, vm) = match dev {
        Some(d) => (detail_app, Some(session.view(d, now))),
        None => (App::for_device_list(), None),
    };
    let rows = session.device_rows(now);
    app.set_devices(rows.iter().map(|r| r.dev_id).collect());
    print!("{}", dump::render_text(&mut app, vm.as_ref(), &rows, w, h));
    Ok(ExitCode::SUCCESS)
}
