//! The talker: utterances synthesised by espeak-ng, resampled to the device rate, laid out
//! with silence between them at known sample positions, and played by the device side as a
//! [`PlaybackSource`] (the synthetic device's loopback, or PipeWire's null sink monitor,
//! carries them into the capture).
//!
//! The script is prepared before the stream starts (synthesis and resampling allocate); the
//! source itself only copies from it, so it runs on the real-time thread.
//!
//! Ground truth: each [`Placement`] gives the first and one-past-the-last sample of the
//! utterance that is not silence (espeak-ng pads its output with a little quiet; that padding
//! is trimmed, so `end` is where speech really stops).

use serde::{Deserialize, Serialize};
use voxring_linux::audio::{ChunkInfo, PlaybackSource, Sample};

use super::synth::{Synth, resample, to_f32};

/// A sample at or below this magnitude (-60 dBFS) is silence when the speech is trimmed.
const SILENCE: f32 = 0.001;

/// Where one utterance lies in the script, in samples at the script's rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The words spoken.
    pub text: String,
    /// First sample of speech.
    pub start: u64,
    /// One past the last sample of speech: the known end of speech.
    pub end: u64,
}

/// The talker's whole performance: samples and where each utterance is.
#[derive(Debug, Clone)]
pub struct Script {
    /// Mono samples at `rate`, -1.0..=1.0.
    pub samples: Vec<f32>,
    pub rate: u32,
    pub placements: Vec<Placement>,
}

/// How the script is laid out.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Silence before the first utterance, seconds.
    pub lead_s: f64,
    /// Silence between two utterances, seconds (enough for a reply).
    pub gap_s: f64,
    /// Silence after the last one, seconds.
    pub tail_s: f64,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            lead_s: 0.5,
            gap_s: 2.0,
            tail_s: 1.5,
        }
    }
}

impl Script {
    /// Synthesises `texts` with `synth`, resamples them to `rate` and lays them out.
    pub fn build(
        synth: &Synth,
        texts: &[String],
        rate: u32,
        layout: &Layout,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !texts.is_empty(),
            "the talker has nothing to say: give at least one utterance"
        );
        let secs = |s: f64| (s.max(0.0) * f64::from(rate)).round() as usize;
        let mut samples = vec![0.0f32; secs(layout.lead_s)];
        let mut placements = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let speech = synth.speak(text)?;
            let up = resample(&to_f32(&speech.samples), speech.rate, rate)?;
            let first = up.iter().position(|s| s.abs() > SILENCE);
            let last = up.iter().rposition(|s| s.abs() > SILENCE);
            let (Some(first), Some(last)) = (first, last) else {
                anyhow::bail!("espeak-ng produced only silence for {text:?}");
            };
            let start = samples.len();
            samples.extend_from_slice(&up[first..=last]);
            placements.push(Placement {
                text: text.clone(),
                start: start as u64,
                end: samples.len() as u64,
            });
            let after = if i + 1 == texts.len() {
                layout.tail_s
            } else {
                layout.gap_s
            };
            samples.resize(samples.len() + secs(after), 0.0);
        }
        Ok(Self {
            samples,
            rate,
            placements,
        })
    }

    /// The script as S16 samples (what a 16-bit device carries).
    #[cfg(test)]
    pub fn to_s16(&self) -> Vec<i16> {
        self.samples.iter().map(|&v| i16::from_f32(v)).collect()
    }
}

/// Plays a [`Script`] once, then silence; every channel carries the same sample.
/// Real-time safe: it copies from the prepared script, nothing else.
#[derive(Debug)]
pub struct TalkerSource<'a> {
    script: &'a [f32],
    pos: usize,
}

impl<'a> TalkerSource<'a> {
    /// A source playing `script` from its start.
    pub fn new(script: &'a Script) -> Self {
        Self {
            script: &script.samples,
            pos: 0,
        }
    }

    /// Frames of the script played so far.
    pub fn played(&self) -> u64 {
        self.pos as u64
    }

    /// True once the whole script was played.
    pub fn finished(&self) -> bool {
        self.pos >= self.script.len()
    }
}

impl TalkerSource<'_> {
    /// The next mono sample (silence once the script is over): for a capture side that mixes
    /// the talker into captured frames, as `voxring run` does with its synthetic talker.
    pub fn next_sample(&mut self) -> f32 {
        let v = self.script.get(self.pos).copied().unwrap_or(0.0);
        self.pos = (self.pos + 1).min(self.script.len());
        v
    }
}

impl<T: Sample> PlaybackSource<T> for TalkerSource<'_> {
    fn pull(&mut self, out: &mut [T], info: &ChunkInfo) -> usize {
        let ch = info.channels.max(1) as usize;
        for frame in out.chunks_exact_mut(ch) {
            frame.fill(T::from_f32(self.next_sample()));
        }
        out.len() / ch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts() -> Vec<String> {
        vec!["turn on the kitchen light".into(), "what time is it".into()]
    }

    #[test]
    fn utterances_sit_at_their_placements_with_silence_around_them() {
        let layout = Layout {
            lead_s: 0.25,
            gap_s: 1.0,
            tail_s: 0.5,
        };
        let s = Script::build(&Synth::default(), &texts(), 48_000, &layout).unwrap();
        assert_eq!(s.placements.len(), 2);
        let (a, b) = (&s.placements[0], &s.placements[1]);
        assert_eq!(a.start, 12_000);
        assert!(a.end > a.start + 24_000, "{a:?}");
        assert_eq!(b.start, a.end + 48_000);
        assert_eq!(s.samples.len() as u64, b.end + 24_000);
        // Speech starts and ends exactly on the placements; silence everywhere else.
        for p in &s.placements {
            assert!(s.samples[p.start as usize].abs() > SILENCE);
            assert!(s.samples[p.end as usize - 1].abs() > SILENCE);
        }
        let quiet = |r: std::ops::Range<u64>| r.into_iter().all(|i| s.samples[i as usize] == 0.0);
        assert!(quiet(0..a.start) && quiet(a.end..b.start) && quiet(b.end..s.samples.len() as u64));
    }

    #[test]
    fn the_source_plays_the_script_on_every_channel_then_silence_without_allocating() {
        let layout = Layout {
            lead_s: 0.0,
            gap_s: 0.1,
            tail_s: 0.0,
        };
        let script = Script::build(&Synth::default(), &texts()[1..], 48_000, &layout).unwrap();
        let want = script.to_s16();
        let mut src = TalkerSource::new(&script);
        let mut out = vec![0i16; 2 * 480];
        let mut got = Vec::with_capacity(want.len() + 960);
        let info = ChunkInfo {
            sample_pos: 0,
            timestamp_ns: 0,
            flags: 0,
            capture_pos: 0,
            channels: 2,
        };
        while !src.finished() {
            let n = assert_no_alloc::assert_no_alloc(|| src.pull(&mut out, &info));
            assert_eq!(n, 480);
            for f in out.chunks_exact(2) {
                assert_eq!(f[0], f[1]);
                got.push(f[0]);
            }
        }
        assert_eq!(&got[..want.len()], &want[..]);
        assert!(got[want.len()..].iter().all(|&s| s == 0));
        assert_eq!(src.played(), want.len() as u64);
    }
}
