// An interaction environment for golden-trace tests of the consensus core,
// in the style of etcd's datadriven tests (rafttest/interaction_env*.go).
//
// The environment holds N RawNodes, each on its own MemoryStorage, and plays
// the driver for all of them: it takes each Ready and follows the driver
// contract (snapshot, entries, hard state, then messages, then apply, then
// advance), and it is the network: every message sent waits in the
// recipient's mailbox until a command delivers or drops it, except that a
// message on a cut link (see `partition`, `isolate`) or to a node that is
// down is lost, whether the link was cut before it was sent or before it was
// delivered. Nothing happens unless a command asks for it, so a trace is a
// deterministic function of the commands: no clock, no randomness (election
// jitter is pinned to zero), no iteration over unordered collections.
//
// Each command prints what it caused: Readies, messages delivered or dropped,
// and `INFO` lines for changes of role or term observed after each step. On
// top of the trace, the environment checks safety invariants as events
// happen (one leader per term, one entry applied per index cluster-wide, a
// persisted commit index never going back) and records a failed check for
// each violation; `expect-*` commands record checks too. A runner must fail
// on any failed check, whatever the trace says.

import {
  type Bug,
  type ConfChange,
  type ConfState,
  type Entry,
  type HardState,
  type Message,
  MemoryStorage,
  NETWORK_MESSAGE_TYPES,
  type NodeId,
  NONE,
  RawNode,
  type Ready,
  type Role,
  type Snapshot,
  decodeConfChange,
  isBug,
  isRaftError,
} from "../../raft/index.js";

const enc = new TextEncoder();
const dec = new TextDecoder();

export const ELECTION_TICK = 10;
export const HEARTBEAT_TICK = 1;

/** One `cmd arg key=value key=(a,b)` line, parsed. */
export interface Command {
  readonly name: string;
  /** Positional arguments, in order. */
  readonly args: readonly string[];
  /** key=value arguments; `key=(a,b)` and `key=a,b` both give lists. */
  readonly kv: ReadonlyMap<string, string>;
  /** Where the command is written, for messages. */
  readonly where: string;
}

/** The outcome of an invariant or an `expect-*` command. */
export interface Check {
  readonly ok: boolean;
  readonly message: string;
}

/** A usage error in a test file (unknown command, bad argument). */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/**
 * Splits a command line into tokens: `"quoted strings"` (JSON syntax),
 * `key=(a, b)` lists (spaces allowed inside the parentheses), and words.
 */
export function parseCommand(line: string, where: string): Command {
  const tokens = line.match(/"(?:[^"\\]|\\.)*"|[^\s=]+=\([^)]*\)|\S+/g) ?? [];
  const [name, ...rest] = tokens;
  if (name === undefined) throw new UsageError(`${where}: empty command`);
  const args: string[] = [];
  const kv = new Map<string, string>();
  for (const tok of rest) {
    const eq = tok.indexOf("=");
    if (tok.startsWith('"')) {
      args.push(JSON.parse(tok) as string);
    } else if (eq > 0) {
      let value = tok.slice(eq + 1);
      if (value.startsWith("(") && value.endsWith(")")) value = value.slice(1, -1);
      kv.set(tok.slice(0, eq), value.replace(/\s+/g, ""));
    } else {
      args.push(tok);
    }
  }
  return { name, args, kv, where };
}

function list(v: string | undefined): NodeId[] {
  if (v === undefined || v === "") return [];
  return v.split(",").filter((s) => s !== "");
}

// ------------------------------------------------------------ formatting

export function formatEntry(e: Entry): string {
  if (e.type === "conf") {
    const cc = decodeConfChange(e.data);
    return `${e.term}/${e.index} EntryConfChange ${cc.type} ${cc.node}`;
  }
  return `${e.term}/${e.index} EntryNormal ${JSON.stringify(dec.decode(e.data))}`;
}

function formatIds(ids: readonly NodeId[]): string {
  return `[${ids.join(",")}]`;
}

export function formatConfState(cs: ConfState): string {
  return `Voters:${formatIds(cs.voters)} Learners:${formatIds(cs.learners)}`;
}

export function formatSnapshot(s: Snapshot): string {
  return `Index:${s.meta.index} Term:${s.meta.term} ${formatConfState(s.meta.confState)}`;
}

export function formatHardState(hs: HardState): string {
  return `HardState Term:${hs.term}${hs.vote === NONE ? "" : ` Vote:${hs.vote}`} Commit:${hs.commit}`;
}

