"""The speech recogniser agent: reads the mic ring, waits for the VAD agent's end-of-speech
decision (its control register), decodes that utterance with pocketsphinx against a JSGF
grammar of the scenario's commands, and prints one JSON line per result.

    python3 recogniser.py --ring NAME.mic --vad NAME.vad [--grammar commands.jsgf]
                          [--asr NAME.asr --said NAME.said]

--decode batch (the default) decodes the whole utterance after the VAD's end decision.
--decode streaming starts a pocketsphinx utterance at the VAD's speech start and feeds it the
ring's frames in fixed blocks (start_utt / process_raw), so that after the decision only the
last frames, the flush (end_utt) and the final search remain (a segment it did not follow from
its start is decoded in one go). It cuts recognition to a few ms, but on espeak-ng's voice it
hears "turn off the bedroom light" as "turn on ..." for some placements of the speech against
pocketsphinx's 10 ms analysis frames (moving the same audio by 10 to 30 samples at 16 kHz flips
it; decoded in one go, every placement is right; replay_trace.py --shift shows it): a
property of pocketsphinx's live decode on this voice, not of load or of the audio's way here
(docs/voice-round-trip.md). Not the default while that stands.

With --rt-priority N (`voxring voice assistant` passes 50: below its hub, talker, reply and
VAD agents) every thread of the process runs under SCHED_FIFO N, so that a decode is not
shared out with CPU hogs; a refusal is a warning on stderr and in the ready line.

Lines on stdout (JSON): {"event": "ready", "sched": "SCHED_FIFO 50", "warning": null} once it
has joined the ring; then per utterance
{"event": "result", "utterance": k, "text": ..., "start_pos", "end_pos" (the VAD's
boundaries, ring samples), "vad_decided_pos", "vad_decided_ns", "vad_frame_commit_ns",
"hangover_ms", "recognised_ns" (CLOCK_MONOTONIC when the text was known), "decode_ns",
"resample_ns" (both after the decision), "read_pos" (how far it had read the ring when it
decided), "streamed" (decoded while spoken), "early_decode_ns" (the work before the decision)}; at the end
{"event": "end", "frames", "lost", "results", "missed", "refused"}. A VAD record that cannot
be an utterance (end before start, longer than 15 s, decided before its end) is refused with
{"event": "refused", "why": ...}, not decoded. Exit status 0 unless something was lost or
refused (a result must be true: a missed decision or a lost frame fails the run).

The ring is read by `read_ready` alone, through the native package (`import voxring`, the
pyo3 extension built from platform-linux/python).

The VAD's decisions are noticed by a thread blocked in the register's `wait` (woken by the VAD
agent's write, GIL released), which decodes at once when the audio up to the decision is in the
history (it normally is: this reader is woken by the same mic frames as the VAD, and the VAD
decides after its model has run); the mic loop also looks after each read, for a decision that
came before its audio. Both hold one lock while they touch the history, the decoder or the
counts. "vad_seen_ns" is when the decision was first noticed.

With --asr, each result is also published in a control register it creates (the recogniser →
reply hop of `voxring voice assistant`): results, utterance, recognised_ns, read_pos, then
the text (UTF-8, at most 32 bytes). With --said (the reply agent's register: replies done,
last reply frame's commit ns), it does not decode its own assistant's voice, which the
loopback brings back into the mic: while a reply is being spoken, and until --echo-margin-s
after its last frame was committed, the VAD's segments that start after the result was
published are reported as {"event": "echo"} and not decoded (a half-duplex assistant).
"""

import argparse
import json
import os
import pickle
import struct
import sys
import threading
import time

import numpy as np
import soxr
from pocketsphinx import Decoder

import voxring

if not hasattr(voxring, "_voxring"):
    sys.exit("this `voxring` is not the native package: install platform-linux/python into the "
             "venv (scripts/test does) and run this with that venv's python")

