//! How deep the audio path's buffer is: `--periods auto` (the default) measures the machine's
//! wake-up jitter before the run and picks the smallest buffer that absorbs it; `--periods N`
//! forces one. During an `auto` run, each period of played silence grows the playback queue
//! by one period, and after a playback xrun a queue standing above its target (the capture's
//! backlog from the stall) grows to the depth in hand, so the backlog is played instead of
//! dropped (both said in the report, never silently).
//!
//! What "periods N" buys, and costs: the device buffer holds N periods (a stall shorter than
//! that loses no captured frame), and the playback side keeps N - 2 returned frames in
//! reserve, so that after the audio thread was held up for k periods it has k frames to play
//! when it catches up (k ≤ N - 2) instead of silence. Each period adds one period to the
//! device queue and one to the reserve: mouth-to-ear grows by two periods per step.
//!
//! The device buffer itself is not grown during a run: an ALSA PCM's buffer size is a
//! hardware parameter, settable only while the PCM is in the SETUP state (after
//! `snd_pcm_drop` and `snd_pcm_hw_free`, i.e. a reopen that loses the stream's position and a
//! few periods); the synthetic device keeps it for the same reason (it models one). What grows
//! live is the reserve in front of it, on the real-time thread, without a syscall.

use serde::{Deserialize, Serialize};

/// The most periods `auto` picks, and the deepest the reserve grows to (N - 2).
pub const MAX_AUTO_PERIODS: u32 = 8;
/// How long the wake-up probe runs before an `auto` run.
pub const PROBE_SECONDS: f64 = 1.5;

/// `--periods`: `auto` or a number of periods (at least 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Periods {
    /// Measure, choose, and grow the reserve after a glitch.
    Auto,
    /// This many, never grown.
    Fixed(u32),
}

impl std::str::FromStr for Periods {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        match s.trim().parse::<u32>() {
            Ok(n) if (2..=64).contains(&n) => Ok(Self::Fixed(n)),
            _ => Err(format!(
                "'{s}' is not a buffer size: give `auto` (measure the machine and choose) or a \
                 number of periods from 2 to 64"
            )),
        }
    }
}

/// What the wake-up probe measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Probe {
    /// Timer wake-ups measured (1 ms apart).
    pub wakeups: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The latest wake-up: what the buffer must absorb.
    pub max_ms: f64,
    /// The probe thread's scheduling (the audio thread's).
    pub scheduling: String,
    /// CPU time the hypervisor stole from the machine (all CPUs) while the probe ran, ms
    /// (`None`: not known, or a report written before it was kept).
    #[serde(default)]
    pub stolen_ms: Option<f64>,
}

/// The buffer chosen for a run, why, and how it grew.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BufferReport {
    /// `auto` or `forced`.
    pub mode: String,
    /// The device buffer, in periods.
    pub periods: u32,
    /// Returned frames kept in reserve at the start (periods - 2).
    pub reserve_start: u32,
    /// ... and at the end (grown by one after each period of played silence, and to the
    /// queue's depth after a playback xrun that left a backlog; `auto` only).
    pub reserve_end: u32,
    /// The deepest the reserve may grow to (`auto`: [`MAX_AUTO_PERIODS`] - 2, plus the periods
    /// of a PipeWire graph cycle; forced: `reserve_start`).
    #[serde(default)]
    pub reserve_max: u32,
    /// The cycles after which the reserve grew (the report's warning says why each).
    pub grown_at_cycles: Vec<u64>,
    /// Why this many.
    pub reason: String,
    /// The probe (`auto` only).
    pub probe: Option<Probe>,
    /// How the device handed the capture over (`None` before it was recorded, or when no
    /// frame came).
    #[serde(default)]
    pub device_wakeups: Option<DeviceWakeups>,
}

