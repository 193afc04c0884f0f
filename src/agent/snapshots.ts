// The agent's side of containerd's remote-snapshotter protocol: a Prepare
// that names a layer (by its chain id, with where it comes from) is answered
// from the shared store. The layer is made present cooperatively (claimed,
// pulled by whichever agent is master, or found present), the snapshot pins
// it in the replicated state, and containerd never downloads it.
//
// Where a layer comes from, in order:
//  - our own label `containerd.io/snapshot/wharf.layer` (set by `wharf pull --containerd`);
//  - CRI's labels `containerd.io/snapshot/cri.image-ref` and `cri.layer-digest`
//    (Kubernetes pulls): the image is resolved once and the layer found in it,
//    and all of its layers are pulled at once (see `prefetch`).

import type { Logger } from "pino";
import { z } from "zod";
import { LAYER_LABEL, REF_LABEL, chainIDs } from "../containerd/register.js";
import { WharfError } from "../errors.js";
import type { LayerStore } from "../layers/store.js";
import type { Platform, RegistryClient, ResolvedImage } from "../registry/client.js";
import { formatReference, formatRepository, parseReference } from "../registry/reference.js";
import type { RemoteRequest, RemoteSnapshot } from "../snapshotter/overlay.js";
import type { Puller } from "./pull.js";
import type { RaftNode } from "./raftnode.js";

const CRI_IMAGE = "containerd.io/snapshot/cri.image-ref";
const CRI_LAYER = "containerd.io/snapshot/cri.layer-digest";
const digest = z.string().regex(/^sha256:[0-9a-f]{64}$/);
const layerLabel = z.object({
  diffID: digest,
  repository: z.string().min(1).max(512),
  blob: digest,
  size: z.number().int().nonnegative(),
  mediaType: z.string().max(256),
});

export interface RemoteLayersOptions {
  readonly id: string;
  readonly node: RaftNode;
  readonly puller: Puller;
  readonly store: LayerStore;
  readonly registry: RegistryClient;
  readonly platform?: Platform;
  readonly log: Logger;
  readonly signal: AbortSignal;
}

/** How a snapshot `name` of this host holds its layer, within the agent, in the replicated state. */
const snapshotRef = (name: string): string => `snapshot:${name}`;

export class RemoteLayers {
  /** Images resolved for CRI's labels, by reference (a pull Prepares every layer of one image). */
  private readonly resolved = new Map<string, Promise<ResolvedImage>>();

  constructor(private readonly o: RemoteLayersOptions) {}

  /**
   * The snapshotter's `resolveRemote`: undefined when the labels do not say
   * where the layer comes from. A layer named by our own label (`wharf pull
   * --containerd` registering an image beside its pull) is answered at once,
   * pending: the pull makes it present and pins it, and anything mounted
   * above it waits for `materialize`. One named by CRI's labels is present
   * and pinned before the answer, so that a CRI pull ends with its layers
   * in place.
   */
  async resolve(req: RemoteRequest): Promise<RemoteSnapshot | undefined> {
    const name = req.labels[REF_LABEL];
    if (!name) return undefined;
    const layer = await this.describe(req.labels, name);
    if (!layer) return undefined;
    // The name must be the chain id of this layer over the parent's chain.
    const expected = req.parent === "" ? layer.diffID : chainIDs([req.parent, layer.diffID]).at(-1)!;
    if (req.parent === "" ? name !== layer.diffID : name !== expected) {
      throw new WharfError("INVALID_ARGUMENT", `snapshot ${name} is not the chain id of layer ${layer.diffID} over ${req.parent || "nothing"}`);
    }
    const answer = { name, dir: this.o.store.layerPath(layer.diffID), labels: { ...req.labels } };
    if (req.labels[LAYER_LABEL] !== undefined) return { ...answer, pending: true };
    await this.present(name, layer);
    return answer;
  }

  /**
   * The snapshotter's `materialize`: the layer of the external snapshot
   * `name` present in the store and pinned by it (pulled cooperatively if
   * nobody has it).
   */
  async materialize(name: string, labels: Readonly<Record<string, string>>): Promise<void> {
    // Pinned: done, without describing the layer (CRI's labels would resolve
    // the image again, a registry round trip on a container's first mount).
    if (this.o.node.state.refs.has(this.holder(name))) return;
    const layer = await this.describe(labels, name);
    if (layer) await this.present(name, layer);
  }

  private async present(name: string, layer: z.infer<typeof layerLabel>): Promise<void> {
    // Pinned already (by `pin`, or an earlier Prepare): nothing to propose.
    // Only this agent releases its own holds, and a held layer cannot be
    // deleted, so what this agent's applied state shows here is still true.
    if (this.held(name, layer.diffID)) return;
    // Present a moment ago: the hold alone (refused if it went away since).
    if (this.o.node.state.layers.get(layer.diffID)?.state === "present" && (await this.holdOnce(name, layer.diffID))) return;
    const source = { repository: layer.repository, blob: layer.blob, size: layer.size, mediaType: layer.mediaType };
    await this.o.puller.ensureLayer(layer.diffID, source, this.o.signal);
    await this.hold(name, layer.diffID);
  }

