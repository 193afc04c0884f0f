// A deterministic simulation of a Raft cluster: N cores of raft/ in one
// process, virtual time, a seeded PRNG, a network that drops, duplicates,
// delays and reorders messages and can be partitioned (also one way), disks
// that lose what was not yet persisted when a node crashes, membership
// changes, leadership transfers and snapshots, all while clients run puts,
// compare-and-sets and linearizable reads against a replicated key-value
// store. Invariants are checked as events happen; the client history is
// checked for linearizability at the end.

import {
  type Bug,
  type ConfChange,
  type Entry,
  type Message,
  MemoryStorage,
  type NodeId,
  NONE,
  RawNode,
  type Ready,
  type Snapshot,
  decodeConfChange,
  isRaftError,
  sendableBeforePersist,
} from "../../raft/index.js";
import type { KvInput, KvOperation, KvOutput } from "./kvmodel.js";
import { Prng } from "./prng.js";

const enc = new TextEncoder();
const dec = new TextDecoder();

export interface SimOptions {
  readonly seed: number;
  /** Virtual time units of 10 ms each: one round of ticks. */
  readonly steps: number;
  readonly bugs?: ReadonlySet<Bug>;
  /** Log each event (for replaying a failing seed). */
  readonly trace?: (line: string) => void;
}

/** One client operation as the linearizability checker sees it. */
export type HistoryOp = KvOperation;

export interface SimStats {
  steps: number;
  leaderChanges: number;
  crashes: number;
  restarts: number;
  membershipChanges: number;
  transfers: number;
  partitions: number;
  snapshotsSent: number;
  compactions: number;
  messages: number;
  dropped: number;
  duplicated: number;
  opsInvoked: number;
  opsOk: number;
  opsTimedOut: number;
}

export interface SimResult {
  readonly seed: number;
  readonly violations: string[];
  readonly history: HistoryOp[];
  readonly stats: SimStats;
}

const TICK = 10; // virtual ms per tick: one step
const ELECTION_TICK = 10;
const HEARTBEAT_TICK = 2;
const CLIENT_TIMEOUT = 40 * TICK;
const KEYS = ["a", "b", "c", "d", "e"];
const MAX_VOTERS = 5;
const MAX_NODES = 7;
const MAX_EVENTS_PER_STEP = 20_000;

/** A committed command of the replicated key-value store. */
interface Command {
  readonly id: string;
  readonly input: KvInput;
}

/** The replicated state machine: a map, plus the ids of applied commands (proposals can be duplicated by the network). */
class KvStore {
  data = new Map<string, string>();
  seen = new Set<string>();
  applied = 0;

  /** The command's result, or undefined if it was applied before (a duplicate). */
  apply(cmd: Command): KvOutput | undefined {
    if (this.seen.has(cmd.id)) return undefined;
    this.seen.add(cmd.id);
    const i = cmd.input;
    switch (i.op) {
      case "put":
        this.data.set(i.key, i.value);
        return { ok: true };
      case "cas": {
        const cur = this.data.get(i.key) ?? null;
        if (cur !== i.expected) return { ok: false };
        this.data.set(i.key, i.value);
        return { ok: true };
      }
      case "get":
        return { value: this.data.get(i.key) ?? null };
    }
  }

  encode(): Uint8Array {
    return enc.encode(JSON.stringify({ data: [...this.data], seen: [...this.seen], applied: this.applied }));
  }

  static decode(b: Uint8Array): KvStore {
    const s = new KvStore();
    if (b.length === 0) return s;
    const v = JSON.parse(dec.decode(b)) as { data: [string, string][]; seen: string[]; applied: number };
    s.data = new Map(v.data);
    s.seen = new Set(v.seen);
    s.applied = v.applied;
    return s;
  }

  digest(): string {
    return JSON.stringify([...this.data].sort());
  }
}

interface Waiter {
  readonly client: Client;
}

interface PendingRead {
  readonly client: Client;
  readonly key: string;
  index: number | undefined;
}

class SimNode {
  rn: RawNode | undefined;
  kv = new KvStore();
  readyScheduled = false;
  /** Bumped on every crash, so that events scheduled before it are ignored. */
  incarnation = 0;
  writes = new Map<string, Waiter>();
  reads = new Map<string, PendingRead>();
  /** Stopped for good: removed from the cluster. */
  retired = false;
  /** Last commit index persisted, to check it never goes back. */
  persistedCommit = 0;
  /** Last term persisted: a term once durable never goes back. */
  persistedTerm = 0;

