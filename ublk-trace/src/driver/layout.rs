//! Every offset and size the walkers use, resolved once from BTF (vmlinux + the split BTF of
//! `ublk_drv`). A field one kernel lacks is an `Option` plus its name in
//! [`Layout::not_readable`]; a field the reader cannot work without fails the whole layout
//! with its name. Nothing here is a guessed layout.
//!
//! What moves between kernels (checked against ublk_drv.c of 6.12, 6.17 and 7.x):
//! - queues: 6.12–6.17 pack them in one blob `ub->__queues` with stride `ub->queue_size`;
//!   later kernels allocate each one and keep `ub->queues[]` (a pointer array);
//! - the owner: `ubq->ubq_daemon` up to 6.15, `io->task` from 6.16 (PER_IO_DAEMON);
//! - `ublk_io.cmd` shares a union with `ublk_io.req` from 6.15, so it is a command only while
//!   the io is ACTIVE;
//! - `ubq->nr_io_ready` is an unsigned short on 6.12, gone on 6.17 (per device), a u32 on 7.x.
//! - UBLK_F_BATCH_IO (7.0+) adds per-queue batch state: `evts_fifo` (the tags of started
//!   requests no FETCH_IO_CMDS has reported yet), `fcmd_head` (the armed multishot fetch
//!   commands, `struct ublk_batch_fetch_cmd`) and `active_fcmd`.
use std::collections::BTreeMap;

use crate::kernel::btf::Btf;
use crate::kernel::offsets;

/// A scalar member: where it is and how wide (1, 2, 4 or 8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub off: u32,
    pub size: u32,
}

impl Field {
    pub const fn new(off: u32, size: u32) -> Self {
        Self { off, size }
    }

    /// The field's value (zero-extended) inside `buf`, which starts at the struct.
    pub fn get(&self, buf: &[u8]) -> Option<u64> {
        let o = self.off as usize;
        let b = buf.get(o..o + self.size as usize)?;
        Some(match self.size {
            1 => u64::from(b[0]),
            2 => u64::from(u16::from_le_bytes(b.try_into().ok()?)),
            4 => u64::from(u32::from_le_bytes(b.try_into().ok()?)),
            8 => u64::from_le_bytes(b.try_into().ok()?),
            _ => return None,
        })
    }

    /// Sign-extended value (for `int` members such as `res`).
    pub fn get_signed(&self, buf: &[u8]) -> Option<i64> {
        let v = self.get(buf)?;
        let bits = self.size * 8;
        Some(if bits >= 64 {
            v as i64
        } else {
            ((v << (64 - bits)) as i64) >> (64 - bits)
        })
    }

    pub fn end(&self) -> u32 {
        self.off + self.size
    }
}

/// Where a device's queues are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuesAt {
    /// 6.12–6.17: `ub->__queues` (char *) + q * `ub->queue_size`.
    Blob { base: u32, stride: Field },
    /// Later: `ub->queues[q]`, a pointer array at this offset of `ublk_device`.
    PtrArray { off: u32 },
}

/// UBLK_F_BATCH_IO's per-queue state, offsets from `ublk_queue` (7.0+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLayout {
    /// `evts_fifo.kfifo.in` / `.out`: free-running counters; `in - out` tags wait.
    pub fifo_in: Field,
    pub fifo_out: Field,
    /// `fcmd_head`, a `list_head` of armed fetch commands (its `next` at `list_next`).
    pub fcmd_head: u32,
    pub list_next: u32,
    /// `active_fcmd`: the fetch command dispatching now (NULL between dispatches).
    pub active_fcmd: Field,
}

