//! What the checks read, from an overridable root, following `kernel-tuning/CHECKS.md` (and
//! `kernel-tuning/lib/common.sh`, its shell implementation) rule for rule.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The environment of one doctor run (CHECKS.md, "Roots and inputs").
#[derive(Debug, Clone)]
pub struct Sys {
    /// `VOXRING_ROOT` (or `--root`) without a trailing slash; empty for the real `/`.
    pub root: String,
    pub user: String,
    pub euid: u32,
    /// `VOXRING_BIN`: where `chrt` is taken from (tests put a stub there).
    pub bin: Option<String>,
    pub audio_cpu: Option<String>,
    home_override: Option<String>,
    kconfig: std::cell::OnceCell<Option<(String, String)>>,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Sys {
    /// Reads the environment; `root` (from `--root`) wins over `VOXRING_ROOT`.
    pub fn from_env(root: Option<&Path>) -> Self {
        let root = root
            .map(|p| p.to_string_lossy().into_owned())
            .or_else(|| env_nonempty("VOXRING_ROOT"))
            .unwrap_or_default();
        let root = root.trim_end_matches('/').to_string();
        let real_euid = rustix::process::geteuid().as_raw();
        let euid = env_nonempty("VOXRING_EUID")
            .and_then(|v| v.parse().ok())
            .unwrap_or(real_euid);
        let user = env_nonempty("VOXRING_USER")
            .or_else(|| env_nonempty("SUDO_USER").filter(|u| u != "root"))
            .unwrap_or_else(|| user_name_of(real_euid));
        Self {
            root,
            user,
            euid,
            bin: env_nonempty("VOXRING_BIN"),
            audio_cpu: env_nonempty("VOXRING_AUDIO_CPU"),
            home_override: env_nonempty("VOXRING_HOME"),
            kconfig: std::cell::OnceCell::new(),
        }
    }

    /// `path` (absolute, like `/proc/cmdline`) under the root.
    pub fn p(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("{}{path}", self.root))
    }

    /// The first line of a root-relative file (CHECKS.md: unreadable or empty gives `None`).
    pub fn first_line(&self, path: &str) -> Option<String> {
        first_line(&self.p(path))
    }

    /// The command to run for `name` (a stub from `VOXRING_BIN` in tests).
    pub fn cmd(&self, name: &str) -> String {
        match &self.bin {
            Some(dir) => format!("{}/{name}", dir.trim_end_matches('/')),
            None => name.to_string(),
        }
    }

