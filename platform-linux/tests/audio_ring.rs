//! The audio path through `voxring-core` rings: the synthetic device's capture goes straight
//! into a ring's write grants, its playback comes straight from another ring's read grants,
//! and its loopback joins them, so what one ring held comes back in the other bit-exact, with
//! the frame metadata filled in. The real-time loop runs under `assert_no_alloc`.

use std::alloc::{Layout, alloc_zeroed, dealloc};

use assert_no_alloc::{AllocDisabler, assert_no_alloc};
use voxring_core::{Policy, Ring, RingConfig, SampleFormat, SpinWaiter};
use voxring_linux::audio::loopback::pattern_sample;
use voxring_linux::audio::ring_io::{RingSink, RingSource};
use voxring_linux::audio::synthetic::SyntheticDevice;
use voxring_linux::audio::{Duplex, StopFlag, StreamParams};

#[global_allocator]
static ALLOC: AllocDisabler = AllocDisabler;

/// A ring in a 128-byte-aligned heap region, freed on drop (after every handle is gone:
/// declare it before them).
struct LocalRegion {
    ptr: *mut u8,
    layout: Layout,
}

impl LocalRegion {
    fn new(cfg: &RingConfig) -> (Self, Ring) {
        let size = cfg.region_size().unwrap();
        let layout = Layout::from_size_align(size, 128).unwrap();
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        // SAFETY: `ptr .. ptr + size` is a fresh allocation, valid for reads and writes, that
        // `LocalRegion` keeps until it is dropped, after the ring handles (declared later).
        let ring = unsafe { Ring::create(ptr, size, cfg) }.unwrap();
        (LocalRegion { ptr, layout }, ring)
    }
}

impl Drop for LocalRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, and no ring handle outlives us.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

fn cfg(frames: u32) -> RingConfig {
    RingConfig {
        frames,
        samples_per_frame: 128,
        channels: 2,
        format: SampleFormat::F32,
        sample_rate: 48_000,
        max_consumers: 2,
        policy: Policy::Lossless,
    }
}

#[test]
fn ring_to_device_to_ring_is_bit_exact_with_metadata() {
    let params = StreamParams {
        rate: 48_000,
        channels: 2,
        period_frames: 128,
        // The largest buffer (21.8 s): no xrun unless the thread stalls that long (a give-up
        // bound, not a speed the test expects).
        buffer_frames: 1 << 20,
    };
    let delay = 256u32;
    let (_region_out, ring_out) = LocalRegion::new(&cfg(32));
    let (_region_in, ring_in) = LocalRegion::new(&cfg(64));
    let waiter = SpinWaiter::default();

    // The ring the device plays: 20 frames of the pattern.
    let mut feeder = ring_out.producer(1).unwrap();
    let mut player = ring_out.consumer(2).unwrap();
    let played_frames = 20usize;
    {
        let mut g = feeder.write_grant(played_frames).unwrap();
        assert_eq!(g.len(), played_frames);
        for (i, mut f) in g.frames_mut().enumerate() {
            for (j, s) in f.samples_mut::<f32>().unwrap().iter_mut().enumerate() {
                *s = pattern_sample((i * 256 + j) as u64);
            }
        }
        // The device has not started: nobody is parked on this ring yet.
        let _ = g.commit_all();
    }
    // The ring the device captures into.
    let mut recorder = ring_in.producer(3).unwrap();
    let mut reader = ring_in.consumer(4).unwrap();

    let mut dev = SyntheticDevice::<f32>::new(&params, Some(delay)).unwrap();
    let granted = dev.granted();
    let periods = 40u64;
    let (sink_stats, source_stats) = {
        let mut sink = RingSink::<f32, _>::new(&mut recorder, &waiter, &granted).unwrap();
        let mut source = RingSource::<f32, _>::new(&mut player, &waiter, &granted).unwrap();
        dev.start();
        let mut dev = Duplex::Synthetic(Box::new(dev));
        let st = assert_no_alloc(|| {
            dev.run(
                &mut sink,
                &mut source,
                &StopFlag::new(),
                Some(periods * 128),
            )
        })
        .unwrap();
        assert_eq!(st.capture_frames, periods * 128);
        assert_eq!(st.xruns.capture + st.xruns.playback, 0);
        assert_eq!(st.playback_frames, played_frames as u64 * 128);
        (sink.stats(), source.stats())
    };
    assert_eq!(sink_stats.ring_frames, periods);
    assert_eq!(source_stats.ring_frames, played_frames as u64);
    assert_eq!(source_stats.starved, periods - played_frames as u64);

    let g = reader.read_grant(64).unwrap();
    assert_eq!(g.len() as u64, periods);
    let mut audio = Vec::new();
    for (k, f) in g.frames().enumerate() {
        let m = f.meta();
        assert_eq!(m.sample_pos, k as u64 * 128, "frame {k}");
        assert_eq!(m.flags.bits(), 0, "frame {k}");
        assert_eq!(m.len, 128 * 2 * 4);
        audio.extend_from_slice(f.samples::<f32>().unwrap());
    }
    // The device has stopped: nobody is parked on this ring any more.
    let _ = g.release_all().unwrap();
    let d = delay as usize * 2;
    assert!(
        audio[..d].iter().all(|s| *s == 0.0),
        "silence before the delay"
    );
    let n = played_frames * 256;
    for i in 0..n {
        assert_eq!(audio[d + i], pattern_sample::<f32>(i as u64), "sample {i}");
    }
    assert!(
        audio[d + n..].iter().all(|s| *s == 0.0),
        "silence after the ring ran dry"
    );
}

#[test]
fn a_ring_that_does_not_fit_the_device_is_refused() {
    let (_region, ring) = LocalRegion::new(&cfg(8));
    let waiter = SpinWaiter::default();
    let mut p = ring.producer(1).unwrap();
    // A 96-frame period: the ring's 128-sample frames do not divide it.
    let params = StreamParams {
        period_frames: 96,
        buffer_frames: 288,
        ..StreamParams::DEFAULT
    };
    let dev = SyntheticDevice::<f32>::new(&params, None).unwrap();
    let e = RingSink::<f32, _>::new(&mut p, &waiter, &dev.granted()).unwrap_err();
    assert!(e.to_string().contains("multiple of the ring's 128"), "{e}");
    let mono = SyntheticDevice::<f32>::new(
        &StreamParams {
            channels: 1,
            ..StreamParams::DEFAULT
        },
        None,
    )
    .unwrap();
    let e = RingSink::<f32, _>::new(&mut p, &waiter, &mono.granted()).unwrap_err();
    assert!(e.to_string().contains("channels"), "{e}");
    let s16 = SyntheticDevice::<i16>::new(&StreamParams::DEFAULT, None).unwrap();
    let e = RingSink::<i16, _>::new(&mut p, &waiter, &s16.granted()).unwrap_err();
    assert!(e.to_string().contains("F32"), "{e}");
}
