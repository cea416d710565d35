//! The talker and the reply agent as speaking agents of a hub (`voxring serve`), joined
//! through the public client only (`voxring_linux::hub`): each joins `NAME.mic` to pace itself
//! (one output frame per mic frame, never waiting for room, as docs/hub.md asks) and speaks
//! into its own output ring `NAME.out.<agent>`, which the hub mixes into its playback.
//!
//! The recogniser → reply hop is a control register (`NAME.asr`, made by the recogniser): a
//! thread of the reply agent blocks on it (woken by the recogniser's write) and starts the
//! synthesis at once; the reply agent's own register (`NAME.said`) tells
//! the recogniser when a reply has been written out, so that it can leave its own voice (which
//! the loopback brings back into the mic) undecoded.

use std::collections::VecDeque;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use voxring_core::SampleFormat;
use voxring_linux::audio::Sample as _;
use voxring_linux::audio::monotonic_ns;
use voxring_linux::control::ControlExt as _;
use voxring_linux::hub::{Delivery, Hub, HubOptions, Read};
use voxring_linux::segment::{AttachOptions, CreateOptions};
use voxring_linux::shared::Placed;

use super::agents::VadRegister;
use super::espeak_lib::Resident;
use super::synth::{Speaker, StreamResampler, Synth, SynthTimes, to_f32};
use super::talker::{Layout, Script};

/// A sample at or above this magnitude (S16) is sound, below it silence: how the listener
/// finds where speech lands in the mic (the talker trims its utterances at 0.001 = 33).
pub const LOUD: i16 = 32;

/// Bytes of text the recogniser → reply register carries (after four words of header).
pub const ASR_TEXT_BYTES: usize = 32;

/// How the reply agent synthesises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SynthKind {
    /// libespeak-ng loaded once, streaming 10 ms pieces (no process start per reply).
    Library,
    /// One `espeak-ng` process per reply, its WAV output streamed from the pipe.
    Process,
}

impl SynthKind {
    /// The synthesiser (the library is loaded here: a missing one fails now, not mid-run).
    pub fn speaker(self) -> anyhow::Result<Box<dyn Speaker + Send>> {
        Ok(match self {
            Self::Library => {
                let r = Resident::new(&Synth::default())?;
                // Resident means ready: the first synthesis loads the voice's data files,
                // which is start-up work, not a reply's.
                r.stream("ready", &mut |_, _| Ok(()))
                    .context("libespeak-ng cannot speak")?;
                Box::new(r)
            }
            Self::Process => Box::new(Synth::default()),
        })
    }
}

/// `voxring voice hub-talk` (started by `voxring voice assistant`).
#[derive(Debug, Args)]
pub struct HubTalkArgs {
    /// The hub's name.
    #[arg(long)]
    pub hub: String,
    /// An utterance (repeat for several).
    #[arg(long = "say", required = true)]
    pub say: Vec<String>,
    /// Where to write the script as raw native-endian S16 (the listener's ground truth).
    #[arg(long)]
    pub script_out: std::path::PathBuf,
    /// Silence before the first utterance, s.
    #[arg(long, default_value_t = 1.0)]
    pub lead_s: f64,
    /// Silence between utterances, s (the reply is spoken in it).
    #[arg(long, default_value_t = 5.0)]
    pub gap_s: f64,
    /// SCHED_FIFO priority of the agent (0: none; a refusal is a warning).
    #[arg(long, default_value_t = 60)]
    pub rt_priority: u8,
}

