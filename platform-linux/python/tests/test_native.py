"""What the native package promises beyond the API it shares with the C ABI: zero copy seen
from another process, views that never outlive their memory, waits that release the GIL,
asyncio, and bad input that raises instead of crashing."""

import asyncio
import gc
import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

import voxring
from pattern import pattern

# A Python producer in a process of its own, driven line by line through stdin: "N" commits
# one frame of value N; "grant N" fills half a frame with N and stops before the commit.
PRODUCER = r"""
import sys, time, voxring
name, policy = sys.argv[1], sys.argv[2]
w = voxring.Writer.create(name, frames=4, samples_per_frame=64, policy=policy)
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "grant":
        g = w.grant(1, timeout=30.0)
        g[0].samples[:32] = int(cmd[1])
        print("granted", flush=True)
        time.sleep(3600)  # killed here, mid-grant
    with w.grant(1, timeout=30.0) as g:
        g[0].samples[:] = int(cmd[0])
    print("wrote", cmd[0], flush=True)
"""


def producer(spawn, name, policy="lossless"):
    p = spawn([sys.executable, "-c", PRODUCER, name, policy], stdin=subprocess.PIPE)
    p.expect("ready")

    def send(line, expect="wrote"):
        p.p.stdin.write(f"{line}\n")
        p.p.stdin.flush()
        return p.expect(expect)

    return p, send


def first_frame(r):
    assert r.wait(30.0) == voxring.READY, "no frame within 30 s"
    g = r.read(1)
    assert len(g) == 1
    return g


def test_a_write_in_another_process_is_seen_through_the_view(spawn, name):
    """Zero copy, from the outside: the reader holds the view of frame 0; the producer (another
    process, lossy ring of 4) laps the ring; the same array, with no new read, shows the
    producer's new value. Then the ring says the frame was overwritten."""
    p, send = producer(spawn, name, "lossy")
    try:
        with voxring.Reader(name) as r:
            send(7)
            g = first_frame(r)
            a = g[0].samples
            assert g[0].seq == 0 and np.all(a == 7)
            mem = r.memory
            assert mem.address <= a.ctypes.data < mem.address + len(mem)
            for v in (1, 2, 3, 4):  # frame 4 goes into frame 0's slot
                send(v)
            assert np.all(a == 4), "the view did not show the producer's write"
            assert g.release() is False  # the data was overwritten while held: discard it
            assert r.status()["lost_frames"] >= 1
    finally:
        p.p.stdin.close()
        assert p.wait() == 0


def test_view_after_release_and_after_commit(name):
    with voxring.Writer.create(name, frames=4, samples_per_frame=16) as w:
        with voxring.Reader(name) as r:
            with w.grant(1) as g:
                wa = g[0].samples
                wa[:] = 3
            with pytest.raises(ValueError, match="read-only"):
                wa[0] = 1  # a write after the commit is refused, not a silent race
            with pytest.raises(voxring.ReleasedError):
                g[0].samples
            with r.read(1) as rg:
                f = rg[0]
                a = f.samples
            with pytest.raises(voxring.ReleasedError) as e:
                f.samples
            assert e.value.name == "VR_E_RELEASED" and "copy what you keep" in str(e.value)
            # The array taken before the release is still memory voxring keeps mapped.
            assert np.all(a == 3) and not f.valid and not rg.open
            assert rg.release() is True  # twice: nothing happens


def write_frames(w, first, n):
    for i in range(first, first + n):
        with w.grant(1, timeout=5.0) as g:
            g[0].samples[:] = i
            g[0].timestamp_ns = i


def test_reused_frame_objects_never_revive_a_released_frame(name):
    """The reader reuses a slot's Frame object once nothing else holds it (no object is made
    per frame). A frame Python still holds is never refilled: through it, and through the
    slot's cached view, access after release raises, while later grants of the same slot
    (new objects then) read the new data."""
    with voxring.Writer.create(name, frames=4, samples_per_frame=8, format="s32") as w:
        with voxring.Reader(name) as r:
            it = iter(r)
            write_frames(w, 0, 1)
            kept = next(it)  # frame 0, slot 0: held from here on
            assert kept.seq == 0 and kept.samples[0] == 0
            ids = set()
            for i in range(1, 24):  # six laps of the ring: slot 0 is granted again and again
                write_frames(w, i, 1)
                f = next(it)
                assert f.seq == i and np.all(f.samples == i) and f.valid
                assert kept is not f
                ids.add(id(f))
                del f
                # Still frame 0, still refused: its object was never refilled.
                assert kept.seq == 0 and kept.timestamp_ns == 0 and not kept.valid
                with pytest.raises(voxring.ReleasedError):
                    kept.samples
            # Frames nobody held were reused: fewer objects than frames.
            assert len(ids) < 23
            # The iterator's own frame goes with the next read, even if it is a reused one.
            write_frames(w, 24, 2)
            f = next(it)
            s = f.samples
            r.read(1).release()
            with pytest.raises(voxring.ReleasedError):
                f.samples
            assert not f.valid and s.base is r.memory


