//! `ublk_io.flags`: the `UBLK_IO_FLAG_*` bits are `#define`s in drivers/block/ublk_drv.c, so
//! BTF does not carry them. They are taken from the kernel source per version, and the table
//! says which versions each row was checked against; a kernel outside every row is decoded
//! with the nearest older row and the snapshot says so.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// One range of kernels with the same flag values.
#[derive(Debug, Clone, Copy)]
pub struct FlagRow {
    /// First and last (major, minor) this row covers.
    pub from: (u32, u32),
    pub to: (u32, u32),
    /// What the values were checked against.
    pub verified: &'static str,
    pub bits: &'static [(&'static str, u32)],
}

pub const ACTIVE: &str = "ACTIVE";
pub const OWNED_BY_SRV: &str = "OWNED_BY_SRV";
pub const ABORTED: &str = "ABORTED";
pub const NEED_GET_DATA: &str = "NEED_GET_DATA";
pub const AUTO_BUF_REG: &str = "AUTO_BUF_REG";
pub const CANCELED: &str = "CANCELED";

/// The values from 6.17 on (AUTO_BUF_REG, no ABORTED): the 7.x driver kept them.
const BITS_SINCE_6_17: &[(&str, u32)] = &[
    (ACTIVE, 0x01),
    (OWNED_BY_SRV, 0x02),
    (NEED_GET_DATA, 0x08),
    (AUTO_BUF_REG, 0x10),
    (CANCELED, 0x8000_0000),
];

/// Oldest first.
pub const TABLE: &[FlagRow] = &[
    FlagRow {
        from: (6, 1),
        to: (6, 1),
        verified: "ublk_drv.c of Debian's linux-source-6.1 (6.1.176)",
        bits: &[
            (ACTIVE, 0x01),
            (OWNED_BY_SRV, 0x02),
            (ABORTED, 0x04),
            (NEED_GET_DATA, 0x08),
            (CANCELED, 0x8000_0000),
        ],
    },
    // 6.2-6.11 are left out: not checked.
    FlagRow {
        from: (6, 12),
        to: (6, 15),
        verified: "ublk_drv.c of v6.12 and of the 6.15 zero-copy series (ABORTED still 0x04)",
        bits: &[
            (ACTIVE, 0x01),
            (OWNED_BY_SRV, 0x02),
            (ABORTED, 0x04),
            (NEED_GET_DATA, 0x08),
            (CANCELED, 0x8000_0000),
        ],
    },
    // 6.16 (AUTO_BUF_REG added, ABORTED dropped around it) is left out: not checked.
    FlagRow {
        from: (6, 17),
        to: (6, 18),
        verified: "ublk_drv.c of 6.17 (PER_IO_DAEMON, io->task) and 7.x agree; 6.18 lies between",
        bits: BITS_SINCE_6_17,
    },
    FlagRow {
        from: (7, 0),
        to: (7, 3),
        verified: "ublk_drv.c of 7.x with UBLK_F_BATCH_IO (ub->queues[], per-io lock)",
        bits: BITS_SINCE_6_17,
    },
];

/// (major, minor) of a release string such as `6.12.95+deb12-amd64`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Which row decodes this kernel, and whether the kernel is inside it.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagsTable {
    /// `from-to` of the row used, e.g. `6.12-6.15`.
    pub row: String,
    pub verified: String,
    /// False when the running kernel is outside every row (decoded with the nearest older
    /// one, or the oldest): treat unexpected names with care.
    pub in_table: bool,
}

/// Choose the row for `release`.
pub fn row_for(release: &str) -> (&'static FlagRow, bool) {
    let v = parse_release(release);
    let inside = v.and_then(|v| TABLE.iter().find(|r| r.from <= v && v <= r.to));
    if let Some(r) = inside {
        return (r, true);
    }
    let older = v.and_then(|v| TABLE.iter().rev().find(|r| r.from <= v));
    (older.unwrap_or(&TABLE[0]), false)
}

pub fn describe(row: &FlagRow, in_table: bool) -> FlagsTable {
    FlagsTable {
        row: format!("{}.{}-{}.{}", row.from.0, row.from.1, row.to.0, row.to.1),
        verified: row.verified.to_string(),
        in_table,
    }
}

/// `ublk_io.flags` decoded: the raw value, the names of the known bits, the rest as a number.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoFlags {
    pub raw: u32,
    /// Borrowed from the table: a per-tag copy costs no string allocation.
    pub names: Vec<Cow<'static, str>>,
    /// Bits this kernel's row does not name (0 when none).
    pub unknown: u32,
}

impl IoFlags {
    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

pub fn decode(row: &FlagRow, raw: u32) -> IoFlags {
    let mut known = 0;
    let names = row
        .bits
        .iter()
        .filter(|(_, b)| raw & b != 0)
        .map(|(n, b)| {
            known |= b;
            Cow::Borrowed(*n)
        })
        .collect();
    IoFlags {
        raw,
        names,
        unknown: raw & !known,
    }
}

/// The bit of `name` in this row (None when this kernel has no such flag).
pub fn bit(row: &FlagRow, name: &str) -> Option<u32> {
    row.bits.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_chosen_by_release_and_outside_kernels_are_flagged() {
        let (r, inside) = row_for("6.12.95+deb12-amd64");
        assert!(inside);
        assert_eq!(bit(r, ABORTED), Some(0x04));
        let (r, inside) = row_for("7.3.4+deb14-amd64");
        assert!(inside);
        assert_eq!(bit(r, ABORTED), None);
        assert_eq!(bit(r, AUTO_BUF_REG), Some(0x10));
        // 6.16 is not in the table: the nearest older row, and said so.
        let (r, inside) = row_for("6.16.12-amd64");
        assert!(!inside);
        assert_eq!(r.from, (6, 12));
        // 6.1 (built from Debian's source) has its own checked row; 6.5 falls back to it.
        let (r, inside) = row_for("6.1.176-ublk");
        assert!(inside);
        assert_eq!(describe(r, inside).row, "6.1-6.1");
        assert_eq!(bit(r, CANCELED), Some(0x8000_0000));
        let (r, inside) = row_for("6.5.0");
        assert!(!inside);
        assert_eq!(r.from, (6, 1));
        let (r, inside) = row_for("nonsense");
        assert!(!inside);
        assert_eq!(r.from, (6, 1), "the oldest row");
    }

    #[test]
    fn unknown_bits_are_kept_as_a_number() {
        let (r, _) = row_for("6.12.0");
        let f = decode(r, 0x01 | 0x08 | 0x40);
        assert_eq!(f.names, [ACTIVE, NEED_GET_DATA]);
        assert_eq!(f.unknown, 0x40);
        assert!(f.has(ACTIVE) && !f.has(OWNED_BY_SRV));
        let (r7, _) = row_for("7.3.0");
        // 0x04 was ABORTED on 6.12; later kernels do not define it.
        assert_eq!(decode(r7, 0x04).unknown, 0x04);
        assert_eq!(decode(r, 0x04).names, [ABORTED]);
    }
}
