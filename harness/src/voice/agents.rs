//! The parts as processes (`voxring voice talk|vad|reply`), each proven alone against plain
//! voxring rings, ready to be wired into the hub: the talker feeds the capture side of the
//! synthetic device into a mic ring, the VAD agent reads a mic ring and publishes through a
//! control register, the reply agent writes synthesised speech into its output ring.
//!
//! Protocol: each prints `{"event":"ready"}` on stdout once its segments exist and it has
//! joined what it reads, then JSON lines of what it did, and a last `{"event":"end",...}`.

use std::io::{BufRead as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::json;
use voxring_core::control::ControlRegister;
use voxring_core::{FrameFlags, Policy, ReadError, RingConfig, SampleFormat};
use voxring_linux::audio::alsa_pcm::MmapPreference;
use voxring_linux::audio::duplex::{DeviceSpec, StopFlag, open_duplex};
use voxring_linux::audio::ring_io::RingSink;
use voxring_linux::audio::{StreamParams, monotonic_ns};
use voxring_linux::control::ControlExt as _;
use voxring_linux::ring::{FramesWait, Segment, ShmProducer, SpaceWait};
use voxring_linux::segment::{AttachOptions, CreateOptions};
use voxring_linux::shared::Placed;

use super::synth::{StreamResampler, Synth, to_f32};
use super::talker::{Layout, Script, TalkerSource};
use super::vad::{EarshotVad, VadEventKind, VadRecord};
use super::{ReplyArgs, RingArgs, TalkArgs, VadArgs};

/// The VAD's register: the same type as the C ABI's and Python's `Control`.
pub type VadRegister = ControlRegister<[u64; 8], 8>;

/// How long a part waits for its peers to join before it gives up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

fn emit(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").context("cannot write to stdout")?;
    out.flush().context("cannot write to stdout")
}

/// A mono S16 ring of `frames` frames of `spf` samples at `rate`, lossless: a slow reader
/// holds the writer back rather than losing audio (and the writer reports it).
fn mono_ring(rate: u32, spf: u32, frames: u32) -> RingConfig {
    RingConfig {
        frames,
        samples_per_frame: spf,
        channels: 1,
        format: SampleFormat::S16,
        sample_rate: rate,
        max_consumers: 4,
        policy: Policy::Lossless,
    }
}

/// Waits until `n` consumers have joined `seg`.
fn wait_consumers(seg: &Segment, n: u16, what: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let ring = seg.ring();
    let max = seg.config().max_consumers;
    anyhow::ensure!(n <= max, "{what}: at most {max} consumers");
    loop {
        let joined = (0..max)
            .filter(|&i| ring.consumer_owner(i).is_some())
            .count();
        if joined >= usize::from(n) {
            return Ok(());
        }
        anyhow::ensure!(
            t0.elapsed() < JOIN_TIMEOUT,
            "{what}: {joined} of {n} readers joined in {} s; start them with this ring's name",
            JOIN_TIMEOUT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes an END_OF_STREAM frame (waits for room: the ring is lossless).
fn end_stream(tx: &mut ShmProducer, pos: u64) -> anyhow::Result<()> {
    loop {
        let (p, waiter) = tx.parts();
        match p.push(&[], pos, monotonic_ns(), FrameFlags::END_OF_STREAM) {
            Ok(wake) => {
                wake.wake(waiter);
                return Ok(());
            }
            Err(voxring_core::PushFrameError::Grant(voxring_core::GrantError::Full)) => {
                match tx.wait_for_space(Some(JOIN_TIMEOUT))? {
                    SpaceWait::Ready => {}
                    SpaceWait::TimedOut => anyhow::bail!("readers stopped reading the ring"),
                }
            }
            Err(e) => anyhow::bail!("cannot end the stream: {e}"),
        }
    }
}

/// Creates the ring of `a` (`frames` frames) and claims it, says it is ready, and waits for
/// its readers.
fn open_ring(a: &RingArgs, frames: u32, who: &str) -> anyhow::Result<(Segment, ShmProducer)> {
    let cfg = mono_ring(a.rate, a.period, frames);
    let seg = Segment::create(&a.ring, &cfg, &CreateOptions::default())
        .with_context(|| format!("{who} cannot create its ring {:?}", a.ring))?;
    let tx = seg
        .producer()
        .with_context(|| format!("{who} cannot claim its ring {:?}", a.ring))?;
    emit(&json!({"event": "ready"}))?;
    wait_consumers(&seg, a.readers, who)?;
    Ok((seg, tx))
}

/// `voxring voice talk`: the talker through the synthetic device into a mic ring.
pub fn talk(args: &TalkArgs) -> anyhow::Result<ExitCode> {
    let ring = &args.out;
    let layout = Layout {
        lead_s: args.lead_s,
        gap_s: args.gap_s,
        tail_s: args.tail_s,
    };
    let script = Script::build(&Synth::default(), &args.texts(), ring.rate, &layout)?;
    // 256 frames (2.56 s of 10 ms frames): a reader that stalls (a Python agent on a loaded
    // machine) holds the device back that long before the device buffer has to absorb it.
    let (_seg, mut tx) = open_ring(&args.out, 256, "the talker")?;

    let params = StreamParams {
        rate: ring.rate,
        channels: 1,
        period_frames: ring.period,
        // Whole periods, at least two.
        buffer_frames: (ring.rate / 1000 * args.buffer_ms)
            .div_ceil(ring.period)
            .max(2)
            * ring.period,
    };
    // What is played comes back in the capture one period later, bit-exact.
    let delay = ring.period;
    let spec = DeviceSpec::Synthetic {
        loopback_delay: Some(delay),
    };
    let (mut dev, label) = open_duplex::<i16>(&spec, &params, MmapPreference::Auto)?;
    let granted = dev.capture_granted();
    let total = script.samples.len() as u64 + u64::from(delay);
    let total = total.div_ceil(u64::from(ring.period)) * u64::from(ring.period);
    let (sink_stats, run, played) = {
        let (producer, waiter) = tx.parts();
        let mut sink = RingSink::<i16, _>::new(producer, waiter, &granted)?;
        let mut source = TalkerSource::new(&script);
        let run = dev
            .run(&mut sink, &mut source, &StopFlag::new(), Some(total))
            .map_err(voxring_linux::audio::AudioError::from)?;
        anyhow::ensure!(
            source.finished(),
            "the device stopped after {} of the script's {} samples",
            source.played(),
            script.samples.len()
        );
        (sink.stats(), run, source.played())
    };
    end_stream(&mut tx, run.capture_frames)?;
    let placements: Vec<_> = script
        .placements
        .iter()
        .map(|p| json!({"text": p.text, "start": p.start + u64::from(delay), "end": p.end + u64::from(delay)}))
        .collect();
    let clean = run.xruns.capture == 0 && run.xruns.playback == 0 && sink_stats.errors == 0;
    emit(&json!({
        "event": "end", "device": label, "rate": script.rate, "played": played, "loopback_delay": delay,
        "placements": placements, "captured": run.capture_frames,
        "ring_frames": sink_stats.ring_frames, "ring_full": sink_stats.starved,
        "xruns": run.xruns.capture + run.xruns.playback, "errors": sink_stats.errors,
        "clean": clean,
    }))?;
    if !clean {
        eprintln!(
            "voxring voice talk: the capture lost audio (xruns {:?}, ring errors {}): a reader \
             was too slow or the machine stalled; the run is not valid",
            run.xruns, sink_stats.errors
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `voxring voice vad`: the earshot agent on a mic ring, or on a hub's mic (`--hub`, joined
/// through the hub's client).
pub fn vad(args: &VadArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.rt_priority <= 99,
        "--rt-priority {}: give 0 (none) or 1..=99",
        args.rt_priority
    );
    // Before anything else, so that every thread it starts inherits the scheduling.
    let sched = crate::run::device::promote(args.rt_priority);
    if let Some(w) = &sched.1 {
        eprintln!(
            "voxring voice vad: warning: SCHED_FIFO refused, running at normal priority: {w}"
        );
    }
    if let Some(name) = &args.hub {
        let hub = voxring_linux::hub::Hub::find(name, &voxring_linux::hub::HubOptions::default())
            .with_context(|| format!("the VAD agent cannot join the hub {name:?}"))?;
        let mut mic = hub.join_mic("vad", voxring_linux::hub::Delivery::Lossless)?;
        let cfg = hub.config();
        return vad_on(
            args,
            (&voxring_linux::hub::mic_name(name), cfg),
            mic.consumer(),
            &sched,
        );
    }
    let ring = args
        .ring
        .as_deref()
        .context("the VAD agent needs --ring NAME or --hub NAME")?;
    let seg = Segment::attach(ring, &AttachOptions::default())
        .with_context(|| format!("the VAD agent cannot attach to {ring:?}"))?;
    let mut rx = seg
        .consumer()
        .context("the VAD agent cannot join the ring")?;
    vad_on(args, (ring, seg.config()), &mut rx, &sched)
}

/// The VAD agent on the ring `ring` (its name and config), scheduled as `sched` says (what it
/// runs under, a warning).
fn vad_on(
    args: &VadArgs,
    (ring, cfg): (&str, RingConfig),
    rx: &mut voxring_linux::ring::ShmConsumer,
    sched: &(String, Option<String>),
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        cfg.channels == 1 && cfg.format == SampleFormat::S16,
        "{ring:?} carries {} channel(s) of {:?}: the VAD agent reads mono S16 (the hub's NAME.mic)",
        cfg.channels,
        cfg.format
    );
    let settings = args.settings();
    let mut engine = EarshotVad::new(cfg.sample_rate, settings)?;
    let reg = Placed::<VadRegister>::create(&args.register, &CreateOptions::default(), [0; 8])
        .with_context(|| format!("cannot create the VAD's register {:?}", args.register))?;
    rx.set_spin(Duration::ZERO);
    emit(
        &json!({"event": "ready", "hangover_ms": settings.hangover_ms(),
        "sched": sched.0, "warning": sched.1}),
    )?;

    let mut rec = VadRecord {
        hangover_ms: settings.hangover_ms(),
        ..VadRecord::default()
    };
    // Allocated before the loop: the loop itself records into them, nothing else.
    let mut cost = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)?;
    let mut events = Vec::with_capacity(4096);
    let (mut frames, mut lost, mut expected) = (0u64, 0u64, None);
    'run: loop {
        match rx.wait_for_frames(Some(Duration::from_millis(500)))? {
            FramesWait::Ready => {}
            FramesWait::TimedOut => continue,
            FramesWait::EndOfStream => break,
        }
        loop {
            let (consumer, waiter) = rx.parts();
            let grant = match consumer.read_grant(16) {
                Ok(g) => g,
                Err(ReadError::Empty) => break,
                Err(ReadError::Lost { frames: n }) => {
                    lost += n;
                    continue;
                }
                Err(e) => anyhow::bail!("reading {ring:?} failed: {e}"),
            };
            // The frames are in this agent's hands: the hand-off ends here.
            let t_got = monotonic_ns();
            let mut eos = false;
            for f in grant.frames() {
                let meta = f.meta();
                if let Some(e) = expected {
                    lost += meta.seq.saturating_sub(e);
                }
                expected = Some(meta.seq + 1);
                if meta.flags.contains(FrameFlags::END_OF_STREAM) {
                    eos = true;
                    break;
                }
                let Ok(samples) = f.samples::<i16>() else {
                    continue;
                };
                let c0 = monotonic_ns();
                engine.push(meta.sample_pos, samples, |e| {
                    let now = monotonic_ns();
                    match e.kind {
                        VadEventKind::Start => {
                            rec.starts += 1;
                            rec.start_pos = e.boundary_pos;
                        }
                        VadEventKind::End => {
                            rec.ends += 1;
                            rec.end_pos = e.boundary_pos;
                        }
                    }
                    rec.speaking = u32::from(e.kind == VadEventKind::Start);
                    rec.decided_pos = e.decided_pos;
                    rec.decided_ns = now;
                    rec.frame_commit_ns = meta.timestamp_ns;
                    // One writer: a refusal cannot happen; if it did, the next decision
                    // publishes again.
                    let _ = reg.publish_and_wake(rec.to_words());
                    if events.len() < events.capacity() {
                        events.push((e, now, meta.timestamp_ns, t_got));
                    }
                });
                let _ = cost.record(monotonic_ns().saturating_sub(c0).max(1));
                frames += 1;
            }
            grant.release_all()?.wake(waiter);
            if eos {
                break 'run;
            }
        }
    }
    // Every decision is out: say so, so that readers of the register stop waiting for more.
    rec.speaking = VadRecord::STREAM_ENDED;
    let _ = reg.publish_and_wake(rec.to_words());
    let list: Vec<_> = events
        .iter()
        .map(|(e, ns, commit, got)| {
            json!({"kind": format!("{:?}", e.kind), "boundary_pos": e.boundary_pos,
            "decided_pos": e.decided_pos, "decided_ns": ns, "frame_commit_ns": commit,
            "handoff_ns": got.saturating_sub(*commit)})
        })
        .collect();
    let q = |p: f64| cost.value_at_quantile(p);
    emit(&json!({
        "event": "end", "frames": frames, "lost": lost, "vad_frames": engine.frames,
        "settings": settings, "events": list,
        "cost_per_ring_frame_ns": {"p50": q(0.5), "p99": q(0.99), "max": cost.max(), "count": cost.len()},
        "samples_per_ring_frame": cfg.samples_per_frame,
    }))?;
    Ok(if lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Cuts the reply into ring frames and writes them (waiting for room: the ring is lossless).
struct ReplyWriter<'a> {
    tx: &'a mut ShmProducer,
    frame: Vec<i16>,
    period: usize,
    /// Sample position of the next sample.
    pos: u64,
    first_commit_ns: u64,
}

impl ReplyWriter<'_> {
    fn write(&mut self, samples: &[f32]) -> anyhow::Result<()> {
        for &v in samples {
            self.frame
                .push((v * 32767.0).round().clamp(-32768.0, 32767.0) as i16);
            if self.frame.len() == self.period {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Commits the frame gathered so far (shorter than a period at the end of a reply).
    fn flush(&mut self) -> anyhow::Result<()> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let bytes: Vec<u8> = self.frame.iter().flat_map(|s| s.to_ne_bytes()).collect();
        loop {
            let (p, waiter) = self.tx.parts();
            // The frame's stamp is its commit time (what readers measure hand-offs from).
            let stamp = monotonic_ns();
            match p.push(&bytes, self.pos, stamp, FrameFlags::NONE) {
                Ok(wake) => {
                    wake.wake(waiter);
                    if self.first_commit_ns == 0 {
                        self.first_commit_ns = stamp;
                    }
                    break;
                }
                Err(voxring_core::PushFrameError::Grant(voxring_core::GrantError::Full)) => {
                    if self.tx.wait_for_space(Some(JOIN_TIMEOUT))? == SpaceWait::TimedOut {
                        anyhow::bail!("the reply ring's reader stopped reading");
                    }
                }
                Err(e) => anyhow::bail!("writing the reply failed: {e}"),
            }
        }
        self.pos += self.frame.len() as u64;
        self.frame.clear();
        Ok(())
    }
}

/// `voxring voice reply`: speaks each line of stdin into its output ring.
pub fn reply(args: &ReplyArgs) -> anyhow::Result<ExitCode> {
    let args = &args.out;
    let (_seg, mut tx) = open_ring(args, 64, "the reply agent")?;
    let synth = Synth::default();
    let (mut pos, mut replies) = (0u64, 0u64);
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading the replies to speak from stdin")?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let first_seq = tx.producer().write_pos();
        let first_pos = pos;
        let mut w = ReplyWriter {
            tx: &mut tx,
            frame: Vec::with_capacity(args.period as usize),
            period: args.period as usize,
            pos,
            first_commit_ns: 0,
        };
        // Converted and written as espeak-ng's samples arrive: the first frame goes out
        // before the rest of the reply is converted.
        let mut rs: Option<StreamResampler> = None;
        let times = synth.stream(text, &mut |rate, s| {
            let r = match rs.as_mut() {
                Some(r) => r,
                None => rs.insert(StreamResampler::new(rate, args.rate, 1024)?),
            };
            r.push(&to_f32(s), &mut |o| w.write(o))
        })?;
        if let Some(r) = rs {
            r.finish(&mut |o| w.write(o))?;
        }
        w.flush()?;
        let (samples, first_commit_ns) = (w.pos - first_pos, w.first_commit_ns);
        pos = w.pos;
        replies += 1;
        emit(&json!({
            "event": "reply", "text": text, "requested_ns": times.requested_ns,
            "first_sample_synth_ns": times.first_sample_ns, "synth_done_ns": times.done_ns,
            "first_frame_seq": first_seq, "first_sample_pos": first_pos,
            "first_commit_ns": first_commit_ns, "samples": samples,
        }))?;
    }
    end_stream(&mut tx, pos)?;
    emit(&json!({"event": "end", "replies": replies, "samples": pos}))?;
    Ok(ExitCode::SUCCESS)
}
