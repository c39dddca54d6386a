use super::*;

/// Builds BTF blobs by hand so every kind of lookup can be checked against known values.
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// String offsets continue from here (a split BTF's base string length).
    str_base: u32,
}

impl Builder {
    fn new(str_base: u32) -> Self {
        // A base BTF's string section starts with "" at offset 0; a split one has its own.
        Self {
            types: Vec::new(),
            strings: vec![0],
            str_base,
        }
    }
    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.str_base + self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }
    fn w(&mut self, v: u32) {
        self.types.extend_from_slice(&v.to_le_bytes());
    }
    fn head(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, size_or_type: u32) {
        let n = self.s(name);
        self.w(n);
        self.w(((kflag as u32) << 31) | (kind << 24) | vlen);
        self.w(size_or_type);
    }
    fn int(&mut self, name: &str, size: u32) {
        self.head(name, 1, 0, false, size);
        self.w(size * 8);
    }
    fn strukt(&mut self, name: &str, size: u32, kflag: bool, members: &[(&str, u32, u32)]) {
        self.head(name, 4, members.len() as u32, kflag, size);
        for &(m, ty, off) in members {
            let n = self.s(m);
            self.w(n);
            self.w(ty);
            self.w(off);
        }
    }
    fn finish(self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.push(1); // version
        b.push(0); // flags
        b.extend_from_slice(&24u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // type_off
        b.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.types.len() as u32).to_le_bytes()); // str_off
        b.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.types);
        b.extend_from_slice(&self.strings);
        b
    }
}

fn synthetic() -> (Vec<u8>, u32) {
    let mut b = Builder::new(0);
    b.int("int", 4); // 1
    b.strukt("inner", 8, false, &[("a", 1, 0), ("b", 1, 32)]); // 2
    b.strukt("", 8, false, &[("c", 1, 0), ("d", 1, 32)]); // 3: anonymous
    b.head("inner_t", 8, 0, false, 2); // 4: typedef inner_t -> inner
    b.head("", 10, 0, false, 4); // 5: const inner_t
    b.strukt(
        "outer",
        24,
        false,
        &[("first", 1, 0), ("", 3, 64), ("nested", 5, 128)],
    ); // 6
    b.strukt(
        "bits",
        4,
        true,
        &[("lo", 1, 3 << 24), ("hi", 1, (5 << 24) | 3)],
    ); // 7
    b.head("color", 6, 2, true, 4); // 8: signed enum
    let (red, blue) = (b.s("RED"), b.s("BLUE"));
    b.w(red);
    b.w(0);
    b.w(blue);
    b.w(-1i32 as u32);
    b.head("", 13, 2, false, 1); // 9: int (struct outer *cmd, int flags)
    let (p0, p1) = (b.s("cmd"), b.s("flags"));
    b.w(p0);
    b.w(10);
    b.w(p1);
    b.w(1);
    b.head("", 2, 0, false, 6); // 10: struct outer *
    b.head("probe_me", 12, 1, false, 9); // 11: FUNC, global linkage
    let strlen = b.strings.len() as u32;
    (b.finish(), strlen)
}

#[test]
fn synthetic_offsets_through_anonymous_and_typedef_const() {
    let (blob, _) = synthetic();
    let btf = Btf::from_bytes(&blob).expect("synthetic BTF parses");
    assert_eq!(btf.len(), 11);
    assert_eq!(btf.member_offset("outer", "first").ok(), Some(0));
    // `d` lives in an anonymous struct at byte 8: the reader must add the parent's offset.
    assert_eq!(btf.member_offset("outer", "d").ok(), Some(12));
    // `nested` is `const inner_t`: the path must see through const and typedef.
    assert_eq!(btf.member_offset("outer", "nested.b").ok(), Some(20));
    assert!(matches!(
        btf.member_offset("outer", "nope"),
        Err(BtfError::NoMember { .. })
    ));
    assert!(matches!(
        btf.member_offset("bits", "hi"),
        Err(BtfError::Bitfield { .. })
    ));
    assert!(matches!(
        btf.member_offset("missing", "x"),
        Err(BtfError::NotFound { .. })
    ));
    assert_eq!(btf.enum_value("color", "BLUE"), Some(-1));
    assert_eq!(btf.enum_value("color", "RED"), Some(0));
    let params = btf.func_params("probe_me").expect("FUNC -> FUNC_PROTO");
    assert_eq!(params.len(), 2);
    assert_eq!(btf.type_name(params[0].type_id), "struct outer *");
    assert_eq!(btf.param_index("probe_me", "flags").ok(), Some(1));
}

