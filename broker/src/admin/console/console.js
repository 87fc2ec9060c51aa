// The console: polls /v1/overview once a second and draws the broker's
// figures of the last whole second with uPlot. Keeps the last two minutes.
"use strict";
const KEEP = 120;
const series = { t: [], produce: [], fetch: [], p99: [], fsync: [] };

function chart(id, title, labels, colours) {
  const opts = {
    title, width: 560, height: 220,
    series: [{}].concat(labels.map((label, i) => ({ label, stroke: colours[i], width: 2 }))),
    axes: [{}, {}],
  };
  return new uPlot(opts, [[], ...labels.map(() => [])], document.getElementById(id));
}
const throughput = chart("throughput-chart", "throughput (MB/s)", ["produce", "consume"], ["#0b5394", "#38761d"]);
const latency = chart("latency-chart", "p99 latency (ms)", ["produce", "fdatasync"], ["#cc0000", "#e69138"]);

const mb = (bytes) => (bytes / 1e6).toFixed(2);
const num = (n) => Number(n).toLocaleString("en");
function text(id, value) { document.getElementById(id).textContent = value; }
function rows(id, items, cells) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...items.map((item) => {
    const tr = document.createElement("tr");
    for (const [cls, value] of cells(item)) {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = value;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function show(o, now) {
  text("node", `node ${o.node} · ${o.shards} shard(s)`);
  const health = document.getElementById("health");
  health.textContent = o.ready ? "ready" : "not ready: " + o.reasons.join("; ");
  health.className = "badge " + (o.ready ? "ready" : "not-ready");
  const stalled = o.disk.stalled_ms > 0 ? ` (stalled: a write has waited ${(o.disk.stalled_ms / 1000).toFixed(1)} s)` : "";
  text("disk", `disk ${mb(o.disk.free_bytes) } MB free of ${mb(o.disk.total_bytes)}${o.disk.low ? " (low)" : ""}${stalled}`);
  text("connections", `${o.connections} connection(s)`);
  const rate = o.per_second;
  text("produce-rate", num(rate.produced_records));
  text("produce-bytes", mb(rate.produced_bytes));
  text("fetch-rate", num(rate.fetched_records));
  text("fetch-bytes", mb(rate.fetched_bytes));
  series.t.push(now / 1000);
  series.produce.push(rate.produced_bytes / 1e6);
  series.fetch.push(rate.fetched_bytes / 1e6);
  series.p99.push(o.latency_ms.produce_p99);
  series.fsync.push(o.latency_ms.fdatasync_p99);
  for (const k in series) { if (series[k].length > KEEP) series[k].shift(); }
  throughput.setData([series.t, series.produce, series.fetch]);
  latency.setData([series.t, series.p99, series.fsync]);
  text("produce-p99", o.latency_ms.produce_p99.toFixed(2));
  text("fdatasync-p99", o.latency_ms.fdatasync_p99.toFixed(2));
  rows("topics", o.topics, (t) => [
    ["name", t.name], ["partitions", t.partitions],
    ["produced", num(t.produced_records)], ["consumed", num(t.fetched_records)],
    ["size", mb(t.size_bytes) + " MB"], ["end", num(t.end_offsets)], ["lag", num(t.group_lag)],
  ]);
  rows("partitions", o.partitions, (p) => [
    ["topic", p.topic], ["partition", p.partition], ["shard", p.shard],
    ["leader", p.leader ?? "?"], ["in-sync", `${p.in_sync}/${p.replicas}`],
    ["start", num(p.log_start)], ["end", num(p.log_end)], ["size", mb(p.size_bytes) + " MB"],
  ]);
  rows("groups", o.groups, (g) => [
    ["group", g.group], ["topic", g.topic], ["partition", g.partition], ["lag", num(g.lag)],
  ]);
  text("updated", "updated " + new Date(now).toLocaleTimeString());
}

async function refresh() {
  try {
    const response = await fetch("/v1/overview", { cache: "no-store" });
    show(await response.json(), Date.now());
  } catch (e) {
    text("updated", "cannot reach the node: " + e);
  }
  setTimeout(refresh, 1000);
}
refresh();
