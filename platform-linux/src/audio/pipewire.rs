//! PipeWire's quantum and rate: apply what the user asks for, read back what it runs at,
//! restore what was there before.
//!
//! PipeWire keeps its clock settings in the `settings` metadata object (id 0):
//! `clock.rate`/`clock.quantum` are the configured defaults, `clock.force-rate` and
//! `clock.force-quantum` override them for the whole graph while set (0 or absent: not forced).
//! We drive it with the `pw-metadata` tool (from `pipewire-bin`), off the real-time thread.
//! The graph follows a forced value at its next cycle; the stream's own nodes ask for
//! `node.latency = period/rate`, which [`stream_latencies`] reads back from `pw-dump`.

use std::process::Command;

use super::AudioError;

/// The clock entries of PipeWire's `settings` metadata (absent keys are `None`).
///
/// ```
/// use voxring_linux::audio::pipewire::parse_settings;
/// let text = "update: id:0 key:'clock.rate' value:'48000' type:''\n\
///             update: id:0 key:'clock.quantum' value:'1024' type:''\n\
///             update: id:0 key:'clock.force-quantum' value:'128' type:''\n";
/// let clock = parse_settings(text);
/// assert_eq!(clock.rate, Some(48_000));
/// assert_eq!(clock.effective_quantum(), Some(128)); // forced wins
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PwClock {
    /// `clock.rate`: the graph's default rate.
    pub rate: Option<u32>,
    /// `clock.quantum`: the graph's default quantum.
    pub quantum: Option<u32>,
    /// `clock.min-quantum`.
    pub min_quantum: Option<u32>,
    /// `clock.max-quantum`.
    pub max_quantum: Option<u32>,
    /// `clock.force-rate` (0 means not forced).
    pub force_rate: Option<u32>,
    /// `clock.force-quantum` (0 means not forced).
    pub force_quantum: Option<u32>,
}

impl PwClock {
    /// The rate the graph runs at: the forced one if set, else the default.
    pub fn effective_rate(&self) -> Option<u32> {
        self.force_rate.filter(|r| *r != 0).or(self.rate)
    }
    /// The quantum the graph runs at when a forced quantum is set; else the default (the
    /// graph may pick a different one between min and max to suit its clients' latencies).
    pub fn effective_quantum(&self) -> Option<u32> {
        self.force_quantum.filter(|q| *q != 0).or(self.quantum)
    }
    /// The quantum the graph runs at while its lowest-latency node asks for `asked` frames:
    /// the forced quantum if set, else [`graph_for_latency`] under this config's bounds.
    pub fn graph_with(&self, asked: u32) -> u32 {
        self.force_quantum
            .filter(|q| *q != 0)
            .unwrap_or_else(|| graph_for_latency(asked, self.min_quantum, self.max_quantum))
    }
}

/// The quantum PipeWire gives a graph whose lowest-latency node asks for `asked` frames:
/// `asked` raised to the config's `clock.min-quantum` and lowered to its `clock.max-quantum`
/// (a maximum below the minimum counts as the minimum). A stock VM config's minimum is 1024,
/// so a node asking 128 gets 1024.
pub fn graph_for_latency(asked: u32, min: Option<u32>, max: Option<u32>) -> u32 {
    let min = min.unwrap_or(0);
    let at_least = asked.max(min);
    max.map_or(at_least, |max| at_least.min(max.max(min)))
}