/**
 * One line per message, every field that is set: `Log:term/index` is the
 * (index, logTerm) an append or a vote request is about; `Index:` is the
 * index an answer is about.
 */
export function formatMessage(m: Message): string {
  let s = `${m.from}->${m.to} ${m.type} Term:${m.term}`;
  if (m.logTerm !== undefined && !m.reject) s += ` Log:${m.logTerm}/${m.index ?? 0}`;
  else if (m.index !== undefined) s += ` Index:${m.index}`;
  if (m.commit !== undefined) s += ` Commit:${m.commit}`;
  if (m.reject) {
    s += " Rejected";
    if (m.rejectHint !== undefined) s += ` (Hint:${m.rejectHint} LogTerm:${m.logTerm ?? 0})`;
  }
  if (m.context !== undefined) s += ` Context:${m.context}`;
  if (m.entries !== undefined && m.entries.length > 0) s += ` Entries:[${m.entries.map(formatEntry).join(", ")}]`;
  if (m.snapshot !== undefined) s += ` Snapshot: ${formatSnapshot(m.snapshot)}`;
  return s;
}

/** Collects output lines, with the indentation `stabilize` uses for nested output. */
class Output {
  readonly lines: string[] = [];
  private indent = "";
  /** Nothing but failures is printed while quiet (`log-level none`). */
  quiet = false;

  line(s: string): void {
    if (!this.quiet) this.lines.push(this.indent + s);
  }

  /** Printed even while quiet: errors and failed checks. */
  always(s: string): void {
    this.lines.push(this.indent + s);
  }

  nested(f: () => void): void {
    const old = this.indent;
    this.indent += "  ";
    try {
      f();
    } finally {
      this.indent = old;
    }
  }
}

// ---------------------------------------------------------------- nodes

interface NodeOptions {
  readonly preVote: boolean;
  readonly checkQuorum: boolean;
  readonly maxSizePerMsg?: number;
  /** Protocol bugs to inject (raft/bugs.ts), to show that a scenario's expectations catch them. */
  readonly bugs?: ReadonlySet<Bug>;
}

/** The application state of a node: the data of the normal entries it applied, in order. */
interface AppliedValue {
  readonly index: number;
  readonly data: string;
}

/** What a snapshot's data holds: the application state at its index. */
function encodeState(values: readonly AppliedValue[]): Uint8Array {
  return enc.encode(JSON.stringify(values));
}

function decodeState(data: Uint8Array): AppliedValue[] {
  if (data.length === 0) return [];
  return JSON.parse(dec.decode(data)) as AppliedValue[];
}

class EnvNode {
  rn: RawNode | undefined;
  /** Application state: rebuilt from the snapshot on restart, as a real state machine would be. */
  values: AppliedValue[] = [];
  applied = 0;
  /** The configuration after each applied membership change, to snapshot at any applied index. */
  confs: { index: number; conf: ConfState }[] = [];
  /** ReadStates handed out: context -> read index. */
  reads = new Map<string, number>();
  /** Last role and term reported in an INFO line. */
  seenRole: Role = "follower";
  seenTerm = 0;
  /** Highest commit index persisted in a HardState. */
  persistedCommit = 0;

  constructor(
    readonly id: NodeId,
    readonly storage: MemoryStorage,
    readonly opts: NodeOptions,
  ) {}

  get alive(): boolean {
    return this.rn !== undefined;
  }

  /** Creates the RawNode from what the storage holds (a start or a restart). */
  boot(): void {
    this.rn = new RawNode({
      id: this.id,
      storage: this.storage,
      electionTick: ELECTION_TICK,
      heartbeatTick: HEARTBEAT_TICK,
      random: () => 0,
      preVote: this.opts.preVote,
      checkQuorum: this.opts.checkQuorum,
      ...(this.opts.maxSizePerMsg !== undefined ? { maxSizePerMsg: this.opts.maxSizePerMsg } : {}),
      ...(this.opts.bugs !== undefined ? { bugs: this.opts.bugs } : {}),
    });
    this.restoreState(this.storage.snapshot());
    this.seenRole = this.rn.raft.role;
    this.seenTerm = this.rn.raft.term;
    this.persistedCommit = Math.max(this.persistedCommit, this.storage.hardState().commit);
  }

  restoreState(s: Snapshot): void {
    this.values = decodeState(s.data);
    this.applied = s.meta.index;
    this.confs = [{ index: s.meta.index, conf: s.meta.confState }];
  }

