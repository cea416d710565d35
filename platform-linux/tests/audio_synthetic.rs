//! The clocked synthetic device: its frame count follows CLOCK_MONOTONIC (checked against the
//! clock at every wake-up, never as a duration), its loopback is exact, and its real-time loop
//! does not allocate.

use assert_no_alloc::{AllocDisabler, assert_no_alloc};
use voxring_linux::audio::alsa_pcm::MmapPreference;
use voxring_linux::audio::loopback::{ImpulseProbe, PatternSource, Recorder, pattern_sample};
use voxring_linux::audio::synthetic::SyntheticDevice;
use voxring_linux::audio::{
    CaptureSink, ChunkInfo, DeviceSpec, Duplex, SilenceSource, StopFlag, StreamParams, open_duplex,
};

#[global_allocator]
static ALLOC: AllocDisabler = AllocDisabler;

/// Records, for every chunk, where it ends and when the device handed it over.
struct ClockLog {
    /// (frames delivered after this chunk, CLOCK_MONOTONIC of the wake-up)
    chunks: Vec<(u64, u64)>,
}

impl CaptureSink<f32> for ClockLog {
    fn push(&mut self, samples: &[f32], info: &ChunkInfo) -> usize {
        let n = samples.len() / info.channels as usize;
        if self.chunks.len() < self.chunks.capacity() {
            self.chunks
                .push((info.sample_pos + n as u64, info.timestamp_ns));
        }
        n
    }
}

#[test]
fn frame_count_follows_the_monotonic_clock() {
    let params = StreamParams {
        rate: 48_000,
        channels: 1,
        period_frames: 64,
        // The largest buffer (21.8 s): the device drops frames only if this ordinary-priority
        // thread stalls for that long. A give-up bound, not a speed the test expects.
        buffer_frames: 1 << 20,
    };
    let mut dev = SyntheticDevice::<f32>::new(&params, None).unwrap();
    let periods = 1_500u64; // 2 s
    let target = periods * 64;
    let mut log = ClockLog {
        chunks: Vec::with_capacity(periods as usize + 8),
    };
    dev.start();
    let origin = dev.origin_ns();
    assert_no_alloc(|| {
        while dev.capture_position() < target {
            let left = (periods - dev.capture_position() / 64) as u32;
            dev.run_due_at_most(&mut log, &mut SilenceSource, left);
        }
    });
    assert_eq!(dev.xruns().capture, 0);
    let rate = u128::from(params.rate);
    // Frames of the clock at `t`, computed here from CLOCK_MONOTONIC, not by the device.
    let clock_frames = |t: u64| ((u128::from(t - origin) * rate) / 1_000_000_000) as u64;
    let mut worst_lag = 0;
    for (i, &(delivered, t)) in log.chunks.iter().enumerate() {
        let due = clock_frames(t);
        assert!(
            delivered <= due,
            "chunk {i}: {delivered} frames handed over when the clock says {due}: ahead of time"
        );
        // After the last chunk of a wake-up, everything due is handed over, to the period:
        // the device catches up after a late wake-up instead of drifting. Not when the test's
        // own limit held the device back: the last wake-up may run fewer periods than are due
        // (`run_due_at_most(.., left)`), however late it comes; it must then stop exactly at
        // the limit, which the total below checks.
        let last_of_wakeup = log.chunks.get(i + 1).is_none_or(|next| next.1 != t);
        let capped_by_the_limit = delivered == target;
        if last_of_wakeup && !capped_by_the_limit {
            assert!(
                due - delivered < 64,
                "chunk {i}: {delivered} frames handed over, {due} due: behind by a period or more"
            );
            worst_lag = worst_lag.max(due - delivered);
        }
    }
    // Over the whole run: the count equals elapsed time x rate at the last deadline, to the
    // frame, and the deadline is within a frame of the exact instant.
    let &(total, _) = log.chunks.last().unwrap();
    assert_eq!(total, target, "the run stops exactly at its limit");
    let deadline = dev.deadline_ns(total);
    let exact_ns = u128::from(total) * 1_000_000_000 / rate;
    assert!(u128::from(deadline - origin).abs_diff(exact_ns) <= 1);
    assert!(clock_frames(deadline).abs_diff(total) <= 1);
    eprintln!("worst lag after a wake-up: {worst_lag} frames");
}

