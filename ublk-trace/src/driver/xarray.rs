//! Walking an IDR (include/linux/idr.h), which is an xarray (include/linux/xarray.h,
//! lib/xarray.c), from outside the kernel, as drgn's `idr_for_each` does.
//!
//! Entry encoding (xarray.h): a node pointer is tagged with 2 in its low bits and is above
//! 4096 (`xa_is_node`); other entries with low bits 2 are internal (sibling, retry, zero) and
//! name no object; low bit 1 is a value entry (no pointer). A slot's index is
//! `base + (i << node->shift)`. `XA_CHUNK_SHIFT` comes from the length of `xa_node.slots`.
use super::WalkError;
use super::kcore::{Memory, check_ptr};
use super::layout::Layout;

/// More nodes than this means we are following garbage (a freed node reused under us).
const MAX_NODES: usize = 4096;
/// 64-bit indices with 6-bit chunks need at most 11 levels.
const MAX_DEPTH: u32 = 12;

fn is_internal(e: u64) -> bool {
    e & 3 == 2
}
fn is_node(e: u64) -> bool {
    is_internal(e) && e > 4096
}

/// Every `(id, pointer)` of the IDR at `idr_addr`, in index order.
pub fn idr_for_each(
    mem: &dyn Memory,
    l: &Layout,
    idr_addr: u64,
) -> Result<Vec<(u64, u64)>, WalkError> {
    let mut head = [0u8; 8];
    mem.read(idr_addr + u64::from(l.idr_head), &mut head)?;
    let head = u64::from_le_bytes(head);
    // idr_base (the first id) exists since 4.16; without it ids start at 0.
    let base = match l.idr_base {
        Some(f) => {
            let mut b = vec![0u8; f.end() as usize];
            mem.read(idr_addr, &mut b)?;
            f.get(&b).unwrap_or(0)
        }
        None => 0,
    };
    let mut w = Walk {
        mem,
        l,
        out: Vec::new(),
        nodes: 0,
    };
    w.entry(head, 0, 0)?;
    Ok(w.out.into_iter().map(|(i, p)| (i + base, p)).collect())
}

struct Walk<'a> {
    mem: &'a dyn Memory,
    l: &'a Layout,
    out: Vec<(u64, u64)>,
    nodes: usize,
}

impl Walk<'_> {
    /// A slot's entry covering indices from `index`.
    fn entry(&mut self, e: u64, index: u64, depth: u32) -> Result<(), WalkError> {
        if e == 0 || e & 1 == 1 {
            return Ok(()); // empty, or a value entry (idr stores pointers)
        }
        if is_node(e) {
            return self.node(e - 2, index, depth);
        }
        if is_internal(e) {
            return Ok(()); // sibling / retry / zero entry
        }
        self.out.push((index, e));
        Ok(())
    }

    fn node(&mut self, node: u64, index: u64, depth: u32) -> Result<(), WalkError> {
        self.nodes += 1;
        if depth > MAX_DEPTH || self.nodes > MAX_NODES {
            return Err(WalkError::Garbage(
                "xarray deeper or larger than possible".into(),
            ));
        }
        check_ptr(node, 8)?;
        let chunk = self.l.node_chunk as usize;
        let mut buf = vec![0u8; self.l.node_slots as usize + 8 * chunk];
        self.mem.read(node, &mut buf)?;
        let shift = self.l.node_shift.get(&buf).unwrap_or(0);
        if shift >= 64 {
            return Err(WalkError::Garbage(format!("xa_node shift {shift}")));
        }
        for i in 0..chunk {
            let o = self.l.node_slots as usize + 8 * i;
            let Some(s) = buf.get(o..o + 8).and_then(|b| b.try_into().ok()) else {
                break;
            };
            let slot = u64::from_le_bytes(s);
            if is_node(slot) && shift == 0 {
                return Err(WalkError::Garbage("a node below a leaf node".into()));
            }
            let child = index + ((i as u64) << shift);
            self.entry(slot, child, depth + 1)?;
        }
        Ok(())
    }
}
