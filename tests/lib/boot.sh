#!/usr/bin/env bash
# boot.sh - boot a disk under QEMU (TCG) and wait for the imgstream marker.
#
# Usage (script):
#   tests/lib/boot.sh DRIVE_SPEC TIMEOUT_SECONDS
# Usage (library):
#   source tests/lib/boot.sh; boot_disk DRIVE_SPEC TIMEOUT_SECONDS
#
# Boots qemu-system-x86_64 (-accel tcg: KVM exists on our hosts but hangs;
# -m 512, no network, no display, serial console to a log file, -no-reboot)
# from one virtio disk, and waits until the guest prints the marker line
# written by tests/fixtures/make-boot-disk.sh images:
#
#   IMGSTREAM-BOOT-OK <md5>       success (guest read and verified its data)
#   IMGSTREAM-BOOT-FAIL <reason>  guest-side failure: stop at once
#
# or, with BOOT_MARKER=IMGSTREAM-DISTRO, the one of the Debian disk of
# tests/fixtures/make-distro-disk.sh (IMGSTREAM-DISTRO-OK <md5> ... /
# IMGSTREAM-DISTRO-FAIL <reason>).
#
# On success it prints to stdout
#   elapsed_seconds=<seconds from qemu start to the marker, 2 decimals>
#   IMGSTREAM-BOOT-OK <md5>       (the whole marker line)
# and returns 0. It returns 1 if the marker is missing (timeout, qemu exited,
# guest FAIL, md5 mismatch) and 2 on usage errors; the serial log tail goes to
# stderr. QEMU is always killed (by PID: TERM, then KILL) before returning,
# and runs with a parent-death signal so it dies even if this shell is
# SIGKILLed.
#
# DRIVE_SPEC may be
#   * a raw image path:             disk.img
#   * an NBD URI:                   nbd+unix:///?socket=/tmp/x.sock
#                                   nbd+unix:///EXPORT?socket=/tmp/x.sock
#                                   nbd://127.0.0.1:10809/EXPORT
#                                   nbd:unix:/tmp/x.sock[:exportname=NAME]
#     both become file=SPEC,format=raw,if=virtio,readonly=on (commas in the
#     path/URI are escaped for QEMU);
#   * a full -drive option string, passed verbatim (if=virtio is appended
#     when no if= is given), e.g.
#       file=disk.img,format=raw,if=virtio
#       driver=nbd,server.type=unix,server.path=/tmp/x.sock,if=virtio,readonly=on
#
# Environment:
#   BOOT_MARKER=PREFIX   wait for PREFIX-OK / PREFIX-FAIL (default
#                        IMGSTREAM-BOOT; IMGSTREAM-DISTRO for the Debian disk)
#   BOOT_LOG=FILE        keep the serial log there (default: temp, deleted)
#   BOOT_EXPECT_MD5=HEX  also require this md5 in the marker (e.g. the
#                        content of OUT.img.md5 from make-boot-disk.sh)
#   BOOT_READONLY=0      do not add readonly=on for paths/URIs (a guest that
#                        writes, like the Debian disk, needs it)
#   BOOT_WAIT_EXIT=SECS  after the OK marker, wait up to SECS for QEMU to exit
#                        by itself (the guest powers off, -no-reboot), print
#                        exit_seconds=<marker to exit> after elapsed_seconds,
#                        and fail if it does not (default: kill at the marker)
#   BOOT_MEM=512         guest memory in MiB
#   BOOT_QEMU=qemu-system-x86_64   QEMU binary
#   BOOT_QEMU_ARGS="..."  extra QEMU arguments (word-split)
#   BOOT_QUIET=1         do not print the serial log tail on failure
#
# Why: imgstream serves disk images over NBD; "does a real OS boot from it
# and read back the exact bytes" is the end-to-end check, and the elapsed
# time is a rough performance signal (TCG; noisy on a loaded host).

# The markers are set from BOOT_MARKER when a boot starts (_boot_check_args).
BOOT_MARKER_OK=IMGSTREAM-BOOT-OK
BOOT_MARKER_FAIL=IMGSTREAM-BOOT-FAIL

_boot_log() { printf 'boot.sh: %s\n' "$*" >&2; }

