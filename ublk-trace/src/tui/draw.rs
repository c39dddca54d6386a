//! One frame: pick the screen for the app's mode, lay out the panes, draw the footer and the
//! help overlay. `ui` reads the app and the view model and performs no I/O (bpftop's `ui()`).

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use super::app::{App, GridShape, Mode};
use super::grid;
use super::panels;
use super::style;
use super::view_model::{DeviceRow, ViewModel};

const GRID_FOOTER: &str =
    " arrows/hjkl move  Enter detail  / filter  p pause  PgUp/PgDn findings  ? help  q quit";
const DETAIL_FOOTER: &str = " Enter/Backspace back  / filter  p pause  ? help  q quit";
const LIST_FOOTER: &str = " up/down select  Enter open  p pause  ? help  q quit";
const FILTER_FOOTER: &str =
    " Enter apply  Esc cancel  Ctrl-U clear  (words: qN tN busy flagged state class)";
const HELP_FOOTER: &str = " ? or Enter close help  q quit";

const HELP_TEXT: &[&str] = &[
    "Keys",
    "  arrows, h j k l   move in the tag grid / device list",
    "  Enter             tag detail (event history); open a device from the list",
    "  Backspace         back (to the grid, to the device list)",
    "  /                 filter: q1 t5 busy flagged in_server stuck (words ANDed)",
    "  p                 pause the display (sampling goes on)",
    "  PgUp PgDn         scroll the findings",
    "  q, Ctrl-C         quit",
    "",
    "Tag grid",
    "  .  waiting: the server waits for a request (healthy, even for hours)",
    "  Q  queued: the block layer handed it to ublk, not yet delivered",
    "  S  in server: delivered to the server, no commit yet",
    "  C  committed: the server answered, completion pending",
    "  F  in flight per blk-mq debugfs (snapshots only: delivery unknown)",
    "  ?  unknown: nothing seen yet (attached late)",
    "  yellow: in flight > 100ms, red: > 1s, red background: named by a finding",
];

/// The smallest terminal that shows every pane in full; below it the footer says so.
pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 24;

/// The one-line hint shown (in the footer) while the terminal is smaller than it needs.
pub fn size_hint(area: Rect) -> Option<String> {
    (area.width < MIN_WIDTH || area.height < MIN_HEIGHT).then(|| {
        format!(
            " terminal {}x{} is smaller than {MIN_WIDTH}x{MIN_HEIGHT}: enlarge it to see every pane  ? help  q quit",
            area.width, area.height
        )
    })
}

/// Where the device screen's panes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAreas {
    pub header: Rect,
    pub grid: Rect,
    pub findings: Rect,
    pub oldest: Rect,
    pub latency: Rect,
    pub footer: Rect,
}

/// Wide terminals put the grid and findings left, the lists right; narrow ones stack the grid
/// on top of a findings | (oldest / latency) strip. The grid gets what it needs, within limits.
pub fn device_layout(area: Rect, depths: &[u16]) -> DeviceAreas {
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let wide = body.width >= 120;
    let (grid_col, side) = if wide {
        let [l, r] = Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)])
            .areas(body);
        (l, Some(r))
    } else {
        (body, None)
    };
    // Lines the grid wants if it could have 60% of the column's height.
    let max_h = (grid_col.height * 3 / 5).max(4);
    let inner_w = grid_col.width.saturating_sub(2);
    let need = grid::lines_needed(depths, inner_w, max_h - 2).max(1);
    let grid_h = u16::try_from(need + 2).unwrap_or(u16::MAX).clamp(3, max_h);
    let [grid, below] =
        Layout::vertical([Constraint::Length(grid_h), Constraint::Fill(1)]).areas(grid_col);
    let (findings, lists) = match side {
        Some(r) => (below, r),
        None => {
            let [f, r] =
                Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
                    .areas(below);
            (f, r)
        }
    };
    let [oldest, latency] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(lists);
    DeviceAreas {
        header,
        grid,
        findings,
        oldest,
        latency,
        footer,
    }
}

/// The grid geometry the cursor moves over for this terminal size (call before each key batch).
pub fn grid_shape(area: Rect, vm: &ViewModel) -> GridShape {
    let depths = vm.depths();
    let a = device_layout(area, &depths);
    let inner = Block::bordered().inner(a.grid);
    let g = grid::geometry(&depths, inner.width, inner.height);
    GridShape {
        q_ids: vm.queues.iter().map(|q| q.q_id).collect(),
        depths,
        cols: g.cols,
    }
}

fn footer_text(app: &App, area: Rect) -> Line<'static> {
    if app.mode != Mode::Filter
        && let Some(hint) = size_hint(area)
    {
        return Line::styled(hint, style::warn());
    }
    let base = match app.mode {
        Mode::Filter => {
            return Line::from(vec![
                Span::styled(format!(" /{}_", app.filter_input), style::title()),
                Span::styled(FILTER_FOOTER, style::dim()),
            ]);
        }
        Mode::Help => HELP_FOOTER,
        Mode::DeviceList => LIST_FOOTER,
        Mode::Detail => DETAIL_FOOTER,
        Mode::Grid => GRID_FOOTER,
    };
    let mut spans = Vec::new();
    if !app.filter.is_empty() {
        spans.push(Span::styled(
            format!(" filter: {} |", app.filter.text()),
            style::warn(),
        ));
    }
    spans.push(Span::styled(base, style::dim()));
    Line::from(spans)
}

fn render_help(f: &mut Frame, area: Rect) {
    let w = area.width.min(86);
    let h = area.height.min(HELP_TEXT.len() as u16 + 2);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let lines: Vec<Line> = HELP_TEXT.iter().map(|s| Line::raw(*s)).collect();
    f.render_widget(Clear, r);
    let block = Block::bordered().title(Span::styled(" Help ", style::title()));
    f.render_widget(Paragraph::new(lines).block(block), r);
}

fn render_device_screen(f: &mut Frame, area: Rect, app: &App, vm: &ViewModel) {
    let a = device_layout(area, &vm.depths());
    panels::render_header(f, a.header, &vm.header, app.paused);
    if app.base_mode() == Mode::Detail {
        let body = a.grid.union(a.findings).union(a.oldest).union(a.latency);
        panels::render_detail(f, body, app, vm.detail.as_ref(), &vm.findings);
    } else {
        grid::render_grid(f, a.grid, app, &vm.queues);
        panels::render_findings(f, a.findings, app, &vm.findings, &vm.undecided);
        panels::render_oldest(f, a.oldest, app, &vm.oldest);
        panels::render_latency(f, a.latency, &vm.latency);
    }
    f.render_widget(Paragraph::new(footer_text(app, area)), a.footer);
}

/// Draw one frame. `vm` is the open device (None on the device list), `devices` the list.
pub fn ui(f: &mut Frame, app: &App, vm: Option<&ViewModel>, devices: &[DeviceRow]) {
    let area = f.area();
    match (app.base_mode(), vm) {
        (Mode::Grid | Mode::Detail, Some(vm)) => render_device_screen(f, area, app, vm),
        _ => {
            let [list, footer] =
                Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(area);
            panels::render_device_list(f, list, app, devices);
            f.render_widget(Paragraph::new(footer_text(app, area)), footer);
        }
    }
    if app.mode == Mode::Help {
        render_help(f, area);
    }
}

/// The screen as plain text, one line per row, trailing blanks trimmed (for tests, `--dump-screen`
/// and the docs capture).
pub fn buffer_text(buf: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            if let Some(c) = buf.cell((buf.area.x + x, buf.area.y + y)) {
                line.push_str(c.symbol());
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
