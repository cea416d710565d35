//! The file checks of `voxring doctor`, in the order of `kernel-tuning/CHECKS.md`: the user's
//! limits and scheduling rights (root, the audio group, limits.conf, RLIMIT_RTPRIO and
//! RLIMIT_MEMLOCK, `chrt -f 80`), then the kernel, CPUs, memory, interrupts and the audio server
//! (governor, kernel config, timers, preemption, threaded IRQs, mitigations, isolation,
//! swappiness, RT throttling, THP, /dev/shm, file systems, IRQ sharing, affinity and threads,
//! cpu_dma_latency, idle vCPUs of a virtual machine, PipeWire). Each check reads files under the
//! doctor's root only.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::sys::{self, Sys, is_uint, size_to_bytes};
use super::{Check, Finding, fail, good, warn};

/// A file check: what it finds on the system.
type FileCheck = fn(&Sys) -> Finding;

/// Every file check, in the order of CHECKS.md, with its id.
const FILE_CHECKS: [(&str, FileCheck); 26] = [
    ("root", c_root),
    ("audio-group", c_audio_group),
    ("limits-conf", c_limits_conf),
    ("rtprio", c_rtprio),
    ("memlock", c_memlock),
    ("rt-probe", c_rt_probe),
    ("governor", c_governor),
    ("kernel-config", c_kernel_config),
    ("hires-timers", c_hires),
    ("tickless", c_tickless),
    ("preempt", c_preempt),
    ("threadirqs", c_threadirqs),
    ("mitigations", c_mitigations),
    ("isolation", c_isolation),
    ("smt", c_smt),
    ("swappiness", c_swappiness),
    ("rt-throttling", c_rt_throttling),
    ("thp", c_thp),
    ("shm-size", c_shm_size),
    ("filesystems", c_filesystems),
    ("irq-sharing", c_irq_sharing),
    ("irq-affinity", c_irq_affinity),
    ("irq-threads", c_irq_threads),
    ("cpu-dma-latency", c_cpu_dma_latency),
    ("vm-idle", c_vm_idle),
    ("pipewire-quantum", c_pipewire),
];

/// Runs every file check, in the order of CHECKS.md.
pub fn file_checks(s: &Sys) -> Vec<Check> {
    FILE_CHECKS
        .iter()
        .map(|(id, run)| run(s).named(id))
        .collect()
}

/// The verdict of a check over `items` (CPUs, IRQs, threads): `none` when there are none; a
/// warning `wrong` when some are not as they should be (listed by what `bad` says of each,
/// starting with a space), with `fix`; else `all_good`.
fn over_items<T>(
    items: &[T],
    bad: impl Fn(&T) -> Option<String>,
    none: &str,
    all_good: String,
    wrong: &str,
    fix: &str,
) -> Finding {
    let bad: String = items.iter().filter_map(bad).collect();
    if items.is_empty() {
        good(none)
    } else if !bad.is_empty() {
        warn(format!("{wrong}:{bad}"), fix)
    } else {
        good(all_good)
    }
}

fn c_root(s: &Sys) -> Finding {
    if s.euid == 0 {
        warn(
            "running as root (euid 0); limits and group checks describe root",
            "run voxring doctor as the audio user (or set VOXRING_USER=<name>)",
        )
    } else {
        good(format!("euid {}", s.euid))
    }
}

fn c_audio_group(s: &Sys) -> Finding {
    let u = &s.user;
    if u == "root" {
        warn(
            "the checked user is root (needs no group: CAP_SYS_NICE)",
            "set VOXRING_USER=<the user who runs voxring> (or run through sudo)",
        )
    } else if !s.group_exists("audio") {
        fail(
            "no group 'audio' in /etc/group",
            &format!("kernel-tuning/apply --limits (groupadd audio; usermod -a -G audio {u})"),
        )
    } else if s.user_groups(u).iter().any(|g| g == "audio") {
        good(format!("user {u} is in group audio"))
    } else {
        fail(
            format!("user {u} is not in group audio"),
            &format!("kernel-tuning/apply --limits (usermod -a -G audio {u}), then log in again"),
        )
    }
}

