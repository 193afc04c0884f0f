// The Raft log, hard state and latest snapshot of one agent, in LevelDB.
//
// The core reads its storage synchronously, so the retained log (bounded by
// compaction) lives in a MemoryStorage as well; every write goes to LevelDB
// first, in one synced batch, and only then to memory. A process killed at
// any moment restarts with exactly what the last completed batch wrote.

import { ClassicLevel } from "classic-level";
import {
  type ConfState,
  type Entry,
  type HardState,
  MemoryStorage,
  type Snapshot,
} from "../raft/index.js";

type Db = ClassicLevel<string, Uint8Array>;
type BatchOp = { type: "put"; key: string; value: Uint8Array } | { type: "del"; key: string };

const HARD_STATE = "hs";
const SNAPSHOT = "snap";
const ENTRY_PREFIX = "e:";

function entryKey(index: number): string {
  return ENTRY_PREFIX + index.toString().padStart(16, "0");
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** term (8) · index (8) · type (1) · data */
export function encodeEntry(e: Entry): Uint8Array {
  const out = new Uint8Array(17 + e.data.length);
  const v = new DataView(out.buffer);
  v.setFloat64(0, e.term);
  v.setFloat64(8, e.index);
  v.setUint8(16, e.type === "conf" ? 1 : 0);
  out.set(e.data, 17);
  return out;
}

export function decodeEntry(b: Uint8Array): Entry {
  if (b.length < 17) throw new Error("truncated log entry");
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return { term: v.getFloat64(0), index: v.getFloat64(8), type: v.getUint8(16) === 1 ? "conf" : "normal", data: b.slice(17) };
}

/** meta length (4) · meta JSON · data */
export function encodeSnapshot(s: Snapshot): Uint8Array {
  const meta = enc.encode(JSON.stringify(s.meta));
  const out = new Uint8Array(4 + meta.length + s.data.length);
  new DataView(out.buffer).setUint32(0, meta.length);
  out.set(meta, 4);
  out.set(s.data, 4 + meta.length);
  return out;
}

export function decodeSnapshot(b: Uint8Array): Snapshot {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const n = v.getUint32(0);
  const meta = JSON.parse(dec.decode(b.subarray(4, 4 + n))) as Snapshot["meta"];
  return { meta, data: b.slice(4 + n) };
}

export interface PersistRequest {
  readonly hardState?: HardState;
  readonly entries: readonly Entry[];
  readonly snapshot?: Snapshot;
  /**
   * fsync before returning (default). Only a change of the commit index
   * alone may skip it: a lost commit index is learnt again from the leader.
   */
  readonly sync?: boolean;
}

export class LogStore {
  /** What the core reads: always equal to what LevelDB holds. */
  readonly mem = new MemoryStorage();

  private constructor(private readonly db: Db) {}

  static async open(dir: string): Promise<LogStore> {
    const db: Db = new ClassicLevel<string, Uint8Array>(dir, { keyEncoding: "utf8", valueEncoding: "view" });
    await db.open();
    const s = new LogStore(db);
    const snap = await db.get(SNAPSHOT);
    const entries: Entry[] = [];
    for await (const value of db.values({ gte: ENTRY_PREFIX, lt: ENTRY_PREFIX + "~" })) entries.push(decodeEntry(value));
    const hs = await db.get(HARD_STATE);
    s.mem.load(
      snap !== undefined ? decodeSnapshot(snap) : s.mem.snapshot(),
      hs !== undefined ? (JSON.parse(dec.decode(hs)) as HardState) : s.mem.hardState(),
      entries,
    );
    return s;
  }

  async close(): Promise<void> {
    await this.db.close();
  }

  /**
   * Persists what a Ready asks for in one synced batch (group commit), then
   * mirrors it in memory. Entries at indexes that exist replace them and
   * everything after them.
   */
  async persist(r: PersistRequest): Promise<void> {
    const ops: BatchOp[] = [];
    const mem = this.mem;
    if (r.snapshot) {
      ops.push({ type: "put", key: SNAPSHOT, value: encodeSnapshot(r.snapshot) });
      // A snapshot from the leader replaces the whole log.
      for (let i = mem.firstIndex() - 1; i <= mem.lastIndex(); i++) ops.push({ type: "del", key: entryKey(i) });
    }
    if (r.entries.length > 0) {
      for (const e of r.entries) ops.push({ type: "put", key: entryKey(e.index), value: encodeEntry(e) });
      const newLast = r.entries[r.entries.length - 1]!.index;
      const oldLast = r.snapshot ? r.snapshot.meta.index : mem.lastIndex();
      for (let i = newLast + 1; i <= oldLast; i++) ops.push({ type: "del", key: entryKey(i) });
    }
    if (r.hardState) ops.push({ type: "put", key: HARD_STATE, value: enc.encode(JSON.stringify(r.hardState)) });
    if (ops.length === 0) return;
    await this.db.batch(ops, { sync: r.sync ?? true });
    if (r.snapshot) mem.applySnapshot(r.snapshot);
    mem.append(r.entries);
    if (r.hardState) mem.setHardState(r.hardState);
  }

  /**
   * Records a snapshot of the state machine at applied index `index` and
   * compacts the log up to `index - keep` (a few entries are kept so that a
   * follower just behind does not need the whole snapshot). The entry at the
   * compaction point stays on disk: its term is still asked for.
   */
  async snapshot(index: number, confState: ConfState, data: Uint8Array, keep: number): Promise<void> {
    const mem = this.mem;
    const first = mem.firstIndex();
    const compactTo = Math.max(first - 1, index - keep);
    const snap: Snapshot = { meta: { index, term: mem.term(index), confState }, data };
    const ops: BatchOp[] = [{ type: "put", key: SNAPSHOT, value: encodeSnapshot(snap) }];
    for (let i = first - 1; i < compactTo; i++) ops.push({ type: "del", key: entryKey(i) });
    await this.db.batch(ops, { sync: true });
    mem.createSnapshot(index, confState, data);
    mem.compact(compactTo);
  }

  /** Small records of the agent beside the log (identity, cluster id). */
  async getMeta(key: string): Promise<string | undefined> {
    const v = await this.db.get(`m:${key}`);
    return v === undefined ? undefined : dec.decode(v);
  }

  async putMeta(key: string, value: string): Promise<void> {
    await this.db.put(`m:${key}`, enc.encode(value), { sync: true });
  }
}
