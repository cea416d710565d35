"""The frame pattern of voxring-ffi-peer and c/voxring_peer.c, and a checking reader loop.

Run as a program (`python pattern.py NAME`) it reads ring NAME to the end and prints one JSON
line: used by the fallback test, which runs the reader as another user
($VOXRING_TEST_EXPECTED_OWNER: the producer's uid it trusts).
"""

import json
import os
import sys
import zlib

import numpy as np

import voxring


def pattern(seq, n):
    i = np.arange(n, dtype=np.uint64)
    return ((np.uint64(seq) * np.uint64(7919) + i * np.uint64(31)) & np.uint64(0xFFFF)).astype(
        np.uint16
    ).view(np.int16)


def read_all(r, timeout=30.0):
    """Reads until the END_OF_STREAM frame (or the end of the stream); checks every frame."""
    crc, frames, bad, lost, end = 0, 0, 0, 0, False
    while not end:
        w = r.wait(timeout)
        if w == voxring.END:
            break
        assert w == voxring.READY, f"no frame within {timeout} s"
        with r.read(8) as g:
            lost += g.lost
            ok = []
            for f in g:
                ok.append(np.array_equal(f.samples, pattern(f.seq, f.samples.size)))
                crc = zlib.crc32(f.samples, crc)
                end |= f.end_of_stream
            intact = g.release()
        if intact:
            frames += len(ok)
            bad += ok.count(False)
    st = r.status()
    return {
        "crc": f"{crc:08x}",
        "frames": frames,
        "bad": bad,
        "lost": st["lost_frames"],
        "lost_seen": lost,
        "xruns": st["xruns"],
        "transport": r.transport,
        "reason": r.transport_reason,
    }


if __name__ == "__main__":
    # The producer's uid when it is another user's ring (the fallback test sets it).
    owner = os.environ.get("VOXRING_TEST_EXPECTED_OWNER")
    with voxring.Reader(sys.argv[1], expected_owner=None if owner is None else int(owner)) as r:
        print(json.dumps(read_all(r)), flush=True)
