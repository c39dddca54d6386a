//! blk-mq debugfs (`/sys/kernel/debug/block/ublkbN/`): where started and not-yet-started
//! requests sit. `hctx*/busy` lists only started requests; requeued, scheduler-held, quiesced
//! and tag-starved requests show up elsewhere (`dispatch`, `requeue_list`, `cpu*/*_rq_list`,
//! `sched/*`, queue `state`), so all of them are read.
//!
//! Formats from block/blk-mq-debugfs.c (`__blk_mq_debugfs_rq_show`, `sbitmap_bitmap_show`),
//! checked against the text captured in a 6.12 guest.
use serde::{Deserialize, Serialize};

/// The whole debugfs view of one disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlkMqSnapshot {
    /// Queue `state` flags, e.g. `["SAME_COMP", "INIT_DONE", "QUIESCED"]`.
    pub queue_state: Vec<String>,
    pub hctxs: Vec<HctxSnapshot>,
    /// `requeue_list`: requests waiting to be re-inserted.
    pub requeue_list: Vec<RqLine>,
    /// Scheduler (`sched/`) counters when the scheduler exposes them (mq-deadline).
    pub sched: Option<SchedInfo>,
}

/// One hardware context (`hctxN/`) = one ublk queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HctxSnapshot {
    /// N of `hctxN` (= ublk `q_id`).
    pub index: u16,
    /// `busy`: started requests, with their driver tag.
    pub busy: Vec<RqLine>,
    /// `dispatch`: requests the driver refused (BUSY) and blk-mq will retry.
    pub dispatch: Vec<RqLine>,
    /// `tags` summary.
    pub tags: Option<TagsInfo>,
    /// Driver tags allocated, from `tags_bitmap`.
    pub tags_in_use: Vec<u16>,
    /// `hctxN/state` flags (e.g. `STOPPED`, `SCHED_RESTART`).
    pub state: Vec<String>,
    /// `cpuM/{default,read,poll}_rq_list` entries: inserted, not dispatched (no scheduler).
    pub ctx_rqs: Vec<CtxRq>,
}

/// A request sitting on a software (per-CPU) queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtxRq {
    /// e.g. `cpu1/default_rq_list`.
    pub list: String,
    pub rq: RqLine,
}

/// One request as debugfs prints it:
/// `00000000c6c3b280 {.op=READ, .cmd_flags=SYNC, .rq_flags=STARTED|IO_STAT, .state=in_flight, .tag=1, .internal_tag=1}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RqLine {
    pub op: String,
    pub cmd_flags: Vec<String>,
    pub rq_flags: Vec<String>,
    /// `idle`, `in_flight` or `complete` (empty on kernels that do not print it).
    pub state: String,
    /// Driver tag (-1 when none).
    pub tag: i32,
    /// Scheduler tag (-1 without a scheduler).
    pub internal_tag: i32,
}

impl RqLine {
    /// Started and owned by the driver. `STARTED` is absent from rq_flags with scheduler `none`
    /// although the request is in flight, so key on `.state=in_flight`.
    pub fn in_flight(&self) -> bool {
        self.state == "in_flight"
    }
}

/// `hctxN/tags`: counts of the driver tag set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagsInfo {
    pub nr_tags: u32,
    pub nr_reserved_tags: u32,
    /// `bitmap_tags: busy=`: tags allocated now.
    pub busy: u32,
    /// `ws_active=`: waiters sleeping for a free tag (tag starvation when > 0).
    pub ws_active: u32,
}

/// mq-deadline's `sched/queued` and `sched/owned_by_driver` (one count per priority class).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedInfo {
    pub queued: Vec<u64>,
    pub owned_by_driver: Vec<u64>,
    /// Non-empty `sched/*_fifo_list` / `sched/dispatch*` files, by name.
    pub nonempty_lists: Vec<String>,
}

impl SchedInfo {
    /// Requests the scheduler holds that the driver never got: inserted minus dispatched.
    pub fn held(&self) -> u64 {
        let q: u64 = self.queued.iter().sum();
        let o: u64 = self.owned_by_driver.iter().sum();
        q.saturating_sub(o)
    }
}

impl BlkMqSnapshot {
    /// Requests blk-mq holds that ublk has not been handed (not started), by place.
    pub fn held_in_block_layer(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.queue_state.iter().any(|f| f == "QUIESCED") {
            out.push("queue is QUIESCED".to_string());
        }
        if !self.requeue_list.is_empty() {
            out.push(format!(
                "{} request(s) on requeue_list",
                self.requeue_list.len()
            ));
        }
        for h in &self.hctxs {
            if !h.dispatch.is_empty() {
                out.push(format!(
                    "hctx{}: {} request(s) on dispatch",
                    h.index,
                    h.dispatch.len()
                ));
            }
            if !h.ctx_rqs.is_empty() {
                out.push(format!(
                    "hctx{}: {} request(s) on per-CPU lists",
                    h.index,
                    h.ctx_rqs.len()
                ));
            }
            if h.state.iter().any(|f| f == "STOPPED") {
                out.push(format!("hctx{} is STOPPED", h.index));
            }
            if let Some(t) = h.tags.filter(|t| t.ws_active > 0) {
                out.push(format!(
                    "hctx{}: {} waiter(s) for a tag, {}/{} tags busy",
                    h.index, t.ws_active, t.busy, t.nr_tags
                ));
            }
        }
        if let Some(s) = self.sched.as_ref().filter(|s| s.held() > 0) {
            out.push(format!("scheduler holds {} request(s)", s.held()));
        }
        out
    }
}