  confAt(index: number): ConfState {
    let conf = this.confs[0]!.conf;
    for (const c of this.confs) if (c.index <= index) conf = c.conf;
    return conf;
  }

  node(): RawNode {
    if (this.rn === undefined) throw new UsageError(`node ${this.id} is down`);
    return this.rn;
  }
}

function applyToConf(cs: ConfState, cc: ConfChange): ConfState {
  const voters = new Set(cs.voters);
  const learners = new Set(cs.learners);
  switch (cc.type) {
    case "addVoter":
      learners.delete(cc.node);
      voters.add(cc.node);
      break;
    case "addLearner":
      voters.delete(cc.node);
      learners.add(cc.node);
      break;
    case "removeNode":
      voters.delete(cc.node);
      learners.delete(cc.node);
      break;
  }
  return { voters: [...voters].sort(), learners: [...learners].sort() };
}

const ROLES: readonly Role[] = ["follower", "preCandidate", "candidate", "leader"];

// ------------------------------------------------------------ environment

export class InteractionEnv {
  /** In creation order, which is the order `stabilize` and `raft-state` visit them. */
  readonly nodes = new Map<NodeId, EnvNode>();
  /** Undelivered messages, per recipient, in the order they were sent. */
  readonly mailbox = new Map<NodeId, Message[]>();
  /** Cut links, as "from>to". */
  readonly cut = new Set<string>();
  readonly checks: Check[] = [];
  private out = new Output();
  private quiet = false;

  /** The term -> leader every leader observed so far (election safety). */
  private readonly leaders = new Map<number, NodeId>();
  /** index -> the entry applied there by any node (state machine safety). */
  private readonly appliedAt = new Map<number, { term: number; by: NodeId }>();

  /** Runs one command and returns what it printed ("ok" when nothing). */
  handle(cmd: Command): string {
    this.out = new Output();
    this.out.quiet = this.quiet;
    try {
      this.dispatch(cmd);
    } catch (e) {
      if (e instanceof UsageError) throw new UsageError(`${cmd.where}: ${e.message}`);
      // The core threw where it must not: a failure, and part of the trace.
      const msg = e instanceof Error ? e.message : String(e);
      this.fail(`${cmd.where}: ${cmd.name} threw: ${msg}`);
      this.out.always(`panic: ${msg}`);
    }
    return this.out.lines.length > 0 ? this.out.lines.join("\n") : "ok";
  }

  private dispatch(c: Command): void {
    switch (c.name) {
      case "log-level":
        return this.logLevel(c);
      case "add-nodes":
        return this.addNodes(c);
      case "add-joiner":
        return this.addJoiner(c);
      case "campaign":
        return this.onNode(c, (n) => n.node().campaign());
      case "propose":
        return this.onNode(c, (n) => n.node().propose(enc.encode(this.arg(c, 1))));
      case "propose-conf-change":
        return this.proposeConfChange(c);
      case "tick-election":
        return this.tick(c, ELECTION_TICK);
      case "tick-heartbeat":
        return this.tick(c, HEARTBEAT_TICK);
      case "process-ready":
        return this.processReadyCmd(c);
      case "deliver-msgs":
        return this.deliverMsgsCmd(c);
      case "stabilize":
        return this.stabilize(c.args.length > 0 ? c.args.map((id) => this.get(id)) : this.allNodes());
      case "partition":
        return this.partition(c);
      case "isolate":
        return this.isolate(c);
      case "heal":
        this.cut.clear();
        return;
      case "transfer-leadership":
        return this.transferLeadership(c);
      case "read-index":
        return this.onNode(c, (n) => n.node().readIndex(this.arg(c, 1)));
      case "compact":
        return this.compact(c);
      case "crash":
        return this.crash(c);
      case "restart":
        return this.restart(c);
      case "status":
        return this.status(c);
      case "raft-log":
        return this.raftLog(c);
      case "raft-state":
        return this.raftState();
      case "expect-role":
        return this.expectRole(c);
      case "expect-term":
        return this.expectField(c, "term", (n) => String(n.node().raft.term));
      case "expect-vote":
        return this.expectField(c, "vote", (n) => n.node().raft.vote || "none");
      case "expect-lead":
        return this.expectField(c, "leader", (n) => n.node().raft.lead || "none");
      case "expect-commit":
        return this.expectField(c, "commit index", (n) => String(n.node().raft.log.committed));
      case "expect-applied":
        return this.expectField(c, "applied index", (n) => String(n.applied));
      case "expect-data":
        return this.expectData(c);
      case "expect-log":
        return this.expectLog(c);
      case "expect-conf":
        return this.expectConf(c);
      case "expect-read":
        return this.expectRead(c);
      default:
        throw new UsageError(`unknown command ${c.name}`);
    }
  }

