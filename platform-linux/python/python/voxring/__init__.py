"""voxring rings from Python: zero-copy numpy views of audio frames in shared memory.

    import voxring

    with voxring.Reader("mic") as r:              # attach + join; leave on exit
        for frame in r:                            # waits without the GIL; ends with the stream
            frame.samples                          # numpy view of the frame IN the ring (read-only)

    with voxring.Reader("mic") as r:               # or by hand, several frames at once
        while r.wait(timeout=1.0) != voxring.END:
            with r.read(4) as grant:               # releases on exit
                for f in grant:
                    f.samples

    async for frame in voxring.Reader("mic"):      # asyncio: `await r.wait_async(timeout)` too
        ...

    with voxring.Writer.create("out", samples_per_frame=512) as w:
        with w.grant(1, timeout=1.0) as g:          # commits on a normal exit, not on an exception
            g[0].samples[:] = 0                     # written in place
            g[0].timestamp_ns = voxring.monotonic_ns()

The package is a native extension (Rust, PyO3) over voxring-linux: install it with
`pip install platform-linux/python` from a voxring checkout (a Rust toolchain is needed).

Views and their lifetime. `frame.samples` is a numpy array over the ring slot itself; its
`base` is a `voxring.Memory`, which keeps the shared mapping alive, so an array can never point
into unmapped memory, whatever happens to the Reader or Writer (close() included).
- Reader frames are read-only. Once their grant is released (leaving the `with` block,
  `release()`, the next step of `for frame in reader`, or `close()`), `frame.samples` raises
  ReleasedError; an array taken before stays readable, but the producer may be overwriting
  the slot: copy what you keep (`frame.samples.copy()`).
- Writer frames are writable until the grant is committed (or abandoned, or the writer is
  closed); then the arrays are made read-only, so a late write raises ValueError.
Over the socket fallback the views point into the reader's own receive buffer instead (one
copy, made by the kernel), with the same rules.

Waiting. `wait()`, `for frame in reader` and a full lossless `Writer.grant(timeout=...)` release
the GIL (other threads run) and return to Python every 50 ms (Ctrl-C works). `wait_async()`
runs those 50 ms waits on a shared pool of helper threads that sleep on the ring's futex (no
spinning); a frame that is already there is returned without a thread hop. A cancelled
`wait_async()` returns at once; its helper finishes its slice (at most 50 ms), and meanwhile
another call on that reader waits for it (without the GIL).

Errors are VoxringError (a RuntimeError) with `name` (VR_E_*, as the C ABI names them) and a
message that says what happened, why and what to do; ClosedError and ReleasedError are its
subclasses. Objects are for one thread at a time; a second thread waits its turn.
"""

import asyncio
import concurrent.futures
import threading
import zlib

import numpy as np

from . import _voxring
from ._voxring import (
    CONTROL_BYTES,
    ClosedError,
    Frame,
    Memory,
    ReadGrant,
    ReleasedError,
    RingConfig,
    VoxringError,
    WriteFrame,
    WriteGrant,
    monotonic_ns,
)

__all__ = [
    "Reader",
    "Writer",
    "Control",
    "ReadGrant",
    "WriteGrant",
    "Frame",
    "WriteFrame",
    "RingConfig",
    "Memory",
    "VoxringError",
    "ClosedError",
    "ReleasedError",
    "READY",
    "TIMEOUT",
    "END",
    "CONTROL_BYTES",
    "monotonic_ns",
    "crc32",
    "FLAG_XRUN",
    "FLAG_DISCONTINUITY",
    "FLAG_END_OF_STREAM",
]

READY = "ready"
TIMEOUT = "timeout"
END = "end"
FLAG_XRUN = 1
FLAG_DISCONTINUITY = 2
FLAG_END_OF_STREAM = 4

_SLICE = _voxring.WAIT_SLICE_S
_pool = None
_pool_lock = threading.Lock()


def _waiters():
    """The shared helper threads of wait_async (made on first use, reused, never spinning)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=64, thread_name_prefix="voxring-wait"
            )
        return _pool


async def _wait_async(obj, timeout):
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout {timeout} is negative: pass seconds >= 0, or None")
    r = obj.wait(0)
    if r != TIMEOUT or timeout == 0:
        return r
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        left = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - loop.time()))
        r = await loop.run_in_executor(_waiters(), obj.wait, left)
        if r != TIMEOUT or (deadline is not None and loop.time() >= deadline):
            return r


def crc32(data, crc=0):
    """CRC-32 (IEEE) of a buffer (bytes or numpy array), continuing from `crc`: zlib.crc32,
    as voxring's Rust and C tools compute it."""
    return zlib.crc32(np.ascontiguousarray(data).reshape(-1).view(np.uint8), crc)


