"""Type stubs of the voxring package (the native module voxring._voxring and its wrappers)."""

from os import PathLike
from typing import (
    Any,
    AsyncIterator,
    Generic,
    Iterator,
    Literal,
    Optional,
    Protocol,
    TypedDict,
    TypeVar,
    Union,
)

from typing_extensions import Self, Unpack

import numpy as np
import numpy.typing as npt

WaitResult = Literal["ready", "timeout", "end"]
READY: Literal["ready"]
TIMEOUT: Literal["timeout"]
END: Literal["end"]
FLAG_XRUN: int
FLAG_DISCONTINUITY: int
FLAG_END_OF_STREAM: int
CONTROL_BYTES: int

class VoxringError(RuntimeError):
    """A voxring operation failed; `name` is its code (VR_E_*), the message says what
    happened, why, and what to do."""

    name: str

class ClosedError(VoxringError):
    """The object was closed."""

class ReleasedError(VoxringError):
    """The frame's grant was released (or committed)."""

def monotonic_ns() -> int:
    """CLOCK_MONOTONIC in ns: the clock voxring producers stamp frames with."""

def crc32(data: Any, crc: int = 0) -> int:
    """CRC-32 (IEEE) of a buffer, continuing from `crc`."""

class Memory:
    """The memory frame views point into: every view's `base`; kept alive by its views."""

    @property
    def address(self) -> int: ...
    def __len__(self) -> int: ...

Format = Literal["s16", "s32", "f32"]
Policy = Literal["lossless", "lossy"]

class RingConfig:
    frames: int
    samples_per_frame: int
    channels: int
    format: Format
    sample_rate: int
    max_consumers: int
    policy: Policy
    @property
    def dtype(self) -> np.dtype[Any]: ...

class RingOptions(TypedDict, total=False):
    """A new ring's configuration (keywords of `Writer.create`; defaults in its docstring:
    frames 16, samples_per_frame 512, channels 1, format "s16", sample_rate 48000,
    max_consumers 4, policy "lossless")."""

    frames: int
    samples_per_frame: int
    channels: int
    format: Format
    sample_rate: int
    max_consumers: int
    policy: Policy

class _FrameView(Protocol):
    """What a read frame and a write frame both have (a stub-only base: the runtime classes
    are separate)."""

    @property
    def samples(self) -> npt.NDArray[Any]: ...
    @property
    def seq(self) -> int: ...

class Frame(_FrameView):
    """A granted frame; `samples` is a read-only view of the slot, valid until the release."""

    @property
    def sample_pos(self) -> int: ...
    @property
    def timestamp_ns(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def len(self) -> int: ...
    @property
    def xrun(self) -> bool: ...
    @property
    def end_of_stream(self) -> bool: ...
    @property
    def valid(self) -> bool: ...

_F = TypeVar("_F", bound=_FrameView)

class _Frames(Generic[_F]):
    """The base of ReadGrant and WriteGrant: the granted frames as a sequence."""

    @property
    def frames(self) -> list[_F]: ...
    @property
    def open(self) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[_F]: ...
    def __getitem__(self, i: int) -> _F: ...
    def __bool__(self) -> bool: ...
    def __enter__(self) -> Self: ...

class ReadGrant(_Frames[Frame]):
    @property
    def lost(self) -> int: ...
    def release(self, k: Optional[int] = None) -> bool: ...
    def __exit__(self, *exc: object) -> bool: ...

class _Endpoint:
    """The base of Reader and Writer: the ring's name and configuration, its memory, and the
    context manager (leaving the `with` block closes)."""

    @property
    def name(self) -> str: ...
    @property
    def config(self) -> RingConfig: ...
    def status(self) -> dict[str, int]: ...
    @property
    def memory(self) -> Optional[Memory]: ...
    @property
    def memory_address(self) -> int: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> bool: ...

class Reader(_Endpoint):
    def __init__(
        self,
        name: str,
        socket_path: Optional[Union[str, PathLike[str]]] = None,
        fallback: bool = True,
        force_fallback: bool = False,
        expected_owner: Optional[int] = None,
    ) -> None: ...
    def wait(self, timeout: Optional[float] = None) -> WaitResult: ...
    async def wait_async(self, timeout: Optional[float] = None) -> WaitResult: ...
    def read(self, max_frames: int = 1) -> ReadGrant: ...
    @property
    def transport(self) -> Literal["shm", "socket-fallback"]: ...
    @property
    def transport_reason(self) -> str: ...
    def __iter__(self) -> Iterator[Frame]: ...
    def __next__(self) -> Frame: ...
    def __aiter__(self) -> AsyncIterator[Frame]: ...
    async def __anext__(self) -> Frame: ...

class WriteFrame(_FrameView):
    """A frame to fill: `samples` is writable until the commit."""

    @property
    def capacity(self) -> int: ...
    sample_pos: int
    timestamp_ns: int
    flags: int
    len: int

class WriteGrant(_Frames[WriteFrame]):
    def commit(self, k: Optional[int] = None) -> None: ...
    def __exit__(self, exc_type: object = None, *rest: object) -> bool: ...

class Writer(_Endpoint):
    def __init__(self, name: str, attach: bool = False, **options: Unpack[RingOptions]) -> None: ...
    @classmethod
    def create(cls, name: str, **options: Unpack[RingOptions]) -> Writer: ...
    @classmethod
    def attach(cls, name: str) -> Writer: ...
    def serve_fallback(
        self, socket_path: Optional[Union[str, PathLike[str]]] = None, mode: int = 0o600
    ) -> None: ...
    def wait(self, timeout: Optional[float] = None) -> Literal["ready", "timeout"]: ...
    async def wait_async(self, timeout: Optional[float] = None) -> Literal["ready", "timeout"]: ...
    def grant(self, n: int = 1, timeout: Optional[float] = 0.0) -> WriteGrant: ...

class Control:
    def __init__(self, name: str, create: bool = False, hub: str | None = None) -> None: ...
    def write(self, data: bytes) -> None: ...
    def read(self, n: int | None = None, timeout: float = 2.0) -> tuple[bytes, int]: ...
    def try_read(self, n: int | None = None) -> tuple[bytes, int]: ...
    def wait(self, seen: int, timeout: float | None = None) -> int | None: ...
    async def wait_async(self, seen: int, timeout: float | None = None) -> int | None: ...
    @property
    def version(self) -> int: ...
    @property
    def size(self) -> int: ...
    def close(self) -> None: ...
    @property
    def name(self) -> str: ...
    def __enter__(self) -> Control: ...
    def __exit__(self, *exc: object) -> bool: ...
