"""Shared set-up of the binding tests: the package on sys.path, the library and the Rust
peer binary (voxring-ffi-peer, built next to the library by `cargo test --workspace`)."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PKG))

from voxring import _lib  # noqa: E402


def _library():
    try:
        return _lib.find_library()
    except OSError as e:
        pytest.exit(
            f"voxring Python tests: {e}. scripts/test runs `cargo test --workspace` first, "
            f"which builds target/debug/{_lib.LIB_NAME}.",
            returncode=1,
        )


LIB = _library()
os.environ.setdefault("VOXRING_LIB", str(LIB))


@pytest.fixture(scope="session")
def peer():
    # Next to the library, or one level up when the library is in deps/ (after cargo test).
    exe = LIB.parent / "voxring-ffi-peer"
    if not exe.is_file():
        exe = LIB.parent.parent / "voxring-ffi-peer"
    if not exe.is_file():
        pytest.fail(
            f"{exe} is missing: build it with `cargo build -p voxring-ffi` (cargo test "
            f"--workspace builds it too)"
        )
    return exe


@pytest.fixture
def name():
    n = f"pytest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield n
    # Nothing may be left behind, whatever the test did.
    for p in (Path(f"/dev/shm/voxring.{n}"), Path(f"/dev/shm/voxring.{n}.control")):
        assert not p.exists(), f"{p} was left behind"


class Peer:
    """A child process, killed and reaped by PID when the test ends."""

    def __init__(self, args, **kw):
        self.p = subprocess.Popen(
            [str(a) for a in args], stdout=subprocess.PIPE, text=True, **kw
        )

    def expect(self, prefix, timeout=60):
        import select

        while True:
            r, _, _ = select.select([self.p.stdout], [], [], timeout)
            assert r, f"no `{prefix}` from {self.p.args} within {timeout} s"
            line = self.p.stdout.readline()
            assert line, f"{self.p.args} ended (rc {self.p.wait()}) before printing `{prefix}`"
            if line.startswith(prefix):
                return dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)

    def wait(self, timeout=60):
        return self.p.wait(timeout)

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        self.p.stdout.close()


@pytest.fixture
def spawn():
    peers = []

    def start(args, **kw):
        p = Peer(args, **kw)
        peers.append(p)
        return p

    yield start
    for p in peers:
        p.close()
