// The replicated state machine. Every agent applies the same log to it and
// gets the same state: apply is deterministic, and time inside it comes from
// the entry (the proposer's clock), never from the applying agent's.
//
// Commands are validated with zod before they are proposed and again when
// they are applied (an entry is input from the log, which peers wrote).

import { z } from "zod";

const nodeId = z.string().min(1).max(128);
const digest = z.string().regex(/^sha256:[0-9a-f]{64}$/);
/** What holds layers within an agent, besides images (e.g. "snapshot:NAME"). */
const refHolder = z.string().min(1).max(512);
const reference = z.string().min(1).max(512);
const platform = z.object({ os: z.string().max(64), architecture: z.string().max(64), variant: z.string().max(64).optional() });

export const commandSchema = z.discriminatedUnion("type", [
  /** An agent's addresses, so that every member can dial it. */
  z.object({ type: z.literal("member"), id: nodeId, addrs: z.array(z.string().max(256)).max(16) }),
  /** A plain register, for tests and benchmarks of the metadata plane. */
  z.object({ type: z.literal("put"), key: z.string().min(1).max(256), value: z.string().max(1 << 20) }),
  /**
   * The metadata phase of a pull (Wharf's claim). Applied, it answers exactly
   * one of: present; pulled by another agent (the caller waits for the
   * commit); queued (no worker free on the caller: registered as waiting so
   * that an idle agent takes it); or master, with a fencing attempt number.
   * `source` says where the blob comes from, so that any agent can pull it.
   */
  z.object({
    type: z.literal("layer.claim"),
    diffID: digest,
    agent: nodeId,
    source: z.object({
      repository: reference,
      blob: digest,
      size: z.number().int().nonnegative(),
      mediaType: z.string().max(256),
    }),
    queued: z.boolean(),
    /** An idle agent taking a queued or orphaned transfer: master or nothing, never a waiter. */
    steal: z.boolean().optional(),
    leaseMs: z.number().int().positive().max(600_000),
  }),
  /** Renews every lease the agent holds (its transfers, its deletions). */
  z.object({ type: z.literal("lease"), agent: nodeId, leaseMs: z.number().int().positive().max(600_000) }),
  /** The commit phase: the layer is in place; only the current attempt may say so. */
  z.object({
    type: z.literal("layer.commit"),
    diffID: digest,
    agent: nodeId,
    attempt: z.number().int().positive(),
    unpacked: z.number().int().nonnegative(),
  }),
  /**
   * The master gave up. With `error` (the layer itself is bad: digest
   * mismatch, hostile archive) the waiters fail with it; without, the
   * transfer goes back to the queue for another agent.
   */
  z.object({
    type: z.literal("layer.abort"),
    diffID: digest,
    agent: nodeId,
    attempt: z.number().int().positive(),
    error: z.object({ code: z.string().max(64), message: z.string().max(2048) }).optional(),
  }),
  /**
   * First step of deleting a layer: refused while anything references it or
   * while it is being pulled; once applied the layer counts as absent for
   * every reader and cannot be claimed, and `agent` (under its lease)
   * removes the directory, then proposes `layer.deleted`. If its lease runs
   * out first, another agent takes the deletion over.
   */
  z.object({ type: z.literal("layer.delete"), diffID: digest, agent: nodeId, leaseMs: z.number().int().positive().max(600_000) }),
  z.object({ type: z.literal("layer.deleted"), diffID: digest, agent: nodeId }),
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
  /**
   * A reference of `agent` other than an image (a containerd snapshot, a
   * container) pins `layers`; `holder` names it within the agent.
   */
  z.object({ type: z.literal("ref.hold"), agent: nodeId, holder: refHolder, layers: z.array(digest).max(1024) }),
  /**
   * Several such references at once (the snapshots of an image registered
   * in a containerd: one entry, where one per snapshot made the log and
   * the cluster's Raft traffic several times longer). All or none: refused
   * if any of their layers is not present.
   */
  z.object({
    type: z.literal("refs.hold"),
    agent: nodeId,
    refs: z.array(z.object({ holder: refHolder, layers: z.array(digest).max(1024) })).min(1).max(1024),
  }),
  z.object({ type: z.literal("ref.release"), agent: nodeId, holder: refHolder }),
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

export type ClaimAnswer =
  | { readonly kind: "present" }
  | { readonly kind: "master"; readonly attempt: number }
  | { readonly kind: "pulling"; readonly by: string; readonly leaseUntil: number }
  | { readonly kind: "queued" }
  | { readonly kind: "deleting"; readonly by: string; readonly leaseUntil: number };

export type ApplyResult =
  | { readonly ok: true; readonly index: number; readonly claim?: ClaimAnswer }
  | { readonly ok: false; readonly code: "NOT_FOUND" | "BUSY" | "INVALID_ARGUMENT"; readonly error: string };

export interface LayerRecord {
  readonly blob: string;
  readonly size: number;
  readonly unpacked: number;
  readonly state: "present" | "deleting";
  readonly committedAt: number;
  /** The agent whose attempt committed it. */
  readonly by: string;
  /**
   * The transfer's attempt that committed it: every attempt before it was a
   * master that died, was cut off, or lost its lease mid-transfer.
   */
  readonly attempt?: number | undefined;
  /** The agent removing it (state "deleting"), under its lease. */
  readonly deleter?: string | undefined;
}

export interface LayerSource {
  readonly repository: string;
  readonly blob: string;
  readonly size: number;
  readonly mediaType: string;
}

/**
 * A layer being pulled (Wharf's running and waiting transfers). `owner` is
 * the master ("" while queued: nobody pulls it yet); `attempt` fences
 * commits and aborts of masters whose lease ran out; `waiters` are the
 * agents that want the layer.
 */
export interface TransferRecord {
  readonly source: LayerSource;
  readonly owner: string;
  readonly attempt: number;
  readonly waiters: readonly string[];
  readonly since: number;
}

/** Why the last attempt at a layer failed for good (waiters fail with it). */
export interface LayerFailure {
  readonly code: string;
  readonly message: string;
  readonly at: number;
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
  by: z.string(),
  attempt: z.number().optional(),
  deleter: z.string().optional(),
});
const transferRecord = z.object({
  source: z.object({ repository: z.string(), blob: z.string(), size: z.number(), mediaType: z.string() }),
  owner: z.string(),
  attempt: z.number(),
  waiters: z.array(z.string()),
  since: z.number(),
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
  /** "<agent> <holder>" → layers pinned by a reference other than an image. */
  refs = new Map<string, readonly string[]>();
  /** diffID → the pull of that layer in progress. */
  transfers = new Map<string, TransferRecord>();
  /** Agent → end of its lease (proposer's clock, ms since the epoch). */
  leases = new Map<string, number>();
  /** diffID → the error its last master gave up with. */
  failures = new Map<string, LayerFailure>();
  /**
   * Agents removed from the cluster. A command of theirs still in flight when
   * they were removed (a hold, a claim) is refused when it applies: nothing
   * may pin a layer or own a transfer for an agent that is gone.
   */
  departed = new Set<string>();
  applied = 0;
  /** Called with the diffID of every layer an applied command touched (local wake-ups). */
  onLayer: ((diffID: string) => void) | undefined;

  /** Whether `agent` holds a live lease at time `at`. */
  leaseValid(agent: string, at: number): boolean {
    return (this.leases.get(agent) ?? 0) > at;
  }

  /** Whether an image still pins the layer (Wharf's global reference count > 0). */
  referenced(diffID: string): string | undefined {
    for (const [ref, img] of this.images) if (img.layers.includes(diffID)) return ref;
    for (const [holder, layers] of this.refs) if (layers.includes(diffID)) return holder;
    return undefined;
  }

  apply(index: number, env: Envelope): ApplyResult {
    this.applied = index;
    const c = env.cmd;
    const actor = c.type === "image.hold" ? c.holder : "agent" in c ? c.agent : undefined;
    if (actor !== undefined && this.departed.has(actor) && c.type !== "ref.release" && c.type !== "image.release") {
      return { ok: false, code: "NOT_FOUND", error: `${actor} is no longer a member of the cluster` };
    }
    switch (c.type) {
      case "member":
        this.members.set(c.id, { addrs: c.addrs, since: this.members.get(c.id)?.since ?? env.at });
        return { ok: true, index };
      case "put":
        this.kv.set(c.key, c.value);
        return { ok: true, index };
      case "layer.claim":
        return { ok: true, index, claim: this.claim(c, env.at) };
      case "lease":
        this.leases.set(c.agent, Math.max(this.leases.get(c.agent) ?? 0, env.at + c.leaseMs));
        return { ok: true, index };
      case "layer.commit": {
        const t = this.transfers.get(c.diffID);
        if (this.layers.get(c.diffID)?.state === "present") return { ok: true, index };
        if (!t || t.owner !== c.agent || t.attempt !== c.attempt) {
          return { ok: false, code: "BUSY", error: `attempt ${c.attempt} of ${c.agent} at ${c.diffID} is stale` };
        }
        this.layers.set(c.diffID, { blob: t.source.blob, size: t.source.size, unpacked: c.unpacked, state: "present", committedAt: env.at, by: c.agent, attempt: c.attempt });
        this.transfers.delete(c.diffID);
        this.failures.delete(c.diffID);
        this.onLayer?.(c.diffID);
        return { ok: true, index };
      }
      case "layer.abort": {
        const t = this.transfers.get(c.diffID);
        if (!t || t.owner !== c.agent || t.attempt !== c.attempt) {
          return { ok: false, code: "BUSY", error: `attempt ${c.attempt} of ${c.agent} at ${c.diffID} is stale` };
        }
        if (c.error) {
          this.transfers.delete(c.diffID);
          this.failures.set(c.diffID, { ...c.error, at: env.at });
        } else {
          this.transfers.set(c.diffID, { ...t, owner: "" });
        }
        this.onLayer?.(c.diffID);
        return { ok: true, index };
      }
      case "layer.delete": {
        const l = this.layers.get(c.diffID);
        if (!l) return { ok: false, code: "NOT_FOUND", error: `no layer ${c.diffID}` };
        const by = this.referenced(c.diffID);
        if (by !== undefined) return { ok: false, code: "BUSY", error: `layer ${c.diffID} is used by ${by}` };
        if (l.state === "deleting" && l.deleter !== c.agent && this.leaseValid(l.deleter ?? "", env.at)) {
          return { ok: false, code: "BUSY", error: `layer ${c.diffID} is being deleted by ${l.deleter}` };
        }
        this.leases.set(c.agent, Math.max(this.leases.get(c.agent) ?? 0, env.at + c.leaseMs));
        this.layers.set(c.diffID, { ...l, state: "deleting", deleter: c.agent });
        this.onLayer?.(c.diffID);
        return { ok: true, index };
      }
      case "layer.deleted": {
        const l = this.layers.get(c.diffID);
        if (!l || l.state !== "deleting" || l.deleter !== c.agent) {
          return { ok: false, code: "BUSY", error: `${c.agent} is not deleting ${c.diffID}` };
        }
        this.layers.delete(c.diffID);
        this.onLayer?.(c.diffID);
        return { ok: true, index };
      }
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
      case "ref.hold":
      case "refs.hold": {
        const refs = c.type === "ref.hold" ? [c] : c.refs;
        const missing = refs.flatMap((r) => r.layers).find((d) => this.layers.get(d)?.state !== "present");
        if (missing !== undefined) return { ok: false, code: "BUSY", error: `layer ${missing} is not present` };
        for (const r of refs) this.refs.set(`${c.agent} ${r.holder}`, r.layers);
        return { ok: true, index };
      }
      case "ref.release":
        this.refs.delete(`${c.agent} ${c.holder}`);
        return { ok: true, index };
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

  private claim(c: Extract<Command, { type: "layer.claim" }>, at: number): ClaimAnswer {
    const l = this.layers.get(c.diffID);
    if (l?.state === "present") return { kind: "present" };
    if (l?.state === "deleting") return { kind: "deleting", by: l.deleter ?? "", leaseUntil: this.leases.get(l.deleter ?? "") ?? 0 };
    const t = this.transfers.get(c.diffID);
    const wants = c.steal !== true;
    const waiters = !t ? (wants ? [c.agent] : []) : wants && !t.waiters.includes(c.agent) ? [...t.waiters, c.agent].sort() : t.waiters;
    if (c.steal === true && (!t || (t.owner !== "" && this.leaseValid(t.owner, at)))) return { kind: "queued" };
    if (t && t.owner !== "" && t.owner !== c.agent && this.leaseValid(t.owner, at)) {
      this.transfers.set(c.diffID, { ...t, waiters });
      return { kind: "pulling", by: t.owner, leaseUntil: this.leases.get(t.owner)! };
    }
    if (t && t.owner === c.agent && this.leaseValid(c.agent, at)) return { kind: "master", attempt: t.attempt };
    if (c.queued) {
      // Waiting (no free worker on the caller): an idle agent may take it.
      this.transfers.set(c.diffID, t ? { ...t, owner: "", waiters } : { source: c.source, owner: "", attempt: 0, waiters, since: at });
      this.onLayer?.(c.diffID);
      return { kind: "queued" };
    }
    // Master: a new attempt (fencing any earlier master whose lease ran out).
    this.leases.set(c.agent, Math.max(this.leases.get(c.agent) ?? 0, at + c.leaseMs));
    this.failures.delete(c.diffID);
    this.transfers.set(c.diffID, { source: t?.source ?? c.source, owner: c.agent, attempt: (t?.attempt ?? 0) + 1, waiters, since: t?.since ?? at });
    this.onLayer?.(c.diffID);
    return { kind: "master", attempt: (t?.attempt ?? 0) + 1 };
  }

  /**
   * A member left the cluster: it waits for nothing any more, and its holds
   * on images are released (a restart keeps them: only removal drops them).
   * Its transfers stay its own until its lease runs out, as a dead master's
   * do: it may still be writing (it fences itself by the same lease, and it
   * can renew it no more), so nobody else may start before then.
   */
  removeMember(id: string): void {
    this.members.delete(id);
    this.departed.add(id);
    for (const [d, t] of this.transfers) {
      const waiters = t.waiters.filter((w) => w !== id);
      if (waiters.length === t.waiters.length) continue;
      if (waiters.length === 0 && t.owner !== id) this.transfers.delete(d);
      else this.transfers.set(d, { ...t, waiters });
      this.onLayer?.(d);
    }
    for (const key of [...this.refs.keys()]) if (key.startsWith(`${id} `)) this.refs.delete(key);
    for (const [ref, img] of this.images) {
      if (!img.holders.includes(id)) continue;
      const holders = img.holders.filter((h) => h !== id);
      if (holders.length === 0) this.images.delete(ref);
      else this.images.set(ref, { ...img, holders });
    }
  }

  encode(): Uint8Array {
    return new TextEncoder().encode(
      JSON.stringify({
        applied: this.applied,
        members: [...this.members],
        kv: [...this.kv],
        layers: [...this.layers],
        images: [...this.images],
        refs: [...this.refs],
        transfers: [...this.transfers],
        leases: [...this.leases],
        failures: [...this.failures],
        departed: [...this.departed],
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
        refs: z.array(z.tuple([z.string(), z.array(z.string())])).default([]),
        transfers: z.array(z.tuple([z.string(), transferRecord])).default([]),
        leases: z.array(z.tuple([z.string(), z.number()])).default([]),
        failures: z.array(z.tuple([z.string(), z.object({ code: z.string(), message: z.string(), at: z.number() })])).default([]),
        departed: z.array(z.string()).default([]),
      })
      .parse(JSON.parse(new TextDecoder().decode(b)));
    s.applied = v.applied;
    s.members = new Map(v.members);
    s.kv = new Map(v.kv);
    s.layers = new Map(v.layers);
    s.images = new Map(v.images);
    s.refs = new Map(v.refs);
    s.transfers = new Map(v.transfers);
    s.leases = new Map(v.leases);
    s.failures = new Map(v.failures);
    s.departed = new Set(v.departed);
    return s;
  }
}
