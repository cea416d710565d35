//! The listener of `voxring voice assistant`: a lossless reader of the hub's mic that keeps
//! everything the mic heard (with each frame's commit stamp), and the analysis that places
//! the ground truth in it.
//!
//! Ground truth: the talker's script (its exact S16 samples, written to a file by the talker)
//! is found in the mic by its first sound: the first mic sample at or above [`LOUD`] is the
//! first utterance's first sample (the script opens with a second of digital silence and
//! every utterance is trimmed to its first and last sample above 0.001). Every utterance is
//! then placed at the same offset and, on a bit-exact device (the synthetic one), its samples
//! are compared with the script's: a frame the hub repeated or dropped on the way fails the
//! run. Through PipeWire (not bit-exact) each utterance is placed by its own first sound,
//! looked for within [`DRIFT_MS`] of where the previous utterance's offset puts it: PipeWire's
//! graph can miss a cycle of its playback (measured here: about 1 % of 2.67 ms cycles on a
//! shared 2-core VM, with voxring's hub alone), which delays everything after it by a quantum
//! that voxring never saw. That move is reported per utterance (`Placed::shift`), not failed:
//! what voxring does to the talker's frames is checked by the hub's lane counters (and, on the
//! synthetic device, sample by sample). A reply is heard at the first sound after the
//! utterance it answers; its first sample is that position less the reply's own offset of its
//! first sound (reported by the reply agent), and the moment it was heard is that sample's
//! place in its mic frame (the frame's commit stamp less the samples after it, at the stream's
//! rate).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use voxring_linux::hub::{Delivery, Hub, HubOptions, Read};

use super::hub_agents::LOUD;

/// What the mic heard.
#[derive(Debug, Default)]
pub struct Capture {
    pub rate: u32,
    /// Sample position of `samples[0]`.
    pub first_pos: u64,
    pub samples: Vec<i16>,
    /// Per frame: its first sample position and its commit stamp (CLOCK_MONOTONIC ns).
    pub frames: Vec<(u64, u64)>,
    pub lost: u64,
    /// Per output lane: the hub's largest counts of frames dropped, repeated, gaps, and quiet
    /// frames trimmed seen.
    pub lanes: BTreeMap<String, (u64, u64, u64, u64)>,
    /// Every time a lane's corrections grew: the mic position read by then, the lane, and
    /// how many corrections (drops + repeats + gaps) were added since the previous look.
    pub corrections: Vec<(u64, String, u64)>,
    /// The same for quiet frames trimmed: silence, so they cut no speech, but each moves what
    /// follows a frame earlier (what the exact placement of the script must be told).
    pub trims: Vec<(u64, String, u64)>,
}

/// Reads the hub's mic until its end of stream. `ready` is called once joined.
pub fn listen(hub_name: &str, ready: impl FnOnce()) -> anyhow::Result<Capture> {
    let hub = Hub::find(hub_name, &HubOptions::default())
        .with_context(|| format!("the listener cannot join the hub {hub_name:?}"))?;
    let mut mic = hub.join_mic("listener", Delivery::Lossless)?;
    let mut cap = Capture {
        rate: hub.config().sample_rate,
        ..Capture::default()
    };
    cap.samples.reserve(hub.config().sample_rate as usize * 60);
    ready();
    let mut expected = None;
    loop {
        let r = mic.read(Some(Duration::from_secs(1)), |f| {
            let m = f.meta();
            (
                m.sample_pos,
                m.timestamp_ns,
                f.samples::<i16>().map(<[i16]>::to_vec),
            )
        })?;
        let (pos, ts, samples) = match r {
            Read::Frame(v) => v,
            Read::TimedOut => continue,
            Read::EndOfStream => break,
        };
        let samples = samples.context("the hub's mic is not S16")?;
        if cap.frames.is_empty() {
            cap.first_pos = pos;
        }
        if let Some(e) = expected {
            anyhow::ensure!(
                pos == e,
                "the mic jumped from sample {e} to {pos}: frames were lost"
            );
        }
        expected = Some(pos + samples.len() as u64);
        cap.frames.push((pos, ts));
        cap.samples.extend_from_slice(&samples);
        if cap.frames.len().is_multiple_of(LANE_LOOK_FRAMES) {
            note_lanes(&hub, pos, &mut cap);
        }
    }
    cap.lost = mic.stats().lost;
    Ok(cap)
}

/// The listener looks at the hub's lane counters every this many mic frames.
const LANE_LOOK_FRAMES: usize = 8;

