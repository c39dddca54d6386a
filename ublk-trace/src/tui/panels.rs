//! The panes around the grid: header, oldest in-flight requests, latency histogram, findings,
//! the selected tag's detail and the device list. Each `render_*` draws one pane from the view
//! model and does no I/O.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Sparkline, Table, TableState, Wrap};

use super::app::App;
use super::style;
use super::view_model::{
    DeviceRow, FindingView, HeaderView, Health, InflightRow, LatencyBucket, PerIoView, ServerView,
    SourceView, TagDetail, fmt_age,
};

fn server_span(s: Option<&ServerView>) -> Span<'static> {
    match s {
        None => Span::styled("server ?", style::warn()),
        Some(s) => {
            let text = format!("server {} {} ({})", s.pid, s.state_text, s.state);
            match s.state {
                'T' | 't' | 'Z' | 'X' => Span::styled(text, style::bad()),
                'D' => Span::styled(text, style::warn()),
                _ => Span::styled(text, style::good()),
            }
        }
    }
}

fn dev_state_span(state: Option<&str>) -> Span<'static> {
    match state {
        None => Span::styled("state ?", style::warn()),
        Some(s @ "LIVE") => Span::styled(s.to_string(), style::good()),
        Some(s) => Span::styled(s.to_string(), style::bad()),
    }
}

fn source_span(s: &SourceView) -> Span<'static> {
    match s {
        SourceView::Live => Span::raw("source eBPF+snapshots"),
        SourceView::Replay => Span::raw("source replay"),
        SourceView::SnapshotsOnly { reason } => {
            Span::styled(format!("SNAPSHOTS ONLY: {reason}"), style::warn())
        }
    }
}

/// An event backlog shorter than this is normal batching, not worth a word.
const LAG_SHOWN_NS: u64 = 500_000_000;

fn fmt_rate(n: u64) -> String {
    match n {
        n if n >= 10_000_000 => format!("{}M", n / 1_000_000),
        n if n >= 10_000 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// Two lines: who and what state; then IOPS, dropped events, source, pause.
pub fn render_header(f: &mut Frame, area: Rect, h: &HeaderView, paused: bool) {
    let sep = || Span::styled(" | ", style::dim());
    let features = if h.features.is_empty() {
        "features ?".to_string()
    } else {
        h.features.join(",")
    };
    let line1 = Line::from(vec![
        Span::styled(format!(" ublk-trace dev {} ", h.dev_id), style::title()),
        dev_state_span(h.dev_state.as_deref()),
        sep(),
        server_span(h.server.as_ref()),
        sep(),
        Span::styled(features, style::dim()),
    ]);
    let [l1, l2] = Layout::vertical([Constraint::Length(1); 2]).areas(area);
    f.render_widget(Paragraph::new(line1), l1);

    const SPARK_WIDTH: u16 = 24;
    let [label, spark, rest] = Layout::horizontal([
        Constraint::Length(6),
        Constraint::Length(SPARK_WIDTH),
        Constraint::Fill(1),
    ])
    .areas(l2);
    f.render_widget(Paragraph::new(" IOPS "), label);
    let tail_start = h
        .iops_history
        .len()
        .saturating_sub(usize::from(SPARK_WIDTH));
    let tail = h.iops_history.get(tail_start..).unwrap_or(&[]);
    f.render_widget(Sparkline::default().data(tail).style(style::good()), spark);
    let dropped = if h.dropped_events > 0 {
        Span::styled(format!("dropped {} events", h.dropped_events), style::bad())
    } else {
        Span::raw("dropped 0")
    };
    let mut spans = vec![
        Span::raw(format!(
            " {}/s",
            fmt_rate(h.iops_history.last().copied().unwrap_or(0))
        )),
        sep(),
        dropped,
        sep(),
    ];
    if paused {
        spans.push(Span::styled("PAUSED", style::bad()));
        spans.push(sep());
    }
    if h.stream_lag_ns >= LAG_SHOWN_NS {
        spans.push(Span::styled(
            format!("events lag {}", fmt_age(h.stream_lag_ns)),
            style::warn(),
        ));
        spans.push(sep());
    }
    spans.push(source_span(&h.source));
    spans.push(match &h.driver_off {
        None => Span::raw(" + driver state"),
        Some(why) => Span::styled(format!(" | NO DRIVER STATE: {why}"), style::warn()),
    });
    if let Some(p) = &h.per_io {
        spans.push(sep());
        spans.push(per_io_span(p));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), rest);
}

/// `per-I/O light (no per-tag event history, delivery times)`: the mode and its blind spots,
/// in warning colour when it is not the mode asked for.
fn per_io_span(p: &PerIoView) -> Span<'static> {
    let mut text = format!("per-I/O {}", p.mode);
    if !p.cannot_see.is_empty() {
        text.push_str(&format!(" (no {})", p.cannot_see.join(", ")));
    }
    match &p.note {
        Some(_) => Span::styled(text, style::warn()),
        None => Span::raw(text),
    }
}