HERE = os.path.dirname(os.path.abspath(__file__))
# The VAD agent's record (harness/src/voice/vad.rs, VadRecord): eight native-endian words.
VAD_RECORD = struct.Struct("=II7Q")
VAD_STREAM_ENDED = 2  # VadRecord::STREAM_ENDED: every decision is published
# How long to wait for the VAD's last decisions once the ring has ended (a give-up bound).
VAD_FINISH_S = 60.0
ASR_RATE = 16000
# The longest utterance decoded; a longer span in the VAD's record is refused.
MAX_UTTERANCE_S = 15.0
# Audio kept before the VAD's start boundary and after its end (the boundaries are within
# 60 ms of the truth; pocketsphinx also wants a little silence around the words).
PAD_S = 0.3
# The cepstral mean a streaming decode starts each utterance from (pocketsphinx's live CMN
# prior), measured on espeak-ng's en-us voice by calibrate_cmn.py (it prints this line and how
# many of the grammar's commands the streaming decode gets right from it: 7 of 8 on
# 2026-12-02). pocketsphinx's default (40,3,-1) turned "turn off ..." into "turn on ...".
CMN_INIT = ("39.8639,-3.97152,-7.28352,15.9941,-8.98973,1.53088,-1.10333,-19.0544,-2.20979,"
            "-12.755,8.58971,-3.0946,-5.16323")
# A streaming decode is fed in blocks of this many mic samples counted from the utterance's
# first sample, whatever the ring delivered per read (the last block, at the decision, may be
# shorter): pocketsphinx's live CMN updates per block, so a block size that followed the
# machine's load made results vary ("turn off" heard as "turn on" in 3 of 7 under --load 2).
STREAM_BLOCK = 1024
# The recogniser -> reply record: four words, then the text.
ASR_HEAD = struct.Struct("=4Q")
ASR_TEXT_BYTES = 32
# The reply agent's record: replies done, last reply frame's commit ns, first's, utterance.
SAID_RECORD = struct.Struct("=4Q")


def read_register(reg, size):
    """Reads a control register. The package's read waits out a write in progress (its
    writer, another process, can be descheduled mid-write on a loaded machine) for up to 2 s,
    then raises saying which case it was."""
    return reg.read(size)[0]


def read_ready(reader, on_frame, timeout=0.5, on_handoff=None, lock=None):
    """Waits up to `timeout` s for frames of `reader`, hands every ready frame to
    on_frame(sample_pos, samples) (the view is valid only during the call), and returns
    voxring.READY, voxring.TIMEOUT or voxring.END. Raises on lost frames. on_handoff(ns, ts)
    gets, per frame, its position, commit stamp and how long it took from its commit to this
    reader's hands. With `lock`, the frames are handed over holding it (not the wait)."""
    state = reader.wait(timeout=timeout)
    if state != voxring.READY:
        return state
    if lock is None:
        return _drain(reader, on_frame, on_handoff)
    with lock:
        return _drain(reader, on_frame, on_handoff)


def _drain(reader, on_frame, on_handoff):
    while True:
        with reader.read(16) as grant:
            got = time.monotonic_ns()
            if grant.lost:
                raise RuntimeError(f"the recogniser lost {grant.lost} frames of {reader.name}")
            if not len(grant):
                return voxring.READY
            for f in grant:
                if f.end_of_stream:
                    return voxring.END
                on_frame(f.sample_pos, f.samples)
                if on_handoff is not None:
                    on_handoff(f.sample_pos, f.timestamp_ns, got - f.timestamp_ns)


class History:
    """The last `seconds` of the mono ring, addressed by sample position."""

    def __init__(self, rate, seconds=30.0):
        self.size = int(rate * seconds)
        self.buf = np.zeros(self.size, dtype=np.int16)
        self.end = None  # one past the last sample position written
        self.frames = 0
        self.gaps = 0

    def add(self, pos, samples):
        n = len(samples)
        if self.end is not None and pos != self.end:
            self.gaps += 1
        i = pos % self.size
        k = min(n, self.size - i)
        self.buf[i:i + k] = samples[:k]
        self.buf[:n - k] = samples[k:]
        self.end = pos + n
        self.frames += 1

    def get(self, a, b):
        """Samples [a, b) (clamped to what is held)."""
        if self.end is None:
            return np.zeros(0, dtype=np.int16)
        a = max(a, self.end - self.size, 0)
        b = min(b, self.end)
        idx = np.arange(a, b) % self.size
        return self.buf[idx]


