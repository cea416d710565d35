//! Cycle fence: the activation-record pattern of JACK and PipeWire.
//!
//! Each cycle the driver (the sink, or whoever owns the clock) *arms* the fence with the set of
//! agents that must process this cycle's frame and a deadline. Each agent marks the cycle done
//! when its part is written; the agent whose mark completes the set is told it was **last**
//! and wakes the sink. Marks after the deadline are counted per agent as *late*; agents that had
//! not marked at all when the next cycle was armed are counted per agent as *missed*, and their
//! stale marks for the old cycle are refused.
//!
//! The whole cycle state is one 64-bit word — the low 32 bits of the cycle number (its *tag*)
//! and a 32-bit mask of the agents still pending — changed only by `swap` (arm) and
//! `compare_exchange` (done), so exactly one mark clears the last bit, a mark can never land in
//! the wrong cycle, and no completion is lost. Up to [`MAX_AGENTS`] (32) agents per fence.
//!
//! The struct is `#[repr(C)]`, contains only atomics, and can live in a shared-memory region
//! ([`CycleFence::init_in`], [`CycleFence::attach`]; layout in `core/LAYOUT.md`, section
//! "Cycle fence") or in-process (a `static`, a field, the stack).
//!
//! ```
//! use voxring_core::fence::CycleFence;
//!
//! let fence = CycleFence::new();
//! // Cycle 1: agents 0 and 2 must finish by t = 10 ms.
//! fence.arm(1, 0b101, 10_000_000).unwrap();
//! let a = fence.done(0, 1, 4_000_000).unwrap();
//! assert!(!a.last && !a.late);
//! let b = fence.done(2, 1, 12_000_000).unwrap();
//! assert!(b.last && b.late);          // agent 2 wakes the sink, 2 ms late
//! assert_eq!(b.late_by_ns, 2_000_000);
//! assert_eq!(fence.late_count(2), Some(1));
//! // Cycle 2: agent 2 never finishes; re-arming counts it as missed.
//! fence.arm(2, 0b101, 20_000_000).unwrap();
//! let _ = fence.done(0, 2, 15_000_000).unwrap();
//! let armed = fence.arm(3, 0b101, 30_000_000).unwrap();
//! assert_eq!(armed.missed, 0b100);
//! assert!(fence.done(2, 2, 31_000_000).is_err()); // stale mark for cycle 2
//! ```

#[cfg(not(voxring_loom))]
use crate::region::check_stamp;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// The most agents one fence can wait for (bits of the pending mask).
pub const MAX_AGENTS: usize = 32;

/// `b"VXFENCE\0"` as a little-endian `u64`: the first eight bytes of a fence region.
pub const FENCE_MAGIC: u64 = u64::from_le_bytes(*b"VXFENCE\0");

/// Version of the fence's binary layout (`core/LAYOUT.md`, "Cycle fence").
pub const FENCE_VERSION: u32 = 1;

/// How many times [`CycleFence::done`] retries its compare-exchange before giving up. Honest
/// agents can make it fail at most once per other agent per cycle (31), and a re-arm ends the
/// loop at once (the mark is then stale), so only a peer hammering the word runs into it.
pub const DONE_RETRIES: u32 = 64;

/// A deadline meaning "none": no mark is ever late.
pub const NO_DEADLINE: u64 = u64::MAX;

const MASK_BITS: u64 = 0xffff_ffff;

const fn pack(tag: u32, pending: u32) -> u64 {
    ((tag as u64) << 32) | pending as u64
}

const fn tag_of(state: u64) -> u32 {
    (state >> 32) as u32
}

const fn pending_of(state: u64) -> u32 {
    (state & MASK_BITS) as u32
}

