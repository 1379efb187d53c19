//! What a process (and the processes below it) costs, read from `/proc`: for benchmarks that
//! set Mailbridge's CPU time beside the mail server's.

use std::collections::HashMap;
use std::time::Duration;

/// The numeric fields of `/proc/PID/stat` after the command name (which may hold spaces);
/// empty when the process is gone.
fn stat_fields(pid: u32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    // The first field after the name is the state (a letter): kept as 0 so the indices stay.
    after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect()
}

/// User and system CPU time of a process so far, in clock ticks (1/100 s): `stat`'s fields 14
/// and 15, the 12th and 13th after the name.
pub fn cpu_ticks(pid: u32) -> u64 {
    let fields = stat_fields(pid);
    fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0)
}

/// A process's user and system CPU time so far.
pub fn cpu_time(pid: u32) -> Duration {
    from_ticks(cpu_ticks(pid))
}

/// This process's CPU time so far, to the nanosecond: the sum of its threads' time on a CPU
/// (each thread's `schedstat`; a thread that has ended no longer counts, so time a span no
/// thread ends in). [`cpu_time`] counts in clock ticks of 10 ms.
pub fn own_cpu() -> Duration {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let ns = stat.split_whitespace().next().and_then(|n| n.parse().ok());
        total += Duration::from_nanos(ns.unwrap_or(0));
    }
    total
}

/// Clock ticks as time: the kernel's USER_HZ, 100 a second on Linux.
fn from_ticks(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

/// `root` and every process below it.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(&ppid) = stat_fields(pid).get(1) {
            children.entry(ppid as u32).or_default().push(pid);
        }
    }
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        all.extend(children.get(&all[i]).cloned().unwrap_or_default());
        i += 1;
    }
    all
}

/// The CPU time `root` and its processes have used, the ended ones too: every live process of
/// the tree, and the children `root` has reaped (`stat`'s cutime and cstime, fields 16 and 17,
/// which hold their own reaped children's). Right for a server whose master forks every
/// service itself (Dovecot, PostgreSQL), as long as a measurement ends after the master reaped
/// what ended. A child reaped while the tree is read has left the live processes but was not
/// yet in `root`'s reaped time when that was read, and would be counted nowhere: the reaped
/// time is read before and after the live processes, and all is read again when it changed
/// (at most [`TREE_READS`] times: a master reaping without pause would keep it reading; then
/// the last reading counts, short of what was reaped during it).
pub fn tree_cpu(root: u32) -> Duration {
    let reaped = || {
        let fields = stat_fields(root);
        fields.get(13).unwrap_or(&0) + fields.get(14).unwrap_or(&0)
    };
    let mut ticks = 0;
    for _ in 0..TREE_READS {
        let before = reaped();
        ticks = before + process_tree(root).into_iter().map(cpu_ticks).sum::<u64>();
        if reaped() == before {
            break;
        }
    }
    from_ticks(ticks)
}

/// How many times [`tree_cpu`] reads a tree whose master reaps a child meanwhile.
const TREE_READS: usize = 100;
