//! Speech synthesis with the `espeak-ng` program, and rate conversion with `rubato`.
//!
//! `espeak-ng --stdout TEXT` writes a WAV stream (22,050 Hz, mono, S16) on its standard
//! output as it synthesises. [`Synth::speak`] reads it, notes when the first sample arrived
//! (the "first reply sample synthesised" instant), and [`resample`] converts the samples to
//! the device rate with rubato's synchronous FFT resampler (delay trimmed: sample `i` of the
//! output is the input's instant `i / to_rate`).

use std::io::Read as _;
use std::process::{Command, Stdio};

use anyhow::Context as _;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};
use voxring_linux::audio::monotonic_ns;

/// The program that synthesises speech (Debian package `espeak-ng`).
pub const ESPEAK: &str = "espeak-ng";

/// One synthesised utterance.
#[derive(Debug, Clone)]
pub struct Speech {
    /// Mono samples at `rate`.
    pub samples: Vec<i16>,
    /// espeak-ng's output rate (22,050 Hz).
    pub rate: u32,
}

/// Synthesis settings passed to espeak-ng.
#[derive(Debug, Clone)]
pub struct Synth {
    /// Voice (`-v`), e.g. `en-us`.
    pub voice: String,
    /// Words per minute (`-s`).
    pub words_per_minute: u32,
}

impl Default for Synth {
    fn default() -> Self {
        Self {
            voice: "en-us".to_owned(),
            words_per_minute: 160,
        }
    }
}

/// When espeak-ng was started, when its first sample came out of the pipe, and when it
/// finished (CLOCK_MONOTONIC ns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SynthTimes {
    pub requested_ns: u64,
    pub first_sample_ns: u64,
    pub done_ns: u64,
}

/// Something that synthesises a text, handing its samples out as they come: the `espeak-ng`
/// program ([`Synth`]) or the resident library ([`super::espeak_lib::Resident`], over
/// [`voxring_linux::espeak`]).
pub trait Speaker {
    /// Synthesises `text`, handing the samples to `on_samples(rate, samples)` as they are
    /// made; returns when it was asked, gave its first sample, and finished.
    fn stream(
        &self,
        text: &str,
        on_samples: &mut dyn FnMut(u32, &[i16]) -> anyhow::Result<()>,
    ) -> anyhow::Result<SynthTimes>;
}

impl Speaker for Synth {
    fn stream(
        &self,
        text: &str,
        on_samples: &mut dyn FnMut(u32, &[i16]) -> anyhow::Result<()>,
    ) -> anyhow::Result<SynthTimes> {
        Synth::stream(self, text, on_samples)
    }
}

impl Synth {
    /// Synthesises `text`. Fails with what to do when espeak-ng is missing or fails.
    pub fn speak(&self, text: &str) -> anyhow::Result<Speech> {
        let mut samples = Vec::with_capacity(64 * 1024);
        let mut rate = 0;
        self.stream(text, &mut |r, s| {
            rate = r;
            samples.extend_from_slice(s);
            Ok(())
        })?;
        Ok(Speech { samples, rate })
    }

    /// Synthesises `text`, handing the samples to `on_samples(rate, samples)` as they come out
    /// of espeak-ng's pipe (its WAV header checked first).
    pub fn stream(
        &self,
        text: &str,
        on_samples: &mut dyn FnMut(u32, &[i16]) -> anyhow::Result<()>,
    ) -> anyhow::Result<SynthTimes> {
        check_text(text)?;
        let requested_ns = monotonic_ns();
        let mut child = Command::new(ESPEAK)
            .args(["-v", &self.voice, "-s", &self.words_per_minute.to_string()])
            .arg("--stdout")
            // `--` : a text starting with '-' is words, not an option.
            .arg("--")
            .arg(text)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {ESPEAK}: install it (Debian: apt-get install espeak-ng, or \
                     scripts/setup-system test)"
                )
            })?;
        let mut out = child.stdout.take().context("espeak-ng has no stdout")?;
        let mut header = Vec::with_capacity(WAV_HEADER);
        let mut rate = 0;
        let mut carry: Option<u8> = None;
        let mut chunk = [0u8; 16 * 1024];
        let mut samples = Vec::with_capacity(chunk.len() / 2 + 1);
        let mut first_sample_ns = 0;
        loop {
            let n = out.read(&mut chunk).context("reading espeak-ng's output")?;
            if n == 0 {
                break;
            }
            let mut bytes = &chunk[..n];
            if header.len() < WAV_HEADER {
                let k = (WAV_HEADER - header.len()).min(bytes.len());
                header.extend_from_slice(&bytes[..k]);
                bytes = &bytes[k..];
                if header.len() == WAV_HEADER {
                    rate = parse_wav_header(&header).with_context(|| {
                        format!("{ESPEAK} wrote an unexpected stream for {text:?}")
                    })?;
                }
            }
            samples.clear();
            for &b in bytes {
                match carry.take() {
                    None => carry = Some(b),
                    Some(lo) => samples.push(i16::from_le_bytes([lo, b])),
                }
            }
            if !samples.is_empty() {
                if first_sample_ns == 0 {
                    first_sample_ns = monotonic_ns();
                }
                on_samples(rate, &samples)?;
            }
        }
        let done_ns = monotonic_ns();
        let result = child.wait_with_output().context("waiting for espeak-ng")?;
        anyhow::ensure!(
            result.status.success(),
            "{ESPEAK} failed ({}) on {text:?}: {}",
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        );
        anyhow::ensure!(
            header.len() == WAV_HEADER && first_sample_ns != 0,
            "{ESPEAK} produced no audio for {text:?}"
        );
        Ok(SynthTimes {
            requested_ns,
            first_sample_ns,
            done_ns,
        })
    }
}

