import type { Bug } from "./bugs.js";
import { RaftError } from "./errors.js";
import { RaftLog } from "./log.js";
import type { Storage } from "./storage.js";
import { Progress, ProgressTracker } from "./tracker.js";
import {
  type ConfChange,
  type ConfState,
  type Entry,
  type HardState,
  type Message,
  type NodeId,
  NONE,
  type ReadState,
  type Role,
  type Snapshot,
  decodeConfChange,
  entrySize,
  voteRespType,
} from "./types.js";

export interface Config {
  readonly id: NodeId;
  readonly storage: Storage;
  /** Ticks without hearing from a leader before a follower campaigns (randomised up to 2×). */
  readonly electionTick: number;
  /** Ticks between leader heartbeats; must be well below electionTick. */
  readonly heartbeatTick: number;
  /**
   * Learners get every this many heartbeats (default 1: all). They vote in
   * no election and count in no quorum; a heartbeat only tells them of the
   * leader and the commit index, which appends carry too. In a cluster of
   * a few voters and many learners, most heartbeats are theirs.
   */
  readonly learnerHeartbeatEvery?: number;
  /**
   * Merge a message into the last one queued for the same peer where the
   * peer would do exactly the same with one as with both (see queue()).
   * Default false: messages as etcd's raft sends them.
   */
  readonly mergeMessages?: boolean;
  /** A uniform random number in [0, 1): the only source of randomness (election jitter). */
  readonly random: () => number;
  /** Index already applied by the state machine on restart (default: the snapshot's index). */
  readonly applied?: number;
  /** Upper bound of bytes of entries in one append message. */
  readonly maxSizePerMsg?: number;
  /** Upper bound of append messages in flight to one follower. */
  readonly maxInflightMsgs?: number;
  /** Upper bound of bytes of entries in flight to one follower (0: unbounded). */
  readonly maxInflightBytes?: number;
  /** Upper bound of bytes of committed entries handed out per Ready. */
  readonly maxCommittedSizePerReady?: number;
  readonly preVote?: boolean;
  readonly checkQuorum?: boolean;
  /** Testing only: protocol bugs to inject (see bugs.ts). */
  readonly bugs?: ReadonlySet<Bug>;
}

interface PendingRead {
  readonly index: number;
  readonly from: NodeId;
  readonly context: string;
  readonly acks: Set<NodeId>;
}

type CampaignType = "preElection" | "election" | "transfer";

/**
 * The Raft protocol for one node (etcd's raft.go). Pure and synchronous: it
 * is driven by step() and tick(), and everything it wants done accumulates
 * in `msgs`, `readStates` and the log's unstable part until RawNode hands
 * them out in a Ready.
 */
export class Raft {
  readonly id: NodeId;
  term = 0;
  vote: NodeId = NONE;
  lead: NodeId = NONE;
  role: Role = "follower";
  readonly log: RaftLog;
  readonly tracker: ProgressTracker;
  msgs: Message[] = [];
  readStates: ReadState[] = [];

  /** A leader transfer in progress: the node we hand leadership to. */
  leadTransferee: NodeId = NONE;
  /**
   * Index of the last membership change proposed, or of the leader's first
   * entry: no membership change is accepted before it is applied (the
   * own-term rule, and one change at a time).
   */
  pendingConfIndex = 0;

  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  /** Periodic heartbeats sent by this leader (learners get every learnerHeartbeatEvery-th). */
  private beats = 0;
  private readonly learnerHeartbeatEvery: number;
  private readonly mergeMessages: boolean;
  private randomizedElectionTimeout = 0;
  private readonly electionTimeout: number;
  private readonly heartbeatTimeout: number;
  private readonly maxSizePerMsg: number;
  readonly maxCommittedSizePerReady: number;
  private readonly preVote: boolean;
  private readonly checkQuorum: boolean;
  private readonly random: () => number;
  readonly bugs: ReadonlySet<Bug>;

  /** ReadIndex requests waiting for a heartbeat quorum, in arrival order. */
  private pendingReads: PendingRead[] = [];
  /** ReadIndex requests received before the leader committed an entry of its term. */
  private readsBeforeCommit: Message[] = [];