  // -------------------------------------------------------------- helpers

  private arg(c: Command, i: number): string {
    const a = c.args[i];
    if (a === undefined) throw new UsageError(`${c.name}: missing argument ${i + 1}`);
    return a;
  }

  private int(s: string): number {
    if (!/^\d+$/.test(s)) throw new UsageError(`not a number: ${s}`);
    return Number(s);
  }

  private get(id: string): EnvNode {
    const n = this.nodes.get(id);
    if (n === undefined) throw new UsageError(`no node ${id}`);
    return n;
  }

  private allNodes(): EnvNode[] {
    return [...this.nodes.values()];
  }

  private fail(message: string): void {
    this.checks.push({ ok: false, message });
  }

  private check(ok: boolean, message: string): void {
    this.checks.push({ ok, message });
    if (ok) this.out.line("ok");
    else this.out.always(`FAILED: ${message}`);
  }

  /** Runs `f` on the node named by the first argument; a refusal by the core prints its error code. */
  private onNode(c: Command, f: (n: EnvNode) => void): void {
    const n = this.get(this.arg(c, 0));
    this.guard(n, () => f(n));
  }

  private guard(n: EnvNode, f: () => void): void {
    try {
      f();
    } catch (e) {
      if (!isRaftError(e)) throw e;
      this.out.always(`error: ${e.code}`);
    }
    this.observe(n);
  }

  /** Prints an INFO line if the node's role or term changed since last reported. */
  private observe(n: EnvNode): void {
    const r = n.rn?.raft;
    if (r === undefined) return;
    if (r.role !== n.seenRole || r.term !== n.seenTerm) {
      this.out.line(`INFO ${n.id} became ${r.role} at term ${r.term}`);
      n.seenRole = r.role;
      n.seenTerm = r.term;
    }
    if (r.role === "leader") {
      const other = this.leaders.get(r.term);
      if (other === undefined) this.leaders.set(r.term, n.id);
      else if (other !== n.id) this.fail(`election safety: ${other} and ${n.id} are both leaders of term ${r.term}`);
    }
  }

  // -------------------------------------------------------------- setup

  private logLevel(c: Command): void {
    const level = this.arg(c, 0);
    if (level !== "none" && level !== "info") throw new UsageError(`log-level none|info, not ${level}`);
    this.quiet = level === "none";
  }

  private options(c: Command): NodeOptions {
    const bool = (k: string): boolean => {
      const v = c.kv.get(k);
      if (v === undefined) return true;
      if (v !== "true" && v !== "false") throw new UsageError(`${k}=true|false`);
      return v === "true";
    };
    const size = c.kv.get("max-size-per-msg");
    const bugs = list(c.kv.get("bugs"));
    for (const b of bugs) if (!isBug(b)) throw new UsageError(`no bug ${b}`);
    return {
      preVote: bool("prevote"),
      checkQuorum: bool("checkquorum"),
      ...(size !== undefined ? { maxSizePerMsg: this.int(size) } : {}),
      ...(bugs.length > 0 ? { bugs: new Set(bugs as Bug[]) } : {}),
    };
  }

  /**
   * `add-nodes N voters=(...) [learners=(...)] [prevote=false]
   * [checkquorum=false] [max-size-per-msg=B] [bugs=(...)]`: creates nodes with the next N
   * ids, each bootstrapped like a founding member of a new cluster: a
   * snapshot at index 1, term 1, holding the initial configuration.
   */
  private addNodes(c: Command): void {
    const count = this.int(this.arg(c, 0));
    const voters = list(c.kv.get("voters"));
    const learners = list(c.kv.get("learners"));
    if (voters.length === 0) throw new UsageError("add-nodes needs voters=(...)");
    const opts = this.options(c);
    for (let i = 0; i < count; i++) {
      const id = String(this.nodes.size + 1);
      const storage = new MemoryStorage();
      storage.applySnapshot({
        meta: { index: 1, term: 1, confState: { voters, learners } },
        data: new Uint8Array(),
      });
      storage.setHardState({ term: 1, vote: NONE, commit: 1 });
      this.addNode(id, storage, opts);
    }
  }

