//! libespeak-ng, the system's speech synthesiser (Debian `libespeak-ng1`, which the
//! `espeak-ng` package installs), behind a safe API.
//!
//! It lives here, beside ALSA and the futex, because it is one of the platform's system
//! libraries reached through its C API (`speak_lib.h`): the `unsafe` of loading it and of its
//! callback stays in this crate, and the harness composes the safe [`Espeak`] / [`Session`]
//! on top.
//!
//! The library is opened with `libloading` at run time, not linked: a machine with only the
//! runtime package has no `libespeak-ng.so` development link, and nothing else in a program
//! using this crate needs the library. It is loaded once per process ([`Espeak::load`]) and
//! kept open for the process's life. libespeak-ng keeps its state in globals, so every call
//! goes through one process-wide engine behind a mutex: a [`Session`] holds it, sets the voice
//! and rate, and synthesises with them, with no other thread's settings slipping in between.
//!
//! Synthesis is `AUDIO_OUTPUT_SYNCHRONOUS`: [`Session::synthesize`] hands the samples to its
//! callback on the calling thread, mid-synthesis, in pieces of about [`CHUNK_MS`] as they are
//! made, not when the whole text is done; the callback can stop the synthesis early.
//!
//! ```no_run
//! use std::ops::ControlFlow;
//! use voxring_linux::espeak::Espeak;
//!
//! # fn main() -> Result<(), voxring_linux::espeak::EspeakError> {
//! let espeak = Espeak::load()?;
//! let mut session = espeak.lock();
//! session.set_voice("en-us")?;
//! session.set_words_per_minute(160)?;
//! let mut samples = Vec::new();
//! session.synthesize("the kitchen light is on", |piece| {
//!     samples.extend_from_slice(piece);
//!     ControlFlow::Continue(())
//! })?;
//! println!("{} samples at {} Hz", samples.len(), espeak.sample_rate());
//! # Ok(())
//! # }
//! ```

use std::any::Any;
use std::cell::Cell;
use std::ffi::{CString, c_char, c_int, c_short, c_uint, c_void};
use std::fmt;
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Mutex, MutexGuard, OnceLock};

use libloading::Library;

/// The runtime library's name (Debian 12: `libespeak-ng1`).
pub const LIBRARY: &str = "libespeak-ng.so.1";

/// Milliseconds of audio asked per synthesis callback (`espeak_Initialize`'s `buflength`):
/// the first samples are handed out once a piece is synthesised. espeak-ng 1.51 does not go
/// below its own minimum: it hands out pieces of 1,081 samples (49 ms at 22,050 Hz).
pub const CHUNK_MS: u32 = 10;

/// What to do when the library is missing or does not start.
const INSTALL_HINT: &str = "install espeak-ng (Debian: apt-get install espeak-ng, or \
                            scripts/setup-system test)";

// speak_lib.h (API revision 12): the values this module passes.
const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const INITIALIZE_DONT_EXIT: c_int = 0x8000;
const POS_CHARACTER: c_int = 1;
const CHARS_UTF8: c_uint = 1;
const PARAM_RATE: c_int = 1;
const EE_OK: c_int = 0;

type Callback = unsafe extern "C" fn(*mut c_short, c_int, *mut c_void) -> c_int;
type InitializeFn = unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int;
type SetSynthCallbackFn = unsafe extern "C" fn(Option<Callback>);
type SetVoiceByNameFn = unsafe extern "C" fn(*const c_char) -> c_int;
type SetParameterFn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
type SynthFn = unsafe extern "C" fn(
    *const c_void,
    usize,
    c_uint,
    c_int,
    c_uint,
    c_uint,
    *mut c_uint,
    *mut c_void,
) -> c_int;

