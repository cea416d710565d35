#!/usr/bin/env bats
# kernel-tuning/apply and revert against fixture trees: --dry-run touches nothing and shows every
# change; a second apply changes nothing; revert restores every file byte for byte and removes
# what apply created; check agrees afterwards.

load helpers

setup() {
    ROOT=$BATS_TEST_TMPDIR/root
    mkdir -p "$ROOT"
}

snap() { listing "$ROOT" >"$BATS_TEST_TMPDIR/$1"; }
same() { diff "$BATS_TEST_TMPDIR/$1" "$BATS_TEST_TMPDIR/$2"; }

# output_has TEXT...: each TEXT appears in $output (of the last bats `run`); says which does not.
output_has() {
    local t
    for t in "$@"; do
        if [[ "$output" != *"$t"* ]]; then
            printf 'not in the output: %s\n' "$t" >&2
            return 1
        fi
    done
}

# unchanged_by COMMAND...: bats-run COMMAND ($status and $output stay set for the test), which
# must succeed and leave every file under $ROOT as it was.
unchanged_by() {
    snap unchanged-before
    run "$@"
    [ "$status" -eq 0 ]
    snap unchanged-after
    same unchanged-before unchanged-after
}

@test "apply --dry-run changes nothing, on a bad and on a good system" {
    make_bad_tree "$ROOT"
    kt_env
    unchanged_by "$KT_DIR/apply" --all --dry-run
    [ ! -e "$ROOT/var/lib/voxring-tuning" ]
    [ ! -s "$VOXRING_STUB_LOG" ]   # no command ran

    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    make_good_tree "$ROOT"
    unchanged_by "$KT_DIR/apply" --all --dry-run --scope system
}

@test "apply --dry-run shows each change: file, old value, new value, command" {
    make_bad_tree "$ROOT"
    kt_env
    run "$KT_DIR/apply" --all --dry-run
    output_has "[dry-run] create file $ROOT/etc/security/limits.d/95-voxring-audio.conf (mode 0644)" \
        "    old: (absent)" \
        "    + @audio   -   rtprio    95" \
        "[dry-run] run: groupadd --system audio    (revert runs: groupdel audio)" \
        "[dry-run] run: usermod -a -G audio alice    (revert runs: gpasswd -d alice audio)" \
        "[dry-run] write $ROOT/sys/devices/system/cpu/cpu2/cpufreq/scaling_governor: powersave -> performance" \
        "[dry-run] write $ROOT/proc/irq/30/smp_affinity_list: 0-3 -> 3" \
        "[dry-run] run: chrt -f -p 90 200    (revert runs: chrt -f -p 50 200)" \
        "[dry-run] write $ROOT/proc/sys/vm/swappiness: 60 -> 10" \
        "[dry-run] write $ROOT/sys/kernel/mm/transparent_hugepage/enabled: always -> madvise" \
        "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet preempt=full threadirqs isolcpus=3 cpuidle_haltpoll.force=1\"" \
        "dry run: 21 change(s) would be made"
}

@test "a replaced file shows its old content under --dry-run" {
    make_bad_tree "$ROOT"
    kt_env
    w etc/security/limits.d/95-voxring-audio.conf '@audio - rtprio 50'
    run "$KT_DIR/apply" --limits --dry-run
    output_has "[dry-run] replace file $ROOT/etc/security/limits.d/95-voxring-audio.conf (mode 0644)" \
        "    - @audio - rtprio 50"
}

@test "apply then apply again: the second run changes nothing" {
    make_bad_tree "$ROOT"
    kt_env
    run "$KT_DIR/apply" --all
    [ "$status" -eq 0 ]
    [[ "$output" == *"21 change(s) made"* ]]
    snap first
    : >"$VOXRING_STUB_LOG"
    run "$KT_DIR/apply" --all
    [ "$status" -eq 0 ]
    [[ "$output" == *"nothing to change"* ]]
    snap second
    same first second
    [ ! -s "$VOXRING_STUB_LOG" ]
}

@test "after apply, check is ok for every item apply can fix" {
    make_bad_tree "$ROOT"
    kt_env
    run "$KT_DIR/apply" --all --scope system
    [ "$status" -eq 0 ]
    run "$KT_DIR/check"
    for id in audio-group limits-conf governor swappiness thp irq-affinity irq-threads pipewire-quantum; do
        [ "$(status_of "$id")" = ok ] || { echo "$id is not ok:"; printf '%s\n' "$output"; return 1; }
    done
    # Limits take effect at the next login, so this process still has none.
    [ "$(status_of rtprio)" = fail ]
}

