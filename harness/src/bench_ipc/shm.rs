//! `cacheline`, the floor: one 64-byte line carries (seq, stamp) from producer to consumer,
//! another carries the acknowledgement back; both sides busy-poll. No ring, no payload: the
//! cost of moving one cache line between two cores and back, which any shared-memory
//! transport pays at least once per hand-off.
//!
//! The mapping is a `memfd` handed to the child by descriptor inheritance, so nothing is ever
//! created in `/dev/shm` and nothing can be left behind.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use rustix::mm::{MapFlags, ProtFlags};

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

/// A `MAP_SHARED` mapping of a memfd; unmapped on drop.
#[derive(Debug)]
pub struct Shared {
    ptr: *mut u8,
    len: usize,
}

impl Shared {
    /// Creates a zeroed memfd of `len` bytes (close-on-exec; the caller clears that flag on the
    /// descriptor it hands to the child) and maps it.
    pub fn create(len: usize) -> anyhow::Result<(Self, OwnedFd)> {
        let fd = rustix::fs::memfd_create("voxring-bench-ipc", rustix::fs::MemfdFlags::CLOEXEC)
            .context("memfd_create for the benchmark mapping")?;
        rustix::fs::ftruncate(&fd, len as u64)
            .with_context(|| format!("sizing the benchmark memfd to {len} bytes"))?;
        let shared = Self::map(&fd, len)?;
        Ok((shared, fd))
    }

    /// Maps an inherited memfd after checking it is at least `len` bytes long.
    pub fn attach(fd: &OwnedFd, len: usize) -> anyhow::Result<Self> {
        let st = rustix::fs::fstat(fd).context("fstat of the inherited benchmark memfd")?;
        if (st.st_size as u64) < len as u64 {
            bail!(
                "the inherited mapping has {} bytes, {len} are needed: parent and child disagree",
                st.st_size
            );
        }
        Self::map(fd, len)
    }

    fn map(fd: impl AsFd, len: usize) -> anyhow::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel (null hint) of a descriptor we hold; no
        // existing memory is affected.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .with_context(|| format!("mmap of {len} shared bytes"))?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.len);
        // SAFETY: in bounds and 8-aligned (checked above); lives as long as `self`; any bit
        // pattern is a valid u64.
        unsafe { &*self.ptr.add(offset).cast::<AtomicU64>() }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping created in `map`, and no reference into it
        // outlives `self` (all accessors borrow `self`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
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
