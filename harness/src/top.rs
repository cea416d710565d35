//! `voxring top [NAME]`: a live view of a hub from its directory, like `pw-top`: the hub's
//! cycles, xruns, wakes and evictions, each mic reader's lag and CRC checks with the counters
//! it publishes itself (frames, lost, late, CPU, wake-up latency), and each output lane's
//! queue. `--json` prints one snapshot.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use voxring_linux::cleanup::{SignalMode, install_signal_cleanup, termination_requested};
use voxring_linux::hub::directory::{MIC_JOINED, SLOT_FREE, unpack_name};
use voxring_linux::hub::{Hub, HubOptions};

/// Options of `voxring top`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The hub's name.
    #[arg(default_value = voxring_linux::hub::DEFAULT_HUB)]
    pub name: String,
    /// Print one snapshot as JSON and exit.
    #[arg(long)]
    pub json: bool,
    /// Refresh interval, milliseconds.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,
    /// The hub's owner (uid), when it is not this user (a `--group` hub).
    #[arg(long)]
    pub owner: Option<u32>,
    /// The hub was started with `--group` (its segments are 0660 in this group).
    #[arg(long)]
    pub group: Option<String>,
}

/// One snapshot of the directory.
pub fn snapshot(hub: &Hub) -> anyhow::Result<Value> {
    let info = hub.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut readers = Vec::new();
    for i in 0..info
        .max_agents
        .min(voxring_linux::hub::directory::MAX_SLOTS as u64) as usize
    {
        let Some(row) = hub.mic_row(i) else { continue };
        if row.state != MIC_JOINED && row.evicted_lag == 0 && row.crc_ok + row.crc_bad == 0 {
            continue;
        }
        let a = hub.agent_stats(i).unwrap_or_default();
        let own = a.token == row.token;
        readers.push(json!({
            "slot": i,
            "joined": row.state == MIC_JOINED,
            "pid": row.pid,
            "name": if own { unpack_name(&a.name) } else { String::new() },
            "lag": row.lag,
            "max_lag": row.max_lag,
            "evicted_lag": row.evicted_lag,
            "crc_ok": row.crc_ok,
            "crc_bad": row.crc_bad,
            "crc_unknown": row.crc_unknown,
            "frames": own.then_some(a.frames),
            "lost": own.then_some(a.lost),
            "late": own.then_some(a.late),
            "cpu_percent": (own && a.wall_ns > 0).then(|| a.cpu_ns as f64 * 100.0 / a.wall_ns as f64),
            "wake_p50_us": own.then(|| a.wake_p50_ns as f64 / 1e3),
            "wake_max_us": own.then(|| a.wake_max_ns as f64 / 1e3),
        }));
    }
    let mut outputs = Vec::new();
    for i in 0..voxring_linux::hub::directory::MAX_SLOTS {
        let Some(o) = hub.out_row(i) else { continue };
        if o.state == SLOT_FREE && o.mixed == 0 && o.name == [0; 4] {
            continue;
        }
        outputs.push(json!({
            "lane": i,
            "name": unpack_name(&o.name),
            "pid": o.pid,
            "state": match o.state { 1 => "priming", 2 => "playing", _ => "free" },
            "depth": o.depth,
            "mixed": o.mixed,
            "dropped": o.dropped,
            "repeated": o.repeated,
            "gaps": o.gaps,
            "primes": o.primes,
            "trimmed": o.trimmed,
        }));
    }
    let speech = hub.speech().ok();
    Ok(json!({
        "hub": hub.name(),
        "pid": info.pid,
        "state": match info.state { 1 => "running", 2 => "stopped", _ => "unknown" },
        "rate": info.rate,
        "quantum": info.quantum,
        "channels": info.channels,
        "mic_frames": info.mic_frames,
        "max_agents": info.max_agents,
        "target_depth": info.target_depth,
        "band": info.band,
        "cycles": info.cycles,
        "play_cycles": info.play_cycles,
        "wakes": info.wakes,
        "xruns_capture": info.xruns_capture,
        "xruns_playback": info.xruns_playback,
        "evicted_lag": info.evicted_lag,
        "evicted_dead": info.evicted_dead,
        "mic_dropped": info.mic_dropped,
        "lanes": info.lanes,
        "lanes_refused": info.lanes_refused,
        "cpu_ms": info.cpu_ns as f64 / 1e6,
        "speech": speech.map(|s| s.active),
        "readers": readers,
        "outputs": outputs,
    }))
}

/// A JSON number with `places` decimals, or `-` where the snapshot has none.
fn decimals(n: &Value, places: usize) -> String {
    n.as_f64().map_or("-".into(), |c| format!("{c:.places$}"))
}

/// A JSON value as a table cell: a string without its quotes, a missing value as `-`, a number
/// as written. (Formatting the `Value` itself ignores the column width: serde_json's
/// `Display` does not pad.)
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The columns both tables start with: the reader's slot or the output's lane (`id`), then
/// the process, its PID and name.
fn who(row: &Value, id: &str) -> String {
    format!(
        "{:<5} {:<8} {:<16}",
        cell(&row[id]),
        cell(&row["pid"]),
        cell(&row["name"])
    )
}

