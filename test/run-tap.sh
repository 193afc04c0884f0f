#!/usr/bin/env bash
# Runs the tap suite and prints, as the last line, "N passed, N failed"
# (counting assertions, from tap's own summary).
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
tap "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
summary=$(grep -E '^# \{ total: [0-9]+' "$log" | tail -n 1)
pass=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$summary")
fail=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$summary")
total=$(sed -nE 's/.*total: ([0-9]+).*/\1/p' <<<"$summary")
pass=${pass:-0}
fail=${fail:-0}
# A run that failed without counting a failure (a crash, a timeout) still fails.
if [ "$status" -ne 0 ] && [ "$fail" -eq 0 ]; then fail=$(( ${total:-0} - pass )); [ "$fail" -gt 0 ] || fail=1; fi
echo "$pass passed, $fail failed"
exit "$status"