fn inflight_line(r: &InflightRow) -> Line<'static> {
    let what = match (r.sector, r.bytes) {
        (Some(s), Some(b)) => format!(" {} {b}B@{s}", r.op),
        _ => format!(" {}", r.op),
    };
    Line::from(vec![
        Span::raw(format!("q{} t{:<4}", r.q_id, r.tag)),
        Span::styled(
            format!("{:<10}", r.state.name()),
            style::cell_style(r.state, Some(r.age_ns), false),
        ),
        Span::raw(format!("{:>6}", fmt_age(r.age_ns))),
        Span::styled(what, style::dim()),
    ])
}

pub fn render_oldest(f: &mut Frame, area: Rect, app: &App, rows: &[InflightRow]) {
    let shown: Vec<&InflightRow> = rows
        .iter()
        .filter(|r| app.filter.matches_inflight(r))
        .collect();
    let title = format!(" Oldest in flight ({}) ", shown.len());
    let lines: Vec<Line> = if shown.is_empty() {
        vec![Line::styled("nothing in flight", style::dim())]
    } else {
        shown.into_iter().map(inflight_line).collect()
    };
    let block = Block::bordered().title(Span::styled(title, style::title()));
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn bucket_label(upper_ns: u64) -> String {
    if upper_ns == u64::MAX {
        "more".to_string()
    } else {
        format!("<{}", fmt_age(upper_ns))
    }
}

/// One line per bucket from the first to the last non-empty one, bars scaled to the largest.
fn latency_lines(buckets: &[LatencyBucket], width: u16) -> Vec<Line<'static>> {
    let first = buckets.iter().position(|b| b.count > 0);
    let last = buckets.iter().rposition(|b| b.count > 0);
    let (Some(first), Some(last)) = (first, last) else {
        return vec![Line::styled("no completions yet", style::dim())];
    };
    let span = &buckets[first..=last];
    let max = span.iter().map(|b| b.count).max().unwrap_or(1).max(1);
    let bar_width = u64::from(width.saturating_sub(6 + 1 + 8).max(1));
    span.iter()
        .map(|b| {
            // At least one block for a non-empty bucket, so a rare outlier stays visible.
            let n = (b.count * bar_width).div_ceil(max);
            Line::from(vec![
                Span::raw(format!("{:>6} ", bucket_label(b.upper_ns))),
                Span::styled("█".repeat(n as usize), style::good()),
                Span::raw(format!(" {}", b.count)),
            ])
        })
        .collect()
}

