//! Tasks in D state, from /proc (what a test must not leave behind).
use std::path::Path;

/// A task in D state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DTask {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub wchan: String,
    pub kthread: bool,
}

const PF_KTHREAD: u64 = 0x0020_0000;

/// Every task in D state, kernel threads marked (kworkers sleep in D briefly all the time:
/// most callers leave them out).
pub fn d_state_tasks() -> Vec<DTask> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(d) = d_task(pid, tid, &t.path()) {
                out.push(d);
            }
        }
    }
    out
}

/// User-space tasks in D state only.
pub fn user_d_state_tasks() -> Vec<DTask> {
    d_state_tasks().into_iter().filter(|t| !t.kthread).collect()
}

fn d_task(pid: u32, tid: u32, dir: &Path) -> Option<DTask> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let (state, comm, flags) = parse_stat(&stat)?;
    if state != 'D' {
        return None;
    }
    let wchan = std::fs::read_to_string(dir.join("wchan")).unwrap_or_default();
    Some(DTask {
        pid,
        tid,
        comm,
        wchan,
        kthread: flags & PF_KTHREAD != 0,
    })
}

/// `pid (comm) S ppid pgrp session tty tpgid flags ...` -> (state, comm, flags). comm may hold
/// spaces and parentheses: the last ") " ends it.
fn parse_stat(stat: &str) -> Option<(char, String, u64)> {
    let (head, rest) = stat.rsplit_once(") ")?;
    let comm = head.split_once(" (").map(|(_, c)| c.to_string())?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let flags = f.get(6).and_then(|x| x.parse().ok()).unwrap_or(0);
    Some((state, comm, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_state_comm_and_flags() {
        let s = "202 (dd) D 151 0 0 0 -1 4194624 26 0 0 0";
        assert_eq!(parse_stat(s), Some(('D', "dd".into(), 4194624)));
        let k = "9 (kworker/0:1 (x)) I 2 0 0 0 -1 69238880 0";
        let (st, comm, flags) = parse_stat(k).expect("parses");
        assert_eq!((st, comm.as_str()), ('I', "kworker/0:1 (x)"));
        assert_ne!(flags & PF_KTHREAD, 0);
        assert_eq!(parse_stat("garbage"), None);
    }
}
