//! The voice-activity agent: a real model (the `earshot` crate, weights inside it) on
//! 16 kHz frames of 256 samples, fed from a 48 kHz ring through rubato.
//!
//! [`EarshotVad`] is the allocation-free engine: `push` takes the ring's samples, resamples
//! them (rubato's synchronous FFT resampler, 48 → 16 kHz), scores every 256-sample frame and
//! runs a hysteresis on the scores: speech starts after `min_speech_frames` frames scoring at
//! least `threshold`, and ends after `hangover_frames` frames below it (the hangover: how long
//! the agent waits before it believes the talker stopped; reported apart in the latency).
//!
//! Every decision has two positions, both in samples of the input stream: the *boundary*
//! (where the model places the start or the end of speech, corrected for the resampler's
//! delay) and the *decision* (how far the input had come when the agent decided; the
//! difference is the decision's latency in samples, hangover included).
//!
//! [`VadRecord`] is what the agent publishes after each decision through a control register
//! (core's `ControlRegister<[u64; 8], 8>`, the C ABI's and the Python package's `Control`).

use anyhow::Context as _;
use earshot::Detector;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};
use serde::{Deserialize, Serialize};

/// earshot's rate and frame.
pub const VAD_RATE: u32 = 16_000;
/// Samples per earshot frame (16 ms at 16 kHz).
pub const VAD_FRAME: usize = 256;
/// earshot's analysis window, 16 kHz samples (its features look at the last three frames).
const WINDOW: u64 = 3 * VAD_FRAME as u64;

/// The hysteresis on earshot's scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VadSettings {
    /// A frame scoring at least this is speech (earshot's suggested default: 0.5).
    pub threshold: f32,
    /// Speech frames in a row that start speech.
    pub min_speech_frames: u32,
    /// Quiet frames in a row that end it (16 ms each).
    pub hangover_frames: u32,
}

impl Default for VadSettings {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            min_speech_frames: 2,
            // 12 frames: 192 ms, longer than the pauses between words of espeak-ng's speech.
            hangover_frames: 12,
        }
    }
}

impl VadSettings {
    /// The hangover in milliseconds.
    pub fn hangover_ms(&self) -> u32 {
        self.hangover_frames * (VAD_FRAME as u32 * 1000 / VAD_RATE)
    }
}

/// Speech started or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VadEventKind {
    Start,
    End,
}

/// One decision, positions in input samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VadEvent {
    pub kind: VadEventKind,
    /// Where the model places the boundary.
    pub boundary_pos: u64,
    /// The input position when the agent decided.
    pub decided_pos: u64,
}

/// The engine. See the module docs. Allocates only in [`EarshotVad::new`].
pub struct EarshotVad {
    detector: Box<Detector>,
    resampler: Fft<f32>,
    settings: VadSettings,
    input_rate: u32,
    /// Input waiting for the resampler (`fill` samples of it).
    pending: Vec<f32>,
    fill: usize,
    /// Resampler output, then the 16 kHz frame being gathered (`frame_fill` samples).
    out: Vec<f32>,
    frame: [i16; VAD_FRAME],
    frame_fill: usize,
    /// The resampler's delay, in 16 kHz samples.
    delay: u64,
    /// Input position of the first sample pushed, and input samples pushed since.
    origin: Option<u64>,
    consumed: u64,
    /// 16 kHz samples that came out of the resampler (delay included).
    produced: u64,
    speaking: bool,
    run: u32,
    quiet: u32,
    /// 16 kHz index (delay removed) of the first frame of the current speech run.
    run_start: u64,
    /// One past the last speech frame seen, 16 kHz index (delay removed).
    last_speech_end: u64,
    /// Frames scored.
    pub frames: u64,
}

