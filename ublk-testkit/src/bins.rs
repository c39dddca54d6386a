//! The project's binaries: in the guest `$UBLK_TEST_BIN_DIR/<name>`, on the host the cargo
//! build next to the calling test crate's own binary.
use std::path::{Path, PathBuf};

/// `name`, given `own`, the path of a binary of the calling crate (its
/// `env!("CARGO_BIN_EXE_<bin>")`: a library cannot know it).
pub fn project_bin(name: &str, own: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("UBLK_TEST_BIN_DIR") {
        return PathBuf::from(d).join(name);
    }
    let own = Path::new(own);
    if own.file_name().is_some_and(|n| n == name) {
        return own.to_path_buf();
    }
    // Other crates' binaries: the same target directory.
    own.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_binaries_are_found_next_to_the_callers_own() {
        if std::env::var_os("UBLK_TEST_BIN_DIR").is_some() {
            return;
        }
        let own = "/t/release/ublk-trace";
        assert_eq!(project_bin("ublk-trace", own), PathBuf::from(own));
        assert_eq!(
            project_bin("ublk-server", own),
            PathBuf::from("/t/release/ublk-server")
        );
    }
}
