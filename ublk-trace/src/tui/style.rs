//! Colours and the age thresholds that pick them: one place, so every pane agrees on what
//! "slow" and "stuck" look like.

use ratatui::style::{Color, Modifier, Style};

use super::view_model::{CellState, Severity};

/// In-flight for longer than this is drawn as slow (yellow).
pub const SLOW_NS: u64 = 100_000_000;
/// In-flight for longer than this is drawn as stuck (red), matching diagnose's default.
pub const STUCK_NS: u64 = 1_000_000_000;

pub fn state_color(s: CellState) -> Color {
    match s {
        CellState::Unknown | CellState::Idle => Color::DarkGray,
        CellState::Waiting => Color::Green,
        CellState::Queued => Color::Yellow,
        CellState::InServer => Color::Cyan,
        CellState::Committed => Color::Blue,
        CellState::InFlight => Color::Magenta,
        CellState::Aborted => Color::Red,
    }
}

/// Style of a tag cell: state colour, turned yellow/red by age while in flight, red background
/// when a finding names it.
pub fn cell_style(state: CellState, age_ns: Option<u64>, flagged: bool) -> Style {
    if flagged {
        return Style::new()
            .fg(Color::White)
            .bg(Color::Red)
            .add_modifier(Modifier::BOLD);
    }
    let age = age_ns.unwrap_or(0);
    let fg = match state {
        s if s.in_flight() && age >= STUCK_NS => Color::LightRed,
        s if s.in_flight() && age >= SLOW_NS => Color::LightYellow,
        s => state_color(s),
    };
    Style::new().fg(fg)
}

pub fn severity_style(s: Severity) -> Style {
    let c = match s {
        Severity::Info => Color::Cyan,
        Severity::Warning => Color::Yellow,
        Severity::Error => Color::LightRed,
    };
    Style::new().fg(c).add_modifier(Modifier::BOLD)
}

pub fn title() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

pub fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

pub fn bad() -> Style {
    Style::new()
        .fg(Color::White)
        .bg(Color::Red)
        .add_modifier(Modifier::BOLD)
}

pub fn warn() -> Style {
    Style::new().fg(Color::Yellow)
}

pub fn good() -> Style {
    Style::new().fg(Color::Green)
}

pub fn selected() -> Style {
    Style::new().add_modifier(Modifier::REVERSED)
}
