//! The agent processes of `voxring run` (the hidden `voxring agent` subcommand).
//!
//! Each agent joins the run's hub the way any outside agent does, through the public client
//! (`voxring_linux::hub`: `Hub::find`, `join_mic` lossless, and for the echo `speaker`),
//! waits for frames (parking on the mic ring's futex: an idle agent costs no CPU), and for
//! every frame:
//! records the hand-off (the producer stamps each frame with CLOCK_MONOTONIC at commit; the
//! agent reads the clock when the frame is in its hands), does its work (timed as "compute"),
//! and tells the cycle fence it is done (late if past the cycle's deadline).
//!
//! - `vad` measures each frame's energy, runs the hysteresis of [`super::dsp::Vad`] and
//!   publishes speech on/off through the run's control register.
//! - `recorder` writes every payload byte to a WAV file and a CRC-32 of them, so the
//!   orchestrator can prove the recording holds exactly the frames produced.
//! - `echo` applies a gain and writes the frame into its output ring `<hub>.out.echo` (same
//!   `sample_pos`, stamped at its own commit), which the hub mixes into playback.
//!
//! Protocol with the orchestrator: the agent prints `ready` on stdout once it has joined the
//! ring, and at the end one line of JSON ([`AgentOutput`]). It ends on the END_OF_STREAM
//! frame, when the producer is gone, or with its parent (PR_SET_PDEATHSIG).

use std::fs::File;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use voxring_core::{FrameFlags, FrameMeta, ReadError, RingConfig, SampleFormat};
use voxring_linux::audio::monotonic_ns;
use voxring_linux::hub::{Delivery, Hub, HubOptions, MicReader, Speaker};
use voxring_linux::ring::{FramesWait, Periodic, ShmConsumer, WaitMode};

use super::dsp::{Vad, apply_gain, energy_dbfs};
use super::glitch::LateMark;
use super::report::{hist_to_base64, new_hist, record};
use super::sync::{SyncHandle, VadState};
use super::wav::{Encoding, WavSink};
use super::{AgentArgs, AgentWait, Role, procs};

/// The gain the echo agent applies (-6 dB): a real loudspeaker-to-microphone loop decays.
pub const ECHO_GAIN: f32 = 0.5;
/// Test hook: when set, the recorder corrupts one byte of the first frame it records (see
/// `run_agent`); the run must then fail on the CRC-32 mismatch.
pub const CORRUPT_RECORDING_ENV: &str = "VOXRING_TEST_CORRUPT_RECORDING";
/// Test hook: `ROLE:CYCLE:MS` makes that agent's compute take MS milliseconds more on frame
/// CYCLE (an agent late on demand; the glitch report must name it and its compute).
pub const LATE_AGENT_ENV: &str = "VOXRING_TEST_LATE_AGENT";
/// Late cycles listed individually in the output (for the timeline); beyond, only counted.
const MAX_LATE_LISTED: usize = 20_000;

/// Frames an agent asks for in one read grant.
const DRAIN_GRANT: usize = 16;

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
    /// The same cycles with the frame's hand-off and compute times (where the time went).
    #[serde(default)]
    pub late_marks: Vec<LateMark>,
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
    match args.role {
        Role::Hog => procs::hog(),
        Role::Awake => procs::keep_awake(),
        _ => {}
    }
    let out = run_agent(&args)?;
    let line = serde_json::to_string(&out)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("cannot write the agent's report")?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn run_agent(args: &AgentArgs) -> anyhow::Result<AgentOutput> {
    let name = match args.role {
        Role::Vad => "vad",
        Role::Recorder => "recorder",
        Role::Echo => "echo",
        Role::Hog => "hog",
        Role::Awake => "awake",
    };
    // Declared first, dropped last: the mic reader outlives the agent's links.
    let (mut mic, links, cfg) = attach(args, name)?;
    let mut warnings = Vec::new();
    let scheduling = scheduling(args.rt_priority, &mut warnings);
    let mut agent = Agent {
        role: args.role,
        index: args.index,
        enc: encoding(cfg.format),
        links,
        tally: Tally::new(),
        vad: Vad::for_speech(f64::from(cfg.sample_rate) / f64::from(cfg.samples_per_frame)),
        // Test hook (read once, here): the recorder flips one byte of the first frame it
        // records, so the tests can show that a recording that differs from what was produced
        // fails the run. It only spoils this run's own recording.
        corrupt_once: args.role == Role::Recorder
            && std::env::var_os(CORRUPT_RECORDING_ENV).is_some(),
        late_once: late_hook(name),
        period_ns: u64::from(cfg.samples_per_frame) * 1_000_000_000
            / u64::from(cfg.sample_rate.max(1)),
    };

    println!("ready");
    std::io::stdout()
        .flush()
        .context("cannot tell the orchestrator this agent is ready")?;
    let cpu0 = process_cpu_ns();
    let wall0 = monotonic_ns();
    let exit = agent.run(mic.consumer())?;
    let wall_ns = monotonic_ns().saturating_sub(wall0);
    let cpu_ns = process_cpu_ns().saturating_sub(cpu0);
    let wav_samples = match agent.links.wav.take() {
        Some(w) => {
            let n = w.samples();
            w.finish()?;
            Some(n)
        }
        None => None,
    };
    let Agent {
        role,
        vad,
        tally: t,
        ..
    } = agent;
    Ok(AgentOutput {
        role: name.to_owned(),
        frames: t.frames,
        samples: t.samples,
        lost: t.lost,
        late: t.late,
        late_cycles: t.late_cycles,
        late_marks: t.late_marks,
        checksum: format!("{:08x}", t.crc.finalize()),
        handoff_hist: hist_to_base64(&t.handoff)?,
        compute_hist: hist_to_base64(&t.compute)?,
        ipc_ns: t.ipc_ns,
        wait_cpu_ns: t.wait_cpu_ns,
        cpu_ns,
        wall_ns,
        scheduling,
        exit,
        wav_samples,
        speech_segments: (role == Role::Vad).then_some(vad.segments),
        speech_frames: (role == Role::Vad).then_some(vad.speech_frames),
        return_dropped: (role == Role::Echo).then_some(t.return_dropped),
        warnings,
    })
}

