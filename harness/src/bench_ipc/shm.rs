//! The shared-memory transports: `cacheline` (the floor) and `shm-spin` / `shm-park`.
//!
//! TODO(voxring-core/platform): `shm-spin`/`shm-park` run over a minimal single-producer ring
//! kept in this file, on a `memfd` mapping this module manages, because voxring-core's `Ring`
//! and voxring-linux's `Segment`/futex waiter were not committed when this benchmark was
//! written. Switch them to `voxring_core::Ring` + `voxring_linux` segments once those land, so
//! the benchmark measures the library itself. The protocol here is the one the library uses
//! (publish index with Release, park flag + futex word, wake only when the peer is parked).
//!
//! The mapping is a `memfd` handed to the child by descriptor inheritance, so nothing is ever
//! created in `/dev/shm` and nothing can be left behind.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use anyhow::{Context, bail};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;

use super::measure::now_ns;
use super::{PEER_TIMEOUT_NS, Received, Rx, Tx};

/// Slots in the ring (the benchmark has one message in flight; 4 leaves room for a real ring).
const SLOTS: u32 = 4;
/// Where the ring's slots start in the mapping.
const SLOTS_OFFSET: usize = 4096;
/// Bytes of metadata in front of each slot's payload.
const META: usize = 64;

// Fixed offsets of the control words, one cache line each (no false sharing).
const PING_SEQ: usize = 0;
const PING_STAMP: usize = 8;
const PONG_SEQ: usize = 64;
const WRITE_IDX: usize = 128;
const CONSUMER_PARKED: usize = 192;
const READ_IDX: usize = 256;
const PRODUCER_PARKED: usize = 320;

fn slot_stride(payload: usize) -> usize {
    META + payload.div_ceil(64) * 64
}

/// Bytes of mapping a run with this payload needs.
pub fn mapping_len(payload: usize) -> usize {
    SLOTS_OFFSET + SLOTS as usize * slot_stride(payload)
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

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= self.len);
        // SAFETY: in bounds and 4-aligned (checked above; the mapping is page-aligned); the
        // mapping lives as long as `self`; AtomicU32 has the layout of u32 and every bit pattern
        // is valid.
        unsafe { &*self.ptr.add(offset).cast::<AtomicU32>() }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.len);
        // SAFETY: in bounds and 8-aligned (checked above); lives as long as `self`; any bit
        // pattern is a valid u64.
        unsafe { &*self.ptr.add(offset).cast::<AtomicU64>() }
    }

    /// Writes `v` at `offset` (payload bytes; ordered by the Release publish that follows).
    fn write_u64(&self, offset: usize, v: u64) {
        assert!(offset + 8 <= self.len);
        // SAFETY: in bounds (checked above); unaligned write of plain bytes into our mapping.
        unsafe { self.ptr.add(offset).cast::<u64>().write_unaligned(v) }
    }

    fn read_u64(&self, offset: usize) -> u64 {
        assert!(offset + 8 <= self.len);
        // SAFETY: in bounds (checked above); any bit pattern is a valid u64. The peer may write
        // concurrently only if it breaks the protocol; the value is then checked, never trusted.
        unsafe { self.ptr.add(offset).cast::<u64>().read_volatile() }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping created in `map`, and no reference into it
        // outlives `self` (all accessors borrow `self`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

/// How a side waits for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Busy-poll the word.
    Spin,
    /// Set a parked flag, re-check, `futex_wait` on the word (shared, not PRIVATE: the peer is
    /// another process).
    Park,
}

