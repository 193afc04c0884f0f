import { RaftError } from "./errors.js";
import {
  type ConfState,
  type Entry,
  type HardState,
  type Snapshot,
  emptyConfState,
  emptyHardState,
  entrySize,
} from "./types.js";

/**
 * The durable part of a node as the core sees it: what has been persisted.
 * Reads are synchronous; a disk-backed driver keeps the retained log in memory
 * (it is bounded by compaction) and mirrors every write to disk.
 */
export interface Storage {
  initialState(): { hardState: HardState; confState: ConfState };
  /** Entries in [lo, hi), at least one if any, then up to `maxBytes`. */
  entries(lo: number, hi: number, maxBytes: number): Entry[];
  /** Term of the entry at `i`; the snapshot's term for the snapshot index. */
  term(i: number): number;
  /** Index of the first entry still held (snapshot index + 1). */
  firstIndex(): number;
  lastIndex(): number;
  snapshot(): Snapshot;
}

/**
 * An in-memory Storage. Used by the simulator as its "disk", and by the agent
 * as the in-memory view of its LevelDB log.
 */
export class MemoryStorage implements Storage {
  private hard: HardState = emptyHardState;
  private snap: Snapshot = { meta: { index: 0, term: 0, confState: emptyConfState }, data: new Uint8Array() };
  /** ents[0] is a dummy entry standing for the snapshot (index, term). */
  private ents: Entry[] = [{ term: 0, index: 0, type: "normal", data: new Uint8Array() }];

  initialState(): { hardState: HardState; confState: ConfState } {
    return { hardState: this.hard, confState: this.snap.meta.confState };
  }

  hardState(): HardState {
    return this.hard;
  }

  setHardState(hs: HardState): void {
    this.hard = hs;
  }

  private offset(): number {
    return this.ents[0]!.index;
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    const off = this.offset();
    if (lo <= off) throw new RaftError("COMPACTED", `entries from ${lo}: compacted up to ${off}`);
    if (hi > this.lastIndex() + 1) throw new RaftError("UNAVAILABLE", `entries up to ${hi}: last is ${this.lastIndex()}`);
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = lo; i < hi; i++) {
      const e = this.ents[i - off]!;
      bytes += entrySize(e);
      if (out.length > 0 && bytes > maxBytes) break;
      out.push(e);
    }
    return out;
  }

  term(i: number): number {
    const off = this.offset();
    if (i < off) throw new RaftError("COMPACTED", `term of ${i}: compacted up to ${off}`);
    const e = this.ents[i - off];
    if (e === undefined) throw new RaftError("UNAVAILABLE", `term of ${i}: last is ${this.lastIndex()}`);
    return e.term;
  }

  firstIndex(): number {
    return this.offset() + 1;
  }

  lastIndex(): number {
    return this.offset() + this.ents.length - 1;
  }

  snapshot(): Snapshot {
    return this.snap;
  }

  /**
   * Rebuilds the storage from what a disk holds: the latest snapshot and the
   * retained entries. The first retained entry may precede the snapshot
   * index; it then marks the compaction point (its term answers term()).
   */
  load(snap: Snapshot, hard: HardState, entries: readonly Entry[]): void {
    this.snap = snap;
    this.hard = hard;
    const first = entries[0];
    if (first !== undefined && first.index <= snap.meta.index) {
      this.ents = [{ term: first.term, index: first.index, type: "normal", data: new Uint8Array() }, ...entries.slice(1)];
    } else {
      this.ents = [{ term: snap.meta.term, index: snap.meta.index, type: "normal", data: new Uint8Array() }];
      this.append(entries);
    }
  }

  /** Replaces the whole log by a snapshot received from the leader. */
  applySnapshot(s: Snapshot): void {
    if (s.meta.index < this.snap.meta.index) {
      throw new RaftError("SNAPSHOT_OUT_OF_DATE", `snapshot at ${s.meta.index} older than ${this.snap.meta.index}`);
    }
    this.snap = s;
    this.ents = [{ term: s.meta.term, index: s.meta.index, type: "normal", data: new Uint8Array() }];
  }

  /**
   * Records a snapshot of the state machine taken at applied index `i` (which
   * must still be in the log), without discarding entries; see compact().
   */
  createSnapshot(i: number, confState: ConfState, data: Uint8Array): Snapshot {
    if (i <= this.snap.meta.index) {
      throw new RaftError("SNAPSHOT_OUT_OF_DATE", `snapshot at ${i} not newer than ${this.snap.meta.index}`);
    }
    if (i > this.lastIndex()) throw new RaftError("UNAVAILABLE", `snapshot at ${i}: last is ${this.lastIndex()}`);
    this.snap = { meta: { index: i, term: this.term(i), confState }, data };
    return this.snap;
  }

  /** Discards entries up to and including `i` (at most the snapshot index). */
  compact(i: number): void {
    const off = this.offset();
    if (i <= off) return;
    if (i > this.snap.meta.index) throw new RaftError("UNAVAILABLE", `compact to ${i} past snapshot ${this.snap.meta.index}`);
    const head = this.ents[i - off]!;
    this.ents = [{ term: head.term, index: head.index, type: "normal", data: new Uint8Array() }, ...this.ents.slice(i - off + 1)];
  }

  /** Appends entries; an entry at an existing index truncates the log there. */
  append(entries: readonly Entry[]): void {
    if (entries.length === 0) return;
    const first = entries[0]!.index;
    const off = this.offset();
    if (first > this.lastIndex() + 1) {
      throw new RaftError("UNAVAILABLE", `append at ${first} leaves a gap after ${this.lastIndex()}`);
    }
    // Entries at or below the snapshot are already covered by it.
    const skip = Math.max(0, off + 1 - first);
    if (skip >= entries.length) return;
    const keep = first + skip - off;
    this.ents.length = keep;
    for (let k = skip; k < entries.length; k++) this.ents.push(entries[k]!);
  }
}