  constructor(
    readonly id: NodeId,
    readonly storage: MemoryStorage,
    readonly jitter: Prng,
  ) {}

  get alive(): boolean {
    return this.rn !== undefined;
  }
}

interface Client {
  readonly id: number;
  busy: boolean;
  op?: { input: KvInput; call: number; cmdId: string; node: NodeId; deadline: number };
}

interface Event {
  readonly time: number;
  readonly seq: number;
  readonly run: () => void;
}

/** A binary min-heap of events by (time, seq). */
class EventQueue {
  private heap: Event[] = [];
  private seq = 0;

  push(time: number, run: () => void): void {
    const e: Event = { time, seq: this.seq++, run };
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (less(h[p]!, e)) break;
      h[i] = h[p]!;
      i = p;
    }
    h[i] = e;
  }

  peekTime(): number {
    return this.heap[0]?.time ?? Infinity;
  }

  pop(): Event | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (top === undefined || last === undefined || h.length === 0) return top;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= h.length) break;
      const r = l + 1;
      const c = r < h.length && less(h[r]!, h[l]!) ? r : l;
      if (less(last, h[c]!)) break;
      h[i] = h[c]!;
      i = c;
    }
    h[i] = last;
    return top;
  }
}

function less(a: Event, b: Event): boolean {
  return a.time < b.time || (a.time === b.time && a.seq < b.seq);
}

function entryKey(e: Entry): string {
  return `${e.type}:${dec.decode(e.data)}`;
}

export class Simulation {
  private readonly rng: Prng;
  private readonly q = new EventQueue();
  private now = 0;
  private readonly nodes = new Map<NodeId, SimNode>();
  private nextNodeId = 1;
  private readonly clients: Client[] = [];
  private nextCmd = 0;
  private readonly history: HistoryOp[] = [];
  readonly violations: string[] = [];
  readonly stats: SimStats = {
    steps: 0,
    leaderChanges: 0,
    crashes: 0,
    restarts: 0,
    membershipChanges: 0,
    transfers: 0,
    partitions: 0,
    snapshotsSent: 0,
    compactions: 0,
    messages: 0,
    dropped: 0,
    duplicated: 0,
    opsInvoked: 0,
    opsOk: 0,
    opsTimedOut: 0,
  };

  // Faults in force.
  /** Links that drop everything: "from>to". */
  private readonly cut = new Set<string>();
  private dropRate: number;
  private dupRate: number;
  private readonly snapshotEvery: number;
  /** Per-seed settings of the core: every valid combination gets its turn. */
  private readonly preVote: boolean;
  private readonly checkQuorum: boolean;
  private readonly maxSizePerMsg: number;
  private readonly maxInflightMsgs: number;
  /** The agents' settings (merged messages, sparse learner heartbeats) or etcd's, from a stream of their own. */
  private readonly mergeMessages: boolean;
  private readonly learnerHeartbeatEvery: number;
  /** Whether the driver sends what it may before the disk write (both are valid drivers). */
  private readonly earlySend: boolean;
  /** Chance of a crash right after a Ready that changed the hard state. */
  private readonly crashiness: number;
  private quiet = false;

  // Global knowledge for the invariants.
  private readonly leaderOfTerm = new Map<number, NodeId>();
  /** (index, term) -> entry key and the term of the entry before it: the log matching property. */
  private readonly logRegistry = new Map<string, { key: string; prevTerm: number | undefined }>();
  /** index -> entry applied there by any node: state machine safety. */
  private readonly appliedAt = new Map<number, { term: number; key: string }>();
  private readonly confChangesSeen = new Set<number>();
  /** Commands applied by any node, and the commands of writes that timed out. */
  private readonly appliedCmds = new Set<string>();
  private readonly timedOut = new Map<HistoryOp, string>();

