//! The tag grid: one cell per (queue, tag), coloured by state and age, laid out like a hex dump
//! (`q0   32 ....S...`) so a depth of 128+ and several queues fit at 80 columns and scroll.
//!
//! Two cell sizes: wide cells (`S 3.2s`) show each tag's age when every tag fits on screen;
//! otherwise compact cells (`S`) show state by glyph and age by colour, and the oldest-in-flight
//! list gives the numbers.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use super::app::{App, Cursor};
use super::style;
use super::view_model::{CellState, QueueView, TagCell, fmt_age};

/// `q12 4095 `: queue id on the queue's first line, first tag of each line.
const LABEL_WIDTH: u16 = 8;
const COMPACT_CELL: u16 = 2;
const WIDE_CELL: u16 = 8;
/// More than 64 cells per line is hard to count along.
const MAX_COLS: u16 = 64;

/// How the grid is laid out in a given inner area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridGeometry {
    /// Tag cells per line.
    pub cols: u16,
    /// Cells show the age as text.
    pub wide: bool,
}

fn pow2_floor(n: u16) -> u16 {
    if n == 0 {
        0
    } else {
        1 << (15 - n.leading_zeros())
    }
}

fn lines_for(depths: &[u16], cols: u16) -> usize {
    let cols = usize::from(cols.max(1));
    depths.iter().map(|&d| usize::from(d).div_ceil(cols)).sum()
}

/// Pick the cell size and cells per line for an inner area of `width` x `height`.
pub fn geometry(depths: &[u16], width: u16, height: u16) -> GridGeometry {
    let avail = width.saturating_sub(LABEL_WIDTH);
    let max_depth = depths.iter().copied().max().unwrap_or(1).max(1);
    let fit = |cell: u16| pow2_floor(avail / cell).clamp(1, MAX_COLS).min(max_depth);
    let wide_cols = fit(WIDE_CELL);
    if wide_cols >= 4 && lines_for(depths, wide_cols) <= usize::from(height) {
        return GridGeometry {
            cols: wide_cols,
            wide: true,
        };
    }
    GridGeometry {
        cols: fit(COMPACT_CELL),
        wide: false,
    }
}

/// Grid lines needed for these depths (to size the grid pane).
pub fn lines_needed(depths: &[u16], width: u16, height: u16) -> usize {
    lines_for(depths, geometry(depths, width, height).cols)
}

/// The line the cursor is on, counting all queues' lines from the top.
fn cursor_line(depths: &[u16], cols: u16, c: Cursor) -> usize {
    lines_for(&depths[..c.q_idx.min(depths.len())], cols) + usize::from(c.tag / cols.max(1))
}

fn cell_span(
    app: &App,
    q: &QueueView,
    cell: &TagCell,
    selected: bool,
    wide: bool,
) -> Span<'static> {
    let text = if wide {
        let age = match (cell.state, cell.age_ns) {
            (s, Some(a)) if s.in_flight() => fmt_age(a),
            _ => String::new(),
        };
        format!("{} {:>5} ", cell.state.glyph(), age)
    } else {
        format!("{} ", cell.state.glyph())
    };
    let mut st = style::cell_style(cell.state, cell.age_ns, cell.flagged);
    if !app.filter.matches_tag(q.q_id, cell) {
        st = style::dim();
    }
    if selected {
        st = st.patch(style::selected());
    }
    Span::styled(text, st)
}

fn grid_lines(app: &App, queues: &[QueueView], g: GridGeometry) -> Vec<Line<'static>> {
    let cols = usize::from(g.cols.max(1));
    let sel = app.selected();
    let mut out = Vec::new();
    for q in queues {
        for (i, chunk) in q.tags.chunks(cols).enumerate() {
            let q_label = if i == 0 {
                format!("q{}", q.q_id)
            } else {
                String::new()
            };
            let first = i * cols;
            let mut spans = vec![Span::styled(
                format!("{q_label:<3}{first:>4} "),
                style::dim(),
            )];
            spans.extend(chunk.iter().map(|c| {
                let selected = sel == Some((q.q_id, c.tag));
                cell_span(app, q, c, selected, g.wide)
            }));
            out.push(Line::from(spans));
        }
    }
    out
}

/// Legend for the title: glyphs of the states that matter.
fn legend() -> Line<'static> {
    let item = |s: CellState, word: &str| {
        vec![
            Span::styled(format!("{}", s.glyph()), style::cell_style(s, None, false)),
            Span::raw(format!(" {word}  ")),
        ]
    };
    let mut spans = vec![Span::styled(" Tags ", style::title())];
    spans.extend(item(CellState::Waiting, "waiting"));
    spans.extend(item(CellState::Queued, "queued"));
    spans.extend(item(CellState::InServer, "in server"));
    spans.extend(item(CellState::Committed, "committed"));
    spans.extend(item(CellState::Unknown, "unknown"));
    Line::from(spans)
}

pub fn render_grid(f: &mut Frame, area: Rect, app: &App, queues: &[QueueView]) {
    let depths: Vec<u16> = queues
        .iter()
        .map(|q| u16::try_from(q.tags.len()).unwrap_or(u16::MAX))
        .collect();
    let block = Block::bordered().title(legend());
    let inner = block.inner(area);
    let g = geometry(&depths, inner.width, inner.height);
    let lines = grid_lines(app, queues, g);
    let height = usize::from(inner.height.max(1));
    // Scroll just enough to keep the cursor's line on screen.
    let first = cursor_line(&depths, g.cols, app.cursor).saturating_sub(height - 1);
    let block = if lines.len() > height {
        let last = (first + height).min(lines.len());
        block.title_bottom(format!(" lines {}-{} of {} ", first + 1, last, lines.len()))
    } else {
        block
    };
    let visible: Vec<Line> = lines.into_iter().skip(first).take(height).collect();
    let body = if visible.is_empty() {
        vec![Line::styled("no queues known yet", style::dim())]
    } else {
        visible
    };
    f.render_widget(Paragraph::new(body).block(block), area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_queues_use_compact_power_of_two_lines_at_80_columns() {
        // 78 inner columns: 70 for cells -> 35 compact cells -> 32 per line.
        let g = geometry(&[128, 128], 78, 6);
        assert_eq!(
            g,
            GridGeometry {
                cols: 32,
                wide: false
            }
        );
        assert_eq!(lines_needed(&[128, 128], 78, 6), 8);
    }

    #[test]
    fn small_devices_get_wide_cells_with_ages() {
        let g = geometry(&[8, 8], 78, 6);
        assert!(g.wide);
        assert_eq!(g.cols, 8);
    }

    #[test]
    fn wide_cells_only_when_all_lines_fit() {
        // depth 128 in wide cells at 200 columns: 16 per line, 8 lines; fits in 10, not in 4.
        assert!(geometry(&[128], 198, 10).wide);
        assert!(!geometry(&[128], 198, 4).wide);
    }

    #[test]
    fn cursor_line_counts_earlier_queues() {
        assert_eq!(cursor_line(&[64, 64], 32, Cursor { q_idx: 1, tag: 33 }), 3);
        assert_eq!(cursor_line(&[40], 32, Cursor { q_idx: 0, tag: 39 }), 1);
    }

    #[test]
    fn tiny_widths_do_not_divide_by_zero() {
        let g = geometry(&[128], 3, 1);
        assert_eq!(g.cols, 1);
        assert_eq!(pow2_floor(0), 0);
        assert_eq!(pow2_floor(35), 32);
    }
}
