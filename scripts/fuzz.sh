#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) for a bounded time and prints a table:
# target, runs, seconds, findings. Exits non-zero when any target finds a crash, a hang or
# unbounded memory. No arguments; run from anywhere:
#   bash scripts/fuzz.sh
# Settings (environment):
#   MAILTRAIL_FUZZ_SECONDS     seconds per target (default 60)
#   MAILTRAIL_FUZZ_TARGETS     space-separated subset of targets (default: all of them)
#   MAILTRAIL_FUZZ_RSS_MB      memory limit per target; above it is a finding (default 512)
#   MAILTRAIL_FUZZ_SANITIZER   cargo fuzz --sanitizer (default none: the code is safe Rust and
#                              coverage-guided runs go about twice as fast without ASan)
#   MAILTRAIL_FUZZ_TARGET_DIR  build directory (default fuzz/target, git-ignored)
# Corpora grow in fuzz/corpus/<target> (git-ignored), seeded from the committed
# fuzz/seeds/<target>; a crashing input is written to fuzz/artifacts/<target>/. See
# docs/hostile-input.md.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

cd "$(dirname "$0")/.."
root=$PWD
seconds=${MAILTRAIL_FUZZ_SECONDS:-60}
rss_mb=${MAILTRAIL_FUZZ_RSS_MB:-512}
sanitizer=${MAILTRAIL_FUZZ_SANITIZER:-none}
target_dir=${MAILTRAIL_FUZZ_TARGET_DIR:-$root/fuzz/target}
all_targets=(standard_webhooks mailgun sendgrid postmark sns_envelope sns_certificate normalise
    mailbox_decode)
read -r -a targets <<<"${MAILTRAIL_FUZZ_TARGETS:-${all_targets[*]}}"

# cargo-fuzz needs nightly flags; the stable toolchain takes them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
tools=$root/target/tools
export PATH=$tools/bin:$PATH
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz into $tools" >&2
    cargo install cargo-fuzz --locked --root "$tools" >&2
fi

flags=(-O --debug-assertions --sanitizer "$sanitizer" --target-dir "$target_dir")
echo "fuzz.sh: building ${#targets[@]} targets" >&2
cargo fuzz build "${flags[@]}" >&2

logs=$root/fuzz/artifacts/logs
mkdir -p "$logs"
failed=0
rows=()
for target in "${targets[@]}"; do
    corpus=$root/fuzz/corpus/$target
    artifacts=$root/fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    seeds=()
    [[ -d $root/fuzz/seeds/$target ]] && seeds=("$root/fuzz/seeds/$target")
    log=$logs/$target.log
    echo "fuzz.sh: $target for ${seconds}s" >&2
    started=$SECONDS
    rc=0
    # -timeout: one input taking 10 s is a hang (a finding); -rss_limit_mb/-malloc_limit_mb:
    # memory above the limit is a finding.
    cargo fuzz run "${flags[@]}" "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -malloc_limit_mb="$rss_mb" \
        -timeout=10 -dict="$root/fuzz/json.dict" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1 || rc=$?
    took=$((SECONDS - started))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    findings=$(grep -c -E '^(artifact_prefix=.*; )?Test unit written to' "$log" || true)
    if [[ $rc -ne 0 && $findings -eq 0 ]]; then
        findings="error (exit $rc)"
    fi
    if [[ $rc -ne 0 ]]; then
        failed=1
        echo "fuzz.sh: $target FAILED; the end of $log:" >&2
        tail -40 "$log" >&2
    fi
    rows+=("$(printf '%-18s %12s %8s  %s' "$target" "${runs:-?}" "$took" "$findings")")
done

printf '\n%-18s %12s %8s  %s\n' target runs seconds findings
for row in "${rows[@]}"; do
    echo "$row"
done
printf 'date %s, %ss per target, rss limit %s MB, sanitizer %s\n' \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$seconds" "$rss_mb" "$sanitizer"
exit "$failed"
