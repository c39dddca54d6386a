//! Man pages and shell completions from a binary's clap definitions, for `cargo xtask dist`
//! (feature `gen`). Each binary exposes this through a hidden `__generate DIR` subcommand, so
//! the pages describe exactly the flags the shipped binary parses.
//!
//! Layout under `DIR` (what the tarball and the .deb install under `share/` / `/usr/share/`):
//! `man/man1/<bin>.1`, `man/man1/<bin>-<sub>.1`, `bash-completion/completions/<bin>`,
//! `zsh/site-functions/_<bin>`, `fish/vendor_completions.d/<bin>.fish`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, fs, io};

use clap::Command;
use clap_complete::Shell;

/// Write every man page and completion of `cmd` under `dir`; returns the files written.
pub fn generate(cmd: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let bin = cmd.get_name().to_string();
    let man_dir = dir.join("man/man1");
    fs::create_dir_all(&man_dir)?;
    let mut built = cmd.clone().disable_help_subcommand(true);
    built.build();
    write_man_pages(&built, &man_dir, &mut written)?;
    for (shell, sub, name) in [
        (Shell::Bash, "bash-completion/completions", bin.clone()),
        (Shell::Zsh, "zsh/site-functions", format!("_{bin}")),
        (
            Shell::Fish,
            "fish/vendor_completions.d",
            format!("{bin}.fish"),
        ),
    ] {
        let d = dir.join(sub);
        fs::create_dir_all(&d)?;
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), bin.as_str(), &mut buf);
        let path = d.join(name);
        fs::write(&path, buf)?;
        written.push(path);
    }
    Ok(written)
}

fn write_man_pages(cmd: &Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let mut roff = Vec::new();
    man.render(&mut roff)?;
    let text = exit_status_section(&String::from_utf8_lossy(&roff));
    let path = dir.join(man.get_filename());
    let mut f = fs::File::create(&path)?;
    f.write_all(text.as_bytes())?;
    written.push(path);
    Ok(())
}

/// clap_mangen puts `after_help` (our exit codes) under a section called EXTRA and fills its
/// lines into one paragraph; man pages call it EXIT STATUS, and the code table must keep its
/// lines.
pub fn exit_status_section(roff: &str) -> String {
    let Some(start) = roff.find("\n.SH EXTRA\n") else {
        return roff.to_string();
    };
    let body_start = start + "\n.SH EXTRA\n".len();
    let body_end = roff[body_start..]
        .find("\n.SH ")
        .map_or(roff.len(), |i| body_start + i);
    let body: Vec<&str> = roff[body_start..body_end]
        .lines()
        .filter(|l| !l.starts_with("Exit status:"))
        .collect();
    format!(
        "{}\n.SH \"EXIT STATUS\"\n.nf\n{}\n.fi{}",
        &roff[..start],
        body.join("\n"),
        &roff[body_end..]
    )
}
