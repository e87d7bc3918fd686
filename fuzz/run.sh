#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), one after the other, and prints each
# target's executions and executions per second. CI runs `fuzz/run.sh 20`; a long run is
# `fuzz/run.sh 3600` (an hour per target). A crash stops the run with the failing input under
# fuzz/artifacts/<target>/ and the end of the log; reproduce it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>`.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --version 0.13.2 --locked`). cargo fuzz passes
# nightly-only flags (sanitizers, coverage); RUSTC_BOOTSTRAP=1 lets the stable toolchain take
# them. Seeds are read from fuzz/corpus/<target>/ (committed, made by `seeds`); what the
# fuzzer finds goes to fuzz/generated/<target>/ (ignored), so later runs start from it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
targets=(http_read busd_frames events_roundtrip client_frames)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --version 0.13.2 --locked" >&2
    exit 1
fi

# Per target: the dictionary, and the largest single allocation allowed in MiB. busctl
# accepts frames of up to 64 MiB (client/src/session.rs) and its codec reserves room for a
# whole frame once the 4-byte prefix has arrived, so client_frames needs just over 64.
dict_for() {
    case $1 in
        http_read) echo "-dict=fuzz/dict/http.dict" ;;
        busd_frames | client_frames) echo "-dict=fuzz/dict/frames.dict" ;;
        *) echo "" ;;
    esac
}
malloc_limit_for() {
    case $1 in
        client_frames) echo 65 ;;
        *) echo 64 ;;
    esac
}

summary=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/generated/$target" "fuzz/artifacts/$target"
    log="fuzz/artifacts/$target/last-run.log"
    echo "-- $target: building"
    if ! cargo fuzz build "$target" >"$log" 2>&1; then
        cat "$log" >&2
        exit 1
    fi
    echo "-- $target: fuzzing for ${seconds}s (log: $log)"
    # shellcheck disable=SC2046 # the dictionary flag is empty or one word
    if ! cargo fuzz run "$target" "fuzz/generated/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=512 -malloc_limit_mb="$(malloc_limit_for "$target")" \
        -print_final_stats=1 $(dict_for "$target") >"$log" 2>&1; then
        echo "!! $target failed; the end of its log:" >&2
        tail -n 80 "$log" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    corpus=$(find "fuzz/generated/$target" -type f | wc -l)
    echo "   $runs executions, $rate exec/s, peak RSS ${rss} MB, $corpus generated inputs kept"
    summary+=("$(printf '%-18s %12s %10s' "$target" "$runs" "$rate")")
done

echo "== fuzzing summary (${seconds}s per target)"
printf '%-18s %12s %10s\n' target executions exec/s
printf '%s\n' "${summary[@]}"
echo "no crash in ${#targets[@]} targets"
