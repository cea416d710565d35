"""Loads libvoxring_ffi.so and declares the C ABI of include/voxring.h for ctypes.

The library is looked up, in order: $VOXRING_LIB (a path to the .so); the target directory of
the workspace this package lives in ($CARGO_TARGET_DIR, else <workspace>/target), debug then
release build, whichever is newer. Build it with `cargo build -p voxring-ffi` (or
`cargo test --workspace`, which builds it too).
"""

import ctypes
import os
from pathlib import Path

LIB_NAME = "libvoxring_ffi.so"

# Status codes (include/voxring.h).
VR_OK = 0
VR_E_NULL = -1
VR_E_INVALID = -2
VR_E_NOT_FOUND = -3
VR_E_PERMISSION = -4
VR_E_ATTACH = -5
VR_E_CREATE = -6
VR_E_EXISTS = -7
VR_E_BUSY = -8
VR_E_EMPTY = -9
VR_E_FULL = -10
VR_E_LOST = -11
VR_E_OVERWRITTEN = -12
VR_E_EVICTED = -13
VR_E_CORRUPT = -14
VR_E_TIMEOUT = -15
VR_E_END_OF_STREAM = -16
VR_E_GRANT_OPEN = -17
VR_E_NO_GRANT = -18
VR_E_TRUNCATED = -19
VR_E_CONTENDED = -20
VR_E_IO = -21
VR_E_PANIC = -22
VR_E_UNSUPPORTED = -23

VR_POLICY_LOSSLESS = 1
VR_POLICY_LOSSY = 2
VR_FORMAT_S16 = 1
VR_FORMAT_S32 = 2
VR_FORMAT_F32 = 3
VR_FLAG_XRUN = 1
VR_FLAG_DISCONTINUITY = 2
VR_FLAG_END_OF_STREAM = 4
VR_TRANSPORT_SHM = 1
VR_TRANSPORT_SOCKET_FALLBACK = 2
VR_OPEN_NO_FALLBACK = 1
VR_OPEN_FORCE_FALLBACK = 2
VR_CONTROL_BYTES = 64


class vr_config(ctypes.Structure):
    _fields_ = [
        ("frames", ctypes.c_uint32),
        ("samples_per_frame", ctypes.c_uint32),
        ("channels", ctypes.c_uint32),
        ("format", ctypes.c_uint32),
        ("sample_rate", ctypes.c_uint32),
        ("max_consumers", ctypes.c_uint32),
        ("policy", ctypes.c_uint32),
    ]