fn memlock_kib_ok(v: &str) -> bool {
    matches!(v, "unlimited" | "infinity" | "-1")
        || (is_uint(v) && v.parse::<u64>().is_ok_and(|n| n >= 262_144))
}

fn uint_ge(v: &str, min: u64) -> bool {
    is_uint(v) && v.parse::<u64>().map_or(true, |n| n >= min)
}

fn c_limits_conf(s: &Sys) -> Finding {
    let u = &s.user;
    let rt = s.limits_conf(u, "rtprio");
    let ml = s.limits_conf(u, "memlock");
    let ml_val = ml.clone().unwrap_or_else(|| "8192".into());
    let mut mls = ml_val.clone();
    if is_uint(&mls) {
        mls.push_str(" KiB");
    }
    if ml.is_none() {
        mls.push_str(" (none set)");
    }
    let found = format!(
        "pam_limits will give {u}: hard rtprio {}, hard memlock {mls}",
        rt.as_deref().unwrap_or("0 (none set)")
    );
    let rt_ok = rt
        .as_deref()
        .is_some_and(|r| matches!(r, "unlimited" | "infinity" | "-1") || uint_ge(r, 80));
    if u == "root" {
        warn(
            format!("{found}; the checked user is root (root ignores rtprio)"),
            "set VOXRING_USER=<the user who runs voxring> (or run through sudo)",
        )
    } else if !rt_ok {
        fail(
            found,
            "kernel-tuning/apply --limits (@audio rtprio 95, memlock unlimited in /etc/security/limits.d)",
        )
    } else if !memlock_kib_ok(&ml_val) {
        warn(
            found,
            "kernel-tuning/apply --limits (@audio memlock unlimited)",
        )
    } else {
        good(found)
    }
}

/// The check of the hard limit `prefix` of /proc/self/limits (`name`d in the finding): good
/// when unlimited or at least `min`, else what `low` makes of the value; a warning when the
/// file is unreadable.
fn hard_limit(
    s: &Sys,
    prefix: &str,
    name: &str,
    min: u64,
    low: impl Fn(&str) -> Finding,
) -> Finding {
    match s.proc_limit_hard(prefix).filter(|h| !h.is_empty()) {
        None => warn(
            "cannot read /proc/self/limits",
            "check that /proc is mounted",
        ),
        Some(h) if h == "unlimited" || uint_ge(&h, min) => good(format!("hard {name} {h}")),
        Some(h) => low(&h),
    }
}

fn c_rtprio(s: &Sys) -> Finding {
    hard_limit(s, "Max realtime priority", "RLIMIT_RTPRIO", 80, |h| {
        if s.euid == 0 {
            warn(
                format!("hard RLIMIT_RTPRIO {h}, but running as root (root ignores it)"),
                "run voxring doctor as the audio user; kernel-tuning/apply --limits gives @audio rtprio 95",
            )
        } else {
            fail(
                format!("hard RLIMIT_RTPRIO {h} (SCHED_FIFO 80 needs 80)"),
                "kernel-tuning/apply --limits, then log out and in again",
            )
        }
    })
}

fn c_memlock(s: &Sys) -> Finding {
    hard_limit(s, "Max locked memory", "RLIMIT_MEMLOCK", 268_435_456, |h| {
        warn(
            format!(
                "hard RLIMIT_MEMLOCK {h} bytes (under 256 MiB: segments cannot all be locked in RAM)"
            ),
            "kernel-tuning/apply --limits, then log out and in again",
        )
    })
}