/// How many ring frames the device handed over per wake-up of the audio thread. A device whose
/// period is longer than the hub's cycle brings several at once (PipeWire's graph at 512 frames
/// under a 128-frame hub: 4), and each captured sample then waits in the device for the rest of
/// its chunk before the hub sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceWakeups {
    /// Wake-ups that brought at least one frame.
    pub wakeups: u64,
    /// The most common number of frames per wake-up: the device's period in hub cycles.
    pub usual: u32,
    /// The share of wake-ups that brought `usual` frames, in percent.
    pub usual_percent: f64,
    /// The most frames one wake-up brought (a catch-up after a stall); the last count of the
    /// probe's table holds "that many or more".
    pub most: u32,
}

impl DeviceWakeups {
    /// From wake-up counts indexed by frames per wake-up (index 0 unused); `None` without any.
    pub fn from_counts(counts: &[u64]) -> Option<Self> {
        let wakeups: u64 = counts.iter().skip(1).sum();
        if wakeups == 0 {
            return None;
        }
        let (usual, n) = counts
            .iter()
            .enumerate()
            .skip(1)
            .max_by_key(|&(k, n)| (*n, std::cmp::Reverse(k)))?;
        let most = counts.iter().rposition(|&n| n > 0)?;
        Some(Self {
            wakeups,
            usual: usual as u32,
            usual_percent: *n as f64 * 100.0 / wakeups as f64,
            most: most as u32,
        })
    }

    /// One sentence for the report; `quantum` frames per hub cycle at `rate` Hz.
    pub fn text(&self, quantum: u32, rate: u32) -> String {
        let samples = self.usual * quantum;
        let ms = f64::from(samples) * 1e3 / f64::from(rate.max(1));
        let mut s = format!(
            "the device handed over {} frame(s) ({samples} samples, {ms:.2} ms) per wake-up in \
             {:.1} % of {} wake-ups, at most {}",
            self.usual, self.usual_percent, self.wakeups, self.most
        );
        if self.usual > 1 {
            s += &format!(
                ": its period is {} of the hub's cycles (a PipeWire graph quantum larger than the \
                 hub's?), so a captured sample waits up to {} cycle(s) in the device before the \
                 hub sees it",
                self.usual,
                self.usual - 1
            );
        }
        s
    }
}

/// Measures the timer wake-up jitter for `seconds` on a thread at SCHED_FIFO `priority` (the
/// audio thread's; 0: none), with the doctor's probe.
pub fn probe(seconds: f64, priority: u8) -> anyhow::Result<Probe> {
    let (joined, stolen_ms) = crate::steal::stolen_during(|| {
        std::thread::Builder::new()
            .name("voxring-probe".into())
            .spawn(move || {
                let (scheduling, _) = super::device::promote(priority);
                (crate::doctor::probes::timer_jitter(seconds), scheduling)
            })
            .map(|h| h.join())
    });
    let (hist, scheduling) = joined
        .map_err(|e| anyhow::anyhow!("cannot start the wake-up probe: {e}"))?
        .map_err(|_| anyhow::anyhow!("the wake-up probe panicked"))?;
    let hist = hist.map_err(|e| anyhow::anyhow!("the wake-up probe failed: {e}"))?;
    let ms = |ns: u64| ns as f64 / 1e6;
    Ok(Probe {
        stolen_ms,
        wakeups: hist.len(),
        p50_ms: ms(hist.value_at_quantile(0.5)),
        p99_ms: ms(hist.value_at_quantile(0.99)),
        max_ms: ms(hist.max()),
        scheduling,
    })
}

/// `--periods` as resolved by [`resolve`].
#[derive(Debug)]
pub struct Resolved {
    pub periods: u32,
    /// Why this many: the number forced, or the probe's reading and the graph's cycle.
    pub why: String,
    /// The wake-up probe, if `auto` ran it.
    pub probe: Option<Probe>,
    /// A forced number short of PipeWire's graph ([`short_of_graph`]): said, not changed.
    pub short_of_graph: Option<String>,
    /// The deepest the output queue's reserve may grow to during the run.
    pub reserve_max: u32,
}

