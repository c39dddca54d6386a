//! tracefs: where it is mounted, and the `format` files of tracepoints.
//!
//! The tracer attaches *raw* tracepoints (their arguments are the `TP_PROTO` pointers, e.g.
//! the `struct request *`), which need no tracefs. The format files are still the kernel's
//! own statement of which block tracepoints exist and what they carry, so `doctor` reads
//! them, and a classic tracepoint consumer decodes its records with [`Format::field`].

use std::path::{Path, PathBuf};

/// Where tracefs usually lives; the legacy debugfs path comes second.
pub const TRACEFS_CANDIDATES: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
pub const MOUNT_HINT: &str = "mount -t tracefs nodev /sys/kernel/tracing";

/// The block tracepoints the tracer uses.
pub const BLOCK_TRACEPOINTS: &[&str] = &[
    "block_rq_insert",
    "block_rq_issue",
    "block_rq_complete",
    "block_rq_requeue",
];

/// The first mounted tracefs (recognised by its `events` directory).
pub fn find_tracefs() -> Option<PathBuf> {
    TRACEFS_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Field {
    /// Declared C type, e.g. `dev_t` or `char rwbs[8]` minus the name.
    pub ty: String,
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// A parsed `events/<system>/<event>/format` file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Format {
    pub name: String,
    pub id: u32,
    /// Fields in file order, common fields (`common_*`) included.
    pub fields: Vec<Field>,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("read {path}: {source}; is tracefs mounted? ({MOUNT_HINT})")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no `{what}` in the format file")]
    Missing { path: String, what: &'static str },
}

impl Format {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Read `<tracefs>/events/<system>/<event>/format`.
    pub fn load(tracefs: &Path, system: &str, event: &str) -> Result<Self, FormatError> {
        let path = tracefs
            .join("events")
            .join(system)
            .join(event)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| FormatError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|what| FormatError::Missing {
            path: path.display().to_string(),
            what,
        })
    }

    /// Parse the text of a format file; `Err` names the missing part.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(n) = line.strip_prefix("name:") {
                name = Some(n.trim().to_string());
            } else if let Some(i) = line.strip_prefix("ID:") {
                id = i.trim().parse().ok();
            } else if line.starts_with("field:")
                && let Some(f) = parse_field(line)
            {
                fields.push(f);
            }
        }
        Ok(Self {
            name: name.ok_or("name")?,
            id: id.ok_or("ID")?,
            fields,
        })
    }
}

/// `field:unsigned int nr_sector;<TAB>offset:16;<TAB>size:4;<TAB>signed:0;`
fn parse_field(line: &str) -> Option<Field> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, None);
    for part in line.split(';').map(str::trim) {
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d.trim());
        } else if let Some(v) = part.strip_prefix("offset:") {
            offset = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("signed:") {
            signed = v.trim().parse::<u8>().ok().map(|s| s != 0);
        }
    }
    let decl = decl?;
    // The name is the last identifier, before any array suffix: `char rwbs[8]` -> `rwbs`,
    // `__data_loc char[] cmd` -> `cmd`.
    let (ty, last) = decl.rsplit_once(char::is_whitespace)?;
    let name = last.split('[').next()?.trim_start_matches('*');
    let array = last.find('[').map(|i| &last[i..]).unwrap_or("");
    Some(Field {
        ty: format!("{}{}", ty.trim(), array),
        name: name.to_string(),
        offset: offset?,
        size: size?,
        signed: signed.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // block_rq_complete on 6.12 (format file as the kernel prints it).
    const RQ_COMPLETE: &str = "name: block_rq_complete
ID: 1367
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;
\tfield:int error;\toffset:28;\tsize:4;\tsigned:1;
\tfield:unsigned short ioprio;\toffset:32;\tsize:2;\tsigned:0;
\tfield:char rwbs[8];\toffset:34;\tsize:8;\tsigned:1;
\tfield:__data_loc char[] cmd;\toffset:44;\tsize:4;\tsigned:1;

print fmt: \"%d,%d %s (%s) %llu + %u %s,%u,%u [%d]\", ...
";

    #[test]
    fn parses_fields_with_arrays_and_data_loc() {
        let f = Format::parse(RQ_COMPLETE).expect("complete format");
        assert_eq!((f.name.as_str(), f.id), ("block_rq_complete", 1367));
        assert_eq!(f.fields.len(), 11);
        let e = f.field("error").expect("error field");
        assert_eq!((e.offset, e.size, e.signed), (28, 4, true));
        let rwbs = f.field("rwbs").expect("rwbs field");
        assert_eq!(
            (rwbs.ty.as_str(), rwbs.offset, rwbs.size),
            ("char[8]", 34, 8)
        );
        assert_eq!(f.field("cmd").map(|c| c.offset), Some(44));
        assert_eq!(
            f.field("sector").map(|c| (c.size, c.signed)),
            Some((8, false))
        );
    }

    #[test]
    fn missing_header_is_named() {
        assert_eq!(Format::parse("format:\n"), Err("name"));
        assert_eq!(Format::parse("name: x\n"), Err("ID"));
    }

    #[test]
    fn host_block_formats_when_tracefs_is_mounted() {
        let Some(t) = find_tracefs() else {
            eprintln!("SKIP: tracefs not mounted on this host ({MOUNT_HINT})");
            return;
        };
        let f = Format::load(&t, "block", "block_rq_issue").expect("block_rq_issue exists");
        assert!(
            f.field("sector").is_some() && f.field("dev").is_some(),
            "{f:?}"
        );
    }
}
