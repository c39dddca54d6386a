//! A small BTF reader: just what the tracer needs from `/sys/kernel/btf/vmlinux` and a
//! module's split BTF (`/sys/kernel/btf/ublk_drv`): struct/union member byte offsets by path
//! (through anonymous members, typedef/const/volatile chains), enum values, and function
//! parameter lists (FUNC -> FUNC_PROTO).
//!
//! Written here rather than using btf-rs because that crate is LGPL and ours are
//! MIT/Apache. Format: `Documentation/bpf/btf.rst`. Types are decoded lazily from the raw
//! blob (vmlinux has ~150k types); a lookup by name is a linear scan, which costs about a
//! millisecond and runs a few dozen times at start-up.
//!
//! Split BTF: a module's type ids continue after the base's last id, and its string offsets
//! continue after the base's string section. [`Btf::add_split`] appends both, so ids and
//! string offsets resolve unchanged.

use std::path::Path;

pub const VMLINUX_PATH: &str = "/sys/kernel/btf/vmlinux";
/// Split BTF of a loaded module.
pub fn module_path(module: &str) -> String {
    format!("/sys/kernel/btf/{module}")
}

const MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;

/// BTF kinds (`BTF_KIND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_u32(k: u32) -> Option<Self> {
        Some(match k {
            1 => Self::Int,
            2 => Self::Ptr,
            3 => Self::Array,
            4 => Self::Struct,
            5 => Self::Union,
            6 => Self::Enum,
            7 => Self::Fwd,
            8 => Self::Typedef,
            9 => Self::Volatile,
            10 => Self::Const,
            11 => Self::Restrict,
            12 => Self::Func,
            13 => Self::FuncProto,
            14 => Self::Var,
            15 => Self::Datasec,
            16 => Self::Float,
            17 => Self::DeclTag,
            18 => Self::TypeTag,
            19 => Self::Enum64,
            _ => return None,
        })
    }
    /// Bytes that follow the 12-byte common header for this kind.
    fn extra_bytes(self, vlen: usize) -> usize {
        match self {
            Self::Int | Self::Var | Self::DeclTag => 4,
            Self::Array => 12,
            Self::Struct | Self::Union | Self::Datasec | Self::Enum64 => 12 * vlen,
            Self::Enum | Self::FuncProto => 8 * vlen,
            _ => 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "read {path}: {source}; the kernel needs CONFIG_DEBUG_INFO_BTF (modules: CONFIG_DEBUG_INFO_BTF_MODULES)"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("BTF has no {kind} named '{name}'")]
    NotFound { kind: &'static str, name: String },
    #[error("BTF: {ty} has no member '{member}'")]
    NoMember { ty: String, member: String },
    #[error("BTF: member '{member}' of {ty} is a bitfield, it has no byte offset")]
    Bitfield { ty: String, member: String },
}

type Result<T> = std::result::Result<T, BtfError>;

/// Kinds kept in the by-name index.
const INDEXED: &[Kind] = &[Kind::Struct, Kind::Union, Kind::Enum, Kind::Enum64];

/// One decoded type header plus where its kind-specific data lives.
#[derive(Debug, Clone, Copy)]
struct TypeRef {
    kind: Kind,
    name_off: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Index into `Btf::types` of the kind-specific data.
    extra: usize,
}

/// A member of a struct or union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub type_id: u32,
    pub bit_offset: u32,
    /// 0 when not a bitfield.
    pub bitfield_size: u32,
}

/// A parameter of a function prototype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub type_id: u32,
}

/// Parsed BTF: the type section(s) and the string section(s), base first.
pub struct Btf {
    /// Concatenated type sections (base, then split).
    types: Vec<u8>,
    /// Concatenated string sections (base, then split): split offsets continue the base's.
    strings: Vec<u8>,
    /// `index[id - 1]` = the type's header; id 0 is `void`.
    index: Vec<TypeRef>,
    /// Ids of named structs/unions/enums (the ~15k looked up often), sorted by name then id
    /// for binary search: a linear scan over vmlinux's ~150k types per lookup is slow in an
    /// emulated guest. Other kinds (functions: one lookup) use a linear scan.
    by_name: Vec<u32>,
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

impl Btf {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut btf = Self {
            types: Vec::new(),
            strings: Vec::new(),
            index: Vec::new(),
            by_name: Vec::new(),
        };
        btf.append(bytes)?;
        Ok(btf)
    }

