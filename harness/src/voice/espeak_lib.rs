//! The resident speech synthesiser: libespeak-ng loaded once per process
//! ([`voxring_linux::espeak`], which holds the library and its `unsafe`), so a reply costs no
//! process start, and its samples stream out in pieces of about
//! [`voxring_linux::espeak::CHUNK_MS`] as they are synthesised (the synthesis callback runs on
//! the calling thread, mid-synthesis), not when the whole reply is done.
//!
//! This module is the [`Speaker`] on top: the settings ([`Synth`]'s voice and words per
//! minute, set on the process-wide engine before each reply), the text's checks, the error
//! a failing sink hands back, and the timing ([`SynthTimes`]).

use std::ops::ControlFlow;

use anyhow::Context as _;
use voxring_linux::audio::monotonic_ns;
use voxring_linux::espeak::Espeak;

use super::synth::{Speaker, Synth, SynthTimes, check_text};

/// The resident synthesiser, with [`Synth`]'s settings (voice, words per minute).
#[derive(Debug, Clone)]
pub struct Resident {
    settings: Synth,
}

impl Resident {
    /// Loads libespeak-ng (once per process). Fails with what to do when it is missing.
    pub fn new(settings: &Synth) -> anyhow::Result<Self> {
        engine()?;
        Ok(Self {
            settings: settings.clone(),
        })
    }
}

fn engine() -> anyhow::Result<&'static Espeak> {
    Espeak::load().context(
        "cannot start the resident synthesiser (--synth library; --synth process runs the \
         espeak-ng program instead)",
    )
}

impl Speaker for Resident {
    fn stream(
        &self,
        text: &str,
        on_samples: &mut dyn FnMut(u32, &[i16]) -> anyhow::Result<()>,
    ) -> anyhow::Result<SynthTimes> {
        check_text(text)?;
        let e = engine()?;
        let mut session = e.lock();
        session.set_voice(&self.settings.voice)?;
        session.set_words_per_minute(self.settings.words_per_minute)?;
        let rate = session.sample_rate();
        let mut first_sample_ns = 0;
        let mut error = None;
        let requested_ns = monotonic_ns();
        let spoken = session.synthesize(text, |samples| {
            if first_sample_ns == 0 {
                first_sample_ns = monotonic_ns();
            }
            match on_samples(rate, samples) {
                Ok(()) => ControlFlow::Continue(()),
                Err(err) => {
                    error = Some(err);
                    ControlFlow::Break(())
                }
            }
        });
        let done_ns = monotonic_ns();
        drop(session);
        if let Some(err) = error {
            return Err(err.context(format!("speaking {text:?}")));
        }
        spoken?;
        Ok(SynthTimes {
            requested_ns,
            first_sample_ns,
            done_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest piece the callback is expected to hand out, ms (the library's 60 ms
    /// default).
    const MAX_PIECE_MS: u32 = 60;

    #[test]
    fn the_resident_synthesiser_streams_pieces_as_it_synthesises() {
        let r = Resident::new(&Synth::default()).unwrap();
        let mut pieces = Vec::new();
        let t = r
            .stream("the kitchen light is on", &mut |rate, s| {
                assert_eq!(rate, 22_050);
                pieces.push(s.to_vec());
                Ok(())
            })
            .unwrap();
        // Streaming: the reply comes out in pieces of at most MAX_PIECE_MS each, handed out
        // during the synthesis (the first before the last was made), not as one block.
        let chunk = (22_050 * MAX_PIECE_MS / 1000) as usize;
        assert!(pieces.len() > 10, "{} pieces", pieces.len());
        let sizes: Vec<usize> = pieces.iter().map(Vec::len).collect();
        assert!(
            sizes.iter().all(|&n| n <= chunk + 1),
            "a piece over {chunk}: {sizes:?}"
        );
        assert!(t.requested_ns <= t.first_sample_ns && t.first_sample_ns <= t.done_ns);
        // The same speech as the program's (same engine, same settings): about as long.
        let whole: usize = pieces.iter().map(Vec::len).sum();
        let program = Synth::default().speak("the kitchen light is on").unwrap();
        let (a, b) = (whole as f64, program.samples.len() as f64);
        assert!(
            (a - b).abs() < 0.2 * b,
            "library {a} vs program {b} samples"
        );
        assert!(
            pieces.concat().iter().any(|v| v.unsigned_abs() > 1000),
            "silent speech"
        );
    }

    #[test]
    fn a_failing_sink_aborts_the_synthesis_with_its_error() {
        let r = Resident::new(&Synth::default()).unwrap();
        let mut calls = 0;
        let e = r
            .stream("it is ten past two", &mut |_, _| {
                calls += 1;
                anyhow::bail!("the ring is gone")
            })
            .unwrap_err();
        assert_eq!(calls, 1, "the synthesis went on after its sink failed");
        assert!(format!("{e:#}").contains("the ring is gone"), "{e:#}");
        // The engine is still usable afterwards.
        let mut n = 0;
        r.stream("what time is it", &mut |_, s| {
            n += s.len();
            Ok(())
        })
        .unwrap();
        assert!(n > 0);
    }

    #[test]
    fn bad_input_is_refused_with_reasons() {
        let r = Resident::new(&Synth::default()).unwrap();
        let e = r.stream(" ", &mut |_, _| Ok(())).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = r
            .stream("a\0b", &mut |_, _| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("NUL"), "{e}");
        let e = Resident::new(&Synth {
            voice: "no-such-voice-xx".into(),
            ..Synth::default()
        })
        .unwrap()
        .stream("yes", &mut |_, _| Ok(()))
        .unwrap_err()
        .to_string();
        assert!(e.contains("no voice"), "{e}");
    }
}