  constructor(private readonly opts: SimOptions) {
    this.rng = new Prng(opts.seed);
    this.dropRate = this.rng.pick([0, 0.01, 0.05, 0.1]);
    this.dupRate = this.rng.pick([0, 0.01, 0.05]);
    this.snapshotEvery = this.rng.pick([8, 20, 50]);
    this.preVote = this.rng.chance(0.6);
    this.checkQuorum = this.rng.chance(0.6);
    // 1 byte: one entry per append, so followers acknowledge parts of the log.
    this.maxSizePerMsg = this.rng.pick([1, 256, 4096]);
    this.maxInflightMsgs = this.rng.pick([1, 4, 64]);
    this.crashiness = this.rng.pick([0.005, 0.02, 0.05]);
    this.earlySend = this.rng.chance(0.5);
    const knobs = new Prng(opts.seed + 7919);
    this.mergeMessages = knobs.chance(0.5);
    this.learnerHeartbeatEvery = knobs.pick([1, 5]);
    const voters = this.rng.pick([1, 3, 3, 3, 5]);
    const ids: NodeId[] = [];
    for (let i = 0; i < voters; i++) ids.push(this.newNodeId());
    // Every founding node starts from the same bootstrap snapshot: index 1,
    // term 1, the founding voters. Nodes that join later start empty and
    // receive a snapshot from the leader.
    const boot: Snapshot = { meta: { index: 1, term: 1, confState: { voters: ids, learners: [] } }, data: new Uint8Array() };
    for (const id of ids) {
      const st = new MemoryStorage();
      st.applySnapshot(boot);
      st.setHardState({ term: 1, vote: NONE, commit: 1 });
      this.addNode(id, st);
    }
    const nClients = this.rng.int(2, 6);
    for (let i = 0; i < nClients; i++) this.clients.push({ id: i, busy: false });
  }

  private newNodeId(): NodeId {
    return String(this.nextNodeId++);
  }

  private trace(line: string): void {
    this.opts.trace?.(`${String(this.now).padStart(7)} ${line}`);
  }

  private violation(what: string): void {
    if (this.violations.length < 20) this.violations.push(`t=${this.now}: ${what}`);
    this.trace(`VIOLATION ${what}`);
  }

  private addNode(id: NodeId, storage: MemoryStorage): SimNode {
    const n = new SimNode(id, storage, this.rng.fork());
    this.nodes.set(id, n);
    this.boot(n);
    return n;
  }

  /** Starts (or restarts) a node from what its disk holds. */
  private boot(n: SimNode): void {
    n.rn = new RawNode({
      id: n.id,
      storage: n.storage,
      electionTick: ELECTION_TICK,
      heartbeatTick: HEARTBEAT_TICK,
      random: () => n.jitter.float(),
      maxSizePerMsg: this.maxSizePerMsg,
      maxInflightMsgs: this.maxInflightMsgs,
      mergeMessages: this.mergeMessages,
      learnerHeartbeatEvery: this.learnerHeartbeatEvery,
      preVote: this.preVote,
      checkQuorum: this.checkQuorum,
      ...(this.opts.bugs ? { bugs: this.opts.bugs } : {}),
    });
    n.kv = KvStore.decode(n.storage.snapshot().data);
    n.kv.applied = n.storage.snapshot().meta.index;
    n.persistedCommit = Math.max(n.persistedCommit, n.storage.hardState().commit);
    const inc = n.incarnation;
    // Each node ticks on its own phase.
    const phase = this.rng.int(0, TICK - 1);
    const tick = (): void => {
      if (n.incarnation !== inc || !n.rn) return;
      n.rn.tick();
      this.afterEvent(n);
      this.q.push(this.now + TICK, tick);
    };
    this.q.push(this.now + phase + 1, tick);
  }

  private crash(n: SimNode): void {
    if (!n.rn) return;
    this.trace(`crash ${n.id}`);
    this.stats.crashes++;
    // Whatever the core had not handed to the disk is gone, and so is the
    // state machine (rebuilt from the snapshot and the log on restart).
    n.rn = undefined;
    n.incarnation++;
    n.readyScheduled = false;
    n.writes.clear();
    n.reads.clear();
  }

  private restart(n: SimNode): void {
    if (n.rn || n.retired) return;
    this.trace(`restart ${n.id}`);
    this.stats.restarts++;
    this.boot(n);
  }

  /** Schedules the processing of a node's Ready after a disk delay. */
  private afterEvent(n: SimNode): void {
    if (!n.rn || n.readyScheduled || !n.rn.hasReady()) return;
    n.readyScheduled = true;
    const inc = n.incarnation;
    this.q.push(this.now + this.rng.int(0, 3), () => {
      if (n.incarnation !== inc) return;
      n.readyScheduled = false;
      this.handleReady(n);
      this.afterEvent(n);
    });
  }

