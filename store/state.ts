// The replicated state machine. Every agent applies the same log to it and
// gets the same state: apply is deterministic, and time inside it comes from
// the entry (the proposer's clock), never from the applying agent's.
//
// Commands are validated with zod before they are proposed and again when
// they are applied (an entry is input from the log, which peers wrote).

import { z } from "zod";

const nodeId = z.string().min(1).max(128);
const digest = z.string().regex(/^sha256:[0-9a-f]{64}$/);
const reference = z.string().min(1).max(512);
const platform = z.object({ os: z.string().max(64), architecture: z.string().max(64), variant: z.string().max(64).optional() });

export const commandSchema = z.discriminatedUnion("type", [
  /** An agent's addresses, so that every member can dial it. */
  z.object({ type: z.literal("member"), id: nodeId, addrs: z.array(z.string().max(256)).max(16) }),
  /** A plain register, for tests and benchmarks of the metadata plane. */
  z.object({ type: z.literal("put"), key: z.string().min(1).max(256), value: z.string().max(1 << 20) }),
  /** A layer was extracted, verified and renamed into layers/ of the shared store. */
  z.object({
    type: z.literal("layer.present"),
    diffID: digest,
    blob: digest,
    size: z.number().int().nonnegative(),
    unpacked: z.number().int().nonnegative(),
  }),
  /**
   * First step of deleting a layer: refused while anything references it;
   * once applied, the layer counts as absent for every reader, and the
   * deleting agent removes the directory, then proposes `layer.deleted`.
   */
  z.object({ type: z.literal("layer.delete"), diffID: digest }),
  z.object({ type: z.literal("layer.deleted"), diffID: digest }),
  /** `holder` (an agent) holds the image: it pins every layer of it. */
  z.object({
    type: z.literal("image.hold"),
    ref: reference,
    holder: nodeId,
    manifestDigest: digest,
    configDigest: digest,
    platform,
    layers: z.array(digest).max(1024),
  }),
  z.object({ type: z.literal("image.release"), ref: reference, holder: nodeId }),
]);

export type Command = z.infer<typeof commandSchema>;

export const envelopeSchema = z.object({
  /** Request id: the proposer matches the applied entry to its waiting caller. */
  rid: z.string().min(1).max(64),
  /** Proposal time (ms since the epoch) on the proposer's clock. */
  at: z.number().int().nonnegative(),
  cmd: commandSchema,
});

export type Envelope = z.infer<typeof envelopeSchema>;

export interface MemberRecord {
  readonly addrs: readonly string[];
  readonly since: number;
}

export type ApplyResult =
  | { readonly ok: true; readonly index: number }
  | { readonly ok: false; readonly code: "NOT_FOUND" | "BUSY" | "INVALID_ARGUMENT"; readonly error: string };

export interface LayerRecord {
  readonly blob: string;
  readonly size: number;
  readonly unpacked: number;
  readonly state: "present" | "deleting";
  readonly committedAt: number;
}

export interface ImageRecord {
  readonly manifestDigest: string;
  readonly configDigest: string;
  readonly platform: { os: string; architecture: string; variant?: string | undefined };
  readonly layers: readonly string[];
  readonly holders: readonly string[];
  readonly since: number;
}

const layerRecord = z.object({
  blob: z.string(),
  size: z.number(),
  unpacked: z.number(),
  state: z.enum(["present", "deleting"]),
  committedAt: z.number(),
});
const imageRecord = z.object({
  manifestDigest: z.string(),
  configDigest: z.string(),
  platform,
  layers: z.array(z.string()),
  holders: z.array(z.string()),
  since: z.number(),
});

export class ClusterState {
  members = new Map<string, MemberRecord>();
  kv = new Map<string, string>();
  /** diffID → layer in the shared store. */
  layers = new Map<string, LayerRecord>();
  /** Normalised reference → image, with the agents holding it. */
  images = new Map<string, ImageRecord>();
  applied = 0;

