# shellcheck shell=bash
# Helpers for the kernel-tuning bats tests: fixture trees that stand in for /proc, /sys, /etc,
# /usr/share and /dev of a well-tuned machine ("good") and an untuned one ("bad"), plus
# the environment that points the scripts at them (stub commands, the sysfs write stand-in).

KT_DIR=$(cd "${BATS_TEST_DIRNAME:-$(dirname "${BASH_SOURCE[0]}")}/.." && pwd)

# w PATH CONTENT: write CONTENT (plus a newline) to $ROOT/PATH, creating directories.
w() {
    mkdir -p "$(dirname "$ROOT/$1")"
    printf '%s\n' "$2" >"$ROOT/$1"
}

# mkstat PID COMM POLICY PRIO: a /proc/PID/stat line with 52 fields (40: rt_priority, 41: policy).
mkstat() {
    local f=() i
    for ((i = 4; i <= 52; i++)); do f[i]=0; done
    f[40]=$4
    f[41]=$3
    w "proc/$1/comm" "$2"
    w "proc/$1/stat" "$1 ($2) S ${f[*]:4}"
}

limits_file() { # limits_file RTPRIO-HARD MEMLOCK-HARD
    cat <<EOF
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max locked memory         $2                   $2                   bytes     
Max nice priority         0                    0                    
Max realtime priority     $1                   $1                   
Max realtime timeout      unlimited            unlimited            us        
EOF
}

# A stock-like PipeWire config: quantum left at the default, min-quantum 1024 in VMs.
stock_pipewire() {
    w usr/share/pipewire/pipewire.conf '# Daemon config file for PipeWire (fixture)
context.properties = {
    ## Properties for the DSP configuration.
    #default.clock.rate          = 48000
    #default.clock.quantum       = 1024
    default.clock.min-quantum   = 16
    #default.clock.max-quantum   = 2048

    # These overrides are only applied when running in a vm.
    vm.overrides = {
        default.clock.min-quantum = 1024
    }
}
context.modules = [
    { name = libpipewire-module-rt args = { nice.level = -11 } flags = [ ifexists nofail ] }
]'
    w usr/share/pipewire/client-rt.conf 'stream.properties = { }'
    mkdir -p "$ROOT/usr/share/wireplumber/main.lua.d"
    w usr/share/wireplumber/main.lua.d/50-alsa-config.lua 'alsa_monitor.rules = { }'
}

# cpus GOVERNOR ISOLATED: four online CPUs 0-3 running GOVERNOR, ISOLATED the isolcpus list.
cpus() {
    local c
    w sys/devices/system/cpu/online '0-3'
    w sys/devices/system/cpu/isolated "$2"
    for c in 0 1 2 3; do
        w "sys/devices/system/cpu/cpu$c/cpufreq/scaling_governor" "$1"
        w "sys/devices/system/cpu/cpu$c/cpufreq/scaling_available_governors" 'performance powersave'
    done
}

common_tree() {
    w etc/passwd 'root:x:0:0:root:/root:/bin/bash
alice:x:1000:1000:Alice:/home/alice:/bin/bash'
    w etc/security/limits.conf '# /etc/security/limits.conf (fixture)
#*               soft    core            0'
    w etc/subuid 'alice:100000:65536'
    w etc/subgid 'alice:100000:65536'
    w etc/default/grub 'GRUB_DEFAULT=0
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX=""'
    mkdir -p "$ROOT/home/alice" "$ROOT/var/lib" "$ROOT/stub"
    w proc/sys/kernel/osrelease '6.1.0-fixture-amd64'
    w proc/version 'Linux version 6.1.0-fixture-amd64 #1 SMP PREEMPT_DYNAMIC'
    w proc/sys/kernel/sched_rt_period_us 1000000
    w proc/cpuinfo 'processor	: 0
flags		: fpu vme de pse tsc msr hypervisor'
    w sys/kernel/irq/1/actions 'i8042'
    w proc/irq/1/smp_affinity_list '0-3'
    w sys/kernel/irq/30/actions 'snd_hda_intel:card0'
    w sys/kernel/irq/31/actions 'xhci_hcd'
    mkstat 1 systemd 0 0
    stock_pipewire
}