class vr_frame(ctypes.Structure):
    _fields_ = [
        ("seq", ctypes.c_uint64),
        ("sample_pos", ctypes.c_uint64),
        ("timestamp_ns", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
        ("data", ctypes.c_void_p),
        ("capacity", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class vr_info(ctypes.Structure):
    _fields_ = [
        ("config", vr_config),
        ("payload_bytes", ctypes.c_uint32),
        ("transport", ctypes.c_int32),
        ("memory", ctypes.c_void_p),
        ("memory_len", ctypes.c_uint64),
        ("slots_offset", ctypes.c_uint64),
        ("slot_size", ctypes.c_uint64),
        ("payload_offset", ctypes.c_uint64),
    ]


class vr_status(ctypes.Structure):
    _fields_ = [
        ("write_pos", ctypes.c_uint64),
        ("read_pos", ctypes.c_uint64),
        ("lag", ctypes.c_uint64),
        ("lost_frames", ctypes.c_uint64),
        ("xruns", ctypes.c_uint64),
        ("frames", ctypes.c_uint64),
        ("consumers", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


def _workspace_root():
    for d in Path(__file__).resolve().parents:
        cargo = d / "Cargo.toml"
        if cargo.is_file() and "[workspace]" in cargo.read_text(errors="replace"):
            return d
    return None


def candidate_dirs():
    """Directories searched for the library (and the test peer binary), best first."""
    dirs = []
    root = _workspace_root()
    targets = []
    if os.environ.get("CARGO_TARGET_DIR"):
        targets.append(Path(os.environ["CARGO_TARGET_DIR"]))
    if root is not None:
        targets.append(root / "target")
    for t in targets:
        # `cargo build` copies the cdylib up to target/<profile>; `cargo test` leaves it in
        # target/<profile>/deps.
        subdirs = ("debug", "release", "debug/deps", "release/deps")
        found = [t / p for p in subdirs if (t / p / LIB_NAME).is_file()]
        found.sort(key=lambda d: (d / LIB_NAME).stat().st_mtime, reverse=True)
        dirs.extend(found)
    return dirs


def find_library():
    env = os.environ.get("VOXRING_LIB")
    if env:
        if not Path(env).is_file():
            raise OSError(f"VOXRING_LIB={env} does not exist; point it at {LIB_NAME}")
        return Path(env)
    dirs = candidate_dirs()
    if not dirs:
        raise OSError(
            f"{LIB_NAME} not found (searched $CARGO_TARGET_DIR and the workspace's target/debug "
            f"and target/release, and their deps/); build it with `cargo build -p voxring-ffi` or set VOXRING_LIB "
            f"to its path"
        )
    return dirs[0] / LIB_NAME


def _declare(lib):
    P = ctypes.POINTER
    c = ctypes
    sig = {
        "vr_strerror": (c.c_char_p, [c.c_int32]),
        "vr_last_error": (c.c_size_t, [c.c_char_p, c.c_size_t]),
        "vr_monotonic_ns": (c.c_uint64, []),
        "vr_crc32": (c.c_uint32, [c.c_uint32, c.c_void_p, c.c_size_t]),
        "vr_writer_create": (c.c_int32, [c.c_char_p, P(vr_config), P(c.c_void_p)]),
        "vr_writer_attach": (c.c_int32, [c.c_char_p, P(c.c_void_p)]),
        "vr_writer_destroy": (None, [c.c_void_p]),
        "vr_writer_serve_fallback": (c.c_int32, [c.c_void_p, c.c_char_p, c.c_uint32]),
        "vr_writer_wait": (c.c_int32, [c.c_void_p, c.c_int64]),
        "vr_write_grant": (c.c_int32, [c.c_void_p, c.c_size_t, P(vr_frame), P(c.c_size_t)]),
        "vr_write_commit": (c.c_int32, [c.c_void_p, P(vr_frame), c.c_size_t]),
        "vr_writer_info": (c.c_int32, [c.c_void_p, P(vr_info)]),
        "vr_writer_status": (c.c_int32, [c.c_void_p, P(vr_status)]),
        "vr_reader_open": (c.c_int32, [c.c_char_p, c.c_char_p, c.c_uint32, P(c.c_void_p)]),
        "vr_reader_open_ex": (
            c.c_int32,
            [c.c_char_p, c.c_char_p, c.c_uint32, c.c_int64, P(c.c_void_p)],
        ),
        "vr_reader_destroy": (None, [c.c_void_p]),
        "vr_reader_transport": (c.c_int32, [c.c_void_p]),
        "vr_reader_transport_reason": (c.c_size_t, [c.c_void_p, c.c_char_p, c.c_size_t]),
        "vr_reader_wait": (c.c_int32, [c.c_void_p, c.c_int64]),
        "vr_read_grant": (c.c_int32, [c.c_void_p, c.c_size_t, P(vr_frame), P(c.c_size_t)]),
        "vr_read_release": (c.c_int32, [c.c_void_p, c.c_size_t]),
        "vr_reader_info": (c.c_int32, [c.c_void_p, P(vr_info)]),
        "vr_reader_status": (c.c_int32, [c.c_void_p, P(vr_status)]),
        "vr_control_create": (c.c_int32, [c.c_char_p, P(c.c_void_p)]),
        "vr_control_attach": (c.c_int32, [c.c_char_p, P(c.c_void_p)]),
        "vr_control_destroy": (None, [c.c_void_p]),
        "vr_control_write": (c.c_int32, [c.c_void_p, c.c_void_p, c.c_size_t]),
        "vr_control_read": (c.c_int32, [c.c_void_p, c.c_void_p, c.c_size_t, P(c.c_uint64)]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib


_LIB = None
_FAST = None


def fast():
    """The hot-path functions (grant, release, wait) bound a second time WITHOUT argtypes:
    callers pass ready-made ctypes objects (c_void_p, c_size_t, c_int64), which skips ctypes'
    per-call argument conversion (a few hundred ns per argument). Never pass a bare Python int
    to these: without argtypes ctypes would pass it as a 32-bit C int."""
    global _FAST
    if _FAST is None:
        raw = ctypes.CDLL(str(lib().path))
        for name in ("vr_read_grant", "vr_read_release", "vr_reader_wait"):
            fn = getattr(raw, name)
            fn.restype = ctypes.c_int32
            fn.argtypes = None
        _FAST = raw
    return _FAST


def lib():
    """The loaded library (loaded on first use). ctypes releases the GIL around every call."""
    global _LIB
    if _LIB is None:
        path = find_library()
        _LIB = _declare(ctypes.CDLL(str(path)))
        _LIB.path = path
    return _LIB
