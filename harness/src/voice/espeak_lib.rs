//! A resident speech synthesiser: libespeak-ng (Debian `libespeak-ng1`, which the `espeak-ng`
//! package installs) loaded once per process through its C API (`speak_lib.h`), so a reply
//! costs no process start, and its samples stream out in [`CHUNK_MS`] pieces as they are
//! synthesised (`AUDIO_OUTPUT_SYNCHRONOUS`: the synthesis callback runs on the calling thread,
//! mid-synthesis), not when the whole reply is done.
//!
//! The library is opened with `libloading` at run time (there is no `libespeak-ng.so`
//! development link on a machine with only the runtime package, and the rest of the `voxring`
//! program must not need the library at all). libespeak-ng keeps its state in globals: every
//! call goes through one process-wide engine behind a mutex.

use std::cell::Cell;
use std::ffi::{CString, c_char, c_int, c_short, c_uint, c_void};
use std::sync::{Mutex, OnceLock};

use anyhow::Context as _;
use libloading::Library;
use voxring_linux::audio::monotonic_ns;

use super::synth::{Speaker, Synth, SynthTimes, check_text};

/// The runtime library's name (Debian 12: `libespeak-ng1`).
pub const LIBRARY: &str = "libespeak-ng.so.1";

/// Milliseconds of audio asked per synthesis callback (`espeak_Initialize`'s `buflength`):
/// the first samples are handed out once a piece is synthesised. espeak-ng 1.51 does not go
/// below its own minimum: it hands out pieces of 1,081 samples (49 ms at 22,050 Hz).
pub const CHUNK_MS: u32 = 10;

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

/// The loaded library, its entry points and its output rate.
struct Engine {
    synth: SynthFn,
    set_voice: SetVoiceByNameFn,
    set_parameter: SetParameterFn,
    rate: u32,
    /// Serialises every call (the library's state is global); holds the voice and rate set.
    current: Mutex<Option<(String, u32)>>,
    /// Kept open for the process's life: the entry points above point into it.
    _lib: Library,
}

static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();

impl Engine {
    fn load(path: &str) -> anyhow::Result<Self> {
        let hint = "install espeak-ng (Debian: apt-get install espeak-ng, or scripts/setup-system \
                    test), or use --synth process";
        // SAFETY: loading libespeak-ng runs its initialisers, which only set up its own
        // globals (no other code of this process depends on them).
        let lib =
            unsafe { Library::new(path) }.with_context(|| format!("cannot load {path}: {hint}"))?;
        // SAFETY: each symbol is declared with its speak_lib.h signature (revision 12, the
        // one Debian 12's 1.51 ships); the fn pointers are copied out and `lib` is kept in
        // the engine, which lives as long as the process (a static).
        let (init, set_callback, set_voice, set_parameter, synth) = unsafe {
            (
                *lib.get::<InitializeFn>(b"espeak_Initialize\0")?,
                *lib.get::<SetSynthCallbackFn>(b"espeak_SetSynthCallback\0")?,
                *lib.get::<SetVoiceByNameFn>(b"espeak_SetVoiceByName\0")?,
                *lib.get::<SetParameterFn>(b"espeak_SetParameter\0")?,
                *lib.get::<SynthFn>(b"espeak_Synth\0")?,
            )
        };
        // SAFETY: called once (the engine is a OnceLock); a null path asks for the default
        // data directory; DONT_EXIT makes a missing one an error return, not an exit.
        let rate = unsafe {
            init(
                AUDIO_OUTPUT_SYNCHRONOUS,
                CHUNK_MS as c_int,
                std::ptr::null(),
                INITIALIZE_DONT_EXIT,
            )
        };
        anyhow::ensure!(
            (8_000..=192_000).contains(&rate),
            "{path} did not start (espeak_Initialize returned {rate}): is espeak-ng-data \
             installed? {hint}"
        );
        // SAFETY: `on_audio` has the callback's C signature and never unwinds out of it.
        unsafe { set_callback(Some(on_audio)) };
        Ok(Self {
            synth,
            set_voice,
            set_parameter,
            rate: rate as u32,
            current: Mutex::new(None),
            _lib: lib,
        })
    }
}

/// What the synthesis callback hands samples to, for the duration of one `espeak_Synth`.
struct Sink<'a> {
    on_samples: &'a mut dyn FnMut(u32, &[i16]) -> anyhow::Result<()>,
    rate: u32,
    first_sample_ns: u64,
    error: Option<anyhow::Error>,
}