@test "apply then revert restores every file byte for byte and removes what apply created" {
    make_bad_tree "$ROOT"
    kt_env
    # A file that already exists with other content, and a mode, must come back exactly.
    w etc/security/limits.d/95-voxring-audio.conf '# mine
@audio - rtprio 50'
    chmod 0600 "$ROOT/etc/security/limits.d/95-voxring-audio.conf"
    snap before
    run "$KT_DIR/apply" --all
    [ "$status" -eq 0 ]
    snap applied
    run same before applied
    [ "$status" -ne 0 ]
    run "$KT_DIR/revert"
    [ "$status" -eq 0 ]
    [[ "$output" == *"reverted"* ]]
    snap reverted
    same before reverted
    [ ! -e "$ROOT/var/lib/voxring-tuning" ]
}

@test "revert undoes two applies in a row (system scope), and a third revert has nothing to do" {
    make_bad_tree "$ROOT"
    kt_env
    snap before
    run "$KT_DIR/apply" --limits --thp
    [ "$status" -eq 0 ]
    run "$KT_DIR/apply" --all --scope system
    [ "$status" -eq 0 ]
    [ -f "$ROOT/etc/pipewire/pipewire.conf.d/90-voxring-lowlatency.conf" ]
    [ -f "$ROOT/etc/wireplumber/main.lua.d/51-voxring-alsa.lua" ]
    run "$KT_DIR/revert"
    [ "$status" -eq 0 ]
    snap reverted
    same before reverted
    run "$KT_DIR/revert"
    [ "$status" -eq 0 ]
    [[ "$output" == *"nothing to revert"* ]]
}

@test "revert --dry-run lists the undo steps and changes nothing" {
    make_bad_tree "$ROOT"
    kt_env
    run "$KT_DIR/apply" --all
    unchanged_by "$KT_DIR/revert" --dry-run
    output_has "[dry-run] run: gpasswd -d alice audio" \
        "[dry-run] write $ROOT/proc/sys/vm/swappiness: 10 -> 60" \
        "[dry-run] remove $ROOT/etc/sysctl.d/90-voxring.conf (apply created it)"
}

@test "a good system: apply --all only adds what is missing, and revert takes it out again" {
    make_good_tree "$ROOT"
    kt_env
    w usr/share/pipewire/pipewire.conf 'context.properties = { default.clock.quantum = 128 }'
    snap before
    run "$KT_DIR/apply" --all --scope user
    [ "$status" -eq 0 ]
    # The user drop-in is the only thing the good tree lacks.
    [[ "$output" == *"wrote: $ROOT/home/alice/.config/pipewire/pipewire.conf.d/90-voxring-lowlatency.conf"* ]]
    run "$KT_DIR/revert"
    snap after
    same before after
}

@test "the WirePlumber 0.5 format is written when there is no main.lua.d" {
    make_bad_tree "$ROOT"
    kt_env
    rm -rf "$ROOT/usr/share/wireplumber/main.lua.d"
    w usr/share/wireplumber/wireplumber.conf 'context.properties = { }'
    run "$KT_DIR/apply" --pipewire --scope system
    [ "$status" -eq 0 ]
    grep -q 'monitor.alsa.rules' "$ROOT/etc/wireplumber/wireplumber.conf.d/51-voxring-alsa.conf"
    [ ! -e "$ROOT/etc/wireplumber/main.lua.d" ]
}

@test "--cmdline and --containers only print: nothing is written" {
    make_bad_tree "$ROOT"
    kt_env
    unchanged_by "$KT_DIR/apply" --cmdline --containers
    output_has "parameters to add: preempt=full threadirqs isolcpus=3 cpuidle_haltpoll.force=1" \
        "containers/"
}

