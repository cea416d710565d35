//! loom models of every concurrent protocol in `voxring-core`.
//!
//! The models live in `tests/` and compile only under `--cfg voxring_loom`; run them with
//! `loom-tests/run`, which sets the cfg, its own target dir, `--release` and
//! `LOOM_MAX_PREEMPTIONS`. A plain `cargo test` builds this crate with no models in it.
//!
//! May depend on: `voxring-core` and loom.

#[cfg(voxring_loom)]
pub use explore::{assert_explored_many, check};

/// Running a loom model while counting the interleavings it explored.
///
/// loom can pass silently after a single interleaving (when a spawned thread begins with an
/// atomic load, for one), so every model in this suite goes through [`assert_explored_many`],
/// which fails the test when the model ran only once.
#[cfg(voxring_loom)]
mod explore {
    use std::sync::Arc;
    // A plain std atomic on purpose: the counter lives outside the model (loom's own atomics
    // may only be touched inside `loom::model`), and each call has its own counter, so
    // models running in parallel test threads do not see each other's counts.
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Runs `f` under `loom::model::Builder::new()` (which reads `LOOM_MAX_PREEMPTIONS`,
    /// `LOOM_MAX_BRANCHES`, ... from the environment) and returns how many interleavings
    /// (executions of `f`) loom explored. Panics, like `loom::model`, when a model fails.
    pub fn check<F>(f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        let count = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&count);
        loom::model::Builder::new().check(move || {
            // Relaxed: a plain event counter; loom runs executions one after another and
            // `check` returning (a join of its worker) orders every increment before the load.
            counter.fetch_add(1, Ordering::Relaxed);
            f();
        });
        count.load(Ordering::Relaxed)
    }

    /// Runs the model like [`check`], then panics when loom explored only one interleaving
    /// (the model then proved nothing about concurrency: make both sides spawned threads, or
    /// give the first thread something to race with). Returns the count, and prints it so
    /// `cargo test -- --nocapture` shows how much each model explored.
    pub fn assert_explored_many<F>(name: &str, f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        let n = check(f);
        assert!(
            n > 1,
            "loom model `{name}` explored only {n} interleaving(s): it cannot have tested any \
             race. Spawn both sides as loom threads and make sure they touch shared atomics."
        );
        println!("loom model `{name}`: {n} interleavings explored");
        n
    }
}

/// A futex stand-in for the park/wake models.
///
/// It models a futex faithfully enough to catch a skipped wake call: `wait` checks the word and
/// records the word's wake generation under one lock (the kernel's hash-bucket lock), then
/// blocks on a condition variable until a `wake` call on that word bumps the generation. A
/// word that merely changes does not end the sleep. So a waker that moves the word on but
/// wrongly decides no wake call is needed (core's `SLEEPER` bit, see `voxring_core::wait`)
/// leaves the sleeper blocked, and loom fails the model (deadlock), as it does for a lost
/// wake-up.
#[cfg(voxring_loom)]
pub mod futex {
    use std::sync::Arc;

    use loom::sync::{Condvar, Mutex};
    use voxring_core::{AtomicU32, WaitOutcome, Waiter};

    /// A futex stand-in: wake generations keyed by the word's address, under one lock.
    #[derive(Debug)]
    pub struct FutexModel {
        gens: Mutex<Vec<(usize, u64)>>,
        cv: Condvar,
    }

    impl FutexModel {
        pub fn new() -> Arc<Self> {
            Arc::new(FutexModel {
                gens: Mutex::new(Vec::new()),
                cv: Condvar::new(),
            })
        }
    }

    /// The generation of `word` in `gens` (0 until its first wake).
    fn generation<'a>(gens: &'a mut Vec<(usize, u64)>, word: &AtomicU32) -> &'a mut u64 {
        let addr = word as *const AtomicU32 as usize;
        let i = match gens.iter().position(|&(a, _)| a == addr) {
            Some(i) => i,
            None => {
                gens.push((addr, 0));
                gens.len() - 1
            }
        };
        &mut gens[i].1
    }

    impl Waiter for FutexModel {
        fn wait(&self, word: &AtomicU32, expected: u32, _timeout_ns: Option<u64>) -> WaitOutcome {
            let mut gens = self.gens.lock().unwrap();
            // Acquire: pairs with the waker's Release swap or add of the word. Under the lock,
            // like FUTEX_WAIT's check: a wake that comes after it bumps the generation.
            if word.load(loom::sync::atomic::Ordering::Acquire) != expected {
                return WaitOutcome::Ready;
            }
            let start = *generation(&mut gens, word);
            while *generation(&mut gens, word) == start {
                gens = self.cv.wait(gens).unwrap();
            }
            WaitOutcome::Woken
        }

        fn wake(&self, word: &AtomicU32) {
            *generation(&mut self.gens.lock().unwrap(), word) += 1;
            self.cv.notify_all();
        }
    }
}

/// Shared set-up of the ring models: a zeroed, aligned region, a ring created in it, a small
/// configuration, and the producer's test pattern.
#[cfg(voxring_loom)]
pub mod ring {
    use voxring_core::{
        Consumer, GrantError, Policy, Producer, ReadError, Ring, RingConfig, SampleFormat, Wake,
    };

