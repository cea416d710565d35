"""Shared set-up of the package's tests: the installed `voxring` package (a native extension:
`pip install platform-linux/python`, which scripts/test does into its venv) and the Rust peer
binary voxring-ffi-peer (built by `cargo build --workspace`), which plays the producer or the
consumer in another process."""

import gc
import os
import subprocess
import uuid
from pathlib import Path

import pytest

try:
    import voxring  # noqa: F401
except ImportError as e:
    pytest.exit(
        f"the voxring package is not installed in this Python ({e}): install it with "
        f"`python3 -m pip install platform-linux/python` in a virtual environment (scripts/test "
        f"does this in target/pyvenv)",
        returncode=1,
    )

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def peer():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for exe in (target / "debug" / "voxring-ffi-peer", target / "release" / "voxring-ffi-peer"):
        if exe.is_file():
            return exe
    pytest.fail(
        f"voxring-ffi-peer is not built in {target}: run `cargo build -p voxring-ffi` (scripts/test "
        f"runs `cargo build --workspace` first)"
    )


@pytest.fixture
def name():
    n = f"pytest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield n
    # Nothing may be left behind, whatever the test did. An array kept by a test keeps its
    # segment until it is collected (documented: a view never outlives its mapping), and an
    # exception caught by pytest.raises can hold the test's frame in a cycle: collect first.
    gc.collect()
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