/// `--periods` resolved for quanta of `quantum` frames at `rate` Hz on `device`: the number
/// forced (with a warning when PipeWire's graph needs more), or the probe's choice (3 when the
/// probe fails, said in the reason) on top of a PipeWire graph cycle longer than the period
/// ([`pipewire_graph`], [`on_graph`]).
pub fn resolve(periods: Periods, device: &str, quantum: u32, rate: u32, priority: u8) -> Resolved {
    let period_ms = f64::from(quantum) * 1e3 / f64::from(rate.max(1));
    let (n, why, probe) = match periods {
        Periods::Fixed(n) => {
            return Resolved {
                periods: n,
                why: format!("--periods {n}"),
                probe: None,
                short_of_graph: short_of_graph(device, quantum, n),
                reserve_max: n.saturating_sub(2),
            };
        }
        Periods::Auto => match probe(PROBE_SECONDS, priority) {
            Ok(p) => {
                let (n, why) = choose_for(&p, period_ms);
                (n, why, Some(p))
            }
            Err(e) => (3, format!("{e:#}: 3 periods, not measured"), None),
        },
    };
    let graph = pipewire_graph(device, quantum);
    let (periods, why) = on_graph(n, why, graph, quantum);
    Resolved {
        periods,
        why,
        probe,
        short_of_graph: None,
        reserve_max: MAX_AUTO_PERIODS - 2 + graph_periods(graph, quantum),
    }
}

/// The periods of one PipeWire graph cycle of `graph` frames (0: no graph above the quantum).
fn graph_periods(graph: Option<u32>, quantum: u32) -> u32 {
    graph.map_or(0, |g| g.div_ceil(quantum.max(1)))
}

/// The `n` periods `auto` chose for the machine's stalls, on top of a PipeWire graph cycle of
/// `graph` frames: the plugin hands the buffer over a whole graph cycle at a time, so a stall
/// of the audio thread finds that cycle's periods gone already, and the reserve that absorbs
/// the stall must come on top of them (`n` = 2, a quiet machine: [`graph_floor`]). With its
/// reason.
fn on_graph(n: u32, why: String, graph: Option<u32>, quantum: u32) -> (u32, String) {
    match graph {
        Some(graph) => {
            let total = n + graph_periods(Some(graph), quantum);
            let why = format!(
                "{why}; PipeWire's graph takes {graph} frames per cycle: {total} periods hold \
                 one cycle and those {n} more"
            );
            (total, why)
        }
        None => (n, why),
    }
}

/// The frames PipeWire's graph takes per cycle from `device`, when that is more than our
/// `quantum`: `device` is not the synthetic one or a `hw:` card, PipeWire answers, and its
/// quantum is forced above ours, or the node latency we ask for (ours, or `node.latency` in
/// `PIPEWIRE_PROPS`, the recipe `voxring doctor` gives) is, clamped to the config's minimum
/// and maximum quantum (a stock VM config's minimum is 1024). The plugin then hands the buffer
/// over a graph cycle at a time, and a buffer shorter than a cycle plays silence at every one
/// (docs/run.md: 3 periods in a 512 graph, 2,454 xruns in 20 s; 6 periods none).
pub fn pipewire_graph(device: &str, quantum: u32) -> Option<u32> {
    let direct = ["synthetic", "hw:", "plughw:", "null"];
    if direct.iter().any(|d| device.starts_with(d)) {
        return None;
    }
    let c = voxring_linux::audio::pipewire::read_clock().ok()?;
    let props = std::env::var("PIPEWIRE_PROPS").unwrap_or_default();
    let graph = c.graph_with(node_latency(&props).unwrap_or(quantum).max(quantum));
    (graph > quantum).then_some(graph)
}

/// The frames of `node.latency` in a `PIPEWIRE_PROPS` value (SPA JSON:
/// `{ node.latency = 512/48000 }` or `{ "node.latency": "512/48000" }`).
fn node_latency(props: &str) -> Option<u32> {
    let rest = &props[props.find("node.latency")? + "node.latency".len()..];
    let rest = rest.trim_start_matches(['"', '=', ':', ' ']);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|n| *n > 0)
}