/// Where an agent's work goes. Fields drop in this order: the recording, the echo's output
/// ring, the sync region.
struct Links {
    /// The recorder's WAV file.
    wav: Option<WavSink>,
    /// The echo agent's output ring (`<hub>.out.echo`), mixed into playback by the hub.
    ret: Option<Speaker>,
    sync: SyncHandle,
}

/// Joins the hub's mic ring (lossless: an agent a whole ring behind is evicted and the run
/// fails, it never skips silently), the run's sync region, the echo's output ring (echo) and
/// the recording (recorder).
fn attach(args: &AgentArgs, name: &str) -> anyhow::Result<(MicReader, Links, RingConfig)> {
    let role = args.role;
    let hub = Hub::find(&args.hub, &HubOptions::default())
        .map_err(|e| anyhow::anyhow!("the {name} agent cannot find hub '{}': {e}", args.hub))?;
    let cfg = hub.config();
    let mut mic = hub
        .join_mic(name, Delivery::Lossless)
        .map_err(|e| anyhow::anyhow!("the {name} agent cannot join the mic ring: {e}"))?;
    // Park at once: a frame comes every quantum, spinning for it would burn a core per agent.
    mic.consumer().set_spin(Duration::ZERO);
    if args.wait == AgentWait::Periodic {
        // On this thread (the one that waits): it sets this thread's timer slack.
        mic.consumer()
            .set_wait_mode(WaitMode::Periodic(Periodic::default()))
            .map_err(|e| anyhow::anyhow!("the {name} agent cannot wait periodically: {e}"))?;
    }
    let sync = SyncHandle::attach(&args.hub)
        .with_context(|| format!("the {name} agent cannot attach to the run's sync region"))?;
    let ret = if role == Role::Echo {
        Some(
            hub.speaker(name)
                .map_err(|e| anyhow::anyhow!("the echo agent cannot open its output ring: {e}"))?,
        )
    } else {
        None
    };
    let wav = match (role, args.wav_fd) {
        (Role::Recorder, Some(fd)) => Some(WavSink::new(
            inherited_file(fd)?,
            "the recorder's --wav-fd",
            cfg.sample_rate,
            cfg.channels,
            encoding(cfg.format),
        )?),
        (Role::Recorder, None) => anyhow::bail!("the recorder needs --wav-fd N"),
        _ => None,
    };
    Ok((mic, Links { wav, ret, sync }, cfg))
}

/// Asks for SCHED_FIFO when `--rt-priority` is set; says what the agent runs under.
fn scheduling(rt_priority: u8, warnings: &mut Vec<String>) -> String {
    if rt_priority > 0 {
        match voxring_linux::rt::set_fifo(rt_priority) {
            Ok(()) => format!("SCHED_FIFO {rt_priority}"),
            Err(e) => {
                warnings.push(e.to_string());
                "SCHED_OTHER (SCHED_FIFO refused)".to_owned()
            }
        }
    } else {
        "SCHED_OTHER".to_owned()
    }
}

