//! Every glitch explained: the real-time thread records fixed-size facts (what happened, at
//! which cycle, when, and how late the audio thread itself was); after the run they are matched
//! with what the agents reported (which cycles each finished late, and whether its wake-up or
//! its compute took the time), the host's steal time (`/proc/stat`, sampled every 50 ms by the
//! main thread) and the RT throttling settings, and each glitch gets a cause:
//!
//! - `host-stall`: the audio thread itself ran late (its wake-up against the device clock, by
//!   X ms); the detail says whether the hypervisor took the CPU then (steal time) and whether
//!   RT throttling is on.
//! - `agent-late`: an agent finished one of the cycles just before late (the detail names it
//!   and says whether its wake-up or its compute took the time), while the audio thread was on
//!   time.
//!   Also when the thread was on time by the device's clock but the hypervisor stole more CPU
//!   time around the glitch than the device buffer holds: a whole-VM stall stops an audio
//!   server's clock with it, so the thread looks on time while the server ran dry.
//! - `device`: the device reported it while the audio thread was on time and no agent was late.
//!   A playback xrun is never put on an agent: the hub's playback does not wait for one (a
//!   late echo is a repeat or silence of the output queue, not a device xrun).
//!
//! The real-time thread only appends [`Fact`]s to a vector allocated before the run (beyond its
//! capacity they are counted, not kept); nothing here runs on it.

use serde::{Deserialize, Serialize};

/// What the real-time thread saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactKind {
    /// A capture chunk came flagged XRUN: the device dropped frames.
    Xrun,
    /// A playback chunk came flagged XRUN: the device played silence it was not given
    /// (reported by the device, or found hidden: `alsa_pcm`'s module docs).
    PlaybackXrun,
    /// A captured frame found the capture ring full (an agent a whole ring behind): lost.
    Dropped,
    /// The playback side had no returned frame for a period: silence was played.
    Silence,
    /// Returned frames were dropped to catch up after a stall (the output queue stayed above
    /// its band).
    Skipped,
    /// The output queue played its last frame again (the next was late; a correction).
    Repeated,
    /// The audio thread handled a period more than half a period after it was due.
    LateWake,
    /// The playback reserve grew (`--periods auto`), to the depth in `value`.
    Grown(Growth),
}

/// Why the playback reserve grew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// A period of silence was played (the echo's frame was missing): one frame more.
    Silence,
    /// After a playback xrun the echo's queue stood above its target (the capture's backlog
    /// from the stall came back): the target rose to the depth in hand, so the backlog is
    /// played instead of dropped.
    Xrun,
}

/// One fact, fixed-size: recorded on the real-time thread without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fact {
    pub kind: FactKind,
    /// The cycle (capture frames committed so far).
    pub cycle: u64,
    /// CLOCK_MONOTONIC when it was seen.
    pub t_ns: u64,
    /// How many (frames dropped, skipped), or how late (ns) for `LateWake`.
    pub value: u64,
}

/// Facts in a vector allocated before the run; beyond its capacity only counted.
#[derive(Debug)]
pub struct FactLog {
    pub facts: Vec<Fact>,
    pub overflow: u64,
}

impl FactLog {
    /// Room for `cap` facts (allocated now, before the real-time thread starts).
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            facts: Vec::with_capacity(cap),
            overflow: 0,
        }
    }

    /// Appends a fact without allocating (counted only when full). Real-time safe.
    pub fn push(&mut self, f: Fact) {
        if self.facts.len() < self.facts.capacity() {
            self.facts.push(f);
        } else {
            self.overflow += 1;
        }
    }
}

/// One explained glitch, as the JSON, the text report and the timeline show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Glitch {
    /// The cycle (capture frame number) it happened at.
    pub cycle: u64,
    /// `xrun`, `lost` (frames dropped at the capture ring), `silence` (a period of silence
    /// played), `skipped` (returned frames dropped to catch up), `late-cycle` (an agent past
    /// the cycle's deadline).
    pub kind: String,
    /// `host-stall`, `agent-late` or `device`.
    pub cause: String,
    /// The evidence, in words.
    pub detail: String,
}