impl std::fmt::Debug for EarshotVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarshotVad")
            .field("settings", &self.settings)
            .field("speaking", &self.speaking)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl EarshotVad {
    /// An engine for a mono stream at `input_rate` Hz (a multiple of 16 kHz is exact; any
    /// rate rubato accepts works).
    pub fn new(input_rate: u32, settings: VadSettings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            settings.min_speech_frames >= 1 && settings.hangover_frames >= 1,
            "the VAD needs at least one frame to start speech and one to end it"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&settings.threshold),
            "the VAD threshold {} is not a score (0..1)",
            settings.threshold
        );
        let resampler = Fft::<f32>::new(
            input_rate as usize,
            VAD_RATE as usize,
            3 * VAD_FRAME,
            1,
            FixedSync::Input,
        )
        .with_context(|| format!("cannot resample {input_rate} Hz to {VAD_RATE} Hz"))?;
        let delay = resampler.output_delay() as u64;
        Ok(Self {
            detector: Detector::default_boxed(),
            pending: vec![0.0; resampler.input_frames_max()],
            out: vec![0.0; resampler.output_frames_max()],
            resampler,
            settings,
            input_rate,
            fill: 0,
            frame: [0; VAD_FRAME],
            frame_fill: 0,
            delay,
            origin: None,
            consumed: 0,
            produced: 0,
            speaking: false,
            run: 0,
            quiet: 0,
            run_start: 0,
            last_speech_end: 0,
            frames: 0,
        })
    }

    /// Takes `samples` (mono S16) whose first sample is at input position `pos`, and calls
    /// `on_event` for every decision. No allocation.
    pub fn push(&mut self, pos: u64, samples: &[i16], mut on_event: impl FnMut(VadEvent)) {
        if self.origin.is_none() {
            self.origin = Some(pos);
        }
        let mut rest = samples;
        while !rest.is_empty() {
            let need = self.resampler.input_frames_next();
            let take = (need - self.fill).min(rest.len());
            for (d, s) in self.pending[self.fill..self.fill + take]
                .iter_mut()
                .zip(rest)
            {
                *d = f32::from(*s) / 32768.0;
            }
            self.fill += take;
            self.consumed += take as u64;
            rest = &rest[take..];
            if self.fill == need {
                self.fill = 0;
                self.resample_chunk(need, &mut on_event);
            }
        }
    }

    fn resample_chunk(&mut self, need: usize, on_event: &mut impl FnMut(VadEvent)) {
        let out_len = self.out.len();
        let (Ok(input), Ok(mut output)) = (
            InterleavedSlice::new(&self.pending[..need], 1, need),
            InterleavedSlice::new_mut(&mut self.out, 1, out_len),
        ) else {
            return; // sizes come from the resampler itself: cannot fail
        };
        let Ok((_, produced)) = self
            .resampler
            .process_into_buffer(&input, &mut output, None)
        else {
            return;
        };
        for i in 0..produced {
            let v = (self.out[i] * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
            self.frame[self.frame_fill] = v;
            self.frame_fill += 1;
            self.produced += 1;
            if self.frame_fill == VAD_FRAME {
                self.frame_fill = 0;
                let score = self.detector.predict_i16(&self.frame);
                self.judge(score, on_event);
            }
        }
    }

    /// The hysteresis on one frame's score.
    fn judge(&mut self, score: f32, on_event: &mut impl FnMut(VadEvent)) {
        self.frames += 1;
        // The frame just scored ends at 16 kHz sample `end` (delay removed), but earshot's
        // score covers a window of three frames (48 ms) ending there: speech that starts or
        // stops anywhere in the window moves it. The boundary is placed mid-window.
        let end = self.produced.saturating_sub(self.delay);
        let mid = end.saturating_sub(WINDOW / 2);
        let (start, end) = (mid, mid);
        let decided_pos = self.origin.unwrap_or(0) + self.consumed;
        if score >= self.settings.threshold {
            if self.run == 0 {
                self.run_start = start;
            }
            self.run += 1;
            self.quiet = 0;
            self.last_speech_end = end;
            if !self.speaking && self.run >= self.settings.min_speech_frames {
                self.speaking = true;
                on_event(VadEvent {
                    kind: VadEventKind::Start,
                    boundary_pos: self.to_input(self.run_start),
                    decided_pos,
                });
            }
        } else {
            self.run = 0;
            if self.speaking {
                self.quiet += 1;
                if self.quiet >= self.settings.hangover_frames {
                    self.speaking = false;
                    on_event(VadEvent {
                        kind: VadEventKind::End,
                        boundary_pos: self.to_input(self.last_speech_end),
                        decided_pos,
                    });
                }
            }
        }
    }

    /// A 16 kHz index as an input position.
    fn to_input(&self, i16k: u64) -> u64 {
        self.origin.unwrap_or(0) + i16k * u64::from(self.input_rate) / u64::from(VAD_RATE)
    }
}