/// Waits until `word` differs from `from`; returns the new value. Gives up after
/// [`PEER_TIMEOUT_NS`] without change (the peer died or hung).
fn wait_change(
    word: &AtomicU32,
    from: u32,
    parked: &AtomicU32,
    mode: WaitMode,
) -> anyhow::Result<u32> {
    let deadline = now_ns() + PEER_TIMEOUT_NS;
    let mut spins: u32 = 0;
    loop {
        // Acquire: pairs with the peer's SeqCst (release) store of `word` after it wrote the data.
        let v = word.load(Ordering::Acquire);
        if v != from {
            return Ok(v);
        }
        match mode {
            WaitMode::Spin => {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(65536) && now_ns() > deadline {
                    bail!("the peer process stopped answering (no progress for 10 s)");
                }
            }
            WaitMode::Park => {
                // SeqCst store then SeqCst load: pairs with the peer's SeqCst store of `word` and
                // SeqCst load of `parked` (Dekker): either the peer sees us parked and wakes us,
                // or we see its new value here and do not sleep.
                parked.store(1, Ordering::SeqCst);
                if word.load(Ordering::SeqCst) != from {
                    parked.store(0, Ordering::Relaxed);
                    continue;
                }
                let timeout = rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 100_000_000,
                };
                // EAGAIN (value already changed), ETIMEDOUT and EINTR all mean: re-check.
                let _ = futex::wait(word, futex::Flags::empty(), from, Some(&timeout));
                parked.store(0, Ordering::Relaxed);
                if now_ns() > deadline {
                    bail!("the peer process stopped answering (no wake-up for 10 s)");
                }
            }
        }
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

fn slot_offset(idx: u32, payload: usize) -> usize {
    SLOTS_OFFSET + (idx % SLOTS) as usize * slot_stride(payload)
}

/// Producer side of `shm-spin` / `shm-park`.
#[derive(Debug)]
pub struct RingTx {
    pub shared: Shared,
    pub payload: usize,
    pub mode: WaitMode,
    /// Next write index (wrapping).
    pub w: u32,
    /// futex wakes issued (the only syscall this side's send path can make).
    pub wakes: u64,
}

impl Tx for RingTx {
    fn prepare(&mut self, seq: u64) -> anyhow::Result<()> {
        // Acquire: pairs with the consumer's SeqCst (release) store of READ_IDX; the slot we
        // are about to write has been released by it.
        let r = self.shared.u32_at(READ_IDX).load(Ordering::Acquire);
        if self.w.wrapping_sub(r) >= SLOTS {
            bail!("ring full: the consumer did not release its slots (protocol error)");
        }
        let slot = slot_offset(self.w, self.payload);
        // The payload is written in place (zero copy); only its last word changes per message.
        self.shared.write_u64(slot + META + self.payload - 8, seq);
        self.shared.u64_at(slot).store(seq, Ordering::Relaxed);
        self.shared
            .u64_at(slot + 16)
            .store(self.payload as u64, Ordering::Relaxed);
        Ok(())
    }
    fn send(&mut self, _seq: u64) -> anyhow::Result<()> {
        let slot = slot_offset(self.w, self.payload);
        self.shared
            .u64_at(slot + 8)
            .store(now_ns(), Ordering::Relaxed);
        self.w = self.w.wrapping_add(1);
        // SeqCst (a release store): publishes the slot; pairs with the consumer's Acquire load
        // in `wait_change`, and with its SeqCst re-check after setting CONSUMER_PARKED.
        self.shared
            .u32_at(WRITE_IDX)
            .store(self.w, Ordering::SeqCst);
        // SeqCst: pairs with the consumer's SeqCst store of CONSUMER_PARKED (see wait_change).
        if self.mode == WaitMode::Park
            && self.shared.u32_at(CONSUMER_PARKED).load(Ordering::SeqCst) != 0
        {
            self.wakes += 1;
            futex::wake(self.shared.u32_at(WRITE_IDX), futex::Flags::empty(), 1)
                .context("futex wake of the consumer")?;
        }
        Ok(())
    }
    fn wait_ack(&mut self, _seq: u64) -> anyhow::Result<()> {
        let prev = self.w.wrapping_sub(1);
        let r = wait_change(
            self.shared.u32_at(READ_IDX),
            prev,
            self.shared.u32_at(PRODUCER_PARKED),
            self.mode,
        )?;
        if r != self.w {
            bail!(
                "the consumer released to index {r}, expected {}: protocol error",
                self.w
            );
        }
        Ok(())
    }
    fn own_syscalls(&self) -> Option<u64> {
        Some(self.wakes)
    }
}

/// Consumer side of `shm-spin` / `shm-park`.
#[derive(Debug)]
pub struct RingRx {
    pub shared: Shared,
    pub payload: usize,
    pub mode: WaitMode,
    /// Next read index (wrapping).
    pub r: u32,
    pub next_seq: u64,
}

impl Rx for RingRx {
    fn recv(&mut self) -> anyhow::Result<Received> {
        let w = wait_change(
            self.shared.u32_at(WRITE_IDX),
            self.r,
            self.shared.u32_at(CONSUMER_PARKED),
            self.mode,
        )?;
        let recv_ns = now_ns();
        // Values read from the shared mapping are untrusted: range-check them.
        let avail = w.wrapping_sub(self.r);
        if avail == 0 || avail > SLOTS {
            bail!(
                "the producer published index {w} while we read {}: corrupt ring",
                self.r
            );
        }
        let slot = slot_offset(self.r, self.payload);
        let seq = self.shared.u64_at(slot).load(Ordering::Relaxed);
        let len = self.shared.u64_at(slot + 16).load(Ordering::Relaxed);
        if seq != self.next_seq || len != self.payload as u64 {
            bail!(
                "slot holds seq {seq} len {len}, expected seq {} len {}: corrupt ring",
                self.next_seq,
                self.payload
            );
        }
        let stamp_ns = self.shared.u64_at(slot + 8).load(Ordering::Relaxed);
        Ok(Received {
            seq,
            stamp_ns,
            recv_ns,
        })
    }
    fn finish(&mut self, msg: &Received) -> anyhow::Result<()> {
        let slot = slot_offset(self.r, self.payload);
        let last = self.shared.read_u64(slot + META + self.payload - 8);
        if last != msg.seq {
            bail!(
                "payload of message {} ends with {last}: torn or misplaced frame",
                msg.seq
            );
        }
        self.r = self.r.wrapping_add(1);
        self.next_seq += 1;
        // SeqCst (a release store): returns the slot; pairs with the producer's Acquire load in
        // `prepare`/`wait_change` and its SeqCst re-check after setting PRODUCER_PARKED.
        self.shared.u32_at(READ_IDX).store(self.r, Ordering::SeqCst);
        // SeqCst: pairs with the producer's SeqCst store of PRODUCER_PARKED.
        if self.mode == WaitMode::Park
            && self.shared.u32_at(PRODUCER_PARKED).load(Ordering::SeqCst) != 0
        {
            futex::wake(self.shared.u32_at(READ_IDX), futex::Flags::empty(), 1)
                .context("futex wake of the producer")?;
        }
        Ok(())
    }
}
