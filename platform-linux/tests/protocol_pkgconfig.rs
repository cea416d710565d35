//! The C library installed the way C libraries are (`scripts/install-c --prefix P`: the
//! release cdylib with its soname and symlinks, the header, `voxring.pc`), and a C agent built
//! only through `pkg-config --cflags --libs voxring` (no path inside `target/`) reads a ring a
//! Rust producer feeds, bit-exact.

mod common;
mod protocol;

use std::io::{BufRead, BufReader};

use std::process::{Command, Stdio};

use common::{ChildGuard, ShmCleanup, unique_name};
use protocol::{GIVE_UP, field, has_consumer, wait_until};
use voxring_core::{FrameFlags, GrantError, Policy, PushFrameError, RingConfig, SampleFormat};
use voxring_linux::ring::Segment;
use voxring_linux::segment::CreateOptions;
use voxring_test_support::{cc_with_pkg_config, install_c};

/// Sample `i` of frame `seq`: the pattern `platform-linux/ffi/c/voxring_peer.c` checks.
fn pattern(seq: u64, i: usize) -> i16 {
    (seq.wrapping_mul(7919).wrapping_add(i as u64 * 31) & 0xffff) as u16 as i16
}

/// Feeds `count` frames of the pattern (the last flagged END_OF_STREAM) once a consumer
/// joined; returns the CRC-32 of every payload byte.
fn produce(seg: &Segment, count: u64, stop: &mut dyn FnMut() -> bool) -> u32 {
    wait_until("the C agent joins", || has_consumer(seg), &mut *stop);
    let mut tx = seg.producer().expect("claim the producer side");
    let spf = seg.config().samples_per_frame as usize;
    let mut crc = crc32fast::Hasher::new();
    let mut bytes = vec![0u8; spf * 2];
    let mut seq = 0;
    while seq < count {
        for (i, b) in bytes.chunks_exact_mut(2).enumerate() {
            b.copy_from_slice(&pattern(seq, i).to_le_bytes());
        }
        let flags = if seq + 1 == count {
            FrameFlags::END_OF_STREAM
        } else {
            FrameFlags::NONE
        };
        let (producer, waiter) = tx.parts();
        let now = voxring_linux::clock::monotonic_ns();
        match producer.push(&bytes, seq * spf as u64, now, flags) {
            Ok(wake) => {
                wake.wake(waiter);
                crc.update(&bytes);
                seq += 1;
            }
            Err(PushFrameError::Grant(GrantError::Full)) => {
                assert!(!stop(), "the C agent ended while the ring was full");
                let _ = tx.wait_for_space(Some(std::time::Duration::from_millis(100)));
            }
            Err(e) => panic!("push: {e}"),
        }
    }
    crc.finalize()
}

#[test]
fn a_c_agent_built_with_pkg_config_against_the_installed_library_reads_bit_exact() {
    let prefix_dir = tempfile::tempdir().expect("temp dir");
    let prefix = prefix_dir.path().join("usr");
    install_c(&prefix);
    let lib = prefix.join("lib");
    // The files a C library install has: the real file, the soname link, the dev link.
    let soname = std::fs::read_link(lib.join("libvoxring_ffi.so")).expect("dev symlink");
    let real = std::fs::read_link(lib.join(&soname)).expect("soname symlink");
    assert!(lib.join(&real).is_file(), "{}", real.display());
    assert!(prefix.join("include/voxring.h").is_file());

    let agent = prefix_dir.path().join("voxring_peer");
    cc_with_pkg_config(&prefix, "platform-linux/ffi/c/voxring_peer.c", &agent);

    let name = unique_name("pkgc");
    let _clean = ShmCleanup(name.clone());
    let cfg = RingConfig {
        frames: 16,
        samples_per_frame: 512,
        channels: 1,
        format: SampleFormat::S16,
        sample_rate: 48_000,
        max_consumers: 2,
        policy: Policy::Lossless,
    };
    let seg = Segment::create(&name, &cfg, &CreateOptions::default()).expect("create the ring");
    let mut child = ChildGuard(Some(
        Command::new(&agent)
            .args(["read", &name])
            .env("LD_LIBRARY_PATH", &lib)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the agent"),
    ));
    let mut out = BufReader::new(child.child().stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "ready", "the agent did not start");
    // The agent runs the installed library (the loader found it by its soname).
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.pid())).expect("maps");
    let loaded = lib.join(&real);
    assert!(
        maps.contains(loaded.to_str().expect("utf-8")),
        "the agent did not map {}",
        loaded.display()
    );
    let count = 500;
    let mut exited = || child.child().try_wait().expect("try_wait").is_some();
    let crc = produce(&seg, count, &mut exited);
    let mut done = String::new();
    let give_up = std::time::Instant::now() + GIVE_UP;
    while !done.starts_with("done ") {
        done.clear();
        assert!(std::time::Instant::now() < give_up, "no done line");
        assert!(
            out.read_line(&mut done).expect("read") > 0,
            "the agent ended early"
        );
    }
    assert!(child.wait().success(), "{done}");
    assert_eq!(field(&done, "frames"), count.to_string(), "{done}");
    assert_eq!(field(&done, "crc"), format!("{crc:08x}"), "{done}");
    assert_eq!(field(&done, "bad"), "0", "{done}");
    assert_eq!(field(&done, "lost"), "0", "{done}");
    assert_eq!(field(&done, "transport"), "shm", "{done}");
}
