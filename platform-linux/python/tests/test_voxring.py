"""The Python bindings against Rust peers in other processes (voxring-ffi-peer)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import voxring
from pattern import pattern, read_all

HERE = Path(__file__).resolve().parent
# The interpreter behind this venv: another user may not be able to read the venv (it lives in
# the checkout), so readers run as another user use it with copies of the package and numpy.
BASE_PYTHON = os.path.realpath(sys.executable)


def copy_package_for_another_user(d):
    """Copies the installed voxring package, numpy and the reader script into `d` (world
    readable): a reader running as another user imports them from there."""
    import numpy

    for pkg in (voxring, numpy):
        src = Path(pkg.__file__).parent
        shutil.copytree(src, d / src.name, ignore=shutil.ignore_patterns("__pycache__", "tests"))
        libs = src.parent / f"{src.name}.libs"  # numpy wheels keep their BLAS there
        if libs.is_dir():
            shutil.copytree(libs, d / libs.name)
    shutil.copy(HERE / "pattern.py", d / "pattern.py")


@pytest.mark.parametrize("policy", ["lossless", "lossy"])
def test_python_reads_a_rust_producer(peer, spawn, name, policy):
    prod = spawn([peer, "produce", name, "--policy", policy, "--count", "1500", "--xrun-every", "7"])
    prod.expect("ready")
    with voxring.Reader(name) as r:
        assert r.transport == "shm" and r.transport_reason == ""
        assert r.config.policy == policy and r.config.samples_per_frame == 512
        got = read_all(r)
    produced = prod.expect("done")
    assert prod.wait() == 0
    assert got["bad"] == 0, got
    if policy == "lossless":
        assert got["frames"] == 1500 and got["lost"] == 0, got
        assert got["crc"] == produced["crc"]
        assert got["xruns"] == int(produced["xruns"])
    else:
        # Every frame is read intact or counted as lost; lapped reads say how many.
        assert 0 < got["frames"] and got["frames"] + got["lost"] <= 1500, got


@pytest.mark.parametrize("policy", ["lossless", "lossy"])
def test_python_writes_for_a_rust_consumer(peer, spawn, name, policy):
    total = 1200
    crc = 0
    with voxring.Writer.create(name, frames=16, samples_per_frame=512, policy=policy) as w:
        cons = spawn([peer, "consume", name])
        cons.expect("ready")
        seq = 0
        while seq < total:
            with w.grant(1, timeout=5.0) as g:
                assert len(g) == 1, "the lossless ring stayed full for 5 s"
                f = g[0]
                assert f.seq == seq
                f.samples[:] = pattern(f.seq, f.samples.size)
                f.sample_pos = seq * 512
                f.timestamp_ns = voxring.monotonic_ns()
                f.flags = voxring.FLAG_END_OF_STREAM if seq + 1 == total else 0
                crc = zlib.crc32(f.samples, crc)
            seq += 1
        assert w.status()["frames"] == total
        got = cons.expect("done")
        assert cons.wait() == 0
    assert got["bad"] == "0", got
    if policy == "lossless":
        assert got["frames"] == str(total) and got["lost"] == "0", got
        assert got["crc"] == f"{crc:08x}"
    else:
        assert 0 < int(got["frames"]) and int(got["frames"]) + int(got["lost"]) <= total


def test_numpy_views_are_the_shared_memory(name):
    with voxring.Writer.create(name, frames=8, samples_per_frame=480, channels=2, format="f32") as w:
        with voxring.Reader(name) as r:
            assert r.transport == "shm"
            mem = r.memory
            for round_ in range(3):  # wrap around the ring: every slot, several times
                for _ in range(8):
                    with w.grant(1) as g:
                        f = g[0]
                        w_off = f.samples.ctypes.data - w.memory_address
                        assert f.samples.dtype == np.float32 and f.samples.size == 960
                        f.samples[:] = f.seq + 0.5
                    with r.read(1) as rg:
                        rf = rg[0]
                        a = rf.samples
                        # Zero copy: the view's data pointer lies inside the shared mapping, at
                        # the same offset as the writer's view of the same slot (two mappings of
                        # one segment, at different addresses).
                        assert mem.address <= a.ctypes.data and a.ctypes.data + a.nbytes <= mem.address + len(mem)
                        assert a.ctypes.data - r.memory_address == w_off
                        assert isinstance(a.base, voxring.Memory)
                        assert not a.flags.writeable and not a.flags.owndata
                        assert np.all(a == rf.seq + 0.5)
                        assert rf.seq == f.seq


def test_wait_releases_the_gil(name):
    with voxring.Writer.create(name) as w, voxring.Reader(name) as r:
        entered = threading.Event()
        result = []

        def waiter():
            entered.set()
            result.append(r.wait(timeout=20.0))

        t = threading.Thread(target=waiter)
        t.start()
        entered.wait()
        time.sleep(0.2)  # most likely inside vr_reader_wait by now (not relied on below)
        # Pure Python work, then the frame the waiter waits for: both need the GIL. Had the
        # wait kept it, none of this could run before the wait timed out (20 s), and the
        # waiter would report TIMEOUT instead of READY. No time is measured or asserted.
        total = sum(i * i for i in range(100_000))
        assert total > 0 and t.is_alive()
        with w.grant(1) as g:
            g[0].samples[:] = 1
        t.join(60)
        assert result == [voxring.READY]


def test_context_managers_release_and_detach(name):
    with voxring.Writer.create(name, frames=4) as w:
        with voxring.Reader(name) as r:
            assert w.status()["consumers"] == 1
            for _ in range(3):
                with w.grant(1) as g:
                    g[0].samples[:] = 7
            with r.read(2) as g:
                assert len(g) == 2
            assert r.status()["read_pos"] == 2 and r.status()["lag"] == 1
            try:
                with r.read(1) as g:
                    raise KeyError("boom")
            except KeyError:
                pass
            assert r.status()["read_pos"] == 3  # released on the way out of an exception too
            # An exception inside a write grant commits nothing.
            try:
                with w.grant(1) as g:
                    raise KeyError("boom")
            except KeyError:
                pass
            assert w.status()["write_pos"] == 3
        assert w.status()["consumers"] == 0  # the reader left on close
        with pytest.raises(voxring.ClosedError) as e:
            r.read(1)  # a closed reader is refused, not a use of freed memory
        assert e.value.name == "VR_E_CLOSED" and "closed" in str(e.value)
    assert not Path(f"/dev/shm/voxring.{name}").exists()


def test_lossy_reader_is_told_what_it_lost(name):
    with voxring.Writer.create(name, frames=4, policy="lossy") as w, voxring.Reader(name) as r:
        for i in range(10):
            with w.grant(1) as g:
                g[0].samples[:] = i
        g = r.read(4)
        assert len(g) == 0 and g.lost == 6
        with r.read(4) as g:
            assert [f.seq for f in g] == [6, 7, 8, 9]
        assert r.status()["lost_frames"] == 6


def test_status_counts_xruns_and_lag(name):
    with voxring.Writer.create(name, frames=8) as w, voxring.Reader(name) as r:
        for i in range(5):
            with w.grant(1) as g:
                g[0].flags = voxring.FLAG_XRUN if i % 2 == 0 else 0
        assert r.status()["lag"] == 5
        with r.read(8) as g:
            assert [f.xrun for f in g] == [True, False, True, False, True]
        s = r.status()
        assert s["xruns"] == 3 and s["lag"] == 0 and s["frames"] == 5
        assert w.status()["xruns"] == 3


def test_control_register_round_trip(name):
    with voxring.Control(name + ".control", create=True) as c:
        with voxring.Control(name + ".control") as peer:
            assert peer.read(8) == (bytes(8), 0)
            c.write(b"speaking" + bytes(4))
            value, version = peer.read(12)
            assert value == b"speaking" + bytes(4) and version == 1
            with pytest.raises(voxring.VoxringError) as e:
                c.write(bytes(65))
            assert e.value.name == "VR_E_INVALID" and "64" in str(e.value)


def test_a_group_writable_segment_is_a_permission_error(name, tmp_path, monkeypatch):
    """Attack: the segment made writable by its group after it was created (anyone in the
    group could rewrite the ring). The reader refuses it as the C ABI does: VR_E_PERMISSION
    (it once said VR_E_ATTACH), and the message says which mode it found."""
    monkeypatch.setenv("VOXRING_FALLBACK_DIR", str(tmp_path))
    with voxring.Writer.create(name) as w:
        os.chmod(f"/dev/shm/voxring.{name}", 0o660)
        with pytest.raises(voxring.VoxringError) as e:
            voxring.Reader(name, fallback=False)
        assert e.value.name == "VR_E_PERMISSION", e.value
        assert "660" in str(e.value), e.value
        del w


def test_errors_say_what_and_why(name, tmp_path, monkeypatch):
    # The fallback's default directory would be made in the temp dir: use the test's own.
    monkeypatch.setenv("VOXRING_FALLBACK_DIR", str(tmp_path))
    with pytest.raises(voxring.VoxringError) as e:
        voxring.Reader(name, fallback=False)
    assert e.value.name == "VR_E_NOT_FOUND" and name in str(e.value)
    assert "start the producer first" in str(e.value)  # what to do
    with pytest.raises(voxring.VoxringError) as e:
        voxring.Reader(name)  # with the fallback: both reasons are given
    assert "socket fallback failed too" in str(e.value)
    with voxring.Writer.create(name) as w:
        with pytest.raises(voxring.VoxringError) as e:
            voxring.Writer.attach(name)
        assert e.value.name == "VR_E_BUSY"
        with pytest.raises(voxring.VoxringError) as e:
            voxring.Writer.create(name)
        assert e.value.name == "VR_E_EXISTS"
        del w


def test_the_package_is_the_native_extension():
    """No ctypes, no VOXRING_LIB: the classes come from the abi3 extension module."""
    mod = voxring._voxring
    assert Path(mod.__file__).name.endswith(".abi3.so"), mod.__file__
    assert voxring.Reader.__mro__[1] is mod.Reader
    assert issubclass(voxring.ClosedError, voxring.VoxringError)
    assert issubclass(voxring.VoxringError, RuntimeError)


@pytest.mark.parametrize("policy", ["lossless", "lossy"])
def test_fallback_when_the_segment_is_refused(peer, spawn, name, policy):
    """The reader may not open the segment (another user, mode 0600; or, not root, a segment
    made unreadable): it reads the same frames through the producer's socket, and says so."""
    d = Path(tempfile.mkdtemp(prefix="voxring-fb-"))
    try:
        os.chmod(d, 0o755)
        sock = d / f"voxring.{name}.sock"
        prod = spawn([peer, "produce", name, "--policy", policy, "--count", "1000",
                      "--fallback", sock, "--socket-mode", "0666"])
        prod.expect("ready")
        seg = Path(f"/dev/shm/voxring.{name}")
        kw = {}
        if os.geteuid() == 0:
            def drop():
                os.setgid(65534)
                os.setuid(65534)
            kw["preexec_fn"] = drop
        else:
            os.chmod(seg, 0)
        # The other user may not be able to read the checkout (a 0700 home): give it copies of
        # the library, the package and the reader script in the world-readable folder.
        copy_package_for_another_user(d)
        for p in [d, *d.rglob("*")]:
            if not p.is_socket():  # the producer's socket keeps its own mode
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
        # The reader trusts the producer's uid on purpose (it checks the server with
        # SO_PEERCRED; see test_reader_as_another_user_refuses_the_server_by_default).
        env = dict(os.environ, VOXRING_FALLBACK_DIR=str(d), PYTHONDONTWRITEBYTECODE="1",
                   PYTHONPATH=str(d), VOXRING_TEST_EXPECTED_OWNER=str(os.geteuid()))
        child = spawn([BASE_PYTHON, d / "pattern.py", name], env=env, cwd=d, **kw)
        produced = prod.expect("done")
        got = json.loads(child.p.stdout.readline())
        assert child.wait() == 0 and prod.wait() == 0
        assert got["transport"] == "socket-fallback", got
        assert "attaching the shared segment failed" in got["reason"], got
        # Refused by the owner check (another uid) or by the file mode (EACCES).
        assert "uid" in got["reason"] or "permission" in got["reason"].lower(), got
        assert got["bad"] == 0
        if policy == "lossless":
            assert got["frames"] == 1000 and got["crc"] == produced["crc"], got
        else:
            assert 0 < got["frames"] and got["frames"] + got["lost"] <= 1000, got
        assert not sock.exists()
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the reader as another user")
def test_reader_as_another_user_refuses_the_server_by_default(peer, spawn, name):
    """Attack seen from the other side: a reader running as `nobody` finds a fallback socket
    it may connect to (mode 0666), served by root. Without expected_owner it refuses the server
    (SO_PEERCRED: uid 0, not its own) before reading anything, and says which uid it found."""
    d = Path(tempfile.mkdtemp(prefix="voxring-fb-"))
    try:
        sock = d / f"voxring.{name}.sock"
        # A producer that keeps going (paced, lossy, no consumer awaited) until it is told to
        # stop: its socket is there whenever the reader connects.
        prod = spawn([peer, "produce", name, "--policy", "lossy", "--consumers", "0",
                      "--count", "1000000000", "--interval-us", "1000", "--fallback", sock,
                      "--socket-mode", "0666"])
        prod.expect("ready")
        copy_package_for_another_user(d)
        for p in [d, *d.rglob("*")]:
            if not p.is_socket():
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
        env = dict(os.environ, VOXRING_FALLBACK_DIR=str(d), PYTHONDONTWRITEBYTECODE="1",
                   PYTHONPATH=str(d))
        env.pop("VOXRING_TEST_EXPECTED_OWNER", None)

        def drop():
            os.setgid(65534)
            os.setuid(65534)

        p = subprocess.run([BASE_PYTHON, d / "pattern.py", name], env=env, cwd=d,
                           preexec_fn=drop, capture_output=True, text=True, timeout=120)
        assert p.returncode != 0, p.stdout
        assert "VR_E_PERMISSION" in p.stderr, p.stderr
        assert "served by uid 0" in p.stderr and "nothing was read" in p.stderr, p.stderr
        prod.p.terminate()  # SIGTERM, by PID: the peer removes its segment and socket
        prod.wait()
        assert not sock.exists()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_hostile_greeting_is_an_error_not_an_abort(name, tmp_path):
    """Attack: a fake fallback server greets with 2^20 frames of 16 MiB (16 TiB). The reader
    raises VoxringError before allocating anything; the process lives on."""
    import socket
    import struct

    sock_path = tmp_path / "hostile.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock_path))
    srv.listen(1)
    greeting = b"VXFB" + struct.pack("<9I", 1, 2, 1 << 20, 1 << 22, 1, 2, 48000, 1, 1 << 24)

    def serve():
        c, _ = srv.accept()
        with c:
            c.sendall(greeting)
            c.recv(1)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with pytest.raises(voxring.VoxringError) as e:
            voxring.Reader(name, socket_path=sock_path, force_fallback=True)
        assert e.value.name == "VR_E_ATTACH", e.value
        assert "nothing was allocated" in str(e.value), e.value
    finally:
        t.join(60)
        srv.close()
    assert voxring.monotonic_ns() > 0  # still alive