make_good_tree() {
    ROOT=$1
    common_tree
    w etc/group 'root:x:0:
audio:x:29:alice
alice:x:1000:'
    w etc/security/limits.d/95-voxring-audio.conf '@audio - rtprio 95
@audio - memlock unlimited'
    limits_file 95 unlimited >"$ROOT/proc/self-limits.tmp"
    mkdir -p "$ROOT/proc/self"
    mv "$ROOT/proc/self-limits.tmp" "$ROOT/proc/self/limits"
    w stub/rt-allowed yes
    cpus performance 3
    w sys/devices/system/cpu/smt/control off
    w sys/devices/system/cpu/smt/active 0
    printf '%s\n' CONFIG_HIGH_RES_TIMERS=y CONFIG_NO_HZ_IDLE=y CONFIG_NO_HZ_FULL=y \
        CONFIG_PREEMPT_VOLUNTARY=y CONFIG_PREEMPT_DYNAMIC=y | gzip -c >"$ROOT/proc/config.gz"
    w proc/cmdline 'BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet preempt=full threadirqs isolcpus=3 nohz_full=3 -- single'
    w proc/swaps 'Filename				Type		Size		Used		Priority
/dev/sda2                               partition	1048572		0		-2'
    w proc/sys/vm/swappiness 10
    w proc/sys/kernel/sched_rt_runtime_us 950000
    w sys/kernel/mm/transparent_hugepage/enabled 'always [madvise] never'
    w sys/kernel/mm/transparent_hugepage/defrag 'always defer defer+madvise [madvise] never'
    w proc/mounts '/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev,size=524288k 0 0
gvfsd-fuse /run/user/1000/gvfs fuse.gvfsd-fuse rw 0 0'
    w proc/irq/30/smp_affinity_list 3
    w proc/irq/31/smp_affinity_list 3
    mkstat 200 'irq/30-snd_hda_intel:card0' 1 90
    mkstat 201 'irq/31-xhci_hcd' 1 90
    w dev/cpu_dma_latency ''
    w sys/devices/system/cpu/cpuidle/current_driver haltpoll
    w home/alice/.config/pipewire/pipewire.conf.d/10-lowlatency.conf 'context.properties = {
    default.clock.quantum = 128
    default.clock.min-quantum = 64
    vm.overrides = { default.clock.min-quantum = 64 }
}'
}

make_bad_tree() {
    ROOT=$1
    common_tree
    w etc/group 'root:x:0:
alice:x:1000:'
    mkdir -p "$ROOT/proc/self"
    limits_file 0 8388608 >"$ROOT/proc/self/limits"
    w stub/rt-allowed no
    cpus powersave ''
    w sys/devices/system/cpu/smt/control on
    w sys/devices/system/cpu/smt/active 1
    printf '%s\n' '# CONFIG_HIGH_RES_TIMERS is not set' CONFIG_PREEMPT_NONE=y CONFIG_PREEMPT_DYNAMIC=y \
        >"$ROOT/boot-config.tmp"
    mkdir -p "$ROOT/boot"
    mv "$ROOT/boot-config.tmp" "$ROOT/boot/config-6.1.0-fixture-amd64"
    w proc/cmdline 'BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet -- threadirqs'
    w proc/swaps 'Filename				Type		Size		Used		Priority
/swapfile                               file		1048572		0		-2'
    w proc/sys/vm/swappiness 60
    w proc/sys/kernel/sched_rt_runtime_us -1
    w sys/kernel/mm/transparent_hugepage/enabled '[always] madvise never'
    w sys/kernel/mm/transparent_hugepage/defrag '[always] defer defer+madvise madvise never'
    w proc/mounts '/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev,size=32m 0 0
sshfs#me@host: /mnt/remote fuse.sshfs rw 0 0
fusectl /sys/fs/fuse/connections fusectl rw 0 0'
    w sys/kernel/irq/30/actions 'snd_hda_intel:card0, i915'
    w proc/irq/30/smp_affinity_list '0-3'
    w proc/irq/31/smp_affinity_list '0-3'
    mkstat 200 'irq/30-snd_hda_intel:card0' 1 50
    mkstat 201 'irq/31-xhci_hcd' 1 50
    w sys/devices/system/cpu/cpuidle/current_driver none
}

# kt_env: point the scripts at $ROOT, as user alice, with stub commands.
kt_env() {
    export VOXRING_ROOT=$ROOT VOXRING_USER=alice VOXRING_EUID=1000
    export VOXRING_BIN=$KT_DIR/tests/stubs VOXRING_SYSFS_WRITER=$KT_DIR/tests/stubs/sysfs-write
    if [ -n "${BATS_TEST_TMPDIR:-}" ]; then
        export VOXRING_STUB_LOG=$BATS_TEST_TMPDIR/stub-calls
    else
        export VOXRING_STUB_LOG=/dev/null
    fi
    unset VOXRING_HOME VOXRING_STATE VOXRING_AUDIO_CPU
}

# listing DIR: every path with its type and mode, and every file's checksum (not times).
listing() {
    (
        cd "$1" || exit 1
        find . -printf '%y %m %p\n' | LC_ALL=C sort
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    )
}

# status_of ID: the status word of ID in $output (from `run check`).
status_of() {
    # shellcheck disable=SC2154 # $output is set by bats' run
    awk -v id="$1:" '$2 == id && !found { print $1; found = 1 }' <<<"$output"
}