/// A cycle an agent finished late, and where its time went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateMark {
    /// The frame's sequence number (= cycle).
    pub seq: u64,
    /// Commit → the frame in the agent's hands, ns (its wake-up).
    pub handoff_ns: u64,
    /// Its own work on the frame, ns.
    pub compute_ns: u64,
    /// When it finished the frame (CLOCK_MONOTONIC ns; 0: not stamped), which places the
    /// late cycle on the clock the steal is sampled on.
    #[serde(default)]
    pub done_ns: u64,
}

/// The host's steal time, sampled by the main thread during the run.
#[derive(Debug, Default)]
pub struct StealSampler {
    /// (CLOCK_MONOTONIC ns, cumulative steal of all CPUs, ns).
    samples: Vec<(u64, u64)>,
    /// The CPUs `/proc/stat` sums the steal of.
    cpus: u32,
}

/// What the hypervisor took from the machine during a run: whether it ran on an idle host.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HostSteal {
    /// Steal time over the run, all CPUs, ms.
    pub total_ms: f64,
    /// `total_ms` as a share of the CPU time the machine had (the run's length × its CPUs), %.
    pub percent: f64,
    /// The most stolen in any one second of the run, all CPUs, ms.
    pub worst_second_ms: f64,
    /// The device buffer the run played from, ms: a stall of the host shorter than it costs
    /// no audio. 0 when not known (reports written before it was kept).
    #[serde(default)]
    pub buffer_ms: f64,
}

impl HostSteal {
    /// One line for the report.
    pub fn words(&self) -> String {
        if self.total_ms == 0.0 {
            return "the hypervisor stole no CPU time during the run".to_owned();
        }
        format!(
            "the hypervisor stole {:.0} ms of CPU time during the run ({:.2} % of the \
             machine's, all CPUs), at most {:.0} ms in one second: {}",
            self.total_ms,
            self.percent,
            self.worst_second_ms,
            self.judgement()
        )
    }

    /// Whether what was stolen could have cost audio. A stall of the audio thread's CPU is at
    /// most the steal of all CPUs in the second around it, so a worst second below the device
    /// buffer rules the host out; at or above it, the host may be the cause (the glitches'
    /// own evidence says whether it was).
    fn judgement(&self) -> String {
        if self.buffer_ms <= 0.0 {
            return "the host was not idle".to_owned();
        }
        if self.worst_second_ms < self.buffer_ms {
            format!(
                "less than the {:.1} ms device buffer, so no stall of the host outlasted it",
                self.buffer_ms
            )
        } else {
            format!(
                "as much as the {:.1} ms device buffer or more, so the host could have \
                 stalled the audio past it (the glitches, if any, say whether it did)",
                self.buffer_ms
            )
        }
    }
}

impl StealSampler {
    /// A sampler (room for 4096 samples before it allocates again).
    pub fn new() -> Self {
        Self {
            samples: Vec::with_capacity(4096),
            cpus: crate::steal::cpus(),
        }
    }

    /// Steal over everything sampled, with the worst second, judged against a device buffer
    /// of `buffer_ns`; `None` without two samples a second apart or without the CPU count.
    pub fn summary(&self, buffer_ns: u64) -> Option<HostSteal> {
        let (first, last) = (self.samples.first()?, self.samples.last()?);
        let span_ns = last
            .0
            .checked_sub(first.0)
            .filter(|d| *d >= 1_000_000_000)?;
        let cpus = Some(u64::from(self.cpus)).filter(|c| *c > 0)?;
        // The most in any window of at least a second that starts at a sample (two cursors).
        let mut worst = 0;
        let mut j = 0;
        for (i, &(t, stolen)) in self.samples.iter().enumerate() {
            j = j.max(i);
            while j < self.samples.len() && self.samples[j].0 < t + 1_000_000_000 {
                j += 1;
            }
            let Some(&(_, later)) = self.samples.get(j) else {
                break;
            };
            worst = worst.max(later.saturating_sub(stolen));
        }
        let total = last.1.saturating_sub(first.1);
        Some(HostSteal {
            total_ms: total as f64 / 1e6,
            percent: total as f64 * 100.0 / (span_ns * cpus) as f64,
            worst_second_ms: worst as f64 / 1e6,
            buffer_ms: buffer_ns as f64 / 1e6,
        })
    }