def implausible(start_pos, end_pos, decided_pos, rate):
    """Why a VAD record cannot describe an utterance, or None."""
    if end_pos <= start_pos:
        return f"its end ({end_pos}) is not after its start ({start_pos})"
    if end_pos - start_pos > MAX_UTTERANCE_S * rate:
        return (f"it spans {(end_pos - start_pos) / rate:.1f} s, more than the "
                f"{MAX_UTTERANCE_S:.0f} s an utterance may last")
    if decided_pos < end_pos:
        return f"it was decided ({decided_pos}) before its end ({end_pos})"
    return None


def decoder(grammar):
    # Tried on these machines with espeak-ng's speech (docs/voice-round-trip.md):
    # - fwdflat/bestpath on cut commands short ("turn on" for "turn on the kitchen light");
    # - without dither, the exact digital silence between utterances (log of zero energy in
    #   the features) made "what time is it" decode to nothing; the front end's dither (with
    #   a fixed seed, so a result is reproducible) fixes it.
    return Decoder(jsgf=grammar, samprate=ASR_RATE, loglevel="FATAL", fwdflat=False,
                   bestpath=False, dither=True, seed=1)


class TracedDecoder:
    """A diagnostic: the decoder, with every call made to it (and each hypothesis) appended to
    a pickle stream, so that a run's decoding can be replayed offline call for call
    (VOXRING_ASR_TRACE=FILE; replay_trace.py replays it). Not for measured runs: it writes."""

    def __init__(self, dec, path):
        self.dec = dec
        self.out = open(path, "wb")  # noqa: SIM115 (closed by close())

    def _log(self, *call):
        pickle.dump(call, self.out)

    def set_cmn(self, cmn):
        self._log("set_cmn", cmn)
        self.dec.set_cmn(cmn)

    def start_utt(self):
        self._log("start_utt")
        self.dec.start_utt()

    def process_raw(self, pcm, full_utt=False):
        self._log("process_raw", bytes(pcm), full_utt)
        return self.dec.process_raw(pcm, full_utt=full_utt)

    def end_utt(self):
        self.dec.end_utt()
        hyp = self.dec.hyp()
        self._log("end_utt", hyp.hypstr if hyp is not None else None)

    def hyp(self):
        return self.dec.hyp()

    def close(self):
        self.out.close()


