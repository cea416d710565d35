//! `voxring hub-agent` (hidden): an outside agent process built only on the public client
//! (`voxring_linux::hub`), for the tests and benchmarks of `voxring serve`. It reads the mic
//! (lossy or lossless), optionally echoes every frame or speaks a constant into its own
//! output ring, and prints one JSON line: what it read, and what the hub said of its CRC-32
//! windows.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use voxring_core::SampleFormat;
use voxring_linux::audio::Sample;
use voxring_linux::hub::directory::MicRow;
use voxring_linux::hub::{Delivery, Hub, HubOptions, Read, Speaker};

/// Options of `voxring hub-agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The hub's name.
    #[arg(long, default_value = voxring_linux::hub::DEFAULT_HUB)]
    pub hub: String,
    /// This agent's name (its output ring is <hub>.out.<name>).
    #[arg(long)]
    pub name: String,
    /// Fail on eviction instead of rejoining and counting.
    #[arg(long)]
    pub lossless: bool,
    /// Write every mic frame back into this agent's output ring.
    #[arg(long)]
    pub echo: bool,
    /// Write a frame of this constant sample value per mic frame (s16/s32 units; f32: /32768).
    #[arg(long)]
    pub tone: Option<i32>,
    /// Stop after reading this many frames.
    #[arg(long)]
    pub frames: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Sleep this long after each frame (a slow agent).
    #[arg(long, default_value_t = 0)]
    pub slow_ms: u64,
    /// The hub shares its segments with this group (name or gid).
    #[arg(long)]
    pub group: Option<String>,
    /// SCHED_FIFO priority of this agent (0: none). A refusal is a warning on stderr.
    #[arg(long, default_value_t = 0)]
    pub rt_priority: u8,
}

/// `voxring hub-agent`.
pub fn main(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let opts = HubOptions {
        owner: None,
        group: a.group.as_deref().map(super::group_spec),
    };
    let t0 = voxring_linux::clock::monotonic_ns();
    let hub = Hub::find(&a.hub, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let (_, Some(w)) = crate::run::device::promote(a.rt_priority) {
        eprintln!("voxring hub-agent {}: warning: {w}", a.name);
    }
    match hub.config().format {
        SampleFormat::S16 => run::<i16>(&hub, &a, t0),
        SampleFormat::S32 => run::<i32>(&hub, &a, t0),
        SampleFormat::F32 => run::<f32>(&hub, &a, t0),
    }
}

/// This reader's row once the hub checked every window it published (giving up after 5 s,
/// or at once when the hub is gone).
fn checked(hub: &Hub, mic: &voxring_linux::hub::MicReader, live: bool) -> MicRow {
    let windows = mic.stats().windows;
    let give_up = Instant::now() + Duration::from_secs(5);
    let mut row = hub.mic_row(usize::from(mic.slot())).unwrap_or_default();
    while live && row.crc_ok + row.crc_bad + row.crc_unknown < windows && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(5));
        row = hub.mic_row(usize::from(mic.slot())).unwrap_or_default();
    }
    row
}

fn tone_value<T: Sample>(v: i32) -> T {
    match T::SAMPLE_FORMAT {
        SampleFormat::S16 => T::from_f32(v as f32 / 32768.0),
        SampleFormat::S32 => T::from_f32(v as f32 / 2_147_483_648.0),
        SampleFormat::F32 => T::from_f32(v as f32 / 32768.0),
    }
}

/// `t0`: CLOCK_MONOTONIC before `Hub::find` (for the join-to-first-frame figure).
fn run<T: Sample>(hub: &Hub, a: &AgentArgs, t0: u64) -> anyhow::Result<ExitCode> {
    let delivery = if a.lossless {
        Delivery::Lossless
    } else {
        Delivery::Lossy
    };
    let mut mic = hub
        .join_mic(&a.name, delivery)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let joined_ns = voxring_linux::clock::monotonic_ns() - t0;
    let mut first_frame_ns = None;
    // The hub stamps a frame (CLOCK_MONOTONIC) right before it commits it: the first frame's
    // stamp less the join is how long the join waited for a commit (the protocol's part, at
    // most one cycle); the rest of `first_frame_ns` is this process's wake-up.
    let mut first_stamp_ns: Option<u64> = None;
    let mut speaker: Option<Speaker> = if a.echo || a.tone.is_some() {
        Some(hub.speaker(&a.name).map_err(|e| anyhow::anyhow!("{e}"))?)
    } else {
        None
    };
    let cfg = hub.config();
    let samples = cfg.samples_per_frame as usize * usize::from(cfg.channels);
    let tone = a.tone.map(|v| vec![tone_value::<T>(v); samples]);
    writeln!(std::io::stdout(), "ready slot={}", mic.slot())?;
    std::io::stdout().flush()?;
    let deadline = a
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut eos = false;
    let mut error = None;
    let mut nonzero = 0u64;
    loop {
        if a.frames.is_some_and(|n| mic.stats().frames >= n)
            || deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        let spk = &mut speaker;
        let got = mic.read(Some(Duration::from_millis(200)), |frame| {
            first_stamp_ns.get_or_insert(frame.meta().timestamp_ns);
            let s = frame.samples::<T>().unwrap_or(&[]);
            let loud = s.iter().any(|x| *x != T::SILENCE);
            if let Some(out) = spk.as_mut() {
                let data = tone.as_deref().unwrap_or(s);
                let _ = out.write(data);
            }
            loud
        });
        match got {
            Ok(Read::Frame(loud)) => {
                first_frame_ns.get_or_insert_with(|| voxring_linux::clock::monotonic_ns() - t0);
                nonzero += u64::from(loud);
                if a.slow_ms > 0 {
                    std::thread::sleep(Duration::from_millis(a.slow_ms));
                }
            }
            Ok(Read::TimedOut) => {}
            Ok(Read::EndOfStream) => {
                eos = true;
                break;
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    // The hub checks the latest window of each row every round: let it see the last full
    // window before the final partial one replaces it, then that one.
    let live = !eos && error.is_none();
    let mut row = checked(hub, &mic, live);
    mic.flush();
    if live {
        row = checked(hub, &mic, live);
    }
    let st = mic.stats();
    let (written, dropped) = speaker.as_ref().map_or((0, 0), Speaker::counts);
    let out = serde_json::json!({
        "name": a.name,
        "slot": mic.slot(),
        "frames": st.frames,
        "nonzero_frames": nonzero,
        "lost": st.lost,
        "late": st.late,
        "windows": st.windows,
        "crc_ok": row.crc_ok,
        "crc_bad": row.crc_bad,
        "crc_unknown": row.crc_unknown,
        "end_of_stream": eos,
        "error": error,
        "written": written,
        "write_dropped": dropped,
        "join_ns": joined_ns,
        "first_frame_ns": first_frame_ns,
        "first_commit_after_join_ns": first_stamp_ns
            .map(|st| st as i64 - (t0 + joined_ns) as i64),
        "wake_p50_ns": st.wake_p50_ns,
        "wake_max_ns": st.wake_max_ns,
    });
    // A reader that went away (a killed test) is no reason to panic: the result is lost.
    let _ = writeln!(std::io::stdout(), "{out}");
    Ok(if error.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
