# shellcheck shell=bash
# The one place kernel-tuning writes anything (sourced by apply and revert, after common.sh).
#
# Every change goes through change_file, change_value or change_cmd. Under --dry-run
# (DRY_RUN=1) they only print what they would do: the file, its old and new value or content,
# and the command. Otherwise each one first saves what it is about to replace and appends a line
# to the journal, so revert can undo it exactly:
#
#   $VOXRING_STATE (default $VOXRING_ROOT/var/lib/voxring-tuning)/
#     journal        one tab-separated line per change, in the order made:
#                      dir   <path>                   a directory apply created
#                      file  <path> 1 <backup-id>     a file apply replaced (backup holds the old bytes)
#                      file  <path> 0 -               a file apply created
#                      value <path> <backup-id>       a /proc or /sys value apply wrote (backup: old value)
#                      cmd   <undo command, %q-quoted> a command apply ran, and how to undo it
#     backup/<id>    saved bytes (cp -p: mode, owner and times kept)
#     backup/written.<line>  the bytes apply wrote for the file entry on journal line <line>,
#                    so revert can warn when a file was edited after apply
#     created-dirs   directories made to hold this state, removed again by revert
#
# A change whose target already has the wanted value is not made and not journaled, so running
# apply twice changes nothing the second time.

DRY_RUN=${DRY_RUN:-0}
VR_STATE=${VOXRING_STATE:-$(p /var/lib/voxring-tuning)}
VR_STATE=${VR_STATE%/}
JOURNAL=$VR_STATE/journal
CHANGED=0

dry() { printf '[dry-run] %s\n' "$*"; }

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

state_init() {
    local d missing=() i
    [ -d "$VR_STATE/backup" ] && return 0
    d=$VR_STATE
    while [ ! -d "$d" ]; do
        missing+=("$d")
        d=$(dirname "$d")
    done
    mkdir -p "$VR_STATE/backup" || die "cannot create the state directory $VR_STATE (run as root, or set VOXRING_STATE)"
    # Shallowest first, so revert can remove them deepest first.
    for ((i = ${#missing[@]} - 1; i >= 0; i--)); do
        [ "${missing[$i]}" = "$VR_STATE" ] && continue
        printf '%s\n' "${missing[$i]}" >>"$VR_STATE/created-dirs"
    done
    printf '%s\n' "$VR_STATE" >>"$VR_STATE/created-dirs"
}

journal_add() { # journal_add FIELD...
    local IFS=$'\t'
    printf '%s\n' "$*" >>"$JOURNAL"
}

# new_backup: the id of a fresh backup slot.
new_backup() {
    local n=1
    while [ -e "$VR_STATE/backup/$n" ]; do n=$((n + 1)); done
    printf '%s' "$n"
}

# mkdirs PATH: create PATH's missing directories, journaling each one.
mkdirs() {
    local d=$1 missing=() i
    while [ ! -d "$d" ]; do
        missing+=("$d")
        d=$(dirname "$d")
    done
    for ((i = ${#missing[@]} - 1; i >= 0; i--)); do
        mkdir "${missing[$i]}" || die "cannot create directory ${missing[$i]}"
        journal_add dir "${missing[$i]}"
    done
}

show_lines() { # show_lines PREFIX TEXT
    local line
    while IFS= read -r line || [ -n "$line" ]; do
        printf '    %s%s\n' "$1" "$line"
    done < <(printf '%s' "$2")
}

# change_file PATH MODE CONTENT: make PATH hold exactly CONTENT with MODE.
change_file() {
    local path=$1 mode=$2 content=$3 id
    if [ -f "$path" ] && printf '%s' "$content" | cmp -s - "$path"; then
        printf 'unchanged: %s\n' "$path"
        return 0
    fi
    CHANGED=$((CHANGED + 1))
    if [ "$DRY_RUN" = 1 ]; then
        if [ -e "$path" ]; then
            dry "replace file $path (mode $mode)"
            printf '    old:\n'
            show_lines '- ' "$(cat "$path")"
        else
            dry "create file $path (mode $mode)"
            printf '    old: (absent)\n'
        fi
        printf '    new:\n'
        show_lines '+ ' "$content"
        return 0
    fi
    state_init
    if [ -e "$path" ]; then
        id=$(new_backup)
        cp -p "$path" "$VR_STATE/backup/$id" || die "cannot back up $path"
        journal_add file "$path" 1 "$id"
    else
        mkdirs "$(dirname "$path")"
        journal_add file "$path" 0 -
    fi
    printf '%s' "$content" >"$path" || die "cannot write $path"
    chmod "$mode" "$path"
    # What apply wrote, so revert can tell when someone edited the file since.
    printf '%s' "$content" >"$VR_STATE/backup/written.$(journal_lines)"
    printf 'wrote: %s\n' "$path"
}

# journal_lines: how many lines the journal has (the last file entry is line number N).
journal_lines() { if [ -f "$JOURNAL" ]; then wc -l <"$JOURNAL" | tr -d ' '; else echo 0; fi; }

# kwrite PATH VALUE: write a value to a /proc or /sys file as the kernel expects it.
# VOXRING_SYSFS_WRITER (a program called as `<prog> PATH VALUE`) replaces the plain write; the
# tests use it to give files in a fixture tree the kernel's semantics (e.g. THP's [brackets]).
kwrite() {
    if [ -n "${VOXRING_SYSFS_WRITER:-}" ]; then
        "$VOXRING_SYSFS_WRITER" "$1" "$2"
    else
        printf '%s\n' "$2" >"$1"
    fi
}

# change_value PATH OLD NEW: write NEW to a /proc or /sys file whose current value is OLD.
change_value() {
    local path=$1 old=$2 new=$3 id
    if [ "$old" = "$new" ]; then
        printf 'unchanged: %s (%s)\n' "$path" "$old"
        return 0
    fi
    CHANGED=$((CHANGED + 1))
    if [ "$DRY_RUN" = 1 ]; then
        dry "write $path: $old -> $new"
        return 0
    fi
    state_init
    id=$(new_backup)
    printf '%s' "$old" >"$VR_STATE/backup/$id"
    journal_add value "$path" "$id"
    kwrite "$path" "$new" || die "cannot write '$new' to $path"
    printf 'wrote: %s: %s -> %s\n' "$path" "$old" "$new"
}

# change_cmd UNDO-WORDS... -- CMD-WORDS...: run a command (first word looked up with vr_cmd)
# and journal the command that undoes it.
change_cmd() {
    local undo=() cmd=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do undo+=("$1"); shift; done
    shift
    cmd=("$@")
    CHANGED=$((CHANGED + 1))
    if [ "$DRY_RUN" = 1 ]; then
        dry "run: ${cmd[*]}    (revert runs: ${undo[*]})"
        return 0
    fi
    state_init
    "$(vr_cmd "${cmd[0]}")" "${cmd[@]:1}" || die "'${cmd[*]}' failed (see its message above)"
    journal_add cmd "$(printf '%q ' "${undo[@]}")"
    printf 'ran: %s\n' "${cmd[*]}"
}