  private handleReady(n: SimNode): void {
    const rn = n.rn!;
    // The configuration the commit index in this Ready was computed under:
    // ready() applies the membership changes it hands out.
    const voters = [...rn.raft.tracker.voters];
    const wasLeader = rn.raft.role === "leader";
    const rd = rn.ready();
    this.checkRoles(n);
    // What may leave before the disk write does (a leader's appends run in
    // parallel with its own write); a crash before the write then leaves
    // followers with entries the leader lost.
    const early = this.earlySend ? rd.messages.filter(sendableBeforePersist) : [];
    for (const m of early) this.send(n, m);
    if (early.length > 0 && this.crashPoint(n, rd, "sentEarly", wasLeader)) return;
    if (rd.snapshot) {
      n.storage.applySnapshot(rd.snapshot);
      n.kv = KvStore.decode(rd.snapshot.data);
      n.kv.applied = rd.snapshot.meta.index;
      this.trace(`${n.id} installs snapshot ${rd.snapshot.meta.index}/${rd.snapshot.meta.term}`);
    }
    if (rd.entries.length > 0) {
      n.storage.append(rd.entries);
      this.checkLogMatching(n, rd.entries);
    }
    if (rd.hardState) {
      if (rd.hardState.commit < n.persistedCommit) {
        this.violation(`${n.id} commit index went back from ${n.persistedCommit} to ${rd.hardState.commit}`);
      }
      n.persistedCommit = Math.max(n.persistedCommit, rd.hardState.commit);
      if (rd.hardState.term < n.persistedTerm) {
        this.violation(`${n.id} persisted term went back from ${n.persistedTerm} to ${rd.hardState.term}`);
      }
      n.persistedTerm = rd.hardState.term;
      n.storage.setHardState(rd.hardState);
      if (wasLeader) this.checkDurableQuorum(n, rd.hardState.commit, voters);
    }
    // Crash points: after the disk write, after applying (the contract lets
    // a driver apply before or after sending), and after sending.
    if (this.crashPoint(n, rd, "persisted", wasLeader)) return;
    this.apply(n, rd);
    if (this.crashPoint(n, rd, "applied", wasLeader)) return;
    for (const m of rd.messages) if (!early.includes(m)) this.send(n, m);
    rn.advance(rd);
    this.maybeCompact(n);
    this.crashPoint(n, rd, "sent", wasLeader);
  }

  /**
   * Crashes at the moments where protocol bugs show, more often than chance
   * would: a new leader dying before its first append left (entries of its
   * term that nobody else has: the raw material of the Raft paper's Figure
   * 8); a leader dying right after it committed, before its next append left;
   * a node dying right after it granted a vote (a vote not made durable is
   * forgotten). The process comes back at once or later.
   */
  private crashPoint(n: SimNode, rd: Ready, stage: "sentEarly" | "persisted" | "applied" | "sent", wasLeader: boolean): boolean {
    if (this.quiet || (rd.entries.length === 0 && !rd.hardState)) return false;
    let weight: number;
    if (stage === "sentEarly") {
      weight = wasLeader && rd.entries.length > 0 ? 1 : 0;
    } else if (stage === "persisted") {
      weight = rd.softState?.role === "leader" ? 4 : 0.5;
    } else if (stage === "applied") {
      weight = wasLeader && rd.committedEntries.length > 0 ? 8 : 0;
    } else {
      const granted = rd.messages.some((m) => (m.type === "voteResp" || m.type === "preVoteResp") && !m.reject);
      weight = granted ? 8 : rd.hardState ? 1 : 0;
    }
    if (!this.rng.chance(this.crashiness * weight)) return false;
    this.crash(n);
    // A leader that died before its first append left stays away long
    // enough for the others to move on without it; the rest come back at
    // once or a little later.
    const delay =
      stage === "persisted" && rd.softState?.role === "leader"
        ? this.rng.int(10, 60) * TICK
        : this.rng.chance(0.5)
          ? this.rng.int(0, 2)
          : this.rng.int(1, 3 * TICK);
    this.q.push(this.now + delay, () => this.restart(n));
    return true;
  }

  // ------------------------------------------------------------- network

  private send(from: SimNode, m: Message): void {
    this.stats.messages++;
    if (!this.quiet && this.rng.chance(this.dropRate)) {
      this.stats.dropped++;
      this.undeliverable(from, m);
      return;
    }
    const copies = !this.quiet && this.rng.chance(this.dupRate) ? 2 : 1;
    if (copies === 2) this.stats.duplicated++;
    for (let c = 0; c < copies; c++) {
      // Mostly short delays; sometimes long ones, which reorder messages.
      const delay = this.rng.chance(0.05) ? this.rng.int(5, 80) : this.rng.int(1, 6);
      this.q.push(this.now + delay, () => this.deliver(from, m));
    }
  }