# boot_drive_arg SPEC -> the string to pass to -drive
boot_drive_arg() {
    local spec=$1 ro=
    [[ ${BOOT_READONLY:-1} == 1 ]] && ro=,readonly=on
    case $spec in
        nbd:* | nbd+unix:* | nbd+tcp:*)
            printf 'file=%s,format=raw,if=virtio%s' "${spec//,/,,}" "$ro"
            return 0 ;;
    esac
    if [[ -e $spec ]]; then
        printf 'file=%s,format=raw,if=virtio%s' "${spec//,/,,}" "$ro"
        return 0
    fi
    if [[ $spec == *=* ]]; then
        if [[ ,$spec, == *,if=* ]]; then
            printf '%s' "$spec"
        else
            printf '%s,if=virtio' "$spec"
        fi
        return 0
    fi
    _boot_log "DRIVE_SPEC '$spec' is neither an existing file, an NBD URI nor a -drive string"
    return 2
}

# _boot_now -> seconds since the epoch with microseconds (bash 5)
_boot_now() { printf '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"; }

# _boot_kill PID: TERM, wait up to 5 s, KILL, reap.
_boot_kill() {
    local pid=$1 i
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}

# _boot_check_args SPEC TIMEOUT -> sets _boot_drive, _boot_qemu; rc 2 on error
_boot_check_args() {
    if [[ $# -ne 2 || ! $2 =~ ^[0-9]+([.][0-9]+)?$ ]]; then
        _boot_log "usage: boot.sh DRIVE_SPEC TIMEOUT_SECONDS"
        return 2
    fi
    if [[ ! ${BOOT_MARKER:-IMGSTREAM-BOOT} =~ ^[A-Za-z0-9_-]+$ ]]; then
        _boot_log "BOOT_MARKER '$BOOT_MARKER' must be letters, digits, '-' or '_'"
        return 2
    fi
    if [[ -n ${BOOT_WAIT_EXIT:-} && ! $BOOT_WAIT_EXIT =~ ^[0-9]+([.][0-9]+)?$ ]]; then
        _boot_log "BOOT_WAIT_EXIT '$BOOT_WAIT_EXIT' is not a number of seconds"
        return 2
    fi
    BOOT_MARKER_OK=${BOOT_MARKER:-IMGSTREAM-BOOT}-OK
    BOOT_MARKER_FAIL=${BOOT_MARKER:-IMGSTREAM-BOOT}-FAIL
    _boot_drive=$(boot_drive_arg "$1") || return 2
    _boot_qemu=${BOOT_QEMU:-qemu-system-x86_64}
    command -v "$_boot_qemu" >/dev/null || { _boot_log "$_boot_qemu not found"; return 2; }
}

# _boot_run TIMEOUT: the boot itself. It sets traps and ends with `exit`, so
# it must run either as the whole script or inside a subshell (boot_disk).
_boot_run() {
    set -u
    local timeout=$1 drive=$_boot_drive qemu=$_boot_qemu
    # $$ is the top-level shell even inside subshells: if that dies (say
    # SIGKILL of a test script that sourced us), stop and kill QEMU.
    local caller=$$
    _boot_serial=${BOOT_LOG:-}
    _boot_own_log=0
    if [[ -z $_boot_serial ]]; then
        _boot_serial=$(mktemp "${TMPDIR:-/tmp}/boot-serial.XXXXXX") || exit 2
        _boot_own_log=1
    else
        : >"$_boot_serial" || exit 2
    fi
    _boot_qpid=
    trap _boot_finish EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    local log=$_boot_serial

    local -a extra cmd
    # shellcheck disable=SC2206
    extra=(${BOOT_QEMU_ARGS:-})
    cmd=("$qemu" -accel tcg -m "${BOOT_MEM:-512}" -smp 1
        -nodefaults -no-user-config -display none -vga none -nic none
        -monitor none -serial "file:$log" -no-reboot -boot c
        -drive "$drive" "${extra[@]}")
    # setpriv --pdeathsig: QEMU gets SIGKILL if the shell that started it
    # dies, whatever the reason (even SIGKILL, where no trap runs).
    if command -v setpriv >/dev/null; then
        cmd=(setpriv --pdeathsig KILL -- "${cmd[@]}")
    fi
    _boot_log "drive: $drive (timeout ${timeout}s)"
    local start deadline now end elapsed status=timeout line='' got
    local pattern="^($BOOT_MARKER_OK|$BOOT_MARKER_FAIL)( |\$)"
    start=$(_boot_now)
    "${cmd[@]}" </dev/null >"$log.qemu-out" 2>&1 &
    _boot_qpid=$!
    deadline=$(awk -v s="$start" -v t="$timeout" 'BEGIN { printf "%.6f", s + t }')

    while :; do
        line=$(tr -d '\r' <"$log" | grep -m1 -aE "$pattern") || true
        if [[ -n $line ]]; then
            [[ $line == "$BOOT_MARKER_OK"* ]] && status=ok || status=fail
            break
        fi
        if ! kill -0 "$_boot_qpid" 2>/dev/null; then
            # One last look: the marker may have landed just before exit.
            line=$(tr -d '\r' <"$log" | grep -m1 -aE "$pattern") || true
            if [[ -n $line ]]; then
                [[ $line == "$BOOT_MARKER_OK"* ]] && status=ok || status=fail
            else
                status=exited
            fi
            break
        fi
        if ! kill -0 "$caller" 2>/dev/null; then
            _boot_log "calling shell $caller is gone: stopping"
            exit 1
        fi
        now=$(_boot_now)
        if awk -v n="$now" -v d="$deadline" 'BEGIN { exit !(n >= d) }'; then
            status=timeout
            break
        fi
        sleep 0.05
    done
    end=$(_boot_now)
    elapsed=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }')
    local exit_line=
    if [[ $status == ok && -n ${BOOT_WAIT_EXIT:-} ]]; then
        # The guest powers off after its marker: give it the time to, so
        # that its disk is left clean (then it can be fsck'ed).
        deadline=$(awk -v s="$end" -v t="$BOOT_WAIT_EXIT" 'BEGIN { printf "%.6f", s + t }')
        while kill -0 "$_boot_qpid" 2>/dev/null; do
            now=$(_boot_now)
            if awk -v n="$now" -v d="$deadline" 'BEGIN { exit !(n >= d) }'; then
                status=noexit
                break
            fi
            sleep 0.05
        done
        now=$(_boot_now)
        [[ $status == ok ]] &&
            exit_line="exit_seconds=$(awk -v s="$end" -v e="$now" 'BEGIN { printf "%.2f", e - s }')"
    fi
    _boot_kill "$_boot_qpid"
    _boot_qpid=

    if [[ $status == ok && -n ${BOOT_EXPECT_MD5:-} ]]; then
        got=${line#"$BOOT_MARKER_OK"}
        got=${got# }
        got=${got%% *}
        if [[ $got != "$BOOT_EXPECT_MD5" ]]; then
            _boot_log "md5 mismatch: marker has '$got', expected '$BOOT_EXPECT_MD5'"
            status=md5
        fi
    fi

    echo "elapsed_seconds=$elapsed"
    if [[ -n $exit_line ]]; then echo "$exit_line"; fi
    if [[ -n $line ]]; then echo "$line"; fi
    [[ $status == ok ]] && exit 0
    case $status in
        timeout) _boot_log "FAILED: no marker within ${timeout}s" ;;
        exited)  _boot_log "FAILED: qemu exited before the marker" ;;
        fail)    _boot_log "FAILED: guest reported: $line" ;;
        md5)     _boot_log "FAILED: data integrity (md5) mismatch" ;;
        noexit)  _boot_log "FAILED: qemu still running ${BOOT_WAIT_EXIT}s after the marker (no poweroff)" ;;
    esac
    if [[ ${BOOT_QUIET:-0} != 1 ]]; then
        if [[ -s $log.qemu-out ]]; then
            _boot_log "--- qemu output ---"
            tail -n 20 "$log.qemu-out" >&2
        fi
        _boot_log "--- serial log (last 40 lines) ---"
        tr -d '\r' <"$log" | tail -n 40 >&2
    fi
    exit 1
}

# EXIT trap of _boot_run: never leave QEMU or temp files behind.
# shellcheck disable=SC2317  # invoked via trap
_boot_finish() {
    local rc=$?
    trap - EXIT INT TERM HUP
    _boot_kill "${_boot_qpid:-}"
    rm -f -- "$_boot_serial.qemu-out"
    if ((_boot_own_log)); then rm -f -- "$_boot_serial"; fi
    exit "$rc"
}

# boot_disk DRIVE_SPEC TIMEOUT_SECONDS (library entry point): runs the boot
# in a subshell so its traps and variables do not leak into the caller.
boot_disk() {
    local _boot_drive _boot_qemu
    _boot_check_args "$@" || return 2
    (_boot_run "$2")
}

# Executed (not sourced): run once.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -uo pipefail
    _boot_check_args "$@" || exit 2
    _boot_run "$2"   # runs in this shell (no subshell) and exits
fi