    /// Reads `/proc/stat` now (not on the real-time thread).
    pub fn sample(&mut self, now_ns: u64) {
        if let Some(steal) = crate::steal::stolen_ns() {
            self.samples.push((now_ns, steal));
        }
    }

    /// Steal time between `from` and `to` (ns), or `None` when not sampled around them.
    pub fn steal_between(&self, from: u64, to: u64) -> Option<u64> {
        let before = self.samples.iter().rev().find(|s| s.0 <= from)?;
        let after = self.samples.iter().find(|s| s.0 >= to)?;
        Some(after.1.saturating_sub(before.1))
    }
}

/// RT throttling as the kernel is set (`/proc/sys/kernel/sched_rt_*`), in words.
pub fn rt_throttling() -> String {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
    };
    match (read("sched_rt_runtime_us"), read("sched_rt_period_us")) {
        (Some(-1), _) => "RT throttling is off (sched_rt_runtime_us -1)".to_owned(),
        (Some(r), Some(p)) => format!(
            "RT throttling is on: real-time threads may run {r} of every {p} µs, then wait \
             {:.0} ms (only when they use that much CPU; voxring's use a few %)",
            (p - r) as f64 / 1000.0
        ),
        _ => "RT throttling settings not readable".to_owned(),
    }
}

/// What [`attribute`] matches the facts against.
pub struct Context<'a> {
    pub period_ns: u64,
    /// The device buffer (periods × period), ns.
    pub buffer_ns: u64,
    pub start_ns: u64,
    /// Per agent (name, its late cycles).
    pub agents: Vec<(String, &'a [LateMark])>,
    pub steal: &'a StealSampler,
    pub rt_throttling: String,
}

/// Explains every glitch among `facts` and every late cycle the agents reported.
pub fn attribute(facts: &[Fact], cx: &Context<'_>) -> Vec<Glitch> {
    let late_wakes: Vec<&Fact> = facts
        .iter()
        .filter(|f| f.kind == FactKind::LateWake)
        .collect();
    let mut out = Vec::new();
    for f in facts {
        let kind = match f.kind {
            FactKind::Xrun | FactKind::PlaybackXrun => "xrun",
            FactKind::Dropped => "lost",
            FactKind::Silence => "silence",
            FactKind::Skipped => "skipped",
            FactKind::Repeated => "repeated",
            FactKind::LateWake | FactKind::Grown(_) => continue,
        };
        // The audio thread's own lateness around it: a stall that ended at most four periods
        // before (the burst that follows a stall spans a few periods) or one period after.
        let window = 4 * cx.period_ns;
        let wake = late_wakes
            .iter()
            .filter(|w| w.t_ns + window >= f.t_ns && w.t_ns <= f.t_ns + cx.period_ns + w.value)
            .max_by_key(|w| w.value);
        let (cause, detail) = if let Some(w) = wake {
            host_stall(w, cx)
        } else if f.kind == FactKind::PlaybackXrun {
            device_or_stolen(
                f,
                cx,
                "the device (or the audio server behind it) ran out of frames while the audio \
                 thread was on time",
            )
        } else if let Some((name, m)) = agent_near(f.cycle, playback_kind(f.kind), cx) {
            agent_or_stolen(f, name, m, cx)
        } else if matches!(f.kind, FactKind::Skipped | FactKind::Repeated) {
            device_or_stolen(
                f,
                cx,
                "the audio thread was on time and no agent was late: the device took fewer (or \
                 more) playback periods than the capture gave, so the queue moved off its target \
                 (through PipeWire: a graph cycle that ran without our playback stream plays a \
                 quantum of silence that nothing reports, and the playback falls a period \
                 behind; docs/run.md)",
            )
        } else {
            device_or_stolen(
                f,
                cx,
                "the device reported it while the audio thread was on time and no agent was \
                 late",
            )
        };
        let detail = match (f.kind, f.value) {
            (FactKind::Dropped | FactKind::Skipped, n) if n > 1 => format!("{n} frames; {detail}"),
            (FactKind::Xrun, _) => format!("capture: {detail}"),
            (FactKind::PlaybackXrun, _) => {
                format!("playback (silence played that the hub never gave it): {detail}")
            }
            _ => detail,
        };
        out.push(Glitch {
            cycle: f.cycle,
            kind: kind.to_owned(),
            cause: cause.to_owned(),
            detail,
        });
    }
    for (name, marks) in &cx.agents {
        for m in marks.iter() {
            // An agent that took less than a cycle was cut short: the audio thread, catching
            // up after a stall, armed the next cycles at once.
            let quick = m.handoff_ns + m.compute_ns < cx.period_ns;
            let stall = late_wakes
                .iter()
                .filter(|w| w.cycle + 1 >= m.seq && w.cycle <= m.seq + 4)
                .max_by_key(|w| w.value);
            let (cause, detail) = match stall {
                Some(w) if quick => {
                    let (c, d) = host_stall(w, cx);
                    (
                        c,
                        format!(
                            "the {name} agent took {:.2} ms (hand-off {:.2}, compute {:.2}), less \
                             than a cycle, but the next cycles were armed at once as the audio \
                             thread caught up: {d}",
                            (m.handoff_ns + m.compute_ns) as f64 / 1e6,
                            m.handoff_ns as f64 / 1e6,
                            m.compute_ns as f64 / 1e6
                        ),
                    )
                }
                _ => late_agent(name, m, cx),
            };
            out.push(Glitch {
                cycle: m.seq,
                kind: "late-cycle".to_owned(),
                cause: cause.to_owned(),
                detail,
            });
        }
    }
    out.sort_by_key(|g| g.cycle);
    out
}

