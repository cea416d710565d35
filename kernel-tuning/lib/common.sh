# shellcheck shell=bash
# Shared by kernel-tuning/check, apply and revert (sourced, never run on its own).
# Everything here only reads; the one place that writes is lib/runner.sh.
#
# Every path is built with p(): $VOXRING_ROOT (default: empty, i.e. the real /) is put in front
# of /proc, /sys, /etc, /boot, /dev, /usr and /var, so the tests run all of this against a
# fixture tree in a temporary directory. CHECKS.md is the contract for what is read and how.

VR_ROOT=${VOXRING_ROOT:-}
VR_ROOT=${VR_ROOT%/}

# p PATH: PATH under the overridable root.
p() { printf '%s%s' "$VR_ROOT" "$1"; }

# vr_cmd NAME: the command to run for NAME (a stub from $VOXRING_BIN in tests).
vr_cmd() {
    if [ -n "${VOXRING_BIN:-}" ]; then
        printf '%s/%s' "${VOXRING_BIN%/}" "$1"
    else
        printf '%s' "$1"
    fi
}

# first_line FILE: the first line of FILE, or nothing (and status 1) when it cannot be read.
first_line() {
    local line
    [ -r "$1" ] || return 1
    IFS= read -r line <"$1" || [ -n "$line" ] || return 1
    printf '%s' "$line"
}

vr_euid() { printf '%s' "${VOXRING_EUID:-$(id -u)}"; }

# The user whose groups, limits and home are checked (CHECKS.md, "Roots and inputs").
vr_user() {
    if [ -n "${VOXRING_USER:-}" ]; then
        printf '%s' "$VOXRING_USER"
    elif [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        printf '%s' "$SUDO_USER"
    else
        id -un
    fi
}

# passwd_field USER N: field N of USER's line in /etc/passwd (empty when absent).
passwd_field() {
    [ -r "$(p /etc/passwd)" ] || return 0
    awk -F: -v u="$1" -v n="$2" '$1 == u { print $n; exit }' "$(p /etc/passwd)"
}

# user_groups USER: the user's groups, one per line: the primary group, then every group
# whose member list names the user.
user_groups() {
    local gid
    gid=$(passwd_field "$1" 4)
    [ -r "$(p /etc/group)" ] || return 0
    awk -F: -v u="$1" -v g="$gid" '
        $3 == g && g != "" { print $1; next }
        { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) { print $1; break } }
    ' "$(p /etc/group)"
}

# in_group USER GROUP
# (Here-strings, not pipes, into grep -q: with pipefail a writer killed by SIGPIPE after grep
# found its match early would turn a match into a failure.)
in_group() { grep -qxF -- "$2" <<<"$(user_groups "$1")"; }

group_exists() {
    [ -r "$(p /etc/group)" ] && awk -F: -v g="$1" '$1 == g { f = 1 } END { exit !f }' "$(p /etc/group)"
}

# vr_home: the user's home (under the root), or $VOXRING_HOME.
vr_home() {
    local h
    if [ -n "${VOXRING_HOME:-}" ]; then
        printf '%s' "${VOXRING_HOME%/}"
        return
    fi
    h=$(passwd_field "$(vr_user)" 6)
    [ -n "$h" ] || h=${HOME:-/root}
    printf '%s%s' "$VR_ROOT" "$h"
}

# cpulist_expand "0-3,6": "0 1 2 3 6" (one per line).
cpulist_expand() {
    printf '%s\n' "$1" | tr ',' '\n' | awk -F- '
        /^[[:space:]]*$/ { next }
        NF == 1 { print $1 + 0; next }
        { for (i = $1 + 0; i <= $2 + 0; i++) print i }'
}

cpulist_max() { cpulist_expand "$1" | sort -n | tail -n 1; }
cpulist_count() { cpulist_expand "$1" | grep -c . || true; }

online_cpus() { first_line "$(p /sys/devices/system/cpu/online)" || true; }
isolated_cpus() { first_line "$(p /sys/devices/system/cpu/isolated)" || true; }