def to_pcm(x):
    """Float samples in -1..1 as S16 bytes (what pocketsphinx takes)."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()


def recognise(dec, audio, rate):
    """Text of `audio` (int16 at `rate`), decoded in one go, and the ns spent resampling and
    decoding."""
    t0 = time.monotonic_ns()
    pcm = to_pcm(soxr.resample(audio.astype(np.float32) / 32768.0, rate, ASR_RATE))
    t1 = time.monotonic_ns()
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    hyp = dec.hyp()
    t2 = time.monotonic_ns()
    return (hyp.hypstr if hyp is not None else ""), t1 - t0, t2 - t1


class Streaming:
    """One utterance decoded while it is spoken: started at the VAD's speech start (segment
    `segment`, from PAD_S before its start boundary), fed what the ring brings (resampled by
    a soxr stream), so that after the VAD's end decision only the last audio, the flush and
    the final search remain. The work before the decision is counted apart (`early_ns`)."""

    def __init__(self, dec, rate, segment, start_pos, cmn=CMN_INIT):
        self.dec = dec
        self.rate = rate
        self.segment = segment
        self.start_pos = start_pos
        self.fed = start_pos - int(PAD_S * rate)
        self.rs = soxr.ResampleStream(rate, ASR_RATE, 1, dtype="float32")
        self.early_ns = 0
        if cmn:
            dec.set_cmn(cmn)  # every utterance from the same prior, not the last one's mean
        dec.start_utt()

    def too_long(self):
        """Bounded work: a segment longer than an utterance may last is not decoded early."""
        return self.fed - self.start_pos > MAX_UTTERANCE_S * self.rate

    def feed(self, hist, upto, last=False):
        """Decodes the ring's samples [fed, upto); returns (resample ns, decode ns)."""
        t0 = time.monotonic_ns()
        upto = min(upto, hist.end)
        audio = hist.get(self.fed, upto) if upto > self.fed else np.zeros(0, dtype=np.int16)
        self.fed = max(self.fed, upto)
        pcm = to_pcm(self.rs.resample_chunk(audio.astype(np.float32) / 32768.0, last=last))
        t1 = time.monotonic_ns()
        if pcm:
            self.dec.process_raw(pcm)
        return t1 - t0, time.monotonic_ns() - t1

    def blocks(self, hist, upto):
        """Decodes the whole blocks up to `upto`, one process_raw each; (resample, decode) ns."""
        r = d = 0
        while upto - self.fed >= STREAM_BLOCK and hist.end - self.fed >= STREAM_BLOCK:
            dr, dd = self.feed(hist, self.fed + STREAM_BLOCK)
            r, d = r + dr, d + dd
        return r, d

    def early(self, hist):
        """Before the decision: decode the whole blocks that have come."""
        r, d = self.blocks(hist, hist.end)
        self.early_ns += r + d

    def finish(self, hist, stop):
        """After the decision: the rest up to `stop`, the flush, the final search. Text, and
        the ns of resampling and decoding spent after the decision."""
        r0, d0 = self.blocks(hist, stop)
        r, d = self.feed(hist, stop, last=True)
        r, d = r + r0, d + d0
        t0 = time.monotonic_ns()
        self.dec.end_utt()
        hyp = self.dec.hyp()
        return (hyp.hypstr if hyp is not None else ""), r, d + time.monotonic_ns() - t0

    def abandon(self):
        self.dec.end_utt()


def emit(obj):
    print(json.dumps(obj), flush=True)


def thread_policies():
    """{tid: (policy, rt_priority)} of this process's threads, from /proc/self/task/*/stat
    (fields 41 and 40; the name in parentheses may hold spaces)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended meanwhile
        out[int(tid)] = (int(rest[38]), int(rest[37]))
    return out


def promote(priority):
    """Puts every thread of this process (numpy's and the package's included) under SCHED_FIFO
    at `priority`, so that the decode is not shared out with CPU hogs; threads started later
    inherit it. Returns (what it runs under, a warning or None): a refusal is not fatal, the
    recogniser then decodes at normal priority and says so."""
    if priority == 0:
        return "SCHED_OTHER", None
    try:
        for tid in thread_policies():
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as e:
        return "SCHED_OTHER (SCHED_FIFO refused)", (
            f"the recogniser cannot run under SCHED_FIFO {priority} ({e}): it decodes at normal "
            "priority, sharing the CPU with every other process, so recognition slows down "
            "under load; run it as root or with CAP_SYS_NICE and an RLIMIT_RTPRIO of at least "
            f"{priority}, or pass --asr-rt-priority 0 to ask for no real-time priority")
    wrong = {t: p for t, p in thread_policies().items() if p != (os.SCHED_FIFO, priority)}
    if wrong:
        return "SCHED_OTHER (SCHED_FIFO partly refused)", (
            f"threads {sorted(wrong)} of the recogniser are not under SCHED_FIFO {priority}")
    return f"SCHED_FIFO {priority}", None


class HalfDuplex:
    """Which VAD segments are the assistant's own voice (see the module's doc). Positions are
    mic samples; `windows` are the closed [from, to) spans during which a reply was spoken."""

    def __init__(self, said_name, margin_s):
        self.name = said_name
        self.margin_ns = int(margin_s * 1e9)
        self.reg = None
        self.published = 0
        self.muted_from = None
        self.until_ns = None
        self.windows = []

    def published_at(self, pos):
        if self.name is None:
            return
        self.published += 1
        self.muted_from = pos
        self.until_ns = None

    def poll(self):
        """Reads the reply agent's register: is the latest reply written out?"""
        if self.muted_from is None or self.until_ns is not None:
            return
        if self.reg is None:
            try:
                self.reg = voxring.Control(self.name)
            except voxring.VoxringError:
                return  # the reply agent has not made it yet
        done, last_ns = SAID_RECORD.unpack(read_register(self.reg, SAID_RECORD.size))[:2]
        if done >= self.published:
            self.until_ns = last_ns + self.margin_ns

    def on_frame(self, pos, ts):
        """Closes the window at the first frame committed after the reply's end + margin."""
        if self.until_ns is not None and self.muted_from is not None and ts >= self.until_ns:
            self.windows.append((self.muted_from, pos))
            self.muted_from = None

    def close(self, pos):
        """The stream ended: a window still open ends here."""
        if self.muted_from is not None:
            self.windows.append((self.muted_from, pos))
            self.muted_from = None

    def settled(self):
        return self.muted_from is None

    def is_echo(self, start_pos):
        return any(a <= start_pos < b for a, b in self.windows)

    def finish(self):
        if self.reg is not None:
            self.reg.close()


