//! Playback xruns counted through the headless PipeWire that `scripts/test` (phase 8) starts
//! must be xruns: silence really played. The null sink's monitor is the default capture
//! source, so a recorder on it hears exactly what was played, sample for sample.
//!
//! The played signal is a ramp (frame `p` carries `1 + p % 32000` on both channels, never 0),
//! so the recording says where silence was inserted: between frames `p - 1` and `p`. For every
//! playback xrun the stream counts (reported by the plugin, or found hidden), the test knows
//! the first frame written after it, and the recording must hold silence right before that
//! frame. That holds whatever the scheduling: a late wake-up may add xruns, but each must come
//! with its silence.
//!
//! PipeWire's graph runs at 512 frames here (our period stays 128, the buffer 512): every
//! graph cycle takes the whole buffer at once, the case where a bound built on our period
//! counted xruns that played nothing. At a 128-frame graph the headless PipeWire breaks the
//! stream by itself on a shared VM (silence the server inserts where our stream missed its
//! cycle, with no xrun of ours, and reported xruns whose silence lands elsewhere), so nothing
//! could be concluded there. At 512 it still breaks it now and then (a cycle of silence with
//! no xrun of ours, about one 10 s run in three on this VM): such a break close to one of our
//! counted xruns blurs it, so that run is reported and repeated (one of three must be clear of
//! them); breaks far from every counted xrun do not excuse a wrong count. The device's clock
//! for the pump is the recording's, as in a duplex.
//!
//! Ignored unless run with `--ignored` against a running PipeWire (device from
//! `VOXRING_AUDIO_DEVICE`, default `pipewire`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alsa::Direction;
use voxring_linux::audio::alsa_pcm::{AlsaStream, MmapPreference};
use voxring_linux::audio::{
    CaptureSink, ChunkInfo, PlaybackSource, StreamParams, flags, pipewire, rt,
};

fn device() -> String {
    std::env::var("VOXRING_AUDIO_DEVICE").unwrap_or_else(|_| "pipewire".into())
}

const RATE: u32 = 48_000;
const PERIOD: u32 = 128;
/// Four periods: 10.7 ms.
const BUFFER: u32 = 512;
/// The ramp's length: values 1..=RAMP.
const RAMP: u64 = 32_000;

fn period_ns() -> u64 {
    u64::from(PERIOD) * 1_000_000_000 / u64::from(RATE)
}

fn ramp(p: u64) -> i16 {
    (1 + p % RAMP) as i16
}

/// Plays the ramp from the stream's position.
struct Ramp;

impl PlaybackSource<i16> for Ramp {
    fn pull(&mut self, out: &mut [i16], info: &ChunkInfo) -> usize {
        let ch = info.channels.max(1) as usize;
        for (i, frame) in out.chunks_exact_mut(ch).enumerate() {
            frame.fill(ramp(info.sample_pos + i as u64));
        }
        out.len() / ch
    }
}

/// Keeps channel 0 of every captured frame (room allocated up front) and the capture xruns,
/// and publishes how many frames it has captured: the graph's clock for the playback side.
struct Recorder {
    left: Vec<i16>,
    xruns: u64,
    captured: Arc<AtomicU64>,
}

impl CaptureSink<i16> for Recorder {
    fn push(&mut self, samples: &[i16], info: &ChunkInfo) -> usize {
        let ch = info.channels.max(1) as usize;
        if info.flags & flags::XRUN != 0 {
            self.xruns += 1;
        }
        let room = self.left.capacity() - self.left.len();
        let frames = (samples.len() / ch).min(room);
        self.left
            .extend(samples.chunks_exact(ch).take(frames).map(|f| f[0]));
        // Past the room the frames are taken and not kept: the recorder never overruns.
        self.captured
            .fetch_add((samples.len() / ch) as u64, Ordering::Relaxed);
        samples.len() / ch
    }
}