/// What the agent publishes after every decision: eight words, native endianness, in this
/// order (Python: `struct.unpack("=IIQQQQQQ", data)`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VadRecord {
    /// 0 silence, 1 speech, [`VadRecord::STREAM_ENDED`] once the agent has judged the whole
    /// stream (every decision it will make is published).
    pub speaking: u32,
    /// The hangover setting, ms.
    pub hangover_ms: u32,
    /// Speech starts so far.
    pub starts: u64,
    /// Speech ends so far (`== starts` when `end_pos` closes the latest utterance).
    pub ends: u64,
    /// Boundary of the latest start, input samples.
    pub start_pos: u64,
    /// Boundary of the latest end, input samples.
    pub end_pos: u64,
    /// Input position of the latest decision.
    pub decided_pos: u64,
    /// CLOCK_MONOTONIC of the latest decision, ns.
    pub decided_ns: u64,
    /// Commit time of the ring frame whose samples completed the decision, ns.
    pub frame_commit_ns: u64,
}

impl VadRecord {
    /// `speaking` once the stream has ended.
    pub const STREAM_ENDED: u32 = 2;

    /// The register's words (the last four bytes are zero).
    pub fn to_words(self) -> [u64; 8] {
        let mut first = [0u8; 8];
        first[..4].copy_from_slice(&self.speaking.to_ne_bytes());
        first[4..].copy_from_slice(&self.hangover_ms.to_ne_bytes());
        [
            u64::from_ne_bytes(first),
            self.starts,
            self.ends,
            self.start_pos,
            self.end_pos,
            self.decided_pos,
            self.decided_ns,
            self.frame_commit_ns,
        ]
    }

