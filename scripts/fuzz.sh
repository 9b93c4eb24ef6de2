#!/usr/bin/env bash
# make fuzz: every fuzz target (fuzz/fuzz_targets) under libFuzzer for
# FUZZ_SECONDS each (default 60), starting from the seeds (fuzz/seeds/<target>)
# and the committed corpus (fuzz/corpus/<target>), which it adds to and then
# minimises (cargo fuzz cmin). A crash stops the run; its input is left in
# fuzz/artifacts/<target>/: copy it into fuzz/corpus/<target>/ so the replay
# test in `make test` (crates/core/tests/fuzz_corpus.rs) keeps it.
#
# cargo-fuzz is installed into the build cache. Stable Rust is enough:
# coverage instrumentation (sancov) is a stable codegen option, and the
# AddressSanitizer runtime ships with stable toolchains; RUSTC_BOOTSTRAP
# lets the one -Z flag it needs through.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${RAFTKV_CACHE_DIR:-$HOME/.cache/raftkv}"
tools="$cache/tools"
seconds="${FUZZ_SECONDS:-60}"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  echo "fuzz: installing cargo-fuzz into $tools"
  cargo install --quiet --locked --root "$tools" cargo-fuzz@0.13.2
fi
export PATH="$tools/bin:$PATH" RUSTC_BOOTSTRAP=1
cd fuzz
for target in $(cargo fuzz list); do
  echo "fuzz: $target for ${seconds} s"
  log="$cache/fuzz-$target.log"
  mkdir -p "corpus/$target"
  if ! cargo fuzz run --target-dir "$cache/fuzz-target" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target, the log in $log" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$log" | sed "s/^/fuzz: $target /"
  cargo fuzz cmin --target-dir "$cache/fuzz-target" "$target" "corpus/$target" >>"$log" 2>&1
  echo "fuzz: $target corpus minimised to $(find "corpus/$target" -type f | wc -l) inputs"
done
echo "fuzz: every target ran ${seconds} s without a crash"
