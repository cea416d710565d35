"""Replays a recogniser's decoder trace (recogniser.py with VOXRING_ASR_TRACE=FILE) offline,
call for call, and says for each utterance what the run heard and what the replay hears:
in one decoder through the whole trace (the run's order: the dither's random sequence and
every state carried from one utterance to the next), and each utterance alone in a fresh
decoder (nothing carried over). Also decodes each streamed utterance's audio in one go.

    python3 replay_trace.py TRACE [--grammar commands.jsgf] [--shift K]

What it tells: if the replay in order hears what the run heard, the result follows from the
calls alone (the audio and how it was cut into process_raw calls), not from timing inside
pocketsphinx; comparing with the fresh decoder shows whether state carried over mattered.

--shift K: utterance K's audio again, streamed from the same prior in blocks of the run's size,
moved by -100..+160 samples (16 kHz; pocketsphinx's frames are 160 apart) against the decoder's
frames, beside the same audio decoded in one go: whether the streaming result depends on where
the speech falls against the analysis frames (docs/voice-round-trip.md).
"""

import argparse
import os
import pickle

import numpy as np

import recogniser as r


def read_trace(path):
    calls = []
    with open(path, "rb") as f:
        while True:
            try:
                calls.append(pickle.load(f))
            except EOFError:
                return calls


def utterances(calls):
    """The calls split per utterance: [(calls from set_cmn/start_utt to end_utt, heard)]."""
    out, cur = [], []
    for c in calls:
        cur.append(c)
        if c[0] == "end_utt":
            out.append((cur, c[1]))
            cur = []
    return out


def play(dec, calls):
    for c in calls:
        if c[0] == "set_cmn":
            dec.set_cmn(c[1])
        elif c[0] == "start_utt":
            dec.start_utt()
        elif c[0] == "process_raw":
            dec.process_raw(c[1], full_utt=c[2])
        elif c[0] == "end_utt":
            dec.end_utt()
    hyp = dec.hyp()
    return hyp.hypstr if hyp is not None else None


def shifted(grammar, calls, heard):
    """The --shift sweep of one utterance's calls."""
    chunks = [c[1] for c in calls if c[0] == "process_raw"]
    pcm = np.frombuffer(b"".join(chunks), dtype=np.int16)
    block = len(chunks[0]) // 2
    cmn = next((c[1] for c in calls if c[0] == "set_cmn"), None)
    print(f"heard in the run: {heard!r}; streamed in blocks of {block} samples")
    for k in range(-100, 161, 10):
        x = pcm[k:] if k > 0 else np.concatenate([np.zeros(-k, np.int16), pcm])
        stream = ([("set_cmn", cmn)] if cmn else []) + [("start_utt",)]
        stream += [("process_raw", x[i:i + block].tobytes(), False)
                   for i in range(0, len(x), block)]
        streamed = play(r.decoder(grammar), stream + [("end_utt", None)])
        whole = play(r.decoder(grammar), [("start_utt",), ("process_raw", x.tobytes(), True),
                                          ("end_utt", None)])
        print(f"moved {k:+4} samples: streamed {streamed!r:32} in one go {whole!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--grammar", default=os.path.join(r.HERE, "commands.jsgf"))
    ap.add_argument("--shift", type=int, metavar="K", help="sweep utterance K (1-based)")
    args = ap.parse_args()
    utts = utterances(read_trace(args.trace))
    if args.shift:
        if not 1 <= args.shift <= len(utts):
            ap.error(f"--shift {args.shift}: the trace holds utterances 1..{len(utts)}")
        return shifted(args.grammar, *utts[args.shift - 1])
    in_order = r.decoder(args.grammar)
    for k, (calls, heard) in enumerate(utts):
        chunks = [c[1] for c in calls if c[0] == "process_raw"]
        streamed = len(chunks) > 1
        again = play(in_order, calls)
        alone = play(r.decoder(args.grammar), calls)
        whole = play(r.decoder(args.grammar), [("start_utt",),
                                              ("process_raw", b"".join(chunks), True),
                                              ("end_utt", None)])
        print(f"{k + 1:3} {'streamed' if streamed else 'batch':8} {len(chunks):4} calls "
              f"{sum(map(len, chunks)) // 2:7} samples | run: {heard!r:32} in order: "
              f"{again!r:32} alone: {alone!r:32} in one go: {whole!r}")


if __name__ == "__main__":
    main()
