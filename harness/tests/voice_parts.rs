//! The voice round trip's parts, each through real voxring rings and processes:
//! `voxring voice talk` (espeak-ng through the synthetic device into a mic ring),
//! `voxring voice vad` (earshot, publishing into a control register), the Python recogniser
//! (pocketsphinx, reading the ring and the register), `voxring voice reply`.
//! Positions and words are asserted; times are only reported.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use voxring_core::{FrameFlags, ReadError};
use voxring_linux::ring::{FramesWait, Segment};
use voxring_linux::segment::AttachOptions;

mod common;
use common::voxring;

/// 60 ms at 48 kHz: how far the VAD's boundaries may be from the talker's (see vad.rs).
const TOLERANCE: i64 = 2_880;

/// A unique segment prefix for one test.
fn prefix(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "voicetest-{}-{test}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A unique prefix for one test, and the names of its mic ring and VAD register under it.
fn names(test: &str) -> (String, String, String) {
    let p = prefix(test);
    let (mic, reg) = (format!("{p}.mic"), format!("{p}.vad"));
    (p, mic, reg)
}

/// A lossless s16 48 kHz ring of 10 ms frames for two readers, `frames` deep and `channels`
/// wide, made as `name` by this test (standing in for the talker).
fn mic_ring(name: &str, frames: u32, channels: u16) -> Segment {
    let cfg = voxring_core::RingConfig {
        frames,
        samples_per_frame: 480,
        channels,
        format: voxring_core::SampleFormat::S16,
        sample_rate: 48_000,
        max_consumers: 2,
        policy: voxring_core::Policy::Lossless,
    };
    Segment::create(name, &cfg, &Default::default()).unwrap()
}

/// No segment of this test is left in /dev/shm.
#[track_caller]
fn assert_no_segments(prefix: &str) {
    voxring_test_support::assert_no_shm(|n| n.contains(prefix));
}

/// A part started with its stdout piped; killed (by its PID) if the test fails first.
struct Part {
    child: Child,
    out: BufReader<ChildStdout>,
    name: &'static str,
}

impl Part {
    fn start(name: &'static str, cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut p = Self { child, out, name };
        let first = p
            .line()
            .unwrap_or_else(|| panic!("{name} ended before it was ready"));
        assert_eq!(first["event"], "ready", "{name}: {first}");
        p
    }

    fn line(&mut self) -> Option<Value> {
        let mut s = String::new();
        match self.out.read_line(&mut s) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(
                serde_json::from_str(&s)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {s}", self.name)),
            ),
        }
    }

    /// Every remaining line, and whether the process succeeded.
    fn finish(mut self) -> (Vec<Value>, bool) {
        let mut lines = Vec::new();
        while let Some(v) = self.line() {
            lines.push(v);
        }
        let ok = self.child.wait().unwrap().success();
        (lines, ok)
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Finishes every part (each read to its end, in order) and asserts that all succeeded,
/// with every part's lines in the message if one did not; their lines.
#[track_caller]
fn finish_ok<const N: usize>(parts: [Part; N]) -> [Vec<Value>; N] {
    let names = parts.each_ref().map(|p| p.name);
    let done = parts.map(Part::finish);
    let all: Vec<String> = names
        .iter()
        .zip(&done)
        .map(|(name, (lines, ok))| format!("{name} (ok: {ok}): {lines:?}"))
        .collect();
    assert!(done.iter().all(|(_, ok)| *ok), "{}", all.join("\n"));
    done.map(|(lines, _)| lines)
}

fn talk(ring: &str, readers: u16) -> Part {
    Part::start(
        "voxring voice talk",
        voxring()
            .args(["voice", "talk", "--ring", ring, "--buffer-ms", "1000"])
            .args(["--readers", &readers.to_string()]),
    )
}

fn vad(ring: &str, register: &str) -> Part {
    Part::start(
        "voxring voice vad",
        voxring().args(["voice", "vad", "--ring", ring, "--register", register]),
    )
}

/// Runs `voice vad` on `P.mic` into `P.vad`, which must fail; its stderr.
fn vad_refuses(p: &str) -> String {
    let out = voxring()
        .args(["voice", "vad", "--ring", &format!("{p}.mic")])
        .args(["--register", &format!("{p}.vad")])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the VAD agent accepted {p}.mic");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn end_of(lines: &[Value], who: &str) -> Value {
    lines
        .iter()
        .find(|v| v["event"] == "end")
        .unwrap_or_else(|| panic!("{who} printed no end line: {lines:?}"))
        .clone()
}

/// The talker's placements, and a check that its run was clean (no xrun, every sample played).
fn placements(talk_end: &Value) -> Vec<(String, i64, i64)> {
    assert_eq!(
        talk_end["clean"], true,
        "the talker's run lost audio: {talk_end}"
    );
    assert_eq!(talk_end["xruns"], 0, "{talk_end}");
    talk_end["placements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let pos = |k: &str| p[k].as_i64().unwrap();
            (
                p["text"].as_str().unwrap().to_owned(),
                pos("start"),
                pos("end"),
            )
        })
        .collect()
}

/// The VAD's events pair up with the placements, within the tolerance.
fn check_vad(vad_end: &Value, placed: &[(String, i64, i64)]) {
    assert_eq!(vad_end["lost"], 0, "{vad_end}");
    let ev = vad_end["events"].as_array().unwrap();
    assert_eq!(ev.len(), 2 * placed.len(), "{ev:?} vs {placed:?}");
    for ((text, start, end), pair) in placed.iter().zip(ev.chunks(2)) {
        let b = |i: usize| pair[i]["boundary_pos"].as_i64().unwrap();
        assert_eq!(
            (pair[0]["kind"].as_str(), pair[1]["kind"].as_str()),
            (Some("Start"), Some("End"))
        );
        assert!(
            (b(0) - start).abs() <= TOLERANCE,
            "{text}: start {} vs {start}",
            b(0)
        );
        assert!(
            (b(1) - end).abs() <= TOLERANCE,
            "{text}: end {} vs {end}",
            b(1)
        );
        assert!(pair[1]["decided_pos"].as_i64().unwrap() > b(1));
    }
}

#[test]
fn the_vad_agent_finds_the_talkers_utterances_in_the_mic_ring() {
    let (p, mic, reg) = names("vad");
    let t = talk(&mic, 1);
    let v = vad(&mic, &reg);
    let [t_lines, v_lines] = finish_ok([t, v]);
    let placed = placements(&end_of(&t_lines, "talk"));
    assert_eq!(placed.len(), 3);
    check_vad(&end_of(&v_lines, "vad"), &placed);
    assert_no_segments(&p);
}

/// The Python that runs the recogniser (see common::voice_python).
fn recogniser_python() -> Option<PathBuf> {
    common::voice_python(
        "import pocketsphinx, soxr, numpy",
        "pip install -r harness/python/voice/requirements.txt into the test venv",
    )
}

/// The Python recogniser agent on `mic` and the VAD register `reg`.
fn recogniser(py: &Path, mic: &str, reg: &str) -> Part {
    Part::start(
        "recogniser.py",
        Command::new(py)
            .arg(repo().join("harness/python/voice/recogniser.py"))
            .args(["--ring", mic, "--vad", reg])
            .env("PYTHONPATH", repo().join("platform-linux/python")),
    )
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn the_recogniser_hears_each_utterance_exactly_through_the_rings() {
    let Some(py) = recogniser_python() else {
        return;
    };
    let (p, mic, reg) = names("asr");
    let t = talk(&mic, 2);
    let v = vad(&mic, &reg);
    let r = recogniser(&py, &mic, &reg);
    let [t_lines, v_lines, r_lines] = finish_ok([t, v, r]);
    let placed = placements(&end_of(&t_lines, "talk"));
    check_vad(&end_of(&v_lines, "vad"), &placed);
    let results: Vec<_> = r_lines.iter().filter(|v| v["event"] == "result").collect();
    assert_eq!(results.len(), placed.len(), "{r_lines:?}");
    for ((said, _, end), res) in placed.iter().zip(&results) {
        // Word error rate 0: every word heard as said.
        let heard = res["text"].as_str().unwrap();
        assert_eq!(heard, said, "{res}");
        // The recogniser decided after the VAD, on audio it had read past the end of speech.
        assert!(
            res["recognised_ns"].as_u64() > res["vad_decided_ns"].as_u64(),
            "{res}"
        );
        assert!(res["read_pos"].as_i64().unwrap() > *end, "{res}");
        println!(
            "{said:?}: decode {:.1} ms, VAD decision -> text {:.1} ms",
            res["decode_ns"].as_f64().unwrap() / 1e6,
            (res["recognised_ns"].as_f64().unwrap() - res["vad_decided_ns"].as_f64().unwrap())
                / 1e6
        );
    }
    let end = end_of(&r_lines, "recogniser");
    assert_eq!(
        (end["lost"].as_u64(), end["missed"].as_u64()),
        (Some(0), Some(0)),
        "{end}"
    );
    assert_no_segments(&p);
}

#[test]
fn the_reply_agent_writes_every_synthesised_sample_into_its_ring() {
    let p = prefix("reply");
    let ring = format!("{p}.out");
    let mut cmd = voxring();
    cmd.args(["voice", "reply", "--ring", &ring])
        .stdin(Stdio::piped());
    let mut r = Part::start("voxring voice reply", &mut cmd);
    let seg = Segment::attach(&ring, &AttachOptions::default()).unwrap();
    let rx = seg.consumer().unwrap();
    {
        let mut stdin = r.child.stdin.take().unwrap();
        writeln!(stdin, "the kitchen light is on\n\nit is ten past two").unwrap();
    } // stdin closed: the agent ends after these replies
    let (mut samples, mut loud) = (0u64, 0u64);
    for (i, f) in read_to_eos(rx, 60).iter().enumerate() {
        assert_eq!(f.seq, i as u64, "a reply frame was lost");
        assert_eq!(f.sample_pos, samples, "sample positions run on");
        samples += f.samples.len() as u64;
        loud += f.samples.iter().filter(|v| v.unsigned_abs() > 300).count() as u64;
    }
    let [lines] = finish_ok([r]);
    let replies: Vec<_> = lines.iter().filter(|v| v["event"] == "reply").collect();
    assert_eq!(replies.len(), 2, "the empty line is skipped: {lines:?}");
    let total: u64 = replies.iter().map(|v| v["samples"].as_u64().unwrap()).sum();
    assert_eq!(samples, total);
    assert!(
        loud > total / 10,
        "the replies are speech, not silence ({loud} loud samples)"
    );
    for v in &replies {
        let ns = |k: &str| v[k].as_u64().unwrap();
        assert!(ns("requested_ns") <= ns("first_sample_synth_ns"));
        assert!(ns("first_sample_synth_ns") <= ns("synth_done_ns"));
        assert!(ns("first_sample_synth_ns") <= ns("first_commit_ns"));
    }
    assert_eq!(
        replies[1]["first_sample_pos"].as_u64(),
        replies[0]["samples"].as_u64()
    );
    drop(seg);
    assert_no_segments(&p);
}

#[test]
fn a_vad_pointed_at_a_missing_ring_says_what_to_do() {
    let p = prefix("missing");
    let err = vad_refuses(&p);
    assert!(err.contains("cannot attach"), "{err}");
    assert_no_segments(&p);
}

/// What the reply ring's reader saw of one frame: sample_pos, commit time, in-hand time.
type Seen = (u64, u64, u64);

/// One frame read from a reply ring, and when it was in the reader's hands.
struct ReadFrame {
    seq: u64,
    sample_pos: u64,
    timestamp_ns: u64,
    got_ns: u64,
    samples: Vec<i16>,
}

/// Reads a reply ring to its END_OF_STREAM (the hub's part, stood in for by the test),
/// giving up after `give_up_s` without a frame.
fn read_to_eos(mut rx: voxring_linux::ring::ShmConsumer, give_up_s: u64) -> Vec<ReadFrame> {
    let mut seen = Vec::new();
    loop {
        match rx
            .wait_for_frames(Some(Duration::from_secs(give_up_s)))
            .unwrap()
        {
            FramesWait::Ready => {}
            FramesWait::TimedOut => panic!("nothing on the reply ring for {give_up_s} s"),
            FramesWait::EndOfStream => panic!("the reply agent left without END_OF_STREAM"),
        }
        loop {
            let (c, waiter) = rx.parts();
            let g = match c.read_grant(16) {
                Ok(g) => g,
                Err(ReadError::Empty) => break,
                Err(e) => panic!("{e}"),
            };
            let got_ns = voxring_linux::audio::monotonic_ns();
            let mut eos = false;
            for f in g.frames() {
                let m = f.meta();
                eos |= m.flags.contains(FrameFlags::END_OF_STREAM);
                if eos {
                    break;
                }
                seen.push(ReadFrame {
                    seq: m.seq,
                    sample_pos: m.sample_pos,
                    timestamp_ns: m.timestamp_ns,
                    got_ns,
                    samples: f.samples::<i16>().unwrap().to_vec(),
                });
            }
            g.release_all().unwrap().wake(waiter);
            if eos {
                return seen;
            }
        }
    }
}

/// [`read_to_eos`] of a reply ring: each frame's sample_pos, commit time, in-hand time.
fn read_reply_ring(seg: Segment) -> Vec<Seen> {
    read_to_eos(seg.consumer().unwrap(), 120)
        .into_iter()
        .map(|f| (f.sample_pos, f.timestamp_ns, f.got_ns))
        .collect()
}

/// The parts chained without the hub: talker → mic ring → VAD (register) + recogniser →
/// (the test relays the text) → reply agent → reply ring → the test, standing in for the hub.
/// Asserts the words and that nothing was lost; builds the per-utterance records and the
/// report from them (times printed, never asserted).
#[test]
fn the_parts_chained_without_the_hub_answer_each_utterance_and_report_it() {
    let Some(py) = recogniser_python() else {
        return;
    };
    let (p, mic, reg) = names("chain");
    let out = format!("{p}.reply");
    let t = talk(&mic, 2);
    let v = vad(&mic, &reg);
    let mut cmd = voxring();
    cmd.args(["voice", "reply", "--ring", &out])
        .stdin(Stdio::piped());
    let mut reply = Part::start("voxring voice reply", &mut cmd);
    let reader = std::thread::spawn({
        let seg = Segment::attach(&out, &AttachOptions::default()).unwrap();
        move || read_reply_ring(seg)
    });
    let mut r = recogniser(&py, &mic, &reg);
    let mut stdin = reply.child.stdin.take().unwrap();
    let mut results = Vec::new();
    while let Some(line) = r.line() {
        if line["event"] == "result" {
            writeln!(stdin, "okay: {}", line["text"].as_str().unwrap()).unwrap();
            stdin.flush().unwrap();
            results.push(line);
        } else if line["event"] == "end" {
            assert_eq!(
                (line["lost"].as_u64(), line["missed"].as_u64()),
                (Some(0), Some(0)),
                "{line}"
            );
        }
    }
    drop(stdin);
    assert!(r.child.wait().unwrap().success());
    let [t_lines, v_lines, reply_lines] = finish_ok([t, v, reply]);
    let seen = reader.join().unwrap();
    let placed = placements(&end_of(&t_lines, "talk"));
    let vad_end = end_of(&v_lines, "vad");
    check_vad(&vad_end, &placed);
    let replies: Vec<_> = reply_lines
        .iter()
        .filter(|l| l["event"] == "reply")
        .collect();
    assert_eq!((results.len(), replies.len()), (placed.len(), placed.len()));
    let total: u64 = replies.iter().map(|l| l["samples"].as_u64().unwrap()).sum();
    assert_eq!(
        seen.len() as u64,
        total.div_ceil(480).max(seen.len() as u64),
        "reply frames lost"
    );

    // The parts' own costs, for docs/voice-round-trip.md (printed, never asserted).
    let c = &vad_end["cost_per_ring_frame_ns"];
    println!(
        "VAD agent, per 480-sample ring frame (resample + earshot): p50 {} ns, p99 {} ns, max {} ns over {} frames",
        c["p50"], c["p99"], c["max"], c["count"]
    );
    for (res, rep) in results.iter().zip(&replies) {
        let u = |v: &Value, k: &str| v[k].as_f64().unwrap();
        println!(
            "{}: resample {:.2} ms + decode {:.1} ms; reply {:?}: espeak-ng start -> first sample {:.1} ms, -> done {:.1} ms, first sample -> first frame committed {:.2} ms",
            res["text"],
            u(res, "resample_ns") / 1e6,
            u(res, "decode_ns") / 1e6,
            rep["text"].as_str().unwrap(),
            (u(rep, "first_sample_synth_ns") - u(rep, "requested_ns")) / 1e6,
            (u(rep, "synth_done_ns") - u(rep, "requested_ns")) / 1e6,
            (u(rep, "first_commit_ns") - u(rep, "first_sample_synth_ns")) / 1e6,
        );
    }
    let dir = common::TestDir::new("voice-chain");
    let mut records = String::new();
    let ends: Vec<_> = vad_end["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "End")
        .collect();
    for (i, (said, _, end)) in placed.iter().enumerate() {
        let (res, rep, ev) = (&results[i], replies[i], ends[i]);
        assert_eq!(res["text"].as_str(), Some(said.as_str()), "{res}");
        let first = rep["first_sample_pos"].as_u64().unwrap();
        let &(_, commit, got) = seen
            .iter()
            .find(|s| s.0 == first)
            .expect("the reply's first frame");
        let u = |v: &Value, k: &str| v[k].as_u64().unwrap();
        let record = serde_json::json!({
            "said": said, "heard": res["text"], "rate": 48_000, "speech_end_pos": end,
            "vad_decided_pos": u(ev, "decided_pos"), "vad_decided_ns": u(ev, "decided_ns"),
            "hangover_ms": u(res, "hangover_ms"), "recognised_ns": u(res, "recognised_ns"),
            "reply_first_synth_ns": u(rep, "first_sample_synth_ns"),
            "reply_first_commit_ns": u(rep, "first_commit_ns"), "reply_heard_ns": got,
            "handoffs": [
                {"name": "mic ring -> VAD", "within": "vad", "ns": u(ev, "handoff_ns")},
                {"name": "recogniser -> reply agent (pipes, through the test)", "within": "synthesis",
                 "ns": u(rep, "requested_ns").saturating_sub(u(res, "recognised_ns"))},
                {"name": "reply ring -> reader", "within": "playback", "ns": got.saturating_sub(commit)},
            ],
        });
        records.push_str(&format!("{record}\n"));
    }
    for line in records.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let h: Vec<_> = v["handoffs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                format!(
                    "{} {:.3} ms",
                    h["name"].as_str().unwrap(),
                    h["ns"].as_f64().unwrap() / 1e6
                )
            })
            .collect();
        println!("{}: hand-offs: {}", v["said"], h.join(", "));
    }
    let path = dir.path().join("records.jsonl");
    std::fs::write(&path, &records).unwrap();
    voxring_test_support::output_ok(
        voxring()
            .args(["voice", "report", "--records"])
            .arg(&path)
            .arg("--out")
            .arg(dir.path()),
        "voxring voice report",
    );
    // To keep the report (e.g. for docs/): VOXRING_VOICE_REPORT_DIR=<existing directory>.
    if let Some(keep) = std::env::var_os("VOXRING_VOICE_REPORT_DIR") {
        for f in ["voice-latency.md", "voice-latency.svg", "records.jsonl"] {
            std::fs::copy(dir.path().join(f), Path::new(&keep).join(f)).unwrap();
        }
    }
    let table = std::fs::read_to_string(dir.path().join("voice-latency.md")).unwrap();
    println!("{table}");
    assert!(
        table.contains("Word error rate over the scenario: 0.000"),
        "{table}"
    );
    let svg = std::fs::read_to_string(dir.path().join("voice-latency.svg")).unwrap();
    assert!(svg.contains("mic ring -&gt; VAD"), "{svg}");
    assert_no_segments(&p);
}

