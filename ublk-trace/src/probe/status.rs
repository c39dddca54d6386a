//! What the tracer attached, for `doctor`, the recording header and the TUI.

use serde::{Deserialize, Serialize};

/// One eBPF program and where it went.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// Program name in the eBPF object (`ctrl_enter`, `block_rq_issue`, ...).
    pub program: String,
    /// Kernel function or tracepoint it was attached to (exact kallsyms name).
    pub target: String,
    pub attached: bool,
    /// Without it the core event stream has a hole (commands or requests go unseen).
    pub required: bool,
    /// Why it is not attached (missing function, attach error), empty when attached.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}