/// Records the default source on its own thread, with a buffer of 85 ms, until `stop`.
fn record(
    stop: Arc<AtomicBool>,
    captured: Arc<AtomicU64>,
    seconds: u32,
) -> std::thread::JoinHandle<Recorder> {
    let p = StreamParams {
        rate: RATE,
        channels: 2,
        period_frames: PERIOD,
        buffer_frames: 4096,
    };
    let mut s = AlsaStream::<i16>::open(&device(), Direction::Capture, &p, MmapPreference::Auto)
        .unwrap_or_else(|e| panic!("opening '{}' for capture: {e}", device()));
    std::thread::spawn(move || {
        let _ = rt::promote_current_thread(rt::DEFAULT_AUDIO_PRIORITY);
        let mut rec = Recorder {
            left: Vec::with_capacity((RATE * seconds) as usize),
            xruns: 0,
            captured,
        };
        s.start().expect("starting the capture");
        while !stop.load(Ordering::Relaxed) {
            s.wait(100).expect("waiting on the capture");
            s.pump_capture(&mut rec).expect("capturing");
        }
        rec.xruns = rec.xruns.max(s.xruns());
        let _ = s.stop();
        rec
    })
}

/// What the playback side did.
#[derive(Debug, Default)]
struct Played {
    /// For each playback xrun counted: the first frame written after it, and whether it was
    /// found hidden (not reported by the device).
    xruns: Vec<(u64, bool)>,
    /// Wake-ups that found the whole buffer free (every frame written had been consumed).
    found_empty: u64,
    /// Delays made.
    delays: u32,
}

/// Plays the ramp, delaying the pump once by `delay` (after its wait) every `every` wake-ups,
/// `times` times; stops a quarter second after the last. The pump is given the recorder's
/// captured frames as the device's clock, as a duplex gives its capture position (`voxring
/// serve` and `run` pump that way): a whole-VM stall stops PipeWire's graph and the
/// recording with it, where CLOCK_MONOTONIC runs on.
fn play(delay: Duration, every: u64, times: u32, captured: &AtomicU64) -> Played {
    let p = StreamParams {
        rate: RATE,
        channels: 2,
        period_frames: PERIOD,
        buffer_frames: BUFFER,
    };
    let mut s = AlsaStream::<i16>::open(&device(), Direction::Playback, &p, MmapPreference::Auto)
        .unwrap_or_else(|e| panic!("opening '{}' for playback: {e}", device()));
    assert_eq!(
        (s.granted().period_frames, s.granted().buffer_frames),
        (PERIOD, BUFFER),
        "the plugin granted another period/buffer: {:?}",
        s.granted()
    );
    s.prefill(&mut Ramp, captured.load(Ordering::Relaxed))
        .expect("prefill");
    s.start().expect("start");
    let mut out = Played::default();
    let mut wakes = 0u64;
    let mut last_delay_at = None;
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(t) = last_delay_at
            && Instant::now().duration_since(t) > Duration::from_millis(250)
        {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "gave up: the playback did not run ({wakes} wake-ups, {out:?})"
        );
        let x0 = s.xruns();
        s.wait(100).expect("waiting on the playback");
        if s.xruns() > x0 {
            out.xruns.push((s.position(), false));
        }
        wakes += 1;
        // Half a second in (PipeWire has linked the streams by then), then every `every`.
        if wakes >= 200 && (wakes - 200).is_multiple_of(every) && out.delays < times {
            std::thread::sleep(delay);
            out.delays += 1;
            if out.delays == times {
                last_delay_at = Some(Instant::now());
            }
        }
        let (x0, h0, p0) = (s.xruns(), s.hidden_xruns(), s.position());
        let moved = s
            .pump_playback(&mut Ramp, captured.load(Ordering::Relaxed))
            .expect("playing");
        if moved >= BUFFER as usize {
            out.found_empty += 1;
        }
        if s.hidden_xruns() > h0 {
            // Counted before the fill: the fill starts with the first frame after it.
            out.xruns.push((p0, true));
        } else if s.xruns() > x0 {
            // Reported: the pump re-prepared the stream and refilled it from the source,
            // starting with the frame it was at; found in the middle of the fill, the stream
            // waits for the next pump, which starts with the frame this one stopped at.
            let first = if s.start_pending() { s.position() } else { p0 };
            out.xruns.push((first, false));
        }
    }
    let _ = s.stop();
    out
}