def test_one_slot_ring_iterates_without_a_new_frame_per_step(name):
    """On a one-slot ring `for f in reader` holds the previous frame (bound to `f`) while the
    next one is granted: the reader hands out its other cached Frame object instead of making
    one per step (no Python object is allocated: counted with sys.getallocatedblocks), and the
    frame the caller still holds is not refilled."""
    with voxring.Writer.create(name, frames=1, samples_per_frame=8, format="s32") as w:
        with voxring.Reader(name) as r:
            # One step of `for f in r` without waiting (what `async for` uses): single thread.
            write_frames(w, 0, 1)
            f = r._next_frame()
            for _ in range(3):  # the counts' own ints, in the loop's steady state
                b0 = sys.getallocatedblocks()
                b1 = sys.getallocatedblocks()
            base = b1 - b0
            extra = []
            gc.disable()
            try:
                for i in range(1, 13):
                    assert r._next_frame() is None  # releases frame i-1; `f` still holds it
                    write_frames(w, i, 1)
                    b0 = sys.getallocatedblocks()
                    g = r._next_frame()
                    b1 = sys.getallocatedblocks()
                    extra.append(b1 - b0 - base)
                    assert g is not f and g.seq == i and np.all(g.samples == i)
                    assert f.seq == i - 1 and not f.valid  # never refilled, still refused
                    f = g
                    del g
            finally:
                gc.enable()
            assert sum(extra) <= 2, f"objects allocated per step: {extra}"


def test_writer_reuses_a_slot_view_only_when_nobody_kept_it(name):
    """The writer hands out the slot's cached view again (no numpy array made per grant),
    writable again, when nothing else holds it; an array the caller kept from an earlier grant
    stays read-only for good, even when its slot is granted again, and the slot gets a new
    view."""
    with voxring.Writer.create(name, frames=1, samples_per_frame=8, format="s16") as w:
        with voxring.Reader(name) as r:

            def read_first():
                with r.read(1) as rg:
                    return rg[0].samples.copy()

            with w.grant(1) as g:
                first_id = id(g[0].samples)
                g[0].samples[:] = 1
            assert read_first()[0] == 1
            with w.grant(1, timeout=5.0) as g:
                s = g[0].samples
                assert id(s) == first_id, "the slot's view was not reused"
                s[:] = 2  # writable again
                kept = s
            del s
            assert read_first()[0] == 2
            with w.grant(1, timeout=5.0) as g:
                fresh = g[0].samples
                assert fresh is not kept and not kept.flags.writeable
                with pytest.raises(ValueError, match="read-only"):
                    kept[0] = 9  # the kept array never becomes writable again
                fresh[:] = 3
                assert fresh.ctypes.data == kept.ctypes.data  # the same slot
            del fresh
            assert np.all(read_first() == 3)
            with pytest.raises(ValueError, match="read-only"):
                kept[0] = 9


def test_a_grant_after_a_release_does_not_reopen_old_grants(name):
    """Validity is the grant's number, not the slot: a grant that was released stays closed
    when a later grant of the same slots opens (including through `read` after iteration)."""
    with voxring.Writer.create(name, frames=2, samples_per_frame=8) as w:
        with voxring.Reader(name) as r:
            write_frames(w, 0, 1)
            g1 = r.read(1)
            f1 = g1[0]
            g1.release()
            for i in range(1, 5):
                write_frames(w, i, 1)
                with r.read(1) as g:
                    assert g.open and g[0].valid and g[0].seq == i
                    assert not g1.open and not f1.valid
                    with pytest.raises(voxring.ReleasedError):
                        f1.samples
                    assert g1.release() is True  # a stale release changes nothing
                    assert g.open and g[0].valid