/// `voxring voice hub-reply` (started by `voxring voice assistant`).
#[derive(Debug, Args)]
pub struct HubReplyArgs {
    /// The hub's name.
    #[arg(long)]
    pub hub: String,
    /// The recogniser's register to read (the text to answer).
    #[arg(long)]
    pub asr: String,
    /// This agent's register to create (replies written out).
    #[arg(long)]
    pub said: String,
    /// How replies are synthesised.
    #[arg(long, value_enum, default_value_t = SynthKind::Library)]
    pub synth: SynthKind,
    /// SCHED_FIFO priority of the agent (0: none; a refusal is a warning).
    #[arg(long, default_value_t = 60)]
    pub rt_priority: u8,
    /// SCHED_FIFO priority of its synthesis thread (0: none): below the agent's frame loop
    /// (a synthesis runs for milliseconds, and must not hold a CPU that a thread at the
    /// talker's priority waits for), above everything at normal priority.
    #[arg(long, default_value_t = 50)]
    pub synth_rt_priority: u8,
}

fn emit(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").context("cannot write to stdout")?;
    out.flush().context("cannot write to stdout")
}

fn find_mono_hub(name: &str) -> anyhow::Result<Hub> {
    let hub = Hub::find(name, &HubOptions::default()).with_context(|| {
        format!("cannot join the hub {name:?}: is `voxring serve --name {name}` running?")
    })?;
    let cfg = hub.config();
    anyhow::ensure!(
        cfg.channels == 1 && cfg.format == SampleFormat::S16,
        "the hub {name:?} streams {} channel(s) of {:?}: the voice agents speak mono S16 \
         (start it with --channels 1 --format s16)",
        cfg.channels,
        cfg.format
    );
    Ok(hub)
}

