//! TUI state and key handling, with no terminal: `App::on_key(key) -> Action` (bpftop's
//! `app.rs`; tokio-console's `View::update_input` returning an intent).
//!
//! The event loop (`cmd::watch`) does the I/O an [`Action`] asks for (open a device, switch the
//! event path on for one tag); the drawing code reads `App` and a view model and changes nothing.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::filter::Filter;

/// Which screen has the keyboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// All ublk devices with a health column (`watch` without a device).
    DeviceList,
    /// Tag grid of one device, with the side panels.
    Grid,
    /// Event history of the selected tag.
    Detail,
    /// Typing a filter (`/`).
    Filter,
    /// Key help overlay (`?`).
    Help,
}

/// What the event loop should do after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Key ignored: nothing changed.
    None,
    /// Something on screen changed: draw soon.
    Redraw,
    Quit,
    /// Start watching this device (from the device list).
    OpenDevice(u32),
    /// Back to the device list.
    CloseDevice,
    /// The detail view opened for this tag: collect its event history.
    SelectTag {
        q_id: u16,
        tag: u16,
    },
    /// The detail view closed.
    UnselectTag,
}

/// The selected tag: index into the view model's queues (not the q_id) and the tag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub q_idx: usize,
    pub tag: u16,
}

/// Grid geometry the cursor moves over, set by the loop from the terminal size and the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GridShape {
    /// Tags per queue, by queue index.
    pub depths: Vec<u16>,
    /// The queue id of each queue index.
    pub q_ids: Vec<u16>,
    /// Tag cells per grid line.
    pub cols: u16,
}

#[derive(Debug, Clone)]
pub struct App {
    pub mode: Mode,
    /// The mode Help or Filter returns to.
    return_mode: Mode,
    pub paused: bool,
    pub cursor: Cursor,
    shape: GridShape,
    /// Applied filter.
    pub filter: Filter,
    /// Text being typed in Filter mode.
    pub filter_input: String,
    /// Device list: ids in display order and the selected row.
    device_ids: Vec<u32>,
    pub device_row: usize,
    /// The device screen was opened from the list (Backspace goes back).
    from_list: bool,
    /// Lines scrolled in the findings panel.
    pub findings_scroll: u16,
}

impl App {
    /// Watching one device.
    pub fn for_device() -> Self {
        Self::new(Mode::Grid, false)
    }

    /// Starting at the device list.
    pub fn for_device_list() -> Self {
        Self::new(Mode::DeviceList, true)
    }

    fn new(mode: Mode, from_list: bool) -> Self {
        Self {
            mode,
            return_mode: mode,
            paused: false,
            cursor: Cursor::default(),
            shape: GridShape::default(),
            filter: Filter::default(),
            filter_input: String::new(),
            device_ids: Vec::new(),
            device_row: 0,
            from_list,
            findings_scroll: 0,
        }
    }

    /// The mode under an overlay (Help/Filter): which screen to draw below it.
    pub fn base_mode(&self) -> Mode {
        match self.mode {
            Mode::Help | Mode::Filter => self.return_mode,
            m => m,
        }
    }

    /// Start in the detail view (`watch --detail Q:T`): the loop selects the tag itself.
    pub fn start_in_detail(&mut self) {
        self.mode = Mode::Detail;
    }

    pub fn set_grid_shape(&mut self, shape: GridShape) {
        self.shape = shape;
        self.clamp_cursor();
    }

    pub fn grid_shape(&self) -> &GridShape {
        &self.shape
    }

    pub fn set_devices(&mut self, ids: Vec<u32>) {
        self.device_ids = ids;
        self.device_row = self.device_row.min(self.device_ids.len().saturating_sub(1));
    }

    /// (q_id, tag) under the cursor, if the device has any tags.
    pub fn selected(&self) -> Option<(u16, u16)> {
        let depth = *self.shape.depths.get(self.cursor.q_idx)?;
        let q_id = *self.shape.q_ids.get(self.cursor.q_idx)?;
        (self.cursor.tag < depth).then_some((q_id, self.cursor.tag))
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        // Release/Repeat reports (kitty protocol) would double every key.
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        match self.mode {
            Mode::Filter => self.on_filter_key(key),
            Mode::Help => self.on_help_key(key),
            Mode::DeviceList => self.on_list_key(key),
            Mode::Grid => self.on_grid_key(key),
            Mode::Detail => self.on_detail_key(key),
        }
    }