/// `struct sbitmap` inside `blk_mq_tags.bitmap_tags`, offsets from `blk_mq_tags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapLayout {
    pub shift: Field,
    pub map_nr: Field,
    pub map: u32,
    /// `sizeof(struct sbitmap_word)` (cache-line aligned).
    pub word_size: u32,
    pub word: u32,
    pub cleared: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    // include/linux/idr.h, xarray.h
    pub idr_head: u32,
    pub idr_base: Option<Field>,
    pub node_shift: Field,
    pub node_slots: u32,
    /// XA_CHUNK_SIZE, from the length of `xa_node.slots`.
    pub node_chunk: u32,
    // struct ublk_device
    pub ub_disk: u32,
    pub nr_hw_queues: Field,
    pub queue_depth: Field,
    pub dev_state: Field,
    pub dev_id: Field,
    pub ublksrv_pid: Field,
    pub dev_flags: Field,
    /// `ub->nr_io_ready`: 6.17–6.18 count ready ios per device, not per queue.
    pub dev_nr_io_ready: Option<Field>,
    /// `ub->tag_set.tags` (struct blk_mq_tags **).
    pub set_tags: u32,
    pub queues: QueuesAt,
    // struct ublk_queue
    pub q_id: Option<Field>,
    pub q_depth: Field,
    pub ubq_daemon: Option<u32>,
    pub force_abort: Option<Field>,
    pub canceling: Option<Field>,
    pub fail_io: Option<Field>,
    pub nr_io_ready: Option<Field>,
    pub ios: u32,
    /// Kernels with UBLK_F_BATCH_IO (`struct ublk_batch_fetch_cmd` in BTF).
    pub batch: Option<BatchLayout>,
    // struct ublk_io
    pub io_size: u32,
    pub io_flags: Field,
    pub io_res: Field,
    pub io_cmd: u32,
    pub io_task: Option<u32>,
    // struct task_struct
    pub task_pid: Field,
    pub task_tgid: Field,
    pub task_comm: Field,
    // gendisk, request_queue
    pub disk_queue: u32,
    pub freeze_depth: Option<Field>,
    pub quiesce_depth: Option<Field>,
    // struct blk_mq_tags
    pub tags_rqs: u32,
    pub tags_nr_tags: Field,
    pub bitmap: Option<BitmapLayout>,
    // struct request
    pub rq_q: u32,
    pub rq_tag: Field,
    pub rq_state: Field,
    pub rq_cmd_flags: Field,
    pub rq_sector: Field,
    pub rq_data_len: Field,
    pub rq_start_time_ns: Option<Field>,
    /// `enum mq_rq_state` values.
    pub mq_rq_in_flight: u64,
    pub mq_rq_complete: u64,
    /// `REQ_OP_*` number -> name (`READ`), from BTF `enum req_op`.
    pub req_ops: BTreeMap<u32, String>,
    /// Fields this kernel does not have, as `struct.member` ("ublk_io.task").
    pub not_readable: Vec<String>,
}

/// A field the reader cannot work without is not in BTF.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not in BTF: {}", missing.join(", "))]
pub struct LayoutError {
    pub missing: Vec<String>,
}

struct Resolve<'a> {
    btf: &'a Btf,
    missing: Vec<String>,
    optional: Vec<String>,
}

impl Resolve<'_> {
    fn look(&self, ty: &str, path: &str) -> Option<Field> {
        let (off, id) = self.btf.member_at(ty, path).ok()?;
        let size = self.btf.type_size(id)?;
        Some(Field::new(off, size))
    }

    /// A member the reader needs.
    fn need(&mut self, ty: &str, path: &str) -> Field {
        self.look(ty, path).unwrap_or_else(|| {
            self.missing.push(format!("{ty}.{path}"));
            Field::new(0, 0)
        })
    }

    /// A scalar member the reader needs, 1–8 bytes wide.
    fn scalar(&mut self, ty: &str, path: &str) -> Field {
        let f = self.need(ty, path);
        if f.size != 0 && ![1, 2, 4, 8].contains(&f.size) {
            self.missing
                .push(format!("{ty}.{path} (a {}-byte scalar)", f.size));
        }
        f
    }

    /// A member some kernels lack.
    fn opt(&mut self, ty: &str, path: &str) -> Option<Field> {
        let f = self.look(ty, path);
        if f.is_none() {
            self.optional.push(format!("{ty}.{path}"));
        }
        f
    }

    fn size(&mut self, ty: &str) -> u32 {
        self.btf.struct_size(ty).unwrap_or_else(|| {
            self.missing.push(format!("sizeof(struct {ty})"));
            0
        })
    }
}