# audio_core: VOXRING_AUDIO_CPU, else the highest isolated CPU, else the highest online CPU.
audio_core() {
    local iso
    if [ -n "${VOXRING_AUDIO_CPU:-}" ]; then
        printf '%s' "$VOXRING_AUDIO_CPU"
        return
    fi
    iso=$(isolated_cpus)
    if [ -n "${iso//[[:space:]]/}" ]; then
        cpulist_max "$iso"
    else
        cpulist_max "$(online_cpus)"
    fi
}

# Kernel config: loaded once into KCONFIG (text) and KCONFIG_SRC (where from, or empty).
KCONFIG=
KCONFIG_SRC=
KCONFIG_LOADED=0
kconfig_load() {
    local rel
    [ "$KCONFIG_LOADED" = 1 ] && return 0
    KCONFIG_LOADED=1
    if [ -r "$(p /proc/config.gz)" ]; then
        KCONFIG=$(gzip -dc "$(p /proc/config.gz)" 2>/dev/null || true)
        KCONFIG_SRC=/proc/config.gz
    else
        rel=$(first_line "$(p /proc/sys/kernel/osrelease)" || true)
        if [ -n "$rel" ] && [ -r "$(p "/boot/config-$rel")" ]; then
            KCONFIG=$(cat "$(p "/boot/config-$rel")")
            KCONFIG_SRC=/boot/config-$rel
        fi
    fi
}
kconfig_found() { kconfig_load; [ -n "$KCONFIG_SRC" ]; }
# kconfig_has SYMBOL (without CONFIG_): the config has a line exactly CONFIG_SYMBOL=y.
kconfig_has() { kconfig_load; grep -qxF "CONFIG_$1=y" <<<"$KCONFIG"; }

# cmdline_tokens: the kernel's own command-line tokens, one per line (stops at a lone --).
cmdline_tokens() {
    local line
    line=$(first_line "$(p /proc/cmdline)" || true)
    tr -s '[:blank:]' '\n' <<<"$line" | awk '$0 == "--" { stop = 1 } !stop && NF { print }'
}
cmdline_has() { grep -qxF -- "$1" <<<"$(cmdline_tokens)"; }
# cmdline_value KEY: the value of the last KEY=value token.
cmdline_value() { cmdline_tokens | awk -v k="$1=" 'index($0, k) == 1 { v = substr($0, length(k) + 1) } END { if (v != "") print v }'; }

# preempt_model: rt, full, lazy, voluntary, none or unknown (CHECKS.md, "Preemption model").
preempt_model() {
    local v m
    v=$(first_line "$(p /sys/kernel/realtime)" || true)
    if [ "$v" = 1 ]; then echo rt; return; fi
    if kconfig_has PREEMPT_RT; then echo rt; return; fi
    v=$(first_line "$(p /sys/kernel/debug/sched/preempt)" 2>/dev/null || true)
    m=$(printf '%s\n' "$v" | sed -n 's/.*(\([a-z]*\)).*/\1/p')
    if [ -n "$m" ]; then echo "$m"; return; fi
    if kconfig_has PREEMPT_DYNAMIC; then
        m=$(cmdline_value preempt)
        if [ -n "$m" ]; then echo "$m"; return; fi
    fi
    if kconfig_has PREEMPT_NONE; then echo none; return; fi
    if kconfig_has PREEMPT_VOLUNTARY; then echo voluntary; return; fi
    if kconfig_has PREEMPT; then echo full; return; fi
    if kconfig_has PREEMPT_LAZY; then echo lazy; return; fi
    if grep -q PREEMPT_RT "$(p /proc/version)" 2>/dev/null; then echo rt; return; fi
    echo unknown
}

threadirqs_active() { cmdline_has threadirqs || [ "$(preempt_model)" = rt ]; }

# sound_usb_irqs: "<irq>\t<actions>" for every sound or USB-host IRQ.
SOUND_USB_RE='snd_|audiodsp|[eoux]hci_hcd'
sound_usb_irqs() {
    local d n a
    for d in "$(p /sys/kernel/irq)"/*/; do
        [ -r "${d}actions" ] || continue
        n=${d%/}
        n=${n##*/}
        a=$(first_line "${d}actions" || true)
        if grep -Eiq -- "$SOUND_USB_RE" <<<"$a"; then
            printf '%s\t%s\n' "$n" "$a"
        fi
    done | sort -n
}