  private deliver(from: SimNode, m: Message): void {
    const to = this.nodes.get(m.to);
    if (!to?.rn || this.cut.has(`${m.from}>${m.to}`)) {
      this.undeliverable(from, m);
      return;
    }
    if (m.type === "snap") this.stats.snapshotsSent++;
    to.rn.step(m);
    this.afterEvent(to);
    if (m.type === "snap" && from.rn) {
      from.rn.reportSnapshot(m.to, true);
      this.afterEvent(from);
    }
  }

  private undeliverable(from: SimNode, m: Message): void {
    if (m.type === "snap" && from.rn) {
      from.rn.reportSnapshot(m.to, false);
      this.afterEvent(from);
    }
  }

  // -------------------------------------------------------------- apply

  private apply(n: SimNode, rd: Ready): void {
    for (const e of rd.committedEntries) {
      this.checkApplied(n, e);
      if (e.index <= n.kv.applied) continue;
      n.kv.applied = e.index;
      if (e.type === "conf") {
        this.onConfApplied(e);
        continue;
      }
      if (e.data.length === 0) continue;
      const cmd = JSON.parse(dec.decode(e.data)) as Command;
      this.appliedCmds.add(cmd.id);
      const out = n.kv.apply(cmd);
      const w = n.writes.get(cmd.id);
      if (w && out) {
        n.writes.delete(cmd.id);
        this.complete(w.client, out);
      }
    }
    for (const rs of rd.readStates) {
      const r = n.reads.get(rs.context);
      if (r) r.index = rs.index;
    }
    for (const [ctx, r] of n.reads) {
      if (r.index !== undefined && n.kv.applied >= r.index) {
        n.reads.delete(ctx);
        this.complete(r.client, { value: n.kv.data.get(r.key) ?? null });
      }
    }
  }

  private onConfApplied(e: Entry): void {
    if (this.confChangesSeen.has(e.index)) return;
    this.confChangesSeen.add(e.index);
    this.stats.membershipChanges++;
    const cc = decodeConfChange(e.data);
    this.trace(`conf change applied at ${e.index}: ${cc.type} ${cc.node}`);
    if (cc.type === "removeNode") {
      // A removed node is shut down a little later, as an agent that left.
      const n = this.nodes.get(cc.node);
      if (n) {
        this.q.push(this.now + this.rng.int(1, 30) * TICK, () => {
          this.crash(n);
          n.retired = true;
        });
      }
    }
  }

  private maybeCompact(n: SimNode): void {
    const snap = n.storage.snapshot().meta.index;
    const applied = n.kv.applied;
    if (applied - snap < this.snapshotEvery || applied > n.storage.lastIndex()) return;
    // The core's configuration equals the state machine's here: every
    // handed-out entry has been applied.
    n.storage.createSnapshot(applied, n.rn!.raft.confState(), n.kv.encode());
    n.storage.compact(Math.max(n.storage.firstIndex() - 1, applied - this.rng.int(0, 5)));
    this.stats.compactions++;
  }

  // ------------------------------------------------------------- clients

  private clientStep(c: Client): void {
    if (c.busy) {
      if (c.op && this.now >= c.op.deadline) this.timeout(c);
      return;
    }
    if (!this.rng.chance(0.3)) return;
    const members = [...this.nodes.values()].filter((n) => n.rn && !n.retired);
    if (members.length === 0) return;
    const n = this.rng.pick(members);
    const key = this.rng.pick(KEYS);
    const r = this.rng.float();
    const value = `v${this.nextCmd}`;
    const input: KvInput =
      r < 0.4
        ? { op: "get", key }
        : r < 0.75
          ? { op: "put", key, value }
          : { op: "cas", key, expected: this.rng.chance(0.3) ? null : `v${this.rng.int(0, this.nextCmd)}`, value };
    const cmdId = `c${c.id}-${this.nextCmd++}`;
    try {
      if (input.op === "get") {
        n.reads.set(cmdId, { client: c, key, index: undefined });
        n.rn!.readIndex(cmdId);
      } else {
        n.writes.set(cmdId, { client: c });
        n.rn!.propose(enc.encode(JSON.stringify({ id: cmdId, input } satisfies Command)));
      }
    } catch (e) {
      // Refused at once (no leader known): it certainly did not happen.
      if (!isRaftError(e)) throw e;
      n.reads.delete(cmdId);
      n.writes.delete(cmdId);
      return;
    }
    this.stats.opsInvoked++;
    c.busy = true;
    c.op = { input, call: this.now, cmdId, node: n.id, deadline: this.now + CLIENT_TIMEOUT };
    this.trace(`client ${c.id} -> ${n.id} ${JSON.stringify(input)}`);
    this.afterEvent(n);
  }

