"""Control registers from Python: wait() blocks (without the GIL) until the version moves and
is woken by a write from another thread or process; read() waits out a writer stalled
mid-write (a forged odd sequence word in the segment, completed later) while try_read() does
not; wait_async() for asyncio; a running hub's registers opened with hub=."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import voxring
from conftest import ROOT

# A "give up" bound: reached only when a wake-up is lost.
GIVE_UP = 60.0
SEQ_OFFSET = 24  # core/LAYOUT.md, "Control register"


def forge_seq(name, value):
    """Writes the register's sequence word in its segment file, as a peer with write access
    (or a writer stopped between its two stores) leaves it."""
    fd = os.open(f"/dev/shm/voxring.{name}", os.O_WRONLY)
    try:
        os.pwrite(fd, value.to_bytes(8, sys.byteorder), SEQ_OFFSET)
    finally:
        os.close(fd)


def test_wait_is_woken_by_a_write_from_another_thread(name):
    reg = name + ".control"
    with voxring.Control(reg, create=True) as w, voxring.Control(reg) as r:
        assert r.wait(0, timeout=0) is None
        assert r.wait(0, timeout=0.01) is None
        got = []
        t = threading.Thread(target=lambda: got.append(r.wait(0, timeout=GIVE_UP)))
        t.start()
        w.write(b"speech on")
        t.join()
        assert got == [1]
        assert r.read(9) == (b"speech on", 1)
        assert r.version == 1 and r.size == 64
        # Already past: returns at once.
        assert r.wait(0) == 1


def test_wait_is_woken_by_a_write_from_another_process(name):
    reg = name + ".control"
    with voxring.Control(reg, create=True) as c:
        writer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, voxring\n"
                "c = voxring.Control(sys.argv[1])\n"
                "print('attached', flush=True)\n"
                "sys.stdin.readline()\n"
                "c.write(b'from another process')\n",
                reg,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout.readline().strip() == "attached"
            result = []
            t = threading.Thread(target=lambda: result.append(c.wait(0, timeout=GIVE_UP)))
            t.start()
            writer.stdin.write("go\n")
            writer.stdin.flush()
            t.join()
            assert writer.wait(GIVE_UP) == 0
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
            writer.stdout.close()
            writer.stdin.close()
        assert result == [1]
        assert c.read(20) == (b"from another process", 1)


def test_read_outlasts_a_writer_stalled_mid_write_and_try_read_does_not_wait(name):
    reg = name + ".control"
    with voxring.Control(reg, create=True) as c:
        c.write(b"hi")
        forge_seq(reg, 3)  # a write in progress after one completed write
        with pytest.raises(voxring.VoxringError) as e:
            c.try_read(2)
        assert e.value.name == "VR_E_CONTENDED"
        got = []
        t = threading.Thread(target=lambda: got.append(c.read(2, timeout=GIVE_UP)))
        t.start()
        time.sleep(0.02)  # the writer runs again, whenever: the reader waits either way
        forge_seq(reg, 4)
        t.join()
        assert got == [(b"hi", 2)]


def test_a_write_that_never_completes_is_reported_clearly(name):
    reg = name + ".control"
    with voxring.Control(reg, create=True) as c:
        forge_seq(reg, 1)
        with pytest.raises(voxring.VoxringError) as e:
            c.read(timeout=0.05)
        assert e.value.name == "VR_E_CONTENDED"
        assert "stalled or died mid-write" in str(e.value)
        with pytest.raises(ValueError):
            c.read(timeout=-1)
        with pytest.raises(ValueError):
            c.read(65)


def test_wait_async(name):
    reg = name + ".control"
    with voxring.Control(reg, create=True) as c:

        async def main():
            assert await c.wait_async(0, timeout=0.01) is None
            waiting = asyncio.ensure_future(c.wait_async(0, timeout=GIVE_UP))
            await asyncio.sleep(0)
            c.write(b"x")
            return await waiting

        assert asyncio.run(main()) == 1
        with pytest.raises(ValueError):
            asyncio.run(c.wait_async(0, timeout=-1))


def test_wait_answers_ctrl_c(name):
    reg = name + ".control"
    # Python raises KeyboardInterrupt only where it handles SIGINT: a process started in the
    # background by a non-interactive shell (a CI job, `cmd &`) inherits SIGINT ignored, and
    # Python then leaves it ignored. Handle it for this test, whatever was inherited.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    with voxring.Control(reg, create=True) as c:
        timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                c.wait(0, timeout=GIVE_UP)
        finally:
            timer.cancel()
            signal.signal(signal.SIGINT, inherited)


def test_closed_control_and_bad_hub_registers(name):
    c = voxring.Control(name + ".control", create=True)
    c.close()
    with pytest.raises(voxring.ClosedError):
        c.wait(0)
    with pytest.raises(voxring.VoxringError) as e:
        voxring.Control("loudness", hub=name)
    assert e.value.name == "VR_E_INVALID" and '"speech" or "value0"' in str(e.value)
    with pytest.raises(voxring.VoxringError) as e:
        voxring.Control("speech", hub=name)
    assert e.value.name == "VR_E_NOT_FOUND" and "voxring serve --name" in str(e.value)
    with pytest.raises(voxring.VoxringError) as e:
        voxring.Control("speech", create=True, hub=name)
    assert e.value.name == "VR_E_INVALID"


@pytest.fixture
def hub(spawn):
    """A live `voxring serve` on the synthetic device (the binary cargo build --workspace
    made), stopped with SIGTERM (by PID) so it removes its segments."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    exe = next(
        (p for p in (target / "debug" / "voxring", target / "release" / "voxring") if p.is_file()),
        None,
    )
    if exe is None:
        pytest.fail(f"voxring is not built in {target}: run `cargo build --workspace`")
    name = f"py{os.getpid()}{uuid.uuid4().hex[:6]}"
    p = spawn([exe, "serve", "--name", name, "--device", "synthetic", "--rt-priority", "0"])
    p.expect("voxring serve: hub")
    yield name
    p.p.send_signal(signal.SIGTERM)
    assert p.p.wait(GIVE_UP) == 0
    left = [f for f in os.listdir("/dev/shm") if f.startswith(f"voxring.{name}.")]
    assert not left, f"the hub left {left}"


def test_hub_registers_from_python_with_a_writer_in_another_process(hub):
    speech = voxring.Control("speech", hub=hub)
    assert speech.size == 32
    data, seen = speech.read()
    assert data == bytes(32)
    writer = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, voxring\n"
            "v = voxring.Control('value7', hub=sys.argv[1])\n"
            "v.write((7).to_bytes(8, sys.byteorder) * 4)\n"
            "s = voxring.Control('speech', hub=sys.argv[1])\n"
            "s.write((1).to_bytes(8, sys.byteorder) + (4800).to_bytes(8, sys.byteorder))\n",
            hub,
        ],
        timeout=GIVE_UP,
    )
    assert writer.returncode == 0
    assert speech.wait(seen, timeout=GIVE_UP) == seen + 1
    data, _ = speech.read(16)
    assert int.from_bytes(data[:8], sys.byteorder) == 1
    assert int.from_bytes(data[8:16], sys.byteorder) == 4800
    value = voxring.Control("value7", hub=hub)
    assert value.read() == ((7).to_bytes(8, sys.byteorder) * 4, 1)
    speech.close()
    value.close()