# irq_threads IRQ: "<pid>\t<policy>\t<rt_priority>\t<comm>" for each thread named irq/IRQ-*.
irq_threads() {
    local f pid comm rest
    for f in "$(p /proc)"/[0-9]*/comm; do
        [ -r "$f" ] || continue
        comm=$(first_line "$f" || true)
        case "$comm" in "irq/$1-"*) ;; *) continue ;; esac
        pid=${f%/comm}
        pid=${pid##*/}
        rest=$(first_line "$(p "/proc/$pid/stat")" || true)
        rest=${rest##*) }
        # After the comm, field 3 (state) is the first: fields 40 and 41 are $38 and $39.
        printf '%s\n' "$rest" | awk -v pid="$pid" -v c="$comm" 'NF >= 39 { printf "%s\t%s\t%s\t%s\n", pid, $39, $38, c }'
    done
}

# bracket_value FILE: the word in [...] (THP files), or the first line when there is none.
bracket_value() {
    local line
    line=$(first_line "$1") || return 1
    case "$line" in
        *\[*\]*) line=${line#*[}; printf '%s' "${line%%]*}" ;;
        *) printf '%s' "$line" ;;
    esac
}

# limits_value FILE-LINE-PREFIX: the hard value of a /proc/self/limits line.
proc_limit_hard() {
    [ -r "$(p /proc/self/limits)" ] || return 1
    awk -v k="$1" 'index($0, k) == 1 { s = substr($0, length(k) + 1); split(s, f, " "); print f[2]; exit }' \
        "$(p /proc/self/limits)"
}

# limits_conf USER ITEM [GROUPS]: the hard value pam_limits will give USER for ITEM (CHECKS.md
# rule). GROUPS (space-separated) replaces the user's groups: `limits_conf "" rtprio audio` is
# what any member of audio gets from group and `*` lines.
limits_conf() {
    local user=$1 item=$2 groups files=() f
    if [ $# -ge 3 ]; then groups="$3 "; else groups=$(user_groups "$user" | tr '\n' ' '); fi
    [ -r "$(p /etc/security/limits.conf)" ] && files+=("$(p /etc/security/limits.conf)")
    while IFS= read -r f; do
        [ -r "$f" ] && files+=("$f")
    done < <(printf '%s\n' "$(p /etc/security/limits.d)"/*.conf | LC_ALL=C sort)
    [ ${#files[@]} -gt 0 ] || return 0
    LC_ALL=C awk -v u="$user" -v gs=" $groups" -v item="$item" '
        { sub(/#.*/, "") }
        NF < 4 || $3 != item || ($2 != "hard" && $2 != "-") { next }
        {
            lvl = 0
            if ($1 == u) lvl = 3
            else if (substr($1, 1, 1) == "@" && index(gs, " " substr($1, 2) " ") > 0) lvl = 2
            else if ($1 == "*") lvl = 1
            if (lvl > 0 && lvl >= best) { best = lvl; val = $4 }
        }
        END { if (best > 0) print val }
    ' "${files[@]}"
}

is_uint() { case "$1" in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }

# limits.conf values: rtprio_conf_ok (>= 80 or unlimited), memlock_conf_ok (KiB, >= 256 MiB or unlimited).
rtprio_conf_ok() {
    case "$1" in unlimited | infinity | -1) return 0 ;; esac
    is_uint "$1" && [ "$1" -ge 80 ]
}
memlock_conf_ok() {
    case "$1" in unlimited | infinity | -1) return 0 ;; esac
    is_uint "$1" && [ "$1" -ge 262144 ]
}

# shm_size_bytes OPT: the size= option of a tmpfs in bytes; "pct" for a percentage.
size_to_bytes() {
    local v=$1 n
    case "$v" in
        *%) echo pct ;;
        *[kK]) n=${v%?}; is_uint "$n" && echo $((n * 1024)) ;;
        *[mM]) n=${v%?}; is_uint "$n" && echo $((n * 1024 * 1024)) ;;
        *[gG]) n=${v%?}; is_uint "$n" && echo $((n * 1024 * 1024 * 1024)) ;;
        *) is_uint "$v" && echo "$v" ;;
    esac
}