fn c_rt_probe(s: &Sys) -> Finding {
    let args = ["-f", "80", "true"];
    let ok = Command::new(s.cmd("chrt"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    let line = format!("chrt {}", args.join(" "));
    if ok {
        good(format!("{line} succeeded"))
    } else {
        fail(
            format!("{line} failed (SCHED_FIFO 80 refused)"),
            "kernel-tuning/apply --limits, then log in again (or grant CAP_SYS_NICE)",
        )
    }
}

fn c_governor(s: &Sys) -> Finding {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir(s.p("/sys/devices/system/cpu")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_cpu = name
                .strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()));
            let f = e.path().join("cpufreq/scaling_governor");
            if is_cpu && std::fs::File::open(&f).is_ok() {
                files.push((name, f));
            }
        }
    }
    // The shell glob's order: byte order of the names.
    files.sort();
    over_items(
        &files,
        |(cpu, f)| {
            let g = sys::first_line(f).unwrap_or_default();
            (g != "performance").then(|| format!(" {cpu}={g}"))
        },
        "no cpufreq scaling_governor (frequency scaling not exposed)",
        format!("performance on all {} CPUs", files.len()),
        "not performance",
        "kernel-tuning/apply --governor",
    )
}

fn c_kernel_config(s: &Sys) -> Finding {
    match s.kconfig() {
        Some((_, src)) => good(src.clone()),
        None => warn(
            "no /proc/config.gz or /boot/config-<release>",
            "modprobe configs, or install the kernel's config file",
        ),
    }
}

/// The check of kernel options: good when the kernel config sets one of `syms` (the first, in
/// order, is named), or when the file `evidence` (if any) exists; unknown without a kernel
/// config; else the warning `missing`, fixed by a kernel built with `wanted`.
fn kconfig_any(
    s: &Sys,
    syms: &[&str],
    evidence: Option<&str>,
    missing: &str,
    wanted: &str,
) -> Finding {
    if let Some(sym) = syms.iter().find(|sym| s.kconfig_has(sym)) {
        good(format!("CONFIG_{sym}=y"))
    } else if let Some(path) = evidence.filter(|path| s.p(path).exists()) {
        good(format!("{path} exists"))
    } else if s.kconfig().is_none() {
        warn("unknown (no kernel config)", "see kernel-config")
    } else {
        warn(missing, &format!("a kernel built with CONFIG_{wanted}=y"))
    }
}

fn c_hires(s: &Sys) -> Finding {
    kconfig_any(
        s,
        &["HIGH_RES_TIMERS"],
        None,
        "CONFIG_HIGH_RES_TIMERS not set",
        "HIGH_RES_TIMERS",
    )
}

fn c_tickless(s: &Sys) -> Finding {
    kconfig_any(
        s,
        &["NO_HZ", "NO_HZ_IDLE", "NO_HZ_COMMON", "NO_HZ_FULL"],
        Some("/sys/devices/system/cpu/nohz_full"),
        "no CONFIG_NO_HZ*",
        "NO_HZ_IDLE",
    )
}

/// The fix of a missing kernel command-line `token`.
fn add_to_cmdline(token: &str) -> String {
    format!(
        "add {token} to the kernel command line (kernel-tuning/apply --cmdline prints the line)"
    )
}

fn c_preempt(s: &Sys) -> Finding {
    let m = s.preempt_model();
    match m.as_str() {
        "full" | "lazy" | "rt" => good(format!("preemption model {m}")),
        "none" | "voluntary" if s.kconfig_has("PREEMPT_DYNAMIC") => warn(
            format!("preemption model {m} (PREEMPT_DYNAMIC kernel)"),
            &add_to_cmdline("preempt=full"),
        ),
        "none" | "voluntary" => warn(
            format!("preemption model {m}"),
            "boot a preemptible kernel (Debian: linux-image-rt-amd64)",
        ),
        _ => warn("preemption model unknown", "see kernel-config"),
    }
}

fn c_threadirqs(s: &Sys) -> Finding {
    if s.cmdline_has("threadirqs") {
        good("threadirqs on the kernel command line")
    } else if s.preempt_model() == "rt" {
        good("PREEMPT_RT kernel (IRQs always threaded)")
    } else {
        warn(
            "IRQ handlers not threaded (no threadirqs)",
            &add_to_cmdline("threadirqs"),
        )
    }
}