/// Refuses a text with nothing to say.
pub fn check_text(text: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !text.trim().is_empty(),
        "nothing to say: the utterance is empty"
    );
    Ok(())
}

/// The canonical PCM WAV header espeak-ng writes (RIFF, `fmt ` of 16 bytes, `data`).
const WAV_HEADER: usize = 44;

/// The rate of a WAV stream as espeak-ng writes it to a pipe (PCM, mono, 16-bit; its size
/// fields cannot be trusted, they are written before the length is known, so the data chunk
/// runs to the end of the stream).
fn parse_wav_header(b: &[u8]) -> anyhow::Result<u32> {
    anyhow::ensure!(
        b.len() >= WAV_HEADER && &b[..4] == b"RIFF" && &b[8..12] == b"WAVE",
        "not a WAV stream ({} bytes)",
        b.len()
    );
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    anyhow::ensure!(
        &b[12..16] == b"fmt ",
        "no fmt chunk where espeak-ng puts it"
    );
    let (format, channels, rate, bits) = (u16_at(20), u16_at(22), u32_at(24), u16_at(34));
    anyhow::ensure!(
        format == 1 && channels == 1 && bits == 16,
        "expected PCM mono 16-bit, got format {format}, {channels} channels, {bits} bits"
    );
    anyhow::ensure!(&b[36..40] == b"data", "no data chunk after the fmt chunk");
    anyhow::ensure!(
        (8_000..=192_000).contains(&rate),
        "implausible rate {rate} Hz"
    );
    Ok(rate)
}

/// `samples` at `from` Hz converted to `to` Hz (rubato's FFT resampler, its delay trimmed),
/// as floats in -1.0..=1.0.
pub fn resample(samples: &[f32], from: u32, to: u32) -> anyhow::Result<Vec<f32>> {
    if from == to {
        return Ok(samples.to_vec());
    }
    let mut r = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
        .context("cannot make the resampler")?;
    let input = InterleavedSlice::new(samples, 1, samples.len())
        .map_err(|e| anyhow::anyhow!("resampler input: {e}"))?;
    let mut out = vec![0.0f32; r.process_all_needed_output_len(samples.len())];
    let len = out.len();
    let mut output = InterleavedSlice::new_mut(&mut out, 1, len)
        .map_err(|e| anyhow::anyhow!("resampler output: {e}"))?;
    let (_, produced) = r
        .process_all_into_buffer(&input, &mut output, samples.len(), None)
        .context("resampling failed")?;
    out.truncate(produced);
    Ok(out)
}

/// A stream converted chunk by chunk (rubato's FFT resampler, fixed input chunks), so the
/// first converted samples go out before the rest is converted. The resampler's delay is
/// trimmed: the output is aligned with the input, as [`resample`]'s is.
pub struct StreamResampler {
    r: Fft<f32>,
    pending: Vec<f32>,
    out: Vec<f32>,
    /// Output samples still to drop (the resampler's delay).
    skip: usize,
    /// Input taken and output given so far.
    taken: u64,
    given: u64,
    ratio: f64,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("ratio", &self.ratio)
            .finish_non_exhaustive()
    }
}

/// Where converted samples go.
pub type Emit<'a> = dyn FnMut(&[f32]) -> anyhow::Result<()> + 'a;