/// Something libespeak-ng could not do. The messages say what happened, why, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EspeakError {
    /// The library could not be opened.
    Load {
        /// The library's name or path.
        library: String,
        /// The dynamic loader's reason.
        reason: String,
    },
    /// The library lacks an entry point of `speak_lib.h`.
    MissingSymbol {
        /// The library's name or path.
        library: String,
        /// The entry point.
        symbol: &'static str,
        /// The dynamic loader's reason.
        reason: String,
    },
    /// `espeak_Initialize` failed (it returns the output rate, or a negative code).
    Initialize {
        /// The library's name or path.
        library: String,
        /// What it returned.
        returned: i32,
    },
    /// A text or voice name holds a NUL byte, which the C API cannot carry.
    Nul {
        /// What held it: "text" or "voice name".
        what: &'static str,
        /// The text or name.
        value: String,
    },
    /// `espeak_SetVoiceByName` refused the voice.
    NoVoice {
        /// The voice asked for.
        voice: String,
        /// The library's error code.
        code: i32,
    },
    /// `espeak_SetParameter(espeakRATE)` refused the rate.
    BadRate {
        /// The words per minute asked for.
        words_per_minute: u32,
        /// The library's error code, or None when the value does not fit its `int`.
        code: Option<i32>,
    },
    /// `espeak_Synth` failed.
    Synth {
        /// The text.
        text: String,
        /// The library's error code.
        code: i32,
    },
    /// The synthesis ended without handing out a single sample.
    NoAudio {
        /// The text.
        text: String,
    },
}

impl fmt::Display for EspeakError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Load { library, reason } => {
                write!(f, "cannot load {library}: {reason}: {INSTALL_HINT}")
            }
            Self::MissingSymbol {
                library,
                symbol,
                reason,
            } => write!(
                f,
                "{library} has no {symbol} ({reason}): it is not the libespeak-ng this program \
                 was written for (speak_lib.h revision 12, espeak-ng 1.51); {INSTALL_HINT}"
            ),
            Self::Initialize { library, returned } => write!(
                f,
                "{library} did not start (espeak_Initialize returned {returned}): is \
                 espeak-ng-data installed? {INSTALL_HINT}"
            ),
            Self::Nul { what, value } => write!(
                f,
                "the {what} {value:?} holds a NUL byte: it cannot be spoken (remove it)"
            ),
            Self::NoVoice { voice, code } => write!(
                f,
                "libespeak-ng has no voice {voice:?} ({code}): list the voices with \
                 `espeak-ng --voices`"
            ),
            Self::BadRate {
                words_per_minute,
                code,
            } => {
                write!(f, "libespeak-ng refused a rate of {words_per_minute} wpm")?;
                match code {
                    Some(c) => write!(f, " ({c})")?,
                    None => write!(f, " (out of range)")?,
                }
                write!(f, ": espeak-ng speaks at 80 to 450 words per minute")
            }
            Self::Synth { text, code } => {
                write!(f, "libespeak-ng failed ({code}) on {text:?}")
            }
            Self::NoAudio { text } => write!(
                f,
                "libespeak-ng produced no audio for {text:?}: give it words to speak"
            ),
        }
    }
}

impl std::error::Error for EspeakError {}

/// The loaded library: its entry points and output rate, and the mutex every call goes
/// through.
#[derive(Debug)]
pub struct Espeak {
    synth: SynthFn,
    set_voice: SetVoiceByNameFn,
    set_parameter: SetParameterFn,
    rate: u32,
    /// Serialises every call (the library's state is global); holds the settings made.
    state: Mutex<Settings>,
    /// Kept open for the process's life (the engine is a static): the entry points above
    /// point into it.
    _lib: Library,
}

/// The voice and rate the library was last set to (None: not set, or not known).
#[derive(Debug, Default)]
struct Settings {
    voice: Option<String>,
    words_per_minute: Option<u32>,
}

static ENGINE: OnceLock<Result<Espeak, EspeakError>> = OnceLock::new();