fn c_mitigations(s: &Sys) -> Finding {
    match s.cmdline_value("mitigations").as_deref() {
        Some("off") => good("mitigations=off (faster, less secure)"),
        v => good(format!(
            "CPU vulnerability mitigations on{}; kept on deliberately (README)",
            v.map(|v| format!(" (mitigations={v})")).unwrap_or_default()
        )),
    }
}

fn c_isolation(s: &Sys) -> Finding {
    let iso = s.isolated_cpus();
    let on = s.online_cpus();
    let n = sys::cpulist_expand(&on).len();
    if !iso.trim().is_empty() {
        good(format!("isolated CPUs: {iso}"))
    } else if n < 4 {
        good(format!(
            "no isolated CPU; {n} CPUs online (too few to dedicate one)"
        ))
    } else {
        warn(
            format!("no isolated CPU; {n} CPUs online ({on})"),
            "isolcpus=/nohz_full= for one audio core (kernel-tuning/apply --cmdline prints the line)",
        )
    }
}

fn c_smt(s: &Sys) -> Finding {
    let control = s.first_line("/sys/devices/system/cpu/smt/control");
    let active = s.first_line("/sys/devices/system/cpu/smt/active");
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unreadable".into());
    match (active.as_deref(), &control) {
        (Some("1"), _) => warn(
            format!(
                "SMT active (control: {}): the audio core shares its caches and execution units \
                 with a sibling thread",
                shown(&control)
            ),
            "add nosmt to the kernel command line (or echo off > /sys/devices/system/cpu/smt/control until reboot)",
        ),
        (None, None) => good("no SMT control exposed (no /sys/devices/system/cpu/smt)"),
        _ => good(format!(
            "SMT not active (control: {}, active: {})",
            shown(&control),
            shown(&active)
        )),
    }
}

fn c_swappiness(s: &Sys) -> Finding {
    let swaps = std::fs::read_to_string(s.p("/proc/swaps"))
        .map(|t| t.lines().skip(1).filter(|l| !l.is_empty()).count())
        .unwrap_or(0);
    let sw = s.first_line("/proc/sys/vm/swappiness");
    if swaps == 0 {
        good(format!(
            "no swap (swappiness {} does not apply)",
            sw.as_deref().filter(|v| !v.is_empty()).unwrap_or("?")
        ))
    } else if let Some(v) = sw.as_deref().filter(|v| is_uint(v))
        && v.parse::<u64>().is_ok_and(|n| n <= 10)
    {
        good(format!("vm.swappiness {v}"))
    } else {
        warn(
            format!(
                "vm.swappiness {} with swap on",
                sw.as_deref()
                    .filter(|v| !v.is_empty())
                    .unwrap_or("unreadable")
            ),
            "kernel-tuning/apply --sysctl (vm.swappiness = 10)",
        )
    }
}

fn c_rt_throttling(s: &Sys) -> Finding {
    let [r, per] = ["runtime", "period"].map(|what| {
        s.first_line(&format!("/proc/sys/kernel/sched_rt_{what}_us"))
            .unwrap_or_default()
    });
    let nums = (is_uint(&r) && is_uint(&per))
        .then(|| Some((r.parse::<u128>().ok()?, per.parse::<u128>().ok()?)))
        .flatten();
    if r == "-1" {
        warn(
            "sched_rt_runtime_us -1: RT throttling disabled (a spinning RT thread can hang the machine)",
            "echo 950000 > /proc/sys/kernel/sched_rt_runtime_us (the default; README explains)",
        )
    } else if let Some((rv, pv)) = nums
        && pv > 0
        && rv * 100 >= pv * 95
    {
        good(format!(
            "RT tasks may use {r} of every {per} us (the rest is kept for others)"
        ))
    } else if nums.is_some() {
        warn(
            format!("RT tasks limited to {r} of every {per} us (under 95 %)"),
            "echo 950000 > /proc/sys/kernel/sched_rt_runtime_us (the default)",
        )
    } else {
        warn(
            "cannot read sched_rt_runtime_us/sched_rt_period_us",
            "check that /proc is mounted",
        )
    }
}

