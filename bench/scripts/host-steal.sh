#!/bin/bash
# What makes the host stop this VM (BENCHMARKS.md, "e2e's tail: what the host
# charges for a virtual disk"). Two parts:
#  1. the host's steal (/proc/stat) under loads that are not Fjord: both
#     vCPUs spinning, a direct-I/O write to the data disk, and both at once;
#  2. `bench e2e --rate 1M` against `fjord serve` with the data directory on
#     the disk and in memory (/dev/shm), alternating.
# Usage: host-steal.sh [fjord] [bench] [rounds]
set -u
cd "$(dirname "$0")/../.."
F=${1:-target/release/fjord}; B=${2:-target/release/bench}; ROUNDS=${3:-2}
W=$(mktemp -d -p "${TMPDIR:-/tmp}"); SHM=$(mktemp -d -p /dev/shm)
trap 'rm -rf "$W" "$SHM"' EXIT

ticks() { awk '/^cpu /{print $2+$3, $4, $5, $6, $9}' /proc/stat; }
report() { # label, ticks before, ticks after
  echo "$2 $3" | awk -v label="$1" '{u=$6-$1; s=$7-$2; i=$8-$3; w=$9-$4; st=$10-$5; t=u+s+i+w+st;
    printf "%-16s user %5.1f%%  sys %5.1f%%  idle %5.1f%%  iowait %5.1f%%  steal %5.1f%%\n",
      label, 100*u/t, 100*s/t, 100*i/t, 100*w/t, 100*st/t}'
}
spin() { timeout "$1" bash -c 'while :; do :; done'; }
write() { # 4 GB of 1 MiB direct writes; says its rate
  dd if=/dev/zero of="$W/dd" bs=1M count=4000 oflag=direct 2>&1 | awk 'END {print "  wrote at", $(NF-1), $NF}'
  rm -f "$W/dd"
}

a=$(ticks); spin 8 & spin 8; wait; report "spin x2" "$a" "$(ticks)"
a=$(ticks); write; report "write" "$a" "$(ticks)"
a=$(ticks); spin 8 & spin 8 & write; wait; report "spin x2 + write" "$a" "$(ticks)"

e2e() { # data directory
  $F serve --data-dir "$1" --kafka-listen none --admin-listen none \
    --listen 127.0.0.1:19293 > "$W/serve.out" 2>&1 & local P=$!
  sleep 2
  $B e2e --bootstrap 127.0.0.1:19293 --rate 1M --duration 10s 2>&1 |
    grep -E "^  (latency|machine)" | tail -2
  kill $P; wait $P; rm -rf "$1"
}
[ "$ROUNDS" = 0 ] && exit 0
for _ in $(seq "$ROUNDS"); do
  echo "e2e, data on the disk ($W)"; e2e "$W/data"
  echo "e2e, data in memory ($SHM)"; e2e "$SHM/data"
done
