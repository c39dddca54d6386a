//! Fault injection: the server becomes a known-broken server on purpose (`--inject SPEC`), so
//! that users and CI can see what each classic bug looks like in `ublk-trace`.
//!
//! Parsing is pure and unit-tested; [`QueueFaults`] is the per-queue, allocation-free view the
//! hot path consults. Active faults are published in the tag-state file (`fault_mask` in the
//! header, `fault` per tag) using the [`FaultKind`] numbers.

use std::fmt;

/// The grammar, shown with every rejected spec.
pub const GRAMMAR: &str = "\
fault specs (--inject, repeatable):
  hang:q=Q,tag=T[,after=N]      never commit tag T of queue Q (from its request N+1 on)
  delay:ms=D[,p=P][,q=Q]        delay commits by D ms (probability P in 0..1, default 1)
  error:errno=E[,p=P]           commit -E instead of the result
  zero-commit[:p=P]             commit 0 bytes for reads and writes
  bad-desc                      read io descriptors with a 16-byte stride (wrong struct size)
  skip-fetch:q=Q[,tags=N]       never send FETCH_REQ for the first N tags of queue Q (all if no N)
  no-start-wait                 submit START_DEV and never reap its completion
  stall-queue:q=Q,after=N[,daemon=K]
                                queue Q's thread stops entering io_uring after N requests
                                (with --per-io-daemon: each of its threads after N of its own,
                                or only daemon K, the owner of tags K, K+n, ...)
  crash:after=N                 abort the process after N requests
  wrong-tag[:q=Q,tag=T]         commit tag (T+1) mod depth instead of T (once; first request if no T)
  double-commit[:q=Q,tag=T]     commit a request twice (once; first request if no T)
  wrong-thread[:q=Q]            commit queue Q's next request from a thread that does not own it
  no-submit[:q=Q,tag=T]         write the COMMIT into an SQ, never call io_uring_enter for it (once)
  no-reap[:q=Q]                 queue Q's thread stops reaping CQEs (it keeps sleeping)
  start-gate                    serve I/O only after START_DEV's completion was reaped
  no-rearm[:q=Q]                with --batch-io: never re-arm a FETCH_IO_CMDS that ended (-ENOBUFS
                                once its buffer is used up), so queue Q's requests wait for ever
(q defaults to 0)";

/// Fault numbers as published in the tag-state file (`fault` = kind, `fault_mask` bit = 1<<kind).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Hang = 1,
    Delay = 2,
    Error = 3,
    ZeroCommit = 4,
    BadDesc = 5,
    SkipFetch = 6,
    NoStartWait = 7,
    StallQueue = 8,
    Crash = 9,
    WrongTag = 10,
    DoubleCommit = 11,
    WrongThread = 12,
    NoSubmit = 13,
    NoReap = 14,
    StartGate = 15,
    NoRearm = 16,
}

