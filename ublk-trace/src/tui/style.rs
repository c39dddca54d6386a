//! Colours and the age thresholds that pick them: one place, so every pane agrees on what
//! "slow" and "stuck" look like.

use ratatui::buffer::Buffer;
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

/// `--color never` / NO_COLOR: drop every colour of a drawn frame, keeping bold and reverse.
/// A cell that stood out by its background (a flagged tag, a bad state) is drawn reversed so
/// it still stands out.
pub fn strip_colors(buf: &mut Buffer) {
    for cell in &mut buf.content {
        if cell.bg != Color::Reset {
            cell.modifier.insert(Modifier::REVERSED);
        }
        cell.fg = Color::Reset;
        cell.bg = Color::Reset;
    }
}

#[cfg(test)]
mod tests {
    use ratatui::layout::Rect;

    use super::*;

    #[test]
    fn stripped_frame_has_no_colour_and_flagged_cells_stay_visible() {
        let mut buf = Buffer::empty(Rect::new(0, 0, 3, 1));
        buf.set_string(0, 0, "a", cell_style(CellState::Waiting, None, false));
        buf.set_string(1, 0, "b", cell_style(CellState::InServer, None, true));
        strip_colors(&mut buf);
        assert!(
            buf.content
                .iter()
                .all(|c| c.fg == Color::Reset && c.bg == Color::Reset)
        );
        assert!(buf.content[1].modifier.contains(Modifier::REVERSED));
        assert!(!buf.content[0].modifier.contains(Modifier::REVERSED));
    }
}
