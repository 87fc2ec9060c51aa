#!/bin/bash
# What a `fjord serve` costs under one `bench produce` load, for comparing
# two builds in one run (BENCHMARKS.md, "The request's copies: into the cold
# buffer around the cache"): the rate reached, the broker's CPU time, its
# writes and their size (from /metrics), and, with PERF=1, a `perf record`
# of 6 s in the middle of the run (samples per thread and the hottest
# symbols).
# Usage: broker-cpu.sh FJORD BENCH [bench produce args...]
#   e.g. broker-cpu.sh target/release/fjord target/release/bench \
#          --rate 1M --duration 12s --batch-size 262144 --message-size 1024 --producers 2
set -u
F=$1; B=$2; shift 2
W=$(mktemp -d -p "${TMPDIR:-/tmp}")
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$W"' EXIT
"$F" serve --data-dir "$W/data" --listen 127.0.0.1:19093 --kafka-listen none \
  --admin-listen 127.0.0.1:19644 > "$W/serve.out" 2> "$W/serve.err" &
pid=$!
for _ in $(seq 1 100); do grep -q READY "$W/serve.out" 2>/dev/null && break; sleep 0.1; done
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(cpu)
"$B" produce "$@" --bootstrap 127.0.0.1:19093 > "$W/bench.out" 2>&1 &
bench=$!
if [ "${PERF:-0}" = 1 ]; then
  sleep 3
  perf record -F 999 -g -p "$pid" -o "$W/perf.data" -- sleep 6 > /dev/null 2>&1
fi
wait "$bench"
after=$(cpu)
writes=$(curl -s 127.0.0.1:19644/metrics |
  awk '/^fjord_storage_write_latency_seconds_count/ {s += $2} END {print s + 0}')
grep -E 'achieved|machine' "$W/bench.out"
awk -v t=$((after - before)) -v w="$writes" '/achieved/ {
  mb = $4 * $(NF - 3); # MB/s × seconds
  printf "broker cpu %.2f s = %.3f cpu-s/GB; writes %d of %.0f KB\n", t / 100, t / 100 / (mb / 1000), w, mb * 1000 / w
}' "$W/bench.out"
if [ "${PERF:-0}" = 1 ]; then
  perf report -i "$W/perf.data" --no-children --sort comm -n --stdio 2> /dev/null |
    awk '/^ +[0-9]/ {s += $2} END {print "perf samples", s}'
  perf report -i "$W/perf.data" --no-children --sort sym -n --percent-limit 5 --stdio 2> /dev/null |
    grep -E '^ +[0-9]'
fi