/// The silence in a recording of the ramp: for each run of zero frames after the ramp began,
/// the first frame played after it (its absolute position) and the run's length; frames
/// skipped (a jump in the ramp) count as a gap of no silence.
fn silences(rec: &[i16]) -> Vec<(u64, usize)> {
    let Some(first) = rec.iter().position(|&v| v != 0) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut pos = (rec[first] - 1) as u64;
    let mut zeros = 0usize;
    for &v in &rec[first + 1..] {
        if v == 0 {
            zeros += 1;
            continue;
        }
        let want = (pos + 1) % RAMP;
        let got = (v - 1) as u64;
        // Forward distance on the ramp (a skip of frames moves it on by more than one).
        let step = (got + RAMP - pos % RAMP) % RAMP;
        pos += step.max(1);
        if zeros > 0 {
            out.push((pos, zeros));
        } else if got != want {
            out.push((pos, 0));
        }
        zeros = 0;
    }
    out
}

/// The graph's quantum in these tests: four of our periods, the whole buffer.
const GRAPH: u32 = 512;

/// Plays and records at a 512-frame graph until a run the server did not break by itself
/// (three tries); returns what was played and the silences recorded.
fn undisturbed_run(delay: Duration, every: u64, times: u32) -> (Played, Vec<(u64, usize)>) {
    let graph = pipewire::force_clock(GRAPH, RATE).expect("forcing PipeWire's graph");
    assert_eq!(graph.after.effective_quantum(), Some(GRAPH), "{graph:?}");
    let attempts = 3;
    for attempt in 1..=attempts {
        let (played, gaps, _) = run(delay, every, times);
        let breaks = server_breaks(&played, &gaps);
        if breaks.is_empty() {
            return (played, gaps);
        }
        eprintln!(
            "attempt {attempt}: PipeWire broke the stream by itself (silence or a skip where we \
             counted no xrun, first frame after each and frames of silence: {breaks:?})"
        );
    }
    panic!(
        "PipeWire broke the stream by itself in {attempts} of {attempts} runs at a {GRAPH}-frame \
         graph: this machine cannot hold the graph (voxring doctor's pipewire-graph and \
         timer-jitter checks say what it can), so our xrun counting could not be judged"
    );
}

/// The server's own breaks close enough to one of our counted xruns to blur it: silence or
/// skips in the recording after its first half second that no xrun of ours explains, within
/// two buffers and a graph cycle of one. (Breaks far from every counted xrun say nothing
/// about our counting, and a run whose wrong count stands alone is judged.)
fn server_breaks(played: &Played, gaps: &[(u64, usize)]) -> Vec<(u64, usize)> {
    let settled = u64::from(RATE) / 2;
    let near = u64::from(2 * BUFFER + GRAPH);
    let xruns: Vec<u64> = played.xruns.iter().map(|x| x.0).collect();
    gaps.iter()
        .filter(|g| g.0 >= settled)
        .filter(|g| !(0..xruns.len()).any(|i| silence_window(&xruns, i).contains(&g.0)))
        .filter(|g| xruns.iter().any(|&p| p.abs_diff(g.0) <= near))
        .copied()
        .collect()
}

/// Where the silence of counted xrun `i` (its first frame written after, `xruns[i]`) may be
/// recorded: right before that frame; up to one graph cycle earlier (the plugin padded a cycle
/// and we saw its `EPIPE` only after one more cycle of ours had played: seen here, silence
/// before 297 600 for an xrun counted before 298 112); or, when the next xrun came within a
/// buffer, right before the next's (the frames written between the two were lost with the
/// second, and the two silences are one: 83 840 and 84 352 with 1 152 frames of silence
/// before the latter).
fn silence_window(xruns: &[u64], i: usize) -> std::ops::RangeInclusive<u64> {
    let p = xruns[i];
    let next = xruns
        .get(i + 1)
        .copied()
        .filter(|&n| n >= p && n - p <= u64::from(BUFFER));
    p.saturating_sub(u64::from(GRAPH))..=next.unwrap_or(p)
}