@test "--cmdline asks for cpuidle_haltpoll.force=1 only in a VM whose idle vCPUs halt at once, as check's vm-idle" {
    make_good_tree "$ROOT"   # a VM with the haltpoll cpuidle driver
    kt_env
    run "$KT_DIR/apply" --cmdline
    [ "$status" -eq 0 ]
    output_has "unchanged: the kernel command line already has what voxring wants"
    w sys/devices/system/cpu/cpuidle/current_driver none
    run "$KT_DIR/apply" --cmdline
    [ "$status" -eq 0 ]
    output_has "parameters to add: cpuidle_haltpoll.force=1" \
        "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet cpuidle_haltpoll.force=1\""
    run "$KT_DIR/check"
    [ "$(status_of vm-idle)" = warn ]
    [[ "$output" == *"kernel-tuning/apply --cmdline prints it"* ]]
    # Already on the command line but not taken: a note, not the same token again.
    w proc/cmdline 'ro quiet preempt=full threadirqs isolcpus=3 nohz_full=3 cpuidle_haltpoll.force=1'
    run "$KT_DIR/apply" --cmdline
    [ "$status" -eq 0 ]
    output_has "cpuidle_haltpoll.force=1 is on the command line but the cpuidle driver is none, not haltpoll" \
        "unchanged: the kernel command line already has what voxring wants"
    w proc/cmdline 'ro quiet preempt=full threadirqs isolcpus=3 nohz_full=3 idle=poll'
    run "$KT_DIR/apply" --cmdline
    output_has "unchanged: the kernel command line already has what voxring wants"
    [[ "$output" != *cpuidle_haltpoll* ]]
    run "$KT_DIR/check"
    [ "$(status_of vm-idle)" = ok ]
}

@test "usage errors: no item, an unknown flag, a bad scope" {
    run "$KT_DIR/apply"
    [ "$status" -eq 2 ]
    run "$KT_DIR/apply" --everything
    [ "$status" -eq 2 ]
    run "$KT_DIR/apply" --pipewire --scope elsewhere
    [ "$status" -eq 2 ]
    run "$KT_DIR/revert" --bogus
    [ "$status" -eq 2 ]
}

@test "a large kernel config is read correctly (no SIGPIPE from an early match under pipefail)" {
    make_bad_tree "$ROOT"
    kt_env
    { echo CONFIG_PREEMPT_DYNAMIC=y; echo CONFIG_PREEMPT_NONE=y; seq -f 'CONFIG_FILLER_%g=y' 1 100000; } \
        >"$ROOT/boot/config-6.1.0-fixture-amd64"
    run "$KT_DIR/apply" --cmdline
    [ "$status" -eq 0 ]
    [[ "$output" == *"parameters to add: preempt=full threadirqs isolcpus=3"* ]]
    run "$KT_DIR/check"
    [[ "$output" == *"warn preempt: preemption model none (PREEMPT_DYNAMIC kernel)"* ]]
}

@test "a file edited after apply is kept as *.voxring-edited when revert undoes it" {
    make_bad_tree "$ROOT"
    kt_env
    run "$KT_DIR/apply" --sysctl
    [ "$status" -eq 0 ]
    printf 'vm.swappiness = 5\n' >>"$ROOT/etc/sysctl.d/90-voxring.conf"
    run "$KT_DIR/revert"
    [ "$status" -eq 0 ]
    [ ! -e "$ROOT/etc/sysctl.d/90-voxring.conf" ]
    grep -q 'vm.swappiness = 5' "$ROOT/etc/sysctl.d/90-voxring.conf.voxring-edited"
}

@test "--scope user as root for another user is refused (it would leave root-owned files in their home)" {
    make_bad_tree "$ROOT"
    kt_env
    export VOXRING_EUID=0
    run "$KT_DIR/apply" --pipewire --scope user
    [ "$status" -eq 1 ]
    [[ "$output" == *"--scope system"* ]]
    [ ! -e "$ROOT/home/alice/.config" ]
}

@test "--limits writes no limits file when the audio group already has enough (e.g. jackd's audio.conf)" {
    make_bad_tree "$ROOT"
    kt_env
    w etc/security/limits.d/audio.conf '@audio   -  rtprio     95
@audio   -  memlock    unlimited'
    run "$KT_DIR/apply" --limits
    [ "$status" -eq 0 ]
    [[ "$output" == *"unchanged: the audio group already gets rtprio 95 and memlock unlimited"* ]]
    [ ! -e "$ROOT/etc/security/limits.d/95-voxring-audio.conf" ]
    run "$KT_DIR/check"
    [ "$(status_of limits-conf)" = ok ]
}
