//! The agents' signal processing, kept free of any I/O so it can be tested on its own:
//! frame energy, the voice-activity detector's hysteresis, and the echo agent's gain.
//! Nothing here allocates.

use super::wav::Encoding;

/// Level of digital silence, in dBFS (the floor [`energy_dbfs`] returns).
pub const SILENCE_DBFS: f32 = -120.0;

/// RMS level of interleaved native-endian samples, in dBFS (0 dBFS = full-scale square wave).
/// Empty or all-zero input gives [`SILENCE_DBFS`].
pub fn energy_dbfs(payload: &[u8], encoding: Encoding) -> f32 {
    let mut sum = 0.0f64;
    let mut n = 0u64;
    match encoding {
        Encoding::S16 => {
            for c in payload.chunks_exact(2) {
                let v = f64::from(i16::from_ne_bytes([c[0], c[1]])) / 32768.0;
                sum += v * v;
                n += 1;
            }
        }
        Encoding::S32 => {
            for c in payload.chunks_exact(4) {
                let v = f64::from(i32::from_ne_bytes([c[0], c[1], c[2], c[3]])) / 2_147_483_648.0;
                sum += v * v;
                n += 1;
            }
        }
        Encoding::F32 => {
            for c in payload.chunks_exact(4) {
                let v = f64::from(f32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                // A peer may put NaN or infinities in shared memory: count them as silence.
                let v = if v.is_finite() {
                    v.clamp(-1.0, 1.0)
                } else {
                    0.0
                };
                sum += v * v;
                n += 1;
            }
        }
    }
    if n == 0 || sum <= 0.0 {
        return SILENCE_DBFS;
    }
    let db = 10.0 * (sum / n as f64).log10();
    (db as f32).max(SILENCE_DBFS)
}

/// Energy-based voice activity with hysteresis: speech starts after `attack` consecutive
/// frames above `on_dbfs`, and ends after `release` consecutive frames below `off_dbfs`.
#[derive(Debug, Clone)]
pub struct Vad {
    on_dbfs: f32,
    off_dbfs: f32,
    attack: u32,
    release: u32,
    speaking: bool,
    run: u32,
    /// Speech segments begun so far.
    pub segments: u64,
    /// Frames judged to be speech so far.
    pub speech_frames: u64,
}

impl Vad {
    /// A detector with these thresholds and frame counts (`attack`/`release` at least 1).
    pub fn new(on_dbfs: f32, off_dbfs: f32, attack: u32, release: u32) -> Self {
        Self {
            on_dbfs,
            off_dbfs: off_dbfs.min(on_dbfs),
            attack: attack.max(1),
            release: release.max(1),
            speaking: false,
            run: 0,
            segments: 0,
            speech_frames: 0,
        }
    }

    /// Settings for speech at `frames_per_second` frames: on above -40 dBFS for 20 ms, off
    /// below -45 dBFS for 200 ms.
    pub fn for_speech(frames_per_second: f64) -> Self {
        let frames = |s: f64| (s * frames_per_second).ceil().max(1.0) as u32;
        Self::new(-40.0, -45.0, frames(0.020), frames(0.200))
    }

    /// Feeds one frame's level; returns whether speech is on after it.
    pub fn update(&mut self, dbfs: f32) -> bool {
        if self.speaking {
            if dbfs < self.off_dbfs {
                self.run += 1;
                if self.run >= self.release {
                    self.speaking = false;
                    self.run = 0;
                }
            } else {
                self.run = 0;
            }
        } else if dbfs > self.on_dbfs {
            self.run += 1;
            if self.run >= self.attack {
                self.speaking = true;
                self.segments += 1;
                self.run = 0;
            }
        } else {
            self.run = 0;
        }
        if self.speaking {
            self.speech_frames += 1;
        }
        self.speaking
    }
}

/// The echo agent's processing: copies `input` to `output` (same length) scaled by `gain`,
/// saturating integer formats. Returns the number of bytes written (the shorter length,
/// rounded down to whole samples).
pub fn apply_gain(input: &[u8], output: &mut [u8], encoding: Encoding, gain: f32) -> usize {
    let width = encoding.bytes() as usize;
    let n = input.len().min(output.len()) / width * width;
    let (input, output) = (&input[..n], &mut output[..n]);
    match encoding {
        Encoding::S16 => {
            for (i, o) in input.chunks_exact(2).zip(output.chunks_exact_mut(2)) {
                let v = f32::from(i16::from_ne_bytes([i[0], i[1]])) * gain;
                o.copy_from_slice(&(v.clamp(-32768.0, 32767.0) as i16).to_ne_bytes());
            }
        }
        Encoding::S32 => {
            for (i, o) in input.chunks_exact(4).zip(output.chunks_exact_mut(4)) {
                let v = f64::from(i32::from_ne_bytes([i[0], i[1], i[2], i[3]])) * f64::from(gain);
                o.copy_from_slice(
                    &(v.clamp(-2_147_483_648.0, 2_147_483_647.0) as i32).to_ne_bytes(),
                );
            }
        }
        Encoding::F32 => {
            for (i, o) in input.chunks_exact(4).zip(output.chunks_exact_mut(4)) {
                let v = f32::from_ne_bytes([i[0], i[1], i[2], i[3]]) * gain;
                let v = if v.is_finite() { v } else { 0.0 };
                o.copy_from_slice(&v.to_ne_bytes());
            }
        }
    }
    n
}

/// A deterministic stand-in for a person talking into the microphone, for devices that capture
/// nothing (the synthetic device's capture is silence, or its own loopback): 1.2 s of
/// speech-like sound (low-passed noise under a 4 Hz syllable envelope, peaks near -14 dBFS)
/// then 0.8 s of quiet, repeated. Allocation-free; the same seed gives the same samples.
#[derive(Debug, Clone)]
pub struct Talker {
    rate: f64,
    pos: u64,
    noise: u64,
    lp: f32,
}

impl Talker {
    /// A talker at `rate` Hz.
    pub fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            pos: 0,
            noise: 0x2545_f491_4f6c_dd1d,
            lp: 0.0,
        }
    }

    /// The next mono sample, in -1.0..=1.0.
    pub fn next_sample(&mut self) -> f32 {
        let t = self.pos as f64 / self.rate;
        self.pos += 1;
        let cycle = t % 2.0;
        self.noise ^= self.noise << 13;
        self.noise ^= self.noise >> 7;
        self.noise ^= self.noise << 17;
        let white = (self.noise >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        // One-pole low-pass around 1 kHz at 48 kHz: a voiced, not hissing, sound.
        self.lp += 0.12 * (white - self.lp);
        if cycle >= 1.2 {
            return 0.0;
        }
        let syllable = (std::f64::consts::PI * 4.0 * cycle).sin().abs() as f32;
        (self.lp * 1.6 * syllable).clamp(-1.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s16(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_ne_bytes()).collect()
    }

    #[test]
    fn energy_of_full_scale_and_silence() {
        assert_eq!(energy_dbfs(&s16(&[0; 64]), Encoding::S16), SILENCE_DBFS);
        let square: Vec<i16> = (0..64)
            .map(|i| if i % 2 == 0 { i16::MAX } else { i16::MIN })
            .collect();
        assert!(energy_dbfs(&s16(&square), Encoding::S16).abs() < 0.01);
        let half: Vec<f32> = vec![0.5; 32];
        let bytes: Vec<u8> = half.iter().flat_map(|s| s.to_ne_bytes()).collect();
        assert!((energy_dbfs(&bytes, Encoding::F32) + 6.02).abs() < 0.01);
        let nan: Vec<u8> = [f32::NAN; 4].iter().flat_map(|s| s.to_ne_bytes()).collect();
        assert_eq!(energy_dbfs(&nan, Encoding::F32), SILENCE_DBFS);
    }

    #[test]
    fn vad_needs_attack_frames_and_holds_through_release() {
        let mut v = Vad::new(-40.0, -45.0, 3, 4);
        assert!(!v.update(-20.0));
        assert!(!v.update(-20.0));
        assert!(v.update(-20.0));
        assert_eq!(v.segments, 1);
        for _ in 0..3 {
            assert!(v.update(-60.0));
        }
        assert!(!v.update(-60.0));
        // A short blip does not start a segment.
        assert!(!v.update(-20.0));
        assert!(!v.update(-60.0));
        assert_eq!(v.segments, 1);
        assert_eq!(v.speech_frames, 1 + 3);
    }

    #[test]
    fn gain_scales_and_saturates() {
        let input = s16(&[1000, -1000, 30000, -30000]);
        let mut out = vec![0u8; input.len()];
        assert_eq!(apply_gain(&input, &mut out, Encoding::S16, 2.0), 8);
        let back: Vec<i16> = out
            .chunks_exact(2)
            .map(|c| i16::from_ne_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(back, vec![2000, -2000, 32767, -32768]);
    }

    #[test]
    fn talker_alternates_speech_and_quiet_that_the_vad_finds() {
        let rate = 48_000;
        let mut t = Talker::new(rate);
        let mut vad = Vad::for_speech(f64::from(rate) / 128.0);
        let mut frame = vec![0u8; 256];
        for _ in 0..(4 * rate / 128) {
            for c in frame.chunks_exact_mut(2) {
                c.copy_from_slice(&((t.next_sample() * 32767.0) as i16).to_ne_bytes());
            }
            vad.update(energy_dbfs(&frame, Encoding::S16));
        }
        // Two 2-second cycles: two speech segments.
        assert_eq!(vad.segments, 2);
        let mut again = Talker::new(rate);
        let mut t2 = Talker::new(rate);
        assert_eq!(again.next_sample(), t2.next_sample());
    }
}
