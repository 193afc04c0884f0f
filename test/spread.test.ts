// Where each agent starts claiming an image's layers (Puller.spread): with
// the same order everywhere, every agent's workers claimed the same first
// layers and the rest waited to be stolen one Raft round at a time.

import { pino } from "pino";
import t from "tap";
import { Puller } from "../src/agent/pull.js";
import type { RaftNode } from "../src/agent/raftnode.js";
import type { LayerStore } from "../src/layers/store.js";
import type { RegistryClient } from "../src/registry/client.js";

function pullers(n: number, workers: number): Puller[] {
  const ids = Array.from({ length: n }, (_, i) => `agent-${String.fromCharCode(107 - i)}`);
  const members = new Map(ids.map((id) => [id, { addrs: [], since: 0 }]));
  return ids.map(
    (id) =>
      new Puller({
        id,
        node: { state: { members } } as unknown as RaftNode,
        store: {} as LayerStore,
        registry: {} as RegistryClient,
        log: pino({ level: "silent" }),
        workers,
        signal: new AbortController().signal,
      }),
  );
}

t.test("10 agents with 3 workers each: the first claims of all of them cover 20 layers", async (t) => {
  const firsts = new Set(pullers(10, 3).flatMap((p) => p.spread(20).slice(0, 3)));
  t.equal(firsts.size, 20, "every layer is among some agent's first three");
});

t.test("each agent asks for every layer exactly once", async (t) => {
  for (const p of pullers(4, 3)) {
    for (const n of [0, 1, 5, 20]) t.same([...p.spread(n)].sort((a, b) => a - b), [...Array(n).keys()]);
  }
});

t.test("more agents than layers: the starts wrap around", async (t) => {
  const starts = pullers(12, 3).map((p) => p.spread(4)[0]);
  t.same(new Set(starts), new Set([0, 1, 2, 3]), "every layer is someone's first");
});
