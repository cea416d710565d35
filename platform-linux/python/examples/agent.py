#!/usr/bin/env python3
"""An example voxring agent in Python: reads the capture ring of a `voxring run`, measures
each frame's energy (a stand-in for the model an agent would run), and reports.

Command line (what `voxring run --agents python:path/to/agent.py` is to pass; it mirrors the
hidden `voxring agent` subcommand of the Rust agents):

    python3 agent.py --segments PREFIX --parent PID [--index I] [--seconds S]

- attaches to the ring `<PREFIX>.capture` as a consumer (`voxring.Reader`; over the socket
  fallback if the segment cannot be mapped, which the report then says);
- prints `ready` on stdout once joined;
- for every frame: hand-off = CLOCK_MONOTONIC when the frame is in hand minus the frame's
  timestamp (the producer stamps CLOCK_MONOTONIC at commit), then its RMS level in dBFS;
- ends on the END_OF_STREAM frame, when the producer is gone, after --seconds, or when the
  parent dies (PR_SET_PDEATHSIG); then prints one JSON line:
  {"role": "python", "frames", "samples", "lost", "checksum" (CRC-32 hex of every payload
   byte, as the Rust recorder computes it), "handoff_ns": {"p50","p90","p99","max"},
   "level_dbfs_mean", "cpu_ns", "wall_ns", "transport", "transport_reason", "exit"}.

It waits with `Reader.wait`, which sleeps on the ring's futex without holding the GIL: other
Python threads of the agent keep running, and an idle agent costs no CPU. The frames it reads
are numpy arrays over the ring's slots (the native voxring package: no copy, no per-frame
ctypes call).
"""

import argparse
import ctypes
import json
import os
import signal
import sys
import time
import zlib

import numpy as np

import voxring  # pip install platform-linux/python


def die_with_parent(parent):
    """Ends this process when the orchestrator dies (PR_SET_PDEATHSIG = 1)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)
    if parent and os.getppid() != parent:
        sys.exit("the parent is already gone")


def level_dbfs(samples):
    x = samples.astype(np.float32)
    if samples.dtype == np.int16:
        x /= 32768.0
    elif samples.dtype == np.int32:
        x /= 2147483648.0
    rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    return 20.0 * np.log10(max(rms, 1e-9))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--segments", required=True, help="segment name prefix of the run")
    ap.add_argument("--parent", type=int, default=0, help="PID of the orchestrator")
    ap.add_argument("--index", type=int, default=0, help="this agent's index (informative)")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long")
    ap.add_argument("--ring", default=None, help="read this ring instead of PREFIX.capture")
    a = ap.parse_args()
    die_with_parent(a.parent)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    ring = a.ring or f"{a.segments}.capture"
    handoff = []
    frames = samples = 0
    crc = 0
    levels = 0.0
    exit_reason = "end of stream"
    with voxring.Reader(ring) as r:
        print("ready", flush=True)
        cpu0, wall0 = time.process_time_ns(), time.monotonic_ns()
        deadline = None if a.seconds is None else time.monotonic() + a.seconds
        done = False
        while not done:
            if deadline is not None and time.monotonic() >= deadline:
                exit_reason = "time limit"
                break
            w = r.wait(timeout=0.5)
            if w == voxring.END:
                exit_reason = "producer gone"
                break
            if w == voxring.TIMEOUT:
                continue
            with r.read(8) as g:
                now = time.monotonic_ns()
                for f in g:
                    if f.end_of_stream:
                        done = True
                        # An empty END_OF_STREAM frame (what `voxring run` sends) marks the
                        # end; it is not audio, so it is not counted as a frame.
                        if f.samples.size == 0:
                            break
                    if f.timestamp_ns:
                        handoff.append(now - f.timestamp_ns)
                    crc = zlib.crc32(f.samples, crc)
                    levels += level_dbfs(f.samples)
                    frames += 1
                    samples += f.samples.size // r.config.channels
        st = r.status()
        cpu_ns, wall_ns = time.process_time_ns() - cpu0, time.monotonic_ns() - wall0
        h = np.array(handoff or [0], dtype=np.int64)
        out = {
            "role": "python",
            "index": a.index,
            "frames": frames,
            "samples": samples,
            "lost": st["lost_frames"],
            "xruns": st["xruns"],
            "checksum": f"{crc:08x}",
            "handoff_ns": {
                "p50": int(np.percentile(h, 50)),
                "p90": int(np.percentile(h, 90)),
                "p99": int(np.percentile(h, 99)),
                "max": int(h.max()),
            },
            "level_dbfs_mean": levels / frames if frames else None,
            "cpu_ns": cpu_ns,
            "wall_ns": wall_ns,
            "transport": r.transport,
            "transport_reason": r.transport_reason,
            "exit": exit_reason,
        }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