/// Plays and records once; returns what was played and the silences recorded.
fn run(delay: Duration, every: u64, times: u32) -> (Played, Vec<(u64, usize)>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let captured = Arc::new(AtomicU64::new(0));
    let rec = record(stop.clone(), captured.clone(), 20);
    // The capture is linked and running before the playback starts.
    std::thread::sleep(Duration::from_millis(300));
    if let Err(e) = rt::promote_current_thread(rt::DEFAULT_AUDIO_PRIORITY) {
        eprintln!("note: {e}");
    }
    let played = play(delay, every, times, &captured);
    // What is still queued (buffer, graph) reaches the monitor.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let rec = rec.join().expect("the recorder panicked");
    let gaps = silences(&rec.left);
    eprintln!(
        "delay {delay:?} x{}: played {played:?}; recorded {} frames, capture xruns {}, gaps \
         (first frame after, zero frames) {gaps:?}",
        played.delays,
        rec.left.len(),
        rec.xruns
    );
    assert!(
        rec.left.iter().any(|&v| v != 0),
        "the ramp never reached the monitor: is the playback linked to the sink whose monitor \
         is the default source? (pw-link -l)"
    );
    (played, gaps, rec.xruns)
}

/// Every playback xrun counted has silence in the monitor right before the first frame
/// written after it (or within a graph cycle of it, [`silence_window`]).
fn each_xrun_played_silence(played: &Played, gaps: &[(u64, usize)]) {
    let xruns: Vec<u64> = played.xruns.iter().map(|x| x.0).collect();
    for (i, &(p, hidden)) in played.xruns.iter().enumerate() {
        let window = silence_window(&xruns, i);
        let silence = gaps
            .iter()
            .filter(|g| window.contains(&g.0))
            .map(|g| g.1)
            .sum::<usize>();
        assert!(
            silence > 0,
            "a playback xrun ({}) was counted before frame {p}, but the monitor recorded no \
             silence there: frame {} was followed by frame {p}, so no silence was played \
             (gaps recorded: {gaps:?}; played: {played:?})",
            if hidden {
                "found hidden"
            } else {
                "reported by the device"
            },
            p.saturating_sub(1)
        );
    }
}

/// The pump is delayed by 3.5 periods (9.3 ms) after a wake-up, six times: it was woken by the
/// graph cycle that took the whole buffer, so it finds the buffer empty and full for the last
/// time about 20 ms earlier, yet the next cycle, the first that would find nothing, is not due
/// before the pump refills it (10.7 ms after the one that woke it). A buffer found empty is
/// not silence played: such a wake-up must not be counted (a bound of buffer + one period,
/// 13.3 ms, counted it, and so did the former "found empty" rule).
#[test]
#[ignore = "needs a running PipeWire (scripts/test phase 8)"]
fn a_buffer_found_empty_in_time_is_not_counted_as_an_xrun() {
    let delay = Duration::from_nanos(period_ns() * 7 / 2);
    let (played, gaps) = undisturbed_run(delay, 100, 6);
    assert_eq!(played.delays, 6, "{played:?}");
    assert!(
        played.found_empty >= 1,
        "the pump never found the buffer empty after a delay of 3.5 periods: the case this \
         test is about did not arise ({played:?})"
    );
    each_xrun_played_silence(&played, &gaps);
}

/// The pump is delayed by three whole buffers (32 ms): silence is played whatever the machine,
/// and it must be counted, at the right frame.
#[test]
#[ignore = "needs a running PipeWire (scripts/test phase 8)"]
fn a_delay_of_several_buffers_is_counted_where_silence_was_played() {
    let delay = Duration::from_nanos(period_ns() * 12);
    let (played, gaps) = undisturbed_run(delay, 100, 2);
    assert_eq!(played.delays, 2, "{played:?}");
    assert!(
        played.xruns.len() >= 2,
        "two delays of three buffers each and fewer than two playback xruns counted: \
         {played:?}; gaps recorded {gaps:?}"
    );
    each_xrun_played_silence(&played, &gaps);
}

#[test]
fn the_silence_finder_locates_inserted_silence_and_skips() {
    let mut rec = vec![0i16; 5];
    rec.extend((10..20).map(ramp));
    rec.extend([0, 0, 0]);
    rec.extend((20..25).map(ramp));
    rec.extend((27..30).map(ramp));
    assert_eq!(silences(&rec), vec![(20, 3), (27, 0)]);
    // Across the ramp's wrap.
    let rec: Vec<i16> = (RAMP - 2..RAMP + 2).map(ramp).collect();
    assert_eq!(silences(&rec), vec![]);
}
