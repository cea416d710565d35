"""The consumer of `voxring bench ipc --transports python-voxring`.

A Python agent reading a voxring ring through this package: the Rust producer (the voxring
binary) creates ring NAME (lossless, one frame of F32 samples), commits frame `i` stamped with
CLOCK_MONOTONIC, and waits until it is released before writing the next (a ping-pong, as
python-mparray's acknowledgement does). Here, `for i, frame in enumerate(reader)`: each
step releases the previous frame and waits for the next (20 us spin holding the GIL, then
spin and futex park without it); hand-off = time.monotonic_ns() once the frame's array
(`frame.samples`) is in hand minus its stamp (python-mparray stamps the same way); check its markers (first and last sample = i mod 2^24).

    python3 -m voxring._bench --ring NAME --payload BYTES --warmup W --messages M [--cpu N]

Prints `ready` once joined, then one JSON line: {"payload_bytes", "latencies_ns": [...],
"consumer_cpu_ns", "transport"}.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

import voxring

MARK_MOD = 1 << 24


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ring", required=True)
    ap.add_argument("--payload", type=int, required=True)
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--messages", type=int, required=True)
    ap.add_argument("--extra", type=int, default=0, help="unmeasured messages after the measured ones")
    ap.add_argument("--cpu", type=int, default=None)
    a = ap.parse_args()
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    total = a.warmup + a.messages + a.extra
    lat = np.zeros(a.messages, dtype=np.int64)
    cpu_ns = 0
    now_ns = time.monotonic_ns
    with voxring.Reader(a.ring, fallback=False) as r:
        print("ready", flush=True)
        i = -1
        cpu0 = time.process_time_ns()  # (taken again before frame `warmup` if there is one)
        # As a user iterates: each step releases frame i-1 (the producer's acknowledgement),
        # then waits for frame i (spin with the GIL, spin, futex park) and grants it.
        for i, f in enumerate(r):
            # The receive stamp once the frame's array is in hand, as python-mparray takes it.
            s = f.samples
            t = now_ns()
            mark = float(i % MARK_MOD)
            if s[0] != mark or s[-1] != mark or f.seq != i:
                sys.exit(f"frame {i}: seq {f.seq}, markers {s[0]}, {s[-1]}: expected {mark}")
            if a.warmup <= i < a.warmup + a.messages:
                lat[i - a.warmup] = t - f.timestamp_ns
            if i + 1 == a.warmup:
                cpu0 = time.process_time_ns()
            elif i + 1 == a.warmup + a.messages:
                cpu_ns = time.process_time_ns() - cpu0
            if i + 1 == total:
                break
        if i + 1 != total:
            sys.exit(f"frame {i + 1} never came: the producer left")
        transport = r.transport
    out = {
        "payload_bytes": a.payload,
        "latencies_ns": lat.tolist(),
        "consumer_cpu_ns": cpu_ns,
        "transport": transport,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
