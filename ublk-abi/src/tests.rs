use crate::*;

// Expected values are the expansions of the header's _IOR/_IOWR macros as printed by a C
// program on x86_64 (and as hard-coded in libublk's Fix753 table): if the struct size or the
// direction bits were wrong, the kernel would reject every command with -EINVAL.
#[test]
fn ctrl_ioctl_encodings_match_header() {
    assert_eq!(UBLK_U_CMD_GET_QUEUE_AFFINITY, 0x8020_7501);
    assert_eq!(UBLK_U_CMD_GET_DEV_INFO, 0x8020_7502);
    assert_eq!(UBLK_U_CMD_ADD_DEV, 0xc020_7504);
    assert_eq!(UBLK_U_CMD_DEL_DEV, 0xc020_7505);
    assert_eq!(UBLK_U_CMD_START_DEV, 0xc020_7506);
    assert_eq!(UBLK_U_CMD_STOP_DEV, 0xc020_7507);
    assert_eq!(UBLK_U_CMD_SET_PARAMS, 0xc020_7508);
    assert_eq!(UBLK_U_CMD_GET_PARAMS, 0x8020_7509);
    assert_eq!(UBLK_U_CMD_START_USER_RECOVERY, 0xc020_7510);
    assert_eq!(UBLK_U_CMD_END_USER_RECOVERY, 0xc020_7511);
    assert_eq!(UBLK_U_CMD_GET_DEV_INFO2, 0x8020_7512);
    assert_eq!(UBLK_U_CMD_GET_FEATURES, 0x8020_7513);
    assert_eq!(UBLK_U_CMD_DEL_DEV_ASYNC, 0x8020_7514);
    assert_eq!(UBLK_U_CMD_UPDATE_SIZE, 0xc020_7515);
    assert_eq!(UBLK_U_CMD_QUIESCE_DEV, 0xc020_7516);
    assert_eq!(UBLK_U_CMD_TRY_STOP_DEV, 0xc020_7517);
}

#[test]
fn io_ioctl_encodings_match_header() {
    assert_eq!(UBLK_U_IO_FETCH_REQ, 0xc010_7520);
    assert_eq!(UBLK_U_IO_COMMIT_AND_FETCH_REQ, 0xc010_7521);
    assert_eq!(UBLK_U_IO_NEED_GET_DATA, 0xc010_7522);
    assert_eq!(UBLK_U_IO_REGISTER_IO_BUF, 0xc010_7523);
    assert_eq!(UBLK_U_IO_UNREGISTER_IO_BUF, 0xc010_7524);
    assert_eq!(UBLK_U_IO_PREP_IO_CMDS, 0xc010_7525);
    assert_eq!(UBLK_U_IO_COMMIT_IO_CMDS, 0xc010_7526);
    assert_eq!(UBLK_U_IO_FETCH_IO_CMDS, 0xc010_7527);
}

#[test]
fn names_accept_legacy_and_ioctl_forms() {
    assert_eq!(ctrl_op_name(UBLK_CMD_ADD_DEV), "ADD_DEV");
    assert_eq!(ctrl_op_name(UBLK_U_CMD_ADD_DEV), "ADD_DEV");
    assert_eq!(ctrl_op_name(UBLK_U_CMD_GET_DEV_INFO2), "GET_DEV_INFO2");
    assert_eq!(ctrl_op_name(0x03), "UNKNOWN");
    assert_eq!(
        io_cmd_name(UBLK_IO_COMMIT_AND_FETCH_REQ),
        "COMMIT_AND_FETCH_REQ"
    );
    assert_eq!(
        io_cmd_name(UBLK_U_IO_COMMIT_AND_FETCH_REQ),
        "COMMIT_AND_FETCH_REQ"
    );
    assert_eq!(io_cmd_name(UBLK_U_IO_FETCH_IO_CMDS), "FETCH_IO_CMDS");
    assert_eq!(io_cmd_name(UBLK_CMD_ADD_DEV), "UNKNOWN");
    assert!(is_ioctl_encoded(UBLK_U_IO_FETCH_REQ));
    assert!(!is_ioctl_encoded(UBLK_IO_FETCH_REQ));
}

#[test]
fn io_op_name_ignores_flag_bits() {
    let desc = ublksrv_io_desc {
        op_flags: UBLK_IO_OP_WRITE as u32 | UBLK_IO_F_FUA,
        ..Default::default()
    };
    assert_eq!(io_op_name(desc.op_flags), "WRITE");
    assert_eq!(desc.op(), UBLK_IO_OP_WRITE);
    assert_eq!(desc.flags() << 8, UBLK_IO_F_FUA);
    assert_eq!(io_op_name(UBLK_IO_OP_REPORT_ZONES as u32), "REPORT_ZONES");
    assert_eq!(io_op_name(7), "UNKNOWN");
}