  private complete(c: Client, out: KvOutput): void {
    const op = c.op;
    if (!op) return;
    this.stats.opsOk++;
    this.history.push({ clientId: c.id, input: op.input, output: out, call: op.call, return: this.now });
    this.trace(`client ${c.id} <- ${JSON.stringify(out)}`);
    c.busy = false;
    c.op = undefined;
  }

  private timeout(c: Client): void {
    const op = c.op!;
    this.stats.opsTimedOut++;
    const n = this.nodes.get(op.node);
    n?.writes.delete(op.cmdId);
    n?.reads.delete(op.cmdId);
    // A write that timed out may or may not have happened; a read that timed
    // out tells nothing and changes nothing.
    if (op.input.op !== "get") {
      const h: HistoryOp = { clientId: c.id, input: op.input, output: undefined, call: op.call, return: Infinity };
      this.history.push(h);
      this.timedOut.set(h, op.cmdId);
    }
    c.busy = false;
    c.op = undefined;
  }

  // -------------------------------------------------------------- faults

  private live(): SimNode[] {
    return [...this.nodes.values()].filter((n) => n.rn !== undefined);
  }

  private leader(): SimNode | undefined {
    let best: SimNode | undefined;
    for (const n of this.live()) {
      if (n.rn!.raft.role === "leader" && (!best || n.rn!.raft.term > best.rn!.raft.term)) best = n;
    }
    return best;
  }

  private injectFaults(): void {
    const r = this.rng;
    if (r.chance(0.004)) {
      const victims = this.live().filter((n) => !n.retired);
      // Crash the leader more often than its share: that is where bugs hide.
      const lead = this.leader();
      const n = lead && r.chance(0.4) ? lead : victims.length > 0 ? r.pick(victims) : undefined;
      if (n) {
        this.crash(n);
        this.q.push(this.now + r.int(2, 60) * TICK, () => this.restart(n));
      }
    }
    if (r.chance(0.003) && this.cut.size === 0) this.partition();
    if (r.chance(0.004) && this.cut.size > 0) {
      this.trace("heal");
      this.cut.clear();
    }
    if (r.chance(0.004)) {
      // Sometimes several at once: the core must refuse all but one.
      const burst = r.chance(0.3) ? r.int(2, 3) : 1;
      for (let i = 0; i < burst; i++) this.changeMembership();
    }
    if (r.chance(0.002)) {
      const lead = this.leader();
      const voters = lead ? lead.rn!.raft.confState().voters.filter((v) => v !== lead.id) : [];
      if (lead && voters.length > 0) {
        const to = r.pick(voters);
        this.trace(`transfer leadership ${lead.id} -> ${to}`);
        this.stats.transfers++;
        lead.rn!.transferLeader(to);
        this.afterEvent(lead);
      }
    }
  }

  private partition(): void {
    const ids = [...this.nodes.values()].filter((n) => !n.retired).map((n) => n.id);
    if (ids.length < 2) return;
    this.stats.partitions++;
    const kind = this.rng.int(0, 2);
    const lead = this.leader();
    if (kind === 0 && lead) {
      // Isolate the leader (both ways).
      for (const o of ids) if (o !== lead.id) this.cut.add(`${lead.id}>${o}`).add(`${o}>${lead.id}`);
      this.trace(`partition: isolate leader ${lead.id}`);
    } else if (kind === 1) {
      const side = new Set(ids.filter(() => this.rng.chance(0.5)));
      for (const a of ids) for (const b of ids) if (side.has(a) !== side.has(b)) this.cut.add(`${a}>${b}`);
      this.trace(`partition: ${[...side].join(",")} | ${ids.filter((i) => !side.has(i)).join(",")}`);
    } else {
      // One way: a node hears nobody, or nobody hears it.
      const n = this.rng.pick(ids);
      const inbound = this.rng.chance(0.5);
      for (const o of ids) if (o !== n) this.cut.add(inbound ? `${o}>${n}` : `${n}>${o}`);
      this.trace(`partition: ${n} ${inbound ? "deaf" : "mute"}`);
    }
  }