  /** `add-joiner ID`: a node with empty storage; it learns everything from a leader's snapshot. */
  private addJoiner(c: Command): void {
    const id = this.arg(c, 0);
    if (this.nodes.has(id)) throw new UsageError(`node ${id} exists`);
    this.addNode(id, new MemoryStorage(), this.options(c));
  }

  private addNode(id: NodeId, storage: MemoryStorage, opts: NodeOptions): void {
    const n = new EnvNode(id, storage, opts);
    this.nodes.set(id, n);
    n.boot();
  }

  private proposeConfChange(c: Command): void {
    const type = this.arg(c, 1);
    if (type !== "addVoter" && type !== "addLearner" && type !== "removeNode") {
      throw new UsageError(`conf change type addVoter|addLearner|removeNode, not ${type}`);
    }
    const node = this.arg(c, 2);
    this.onNode(c, (n) => n.node().proposeConfChange({ type, node }));
  }

  private tick(c: Command, times: number): void {
    for (const id of c.args) {
      const n = this.get(id);
      for (let i = 0; i < times; i++) this.guard(n, () => n.node().tick());
    }
  }

  private transferLeadership(c: Command): void {
    const from = c.kv.get("from");
    const to = c.kv.get("to");
    if (from === undefined || to === undefined) throw new UsageError("transfer-leadership from=ID to=ID");
    const n = this.get(from);
    this.guard(n, () => n.node().transferLeader(to));
  }

  // ------------------------------------------------------------- Ready

  private processReadyCmd(c: Command): void {
    if (c.args.length === 0) throw new UsageError("process-ready ID...");
    const nodes = c.args.map((id) => this.get(id));
    if (nodes.length === 1) {
      this.processReady(nodes[0]!);
      return;
    }
    for (const n of nodes) {
      this.out.line(`> ${n.id} handling Ready`);
      this.out.nested(() => this.processReady(n));
    }
  }

  /** The driver contract for one Ready, printing what it held. */
  private processReady(n: EnvNode): void {
    const rn = n.node();
    if (!rn.hasReady()) {
      this.out.line("<empty Ready>");
      return;
    }
    const rd = rn.ready();
    // Decided before anything is sent: which messages the network loses.
    const lost = rd.messages.map((m) => this.lossReason(m));
    this.printReady(rd, lost);
    if (rd.snapshot !== undefined) {
      n.storage.applySnapshot(rd.snapshot);
      n.restoreState(rd.snapshot);
      this.checkApplied(n, rd.snapshot.meta.index, rd.snapshot.meta.term);
    }
    n.storage.append(rd.entries);
    if (rd.hardState !== undefined) {
      if (rd.hardState.commit < n.persistedCommit) {
        this.fail(`${n.id}: persisted commit index went back from ${n.persistedCommit} to ${rd.hardState.commit}`);
      }
      n.persistedCommit = Math.max(n.persistedCommit, rd.hardState.commit);
      n.storage.setHardState(rd.hardState);
    }
    rd.messages.forEach((m, k) => {
      if (lost[k] === undefined) this.send(m);
    });
    this.apply(n, rd);
    rn.advance(rd);
    this.observe(n);
    rd.messages.forEach((m, k) => {
      if (lost[k] !== undefined) this.undeliverable(m);
    });
  }

  private printReady(rd: Ready, lost: readonly (string | undefined)[]): void {
    const o = this.out;
    o.line(`Ready MustSync=${rd.mustSync}:`);
    if (rd.softState !== undefined) o.line(`Lead:${rd.softState.leader || "none"} State:${rd.softState.role}`);
    if (rd.hardState !== undefined) o.line(formatHardState(rd.hardState));
    if (rd.snapshot !== undefined) o.line(`Snapshot ${formatSnapshot(rd.snapshot)}`);
    if (rd.entries.length > 0) {
      o.line("Entries:");
      for (const e of rd.entries) o.line(formatEntry(e));
    }
    if (rd.committedEntries.length > 0) {
      o.line("CommittedEntries:");
      for (const e of rd.committedEntries) o.line(formatEntry(e));
    }
    if (rd.messages.length > 0) {
      o.line("Messages:");
      rd.messages.forEach((m, k) => o.line(formatMessage(m) + (lost[k] !== undefined ? ` [${lost[k]}]` : "")));
    }
    if (rd.readStates.length > 0) {
      o.line("ReadStates:");
      for (const rs of rd.readStates) o.line(`Index:${rs.index} Context:${rs.context}`);
    }
  }

