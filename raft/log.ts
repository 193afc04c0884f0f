import type { Storage } from "./storage.js";
import { type Entry, type Snapshot, entrySize } from "./types.js";

/**
 * Entries and a snapshot not yet persisted. `offset` is the index of
 * `entries[0]`; with a snapshot, offset = snapshot index + 1.
 */
class Unstable {
  snapshot: Snapshot | undefined;
  entries: Entry[] = [];
  constructor(public offset: number) {}

  firstIndex(): number | undefined {
    return this.snapshot ? this.snapshot.meta.index + 1 : undefined;
  }

  lastIndex(): number | undefined {
    if (this.entries.length > 0) return this.offset + this.entries.length - 1;
    return this.snapshot?.meta.index;
  }

  term(i: number): number | undefined {
    if (i < this.offset) {
      return this.snapshot && this.snapshot.meta.index === i ? this.snapshot.meta.term : undefined;
    }
    return this.entries[i - this.offset]?.term;
  }

  stableTo(i: number, t: number): void {
    // The entries may have been replaced since the Ready that carried them:
    // only drop what the persisted write really covered.
    if (i < this.offset) return;
    if (this.term(i) !== t) return;
    this.entries = this.entries.slice(i + 1 - this.offset);
    this.offset = i + 1;
  }

  stableSnapTo(i: number): void {
    if (this.snapshot && this.snapshot.meta.index === i) this.snapshot = undefined;
  }

  restore(s: Snapshot): void {
    this.offset = s.meta.index + 1;
    this.entries = [];
    this.snapshot = s;
  }

  truncateAndAppend(ents: readonly Entry[]): void {
    const first = ents[0]!.index;
    if (first === this.offset + this.entries.length) {
      this.entries.push(...ents);
    } else if (first <= this.offset) {
      // Replaces everything unstable; the driver's append truncates storage.
      this.offset = first;
      this.entries = [...ents];
    } else {
      this.entries = [...this.entries.slice(0, first - this.offset), ...ents];
    }
  }
}

/** The log as the protocol sees it: persisted storage followed by unstable entries. */
export class RaftLog {
  readonly unstable: Unstable;
  committed: number;
  /** Highest index handed to the application (in a Ready that was advanced or is in flight). */
  applied: number;

  constructor(readonly storage: Storage) {
    const first = storage.firstIndex();
    this.unstable = new Unstable(storage.lastIndex() + 1);
    this.committed = first - 1;
    this.applied = first - 1;
  }

  firstIndex(): number {
    return this.unstable.firstIndex() ?? this.storage.firstIndex();
  }

  lastIndex(): number {
    return this.unstable.lastIndex() ?? this.storage.lastIndex();
  }

  /** Term at `i`, or undefined if `i` is compacted away or past the end. */
  term(i: number): number | undefined {
    const dummy = this.firstIndex() - 1;
    if (i < dummy || i > this.lastIndex()) return undefined;
    const t = this.unstable.term(i);
    if (t !== undefined) return t;
    try {
      return this.storage.term(i);
    } catch {
      return undefined;
    }
  }

  lastTerm(): number {
    return this.term(this.lastIndex()) ?? 0;
  }

  matchTerm(i: number, t: number): boolean {
    return this.term(i) === t;
  }

  /** §5.4.1: is (lastIndex, term) at least as up to date as our log? */
  isUpToDate(lastIndex: number, term: number): boolean {
    const lt = this.lastTerm();
    return term > lt || (term === lt && lastIndex >= this.lastIndex());
  }

  /**
   * Follower side of AppendEntries. Returns the index of the last new entry,
   * or undefined when (index, logTerm) does not match our log.
   */
  maybeAppend(index: number, logTerm: number, committed: number, ents: readonly Entry[]): number | undefined {
    if (!this.matchTerm(index, logTerm)) return undefined;
    const lastNew = index + ents.length;
    const ci = this.findConflict(ents);
    if (ci !== 0) {
      if (ci <= this.committed) throw new Error(`conflict at ${ci} with committed entry ${this.committed}`);
      this.append(ents.slice(ci - (index + 1)));
    }
    this.commitTo(Math.min(committed, lastNew));
    return lastNew;
  }