/// A per-cycle completion fence. See the [module docs](self).
///
/// One driver arms it (arming from two threads at once is a logic error: cycles may then be
/// skipped, but nothing unsafe happens); any number of agents mark it done concurrently.
///
/// ```
/// use voxring_core::fence::CycleFence;
/// let fence = CycleFence::new();
/// // The driver arms cycle 1 for agents 0 and 1, due at t = 1000 ns.
/// fence.arm(1, 0b11, 1_000).unwrap();
/// assert!(!fence.done(0, 1, 500).unwrap().last);
/// let c = fence.done(1, 1, 1_200).unwrap();
/// assert!(c.last && c.late); // agent 1 finished the cycle, 200 ns late
/// assert_eq!(c.late_by_ns, 200);
/// assert!(fence.is_complete(1));
/// assert_eq!(fence.late_count(1), Some(1));
/// ```
#[repr(C, align(128))]
pub struct CycleFence {
    /// [`FENCE_MAGIC`]; written last by `init_in` (Release), read by `attach` (Acquire).
    magic: AtomicU64,
    /// [`FENCE_VERSION`].
    version: AtomicU32,
    /// [`MAX_AGENTS`]: the length of the two counter arrays.
    agents: AtomicU32,
    /// Full number of the cycle armed last (only the armer writes it).
    armed_cycle: AtomicU64,
    /// Deadline of the cycles with even / odd tags, ns on the agents' common clock.
    deadline: [AtomicU64; 2],
    /// `tag << 32 | pending mask`.
    state: AtomicU64,
    /// Mask armed for the current cycle (informational; written by the armer).
    required: AtomicU32,
    _reserved: AtomicU32,
    /// Per agent: marks that arrived after their cycle's deadline (wrapping).
    late: [AtomicU32; MAX_AGENTS],
    /// Per agent: cycles re-armed before the agent marked them (wrapping).
    missed: [AtomicU32; MAX_AGENTS],
}

impl core::fmt::Debug for CycleFence {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = self.state.load(Ordering::Relaxed);
        f.debug_struct("CycleFence")
            .field("armed_cycle", &self.armed_cycle.load(Ordering::Relaxed))
            .field("tag", &tag_of(s))
            .field("pending", &format_args!("{:#x}", pending_of(s)))
            .finish_non_exhaustive()
    }
}

/// What [`CycleFence::arm`] found when it armed a new cycle.
///
/// ```
/// use voxring_core::fence::CycleFence;
/// let fence = CycleFence::new();
/// fence.arm(1, 0b11, 1_000).unwrap();
/// fence.done(0, 1, 10).unwrap();
/// // Agent 1 never marked cycle 1: arming cycle 2 counts it as missed.
/// assert_eq!(fence.arm(2, 0b11, 2_000).unwrap().missed, 0b10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Armed {
    /// Agents of the previous cycle that had not marked it done (each counted as missed).
    pub missed: u32,
}

/// What an agent's [`CycleFence::done`] mark did.
///
/// ```
/// use voxring_core::fence::CycleFence;
/// let fence = CycleFence::new();
/// fence.arm(7, 0b1, 100).unwrap();
/// let c = fence.done(0, 7, 50).unwrap();
/// assert!(c.last && !c.late && c.late_by_ns == 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the agent that finishes last must wake the sink"]
pub struct Completion {
    /// This mark completed the cycle: the caller must wake the sink.
    pub last: bool,
    /// The mark came after the cycle's deadline (and was counted as late for this agent).
    pub late: bool,
    /// How far past the deadline, ns (0 when on time).
    pub late_by_ns: u64,
}

/// Why [`CycleFence::arm`] refused.
///
/// ```
/// use voxring_core::fence::{ArmError, CycleFence};
/// let fence = CycleFence::new();
/// assert_eq!(fence.arm(1, 0, 10), Err(ArmError::NoAgents));
/// fence.arm(5, 1, 10).unwrap();
/// assert_eq!(fence.arm(5, 1, 20), Err(ArmError::NotNewer { cycle: 5, armed: 5 }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArmError {
    /// The required-agents mask was 0: a cycle nobody has to finish would never complete.
    NoAgents,
    /// Cycle numbers must increase; `cycle` is not after the one armed last.
    NotNewer {
        /// The cycle the caller tried to arm.
        cycle: u64,
        /// The cycle armed last.
        armed: u64,
    },
}

error_message!(ArmError, |self, f| {
    match self {
        Self::NoAgents => write!(
            f,
            "cannot arm a cycle with no required agents: the mask was 0; pass one bit per \
             agent that must finish the frame"
        ),
        Self::NotNewer { cycle, armed } => write!(
            f,
            "cannot arm cycle {cycle}: cycle {armed} was already armed and cycle numbers \
             must increase; use the frame sequence number, or reset() the fence if its \
             owner restarted"
        ),
    }
});