  private apply(n: EnvNode, rd: Ready): void {
    for (const e of rd.committedEntries) {
      if (e.index <= n.applied) continue;
      if (e.index !== n.applied + 1) this.fail(`${n.id}: applies ${e.index} after ${n.applied}`);
      this.checkApplied(n, e.index, e.term);
      n.applied = e.index;
      if (e.type === "conf") {
        const prev = n.confs[n.confs.length - 1]!.conf;
        n.confs.push({ index: e.index, conf: applyToConf(prev, decodeConfChange(e.data)) });
      } else if (e.data.length > 0) {
        n.values.push({ index: e.index, data: dec.decode(e.data) });
      }
    }
    for (const rs of rd.readStates) n.reads.set(rs.context, rs.index);
  }

  /** State machine safety: no two nodes apply different entries at one index. */
  private checkApplied(n: EnvNode, index: number, term: number): void {
    const prior = this.appliedAt.get(index);
    if (prior === undefined) this.appliedAt.set(index, { term, by: n.id });
    else if (prior.term !== term) {
      this.fail(`state machine safety: ${n.id} applies ${term}/${index}, ${prior.by} applied ${prior.term}/${index}`);
    }
  }

  // ------------------------------------------------------------ network

  private send(m: Message): void {
    let box = this.mailbox.get(m.to);
    if (box === undefined) {
      box = [];
      this.mailbox.set(m.to, box);
    }
    box.push(m);
  }

  /**
   * `deliver-msgs ID... [type=T] [from=ID] [drop=true]`: hands every waiting
   * message for each ID (optionally only of type T, or only from one sender)
   * to its node, in the order sent, or drops them. A message on a link cut
   * since it was sent, or to a node that went down, is dropped.
   */
  private deliverMsgsCmd(c: Command): void {
    if (c.args.length === 0) throw new UsageError("deliver-msgs ID...");
    const type = c.kv.get("type");
    if (type !== undefined && !(NETWORK_MESSAGE_TYPES as readonly string[]).includes(type)) throw new UsageError(`no message type ${type}`);
    const from = c.kv.get("from");
    const drop = c.kv.get("drop") === "true";
    let n = 0;
    for (const id of c.args) {
      n += this.deliverMsgs(id, (m) => (type === undefined || m.type === type) && (from === undefined || m.from === from), drop);
    }
    if (n === 0) this.out.line("no messages");
  }

  private deliverMsgs(to: NodeId, select: (m: Message) => boolean, drop: boolean): number {
    const box = this.mailbox.get(to) ?? [];
    const picked = box.filter(select);
    this.mailbox.set(
      to,
      box.filter((m) => !select(m)),
    );
    for (const m of picked) {
      const reason = drop ? "dropped" : this.lossReason(m);
      if (reason !== undefined) {
        this.out.line(`${formatMessage(m)} [${reason}]`);
        this.undeliverable(m);
        continue;
      }
      this.out.line(formatMessage(m));
      const target = this.get(to);
      this.guard(target, () => target.node().step(m));
    }
    return picked.length;
  }

  /**
   * Why the network loses `m`, if it does: its link is cut, or its recipient
   * is down or unknown. Checked when a message is sent and again when it is
   * delivered.
   */
  private lossReason(m: Message): string | undefined {
    const target = this.nodes.get(m.to);
    if (this.cut.has(`${m.from}>${m.to}`)) return "dropped: partitioned";
    if (target === undefined) return "dropped: no such node";
    if (!target.alive) return `dropped: ${m.to} is down`;
    return undefined;
  }

  /** A lost snapshot is reported to its sender, as a transport does, so that it can retry. */
  private undeliverable(m: Message): void {
    if (m.type !== "snap") return;
    const sender = this.nodes.get(m.from);
    if (sender?.rn === undefined) return;
    this.out.line(`INFO ${m.from} reports snapshot to ${m.to} failed`);
    this.guard(sender, () => sender.node().reportSnapshot(m.to, false));
  }

