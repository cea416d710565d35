//! The talker and the reply agent as speaking agents of a hub (`voxring serve`), joined
//! through the public client only (`voxring_linux::hub`): each joins `NAME.mic` to pace itself
//! (one output frame per mic frame, never waiting for room, as docs/hub.md asks) and speaks
//! into its own output ring `NAME.out.<agent>`, which the hub mixes into its playback.
//!
//! The recogniser → reply hop is a control register (`NAME.asr`, made by the recogniser): the
//! reply agent reads it once per mic frame; the reply agent's own register (`NAME.said`) tells
//! the recogniser when a reply has been written out, so that it can leave its own voice (which
//! the loopback brings back into the mic) undecoded.

use std::collections::VecDeque;
use std::io::Write as _;
use std::process::ExitCode;
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

/// `voxring voice hub-reply`: answers each text of the recogniser's register, speaking into
/// the hub one frame per mic frame (silence when there is nothing to say).
pub fn hub_reply(args: &HubReplyArgs) -> anyhow::Result<ExitCode> {
    let hub = find_mono_hub(&args.hub)?;
    let cfg = hub.config();
    let spf = cfg.samples_per_frame as usize;
    let asr = Placed::<VadRegister>::attach(&args.asr, &AttachOptions::default())
        .with_context(|| format!("cannot attach the recogniser's register {:?}", args.asr))?;
    let said = Placed::<VadRegister>::create(&args.said, &CreateOptions::default(), [0; 8])
        .with_context(|| format!("cannot create the reply agent's register {:?}", args.said))?;
    let (text_tx, text_rx) = channel::<String>();
    let (out_tx, out_rx) = channel();
    let rate = cfg.sample_rate;
    let speaker = args.synth.speaker()?;
    let worker = std::thread::Builder::new()
        .name("reply-synth".into())
        .spawn(move || synth_worker(&*speaker, rate, text_rx, out_tx))
        .context("cannot start the synthesis thread")?;
    let (sched, warning) = crate::run::device::promote(args.rt_priority);
    let mut spk = hub.speaker("reply")?;
    let mut mic = hub.join_mic("reply", Delivery::Lossless)?;
    emit(&json!({"event": "ready", "sched": sched, "warning": warning, "synth": args.synth}))?;
    let mut pending: VecDeque<i16> = VecDeque::with_capacity(1 << 18);
    let mut frame = vec![0i16; spf];
    let (mut seen_results, mut done, mut cur, mut ok) = (0u64, 0u64, None::<InFlight>, true);
    loop {
        match mic.read(Some(Duration::from_secs(1)), |_| ())? {
            Read::Frame(()) => {}
            Read::TimedOut => continue,
            Read::EndOfStream => break,
        }
        // Contended (the recogniser is writing right now): read again at the next frame.
        if let (None, Ok((w, version))) = (&cur, asr.read_versioned()) {
            let (results, utterance, recognised_ns, text) = parse_asr(w)?;
            if results > seen_results {
                seen_results = results;
                let seen_ns = monotonic_ns();
                text_tx
                    .send(reply_for(&text))
                    .map_err(|_| anyhow::anyhow!("the synthesis thread stopped"))?;
                cur = Some(InFlight {
                    text,
                    utterance,
                    recognised_ns,
                    seen_ns,
                    asr_version_ns: version,
                    ..InFlight::default()
                });
            }
        }
        if let Some(c) = cur.as_mut() {
            loop {
                match out_rx.try_recv() {
                    Ok(Synthesised::Samples(s)) => {
                        if c.first_loud_offset.is_none() {
                            let held = c.samples + pending.len() as u64;
                            if let Some(i) = s.iter().position(|v| v.unsigned_abs() >= LOUD as u16)
                            {
                                c.first_loud_offset = Some(held + i as u64);
                            }
                        }
                        pending.extend(s);
                    }
                    Ok(Synthesised::Done(t)) => c.times = Some(t),
                    Ok(Synthesised::Failed(e)) => {
                        eprintln!("voxring voice hub-reply: synthesis failed: {e}");
                        ok = false;
                        c.times = Some(SynthTimes::default());
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => anyhow::bail!("the synthesis thread died"),
                }
            }
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
        let Some(c) = cur.as_mut() else { continue };
        if n > 0 {
            if c.first_commit_ns == 0 {
                c.first_commit_ns = now;
            }
            c.samples += n as u64;
            c.last_commit_ns = now;
        }
        if c.times.is_some() && pending.is_empty() {
            done += 1;
            let c = cur.take().unwrap_or_default();
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
            let t = c.times.unwrap_or_default();
            emit(
                &json!({"event": "reply", "heard_text": c.text, "reply": reply_for(&c.text),
                "utterance": c.utterance, "recognised_ns": c.recognised_ns,
                "asr_seen_ns": c.seen_ns, "asr_version": c.asr_version_ns,
                "requested_ns": t.requested_ns, "first_sample_synth_ns": t.first_sample_ns,
                "synth_done_ns": t.done_ns, "first_commit_ns": c.first_commit_ns,
                "last_commit_ns": c.last_commit_ns, "samples": c.samples,
                "first_loud_offset": c.first_loud_offset}),
            )?;
        }
    }
    drop(text_tx);
    let _ = worker.join();
    let (written, dropped) = spk.counts();
    let lost = mic.stats().lost;
    ok &= dropped == 0 && lost == 0 && cur.is_none();
    emit(
        &json!({"event": "end", "replies": done, "frames": written, "dropped": dropped,
        "mic_lost": lost, "clean": ok}),
    )?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
