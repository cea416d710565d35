"""A fixed amount of work for an instruction count (independent of the machine's load):
run under `valgrind --tool=callgrind` with N and with 0 iterations; the difference over N is
the instructions per iteration. A measurement driver, not a test.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python instructions.py WHAT N

WHAT: `writer` (`with w.grant(1)` and a commit on a lossy ring with no reader) or `reader` (a
one-slot ring, one thread: release the last frame while still holding it, a writer grant,
the next frame and its `samples`, as `for f in reader` holds frames).
"""

import os
import sys

import voxring


def main():
    what, k = sys.argv[1], int(sys.argv[2])
    name = f"instructions-{os.getpid()}"
    if what == "writer":
        with voxring.Writer.create(name, frames=16, samples_per_frame=512, format="f32",
                                   policy="lossy") as w:
            for _ in range(k):
                with w.grant(1) as g:
                    g[0].timestamp_ns = 1
    elif what == "reader":
        with voxring.Writer.create(name, frames=1, samples_per_frame=512, format="f32") as w, \
                voxring.Reader(name) as r:
            f = None
            for i in range(k):
                r._next_frame()  # releases the last frame; `f` still holds it
                with w.grant(1) as g:
                    g[0].timestamp_ns = i
                f = r._next_frame()
                f.samples
    else:
        sys.exit(f"WHAT is {what!r}: pass writer or reader")


if __name__ == "__main__":
    main()