    /// Keys every non-typing mode shares; `None` when the key is not one of them.
    fn common_key(&mut self, key: KeyEvent) -> Option<Action> {
        Some(match key.code {
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Char('?') => {
                self.return_mode = self.mode;
                self.mode = Mode::Help;
                Action::Redraw
            }
            KeyCode::Char('p') => {
                self.paused = !self.paused;
                Action::Redraw
            }
            KeyCode::Char('/') => {
                self.return_mode = self.mode;
                self.filter_input = self.filter.text().to_string();
                self.mode = Mode::Filter;
                Action::Redraw
            }
            KeyCode::PageDown => {
                self.findings_scroll = self.findings_scroll.saturating_add(5);
                Action::Redraw
            }
            KeyCode::PageUp => {
                self.findings_scroll = self.findings_scroll.saturating_sub(5);
                Action::Redraw
            }
            _ => return None,
        })
    }

    fn on_grid_key(&mut self, key: KeyEvent) -> Action {
        if let Some(a) = self.common_key(key) {
            return a;
        }
        let moved = match key.code {
            KeyCode::Left | KeyCode::Char('h') => self.move_left(),
            KeyCode::Right | KeyCode::Char('l') => self.move_right(),
            KeyCode::Up | KeyCode::Char('k') => self.move_up(),
            KeyCode::Down | KeyCode::Char('j') => self.move_down(),
            KeyCode::Home | KeyCode::Char('g') => self.set_cursor(Cursor::default()),
            KeyCode::End | KeyCode::Char('G') => self.move_to_end(),
            KeyCode::Enter => return self.open_detail(),
            KeyCode::Backspace if self.from_list => {
                self.mode = Mode::DeviceList;
                return Action::CloseDevice;
            }
            _ => return Action::None,
        };
        if moved { Action::Redraw } else { Action::None }
    }

    fn on_detail_key(&mut self, key: KeyEvent) -> Action {
        if let Some(a) = self.common_key(key) {
            return a;
        }
        match key.code {
            KeyCode::Enter
            | KeyCode::Esc
            | KeyCode::Backspace
            | KeyCode::Left
            | KeyCode::Char('h') => {
                self.mode = Mode::Grid;
                Action::UnselectTag
            }
            _ => Action::None,
        }
    }