  constructor(c: Config) {
    if (c.heartbeatTick <= 0 || c.electionTick <= c.heartbeatTick) {
      throw new Error("electionTick must be greater than heartbeatTick > 0");
    }
    this.id = c.id;
    this.electionTimeout = c.electionTick;
    this.heartbeatTimeout = c.heartbeatTick;
    this.learnerHeartbeatEvery = Math.max(1, c.learnerHeartbeatEvery ?? 1);
    this.mergeMessages = c.mergeMessages ?? false;
    this.maxSizePerMsg = c.maxSizePerMsg ?? 1 << 20;
    this.maxCommittedSizePerReady = c.maxCommittedSizePerReady ?? 8 << 20;
    this.preVote = c.preVote ?? true;
    this.checkQuorum = c.checkQuorum ?? true;
    this.random = c.random;
    this.bugs = c.bugs ?? new Set();
    this.tracker = new ProgressTracker(c.maxInflightMsgs ?? 256, c.maxInflightBytes ?? 0);
    this.log = new RaftLog(c.storage);

    const { hardState, confState } = c.storage.initialState();
    this.setConf(confState);
    if (hardState.term > 0 || hardState.commit > 0) {
      this.term = hardState.term;
      this.vote = hardState.vote;
      const last = this.log.lastIndex();
      if (hardState.commit > last) throw new Error(`commit ${hardState.commit} is past the last index ${last}`);
      this.log.commitTo(hardState.commit);
    }
    if (c.applied !== undefined && c.applied > this.log.applied) {
      // The membership changes the application applied before the restart
      // are in the log after the snapshot: they take effect again here.
      const lo = this.log.applied + 1;
      this.log.appliedTo(c.applied);
      this.onApply(this.log.slice(lo, c.applied + 1, Number.MAX_SAFE_INTEGER));
    }
    this.becomeFollower(this.term, NONE);
  }

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  confState(): ConfState {
    return this.tracker.confState();
  }

  private setConf(cs: ConfState): void {
    this.tracker.voters = new Set(cs.voters);
    this.tracker.learners = new Set(cs.learners);
    this.tracker.progress = new Map();
    const next = this.log.lastIndex() + 1;
    for (const id of [...cs.voters, ...cs.learners]) this.addProgress(id, next);
  }

  private addProgress(id: NodeId, next: number): Progress {
    const pr = new Progress(next, this.tracker.learners.has(id), this.tracker.maxInflight, this.tracker.maxInflightBytes);
    // A new member counts as active so that it is not judged dead before it
    // had a chance to answer.
    pr.recentActive = true;
    this.tracker.progress.set(id, pr);
    return pr;
  }

  /** Can this node campaign? Only a voter, and not while a snapshot is being installed. */
  promotable(): boolean {
    return this.tracker.isVoter(this.id) && this.log.unstable.snapshot === undefined;
  }

  private send(m: Omit<Message, "from" | "term"> & { term?: number }): void {
    const term = m.term ?? (m.type === "prop" || m.type === "readIndex" || m.type === "transferLeader" ? 0 : this.term);
    this.queue({ ...m, from: this.id, term });
  }

  /**
   * Queues a message. With mergeMessages, it is merged into the last one
   * queued for the same peer when the peer would do exactly the same with
   * one message as with both: an append that continues the previous append
   * (the leader appends once per proposal and again for each commit
   * advance; a burst of proposals would otherwise cost a message per entry
   * per follower), or forwarded proposals of ordinary entries. Messages to
   * a peer keep their order.
   */
  private queue(m: Message): void {
    for (let i = this.mergeMessages ? this.msgs.length - 1 : -1; i >= 0; i--) {
      const prev = this.msgs[i]!;
      if (prev.to !== m.to) continue;
      const merged = mergeMessages(prev, m, this.maxSizePerMsg);
      if (merged) {
        this.msgs[i] = merged;
        return;
      }
      break;
    }
    this.msgs.push(m);
  }

  // ---------------------------------------------------------------- roles