pub fn render_latency(f: &mut Frame, area: Rect, buckets: &[LatencyBucket]) {
    let total: u64 = buckets.iter().map(|b| b.count).sum();
    let block = Block::bordered().title(Span::styled(
        format!(" Latency ({total} done) "),
        style::title(),
    ));
    let lines = latency_lines(buckets, block.inner(area).width);
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn where_text(f: &FindingView) -> String {
    let mut s = format!("dev {}", f.dev_id);
    if let Some(q) = f.q_id {
        s.push_str(&format!(" q{q}"));
    }
    if let Some(t) = f.tag {
        s.push_str(&format!(" t{t}"));
    }
    if !f.pids.is_empty() {
        let pids: Vec<String> = f.pids.iter().map(u32::to_string).collect();
        s.push_str(&format!(" pid {}", pids.join(",")));
    }
    if let Some(a) = f.age_ns {
        s.push_str(&format!(" for {}", fmt_age(a)));
    }
    s
}

/// The lines of one finding: class and where, the sentence, then the evidence.
pub fn finding_lines(f: &FindingView) -> Vec<Line<'static>> {
    let mut out = vec![
        Line::from(vec![
            Span::styled(f.class.clone(), style::severity_style(f.severity)),
            Span::raw(format!(" {}", where_text(f))),
        ]),
        Line::raw(format!("  {}", f.summary)),
    ];
    out.extend(
        f.evidence
            .iter()
            .map(|e| Line::styled(format!("   - {e}"), style::dim())),
    );
    if !f.hint.is_empty() {
        out.push(Line::styled(format!("   fix: {}", f.hint), style::warn()));
    }
    out
}

pub fn render_findings(
    f: &mut Frame,
    area: Rect,
    app: &App,
    findings: &[FindingView],
    undecided: &[String],
) {
    let shown: Vec<&FindingView> = findings
        .iter()
        .filter(|x| app.filter.matches_finding(x))
        .collect();
    let title = format!(" Findings ({}) ", shown.len());
    let mut lines: Vec<Line> = if shown.is_empty() && undecided.is_empty() {
        vec![Line::styled(
            "No findings: nothing looks stuck.",
            style::good(),
        )]
    } else {
        shown.into_iter().flat_map(finding_lines).collect()
    };
    lines.extend(
        undecided
            .iter()
            .map(|u| Line::styled(format!("could not decide: {u}"), style::warn())),
    );
    let block = Block::bordered().title(Span::styled(title, style::title()));
    let p = Paragraph::new(lines)
        .block(block)
        .wrap(Wrap { trim: false })
        .scroll((app.findings_scroll, 0));
    f.render_widget(p, area);
}

fn detail_head(d: &TagDetail) -> Vec<Line<'static>> {
    let age = d.age_ns.map(fmt_age).unwrap_or_else(|| "?".into());
    let mut io = match (d.last_request, d.op.is_empty()) {
        (true, true) => "no request seen".to_string(),
        (true, false) => format!("last request: op {}", d.op),
        (false, _) => format!("op {}", if d.op.is_empty() { "?" } else { &d.op }),
    };
    if let Some(s) = d.sector {
        io.push_str(&format!("  sector {s}"));
    }
    if let Some(b) = d.bytes {
        io.push_str(&format!("  {b} bytes"));
    }
    let owner = match d.owner_tid {
        0 => "owner thread ?".to_string(),
        t => format!("owner tid {t}"),
    };
    vec![
        Line::from(vec![
            Span::styled(
                format!("{} ", d.state.name()),
                style::cell_style(d.state, d.age_ns, false),
            ),
            Span::raw(format!("for {age}  {owner}")),
        ]),
        Line::raw(io),
    ]
    .into_iter()
    .chain(d.driver.iter().map(|l| Line::raw(l.clone())))
    .chain([Line::raw("")])
    .collect()
}

fn history_lines(d: &TagDetail) -> Vec<Line<'static>> {
    let mut out = vec![Line::styled(
        "Event history (oldest first):",
        style::title(),
    )];
    if let Some(n) = &d.history_note {
        out.push(Line::styled(n.clone(), style::warn()));
    }
    if d.history.is_empty() {
        out.push(Line::styled(
            "  no events seen for this tag yet",
            style::dim(),
        ));
    }
    let t0 = d.history.first().map(|h| h.ts_ns).unwrap_or(0);
    out.extend(d.history.iter().map(|h| {
        let tid = if h.tid == 0 {
            "?".to_string()
        } else {
            h.tid.to_string()
        };
        Line::from(vec![
            Span::styled(
                format!("  +{:<8}", fmt_age(h.ts_ns.saturating_sub(t0))),
                style::dim(),
            ),
            Span::raw(format!("tid {tid:<7} {}", h.text)),
        ])
    }));
    out
}