    /// From the register's words (the recogniser reads them in Python; any bit pattern is a record: a hostile writer can only make
    /// it wrong, not unsafe).
    #[cfg(test)]
    pub fn from_words(w: [u64; 8]) -> Self {
        let [a, b, c, d, e, f, g, h] = w[0].to_ne_bytes();
        Self {
            speaking: u32::from_ne_bytes([a, b, c, d]),
            hangover_ms: u32::from_ne_bytes([e, f, g, h]),
            starts: w[1],
            ends: w[2],
            start_pos: w[3],
            end_pos: w[4],
            decided_pos: w[5],
            decided_ns: w[6],
            frame_commit_ns: w[7],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::synth::Synth;
    use super::super::talker::{Layout, Script};
    use super::*;

    /// Input samples the found boundaries may be off by: 60 ms at 48 kHz. earshot scores
    /// 16 ms frames over a 48 ms window, so the truth lies within a few frames (measured on
    /// espeak-ng 1.51's en-us voice: starts -30..+31 ms, ends +37..+49 ms).
    const TOLERANCE: u64 = 2_880;

    fn script() -> Script {
        let texts = [
            "turn on the kitchen light",
            "what time is it",
            "set a timer for five minutes",
        ]
        .map(String::from);
        Script::build(&Synth::default(), &texts, 48_000, &Layout::default()).unwrap()
    }

    fn events(s: &Script, settings: VadSettings, chunk: usize, pos0: u64) -> Vec<VadEvent> {
        let mut vad = EarshotVad::new(48_000, settings).unwrap();
        let pcm = s.to_s16();
        let mut out = Vec::new();
        for (i, c) in pcm.chunks(chunk).enumerate() {
            vad.push(pos0 + (i * chunk) as u64, c, |e| out.push(e));
        }
        out
    }

    #[test]
    fn earshot_finds_each_utterance_within_tolerance_and_decides_after_the_hangover() {
        let s = script();
        let settings = VadSettings::default();
        let ev = events(&s, settings, 480, 0);
        let summary: Vec<_> = ev
            .iter()
            .map(|e| (e.kind, e.boundary_pos, e.decided_pos))
            .collect();
        assert_eq!(
            ev.len(),
            2 * s.placements.len(),
            "{summary:?} vs {:?}",
            s.placements
        );
        for (p, pair) in s.placements.iter().zip(ev.chunks(2)) {
            let (start, end) = (pair[0], pair[1]);
            assert_eq!(
                (start.kind, end.kind),
                (VadEventKind::Start, VadEventKind::End)
            );
            let off = |a: u64, b: u64| a.abs_diff(b);
            eprintln!(
                "{:?}: start {:+} end {:+}",
                p.text,
                start.boundary_pos as i64 - p.start as i64,
                end.boundary_pos as i64 - p.end as i64
            );
            assert!(
                off(start.boundary_pos, p.start) <= TOLERANCE,
                "{p:?}: {summary:?}"
            );
            assert!(
                off(end.boundary_pos, p.end) <= TOLERANCE,
                "{p:?}: {summary:?}"
            );
            // A decision comes after its boundary; an end, after the hangover too.
            assert!(start.decided_pos >= start.boundary_pos);
            let hang = u64::from(settings.hangover_frames) * 3 * VAD_FRAME as u64;
            assert!(end.decided_pos >= end.boundary_pos + hang, "{summary:?}");
        }
    }

    #[test]
    fn positions_follow_the_stream_whatever_the_chunking_and_origin() {
        let s = script();
        let a = events(&s, VadSettings::default(), 480, 0);
        let b: Vec<_> = events(&s, VadSettings::default(), 1_024, 1_000_000)
            .into_iter()
            .map(|e| VadEvent {
                boundary_pos: e.boundary_pos - 1_000_000,
                decided_pos: e.decided_pos - 1_000_000,
                ..e
            })
            .collect();
        // Decisions happen at resampler-chunk ends, so they agree within one chunk.
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.kind, x.boundary_pos), (y.kind, y.boundary_pos));
            assert!(x.decided_pos.abs_diff(y.decided_pos) <= 1_024);
        }
    }

    #[test]
    fn silence_is_never_speech_and_the_engine_does_not_allocate() {
        let mut vad = EarshotVad::new(48_000, VadSettings::default()).unwrap();
        let quiet = vec![0i16; 480];
        let mut n = 0;
        vad.push(0, &quiet, |_| n += 1);
        for i in 1..500u64 {
            assert_no_alloc::assert_no_alloc(|| vad.push(i * 480, &quiet, |_| n += 1));
        }
        assert_eq!(n, 0);
        assert_eq!(
            vad.frames,
            500 * 480 / 3 / VAD_FRAME as u64 - 1,
            "{}",
            vad.frames
        );
    }

    #[test]
    fn bad_settings_are_refused_with_reasons() {
        let refusal = |s: VadSettings| EarshotVad::new(48_000, s).unwrap_err().to_string();
        let e = refusal(VadSettings {
            threshold: 2.0,
            ..Default::default()
        });
        assert!(e.contains("threshold"), "{e}");
        let e = refusal(VadSettings {
            hangover_frames: 0,
            ..Default::default()
        });
        assert!(e.contains("at least one frame"), "{e}");
    }

    #[test]
    fn a_record_survives_the_register_words() {
        let r = VadRecord {
            speaking: 1,
            hangover_ms: 192,
            starts: 3,
            ends: 2,
            start_pos: 10,
            end_pos: 20,
            decided_pos: 30,
            decided_ns: 40,
            frame_commit_ns: 50,
        };
        assert_eq!(VadRecord::from_words(r.to_words()), r);
    }
}
