"""Measures the cepstral-mean prior the streaming recogniser starts each utterance from
(recogniser.py's CMN_INIT): speaks every command of the grammar with espeak-ng (the voice the
scenario's talker uses), decodes each the way the recogniser streams it (48 kHz mic frames
resampled by a soxr stream, fed to pocketsphinx piece by piece, live CMN), and prints
pocketsphinx's running cepstral mean at the end, with how many commands the streaming decode
got right starting each from that prior.

    python3 calibrate_cmn.py [--voice en-us] [--wpm 160]

Why: batch decoding normalises each utterance by its own mean; a streaming decode cannot (it
has not heard the utterance yet) and starts from a prior. pocketsphinx's default prior
(40,3,-1) made "turn off ..." decode as "turn on ..." on espeak-ng's voice. A prior belongs to
a voice and channel: measure it again for another voice.
"""

import argparse
import io
import itertools
import subprocess
import wave

import numpy as np
import soxr

import recogniser as r

MIC_RATE = 48000
COMMANDS = ([f"turn {s} the {room} light" for s, room in
             itertools.product(("on", "off"), ("kitchen", "bedroom", "living room"))]
            + ["what time is it", "play some music"])


def speak(text, voice, wpm):
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", "--", text],
                         capture_output=True, check=True).stdout
    w = wave.open(io.BytesIO(wav))
    x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    y = soxr.resample(x.astype(np.float32) / 32768.0, w.getframerate(), MIC_RATE)
    return (np.clip(y, -1.0, 1.0) * 32767.0).astype(np.int16)


def stream(dec, audio, cmn=None):
    """Decodes `audio` (48 kHz S16, padded as the recogniser pads) as the recogniser streams."""
    pad = np.zeros(int(r.PAD_S * MIC_RATE), dtype=np.int16)
    x = np.concatenate([pad, audio, pad])
    hist = r.History(MIC_RATE)
    s = r.Streaming(dec, MIC_RATE, 1, len(pad), cmn)
    for i in range(0, len(x), 1024):
        hist.add(i, x[i:i + 1024])
        s.early(hist)
    return s.finish(hist, len(x))[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voice", default="en-us")
    ap.add_argument("--wpm", type=int, default=160)
    args = ap.parse_args()
    audio = [speak(t, args.voice, args.wpm) for t in COMMANDS]
    dec = r.decoder(r.os.path.join(r.HERE, "commands.jsgf"))
    for a in audio:
        stream(dec, a)
    prior = dec.get_cmn()
    heard = [stream(dec, a, prior) for a in audio]
    right = sum(h == t for h, t in zip(heard, COMMANDS))
    print(f"CMN_INIT = \"{prior}\"")
    print(f"streaming from it: {right} of {len(COMMANDS)} commands right; wrong: "
          f"{[(t, h) for h, t in zip(heard, COMMANDS) if h != t]}")


if __name__ == "__main__":
    main()