fn note_lanes(hub: &Hub, pos: u64, cap: &mut Capture) {
    for i in 0..voxring_linux::hub::directory::MAX_SLOTS {
        let Some(row) = hub.out_row(i) else { break };
        if row.state == voxring_linux::hub::directory::SLOT_FREE {
            continue;
        }
        let name = voxring_linux::hub::directory::unpack_name(&row.name);
        let e = cap.lanes.entry(name.clone()).or_default();
        let (before, trimmed) = (e.0 + e.1 + e.2, e.3);
        e.0 = e.0.max(row.dropped);
        e.1 = e.1.max(row.repeated);
        e.2 = e.2.max(row.gaps);
        e.3 = e.3.max(row.trimmed);
        let added = (e.0 + e.1 + e.2).saturating_sub(before);
        let trims = e.3.saturating_sub(trimmed);
        if trims > 0 {
            cap.trims.push((pos, name.clone(), trims));
        }
        if added > 0 {
            cap.corrections.push((pos, name, added));
        }
    }
}

impl Capture {
    fn end_pos(&self) -> u64 {
        self.first_pos + self.samples.len() as u64
    }

    fn slice(&self, a: u64, b: u64) -> &[i16] {
        let a = a.clamp(self.first_pos, self.end_pos()) - self.first_pos;
        let b = b.clamp(self.first_pos, self.end_pos()) - self.first_pos;
        &self.samples[a as usize..b.max(a) as usize]
    }

    /// The first position in [a, b) whose sample is sound.
    pub fn first_loud(&self, a: u64, b: u64) -> Option<u64> {
        let lo = a.max(self.first_pos);
        first_loud(self.slice(lo, b)).map(|i| lo + i as u64)
    }

    /// When the sample at `pos` was captured: its frame's commit stamp less the samples after
    /// it in that frame.
    pub fn time_of(&self, pos: u64) -> Option<u64> {
        let i = self
            .frames
            .partition_point(|&(p, _)| p <= pos)
            .checked_sub(1)?;
        let (_, ts) = self.frames[i];
        let frame_end = self.frames.get(i + 1).map_or(self.end_pos(), |&(p, _)| p);
        let after = frame_end.saturating_sub(pos + 1);
        Some(ts.saturating_sub(after * 1_000_000_000 / u64::from(self.rate.max(1))))
    }
}

/// Index of the first sample at or above [`LOUD`].
pub fn first_loud(s: &[i16]) -> Option<usize> {
    s.iter().position(|v| v.unsigned_abs() >= LOUD as u16)
}

/// One utterance placed in the mic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub start: u64,
    pub end: u64,
    /// How far the device path moved this utterance from where the first one's offset puts
    /// it, in samples (later is positive; always 0 on a bit-exact device).
    pub shift: i64,
}

/// How far the device path may move an utterance from where the previous one's offset puts
/// it before the run fails (a shift this large is not a missed cycle or two).
pub const DRIFT_MS: u32 = 100;

/// Places the talker's utterances (`placements`: [start, end) in the script) in the capture.
/// `exact`: the device is bit-exact, so every utterance must equal the script; `Some(lane)`
/// names the hub's output lane that carried the script, whose corrections (a late talker:
/// a frame dropped or repeated by the hub, by its policy) a difference is reported with.
pub fn place_utterances(
    cap: &Capture,
    script: &[i16],
    placements: &[(u64, u64)],
    exact: Option<&str>,
) -> anyhow::Result<Vec<Placed>> {
    let s0 = first_loud(script).context("the talker's script is silent")? as u64;
    let m0 = cap
        .first_loud(cap.first_pos, cap.end_pos())
        .context("the mic never heard the talker: is the hub's playback looped back?")?;
    anyhow::ensure!(m0 >= s0, "the talker was heard before it spoke");
    let first_offset = m0 - s0;
    let mut offset = first_offset;
    let mut out = Vec::with_capacity(placements.len());
    for (k, &(a, b)) in placements.iter().enumerate() {
        if exact.is_none() {
            let after = out.last().map_or(cap.first_pos, |p: &Placed| p.end);
            offset = follow_the_device(cap, script, (a, b), offset, after)
                .with_context(|| format!("utterance {}", k + 1))?;
        }
        let (start, end) = (a + offset, b + offset);
        anyhow::ensure!(
            end <= cap.end_pos(),
            "utterance {} ends at mic sample {end}, after the capture ({})",
            k + 1,
            cap.end_pos()
        );
        if let Some(lane) = exact {
            let heard = cap.slice(start, end);
            let said = &script[a as usize..b as usize];
            if let Some(i) = heard.iter().zip(said).position(|(h, s)| h != s) {
                anyhow::bail!(differs(cap, lane, m0, (k + 1, i), start + i as u64));
            }
        }
        let shift = offset as i64 - first_offset as i64;
        out.push(Placed { start, end, shift });
    }
    Ok(out)
}

