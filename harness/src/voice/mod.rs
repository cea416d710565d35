//! The voice round trip's real parts (issue 16), each usable and tested alone:
//!
//! - [`synth`]: espeak-ng speech and rubato rate conversion;
//! - [`talker`]: utterances at known sample positions, played by the device side;
//! - [`vad`]: the earshot voice-activity engine and the record it publishes;
//!
//! The Python recogniser lives in `harness/python/voice/`.

pub mod synth;
pub mod talker;
pub mod vad;
