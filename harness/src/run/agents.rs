//! The agent processes of `voxring run` (the hidden `voxring agent` subcommand).
//!
//! Each agent attaches to the run's capture ring as a consumer, waits for frames (spinning
//! briefly, then parking on the ring's futex: an idle agent costs no CPU), and for every frame:
//! records the hand-off (the producer stamps each frame with CLOCK_MONOTONIC at commit; the
//! agent reads the clock when the frame is in its hands), does its work (timed as "compute"),
//! and tells the cycle fence it is done (late if past the cycle's deadline).
//!
//! - `vad` measures each frame's energy, runs the hysteresis of [`super::dsp::Vad`] and
//!   publishes speech on/off through the run's control register.
//! - `recorder` writes every payload byte to a WAV file and a CRC-32 of them, so the
//!   orchestrator can prove the recording holds exactly the frames produced.
//! - `echo` applies a gain and writes the frame into the return ring (same `sample_pos`,
//!   stamped at its own commit), which the orchestrator plays.
//!
//! Protocol with the orchestrator: the agent prints `ready` on stdout once it has joined the
//! ring, and at the end one line of JSON ([`AgentOutput`]). It ends on the END_OF_STREAM
//! frame, when the producer is gone, or with its parent (PR_SET_PDEATHSIG).

use std::fs::File;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use voxring_core::{FrameFlags, ReadError, SampleFormat};
use voxring_linux::audio::monotonic_ns;
use voxring_linux::ring::{FramesWait, Segment, ShmProducer};
use voxring_linux::segment::AttachOptions;

use super::dsp::{Vad, apply_gain, energy_dbfs};
use super::report::{hist_to_base64, new_hist, record};
use super::sync::{SyncHandle, VadState};
use super::wav::{Encoding, WavSink};
use super::{AgentArgs, Role, procs};

/// The gain the echo agent applies (-6 dB): a real loudspeaker-to-microphone loop decays.
pub const ECHO_GAIN: f32 = 0.5;
/// Test hook: when set, the recorder corrupts one byte of the first frame it records (see
/// `run_agent`); the run must then fail on the CRC-32 mismatch.
pub const CORRUPT_RECORDING_ENV: &str = "VOXRING_TEST_CORRUPT_RECORDING";
/// Late cycles listed individually in the output (for the timeline); beyond, only counted.
const MAX_LATE_LISTED: usize = 20_000;

/// What an agent reports at the end (one JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentOutput {
    pub role: String,
    pub frames: u64,
    pub samples: u64,
    /// Frames skipped: gaps in the sequence or lossy resyncs.
    pub lost: u64,
    /// Cycles finished after their deadline, per the cycle fence.
    pub late: u64,
    /// The first `MAX_LATE_LISTED` late cycles (frame sequence numbers).
    pub late_cycles: Vec<u64>,
    /// CRC-32 of every payload byte read, in order (hex).
    pub checksum: String,
    /// Histogram (HdrHistogram V2, base64) of commit → frame in hand, ns.
    pub handoff_hist: String,
    /// Histogram of the agent's own work per frame, ns.
    pub compute_hist: String,
    /// Time spent in ring operations (grants, commits, releases, futex wakes), ns.
    pub ipc_ns: u64,
    /// CPU time spent waiting for frames (parking on and waking from the futex, and the
    /// liveness checks while waiting), ns; the sleep itself costs none.
    pub wait_cpu_ns: u64,
    /// CPU time of the whole process, ns.
    pub cpu_ns: u64,
    /// Wall time from ready to the end, ns.
    pub wall_ns: u64,
    pub scheduling: String,
    /// How it ended.
    pub exit: String,
    pub wav_samples: Option<u64>,
    pub speech_segments: Option<u64>,
    pub speech_frames: Option<u64>,
    /// Frames the echo agent could not return (the return ring was full).
    pub return_dropped: Option<u64>,
    pub warnings: Vec<String>,
}

fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn encoding(f: SampleFormat) -> Encoding {
    match f {
        SampleFormat::S16 => Encoding::S16,
        SampleFormat::S32 => Encoding::S32,
        SampleFormat::F32 => Encoding::F32,
    }
}

/// Segment names of a run.
pub fn capture_name(prefix: &str) -> String {
    format!("{prefix}.capture")
}
/// The echo agent's return ring.
pub fn return_name(prefix: &str) -> String {
    format!("{prefix}.return")
}

/// The recording's file, inherited from the orchestrator as descriptor `fd`.
fn inherited_file(fd: i32) -> anyhow::Result<File> {
    let file = File::from(voxring_linux::process::take_inherited_fd(fd).map_err(|e| {
        anyhow::anyhow!(
            "--wav-fd {fd}: {e} (`voxring agent` is started by `voxring run`, which passes the \
             recording's descriptor)"
        )
    })?);
    let meta = file
        .metadata()
        .context("cannot read the recording's descriptor")?;
    anyhow::ensure!(meta.is_file(), "--wav-fd {fd} is not a regular file");
    Ok(file)
}