#[test]
fn loopback_returns_the_playback_bit_exact_after_the_delay() {
    // The largest device buffer (21.8 s): the synthetic device drops frames (an xrun) only if
    // this (ordinary-priority) thread stalls for longer than that (a give-up bound).
    let params = StreamParams {
        rate: 48_000,
        channels: 2,
        period_frames: 128,
        buffer_frames: 1 << 20,
    };
    for delay in [0u32, 1, 300, 384] {
        let mut dev = SyntheticDevice::<i32>::new(&params, Some(delay)).unwrap();
        let total = 5_000u64;
        let mut src = PatternSource::new(0, total);
        let mut rec = Recorder::<i32>::new(8_000, 2);
        let mut dev = Duplex::Synthetic(Box::new({
            dev.start();
            dev
        }));
        let st =
            assert_no_alloc(|| dev.run(&mut rec, &mut src, &StopFlag::new(), Some(6_400))).unwrap();
        assert_eq!(st.capture_frames, 6_400);
        assert_eq!(st.xruns.capture + st.xruns.playback, 0);
        assert_eq!(rec.first_sound(), Some(delay as usize), "delay {delay}");
        let s = rec.samples();
        for i in 0..(total as usize * 2) {
            assert_eq!(
                s[delay as usize * 2 + i],
                pattern_sample::<i32>(i as u64),
                "delay {delay}: sample {i}"
            );
        }
        assert!(
            s[(delay as usize + total as usize) * 2..]
                .iter()
                .all(|v| *v == 0)
        );
    }
}

#[test]
fn loopback_probe_measures_the_delay_in_whole_periods() {
    // "synthetic" models a device with a buffer and a graph cycle: buffer + one period.
    let spec = DeviceSpec::parse("synthetic", &StreamParams::DEFAULT).unwrap();
    assert_eq!(
        spec,
        DeviceSpec::Synthetic {
            loopback_delay: Some(384)
        }
    );
    let params = StreamParams {
        rate: 48_000,
        channels: 2,
        period_frames: 128,
        buffer_frames: 1 << 20, // see above: no xrun unless the thread stalls for 21.8 s
    };
    for (delay, want) in [(384u32, 384u32), (300, 256), (128, 128), (1_000, 896)] {
        let (mut dev, label) = open_duplex::<f32>(
            &DeviceSpec::Synthetic {
                loopback_delay: Some(delay),
            },
            &params,
            MmapPreference::Auto,
        )
        .unwrap();
        assert!(label.contains(&delay.to_string()), "{label}");
        let probe = ImpulseProbe::new(38 * 128, 0, 0.5, 64);
        let (mut src, mut det) = (probe.source(), probe.detector());
        let st = assert_no_alloc(|| dev.run(&mut det, &mut src, &StopFlag::new(), Some(48_000)))
            .unwrap();
        let s = probe.stats().expect("no impulse came back");
        assert_eq!(
            (s.min, s.max),
            (want, want),
            "delay {delay}: every round trip is the delay rounded down to whole periods"
        );
        assert!(s.count >= 9, "{s:?}");
        assert_eq!(probe.unmatched(), 0);
        assert_eq!(st.xruns.capture + st.xruns.playback, 0);
    }
}

#[test]
fn device_names_parse() {
    let p = StreamParams::DEFAULT;
    assert_eq!(DeviceSpec::parse("auto", &p).unwrap(), DeviceSpec::Auto);
    assert_eq!(
        DeviceSpec::parse("synthetic:none", &p).unwrap(),
        DeviceSpec::Synthetic {
            loopback_delay: None
        }
    );
    assert_eq!(
        DeviceSpec::parse("synthetic:480", &p).unwrap(),
        DeviceSpec::Synthetic {
            loopback_delay: Some(480)
        }
    );
    assert_eq!(
        DeviceSpec::parse("hw:0,0", &p).unwrap(),
        DeviceSpec::Alsa("hw:0,0".into())
    );
    let e = DeviceSpec::parse("synthetic:soon", &p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("synthetic:480"), "{e}");
    assert!(DeviceSpec::parse("", &p).is_err());
}
