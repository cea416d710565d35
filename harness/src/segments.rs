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

fn role(p: &ParticipantInfo) -> &'static str {
    if p.slot.is_some() {
        "consumer"
    } else {
        "producer"
    }
}

/// The participants of a readable ring: the producer first, then the consumers by slot.
fn participants(s: &SegmentInfo) -> impl Iterator<Item = &ParticipantInfo> {
    let ring = s.ring.as_ref().ok();
    let producer = ring.and_then(|r| r.producer.as_ref());
    producer
        .into_iter()
        .chain(ring.into_iter().flat_map(|r| r.consumers.iter()))
}

/// A segment as one row of `segments list --json`: the fields of [`SegmentInfo`], its
/// owner's name, its participants alive and dead, each participant with its role; the ring's
/// configuration and write position are null when the ring could not be read, and `error`
/// says why.
fn to_json(s: &SegmentInfo) -> serde_json::Value {
    let (alive, dead) = s.participants();
    let ring = s.ring.as_ref().ok();
    let cfg = ring.map(|r| r.config);
    let participants: Vec<_> = participants(s)
        .map(|p| {
            serde_json::json!({
                "role": role(p), "slot": p.slot, "pid": p.pid, "alive": p.alive, "lag": p.lag,
            })
        })
        .collect();
    serde_json::json!({
        "name": s.name, "path": s.path.display().to_string(), "size": s.size,
        "owner_uid": s.owner_uid, "owner": user_name(s.owner_uid),
        "mode": format!("{:04o}", s.mode), "in_use": s.in_use, "alive": alive, "dead": dead,
        "frames": cfg.map(|c| c.frames), "samples_per_frame": cfg.map(|c| c.samples_per_frame),
        "channels": cfg.map(|c| c.channels), "sample_rate": cfg.map(|c| c.sample_rate),
        "write_pos": ring.map(|r| r.write_pos), "participants": participants,
        "error": s.ring.as_ref().err(),
    })
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

fn who(p: &ParticipantInfo) -> String {
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
    let rows: Vec<&SegmentInfo> = segs
        .iter()
        .filter(|s| s.name.starts_with(&args.prefix))
        .collect();
    if let Some(path) = &args.json {
        let json: Vec<_> = rows.iter().map(|s| to_json(s)).collect();
        write_json(path, &json)?;
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
    for s in rows {
        let parts: Vec<String> = participants(s).map(who).collect();
        let parts = match &s.ring {
            Err(e) => format!("(ring not readable: {e})"),
            Ok(_) if parts.is_empty() => "none".to_owned(),
            Ok(_) => parts.join(", "),
        };
        let (alive, dead) = s.participants();
        println!(
            "{:<40} {:>10} {:<10} {:<6} {:>5} {:>4}  {}",
            s.name,
            human_size(s.size),
            user_name(s.owner_uid),
            if s.in_use { "yes" } else { "no" },
            alive,
            dead,
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
