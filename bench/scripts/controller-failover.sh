#!/bin/bash
# Controller failover as an operator sees it: three voters of a controller
# quorum; the active controller is killed with SIGKILL and `fjord topic
# create` is retried through the survivors until it succeeds; the time from
# the kill to the success, per round (the old controller restarts between).
F=${FJORD:-target/release/fjord}
D=$(mktemp -d); trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$D"' EXIT
V=1@127.0.0.1:19701,2@127.0.0.1:19702,3@127.0.0.1:19703
start() { $F serve --node-id $1 --data-dir $D/n$1 --listen 127.0.0.1:1970$1 --shard-port-base 1980$1 --cores 1 --staging-dir $D/n$1/stg --controller-voters $V > $D/n$1.out 2> $D/n$1.err & }
for i in 1 2 3; do start $i; done
B=127.0.0.1:19701,127.0.0.1:19702,127.0.0.1:19703
until $F topic create warmup --partitions 1 --replication-factor 3 --bootstrap $B >/dev/null 2>&1; do sleep 0.2; done
for round in 1 2 3; do
  C=$($F cluster status --bootstrap $B | head -1 | awk '{print $3}')
  k=$(date +%s%N); kill -9 $(pgrep -f "data-dir $D/n$C ")
  S=$(echo $B | tr ',' '\n' | grep -v ":1970$C" | paste -sd,)
  until $F topic create t$round --partitions 3 --replication-factor 2 --bootstrap $S >/dev/null 2>&1; do sleep 0.05; done
  echo "round $round: controller node $C killed; topic created $(( ($(date +%s%N) - k) / 1000000 )) ms later"
  start $C; sleep 3
done