/// Parse one request line; `None` for lines that are not request lines.
pub fn parse_rq_line(line: &str) -> Option<RqLine> {
    let body = line.split_once('{')?.1;
    let body = body.trim_end().strip_suffix('}').unwrap_or(body);
    let mut rq = RqLine {
        op: String::new(),
        cmd_flags: Vec::new(),
        rq_flags: Vec::new(),
        state: String::new(),
        tag: -1,
        internal_tag: -1,
    };
    let mut saw_tag = false;
    for field in body.split(", ") {
        let Some((k, v)) = field.trim().trim_start_matches('.').split_once('=') else {
            continue;
        };
        match k {
            "op" => rq.op = v.to_string(),
            "cmd_flags" => rq.cmd_flags = split_flags(v),
            "rq_flags" => rq.rq_flags = split_flags(v),
            "state" => rq.state = v.to_string(),
            "tag" => {
                rq.tag = v.parse().ok()?;
                saw_tag = true;
            }
            "internal_tag" => rq.internal_tag = v.parse().ok()?,
            _ => {}
        }
    }
    saw_tag.then_some(rq)
}

/// Parse a whole list file (`busy`, `dispatch`, `requeue_list`, `*_rq_list`).
pub fn parse_rq_list(text: &str) -> Vec<RqLine> {
    text.lines().filter_map(parse_rq_line).collect()
}