#[test]
fn feature_names_decode_each_bit() {
    let flags = UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_RECOVERY | UBLK_F_BATCH_IO | (1 << 40);
    let mut it = feature_names(flags);
    assert_eq!(it.next(), Some("USER_RECOVERY"));
    assert_eq!(it.next(), Some("CMD_IOCTL_ENCODE"));
    assert_eq!(it.next(), Some("BATCH_IO"));
    assert_eq!(it.next(), None);
    assert_eq!(unknown_features(flags), 1 << 40);
    // Each bit appears once in the table: a duplicated bit would print a flag twice.
    let mut seen = 0u64;
    for (bit, _) in FEATURES {
        assert_eq!(bit.count_ones(), 1);
        assert_eq!(seen & bit, 0);
        seen |= bit;
    }
}

#[test]
fn dev_state_names() {
    assert_eq!(dev_state_name(UBLK_S_DEV_LIVE), "LIVE");
    assert_eq!(dev_state_name(UBLK_S_DEV_FAIL_IO), "FAIL_IO");
    assert_eq!(dev_state_name(9), "UNKNOWN");
}

// The stride between queues is the max-depth array, not the device's depth: with depth 128
// a naive q_id * round_up(128 * 24, 4096) = 4096 puts queue 1 inside queue 0's area.
#[test]
fn io_desc_mmap_offsets_use_max_depth_stride() {
    assert_eq!(io_desc_mmap_offset(0, 4096), 0);
    assert_eq!(io_desc_mmap_offset(1, 4096), 98_304);
    assert_eq!(io_desc_mmap_offset(3, 4096), 3 * 98_304);
    // 64 KiB pages round the 96 KiB max array up to 128 KiB.
    assert_eq!(io_desc_mmap_offset(1, 65_536), 131_072);
    assert_eq!(io_desc_mmap_len(128, 4096), 4096);
    assert_eq!(io_desc_mmap_len(171, 4096), 8192); // 171 * 24 = 4104 bytes
    assert_eq!(io_desc_mmap_len(1, 4096), 4096);
    assert_eq!(io_desc_mmap_len(4096, 4096), 98_304);
    assert_eq!(io_desc_offset_in_queue(2), 48);
}

#[test]
fn user_copy_pos_packs_queue_tag_offset() {
    let pos = ublk_user_copy_pos(2, 5, 512);
    assert_eq!(
        pos - UBLKSRV_IO_BUF_OFFSET,
        (2u64 << 41) | (5u64 << 25) | 512
    );
}

#[test]
fn ctrl_cmd_bytes_round_trip() {
    let c = ublksrv_ctrl_cmd {
        dev_id: 7,
        queue_id: u16::MAX,
        len: 64,
        addr: 0x1122_3344_5566_7788,
        data: [4242],
        dev_path_len: 12,
        pad: 0,
        reserved: 0,
    };
    let b = c.to_bytes();
    assert_eq!(&b[0..4], &7u32.to_le_bytes());
    assert_eq!(&b[16..24], &4242u64.to_le_bytes());
    assert_eq!(ublksrv_ctrl_cmd::from_bytes(&b), Some(c));
    assert_eq!(ublksrv_ctrl_cmd::from_bytes(&b[..31]), None);
}

#[test]
fn io_cmd_and_dev_info_bytes_round_trip() {
    let c = ublksrv_io_cmd {
        q_id: 1,
        tag: 3,
        result: -5,
        addr: 0xdead_beef,
    };
    assert_eq!(ublksrv_io_cmd::from_bytes(&c.to_bytes()), Some(c));
    let info = ublksrv_ctrl_dev_info {
        nr_hw_queues: 2,
        queue_depth: 128,
        state: UBLK_S_DEV_LIVE,
        dev_id: 9,
        ublksrv_pid: -1,
        flags: UBLK_F_CMD_IOCTL_ENCODE,
        ..Default::default()
    };
    let b = info.to_bytes();
    assert_eq!(&b[16..20], &(-1i32).to_le_bytes());
    assert_eq!(ublksrv_ctrl_dev_info::from_bytes(&b), Some(info));
}

#[test]
fn auto_buf_reg_addr_round_trip() {
    let r = ublk_auto_buf_reg {
        index: 0x1234,
        flags: UBLK_AUTO_BUF_REG_FALLBACK,
        reserved0: 0,
        reserved1: 0,
    };
    assert_eq!(r.to_sqe_addr(), 0x0001_1234);
    assert_eq!(ublk_auto_buf_reg::from_sqe_addr(r.to_sqe_addr()), r);
}
