// Registering an image that wharf pulled in a containerd, so that
// `ctr run --snapshotter wharf REF` starts it at once: what containerd's
// unpacker does, minus the downloads.

import { createHash, randomBytes } from "node:crypto";
import { WharfError } from "../errors.js";
import type { ContainerdClient } from "./client.js";

/** The label carrying, to our snapshotter, where a layer comes from (only containerd.io/snapshot/ labels reach it). */
export const LAYER_LABEL = "containerd.io/snapshot/wharf.layer";
/** The remote-snapshotter label: the committed snapshot's name (the layer's chain id). */
export const REF_LABEL = "containerd.io/snapshot.ref";

export interface RegisteredLayer {
  readonly diffID: string;
  readonly blob: string;
  readonly size: number;
  readonly mediaType: string;
}

export interface RegisteredImage {
  readonly reference: string;
  readonly repository: string;
  readonly manifestDigest: string;
  readonly manifestMediaType: string;
  readonly manifest: Buffer;
  readonly configDigest: string;
  readonly config: Buffer;
  readonly layers: readonly RegisteredLayer[];
}

/** chainID(1) = diffID(1); chainID(n) = sha256(chainID(n-1) + " " + diffID(n)). */
export function chainIDs(diffIDs: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIDs) {
    const prev = out.at(-1);
    out.push(prev === undefined ? d : `sha256:${createHash("sha256").update(`${prev} ${d}`).digest("hex")}`);
  }
  return out;
}

/**
 * Stores the manifest and config in containerd's content store (labelled so
 * that containerd's garbage collector keeps the config, and through it the
 * top snapshot and its parents), creates the image record, and prepares each
 * layer's snapshot, in chain order, with the remote-snapshotter labels: our
 * snapshotter commits the shared layer under its chain id and answers
 * "already exists" (at once: the layer may still be on its way).
 */
export function registerImage(c: ContainerdClient, snapshotter: string, img: RegisteredImage): Promise<string[]> {
  // Under a lease, as containerd's own pull: a GC pass in between must not
  // collect the content or snapshots before the image record holds them.
  return c.withLease(() => register(c, snapshotter, img));
}

async function register(c: ContainerdClient, snapshotter: string, img: RegisteredImage): Promise<string[]> {
  const chain = chainIDs(img.layers.map((l) => l.diffID));
  const top = chain.at(-1);
  await c.putContent(img.configDigest, img.config, top ? { [`containerd.io/gc.ref.snapshot.${snapshotter}`]: top } : {});
  const layerRefs = Object.fromEntries(img.layers.map((l, i) => [`containerd.io/gc.ref.content.l.${i}`, l.blob]));
  await c.putContent(img.manifestDigest, img.manifest, { "containerd.io/gc.ref.content.config": img.configDigest, ...layerRefs });
  await c.putImage(img.reference, { mediaType: img.manifestMediaType, digest: img.manifestDigest, size: img.manifest.length });
  for (const [i, l] of img.layers.entries()) {
    const id = chain[i]!;
    // A snapshot containerd has already is answered "already exists" by
    // containerd itself (it checks the ref label's target first).
    const key = `extract-${process.hrtime.bigint()}-${randomBytes(4).toString("base64url")} ${id}`;
    const labels = {
      [REF_LABEL]: id,
      [LAYER_LABEL]: JSON.stringify({ diffID: l.diffID, repository: img.repository, blob: l.blob, size: l.size, mediaType: l.mediaType }),
    };
    const r = await c.prepareRemote(snapshotter, key, i === 0 ? "" : chain[i - 1]!, labels);
    if (r === "prepared") {
      // The snapshotter did not take the layer from the shared store (not wharf's?).
      await c.removeSnapshot(snapshotter, key).catch(() => {});
      throw new WharfError("INVALID_ARGUMENT", `snapshotter ${snapshotter} of ${c.socket} did not take layer ${l.diffID} from the shared store: is it wharf?`);
    }
  }
  return chain;
}