/// Flag words joined by `|` (queue `state`, hctx `state`, rq flags). Empty text = no flags.
pub fn split_flags(text: &str) -> Vec<String> {
    text.trim()
        .split('|')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// `hctxN/tags`. Only the first `busy=`/`ws_active=` after `bitmap_tags:` counts (the
/// reserved-tags section follows it).
pub fn parse_tags(text: &str) -> Option<TagsInfo> {
    let mut t = TagsInfo::default();
    let mut section_bitmap = false;
    let mut got_busy = false;
    let mut got_ws = false;
    let mut got_nr = false;
    for line in text.lines() {
        let line = line.trim();
        if line == "bitmap_tags:" {
            section_bitmap = true;
            continue;
        }
        if line.ends_with(':') {
            section_bitmap = false;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let num = || v.trim().parse::<u32>().ok();
        match k {
            "nr_tags" => {
                t.nr_tags = num()?;
                got_nr = true;
            }
            "nr_reserved_tags" => t.nr_reserved_tags = num()?,
            "busy" if section_bitmap && !got_busy => {
                t.busy = num()?;
                got_busy = true;
            }
            "ws_active" if section_bitmap && !got_ws => {
                t.ws_active = num()?;
                got_ws = true;
            }
            _ => {}
        }
    }
    got_nr.then_some(t)
}

/// `tags_bitmap`: a hex dump (`00000000: 1200 ...`), bit N of the byte stream = tag N.
pub fn parse_bitmap(text: &str) -> Vec<u16> {
    let mut tags = Vec::new();
    for line in text.lines() {
        let Some((off, bytes)) = line.split_once(':') else {
            continue;
        };
        let Ok(base) = usize::from_str_radix(off.trim(), 16) else {
            continue;
        };
        let hex: String = bytes.chars().filter(|c| !c.is_whitespace()).collect();
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let Some(byte) = std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            for bit in 0..8 {
                if byte & (1 << bit) != 0
                    && let Ok(tag) = u16::try_from((base + i) * 8 + bit)
                {
                    tags.push(tag);
                }
            }
        }
    }
    tags
}

/// Whitespace-separated counters (`sched/queued`: `0 2 0`).
pub fn parse_counts(text: &str) -> Option<Vec<u64>> {
    text.split_whitespace().map(|w| w.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured in a 6.12 guest with mq-deadline, server SIGSTOPped, two dd readers stuck.
    const BUSY: &str = "00000000c6c3b280 {.op=READ, .cmd_flags=SYNC, .rq_flags=STARTED|SCHED_TAGS|USE_SCHED|IO_STAT|STATS, .state=in_flight, .tag=1, .internal_tag=1}
00000000dde12dd5 {.op=READ, .cmd_flags=SYNC, .rq_flags=STARTED|SCHED_TAGS|USE_SCHED|IO_STAT|STATS, .state=in_flight, .tag=4, .internal_tag=2}
";
    const BUSY_NONE: &str = "00000000a3e70588 {.op=READ, .cmd_flags=SYNC, .rq_flags=IO_STAT|STATS, .state=in_flight, .tag=4, .internal_tag=-1}\n";
    const TAGS: &str = "nr_tags=8
nr_reserved_tags=0
active_queues=0

bitmap_tags:
depth=8
busy=2
cleared=1
bits_per_word=2
map_nr=4
alloc_hint={0, 5}
wake_batch=1
wake_index=0
ws_active=0
ws={
\t{.wait=inactive},
}
round_robin=0
min_shallow_depth=4294967295
";

    #[test]
    fn busy_lines_give_tags_and_in_flight() {
        let rqs = parse_rq_list(BUSY);
        assert_eq!(rqs.len(), 2);
        assert_eq!(rqs[0].tag, 1);
        assert_eq!(rqs[1].tag, 4);
        assert_eq!(rqs[1].internal_tag, 2);
        assert_eq!(rqs[0].op, "READ");
        assert_eq!(rqs[0].cmd_flags, vec!["SYNC"]);
        assert!(rqs[0].rq_flags.contains(&"STARTED".to_string()));
        assert!(rqs.iter().all(RqLine::in_flight));
    }

    #[test]
    fn scheduler_none_lacks_started_but_is_in_flight() {
        // Guards against keying on STARTED: with `none` it is absent for in-flight requests.
        let rqs = parse_rq_list(BUSY_NONE);
        assert_eq!(rqs.len(), 1);
        assert!(!rqs[0].rq_flags.contains(&"STARTED".to_string()));
        assert!(rqs[0].in_flight());
        assert_eq!(rqs[0].internal_tag, -1);
    }

    #[test]
    fn extra_fields_and_empty_flags_are_tolerated() {
        let l = "ffff {.op=WRITE, .cmd_flags=, .rq_flags=, .state=idle, .tag=7, .shared_tag=3, .internal_tag=-1}";
        let rq = parse_rq_line(l).expect("parses");
        assert_eq!(rq.tag, 7);
        assert!(rq.cmd_flags.is_empty());
        assert!(!rq.in_flight());
        assert_eq!(parse_rq_line("garbage"), None);
        assert_eq!(parse_rq_line("x {.op=READ, .tag=zz}"), None);
    }

    #[test]
    fn tags_file_reads_bitmap_section() {
        let t = parse_tags(TAGS).expect("parses");
        assert_eq!(t.nr_tags, 8);
        assert_eq!(t.busy, 2);
        assert_eq!(t.ws_active, 0);
        assert_eq!(parse_tags("nothing"), None);
    }

    #[test]
    fn bitmap_bits_are_tags() {
        assert_eq!(parse_bitmap("00000000: 12\n"), vec![1, 4]);
        assert_eq!(parse_bitmap("00000000: 30"), vec![4, 5]);
        // Two bytes per group; byte 1 bit 0 = tag 8.
        assert_eq!(parse_bitmap("00000000: 0601"), vec![1, 2, 8]);
        // Second line starts at byte 16 = tag 128.
        assert_eq!(
            parse_bitmap("00000000: 0000 0000 0000 0000 0000 0000 0000 0000\n00000010: 01"),
            vec![128]
        );
        assert!(parse_bitmap("").is_empty());
    }

    #[test]
    fn sched_counts_and_held() {
        let s = SchedInfo {
            queued: parse_counts("0 2 0").expect("counts"),
            owned_by_driver: parse_counts("0 2 0").expect("counts"),
            nonempty_lists: vec![],
        };
        // Both stuck reads were dispatched: the scheduler holds nothing.
        assert_eq!(s.held(), 0);
        let s2 = SchedInfo {
            queued: vec![0, 5, 0],
            ..s
        };
        assert_eq!(s2.held(), 3);
        assert_eq!(parse_counts("0 x"), None);
    }

    #[test]
    fn queue_state_and_held_places() {
        let st = split_flags("SAME_COMP|INIT_DONE|STATS|REGISTERED|SQ_SCHED\n");
        assert_eq!(st.len(), 5);
        let mut snap = BlkMqSnapshot {
            queue_state: st,
            hctxs: vec![HctxSnapshot {
                busy: parse_rq_list(BUSY),
                tags: parse_tags(TAGS),
                ..Default::default()
            }],
            ..Default::default()
        };
        // Started requests are not "held in the block layer".
        assert!(snap.held_in_block_layer().is_empty());
        snap.queue_state.push("QUIESCED".into());
        snap.requeue_list = parse_rq_list(BUSY_NONE);
        let held = snap.held_in_block_layer();
        assert_eq!(held.len(), 2, "{held:?}");
        assert!(held[0].contains("QUIESCED"));
        assert!(held[1].contains("requeue_list"));
    }
}