/// Why utterance `k` differs from the script from its sample `i` on (mic sample `pos`): the
/// hub's corrections of `lane` noted between the script's first sound in the mic (`m0`, which
/// every utterance is placed by) and the difference (a late talker, corrected by the hub's
/// policy: the machine's doing, and said so), or none (the hub or the loopback changed the
/// talker's frames: a bug, or a device xrun reported beside it).
fn differs(cap: &Capture, lane: &str, m0: u64, (k, i): (usize, usize), pos: u64) -> String {
    // The listener notes a correction up to a look (8 frames) after the mic position it
    // reads, and the corrected frame is heard a playback buffer after it was mixed: a quarter
    // second either side covers both, as in `corrections_during`.
    let slack = u64::from(cap.rate / 4);
    // A trim moves what follows a frame earlier: as much a cause here as the others.
    let (n, first) = cap
        .corrections
        .iter()
        .chain(&cap.trims)
        .filter(|(p, name, _)| name == lane && *p + slack >= m0 && *p <= pos + slack)
        .fold((0, None::<u64>), |(n, first), (p, _, c)| {
            (n + c, Some(first.map_or(*p, |f| f.min(*p))))
        });
    let what = format!(
        "utterance {k} differs from what the talker said from its sample {i} on (mic sample \
         {pos})"
    );
    match first {
        Some(p) => format!(
            "the hub corrected the {lane}'s lane {n} time(s) (dropped, repeated, gap or \
             trimmed; the first noted at mic sample {p}) before {what}: the talker was late for \
             its lane"
        ),
        None => format!(
            "{what}, and the hub counted no correction of the {lane}'s lane: the hub or the \
             loopback changed the talker's frames"
        ),
    }
}

/// The offset (mic position less script position) of the utterance `[a, b)` of the script:
/// its first sound in the mic, looked for within [`DRIFT_MS`] of where `offset` (the previous
/// utterance's) puts it, and not before `after` (the previous utterance's end).
fn follow_the_device(
    cap: &Capture,
    script: &[i16],
    (a, b): (u64, u64),
    offset: u64,
    after: u64,
) -> anyhow::Result<u64> {
    let said = script
        .get(a as usize..b as usize)
        .context("its placement is outside the talker's script")?;
    let loud = a + first_loud(said).context("it is silent in the talker's script")? as u64;
    let expected = loud + offset;
    let drift = u64::from(cap.rate) * u64::from(DRIFT_MS) / 1000;
    let from = expected.saturating_sub(drift).max(after);
    let found = cap.first_loud(from, expected + drift + 1);
    let found = found.with_context(|| {
        format!(
            "was not heard within {DRIFT_MS} ms of mic sample {expected}, where the previous \
             utterance puts it (first sound after it: {:?}): the device path dropped or \
             delayed more than a few cycles, or the talker's frames did not reach the mic",
            cap.first_loud(expected, cap.end_pos())
        )
    })?;
    found
        .checked_sub(loud)
        .context("it was heard before the talker said it")
}