fn pw_metadata(args: &[&str]) -> Result<String, AudioError> {
    let out = Command::new("pw-metadata")
        .args(args)
        .output()
        .map_err(|e| AudioError::Io {
            what: "running pw-metadata (PipeWire's metadata tool; install pipewire-bin)".into(),
            source: e,
        })?;
    if !out.status.success() {
        return Err(AudioError::NotGranted(format!(
            "pw-metadata {} failed ({}): {}; is PipeWire running, and does XDG_RUNTIME_DIR point \
             at its socket?",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses `pw-metadata -n settings` output (`update: id:0 key:'clock.rate' value:'48000' ...`).
pub fn parse_settings(text: &str) -> PwClock {
    let mut c = PwClock::default();
    for line in text.lines() {
        let Some(id) = field(line, "id:") else {
            continue;
        };
        if id != "0" {
            continue;
        }
        let (Some(key), Some(value)) = (quoted(line, "key:'"), quoted(line, "value:'")) else {
            continue;
        };
        let v = value.trim().parse::<u32>().ok();
        match key {
            "clock.rate" => c.rate = v,
            "clock.quantum" => c.quantum = v,
            "clock.min-quantum" => c.min_quantum = v,
            "clock.max-quantum" => c.max_quantum = v,
            "clock.force-rate" => c.force_rate = v,
            "clock.force-quantum" => c.force_quantum = v,
            _ => {}
        }
    }
    c
}

fn field<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    let rest = &line[line.find(tag)? + tag.len()..];
    Some(rest.split_whitespace().next().unwrap_or(""))
}

fn quoted<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    let rest = &line[line.find(tag)? + tag.len()..];
    Some(&rest[..rest.find('\'')?])
}

/// Reads PipeWire's clock settings.
pub fn read_clock() -> Result<PwClock, AudioError> {
    Ok(parse_settings(&pw_metadata(&["-n", "settings"])?))
}

/// Whether a PipeWire daemon answers (`pw-metadata` runs and finds the settings object).
pub fn available() -> bool {
    pw_metadata(&["-n", "settings"]).is_ok_and(|s| s.contains("Found"))
}

/// A forced quantum and rate, restored to what was there before when dropped (or by
/// [`PwOverride::restore`], which reports failures).
#[derive(Debug)]
pub struct PwOverride {
    before: PwClock,
    /// What we asked for.
    pub asked: (u32, u32),
    /// What PipeWire's settings hold after we asked.
    pub after: PwClock,
    restored: bool,
}

/// Forces PipeWire's graph to `quantum` frames at `rate` Hz (`clock.force-quantum`,
/// `clock.force-rate`) and reads the settings back.
pub fn force_clock(quantum: u32, rate: u32) -> Result<PwOverride, AudioError> {
    let before = read_clock()?;
    pw_metadata(&["-n", "settings", "0", "clock.force-rate", &rate.to_string()])?;
    let mut ov = PwOverride {
        before,
        asked: (quantum, rate),
        after: before,
        restored: false,
    };
    pw_metadata(&[
        "-n",
        "settings",
        "0",
        "clock.force-quantum",
        &quantum.to_string(),
    ])?;
    ov.after = read_clock()?;
    Ok(ov)
}

impl PwOverride {
    /// The settings before we forced anything.
    pub fn before(&self) -> PwClock {
        self.before
    }

    /// Puts `clock.force-quantum` and `clock.force-rate` back as they were (deleting them if
    /// they were absent).
    pub fn restore(mut self) -> Result<(), AudioError> {
        self.restored = true;
        restore_key("clock.force-quantum", self.before.force_quantum)?;
        restore_key("clock.force-rate", self.before.force_rate)
    }
}

fn restore_key(key: &str, value: Option<u32>) -> Result<(), AudioError> {
    match value {
        Some(v) => pw_metadata(&["-n", "settings", "0", key, &v.to_string()]).map(drop),
        None => pw_metadata(&["-n", "settings", "-d", "0", key]).map(drop),
    }
}

impl Drop for PwOverride {
    fn drop(&mut self) {
        if !self.restored {
            let _ = restore_key("clock.force-quantum", self.before.force_quantum);
            let _ = restore_key("clock.force-rate", self.before.force_rate);
        }
    }
}

/// `node.latency` (as PipeWire shows it, e.g. `128/48000`) of every ALSA client stream node,
/// from `pw-dump`: what the ALSA plugin asked the graph for on our behalf.
pub fn stream_latencies() -> Result<Vec<(String, String)>, AudioError> {
    let out = Command::new("pw-dump")
        .output()
        .map_err(|e| AudioError::Io {
            what: "running pw-dump (install pipewire-bin)".into(),
            source: e,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    // pw-dump prints JSON with one property per line; we only need two keys per node and avoid
    // a JSON dependency in the platform crate.
    let mut found = Vec::new();
    let (mut name, mut latency): (Option<String>, Option<String>) = (None, None);
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = json_str_value(l, "\"node.name\"") {
            name = Some(v.to_owned());
        } else if let Some(v) = json_str_value(l, "\"node.latency\"") {
            latency = Some(v.to_owned());
        } else if l
            .strip_prefix("\"id\":")
            .is_some_and(|v| v.trim().trim_end_matches(',').parse::<u32>().is_ok())
        {
            // A new object starts.
            (name, latency) = (None, None);
        }
        if let (Some(_), Some(_)) = (&name, &latency) {
            found.push((
                name.take().unwrap_or_default(),
                latency.take().unwrap_or_default(),
            ));
        }
    }
    Ok(found)
}

fn json_str_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line
        .strip_prefix(key)?
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pw_metadata_output() {
        let text = "Found \"settings\" metadata 34\n\
            update: id:0 key:'log.level' value:'2' type:''\n\
            update: id:0 key:'clock.rate' value:'48000' type:''\n\
            update: id:0 key:'clock.quantum' value:'1024' type:''\n\
            update: id:0 key:'clock.min-quantum' value:'16' type:''\n\
            update: id:0 key:'clock.force-quantum' value:'128' type:''\n\
            update: id:7 key:'clock.force-rate' value:'44100' type:''\n";
        let c = parse_settings(text);
        assert_eq!(c.rate, Some(48_000));
        assert_eq!(c.quantum, Some(1024));
        assert_eq!(c.min_quantum, Some(16));
        assert_eq!(c.max_quantum, None);
        assert_eq!(c.force_quantum, Some(128));
        assert_eq!(c.force_rate, None, "a key on another subject is not ours");
        assert_eq!(c.effective_quantum(), Some(128));
        assert_eq!(c.effective_rate(), Some(48_000));
        let unforced = PwClock {
            force_quantum: Some(0),
            ..c
        };
        assert_eq!(unforced.effective_quantum(), Some(1024));
    }

    #[test]
    fn a_node_latency_is_clamped_to_the_configs_quanta_unless_one_is_forced() {
        // A stock VM config: min 1024; a 128-frame node gets 1024.
        assert_eq!(graph_for_latency(128, Some(1024), Some(2048)), 1024);
        assert_eq!(graph_for_latency(512, Some(32), Some(2048)), 512);
        assert_eq!(graph_for_latency(4096, Some(32), Some(2048)), 2048);
        assert_eq!(graph_for_latency(4096, None, None), 4096);
        // A maximum below the minimum counts as the minimum.
        assert_eq!(graph_for_latency(128, Some(1024), Some(256)), 1024);
        let c = PwClock {
            min_quantum: Some(32),
            max_quantum: Some(2048),
            force_quantum: Some(0),
            ..PwClock::default()
        };
        assert_eq!(c.graph_with(512), 512);
        let forced = PwClock {
            force_quantum: Some(256),
            ..c
        };
        assert_eq!(forced.graph_with(512), 256);
    }

    #[test]
    fn reads_json_string_values() {
        assert_eq!(
            json_str_value("\"node.latency\": \"128/48000\",", "\"node.latency\""),
            Some("128/48000")
        );
        assert_eq!(
            json_str_value("\"node.latency\": 5,", "\"node.latency\""),
            None
        );
    }
}
