#!/usr/bin/env bats
# kernel-tuning/check against fixture trees: the verdict of every id on a tuned ("good") and an
# untuned ("bad") machine, the output formats, and the finer points of the CHECKS.md rules.

load helpers

setup() {
    ROOT=$BATS_TEST_TMPDIR/root
    mkdir -p "$ROOT"
}

# expect ID STATUS: $output (from `run check`) gives ID that status.
expect() {
    local got
    got=$(status_of "$1")
    if [ "$got" != "$2" ]; then
        echo "expected '$2' for $1, got '${got:-nothing}'; output was:" >&2
        printf '%s\n' "$output" >&2
        return 1
    fi
}

ALL_IDS="root audio-group limits-conf rtprio memlock rt-probe governor kernel-config hires-timers
tickless preempt threadirqs mitigations isolation smt swappiness rt-throttling thp shm-size
filesystems irq-sharing irq-affinity irq-threads cpu-dma-latency vm-idle pipewire-quantum"

@test "good system: every check is ok and the exit status is 0" {
    make_good_tree "$ROOT"
    kt_env
    run "$KT_DIR/check"
    [ "$status" -eq 0 ]
    for id in $ALL_IDS; do expect "$id" ok; done
    [ "$(printf '%s\n' "$output" | wc -l)" -eq 26 ]
}

@test "bad system: each check gives its verdict and the exit status is 1" {
    make_bad_tree "$ROOT"
    kt_env
    run "$KT_DIR/check"
    [ "$status" -eq 1 ]
    expect root ok
    expect audio-group fail
    expect limits-conf fail
    expect rtprio fail
    expect memlock warn
    expect rt-probe fail
    expect governor warn
    expect kernel-config ok
    expect hires-timers warn
    expect tickless warn
    expect preempt warn
    expect threadirqs warn
    expect mitigations ok
    expect isolation warn
    expect smt warn
    expect swappiness warn
    expect rt-throttling warn
    expect thp warn
    expect shm-size warn
    expect filesystems warn
    expect irq-sharing warn
    expect irq-affinity warn
    expect irq-threads warn
    expect cpu-dma-latency ok
    expect vm-idle warn
    expect pipewire-quantum warn
}

@test "every line reads '<status> <id>: <found> -- fix: <fix>', and ok lines say fix: none" {
    make_bad_tree "$ROOT"
    kt_env
    run "$KT_DIR/check"
    while IFS= read -r line; do
        [[ "$line" =~ ^(ok|warn|fail)\ [a-z-]+:\ .+\ --\ fix:\ .+$ ]] || { echo "bad line: $line"; return 1; }
        if [[ "$line" == ok* ]]; then [[ "$line" == *" -- fix: none" ]]; else [[ "$line" != *" -- fix: none" ]]; fi
    done <<<"$output"
}