/// Entry point of `voxring agent`.
pub fn main(args: AgentArgs) -> anyhow::Result<ExitCode> {
    procs::die_with_parent(args.parent)?;
    if args.role == Role::Hog {
        procs::hog();
    }
    let out = run_agent(&args)?;
    let line = serde_json::to_string(&out)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("cannot write the agent's report")?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn run_agent(args: &AgentArgs) -> anyhow::Result<AgentOutput> {
    let role = args.role;
    let name = match role {
        Role::Vad => "vad",
        Role::Recorder => "recorder",
        Role::Echo => "echo",
        Role::Hog => "hog",
    };
    let opts = AttachOptions::default();
    let capture = Segment::attach(&capture_name(&args.segments), &opts)
        .with_context(|| format!("the {name} agent cannot attach to the capture ring"))?;
    let cfg = capture.config();
    let enc = encoding(cfg.format);
    let frames_per_second = f64::from(cfg.sample_rate) / f64::from(cfg.samples_per_frame);
    let mut rx = capture
        .consumer()
        .with_context(|| format!("the {name} agent cannot join the capture ring"))?;
    // Park at once: a frame comes every quantum, spinning for it would burn a core per agent.
    rx.set_spin(Duration::ZERO);
    let sync = SyncHandle::attach(&args.segments)
        .with_context(|| format!("the {name} agent cannot attach to the run's sync region"))?;
    let mut ret: Option<ShmProducer> = None;
    let _ret_seg;
    if role == Role::Echo {
        let seg = Segment::attach(&return_name(&args.segments), &opts)
            .context("the echo agent cannot attach to the return ring")?;
        ret = Some(
            seg.producer()
                .context("the echo agent cannot claim the return ring")?,
        );
        _ret_seg = Some(seg);
    } else {
        _ret_seg = None;
    }
    let mut wav = match (role, args.wav_fd) {
        (Role::Recorder, Some(fd)) => Some(WavSink::new(
            inherited_file(fd)?,
            "the recorder's --wav-fd",
            cfg.sample_rate,
            cfg.channels,
            enc,
        )?),
        (Role::Recorder, None) => anyhow::bail!("the recorder needs --wav-fd N"),
        _ => None,
    };
    // Test hook (read once, here): the recorder flips one byte of the first frame it records,
    // so the tests can show that a recording that differs from what was produced fails the
    // run. It only spoils this run's own recording.
    let mut corrupt_once =
        role == Role::Recorder && std::env::var_os(CORRUPT_RECORDING_ENV).is_some();
    let mut warnings = Vec::new();
    let scheduling = if args.rt_priority > 0 {
        match voxring_linux::rt::set_fifo(args.rt_priority) {
            Ok(()) => format!("SCHED_FIFO {}", args.rt_priority),
            Err(e) => {
                warnings.push(e.to_string());
                "SCHED_OTHER (SCHED_FIFO refused)".to_owned()
            }
        }
    } else {
        "SCHED_OTHER".to_owned()
    };
    let mut vad = Vad::for_speech(frames_per_second);
    let mut handoff = new_hist();
    let mut compute = new_hist();
    let mut crc = crc32fast::Hasher::new();
    let (mut frames, mut samples, mut lost, mut late) = (0u64, 0u64, 0u64, 0u64);
    let mut late_cycles = Vec::with_capacity(MAX_LATE_LISTED);
    let mut ipc_ns = 0u64;
    let mut wait_cpu_ns = 0u64;
    // The return ring's share of the current frame's work (taken out of "compute").
    let mut echo_ipc_ns = 0u64;
    let mut return_dropped = 0u64;
    let mut expected_seq: Option<u64> = None;
    let bytes_per_sample = enc.bytes();

    println!("ready");
    std::io::stdout()
        .flush()
        .context("cannot tell the orchestrator this agent is ready")?;
    let cpu0 = process_cpu_ns();
    let wall0 = monotonic_ns();
    let exit = 'run: loop {
        let w0 = thread_cpu_ns();
        let waited = rx.wait_for_frames(Some(Duration::from_millis(500)));
        wait_cpu_ns += thread_cpu_ns().saturating_sub(w0);
        match waited.context("waiting for frames failed")? {
            FramesWait::Ready => {}
            FramesWait::TimedOut => continue,
            FramesWait::EndOfStream => break "the producer is gone".to_owned(),
        }
        loop {
            let t_acq = monotonic_ns();
            let (consumer, waiter) = rx.parts();
            let grant = match consumer.read_grant(16) {
                Ok(g) => g,
                Err(ReadError::Empty) => {
                    ipc_ns += monotonic_ns().saturating_sub(t_acq);
                    break;
                }
                Err(ReadError::Lost { frames: n }) => {
                    lost += n;
                    continue;
                }
                Err(e) => break 'run format!("reading the capture ring failed: {e}"),
            };
            let t_got = monotonic_ns();
            ipc_ns += t_got.saturating_sub(t_acq);
            let mut eos = false;
            for frame in grant.frames() {
                let meta = frame.meta();
                if let Some(e) = expected_seq {
                    lost += meta.seq.saturating_sub(e);
                }
                expected_seq = Some(meta.seq.wrapping_add(1));
                if meta.flags.contains(FrameFlags::END_OF_STREAM) {
                    eos = true;
                    break;
                }
                record(&mut handoff, t_got.saturating_sub(meta.timestamp_ns));
                // `len` is clamped to the slot by core; cut to whole samples.
                let payload = frame.payload();
                let len = (meta.len as usize).min(payload.len()) / enc.bytes() as usize
                    * enc.bytes() as usize;
                let payload = &payload[..len];
                let c0 = monotonic_ns();
                match role {
                    Role::Vad => {
                        let last_energy = energy_dbfs(payload, enc);
                        let speaking = vad.update(last_energy);
                        sync.publish_vad(VadState {
                            speaking: u32::from(speaking),
                            segments: vad.segments,
                            speech_frames: vad.speech_frames,
                            energy_millibel: (last_energy * 100.0) as i32,
                            seq: meta.seq,
                        });
                    }
                    Role::Recorder => {
                        let corrupted;
                        let payload = if corrupt_once && !payload.is_empty() {
                            corrupt_once = false;
                            // Test hook only (see CORRUPT_RECORDING_ENV): one copy, once.
                            let mut copy = payload.to_vec();
                            copy[0] ^= 0x5a;
                            corrupted = copy;
                            &corrupted[..]
                        } else {
                            payload
                        };
                        crc.update(payload);
                        if let Some(w) = wav.as_mut() {
                            w.write_bytes(payload)?;
                        }
                    }
                    Role::Echo => {
                        crc.update(payload);
                        let Some(tx) = ret.as_mut() else {
                            unreachable!("echo has a return ring")
                        };
                        let (producer, rwaiter) = tx.parts();
                        let g0 = monotonic_ns();
                        let granted = producer.write_grant(1);
                        let g1 = monotonic_ns();
                        match granted {
                            Ok(mut g) => {
                                if let Some(mut out) = g.frame_mut(0) {
                                    let n = apply_gain(payload, out.payload_mut(), enc, ECHO_GAIN);
                                    let _ = out.set_len(n as u32);
                                    out.set_sample_pos(meta.sample_pos);
                                    out.set_flags(meta.flags);
                                    out.set_timestamp_ns(monotonic_ns());
                                }
                                let k0 = monotonic_ns();
                                g.commit_all().wake(rwaiter);
                                // The grant and the commit are IPC, the gain in between compute.
                                ipc_ns += (g1 - g0) + monotonic_ns().saturating_sub(k0);
                                echo_ipc_ns += (g1 - g0) + monotonic_ns().saturating_sub(k0);
                            }
                            Err(_) => {
                                return_dropped += 1;
                                ipc_ns += g1 - g0;
                                echo_ipc_ns += g1 - g0;
                            }
                        }
                    }
                    Role::Hog => {}
                }
                if role == Role::Vad {
                    crc.update(payload);
                }
                let c1 = monotonic_ns();
                record(
                    &mut compute,
                    c1.saturating_sub(c0).saturating_sub(echo_ipc_ns),
                );
                echo_ipc_ns = 0;
                frames += 1;
                samples += u64::from(meta.len / bytes_per_sample);
                if sync.fence_done(args.index, meta.seq, c1) {
                    late += 1;
                    if late_cycles.len() < MAX_LATE_LISTED {
                        late_cycles.push(meta.seq);
                    }
                }
            }
            let r0 = monotonic_ns();
            match grant.release_all() {
                Ok(wake) => wake.wake(waiter),
                Err(e) => break 'run format!("releasing frames failed: {e}"),
            }
            ipc_ns += monotonic_ns().saturating_sub(r0);
            if eos {
                break 'run "end of stream".to_owned();
            }
        }
    };
    let wall_ns = monotonic_ns().saturating_sub(wall0);
    let cpu_ns = process_cpu_ns().saturating_sub(cpu0);
    let wav_samples = match wav.take() {
        Some(w) => {
            let n = w.samples();
            w.finish()?;
            Some(n)
        }
        None => None,
    };
    Ok(AgentOutput {
        role: name.to_owned(),
        frames,
        samples,
        lost,
        late,
        late_cycles,
        checksum: format!("{:08x}", crc.finalize()),
        handoff_hist: hist_to_base64(&handoff)?,
        compute_hist: hist_to_base64(&compute)?,
        ipc_ns,
        wait_cpu_ns,
        cpu_ns,
        wall_ns,
        scheduling,
        exit,
        wav_samples,
        speech_segments: (role == Role::Vad).then_some(vad.segments),
        speech_frames: (role == Role::Vad).then_some(vad.speech_frames),
        return_dropped: (role == Role::Echo).then_some(return_dropped),
        warnings,
    })
}