impl Layout {
    pub fn from_btf(btf: &Btf) -> Result<Self, LayoutError> {
        let mut r = Resolve {
            btf,
            missing: Vec::new(),
            optional: Vec::new(),
        };
        let idr_head = r.need("idr", "idr_rt").off + r.need("xarray", "xa_head").off;
        let idr_base = r.opt("idr", "idr_base");
        let node_shift = r.scalar("xa_node", "shift");
        let node_chunk = btf
            .member_at("xa_node", "slots")
            .ok()
            .and_then(|(_, id)| btf.array_info(id))
            .map(|(_, n)| n)
            .filter(|n| n.is_power_of_two())
            .unwrap_or_else(|| {
                r.missing.push("xa_node.slots (array length)".into());
                0
            });
        let node_slots = r.need("xa_node", "slots").off;
        let queues = match (
            r.look("ublk_device", "queues"),
            r.look("ublk_device", "__queues"),
        ) {
            (Some(q), _) => QueuesAt::PtrArray { off: q.off },
            (None, Some(base)) => QueuesAt::Blob {
                base: base.off,
                stride: r.scalar("ublk_device", "queue_size"),
            },
            (None, None) => {
                r.missing
                    .push("ublk_device.queues or ublk_device.__queues".into());
                QueuesAt::PtrArray { off: 0 }
            }
        };
        let bitmap = bitmap_layout(&mut r);
        let batch = batch_layout(&mut r);
        let req_ops = offsets::resolve(btf).req_ops;
        let state = |name: &str| {
            btf.enum_value("mq_rq_state", name)
                .and_then(|v| u64::try_from(v).ok())
        };
        let (in_flight, complete) = (state("MQ_RQ_IN_FLIGHT"), state("MQ_RQ_COMPLETE"));
        if in_flight.is_none() || complete.is_none() {
            r.missing.push("enum mq_rq_state".into());
        }
        let l = Layout {
            idr_head,
            idr_base,
            node_shift,
            node_slots,
            node_chunk,
            ub_disk: r.need("ublk_device", "ub_disk").off,
            nr_hw_queues: r.scalar("ublk_device", "dev_info.nr_hw_queues"),
            queue_depth: r.scalar("ublk_device", "dev_info.queue_depth"),
            dev_state: r.scalar("ublk_device", "dev_info.state"),
            dev_id: r.scalar("ublk_device", "dev_info.dev_id"),
            ublksrv_pid: r.scalar("ublk_device", "dev_info.ublksrv_pid"),
            dev_flags: r.scalar("ublk_device", "dev_info.flags"),
            dev_nr_io_ready: r.look("ublk_device", "nr_io_ready"),
            set_tags: r.need("ublk_device", "tag_set").off + r.need("blk_mq_tag_set", "tags").off,
            queues,
            q_id: r.opt("ublk_queue", "q_id"),
            q_depth: r.scalar("ublk_queue", "q_depth"),
            ubq_daemon: r.opt("ublk_queue", "ubq_daemon").map(|f| f.off),
            force_abort: r.opt("ublk_queue", "force_abort"),
            canceling: r.opt("ublk_queue", "canceling"),
            fail_io: r.opt("ublk_queue", "fail_io"),
            nr_io_ready: r.opt("ublk_queue", "nr_io_ready"),
            ios: r.need("ublk_queue", "ios").off,
            batch,
            io_size: r.size("ublk_io"),
            io_flags: r.scalar("ublk_io", "flags"),
            io_res: r.scalar("ublk_io", "res"),
            io_cmd: r.need("ublk_io", "cmd").off,
            io_task: r.opt("ublk_io", "task").map(|f| f.off),
            task_pid: r.scalar("task_struct", "pid"),
            task_tgid: r.scalar("task_struct", "tgid"),
            task_comm: r.need("task_struct", "comm"),
            disk_queue: r.need("gendisk", "queue").off,
            freeze_depth: r.opt("request_queue", "mq_freeze_depth"),
            quiesce_depth: r.opt("request_queue", "quiesce_depth"),
            tags_rqs: r.need("blk_mq_tags", "rqs").off,
            tags_nr_tags: r.scalar("blk_mq_tags", "nr_tags"),
            bitmap,
            rq_q: r.need("request", "q").off,
            rq_tag: r.scalar("request", "tag"),
            rq_state: r.scalar("request", "state"),
            rq_cmd_flags: r.scalar("request", "cmd_flags"),
            rq_sector: r.scalar("request", "__sector"),
            rq_data_len: r.scalar("request", "__data_len"),
            rq_start_time_ns: r.opt("request", "start_time_ns"),
            mq_rq_in_flight: in_flight.unwrap_or(1),
            mq_rq_complete: complete.unwrap_or(2),
            req_ops,
            not_readable: Vec::new(),
        };
        if l.io_size == 0 || l.task_comm.size == 0 {
            r.missing
                .push("a zero-sized ublk_io or task_struct.comm".into());
        }
        if !r.missing.is_empty() {
            r.missing.dedup();
            return Err(LayoutError { missing: r.missing });
        }
        Ok(Layout {
            not_readable: r.optional,
            ..l
        })
    }