class Reader(_voxring.Reader):
    """Reads ring `name`: attaches to its shared segment and joins as a consumer (reading
    starts at the current write position), or, if that is refused or the segment is not
    visible here, reads through the producer's socket fallback (`transport ==
    "socket-fallback"`, `transport_reason` says why). `fallback=False` refuses the fallback,
    `force_fallback=True` skips the segment.

    `socket_path` defaults to voxring.<name>.sock in a directory only this user can create
    names in: $VOXRING_FALLBACK_DIR if set (owned by this user or root, not writable by others
    unless sticky), else $XDG_RUNTIME_DIR/voxring, else a 0700 voxring-<uid> in the temporary
    directory; a directory another user made first is refused.

    The segment's owner and the fallback server's user (checked with SO_PEERCRED before
    anything is read) must be `expected_owner`: by default this process's effective uid. To
    read another user's ring, pass that user's uid. A server whose greeting asks for a receive
    buffer above 256 MiB is refused (VoxringError, nothing allocated).

    Iterating (`for frame in reader`, `async for frame in reader`) yields one frame at a time;
    each is released by the next step (or the next `read()`), and the loop ends when the
    producer is gone and every frame was read."""

    async def wait_async(self, timeout=None):
        """`wait()` for asyncio: READY, TIMEOUT or END, without blocking the event loop."""
        return await _wait_async(self, timeout)

    def __aiter__(self):
        return self

    async def __anext__(self):
        while True:
            f = self._next_frame()
            if f is not None:
                return f
            if await _wait_async(self, None) == END:
                raise StopAsyncIteration


class Writer(_voxring.Writer):
    """The producer side of a ring. Make one with `Writer.create(name, ...)` (a new segment,
    removed when closed) or `Writer.attach(name)`."""

    @classmethod
    def create(
        cls,
        name,
        frames=16,
        samples_per_frame=512,
        channels=1,
        format="s16",
        sample_rate=48000,
        max_consumers=4,
        policy="lossless",
    ):
        """Creates ring `name` (/dev/shm/voxring.<name>) and claims its producer side.
        `frames` is a power of two; `format` "s16", "s32" or "f32"; `policy` "lossless" (the
        writer waits for the slowest reader) or "lossy" (it never waits)."""
        return cls(
            name,
            frames=frames,
            samples_per_frame=samples_per_frame,
            channels=channels,
            format=format,
            sample_rate=sample_rate,
            max_consumers=max_consumers,
            policy=policy,
        )

    @classmethod
    def attach(cls, name):
        """Attaches to the existing ring `name` and claims its producer side."""
        return cls(name, attach=True)

    async def wait_async(self, timeout=None):
        """`wait()` for asyncio: READY or TIMEOUT, without blocking the event loop."""
        return await _wait_async(self, timeout)


class Control(_voxring.Control):
    """A control register: the latest value of up to 64 bytes (32 for a hub's registers),
    written by one writer and read by anyone without tearing.

        with voxring.Control("gain", create=True) as c:   # or Control("gain") to attach
            c.write(b"...")                                 # wakes readers blocked in wait
        speech = voxring.Control("speech", hub="voxring")   # a running hub's register
        data, seen = speech.read()                          # waits out a write in progress
        while (seen := speech.wait(seen, timeout=1.0)) is not None:   # blocks, no GIL
            data, seen = speech.read()

    `await c.wait_async(seen, timeout)` is wait() for asyncio (50 ms slices on the shared
    helper threads). try_read() never waits (for loops that must not sleep)."""

    async def wait_async(self, seen, timeout=None):
        """`wait()` for asyncio: the new version, or None when `timeout` seconds passed,
        without blocking the event loop."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout {timeout} is negative: pass seconds >= 0, or None")
        v = self.wait(seen, 0)
        if v is not None or timeout == 0:
            return v
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - loop.time()))
            v = await loop.run_in_executor(_waiters(), self.wait, seen, left)
            if v is not None or (deadline is not None and loop.time() >= deadline):
                return v