#[test]
fn a_vad_pointed_at_a_stereo_ring_refuses_it_and_says_why() {
    let p = prefix("stereo");
    let seg = mic_ring(&format!("{p}.mic"), 8, 2);
    let err = vad_refuses(&p);
    assert!(
        err.contains("2 channel(s)") && err.contains("mono S16"),
        "{err}"
    );
    drop(seg);
    assert_no_segments(&p);
}

/// Attack: the VAD's register is another process's memory. A writer claiming an utterance of
/// 10^12 samples (and another ending before it starts) must make the recogniser refuse them,
/// not decode (or allocate for) that span, and fail its run.
#[test]
fn a_hostile_vad_record_is_refused_not_decoded() {
    let Some(py) = recogniser_python() else {
        return;
    };
    let (p, mic, reg) = names("hostile");
    let seg = mic_ring(&mic, 64, 1);
    let mut tx = seg.producer().unwrap();
    type Reg = voxring_core::control::ControlRegister<[u64; 8], 8>;
    let register =
        voxring_linux::shared::Placed::<Reg>::create(&reg, &Default::default(), [0; 8]).unwrap();
    let r = recogniser(&py, &mic, &reg);
    let silence = [0u8; 960];
    for i in 0..20u64 {
        tx.producer()
            .push(&silence, i * 480, 0, FrameFlags::NONE)
            .unwrap()
            .wake(tx.parts().1);
    }
    // "Speech" from 0 to 10^12, ended, decided at 10^12; then the stream is over.
    let word0 = u64::from_ne_bytes([2, 0, 0, 0, 192, 0, 0, 0]);
    register
        .write([word0, 1, 1, 0, 1_000_000_000_000, 1_000_000_000_000, 1, 1])
        .unwrap();
    tx.producer()
        .push(&[], 20 * 480, 0, FrameFlags::END_OF_STREAM)
        .unwrap()
        .wake(tx.parts().1);
    let (lines, ok) = r.finish();
    assert!(
        !ok,
        "a refused record must fail the recogniser's run: {lines:?}"
    );
    let refused: Vec<_> = lines.iter().filter(|l| l["event"] == "refused").collect();
    assert_eq!(refused.len(), 1, "{lines:?}");
    assert!(
        refused[0]["why"]
            .as_str()
            .unwrap()
            .contains("more than the 15 s"),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| l["event"] != "result"), "{lines:?}");
    let end = end_of(&lines, "recogniser");
    assert_eq!(end["refused"], 1, "{end}");
    drop((register, tx, seg));
    assert_no_segments(&p);
}