@test "--json gives the same ids, statuses, found and fix as the text output" {
    command -v python3 >/dev/null || skip "python3 is needed to parse the JSON"
    make_bad_tree "$ROOT"
    kt_env
    run "$KT_DIR/check"
    text=$output
    run "$KT_DIR/check" --json
    [ "$status" -eq 1 ]
    from_json=$(printf '%s' "$output" | python3 -c '
import json, sys
for c in json.load(sys.stdin):
    assert set(c) == {"id", "status", "found", "fix"}, c
    print("%s %s: %s -- fix: %s" % (c["status"], c["id"], c["found"], c["fix"]))')
    [ "$from_json" = "$text" ]
}

@test "an unknown option is a usage error (exit 2)" {
    run "$KT_DIR/check" --bogus
    [ "$status" -eq 2 ]
    [[ "$output" == *"unknown option"* ]]
}

@test "check is read-only: the fixture tree is byte for byte the same afterwards" {
    make_bad_tree "$ROOT"
    kt_env
    listing "$ROOT" >"$BATS_TEST_TMPDIR/before"
    run "$KT_DIR/check" --json
    listing "$ROOT" >"$BATS_TEST_TMPDIR/after"
    diff "$BATS_TEST_TMPDIR/before" "$BATS_TEST_TMPDIR/after"
}

@test "threadirqs after a lone -- goes to init, not the kernel" {
    make_bad_tree "$ROOT"
    kt_env
    w proc/cmdline 'ro quiet -- threadirqs'
    run "$KT_DIR/check"
    expect threadirqs warn
    w proc/cmdline 'ro quiet threadirqs --'
    run "$KT_DIR/check"
    expect threadirqs ok
}

@test "preempt: the model comes from debugfs, then preempt= on a dynamic kernel, then the config" {
    make_bad_tree "$ROOT"
    kt_env
    run "$KT_DIR/check"
    expect preempt warn
    [[ "$output" == *"preemption model none"* ]]
    w proc/cmdline 'ro preempt=full'
    run "$KT_DIR/check"
    expect preempt ok
    w sys/kernel/debug/sched/preempt 'none (voluntary) full lazy'
    run "$KT_DIR/check"
    expect preempt warn
    [[ "$output" == *"preemption model voluntary"* ]]
    w sys/kernel/realtime 1
    run "$KT_DIR/check"
    expect preempt ok
    expect threadirqs ok
}

@test "pipewire-quantum: VM overrides count only inside a VM, and drop-ins override the main file" {
    make_bad_tree "$ROOT"
    kt_env
    w etc/pipewire/pipewire.conf.d/50-q.conf 'context.properties = { default.clock.quantum = 128 }'
    run "$KT_DIR/check"
    expect pipewire-quantum warn   # the VM min-quantum 1024 wins in a VM
    [[ "$output" == *"effective quantum 1024"* ]]
    w proc/cpuinfo 'flags : fpu vme'
    run "$KT_DIR/check"
    expect pipewire-quantum ok     # on bare metal min-quantum is 16
    [[ "$output" == *"effective quantum 128"* ]]
    w home/alice/.config/pipewire/pipewire.conf.d/99-rate.conf '# a comment: default.clock.rate = 48000
context.properties = { default.clock.rate = 44100 }'
    run "$KT_DIR/check"
    expect pipewire-quantum warn
    rm -rf "$ROOT/usr/share/pipewire" "$ROOT/etc/pipewire" "$ROOT/home/alice/.config"
    run "$KT_DIR/check"
    expect pipewire-quantum ok
    [[ "$output" == *"PipeWire not installed"* ]]
}

@test "limits-conf: a user line beats a group line, and a later equal line beats an earlier one" {
    make_good_tree "$ROOT"
    kt_env
    w etc/security/limits.d/99-lower.conf '@audio hard rtprio 10'
    run "$KT_DIR/check"
    expect limits-conf fail
    w etc/security/limits.conf 'alice - rtprio 90
alice soft rtprio 1'
    run "$KT_DIR/check"
    expect limits-conf ok
}

@test "run as root: root warns, rtprio warns instead of failing, and user root is not a group failure" {
    make_bad_tree "$ROOT"
    kt_env
    export VOXRING_EUID=0 VOXRING_USER=root
    run "$KT_DIR/check"
    expect root warn
    expect rtprio warn
    expect audio-group warn
    expect limits-conf warn
}

@test "isolation: fewer than 4 CPUs is ok without an isolated core" {
    make_bad_tree "$ROOT"
    kt_env
    w sys/devices/system/cpu/online '0-1'
    run "$KT_DIR/check"
    expect isolation ok
}

@test "smt: no SMT control in sysfs (a kernel or CPU without SMT) is ok, and so is SMT forced off" {
    make_bad_tree "$ROOT"
    kt_env
    rm -r "$ROOT/sys/devices/system/cpu/smt"
    run "$KT_DIR/check"
    expect smt ok
    [[ "$output" == *"ok smt: no SMT control exposed"* ]]
    w sys/devices/system/cpu/smt/control forceoff
    w sys/devices/system/cpu/smt/active 0
    run "$KT_DIR/check"
    expect smt ok
}

@test "vm-idle: ok off a VM, with haltpoll or with idle=poll; a VM whose vCPUs halt at once warns" {
    make_bad_tree "$ROOT"
    kt_env
    run "$KT_DIR/check"
    expect vm-idle warn
    [[ "$output" == *"warn vm-idle: a virtual machine whose idle vCPUs halt at once (cpuidle driver: none): "* ]]
    [[ "$output" == *"-- fix: boot the guest with cpuidle_haltpoll.force=1 on the kernel command line"* ]]
    w sys/devices/system/cpu/cpuidle/current_driver haltpoll
    run "$KT_DIR/check"
    expect vm-idle ok
    [[ "$output" == *"ok vm-idle: a virtual machine with guest halt-polling (cpuidle driver: haltpoll)"* ]]
    w sys/devices/system/cpu/cpuidle/current_driver acpi_idle
    run "$KT_DIR/check"
    expect vm-idle warn
    w proc/cmdline 'ro quiet -- idle=poll'   # after a lone --: init's, not the kernel's
    run "$KT_DIR/check"
    expect vm-idle warn
    w proc/cmdline 'ro idle=poll quiet'
    run "$KT_DIR/check"
    expect vm-idle ok
    [[ "$output" == *"ok vm-idle: a virtual machine booted with idle=poll (cpuidle driver: acpi_idle)"* ]]
    w proc/cmdline 'ro cpuidle_haltpoll.force=1'
    rm -r "$ROOT/sys/devices/system/cpu/cpuidle"
    run "$KT_DIR/check"
    expect vm-idle warn
    [[ "$output" == *"(cpuidle driver: absent) although cpuidle_haltpoll.force=1 is on the kernel command line"* ]]
    [[ "$output" == *"CONFIG_HALTPOLL_CPUIDLE"* ]]
    w proc/cmdline 'ro quiet'
    run "$KT_DIR/check"
    expect vm-idle warn
    [[ "$output" == *"(cpuidle driver: absent): "* ]]
    w proc/cpuinfo 'flags : fpu vme'
    run "$KT_DIR/check"
    expect vm-idle ok
    [[ "$output" == *"ok vm-idle: not a virtual machine (no hypervisor flag) -- fix: none"* ]]
}

@test "shm-size: no /dev/shm tmpfs is a failure" {
    make_good_tree "$ROOT"
    kt_env
    w proc/mounts '/dev/sda1 / ext4 rw 0 0'
    run "$KT_DIR/check"
    [ "$status" -eq 1 ]
    expect shm-size fail
}

@test "governor: no cpufreq at all (a VM) is ok" {
    make_bad_tree "$ROOT"
    kt_env
    rm -rf "$ROOT"/sys/devices/system/cpu/cpu*
    run "$KT_DIR/check"
    expect governor ok
}

@test "make-fixture builds the same bad tree for doctor comparisons, and refuses an existing directory" {
    run "$KT_DIR/tests/make-fixture" bad "$BATS_TEST_TMPDIR/fx"
    [ "$status" -eq 0 ]
    [[ "$output" == *"export VOXRING_ROOT="* ]]
    eval "$output"
    run "$KT_DIR/check"
    [ "$status" -eq 1 ]
    [ "$(status_of pipewire-quantum)" = warn ]
    run "$KT_DIR/tests/make-fixture" good "$BATS_TEST_TMPDIR/fx"
    [ "$status" -eq 1 ]
    run "$KT_DIR/tests/make-fixture" ugly "$BATS_TEST_TMPDIR/fy"
    [ "$status" -eq 2 ]
}

@test "--json escapes quotes, backslashes and control characters read from the system" {
    command -v python3 >/dev/null || skip "python3 is needed to parse the JSON"
    make_bad_tree "$ROOT"
    kt_env
    printf 'snd_"odd\\card\001, i915\n' >"$ROOT/sys/kernel/irq/30/actions"
    run "$KT_DIR/check" --json
    [ "$status" -eq 1 ]
    found=$(printf '%s' "$output" | python3 -c '
import json, sys
print([c["found"] for c in json.load(sys.stdin) if c["id"] == "irq-sharing"][0])')
    [[ "$found" == *'snd_"odd\card?, i915'* ]]
}