fn c_thp(s: &Sys) -> Finding {
    let [e, d] = ["enabled", "defrag"].map(|what| {
        s.bracket_value(&format!("/sys/kernel/mm/transparent_hugepage/{what}"))
            .unwrap_or_default()
    });
    let dshow = if d.is_empty() { "?" } else { d.as_str() };
    if e.is_empty() {
        return good("no transparent huge pages");
    }
    let found = format!("enabled={e} defrag={dshow}");
    if (e == "madvise" || e == "never") && d != "always" {
        good(found)
    } else {
        warn(
            format!("{found} (khugepaged/compaction stalls)"),
            "kernel-tuning/apply --thp (madvise)",
        )
    }
}

fn c_shm_size(s: &Sys) -> Finding {
    let Some(shm) = s.mounts().into_iter().rfind(|m| m.point == "/dev/shm") else {
        return fail(
            "no /dev/shm mount",
            "mount -t tmpfs -o size=512m tmpfs /dev/shm (and add it to /etc/fstab)",
        );
    };
    if shm.fs != "tmpfs" {
        return fail(
            format!("/dev/shm is {}, not tmpfs", shm.fs),
            "mount -t tmpfs tmpfs /dev/shm",
        );
    }
    let Some(size) = shm
        .options
        .split(',')
        .filter_map(|o| o.strip_prefix("size="))
        .next_back()
    else {
        return good("tmpfs, default size (half of RAM)");
    };
    let found = format!("tmpfs size={size}");
    match size_to_bytes(size) {
        // A percentage of RAM: counts as enough.
        Some(Err(())) => good(found),
        Some(Ok(b)) if b >= 67_108_864 => good(found),
        _ => warn(
            format!("{found} (under 64 MiB)"),
            "mount -o remount,size=512m /dev/shm (containers: --shm-size=512m)",
        ),
    }
}

fn c_filesystems(s: &Sys) -> Finding {
    let mut bad = String::new();
    for m in s.mounts() {
        let base = m.fs.split('.').next().unwrap_or("");
        if matches!(
            base,
            "fuse" | "fuseblk" | "nfs" | "nfs4" | "cifs" | "smb3" | "reiserfs"
        ) && !m.point.starts_with("/run/")
        {
            bad.push_str(&format!(" {}({})", m.point, m.fs));
        }
    }
    if bad.is_empty() {
        good("no FUSE, NFS, CIFS or reiserfs mounts")
    } else {
        warn(
            format!("network/FUSE/reiserfs mounts:{bad}"),
            "keep audio files and voxring binaries on a local ext4/xfs/btrfs disk",
        )
    }
}

fn c_irq_sharing(s: &Sys) -> Finding {
    let irqs = s.sound_usb_irqs();
    over_items(
        &irqs,
        |(n, a)| a.contains(", ").then(|| format!(" {n}({a})")),
        "no sound or USB IRQs",
        format!("{} sound/USB IRQs, none shared", irqs.len()),
        "shared sound/USB IRQs",
        "move the sound card/USB interface to a port or slot with its own IRQ",
    )
}

fn c_irq_affinity(s: &Sys) -> Finding {
    let irqs = s.sound_usb_irqs();
    let core = s.audio_core();
    over_items(
        &irqs,
        |(n, _)| {
            let a = s
                .first_line(&format!("/proc/irq/{n}/smp_affinity_list"))
                .unwrap_or_else(|| "?".into());
            (a != core).then(|| format!(" {n}->{a}"))
        },
        "no sound or USB IRQs",
        format!("{} sound/USB IRQs on the audio core {core}", irqs.len()),
        &format!("not on the audio core {core}"),
        "kernel-tuning/apply --irq",
    )
}

