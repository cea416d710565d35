//! What each agent of a voice run is scheduled under, read from outside the agent: every
//! thread's policy and real-time priority in `/proc/PID/task/TID/stat`. An agent saying it
//! promoted itself is not proof; this is what the kernel runs.

use serde_json::{Value, json};

/// `SCHED_FIFO` in `/proc/PID/task/TID/stat`'s policy field.
const SCHED_FIFO: u32 = 1;

/// One thread's scheduling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSched {
    pub tid: u32,
    /// The thread's name (`comm`).
    pub name: String,
    /// The kernel's policy number (0 SCHED_OTHER, 1 SCHED_FIFO, 2 SCHED_RR, ...).
    pub policy: u32,
    pub rt_priority: u32,
}

/// Parses one `stat` line: the thread's name is in parentheses and may hold spaces or
/// parentheses, so the fields are counted from the last `)`. rt_priority is field 40 and
/// policy field 41 (proc(5)).
fn parse_stat(tid: u32, stat: &str) -> Option<ThreadSched> {
    let close = stat.rfind(')')?;
    let name = stat[stat.find('(')? + 1..close].to_owned();
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    Some(ThreadSched {
        tid,
        name,
        rt_priority: f.get(37)?.parse().ok()?,
        policy: f.get(38)?.parse().ok()?,
    })
}

/// Every thread of process `pid` (a thread that ends while it is read is left out).
pub fn threads(pid: u32) -> std::io::Result<Vec<ThreadSched>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let name = e?.file_name();
        let Some(tid) = name.to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
            && let Some(t) = parse_stat(tid, &stat)
        {
            out.push(t);
        }
    }
    out.sort_by_key(|t| t.tid);
    Ok(out)
}

/// How `pid`'s threads are scheduled against what was asked (`fifo`: the SCHED_FIFO
/// priorities its threads were given, 0 for none), as JSON, and a warning when they are not
/// as asked.
pub fn check(who: &str, pid: u32, fifo: &[u8]) -> (Value, Option<String>) {
    let ts = match threads(pid) {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => return (json!({"error": "no threads"}), None),
        Err(e) => return (json!({"error": e.to_string()}), None),
    };
    let as_asked = ts
        .iter()
        .filter(|t| {
            fifo.iter().any(|&f| {
                if f == 0 {
                    t.policy != SCHED_FIFO
                } else {
                    t.policy == SCHED_FIFO && t.rt_priority == u32::from(f)
                }
            })
        })
        .count();
    let asked: Vec<String> = fifo
        .iter()
        .map(|&f| {
            if f == 0 {
                "SCHED_OTHER".to_owned()
            } else {
                format!("SCHED_FIFO {f}")
            }
        })
        .collect();
    let v = json!({
        "asked": asked.join(" or "),
        "threads": ts.len(),
        "as_asked": as_asked,
        "per_thread": ts.iter().map(|t| json!([t.tid, t.name, t.policy, t.rt_priority])).collect::<Vec<_>>(),
    });
    let warning = (as_asked < ts.len()).then(|| {
        format!(
            "only {as_asked} of the {who}'s {} threads run as asked ({}; see its own \
             warning): a thread left at normal priority shares the CPU with every other \
             process, so its stage slows down under load; run as root or with CAP_SYS_NICE and \
             a high enough RLIMIT_RTPRIO",
            ts.len(),
            asked.join(" or ")
        )
    });
    (v, warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let mut fields = vec!["0"; 52];
        fields[37] = "50";
        fields[38] = "1";
        let line = format!("1234 (a) b (c)) {}\n", fields.join(" "));
        assert_eq!(
            parse_stat(1234, &line),
            Some(ThreadSched {
                tid: 1234,
                name: "a) b (c)".into(),
                policy: 1,
                rt_priority: 50
            })
        );
        assert_eq!(parse_stat(1, "1 (short) S 0"), None);
    }

    #[test]
    fn a_thread_promoted_here_is_seen_from_outside() {
        let pid = std::process::id();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            let r = voxring_linux::rt::set_fifo(7);
            let tid = rustix::thread::gettid()
                .as_raw_nonzero()
                .get()
                .unsigned_abs();
            tx.send((r.is_ok(), tid)).unwrap();
            let _ = done_rx.recv();
        });
        let (promoted, tid) = rx.recv().unwrap();
        let t = threads(pid).unwrap();
        let me = t
            .iter()
            .find(|t| t.tid == tid)
            .expect("the thread is listed");
        if promoted {
            assert_eq!((me.policy, me.rt_priority), (SCHED_FIFO, 7));
        } else {
            assert_eq!(me.policy, 0, "refused: it stays SCHED_OTHER");
        }
        assert!(t.iter().any(|t| t.tid == pid), "the main thread is listed");
        done_tx.send(()).unwrap();
        h.join().unwrap();
    }
}
