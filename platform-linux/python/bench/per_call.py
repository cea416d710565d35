"""Per-call costs of the reader's hot path, frames already in the ring (no hand-off, no wait):
what a Python consumer pays per frame on top of the ring itself. Best of REPS passes; a
measurement, not a test (nothing is asserted).

    python platform-linux/python/bench/per_call.py      (with the voxring package installed)
"""

import ctypes
import multiprocessing as mp
import os
import time

import numpy as np

import voxring

N = 128  # frames per pass (the ring holds 2N, so a pass never waits)
REPS = 40


def best_of(fn, n):
    best = None
    for _ in range(REPS):
        t0 = time.perf_counter_ns()
        fn()
        dt = time.perf_counter_ns() - t0
        best = dt if best is None or dt < best else best
    return best / n


def report(label, ns):
    print(f"{label:28s} {ns:8.1f} ns/call (best of {REPS})")


def main():
    name = f"per-call-{os.getpid()}"
    with voxring.Writer.create(name, frames=2 * N, samples_per_frame=512, format="f32") as w, \
            voxring.Reader(name, fallback=False) as r:
        def fill():
            for _ in range(N):
                with w.grant(1, timeout=1.0) as g:
                    g[0].timestamp_ns = 1

        it = iter(r)

        def drain_next():
            for _ in range(N):
                next(it)

        def drain_full():
            for _ in range(N):
                f = next(it)
                s = f.samples
                t = time.monotonic_ns()
                if s[0] != s[-1] or f.seq < 0 or t < f.timestamp_ns:
                    raise SystemExit("a frame does not hold what was written")

        def drain_read():
            for _ in range(N):
                with r.read(1):
                    pass

        for label, fn in [("next(it)", drain_next), ("next+samples+checks", drain_full),
                          ("with r.read(1)", drain_read)]:
            best = None
            for _ in range(REPS):
                fill()
                t0 = time.perf_counter_ns()
                fn()
                dt = time.perf_counter_ns() - t0
                best = dt if best is None or dt < best else best
            report(label, best / N)
        r.read(1).release()  # the iterator's last frame
        fill()
        f = next(it)
        report("frame.samples", best_of(lambda: [f.samples for _ in range(1000)], 1000))
        report("frame.seq", best_of(lambda: [f.seq for _ in range(1000)], 1000))
        report("time.monotonic_ns()", best_of(lambda: [time.monotonic_ns() for _ in range(1000)], 1000))
        report("loop baseline", best_of(lambda: [None for _ in range(1000)], 1000))
    # The writer's grant and commit: a lossy ring with no reader never waits.
    with voxring.Writer.create(name, frames=16, samples_per_frame=512, format="f32",
                               policy="lossy") as w:
        def grant_commit():
            for _ in range(1000):
                with w.grant(1) as g:
                    g[0].timestamp_ns = 1

        def grant_fill_commit():
            for _ in range(1000):
                with w.grant(1) as g:
                    g[0].samples[:] = 0.5
                    g[0].timestamp_ns = 1

        report("with w.grant(1): commit", best_of(grant_commit, 1000))
        report("with w.grant(1): fill+commit", best_of(grant_fill_commit, 1000))
    # The mp.Array pattern's equivalents.
    data = mp.Array(ctypes.c_float, 10 * 512)
    ctl = mp.Array(ctypes.c_longlong, 32, lock=False)
    view = np.frombuffer(data.get_obj(), dtype=np.float32)
    report("mparray: ctl[0]", best_of(lambda: [ctl[0] for _ in range(1000)], 1000))
    report("mparray: slice a row", best_of(lambda: [view[512:1024] for _ in range(1000)], 1000))


if __name__ == "__main__":
    main()
