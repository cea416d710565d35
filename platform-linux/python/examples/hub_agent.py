#!/usr/bin/env python3
"""A Python agent of a running hub (`voxring serve --name HUB`), through the native voxring
package only. Used by the test `outside_c_and_python_agents_read_bit_exact_and_speak_into_the_mix`
(harness/tests/hub.rs) and the example of docs/hub.md; the same protocol as the C agent
platform-linux/ffi/c/hub_agent.c.

    python3 hub_agent.py HUB NAME FRAMES LEVEL

- joins the hub's mic ring HUB.mic as a reader (shared memory only: no socket fallback);
- makes its output ring HUB.out.NAME in the mic's format (32 frames, one consumer: the hub,
  lossless) and prints "ready";
- for every mic frame: the CRC-32 of its payload, then one frame of LEVEL (every sample) into
  the output ring; it never waits for room there (a full ring drops the frame, counted);
- after FRAMES frames prints one JSON line: {"first_seq", "frames", "lost", "crc" (CRC-32 of
  the payloads of frames first_seq .. first_seq + frames, in order, hex), "spoken", "dropped"};
- goes on reading and speaking until its standard input is closed (or the hub's stream ends),
  then removes its output ring and leaves.
"""

import json
import sys
import threading

import voxring


def main():
    hub, name, want, level = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    mic = voxring.Reader(f"{hub}.mic", fallback=False)
    c = mic.config
    out = voxring.Writer.create(
        f"{hub}.out.{name}",
        frames=32,
        samples_per_frame=c.samples_per_frame,
        channels=c.channels,
        format=c.format,
        sample_rate=c.sample_rate,
        max_consumers=1,
        policy="lossless",
    )
    value = level / 32768.0 if c.format == "f32" else level
    closed = threading.Event()

    def watch_stdin():
        sys.stdin.buffer.read()
        closed.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print("ready", flush=True)

    first = next_seq = None
    frames = lost = spoken = dropped = crc = 0
    reported = False
    while not closed.is_set():
        w = mic.wait(0.1)
        if w == voxring.END:
            break
        if w != voxring.READY:
            continue
        with mic.read(1) as g:
            got = len(g)
            for f in g:
                if f.end_of_stream:
                    closed.set()
                    break
                if not reported:
                    if first is None:
                        first = next_seq = f.seq
                    lost += f.seq - next_seq
                    next_seq = f.seq + 1
                    crc = voxring.crc32(f.samples, crc)
                    frames += 1
        if not got:
            continue
        with out.grant(1, timeout=0) as wg:  # never waits for room: empty when full
            for o in wg:
                o.samples[:] = value
                o.len = o.capacity
            if len(wg) == 0:
                dropped += 1
            else:
                spoken += 1
        if not reported and frames == want:
            line = {"first_seq": first, "frames": frames, "lost": lost, "crc": f"{crc:08x}",
                    "spoken": spoken, "dropped": dropped}
            print(json.dumps(line), flush=True)
            reported = True
    out.close()
    mic.close()
    if not reported:
        sys.exit(f"hub_agent.py: the stream ended after {frames} of {want} frames")


if __name__ == "__main__":
    main()