impl FaultKind {
    pub fn mask(self) -> u64 {
        1u64 << (self as u32)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    Hang {
        q_id: u16,
        tag: u16,
        after: u64,
    },
    Delay {
        ms: u32,
        p: f64,
        q_id: Option<u16>,
    },
    Error {
        errno: i32,
        p: f64,
    },
    ZeroCommit {
        p: f64,
    },
    BadDesc,
    SkipFetch {
        q_id: u16,
        tags: Option<u16>,
    },
    NoStartWait,
    StallQueue {
        q_id: u16,
        after: u64,
        /// Only this per-io daemon of the queue (`None`: every thread of it).
        daemon: Option<u16>,
    },
    Crash {
        after: u64,
    },
    WrongTag {
        q_id: u16,
        tag: Option<u16>,
    },
    DoubleCommit {
        q_id: u16,
        tag: Option<u16>,
    },
    WrongThread {
        q_id: u16,
    },
    NoSubmit {
        q_id: u16,
        tag: Option<u16>,
    },
    NoReap {
        q_id: u16,
    },
    StartGate,
    NoRearm {
        q_id: u16,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    pub spec: String,
    pub why: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad --inject '{}': {}\n{}", self.spec, self.why, GRAMMAR)
    }
}

impl std::error::Error for ParseError {}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Self::Hang { .. } => FaultKind::Hang,
            Self::Delay { .. } => FaultKind::Delay,
            Self::Error { .. } => FaultKind::Error,
            Self::ZeroCommit { .. } => FaultKind::ZeroCommit,
            Self::BadDesc => FaultKind::BadDesc,
            Self::SkipFetch { .. } => FaultKind::SkipFetch,
            Self::NoStartWait => FaultKind::NoStartWait,
            Self::StallQueue { .. } => FaultKind::StallQueue,
            Self::Crash { .. } => FaultKind::Crash,
            Self::WrongTag { .. } => FaultKind::WrongTag,
            Self::DoubleCommit { .. } => FaultKind::DoubleCommit,
            Self::WrongThread { .. } => FaultKind::WrongThread,
            Self::NoSubmit { .. } => FaultKind::NoSubmit,
            Self::NoReap { .. } => FaultKind::NoReap,
            Self::StartGate => FaultKind::StartGate,
            Self::NoRearm { .. } => FaultKind::NoRearm,
        }
    }

    /// Whether the fault can act on a UBLK_F_BATCH_IO device. The other once-only commit
    /// faults send per-tag COMMIT_AND_FETCH_REQs, which a batch device refuses (EOPNOTSUPP),
    /// so they would not show the bug they are named after; wrong-tag puts the wrong tag
    /// into the next COMMIT_IO_CMDS.
    pub fn works_in_batch_mode(&self) -> bool {
        !matches!(
            self,
            Self::DoubleCommit { .. } | Self::WrongThread { .. } | Self::NoSubmit { .. }
        )
    }

    /// Whether the fault exists only on a UBLK_F_BATCH_IO device (it is about its commands).
    pub fn needs_batch_mode(&self) -> bool {
        matches!(self, Self::NoRearm { .. })
    }

    pub fn parse(spec: &str) -> Result<Self, ParseError> {
        let err = |why: String| ParseError {
            spec: spec.to_string(),
            why,
        };
        let (name, args) = spec.split_once(':').unwrap_or((spec, ""));
        let mut kv = Args::parse(args).map_err(err)?;
        let fault = match name {
            "hang" => Self::Hang {
                q_id: kv.req("q").map_err(err)?,
                tag: kv.req("tag").map_err(err)?,
                after: kv.opt("after").map_err(err)?.unwrap_or(0),
            },
            "delay" => Self::Delay {
                ms: kv.req("ms").map_err(err)?,
                p: kv.prob().map_err(err)?,
                q_id: kv.opt("q").map_err(err)?,
            },
            "error" => {
                let errno: i32 = kv.req("errno").map_err(err)?;
                if !(1..=4095).contains(&errno) {
                    return Err(err(format!(
                        "errno {errno} is not in 1..4095 (e.g. errno=5 for EIO)"
                    )));
                }
                Self::Error {
                    errno,
                    p: kv.prob().map_err(err)?,
                }
            }
            "zero-commit" => Self::ZeroCommit {
                p: kv.prob().map_err(err)?,
            },
            "bad-desc" => Self::BadDesc,
            "skip-fetch" => Self::SkipFetch {
                q_id: kv.req("q").map_err(err)?,
                tags: kv.opt("tags").map_err(err)?,
            },
            "no-start-wait" => Self::NoStartWait,
            "stall-queue" => Self::StallQueue {
                q_id: kv.req("q").map_err(err)?,
                after: kv.req("after").map_err(err)?,
                daemon: kv.opt("daemon").map_err(err)?,
            },
            "crash" => Self::Crash {
                after: kv.req("after").map_err(err)?,
            },
            "wrong-tag" => Self::WrongTag {
                q_id: kv.opt("q").map_err(err)?.unwrap_or(0),
                tag: kv.opt("tag").map_err(err)?,
            },
            "double-commit" => Self::DoubleCommit {
                q_id: kv.opt("q").map_err(err)?.unwrap_or(0),
                tag: kv.opt("tag").map_err(err)?,
            },
            "wrong-thread" => Self::WrongThread {
                q_id: kv.opt("q").map_err(err)?.unwrap_or(0),
            },
            "no-submit" => Self::NoSubmit {
                q_id: kv.opt("q").map_err(err)?.unwrap_or(0),
                tag: kv.opt("tag").map_err(err)?,
            },
            "no-reap" => Self::NoReap {
                q_id: kv.opt("q").map_err(err)?.unwrap_or(0),
            },
            "start-gate" => Self::StartGate,
            "no-rearm" => Self::NoRearm {
                q_id: kv.opt("q").map_err(err)?.unwrap_or(0),
            },
            other => return Err(err(format!("unknown fault '{other}'"))),
        };
        kv.finish().map_err(err)?;
        Ok(fault)
    }

    /// Check the fault against the device geometry the kernel granted.
    pub fn validate(&self, nr_queues: u16, depth: u16) -> Result<(), String> {
        let q_ok = |q: u16| {
            if q < nr_queues {
                Ok(())
            } else {
                Err(format!(
                    "--inject {self}: queue {q} does not exist (device has {nr_queues})"
                ))
            }
        };
        let tag_ok = |tag: u16| {
            if tag < depth {
                Ok(())
            } else {
                Err(format!("--inject {self}: tag {tag} >= queue depth {depth}"))
            }
        };
        match *self {
            Self::Hang { q_id, tag, .. } => {
                q_ok(q_id)?;
                tag_ok(tag)
            }
            Self::WrongTag { q_id, tag } => {
                q_ok(q_id)?;
                if depth < 2 {
                    return Err(format!(
                        "--inject {self}: needs a queue depth of at least 2 (another tag to commit)"
                    ));
                }
                tag.map_or(Ok(()), tag_ok)
            }
            Self::DoubleCommit { q_id, tag } | Self::NoSubmit { q_id, tag } => {
                q_ok(q_id)?;
                tag.map_or(Ok(()), tag_ok)
            }
            Self::Delay { q_id: Some(q), .. }
            | Self::SkipFetch { q_id: q, .. }
            | Self::StallQueue { q_id: q, .. }
            | Self::WrongThread { q_id: q }
            | Self::NoReap { q_id: q }
            | Self::NoRearm { q_id: q } => q_ok(q),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Hang { q_id, tag, after } => write!(f, "hang:q={q_id},tag={tag},after={after}"),
            Self::Delay { ms, p, q_id } => {
                write!(f, "delay:ms={ms},p={p}")?;
                q_id.map_or(Ok(()), |q| write!(f, ",q={q}"))
            }
            Self::Error { errno, p } => write!(f, "error:errno={errno},p={p}"),
            Self::ZeroCommit { p } => write!(f, "zero-commit:p={p}"),
            Self::BadDesc => write!(f, "bad-desc"),
            Self::SkipFetch { q_id, tags } => {
                write!(f, "skip-fetch:q={q_id}")?;
                tags.map_or(Ok(()), |t| write!(f, ",tags={t}"))
            }
            Self::NoStartWait => write!(f, "no-start-wait"),
            Self::StallQueue {
                q_id,
                after,
                daemon,
            } => {
                write!(f, "stall-queue:q={q_id},after={after}")?;
                daemon.map_or(Ok(()), |d| write!(f, ",daemon={d}"))
            }
            Self::Crash { after } => write!(f, "crash:after={after}"),
            Self::WrongTag { q_id, tag } => {
                write!(f, "wrong-tag:q={q_id}")?;
                tag.map_or(Ok(()), |t| write!(f, ",tag={t}"))
            }
            Self::DoubleCommit { q_id, tag } => {
                write!(f, "double-commit:q={q_id}")?;
                tag.map_or(Ok(()), |t| write!(f, ",tag={t}"))
            }
            Self::WrongThread { q_id } => write!(f, "wrong-thread:q={q_id}"),
            Self::NoSubmit { q_id, tag } => {
                write!(f, "no-submit:q={q_id}")?;
                tag.map_or(Ok(()), |t| write!(f, ",tag={t}"))
            }
            Self::NoReap { q_id } => write!(f, "no-reap:q={q_id}"),
            Self::StartGate => write!(f, "start-gate"),
            Self::NoRearm { q_id } => write!(f, "no-rearm:q={q_id}"),
        }
    }
}