  private reset(term: number): void {
    if (this.term !== term) {
      this.term = term;
      this.vote = NONE;
    }
    this.lead = NONE;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTimeout = this.electionTimeout + Math.floor(this.random() * this.electionTimeout);
    this.leadTransferee = NONE;
    this.tracker.resetVotes();
    const next = this.log.lastIndex() + 1;
    for (const [id, pr] of this.tracker.progress) {
      const fresh = new Progress(next, pr.isLearner, this.tracker.maxInflight, this.tracker.maxInflightBytes);
      fresh.recentActive = true;
      if (id === this.id) fresh.match = this.stableLastIndex();
      this.tracker.progress.set(id, fresh);
    }
    this.pendingConfIndex = 0;
    this.pendingReads = [];
    this.readsBeforeCommit = [];
  }

  /** The last index of our log that is already persisted. */
  private stableLastIndex(): number {
    return Math.min(this.log.lastIndex(), this.log.unstable.offset - 1);
  }

  becomeFollower(term: number, lead: NodeId): void {
    this.reset(term);
    this.lead = lead;
    this.role = "follower";
  }

  private becomePreCandidate(): void {
    if (this.role === "leader") throw new Error("leader cannot become pre-candidate");
    // A pre-candidate changes neither its term nor its vote.
    this.tracker.resetVotes();
    this.lead = NONE;
    this.role = "preCandidate";
  }

  private becomeCandidate(): void {
    if (this.role === "leader") throw new Error("leader cannot become candidate");
    this.reset(this.term + 1);
    this.vote = this.id;
    this.role = "candidate";
  }

  private becomeLeader(): void {
    if (this.role === "follower") throw new Error("follower cannot become leader");
    this.reset(this.term);
    this.lead = this.id;
    this.role = "leader";
    this.tracker.progress.get(this.id)?.becomeReplicate();
    // An empty entry of the new term: committing it commits everything
    // before it (§5.4.2), and no membership change is accepted until it is
    // applied (the own-term rule for single-server changes).
    this.appendEntries([{ term: 0, index: 0, type: "normal", data: new Uint8Array() }]);
    this.pendingConfIndex = this.log.lastIndex();
  }

  // --------------------------------------------------------------- ticks