/// Why [`CycleFence::done`] refused a mark.
///
/// ```
/// use voxring_core::fence::{CycleFence, DoneError};
/// let fence = CycleFence::new();
/// fence.arm(3, 0b1, 10).unwrap();
/// assert_eq!(fence.done(0, 4, 5), Err(DoneError::NotArmed { cycle: 4 }));
/// fence.done(0, 3, 5).unwrap();
/// assert_eq!(fence.done(0, 3, 6), Err(DoneError::NotPending { agent: 0, cycle: 3 }));
/// assert!(matches!(fence.done(99, 3, 6), Err(DoneError::AgentOutOfRange { agent: 99 })));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneError {
    /// The agent index is not below [`MAX_AGENTS`].
    AgentOutOfRange {
        /// The index given.
        agent: usize,
    },
    /// The fence has moved on to a later cycle; the mark was for an old one (the agent was
    /// counted as missed when the later cycle was armed, if it was required).
    Stale {
        /// The cycle the mark was for.
        cycle: u64,
    },
    /// That cycle has not been armed yet.
    NotArmed {
        /// The cycle the mark was for.
        cycle: u64,
    },
    /// The agent is not required in this cycle, or already marked it done.
    NotPending {
        /// The agent.
        agent: usize,
        /// The cycle.
        cycle: u64,
    },
    /// The state word kept changing under us for [`DONE_RETRIES`] attempts: only a peer
    /// writing it in a loop does that. The mark was not made.
    Contended,
}

error_message!(DoneError, |self, f| {
    match self {
        Self::AgentOutOfRange { agent } => write!(
            f,
            "agent index {agent} is out of range: a fence has {MAX_AGENTS} agent slots \
             (0..{MAX_AGENTS}); use the index the driver assigned"
        ),
        Self::Stale { cycle } => write!(
            f,
            "mark for cycle {cycle} refused: a later cycle is already armed (this agent \
             missed its deadline by a whole cycle); drop the frame and catch up"
        ),
        Self::NotArmed { cycle } => write!(
            f,
            "mark for cycle {cycle} refused: that cycle is not armed yet; an agent must \
             mark the cycle of the frame it processed"
        ),
        Self::NotPending { agent, cycle } => write!(
            f,
            "agent {agent} is not pending in cycle {cycle}: it was not required or has \
             already marked it done; mark each cycle once"
        ),
        Self::Contended => write!(
            f,
            "the fence state changed on every one of {DONE_RETRIES} attempts: another \
             process is writing it in a loop; treat that peer as faulty"
        ),
    }
});

/// Why a region could not be initialised or attached: the error every shared object
/// reports (see [`crate::region`]).
pub use crate::region::RegionError;

impl Default for CycleFence {
    fn default() -> Self {
        Self::new()
    }
}

impl CycleFence {
    /// Size in bytes of a fence in a shared region.
    pub const REGION_SIZE: usize = core::mem::size_of::<Self>();
    /// Alignment in bytes a fence region must have.
    pub const REGION_ALIGN: usize = core::mem::align_of::<Self>();

    /// A fence with nothing armed (the first cycle may be any number from 1 up).
    #[cfg(not(voxring_loom))]
    pub const fn new() -> Self {
        Self {
            magic: AtomicU64::new(FENCE_MAGIC),
            version: AtomicU32::new(FENCE_VERSION),
            agents: AtomicU32::new(MAX_AGENTS as u32),
            armed_cycle: AtomicU64::new(0),
            deadline: [const { AtomicU64::new(NO_DEADLINE) }; 2],
            state: AtomicU64::new(0),
            required: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
            late: [const { AtomicU32::new(0) }; MAX_AGENTS],
            missed: [const { AtomicU32::new(0) }; MAX_AGENTS],
        }
    }