/// A glitch the audio thread's own timing does not explain: the device's (`words`), unless
/// the hypervisor stole more CPU time around it than the device buffer holds. The audio
/// thread measures its lateness against the device's clock, and when the whole machine is
/// held up a device whose clock is a process of the same VM (an audio server) stops with it:
/// the thread looks on time, and the server behind the device ran dry because nothing ran.
/// On a device whose clock runs on (the synthetic one), a stall that held up an agent or the
/// queue's feed is the same machine's doing, and no agent was seen late.
fn device_or_stolen(f: &Fact, cx: &Context<'_>, words: &str) -> (&'static str, String) {
    // The stall ended before the glitch was seen (a few periods before: the burst after a
    // stall).
    match stolen_around(cx, f.t_ns.saturating_sub(4 * cx.period_ns), f.t_ns) {
        Some(ns) if cx.buffer_ns > 0 && ns >= cx.buffer_ns => (
            "host-stall",
            format!(
                "the audio thread was on time by the device's clock, but {}, more than the \
                 device buffer holds ({:.1} ms): the whole machine was held up (an audio \
                 server's clock, such as PipeWire's, stops with it, so the thread looks on time)",
                stolen_words(ns),
                cx.buffer_ns as f64 / 1e6
            ),
        ),
        _ => ("device", words.to_owned()),
    }
}

/// A glitch after agent `name` was late (`m`): the agent's, unless its wake-up took the time
/// and the hypervisor stole at least that long around it (the host held the agent's CPU, or
/// the whole machine, while the frame waited for it). Any steal is said either way.
fn agent_or_stolen(f: &Fact, name: &str, m: &LateMark, cx: &Context<'_>) -> (&'static str, String) {
    // From before the late cycle's hand-off began to the glitch.
    let from = f
        .t_ns
        .saturating_sub(4 * cx.period_ns)
        .saturating_sub(m.handoff_ns);
    judge_agent(name, m, (from, f.t_ns), cx)
}