  tick(): void {
    if (this.role === "leader") this.tickHeartbeat();
    else this.tickElection();
  }

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.step({ type: "hup", from: this.id, to: this.id, term: 0 });
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.electionTimeout) {
      this.electionElapsed = 0;
      if (this.checkQuorum) this.step({ type: "checkQuorum", from: this.id, to: this.id, term: 0 });
      // A transfer that did not finish within an election timeout is abandoned.
      if (this.role === "leader") this.leadTransferee = NONE;
    }
    if (this.role !== "leader") return;
    if (this.heartbeatElapsed >= this.heartbeatTimeout) {
      this.heartbeatElapsed = 0;
      this.step({ type: "beat", from: this.id, to: this.id, term: 0 });
    }
  }

  // ------------------------------------------------------------ elections

  private hasUnappliedConfChanges(): boolean {
    if (this.log.applied >= this.log.committed) return false;
    const lo = Math.max(this.log.applied + 1, this.log.firstIndex());
    for (const e of this.log.slice(lo, this.log.committed + 1, Number.MAX_SAFE_INTEGER)) {
      if (e.type === "conf") return true;
    }
    return false;
  }

  private campaign(t: CampaignType): void {
    if (!this.promotable()) return;
    // A committed membership change we have not applied may remove us or
    // change the quorum; wait until it is applied.
    if (this.hasUnappliedConfChanges()) return;
    let term: number;
    let type: "vote" | "preVote";
    if (t === "preElection") {
      this.becomePreCandidate();
      type = "preVote";
      term = this.term + 1;
    } else {
      this.becomeCandidate();
      type = "vote";
      term = this.term;
    }
    this.tracker.recordVote(this.id, true);
    if (this.tracker.tallyVotes().result === "won") {
      if (t === "preElection") this.campaign("election");
      else this.becomeLeader();
      return;
    }
    for (const id of this.tracker.voters) {
      if (id === this.id) continue;
      this.send({
        type,
        to: id,
        term,
        index: this.log.lastIndex(),
        logTerm: this.log.lastTerm(),
        ...(t === "transfer" ? { context: "transfer" } : {}),
      });
    }
  }

  // ---------------------------------------------------------------- step

  step(m: Message): void {
    if (m.term === 0) {
      // Local message, or a proposal/read forwarded without a term.
    } else if (m.term > this.term) {
      if (m.type === "vote" || m.type === "preVote") {
        const force = m.context === "transfer";
        const inLease = this.checkQuorum && this.lead !== NONE && this.electionElapsed < this.electionTimeout;
        // We heard from a live leader recently: a node that cannot see it must
        // not disrupt it (unless the leader itself asked for the election).
        if (!force && inLease) return;
      }
      if (m.type === "preVote") {
        // A pre-vote never changes our term.
      } else if (m.type === "preVoteResp" && !m.reject) {
        // Granted pre-votes carry the future term; we move to it only when we win.
      } else if (m.type === "app" || m.type === "heartbeat" || m.type === "snap") {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, NONE);
      }
    } else if (m.term < this.term) {
      if ((this.checkQuorum || this.preVote) && (m.type === "heartbeat" || m.type === "app")) {
        // A stale leader, possibly cut off and kept quiet by pre-vote: tell it
        // our term so that it steps down.
        this.send({ type: "appResp", to: m.from });
      } else if (m.type === "preVote") {
        this.send({ type: "preVoteResp", to: m.from, reject: true });
      }
      return;
    }

    switch (m.type) {
      case "hup":
        if (this.role !== "leader") this.campaign(this.preVote ? "preElection" : "election");
        return;
      case "vote":
      case "preVote": {
        const canVote =
          this.vote === m.from ||
          (this.vote === NONE && this.lead === NONE) ||
          (m.type === "preVote" && m.term > this.term);
        const upToDate =
          this.bugs.has("vote-without-log-check") || this.log.isUpToDate(m.index ?? 0, m.logTerm ?? 0);
        if (canVote && upToDate) {
          // The response carries the request's term: a pre-vote grant is for
          // the future term the pre-candidate would campaign in.
          this.send({ type: voteRespType(m.type), to: m.from, term: m.term });
          if (m.type === "vote") {
            // Granting a pre-vote must not reset the election timer, or
            // elections could stall.
            this.electionElapsed = 0;
            this.vote = m.from;
          }
        } else {
          this.send({ type: voteRespType(m.type), to: m.from, reject: true });
        }
        return;
      }
    }

    switch (this.role) {
      case "leader":
        this.stepLeader(m);
        return;
      case "candidate":
      case "preCandidate":
        this.stepCandidate(m);
        return;
      case "follower":
        this.stepFollower(m);
        return;
    }
  }

  private stepLeader(m: Message): void {
    switch (m.type) {
      case "beat":
        this.beats++;
        this.bcastHeartbeat(undefined, this.beats % this.learnerHeartbeatEvery === 0);
        return;
      case "checkQuorum":
        if (!this.tracker.quorumActive(this.id)) {
          this.becomeFollower(this.term, NONE);
          return;
        }
        for (const [id, pr] of this.tracker.progress) if (id !== this.id) pr.recentActive = false;
        return;
      case "prop":
        this.checkProposal(m.entries ?? []);
        this.appendEntries(m.entries ?? []);
        this.bcastAppend();
        return;
      case "readIndex":
        this.handleReadIndex(m);
        return;
      case "transferLeader":
        this.handleTransferLeader(m.from);
        return;
    }

    const pr = this.tracker.progress.get(m.from);
    if (pr === undefined) return;
    switch (m.type) {
      case "appResp":
        pr.recentActive = true;
        this.handleAppendResponse(m, pr);
        return;
      case "heartbeatResp":
        pr.recentActive = true;
        pr.probeSent = false;
        if (pr.match < this.log.lastIndex()) {
          // With a full window the appends that filled it may all have been
          // lost: an empty append at `next` is answered either way and either
          // frees the window or turns into a probe.
          if (pr.state === "replicate" && pr.isPaused()) this.sendEmptyAppend(m.from, pr);
          else this.sendAppend(m.from, pr);
        }
        if (m.context !== undefined) this.ackRead(m.context, m.from);
        return;
      case "snapStatus":
        if (pr.state !== "snapshot") return;
        if (m.reject) pr.pendingSnapshot = 0;
        // Wait for the follower's append response (or the next heartbeat)
        // before sending more.
        pr.becomeProbe();
        pr.probeSent = true;
        return;
      case "unreachable":
        if (pr.state === "replicate") pr.becomeProbe();
        return;
    }
  }

  private handleAppendResponse(m: Message, pr: Progress): void {
    const index = m.index ?? 0;
    if (m.reject) {
      let hint = m.rejectHint ?? 0;
      if ((m.logTerm ?? 0) > 0) hint = this.log.findConflictByTerm(hint, m.logTerm!).index;
      if (pr.maybeDecrTo(index, hint)) {
        if (pr.state === "replicate") pr.becomeProbe();
        this.sendAppend(m.from, pr);
      }
      return;
    }
    const wasPaused = pr.isPaused();
    if (!pr.maybeUpdate(index)) {
      if (wasPaused && !pr.isPaused()) this.sendAppend(m.from, pr);
      return;
    }
    if (pr.state === "probe") {
      pr.becomeReplicate();
    } else if (pr.state === "snapshot" && pr.match >= pr.pendingSnapshot) {
      pr.becomeProbe();
      pr.becomeReplicate();
    } else if (pr.state === "replicate") {
      pr.inflights.freeLE(index);
    }
    if (this.maybeCommit()) {
      this.bcastAppend();
    } else {
      // A follower that was paused may have missed the latest commit index:
      // send it an append even if there is no new entry.
      if (wasPaused) this.sendAppend(m.from, pr);
      // Then as much as flow control allows.
      while (this.sendAppend(m.from, pr, false)) {
        /* keep pipelining */
      }
    }
    if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) {
      this.send({ type: "timeoutNow", to: m.from });
    }
  }

  private stepCandidate(m: Message): void {
    switch (m.type) {
      case "prop":
        throw new RaftError("PROPOSAL_DROPPED", "no leader: an election is in progress");
      case "app":
        this.becomeFollower(m.term, m.from);
        this.handleAppend(m);
        return;
      case "heartbeat":
        this.becomeFollower(m.term, m.from);
        this.handleHeartbeat(m);
        return;
      case "snap":
        this.becomeFollower(m.term, m.from);
        this.handleSnapshot(m);
        return;
      case "voteResp":
      case "preVoteResp": {
        if (m.type !== (this.role === "preCandidate" ? "preVoteResp" : "voteResp")) return;
        this.tracker.recordVote(m.from, !m.reject);
        const { result } = this.tracker.tallyVotes();
        if (result === "won") {
          if (this.role === "preCandidate") {
            this.campaign("election");
          } else {
            this.becomeLeader();
            this.bcastAppend();
          }
        } else if (result === "lost") {
          this.becomeFollower(this.term, NONE);
        }
        return;
      }
      case "readIndex":
        throw new RaftError("PROPOSAL_DROPPED", "no leader: an election is in progress");
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case "prop":
      case "readIndex":
      case "transferLeader":
        if (this.lead === NONE) throw new RaftError("PROPOSAL_DROPPED", `no leader known to ${this.id}`);
        this.queue({ ...m, to: this.lead });
        return;
      case "app":
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleAppend(m);
        return;
      case "heartbeat":
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleHeartbeat(m);
        return;
      case "snap":
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapshot(m);
        return;
      case "timeoutNow":
        this.campaign("transfer");
        return;
      case "readIndexResp":
        this.readStates.push({ index: m.index ?? 0, context: m.context ?? "" });
        return;
    }
  }

  // -------------------------------------------------- follower handlers

  private handleAppend(m: Message): void {
    const index = m.index ?? 0;
    if (index < this.log.committed) {
      this.send({ type: "appResp", to: m.from, index: this.log.committed });
      return;
    }
    const ents = m.entries ?? [];
    let lastNew: number | undefined;
    if (this.bugs.has("append-without-log-match") && index <= this.log.lastIndex()) {
      const ci = this.log.findConflict(ents);
      if (ci > this.log.committed) this.log.append(ents.slice(ci - (index + 1)));
      lastNew = index + ents.length;
      this.log.commitTo(Math.min(m.commit ?? 0, lastNew, this.log.lastIndex()));
    } else {
      lastNew = this.log.maybeAppend(index, m.logTerm ?? 0, m.commit ?? 0, ents);
    }
    if (lastNew !== undefined) {
      this.send({ type: "appResp", to: m.from, index: lastNew });
      return;
    }
    // Tell the leader where our log might match: the last index at or before
    // its probe whose term is not newer than the probe's term.
    const hint = this.log.findConflictByTerm(Math.min(index, this.log.lastIndex()), m.logTerm ?? 0);
    this.send({ type: "appResp", to: m.from, index, reject: true, rejectHint: hint.index, logTerm: hint.term });
  }

  private handleHeartbeat(m: Message): void {
    this.log.commitTo(Math.min(m.commit ?? 0, this.log.lastIndex()));
    this.send({ type: "heartbeatResp", to: m.from, ...(m.context !== undefined ? { context: m.context } : {}) });
  }

  private handleSnapshot(m: Message): void {
    const s = m.snapshot;
    if (s !== undefined && this.restore(s)) {
      this.send({ type: "appResp", to: m.from, index: this.log.lastIndex() });
    } else {
      this.send({ type: "appResp", to: m.from, index: this.log.committed });
    }
  }

  /** Installs a snapshot from the leader; false if it brings nothing new. */
  private restore(s: Snapshot): boolean {
    if (s.meta.index <= this.log.committed) return false;
    if (this.log.matchTerm(s.meta.index, s.meta.term)) {
      // Our log already holds the snapshot's last entry: fast-forward the
      // commit index instead of discarding the log.
      this.log.commitTo(s.meta.index);
      return false;
    }
    this.log.restore(s);
    this.setConf(s.meta.confState);
    return true;
  }

  // ------------------------------------------------------ leader helpers

  private appendEntries(es: readonly Entry[]): void {
    let li = this.log.lastIndex();
    const stamped = es.map((e) => ({ ...e, term: this.term, index: ++li }));
    this.log.append(stamped);
    for (const e of stamped) if (e.type === "conf") this.pendingConfIndex = e.index;
    // The leader counts its own entries only once they are persisted (in
    // advance()), so that no entry is committed before it is durable here.
  }

  /** Validates proposed entries; throws (dropping them all) if one is not acceptable now. */
  private checkProposal(es: readonly Entry[]): void {
    if (!this.tracker.isMember(this.id)) throw new RaftError("PROPOSAL_DROPPED", `${this.id} is not a member`);
    if (this.leadTransferee !== NONE) {
      throw new RaftError("PROPOSAL_DROPPED", `leadership is being transferred to ${this.leadTransferee}`);
    }
    const confs = es.filter((e) => e.type === "conf");
    if (confs.length === 0) return;
    const ownTermRule = !this.bugs.has("conf-change-without-own-term");
    if (ownTermRule && (confs.length > 1 || this.pendingConfIndex > this.log.applied)) {
      throw new RaftError("CONF_CHANGE_PENDING", "a membership change is pending, or the leader has not applied an entry of its term");
    }
    for (const e of confs) this.validateConfChange(decodeConfChange(e.data));
  }

  private validateConfChange(cc: ConfChange): void {
    const t = this.tracker;
    if (cc.type === "removeNode" && t.isVoter(cc.node) && t.voters.size === 1) {
      throw new RaftError("INVALID_CONF_CHANGE", "cannot remove the last voter");
    }
    if (cc.type === "addLearner" && t.isVoter(cc.node)) {
      throw new RaftError("INVALID_CONF_CHANGE", `${cc.node} is a voter; remove it first`);
    }
  }

  /** Sends an append (or a snapshot) to a follower if flow control allows. */
  private sendAppend(to: NodeId, pr: Progress, sendIfEmpty = true): boolean {
    if (pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    const last = this.log.lastIndex();
    if (prevTerm === undefined || pr.next < this.log.firstIndex()) {
      return this.sendSnapshot(to, pr);
    }
    const entries = pr.next <= last ? this.log.slice(pr.next, last + 1, this.maxSizePerMsg) : [];
    if (entries.length === 0 && !sendIfEmpty) return false;
    let bytes = 0;
    for (const e of entries) bytes += entrySize(e);
    this.send({ type: "app", to, index: prevIndex, logTerm: prevTerm, entries, commit: this.log.committed });
    pr.sentEntries(prevIndex + entries.length, bytes, entries.length);
    return true;
  }

  private sendEmptyAppend(to: NodeId, pr: Progress): void {
    const prevIndex = pr.next - 1;
    const logTerm = this.log.term(prevIndex);
    if (logTerm === undefined) {
      // Compacted meanwhile: start over with a probe, which sends a snapshot.
      pr.becomeProbe();
      this.sendAppend(to, pr);
      return;
    }
    this.send({ type: "app", to, index: prevIndex, logTerm, entries: [], commit: this.log.committed });
  }

  private sendSnapshot(to: NodeId, pr: Progress): boolean {
    // A follower that has not answered lately may be gone: do not ship it a
    // snapshot until it shows signs of life.
    if (!pr.recentActive) return false;
    const snapshot = this.log.snapshot();
    if (snapshot.meta.index === 0) return false;
    pr.becomeSnapshot(snapshot.meta.index);
    this.send({ type: "snap", to, snapshot });
    return true;
  }

  bcastAppend(): void {
    for (const [id, pr] of this.tracker.progress) if (id !== this.id) this.sendAppend(id, pr);
  }

  private bcastHeartbeat(context?: string, learners = true): void {
    for (const [id, pr] of this.tracker.progress) {
      if (id === this.id || (!learners && pr.isLearner)) continue;
      // Never tell a follower to commit past what it is known to hold.
      const commit = Math.min(pr.match, this.log.committed);
      this.send({ type: "heartbeat", to: id, commit, ...(context !== undefined ? { context } : {}) });
    }
  }

  /** Advances the commit index to what a quorum holds, if that is an entry of our term. */
  maybeCommit(): boolean {
    const quorum = this.bugs.has("quorum-off-by-one")
      ? Math.max(1, Math.floor(this.tracker.voters.size / 2))
      : this.tracker.quorum();
    const mci = this.tracker.committed(quorum);
    let committed: boolean;
    if (this.bugs.has("commit-old-term")) {
      committed = mci > this.log.committed && mci <= this.log.lastIndex();
      if (committed) this.log.commitTo(mci);
    } else {
      committed = this.log.maybeCommit(mci, this.term);
    }
    if (committed) this.releaseReadsBeforeCommit();
    return committed;
  }

  /** Called once entries up to (index, term) are durable on this node. */
  stableTo(index: number, term: number): void {
    this.log.stableTo(index, term);
    if (this.role !== "leader") return;
    const self = this.tracker.progress.get(this.id);
    if (self && self.maybeUpdate(this.stableLastIndex())) {
      if (this.maybeCommit()) this.bcastAppend();
    }
  }

  // ---------------------------------------------------- ReadIndex (§6.4)

  private handleReadIndex(m: Message): void {
    const context = m.context ?? "";
    if (this.tracker.voters.size === 1 || this.bugs.has("read-without-quorum")) {
      this.answerRead({ index: this.log.committed, from: m.from, context, acks: new Set() });
      return;
    }
    // Until an entry of our term is committed, our commit index may be behind
    // what a previous leader committed.
    if (this.log.term(this.log.committed) !== this.term) {
      this.readsBeforeCommit.push(m);
      return;
    }
    this.pendingReads.push({ index: this.log.committed, from: m.from, context, acks: new Set([this.id]) });
    this.bcastHeartbeat(context);
  }

  private releaseReadsBeforeCommit(): void {
    if (this.readsBeforeCommit.length === 0 || this.log.term(this.log.committed) !== this.term) return;
    const waiting = this.readsBeforeCommit;
    this.readsBeforeCommit = [];
    for (const m of waiting) this.handleReadIndex(m);
  }

  private ackRead(context: string, from: NodeId): void {
    const i = this.pendingReads.findIndex((r) => r.context === context);
    if (i < 0) return;
    const read = this.pendingReads[i]!;
    if (this.tracker.isVoter(from)) read.acks.add(from);
    let acked = 0;
    for (const id of read.acks) if (this.tracker.isVoter(id)) acked++;
    if (acked < this.tracker.quorum()) return;
    // A quorum confirmed our leadership after every earlier read arrived too.
    const done = this.pendingReads.splice(0, i + 1);
    for (const r of done) this.answerRead(r);
  }

  private answerRead(r: PendingRead): void {
    if (r.from === this.id || r.from === NONE) {
      this.readStates.push({ index: r.index, context: r.context });
    } else {
      this.send({ type: "readIndexResp", to: r.from, index: r.index, context: r.context });
    }
  }

  // ------------------------------------------------- leadership transfer

  private handleTransferLeader(transferee: NodeId): void {
    const pr = this.tracker.progress.get(transferee);
    if (pr === undefined || pr.isLearner || transferee === this.id) return;
    if (this.leadTransferee === transferee) return;
    this.leadTransferee = transferee;
    // The transfer must finish within an election timeout.
    this.electionElapsed = 0;
    if (pr.match === this.log.lastIndex()) this.send({ type: "timeoutNow", to: transferee });
    else this.sendAppend(transferee, pr);
  }

  // ----------------------------------------------- membership (applied)

  /** Applies a committed membership change. Called as the entry is handed out to be applied. */
  applyConfChange(cc: ConfChange): void {
    const t = this.tracker;
    switch (cc.type) {
      case "addVoter":
        t.learners.delete(cc.node);
        t.voters.add(cc.node);
        break;
      case "addLearner":
        t.voters.delete(cc.node);
        t.learners.add(cc.node);
        break;
      case "removeNode":
        t.voters.delete(cc.node);
        t.learners.delete(cc.node);
        t.progress.delete(cc.node);
        break;
    }
    let added: NodeId = NONE;
    if (cc.type !== "removeNode") {
      const pr = t.progress.get(cc.node);
      if (pr === undefined) {
        this.addProgress(cc.node, this.log.lastIndex() + 1);
        added = cc.node;
      } else {
        pr.isLearner = cc.type === "addLearner";
      }
    }
    if (this.role !== "leader") return;
    if (!t.isVoter(this.id)) {
      // A leader removed from the voters steps down; the others elect a new one.
      this.becomeFollower(this.term, NONE);
      return;
    }
    if (this.leadTransferee !== NONE && !t.isVoter(this.leadTransferee)) this.leadTransferee = NONE;
    // The quorum changed: something may now be committed.
    // A new member is probed at once rather than at the next heartbeat.
    if (this.maybeCommit()) this.bcastAppend();
    else for (const [id, pr] of t.progress) if (id !== this.id) this.sendAppend(id, pr, id === added);
  }

  /** Applies the membership changes among entries being handed out to be applied. */
  onApply(entries: readonly Entry[]): void {
    for (const e of entries) if (e.type === "conf") this.applyConfChange(decodeConfChange(e.data));
  }
}

/** `a` then `b` as one message to the same peer, or undefined when they cannot be one. */
function mergeMessages(a: Message, b: Message, maxBytes: number): Message | undefined {
  if (a.type !== b.type || a.from !== b.from || a.term !== b.term) return undefined;
  const ae = a.entries ?? [];
  const be = b.entries ?? [];
  if (a.type === "app") {
    const lastTerm = ae.length > 0 ? ae[ae.length - 1]!.term : a.logTerm;
    if (b.index !== (a.index ?? 0) + ae.length || b.logTerm !== lastTerm) return undefined;
  } else if (a.type !== "prop" || ![...ae, ...be].every((e) => e.type === "normal")) {
    return undefined;
  }
  let bytes = 0;
  for (const e of ae) bytes += entrySize(e);
  for (const e of be) bytes += entrySize(e);
  if (bytes > maxBytes) return undefined;
  return a.type === "app" ? { ...a, entries: [...ae, ...be], commit: Math.max(a.commit ?? 0, b.commit ?? 0) } : { ...a, entries: [...ae, ...be] };
}