    /// A fence with nothing armed (the first cycle may be any number from 1 up).
    #[cfg(voxring_loom)]
    pub fn new() -> Self {
        Self {
            magic: AtomicU64::new(FENCE_MAGIC),
            version: AtomicU32::new(FENCE_VERSION),
            agents: AtomicU32::new(MAX_AGENTS as u32),
            armed_cycle: AtomicU64::new(0),
            deadline: core::array::from_fn(|_| AtomicU64::new(NO_DEADLINE)),
            state: AtomicU64::new(0),
            required: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
            late: core::array::from_fn(|_| AtomicU32::new(0)),
            missed: core::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// Arms `cycle` (greater than the cycle armed last; cycles start at 1) with the agents of
    /// `required` (bit i = agent i) and a deadline (ns on the agents' clock; [`NO_DEADLINE`]
    /// for none). Agents of the previous cycle that had not marked it are counted as missed
    /// and returned; their late marks will be refused as stale. Wait-free.
    ///
    /// # Errors
    /// [`ArmError::NoAgents`] for an empty mask, [`ArmError::NotNewer`] when `cycle` does not
    /// increase.
    pub fn arm(&self, cycle: u64, required: u32, deadline_ns: u64) -> Result<Armed, ArmError> {
        if required == 0 {
            return Err(ArmError::NoAgents);
        }
        // Relaxed: only the armer writes `armed_cycle`; a hostile value only makes us refuse.
        let armed = self.armed_cycle.load(Ordering::Relaxed);
        if cycle <= armed {
            return Err(ArmError::NotNewer { cycle, armed });
        }
        let tag = cycle as u32;
        // Relaxed: published by the Release half of the `swap` below. The slot written here
        // belongs to tag-2; an agent still reading it for tag-2 would have had to succeed
        // with its CAS before our previous swap (AcqRel, which acquired that CAS's Release),
        // so its read happens-before this store and cannot see it.
        self.deadline[(tag & 1) as usize].store(deadline_ns, Ordering::Relaxed);
        self.armed_cycle.store(cycle, Ordering::Relaxed);
        self.required.store(required, Ordering::Relaxed);
        // AcqRel: Release publishes the deadline to agents' Acquire loads of `state`; Acquire
        // pairs with agents' Release CAS in `done`, ordering their deadline reads before our
        // next deadline store into the same slot (see above).
        let old = self.state.swap(pack(tag, required), Ordering::AcqRel);
        let missed = pending_of(old);
        let mut bits = missed;
        while bits != 0 {
            let agent = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // Relaxed: a statistics counter; no other data depends on it.
            self.missed[agent].fetch_add(1, Ordering::Relaxed);
        }
        Ok(Armed { missed })
    }

    /// Agent `agent` has finished its part of `cycle` at time `now_ns`. Exactly one mark per
    /// cycle — the one that clears the last pending bit — returns `last: true`; its caller
    /// must wake the sink. Everything the agent wrote before this call happens-before the
    /// sink's (or the last agent's) reads after it observes completion. Lock-free, bounded.
    ///
    /// # Errors
    /// See [`DoneError`]: out-of-range agent, stale or not-yet-armed cycle, agent not pending,
    /// or a state word changed under us [`DONE_RETRIES`] times.
    pub fn done(&self, agent: usize, cycle: u64, now_ns: u64) -> Result<Completion, DoneError> {
        if agent >= MAX_AGENTS {
            return Err(DoneError::AgentOutOfRange { agent });
        }
        let bit = 1u32 << agent;
        let want = cycle as u32;
        // Acquire: pairs with `arm`'s Release swap, so the deadline of this cycle is visible.
        let mut state = self.state.load(Ordering::Acquire);
        for _ in 0..DONE_RETRIES {
            let tag = tag_of(state);
            if tag != want {
                // Tags are the low 32 bits of increasing cycle numbers: the wrapping
                // difference tells old from not-yet-armed.
                return Err(if (want.wrapping_sub(tag) as i32) < 0 {
                    DoneError::Stale { cycle }
                } else {
                    DoneError::NotArmed { cycle }
                });
            }
            let pending = pending_of(state);
            if pending & bit == 0 {
                return Err(DoneError::NotPending { agent, cycle });
            }
            // Relaxed: ordered after the Acquire load (or Acquire failed CAS) that showed this
            // tag, which the arming swap's Release published.
            let deadline = self.deadline[(tag & 1) as usize].load(Ordering::Relaxed);
            let next = pack(tag, pending & !bit);
            // Success AcqRel: Release publishes this agent's output (and orders the deadline
            // read above before the next arm's store into the slot); Acquire makes the last
            // agent see every earlier agent's output, since each earlier CAS released it into
            // this word's release sequence. Failure Acquire: as for the first load.
            match self
                .state
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let late_by_ns = now_ns.saturating_sub(deadline);
                    let late = late_by_ns > 0;
                    if late {
                        // Relaxed: a statistics counter.
                        self.late[agent].fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(Completion {
                        last: pending & !bit == 0,
                        late,
                        late_by_ns,
                    });
                }
                Err(actual) => state = actual,
            }
            crate::sync::spin_hint();
        }
        Err(DoneError::Contended)
    }

    /// `true` when `cycle` is armed and every required agent has marked it. Acquire: a `true`
    /// here makes every agent's output visible to the caller (pairs with their Release CAS).
    pub fn is_complete(&self, cycle: u64) -> bool {
        let s = self.state.load(Ordering::Acquire);
        tag_of(s) == cycle as u32 && pending_of(s) == 0 && self.armed_cycle() == cycle
    }

    /// The cycle armed last (0: none yet).
    pub fn armed_cycle(&self) -> u64 {
        // Relaxed: informational.
        self.armed_cycle.load(Ordering::Relaxed)
    }

    /// The agents of the current cycle that have not marked it yet.
    pub fn pending(&self) -> u32 {
        // Relaxed: a snapshot for monitoring.
        pending_of(self.state.load(Ordering::Relaxed))
    }

    /// The agents required in the current cycle.
    pub fn required(&self) -> u32 {
        // Relaxed: informational.
        self.required.load(Ordering::Relaxed)
    }

    /// The agents still pending when `now_ns` is past the current cycle's deadline (0 when
    /// on time or complete): the driver's early warning before it re-arms.
    pub fn overdue(&self, now_ns: u64) -> u32 {
        // Acquire: pairs with `arm`'s Release swap (deadline of this tag visible).
        let s = self.state.load(Ordering::Acquire);
        // Relaxed: ordered by the Acquire load above.
        let deadline = self.deadline[(tag_of(s) & 1) as usize].load(Ordering::Relaxed);
        if now_ns > deadline { pending_of(s) } else { 0 }
    }

    /// Marks agent `agent` made after their cycle's deadline; `None` for an index out of range.
    pub fn late_count(&self, agent: usize) -> Option<u32> {
        // Relaxed: statistics.
        self.late.get(agent).map(|c| c.load(Ordering::Relaxed))
    }

    /// Cycles re-armed before agent `agent` had marked them; `None` for an index out of range.
    pub fn missed_count(&self, agent: usize) -> Option<u32> {
        // Relaxed: statistics.
        self.missed.get(agent).map(|c| c.load(Ordering::Relaxed))
    }

    /// Returns the fence to its initial state (nothing armed, counters zero). For the owner,
    /// after a restart or when a hostile peer left `armed_cycle` at a huge value; marks racing
    /// with it may be refused as `NotArmed`.
    pub fn reset(&self) {
        // Relaxed stores then a Release swap that publishes them, as in `arm`.
        for c in self.late.iter().chain(self.missed.iter()) {
            c.store(0, Ordering::Relaxed);
        }
        for d in &self.deadline {
            d.store(NO_DEADLINE, Ordering::Relaxed);
        }
        self.required.store(0, Ordering::Relaxed);
        self.armed_cycle.store(0, Ordering::Relaxed);
        // Release: pairs with the Acquire loads in `done` / `is_complete` / `overdue`.
        self.state.swap(0, Ordering::AcqRel);
    }
}

#[cfg(not(voxring_loom))]
impl CycleFence {
    fn check_region(ptr: *const u8, len: usize) -> Result<(), RegionError> {
        crate::region::check_region(ptr, len, Self::REGION_ALIGN, Self::REGION_SIZE)
    }