#[test]
fn split_btf_continues_ids_and_strings() {
    let (base_blob, base_strlen) = synthetic();
    let mut btf = Btf::from_bytes(&base_blob).expect("base parses");
    // The module's types start at id 12 and may reference base types (10 = struct outer *).
    let mut m = Builder::new(base_strlen);
    m.strukt("ublk_thing", 16, false, &[("pad", 1, 0), ("ptr", 10, 64)]); // id 12
    m.strukt("uses_mod", 24, false, &[("x", 1, 0), ("thing", 12, 64)]); // id 13
    // Split strings start with their own "" at base_strlen; Builder::new put it there.
    btf.add_split(&m.finish()).expect("split parses");
    assert_eq!(btf.len(), 13);
    assert_eq!(btf.name(12), "ublk_thing");
    assert_eq!(btf.member_offset("uses_mod", "thing.ptr").ok(), Some(16));
    assert_eq!(btf.type_name(btf.members(12)[1].type_id), "struct outer *");
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(Btf::from_bytes(b"").is_err());
    assert!(Btf::from_bytes(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
    let (mut blob, _) = synthetic();
    blob.truncate(blob.len() - 40); // cut into the string section
    assert!(Btf::from_bytes(&blob).is_err());
    let (mut blob, _) = synthetic();
    blob[24 + 7] = 0x1f; // first type's kind -> 31 (unknown)
    assert!(Btf::from_bytes(&blob).is_err());
}

/// The host's own kernel BTF: values cross-checked with bpftool on this host (6.18).
#[test]
fn host_vmlinux_struct_request() {
    let Ok(btf) = Btf::from_file(VMLINUX_PATH) else {
        eprintln!("SKIP: {VMLINUX_PATH} not readable on this host");
        return;
    };
    assert!(btf.len() > 10_000, "vmlinux BTF has {} types", btf.len());
    let off = |t: &str, m: &str| btf.member_offset(t, m).ok();
    assert_eq!(off("request", "cmd_flags"), Some(24));
    assert_eq!(off("request", "tag"), Some(32));
    assert_eq!(off("request", "__data_len"), Some(44));
    assert_eq!(off("request", "__sector"), Some(48));
    assert_eq!(off("io_uring_cmd", "sqe"), Some(8));
    // io_uring_sqe.cmd sits in an anonymous union: only the anonymous-member walk finds it.
    assert_eq!(off("io_uring_sqe", "cmd"), Some(48));
    assert_eq!(
        btf.enum_value("io_uring_cmd_flags", "IO_URING_F_CANCEL"),
        Some(1 << 11)
    );
    let params = btf
        .func_params("blk_mq_start_request")
        .expect("a vmlinux function");
    assert_eq!(btf.type_name(params[0].type_id), "struct request *");
}

/// 6.1's `struct io_uring_cmd` (`file`, `cmd`, `cmd_op`) and an `enum io_uring_cmd_flags`
/// without IO_URING_F_CANCEL: the command area is `cmd` itself, and no cancel bit is used.
#[test]
fn six_one_io_uring_cmd_points_at_the_command_area_and_has_no_cancel_flag() {
    let mut b = Builder::new(0);
    b.int("u32", 4); // 1
    b.head("", 2, 0, false, 0); // 2: void *
    b.strukt(
        "io_uring_cmd",
        64,
        false,
        &[("file", 2, 0), ("cmd", 2, 64), ("cmd_op", 1, 192)],
    ); // 3
    b.head("io_uring_cmd_flags", 6, 1, false, 4); // 4: enum
    let v = b.s("IO_URING_F_IOPOLL");
    b.w(v);
    b.w(1 << 10);
    let btf = Btf::from_bytes(&b.finish()).expect("synthetic BTF parses");
    let r = crate::kernel::offsets::resolve(&btf);
    assert_eq!((r.offsets.uc_sqe, r.offsets.sqe_cmd), (8, 0));
    assert_eq!(r.offsets.uc_cmd_op, 24);
    assert_eq!(r.offsets.issue_flag_cancel, 0);
    let names: Vec<&str> = r.entries.iter().map(|e| e.name.as_str()).collect();
    assert!(names.contains(&"io_uring_cmd.cmd"), "{names:?}");
    assert!(
        !r.missing_required().contains(&"io_uring_cmd.sqe"),
        "{:?}",
        r.missing_required()
    );
}