    fn on_list_key(&mut self, key: KeyEvent) -> Action {
        if let Some(a) = self.common_key(key) {
            return a;
        }
        let last = self.device_ids.len().saturating_sub(1);
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.device_row = self.device_row.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.device_row = (self.device_row + 1).min(last),
            KeyCode::Enter => {
                let Some(&id) = self.device_ids.get(self.device_row) else {
                    return Action::None;
                };
                self.mode = Mode::Grid;
                self.cursor = Cursor::default();
                return Action::OpenDevice(id);
            }
            _ => return Action::None,
        }
        Action::Redraw
    }

    fn on_help_key(&mut self, key: KeyEvent) -> Action {
        match key.code {
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Char('?') | KeyCode::Esc | KeyCode::Enter | KeyCode::Backspace => {
                self.mode = self.return_mode;
                Action::Redraw
            }
            _ => Action::None,
        }
    }

    /// Typing mode: letters are text, so `q` does not quit here (Ctrl-C still does).
    fn on_filter_key(&mut self, key: KeyEvent) -> Action {
        match key.code {
            KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                self.filter_input.clear()
            }
            KeyCode::Char(c) => self.filter_input.push(c),
            KeyCode::Backspace => {
                self.filter_input.pop();
            }
            KeyCode::Enter => {
                self.filter = Filter::parse(&self.filter_input);
                self.mode = self.return_mode;
            }
            // Esc only cancels typing: a split arrow key (`ESC [ C`) must never do harm.
            KeyCode::Esc => self.mode = self.return_mode,
            _ => return Action::None,
        }
        Action::Redraw
    }

    fn open_detail(&mut self) -> Action {
        match self.selected() {
            Some((q_id, tag)) => {
                self.mode = Mode::Detail;
                Action::SelectTag { q_id, tag }
            }
            None => Action::None,
        }
    }

    fn depth(&self, q_idx: usize) -> u16 {
        self.shape.depths.get(q_idx).copied().unwrap_or(0)
    }

    fn cols(&self) -> u16 {
        self.shape.cols.max(1)
    }

    /// Returns whether the cursor moved.
    fn set_cursor(&mut self, c: Cursor) -> bool {
        let old = self.cursor;
        self.cursor = c;
        self.clamp_cursor();
        old != self.cursor
    }

    fn clamp_cursor(&mut self) {
        let nq = self.shape.depths.len();
        if nq == 0 {
            self.cursor = Cursor::default();
            return;
        }
        self.cursor.q_idx = self.cursor.q_idx.min(nq - 1);
        self.cursor.tag = self
            .cursor
            .tag
            .min(self.depth(self.cursor.q_idx).saturating_sub(1));
    }

    fn move_right(&mut self) -> bool {
        let Cursor { q_idx, tag } = self.cursor;
        if tag + 1 < self.depth(q_idx) {
            self.set_cursor(Cursor {
                q_idx,
                tag: tag + 1,
            })
        } else if q_idx + 1 < self.shape.depths.len() {
            self.set_cursor(Cursor {
                q_idx: q_idx + 1,
                tag: 0,
            })
        } else {
            false
        }
    }

    fn move_left(&mut self) -> bool {
        let Cursor { q_idx, tag } = self.cursor;
        if tag > 0 {
            self.set_cursor(Cursor {
                q_idx,
                tag: tag - 1,
            })
        } else if q_idx > 0 {
            let last = self.depth(q_idx - 1).saturating_sub(1);
            self.set_cursor(Cursor {
                q_idx: q_idx - 1,
                tag: last,
            })
        } else {
            false
        }
    }

    /// One grid line down; from a queue's last line to the same column of the next queue.
    fn move_down(&mut self) -> bool {
        let Cursor { q_idx, tag } = self.cursor;
        let cols = self.cols();
        let depth = self.depth(q_idx);
        if u32::from(tag) + u32::from(cols) < u32::from(depth) {
            return self.set_cursor(Cursor {
                q_idx,
                tag: tag + cols,
            });
        }
        // Same column on the next grid line: the next queue, unless this line is not the last.
        let last_line_start = depth.saturating_sub(1) / cols * cols;
        if tag < last_line_start {
            return self.set_cursor(Cursor {
                q_idx,
                tag: depth.saturating_sub(1),
            });
        }
        if q_idx + 1 < self.shape.depths.len() {
            return self.set_cursor(Cursor {
                q_idx: q_idx + 1,
                tag: tag % cols,
            });
        }
        false
    }

    fn move_up(&mut self) -> bool {
        let Cursor { q_idx, tag } = self.cursor;
        let cols = self.cols();
        if tag >= cols {
            return self.set_cursor(Cursor {
                q_idx,
                tag: tag - cols,
            });
        }
        if q_idx == 0 {
            return false;
        }
        let prev_depth = self.depth(q_idx - 1);
        let last_line_start = prev_depth.saturating_sub(1) / cols * cols;
        self.set_cursor(Cursor {
            q_idx: q_idx - 1,
            tag: last_line_start + tag % cols,
        })
    }

    fn move_to_end(&mut self) -> bool {
        let q_idx = self.shape.depths.len().saturating_sub(1);
        self.set_cursor(Cursor {
            q_idx,
            tag: self.depth(q_idx).saturating_sub(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn app_with(depths: &[u16], cols: u16) -> App {
        let mut app = App::for_device();
        app.set_grid_shape(GridShape {
            depths: depths.to_vec(),
            q_ids: (0..depths.len() as u16).collect(),
            cols,
        });
        app
    }

    #[test]
    fn arrows_and_hjkl_move_the_same_way() {
        let mut a = app_with(&[128], 32);
        assert_eq!(a.on_key(key(KeyCode::Right)), Action::Redraw);
        a.on_key(key(KeyCode::Char('l')));
        a.on_key(key(KeyCode::Down));
        a.on_key(key(KeyCode::Char('j')));
        assert_eq!(a.selected(), Some((0, 2 + 64)));
        a.on_key(key(KeyCode::Char('k')));
        a.on_key(key(KeyCode::Char('h')));
        assert_eq!(a.selected(), Some((0, 1 + 32)));
    }

    #[test]
    fn down_from_a_queues_last_line_enters_the_next_queue_same_column() {
        let mut a = app_with(&[64, 64], 32);
        a.set_cursor(Cursor { q_idx: 0, tag: 37 });
        a.on_key(key(KeyCode::Down));
        assert_eq!(a.selected(), Some((1, 5)));
        a.on_key(key(KeyCode::Up));
        assert_eq!(a.selected(), Some((0, 37)));
    }

    #[test]
    fn moving_past_the_edges_does_not_wrap_or_panic() {
        let mut a = app_with(&[4], 32);
        assert_eq!(a.on_key(key(KeyCode::Left)), Action::None);
        assert_eq!(a.on_key(key(KeyCode::Up)), Action::None);
        a.on_key(key(KeyCode::End));
        assert_eq!(a.selected(), Some((0, 3)));
        assert_eq!(a.on_key(key(KeyCode::Right)), Action::None);
        assert_eq!(a.on_key(key(KeyCode::Down)), Action::None);
    }

    #[test]
    fn short_last_line_moves_down_to_the_last_tag() {
        // depth 40 with 32 per line: tag 20 has no tag 52 below it, so go to tag 39.
        let mut a = app_with(&[40, 8], 32);
        a.set_cursor(Cursor { q_idx: 0, tag: 20 });
        a.on_key(key(KeyCode::Down));
        assert_eq!(a.selected(), Some((0, 39)));
        a.on_key(key(KeyCode::Down));
        assert_eq!(a.selected(), Some((1, 7)));
    }

    #[test]
    fn enter_opens_detail_of_the_selected_tag_and_back_closes_it() {
        let mut a = app_with(&[8, 8], 4);
        a.on_key(key(KeyCode::Down));
        a.on_key(key(KeyCode::Down));
        a.on_key(key(KeyCode::Right));
        assert_eq!(
            a.on_key(key(KeyCode::Enter)),
            Action::SelectTag { q_id: 1, tag: 1 }
        );
        assert_eq!(a.mode, Mode::Detail);
        assert_eq!(a.on_key(key(KeyCode::Esc)), Action::UnselectTag);
        assert_eq!(a.mode, Mode::Grid);
    }

    #[test]
    fn q_and_ctrl_c_quit_but_bare_esc_never_does() {
        let mut a = app_with(&[8], 8);
        assert_eq!(a.on_key(key(KeyCode::Esc)), Action::None);
        assert_eq!(a.on_key(key(KeyCode::Char('q'))), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        a.on_key(key(KeyCode::Char('/')));
        assert_eq!(a.on_key(ctrl_c), Action::Quit);
    }

    #[test]
    fn filter_mode_types_q_as_text_and_enter_applies() {
        let mut a = app_with(&[8], 8);
        a.on_key(key(KeyCode::Char('/')));
        assert_eq!(a.mode, Mode::Filter);
        for c in "q1 x".chars() {
            assert_eq!(a.on_key(key(KeyCode::Char(c))), Action::Redraw);
        }
        a.on_key(key(KeyCode::Backspace));
        a.on_key(key(KeyCode::Backspace));
        a.on_key(key(KeyCode::Enter));
        assert_eq!(a.mode, Mode::Grid);
        assert_eq!(a.filter.text(), "q1");
    }

    #[test]
    fn esc_in_filter_mode_keeps_the_old_filter() {
        let mut a = app_with(&[8], 8);
        a.filter = Filter::parse("busy");
        a.on_key(key(KeyCode::Char('/')));
        a.on_key(key(KeyCode::Char('z')));
        a.on_key(key(KeyCode::Esc));
        assert_eq!(a.filter.text(), "busy");
        assert_eq!(a.mode, Mode::Grid);
    }

    #[test]
    fn help_overlays_the_current_screen_and_returns_to_it() {
        let mut a = app_with(&[8], 8);
        a.on_key(key(KeyCode::Enter));
        a.on_key(key(KeyCode::Char('?')));
        assert_eq!(a.mode, Mode::Help);
        assert_eq!(a.base_mode(), Mode::Detail);
        a.on_key(key(KeyCode::Char('x')));
        assert_eq!(a.mode, Mode::Help);
        a.on_key(key(KeyCode::Char('?')));
        assert_eq!(a.mode, Mode::Detail);
    }

    #[test]
    fn p_toggles_pause() {
        let mut a = app_with(&[8], 8);
        a.on_key(key(KeyCode::Char('p')));
        assert!(a.paused);
        a.on_key(key(KeyCode::Char('p')));
        assert!(!a.paused);
    }

    #[test]
    fn device_list_enter_opens_the_selected_device_and_backspace_returns() {
        let mut a = App::for_device_list();
        a.set_devices(vec![0, 3, 7]);
        a.on_key(key(KeyCode::Down));
        a.on_key(key(KeyCode::Char('j')));
        a.on_key(key(KeyCode::Char('j')));
        assert_eq!(a.on_key(key(KeyCode::Enter)), Action::OpenDevice(7));
        assert_eq!(a.mode, Mode::Grid);
        assert_eq!(a.on_key(key(KeyCode::Backspace)), Action::CloseDevice);
        assert_eq!(a.mode, Mode::DeviceList);
    }

    #[test]
    fn empty_device_list_enter_does_nothing() {
        let mut a = App::for_device_list();
        assert_eq!(a.on_key(key(KeyCode::Enter)), Action::None);
        assert_eq!(a.mode, Mode::DeviceList);
    }

    #[test]
    fn backspace_in_a_directly_opened_device_does_not_leave_it() {
        let mut a = app_with(&[8], 8);
        assert_eq!(a.on_key(key(KeyCode::Backspace)), Action::None);
        assert_eq!(a.mode, Mode::Grid);
    }

    #[test]
    fn key_release_events_are_ignored() {
        let mut a = app_with(&[8], 8);
        let mut k = key(KeyCode::Char('q'));
        k.kind = KeyEventKind::Release;
        assert_eq!(a.on_key(k), Action::None);
    }

    #[test]
    fn shrinking_device_clamps_the_cursor() {
        let mut a = app_with(&[128, 128], 32);
        a.on_key(key(KeyCode::End));
        a.set_grid_shape(GridShape {
            depths: vec![16],
            q_ids: vec![0],
            cols: 16,
        });
        assert_eq!(a.selected(), Some((0, 15)));
    }
}
