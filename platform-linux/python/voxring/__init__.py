"""voxring rings from Python: zero-copy numpy views of frames in shared memory.

    import voxring

    with voxring.Reader("mic") as r:              # attach + join; detach + leave on exit
        print(r.transport)                         # "shm", or "socket-fallback" (r.transport_reason says why)
        while r.wait(timeout=1.0) != voxring.END:  # blocks without holding the GIL
            with r.read(4) as grant:               # releases on exit
                for f in grant:
                    f.samples                      # numpy view of the frame IN the ring (read-only)

    with voxring.Writer.create("out", samples_per_frame=512) as w:
        with w.grant(1, timeout=1.0) as g:          # commits on a normal exit, not on an exception
            g[0].samples[:] = 0                     # written in place
            g[0].timestamp_ns = voxring.monotonic_ns()

The library is the C ABI in platform-linux/ffi (libvoxring_ffi.so), loaded with ctypes: no
compiler is needed. Set VOXRING_LIB to its path, or build the workspace (`cargo build -p
voxring-ffi`): the package finds target/debug or target/release on its own.

Frame views point into the ring: they are valid until their grant is released (reader) or
committed (writer), and the memory stays mapped until the Reader/Writer is closed. Copy what
you keep (`f.samples.copy()`). Over the socket fallback the views point into the reader's own
buffer (one copy, made by the kernel), with the same lifetime rules.
"""

import ctypes

import numpy as np

from . import _lib
from ._lib import (
    VR_FLAG_DISCONTINUITY,
    VR_FLAG_END_OF_STREAM,
    VR_FLAG_XRUN,
)

__all__ = [
    "Reader",
    "Writer",
    "Control",
    "VoxringError",
    "READY",
    "TIMEOUT",
    "END",
    "monotonic_ns",
    "crc32",
    "FLAG_XRUN",
    "FLAG_DISCONTINUITY",
    "FLAG_END_OF_STREAM",
]

READY = "ready"
TIMEOUT = "timeout"
END = "end"
FLAG_XRUN = VR_FLAG_XRUN
FLAG_DISCONTINUITY = VR_FLAG_DISCONTINUITY
FLAG_END_OF_STREAM = VR_FLAG_END_OF_STREAM

_DTYPES = {_lib.VR_FORMAT_S16: np.int16, _lib.VR_FORMAT_S32: np.int32, _lib.VR_FORMAT_F32: np.float32}
_FORMATS = {"s16": _lib.VR_FORMAT_S16, "s32": _lib.VR_FORMAT_S32, "f32": _lib.VR_FORMAT_F32}
_POLICIES = {"lossless": _lib.VR_POLICY_LOSSLESS, "lossy": _lib.VR_POLICY_LOSSY}
_BATCH = 64


class VoxringError(RuntimeError):
    """A voxring call failed: `code` is the VR_E_* status, `name` its name, the message says
    what happened, why, and what to do."""

    def __init__(self, code, what):
        L = _lib.lib()
        name = (L.vr_strerror(code) or b"?").decode()
        n = L.vr_last_error(None, 0)
        buf = ctypes.create_string_buffer(n + 1)
        L.vr_last_error(buf, n + 1)
        detail = buf.value.decode(errors="replace")
        super().__init__(f"{what}: {name}" + (f"\n  {detail}" if detail else ""))
        self.code = code
        self.name = name.split(":")[0]
        self.detail = detail


def _check(code, what):
    if code != _lib.VR_OK:
        raise VoxringError(code, what)
    return code


def _timeout_ns(timeout):
    return -1 if timeout is None else max(0, int(timeout * 1e9))


def monotonic_ns():
    """CLOCK_MONOTONIC in ns: the clock voxring producers stamp frames with."""
    return _lib.lib().vr_monotonic_ns()


def crc32(data, crc=0):
    """CRC-32 (IEEE) of a buffer (bytes or numpy array), continuing from `crc`; the same as
    zlib.crc32 and as voxring's Rust and C tools."""
    a = np.ascontiguousarray(data)
    return _lib.lib().vr_crc32(crc, a.ctypes.data, a.nbytes)


class RingConfig:
    """A ring's configuration (read from the ring)."""

    def __init__(self, c):
        self.frames = c.frames
        self.samples_per_frame = c.samples_per_frame
        self.channels = c.channels
        self.format = {v: k for k, v in _FORMATS.items()}[c.format]
        self.dtype = np.dtype(_DTYPES[c.format])
        self.sample_rate = c.sample_rate
        self.max_consumers = c.max_consumers
        self.policy = {v: k for k, v in _POLICIES.items()}[c.policy]

    def __repr__(self):
        return f"RingConfig({self.__dict__})"


