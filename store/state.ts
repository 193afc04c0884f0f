// The replicated state machine. Every agent applies the same log to it and
// gets the same state: apply is deterministic, and time inside it comes from
// the entry (the proposer's clock), never from the applying agent's.
//
// Commands are validated with zod before they are proposed and again when
// they are applied (an entry is input from the log, which peers wrote).

import { z } from "zod";

const nodeId = z.string().min(1).max(128);

export const commandSchema = z.discriminatedUnion("type", [
  /** An agent's addresses, so that every member can dial it. */
  z.object({ type: z.literal("member"), id: nodeId, addrs: z.array(z.string().max(256)).max(16) }),
  /** A plain register, for tests and benchmarks of the metadata plane. */
  z.object({ type: z.literal("put"), key: z.string().min(1).max(256), value: z.string().max(1 << 20) }),
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

export type ApplyResult = { readonly ok: true; readonly index: number } | { readonly ok: false; readonly error: string };

export class ClusterState {
  members = new Map<string, MemberRecord>();
  kv = new Map<string, string>();
  applied = 0;

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
    }
  }

  removeMember(id: string): void {
    this.members.delete(id);
  }

  encode(): Uint8Array {
    return new TextEncoder().encode(
      JSON.stringify({ applied: this.applied, members: [...this.members], kv: [...this.kv] }),
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
      })
      .parse(JSON.parse(new TextDecoder().decode(b)));
    s.applied = v.applied;
    s.members = new Map(v.members);
    s.kv = new Map(v.kv);
    return s;
  }
}
