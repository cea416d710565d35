//! `voxring segments list` and `voxring segments clean [--dry-run] [--all-users]`: what is in
//! `/dev/shm/voxring.*`, who uses it, and removing what is provably dead.
//!
//! Both compose `voxring_linux`: [`voxring_linux::ring::list_segments`] (read-only: size, owner,
//! each participant's liveness from the kernel's OFD locks) and
//! [`voxring_linux::cleanup::clean_segments_with`] (removes a segment only when no process
//! holds a liveness lock on it, judged again after moving it where nobody can swap it). A
//! segment a live process uses is never removed, and another user's only with `--all-users`.
//!
//! Exit status: 0 done; 1 `clean` could not check or remove some segment (listed with the
//! reason); 2 `/dev/shm` could not be read.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;
use voxring_linux::ring::{ParticipantInfo, SegmentInfo, list_segments};

/// `voxring segments ...`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List voxring segments in /dev/shm: name, size, owner, participants alive or dead, each
    /// consumer's lag.
    List(ListArgs),
    /// Remove this user's segments no live process uses (every participant gone); never one
    /// in use, and other users' only with --all-users.
    Clean(CleanArgs),
}

/// Options of `voxring segments list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only list segments whose name (without `voxring.`) starts with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Also write the list as JSON to this file (`-` for stdout, instead of the table).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Options of `voxring segments clean`.
#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove dead segments owned by other users (as root). Without it they are listed
    /// and left alone.
    #[arg(long)]
    pub all_users: bool,
    /// Only consider segments whose name (without `voxring.`) starts with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Also write what was (or would be) done as JSON to this file (`-` for stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One participant in the JSON list.
#[derive(Debug, Serialize)]
pub struct ParticipantJson {
    /// `producer` or `consumer`.
    pub role: &'static str,
    /// Consumer slot.
    pub slot: Option<u16>,
    /// PID it wrote in its token (in its own PID namespace).
    pub pid: u32,
    /// Whether its liveness lock is held.
    pub alive: bool,
    /// Frames committed but not yet released (consumers), when known.
    pub lag: Option<u64>,
}

/// One segment in the JSON list.
#[derive(Debug, Serialize)]
pub struct SegmentJson {
    pub name: String,
    pub path: String,
    pub size: u64,
    pub owner_uid: u32,
    pub owner: String,
    pub mode: String,
    /// Whether any process holds a liveness lock on it (false: `clean` removes it).
    pub in_use: bool,
    pub alive: usize,
    pub dead: usize,
    /// Ring configuration and write position, when the ring could be read.
    pub frames: Option<u32>,
    pub samples_per_frame: Option<u32>,
    pub channels: Option<u16>,
    pub sample_rate: Option<u32>,
    pub write_pos: Option<u64>,
    pub participants: Vec<ParticipantJson>,
    /// Why the ring could not be read, if it could not.
    pub error: Option<String>,
}

fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut it = l.split(':');
                let name = it.next()?;
                let _ = it.next()?;
                (it.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

fn participant(p: &ParticipantInfo) -> ParticipantJson {
    ParticipantJson {
        role: if p.slot.is_some() {
            "consumer"
        } else {
            "producer"
        },
        slot: p.slot,
        pid: p.pid,
        alive: p.alive,
        lag: p.lag,
    }
}

fn to_json(s: &SegmentInfo) -> SegmentJson {
    let (alive, dead) = s.participants();
    let (cfg, write_pos, participants, error) = match &s.ring {
        Ok(r) => (
            Some(r.config),
            Some(r.write_pos),
            r.producer
                .iter()
                .chain(r.consumers.iter())
                .map(participant)
                .collect(),
            None,
        ),
        Err(e) => (None, None, Vec::new(), Some(e.clone())),
    };
    SegmentJson {
        name: s.name.clone(),
        path: s.path.display().to_string(),
        size: s.size,
        owner_uid: s.owner_uid,
        owner: user_name(s.owner_uid),
        mode: format!("{:04o}", s.mode),
        in_use: s.in_use,
        alive,
        dead,
        frames: cfg.map(|c| c.frames),
        samples_per_frame: cfg.map(|c| c.samples_per_frame),
        channels: cfg.map(|c| c.channels),
        sample_rate: cfg.map(|c| c.sample_rate),
        write_pos,
        participants,
        error,
    }
}

fn write_json(path: &PathBuf, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    if path.as_os_str() == "-" {
        println!("{text}");
        Ok(())
    } else {
        std::fs::write(path, text + "\n").with_context(|| {
            format!(
                "cannot write {}: check the folder exists and is writable",
                path.display()
            )
        })
    }
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn who(p: &ParticipantJson) -> String {
    let role = match p.slot {
        Some(i) => format!("consumer {i}"),
        None => "producer".to_owned(),
    };
    let lag = p.lag.map_or_else(String::new, |l| format!(" lag {l}"));
    format!(
        "{role} pid {} {}{lag}",
        p.pid,
        if p.alive { "alive" } else { "DEAD" }
    )
}

/// Lists the segments (table on stdout, or JSON).
fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let segs = list_segments().context("cannot read /dev/shm to list voxring segments")?;
    let rows: Vec<SegmentJson> = segs
        .iter()
        .filter(|s| s.name.starts_with(&args.prefix))
        .map(to_json)
        .collect();
    if let Some(path) = &args.json {
        write_json(path, &rows)?;
        if path.as_os_str() == "-" {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if rows.is_empty() {
        println!("no voxring segments in /dev/shm");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:>10} {:<10} {:<6} {:>5} {:>4}  participants",
        "name", "size", "owner", "in use", "alive", "dead"
    );
    for r in &rows {
        let parts = if let Some(e) = &r.error {
            format!("(ring not readable: {e})")
        } else if r.participants.is_empty() {
            "none".to_owned()
        } else {
            r.participants
                .iter()
                .map(who)
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<40} {:>10} {:<10} {:<6} {:>5} {:>4}  {}",
            r.name,
            human_size(r.size),
            r.owner,
            if r.in_use { "yes" } else { "no" },
            r.alive,
            r.dead,
            parts
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `clean` did, as JSON.
#[derive(Debug, Serialize)]
struct CleanJson {
    dry_run: bool,
    removed: Vec<String>,
    in_use: Vec<String>,
    /// Left alone because another user owns them: `[name, uid]`.
    other_users: Vec<(String, u32)>,
    skipped: Vec<(String, String)>,
}

fn clean(args: &CleanArgs) -> anyhow::Result<ExitCode> {
    let wanted = format!("voxring.{}", args.prefix);
    // A dry run makes the same judgement with the same checks, and moves nothing.
    let opts = voxring_linux::cleanup::CleanOptions {
        all_users: args.all_users,
        dry_run: args.dry_run,
    };
    let r = voxring_linux::cleanup::clean_segments_with(&opts, |name| name.starts_with(&wanted))
        .context("cannot read /dev/shm to clean voxring segments")?;
    let out = CleanJson {
        dry_run: args.dry_run,
        removed: r.removed,
        in_use: r.in_use,
        other_users: r.other_users,
        skipped: r.skipped,
    };
    if let Some(path) = &args.json {
        write_json(path, &out)?;
    }
    if args.json.as_ref().is_none_or(|p| p.as_os_str() != "-") {
        let verb = if out.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for n in &out.removed {
            println!("{verb} {n} (no live participant)");
        }
        for n in &out.in_use {
            println!("kept {n} (in use by a live process)");
        }
        for (n, uid) in &out.other_users {
            println!(
                "left {n} alone (owned by {}, uid {uid}, another user; --all-users includes it)",
                user_name(*uid)
            );
        }
        for (n, why) in &out.skipped {
            println!("skipped {n}: {why}");
        }
        if out.removed.is_empty()
            && out.in_use.is_empty()
            && out.other_users.is_empty()
            && out.skipped.is_empty()
        {
            println!("no voxring segments in /dev/shm");
        }
    }
    Ok(if out.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `voxring segments`.
pub fn main(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::List(args) => list(&args),
        Command::Clean(args) => clean(&args),
    }
}