class _Handle:
    """A handle of the C library, freed by `close()`, on leaving a `with` block, or when
    collected."""

    def _close(self, destroy):
        # `destroy` is the name of the vr_*_destroy function that frees `self._h`.
        if getattr(self, "_h", None):
            self._forget()
            getattr(self._L, destroy)(self._h)
            self._h = None

    def _forget(self):
        """Drops what points into the handle's memory, before the handle is freed."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        self.close()


class _Mapped(_Handle):
    """The memory a handle's frames live in, viewed once as a numpy byte array; frame views
    are slices of it (no copy, no per-frame ctypes object)."""

    def _map(self, info, writable):
        self.info = info
        self.config = RingConfig(info.config)
        self._base = info.memory
        raw = (ctypes.c_uint8 * info.memory_len).from_address(info.memory)
        mem = np.frombuffer(raw, dtype=np.uint8)
        if not writable:
            mem = mem.view()
            mem.flags.writeable = False
        self._mem = mem
        self._views = {}
        self._frames = (_lib.vr_frame * _BATCH)()
        self._count = ctypes.c_size_t()
        # Ready-made arguments for the untyped fast path (see _lib.fast).
        self._frames_p = ctypes.c_void_p(ctypes.addressof(self._frames))
        self._count_p = ctypes.c_void_p(ctypes.addressof(self._count))
        self._n = [ctypes.c_size_t(i) for i in range(_BATCH + 1)]

    def _view(self, f, nbytes):
        # One numpy view per slot, made the first time the slot is seen, then reused: the
        # slots never move, so a frame costs a dict lookup instead of a new array.
        off = f.data - self._base
        v = self._views.get(off)
        if v is None:
            v = self._mem[off : off + f.capacity].view(self.config.dtype)
            self._views[off] = v
        return v if nbytes == f.capacity else v[: nbytes // v.itemsize]

    def _status(self, fn):
        s = _lib.vr_status()
        _check(getattr(self._L, fn)(self._h, ctypes.byref(s)), fn)
        return {k: getattr(s, k) for k, _ in _lib.vr_status._fields_ if k != "reserved"}

    def _forget(self):
        self._mem = None
        self._views = {}

    @property
    def memory_address(self):
        """Address of the memory frames live in (the shared mapping for `shm`)."""
        return self._base


class Frame:
    """A granted frame: metadata, and `samples`, a numpy view of its payload in place
    (interleaved channels; `samples.reshape(-1, channels)` for one column per channel)."""

    __slots__ = ("seq", "sample_pos", "timestamp_ns", "flags", "len", "samples")

    def __repr__(self):
        return (
            f"Frame(seq={self.seq}, sample_pos={self.sample_pos}, "
            f"timestamp_ns={self.timestamp_ns}, flags={self.flags}, len={self.len})"
        )

    @property
    def xrun(self):
        return bool(self.flags & FLAG_XRUN)

    @property
    def end_of_stream(self):
        return bool(self.flags & FLAG_END_OF_STREAM)


class _Grant:
    """Frames granted to a Reader or a Writer (iterable, indexable); an empty grant has
    nothing to release or commit."""

    def __init__(self, owner, frames):
        self._owner = owner
        self.frames = frames
        self._open = bool(frames)

    def __len__(self):
        return len(self.frames)

    def __iter__(self):
        return iter(self.frames)

    def __getitem__(self, i):
        return self.frames[i]

    def __enter__(self):
        return self


class ReadGrant(_Grant):
    """Frames granted to a Reader (iterable, indexable). Release with `release()` or by
    leaving the `with` block. `lost` is the number of frames this read found lost (lossy ring,
    reader lapped); the grant is then empty."""

    def __init__(self, reader, frames, lost=0):
        super().__init__(reader, frames)
        self.lost = lost

    def release(self, k=None):
        """Releases the first k frames (all by default). Returns True, or False when the
        lossy ring overwrote some of them while they were read (discard their data)."""
        if not self._open:
            return True
        self._open = False
        k = len(self.frames) if k is None else k
        r = self._owner
        code = r._F.vr_read_release(r._hp, r._n[k] if k <= _BATCH else ctypes.c_size_t(k))
        if code == _lib.VR_E_OVERWRITTEN:
            return False
        _check(code, "vr_read_release")
        return True

    def __exit__(self, *exc):
        self.release()
        return False


class Reader(_Mapped):
    """Reads ring `name`: attaches to its shared segment and joins as a consumer, or, if that
    is refused or the segment is not visible here, reads through the producer's socket
    fallback (`transport == "socket-fallback"`, `transport_reason` says why). Pass
    `fallback=False` to refuse the fallback, `force_fallback=True` to skip the segment.

    `socket_path` defaults to voxring.<name>.sock in a directory only this user can create
    names in: $VOXRING_FALLBACK_DIR if set (owned by this user or root, not writable by others
    unless sticky), else $XDG_RUNTIME_DIR/voxring, else a 0700 voxring-<uid> in the temp dir;
    a directory another user made first is refused.

    The segment's owner and the fallback server's user (checked with SO_PEERCRED before
    anything is read) must be `expected_owner`: by default this process's effective uid. To
    read another user's ring, pass that user's uid. A server whose greeting asks for a
    receive buffer above 256 MiB is refused (VoxringError, nothing allocated)."""

    def __init__(self, name, socket_path=None, fallback=True, force_fallback=False,
                 expected_owner=None):
        L = _lib.lib()
        self._L = L
        h = ctypes.c_void_p()
        flags = (0 if fallback else _lib.VR_OPEN_NO_FALLBACK) | (
            _lib.VR_OPEN_FORCE_FALLBACK if force_fallback else 0
        )
        sp = None if socket_path is None else str(socket_path).encode()
        owner = -1 if expected_owner is None else int(expected_owner)
        if expected_owner is not None and not 0 <= owner <= 0xFFFFFFFF:
            raise ValueError(f"expected_owner {expected_owner!r} is not a uid")
        _check(L.vr_reader_open_ex(name.encode(), sp, flags, owner, ctypes.byref(h)),
               f"open reader {name!r}")
        self._h = h
        self._hp = ctypes.c_void_p(h.value)
        self._F = _lib.fast()
        self.name = name
        self._lost_seen = 0
        info = _lib.vr_info()
        _check(L.vr_reader_info(h, ctypes.byref(info)), "vr_reader_info")
        self._map(info, writable=False)
        t = L.vr_reader_transport(h)
        self.transport = "shm" if t == _lib.VR_TRANSPORT_SHM else "socket-fallback"
        n = L.vr_reader_transport_reason(h, None, 0)
        buf = ctypes.create_string_buffer(n + 1)
        L.vr_reader_transport_reason(h, buf, n + 1)
        self.transport_reason = buf.value.decode(errors="replace")

    def wait(self, timeout=None):
        """Blocks (GIL released) until a frame may be ready or `timeout` seconds pass (None:
        forever). Returns READY, TIMEOUT or END (the producer is gone, everything read)."""
        code = self._F.vr_reader_wait(self._hp, ctypes.c_int64(_timeout_ns(timeout)))
        if code == _lib.VR_OK:
            return READY
        if code == _lib.VR_E_TIMEOUT:
            return TIMEOUT
        if code == _lib.VR_E_END_OF_STREAM:
            return END
        raise VoxringError(code, "vr_reader_wait")

    def read(self, max_frames=1):
        """Grants up to `max_frames` ready frames (an empty grant if none is ready)."""
        L, fr, cnt = self._L, self._frames, self._count
        code = self._F.vr_read_grant(
            self._hp, self._n[max(0, min(max_frames, _BATCH))], self._frames_p, self._count_p
        )
        if code == _lib.VR_E_EMPTY:
            return ReadGrant(self, [])
        if code == _lib.VR_E_LOST:
            total = self.status()["lost_frames"]
            lost, self._lost_seen = total - self._lost_seen, total
            return ReadGrant(self, [], lost=lost)
        _check(code, "vr_read_grant")
        out = []
        for i in range(cnt.value):
            c = fr[i]
            f = Frame()
            f.seq, f.sample_pos, f.timestamp_ns = c.seq, c.sample_pos, c.timestamp_ns
            f.flags, f.len = c.flags, c.len
            f.samples = self._view(c, c.len)
            out.append(f)
        return ReadGrant(self, out)

    def status(self):
        """Counters: write_pos, read_pos, lag, lost_frames, xruns, frames."""
        return self._status("vr_reader_status")

    def _forget(self):
        self._hp = None  # later calls pass NULL: VR_E_NULL, not a freed handle
        super()._forget()

    def close(self):
        """Leaves the ring and unmaps it (frame views must not be used after this)."""
        self._close("vr_reader_destroy")


class WriteFrame(Frame):
    """A frame to fill: `samples` is a writable view of the slot; set `sample_pos`,
    `timestamp_ns`, `flags` and (if shorter) `len` (bytes) before the commit."""

    __slots__ = ()


class WriteGrant(_Grant):
    """Frames granted to a Writer. `commit(k)` publishes the first k (all by default); leaving
    the `with` block commits all, unless an exception is leaving it (then nothing is
    committed). An empty grant (ring full) has nothing to commit."""

    def commit(self, k=None):
        if not self._open:
            return
        self._open = False
        k = len(self.frames) if k is None else k
        w = self._owner
        fr = w._frames
        for i in range(k):
            f = self.frames[i]
            c = fr[i]
            c.sample_pos, c.timestamp_ns, c.flags, c.len = f.sample_pos, f.timestamp_ns, f.flags, f.len
        _check(w._L.vr_write_commit(w._h, fr, k), "vr_write_commit")

    def __exit__(self, exc_type, *exc):
        self.commit(None if exc_type is None else 0)
        return False


class Writer(_Mapped):
    """The producer side of a ring. Make one with `Writer.create(...)` (a new segment,
    removed on close) or `Writer.attach(name)`."""

    def __init__(self, handle, name):
        self._L = _lib.lib()
        self._h = handle
        self.name = name
        info = _lib.vr_info()
        _check(self._L.vr_writer_info(handle, ctypes.byref(info)), "vr_writer_info")
        self._map(info, writable=True)

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
        cfg = _lib.vr_config(
            frames, samples_per_frame, channels, _FORMATS[format], sample_rate, max_consumers,
            _POLICIES[policy],
        )
        h = ctypes.c_void_p()
        _check(_lib.lib().vr_writer_create(name.encode(), ctypes.byref(cfg), ctypes.byref(h)),
               f"create ring {name!r}")
        return cls(h, name)

    @classmethod
    def attach(cls, name):
        h = ctypes.c_void_p()
        _check(_lib.lib().vr_writer_attach(name.encode(), ctypes.byref(h)), f"attach to ring {name!r}")
        return cls(h, name)

    def serve_fallback(self, socket_path=None, mode=0o600):
        """Serves this ring over a Unix socket to readers that cannot map it: at `socket_path`,
        or voxring.<name>.sock in the default directory (see Reader). The socket has mode
        `mode` from the moment it can be reached; anything at the path but this user's own
        stale socket is refused (VoxringError)."""
        sp = None if socket_path is None else str(socket_path).encode()
        _check(self._L.vr_writer_serve_fallback(self._h, sp, mode), "vr_writer_serve_fallback")

    def wait(self, timeout=None):
        """Lossless ring: blocks (GIL released) until a frame may be free. READY or TIMEOUT."""
        code = self._L.vr_writer_wait(self._h, _timeout_ns(timeout))
        if code == _lib.VR_E_TIMEOUT:
            return TIMEOUT
        _check(code, "vr_writer_wait")
        return READY

    def grant(self, n=1, timeout=0.0):
        """Grants up to n frames to fill in place. A lossless ring that is full is waited on
        up to `timeout` seconds (None: forever); returns an empty grant if still full."""
        L, fr, cnt = self._L, self._frames, self._count
        while True:
            code = L.vr_write_grant(self._h, min(n, _BATCH), fr, ctypes.byref(cnt))
            if code != _lib.VR_E_FULL:
                break
            if timeout == 0.0 or self.wait(timeout) == TIMEOUT:
                return WriteGrant(self, [])
        _check(code, "vr_write_grant")
        out = []
        for i in range(cnt.value):
            c = fr[i]
            f = WriteFrame()
            f.seq, f.sample_pos, f.timestamp_ns, f.flags, f.len = c.seq, 0, 0, 0, c.capacity
            f.samples = self._view(c, c.capacity)
            out.append(f)
        return WriteGrant(self, out)

    def status(self):
        """Counters: write_pos, frames, xruns, consumers."""
        return self._status("vr_writer_status")

    def close(self):
        """Gives up the producer side, stops the fallback server, unmaps (and removes the
        segment if this writer created it)."""
        self._close("vr_writer_destroy")


class Control(_Handle):
    """A control register: the latest value of up to 64 bytes, written by one writer and read
    by anyone without tearing (a seqlock in its own segment)."""

    def __init__(self, name, create=False):
        self._L = _lib.lib()
        h = ctypes.c_void_p()
        fn = self._L.vr_control_create if create else self._L.vr_control_attach
        _check(fn(name.encode(), ctypes.byref(h)), f"control register {name!r}")
        self._h = h

    def write(self, data):
        b = bytes(data)
        _check(self._L.vr_control_write(self._h, b, len(b)), "vr_control_write")

    def read(self, n=_lib.VR_CONTROL_BYTES):
        """Returns (bytes, version): the value's first n bytes and the number of writes."""
        buf = ctypes.create_string_buffer(n)
        v = ctypes.c_uint64()
        _check(self._L.vr_control_read(self._h, buf, n, ctypes.byref(v)), "vr_control_read")
        return buf.raw, v.value

    def close(self):
        """Frees the register's handle and unmaps it."""
        self._close("vr_control_destroy")