fn c_irq_threads(s: &Sys) -> Finding {
    let threads: Vec<_> = s
        .sound_usb_irqs()
        .iter()
        .flat_map(|(irq, _)| s.irq_threads(irq))
        .collect();
    over_items(
        &threads,
        |(_pid, pol, prio, comm)| {
            let prio_ok = is_uint(prio) && prio.parse::<u64>().map_or(true, |p| p >= 81);
            (pol != "1" || !prio_ok).then(|| format!(" {comm}(policy {pol}, priority {prio})"))
        },
        "no threads for sound/USB IRQs",
        format!(
            "{} sound/USB IRQ threads at SCHED_FIFO >= 81",
            threads.len()
        ),
        "below the audio threads (FIFO 80)",
        "kernel-tuning/apply --irq (chrt -f -p 90)",
    )
}

fn c_cpu_dma_latency(s: &Sys) -> Finding {
    let f = s.p("/dev/cpu_dma_latency");
    if !f.exists() {
        good("absent")
    } else if rustix::fs::access(&f, rustix::fs::Access::WRITE_OK).is_ok() {
        good("/dev/cpu_dma_latency writable")
    } else {
        warn(
            "/dev/cpu_dma_latency not writable by this user",
            "kernel-tuning/apply --limits (udev rule: group audio, mode 0660), then reboot or udevadm trigger",
        )
    }
}

/// Whether this is a virtual machine whose idle vCPUs halt at once (the `vm-idle` check
/// warns): `voxring run`'s report then suggests `--keep-awake` when the host held audio up.
pub(crate) fn idle_vcpus_halt() -> bool {
    c_vm_idle(&Sys::from_env(None)).status == super::Status::Warn
}

fn c_vm_idle(s: &Sys) -> Finding {
    if !s.in_vm() {
        return good("not a virtual machine (no hypervisor flag)");
    }
    let drv = s.cpuidle_driver();
    let shown = drv.as_deref().unwrap_or("absent");
    let halts = "a sleeping audio thread's or agent's wake-up waits until the hypervisor runs its \
                 vCPU again";
    if drv.as_deref() == Some("haltpoll") {
        good(
            "a virtual machine with guest halt-polling (cpuidle driver: haltpoll): an idle vCPU \
             polls a while before it halts",
        )
    } else if s.cmdline_has("idle=poll") {
        good(format!(
            "a virtual machine booted with idle=poll (cpuidle driver: {shown}): idle vCPUs poll, \
             they never halt"
        ))
    } else if s.cmdline_has("cpuidle_haltpoll.force=1") {
        warn(
            format!(
                "a virtual machine whose idle vCPUs halt at once (cpuidle driver: {shown}) although \
                 cpuidle_haltpoll.force=1 is on the kernel command line: {halts}"
            ),
            "halt-polling needs a KVM host, a kernel with CONFIG_HALTPOLL_CPUIDLE (or the \
             cpuidle-haltpoll module loaded) and no idle= option; or ask the host for dedicated vCPUs; \
             with no reboot, voxring run --keep-awake (and serve) keeps each CPU busy with a \
             SCHED_IDLE spinner while audio runs, at the cost of every idle cycle",
        )
    } else {
        warn(
            format!(
                "a virtual machine whose idle vCPUs halt at once (cpuidle driver: {shown}): {halts}"
            ),
            "boot the guest with cpuidle_haltpoll.force=1 on the kernel command line (KVM guest \
             halt-polling; kernel-tuning/apply --cmdline prints it), or ask the host for dedicated \
             vCPUs; with no reboot, voxring run --keep-awake (and serve) keeps each CPU busy with a \
             SCHED_IDLE spinner while audio runs, at the cost of every idle cycle",
        )
    }
}