/// `voxring voice hub-talk`: plays the script into the hub, one frame per mic frame.
pub fn hub_talk(args: &HubTalkArgs) -> anyhow::Result<ExitCode> {
    let hub = find_mono_hub(&args.hub)?;
    let cfg = hub.config();
    let layout = Layout {
        lead_s: args.lead_s,
        gap_s: args.gap_s,
        tail_s: args.gap_s,
    };
    let script = Script::build(&Synth::default(), &args.say, cfg.sample_rate, &layout)?;
    let s16: Vec<i16> = script.samples.iter().map(|&v| i16::from_f32(v)).collect();
    let bytes: Vec<u8> = s16.iter().flat_map(|s| s.to_ne_bytes()).collect();
    std::fs::write(&args.script_out, bytes)
        .with_context(|| format!("cannot write the script to {}", args.script_out.display()))?;
    let (sched, warning) = crate::run::device::promote(args.rt_priority);
    let mut spk = hub.speaker("talker")?;
    let mut mic = hub.join_mic("talker", Delivery::Lossless)?;
    let placements: Vec<_> = script
        .placements
        .iter()
        .map(|p| json!({"text": p.text, "start": p.start, "end": p.end}))
        .collect();
    emit(
        &json!({"event": "ready", "sched": sched, "warning": warning,
        "placements": placements, "samples": s16.len()}),
    )?;
    let spf = cfg.samples_per_frame as usize;
    let (mut pos, mut eos) = (0usize, false);
    while pos < s16.len() {
        match mic.read(Some(Duration::from_secs(5)), |_| ())? {
            Read::Frame(()) => {}
            Read::TimedOut => anyhow::bail!("the hub's mic gave no frame for 5 s"),
            Read::EndOfStream => {
                eos = true;
                break;
            }
        }
        let end = (pos + spf).min(s16.len());
        spk.write(&s16[pos..end])?;
        pos = end;
    }
    let (written, dropped) = spk.counts();
    let lost = mic.stats().lost;
    let clean = !eos && dropped == 0 && lost == 0;
    emit(
        &json!({"event": "end", "played": pos, "frames": written, "dropped": dropped,
        "mic_lost": lost, "clean": clean}),
    )?;
    // Keep speaking silence until the hub's mic has brought the end back (the lane stays
    // while the last frames are still queued): a few frames, then leave.
    for _ in 0..16 {
        if !matches!(
            mic.read(Some(Duration::from_secs(1)), |_| ())?,
            Read::Frame(())
        ) {
            break;
        }
        spk.write::<i16>(&[])?;
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What the synthesis thread hands the agent's frame loop.
enum Synthesised {
    Samples(Vec<i16>),
    Done(SynthTimes),
    Failed(String),
}

/// Input samples the reply's rate converter takes at a time (11.6 ms at 22,050 Hz): the first
/// converted samples leave after this much was synthesised.
const REPLY_RESAMPLER_CHUNK: usize = 256;

/// The synthesis thread: each text in, the samples out at `rate` as they are synthesised.
fn synth_worker(synth: &dyn Speaker, rate: u32, texts: Receiver<String>, out: Sender<Synthesised>) {
    for text in texts {
        let mut rs: Option<StreamResampler> = None;
        let mut send = |o: &[f32]| -> anyhow::Result<()> {
            let s = o.iter().map(|&v| i16::from_f32(v)).collect();
            out.send(Synthesised::Samples(s))
                .map_err(|_| anyhow::anyhow!("the reply agent stopped"))
        };
        let r = synth.stream(&text, &mut |from, s| {
            let r = match rs.as_mut() {
                Some(r) => r,
                None => rs.insert(StreamResampler::new(from, rate, REPLY_RESAMPLER_CHUNK)?),
            };
            r.push(&to_f32(s), &mut send)
        });
        let r = r.and_then(|t| {
            if let Some(r) = rs.take() {
                r.finish(&mut send)?;
            }
            Ok(t)
        });
        let msg = match r {
            Ok(t) => Synthesised::Done(t),
            Err(e) => Synthesised::Failed(format!("{e:#}")),
        };
        if out.send(msg).is_err() {
            return;
        }
    }
}

/// A reply being spoken.
#[derive(Default)]
struct InFlight {
    text: String,
    utterance: u64,
    recognised_ns: u64,
    seen_ns: u64,
    asr_version_ns: u64,
    times: Option<SynthTimes>,
    first_commit_ns: u64,
    first_loud_offset: Option<u64>,
    samples: u64,
    last_commit_ns: u64,
}

/// The recogniser's record in `NAME.asr`: results, utterance, recognised_ns, read_pos, then
/// up to [`ASR_TEXT_BYTES`] bytes of UTF-8 text (NUL-padded). Another process's memory: the
/// text is checked.
fn parse_asr(w: [u64; 8]) -> anyhow::Result<(u64, u64, u64, String)> {
    let bytes: Vec<u8> = w[4..].iter().flat_map(|x| x.to_ne_bytes()).collect();
    debug_assert_eq!(bytes.len(), ASR_TEXT_BYTES);
    let n = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = std::str::from_utf8(&bytes[..n])
        .context("the recogniser's register holds text that is not UTF-8")?;
    Ok((w[0], w[1], w[2], text.to_owned()))
}

/// A reply to a recognised command (what a real assistant would answer).
pub fn reply_for(text: &str) -> String {
    let t = text.trim();
    if t.contains("time") {
        return "it is ten past two".to_owned();
    }
    for room in ["kitchen", "bedroom", "living room", "bathroom"] {
        if t.contains(room) {
            let state = if t.contains(" on ") { "on" } else { "off" };
            return format!("the {room} light is {state}");
        }
    }
    "sorry, I did not understand".to_owned()
}

/// A text the recogniser published, as the watcher hands it over.
struct Heard {
    text: String,
    utterance: u64,
    recognised_ns: u64,
    seen_ns: u64,
    asr_version_ns: u64,
}

/// How long the watcher blocks at a time before it looks whether the agent is stopping.
const WATCH_SLICE: Duration = Duration::from_millis(200);
/// How long the watcher waits out a write in progress (its writer descheduled) before it
/// gives up on the recogniser.
const ASR_READ_PATIENCE: Duration = Duration::from_secs(2);

/// The watcher thread: blocked on the recogniser's register, it hands each new text to the
/// synthesis thread at once (woken by the recogniser's write, not at the next mic frame), and
/// tells the frame loop what it handed over. The seen time is when the wait returned. Returns
/// when `stop` is set or the frame loop has gone.
fn watch_asr(
    asr: &VadRegister,
    stop: &AtomicBool,
    texts: &Sender<String>,
    heard: &Sender<Heard>,
) -> anyhow::Result<()> {
    let (mut seen_version, mut seen_results) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let Some(v) = asr.wait_newer_than(seen_version, Some(WATCH_SLICE)) else {
            continue;
        };
        let seen_ns = monotonic_ns();
        let (w, version) = asr
            .read_patiently(ASR_READ_PATIENCE)
            .map_err(|e| anyhow::anyhow!("cannot read the recogniser's register: {e}"))?;
        seen_version = version.max(v);
        let (results, utterance, recognised_ns, text) = parse_asr(w)?;
        if results <= seen_results {
            continue;
        }
        seen_results = results;
        let sent = texts.send(reply_for(&text)).is_ok()
            && heard
                .send(Heard {
                    text,
                    utterance,
                    recognised_ns,
                    seen_ns,
                    asr_version_ns: version,
                })
                .is_ok();
        if !sent {
            break; // the frame loop or the synthesis thread has stopped
        }
    }
    Ok(())
}

impl InFlight {
    fn new(h: Heard) -> Self {
        Self {
            text: h.text,
            utterance: h.utterance,
            recognised_ns: h.recognised_ns,
            seen_ns: h.seen_ns,
            asr_version_ns: h.asr_version_ns,
            ..Self::default()
        }
    }

    /// Takes what the synthesis thread has made of this reply into `pending`, up to its end
    /// (the next reply's samples stay in the channel until this one is spoken). False when
    /// the synthesis failed.
    fn collect(
        &mut self,
        out: &Receiver<Synthesised>,
        pending: &mut VecDeque<i16>,
    ) -> anyhow::Result<bool> {
        let mut ok = true;
        while self.times.is_none() {
            match out.try_recv() {
                Ok(Synthesised::Samples(s)) => {
                    if self.first_loud_offset.is_none() {
                        let held = self.samples + pending.len() as u64;
                        if let Some(i) = s.iter().position(|v| v.unsigned_abs() >= LOUD as u16) {
                            self.first_loud_offset = Some(held + i as u64);
                        }
                    }
                    pending.extend(s);
                }
                Ok(Synthesised::Done(t)) => self.times = Some(t),
                Ok(Synthesised::Failed(e)) => {
                    eprintln!("voxring voice hub-reply: synthesis failed: {e}");
                    ok = false;
                    self.times = Some(SynthTimes::default());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => anyhow::bail!("the synthesis thread died"),
            }
        }
        Ok(ok)
    }

    /// The reply's line on stdout.
    fn record(&self) -> serde_json::Value {
        let t = self.times.unwrap_or_default();
        json!({"event": "reply", "heard_text": self.text, "reply": reply_for(&self.text),
        "utterance": self.utterance, "recognised_ns": self.recognised_ns,
        "asr_seen_ns": self.seen_ns, "asr_version": self.asr_version_ns,
        "requested_ns": t.requested_ns, "first_sample_synth_ns": t.first_sample_ns,
        "synth_done_ns": t.done_ns, "first_commit_ns": self.first_commit_ns,
        "last_commit_ns": self.last_commit_ns, "samples": self.samples,
        "first_loud_offset": self.first_loud_offset})
    }
}

/// `voxring voice hub-reply`: answers each text of the recogniser's register, speaking into
/// the hub one frame per mic frame (silence when there is nothing to say). A watcher thread
/// blocked on the register starts each reply's synthesis as soon as the text is written.
pub fn hub_reply(args: &HubReplyArgs) -> anyhow::Result<ExitCode> {
    let hub = find_mono_hub(&args.hub)?;
    let cfg = hub.config();
    let asr = Placed::<VadRegister>::attach(&args.asr, &AttachOptions::default())
        .with_context(|| format!("cannot attach the recogniser's register {:?}", args.asr))?;
    let said = Placed::<VadRegister>::create(&args.said, &CreateOptions::default(), [0; 8])
        .with_context(|| format!("cannot create the reply agent's register {:?}", args.said))?;
    let (text_tx, text_rx) = channel::<String>();
    let (out_tx, out_rx) = channel();
    let (heard_tx, heard_rx) = channel::<Heard>();
    let rate = cfg.sample_rate;
    // The synthesis thread makes its synthesiser itself, after taking its own priority (below
    // the frame loop's), so that a thread libespeak-ng starts shares its scheduling (the
    // assistant checks every thread from outside).
    let (synth_tx, synth_rx) = channel();
    let (synth_prio, kind) = (args.synth_rt_priority, args.synth);
    let worker = std::thread::Builder::new()
        .name("reply-synth".into())
        .spawn(move || {
            let sched = crate::run::device::promote(synth_prio);
            match kind.speaker() {
                Ok(speaker) => {
                    let _ = synth_tx.send(Ok(sched));
                    synth_worker(&*speaker, rate, text_rx, out_tx);
                }
                Err(e) => {
                    let _ = synth_tx.send(Err(e));
                }
            }
        })
        .context("cannot start the synthesis thread")?;
    let (synth_sched, synth_warning) = synth_rx
        .recv()
        .context("the synthesis thread ended at its start")??;
    let (sched, warning) = crate::run::device::promote(args.rt_priority);
    let stop = Arc::new(AtomicBool::new(false));
    // Started after the promotion: it inherits the SCHED_FIFO priority, so that a woken
    // watcher does not wait for a CPU behind the machine's other work (it only blocks, reads
    // 64 bytes and sends; never on the frame loop's path).
    let watcher = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("reply-asr-watch".into())
            .spawn(move || watch_asr(&asr, &stop, &text_tx, &heard_tx))
            .context("cannot start the recogniser-register watcher")?
    };
    let mut spk = hub.speaker("reply")?;
    let mut mic = hub.join_mic("reply", Delivery::Lossless)?;
    emit(
        &json!({"event": "ready", "sched": sched, "warning": warning, "synth": args.synth,
        "synth_sched": synth_sched, "synth_warning": synth_warning}),
    )?;
    let r = speak_replies(
        &mut spk,
        &mut mic,
        &said,
        &heard_rx,
        &out_rx,
        cfg.samples_per_frame,
    );
    // Stop the watcher (it drops the texts' sender: the synthesis thread then ends).
    // Relaxed: the flag carries no data; the join below is the synchronisation.
    stop.store(true, Ordering::Relaxed);
    let watched = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the recogniser-register watcher panicked"))?;
    drop(heard_rx);
    drop(out_rx);
    let _ = worker.join();
    watched?;
    let (done, clean) = r?;
    let (written, dropped) = spk.counts();
    let lost = mic.stats().lost;
    let ok = clean && dropped == 0 && lost == 0;
    emit(
        &json!({"event": "end", "replies": done, "frames": written, "dropped": dropped,
        "mic_lost": lost, "clean": ok}),
    )?;
    if !ok {
        // The assistant quotes an agent's stderr in its failure: say which count failed.
        eprintln!(
            "voxring voice reply: not a valid run: {dropped} reply frame(s) dropped by the \
             hub's lane, {lost} mic frame(s) lost{}",
            if clean {
                ""
            } else {
                ", and a reply was not spoken whole (its synthesis failed, its lane refused a frame, or the stream ended first)"
            }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The frame loop of `hub-reply`: one frame out per mic frame, the replies the watcher hands
/// over spoken one after the other. Returns (replies done, clean) at the end of the stream.
fn speak_replies(
    spk: &mut voxring_linux::hub::Speaker,
    mic: &mut voxring_linux::hub::MicReader,
    said: &VadRegister,
    heard: &Receiver<Heard>,
    out: &Receiver<Synthesised>,
    samples_per_frame: u32,
) -> anyhow::Result<(u64, bool)> {
    let spf = samples_per_frame as usize;
    let mut pending: VecDeque<i16> = VecDeque::with_capacity(1 << 18);
    let mut queue: VecDeque<InFlight> = VecDeque::new();
    let mut frame = vec![0i16; spf];
    let (mut done, mut ok) = (0u64, true);
    loop {
        match mic.read(Some(Duration::from_secs(1)), |_| ())? {
            Read::Frame(()) => {}
            Read::TimedOut => continue,
            Read::EndOfStream => break,
        }
        loop {
            match heard.try_recv() {
                Ok(h) => queue.push_back(InFlight::new(h)),
                Err(TryRecvError::Empty) => break,
                // The watcher stopped early: its error is reported when it is joined.
                Err(TryRecvError::Disconnected) => {
                    anyhow::bail!("the recogniser-register watcher stopped")
                }
            }
        }
        if let Some(c) = queue.front_mut() {
            ok &= c.collect(out, &mut pending)?;
        }
        let n = pending.len().min(spf);
        frame.fill(0);
        for (d, s) in frame.iter_mut().zip(pending.drain(..n)) {
            *d = s;
        }
        if !spk.write(&frame)? {
            ok = false;
        }
        let now = monotonic_ns();
        let Some(c) = queue.front_mut() else { continue };
        if n > 0 {
            if c.first_commit_ns == 0 {
                c.first_commit_ns = now;
            }
            c.samples += n as u64;
            c.last_commit_ns = now;
        }
        if c.times.is_some() && pending.is_empty() {
            done += 1;
            let c = queue.pop_front().unwrap_or_default();
            said.publish_and_wake([
                done,
                c.last_commit_ns,
                c.first_commit_ns,
                c.utterance,
                0,
                0,
                0,
                0,
            ])
            .map_err(|_| anyhow::anyhow!("the reply agent's register refused a write"))?;
            emit(&c.record())?;
        }
    }
    Ok((done, ok && queue.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(text: &[u8]) -> [u64; 8] {
        let mut bytes = [0u8; ASR_TEXT_BYTES];
        bytes[..text.len()].copy_from_slice(text);
        let mut w = [3, 7, 123, 456, 0, 0, 0, 0];
        for (i, c) in bytes.chunks_exact(8).enumerate() {
            w[4 + i] = u64::from_ne_bytes(c.try_into().unwrap());
        }
        w
    }

    #[test]
    fn the_recognisers_record_is_read_back() {
        let (results, utterance, ns, text) = parse_asr(record(b"what time is it")).unwrap();
        assert_eq!((results, utterance, ns), (3, 7, 123));
        assert_eq!(text, "what time is it");
        // All 32 bytes used: no terminating NUL needed.
        let full = [b'a'; ASR_TEXT_BYTES];
        assert_eq!(parse_asr(record(&full)).unwrap().3.len(), ASR_TEXT_BYTES);
    }

    /// Attack: the register is another process's memory; bytes that are not UTF-8 are refused
    /// with a message, not spoken (or panicked on).
    #[test]
    fn a_record_that_is_not_text_is_refused() {
        let e = parse_asr(record(&[0xff, 0xfe, b'x'])).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn every_scenario_command_gets_its_own_reply() {
        assert_eq!(
            reply_for("turn on the kitchen light"),
            "the kitchen light is on"
        );
        assert_eq!(
            reply_for("turn off the bedroom light"),
            "the bedroom light is off"
        );
        assert_eq!(reply_for("what time is it"), "it is ten past two");
        assert_eq!(reply_for(""), "sorry, I did not understand");
    }
}
