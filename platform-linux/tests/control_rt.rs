//! The real-time side of control registers allocates nothing: a waking write
//! (`publish_and_wake`, `SharedControl::write`) with nobody waiting and with a reader armed (the
//! path that makes the `FUTEX_WAKE`), and the bounded reads (`try_read`,
//! `read_with_retries`), all inside `assert_no_alloc` (which aborts the test on an allocation).
//! The blocking calls (waits, patient reads) are not for real-time threads and are not here.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use assert_no_alloc::{AllocDisabler, assert_no_alloc};
use voxring_core::control::{ControlRegister, DEFAULT_READ_RETRIES};
use voxring_linux::control::{ControlExt, OwnRegister, SharedControl};
use voxring_linux::segment::{AttachOptions, CreateOptions};
use voxring_linux::shared::Placed;

#[global_allocator]
static ALLOC: AllocDisabler = AllocDisabler;

/// The `wake` word (offset 20, `core/LAYOUT.md`) of `reg`, as a waiting reader arms it.
fn wake_word<T, const W: usize>(reg: &ControlRegister<T, W>) -> &AtomicU32 {
    let base = (reg as *const ControlRegister<T, W>).cast::<u8>();
    // SAFETY: offset 20 of a 64-byte aligned register is its 4-byte aligned `wake` word, only
    // ever accessed atomically; it lives as long as `reg`.
    unsafe { &*base.add(20).cast::<AtomicU32>() }
}

#[test]
fn waking_writes_and_bounded_reads_do_not_allocate() {
    let name = format!("ctl-rt-{}", std::process::id());
    let own = SharedControl::create(&name, &CreateOptions::default()).unwrap();
    let peer = Placed::<OwnRegister>::attach(&name, &AttachOptions::default()).unwrap();
    let typed = ControlRegister::<[u64; 2], 2>::new([0, 0]);
    let mut buf = [0u8; 64];
    for armed in [false, true] {
        if armed {
            // A reader armed the word and sleeps: the next write makes the wake call.
            // Relaxed: single-threaded here; the write's own loads order nothing else.
            wake_word(&peer).store(1, Ordering::Relaxed);
            wake_word(&typed).store(1, Ordering::Relaxed);
        }
        assert_no_alloc(|| {
            own.write(&[1, 2, 3]).unwrap();
            typed.publish_and_wake([4, 5]).unwrap();
            own.try_read(&mut buf).unwrap();
            typed.read_with_retries(DEFAULT_READ_RETRIES).unwrap();
        });
        // Relaxed: as above. The waking write moved the armed word on to the next even value.
        let expected = if armed { 2 } else { 0 };
        assert_eq!(wake_word(&peer).load(Ordering::Relaxed), expected);
        assert_eq!(wake_word(&typed).load(Ordering::Relaxed), expected);
    }
    assert_eq!(buf[..3], [1, 2, 3]);
    // A waiter woken by the armed path sees the value (the real futex, another thread).
    std::thread::scope(|s| {
        let t = s.spawn(|| typed.wait_newer_than(2, Some(Duration::from_secs(60))));
        assert_no_alloc(|| typed.publish_and_wake([6, 7]).unwrap());
        assert_eq!(t.join().unwrap(), Some(3));
    });
}
