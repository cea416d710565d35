//! The work both benchmarks do around a hand-over, the same for every ring they compare:
//! generate a frame, consume one, push items until all are in, pop them until all are out.
//! Everything is `#[inline(always)]` and generic, so each ring gets its own copy of the loop,
//! as if written out beside it.
#![allow(dead_code)]

/// The producer's work on a frame: generate samples (a ramp depending on the frame number).
#[inline(always)]
pub fn generate(out: &mut [f32], n: u64) {
    // An i32 index converts to f32 with packed instructions (a usize would not), so this
    // loop vectorises like `consume` and the work stays small next to the hand-over.
    let base = n as i32;
    for (i, s) in (0i32..).zip(out.iter_mut()) {
        *s = base.wrapping_add(i) as f32;
    }
}

/// The consumer's work on a frame: reduce it (an integer sum of the sample bits, which the
/// compiler vectorises, so the benchmark measures the hand-over rather than an `f32` add chain).
#[inline(always)]
pub fn consume(samples: &[f32]) -> u32 {
    samples
        .iter()
        .fold(0u32, |acc, s| acc.wrapping_add(s.to_bits()))
}

/// Pushes the items `0..n`, spinning while the ring is full: `push` tries once and hands the
/// item back when there is no room.
#[inline(always)]
pub fn push_all(n: u64, mut push: impl FnMut(u64) -> Result<(), u64>) {
    for i in 0..n {
        let mut v = i;
        while let Err(back) = push(v) {
            v = back;
            std::hint::spin_loop();
        }
    }
}

/// Pops `n` items, spinning while the ring is empty: `pop` tries once, `each` gets every
/// item popped.
#[inline(always)]
pub fn pop_all(n: u64, mut pop: impl FnMut() -> Option<u64>, mut each: impl FnMut(u64)) {
    let mut got = 0;
    while got < n {
        match pop() {
            Some(v) => {
                each(v);
                got += 1;
            }
            None => std::hint::spin_loop(),
        }
    }
}

/// Keeps an item popped from being optimised away, and does nothing else with it.
#[inline(always)]
pub fn keep(v: u64) {
    std::hint::black_box(v);
}
