#!/bin/bash
# Time to serve again after a SIGKILL that left the staging areas full:
# produce (4 partitions, 2 per shard) while the data disk is frozen until
# staging fills, kill, thaw, restart; prints the batches to replay and the
# seconds to the `fjord: serving` line. Needs root (loop device, fsfreeze).
# Usage: replay-after-kill.sh [fjord] [bench]
set -u
cd "$(dirname "$0")/../.."
F=${1:-target/release/fjord}; B=${2:-target/release/bench}
W=$(mktemp -d); IMG=$W/rt.img; MNT=$W/mnt; SHM=/dev/shm/fjord-replay-after-kill
rm -rf $MNT $SHM; mkdir -p $MNT $SHM
truncate -s 4G $IMG && mkfs.ext4 -q -F -m 0 $IMG
LOOP=$(losetup -f --show --direct-io=on $IMG); mount $LOOP $MNT
ARGS="serve --data-dir $MNT/data --staging-dir $SHM --kafka-listen none --admin-listen none --listen 127.0.0.1:19193"
$F $ARGS > $W/rt1.out 2>$W/rt1.err & P=$!
sleep 2
$B produce --bootstrap 127.0.0.1:19193 --rate 50k --duration 2s --topic rt --partitions 4 > /dev/null 2>&1
fsfreeze -f $MNT
timeout 6 $B produce --bootstrap 127.0.0.1:19193 --rate 1M --duration 5s --topic rt --partitions 4 > $W/rt-prod.out 2>&1
kill -9 $P; fsfreeze -u $MNT; wait $P 2>/dev/null
start=$(date +%s.%N)
$F $ARGS > $W/rt2.out 2>$W/rt2.err & P=$!
while ! grep -q "serving" $W/rt2.out 2>/dev/null; do sleep 0.01; if ! kill -0 $P 2>/dev/null; then echo "exited"; break; fi; done
end=$(date +%s.%N)
grep -o "[0-9]* batches to replay" $W/rt2.out
echo "serving after $(echo "$end - $start" | bc) s"
kill $P; wait $P
umount $MNT; losetup -d $LOOP; rm -rf $W $SHM
