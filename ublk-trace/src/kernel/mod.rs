//! Facts about the running kernel, looked up at run time and never guessed:
//! - [`kallsyms`]: the real names (suffixes included) of the ublk functions, per concept.
//! - [`btf`]: a small BTF reader (member offsets, enums, function parameters).
//! - [`offsets`]: the eBPF programs' offsets global, filled from BTF.
//! - [`tracefs`]: tracefs mount and tracepoint `format` files.
//! - [`facts`]: all of the above gathered once at start-up.
//! - [`ctrl`]: read-only `/dev/ublk-control` queries (GET_FEATURES, GET_DEV_INFO) with deadlines.
pub mod btf;
pub mod ctrl;
pub mod facts;
pub mod kallsyms;
pub mod offsets;
pub mod tracefs;
