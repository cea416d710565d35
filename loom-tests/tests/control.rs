//! loom model of `voxring_core::control::ControlRegister`: a reader racing a writer never
//! returns a torn value, and versions and values never go backwards.
#![cfg(voxring_loom)]

use loom::sync::Arc;
use voxring_core::control::{ControlRegister, ReadError};
use voxring_loom_tests::assert_explored_many;

#[test]
fn seqlock_reads_are_never_torn() {
    assert_explored_many("control: seqlock never torn", || {
        let reg = Arc::new(ControlRegister::<[u64; 2], 2>::new([0, 0]));
        let writer = {
            let reg = Arc::clone(&reg);
            loom::thread::spawn(move || {
                reg.write([1, 1]).unwrap();
                reg.write([2, 2]).unwrap();
            })
        };
        let reader = {
            let reg = Arc::clone(&reg);
            loom::thread::spawn(move || {
                let mut last = 0;
                let mut ok = 0;
                for _ in 0..2 {
                    // Few retries keep the model small; running out is allowed, a torn value
                    // is not.
                    match reg.read_with_retries(3) {
                        Ok((v, version)) => {
                            assert_eq!(v[0], v[1], "torn read: {v:?}");
                            assert_eq!(v[0], version, "value i is written as version i");
                            assert!(version >= last, "went back from {last} to {version}");
                            last = version;
                            ok += 1;
                        }
                        Err(ReadError::Contended { .. }) => {}
                    }
                }
                ok
            })
        };
        writer.join().unwrap();
        reader.join().unwrap();
        // After the writer is done, a read sees its last value.
        assert_eq!(reg.read_with_retries(1), Ok(([2, 2], 2)));
    });
}