    /// Creates a fresh fence in the first [`REGION_SIZE`](Self::REGION_SIZE) bytes at `ptr`
    /// (overwriting them) and returns it. The magic is written last (Release), so a peer's
    /// [`attach`](Self::attach) (Acquire) sees a complete fence or none.
    ///
    /// # Errors
    /// [`RegionError::Null`], [`RegionError::Misaligned`] (needs
    /// [`REGION_ALIGN`](Self::REGION_ALIGN)), [`RegionError::TooSmall`].
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for all of `'a`, and nothing in
    /// this process may access those bytes other than through the returned reference during
    /// `'a` (other processes may: every field is atomic and every bit pattern is valid).
    pub unsafe fn init_in<'a>(ptr: *mut u8, len: usize) -> Result<&'a Self, RegionError> {
        Self::check_region(ptr, len)?;
        let fence = ptr.cast::<Self>();
        let fresh = Self::new();
        // Relaxed: not yet published; the Release store of the magic below publishes it.
        fresh.magic.store(0, Ordering::Relaxed);
        // SAFETY: checked non-null, aligned and long enough; the caller guarantees the bytes
        // are ours to write for 'a. `write` does not read or drop the old bytes.
        unsafe { fence.write(fresh) };
        // SAFETY: just initialised; the caller guarantees validity and exclusivity for 'a.
        let fence = unsafe { &*fence };
        // Release: pairs with the Acquire load of the magic in `attach`.
        fence.magic.store(FENCE_MAGIC, Ordering::Release);
        Ok(fence)
    }