/// `key=value` pairs of one spec; every key must be consumed.
struct Args<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Args<'a> {
    fn parse(s: &'a str) -> Result<Self, String> {
        let mut v = Vec::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, val) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not key=value"))?;
            if v.iter().any(|(k2, _)| *k2 == k) {
                return Err(format!("'{k}' given twice"));
            }
            v.push((k, val));
        }
        Ok(Self(v))
    }
    fn take(&mut self, key: &str) -> Option<&'a str> {
        let i = self.0.iter().position(|(k, _)| *k == key)?;
        Some(self.0.remove(i).1)
    }
    fn opt<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>, String> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{key}={v} is not a valid number")),
        }
    }
    fn req<T: std::str::FromStr>(&mut self, key: &str) -> Result<T, String> {
        self.opt(key)?.ok_or_else(|| format!("missing {key}="))
    }
    fn prob(&mut self) -> Result<f64, String> {
        let p: f64 = self.opt("p")?.unwrap_or(1.0);
        if (0.0..=1.0).contains(&p) {
            Ok(p)
        } else {
            Err(format!("p={p} is not a probability in 0..1"))
        }
    }
    fn finish(self) -> Result<(), String> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(format!("unknown key '{k}'")),
        }
    }
}

/// What one queue's hot path must do differently. Built once per queue thread.
#[derive(Clone, Debug, Default)]
pub struct QueueFaults {
    /// (tag, after): requests on that tag after which it is never committed.
    pub hang: Vec<(u16, u64)>,
    pub delay: Option<(u32, f64)>,
    pub error: Option<(i32, f64)>,
    pub zero_commit: Option<f64>,
    pub bad_desc: bool,
    /// Tags `0..n` of this queue get no FETCH_REQ.
    pub skip_fetch: Option<u16>,
    pub stall_after: Option<u64>,
    pub crash_after: Option<u64>,
    /// Commit faults that act once, on the first matching request after arming:
    /// (kind, tag or any, already fired).
    pub once: Vec<(FaultKind, Option<u16>, bool)>,
    /// This queue's thread stops reaping CQEs once armed.
    pub no_reap: bool,
    /// Serve I/O only after main reaped START_DEV's completion.
    pub start_gate: bool,
    /// BATCH_IO: a FETCH_IO_CMDS that ended is not armed again.
    pub no_rearm: bool,
    rng: u64,
}