    /// One 128-byte line; a `Vec<Line>` is a zeroed region with the alignment rings need.
    #[repr(C, align(128))]
    #[derive(Debug)]
    pub struct Line(pub [u8; 128]);

    /// A zeroed, 128-byte aligned region for `cfg`; it must outlive the ring's threads.
    pub fn region(cfg: &RingConfig) -> Vec<Line> {
        let lines = cfg.region_size().unwrap().div_ceil(128);
        (0..lines).map(|_| Line([0; 128])).collect()
    }

    /// Creates a ring in `mem`; the model must join every thread holding a handle before
    /// `mem` is dropped.
    pub fn create(mem: &mut [Line], cfg: &RingConfig) -> Ring {
        let len = mem.len() * 128;
        // SAFETY: the region is valid, aligned and unused; the models join every thread that
        // holds a handle before the region is dropped.
        unsafe { Ring::create(mem.as_mut_ptr().cast(), len, cfg) }.unwrap()
    }

    /// A region and a ring created in it from [`cfg`]`(frames, max_consumers, policy)`; keep
    /// the region alive (bind it, e.g. `let (_mem, ring) = ...`) until every thread holding a
    /// handle is joined.
    pub fn new_ring(frames: u32, max_consumers: u16, policy: Policy) -> (Vec<Line>, Ring) {
        let cfg = cfg(frames, max_consumers, policy);
        let mut mem = region(&cfg);
        let ring = create(&mut mem, &cfg);
        (mem, ring)
    }

    /// A tiny ring: `frames` slots of 2 mono S16 samples.
    pub fn cfg(frames: u32, max_consumers: u16, policy: Policy) -> RingConfig {
        RingConfig {
            frames,
            samples_per_frame: 2,
            channels: 1,
            format: SampleFormat::S16,
            sample_rate: 48_000,
            max_consumers,
            policy,
        }
    }

    /// Writes one frame with the test pattern (`sample_pos = seq + 100`,
    /// `timestamp_ns = 2 * seq + 1`, payload bytes `seq + 1`) and hands the commit's [`Wake`]
    /// to `on_commit`; false when the (lossless) ring is full.
    pub fn write_one_then(p: &mut Producer, on_commit: impl FnOnce(Wake)) -> bool {
        match p.write_grant(1) {
            Ok(mut g) => {
                let mut f = g.frame_mut(0).unwrap();
                let seq = f.seq();
                f.set_sample_pos(seq + 100);
                f.set_timestamp_ns(2 * seq + 1);
                f.payload_mut().fill(seq as u8 + 1);
                on_commit(g.commit_all());
                true
            }
            Err(GrantError::Full) => false,
            Err(e) => panic!("unexpected grant error: {e}"),
        }
    }

    /// [`write_one_then`] for models that poll: nobody parks, so the Wake is empty and dropped.
    pub fn write_one(p: &mut Producer) -> bool {
        write_one_then(p, drop)
    }

    /// A model thread's body: `tries` calls of [`write_one`] (a full lossless ring makes one a
    /// no-op); the producer back, and how many frames went in.
    pub fn write_up_to(mut p: Producer, tries: usize) -> (Producer, usize) {
        let mut sent = 0;
        for _ in 0..tries {
            if write_one(&mut p) {
                sent += 1;
            }
        }
        (p, sent)
    }

    /// A model thread's body: one [`read_checked`] of at most `n` frames; the consumer back,
    /// and what it read.
    pub fn read_once(mut c: Consumer, n: usize) -> (Consumer, Vec<u64>) {
        let got = read_checked(&mut c, n);
        (c, got)
    }

    /// After the model's threads are joined, from what [`write_up_to`] and [`read_once`]
    /// returned: reads what is ready, then writes the rest of a `total`-frame stream, each
    /// write (which must succeed, else the model fails with `why`) followed by a read of at
    /// most `n`. Returns both handles and every frame the consumer read, in order.
    pub fn finish_stream(
        (mut p, sent): (Producer, usize),
        (mut c, mut got): (Consumer, Vec<u64>),
        total: usize,
        n: usize,
        why: &str,
    ) -> (Producer, Consumer, Vec<u64>) {
        got.extend(read_checked(&mut c, n));
        for _ in sent..total {
            assert!(write_one(&mut p), "{why}");
            got.extend(read_checked(&mut c, n));
        }
        (p, c, got)
    }

    /// Lossless read of what is ready (at most `n`): checks every frame's metadata and payload
    /// against [`write_one`]'s pattern (a stale or torn frame fails the model), releases them,
    /// and returns their sequence numbers.
    pub fn read_checked(c: &mut Consumer, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        match c.read_grant(n) {
            Ok(g) => {
                for f in g.frames() {
                    let m = f.meta();
                    assert_eq!(
                        m.sample_pos,
                        m.seq + 100,
                        "stale or torn metadata, frame {}",
                        m.seq
                    );
                    assert_eq!(
                        f.payload(),
                        &[m.seq as u8 + 1; 4],
                        "stale or torn payload, frame {}",
                        m.seq
                    );
                    seqs.push(m.seq);
                }
                // As in `write_one`: nobody parks.
                let _ = g.release_all().unwrap();
            }
            Err(ReadError::Empty) => {}
            Err(e) => panic!("unexpected read error: {e}"),
        }
        seqs
    }
}
