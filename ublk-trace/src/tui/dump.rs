//! Render one frame without a terminal: for `watch --dump-screen WxH`, the docs capture and the
//! rendering tests. Uses ratatui's `TestBackend`, so the text is exactly what a terminal shows.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::layout::Rect;

use super::app::App;
use super::draw;
use super::view_model::{DeviceRow, ViewModel};

/// Draw one frame of `width` x `height` and return it as text (one line per row).
/// The grid shape is taken from the same layout first, so the cursor is where a user would see it.
pub fn render_text(
    app: &mut App,
    vm: Option<&ViewModel>,
    devices: &[DeviceRow],
    width: u16,
    height: u16,
) -> String {
    if let Some(vm) = vm {
        app.set_grid_shape(draw::grid_shape(Rect::new(0, 0, width, height), vm));
    }
    // TestBackend's error type is Infallible: drawing into memory cannot fail.
    let Ok(mut term) = Terminal::new(TestBackend::new(width, height));
    let Ok(_) = term.draw(|f| draw::ui(f, app, vm, devices));
    draw::buffer_text(term.backend().buffer())
}

/// Parse `WxH` (e.g. `80x24`); anything smaller than 20x8 cannot show a device.
pub fn parse_size(s: &str) -> Option<(u16, u16)> {
    let (w, h) = s.split_once(['x', 'X'])?;
    let (w, h) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    (w >= 20 && h >= 8).then_some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_tiny_ones_are_refused() {
        assert_eq!(parse_size("80x24"), Some((80, 24)));
        assert_eq!(parse_size("200X50"), Some((200, 50)));
        assert_eq!(parse_size("10x5"), None);
        assert_eq!(parse_size("80"), None);
    }
}