    /// Field `n` (1-based) of `user`'s line in `/etc/passwd`.
    pub fn passwd_field(&self, user: &str, n: usize) -> Option<String> {
        let text = std::fs::read_to_string(self.p("/etc/passwd")).ok()?;
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&user))
            .and_then(|f| f.get(n - 1).map(|s| s.to_string()))
    }

    /// The user's groups: the primary group, then every group whose member list names them.
    pub fn user_groups(&self, user: &str) -> Vec<String> {
        let gid = self.passwd_field(user, 4).unwrap_or_default();
        let Ok(text) = std::fs::read_to_string(self.p("/etc/group")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            let name = f.first().copied().unwrap_or("");
            if !gid.is_empty() && f.get(2).copied() == Some(gid.as_str()) {
                out.push(name.to_string());
                continue;
            }
            if f.get(3).is_some_and(|m| m.split(',').any(|m| m == user)) {
                out.push(name.to_string());
            }
        }
        out
    }

    pub fn group_exists(&self, group: &str) -> bool {
        std::fs::read_to_string(self.p("/etc/group"))
            .is_ok_and(|t| t.lines().any(|l| l.split(':').next() == Some(group)))
    }

    /// The user's home (under the root), or `VOXRING_HOME`.
    pub fn home(&self) -> String {
        if let Some(h) = &self.home_override {
            return h.trim_end_matches('/').to_string();
        }
        let h = self
            .passwd_field(&self.user, 6)
            .filter(|h| !h.is_empty())
            .or_else(|| env_nonempty("HOME"))
            .unwrap_or_else(|| "/root".into());
        format!("{}{h}", self.root)
    }

    pub fn online_cpus(&self) -> String {
        self.first_line("/sys/devices/system/cpu/online")
            .unwrap_or_default()
    }

    pub fn isolated_cpus(&self) -> String {
        self.first_line("/sys/devices/system/cpu/isolated")
            .unwrap_or_default()
    }

    /// `VOXRING_AUDIO_CPU`, else the highest isolated CPU, else the highest online CPU.
    pub fn audio_core(&self) -> String {
        if let Some(c) = &self.audio_cpu {
            return c.clone();
        }
        let iso = self.isolated_cpus();
        let list = if iso.trim().is_empty() {
            self.online_cpus()
        } else {
            iso
        };
        cpulist_expand(&list)
            .into_iter()
            .max()
            .map(|c| c.to_string())
            .unwrap_or_default()
    }

    /// The kernel config text and where it came from (`/proc/config.gz` or `/boot/config-<r>`).
    pub fn kconfig(&self) -> Option<&(String, String)> {
        self.kconfig
            .get_or_init(|| {
                let gz = self.p("/proc/config.gz");
                if let Ok(f) = std::fs::File::open(&gz) {
                    let mut text = String::new();
                    // A damaged file reads as empty, as `gzip -dc ... || true` does.
                    let _ = flate2::read::GzDecoder::new(f).read_to_string(&mut text);
                    return Some((text, "/proc/config.gz".into()));
                }
                let rel = self.first_line("/proc/sys/kernel/osrelease")?;
                if rel.is_empty() {
                    return None;
                }
                let src = format!("/boot/config-{rel}");
                let text = std::fs::read_to_string(self.p(&src)).ok()?;
                Some((text, src))
            })
            .as_ref()
    }

    /// The config has a line exactly `CONFIG_<sym>=y`.
    pub fn kconfig_has(&self, sym: &str) -> bool {
        let want = format!("CONFIG_{sym}=y");
        self.kconfig()
            .is_some_and(|(text, _)| text.lines().any(|l| l == want))
    }

    /// The kernel's own command-line tokens (up to a lone `--`).
    pub fn cmdline_tokens(&self) -> Vec<String> {
        let line = self.first_line("/proc/cmdline").unwrap_or_default();
        line.split_whitespace()
            .take_while(|t| *t != "--")
            .map(str::to_string)
            .collect()
    }

    pub fn cmdline_has(&self, token: &str) -> bool {
        self.cmdline_tokens().iter().any(|t| t == token)
    }

    /// The value of the last `key=value` token (`None` when absent or empty).
    pub fn cmdline_value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.cmdline_tokens()
            .iter()
            .filter_map(|t| t.strip_prefix(&prefix).map(str::to_string))
            .next_back()
            .filter(|v| !v.is_empty())
    }

    /// rt, full, lazy, voluntary, none or unknown (CHECKS.md, "Preemption model").
    pub fn preempt_model(&self) -> String {
        if self.first_line("/sys/kernel/realtime").as_deref() == Some("1") {
            return "rt".into();
        }
        if self.kconfig_has("PREEMPT_RT") {
            return "rt".into();
        }
        if let Some(line) = self.first_line("/sys/kernel/debug/sched/preempt")
            && let Some(m) = last_paren_word(&line)
        {
            return m;
        }
        if self.kconfig_has("PREEMPT_DYNAMIC")
            && let Some(m) = self.cmdline_value("preempt")
        {
            return m;
        }
        for (sym, model) in [
            ("PREEMPT_NONE", "none"),
            ("PREEMPT_VOLUNTARY", "voluntary"),
            ("PREEMPT", "full"),
            ("PREEMPT_LAZY", "lazy"),
        ] {
            if self.kconfig_has(sym) {
                return model.into();
            }
        }
        if std::fs::read_to_string(self.p("/proc/version")).is_ok_and(|v| v.contains("PREEMPT_RT"))
        {
            return "rt".into();
        }
        "unknown".into()
    }

    /// `(irq, actions)` of every sound or USB-host IRQ, by IRQ number.
    pub fn sound_usb_irqs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.p("/sys/kernel/irq")) else {
            return out;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let actions = path.join("actions");
            if std::fs::File::open(&actions).is_err() {
                continue;
            }
            let a = first_line(&actions).unwrap_or_default();
            if is_sound_or_usb(&a) {
                out.push((entry.file_name().to_string_lossy().into_owned(), a));
            }
        }
        out.sort_by_key(|(n, _)| n.parse::<u64>().unwrap_or(0));
        out
    }

    /// `(pid, policy, rt_priority, comm)` of each thread named `irq/<irq>-...`.
    pub fn irq_threads(&self, irq: &str) -> Vec<(String, String, String, String)> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.p("/proc")) else {
            return out;
        };
        let prefix = format!("irq/{irq}-");
        let mut pids: Vec<String> = dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        pids.sort();
        for pid in pids {
            let Some(comm) = self.first_line(&format!("/proc/{pid}/comm")) else {
                continue;
            };
            if !comm.starts_with(&prefix) {
                continue;
            }
            let stat = self
                .first_line(&format!("/proc/{pid}/stat"))
                .unwrap_or_default();
            let rest = match stat.rfind(") ") {
                Some(i) => &stat[i + 2..],
                None => stat.as_str(),
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() >= 39 {
                out.push((pid, f[38].to_string(), f[37].to_string(), comm));
            }
        }
        out
    }

    /// The word in `[...]` of a file's first line, or the line when there is none.
    pub fn bracket_value(&self, path: &str) -> Option<String> {
        let line = self.first_line(path)?;
        match (line.find('['), line.find(']')) {
            (Some(a), Some(_)) => {
                let after = &line[a + 1..];
                Some(after[..after.find(']').unwrap_or(after.len())].to_string())
            }
            _ => Some(line),
        }
    }

    /// The lines of /proc/mounts, in order (none when it is unreadable).
    pub fn mounts(&self) -> Vec<Mount> {
        let text = std::fs::read_to_string(self.p("/proc/mounts")).unwrap_or_default();
        text.lines()
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let field = |i: usize| f.get(i).copied().unwrap_or("").to_owned();
                Mount {
                    point: field(1),
                    fs: field(2),
                    options: field(3),
                }
            })
            .collect()
    }

    /// The hard value of a `/proc/self/limits` line starting with `prefix`.
    pub fn proc_limit_hard(&self, prefix: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.p("/proc/self/limits")).ok()?;
        let line = text.lines().find(|l| l.starts_with(prefix))?;
        line[prefix.len()..]
            .split_whitespace()
            .nth(1)
            .map(str::to_string)
    }

    /// The hard value pam_limits will give `user` for `item` (CHECKS.md, `limits-conf` rule).
    pub fn limits_conf(&self, user: &str, item: &str) -> Option<String> {
        let groups = self.user_groups(user);
        let mut files = Vec::new();
        let main = self.p("/etc/security/limits.conf");
        if std::fs::File::open(&main).is_ok() {
            files.push(main);
        }
        files.extend(conf_files(&self.p("/etc/security/limits.d"), |f| {
            f.metadata().is_ok_and(|m| !m.is_dir())
        }));
        let mut best = 0;
        let mut val = None;
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("");
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 4
                    || fields[2] != item
                    || (fields[1] != "hard" && fields[1] != "-")
                {
                    continue;
                }
                let d = fields[0];
                let lvl = if d == user {
                    3
                } else if let Some(g) = d.strip_prefix('@')
                    && groups.iter().any(|x| x == g)
                {
                    2
                } else if d == "*" {
                    1
                } else {
                    0
                };
                if lvl > 0 && lvl >= best {
                    best = lvl;
                    val = Some(fields[3].to_string());
                }
            }
        }
        val
    }

    /// The PipeWire main config (the first that exists), or `None`.
    pub fn pw_main_conf(&self) -> Option<PathBuf> {
        [
            PathBuf::from(format!("{}/.config/pipewire/pipewire.conf", self.home())),
            self.p("/etc/pipewire/pipewire.conf"),
            self.p("/usr/share/pipewire/pipewire.conf"),
        ]
        .into_iter()
        .find(|c| std::fs::File::open(c).is_ok_and(|f| f.metadata().is_ok_and(|m| m.is_file())))
    }

    /// Main config then drop-ins, in reading order.
    fn pw_conf_files(&self) -> Vec<PathBuf> {
        let Some(main) = self.pw_main_conf() else {
            return Vec::new();
        };
        let mut out = vec![main];
        for d in [
            self.p("/usr/share/pipewire/pipewire.conf.d"),
            self.p("/etc/pipewire/pipewire.conf.d"),
            PathBuf::from(format!("{}/.config/pipewire/pipewire.conf.d", self.home())),
        ] {
            out.extend(conf_files(&d, |_| true));
        }
        out
    }

    pub fn in_vm(&self) -> bool {
        std::fs::read_to_string(self.p("/proc/cpuinfo")).is_ok_and(|t| {
            t.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|w| w == "hypervisor")
        })
    }

    /// The first line of `/sys/devices/system/cpu/cpuidle/current_driver` (`None` when there
    /// is no cpuidle, or the file is unreadable or its line empty).
    pub fn cpuidle_driver(&self) -> Option<String> {
        self.first_line("/sys/devices/system/cpu/cpuidle/current_driver")
            .filter(|d| !d.is_empty())
    }

    /// `[rate, quantum, min, max, effective]` from the PipeWire config (CHECKS.md rule).
    pub fn pw_clock(&self) -> Option<[i64; 5]> {
        let files = self.pw_conf_files();
        if files.is_empty() {
            return None;
        }
        let mut v: HashMap<&str, i64> = HashMap::from([
            ("rate", 48000),
            ("quantum", 1024),
            ("min-quantum", 32),
            ("max-quantum", 2048),
        ]);
        let mut w: HashMap<&str, i64> = HashMap::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let mut tok: Vec<String> = Vec::new();
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("");
                let mut spaced = String::with_capacity(line.len() + 8);
                for c in line.chars() {
                    if matches!(c, '{' | '}' | '=' | ':') {
                        spaced.push(' ');
                        spaced.push(c);
                        spaced.push(' ');
                    } else {
                        spaced.push(c);
                    }
                }
                tok.extend(spaced.split_whitespace().map(str::to_string));
            }
            let skip = |mut j: usize| {
                while j < tok.len() && (tok[j] == "=" || tok[j] == ":") {
                    j += 1;
                }
                j
            };
            let (mut depth, mut vmdepth) = (0i64, -1i64);
            let mut i = 0;
            while i < tok.len() {
                let t = tok[i].as_str();
                if t == "{" {
                    depth += 1;
                } else if t == "}" {
                    if depth == vmdepth {
                        vmdepth = -1;
                    }
                    if depth > 0 {
                        depth -= 1;
                    }
                } else if t == "vm.overrides" {
                    let j = skip(i + 1);
                    if j < tok.len() && tok[j] == "{" {
                        depth += 1;
                        vmdepth = depth;
                        i = j;
                    }
                } else if let Some(k) = t.strip_prefix("default.clock.")
                    && let Some(key) = ["rate", "quantum", "min-quantum", "max-quantum"]
                        .into_iter()
                        .find(|x| *x == k)
                {
                    let j = skip(i + 1);
                    if j < tok.len()
                        && !tok[j].is_empty()
                        && tok[j].bytes().all(|b| b.is_ascii_digit())
                        && let Ok(n) = tok[j].parse::<i64>()
                    {
                        if vmdepth > 0 {
                            w.insert(key, n);
                        } else {
                            v.insert(key, n);
                        }
                        i = j;
                    }
                }
                i += 1;
            }
        }
        if self.in_vm() {
            v.extend(w);
        }
        let (rate, q, mn, mx) = (v["rate"], v["quantum"], v["min-quantum"], v["max-quantum"]);
        let mut eff = q;
        if eff < mn {
            eff = mn;
        }
        if eff > mx {
            eff = mx;
        }
        Some([rate, q, mn, mx, eff])
    }
}