    /// Append a split BTF (a module's) whose base is `self`.
    pub fn add_split(&mut self, bytes: &[u8]) -> Result<()> {
        self.append(bytes)
    }

    pub fn add_split_file(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.add_split(&bytes)
    }

    /// Number of types (the highest valid id).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn append(&mut self, b: &[u8]) -> Result<()> {
        let bad = |m: &str| BtfError::Malformed(m.to_string());
        let magic = b.get(0..2).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if magic != Some(MAGIC) {
            return Err(bad("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(b, 4).ok_or_else(|| bad("short header"))? as usize;
        if hdr_len < HEADER_MIN {
            return Err(bad("header too short"));
        }
        let field = |o| {
            u32_at(b, o)
                .map(|v| v as usize)
                .ok_or_else(|| bad("short header"))
        };
        let (type_off, type_len, str_off, str_len) =
            (field(8)?, field(12)?, field(16)?, field(20)?);
        let types = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| bad("type section out of bounds"))?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| bad("string section out of bounds"))?;
        let base = self.types.len();
        self.types.extend_from_slice(types);
        self.strings.extend_from_slice(strings);
        let mut off = 0;
        while off < types.len() {
            let word = |i: usize| u32_at(types, off + 4 * i).ok_or_else(|| bad("truncated type"));
            let (name_off, info, size_or_type) = (word(0)?, word(1)?, word(2)?);
            let kind_nr = (info >> 24) & 0x1f;
            let kind = Kind::from_u32(kind_nr)
                .ok_or_else(|| BtfError::Malformed(format!("unknown kind {kind_nr}")))?;
            let vlen = (info & 0xffff) as usize;
            let extra = off + 12;
            let next = extra + kind.extra_bytes(vlen);
            if next > types.len() {
                return Err(bad("type data past the end of the section"));
            }
            self.index.push(TypeRef {
                kind,
                name_off,
                vlen,
                kind_flag: info >> 31 == 1,
                size_or_type,
                extra: base + extra,
            });
            off = next;
        }
        self.rebuild_name_index();
        Ok(())
    }

