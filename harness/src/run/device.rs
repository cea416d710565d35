//! Opening the audio device for `voxring run` and `voxring serve`: the stream parameters
//! from the command line, the device by name (`auto`, `synthetic`, an ALSA PCM), and what it
//! granted.

use voxring_linux::audio::{
    DeviceSpec, Duplex, Sample, StreamParams, alsa_pcm::MmapPreference, open_duplex,
};

/// The device and stream options `voxring run` and `voxring serve` share.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Capture/playback device: `auto` (the system's ALSA/PipeWire default when it answers,
    /// else the clocked synthetic device), `synthetic` (its playback loops back into its
    /// capture), or an ALSA PCM name (`pipewire`, `default`, `hw:0,0`). `synthetic:none`
    /// gives the synthetic device a silent capture.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Sample rate, Hz.
    #[arg(long, default_value_t = 48_000)]
    pub rate: u32,
    /// Frames per cycle (the device period and one ring frame).
    #[arg(long, default_value_t = 128)]
    pub quantum: u32,
    /// Device buffer, in quanta: `auto` measures the machine's wake-up jitter first (1.5 s)
    /// and picks the smallest buffer that absorbs it (`voxring run` then grows its playback
    /// reserve by one period after each period of played silence, see its report's
    /// `buffer`); a number (at least 2) forces that size, never grown.
    #[arg(long, default_value = "auto")]
    pub periods: super::buffer::Periods,
    /// Channels.
    #[arg(long, default_value_t = 1)]
    pub channels: u16,
    /// Sample format.
    #[arg(long, value_parser = super::format_parser(), default_value = "s16")]
    pub format: super::Format,
    /// Keep every CPU from going idle while the audio runs: a SCHED_IDLE spinner on each (it
    /// yields at once to any other thread). On a virtual machine whose idle vCPUs halt
    /// (`voxring doctor`'s vm-idle check), every wake-up otherwise first waits for the host
    /// to run the vCPU again. Costs every idle cycle: the CPUs show 100 % busy. See
    /// docs/run.md, "Idle vCPUs halt".
    #[arg(long)]
    pub keep_awake: bool,
}

impl StreamArgs {
    /// What to open, with `periods` resolved.
    pub fn request(&self, periods: u32) -> DeviceRequest<'_> {
        DeviceRequest {
            device: &self.device,
            rate: self.rate,
            quantum: self.quantum,
            periods,
            channels: self.channels,
        }
    }
}

/// What the command line asked of the device.
#[derive(Debug, Clone)]
pub struct DeviceRequest<'a> {
    /// `--device`.
    pub device: &'a str,
    /// `--rate`.
    pub rate: u32,
    /// `--quantum`.
    pub quantum: u32,
    /// `--periods`.
    pub periods: u32,
    /// `--channels`.
    pub channels: u16,
}

/// An open device and the stream it runs.
#[derive(Debug)]
pub struct OpenDevice<T: Sample> {
    /// The device.
    pub duplex: Duplex<T>,
    /// Its label for reports (`synthetic`, `pipewire`...).
    pub label: String,
    /// Whether it is the synthetic device.
    pub synthetic: bool,
    /// Granted rate, Hz.
    pub rate: u32,
    /// Granted period (the pipeline's quantum), frames.
    pub quantum: u32,
    /// Granted channels.
    pub channels: u16,
    /// One period, ns.
    pub period_ns: u64,
    /// The granted playback buffer, ns.
    pub buffer_ns: u64,
}

/// Opens the device `req` names; warnings (what `auto` chose, a rate or period other than
/// asked) go to `warnings`.
pub fn open<T: Sample>(
    req: &DeviceRequest<'_>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<OpenDevice<T>> {
    let params = StreamParams {
        rate: req.rate,
        channels: u32::from(req.channels),
        period_frames: req.quantum,
        buffer_frames: req.quantum.saturating_mul(req.periods),
    };
    params.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let spec = DeviceSpec::parse(req.device, &params).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (duplex, label) = open_duplex::<T>(&spec, &params, MmapPreference::Auto).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the audio device '{}': {e}. Try `--device synthetic` (a clocked \
                 device that needs no sound card), or list devices with `aplay -L`",
            req.device
        )
    })?;
    // `auto` says in the label why it fell back; that belongs with the warnings.
    let label = match label.split_once(" (auto: ") {
        Some((dev, why)) => {
            warnings.push(format!(
                "--device auto chose {dev}: {}",
                why.strip_suffix(')').unwrap_or(why)
            ));
            dev.to_owned()
        }
        None => label,
    };
    let synthetic = matches!(duplex, Duplex::Synthetic(_));
    let cg = duplex.capture_granted();
    let pg = duplex.playback_granted();
    if cg.rate != req.rate || cg.period_frames != req.quantum {
        warnings.push(format!(
            "the device granted {} Hz with {}-frame periods (asked {} Hz, {}); the pipeline runs \
             at what was granted",
            cg.rate, cg.period_frames, req.rate, req.quantum
        ));
    }
    let rate = cg.rate;
    let quantum = cg.period_frames;
    Ok(OpenDevice {
        duplex,
        label,
        synthetic,
        rate,
        quantum,
        channels: cg.channels as u16,
        period_ns: u64::from(quantum) * 1_000_000_000 / u64::from(rate),
        buffer_ns: u64::from(pg.buffer_frames) * 1_000_000_000 / u64::from(rate),
    })
}

/// Asks for SCHED_FIFO at `priority` on the calling thread (0: none): what it runs under,
/// and the refusal as a warning.
pub fn promote(priority: u8) -> (String, Option<String>) {
    if priority == 0 {
        return ("SCHED_OTHER".to_owned(), None);
    }
    match voxring_linux::rt::set_fifo(priority) {
        Ok(()) => (format!("SCHED_FIFO {priority}"), None),
        Err(e) => (
            "SCHED_OTHER (SCHED_FIFO refused)".to_owned(),
            Some(e.to_string()),
        ),
    }
}