/// A late cycle of agent `name` that no stall of the audio thread explains: judged as
/// [`agent_or_stolen`] judges a glitch after it, over the time the agent spent on the frame
/// (placed by its finish stamp). Unstamped, it is the agent's.
fn late_agent(name: &str, m: &LateMark, cx: &Context<'_>) -> (&'static str, String) {
    if m.done_ns == 0 {
        return ("agent-late", agent_words(name, m, cx));
    }
    let from = m
        .done_ns
        .saturating_sub(m.compute_ns.saturating_add(m.handoff_ns));
    judge_agent(name, m, (from, m.done_ns), cx)
}

/// The agent's lateness `m`, or the host's when the agent's wake-up took the time and the
/// hypervisor stole at least that long around `[from, to]`.
fn judge_agent(
    name: &str,
    m: &LateMark,
    (from, to): (u64, u64),
    cx: &Context<'_>,
) -> (&'static str, String) {
    let words = agent_words(name, m, cx);
    let woke_late = m.handoff_ns >= m.compute_ns;
    match stolen_around(cx, from, to) {
        Some(ns) if woke_late && ns >= m.handoff_ns => (
            "host-stall",
            format!(
                "{words}; {}, at least as long as that wake-up: the host held the agent up",
                stolen_words(ns)
            ),
        ),
        Some(ns) if ns > 0 => ("agent-late", format!("{words}; {}", stolen_words(ns))),
        _ => ("agent-late", words),
    }
}

/// Steal time in the 50 ms samples around `[from, to]` (`None`: not sampled then).
fn stolen_around(cx: &Context<'_>, from: u64, to: u64) -> Option<u64> {
    cx.steal
        .steal_between(from.saturating_sub(50_000_000), to + 50_000_000)
}

fn stolen_words(ns: u64) -> String {
    format!(
        "the hypervisor stole {:.1} ms of CPU time (all CPUs) in the 50 ms samples around it",
        ns as f64 / 1e6
    )
}

fn host_stall(w: &Fact, cx: &Context<'_>) -> (&'static str, String) {
    let steal_words = match stolen_around(cx, w.t_ns.saturating_sub(w.value), w.t_ns) {
        Some(0) => "no steal time was recorded then (not the hypervisor: another task, an \
                    interrupt or the kernel held the CPU)"
            .to_owned(),
        Some(ns) => stolen_words(ns),
        None => "steal time was not sampled then".to_owned(),
    };
    (
        "host-stall",
        format!(
            "the audio thread ran {:.2} ms late ({:.1} periods) at {:.3} s; {steal_words}; {}",
            w.value as f64 / 1e6,
            w.value as f64 / cx.period_ns as f64,
            w.t_ns.saturating_sub(cx.start_ns) as f64 / 1e9,
            cx.rt_throttling
        ),
    )
}

/// Whether a glitch is on the playback side (only the echo agent feeds it).
fn playback_kind(k: FactKind) -> bool {
    matches!(
        k,
        FactKind::Silence | FactKind::Skipped | FactKind::Repeated
    )
}

/// The agent that took longest among those that finished one of the four cycles up to
/// `cycle` late (only the echo agent for a playback glitch, when it was late).
fn agent_near<'a>(
    cycle: u64,
    playback: bool,
    cx: &'a Context<'a>,
) -> Option<(&'a str, &'a LateMark)> {
    let near = |only_echo: bool| {
        cx.agents
            .iter()
            .filter(|(name, _)| !only_echo || name == "echo")
            .flat_map(|(name, marks)| {
                marks
                    .iter()
                    .filter(|m| m.seq <= cycle && m.seq + 4 >= cycle)
                    .map(move |m| (name.as_str(), m))
            })
            .max_by_key(|(_, m)| m.handoff_ns + m.compute_ns)
    };
    if playback {
        near(true).or_else(|| near(false))
    } else {
        near(false)
    }
}