/// Detail of the selected tag (left) and the findings that name it (right).
pub fn render_detail(
    f: &mut Frame,
    area: Rect,
    app: &App,
    detail: Option<&TagDetail>,
    findings: &[FindingView],
) {
    let Some(d) = detail else {
        let block = Block::bordered().title(" Tag ");
        f.render_widget(Paragraph::new("collecting...").block(block), area);
        return;
    };
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(area);
    let title = Span::styled(format!(" q{} t{} ", d.q_id, d.tag), style::title());
    let mut lines = detail_head(d);
    lines.extend(history_lines(d));
    // Keep the newest events visible when the history is longer than the pane.
    let inner_h = left.height.saturating_sub(2) as usize;
    let skip = lines.len().saturating_sub(inner_h.max(1));
    let p = Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>())
        .block(Block::bordered().title(title));
    f.render_widget(p, left);
    let mine: Vec<FindingView> = findings
        .iter()
        .filter(|x| x.names_tag(d.q_id, d.tag) || x.tag.is_none())
        .cloned()
        .collect();
    render_findings(f, right, app, &mine, &[]);
}

fn health_cell(h: &Health) -> Span<'static> {
    match h {
        Health::Ok => Span::styled("ok", style::good()),
        Health::Findings(c) => Span::styled(c.join(", "), style::bad()),
        Health::Unknown(why) => Span::styled(format!("? {why}"), style::warn()),
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "?".into())
}

pub fn render_device_list(f: &mut Frame, area: Rect, app: &App, devices: &[DeviceRow]) {
    let header = Row::new([
        "DEV",
        "STATE",
        "SERVER",
        "QUEUES",
        "DEPTH",
        "IN-FLIGHT",
        "HEALTH",
    ])
    .style(style::title());
    let rows = devices.iter().map(|d| {
        Row::new(vec![
            Span::raw(format!("ublkb{}", d.dev_id)),
            dev_state_span(d.dev_state.as_deref()),
            Span::raw(opt(d.server_pid)),
            Span::raw(d.nr_queues.to_string()),
            Span::raw(d.queue_depth.to_string()),
            Span::raw(opt(d.in_flight)),
            health_cell(&d.health),
        ])
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Fill(1),
    ];
    let title = format!(" ublk devices ({}) - Enter opens one ", devices.len());
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(style::selected())
        .block(Block::bordered().title(Span::styled(title, style::title())));
    if devices.is_empty() {
        let msg =
            "No ublk devices. Start a server (e.g. `ublk-server run null`); this list refreshes.";
        f.render_widget(table, area);
        let inner = Block::bordered().inner(area);
        let [_, line] =
            Layout::vertical([Constraint::Length(2), Constraint::Length(1)]).areas(inner);
        f.render_widget(Paragraph::new(Span::styled(msg, style::dim())), line);
        return;
    }
    let mut state = TableState::default().with_selected(Some(app.device_row));
    f.render_stateful_widget(table, area, &mut state);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_bars_skip_empty_ends_and_keep_outliers_visible() {
        let b = |upper_ns, count| LatencyBucket { upper_ns, count };
        let lines = latency_lines(
            &[
                b(10_000, 0),
                b(100_000, 1000),
                b(1_000_000, 1),
                b(u64::MAX, 0),
            ],
            40,
        );
        assert_eq!(lines.len(), 2);
        let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        assert!(text[0].starts_with("<100us "), "{text:?}");
        assert!(text[1].contains("█ 1"), "outlier has a bar: {text:?}");
    }

    #[test]
    fn rates_are_short() {
        assert_eq!(fmt_rate(999), "999");
        assert_eq!(fmt_rate(12_345), "12k");
        assert_eq!(fmt_rate(23_000_000), "23M");
    }
}
