import { type RaftErrorCode, isRaftError } from "./errors.js";
import { type Config, Raft } from "./raft.js";
import {
  type ConfChange,
  type ConfState,
  type HardState,
  type Message,
  type NodeId,
  NONE,
  type Ready,
  type Role,
  type SoftState,
  encodeConfChange,
  isLocalMessage,
  isResponse,
} from "./types.js";

export interface Status {
  readonly id: NodeId;
  readonly term: number;
  readonly vote: NodeId;
  readonly commit: number;
  readonly applied: number;
  readonly lead: NodeId;
  readonly role: Role;
  readonly confState: ConfState;
  readonly lastIndex: number;
  readonly firstIndex: number;
  /** Leader only: each member's matched index. */
  readonly progress: ReadonlyMap<NodeId, { match: number; next: number; state: string }>;
}

/** Errors that mean "this message was dropped", not "the core is broken". */
const DROPPED: readonly RaftErrorCode[] = ["PROPOSAL_DROPPED", "CONF_CHANGE_PENDING", "INVALID_CONF_CHANGE"];

/**
 * The driver's handle on the core (etcd's rawnode.go): feed it ticks,
 * messages and proposals; take a Ready; do what it says; advance. Nothing
 * here blocks, waits or does I/O.
 */
export class RawNode {
  readonly raft: Raft;
  private prevSoft: SoftState;
  private prevHard: HardState;

  constructor(config: Config) {
    this.raft = new Raft(config);
    this.prevSoft = this.softState();
    this.prevHard = config.storage.initialState().hardState;
  }

  tick(): void {
    this.raft.tick();
  }

  /** Starts an election now (tests, and the founding node of a cluster). */
  campaign(): void {
    this.raft.step({ type: "hup", from: this.raft.id, to: this.raft.id, term: 0 });
  }

  /** Proposes data to be appended. Throws RaftError PROPOSAL_DROPPED when no leader can take it. */
  propose(data: Uint8Array): void {
    this.raft.step({
      type: "prop",
      from: this.raft.id,
      to: this.raft.id,
      term: 0,
      entries: [{ term: 0, index: 0, type: "normal", data }],
    });
  }

  /** Proposes a membership change; see ConfChange for the rules it obeys. */
  proposeConfChange(cc: ConfChange): void {
    this.raft.step({
      type: "prop",
      from: this.raft.id,
      to: this.raft.id,
      term: 0,
      entries: [{ term: 0, index: 0, type: "conf", data: encodeConfChange(cc) }],
    });
  }

  /**
   * Asks for a linearizable read point. A ReadState with this context comes
   * out in a later Ready; the read may be served once applied >= its index.
   * Contexts must be unique cluster-wide while in flight.
   */
  readIndex(context: string): void {
    this.raft.step({ type: "readIndex", from: this.raft.id, to: this.raft.id, term: 0, context });
  }

  /** Asks the leader to hand leadership to `to`. */
  transferLeader(to: NodeId): void {
    this.raft.step({ type: "transferLeader", from: to, to: this.raft.lead || this.raft.id, term: 0 });
  }

  /**
   * Steps a message received from the network. Local message types are
   * refused; proposals that cannot be taken are dropped (their senders time
   * out), as a network would drop them.
   */
  step(m: Message): void {
    if (isLocalMessage(m.type)) return;
    if (m.from === this.raft.id || m.to !== this.raft.id) return;
    // A response only means something from a member we asked; requests from
    // strangers still count (a joining node hears from a leader it does not
    // know yet).
    if (isResponse(m.type) && !this.raft.tracker.progress.has(m.from)) return;
    try {
      this.raft.step(m);
    } catch (e) {
      if (isRaftError(e) && DROPPED.includes(e.code)) return;
      throw e;
    }
  }

  reportUnreachable(id: NodeId): void {
    this.raft.step({ type: "unreachable", from: id, to: this.raft.id, term: 0 });
  }

  reportSnapshot(id: NodeId, ok: boolean): void {
    this.raft.step({ type: "snapStatus", from: id, to: this.raft.id, term: 0, reject: !ok });
  }

  private softState(): SoftState {
    return { leader: this.raft.lead, role: this.raft.role };
  }

  private hardState(): HardState {
    const hs = this.raft.hardState();
    return this.raft.bugs.has("forget-vote") ? { ...hs, vote: NONE } : hs;
  }

  hasReady(): boolean {
    const r = this.raft;
    const soft = this.softState();
    const hard = this.hardState();
    return (
      soft.leader !== this.prevSoft.leader ||
      soft.role !== this.prevSoft.role ||
      !sameHardState(hard, this.prevHard) ||
      r.log.unstable.snapshot !== undefined ||
      r.log.unstableEntries().length > 0 ||
      r.msgs.length > 0 ||
      r.readStates.length > 0 ||
      r.log.hasNextCommittedEntries()
    );
  }

  /**
   * Takes what the core wants done (see Ready for the contract). Committed
   * entries count as applied, and membership changes among them take effect,
   * from this call on; persistence is acknowledged by advance().
   */
  ready(): Ready {
    const r = this.raft;
    const soft = this.softState();
    const hard = this.hardState();
    const snapshot = r.log.unstable.snapshot;
    const entries = [...r.log.unstableEntries()];
    const committedEntries = r.log.nextCommittedEntries(r.maxCommittedSizePerReady);
    const messages = r.msgs;
    const readStates = r.readStates;
    r.msgs = [];
    r.readStates = [];

    const softChanged = soft.leader !== this.prevSoft.leader || soft.role !== this.prevSoft.role;
    const hardChanged = !sameHardState(hard, this.prevHard);
    const rd: Ready = {
      ...(softChanged ? { softState: soft } : {}),
      ...(hardChanged ? { hardState: hard } : {}),
      ...(snapshot !== undefined ? { snapshot } : {}),
      entries,
      committedEntries,
      messages,
      readStates,
      mustSync:
        entries.length > 0 || snapshot !== undefined || hard.term !== this.prevHard.term || hard.vote !== this.prevHard.vote,
    };
    this.prevSoft = soft;
    this.prevHard = hard;
    if (committedEntries.length > 0) {
      r.log.appliedTo(committedEntries[committedEntries.length - 1]!.index);
      r.onApply(committedEntries);
    }
    return rd;
  }

  /** Acknowledges that everything `rd` asked to persist is durable. */
  advance(rd: Ready): void {
    const r = this.raft;
    if (rd.snapshot !== undefined) r.log.stableSnapTo(rd.snapshot.meta.index);
    const last = rd.entries[rd.entries.length - 1];
    if (last !== undefined) r.stableTo(last.index, last.term);
  }

  status(): Status {
    const r = this.raft;
    const progress = new Map<NodeId, { match: number; next: number; state: string }>();
    if (r.role === "leader") {
      for (const [id, pr] of r.tracker.progress) progress.set(id, { match: pr.match, next: pr.next, state: pr.state });
    }
    return {
      id: r.id,
      term: r.term,
      vote: r.vote,
      commit: r.log.committed,
      applied: r.log.applied,
      lead: r.lead,
      role: r.role,
      confState: r.confState(),
      lastIndex: r.log.lastIndex(),
      firstIndex: r.log.firstIndex(),
      progress,
    };
  }
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}