fn agent_words(name: &str, m: &LateMark, cx: &Context<'_>) -> String {
    let what = if m.handoff_ns >= m.compute_ns {
        "its wake-up (the frame reached it late)"
    } else {
        "its compute"
    };
    format!(
        "the {name} agent finished cycle {} late: hand-off {:.2} ms, compute {:.2} ms (the \
         cycle is {:.2} ms): {what} took the time",
        m.seq,
        m.handoff_ns as f64 / 1e6,
        m.compute_ns as f64 / 1e6,
        cx.period_ns as f64 / 1e6
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx<'a>(steal: &'a StealSampler, agents: Vec<(String, &'a [LateMark])>) -> Context<'a> {
        Context {
            period_ns: 1_000_000,
            buffer_ns: 3_000_000,
            start_ns: 0,
            agents,
            steal,
            rt_throttling: "RT throttling is off".into(),
        }
    }

    /// Steal samples `every_ms` apart, the cumulative steal (ms) of each as listed.
    fn sampled(every_ms: u64, cumulative_ms: &[u64]) -> Vec<(u64, u64)> {
        (0u64..)
            .zip(cumulative_ms)
            .map(|(i, ms)| (i * every_ms * 1_000_000, ms * 1_000_000))
            .collect()
    }

    #[test]
    fn the_run_summary_says_how_much_was_stolen_and_the_worst_second() {
        let mut steal = StealSampler {
            cpus: 2,
            ..StealSampler::new()
        };
        assert_eq!(steal.summary(5_333_333), None, "nothing sampled");
        // 4 s sampled every 500 ms: 30 ms stolen between 1.0 and 1.5 s, 10 ms at 3.5 s.
        steal.samples = sampled(500, &[0, 0, 0, 30, 30, 30, 30, 40, 40]);
        let h = steal.summary(5_333_333).unwrap();
        assert_eq!(h.total_ms, 40.0);
        assert_eq!(h.worst_second_ms, 30.0);
        // 40 ms of 2 CPUs × 4 s.
        assert!((h.percent - 0.5).abs() < 1e-9, "{h:?}");
        assert!(h.words().contains("stole 40 ms"), "{}", h.words());
        // 30 ms in a second is more than a 5.3 ms buffer holds: the host may be the cause.
        assert!(h.words().contains("could have stalled"), "{}", h.words());
        // Against a 48 ms buffer the same steal could not have stalled the audio past it.
        let h = steal.summary(48_000_000).unwrap();
        assert!(
            h.words().contains("no stall of the host outlasted it"),
            "{}",
            h.words()
        );
        // A quiet host says so.
        steal.samples = vec![(0, 5), (2_000_000_000, 5)];
        let h = steal.summary(5_333_333).unwrap();
        assert_eq!(h.words(), "the hypervisor stole no CPU time during the run");
    }

    #[test]
    fn each_cause_is_named() {
        let mut steal = StealSampler::new();
        steal.samples = vec![(0, 0), (100_000_000, 20_000_000), (200_000_000, 20_000_000)];
        let facts = [
            // The audio thread 5 ms late at 60 ms, then an xrun right after it.
            Fact {
                kind: FactKind::LateWake,
                cycle: 60,
                t_ns: 60_000_000,
                value: 5_000_000,
            },
            Fact {
                kind: FactKind::Xrun,
                cycle: 60,
                t_ns: 60_100_000,
                value: 0,
            },
            // Silence at cycle 150, after the echo agent was late at 149.
            Fact {
                kind: FactKind::Silence,
                cycle: 150,
                t_ns: 150_000_000,
                value: 0,
            },
            // Silence at 500: nothing explains it but the device.
            Fact {
                kind: FactKind::Silence,
                cycle: 500,
                t_ns: 500_000_000,
                value: 0,
            },
            // A playback xrun right after the stall at 60, and one at 151 (the echo agent
            // was late at 149, but the hub's playback never waits for it: the device).
            Fact {
                kind: FactKind::PlaybackXrun,
                cycle: 60,
                t_ns: 60_200_000,
                value: 0,
            },
            Fact {
                kind: FactKind::PlaybackXrun,
                cycle: 151,
                t_ns: 151_000_000,
                value: 0,
            },
        ];
        let marks = [LateMark {
            seq: 149,
            handoff_ns: 100_000,
            compute_ns: 3_000_000,
            done_ns: 0,
        }];
        // The vad took 0.1 ms on cycle 60 but was cut short by the catch-up after the stall.
        let vad = [LateMark {
            seq: 60,
            handoff_ns: 50_000,
            compute_ns: 50_000,
            done_ns: 0,
        }];
        let g = attribute(
            &facts,
            &cx(&steal, vec![("vad".into(), &vad), ("echo".into(), &marks)]),
        );
        assert_eq!(g.len(), 7, "{g:#?}");
        let cut = g
            .iter()
            .find(|g| g.kind == "late-cycle" && g.cycle == 60)
            .unwrap();
        assert_eq!(cut.cause, "host-stall", "{}", cut.detail);
        assert!(cut.detail.contains("caught up"), "{}", cut.detail);
        let g: Vec<Glitch> = g
            .into_iter()
            .filter(|g| g.cycle != 60 || g.kind != "late-cycle")
            .collect();
        for x in &g[..2] {
            assert_eq!((x.kind.as_str(), x.cause.as_str()), ("xrun", "host-stall"));
            assert!(x.detail.contains("5.00 ms late"), "{}", x.detail);
            assert!(x.detail.contains("stole 20.0 ms"), "{}", x.detail);
        }
        assert!(g[0].detail.starts_with("capture: "), "{}", g[0].detail);
        assert!(g[1].detail.starts_with("playback "), "{}", g[1].detail);
        assert_eq!(
            (g[2].kind.as_str(), g[2].cause.as_str()),
            ("late-cycle", "agent-late")
        );
        assert_eq!(
            (g[3].kind.as_str(), g[3].cause.as_str()),
            ("silence", "agent-late")
        );
        assert!(g[3].detail.contains("echo") && g[3].detail.contains("its compute"));
        assert_eq!(
            (g[4].kind.as_str(), g[4].cause.as_str()),
            ("xrun", "device")
        );
        assert!(g[4].detail.starts_with("playback "), "{}", g[4].detail);
        assert!(!g[4].detail.contains("  "), "{}", g[4].detail);
        assert_eq!(
            (g[5].kind.as_str(), g[5].cause.as_str()),
            ("silence", "device")
        );
    }

    #[test]
    fn a_late_agent_wake_up_is_the_hosts_when_at_least_as_much_was_stolen_around_it() {
        // Steal sampled every 50 ms: 10 ms stolen around 100 ms, 30 ms around 500 ms.
        let mut steal = StealSampler::new();
        steal.samples = sampled(
            50,
            &[
                0, 0, 10, 10, 10, 10, 10, 10, 10, 10, 40, 40, 40, 40, 40, 40, 40,
            ],
        );
        let silence = |ms: u64| Fact {
            kind: FactKind::Silence,
            cycle: ms,
            t_ns: ms * 1_000_000,
            value: 0,
        };
        let facts = [silence(100), silence(500), silence(700)];
        // The echo's wake-up took 20 ms before 100 (10 ms stolen: not enough), 10.6 ms before
        // 500 (30 ms stolen), and its compute took 20 ms before 700 (nothing stolen then).
        let echo = [
            LateMark {
                seq: 99,
                handoff_ns: 20_000_000,
                compute_ns: 10_000,
                done_ns: 0,
            },
            LateMark {
                seq: 499,
                handoff_ns: 10_600_000,
                compute_ns: 10_000,
                done_ns: 0,
            },
            LateMark {
                seq: 699,
                handoff_ns: 10_000,
                compute_ns: 20_000_000,
                done_ns: 0,
            },
        ];
        let g = attribute(&facts, &cx(&steal, vec![("echo".into(), &echo)]));
        let at = |cycle| {
            g.iter()
                .find(|g| g.kind == "silence" && g.cycle == cycle)
                .unwrap()
        };
        assert_eq!(at(100).cause, "agent-late", "{}", at(100).detail);
        assert!(
            at(100).detail.contains("stole 10.0 ms"),
            "{}",
            at(100).detail
        );
        assert_eq!(at(500).cause, "host-stall", "{}", at(500).detail);
        assert!(
            at(500).detail.contains("stole 30.0 ms")
                && at(500).detail.contains("held the agent up"),
            "{}",
            at(500).detail
        );
        assert_eq!(at(700).cause, "agent-late", "{}", at(700).detail);
        assert!(!at(700).detail.contains("stole"), "{}", at(700).detail);
    }

    #[test]
    fn a_late_cycle_stamped_by_its_agent_is_the_hosts_when_the_steal_around_it_covers_its_wake_up()
    {
        // 30 ms stolen between 450 and 500 ms, nothing else; the audio thread never late.
        let mut steal = StealSampler::new();
        steal.samples = sampled(
            50,
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30, 30, 30, 30, 30, 30, 30, 30],
        );
        let mark = |seq, handoff_ms: u64, compute_ms: u64, done_ms: u64| LateMark {
            seq,
            handoff_ns: handoff_ms * 1_000_000,
            compute_ns: compute_ms * 1_000_000,
            done_ns: done_ms * 1_000_000,
        };
        let echo = [
            // A 10 ms wake-up that ended at 495 ms: the steal covers it.
            mark(1, 10, 0, 495),
            // The same wake-up at 800 ms, where nothing was stolen.
            mark(2, 10, 0, 800),
            // 10 ms of its own compute at 495 ms: the agent's, the steal said beside it.
            mark(3, 0, 10, 495),
            // Unstamped (done_ns 0): not placed on the clock, the agent's.
            mark(4, 10, 0, 0),
        ];
        let g = attribute(&[], &cx(&steal, vec![("echo".into(), &echo)]));
        let causes: Vec<&str> = g.iter().map(|g| g.cause.as_str()).collect();
        assert_eq!(
            causes,
            ["host-stall", "agent-late", "agent-late", "agent-late"],
            "{g:#?}"
        );
        assert!(g.iter().all(|g| g.kind == "late-cycle"), "{g:#?}");
        assert!(g[0].detail.contains("held the agent up"), "{}", g[0].detail);
        assert!(!g[1].detail.contains("stole"), "{}", g[1].detail);
        assert!(g[2].detail.contains("stole 30.0 ms"), "{}", g[2].detail);
        assert!(!g[3].detail.contains("stole"), "{}", g[3].detail);
    }

    #[test]
    fn a_glitch_on_time_by_the_device_clock_is_the_hosts_when_more_than_the_buffer_was_stolen() {
        // Steal sampled every 50 ms: 2 ms stolen around 100 ms, 8 ms around 300 ms.
        let mut steal = StealSampler::new();
        steal.samples = sampled(50, &[0, 0, 2, 2, 2, 2, 10, 10]);
        let at = |kind, ms: u64| Fact {
            kind,
            cycle: ms,
            t_ns: ms * 1_000_000,
            value: 0,
        };
        let facts = [
            at(FactKind::PlaybackXrun, 100),
            at(FactKind::PlaybackXrun, 300),
            at(FactKind::Silence, 300),
            at(FactKind::Xrun, 300),
        ];
        let g = attribute(&facts, &cx(&steal, Vec::new()));
        // 2 ms stolen, less than the 3 ms buffer: the device's.
        assert_eq!(g[0].cause, "device", "{}", g[0].detail);
        // 8 ms stolen around the others: the whole machine was held up.
        for x in &g[1..] {
            assert_eq!(x.cause, "host-stall", "{}", x.detail);
            assert!(
                x.detail.contains("stole 8.0 ms") && x.detail.contains("buffer holds (3.0 ms)"),
                "{}",
                x.detail
            );
        }
        // Not sampled around it: the device's.
        let g = attribute(&[at(FactKind::Xrun, 900)], &cx(&steal, Vec::new()));
        assert_eq!(g[0].cause, "device");
    }

    #[test]
    fn the_log_never_grows_past_its_capacity() {
        let mut log = FactLog::with_capacity(2);
        let f = Fact {
            kind: FactKind::Silence,
            cycle: 0,
            t_ns: 0,
            value: 0,
        };
        for _ in 0..5 {
            log.push(f);
        }
        assert_eq!((log.facts.len(), log.overflow), (2, 3));
    }
}