fn c_pipewire(s: &Sys) -> Finding {
    let Some([rate, q, mn, mx, eff]) = s.pw_clock() else {
        return good("PipeWire not installed");
    };
    let vm = if s.in_vm() {
        ", VM overrides applied"
    } else {
        ""
    };
    let found =
        format!("rate {rate}, quantum {q} (min {mn}, max {mx}{vm}): effective quantum {eff}");
    if rate == 48000 && eff <= 256 {
        good(found)
    } else {
        warn(
            found,
            "kernel-tuning/apply --pipewire (48000 Hz, quantum 128)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    const VM_CPUINFO: &str = "processor\t: 0\nflags\t\t: fpu vme hypervisor\n";
    const METAL_CPUINFO: &str = "processor\t: 0\nflags\t\t: fpu vme\n";
    const DRIVER: &str = "sys/devices/system/cpu/cpuidle/current_driver";

    /// `vm-idle` on a root holding `files` (paths relative to the root, and their text).
    fn vm_idle(files: &[(&str, &str)]) -> Finding {
        let dir = tempfile::tempdir().expect("a temporary folder");
        for (rel, text) in files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
            std::fs::write(&p, text).expect("write a fixture file");
        }
        c_vm_idle(&Sys::from_env(Some(dir.path())))
    }

    #[test]
    fn vm_idle_not_a_vm_is_ok() {
        let f = vm_idle(&[
            ("proc/cpuinfo", METAL_CPUINFO),
            (DRIVER, "none\n"),
            ("proc/cmdline", "ro quiet\n"),
        ]);
        assert_eq!(f.status, Status::Ok, "{f:?}");
        assert_eq!(f.found, "not a virtual machine (no hypervisor flag)");
        assert_eq!(f.fix, "none");
    }

    #[test]
    fn vm_idle_haltpoll_or_idle_poll_is_ok() {
        let f = vm_idle(&[
            ("proc/cpuinfo", VM_CPUINFO),
            (DRIVER, "haltpoll\n"),
            ("proc/cmdline", "ro quiet\n"),
        ]);
        assert_eq!(f.status, Status::Ok, "{f:?}");
        assert!(f.found.contains("guest halt-polling"), "{f:?}");
        let f = vm_idle(&[
            ("proc/cpuinfo", VM_CPUINFO),
            (DRIVER, "none\n"),
            ("proc/cmdline", "ro idle=poll quiet\n"),
        ]);
        assert_eq!(f.status, Status::Ok, "{f:?}");
        assert!(
            f.found
                .contains("booted with idle=poll (cpuidle driver: none)"),
            "{f:?}"
        );
    }

    #[test]
    fn vm_idle_halting_vcpus_warn() {
        let f = vm_idle(&[
            ("proc/cpuinfo", VM_CPUINFO),
            (DRIVER, "none\n"),
            // After a lone `--` the token goes to init, not the kernel.
            ("proc/cmdline", "ro quiet -- idle=poll\n"),
        ]);
        assert_eq!(f.status, Status::Warn, "{f:?}");
        assert!(
            f.found.starts_with(
                "a virtual machine whose idle vCPUs halt at once (cpuidle driver: none): "
            ),
            "{f:?}"
        );
        assert!(
            f.fix
                .starts_with("boot the guest with cpuidle_haltpoll.force=1"),
            "{f:?}"
        );
        // No cpuidle at all: the same warning.
        let f = vm_idle(&[("proc/cpuinfo", VM_CPUINFO), ("proc/cmdline", "ro quiet\n")]);
        assert_eq!(f.status, Status::Warn, "{f:?}");
        assert!(f.found.contains("(cpuidle driver: absent)"), "{f:?}");
        // Another driver (the vCPUs halt in its states) warns too.
        let f = vm_idle(&[
            ("proc/cpuinfo", VM_CPUINFO),
            (DRIVER, "acpi_idle\n"),
            ("proc/cmdline", "ro quiet\n"),
        ]);
        assert_eq!(f.status, Status::Warn, "{f:?}");
    }

    #[test]
    fn vm_idle_force_that_did_not_take_says_what_it_needs() {
        let f = vm_idle(&[
            ("proc/cpuinfo", VM_CPUINFO),
            (DRIVER, "none\n"),
            ("proc/cmdline", "ro cpuidle_haltpoll.force=1\n"),
        ]);
        assert_eq!(f.status, Status::Warn, "{f:?}");
        assert!(
            f.found
                .contains("although cpuidle_haltpoll.force=1 is on the kernel command line"),
            "{f:?}"
        );
        assert!(f.fix.contains("CONFIG_HALTPOLL_CPUIDLE"), "{f:?}");
    }
}