impl Espeak {
    /// Loads and starts libespeak-ng ([`LIBRARY`]) the first time it is called in this
    /// process; later calls return the same engine, or the same error.
    pub fn load() -> Result<&'static Espeak, EspeakError> {
        ENGINE
            .get_or_init(|| Self::open(LIBRARY))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Opens `library` and starts it. Called once per process (by [`Espeak::load`]), or with
    /// a library that cannot load (tests).
    fn open(library: &str) -> Result<Self, EspeakError> {
        // SAFETY: loading libespeak-ng runs its initialisers, which only set up its own
        // globals (no other code of this process depends on them).
        let lib = unsafe { Library::new(library) }.map_err(|e| EspeakError::Load {
            library: library.to_owned(),
            reason: e.to_string(),
        })?;
        let missing = |symbol: &'static str| {
            let library = library.to_owned();
            move |e: libloading::Error| EspeakError::MissingSymbol {
                library,
                symbol,
                reason: e.to_string(),
            }
        };
        // SAFETY: each symbol is declared with its speak_lib.h signature (revision 12, the
        // one Debian 12's 1.51 ships); the fn pointers are copied out and `lib` is kept in
        // the engine, which lives as long as the process (a static), so they stay valid.
        let (init, set_callback, set_voice, set_parameter, synth) = unsafe {
            (
                *lib.get::<InitializeFn>(b"espeak_Initialize\0")
                    .map_err(missing("espeak_Initialize"))?,
                *lib.get::<SetSynthCallbackFn>(b"espeak_SetSynthCallback\0")
                    .map_err(missing("espeak_SetSynthCallback"))?,
                *lib.get::<SetVoiceByNameFn>(b"espeak_SetVoiceByName\0")
                    .map_err(missing("espeak_SetVoiceByName"))?,
                *lib.get::<SetParameterFn>(b"espeak_SetParameter\0")
                    .map_err(missing("espeak_SetParameter"))?,
                *lib.get::<SynthFn>(b"espeak_Synth\0")
                    .map_err(missing("espeak_Synth"))?,
            )
        };
        // SAFETY: called once per process (the engine is a OnceLock); a null path asks for
        // the default data directory; DONT_EXIT makes a missing one an error return, not an
        // exit of the process.
        let rate = unsafe {
            init(
                AUDIO_OUTPUT_SYNCHRONOUS,
                CHUNK_MS as c_int,
                std::ptr::null(),
                INITIALIZE_DONT_EXIT,
            )
        };
        if !(8_000..=192_000).contains(&rate) {
            return Err(EspeakError::Initialize {
                library: library.to_owned(),
                returned: rate,
            });
        }
        // SAFETY: `on_audio` has the callback's C signature and never unwinds out of it (it
        // catches the panics of the closure it calls).
        unsafe { set_callback(Some(on_audio)) };
        Ok(Self {
            synth,
            set_voice,
            set_parameter,
            rate: rate as u32,
            state: Mutex::new(Settings::default()),
            _lib: lib,
        })
    }

    /// The rate of the samples the library makes, in Hz (22,050 for espeak-ng's voices).
    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Takes the engine for a series of calls (setting a voice, synthesising): other threads
    /// wait until the [`Session`] is dropped.
    ///
    /// # Panics
    /// When called from inside a [`Session::synthesize`] callback: the engine is already
    /// taken on this thread, and waiting for it would never end.
    pub fn lock(&self) -> Session<'_> {
        assert!(
            SINK.with(Cell::get).is_null(),
            "Espeak::lock called from inside a synthesis callback: the engine is busy \
             synthesising on this thread (hand the samples out of the callback instead)"
        );
        Session {
            engine: self,
            // A synthesis that panicked (in the caller's callback) leaves the settings as
            // they were: the poison carries no broken state.
            settings: self.state.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

/// The engine, taken by one thread: the settings it makes hold for the syntheses it runs.
#[derive(Debug)]
pub struct Session<'a> {
    engine: &'a Espeak,
    settings: MutexGuard<'a, Settings>,
}