def step_stream(stream, dec, rate, hist, duplex, starts, ends, start_pos):
    """Starts, feeds or drops the early decode (Streaming) of the segment being spoken;
    returns it. A segment is decoded early only if its start is within what the history holds
    (the VAD's record is another process's memory) and it is not the assistant's own voice."""
    speaking = starts > ends
    if stream is not None:
        if stream.segment != starts or stream.start_pos != start_pos or stream.too_long():
            stream.abandon()  # not the segment it started on: the decision decodes in one go
            stream = None
        elif speaking:
            stream.early(hist)
            return stream
        else:
            return stream  # decided: the decision path finishes it
    if not speaking or hist.end is None:
        return None
    muted = (not duplex.settled() and start_pos >= duplex.muted_from) or duplex.is_echo(start_pos)
    first = start_pos - int(PAD_S * rate)
    if muted or first < max(hist.end - hist.size, 0) or start_pos > hist.end + rate:
        return None
    stream = Streaming(dec, rate, starts, start_pos)
    stream.early(hist)
    return stream


def publish(asr, results, utterance, recognised_ns, read_pos, text):
    data = text.encode()
    if len(data) > ASR_TEXT_BYTES:
        sys.exit(f"the recognised text {text!r} is {len(data)} bytes; the recogniser -> reply "
                 f"register carries {ASR_TEXT_BYTES}: shorten the grammar's commands")
    asr.write(ASR_HEAD.pack(results, utterance, recognised_ns, read_pos or 0)
              + data.ljust(ASR_TEXT_BYTES, b"\0"))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ring", required=True, help="the mic ring (mono S16)")
    ap.add_argument("--vad", required=True, help="the VAD agent's control register")
    ap.add_argument("--grammar", default=os.path.join(HERE, "commands.jsgf"))
    ap.add_argument("--asr", help="a control register to create and publish results in")
    ap.add_argument("--said", help="the reply agent's register (half duplex, see above)")
    ap.add_argument("--echo-margin-s", type=float, default=0.5,
                    help="how long after a reply's last frame its echo may still be heard")
    ap.add_argument("--decode", choices=("streaming", "batch"), default="batch",
                    help="the whole utterance after the VAD's end decision (batch), or while "
                         "the user speaks, from the VAD's speech start (streaming: faster, but "
                         "less accurate on espeak-ng's 'turn off', see the module's doc)")
    ap.add_argument("--rt-priority", type=int, default=0,
                    help="SCHED_FIFO priority of every thread (0: none; a refusal is a warning)")
    args = ap.parse_args(argv)
    if not 0 <= args.rt_priority <= 99:
        ap.error(f"--rt-priority {args.rt_priority}: give 0 (none) or 1..99")
    return args


