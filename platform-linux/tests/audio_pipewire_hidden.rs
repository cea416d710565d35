//! Honest xrun counts through the headless PipeWire that `scripts/test` (phase 8) starts:
//! PipeWire's ALSA plugin may play silence in place of a late client without reporting an
//! xrun; the playback pump must count it anyway. Ignored unless run with `--ignored` against a
//! running PipeWire (device from `VOXRING_AUDIO_DEVICE`, default `pipewire`).

use std::time::Duration;

use voxring_linux::audio::alsa_pcm::MmapPreference;
use voxring_linux::audio::duplex::AlsaDuplex;
use voxring_linux::audio::{
    ChunkInfo, DiscardSink, Duplex, PlaybackSource, Sample, StopFlag, StreamParams, rt,
};

fn device() -> String {
    std::env::var("VOXRING_AUDIO_DEVICE").unwrap_or_else(|_| "pipewire".into())
}

/// Plays silence, and once, at its `at`-th pull, holds the audio thread for `stall` (the
/// host stall of a loaded VM, on demand).
struct StallingSource {
    pulls: u64,
    at: u64,
    stall: Duration,
}

impl<T: Sample> PlaybackSource<T> for StallingSource {
    fn pull(&mut self, out: &mut [T], info: &ChunkInfo) -> usize {
        self.pulls += 1;
        if self.pulls == self.at {
            std::thread::sleep(self.stall);
        }
        out.fill(T::SILENCE);
        out.len() / info.channels.max(1) as usize
    }
}

/// The audio thread stalls for 100 ms, 37 periods, far beyond the two-period (5.3 ms)
/// buffer: the buffer runs empty whatever the machine, and the run must count a playback
/// xrun, reported by the device or found hidden.
#[test]
#[ignore = "needs a running PipeWire (scripts/test phase 8)"]
fn a_stall_longer_than_the_buffer_is_counted_even_when_pipewire_hides_it() {
    if let Err(e) = rt::promote_current_thread(rt::DEFAULT_AUDIO_PRIORITY) {
        eprintln!("note: {e}");
    }
    let p = StreamParams {
        rate: 48_000,
        channels: 2,
        period_frames: 128,
        buffer_frames: 256,
    };
    let d = AlsaDuplex::<i16>::open(&device(), &p, MmapPreference::Auto)
        .unwrap_or_else(|e| panic!("opening '{}': {e}", device()));
    let mut dev = Duplex::Alsa(Box::new(d));
    // Half a second in: PipeWire has linked the streams by then.
    let mut src = StallingSource {
        pulls: 0,
        at: 200,
        stall: Duration::from_millis(100),
    };
    let stop = StopFlag::new();
    let st = dev
        .run(&mut DiscardSink, &mut src, &stop, Some(72_000))
        .unwrap_or_else(|e| panic!("{}", voxring_linux::audio::AudioError::from(e)));
    eprintln!("{st:?}");
    assert!(src.pulls >= 200, "the stall never happened: {st:?}");
    assert!(
        st.xruns.playback >= 1,
        "the buffer ran empty during a 100 ms stall and no playback xrun was counted: {st:?}"
    );
    assert!(st.xruns.playback_hidden <= st.xruns.playback, "{st:?}");
}

/// ALSA's `null` PCM empties the buffer at once and never reports an xrun: it is not paced,
/// so however late the client comes back nothing is counted (no silence was played).
#[test]
fn an_unpaced_device_that_empties_the_buffer_is_not_counted() {
    use voxring_linux::audio::SilenceSource;
    use voxring_linux::audio::alsa_pcm::AlsaStream;
    let p = StreamParams {
        rate: 48_000,
        channels: 2,
        period_frames: 128,
        buffer_frames: 256,
    };
    let mut s = AlsaStream::<i16>::open(
        "null",
        alsa::Direction::Playback,
        &p,
        MmapPreference::AlsaLib,
    )
    .expect("ALSA's null PCM");
    s.prefill(&mut SilenceSource, 0).unwrap();
    s.start().unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(20));
        s.pump_playback(&mut SilenceSource, 0).unwrap();
    }
    assert_eq!((s.xruns(), s.hidden_xruns()), (0, 0), "{s:?}");
}