impl Session<'_> {
    /// The rate of the samples, in Hz (as [`Espeak::sample_rate`]).
    pub fn sample_rate(&self) -> u32 {
        self.engine.rate
    }

    /// Sets the voice (`espeak_SetVoiceByName`, e.g. "en-us"); a call with the voice already
    /// set does nothing. A new voice may bring its own rate: set the rate after the voice.
    pub fn set_voice(&mut self, voice: &str) -> Result<(), EspeakError> {
        if self.settings.voice.as_deref() == Some(voice) {
            return Ok(());
        }
        let name = CString::new(voice).map_err(|_| EspeakError::Nul {
            what: "voice name",
            value: voice.to_owned(),
        })?;
        // The library's rate is not known once the voice changes (or fails to).
        self.settings.voice = None;
        self.settings.words_per_minute = None;
        // SAFETY: a NUL-terminated name that outlives the call; the engine's mutex is held
        // (`self.settings`), so no other call runs in the library meanwhile.
        let code = unsafe { (self.engine.set_voice)(name.as_ptr()) };
        if code != EE_OK {
            return Err(EspeakError::NoVoice {
                voice: voice.to_owned(),
                code,
            });
        }
        self.settings.voice = Some(voice.to_owned());
        Ok(())
    }

    /// Sets the speaking rate in words per minute (`espeak_SetParameter(espeakRATE)`); a
    /// call with the rate already set does nothing.
    pub fn set_words_per_minute(&mut self, words_per_minute: u32) -> Result<(), EspeakError> {
        if self.settings.words_per_minute == Some(words_per_minute) {
            return Ok(());
        }
        let wpm = c_int::try_from(words_per_minute).map_err(|_| EspeakError::BadRate {
            words_per_minute,
            code: None,
        })?;
        self.settings.words_per_minute = None;
        // SAFETY: a documented parameter (espeakRATE) with an absolute value; the engine's
        // mutex is held, so no other call runs in the library meanwhile.
        let code = unsafe { (self.engine.set_parameter)(PARAM_RATE, wpm, 0) };
        if code != EE_OK {
            return Err(EspeakError::BadRate {
                words_per_minute,
                code: Some(code),
            });
        }
        self.settings.words_per_minute = Some(words_per_minute);
        Ok(())
    }

    /// Synthesises `text` (UTF-8) with the voice and rate set, handing the samples (mono
    /// S16 at [`Espeak::sample_rate`]) to `on_samples` on this thread as each piece is made.
    /// `on_samples` returns `ControlFlow::Break` to stop the synthesis: no more pieces come
    /// and [`Synthesized::stopped`] says so. A panic in `on_samples` stops the synthesis and
    /// carries on unwinding from here; the engine stays usable.
    pub fn synthesize<F>(
        &mut self,
        text: &str,
        mut on_samples: F,
    ) -> Result<Synthesized, EspeakError>
    where
        F: FnMut(&[i16]) -> ControlFlow<()>,
    {
        let c_text = CString::new(text).map_err(|_| EspeakError::Nul {
            what: "text",
            value: text.to_owned(),
        })?;
        let mut sink = Sink {
            on_samples: &mut on_samples,
            samples: 0,
            stopped: false,
            panic: None,
        };
        let reset = SinkGuard;
        SINK.with(|s| s.set(std::ptr::from_mut(&mut sink).cast()));
        // SAFETY: a NUL-terminated UTF-8 text and its size, alive for the call; synchronous
        // mode calls `on_audio` on this thread before returning, while `sink` (pointed to by
        // SINK) is alive and not otherwise used; the engine's mutex is held, so no other
        // synthesis runs in the library meanwhile.
        let code = unsafe {
            (self.engine.synth)(
                c_text.as_ptr().cast(),
                c_text.as_bytes_with_nul().len(),
                0,
                POS_CHARACTER,
                0,
                CHARS_UTF8,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        drop(reset);
        if let Some(payload) = sink.panic {
            resume_unwind(payload);
        }
        if code != EE_OK {
            return Err(EspeakError::Synth {
                text: text.to_owned(),
                code,
            });
        }
        if sink.samples == 0 {
            return Err(EspeakError::NoAudio {
                text: text.to_owned(),
            });
        }
        Ok(Synthesized {
            samples: sink.samples,
            stopped: sink.stopped,
        })
    }
}

/// What a synthesis handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synthesized {
    /// Samples handed to the callback.
    pub samples: u64,
    /// The callback stopped the synthesis before the end of the text.
    pub stopped: bool,
}