/// A warning when `periods` forced on `device` are fewer than PipeWire's graph needs
/// ([`pipewire_graph`], [`graph_floor`]): such a buffer plays silence at every graph cycle.
fn short_of_graph(device: &str, quantum: u32, periods: u32) -> Option<String> {
    let graph = pipewire_graph(device, quantum)?;
    graph_short_words(graph, quantum, periods)
}

fn graph_short_words(graph: u32, quantum: u32, periods: u32) -> Option<String> {
    let floor = graph_floor(graph, quantum);
    (periods < floor).then(|| {
        format!(
            "--periods {periods} is fewer than PipeWire's graph needs: it takes {graph} frames \
             per cycle, and a buffer shorter than a cycle and two periods plays silence at \
             every cycle; give --periods {floor} or more (or auto, which does)"
        )
    })
}

/// The periods that hold one graph cycle of `graph` frames and two periods more.
pub fn graph_floor(graph: u32, quantum: u32) -> u32 {
    graph_periods(Some(graph), quantum) + 2
}

/// [`choose`] for what `p` measured, saying whether the host stole CPU time meanwhile (then
/// its stalls are in the latest wake-up, and in the buffer chosen for it).
fn choose_for(p: &Probe, period_ms: f64) -> (u32, String) {
    let (n, mut why) = choose(p.max_ms, period_ms);
    if let Some(ms) = p.stolen_ms.filter(|ms| *ms > 0.0) {
        why += &format!(
            " (the hypervisor stole {ms:.0} ms of CPU time, all CPUs, while the probe ran: the \
             host's stalls are in that figure)"
        );
    }
    (n, why)
}