  /**
   * Pins the snapshots of an image that `wharf pull --containerd` registered,
   * once their layers are present: one proposal for all of them. If a layer
   * went away in between, each is pinned on its own, and a snapshot whose
   * layer is gone stays pending (a mount above it makes the layer present
   * again). Returns the names pinned.
   */
  async pin(snapshots: readonly { name: string; diffID: string }[]): Promise<string[]> {
    const todo = snapshots.filter((x) => !this.held(x.name, x.diffID));
    if (todo.length === 0) return [];
    const refs = todo.map((x) => ({ holder: snapshotRef(x.name), layers: [x.diffID] }));
    const r = await this.o.node.propose({ type: "refs.hold", agent: this.o.id, refs }, AbortSignal.timeout(15_000));
    if (r.ok) return todo.map((x) => x.name);
    const pinned: string[] = [];
    for (const x of todo) if (await this.holdOnce(x.name, x.diffID)) pinned.push(x.name);
    return pinned;
  }

  /** The holder, in the replicated state, of this host's snapshot `name`. */
  private holder(name: string): string {
    return `${this.o.id} ${snapshotRef(name)}`;
  }

  private held(name: string, diffID: string): boolean {
    return this.o.node.state.refs.get(this.holder(name))?.includes(diffID) ?? false;
  }

  private async holdOnce(name: string, diffID: string): Promise<boolean> {
    const r = await this.o.node.propose({ type: "ref.hold", agent: this.o.id, holder: snapshotRef(name), layers: [diffID] }, AbortSignal.timeout(15_000));
    if (!r.ok) this.o.log.info({ snapshot: name, why: r.error }, "layer went away before the snapshot held it");
    return r.ok;
  }

  /** The snapshotter forgot an external snapshot: this host no longer pins its layer. */
  async removed(name: string): Promise<void> {
    const r = await this.o.node.propose({ type: "ref.release", agent: this.o.id, holder: snapshotRef(name) }, AbortSignal.timeout(15_000));
    if (!r.ok) this.o.log.warn({ snapshot: name, err: r.error }, "releasing a snapshot's layer failed");
  }

  private async hold(name: string, diffID: string): Promise<void> {
    // The layer was present a moment ago; a deletion in between makes the
    // hold fail, and the layer is made present again.
    for (let i = 0; i < 5; i++) if (await this.holdOnce(name, diffID)) return;
    throw new WharfError("BUSY", `could not pin layer ${diffID} for snapshot ${name}`);
  }

  /**
   * containerd's unpacker Prepares an image's layers one after another, each
   * Prepare waiting for its own layer: on its own, a CRI pull would fetch
   * one layer at a time. Once the image is resolved, every layer not present
   * is made present at once (claimed cooperatively, like a pull), and each
   * Prepare finds its layer present or under way. Failures are left to the
   * Prepare of that layer, which reports them.
   */
  private prefetch(img: ResolvedImage): void {
    for (const i of this.o.puller.spread(img.layers.length)) {
      const l = img.layers[i]!;
      if (this.o.node.state.layers.get(l.diffID)?.state === "present") continue;
      this.o.puller.ensureLayer(l.diffID, layerOf(img, l), this.o.signal).catch((e: unknown) => {
        this.o.log.debug({ image: img.reference, layer: l.diffID, err: (e as Error).message }, "prefetch of a layer failed");
      });
    }
  }

  private async describe(labels: Readonly<Record<string, string>>, name: string): Promise<z.infer<typeof layerLabel> | undefined> {
    const own = labels[LAYER_LABEL];
    if (own !== undefined) {
      let v: unknown;
      try {
        v = JSON.parse(own);
      } catch {
        throw new WharfError("INVALID_ARGUMENT", `label ${LAYER_LABEL} of ${name} is not JSON`);
      }
      const r = layerLabel.safeParse(v);
      if (!r.success) throw new WharfError("INVALID_ARGUMENT", `label ${LAYER_LABEL} of ${name}: ${r.error.issues[0]?.message}`);
      return r.data;
    }
    const imageRef = labels[CRI_IMAGE];
    const blob = labels[CRI_LAYER];
    if (!imageRef || !blob) return undefined;
    const ref = parseReference(imageRef);
    const key = formatReference(ref);
    let p = this.resolved.get(key);
    if (!p) {
      p = this.o.registry.resolve(ref, { signal: this.o.signal, ...(this.o.platform ? { platform: this.o.platform } : {}) });
      this.resolved.set(key, p);
      p.then(
        (img) => this.prefetch(img),
        () => this.resolved.delete(key),
      );
      // Tags move: forget the resolution after a while.
      setTimeout(() => this.resolved.delete(key), 60_000).unref();
    }
    const img = await p;
    const l = img.layers.find((x) => x.digest === blob);
    if (!l) throw new WharfError("NOT_FOUND", `layer ${blob} is not in ${img.reference}`);
    return layerOf(img, l);
  }
}

/** A layer of a resolved image, as a label would describe it: what to pull, from where. */
function layerOf(img: ResolvedImage, l: ResolvedImage["layers"][number]): z.infer<typeof layerLabel> {
  return { diffID: l.diffID, repository: formatRepository(img.repository), blob: l.digest, size: l.size, mediaType: l.mediaType };
}
