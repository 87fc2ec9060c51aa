#!/bin/bash
# The latency bars with a disk that stops: the node's data directory on ext4
# over a direct-I/O loop device (its image on the real disk), frozen with
# `fsfreeze` for STALL seconds every PERIOD seconds (0.2 every 3 by
# default), which holds every write and file creation on it, as a stalled
# device does. The paced raw probe on the same filesystem before and after
# shows the stalls; `bench produce` (and `bench e2e` unless E2E=0) run at
# 1M msg/s against a `fjord serve` with default settings (EXTRA: more
# flags). Needs root. The freeze times go to $OUT/freezes.txt.
set -u
cd "$(dirname "$0")/../.."
STALL=${STALL:-0.2}; PERIOD=${PERIOD:-3}; EXTRA=${EXTRA:-}; E2E=${E2E:-1}
OUT=${OUT:-target/frozen-disk}; IMG=${IMG:-target/frozen-disk.img}; MNT=$OUT/mnt
F=${F:-target/release/fjord}; B=${B:-target/release/bench}; P=${P:-target/release/probe}
mkdir -p "$OUT" "$MNT"; : > "$OUT/freezes.txt"
truncate -s 16G "$IMG" && mkfs.ext4 -q -F -m 0 "$IMG" || exit 1
LOOP=$(losetup -f --show --direct-io=on "$IMG") || exit 1
mount "$LOOP" "$MNT" || exit 1
cleanup() {
  # The freezer thaws on its way out, after any freeze it is running: a
  # freeze killed halfway could land after a thaw from here and leave the
  # filesystem frozen, and the node's stop waiting on it for good.
  kill "$FREEZER" 2>/dev/null; wait "$FREEZER" 2>/dev/null; fsfreeze -u "$MNT" 2>/dev/null
  kill "$SERVE" 2>/dev/null; wait "$SERVE" 2>/dev/null
  umount "$MNT"; losetup -d "$LOOP"; rm -f "$IMG"
}
(trap 'fsfreeze -u "$MNT" 2>/dev/null; exit 0' TERM
while true; do
  # Sleeps in the background so that the trap runs at once, not after them.
  sleep "$(echo "$PERIOD - $STALL" | bc)" & wait $!
  echo "freeze $(date +%T.%N)" >> "$OUT/freezes.txt"
  fsfreeze -f "$MNT"; sleep "$STALL" & wait $!; fsfreeze -u "$MNT"
done) &
FREEZER=$!
SERVE=
trap cleanup EXIT
probe() { echo "== paced probe $1 $(date +%T)"; $P --limits-only --dir "$MNT/probe" 2>&1 | grep -E "QD4|every 400"; }
probe before
$F serve --data-dir "$MNT/data" $EXTRA > "$OUT/serve.log" 2>&1 &
SERVE=$!
sleep 4
echo "== produce 60s $(date +%T.%N)"
$B produce --bootstrap 127.0.0.1:9093 --rate 1M --duration 60s 2>&1 | tr '\r' '\n' > "$OUT/produce.txt"
tail -4 "$OUT/produce.txt"
if [ "$E2E" = 1 ]; then
  echo "== e2e 30s $(date +%T.%N)"
  $B e2e --bootstrap 127.0.0.1:9093 --rate 1M --duration 30s 2>&1 | tr '\r' '\n' > "$OUT/e2e.txt"
  tail -4 "$OUT/e2e.txt"
fi
probe after
