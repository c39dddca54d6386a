//! `--color auto|always|never` and `NO_COLOR` (no-color.org), for the commands that print
//! colour: `watch` (the TUI) and `doctor` (its status tags).
use std::ffi::OsString;
use std::io::IsTerminal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour when stdout is a terminal and NO_COLOR is unset or empty.
    #[default]
    Auto,
    /// Colour even when NO_COLOR is set or stdout is not a terminal.
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour, given whether stdout is a terminal and the value of `NO_COLOR`.
    /// An explicit `always` wins over `NO_COLOR`, as no-color.org asks of a flag.
    pub fn resolve(self, stdout_is_tty: bool, no_color: Option<OsString>) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => stdout_is_tty && no_color.is_none_or(|v| v.is_empty()),
        }
    }
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ColorArgs {
    /// When to use colour: auto (stdout is a terminal and NO_COLOR is unset or empty),
    /// always, never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

impl ColorArgs {
    /// Resolved against this process's stdout and environment.
    pub fn enabled(&self) -> bool {
        self.color.resolve(
            std::io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::ColorChoice::{Always, Auto, Never};

    #[test]
    fn no_color_turns_auto_off_but_not_always() {
        assert!(Auto.resolve(true, None));
        assert!(
            Auto.resolve(true, Some("".into())),
            "empty NO_COLOR is unset"
        );
        assert!(!Auto.resolve(true, Some("1".into())));
        assert!(!Auto.resolve(false, None), "not a terminal");
        assert!(Always.resolve(false, Some("1".into())));
        assert!(!Never.resolve(true, None));
    }
}