def test_forced_fallback_reads_the_same_frames(peer, spawn, name, tmp_path):
    sock = tmp_path / "s.sock"
    prod = spawn([peer, "produce", name, "--count", "500", "--fallback", sock])
    prod.expect("ready")
    with voxring.Reader(name, socket_path=sock, force_fallback=True) as r:
        assert r.transport == "socket-fallback"
        assert r.config.samples_per_frame == 512
        got = read_all(r)
    produced = prod.expect("done")
    assert prod.wait() == 0
    assert got["frames"] == 500 and got["crc"] == produced["crc"] and got["bad"] == 0


def test_example_agent_reads_a_paced_producer(peer, spawn, name):
    """examples/agent.py with the command line `voxring run` gives its agents."""
    prefix = name
    prod = spawn([peer, "produce", f"{prefix}.capture", "--count", "150", "--interval-us", "2000"])
    prod.expect("ready")
    agent = spawn([sys.executable, HERE.parent / "examples" / "agent.py",
                   "--segments", prefix, "--parent", os.getpid(), "--index", "0"])
    agent.expect("ready")
    produced = prod.expect("done")
    line = agent.p.stdout.readline()
    assert agent.wait() == 0 and prod.wait() == 0
    out = json.loads(line)
    assert out["frames"] == 150 and out["lost"] == 0, out
    assert out["checksum"] == produced["crc"]
    assert out["transport"] == "shm" and out["exit"] == "end of stream"
    assert 0 < out["handoff_ns"]["p50"] <= out["handoff_ns"]["max"]
    assert not Path(f"/dev/shm/voxring.{prefix}.capture").exists()