impl QueueFaults {
    pub fn for_queue(faults: &[Fault], q_id: u16, depth: u16, seed: u64) -> Self {
        let mut qf = Self {
            rng: seed | 1,
            ..Default::default()
        };
        for f in faults {
            match *f {
                Fault::Hang {
                    q_id: q,
                    tag,
                    after,
                } if q == q_id => qf.hang.push((tag, after)),
                Fault::Delay { ms, p, q_id: q } if q.is_none_or(|q| q == q_id) => {
                    qf.delay = Some((ms, p))
                }
                Fault::Error { errno, p } => qf.error = Some((errno, p)),
                Fault::ZeroCommit { p } => qf.zero_commit = Some(p),
                Fault::BadDesc => qf.bad_desc = true,
                Fault::SkipFetch { q_id: q, tags } if q == q_id => {
                    qf.skip_fetch = Some(tags.unwrap_or(depth).min(depth))
                }
                Fault::StallQueue {
                    q_id: q,
                    after,
                    daemon: None,
                } if q == q_id => qf.stall_after = Some(after),
                Fault::Crash { after } => qf.crash_after = Some(after),
                Fault::WrongTag { q_id: q, tag }
                | Fault::DoubleCommit { q_id: q, tag }
                | Fault::NoSubmit { q_id: q, tag }
                    if q == q_id =>
                {
                    qf.once.push((f.kind(), tag, false))
                }
                Fault::WrongThread { q_id: q } if q == q_id => {
                    qf.once.push((FaultKind::WrongThread, None, false))
                }
                Fault::NoReap { q_id: q } if q == q_id => qf.no_reap = true,
                Fault::StartGate => qf.start_gate = true,
                Fault::NoRearm { q_id: q } if q == q_id => qf.no_rearm = true,
                _ => {}
            }
        }
        qf
    }

