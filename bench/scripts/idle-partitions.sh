#!/bin/bash
# 10,000 partitions x RF=3 on 3 local nodes (1 core each): RSS and CPU at idle.
F=${FJORD:-target/release/fjord}
D=$(mktemp -d); trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$D"' EXIT
for i in 1 2 3; do
  extra=""; [ $i -gt 1 ] && extra="--seeds 127.0.0.1:19301"
  $F serve --node-id $i --data-dir $D/n$i --listen 127.0.0.1:1930$i --shard-port-base 1940$i --cores 1 --staging-dir $D/n$i/stg $extra > $D/n$i.out 2> $D/n$i.err &
  sleep 1
done
sleep 2
rss() { for i in 1 2 3; do p=$(pgrep -f "data-dir $D/n$i "); awk '/VmRSS/{print $2}' /proc/$p/status; done | tr '\n' ' '; }
cpu() { for i in 1 2 3; do p=$(pgrep -f "data-dir $D/n$i "); awk '{print $14+$15}' /proc/$p/stat; done | tr '\n' ' '; }
echo "rss before (KiB): $(rss)"
B=127.0.0.1:19301,127.0.0.1:19302,127.0.0.1:19303
t0=$(date +%s.%N)
$F topic create big --partitions 10000 --replication-factor 3 --bootstrap $B
t1=$(date +%s.%N)
echo "create took $(echo "$t1 - $t0" | bc) s"
# wait for leaders
for k in $(seq 1 120); do
  n=$($F cluster status --bootstrap $B | grep -c "without a leader")
  [ "$n" = "0" ] && break; sleep 1
done
t2=$(date +%s.%N); echo "all leaders after $(echo "$t2 - $t0" | bc) s"
$F cluster status --bootstrap $B | head -8 | cut -c1-200
# Leaders move back to their preferred replicas within the first
# leader_rebalance_interval_ms (30 s); then the cluster is idle.
sleep ${SETTLE:-60}
echo "rss idle (KiB): $(rss)"
c0=($(cpu)); sleep 60; c1=($(cpu))
for i in 0 1 2; do
  echo "node $((i+1)) cpu over 60 s idle: $(echo "scale=2; (${c1[$i]} - ${c0[$i]}) / 60" | bc) % of a core"
done
for i in 1 2 3; do p=$(pgrep -f "data-dir $D/n$i "); echo "node $i fds: $(ls /proc/$p/fd | wc -l)"; done
grep -h "ERROR\|WARN" $D/n*.err | cut -c1-200 | sort | uniq -c | sort -rn | head -5