/// What the synthesis callback hands samples to, for the duration of one `espeak_Synth`.
struct Sink<'a> {
    on_samples: &'a mut dyn FnMut(&[i16]) -> ControlFlow<()>,
    samples: u64,
    stopped: bool,
    /// A panic of `on_samples`, resumed once `espeak_Synth` has returned.
    panic: Option<Box<dyn Any + Send>>,
}

thread_local! {
    /// The sink of the synthesis running on this thread (synchronous mode calls back on it).
    static SINK: Cell<*mut c_void> = const { Cell::new(std::ptr::null_mut()) };
}

/// Resets the thread's sink even when the synthesis unwinds.
struct SinkGuard;

impl Drop for SinkGuard {
    fn drop(&mut self) {
        SINK.with(|s| s.set(std::ptr::null_mut()));
    }
}

/// libespeak-ng's synthesis callback: hands each piece of samples to the running sink.
/// Returns 1 (abort the synthesis) when the sink stopped or panicked.
unsafe extern "C" fn on_audio(wav: *mut c_short, n: c_int, _events: *mut c_void) -> c_int {
    let p = SINK.with(Cell::get);
    let Ok(n) = usize::try_from(n) else { return 0 };
    if p.is_null() || wav.is_null() || n == 0 {
        return 0; // the end of the synthesis (wav null), or a piece without samples
    }
    // SAFETY: `p` was set by `Session::synthesize` on this thread to a `Sink` that lives
    // until espeak_Synth returns (and is reset to null before the sink is dropped); the
    // callback runs only inside that call, on this thread, so no other reference to it is
    // in use.
    let sink = unsafe { &mut *p.cast::<Sink<'_>>() };
    if sink.stopped || sink.panic.is_some() {
        return 1;
    }
    // SAFETY: libespeak-ng hands `n` samples at `wav`, valid for the duration of this call;
    // the slice is only lent to `on_samples`, which cannot keep it past its return.
    let samples = unsafe { std::slice::from_raw_parts(wav.cast_const(), n) };
    sink.samples += n as u64;
    // The closure must not unwind into C: its panic is kept and resumed after espeak_Synth.
    match catch_unwind(AssertUnwindSafe(|| (sink.on_samples)(samples))) {
        Ok(ControlFlow::Continue(())) => 0,
        Ok(ControlFlow::Break(())) => {
            sink.stopped = true;
            1
        }
        Err(payload) => {
            sink.panic = Some(payload);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest piece the callback is expected to hand out, ms (the library's 60 ms
    /// default).
    const MAX_PIECE_MS: u32 = 60;

    fn en_us() -> Session<'static> {
        let mut s = Espeak::load().unwrap().lock();
        s.set_voice("en-us").unwrap();
        s.set_words_per_minute(160).unwrap();
        s
    }

    #[test]
    fn pieces_stream_out_as_they_are_synthesised() {
        let mut s = en_us();
        assert_eq!(s.sample_rate(), 22_050);
        let mut pieces = Vec::new();
        let done = s
            .synthesize("the kitchen light is on", |p| {
                pieces.push(p.to_vec());
                ControlFlow::Continue(())
            })
            .unwrap();
        let chunk = (22_050 * MAX_PIECE_MS / 1000) as usize;
        assert!(pieces.len() > 10, "{} pieces", pieces.len());
        let sizes: Vec<usize> = pieces.iter().map(Vec::len).collect();
        assert!(
            sizes.iter().all(|&n| n <= chunk + 1),
            "a piece over {chunk}: {sizes:?}"
        );
        assert_eq!(done.samples, sizes.iter().sum::<usize>() as u64);
        assert!(!done.stopped);
        assert!(
            pieces.concat().iter().any(|v| v.unsigned_abs() > 1000),
            "silent speech"
        );
    }

    #[test]
    fn a_break_stops_the_synthesis_and_the_engine_goes_on() {
        let mut s = en_us();
        let mut calls = 0;
        let done = s
            .synthesize("it is ten past two", |_| {
                calls += 1;
                ControlFlow::Break(())
            })
            .unwrap();
        assert_eq!(
            calls, 1,
            "the synthesis went on after its callback stopped it"
        );
        assert!(done.stopped);
        let mut n = 0;
        let done = s
            .synthesize("what time is it", |p| {
                n += p.len();
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(n > 0 && !done.stopped);
    }

    #[test]
    fn a_panicking_callback_unwinds_out_of_synthesize_and_the_engine_goes_on() {
        let mut calls = 0;
        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
            en_us().synthesize("it is ten past two", |_| {
                calls += 1;
                panic!("the ring is gone")
            })
        }))
        .unwrap_err();
        assert_eq!(
            calls, 1,
            "the synthesis went on after its callback panicked"
        );
        assert_eq!(caught.downcast_ref::<&str>(), Some(&"the ring is gone"));
        // The thread's sink was reset and the engine (its mutex poisoned) is usable.
        assert!(SINK.with(Cell::get).is_null());
        let done = en_us()
            .synthesize("what time is it", |_| ControlFlow::Continue(()))
            .unwrap();
        assert!(done.samples > 0);
    }

    #[test]
    fn the_rate_changes_the_length_of_the_speech() {
        let mut s = en_us();
        let length = |s: &mut Session<'_>, wpm| {
            s.set_words_per_minute(wpm).unwrap();
            s.synthesize("turn on the kitchen light", |_| ControlFlow::Continue(()))
                .unwrap()
                .samples
        };
        let (slow, fast) = (length(&mut s, 100), length(&mut s, 300));
        assert!(slow > 2 * fast, "100 wpm: {slow} samples, 300 wpm: {fast}");
    }

    #[test]
    fn bad_input_is_refused_with_reasons() {
        let mut s = en_us();
        let e = s
            .synthesize("a\0b", |_| ControlFlow::Continue(()))
            .unwrap_err();
        assert!(matches!(e, EspeakError::Nul { what: "text", .. }), "{e}");
        assert!(e.to_string().contains("NUL"), "{e}");
        let e = s.set_voice("no-such-voice-xx").unwrap_err();
        assert!(
            e.to_string().contains("no voice \"no-such-voice-xx\""),
            "{e}"
        );
        // A refused voice leaves the session speaking once a good one is set again.
        s.set_voice("en-us").unwrap();
        s.set_words_per_minute(160).unwrap();
        s.synthesize("yes", |_| ControlFlow::Continue(())).unwrap();
        let e = s.set_words_per_minute(u32::MAX).unwrap_err();
        assert!(e.to_string().contains("80 to 450"), "{e}");
        drop(s);
        let e = Espeak::open("libvoxring-no-such-espeak.so.1").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("cannot load") && m.contains("apt-get"), "{m}");
    }

    #[test]
    #[should_panic(expected = "inside a synthesis callback")]
    fn taking_the_engine_inside_its_own_callback_panics_instead_of_hanging() {
        let e = Espeak::load().unwrap();
        let mut s = en_us();
        let _ = s.synthesize("yes", |_| {
            drop(e.lock());
            ControlFlow::Continue(())
        });
    }
}