/// The smallest buffer that absorbs a wake-up `max_late_ms` late with periods of `period_ms`:
/// a wake-up k whole periods late needs k frames in reserve (N = k + 2), with a quarter of
/// margin; at most [`MAX_AUTO_PERIODS`]. Returns the periods and why.
pub fn choose(max_late_ms: f64, period_ms: f64) -> (u32, String) {
    let k = ((max_late_ms * 1.25) / period_ms).floor().max(0.0) as u32;
    let want = k.saturating_add(2);
    let n = want.min(MAX_AUTO_PERIODS);
    let why = format!(
        "the latest timer wake-up of the probe was {max_late_ms:.2} ms ({:.2} periods of \
         {period_ms:.2} ms; with a quarter of margin {k} whole period(s) late): {n} periods \
         absorb it",
        max_late_ms / period_ms
    );
    if n < want {
        (
            n,
            format!(
                "{why} only partly: it would need {want}, and auto stops at {MAX_AUTO_PERIODS} \
                 (the machine stalls for longer than a voice path should buffer; see `voxring \
                 doctor`)"
            ),
        )
    } else {
        (n, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_says_when_the_host_stole_time_during_the_probe() {
        let mut p = Probe {
            wakeups: 1500,
            p50_ms: 0.02,
            p99_ms: 0.2,
            max_ms: 17.2,
            scheduling: "SCHED_FIFO 70".to_owned(),
            stolen_ms: Some(30.0),
        };
        let (n, why) = choose_for(&p, 2.667);
        assert_eq!(n, MAX_AUTO_PERIODS, "{why}");
        assert!(why.contains("the hypervisor stole 30 ms"), "{why}");
        p.stolen_ms = Some(0.0);
        assert!(!choose_for(&p, 2.667).1.contains("hypervisor"));
        p.stolen_ms = None;
        assert!(!choose_for(&p, 2.667).1.contains("hypervisor"));
    }

    #[test]
    fn the_probes_reserve_comes_on_top_of_a_pipewire_graph_cycle() {
        // A quiet machine in a 512 graph under a 128-frame hub: the graph's floor, as before.
        let (n, why) = on_graph(2, "quiet".into(), Some(512), 128);
        assert_eq!(n, graph_floor(512, 128), "{why}");
        // A machine the probe found stalling two periods keeps those two on top of the cycle
        // (it used to be raised to the floor only, losing them).
        let (n, why) = on_graph(4, "stalls".into(), Some(512), 128);
        assert_eq!(n, 8, "{why}");
        assert!(
            why.starts_with("stalls; PipeWire's graph takes 512 frames"),
            "{why}"
        );
        assert_eq!(
            on_graph(4, "direct".into(), None, 128),
            (4, "direct".into())
        );
        // The reserve may grow by a graph cycle more than without one.
        assert_eq!(graph_periods(Some(512), 128), 4);
        assert_eq!(graph_periods(Some(480), 128), 4);
        assert_eq!(graph_periods(None, 128), 0);
    }

    #[test]
    fn device_wakeups_name_the_usual_count_and_the_most() {
        assert_eq!(DeviceWakeups::from_counts(&[0; 8]), None);
        // PipeWire's graph at 512 under a 128-frame hub: mostly 4 at once, 8 after a stall.
        let mut counts = [0u64; 9];
        (counts[4], counts[3], counts[8]) = (97, 2, 1);
        let c = DeviceWakeups::from_counts(&counts).unwrap();
        assert_eq!((c.wakeups, c.usual, c.most), (100, 4, 8));
        assert!((c.usual_percent - 97.0).abs() < 1e-9);
        let t = c.text(128, 48_000);
        assert!(
            t.contains("4 frame(s) (512 samples, 10.67 ms) per wake-up in 97.0 % of 100 wake-ups, at most 8"),
            "{t}"
        );
        assert!(t.contains("waits up to 3 cycle(s)"), "{t}");
        // A device whose period is the hub's: one at a time, nothing more said.
        let c = DeviceWakeups::from_counts(&[0, 1000, 1]).unwrap();
        assert_eq!((c.usual, c.most), (1, 2));
        assert!(!c.text(128, 48_000).contains("waits"));
        // A tie goes to the smaller count.
        assert_eq!(DeviceWakeups::from_counts(&[0, 5, 5]).unwrap().usual, 1);
    }

    #[test]
    fn a_graph_cycle_longer_than_the_period_is_held() {
        // A 512-frame graph under 128-frame periods: one cycle (4) and two more.
        assert_eq!(graph_floor(512, 128), 6);
        assert_eq!(graph_floor(1024, 128), 10);
        assert_eq!(graph_floor(384, 256), 4);
        assert!(
            graph_short_words(512, 128, 3)
                .unwrap()
                .contains("--periods 6 or more")
        );
        assert_eq!(graph_short_words(512, 128, 6), None);
        // The synthetic device and cards never go through PipeWire.
        assert_eq!(pipewire_graph("synthetic", 128), None);
        assert_eq!(pipewire_graph("hw:0,0", 128), None);
        // The node latency asked for in PIPEWIRE_PROPS, in either spelling.
        assert_eq!(node_latency("{ node.latency = 512/48000 }"), Some(512));
        assert_eq!(
            node_latency(r#"{ "node.latency": "1024/48000" }"#),
            Some(1024)
        );
        assert_eq!(node_latency("{ node.name = x }"), None);
        assert_eq!(node_latency("{ node.latency = /48000 }"), None);
    }

    #[test]
    fn periods_parse() {
        assert_eq!("auto".parse::<Periods>(), Ok(Periods::Auto));
        assert_eq!("3".parse::<Periods>(), Ok(Periods::Fixed(3)));
        for bad in ["1", "0", "x", "", "65"] {
            let e = bad.parse::<Periods>().unwrap_err();
            assert!(e.contains("auto"), "{e}");
        }
    }

    #[test]
    fn the_choice_absorbs_the_latest_wake_up() {
        let p = 2.667;
        assert_eq!(choose(0.05, p).0, 2);
        // 1.9 periods late (2.4 with margin): two frames in reserve.
        assert_eq!(choose(1.9 * p, p).0, 4);
        let (n, why) = choose(100.0, p);
        assert_eq!(n, MAX_AUTO_PERIODS);
        assert!(why.contains("only partly"), "{why}");
    }
}