/// Corrections of `lane` (drops, repeats, gaps; not trims, which cut no speech) the hub made
/// while utterance `p` could have been on its way: seen between `slack` samples before its
/// start and after its end (the listener looks every few frames, and what the hub mixes is
/// heard a playback buffer later).
pub fn corrections_during(cap: &Capture, lane: &str, p: &Placed, slack: u64) -> u64 {
    cap.corrections
        .iter()
        .filter(|(pos, name, _)| name == lane && *pos + slack >= p.start && *pos <= p.end + slack)
        .map(|(_, _, n)| n)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(samples: Vec<i16>, first_pos: u64) -> Capture {
        let frames = (0..samples.len() as u64)
            .step_by(4)
            .map(|i| (first_pos + i, 1_000_000 + i * 1000))
            .collect();
        Capture {
            rate: 1_000_000,
            first_pos,
            samples,
            frames,
            ..Capture::default()
        }
    }

    fn placed(start: u64, end: u64, shift: i64) -> Placed {
        Placed { start, end, shift }
    }

    #[test]
    fn places_the_script_by_its_first_sound_and_checks_every_sample() {
        let script = [0, 0, 100, 200, 0, 0, 300, 0];
        let mut heard = vec![0; 5];
        heard.extend_from_slice(&script);
        heard.extend_from_slice(&[0; 3]);
        let cap = capture(heard.clone(), 40);
        let p = place_utterances(&cap, &script, &[(2, 4), (6, 7)], Some("talker")).unwrap();
        assert_eq!(p, [placed(47, 49, 0), placed(51, 52, 0)]);
        // A sample changed on the way (a repeated frame) fails the exact check.
        heard[5 + 6] = 200;
        let cap = capture(heard, 40);
        let e = place_utterances(&cap, &script, &[(2, 4), (6, 7)], Some("talker")).unwrap_err();
        assert!(e.to_string().contains("utterance 2 differs"), "{e}");
        assert!(
            e.to_string().contains("no correction of the talker's lane"),
            "{e}"
        );
    }

    #[test]
    fn a_difference_names_the_corrections_of_the_talkers_lane_before_it() {
        let script = [0, 0, 100, 200, 0, 0, 300, 0];
        let mut heard = vec![0; 5];
        heard.extend_from_slice(&script);
        heard[5 + 6] = 200; // mic sample 51 differs
        let mut cap = capture(heard, 40);
        cap.rate = 40; // a quarter second is 10 samples
        let place = |cap: &Capture| {
            place_utterances(cap, &script, &[(2, 4), (6, 7)], Some("talker"))
                .unwrap_err()
                .to_string()
        };
        // Another lane's correction, or the talker's noted before the script's first sound
        // (mic sample 47) or after the difference (51) could be heard, says nothing of it.
        cap.corrections = vec![
            (36, "talker".into(), 1),
            (45, "reply".into(), 1),
            (62, "talker".into(), 1),
        ];
        assert!(place(&cap).contains("no correction of the talker's lane"));
        // The talker's, noted before or within the slack after: counted, first one named.
        cap.corrections
            .extend([(44, "talker".into(), 2), (60, "talker".into(), 1)]);
        let e = place(&cap);
        assert!(
            e.starts_with("the hub corrected the talker's lane 3 time(s)")
                && e.contains("first noted at mic sample 44")
                && e.contains("utterance 2 differs"),
            "{e}"
        );
        // A trim of the talker's lane (a quiet frame dropped: what follows moves a frame
        // earlier) is a cause too, and the earliest noted is named.
        cap.trims = vec![(41, "talker".into(), 1)];
        let e = place(&cap);
        assert!(
            e.starts_with("the hub corrected the talker's lane 4 time(s)")
                && e.contains("first noted at mic sample 41"),
            "{e}"
        );
    }

    #[test]
    fn through_a_device_that_moves_the_stream_each_utterance_is_placed_by_its_own_sound() {
        let script = [0, 0, 100, 200, 0, 0, 0, 0, 300, 0];
        // Utterance 1 heard 5 samples in; then the device inserts 3 samples of silence
        // (a missed playback cycle) before utterance 2.
        let mut heard = vec![0; 5];
        heard.extend_from_slice(&script[..6]);
        heard.extend_from_slice(&[0; 3]);
        heard.extend_from_slice(&script[6..]);
        heard.extend_from_slice(&[0; 200]);
        let mut cap = capture(heard.clone(), 40);
        cap.rate = 1000; // DRIFT_MS is 100 samples
        let p = place_utterances(&cap, &script, &[(2, 4), (8, 9)], None).unwrap();
        assert_eq!(p, [placed(47, 49, 0), placed(56, 57, 3)]);
        // The exact check (the synthetic device) does not follow the device: it fails.
        let e = place_utterances(&cap, &script, &[(2, 4), (8, 9)], Some("talker")).unwrap_err();
        assert!(e.to_string().contains("utterance 2 differs"), "{e}");
        // A move beyond DRIFT_MS fails, naming the utterance and where it was looked for.
        let mut far = heard[..11].to_vec();
        far.extend_from_slice(&[0; 150]);
        far.extend_from_slice(&heard[11..]);
        let mut cap = capture(far, 40);
        cap.rate = 1000;
        let e = place_utterances(&cap, &script, &[(2, 4), (8, 9)], None).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("utterance 2: was not heard within 100 ms"),
            "{e}"
        );
    }

    #[test]
    fn a_sample_is_heard_at_its_place_in_its_frame() {
        let cap = capture(vec![0; 8], 100);
        // Frame [104, 108) committed at 1_004_000 ns; sample 105 has two samples (2 µs at
        // 1 MHz) after it.
        assert_eq!(cap.time_of(105), Some(1_002_000));
        assert_eq!(cap.time_of(99), None);
    }
}
