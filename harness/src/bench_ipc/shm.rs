//! `cacheline`, the floor: one 64-byte line carries (seq, stamp) from producer to consumer,
//! another carries the acknowledgement back; both sides busy-poll. No ring, no payload: the
//! cost of moving one cache line between two cores and back, which any shared-memory
//! transport pays at least once per hand-off.
//!
//! The mapping is a `memfd` handed to the child by descriptor inheritance, so nothing is ever
//! created in `/dev/shm` and nothing can be left behind.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use voxring_linux::mapping::MapOptions;
use voxring_linux::memfd::MemfdFile;
use voxring_linux::segment::CreateError;

use super::measure::now_ns;
use super::{PEER_TIMEOUT_NS, Received, Rx, Tx};

// Fixed offsets of the control words, one cache line each (no false sharing).
const PING_SEQ: usize = 0;
const PING_STAMP: usize = 8;
const PONG_SEQ: usize = 64;

/// Bytes of mapping `cacheline` needs (one page).
pub fn mapping_len() -> usize {
    4096
}

/// A sealed memfd mapped `MAP_SHARED` (voxring-linux's [`MemfdFile`]); unmapped on drop.
#[derive(Debug)]
pub struct Shared {
    file: MemfdFile,
}

impl Shared {
    /// Creates a zeroed, sealed memfd of `len` bytes and maps it; returns it with a close-on-exec
    /// copy of its descriptor (the caller clears that flag on the copy it hands to the child).
    pub fn create(len: usize) -> anyhow::Result<(Self, OwnedFd)> {
        let file = MemfdFile::create_with("bench-ipc", len, MapOptions::default(), |_, _| {
            Ok::<(), CreateError>(())
        })
        .context("creating the benchmark memfd")?;
        let fd = file
            .fd()
            .try_clone_to_owned()
            .context("duplicating the benchmark memfd for the child")?;
        Ok((Self { file }, fd))
    }

    /// Maps an inherited memfd after checking its seals and that it is exactly `len` bytes.
    pub fn attach(fd: OwnedFd, len: usize) -> anyhow::Result<Self> {
        let file = MemfdFile::from_received(fd, len as u64, MapOptions::default())
            .context("the inherited benchmark mapping: parent and child disagree")?;
        Ok(Self { file })
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8), "word offset {offset}");
        &self.file.mapping().as_atomic_u64s()[offset / 8]
    }
}

/// Producer side of `cacheline`: one line carries (seq, stamp), another the ack.
#[derive(Debug)]
pub struct CachelineTx {
    pub shared: Shared,
}

impl Tx for CachelineTx {
    fn prepare(&mut self, _seq: u64) -> anyhow::Result<()> {
        Ok(())
    }
    fn send(&mut self, seq: u64) -> anyhow::Result<()> {
        self.shared
            .u64_at(PING_STAMP)
            .store(now_ns(), Ordering::Relaxed);
        // Release: publishes the stamp above; pairs with the consumer's Acquire load of PING_SEQ.
        self.shared
            .u64_at(PING_SEQ)
            .store(seq + 1, Ordering::Release);
        Ok(())
    }
    fn wait_ack(&mut self, seq: u64) -> anyhow::Result<()> {
        let ack = self.shared.u64_at(PONG_SEQ);
        let deadline = now_ns() + PEER_TIMEOUT_NS;
        let mut spins: u32 = 0;
        // Acquire: pairs with the consumer's Release store of PONG_SEQ.
        while ack.load(Ordering::Acquire) != seq + 1 {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(65536) && now_ns() > deadline {
                bail!("the consumer stopped acknowledging (no progress for 10 s)");
            }
        }
        Ok(())
    }
    fn own_syscalls(&self) -> Option<u64> {
        Some(0)
    }
}

/// Consumer side of `cacheline`.
#[derive(Debug)]
pub struct CachelineRx {
    pub shared: Shared,
    pub next: u64,
}

impl Rx for CachelineRx {
    fn recv(&mut self) -> anyhow::Result<Received> {
        let seq_word = self.shared.u64_at(PING_SEQ);
        let deadline = now_ns() + PEER_TIMEOUT_NS;
        let mut spins: u32 = 0;
        // Acquire: pairs with the producer's Release store of PING_SEQ, so the stamp is visible.
        while seq_word.load(Ordering::Acquire) != self.next + 1 {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(65536) && now_ns() > deadline {
                bail!("the producer process stopped sending (no message for 10 s)");
            }
        }
        let recv_ns = now_ns();
        let stamp_ns = self.shared.u64_at(PING_STAMP).load(Ordering::Relaxed);
        Ok(Received {
            seq: self.next,
            stamp_ns,
            recv_ns,
        })
    }
    fn finish(&mut self, msg: &Received) -> anyhow::Result<()> {
        // Release: pairs with the producer's Acquire load in `wait_ack`.
        self.shared
            .u64_at(PONG_SEQ)
            .store(msg.seq + 1, Ordering::Release);
        self.next += 1;
        Ok(())
    }
}