    /// Attaches to a fence another process (or this one) created with
    /// [`init_in`](Self::init_in), after checking the region and the magic, version and agent
    /// count. Every other field is an integer whose every value is handled, so a hostile peer
    /// can make marks fail or be misreported, never read or write out of the region.
    ///
    /// # Errors
    /// The [`RegionError`] of the first check that failed.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes (atomic RMWs write) of `len` bytes for all of
    /// `'a`, and this process must not access those bytes non-atomically during `'a`.
    pub unsafe fn attach<'a>(ptr: *mut u8, len: usize) -> Result<&'a Self, RegionError> {
        Self::check_region(ptr, len)?;
        // SAFETY: checked non-null, aligned, long enough; the caller guarantees validity for
        // 'a. Every field is an atomic integer, valid for any bit pattern.
        let fence = unsafe { &*ptr.cast::<Self>() };
        check_stamp((&fence.magic, FENCE_MAGIC), (&fence.version, FENCE_VERSION))?;
        let agents = fence.agents.load(Ordering::Relaxed);
        if agents != MAX_AGENTS as u32 {
            return Err(RegionError::Mismatch {
                field: "fence agent count",
                found: u64::from(agents),
                expected: MAX_AGENTS as u64,
            });
        }
        Ok(fence)
    }
}

// Not under loom: the inherent `init_in`/`attach` exist only for byte regions (loom's atomics
// are objects, not bytes).
#[cfg(not(voxring_loom))]
// SAFETY: `init_in` and `attach` below are the inherent ones: they check null, alignment
// and `REGION_SIZE` before touching the region, touch only `REGION_SIZE` bytes, and every
// field is an atomic integer (valid for any bit pattern a peer writes).
unsafe impl crate::region::InRegion for CycleFence {
    type Init = ();
    type Handle<'a> = &'a Self;
    const ALIGN: usize = Self::REGION_ALIGN;

    fn size_for(_: &()) -> Result<usize, RegionError> {
        Ok(Self::REGION_SIZE)
    }

    unsafe fn init_in<'a>(ptr: *mut u8, len: usize, _: ()) -> Result<&'a Self, RegionError> {
        // SAFETY: the caller's promise is the inherent function's.
        unsafe { Self::init_in(ptr, len) }
    }

    unsafe fn attach<'a>(ptr: *mut u8, len: usize) -> Result<&'a Self, RegionError> {
        // SAFETY: the caller's promise is the inherent function's.
        unsafe { Self::attach(ptr, len) }
    }
}

// The byte layout documented in core/LAYOUT.md ("Cycle fence"); loom's atomics differ in size.
#[cfg(not(voxring_loom))]
const _: () = {
    assert_layout!(CycleFence, size 384, {
        magic: 0, version: 8, agents: 12, armed_cycle: 16, deadline: 24, state: 40, required: 48,
        _reserved: 52, late: 56, missed: 184,
    });
    assert!(core::mem::align_of::<CycleFence>() == 128);
};

#[cfg(all(test, not(voxring_loom)))]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::vec::Vec;

    #[test]
    fn last_of_three_and_lateness() {
        let f = CycleFence::new();
        assert_eq!(f.arm(1, 0b111, 100), Ok(Armed { missed: 0 }));
        assert_eq!(f.pending(), 0b111);
        assert_eq!(f.required(), 0b111);
        assert!(!f.is_complete(1));
        let a = f.done(1, 1, 50).unwrap();
        assert_eq!((a.last, a.late, a.late_by_ns), (false, false, 0));
        let b = f.done(0, 1, 100).unwrap();
        assert_eq!(
            (b.last, b.late),
            (false, false),
            "at the deadline is on time"
        );
        assert_eq!(f.overdue(150), 0b100);
        assert_eq!(f.overdue(100), 0);
        let c = f.done(2, 1, 150).unwrap();
        assert_eq!((c.last, c.late, c.late_by_ns), (true, true, 50));
        assert!(f.is_complete(1));
        assert_eq!(f.overdue(1_000), 0);
        assert_eq!(f.late_count(2), Some(1));
        assert_eq!(f.late_count(0), Some(0));
        assert_eq!(f.late_count(32), None);
    }