def test_reader_closed_while_a_view_is_alive(name):
    with voxring.Writer.create(name, frames=4, samples_per_frame=16) as w:
        r = voxring.Reader(name)
        with w.grant(1) as g:
            g[0].samples[:] = 9
        rg = r.read(1)
        f = rg[0]
        a = f.samples
        r.close()
        assert r.closed and w.status()["consumers"] == 0
        assert np.all(a == 9)  # the mapping lives on with the array: no crash, same bytes
        with pytest.raises(voxring.ReleasedError):
            f.samples
        for call in (lambda: r.read(1), lambda: r.wait(0), r.status):
            with pytest.raises(voxring.ClosedError) as e:
                call()
            assert e.value.name == "VR_E_CLOSED"
        assert rg.release() is True
        r.close()  # twice is fine
        del a


def test_writer_killed_mid_grant(spawn, name):
    """The producer process dies (SIGKILL) with a grant open: the reader gets the frames that
    were committed, never the half-written one, then END; a view it holds stays readable."""
    p, send = producer(spawn, name)
    try:
        with voxring.Reader(name) as r:
            send(5)
            g = first_frame(r)
            a = g[0].samples
            send("grant 6", expect="granted")
            p.p.kill()  # by PID
            p.wait()
            assert np.all(a == 5)
            g.release()
            assert r.wait(60.0) == voxring.END
            assert len(r.read(1)) == 0
    finally:
        # The killed producer could not remove its segment: the test does.
        Path(f"/dev/shm/voxring.{name}").unlink(missing_ok=True)


def test_iteration_reads_a_rust_producer(peer, spawn, name):
    prod = spawn([peer, "produce", name, "--count", "300"])
    prod.expect("ready")
    crc, n = 0, 0
    with voxring.Reader(name) as r:
        for f in r:
            assert np.array_equal(f.samples, pattern(f.seq, f.samples.size))
            crc = zlib.crc32(f.samples, crc)
            n += 1
            if f.end_of_stream:
                break
        # The frame the loop ended on is released by the next read.
        assert len(r.read(1)) == 0 and r.status()["read_pos"] == 300
    produced = prod.expect("done")
    assert prod.wait() == 0
    assert n == 300 and f"{crc:08x}" == produced["crc"]


def test_async_for_reads_a_rust_producer(peer, spawn, name):
    prod = spawn([peer, "produce", name, "--count", "300", "--interval-us", "500"])
    prod.expect("ready")

    async def main():
        crc, n = 0, 0
        with voxring.Reader(name) as r:
            async for f in r:
                crc = zlib.crc32(f.samples, crc)
                n += 1
                if f.end_of_stream:
                    break
        return crc, n

    crc, n = asyncio.run(main())
    produced = prod.expect("done")
    assert prod.wait() == 0
    assert n == 300 and f"{crc:08x}" == produced["crc"]


def test_asyncio_wait_times_out_without_blocking_the_loop(name):
    async def main():
        with voxring.Writer.create(name) as w, voxring.Reader(name) as r:
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)

            t = asyncio.create_task(ticker())
            # The ticker is scheduled before the wait yields: had the wait blocked the event
            # loop, it could not have run once before the wait ended.
            res = await r.wait_async(timeout=0.3)
            seen = ticks
            t.cancel()
            assert res == voxring.TIMEOUT and seen >= 1

            def commit():
                with w.grant(1) as g:
                    g[0].samples[:] = 1

            threading.Thread(target=commit).start()
            assert await r.wait_async(timeout=60.0) == voxring.READY
            with r.read(1) as g:
                assert np.all(g[0].samples == 1)

    asyncio.run(main())


def test_asyncio_wait_can_be_cancelled(name):
    async def main():
        with voxring.Writer.create(name) as w, voxring.Reader(name) as r:
            task = asyncio.create_task(r.wait_async())  # no timeout
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The reader still works (its helper finishes its slice first, without the GIL).
            with w.grant(1) as g:
                g[0].samples[:] = 2
            assert await asyncio.wait_for(r.wait_async(), 60.0) == voxring.READY
            with r.read(1) as g:
                assert len(g) == 1 and np.all(g[0].samples == 2)

    asyncio.run(main())


