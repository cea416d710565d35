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
    /// CLOCK_MONOTONIC when espeak-ng was started.
    pub requested_ns: u64,
    /// CLOCK_MONOTONIC when the first sample came out of the pipe.
    pub first_sample_ns: u64,
    /// CLOCK_MONOTONIC when the last one did (espeak-ng finished).
    pub done_ns: u64,
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

impl Synth {
    /// Synthesises `text`. Fails with what to do when espeak-ng is missing or fails.
    pub fn speak(&self, text: &str) -> anyhow::Result<Speech> {
        anyhow::ensure!(
            !text.trim().is_empty(),
            "nothing to say: the utterance is empty"
        );
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
        let mut bytes = Vec::with_capacity(256 * 1024);
        let mut chunk = [0u8; 16 * 1024];
        let mut first_sample_ns = 0;
        loop {
            let n = out.read(&mut chunk).context("reading espeak-ng's output")?;
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
            // The first PCM bytes are past the 44-byte header espeak-ng writes.
            if first_sample_ns == 0 && bytes.len() > WAV_HEADER {
                first_sample_ns = monotonic_ns();
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
        let (rate, samples) = parse_wav_stream(&bytes)
            .with_context(|| format!("{ESPEAK} wrote an unexpected stream for {text:?}"))?;
        Ok(Speech {
            samples,
            rate,
            requested_ns,
            first_sample_ns,
            done_ns,
        })
    }
}

/// The canonical PCM WAV header espeak-ng writes (RIFF, `fmt ` of 16 bytes, `data`).
const WAV_HEADER: usize = 44;

/// The rate and S16 mono samples of a WAV stream as espeak-ng writes it to a pipe: its size
/// fields cannot be trusted (they are written before the length is known), so the data chunk
/// runs to the end of the stream.
fn parse_wav_stream(b: &[u8]) -> anyhow::Result<(u32, Vec<i16>)> {
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
    let samples = b[WAV_HEADER..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    Ok((rate, samples))
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

/// S16 to float.
pub fn to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

/// Float to S16 (clamped).
pub fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|&s| (s * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn espeak_speaks_22050_hz_and_rubato_keeps_the_duration() {
        let s = Synth::default().speak("turn on the kitchen light").unwrap();
        assert_eq!(s.rate, 22_050);
        assert!(s.samples.len() > s.rate as usize / 2, "{}", s.samples.len());
        assert!(s.first_sample_ns >= s.requested_ns && s.done_ns >= s.first_sample_ns);
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
    fn an_empty_utterance_and_a_bad_stream_are_refused_with_reasons() {
        let e = Synth::default().speak("  ").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = parse_wav_stream(b"RIFX").unwrap_err().to_string();
        assert!(e.contains("not a WAV"), "{e}");
    }
}