class Decisions:
    """Everything after the mic: the VAD's decisions judged, decoded and published. Two threads
    call `step` (holding `lock`): the mic loop after each read, and the VAD watcher the moment
    the VAD agent writes its register (woken by the write, not at the next mic frame)."""

    def __init__(self, args, dec, vad, asr, duplex, hist, rate):
        self.decode, self.dec, self.vad, self.asr = args.decode, dec, vad, asr
        self.duplex, self.hist, self.rate = duplex, hist, rate
        self.lock = threading.Lock()
        self.handled = self.results = self.missed = self.refused = self.echoes = 0
        self.stream = None
        self.noticed = (0, 0)  # (decision count, CLOCK_MONOTONIC ns it was first noticed)
        self.handoff_ns = 0
        self.ended = False  # the ring has ended (the mic loop says so)
        self.finished = False  # ... and the VAD has published its last decision, all handled

    def step(self, seen_ns=None):
        """Reads the VAD's record and acts on it (`seen_ns`: when the watcher was woken). Sets
        `finished` once the VAD's stream has ended and every decision is handled."""
        hist, duplex, rate = self.hist, self.duplex, self.rate
        duplex.poll()
        rec = VAD_RECORD.unpack(read_register(self.vad, VAD_RECORD.size))
        vad_state, hangover_ms, starts, ends = rec[0], rec[1], rec[2], rec[3]
        start_pos, end_pos, decided_pos, decided_ns, commit_ns = rec[4:]
        if self.decode == "streaming":
            self.stream = step_stream(self.stream, self.dec, rate, hist, duplex, starts, ends,
                                      start_pos)
        if ends <= self.handled or starts != ends:
            self.finished = self.ended and vad_state == VAD_STREAM_ENDED
            return
        now = seen_ns or time.monotonic_ns()
        if self.noticed[0] != ends or now < self.noticed[1]:
            self.noticed = (ends, now)
        stop = min(decided_pos, end_pos + int(PAD_S * rate))
        if hist.end is not None and hist.end < stop and not self.ended:
            return  # the VAD is ahead of us: the mic loop comes back after its next read
        if not duplex.settled() and start_pos >= duplex.muted_from:
            return  # a reply is being spoken: judge this segment once it is over
        early, self.stream = self.stream, None
        if early is not None and early.segment != ends:
            early.abandon()
            early = None
        if duplex.is_echo(start_pos):
            self.handled = ends
            self.echoes += 1
            if early is not None:
                early.abandon()
            emit({"event": "echo", "utterance": ends, "start_pos": start_pos,
                  "end_pos": end_pos})
            return
        if ends > self.handled + 1:
            self.missed += ends - self.handled - 1  # the register keeps the latest decision
        self.handled = ends
        # The register is another process's memory: a record that cannot be an utterance is
        # refused, not decoded (a bounded amount of work per decision, whatever it says).
        why = implausible(start_pos, end_pos, decided_pos, rate)
        if why:
            self.refused += 1
            if early is not None:
                early.abandon()
            emit({"event": "refused", "utterance": ends, "why": why})
            return
        if early is not None:
            text, resample_ns, decode_ns = early.finish(hist, stop)
            early_ns = early.early_ns
        else:
            audio = hist.get(start_pos - int(PAD_S * rate), stop)
            text, resample_ns, decode_ns = recognise(self.dec, audio, rate)
            early_ns = 0
        recognised_ns = time.monotonic_ns()
        self.results += 1
        if self.asr is not None:
            publish(self.asr, self.results, ends, recognised_ns, hist.end, text)
        duplex.published_at(hist.end)
        emit({"event": "result", "utterance": ends, "text": text, "start_pos": start_pos,
              "end_pos": end_pos, "vad_decided_pos": decided_pos, "vad_decided_ns": decided_ns,
              "vad_frame_commit_ns": commit_ns, "hangover_ms": hangover_ms,
              "vad_seen_ns": self.noticed[1], "recognised_ns": recognised_ns,
              "decode_ns": decode_ns, "resample_ns": resample_ns, "read_pos": hist.end,
              "mic_handoff_ns": self.handoff_ns, "streamed": early is not None,
              "early_decode_ns": early_ns})


