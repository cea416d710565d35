"""The `python-mparray` transport of `voxring bench ipc`.

The pattern of ../../shared/context/001_*: audio rows in a `multiprocessing.Array(ctypes.c_float)`
(10 rows, a circular buffer), written by one process and read by another through
`np.frombuffer(arr.get_obj(), dtype=np.float32)` (a view, no copy), no locks. The sequence
number, the CLOCK_MONOTONIC stamp (`time.monotonic_ns()`, the clock the Rust side uses) and the
acknowledgement live in a second shared array; both sides busy-poll it, as the seed does.

Started by the voxring binary (`python3 -c <this file> ...`); prints one JSON line per payload:
{"payload_bytes", "latencies_ns": [...], "consumer_cpu_ns", "producer_cpu_ns",
 "producer_syscalls_per_msg", "method"}.

Syscalls of the producer's send path are counted like on the Rust side: a perf counter on the
raw_syscalls:sys_enter tracepoint (id passed by the parent), read around each send during the
counting messages that follow the measured ones. Relies on x86 store ordering (plain ctypes
stores are not fenced), as the seed pattern does.
"""

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np

ROWS = 10
SEQ, STAMP, ACK = 0, 1, 16  # indices into the control array; ACK on another cache line
MARK_MOD = 1 << 24  # float32 holds integers exactly below 2**24


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to PERF_ATTR_SIZE_VER0 (64 bytes)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
    ]


def open_syscall_counter(tracepoint_id):
    """A perf counter of the calling thread's syscalls, or None."""
    if tracepoint_id is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    attr = PerfEventAttr(type=2, size=ctypes.sizeof(PerfEventAttr), config=tracepoint_id)
    fd = libc.syscall(
        ctypes.c_long(298),  # SYS_perf_event_open on x86_64
        ctypes.byref(attr),
        ctypes.c_int(0),
        ctypes.c_int(-1),
        ctypes.c_int(-1),
        ctypes.c_ulong(8),  # PERF_FLAG_FD_CLOEXEC
    )
    return fd if fd >= 0 else None


def read_counter(fd):
    return int.from_bytes(os.read(fd, 8), "little")


def producer(data, ctl, floats, warmup, messages, count, cpu, tracepoint_id, queue):
    os.sched_setaffinity(0, {cpu})
    view = np.frombuffer(data.get_obj(), dtype=np.float32)
    view[:] = 0.25  # the audio, written in place once
    fd = open_syscall_counter(tracepoint_id)
    overhead = 0
    if fd is not None:
        overhead = min(-read_counter(fd) + read_counter(fd) for _ in range(16))
    total = warmup + messages + count
    cpu0 = cpu_ns = 0
    syscalls = 0
    for i in range(total):
        if i == warmup:
            cpu0 = time.process_time_ns()
        row = i % ROWS
        view[row * floats + floats - 1] = float(i % MARK_MOD)
        counting = fd is not None and i >= warmup + messages
        if counting:
            before = read_counter(fd)
        ctl[STAMP] = time.monotonic_ns()
        ctl[SEQ] = i + 1
        if counting:
            syscalls += read_counter(fd) - before - overhead
        while ctl[ACK] != i + 1:
            pass
        if i + 1 == warmup + messages:
            cpu_ns = time.process_time_ns() - cpu0
    if fd is not None:
        os.close(fd)
        per_msg, method = (syscalls / count if count else 0.0), "perf:raw_syscalls:sys_enter"
    else:
        # No kernel counter: our own loop makes no call that enters the kernel.
        per_msg, method = 0.0, "code-path"
    queue.put({"producer_cpu_ns": cpu_ns, "producer_syscalls_per_msg": per_msg, "method": method})


def run(payload, args, ctx):
    floats = payload // 4
    data = ctx.Array(ctypes.c_float, ROWS * floats)
    ctl = ctx.Array(ctypes.c_longlong, 32, lock=False)
    queue = ctx.Queue()
    p = ctx.Process(
        target=producer,
        args=(data, ctl, floats, args.warmup, args.messages, args.count_messages,
              args.producer_cpu, args.tracepoint_id, queue),
    )
    p.start()
    os.sched_setaffinity(0, {args.consumer_cpu})
    view = np.frombuffer(data.get_obj(), dtype=np.float32)
    # One view per row, made once (no copy): the best form of the pattern, as voxring's reader
    # keeps one view per slot.
    rows = [view[r * floats:(r + 1) * floats] for r in range(ROWS)]
    now_ns = time.monotonic_ns
    lat = np.empty(args.messages, dtype=np.int64)
    total = args.warmup + args.messages + args.count_messages
    end = args.warmup + args.messages
    cpu0 = cpu_ns = 0
    for i in range(total):
        if i == args.warmup:
            cpu0 = time.process_time_ns()
        seq = i + 1
        while ctl[SEQ] != seq:
            pass
        # The receive stamp once the frame's array is in hand, as python-voxring takes it.
        frame = rows[i % ROWS]
        now = now_ns()
        stamp = ctl[STAMP]
        if frame[-1] != float(i % MARK_MOD):
            p.kill()
            sys.exit(f"python-mparray: row of message {i} does not carry its marker")
        if args.warmup <= i < end:
            lat[i - args.warmup] = now - stamp
        ctl[ACK] = seq
        if seq == end:
            cpu_ns = time.process_time_ns() - cpu0
    report = queue.get(timeout=30)
    p.join(timeout=30)
    out = {"payload_bytes": payload, "latencies_ns": lat.tolist(), "consumer_cpu_ns": cpu_ns}
    out.update(report)
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser(description="python-mparray peer of voxring bench ipc")
    ap.add_argument("--payloads", required=True)
    ap.add_argument("--messages", type=int, required=True)
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--count-messages", type=int, required=True)
    ap.add_argument("--producer-cpu", type=int, required=True)
    ap.add_argument("--consumer-cpu", type=int, required=True)
    ap.add_argument("--tracepoint-id", type=int, default=None)
    args = ap.parse_args()
    ctx = mp.get_context("fork")
    for payload in (int(p) for p in args.payloads.split(",")):
        if payload < 8 or payload % 4:
            sys.exit(f"python-mparray: payload {payload} must be a multiple of 4, at least 8")
        run(payload, args, ctx)


if __name__ == "__main__":
    main()