def test_hostile_segment_is_refused(name):
    """Attack: a file of random bytes where a ring should be. Attaching raises (after
    validating the header), and the process goes on."""
    path = Path(f"/dev/shm/voxring.{name}")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.write(fd, np.random.default_rng(13).integers(0, 256, 8192, dtype=np.uint8).tobytes())
        os.close(fd)
        for open_ in (lambda: voxring.Reader(name, fallback=False), lambda: voxring.Writer.attach(name)):
            with pytest.raises(voxring.VoxringError) as e:
                open_()
            assert e.value.name == "VR_E_ATTACH", e.value
            assert name in str(e.value)
    finally:
        path.unlink()


def test_segment_truncated_under_a_view(name):
    """Attack: a peer truncates the segment while the reader holds a view. Touching the view
    reads zero pages (voxring's SIGBUS handler), never a crash; the next wait raises."""
    with voxring.Writer.create(name, frames=4, samples_per_frame=2048) as w:
        with voxring.Reader(name) as r:
            with w.grant(1) as g:
                g[0].samples[:] = 5
            rg = first_frame(r)
            a = rg[0].samples
            subprocess.run(["truncate", "-s", "0", f"/dev/shm/voxring.{name}"], check=True)
            assert int(a.sum()) == 0  # zero pages, not the frame, and not a SIGBUS
            # The ring now reads as zeros: the release finds this consumer gone, the wait the
            # truncation; both raise.
            with pytest.raises(voxring.VoxringError) as e:
                rg.release()
            assert e.value.name == "VR_E_EVICTED", e.value
            with pytest.raises(voxring.VoxringError) as e:
                r.wait(30.0)
            assert "truncated" in str(e.value)


@pytest.mark.parametrize("fmt,dtype", [("s16", np.int16), ("s32", np.int32), ("f32", np.float32)])
@pytest.mark.parametrize("policy", ["lossless", "lossy"])
def test_ring_config_reads_back_what_was_created(name, fmt, dtype, policy):
    """Every format and policy name goes into the ring and comes back (from the reader's own
    attach), with the dtype of the views."""
    with voxring.Writer.create(name, frames=8, samples_per_frame=32, channels=2, format=fmt,
                               sample_rate=16000, max_consumers=3, policy=policy) as w:
        with voxring.Reader(name, fallback=False) as r:
            for c in (w.config, r.config):
                assert (c.frames, c.samples_per_frame, c.channels) == (8, 32, 2)
                assert (c.format, c.policy, c.dtype) == (fmt, policy, np.dtype(dtype))
                assert (c.sample_rate, c.max_consumers) == (16000, 3)
                assert f'format="{fmt}"' in repr(c)
            with w.grant(1) as g:
                assert g[0].samples.dtype == dtype and g[0].samples.size == 64


def test_bad_arguments_raise_and_say_what_to_do(name):
    cases = [
        (lambda: voxring.Writer.create(name, frames=3), "power of two"),
        (lambda: voxring.Writer.create(name, format="s8"), '"s16", "s32" or "f32"'),
        (lambda: voxring.Writer.create(name, policy="best"), "lossless"),
        (lambda: voxring.Reader(name, expected_owner=-5), "not a uid"),
        (lambda: voxring.Reader("../etc/passwd", fallback=False), ""),
    ]
    for make, words in cases:
        with pytest.raises((ValueError, voxring.VoxringError)) as e:
            make()
        assert words in str(e.value), e.value
    with voxring.Writer.create(name) as w, voxring.Reader(name) as r:
        with pytest.raises(ValueError, match="None to wait"):
            r.wait(-1)
        g = w.grant(1)
        with pytest.raises(voxring.VoxringError) as e:
            w.grant(1)  # one grant at a time
        assert e.value.name == "VR_E_GRANT_OPEN" and "commit it first" in str(e.value)
        g[0].len = 1 << 20
        with pytest.raises(ValueError, match="exceeds the slot"):
            g.commit()
    with pytest.raises(voxring.ClosedError):
        w.grant(1)


def test_control_closed_and_oversized(name):
    c = voxring.Control(name + ".control", create=True)
    c.write(b"x" * 64)
    assert c.read(1) == (b"x", 1)
    c.close()
    with pytest.raises(voxring.ClosedError):
        c.read()
    with pytest.raises(voxring.VoxringError):
        voxring.Control(name + ".control")  # removed on close