  /** Ready handling and message delivery, round after round, until nothing is left to do. */
  private stabilize(nodes: readonly EnvNode[]): void {
    const ids = new Set(nodes.map((n) => n.id));
    for (let round = 0; ; round++) {
      if (round > 1000) throw new Error("stabilize: no fixed point after 1000 rounds");
      let done = true;
      for (const n of nodes) {
        if (!n.alive || !n.node().hasReady()) continue;
        done = false;
        this.out.line(`> ${n.id} handling Ready`);
        this.out.nested(() => this.processReady(n));
      }
      // Mailboxes of nodes that are not (or no longer) members are emptied
      // too when stabilizing everything, so that nothing stays in flight.
      const recipients = [...ids];
      if (nodes.length === this.nodes.size) {
        for (const to of [...this.mailbox.keys()].sort()) if (!ids.has(to)) recipients.push(to);
      }
      for (const to of recipients) {
        if ((this.mailbox.get(to) ?? []).length === 0) continue;
        done = false;
        this.out.line(`> ${to} receiving messages`);
        this.out.nested(() => this.deliverMsgs(to, () => true, false));
      }
      if (done) return;
    }
  }

  private groups(c: Command): NodeId[][] {
    const groups: NodeId[][] = [[]];
    for (const a of c.args) {
      if (a === "/") groups.push([]);
      else groups[groups.length - 1]!.push(...list(a));
    }
    return groups.filter((g) => g.length > 0);
  }

  /**
   * `partition 1,2 / 3,4,5`: the network splits into the groups given (nodes
   * not named form one more group); messages between groups are dropped, in
   * both directions. Replaces any earlier partition.
   */
  private partition(c: Command): void {
    const groups = this.groups(c);
    const named = new Set(groups.flat());
    for (const id of named) this.get(id);
    const rest = [...this.nodes.keys()].filter((id) => !named.has(id));
    if (rest.length > 0) groups.push(rest);
    this.cut.clear();
    for (let i = 0; i < groups.length; i++) {
      for (let j = 0; j < groups.length; j++) {
        if (i === j) continue;
        for (const a of groups[i]!) for (const b of groups[j]!) this.cut.add(`${a}>${b}`);
      }
    }
    this.printCuts();
  }

  /** `isolate ID`: cuts every link to and from ID (adding to any partition). */
  private isolate(c: Command): void {
    const id = this.get(this.arg(c, 0)).id;
    for (const other of this.nodes.keys()) {
      if (other === id) continue;
      this.cut.add(`${id}>${other}`);
      this.cut.add(`${other}>${id}`);
    }
    this.printCuts();
  }

  private printCuts(): void {
    const pairs = [...this.cut]
      .map((k) => k.split(">") as [string, string])
      .filter(([a, b]) => a < b || !this.cut.has(`${b}>${a}`))
      .map(([a, b]) => (this.cut.has(`${b}>${a}`) ? `${a}<->${b}` : `${a}->${b}`))
      .sort();
    this.out.line(`cut: ${pairs.join(" ")}`);
  }

  // ------------------------------------------------- storage and crashes

  /**
   * `compact ID INDEX`: snapshots the node's application state and
   * configuration as of INDEX (which it must have applied) and discards the
   * log up to INDEX.
   */
  private compact(c: Command): void {
    const n = this.get(this.arg(c, 0));
    const index = this.int(this.arg(c, 1));
    if (index > n.applied) throw new UsageError(`${n.id} has applied only up to ${n.applied}`);
    const values = n.values.filter((v) => v.index <= index);
    n.storage.createSnapshot(index, n.confAt(index), encodeState(values));
    n.storage.compact(index);
  }

  /**
   * `crash ID`: the node stops. What it persisted stays in its storage; what
   * the core held in memory is gone, and so are the messages waiting for it
   * and those it sent that were not delivered yet.
   */
  private crash(c: Command): void {
    const n = this.get(this.arg(c, 0));
    n.node();
    n.rn = undefined;
    n.reads.clear();
    let lost = (this.mailbox.get(n.id) ?? []).length;
    this.mailbox.delete(n.id);
    for (const [to, box] of this.mailbox) {
      const kept = box.filter((m) => m.from !== n.id);
      lost += box.length - kept.length;
      this.mailbox.set(to, kept);
    }
    this.out.line(`INFO ${n.id} crashed; ${lost} undelivered messages lost`);
  }

  /** `restart ID`: a new core on the storage of a crashed node. */
  private restart(c: Command): void {
    const n = this.get(this.arg(c, 0));
    if (n.alive) throw new UsageError(`node ${n.id} is running`);
    n.boot();
    const r = n.node().raft;
    this.out.line(`INFO ${n.id} restarted as ${r.role} at term ${r.term}, commit ${r.log.committed}, last index ${r.log.lastIndex()}`);
  }

