// The agent's answers to the remote snapshotter (RemoteLayers), over a
// replicated state and a puller that record what they are asked.
//
// Kubernetes' path: containerd's unpacker Prepares the layers of a CRI pull
// one after another, each Prepare waiting for its own layer. The agent's
// answer to the first of them pulls every layer of the image at once, so
// that a CRI pull is not one layer at a time. `wharf pull --containerd`'s
// path: its Prepares are answered at once, the layer pending until the pull
// or a mount above it makes it present. (The three-host pulls through real
// containerds are in containerd.test.)

import { pino } from "pino";
import t from "tap";
import type { Puller } from "../../src/agent/pull.js";
import type { RaftNode } from "../../src/agent/raftnode.js";
import { RemoteLayers } from "../../src/agent/snapshots.js";
import { LAYER_LABEL, REF_LABEL, chainIDs } from "../../src/containerd/register.js";
import type { LayerStore } from "../../src/layers/store.js";
import type { RegistryClient, ResolvedImage } from "../../src/registry/client.js";
import { parseReference } from "../../src/registry/reference.js";

const hex = (c: string) => `sha256:${c.repeat(64)}`;
const layers = ["a", "b", "c", "d"].map((c, i) => ({ diffID: hex(c), digest: hex(String(i)), size: 100 + i, mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" }));
const chain = chainIDs(layers.map((l) => l.diffID));
const REF = "registry.test:5000/app/web:1";

function setup(failing: ReadonlySet<string> = new Set()) {
  const ensured: string[] = [];
  const proposed: string[] = [];
  let resolves = 0;
  // Layer b is in the shared store already.
  const state = { layers: new Map([[layers[1]!.diffID, { state: "present" }]]), refs: new Map<string, string[]>() };
  const node = {
    state,
    // A hold is refused, as the state machine would, if a layer is not present.
    propose: async (cmd: { type: string; agent: string; holder?: string; layers?: string[]; refs?: { holder: string; layers: string[] }[] }) => {
      const refs = cmd.refs ?? [{ holder: cmd.holder!, layers: cmd.layers! }];
      proposed.push(`${cmd.type} ${refs.map((r) => r.holder).join(" ")}`);
      const missing = refs.flatMap((r) => r.layers).find((d) => state.layers.get(d)?.state !== "present");
      if (missing) return { ok: false, code: "BUSY", error: `layer ${missing} is not present` };
      for (const r of refs) state.refs.set(`${cmd.agent} ${r.holder}`, r.layers);
      return { ok: true, index: 1 };
    },
  };
  const puller = {
    spread: (n: number) => [...Array(n).keys()],
    ensureLayer: async (diffID: string) => {
      ensured.push(diffID);
      await new Promise((r) => setTimeout(r, 5));
      if (failing.has(diffID)) throw new Error("registry unreachable");
      state.layers.set(diffID, { state: "present" });
      return { outcome: "downloaded", by: "agent-1", fetched: 1 };
    },
  };
  const img = { reference: REF, repository: parseReference(REF), layers } as unknown as ResolvedImage;
  const registry = {
    resolve: async () => {
      resolves++;
      return img;
    },
  };
  const remote = new RemoteLayers({
    id: "agent-1",
    node: node as unknown as RaftNode,
    puller: puller as unknown as Puller,
    store: { layerPath: (d: string) => `/shared/layers/${d.slice(7)}` } as unknown as LayerStore,
    registry: registry as unknown as RegistryClient,
    log: pino({ level: "silent" }),
    signal: new AbortController().signal,
  });
  const prepare = (i: number) =>
    remote.resolve({
      key: `extract-${i} ${chain[i]}`,
      parent: i === 0 ? "" : chain[i - 1]!,
      labels: { [REF_LABEL]: chain[i]!, "containerd.io/snapshot/cri.image-ref": REF, "containerd.io/snapshot/cri.layer-digest": layers[i]!.digest },
    });
  return { ensured, proposed, prepare, remote, resolves: () => resolves, state };
}

t.test("the first Prepare of a CRI pull pulls every missing layer of the image", async (t) => {
  const s = setup();
  const first = await s.prepare(0);
  t.equal(first?.name, chain[0], "the first layer answered from the shared store");
  const missing = [0, 2, 3].map((i) => layers[i]!.diffID);
  t.same([...new Set(s.ensured)].sort(), missing.sort(), "every layer not present was asked for before the next Prepare came");
  t.notOk(s.ensured.includes(layers[1]!.diffID), "a present layer costs no claim");
  for (let i = 1; i < 4; i++) t.equal((await s.prepare(i))?.name, chain[i], `layer ${i} answered`);
  t.equal(s.resolves(), 1, "the image is resolved once for all its Prepares");
  t.equal(s.ensured.filter((d) => d === layers[2]!.diffID).length, 1, "a layer pulled ahead is not asked for again by its own Prepare");
});

t.test("a layer that fails ahead of its Prepare fails that Prepare only", async (t) => {
  const s = setup(new Set([layers[3]!.diffID]));
  t.equal((await s.prepare(0))?.name, chain[0]);
  await new Promise((r) => setTimeout(r, 20));
  t.equal((await s.prepare(2))?.name, chain[2], "the layers that came are used");
  await t.rejects(s.prepare(3), /registry unreachable/, "the failed layer's own Prepare reports it");
});

t.test("`wharf pull --containerd`'s own label: answered at once, pending; materialize makes the layer present and pins it", async (t) => {
  const s = setup();
  const own = (i: number) => ({
    [REF_LABEL]: chain[i]!,
    [LAYER_LABEL]: JSON.stringify({ diffID: layers[i]!.diffID, repository: "app/web", blob: layers[i]!.digest, size: layers[i]!.size, mediaType: layers[i]!.mediaType }),
  });
  const r = await s.remote.resolve({ key: `extract-0 ${chain[0]}`, parent: "", labels: own(0) });
  t.match(r, { name: chain[0], dir: `/shared/layers/${"a".repeat(64)}`, pending: true });
  t.same([s.ensured, s.proposed], [[], []], "nothing pulled or proposed before the answer");
  await t.rejects(s.remote.resolve({ key: `extract-1 ${chain[1]}`, parent: "", labels: own(1) }), /not the chain id/, "the chain is checked all the same");

  await s.remote.materialize(chain[0]!, own(0));
  t.same(s.ensured, [layers[0]!.diffID], "a missing layer is pulled");
  t.same(s.proposed, [`ref.hold snapshot:${chain[0]}`], "then pinned by the snapshot");
  await s.remote.materialize(chain[0]!, own(0));
  t.equal(s.proposed.length, 1, "a pinned snapshot proposes nothing more");
  await s.remote.materialize(chain[1]!, own(1));
  t.same(s.ensured, [layers[0]!.diffID], "a present layer is only pinned");
  t.equal(s.proposed.length, 2);
});

t.test("`wharf pull --containerd` pins an image's snapshots in one proposal; one by one if a layer went away", async (t) => {
  const s = setup();
  const snaps = [0, 1, 2].map((i) => ({ name: chain[i]!, diffID: layers[i]!.diffID }));
  for (const i of [0, 2]) s.state.layers.set(layers[i]!.diffID, { state: "present" });
  t.same(await s.remote.pin(snaps), chain.slice(0, 3), "all pinned");
  t.same(s.proposed, [`refs.hold ${chain.slice(0, 3).map((n) => `snapshot:${n}`).join(" ")}`], "in one entry");
  t.same(await s.remote.pin(snaps), [], "pinned ones propose nothing more");
  t.equal(s.proposed.length, 1);

  const later = setup();
  later.state.layers.set(layers[0]!.diffID, { state: "present" }); // layer c (2) went away
  t.same(await later.remote.pin(snaps), [chain[0], chain[1]], "the snapshots whose layers are there are pinned");
  t.same(later.proposed.slice(1), [0, 1, 2].map((i) => `ref.hold snapshot:${chain[i]}`), "one by one after the refusal");
  t.notOk(later.state.refs.has(`agent-1 snapshot:${chain[2]}`), "the one whose layer is gone stays pending");
});
