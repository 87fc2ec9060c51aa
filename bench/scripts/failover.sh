#!/bin/bash
# Failover time as a client sees it: one acks=all record at a time to
# partition 0 (each a `fjord produce`), the leader of partition 0 killed
# with SIGKILL; the longest gap between two acknowledgements. IDLE=1: the
# partition idle for 2 s before the kill; from the kill to the first ack.
F=${FJORD:-target/release/fjord}
D=$(mktemp -d); trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$D"' EXIT
start() { i=$1; extra=""; [ $i -gt 1 ] && extra="--seeds 127.0.0.1:19501"
  $F serve --node-id $i --data-dir $D/n$i --listen 127.0.0.1:1950$i --shard-port-base 1960$i --cores 1 --staging-dir $D/n$i/stg $extra > $D/n$i.out 2> $D/n$i.err & }
for i in 1 2 3; do start $i; sleep 1; done
B=127.0.0.1:19501,127.0.0.1:19502,127.0.0.1:19503
$F topic create f --partitions 1 --replication-factor 3 --bootstrap $B >/dev/null; sleep 2
for round in 1 2 3; do
  L=$($F topic describe f --bootstrap $B | tail -1 | awk '{print $5}')
  if [ -n "$IDLE" ]; then
    # The partition idle (its group quiet, no heartbeats) when its leader
    # dies: from the kill to the first acknowledgement.
    echo x | $F produce f --partition 0 --bootstrap $B >/dev/null 2>&1; sleep 2
    kill -9 $(pgrep -f "data-dir $D/n$L "); killed=$(date +%s%N)
    until echo x | $F produce f --partition 0 --bootstrap $B >/dev/null 2>&1; do :; done
    echo "round $round (idle): leader node $L killed; kill to first ack: $(( ($(date +%s%N) - killed) / 1000000 )) ms"
    start $L; sleep 3; continue
  fi
  : > $D/acks
  end=$(( $(date +%s%N) + 6000000000 ))
  killed=0
  while [ $(date +%s%N) -lt $end ]; do
    if echo x | $F produce f --partition 0 --bootstrap $B >/dev/null 2>&1; then date +%s%N >> $D/acks; fi
    if [ $killed = 0 ] && [ $(( end - $(date +%s%N) )) -lt 4000000000 ]; then
      kill -9 $(pgrep -f "data-dir $D/n$L "); killed=$(date +%s%N)
    fi
  done
  gap=$(awk -v k=$killed 'NR>1 && prev<=k && $1>k {printf "%.0f", ($1-prev)/1e6} {prev=$1}' $D/acks)
  echo "round $round: leader node $L killed; acks $(wc -l < $D/acks); last ack before the kill to first after: ${gap} ms"
  start $L; sleep 3
done