fn user_name_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_string())
            })
        })
        .or_else(|| env_nonempty("USER"))
        .unwrap_or_else(|| uid.to_string())
}

/// A line of /proc/mounts (a field that is missing is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub point: String,
    /// The file system type (`tmpfs`, `fuse.sshfs`, ...).
    pub fs: String,
    /// The mount options, comma-separated.
    pub options: String,
}

/// First line of a file; `None` when unreadable or empty.
pub fn first_line(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    if text.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&text);
    Some(text.split('\n').next().unwrap_or("").to_string())
}

/// The last `(word)` of a line, e.g. `none voluntary (full) lazy` gives `full`.
fn last_paren_word(line: &str) -> Option<String> {
    let mut found = None;
    let b = line.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'(' {
            let rest = &line[i + 1..];
            let end = rest
                .find(|ch: char| !ch.is_ascii_lowercase())
                .unwrap_or(rest.len());
            if rest[end..].starts_with(')') {
                found = Some(rest[..end].to_string());
            }
        }
    }
    found.filter(|m| !m.is_empty())
}

fn is_sound_or_usb(actions: &str) -> bool {
    let a = actions.to_ascii_lowercase();
    a.contains("snd_")
        || a.contains("audiodsp")
        || ["ehci_hcd", "ohci_hcd", "uhci_hcd", "xhci_hcd"]
            .iter()
            .any(|h| a.contains(h))
}

