// Raft messages on the wire: JSON with byte fields in base64, validated with
// zod on the way in. A peer's message is untrusted input: anything malformed
// or oversized is refused with an error, never thrown into the core.

import { z } from "zod";
import { type Entry, type Message, NETWORK_MESSAGE_TYPES, type Snapshot } from "../raft/index.js";

/** Upper bound of one frame on a Raft stream (a snapshot travels in one frame). */
export const MAX_FRAME_BYTES = 64 << 20;

const b64 = z.string().max(MAX_FRAME_BYTES).regex(/^[A-Za-z0-9+/]*={0,2}$/, "not base64");
const nodeId = z.string().min(1).max(128);
const index = z.number().int().nonnegative();

const entrySchema = z.object({
  term: index,
  index,
  type: z.enum(["normal", "conf"]),
  data: b64,
});

const confStateSchema = z.object({
  voters: z.array(nodeId).max(1000),
  learners: z.array(nodeId).max(100_000),
});

const snapshotSchema = z.object({
  meta: z.object({ index, term: index, confState: confStateSchema }),
  data: b64,
});

const messageSchema = z.object({
  type: z.enum(NETWORK_MESSAGE_TYPES),
  from: nodeId,
  to: nodeId,
  term: index,
  logTerm: index.optional(),
  index: index.optional(),
  entries: z.array(entrySchema).max(100_000).optional(),
  commit: index.optional(),
  snapshot: snapshotSchema.optional(),
  reject: z.boolean().optional(),
  rejectHint: index.optional(),
  context: z.string().max(1024).optional(),
});

type WireEntry = z.infer<typeof entrySchema>;

const enc = new TextEncoder();
const dec = new TextDecoder();

function toWireEntry(e: Entry): WireEntry {
  return { term: e.term, index: e.index, type: e.type, data: Buffer.from(e.data).toString("base64") };
}

function fromWireEntry(e: WireEntry): Entry {
  return { term: e.term, index: e.index, type: e.type, data: new Uint8Array(Buffer.from(e.data, "base64")) };
}

export function encodeMessage(m: Message): Uint8Array {
  const wire = {
    ...m,
    ...(m.entries ? { entries: m.entries.map(toWireEntry) } : {}),
    ...(m.snapshot ? { snapshot: { meta: m.snapshot.meta, data: Buffer.from(m.snapshot.data).toString("base64") } } : {}),
  };
  return enc.encode(JSON.stringify(wire));
}

export class MalformedMessageError extends Error {
  override readonly name = "MalformedMessageError";
  readonly code = "MALFORMED_PEER_MESSAGE";
}

/** Decodes and validates one frame; throws MalformedMessageError on anything else. */
export function decodeMessage(frame: Uint8Array): Message {
  if (frame.length > MAX_FRAME_BYTES) throw new MalformedMessageError(`frame of ${frame.length} bytes is too large`);
  let raw: unknown;
  try {
    raw = JSON.parse(dec.decode(frame));
  } catch {
    throw new MalformedMessageError("frame is not JSON");
  }
  const r = messageSchema.safeParse(raw);
  if (!r.success) throw new MalformedMessageError(`invalid Raft message: ${r.error.issues[0]?.message ?? "?"}`);
  const w = r.data;
  const snapshot: Snapshot | undefined = w.snapshot
    ? { meta: w.snapshot.meta, data: new Uint8Array(Buffer.from(w.snapshot.data, "base64")) }
    : undefined;
  const { entries: _e, snapshot: _s, ...rest } = w;
  return {
    ...rest,
    ...(w.entries ? { entries: w.entries.map(fromWireEntry) } : {}),
    ...(snapshot ? { snapshot } : {}),
  };
}