/// What an agent counts while it runs.
struct Tally {
    handoff: Histogram<u64>,
    compute: Histogram<u64>,
    crc: crc32fast::Hasher,
    frames: u64,
    samples: u64,
    lost: u64,
    late: u64,
    late_cycles: Vec<u64>,
    late_marks: Vec<LateMark>,
    ipc_ns: u64,
    wait_cpu_ns: u64,
    return_dropped: u64,
    expected_seq: Option<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            handoff: new_hist(),
            compute: new_hist(),
            crc: crc32fast::Hasher::new(),
            frames: 0,
            samples: 0,
            lost: 0,
            late: 0,
            late_cycles: Vec::with_capacity(MAX_LATE_LISTED),
            late_marks: Vec::with_capacity(MAX_LATE_LISTED),
            ipc_ns: 0,
            wait_cpu_ns: 0,
            return_dropped: 0,
            expected_seq: None,
        }
    }
}

/// One agent at work: its role, where its work goes, and what it counts.
struct Agent {
    role: Role,
    /// This agent's place in the cycle fence.
    index: u32,
    enc: Encoding,
    links: Links,
    tally: Tally,
    vad: Vad,
    corrupt_once: bool,
    /// Test hook ([`LATE_AGENT_ENV`]): (cycle, extra compute).
    late_once: Option<(u64, Duration)>,
    /// One ring frame's duration: a frame is due one period after the hub stamped it (the
    /// deadline the hub armed in the cycle fence).
    period_ns: u64,
}

/// [`LATE_AGENT_ENV`] for the agent `name`, read once at its start.
fn late_hook(name: &str) -> Option<(u64, Duration)> {
    let v = std::env::var(LATE_AGENT_ENV).ok()?;
    let mut it = v.split(':');
    let (role, cycle, ms) = (it.next()?, it.next()?, it.next()?);
    (role == name).then_some(())?;
    Some((cycle.parse().ok()?, Duration::from_millis(ms.parse().ok()?)))
}

impl Agent {
    /// Waits for frames and handles them until the stream ends; returns how it ended.
    fn run(&mut self, rx: &mut ShmConsumer) -> anyhow::Result<String> {
        loop {
            let w0 = thread_cpu_ns();
            let waited = rx.wait_for_frames(Some(Duration::from_millis(500)));
            self.tally.wait_cpu_ns += thread_cpu_ns().saturating_sub(w0);
            match waited.context("waiting for frames failed")? {
                FramesWait::Ready => {}
                FramesWait::TimedOut => continue,
                FramesWait::EndOfStream => return Ok("the producer is gone".to_owned()),
            }
            if let Some(exit) = self.drain(rx)? {
                return Ok(exit);
            }
        }
    }

    /// Reads grants until the ring is empty (`None`) or the run ends (`Some`: how it ended).
    /// A grant shorter than asked emptied the ring as far as it could see: the next wait
    /// finds anything committed since, so no second grant is asked for only to be refused.
    fn drain(&mut self, rx: &mut ShmConsumer) -> anyhow::Result<Option<String>> {
        loop {
            let t_acq = monotonic_ns();
            let (consumer, waiter) = rx.parts();
            let grant = match consumer.read_grant(DRAIN_GRANT) {
                Ok(g) => g,
                Err(ReadError::Empty) => {
                    self.tally.ipc_ns += monotonic_ns().saturating_sub(t_acq);
                    return Ok(None);
                }
                Err(ReadError::Lost { frames: n }) => {
                    self.tally.lost += n;
                    continue;
                }
                Err(e) => return Ok(Some(format!("reading the mic ring failed: {e}"))),
            };
            let t_got = monotonic_ns();
            self.tally.ipc_ns += t_got.saturating_sub(t_acq);
            let mut eos = false;
            let drained = grant.len() < DRAIN_GRANT;
            for frame in grant.frames() {
                if self.frame(frame.meta(), frame.payload(), t_got)? {
                    eos = true;
                    break;
                }
            }
            let r0 = monotonic_ns();
            match grant.release_all() {
                Ok(wake) => wake.wake(waiter),
                Err(e) => return Ok(Some(format!("releasing frames failed: {e}"))),
            }
            self.tally.ipc_ns += monotonic_ns().saturating_sub(r0);
            if eos {
                return Ok(Some("end of stream".to_owned()));
            }
            if drained {
                return Ok(None);
            }
        }
    }