  /** Whether an image still pins the layer (Wharf's global reference count > 0). */
  referenced(diffID: string): string | undefined {
    for (const [ref, img] of this.images) if (img.layers.includes(diffID)) return ref;
    return undefined;
  }

  apply(index: number, env: Envelope): ApplyResult {
    this.applied = index;
    const c = env.cmd;
    switch (c.type) {
      case "member":
        this.members.set(c.id, { addrs: c.addrs, since: this.members.get(c.id)?.since ?? env.at });
        return { ok: true, index };
      case "put":
        this.kv.set(c.key, c.value);
        return { ok: true, index };
      case "layer.present":
        if (this.layers.get(c.diffID)?.state === "deleting") {
          return { ok: false, code: "BUSY", error: `layer ${c.diffID} is being deleted` };
        }
        if (!this.layers.has(c.diffID)) {
          this.layers.set(c.diffID, { blob: c.blob, size: c.size, unpacked: c.unpacked, state: "present", committedAt: env.at });
        }
        return { ok: true, index };
      case "layer.delete": {
        const l = this.layers.get(c.diffID);
        if (!l) return { ok: false, code: "NOT_FOUND", error: `no layer ${c.diffID}` };
        const by = this.referenced(c.diffID);
        if (by !== undefined) return { ok: false, code: "BUSY", error: `layer ${c.diffID} is used by ${by}` };
        this.layers.set(c.diffID, { ...l, state: "deleting" });
        return { ok: true, index };
      }
      case "layer.deleted":
        this.layers.delete(c.diffID);
        return { ok: true, index };
      case "image.hold": {
        const missing = c.layers.find((d) => this.layers.get(d)?.state !== "present");
        if (missing !== undefined) return { ok: false, code: "BUSY", error: `layer ${missing} of ${c.ref} is not present` };
        const old = this.images.get(c.ref);
        const holders = old && old.manifestDigest === c.manifestDigest ? old.holders.filter((h) => h !== c.holder) : [];
        // A tag that moved to another manifest: the holders of the old one
        // keep nothing under this name (their layers stay until released).
        this.images.set(c.ref, {
          manifestDigest: c.manifestDigest,
          configDigest: c.configDigest,
          platform: c.platform,
          layers: c.layers,
          holders: [...holders, c.holder].sort(),
          since: old?.since ?? env.at,
        });
        return { ok: true, index };
      }
      case "image.release": {
        const img = this.images.get(c.ref);
        if (!img || !img.holders.includes(c.holder)) {
          return { ok: false, code: "NOT_FOUND", error: `${c.holder} holds no image ${c.ref}` };
        }
        const holders = img.holders.filter((h) => h !== c.holder);
        if (holders.length === 0) this.images.delete(c.ref);
        else this.images.set(c.ref, { ...img, holders });
        return { ok: true, index };
      }
    }
  }

  removeMember(id: string): void {
    this.members.delete(id);
  }

  encode(): Uint8Array {
    return new TextEncoder().encode(
      JSON.stringify({
        applied: this.applied,
        members: [...this.members],
        kv: [...this.kv],
        layers: [...this.layers],
        images: [...this.images],
      }),
    );
  }

  static decode(b: Uint8Array): ClusterState {
    const s = new ClusterState();
    if (b.length === 0) return s;
    const v = z
      .object({
        applied: z.number(),
        members: z.array(z.tuple([z.string(), z.object({ addrs: z.array(z.string()), since: z.number() })])),
        kv: z.array(z.tuple([z.string(), z.string()])),
        layers: z.array(z.tuple([z.string(), layerRecord])).default([]),
        images: z.array(z.tuple([z.string(), imageRecord])).default([]),
      })
      .parse(JSON.parse(new TextDecoder().decode(b)));
    s.applied = v.applied;
    s.members = new Map(v.members);
    s.kv = new Map(v.kv);
    s.layers = new Map(v.layers);
    s.images = new Map(v.images);
    return s;
  }
}