  private changeMembership(): void {
    const lead = this.leader();
    if (!lead) return;
    const cs = lead.rn!.raft.confState();
    const options: ConfChange[] = [];
    const total = cs.voters.length + cs.learners.length;
    if (total < MAX_NODES) options.push({ type: "addLearner", node: String(this.nextNodeId) });
    if (cs.voters.length < MAX_VOTERS) for (const l of cs.learners) options.push({ type: "addVoter", node: l });
    for (const l of cs.learners) options.push({ type: "removeNode", node: l });
    if (cs.voters.length > 3) for (const v of cs.voters) options.push({ type: "removeNode", node: v });
    if (options.length === 0) return;
    const cc = this.rng.pick(options);
    try {
      lead.rn!.proposeConfChange(cc);
    } catch (e) {
      if (isRaftError(e)) return;
      throw e;
    }
    this.trace(`propose conf change ${cc.type} ${cc.node} at ${lead.id}`);
    if (cc.type === "addLearner") {
      this.newNodeId();
      this.addNode(cc.node, new MemoryStorage());
    }
    this.afterEvent(lead);
  }

  // ---------------------------------------------------------- invariants

  private checkRoles(n: SimNode): void {
    const r = n.rn!.raft;
    if (r.role === "leader") {
      const prev = this.leaderOfTerm.get(r.term);
      if (prev === undefined) {
        this.leaderOfTerm.set(r.term, n.id);
        this.stats.leaderChanges++;
        this.trace(`${n.id} leader at term ${r.term}`);
        this.checkLeaderCompleteness(n);
        // An operator (or an agent replacing a dead voter) reacting to the
        // election at once: the case the own-term rule is for.
        if (!this.quiet && this.rng.chance(0.1)) this.q.push(this.now, () => this.changeMembership());
      } else if (prev !== n.id) {
        this.violation(`two leaders in term ${r.term}: ${prev} and ${n.id}`);
      }
    }
  }

  /** A new leader's log holds every entry committed before its term. */
  private checkLeaderCompleteness(n: SimNode): void {
    const log = n.rn!.raft.log;
    const first = log.firstIndex();
    for (const [i, a] of this.appliedAt) {
      if (i < first) continue;
      const t = log.term(i);
      if (t !== a.term) {
        this.violation(`leader ${n.id} of term ${n.rn!.raft.term} lacks committed entry ${i}/${a.term} (has term ${t})`);
        return;
      }
    }
  }

  /** Entries with equal (index, term) are equal, and so are their predecessors. */
  private checkLogMatching(n: SimNode, entries: readonly Entry[]): void {
    for (const e of entries) {
      let prevTerm: number | undefined;
      try {
        prevTerm = e.index - 1 >= n.storage.firstIndex() - 1 ? n.storage.term(e.index - 1) : undefined;
      } catch {
        prevTerm = undefined;
      }
      const k = `${e.index}/${e.term}`;
      const key = entryKey(e);
      const seen = this.logRegistry.get(k);
      if (seen === undefined) {
        this.logRegistry.set(k, { key, prevTerm });
      } else if (seen.key !== key) {
        this.violation(`log matching: two different entries at ${k} (node ${n.id})`);
      } else if (seen.prevTerm !== undefined && prevTerm !== undefined && seen.prevTerm !== prevTerm) {
        this.violation(`log matching: entry ${k} follows term ${prevTerm} on ${n.id}, ${seen.prevTerm} elsewhere`);
      } else if (seen.prevTerm === undefined && prevTerm !== undefined) {
        this.logRegistry.set(k, { key, prevTerm });
      }
    }
  }

  /** No two nodes apply different entries at one index. */
  private checkApplied(n: SimNode, e: Entry): void {
    const a = this.appliedAt.get(e.index);
    const key = entryKey(e);
    if (a === undefined) this.appliedAt.set(e.index, { term: e.term, key });
    else if (a.term !== e.term || a.key !== key) {
      this.violation(`state machine safety: ${n.id} applies ${e.index}/${e.term}, another node applied ${e.index}/${a.term}`);
    }
  }

