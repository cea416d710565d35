//! Format, channel, mmap and xrun-recovery logic against ALSA's `null` and `file` PCMs, which
//! need no server and no sound card. They are not clocked (a second "plays" in microseconds),
//! so nothing here is timed: every check is on counts and bytes.

mod common;

use std::path::PathBuf;

use alsa::Direction;
use assert_no_alloc::{AllocDisabler, assert_no_alloc};
use voxring_linux::audio::alsa_pcm::{AlsaStream, MmapPreference};
use voxring_linux::audio::duplex::{DeviceSpec, open_duplex};
use voxring_linux::audio::loopback::{PatternSource, Recorder, pattern_sample};
use voxring_linux::audio::{
    AccessMode, AudioError, CaptureSink, ChunkInfo, PlaybackSource, Sample, SampleFormat,
    SampleFormatExt, StreamParams, flags, parse_sample_format,
};

#[global_allocator]
static ALLOC: AllocDisabler = AllocDisabler;

fn params(channels: u32) -> StreamParams {
    StreamParams {
        rate: 48_000,
        channels,
        period_frames: 128,
        buffer_frames: 512,
    }
}

/// A path in a private temporary folder (tempfile: random name, mode 0700), removed with the
/// folder when dropped. ALSA's `file:` plugin opens the path with `O_CREAT | O_TRUNC`, following
/// symlinks, so the path must not be one another user can predict or reach.
struct TempPath(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl TempPath {
    fn new(tag: &str) -> Self {
        let dir = voxring_test_support::private_dir("voxring-audio-");
        TempPath(dir.path().join(format!("{tag}.raw")), dir)
    }
}

fn granted_as_asked<T: Sample>(channels: u32) {
    for dir in [Direction::Playback, Direction::Capture] {
        let p = params(channels);
        let s = AlsaStream::<T>::open("null", dir, &p, MmapPreference::Auto).unwrap_or_else(|e| {
            panic!("null {dir:?} {} x{channels}: {e}", T::SAMPLE_FORMAT.name())
        });
        let g = s.granted();
        assert_eq!(g.format, T::SAMPLE_FORMAT);
        assert_eq!(g.channels, channels);
        assert_eq!(g.rate, 48_000);
        assert_eq!(g.alsa_access, "MMAP_INTERLEAVED");
        assert_eq!(
            s.pcm().hw_params_current().unwrap().get_format().unwrap(),
            T::SAMPLE_FORMAT.alsa()
        );
        assert_eq!(
            g.mode,
            AccessMode::AlsaMmap,
            "null is a plugin: alsa-lib mmap"
        );
        assert!(
            g.period_frames > 0 && g.buffer_frames >= 2 * g.period_frames,
            "{g:?}"
        );
        assert!(
            s.direct_refusal().is_none(),
            "direct mmap is not tried on plugins"
        );
    }
}

#[test]
fn null_grants_every_format_and_channel_count() {
    for ch in [1, 2, 6] {
        granted_as_asked::<i16>(ch);
        granted_as_asked::<i32>(ch);
        granted_as_asked::<f32>(ch);
    }
}

#[test]
fn direct_mmap_on_a_plugin_is_refused_with_a_clear_error() {
    let e = AlsaStream::<i16>::open(
        "null",
        Direction::Playback,
        &params(2),
        MmapPreference::Direct,
    )
    .expect_err("direct mmap cannot work on the null plugin");
    let msg = e.to_string();
    assert!(msg.contains("directly") && msg.contains("hw:"), "{msg}");
}

#[test]
fn bad_requests_say_what_to_do() {
    let bad = StreamParams {
        buffer_frames: 100,
        ..params(2)
    };
    let e = AlsaStream::<i16>::open("null", Direction::Playback, &bad, MmapPreference::Auto)
        .expect_err("a buffer smaller than two periods is refused");
    assert!(matches!(e, AudioError::InvalidParams(_)), "{e}");
    assert!(e.to_string().contains("two periods"), "{e}");
    let e = AlsaStream::<i16>::open(
        "voxring_no_such_pcm",
        Direction::Playback,
        &params(2),
        MmapPreference::Auto,
    )
    .expect_err("an unknown PCM does not open");
    let msg = e.to_string();
    assert!(msg.contains("voxring_no_such_pcm"), "{msg}");
    assert!(msg.contains("aplay -L"), "{msg}");
    assert!(
        parse_sample_format("S24")
            .unwrap_err()
            .contains("S16, S32 or F32")
    );
    assert_eq!(parse_sample_format("float_le"), Ok(SampleFormat::F32));
}

/// The pattern, remembering the position of every chunk it was asked for flagged XRUN.
struct Flagged {
    pattern: PatternSource,
    xrun_at: Vec<u64>,
}

impl<T: Sample> PlaybackSource<T> for Flagged {
    fn pull(&mut self, out: &mut [T], info: &ChunkInfo) -> usize {
        if info.flags & flags::XRUN != 0 && self.xrun_at.len() < self.xrun_at.capacity() {
            self.xrun_at.push(info.sample_pos);
        }
        self.pattern.pull(out, info)
    }
}

/// Plays the pattern into `file:` through the mmap path, forces one xrun recovery in the
/// middle, and checks the file: the pattern in order, bit for bit in the format's little-endian
/// layout, with no silence anywhere: the recovery refills the buffer from the source (the next
/// frames written are the pattern's next ones), writes no silence of its own, counts the xrun
/// and flags the first chunk after it.
fn file_holds_the_pattern<T: Sample>(channels: u32, to_bytes: fn(T) -> Vec<u8>) {
    let tmp = TempPath::new(&format!("{}-{channels}", T::SAMPLE_FORMAT.name()));
    let name = format!("file:'{}',raw", tmp.0.display());
    let p = params(channels);
    let total = 10_000u64;
    {
        let mut s = AlsaStream::<T>::open(&name, Direction::Playback, &p, MmapPreference::Auto)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(s.granted().alsa_access, "MMAP_INTERLEAVED");
        let mut src = Flagged {
            pattern: PatternSource::new(0, total),
            xrun_at: Vec::with_capacity(4),
        };
        let mut rounds = 0;
        let mut at_xrun = None;
        assert_no_alloc(|| {
            s.prefill(&mut src, 0).unwrap();
            s.start().unwrap();
            while s.position() < total {
                s.pump_playback(&mut src, 0).unwrap();
                assert!(!s.start_pending(), "every pump leaves the stream started");
                rounds += 1;
                if rounds == 3 {
                    at_xrun = Some(s.position());
                    s.force_xrun_recovery().unwrap();
                    assert!(s.start_pending(), "playback waits for its refill");
                }
                assert!(rounds < 10_000, "playback stopped advancing");
            }
        });
        assert_eq!(s.xruns(), 1);
        assert_eq!(s.hidden_xruns(), 0);
        assert_eq!(
            src.xrun_at,
            [at_xrun.unwrap()],
            "the first chunk after the recovery, and only it, is flagged"
        );
        assert_eq!(s.silence_frames(), 0, "the recovery wrote no silence");
        s.stop().unwrap();
    }
    let bytes = std::fs::read(&tmp.0).unwrap();
    let frame_bytes = T::SAMPLE_FORMAT.bytes() as usize * channels as usize;
    assert_eq!(bytes.len() % frame_bytes, 0);
    let silent_frame = vec![0u8; frame_bytes];
    let mut k = 0u64; // pattern frames seen
    for f in bytes.chunks_exact(frame_bytes) {
        if k >= total {
            // The pump may have filled the buffer past the pattern: the source's silence.
            assert_eq!(
                f,
                silent_frame.as_slice(),
                "a sound after the whole pattern"
            );
            continue;
        }
        let want: Vec<u8> = (0..channels as u64)
            .flat_map(|c| to_bytes(pattern_sample::<T>(k * channels as u64 + c)))
            .collect();
        assert_eq!(
            f,
            want.as_slice(),
            "{} x{channels}: frame {k} (the xrun must not put silence or a jump in the pattern)",
            T::SAMPLE_FORMAT.name()
        );
        k += 1;
    }
    assert_eq!(k, total, "every pattern frame reached the file");
}

#[test]
fn file_pcm_receives_the_samples_bit_exact_in_each_format() {
    for ch in [1, 2, 6] {
        file_holds_the_pattern::<i16>(ch, |v| v.to_le_bytes().to_vec());
        file_holds_the_pattern::<i32>(ch, |v| v.to_le_bytes().to_vec());
        file_holds_the_pattern::<f32>(ch, |v| v.to_le_bytes().to_vec());
    }
}

/// Counts chunks, frames and xrun flags; checks chunk shape.
struct Counting {
    frames: u64,
    next_pos: u64,
    flagged_at: Vec<u64>,
}

impl<T: Sample> CaptureSink<T> for Counting {
    fn push(&mut self, samples: &[T], info: &ChunkInfo) -> usize {
        assert_eq!(samples.len() % info.channels as usize, 0);
        assert_eq!(info.sample_pos, self.next_pos, "positions are contiguous");
        if info.flags & flags::XRUN != 0 && self.flagged_at.len() < self.flagged_at.capacity() {
            self.flagged_at.push(info.sample_pos);
        }
        let n = samples.len() / info.channels as usize;
        self.frames += n as u64;
        self.next_pos += n as u64;
        n
    }
}

#[test]
fn capture_recovers_from_xruns_and_flags_the_next_chunk() {
    let p = params(2);
    let mut s =
        AlsaStream::<i32>::open("null", Direction::Capture, &p, MmapPreference::Auto).unwrap();
    let mut sink = Counting {
        frames: 0,
        next_pos: 0,
        flagged_at: Vec::with_capacity(8),
    };
    assert_no_alloc(|| {
        s.start().unwrap();
        for round in 0..40 {
            s.pump_capture(&mut sink).unwrap();
            if round % 10 == 5 {
                s.force_xrun_recovery().unwrap();
            }
        }
    });
    assert_eq!(s.xruns(), 4);
    assert_eq!(sink.frames, s.position());
    assert!(
        sink.frames >= 30 * 128,
        "the stream kept going: {} frames",
        sink.frames
    );
    assert_eq!(
        sink.flagged_at.len(),
        4,
        "each recovery flags exactly one chunk"
    );
    assert!(sink.flagged_at.windows(2).all(|w| w[0] < w[1]));
    s.stop().unwrap();
}

#[test]
fn a_full_sink_leaves_frames_in_the_device() {
    // A recorder with room for 300 frames takes 300 and then reports it took everything (it
    // counts the overflow); a sink that takes nothing leaves the frames in the device buffer.
    struct Refuse;
    impl<T: Sample> CaptureSink<T> for Refuse {
        fn push(&mut self, _: &[T], _: &ChunkInfo) -> usize {
            0
        }
    }
    let p = params(2);
    let mut s =
        AlsaStream::<f32>::open("null", Direction::Capture, &p, MmapPreference::Auto).unwrap();
    s.start().unwrap();
    let moved = assert_no_alloc(|| s.pump_capture(&mut Refuse).unwrap());
    assert_eq!(moved, 0);
    assert_eq!(s.position(), 0);
    let mut rec = Recorder::<f32>::new(300, 2);
    for _ in 0..4 {
        assert_no_alloc(|| s.pump_capture(&mut rec).unwrap());
    }
    assert_eq!(rec.frames(), 300);
    assert_eq!(rec.overflow_frames(), s.position() - 300);
    s.stop().unwrap();
}

#[test]
fn the_duplex_loop_runs_on_null_without_allocating() {
    use voxring_linux::audio::duplex::AlsaDuplex;
    use voxring_linux::audio::{Duplex, StopFlag};
    let p = params(2);
    let d = AlsaDuplex::<i16>::open("null", &p, MmapPreference::Auto).unwrap();
    let mut dev = Duplex::Alsa(Box::new(d));
    let mut rec = Recorder::<i16>::new(20_000, 2);
    let mut src = PatternSource::new(0, 1_000_000);
    let st =
        assert_no_alloc(|| dev.run(&mut rec, &mut src, &StopFlag::new(), Some(10_000))).unwrap();
    assert!(st.capture_frames >= 10_000, "{st:?}");
    assert_eq!(
        st.capture_frames,
        rec.frames() as u64 + rec.overflow_frames()
    );
    assert!(st.playback_frames >= u64::from(p.buffer_frames), "{st:?}");
    assert_eq!(st.xruns.capture + st.xruns.playback, 0);
    assert!(st.wakeups > 0);
    // A second run on the same device works (the streams were left prepared).
    let mut rec2 = Recorder::<i16>::new(2_000, 2);
    let st2 =
        assert_no_alloc(|| dev.run(&mut rec2, &mut src, &StopFlag::new(), Some(1_000))).unwrap();
    assert!(st2.capture_frames >= 1_000, "{st2:?}");
}

/// `--device auto` probes ALSA's `default`. Where that names a card the machine does not have,
/// alsa-lib prints its own lines to stderr ("ALSA lib confmisc.c:...(parse_card) cannot find
/// card", "Cannot get card index for ..."). The probe must print none of them: what alsa-lib
/// said goes into the one label that says what was chosen and why. The child runs the probe
/// with an ALSA configuration whose `default` is such a card, and its stderr is read whole.
#[test]
fn the_auto_probe_prints_none_of_alsa_libs_own_lines() {
    common::parent_only!();
    let conf = TempPath::new("asound");
    std::fs::write(
        &conf.0,
        "pcm.default {\n    type hw\n    card \"voxring_no_such_card\"\n}\n",
    )
    .expect("write the ALSA configuration");
    let out = common::spawn_role(
        "child_entry_auto_probe",
        "auto-probe",
        &[("ALSA_CONFIG_PATH", conf.0.display().to_string())],
    )
    .stderr(std::process::Stdio::piped())
    .output()
    .expect("run the probe child");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stderr.contains("ALSA lib") && !stderr.contains("voxring_no_such_card"),
        "alsa-lib printed its own lines:\n{stderr}"
    );
    let label = stdout
        .lines()
        .find_map(|l| l.split_once("chosen: ").map(|(_, label)| label))
        .unwrap_or_else(|| panic!("no label in:\n{stdout}"));
    assert!(
        label.starts_with("synthetic") && label.contains("voxring_no_such_card"),
        "the label should name the fallback and alsa-lib's reason: {label}"
    );
}

/// The child of [`the_auto_probe_prints_none_of_alsa_libs_own_lines`].
#[test]
fn child_entry_auto_probe() {
    common::child_role!("auto-probe");
    let (_device, label) = open_duplex::<f32>(&DeviceSpec::Auto, &params(2), MmapPreference::Auto)
        .expect("auto falls back to the synthetic device");
    println!("chosen: {label}");
}