# How long the VAD watcher blocks at a time before it looks whether the run is over.
WATCH_SLICE_S = 0.2


def watch_vad(decisions, stop, failures):
    """The VAD watcher thread: blocked in the register's wait (GIL released), it acts on
    each write as it happens. An exception is kept for the main thread to raise."""
    try:
        seen = 0
        while not stop.is_set():
            v = decisions.vad.wait(seen, WATCH_SLICE_S)
            if v is None:
                continue
            seen_ns = time.monotonic_ns()
            seen = v
            with decisions.lock:
                if not decisions.finished:
                    decisions.step(seen_ns)
    except BaseException as e:  # noqa: BLE001 (SystemExit too: the main thread raises it)
        failures.append(e)


def main(argv=None):
    args = parse_args(argv)
    sched, warning = promote(args.rt_priority)
    if warning:
        print(f"recogniser.py: warning: {warning}", file=sys.stderr, flush=True)
    dec = decoder(args.grammar)
    if os.environ.get("VOXRING_ASR_TRACE"):
        dec = TracedDecoder(dec, os.environ["VOXRING_ASR_TRACE"])
    vad = voxring.Control(args.vad)
    asr = voxring.Control(args.asr, create=True) if args.asr else None
    duplex = HalfDuplex(args.said, args.echo_margin_s)
    with voxring.Reader(args.ring, fallback=False) as reader:
        cfg = reader.config
        if cfg.channels != 1 or cfg.format != "s16":
            sys.exit(f"{args.ring} carries {cfg.channels} channel(s) of {cfg.format}: the "
                     "recogniser reads mono S16 (the hub's NAME.mic)")
        rate = cfg.sample_rate
        hist = History(rate)
        d = Decisions(args, dec, vad, asr, duplex, hist, rate)

        def on_meta(pos, ts, handoff_ns):
            d.handoff_ns = handoff_ns
            duplex.on_frame(pos, ts)

        stop, failures = threading.Event(), []
        watcher = threading.Thread(target=watch_vad, args=(d, stop, failures),
                                   name="vad-watch", daemon=True)
        watcher.start()
        emit({"event": "ready", "sched": sched, "warning": warning})
        state, give_up = voxring.READY, None
        try:
            while not failures:
                if state != voxring.END:
                    state = read_ready(reader, hist.add, on_handoff=on_meta, lock=d.lock)
                else:
                    # The ring has ended, the VAD (another process) may still be judging its
                    # last frames: the watcher acts on its last decisions and its "stream
                    # ended" mark; this loop looks too, and gives up after a bound.
                    give_up = give_up or time.monotonic() + VAD_FINISH_S
                    if time.monotonic() > give_up:
                        sys.exit(f"the VAD agent did not finish within {VAD_FINISH_S} s of the "
                                 "end of the stream: is it running on this ring?")
                    time.sleep(0.005)
                with d.lock:
                    if state == voxring.END and not d.ended:
                        duplex.close(hist.end or 0)
                        d.ended = True
                    if not d.finished:
                        d.step()
                    if d.finished:
                        break
        finally:
            stop.set()
            watcher.join()
        if failures:
            raise failures[0]
        lost = reader.status()["lost_frames"] + hist.gaps
    vad.close()
    duplex.finish()
    emit({"event": "end", "frames": hist.frames, "lost": lost, "results": d.results,
          "missed": d.missed, "refused": d.refused, "echoes": d.echoes,
          "echo_windows": duplex.windows})
    if asr is not None:
        asr.close()
    if isinstance(dec, TracedDecoder):
        dec.close()
    return 1 if lost or d.missed or d.refused else 0


if __name__ == "__main__":
    sys.exit(main())