impl StreamResampler {
    /// From `from` Hz to `to` Hz, converting `chunk` input samples at a time.
    pub fn new(from: u32, to: u32, chunk: usize) -> anyhow::Result<Self> {
        let r = Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Input)
            .context("cannot make the resampler")?;
        Ok(Self {
            pending: Vec::with_capacity(r.input_frames_max()),
            out: vec![0.0; r.output_frames_max()],
            skip: r.output_delay(),
            taken: 0,
            given: 0,
            ratio: f64::from(to) / f64::from(from),
            r,
        })
    }

    /// Takes `input`; hands every converted sample that is ready to `emit`.
    pub fn push(&mut self, input: &[f32], emit: &mut Emit<'_>) -> anyhow::Result<()> {
        self.taken += input.len() as u64;
        let mut rest = input;
        while !rest.is_empty() {
            let need = self.r.input_frames_next();
            let k = (need - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..k]);
            rest = &rest[k..];
            if self.pending.len() == need {
                self.run(None, u64::MAX, emit)?;
            }
        }
        Ok(())
    }

    /// Converts what is left and empties the delay line: in all, `round(input × ratio)`
    /// samples were emitted.
    pub fn finish(mut self, emit: &mut Emit<'_>) -> anyhow::Result<()> {
        let want = (self.taken as f64 * self.ratio).round() as u64;
        // The delay line holds less than a few chunks: a bounded number of rounds.
        for _ in 0..64 {
            if self.given >= want {
                return Ok(());
            }
            let n = self.pending.len();
            self.pending.resize(self.r.input_frames_next(), 0.0);
            self.run(Some(n), want, emit)?;
        }
        anyhow::bail!(
            "the resampler did not drain ({} of {want} samples)",
            self.given
        )
    }

    /// Converts `pending` (a full chunk; its first `partial` samples are real when given),
    /// emitting at most up to `limit` samples in all.
    fn run(
        &mut self,
        partial: Option<usize>,
        limit: u64,
        emit: &mut Emit<'_>,
    ) -> anyhow::Result<()> {
        let need = self.pending.len();
        let len = self.out.len();
        let input = InterleavedSlice::new(&self.pending, 1, need)
            .map_err(|e| anyhow::anyhow!("resampler input: {e}"))?;
        let mut output = InterleavedSlice::new_mut(&mut self.out, 1, len)
            .map_err(|e| anyhow::anyhow!("resampler output: {e}"))?;
        let indexing = partial.map(|n| rubato::Indexing::new().partial_len(n));
        let (_, produced) = self
            .r
            .process_into_buffer(&input, &mut output, indexing.as_ref())
            .context("resampling failed")?;
        self.pending.clear();
        let drop = self.skip.min(produced);
        self.skip -= drop;
        let room = usize::try_from(limit.saturating_sub(self.given)).unwrap_or(usize::MAX);
        let ready = &self.out[drop..produced.min(drop.saturating_add(room))];
        if !ready.is_empty() {
            self.given += ready.len() as u64;
            emit(ready)?;
        }
        Ok(())
    }
}

/// S16 to float.
pub fn to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn espeak_speaks_22050_hz_and_rubato_keeps_the_duration() {
        let s = Synth::default().speak("turn on the kitchen light").unwrap();
        assert_eq!(s.rate, 22_050);
        assert!(s.samples.len() > s.rate as usize / 2, "{}", s.samples.len());
        let mut n = 0;
        let t = Synth::default()
            .stream("turn on the kitchen light", &mut |_, x| {
                n += x.len();
                Ok(())
            })
            .unwrap();
        assert_eq!(n, s.samples.len(), "streamed and whole synthesis agree");
        assert!(t.first_sample_ns >= t.requested_ns && t.done_ns >= t.first_sample_ns);
        let up = resample(&to_f32(&s.samples), s.rate, 48_000).unwrap();
        let want = s.samples.len() as f64 * 48_000.0 / 22_050.0;
        assert!(
            (up.len() as f64 - want).abs() <= 2.0,
            "{} vs {want}",
            up.len()
        );
    }

    #[test]
    fn rubato_moves_a_click_to_the_same_instant() {
        // A click at 0.25 s must stay at 0.25 s: the resampler's delay is trimmed.
        let mut x = vec![0.0f32; 22_050];
        x[22_050 / 4] = 1.0;
        let y = resample(&x, 22_050, 48_000).unwrap();
        let peak = (0..y.len())
            .max_by(|&a, &b| y[a].abs().total_cmp(&y[b].abs()))
            .unwrap();
        assert!((peak as i64 - 12_000).abs() <= 2, "click at {peak}");
    }

    #[test]
    fn streaming_conversion_gives_the_whole_conversions_samples() {
        let s = Synth::default().speak("what time is it").unwrap();
        let x = to_f32(&s.samples);
        let whole = resample(&x, s.rate, 48_000).unwrap();
        let mut streamed = Vec::new();
        let mut r = StreamResampler::new(s.rate, 48_000, 1024).unwrap();
        let mut emit = |o: &[f32]| {
            streamed.extend_from_slice(o);
            Ok(())
        };
        for piece in x.chunks(700) {
            r.push(piece, &mut emit).unwrap();
        }
        r.finish(&mut emit).unwrap();
        assert_eq!(
            streamed.len(),
            (x.len() as f64 * 48_000.0 / 22_050.0).round() as usize
        );
        let n = whole.len().min(streamed.len());
        let worst = (0..n)
            .map(|i| (whole[i] - streamed[i]).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-3, "largest difference {worst}");
    }

    #[test]
    fn an_empty_utterance_and_a_bad_stream_are_refused_with_reasons() {
        let e = Synth::default().speak("  ").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = parse_wav_header(b"RIFX").unwrap_err().to_string();
        assert!(e.contains("not a WAV"), "{e}");
    }
}