    /// Handles one frame read at `t_got`; `true` when it is the END_OF_STREAM frame.
    fn frame(&mut self, meta: FrameMeta, payload: &[u8], t_got: u64) -> anyhow::Result<bool> {
        let t = &mut self.tally;
        if let Some(e) = t.expected_seq {
            t.lost += meta.seq.saturating_sub(e);
        }
        t.expected_seq = Some(meta.seq.wrapping_add(1));
        if meta.flags.contains(FrameFlags::END_OF_STREAM) {
            return Ok(true);
        }
        record(&mut t.handoff, t_got.saturating_sub(meta.timestamp_ns));
        // `len` is clamped to the slot by core; cut to whole samples.
        let bytes = self.enc.bytes() as usize;
        let payload = &payload[..(meta.len as usize).min(payload.len()) / bytes * bytes];
        let c0 = monotonic_ns();
        if let Some((cycle, d)) = self.late_once
            && meta.seq == cycle
        {
            self.late_once = None;
            // Test hook only: this frame's compute takes `d` longer.
            std::thread::sleep(d);
        }
        // The return ring's share of the frame's work (taken out of "compute").
        let echo_ipc_ns = match self.role {
            Role::Vad => {
                self.vad_frame(meta, payload);
                self.tally.crc.update(payload);
                0
            }
            Role::Recorder => {
                self.record_frame(payload)?;
                0
            }
            Role::Echo => self.echo_frame(meta, payload),
            Role::Hog | Role::Awake => 0,
        };
        let c1 = monotonic_ns();
        let t = &mut self.tally;
        record(
            &mut t.compute,
            c1.saturating_sub(c0).saturating_sub(echo_ipc_ns),
        );
        t.frames += 1;
        t.samples += u64::from(meta.len / self.enc.bytes());
        let deadline_ns = meta.timestamp_ns.saturating_add(self.period_ns);
        if self
            .links
            .sync
            .fence_done(self.index, meta.seq, c1, deadline_ns)
        {
            t.late += 1;
            if t.late_cycles.len() < MAX_LATE_LISTED {
                t.late_cycles.push(meta.seq);
                t.late_marks.push(LateMark {
                    seq: meta.seq,
                    handoff_ns: t_got.saturating_sub(meta.timestamp_ns),
                    compute_ns: c1.saturating_sub(c0).saturating_sub(echo_ipc_ns),
                    done_ns: c1,
                });
            }
        }
        Ok(false)
    }

    /// The vad's work: the frame's energy, the hysteresis, and publishing speech on/off.
    fn vad_frame(&mut self, meta: FrameMeta, payload: &[u8]) {
        let last_energy = energy_dbfs(payload, self.enc);
        let speaking = self.vad.update(last_energy);
        self.links.sync.publish_vad(VadState {
            speaking: u32::from(speaking),
            segments: self.vad.segments,
            speech_frames: self.vad.speech_frames,
            energy_millibel: (last_energy * 100.0) as i32,
            seq: meta.seq,
        });
    }

    /// The recorder's work: the CRC-32 and the WAV file.
    fn record_frame(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let corrupted;
        let payload = if self.corrupt_once && !payload.is_empty() {
            self.corrupt_once = false;
            // Test hook only (see CORRUPT_RECORDING_ENV): one copy, once.
            let mut copy = payload.to_vec();
            copy[0] ^= 0x5a;
            corrupted = copy;
            &corrupted[..]
        } else {
            payload
        };
        self.tally.crc.update(payload);
        if let Some(w) = self.links.wav.as_mut() {
            w.write_bytes(payload)?;
        }
        Ok(())
    }

    /// The echo's work: the gain, into its output ring (through the speaker's producer, so
    /// the frame keeps the mic frame's `sample_pos`). Returns the time spent in the ring.
    fn echo_frame(&mut self, meta: FrameMeta, payload: &[u8]) -> u64 {
        self.tally.crc.update(payload);
        let Some(speaker) = self.links.ret.as_mut() else {
            unreachable!("echo has an output ring")
        };
        let (producer, rwaiter) = speaker.producer().parts();
        let g0 = monotonic_ns();
        let granted = producer.write_grant(1);
        let g1 = monotonic_ns();
        let ring_ns = match granted {
            Ok(mut g) => {
                // The commit's stamp is also the start of its timing (one clock read for both).
                let k0 = match g.frame_mut(0) {
                    Some(mut out) => {
                        let n = apply_gain(payload, out.payload_mut(), self.enc, ECHO_GAIN);
                        let k0 = monotonic_ns();
                        let _ = out.set_len(n as u32);
                        out.set_sample_pos(meta.sample_pos);
                        out.set_flags(meta.flags);
                        out.set_timestamp_ns(k0);
                        k0
                    }
                    None => monotonic_ns(),
                };
                g.commit_all().wake(rwaiter);
                // The grant and the commit are IPC, the gain in between compute.
                (g1 - g0) + monotonic_ns().saturating_sub(k0)
            }
            Err(_) => {
                self.tally.return_dropped += 1;
                g1 - g0
            }
        };
        self.tally.ipc_ns += ring_ns;
        ring_ns
    }
}