    /// The faults of one per-io daemon: those of its queue, with each once-only fault kept by
    /// the one thread that can fire it (the owner of its tag; daemon 0 when it names none), so
    /// a fault meant to act once does not act once per thread.
    pub fn for_daemon(
        faults: &[Fault],
        q_id: u16,
        daemon: crate::queue::Daemon,
        depth: u16,
        seed: u64,
    ) -> Self {
        let mut qf = Self::for_queue(faults, q_id, depth, seed);
        qf.once
            .retain(|&(_, tag, _)| tag.map_or(daemon.index == 0, |t| daemon.owns(t)));
        qf.hang.retain(|&(tag, _)| daemon.owns(tag));
        for f in faults {
            if let Fault::StallQueue {
                q_id: q,
                after,
                daemon: Some(d),
            } = *f
                && q == q_id
                && d == daemon.index
            {
                qf.stall_after = Some(after);
            }
        }
        qf
    }

    /// The once-only commit fault that takes this request on `tag`, if any (marked fired).
    pub fn take_once(&mut self, tag: u16) -> Option<FaultKind> {
        let hit = self
            .once
            .iter_mut()
            .find(|(_, t, fired)| !*fired && t.is_none_or(|t| t == tag))?;
        hit.2 = true;
        Some(hit.0)
    }

    /// A once-only fault of `kind` is configured for this queue.
    pub fn has_once(&self, kind: FaultKind) -> bool {
        self.once.iter().any(|(k, _, _)| *k == kind)
    }

    pub fn is_empty(&self) -> bool {
        self.hang.is_empty()
            && self.delay.is_none()
            && self.error.is_none()
            && self.zero_commit.is_none()
            && !self.bad_desc
            && self.skip_fetch.is_none()
            && self.stall_after.is_none()
            && self.crash_after.is_none()
            && self.once.is_empty()
            && !self.no_reap
            && !self.no_rearm
    }

