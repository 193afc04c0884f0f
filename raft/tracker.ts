import type { ConfState, NodeId } from "./types.js";

/**
 * Messages in flight to one follower, bounded in count and bytes: the
 * leader's flow control. Each append records the last index it carried; an
 * acknowledgement up to index i frees every message up to i.
 */
export class Inflights {
  private readonly queue: { index: number; bytes: number }[] = [];
  bytes = 0;
  constructor(
    readonly maxCount: number,
    readonly maxBytes: number,
  ) {}

  add(index: number, bytes: number): void {
    this.queue.push({ index, bytes });
    this.bytes += bytes;
  }

  freeLE(index: number): void {
    let n = 0;
    while (n < this.queue.length && this.queue[n]!.index <= index) {
      this.bytes -= this.queue[n]!.bytes;
      n++;
    }
    if (n > 0) this.queue.splice(0, n);
  }

  full(): boolean {
    return this.queue.length >= this.maxCount || (this.maxBytes > 0 && this.bytes >= this.maxBytes);
  }

  count(): number {
    return this.queue.length;
  }

  reset(): void {
    this.queue.length = 0;
    this.bytes = 0;
  }
}

export type ProgressState = "probe" | "replicate" | "snapshot";

/**
 * The leader's view of one follower. In `probe` it sends one append per
 * heartbeat until it finds where the logs match; in `replicate` it streams
 * appends optimistically (next runs ahead of match), bounded by inflights;
 * in `snapshot` it waits for a snapshot to be installed.
 */
export class Progress {
  match = 0;
  state: ProgressState = "probe";
  pendingSnapshot = 0;
  /** Heard from since the last CheckQuorum round. */
  recentActive = false;
  /** In probe: an append was sent and no answer came yet. */
  probeSent = false;
  readonly inflights: Inflights;

  constructor(
    public next: number,
    public isLearner: boolean,
    maxInflight: number,
    maxInflightBytes: number,
  ) {
    this.inflights = new Inflights(maxInflight, maxInflightBytes);
  }

  private resetState(state: ProgressState): void {
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.state = state;
    this.inflights.reset();
  }

  becomeProbe(): void {
    if (this.state === "snapshot") {
      const pending = this.pendingSnapshot;
      this.resetState("probe");
      this.next = Math.max(this.match + 1, pending + 1);
    } else {
      this.resetState("probe");
      this.next = this.match + 1;
    }
  }

  becomeReplicate(): void {
    this.resetState("replicate");
    this.next = this.match + 1;
  }

  becomeSnapshot(snapIndex: number): void {
    this.resetState("snapshot");
    this.pendingSnapshot = snapIndex;
  }

  /** An acknowledgement up to `n`; false if it is stale. */
  maybeUpdate(n: number): boolean {
    let updated = false;
    if (this.match < n) {
      this.match = n;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, n + 1);
    return updated;
  }

  /** Records an append sent up to `last` (replicate) or marks a probe sent. */
  sentEntries(last: number, bytes: number, count: number): void {
    if (this.state === "replicate") {
      if (count > 0) {
        this.next = last + 1;
        this.inflights.add(last, bytes);
      }
    } else if (this.state === "probe") {
      this.probeSent = true;
    }
  }

  /**
   * A rejection of the append at `rejected`, with the follower's hint of
   * where its log may match. False if the rejection is stale.
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === "replicate") {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1, 1);
    this.probeSent = false;
    return true;
  }

  /** Whether sending appends to this follower must wait. */
  isPaused(): boolean {
    switch (this.state) {
      case "probe":
        return this.probeSent;
      case "replicate":
        return this.inflights.full();
      case "snapshot":
        return true;
    }
  }
}

export type VoteResult = "won" | "lost" | "pending";

/** The membership and the leader's per-follower progress. */
export class ProgressTracker {
  voters = new Set<NodeId>();
  learners = new Set<NodeId>();
  progress = new Map<NodeId, Progress>();
  votes = new Map<NodeId, boolean>();

  constructor(
    readonly maxInflight: number,
    readonly maxInflightBytes: number,
  ) {}

  confState(): ConfState {
    return { voters: [...this.voters].sort(), learners: [...this.learners].sort() };
  }

  isVoter(id: NodeId): boolean {
    return this.voters.has(id);
  }

  isMember(id: NodeId): boolean {
    return this.voters.has(id) || this.learners.has(id);
  }

  quorum(): number {
    return Math.floor(this.voters.size / 2) + 1;
  }

  /** The largest index durable on a majority of voters. */
  committed(quorumSize: number = this.quorum()): number {
    if (this.voters.size === 0) return 0;
    const matches: number[] = [];
    for (const id of this.voters) matches.push(this.progress.get(id)?.match ?? 0);
    matches.sort((a, b) => b - a);
    return matches[Math.max(0, quorumSize - 1)] ?? 0;
  }

  resetVotes(): void {
    this.votes.clear();
  }

  recordVote(id: NodeId, granted: boolean): void {
    if (!this.votes.has(id)) this.votes.set(id, granted);
  }

  tallyVotes(quorumSize: number = this.quorum()): { granted: number; rejected: number; result: VoteResult } {
    let granted = 0;
    let rejected = 0;
    for (const id of this.voters) {
      const v = this.votes.get(id);
      if (v === true) granted++;
      else if (v === false) rejected++;
    }
    const result: VoteResult =
      granted >= quorumSize ? "won" : this.voters.size - rejected < quorumSize ? "lost" : "pending";
    return { granted, rejected, result };
  }

  /** CheckQuorum: were a majority of voters (counting `self`) heard from? */
  quorumActive(self: NodeId): boolean {
    let active = 0;
    for (const id of this.voters) {
      if (id === self || this.progress.get(id)?.recentActive) active++;
    }
    return active >= this.quorum();
  }
}