    /// Bytes of `ublk_device` to read: up to the last field used (the pointer array of
    /// later kernels is read separately).
    pub fn device_len(&self) -> usize {
        let mut end = [
            self.ub_disk + 8,
            self.nr_hw_queues.end(),
            self.queue_depth.end(),
            self.dev_state.end(),
            self.dev_id.end(),
            self.ublksrv_pid.end(),
            self.dev_flags.end(),
            self.dev_nr_io_ready.map_or(0, |f| f.end()),
            self.set_tags + 8,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        if let QueuesAt::Blob { base, stride } = self.queues {
            end = end.max(base + 8).max(stride.end());
        }
        end as usize
    }

    /// Bytes of a `struct request` head to read (up to the last field used).
    pub fn rq_head_len(&self) -> usize {
        [
            self.rq_q + 8,
            self.rq_tag.end(),
            self.rq_state.end(),
            self.rq_cmd_flags.end(),
            self.rq_sector.end(),
            self.rq_data_len.end(),
            self.rq_start_time_ns.map_or(0, |f| f.end()),
        ]
        .into_iter()
        .max()
        .unwrap_or(0) as usize
    }

    /// Bytes of `blk_mq_tags` to read.
    pub fn tags_len(&self) -> usize {
        let mut end = (self.tags_rqs + 8).max(self.tags_nr_tags.end());
        if let Some(b) = self.bitmap {
            end = end.max(b.shift.end()).max(b.map_nr.end()).max(b.map + 8);
        }
        end as usize
    }

    /// Name of a block op from `cmd_flags` (low 8 bits, REQ_OP_MASK).
    pub fn op_name(&self, cmd_flags: u64) -> String {
        let op = (cmd_flags & 0xff) as u32;
        self.req_ops
            .get(&op)
            .cloned()
            .unwrap_or_else(|| offsets::fallback_req_op_name(op).to_string())
    }
}

/// The busy-tag bitmap (`blk_mq_tags.bitmap_tags.sb`, an sbitmap whose `cleared` bits are
/// free tags not yet folded back into `word`). Optional: without it every tag that has a
/// request pointer gets its request head read.
fn bitmap_layout(r: &mut Resolve) -> Option<BitmapLayout> {
    let sb = r.look("blk_mq_tags", "bitmap_tags.sb")?;
    let at = |r: &Resolve, p: &str| {
        r.look("sbitmap", p)
            .map(|f| Field::new(sb.off + f.off, f.size))
    };
    let b = (|| {
        Some(BitmapLayout {
            shift: at(r, "shift")?,
            map_nr: at(r, "map_nr")?,
            map: at(r, "map")?.off,
            word_size: r.btf.struct_size("sbitmap_word")?,
            word: r.look("sbitmap_word", "word")?.off,
            cleared: r.look("sbitmap_word", "cleared")?.off,
        })
    })();
    if b.is_none() {
        r.optional
            .push("blk_mq_tags.bitmap_tags (busy-tag bitmap)".into());
    }
    b
}

/// The batch queue state, on kernels that have BATCH_IO (none is named missing on the
/// others: there is no batch device to read there).
fn batch_layout(r: &mut Resolve) -> Option<BatchLayout> {
    r.btf.struct_size("ublk_batch_fetch_cmd")?;
    let b = (|| {
        Some(BatchLayout {
            fifo_in: r.look("ublk_queue", "evts_fifo.kfifo.in")?,
            fifo_out: r.look("ublk_queue", "evts_fifo.kfifo.out")?,
            fcmd_head: r.look("ublk_queue", "fcmd_head")?.off,
            list_next: r.look("list_head", "next")?.off,
            active_fcmd: r.look("ublk_queue", "active_fcmd")?,
        })
    })();
    if b.is_none() {
        r.optional
            .push("ublk_queue.evts_fifo, .fcmd_head, .active_fcmd (BATCH_IO fetch state)".into());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_decode_by_width_and_sign() {
        let buf = [0xff, 0xff, 0xff, 0xff, 0x01, 0x00, 0x34, 0x12];
        assert_eq!(Field::new(0, 4).get_signed(&buf), Some(-1));
        assert_eq!(Field::new(0, 4).get(&buf), Some(0xffff_ffff));
        assert_eq!(Field::new(4, 1).get(&buf), Some(1));
        assert_eq!(Field::new(6, 2).get(&buf), Some(0x1234));
        assert_eq!(Field::new(6, 4).get(&buf), None, "past the end");
        assert_eq!(Field::new(0, 3).get(&buf), None, "odd width");
    }

    /// This host has vmlinux BTF but no ublk_drv: the layout must name what is missing
    /// (ublk's own structs), never fill it in.
    #[test]
    fn host_btf_without_ublk_names_the_missing_structs() {
        let Ok(btf) = Btf::from_file(crate::kernel::btf::VMLINUX_PATH) else {
            eprintln!("SKIP: no vmlinux BTF on this host");
            return;
        };
        let err = Layout::from_btf(&btf).expect_err("no ublk_drv BTF here");
        assert!(
            err.missing.iter().any(|m| m.starts_with("ublk_io.")),
            "{err}"
        );
        assert!(
            !err.missing
                .iter()
                .any(|m| m.starts_with("request.") || m.starts_with("xa_node")),
            "core structs resolve from vmlinux: {err}"
        );
    }
}