    fn rebuild_name_index(&mut self) {
        let strings = &self.strings;
        let name_of = |off: u32| {
            let rest = strings.get(off as usize..).unwrap_or_default();
            &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())]
        };
        let mut pairs: Vec<(&[u8], u32)> = self
            .index
            .iter()
            .enumerate()
            .filter(|(_, t)| t.name_off != 0 && INDEXED.contains(&t.kind))
            .map(|(i, t)| (name_of(t.name_off), i as u32 + 1))
            .collect();
        pairs.sort_unstable();
        self.by_name = pairs.into_iter().map(|(_, id)| id).collect();
    }

    fn ty(&self, id: u32) -> Option<&TypeRef> {
        self.index.get((id as usize).checked_sub(1)?)
    }

    fn str_at(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn extra_u32(&self, t: &TypeRef, i: usize) -> u32 {
        u32_at(&self.types, t.extra + 4 * i).unwrap_or(0)
    }

    /// Name of type `id` ("" for anonymous types and void).
    pub fn name(&self, id: u32) -> &str {
        self.ty(id).map(|t| self.str_at(t.name_off)).unwrap_or("")
    }

    pub fn kind(&self, id: u32) -> Option<Kind> {
        self.ty(id).map(|t| t.kind)
    }

    /// The first type id with this name and one of these kinds.
    pub fn find(&self, name: &str, kinds: &[Kind]) -> Option<u32> {
        if kinds.iter().all(|k| INDEXED.contains(k)) {
            let start = self.by_name.partition_point(|&id| self.name(id) < name);
            return self.by_name[start..]
                .iter()
                .take_while(|&&id| self.name(id) == name)
                .copied()
                .find(|&id| self.kind(id).is_some_and(|k| kinds.contains(&k)));
        }
        self.index
            .iter()
            .position(|t| kinds.contains(&t.kind) && self.str_at(t.name_off) == name)
            .map(|i| i as u32 + 1)
    }

    /// Follow typedef/const/volatile/restrict/type_tag to the underlying type.
    pub fn skip_mods(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some(t)
                    if matches!(
                        t.kind,
                        Kind::Typedef
                            | Kind::Const
                            | Kind::Volatile
                            | Kind::Restrict
                            | Kind::TypeTag
                    ) =>
                {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    /// Members of struct/union `id` (after skipping modifiers); empty for other kinds.
    pub fn members(&self, id: u32) -> Vec<Member> {
        let Some(t) = self.ty(self.skip_mods(id)) else {
            return Vec::new();
        };
        if !matches!(t.kind, Kind::Struct | Kind::Union) {
            return Vec::new();
        }
        (0..t.vlen)
            .map(|i| {
                let (name_off, type_id, off) = (
                    self.extra_u32(t, 3 * i),
                    self.extra_u32(t, 3 * i + 1),
                    self.extra_u32(t, 3 * i + 2),
                );
                let (bit_offset, bitfield_size) = if t.kind_flag {
                    (off & 0x00ff_ffff, off >> 24)
                } else {
                    (off, 0)
                };
                Member {
                    name: self.str_at(name_off).to_string(),
                    type_id,
                    bit_offset,
                    bitfield_size,
                }
            })
            .collect()
    }

    /// Byte offset of `path` ("dev_info.dev_id") inside struct/union `ty_name`.
    pub fn member_offset(&self, ty_name: &str, path: &str) -> Result<u32> {
        self.member_at(ty_name, path).map(|(off, _)| off)
    }

    /// Byte size of type `id` after modifiers (ints, enums, structs, unions, pointers,
    /// arrays); `None` for void, functions and unknown ids.
    pub fn type_size(&self, id: u32) -> Option<u32> {
        let t = self.ty(self.skip_mods(id))?;
        match t.kind {
            Kind::Int | Kind::Struct | Kind::Union | Kind::Enum | Kind::Enum64 | Kind::Float => {
                Some(t.size_or_type)
            }
            // The kernels this reads are 64-bit.
            Kind::Ptr => Some(8),
            Kind::Array => {
                let (elem, n) = self.array_info(id)?;
                self.type_size(elem)?.checked_mul(n)
            }
            _ => None,
        }
    }

    /// `sizeof(struct name)` (or union).
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        self.type_size(self.find(name, &[Kind::Struct, Kind::Union])?)
    }

    /// Element type and length of array type `id` (0 for a flexible array member).
    pub fn array_info(&self, id: u32) -> Option<(u32, u32)> {
        let t = self.ty(self.skip_mods(id))?;
        (t.kind == Kind::Array).then(|| (self.extra_u32(t, 0), self.extra_u32(t, 2)))
    }

    /// Byte offset and type id of member `path` of struct/union `ty_name`.
    pub fn member_at(&self, ty_name: &str, path: &str) -> Result<(u32, u32)> {
        let id = self
            .find(ty_name, &[Kind::Struct, Kind::Union])
            .ok_or_else(|| BtfError::NotFound {
                kind: "struct",
                name: ty_name.to_string(),
            })?;
        let mut cur = id;
        let mut total_bits = 0u32;
        for part in path.split('.') {
            let (bits, m) = self
                .find_member(cur, part, 0)
                .ok_or_else(|| BtfError::NoMember {
                    ty: ty_name.to_string(),
                    member: path.to_string(),
                })?;
            if m.bitfield_size != 0 {
                return Err(BtfError::Bitfield {
                    ty: ty_name.to_string(),
                    member: path.to_string(),
                });
            }
            total_bits += bits;
            cur = m.type_id;
        }
        if !total_bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield {
                ty: ty_name.to_string(),
                member: path.to_string(),
            });
        }
        Ok((total_bits / 8, cur))
    }

    /// Find `name` in struct/union `id`, descending into anonymous members; returns the bit
    /// offset from the start of `id` and the member.
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, Member)> {
        if depth > 8 {
            return None;
        }
        let members = self.members(id);
        if let Some(m) = members.iter().find(|m| m.name == name) {
            return Some((m.bit_offset, m.clone()));
        }
        members.iter().filter(|m| m.name.is_empty()).find_map(|m| {
            self.find_member(m.type_id, name, depth + 1)
                .map(|(bits, found)| (m.bit_offset + bits, found))
        })
    }

    /// Value of enumerator `variant` in enum `enum_name` (ENUM or ENUM64).
    pub fn enum_value(&self, enum_name: &str, variant: &str) -> Option<i64> {
        self.enum_values(enum_name)?
            .into_iter()
            .find(|(n, _)| n == variant)
            .map(|(_, v)| v)
    }

    /// All enumerators of `enum_name`.
    pub fn enum_values(&self, enum_name: &str) -> Option<Vec<(String, i64)>> {
        let t = self.ty(self.find(enum_name, &[Kind::Enum, Kind::Enum64])?)?;
        let signed = t.kind_flag;
        Some(
            (0..t.vlen)
                .map(|i| match t.kind {
                    Kind::Enum64 => {
                        let lo = self.extra_u32(t, 3 * i + 1) as u64;
                        let hi = self.extra_u32(t, 3 * i + 2) as u64;
                        (
                            self.str_at(self.extra_u32(t, 3 * i)).to_string(),
                            ((hi << 32) | lo) as i64,
                        )
                    }
                    _ => {
                        let raw = self.extra_u32(t, 2 * i + 1);
                        let v = if signed {
                            raw as i32 as i64
                        } else {
                            raw as i64
                        };
                        (self.str_at(self.extra_u32(t, 2 * i)).to_string(), v)
                    }
                })
                .collect(),
        )
    }

    /// Parameters of function `func` (FUNC -> FUNC_PROTO).
    pub fn func_params(&self, func: &str) -> Result<Vec<Param>> {
        let not_found = || BtfError::NotFound {
            kind: "function",
            name: func.to_string(),
        };
        let f = self
            .ty(self.find(func, &[Kind::Func]).ok_or_else(not_found)?)
            .ok_or_else(not_found)?;
        let proto = self
            .ty(f.size_or_type)
            .filter(|p| p.kind == Kind::FuncProto)
            .ok_or_else(not_found)?;
        Ok((0..proto.vlen)
            .map(|i| Param {
                name: self.str_at(self.extra_u32(proto, 2 * i)).to_string(),
                type_id: self.extra_u32(proto, 2 * i + 1),
            })
            .collect())
    }

    /// Index of the parameter named `param` of `func`.
    pub fn param_index(&self, func: &str, param: &str) -> Result<u32> {
        self.func_params(func)?
            .iter()
            .position(|p| p.name == param)
            .map(|i| i as u32)
            .ok_or_else(|| BtfError::NoMember {
                ty: format!("function {func}"),
                member: param.to_string(),
            })
    }

    /// "struct request *"-style spelling of a type (for messages and tests).
    pub fn type_name(&self, id: u32) -> String {
        match self.ty(id) {
            None => "void".to_string(),
            Some(t) => match t.kind {
                Kind::Ptr => format!("{} *", self.type_name(t.size_or_type)),
                Kind::Const => format!("const {}", self.type_name(t.size_or_type)),
                Kind::Volatile => format!("volatile {}", self.type_name(t.size_or_type)),
                Kind::Struct => format!("struct {}", self.str_at(t.name_off)),
                Kind::Union => format!("union {}", self.str_at(t.name_off)),
                Kind::Enum | Kind::Enum64 => format!("enum {}", self.str_at(t.name_off)),
                _ => self.str_at(t.name_off).to_string(),
            },
        }
    }
}

#[cfg(test)]
#[path = "btf_tests.rs"]
mod tests;