  /**
   * A leader commits (and so acknowledges) an index only once it is durable
   * on a majority of its voters.
   */
  private checkDurableQuorum(n: SimNode, commit: number, voters: readonly NodeId[]): void {
    const t = n.rn!.raft.log.term(commit);
    if (t === undefined) return;
    const disks = voters.flatMap((id) => {
      const st = this.nodes.get(id)?.storage;
      if (!st) return [];
      let holds = st.snapshot().meta.index >= commit;
      try {
        holds ||= commit <= st.lastIndex() && st.term(commit) === t;
      } catch {
        /* compacted: covered by the snapshot */
      }
      return [{ id, holds, lastIndex: st.lastIndex(), lastTerm: st.term(st.lastIndex()) }];
    });
    const quorum = Math.floor(voters.length / 2) + 1;
    const durable = disks.filter((d) => d.holds).length;
    if (durable < quorum) {
      this.violation(`leader ${n.id} committed ${commit}/${t}, durable on only ${durable} of ${voters.length} voters`);
      return;
    }
    // What makes a commit final (§5.4): no voter without the entry can be
    // elected, because a majority holds a log more up to date than its own.
    // Raft's commit rule guarantees it at the moment of commit; committing an
    // entry of an earlier term by counting does not (Figure 8).
    for (const v of disks) {
      if (v.holds) continue;
      const wouldVote = disks.filter(
        (w) => v.lastTerm > w.lastTerm || (v.lastTerm === w.lastTerm && v.lastIndex >= w.lastIndex),
      ).length;
      if (wouldVote >= quorum) {
        this.violation(
          `leader ${n.id} committed ${commit}/${t}, but ${v.id} (last ${v.lastIndex}/${v.lastTerm}) lacks it and could win an election`,
        );
        return;
      }
    }
  }

  /** After the faults stop, every live member applies the same state. */
  private checkConvergence(): void {
    const members = [...this.nodes.values()].filter((n) => n.rn && !n.retired);
    const lead = this.leader();
    if (!lead) {
      this.violation("no leader after the cluster was healed and left calm");
      return;
    }
    const cs = lead.rn!.raft.confState();
    const inConf = members.filter((n) => cs.voters.includes(n.id) || cs.learners.includes(n.id));
    const target = lead.kv.applied;
    for (const n of inConf) {
      if (n.kv.applied < target) {
        this.violation(`${n.id} applied ${n.kv.applied}, leader ${lead.id} applied ${target} after calm`);
      } else if (n.kv.applied === target && n.kv.digest() !== lead.kv.digest()) {
        this.violation(`${n.id} and leader ${lead.id} hold different states at index ${target}`);
      }
    }
  }

  // ---------------------------------------------------------------- run

  run(): SimResult {
    const { steps } = this.opts;
    // A seed stops at its first violation: what follows a broken invariant
    // proves nothing more (and a diverged log can make the protocol churn).
    for (let s = 0; s < steps && this.violations.length === 0; s++) {
      this.stats.steps++;
      this.runUntil(this.now + TICK);
      this.injectFaults();
      for (const c of this.clients) this.clientStep(c);
      for (const n of this.nodes.values()) this.afterEvent(n);
    }
    // Calm: heal the network, bring crashed members back, stop client load,
    // and let the cluster settle.
    this.quiet = true;
    this.cut.clear();
    for (const n of this.nodes.values()) if (!n.rn && !n.retired) this.restart(n);
    for (let s = 0; s < 40 * ELECTION_TICK && !this.settled() && this.violations.length === 0; s++) {
      this.runUntil(this.now + TICK);
      for (const c of this.clients) if (c.busy && c.op && this.now >= c.op.deadline) this.timeout(c);
    }
    for (const c of this.clients) if (c.busy) this.timeout(c);
    if (this.violations.length === 0) this.checkConvergence();
    // Once the cluster is calm, a timed-out write that no node ever applied
    // never took effect and never will: it is a definite failure, which the
    // checker must not be asked to place. The others stay "may have happened".
    const history = this.history.filter((h) => {
      const id = this.timedOut.get(h);
      return id === undefined || this.appliedCmds.has(id);
    });
    return { seed: this.opts.seed, violations: this.violations, history, stats: this.stats };
  }

  /** Runs every event due before `until`; flags a message storm (unbounded work per step). */
  private runUntil(until: number): void {
    let events = 0;
    while (this.q.peekTime() < until) {
      const e = this.q.pop()!;
      this.now = Math.max(this.now, e.time);
      e.run();
      if (++events > MAX_EVENTS_PER_STEP) {
        this.violation(`more than ${MAX_EVENTS_PER_STEP} events in one step: a message storm`);
        return;
      }
    }
    this.now = until;
  }

  private settled(): boolean {
    const lead = this.leader();
    if (!lead || lead.kv.applied < lead.rn!.raft.log.committed || lead.rn!.raft.log.committed < lead.rn!.raft.log.lastIndex()) {
      return false;
    }
    const cs = lead.rn!.raft.confState();
    for (const id of [...cs.voters, ...cs.learners]) {
      const n = this.nodes.get(id);
      if (!n?.rn || n.retired) continue;
      if (n.kv.applied !== lead.kv.applied) return false;
    }
    return this.clients.every((c) => !c.busy);
  }
}