thread_local! {
    /// The sink of the synthesis running on this thread (synchronous mode calls back on it).
    static SINK: Cell<*mut c_void> = const { Cell::new(std::ptr::null_mut()) };
}

/// libespeak-ng's synthesis callback: hands each piece of samples to the running sink.
/// Returns 1 (abort the synthesis) when the sink failed.
unsafe extern "C" fn on_audio(wav: *mut c_short, n: c_int, _events: *mut c_void) -> c_int {
    let p = SINK.with(Cell::get);
    let Ok(n) = usize::try_from(n) else { return 0 };
    if p.is_null() || wav.is_null() || n == 0 {
        return 0; // the end of the synthesis (wav null), or a piece without samples
    }
    // SAFETY: `p` was set by `Resident::stream` on this thread to a `Sink` that lives until
    // espeak_Synth returns (and is reset to null before the sink is dropped); the callback
    // runs only inside that call, on this thread, so no other reference to it is in use.
    let sink = unsafe { &mut *p.cast::<Sink<'_>>() };
    // SAFETY: libespeak-ng hands `n` samples at `wav`, valid for the duration of the call.
    let samples = unsafe { std::slice::from_raw_parts(wav.cast_const(), n) };
    if sink.first_sample_ns == 0 {
        sink.first_sample_ns = monotonic_ns();
    }
    match (sink.on_samples)(sink.rate, samples) {
        Ok(()) => 0,
        Err(e) => {
            sink.error = Some(e);
            1
        }
    }
}

/// Resets the thread's sink even when the synthesis unwinds.
struct SinkGuard;

impl Drop for SinkGuard {
    fn drop(&mut self) {
        SINK.with(|s| s.set(std::ptr::null_mut()));
    }
}

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

fn engine() -> anyhow::Result<&'static Engine> {
    ENGINE
        .get_or_init(|| Engine::load(LIBRARY).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

impl Speaker for Resident {
    fn stream(
        &self,
        text: &str,
        on_samples: &mut dyn FnMut(u32, &[i16]) -> anyhow::Result<()>,
    ) -> anyhow::Result<SynthTimes> {
        check_text(text)?;
        let c_text = CString::new(text)
            .with_context(|| format!("the text {text:?} holds a NUL byte: it cannot be spoken"))?;
        let e = engine()?;
        let mut current = e.current.lock().unwrap_or_else(|p| p.into_inner());
        let want = (self.settings.voice.clone(), self.settings.words_per_minute);
        if current.as_ref() != Some(&want) {
            let voice = CString::new(want.0.as_str()).context("a voice name holds a NUL byte")?;
            // SAFETY: a NUL-terminated name; the engine's mutex is held.
            let r = unsafe { (e.set_voice)(voice.as_ptr()) };
            anyhow::ensure!(r == EE_OK, "libespeak-ng has no voice {:?} ({r})", want.0);
            let wpm = c_int::try_from(want.1).context("words per minute out of range")?;
            // SAFETY: a documented parameter and value; the engine's mutex is held.
            let r = unsafe { (e.set_parameter)(PARAM_RATE, wpm, 0) };
            anyhow::ensure!(r == EE_OK, "libespeak-ng refused a rate of {wpm} wpm ({r})");
            *current = Some(want);
        }
        let mut sink = Sink {
            on_samples,
            rate: e.rate,
            first_sample_ns: 0,
            error: None,
        };
        let _reset = SinkGuard;
        SINK.with(|s| s.set(std::ptr::from_mut(&mut sink).cast()));
        let requested_ns = monotonic_ns();
        // SAFETY: a NUL-terminated UTF-8 text and its size; synchronous mode calls `on_audio`
        // on this thread before returning, while `sink` (pointed to by SINK) is alive; the
        // engine's mutex is held, so no other synthesis runs in the library meanwhile.
        let r = unsafe {
            (e.synth)(
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
        let done_ns = monotonic_ns();
        drop(_reset);
        if let Some(err) = sink.error {
            return Err(err.context(format!("speaking {text:?}")));
        }
        anyhow::ensure!(r == EE_OK, "libespeak-ng failed ({r}) on {text:?}");
        anyhow::ensure!(
            sink.first_sample_ns != 0,
            "libespeak-ng produced no audio for {text:?}"
        );
        Ok(SynthTimes {
            requested_ns,
            first_sample_ns: sink.first_sample_ns,
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
        let e = Engine::load("libvoxring-no-such-espeak.so.1")
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("cannot load") && e.contains("apt-get"), "{e}");
    }
}