    #[test]
    fn refusals() {
        let f = CycleFence::new();
        assert_eq!(f.done(0, 1, 0), Err(DoneError::NotArmed { cycle: 1 }));
        assert_eq!(
            f.arm(0, 1, 0),
            Err(ArmError::NotNewer { cycle: 0, armed: 0 })
        );
        assert_eq!(f.arm(5, 0, 0), Err(ArmError::NoAgents));
        f.arm(5, 0b1, NO_DEADLINE).unwrap();
        assert_eq!(
            f.arm(5, 1, 0),
            Err(ArmError::NotNewer { cycle: 5, armed: 5 })
        );
        assert_eq!(
            f.done(32, 5, 0),
            Err(DoneError::AgentOutOfRange { agent: 32 })
        );
        assert_eq!(
            f.done(1, 5, 0),
            Err(DoneError::NotPending { agent: 1, cycle: 5 })
        );
        assert_eq!(f.done(0, 6, 0), Err(DoneError::NotArmed { cycle: 6 }));
        assert_eq!(f.done(0, 4, 0), Err(DoneError::Stale { cycle: 4 }));
        let done = f.done(0, 5, u64::MAX).unwrap();
        assert!(done.last && !done.late, "NO_DEADLINE is never late");
        assert_eq!(
            f.done(0, 5, 0),
            Err(DoneError::NotPending { agent: 0, cycle: 5 })
        );
        let msg = std::format!("{}", DoneError::Stale { cycle: 4 });
        assert!(msg.contains("cycle 4"));
    }

    #[test]
    fn rearming_counts_missed_and_rejects_stale_marks() {
        let f = CycleFence::new();
        f.arm(1, 0b11, 10).unwrap();
        let _ = f.done(0, 1, 5).unwrap();
        assert_eq!(f.arm(2, 0b11, 20).unwrap().missed, 0b10);
        assert_eq!(f.missed_count(1), Some(1));
        assert_eq!(f.missed_count(0), Some(0));
        assert_eq!(f.done(1, 1, 15), Err(DoneError::Stale { cycle: 1 }));
        // The new cycle has its own deadline.
        assert!(!f.done(1, 2, 15).unwrap().late);
        assert!(f.done(0, 2, 25).unwrap().late);
        f.reset();
        assert_eq!(f.armed_cycle(), 0);
        assert_eq!(f.missed_count(1), Some(0));
        f.arm(1, 1, 0).unwrap();
    }

    #[test]
    fn tags_wrap_past_32_bits() {
        let f = CycleFence::new();
        let base = (1u64 << 32) - 2;
        for cycle in base..base + 5 {
            f.arm(cycle, 0b1, NO_DEADLINE).unwrap();
            assert_eq!(
                f.done(0, cycle - 1, 0),
                Err(DoneError::Stale { cycle: cycle - 1 })
            );
            assert!(f.done(0, cycle, 0).unwrap().last);
            assert!(f.is_complete(cycle));
        }
    }

