//! Everything the tracer needs to know about the running kernel, gathered once.

use super::btf::BtfError;
use super::kallsyms::{self, Kallsyms, Resolved};
use super::offsets::{self, Resolution};

/// The running kernel as seen at start-up.
pub struct Facts {
    /// `uname -r`.
    pub release: String,
    /// Every probe concept resolved against /proc/kallsyms.
    pub concepts: Vec<Resolved>,
    /// ublk_drv symbols are listed in kallsyms (the module is loaded).
    pub ublk_loaded: bool,
    /// BTF offsets; `None` with the reason when vmlinux BTF is unreadable.
    pub offsets: Result<Resolution, BtfError>,
    /// `/sys/kernel/btf/ublk_drv` was read.
    pub module_btf: bool,
}

impl Facts {
    pub fn gather() -> Self {
        // The kernel formats /proc/kallsyms (~200k lines) while we parse BTF: two CPUs' worth
        // of start-up that would otherwise run one after the other (seconds in a TCG guest).
        let (ks, (offsets, module_btf)) = std::thread::scope(|s| {
            let ks = s.spawn(|| {
                Kallsyms::load_shared().unwrap_or_else(|e| {
                    log::warn!("read {}: {e}", kallsyms::KALLSYMS_PATH);
                    std::sync::Arc::new(Kallsyms::default())
                })
            });
            let btf = match offsets::load_kernel_btf() {
                Ok((btf, module)) => (Ok(offsets::resolve(&btf)), module),
                Err(e) => (Err(e), false),
            };
            (ks.join().unwrap_or_default(), btf)
        });
        Self {
            release: kernel_release(),
            concepts: kallsyms::resolve_all(&ks),
            ublk_loaded: ks.has_module("ublk_drv"),
            offsets,
            module_btf,
        }
    }

    /// The resolution of concept `key` (see [`kallsyms::CONCEPTS`]).
    pub fn concept(&self, key: &str) -> Option<&Resolved> {
        self.concepts.iter().find(|c| c.key == key)
    }
}

/// `uname -r`, or "unknown".
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
