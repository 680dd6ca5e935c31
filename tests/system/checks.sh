# shellcheck shell=bash
# The reporting shared by the system tests (sourced): one "ok NAME" or "FAILED NAME" line
# per check, and "N passed, M failed" as the last line, with a non-zero exit on any failure.

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok     %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAILED %s\n' "$1"; }
# check NAME COMMAND...: passes when COMMAND succeeds.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
finish() {
    printf '%s passed, %s failed\n' "$passed" "$failed"
    ((failed == 0))
    exit
}