fn text(v: &Value) -> String {
    let g = |k: &str| v[k].to_string();
    let mut s = format!(
        "hub {} (pid {}, {}): {} Hz x {} frames, cycles {}, wakes {}, xruns {}/{}, evicted {} lag / {} dead, mic dropped {}, cpu {:.0} ms\n\n",
        v["hub"].as_str().unwrap_or(""),
        g("pid"),
        v["state"].as_str().unwrap_or(""),
        g("rate"),
        g("quantum"),
        g("cycles"),
        g("wakes"),
        g("xruns_capture"),
        g("xruns_playback"),
        g("evicted_lag"),
        g("evicted_dead"),
        g("mic_dropped"),
        v["cpu_ms"].as_f64().unwrap_or(0.0),
    );
    s += "SLOT  PID      NAME              LAG  MAXLAG  FRAMES     LOST   LATE   CPU%  WAKE p50/max us   CRC ok/bad/?\n";
    for r in v["readers"].as_array().into_iter().flatten() {
        s += &format!(
            "{} {:>4} {:>7} {:>7} {:>8} {:>6} {:>6} {:>8}/{:<8} {}/{}/{}\n",
            who(r, "slot"),
            cell(&r["lag"]),
            cell(&r["max_lag"]),
            cell(&r["frames"]),
            cell(&r["lost"]),
            cell(&r["late"]),
            decimals(&r["cpu_percent"], 1),
            decimals(&r["wake_p50_us"], 0),
            decimals(&r["wake_max_us"], 0),
            cell(&r["crc_ok"]),
            cell(&r["crc_bad"]),
            cell(&r["crc_unknown"]),
        );
    }
    s += "\nLANE  PID      NAME             STATE    DEPTH   MIXED  DROPPED  REPEATED  GAPS  PRIMES  TRIMMED\n";
    for o in v["outputs"].as_array().into_iter().flatten() {
        s += &format!(
            "{} {:<8} {:>5} {:>7} {:>8} {:>9} {:>5} {:>7} {:>8}\n",
            who(o, "lane"),
            o["state"].as_str().unwrap_or(""),
            cell(&o["depth"]),
            cell(&o["mixed"]),
            cell(&o["dropped"]),
            cell(&o["repeated"]),
            cell(&o["gaps"]),
            cell(&o["primes"]),
            cell(&o["trimmed"]),
        );
    }
    s
}

/// `voxring top`.
pub fn main(a: Args) -> anyhow::Result<ExitCode> {
    let hub = Hub::find(
        &a.name,
        &HubOptions {
            owner: a.owner,
            group: a.group.as_deref().map(crate::serve::group_spec),
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&snapshot(&hub)?)?);
        return Ok(ExitCode::SUCCESS);
    }
    let _ = install_signal_cleanup(SignalMode::Notify);
    let tty = std::io::stdout().is_terminal();
    while !termination_requested() {
        let v = snapshot(&hub)?;
        let mut out = std::io::stdout().lock();
        if tty {
            // Clear the screen and go home, like top.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        write!(out, "{}", text(&v))?;
        out.flush()?;
        if v["state"] == "stopped" {
            break;
        }
        std::thread::sleep(Duration::from_millis(a.interval_ms.max(50)));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_prints_with_its_decimals_and_a_missing_one_as_a_dash() {
        assert_eq!(decimals(&json!(12.345), 1), "12.3");
        assert_eq!(decimals(&json!(7.6), 0), "8");
        assert_eq!(decimals(&json!(3), 0), "3");
        assert_eq!(decimals(&Value::Null, 1), "-");
    }

    #[test]
    fn each_table_row_starts_with_the_slot_or_lane_pid_and_name() {
        let v = json!({
            "hub": "h", "pid": 1, "state": "running", "rate": 48000, "quantum": 128,
            "cycles": 5, "wakes": 4, "xruns_capture": 0, "xruns_playback": 0,
            "evicted_lag": 0, "evicted_dead": 0, "mic_dropped": 0, "cpu_ms": 2.0,
            "readers": [{
                "slot": 0, "pid": 123, "name": "echo", "lag": 1, "max_lag": 2, "frames": 10,
                "lost": 0, "late": null, "cpu_percent": 1.5, "wake_p50_us": 10.0,
                "wake_max_us": 100.0, "crc_ok": 3, "crc_bad": 0, "crc_unknown": 1
            }],
            "outputs": [{
                "lane": 2, "pid": 456, "name": "talker", "state": "active", "depth": 3,
                "mixed": 100, "dropped": 0, "repeated": 1, "gaps": 0, "primes": 1,
                "trimmed": 1
            }]
        });
        let t = text(&v);
        let lines: Vec<&str> = t.lines().collect();
        // Every cell padded to its column (a `Value` formatted itself would not be), a missing
        // value a dash.
        assert!(
            lines.contains(&"0     123      echo                1       2      10        0      -    1.5       10/100      3/0/1"),
            "{t}"
        );
        assert!(
            lines.contains(&"2     456      talker           active       3     100        0         1     0       1        1"),
            "{t}"
        );
    }
}