  append(ents: readonly Entry[]): number {
    if (ents.length === 0) return this.lastIndex();
    if (ents[0]!.index - 1 < this.committed) throw new Error(`append at ${ents[0]!.index} below commit ${this.committed}`);
    if (ents[0]!.index > this.lastIndex() + 1) throw new Error(`append at ${ents[0]!.index} leaves a gap after ${this.lastIndex()}`);
    this.unstable.truncateAndAppend(ents);
    return this.lastIndex();
  }

  /** First index whose term differs from ours (or is new); 0 if all match. */
  findConflict(ents: readonly Entry[]): number {
    for (const e of ents) {
      if (!this.matchTerm(e.index, e.term)) return e.index;
    }
    return 0;
  }

  /**
   * The largest index <= `index` whose term is <= `term`: where a log with
   * `term` at `index` can possibly match ours. Lets a leader skip a whole
   * conflicting term per round trip instead of one entry.
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    for (let i = index; ; i--) {
      const t = this.term(i);
      if (t === undefined) return { index: i, term: 0 };
      if (t <= term) return { index: i, term: t };
    }
  }

  commitTo(n: number): void {
    if (n > this.committed) {
      if (n > this.lastIndex()) throw new Error(`commit ${n} past last index ${this.lastIndex()}`);
      this.committed = n;
    }
  }

  /** Commit `maxIndex` if it is of `term` (only entries of the leader's term commit by counting). */
  maybeCommit(maxIndex: number, term: number): boolean {
    if (maxIndex > this.committed && this.term(maxIndex) === term) {
      this.commitTo(maxIndex);
      return true;
    }
    return false;
  }

  appliedTo(i: number): void {
    if (i === 0) return;
    if (i > this.committed || i < this.applied) throw new Error(`applied ${i} outside (${this.applied}, ${this.committed}]`);
    this.applied = i;
  }

  stableTo(i: number, t: number): void {
    this.unstable.stableTo(i, t);
  }

  stableSnapTo(i: number): void {
    this.unstable.stableSnapTo(i);
  }

  restore(s: Snapshot): void {
    this.committed = s.meta.index;
    this.applied = s.meta.index;
    this.unstable.restore(s);
  }

  snapshot(): Snapshot {
    return this.unstable.snapshot ?? this.storage.snapshot();
  }

  unstableEntries(): Entry[] {
    return this.unstable.entries;
  }

  hasNextCommittedEntries(): boolean {
    return this.committed > this.applied && this.applied + 1 >= this.firstIndex();
  }

  nextCommittedEntries(maxBytes: number): Entry[] {
    if (!this.hasNextCommittedEntries()) return [];
    return this.slice(this.applied + 1, this.committed + 1, maxBytes);
  }

  /**
   * Entries in [lo, hi) with at least one and up to `maxBytes`. `lo` must not
   * be compacted (callers check firstIndex() and send a snapshot instead).
   */
  slice(lo: number, hi: number, maxBytes: number): Entry[] {
    if (lo >= hi) return [];
    if (lo < this.firstIndex()) throw new Error(`slice from ${lo} below first index ${this.firstIndex()}`);
    const out: Entry[] = [];
    let bytes = 0;
    const uOff = this.unstable.offset;
    if (lo < uOff) {
      const stableHi = Math.min(hi, uOff, this.storage.lastIndex() + 1);
      for (const e of this.storage.entries(lo, stableHi, maxBytes)) {
        bytes += entrySize(e);
        if (out.length > 0 && bytes > maxBytes) return out;
        out.push(e);
      }
      if (out.length < stableHi - lo) return out;
    }
    for (let i = Math.max(lo, uOff); i < hi; i++) {
      const e = this.unstable.entries[i - uOff]!;
      bytes += entrySize(e);
      if (out.length > 0 && bytes > maxBytes) return out;
      out.push(e);
    }
    return out;
  }
}