# PipeWire: pw_main_conf prints the main config path (nothing when PipeWire is not there);
# pw_conf_files prints the main config then the drop-ins, in reading order.
pw_main_conf() {
    local c
    for c in "$(vr_home)/.config/pipewire/pipewire.conf" "$(p /etc/pipewire/pipewire.conf)" \
        "$(p /usr/share/pipewire/pipewire.conf)"; do
        if [ -r "$c" ]; then printf '%s\n' "$c"; return; fi
    done
}
pw_conf_files() {
    local d f main
    main=$(pw_main_conf)
    [ -n "$main" ] || return 0
    printf '%s\n' "$main"
    for d in "$(p /usr/share/pipewire/pipewire.conf.d)" "$(p /etc/pipewire/pipewire.conf.d)" \
        "$(vr_home)/.config/pipewire/pipewire.conf.d"; do
        [ -d "$d" ] || continue
        for f in "$d"/*.conf; do
            [ -r "$f" ] && printf '%s\n' "$f"
        done | LC_ALL=C sort
    done
}
in_vm() { grep -qw hypervisor "$(p /proc/cpuinfo)" 2>/dev/null; }

# cpuidle_driver: the first line of /sys/devices/system/cpu/cpuidle/current_driver (empty when
# there is none: no cpuidle, or an unreadable or empty file).
cpuidle_driver() { first_line "$(p /sys/devices/system/cpu/cpuidle/current_driver)" || true; }
# vm_vcpus_halt: a VM whose idle vCPUs halt at once: no haltpoll cpuidle driver and no idle=poll
# (CHECKS.md, vm-idle).
vm_vcpus_halt() { in_vm && [ "$(cpuidle_driver)" != haltpoll ] && ! cmdline_has idle=poll; }

# pw_clock: "rate quantum min max effective" from the PipeWire config (CHECKS.md rule).
pw_clock() {
    local files=() f vm=0
    while IFS= read -r f; do files+=("$f"); done < <(pw_conf_files)
    [ ${#files[@]} -gt 0 ] || return 0
    in_vm && vm=1
    awk -v vm="$vm" '
        FNR == 1 { tok[++n] = "\001" }
        { sub(/#.*/, ""); gsub(/[{}=:]/, " & "); for (i = 1; i <= NF; i++) tok[++n] = $i }
        function skip(j) { while (j <= n && (tok[j] == "=" || tok[j] == ":")) j++; return j }
        END {
            v["rate"] = 48000; v["quantum"] = 1024; v["min-quantum"] = 32; v["max-quantum"] = 2048
            depth = 0; vmdepth = -1
            for (i = 1; i <= n; i++) {
                t = tok[i]
                if (t == "\001") { depth = 0; vmdepth = -1; continue }
                if (t == "{") { depth++; continue }
                if (t == "}") { if (depth == vmdepth) vmdepth = -1; if (depth > 0) depth--; continue }
                if (t == "vm.overrides") {
                    j = skip(i + 1)
                    if (j <= n && tok[j] == "{") { depth++; vmdepth = depth; i = j }
                    continue
                }
                if (t ~ /^default\.clock\.(rate|quantum|min-quantum|max-quantum)$/) {
                    j = skip(i + 1)
                    if (j <= n && tok[j] ~ /^[0-9]+$/) {
                        k = substr(t, 15)
                        if (vmdepth > 0) w[k] = tok[j] + 0; else v[k] = tok[j] + 0
                        i = j
                    }
                }
            }
            if (vm == 1) for (k in w) v[k] = w[k]
            e = v["quantum"]
            if (e < v["min-quantum"]) e = v["min-quantum"]
            if (e > v["max-quantum"]) e = v["max-quantum"]
            printf "%d %d %d %d %d\n", v["rate"], v["quantum"], v["min-quantum"], v["max-quantum"], e
        }
    ' "${files[@]}"
}

# wireplumber_flavour: lua (0.4), conf (0.5+) or none.
wireplumber_flavour() {
    if [ -d "$(p /usr/share/wireplumber/main.lua.d)" ]; then
        echo lua
    elif [ -e "$(p /usr/share/wireplumber/wireplumber.conf)" ]; then
        echo conf
    else
        echo none
    fi
}
