//! Waits woken across threads, patient reads past a stalled writer (a forged odd sequence
//! word, completed later), and a hub directory's registers opened by name.

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// A "give up" bound: never reached unless the code under test is broken.
const GIVE_UP: Duration = Duration::from_secs(60);

fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Relaxed: only uniqueness matters.
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("ctl-{tag}-{}-{n}", std::process::id())
}

/// The `seq` word (offset 24, `core/LAYOUT.md`) of the register `reg` points at, as another
/// process would reach it in the shared segment: a forger's view.
fn seq_word(reg: &OwnRegister) -> &AtomicU64 {
    let base = (reg as *const OwnRegister).cast::<u8>();
    // SAFETY: offset 24 of a 64-byte aligned register is its 8-byte aligned `seq` word, which
    // is only ever accessed atomically (an `AtomicU64` in core); it lives as long as `reg`.
    unsafe { &*base.add(24).cast::<AtomicU64>() }
}

#[test]
fn a_waiting_reader_is_woken_by_a_write_in_another_handle() {
    let name = unique("wake");
    let writer = SharedControl::create(&name, &CreateOptions::default()).unwrap();
    let reader = SharedControl::attach(&name, &AttachOptions::default()).unwrap();
    assert_eq!(reader.wait_newer_than(0, Some(Duration::ZERO)), None);
    std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            let mut seen = 0;
            let mut values = Vec::new();
            while seen < 3 {
                // Without the writer's wake this would end only at GIVE_UP, and fail.
                seen = reader.wait_newer_than(seen, Some(GIVE_UP)).expect("woken");
                let mut b = [0u8; 1];
                let v = reader.read(&mut b, DEFAULT_PATIENCE).unwrap();
                assert!(v >= seen);
                values.push(b[0]);
            }
            values
        });
        for i in 1..=3u8 {
            writer.write(&[i]).unwrap();
        }
        let values = waiting.join().unwrap();
        assert_eq!(values.last(), Some(&3));
    });
    assert_eq!(
        writer.write(&[0; 65]),
        Err(WriteBytesError::TooLong { len: 65, max: 64 })
    );
    assert!(
        writer
            .write(&[0; 65])
            .unwrap_err()
            .to_string()
            .contains("at most 64"),
        "says what to do"
    );
}

#[test]
fn a_typed_register_waits_and_reads_patiently() {
    let reg = ControlRegister::<[u32; 2], 1>::new([0, 0]);
    std::thread::scope(|s| {
        let t = s.spawn(|| reg.wait_newer_than(0, Some(GIVE_UP)));
        reg.publish_and_wake([5, 6]).unwrap();
        assert!(t.join().unwrap().is_some());
    });
    assert_eq!(reg.read_patiently(DEFAULT_PATIENCE), Ok(([5, 6], 1)));
}

/// Attack/fault: the writer stalls mid-write (its sequence word left odd, as a writer
/// descheduled between its two stores leaves it). The bounded read gives up at once; the
/// patient read waits and returns the value once the write completes from another thread.
#[test]
fn a_patient_read_outlasts_a_writer_stalled_mid_write() {
    let name = unique("stall");
    let owner = SharedControl::create(&name, &CreateOptions::default()).unwrap();
    owner.write(&[7]).unwrap();
    let peer = Placed::<OwnRegister>::attach(&name, &AttachOptions::default()).unwrap();
    let seq = seq_word(&peer);
    // Relaxed: single forger; readers see the odd value whatever the order.
    seq.store(3, Ordering::Relaxed);
    let mut b = [0u8; 1];
    assert_eq!(
        owner.try_read(&mut b),
        Err(ReadError::Contended {
            retries: DEFAULT_READ_RETRIES
        }),
        "the bounded (real-time) read does not wait"
    );
    std::thread::scope(|s| {
        let reading = s.spawn(|| owner.read(&mut b, GIVE_UP));
        // The stalled writer runs again (whenever: the reader waits either way) and completes
        // its write. Release: pairs with the reader's Acquire load of `seq`.
        std::thread::sleep(Duration::from_millis(20));
        seq.store(4, Ordering::Release);
        assert_eq!(reading.join().unwrap(), Ok(2));
    });
    assert_eq!(b, [7]);
}

#[test]
fn a_write_that_never_completes_is_reported_clearly() {
    let name = unique("dead");
    let owner = SharedControl::create(&name, &CreateOptions::default()).unwrap();
    let peer = Placed::<OwnRegister>::attach(&name, &AttachOptions::default()).unwrap();
    // Relaxed: as above; this writer "died" mid-write.
    seq_word(&peer).store(9, Ordering::Relaxed);
    let e = owner
        .read(&mut [0u8; 8], Duration::from_millis(30))
        .unwrap_err();
    assert!(e.stuck && e.version == 4 && e.rounds > 1, "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("stalled or died mid-write") && msg.contains("recover_abandoned_write"),
        "{msg}"
    );
    assert!(owner.recover_abandoned_write());
    assert_eq!(owner.read(&mut [0u8; 8], DEFAULT_PATIENCE), Ok(5));
}

#[test]
fn hub_registers_open_by_name_and_bad_names_are_refused() {
    let hub = unique("hub");
    let (plan, layout) = directory::plan().unwrap();
    let dir =
        SharedObjects::create(&directory_name(&hub), &CreateOptions::default(), plan).unwrap();
    let speech = SharedControl::hub(&hub, HubRegister::Speech, &AttachOptions::default()).unwrap();
    let value3 =
        SharedControl::hub(&hub, "value3".parse().unwrap(), &AttachOptions::default()).unwrap();
    assert_eq!((speech.len(), value3.len()), (32, 32));
    std::thread::scope(|s| {
        let t = s.spawn(|| speech.wait_newer_than(0, Some(GIVE_UP)));
        let s_reg = dir.get(layout.speech).unwrap();
        s_reg
            .publish_and_wake(directory::Speech {
                active: 1,
                since_sample: 4800,
                segments: 1,
                level_mb: (-2000i64) as u64,
            })
            .unwrap();
        assert_eq!(t.join().unwrap(), Some(1));
    });
    let mut out = [0u8; 32];
    speech.read(&mut out, DEFAULT_PATIENCE).unwrap();
    assert_eq!(out[..8], 1u64.to_ne_bytes());
    assert_eq!(out[8..16], 4800u64.to_ne_bytes());
    value3.write(&9u64.to_ne_bytes()).unwrap();
    assert_eq!(dir.get(layout.values[3]).unwrap().read(), Ok([9, 0, 0, 0]));
    for bad in ["value16", "value", "valuex", "Speech", "value-1"] {
        let e = bad.parse::<HubRegister>().unwrap_err();
        assert!(e.contains("\"speech\" or \"value0\""), "{e}");
    }
    let e =
        SharedControl::hub(&unique("nohub"), HubRegister::Speech, &Default::default()).unwrap_err();
    assert!(e.to_string().contains("voxring serve --name"), "{e}");
    let e = SharedControl::hub("../x", HubRegister::Speech, &Default::default()).unwrap_err();
    assert!(matches!(e, OpenError::Hub(HubError::BadName(_))), "{e}");
}