    /// xorshift64: cheap, allocation-free, good enough for fault probabilities.
    fn chance(&mut self, p: f64) -> bool {
        if p >= 1.0 {
            return true;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }

    pub fn skips_fetch(&self, tag: u16) -> bool {
        self.skip_fetch.is_some_and(|n| tag < n)
    }

    /// True when this request (the `served`-th on `tag`, 0-based) must never be committed.
    pub fn hangs(&self, tag: u16, served: u64) -> bool {
        self.hang
            .iter()
            .any(|&(t, after)| t == tag && served >= after)
    }

    /// The result to commit instead of `res` (error / zero-commit faults), with its kind.
    pub fn rewrite_result(&mut self, op: u8, res: i32) -> Option<(i32, FaultKind)> {
        if let Some((errno, p)) = self.error
            && self.chance(p)
        {
            return Some((-errno, FaultKind::Error));
        }
        let rw = op == ublk_abi::UBLK_IO_OP_READ || op == ublk_abi::UBLK_IO_OP_WRITE;
        if let Some(p) = self.zero_commit
            && rw
            && res > 0
            && self.chance(p)
        {
            return Some((0, FaultKind::ZeroCommit));
        }
        None
    }

    /// Delay for this commit, if any.
    pub fn delay_ms(&mut self) -> Option<u32> {
        let (ms, p) = self.delay?;
        self.chance(p).then_some(ms)
    }
}

/// Bits for the tag-state header.
pub fn fault_mask(faults: &[Fault]) -> u64 {
    faults.iter().fold(0, |m, f| m | f.kind().mask())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With per-io daemons a once-only fault stays once: only the owner of its tag (or daemon 0
    /// when it names none) keeps it, and a hang lives in the thread that owns the tag.
    #[test]
    fn per_io_daemons_split_the_faults_of_their_queue() {
        use crate::queue::Daemon;
        let faults = [
            Fault::parse("double-commit:q=0,tag=3").expect("spec"),
            Fault::parse("wrong-thread:q=0").expect("spec"),
            Fault::parse("hang:q=0,tag=1").expect("spec"),
            Fault::parse("delay:ms=5,q=0").expect("spec"),
            Fault::parse("stall-queue:q=0,after=3,daemon=1").expect("spec"),
        ];
        let d = |index| QueueFaults::for_daemon(&faults, 0, Daemon { index, count: 2 }, 8, 1);
        let (d0, d1) = (d(0), d(1));
        assert_eq!(d0.once, vec![(FaultKind::WrongThread, None, false)]);
        assert_eq!(d1.once, vec![(FaultKind::DoubleCommit, Some(3), false)]);
        assert!(d0.hang.is_empty());
        assert_eq!(d1.hang, vec![(1, 0)]);
        assert_eq!(d0.delay, Some((5, 1.0)));
        assert_eq!(d1.delay, Some((5, 1.0)));
        assert_eq!(d0.stall_after, None, "the stall names daemon 1");
        assert_eq!(d1.stall_after, Some(3));
        let whole = QueueFaults::for_daemon(&faults, 0, Daemon::WHOLE_QUEUE, 8, 1);
        assert_eq!(whole.once.len(), 2);
        assert_eq!(whole.hang, vec![(1, 0)]);
    }

    #[test]
    fn parses_every_fault() {
        assert_eq!(
            Fault::parse("hang:q=0,tag=3,after=10"),
            Ok(Fault::Hang {
                q_id: 0,
                tag: 3,
                after: 10
            })
        );
        assert_eq!(
            Fault::parse("hang:q=1,tag=0"),
            Ok(Fault::Hang {
                q_id: 1,
                tag: 0,
                after: 0
            })
        );
        assert_eq!(
            Fault::parse("delay:ms=50,p=0.5,q=1"),
            Ok(Fault::Delay {
                ms: 50,
                p: 0.5,
                q_id: Some(1)
            })
        );
        assert_eq!(
            Fault::parse("error:errno=5"),
            Ok(Fault::Error { errno: 5, p: 1.0 })
        );
        assert_eq!(
            Fault::parse("zero-commit"),
            Ok(Fault::ZeroCommit { p: 1.0 })
        );
        assert_eq!(
            Fault::parse("zero-commit:p=0.1"),
            Ok(Fault::ZeroCommit { p: 0.1 })
        );
        assert_eq!(Fault::parse("bad-desc"), Ok(Fault::BadDesc));
        assert_eq!(
            Fault::parse("skip-fetch:q=0"),
            Ok(Fault::SkipFetch {
                q_id: 0,
                tags: None
            })
        );
        assert_eq!(
            Fault::parse("skip-fetch:q=0,tags=2"),
            Ok(Fault::SkipFetch {
                q_id: 0,
                tags: Some(2)
            })
        );
        assert_eq!(Fault::parse("no-start-wait"), Ok(Fault::NoStartWait));
        assert_eq!(
            Fault::parse("stall-queue:q=0,after=100"),
            Ok(Fault::StallQueue {
                q_id: 0,
                after: 100,
                daemon: None
            })
        );
        assert_eq!(
            Fault::parse("stall-queue:q=1,after=0,daemon=1"),
            Ok(Fault::StallQueue {
                q_id: 1,
                after: 0,
                daemon: Some(1)
            })
        );
        assert_eq!(Fault::parse("crash:after=7"), Ok(Fault::Crash { after: 7 }));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "hang:q=0,tag=3,after=10",
            "delay:ms=5,p=1,q=2",
            "skip-fetch:q=1,tags=4",
            "crash:after=1",
            "stall-queue:q=0,after=5,daemon=1",
        ] {
            let f = Fault::parse(s).expect("valid spec");
            assert_eq!(Fault::parse(&f.to_string()), Ok(f));
        }
    }

    #[test]
    fn rejects_bad_specs_with_grammar() {
        for (spec, why) in [
            ("hang:q=0", "missing tag="),
            ("hang:q=0,tag=x", "tag=x is not a valid number"),
            ("hang:q=0,tag=1,bogus=2", "unknown key 'bogus'"),
            ("hang:q=0,q=1,tag=1", "'q' given twice"),
            ("delay:ms=5,p=2", "p=2 is not a probability in 0..1"),
            ("error:errno=0", "errno 0 is not in 1..4095"),
            ("explode", "unknown fault 'explode'"),
            ("hang:q0", "'q0' is not key=value"),
            ("crash", "missing after="),
        ] {
            let e = Fault::parse(spec).expect_err(spec);
            assert!(e.why.contains(why), "{spec}: got '{}'", e.why);
            assert!(
                e.to_string().contains("hang:q=Q,tag=T[,after=N]"),
                "grammar shown"
            );
        }
    }

    #[test]
    fn validate_checks_geometry() {
        let f = Fault::Hang {
            q_id: 1,
            tag: 0,
            after: 0,
        };
        assert!(f.validate(1, 64).is_err());
        assert!(f.validate(2, 64).is_ok());
        assert!(
            Fault::Hang {
                q_id: 0,
                tag: 64,
                after: 0
            }
            .validate(1, 64)
            .is_err()
        );
    }

    #[test]
    fn queue_view_selects_own_queue() {
        let faults = [
            Fault::Hang {
                q_id: 0,
                tag: 3,
                after: 2,
            },
            Fault::Hang {
                q_id: 1,
                tag: 5,
                after: 0,
            },
            Fault::SkipFetch {
                q_id: 1,
                tags: None,
            },
        ];
        let q0 = QueueFaults::for_queue(&faults, 0, 8, 1);
        assert!(!q0.hangs(3, 1));
        assert!(q0.hangs(3, 2));
        assert!(!q0.hangs(5, 9));
        assert!(!q0.skips_fetch(0));
        let q1 = QueueFaults::for_queue(&faults, 1, 8, 1);
        assert!(q1.hangs(5, 0));
        assert!(q1.skips_fetch(7));
        assert!(!QueueFaults::for_queue(&[], 0, 8, 1).skips_fetch(0));
        assert!(QueueFaults::for_queue(&[], 0, 8, 1).is_empty());
        assert_eq!(fault_mask(&faults), (1 << 1) | (1 << 6));
    }

    #[test]
    fn probability_is_respected_roughly() {
        let mut q = QueueFaults::for_queue(&[Fault::ZeroCommit { p: 0.25 }], 0, 8, 12345);
        let hits = (0..4000)
            .filter(|_| q.rewrite_result(ublk_abi::UBLK_IO_OP_READ, 4096).is_some())
            .count();
        assert!((800..1200).contains(&hits), "{hits} of 4000 at p=0.25");
        // Flushes carry no data: zero-commit leaves them alone.
        assert_eq!(q.rewrite_result(ublk_abi::UBLK_IO_OP_FLUSH, 0), None);
    }

    #[test]
    fn parses_commit_and_ring_faults() {
        assert_eq!(
            Fault::parse("wrong-tag:q=1,tag=3"),
            Ok(Fault::WrongTag {
                q_id: 1,
                tag: Some(3)
            })
        );
        assert_eq!(
            Fault::parse("wrong-tag"),
            Ok(Fault::WrongTag { q_id: 0, tag: None })
        );
        assert_eq!(
            Fault::parse("double-commit:tag=2"),
            Ok(Fault::DoubleCommit {
                q_id: 0,
                tag: Some(2)
            })
        );
        assert_eq!(
            Fault::parse("wrong-thread:q=1"),
            Ok(Fault::WrongThread { q_id: 1 })
        );
        assert_eq!(
            Fault::parse("wrong-thread"),
            Ok(Fault::WrongThread { q_id: 0 })
        );
        assert_eq!(
            Fault::parse("no-submit:q=0,tag=1"),
            Ok(Fault::NoSubmit {
                q_id: 0,
                tag: Some(1)
            })
        );
        assert_eq!(Fault::parse("no-reap"), Ok(Fault::NoReap { q_id: 0 }));
        assert_eq!(Fault::parse("start-gate"), Ok(Fault::StartGate));
        assert_eq!(Fault::parse("no-rearm:q=1"), Ok(Fault::NoRearm { q_id: 1 }));
        assert!(Fault::NoRearm { q_id: 0 }.needs_batch_mode());
        for s in [
            "no-rearm:q=1",
            "wrong-tag:q=1,tag=3",
            "wrong-tag:q=0",
            "double-commit:q=0,tag=2",
            "wrong-thread:q=1",
            "no-submit:q=0",
            "no-reap:q=1",
            "start-gate",
        ] {
            let f = Fault::parse(s).expect("valid spec");
            assert_eq!(f.to_string(), s);
            assert_eq!(Fault::parse(&f.to_string()), Ok(f));
        }
        for (spec, why) in [
            ("wrong-tag:tag=x", "tag=x is not a valid number"),
            ("wrong-thread:tag=1", "unknown key 'tag'"),
            ("no-reap:q=0,after=3", "unknown key 'after'"),
            ("start-gate:q=0", "unknown key 'q'"),
            ("double-commit:q=-1", "q=-1 is not a valid number"),
        ] {
            let e = Fault::parse(spec).expect_err(spec);
            assert!(e.why.contains(why), "{spec}: got '{}'", e.why);
            assert!(
                e.to_string().contains("wrong-tag[:q=Q,tag=T]"),
                "grammar shown"
            );
        }
    }

    #[test]
    fn new_faults_validate_geometry() {
        let wt = Fault::WrongTag {
            q_id: 0,
            tag: Some(3),
        };
        assert!(wt.validate(1, 4).is_ok());
        assert!(wt.validate(1, 3).is_err(), "tag 3 >= depth 3");
        let e = Fault::WrongTag { q_id: 0, tag: None }
            .validate(1, 1)
            .expect_err("depth 1 has no other tag");
        assert!(e.contains("at least 2"), "{e}");
        assert!(Fault::WrongThread { q_id: 1 }.validate(1, 8).is_err());
        assert!(Fault::NoReap { q_id: 0 }.validate(1, 8).is_ok());
        assert!(
            Fault::NoSubmit {
                q_id: 0,
                tag: Some(8)
            }
            .validate(1, 8)
            .is_err()
        );
        assert!(Fault::StartGate.validate(1, 1).is_ok());
    }

    #[test]
    fn once_faults_fire_once_on_their_tag() {
        let faults = [
            Fault::WrongTag {
                q_id: 0,
                tag: Some(2),
            },
            Fault::DoubleCommit { q_id: 1, tag: None },
            Fault::NoReap { q_id: 1 },
            Fault::StartGate,
        ];
        let mut q0 = QueueFaults::for_queue(&faults, 0, 4, 1);
        assert!(!q0.is_empty() && !q0.no_reap && q0.start_gate);
        assert_eq!(q0.take_once(1), None);
        assert_eq!(q0.take_once(2), Some(FaultKind::WrongTag));
        assert_eq!(q0.take_once(2), None, "fires once");
        let mut q1 = QueueFaults::for_queue(&faults, 1, 4, 1);
        assert!(q1.no_reap && q1.has_once(FaultKind::DoubleCommit));
        assert_eq!(q1.take_once(3), Some(FaultKind::DoubleCommit), "any tag");
        assert_eq!(q1.take_once(0), None);
        assert_eq!(
            fault_mask(&faults),
            (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15)
        );
    }
}