/// `0-3,6` as `[0, 1, 2, 3, 6]`.
pub fn cpulist_expand(list: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let num = |s: &str| {
            s.trim()
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse::<u64>()
                .unwrap_or(0)
        };
        match part.split_once('-') {
            Some((a, b)) => out.extend(num(a)..=num(b)),
            None => out.push(num(part)),
        }
    }
    out
}

/// What the shell glob `*.conf` matches: not hidden, ends in `.conf`.
/// The `*.conf` files of `dir` (none when it cannot be read) that open and pass `keep`, in
/// byte order of their paths (the order the tools read them in).
fn conf_files(dir: &Path, keep: impl Fn(&std::fs::File) -> bool) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_conf_name(p))
        .filter(|p| std::fs::File::open(p).is_ok_and(|f| keep(&f)))
        .collect();
    names.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    names
}

fn is_conf_name(p: &Path) -> bool {
    p.file_name()
        .map(|n| n.to_string_lossy())
        .is_some_and(|n| !n.starts_with('.') && n.ends_with(".conf"))
}

pub fn is_uint(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A tmpfs `size=` value in bytes; `Err(())` for a percentage (counts as ok); `None` when
/// unparsable.
pub fn size_to_bytes(v: &str) -> Option<Result<u64, ()>> {
    if v.ends_with('%') {
        return Some(Err(()));
    }
    let (num, mult) = match v.chars().last() {
        Some('k' | 'K') => (&v[..v.len() - 1], 1024),
        Some('m' | 'M') => (&v[..v.len() - 1], 1024 * 1024),
        Some('g' | 'G') => (&v[..v.len() - 1], 1024 * 1024 * 1024),
        _ => (v, 1),
    };
    if !is_uint(num) {
        return None;
    }
    num.parse::<u64>().ok().map(|n| Ok(n.saturating_mul(mult)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists_expand() {
        assert_eq!(cpulist_expand("0-3,6"), vec![0, 1, 2, 3, 6]);
        assert_eq!(cpulist_expand(""), Vec::<u64>::new());
        assert_eq!(cpulist_expand("1"), vec![1]);
    }

    #[test]
    fn paren_word_is_the_selected_preemption() {
        assert_eq!(
            last_paren_word("none voluntary (full) lazy").as_deref(),
            Some("full")
        );
        assert_eq!(last_paren_word("none voluntary full"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(size_to_bytes("64m"), Some(Ok(64 << 20)));
        assert_eq!(size_to_bytes("50%"), Some(Err(())));
        assert_eq!(size_to_bytes("1g"), Some(Ok(1 << 30)));
        assert_eq!(size_to_bytes("abc"), None);
    }

    #[test]
    fn irq_actions_match_sound_and_usb() {
        assert!(is_sound_or_usb("snd_hda_intel:card0"));
        assert!(is_sound_or_usb("XHCI_HCD"));
        assert!(!is_sound_or_usb("i8042"));
    }
}