  // ------------------------------------------------------------ reports

  private status(c: Command): void {
    const n = this.get(this.arg(c, 0));
    const s = n.node().status();
    this.out.line(
      `${s.id}: ${s.role} Term:${s.term} Vote:${s.vote || "none"} Lead:${s.lead || "none"} ` +
        `Commit:${s.commit} Applied:${s.applied} Log:[${s.firstIndex}..${s.lastIndex}]`,
    );
    this.out.line(formatConfState(s.confState));
    for (const id of [...s.progress.keys()].sort()) {
      const p = s.progress.get(id)!;
      this.out.line(`${id}: ${p.state} match=${p.match} next=${p.next}`);
    }
    this.out.line(`applied data: ${JSON.stringify(n.values.map((v) => v.data))}`);
  }

  /** `raft-log ID`: the entries in the node's storage (what it persisted). */
  private raftLog(c: Command): void {
    const n = this.get(this.arg(c, 0));
    const first = n.storage.firstIndex();
    const last = n.storage.lastIndex();
    if (last < first) {
      this.out.line(`log is empty: first index=${first}, last index=${last}`);
      return;
    }
    for (const e of n.storage.entries(first, last + 1, Number.MAX_SAFE_INTEGER)) this.out.line(formatEntry(e));
  }

  private raftState(): void {
    for (const n of this.nodes.values()) {
      const r = n.rn?.raft;
      if (r === undefined) this.out.line(`${n.id}: down`);
      else {
        const kind = r.tracker.isVoter(r.id) ? "voter" : r.tracker.isMember(r.id) ? "learner" : "non-member";
        this.out.line(`${n.id}: ${r.role} (${kind}) Term:${r.term} Lead:${r.lead || "none"}`);
      }
    }
  }

  // ----------------------------------------------------------- expects

  private expectRole(c: Command): void {
    const role = this.arg(c, 1);
    if (!ROLES.includes(role as Role)) throw new UsageError(`no role ${role}`);
    this.expectField(c, "role", (n) => n.node().raft.role, role);
  }

  /** `expect-X ID VALUE`: the node's X is VALUE. */
  private expectField(c: Command, what: string, get: (n: EnvNode) => string, want = this.arg(c, 1)): void {
    const n = this.get(this.arg(c, 0));
    const got = get(n);
    this.check(got === want, `${c.where}: ${n.id}'s ${what} is ${got}, expected ${want}`);
  }

  /** `expect-data ID V...`: the node applied exactly the normal entries V..., in order. */
  private expectData(c: Command): void {
    const n = this.get(this.arg(c, 0));
    const got = JSON.stringify(n.values.map((v) => v.data));
    const want = JSON.stringify(c.args.slice(1));
    this.check(got === want, `${c.where}: ${n.id} applied ${got}, expected ${want}`);
  }

  /** `expect-log ID T/I...`: the node's log (persisted or not) holds exactly these entries. */
  private expectLog(c: Command): void {
    const n = this.get(this.arg(c, 0));
    const log = n.node().raft.log;
    const got: string[] = [];
    for (let i = log.firstIndex(); i <= log.lastIndex(); i++) got.push(`${log.term(i)}/${i}`);
    const want = c.args.slice(1);
    this.check(got.join(" ") === want.join(" "), `${c.where}: ${n.id}'s log is [${got.join(" ")}], expected [${want.join(" ")}]`);
  }

  /** `expect-conf ID voters=(...) learners=(...)`: the node's current configuration. */
  private expectConf(c: Command): void {
    const n = this.get(this.arg(c, 0));
    const got = formatConfState(n.node().raft.confState());
    const want = formatConfState({
      voters: list(c.kv.get("voters")).sort(),
      learners: list(c.kv.get("learners")).sort(),
    });
    this.check(got === want, `${c.where}: ${n.id}'s configuration is ${got}, expected ${want}`);
  }

  /** `expect-read ID CTX INDEX`: the node got a ReadState for CTX at INDEX, and has applied up to it (the read can be served). */
  private expectRead(c: Command): void {
    const n = this.get(this.arg(c, 0));
    const ctx = this.arg(c, 1);
    const want = this.int(this.arg(c, 2));
    const got = n.reads.get(ctx);
    this.check(
      got === want && n.applied >= want,
      `${c.where}: ${n.id}'s read ${ctx} is at ${got ?? "none"} with applied ${n.applied}, expected ${want}`,
    );
  }
}