    #[test]
    fn threads_exactly_one_last_per_cycle() {
        let f = Arc::new(CycleFence::new());
        let agents = 4usize;
        let cycles = 2_000u64;
        let lasts = Arc::new(AtomicU64::new(0));
        // Each agent marks every cycle once it is armed; the driver re-arms after completion.
        let handles: Vec<_> = (0..agents)
            .map(|a| {
                let f = Arc::clone(&f);
                let lasts = Arc::clone(&lasts);
                std::thread::spawn(move || {
                    for c in 1..=cycles {
                        loop {
                            match f.done(a, c, 0) {
                                Ok(done) => {
                                    if done.last {
                                        lasts.fetch_add(1, Ordering::Relaxed);
                                    }
                                    break;
                                }
                                Err(DoneError::NotArmed { .. }) => std::thread::yield_now(),
                                Err(e) => panic!("agent {a} cycle {c}: {e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for c in 1..=cycles {
            assert_eq!(f.arm(c, (1 << agents) - 1, NO_DEADLINE).unwrap().missed, 0);
            while !f.is_complete(c) {
                std::thread::yield_now();
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(lasts.load(Ordering::Relaxed), cycles);
    }

    #[repr(C, align(128))]
    struct Region([u8; 512]);

    #[test]
    fn region_init_and_attach() {
        let mut region = Region([0; 512]);
        let ptr = region.0.as_mut_ptr();
        // SAFETY: `region` outlives both references and is only used through them here.
        let err = unsafe { CycleFence::attach(ptr, 512) }.unwrap_err();
        assert_eq!(
            err,
            RegionError::BadMagic {
                found: 0,
                expected: FENCE_MAGIC
            }
        );
        // SAFETY: as above.
        let owner = unsafe { CycleFence::init_in(ptr, 512) }.unwrap();
        // SAFETY: as above.
        let peer = unsafe { CycleFence::attach(ptr, 512) }.unwrap();
        owner.arm(1, 0b1, 10).unwrap();
        assert!(peer.done(0, 1, 5).unwrap().last);
        assert!(owner.is_complete(1));
        // SAFETY: `region` holds 512 bytes, more than 385.
        unsafe { crate::region::assert_bad_placements_refused::<CycleFence>(ptr, 384) };
    }

    #[test]
    fn region_header_fields_are_checked() {
        let mut region = Region([0; 512]);
        let ptr = region.0.as_mut_ptr();
        // SAFETY: `region` outlives the references; the raw writes below happen while no
        // reference is in use.
        unsafe {
            CycleFence::init_in(ptr, 512).unwrap();
            crate::region::assert_stamp_checked::<CycleFence>(ptr, 512, FENCE_MAGIC, FENCE_VERSION);
            ptr.add(12).cast::<u32>().write(64);
            assert_eq!(
                CycleFence::attach(ptr, 512).unwrap_err(),
                RegionError::Mismatch {
                    field: "fence agent count",
                    found: 64,
                    expected: MAX_AGENTS as u64
                }
            );
        }
    }

    proptest! {
        /// Hostile state words, deadlines and cycles: every call returns, nothing panics, and
        /// a mark succeeds only for the tag in the word and a bit still pending.
        #[test]
        fn hostile_state_never_panics(
            state in any::<u64>(),
            deadlines in any::<[u64; 2]>(),
            armed in any::<u64>(),
            agent in 0usize..40,
            cycle in any::<u64>(),
            now in any::<u64>(),
        ) {
            let f = CycleFence::new();
            f.state.store(state, Ordering::Relaxed);
            f.deadline[0].store(deadlines[0], Ordering::Relaxed);
            f.deadline[1].store(deadlines[1], Ordering::Relaxed);
            f.armed_cycle.store(armed, Ordering::Relaxed);
            let r = f.done(agent, cycle, now);
            if let Ok(c) = r {
                prop_assert!(agent < MAX_AGENTS);
                prop_assert_eq!(tag_of(state), cycle as u32);
                prop_assert!(pending_of(state) & (1 << agent) != 0);
                prop_assert_eq!(c.last, pending_of(state) & !(1u32 << agent) == 0);
            }
            let _ = f.overdue(now);
            let _ = f.is_complete(cycle);
            let _ = f.arm(cycle, 1, now);
        }

        /// Against a model: random arms and marks keep pending/missed/late counts exact.
        #[test]
        fn matches_a_simple_model(ops in proptest::collection::vec((0u8..4, 0usize..4, 0u64..3, 0u64..200), 1..200)) {
            let f = CycleFence::new();
            let mut cycle = 0u64;
            let mut pending = 0u32;
            let mut deadline = 0u64;
            let mut missed = [0u32; 4];
            let mut late = [0u32; 4];
            for (op, agent, back, now) in ops {
                if op == 0 || cycle == 0 {
                    let req = ((now as u32) % 15) + 1;
                    cycle += 1;
                    let armed = f.arm(cycle, req, 100).unwrap();
                    prop_assert_eq!(armed.missed, pending);
                    for (a, m) in missed.iter_mut().enumerate() {
                        if pending & (1 << a) != 0 { *m += 1; }
                    }
                    pending = req;
                    deadline = 100;
                } else {
                    let c = cycle.saturating_sub(back);
                    let r = f.done(agent, c, now);
                    if c != cycle {
                        prop_assert_eq!(r, Err(DoneError::Stale { cycle: c }));
                    } else if pending & (1 << agent) == 0 {
                        prop_assert_eq!(r, Err(DoneError::NotPending { agent, cycle: c }));
                    } else {
                        pending &= !(1 << agent);
                        let done = r.unwrap();
                        prop_assert_eq!(done.last, pending == 0);
                        prop_assert_eq!(done.late, now > deadline);
                        if now > deadline { late[agent] += 1; }
                    }
                }
                prop_assert_eq!(f.pending(), pending);
            }
            for a in 0..4 {
                prop_assert_eq!(f.missed_count(a), Some(missed[a]));
                prop_assert_eq!(f.late_count(a), Some(late[a]));
            }
        }
    }
}
