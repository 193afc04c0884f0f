// The protocol through RawNode, driven by a tiny in-memory network. Tests are
// named after the sections of the Raft paper (and of Ongaro's dissertation
// for the extensions: pre-vote, CheckQuorum, leadership transfer, ReadIndex,
// single-server membership changes) whose rule they check.

import t from "tap";
import { MemoryStorage } from "../../raft/storage.js";
import { type Config } from "../../raft/raft.js";
import { RawNode } from "../../raft/rawnode.js";
import {
  type ConfState,
  type Entry,
  type Message,
  type NodeId,
  type ReadState,
  type Ready,
  decodeConfChange,
} from "../../raft/types.js";
import { ent, ids, raftErrorOf } from "./fixtures/helpers.js";

const ELECTION = 10;
const HEARTBEAT = 1;
const enc = new TextEncoder();
const dec = new TextDecoder();

/** A founding member's storage: the bootstrap snapshot at (1, 1) and hard state {term 1, commit 1}. */
function bootStorage(voters: readonly NodeId[], learners: readonly NodeId[] = []): MemoryStorage {
  const st = new MemoryStorage();
  st.applySnapshot({ meta: { index: 1, term: 1, confState: { voters, learners } }, data: new Uint8Array() });
  st.setHardState({ term: 1, vote: "", commit: 1 });
  return st;
}

function config(id: NodeId, storage: MemoryStorage, extra: Partial<Config> = {}): Config {
  return { id, storage, electionTick: ELECTION, heartbeatTick: HEARTBEAT, random: () => 0, ...extra };
}

interface Node {
  readonly id: NodeId;
  storage: MemoryStorage;
  rn: RawNode;
  /** Every committed entry handed out, in order (the "state machine"). */
  applied: Entry[];
  readStates: ReadState[];
}

/**
 * The driver: for each Ready, persist (snapshot, entries, hard state), then
 * send the messages, record the committed entries as applied, and advance.
 * Sending enqueues; delivery steps the queue into the receivers. Messages to
 * or from an isolated node, or to a node not on the network, are dropped.
 */
class Network {
  readonly nodes = new Map<NodeId, Node>();
  private queue: Message[] = [];
  private readonly isolated = new Set<NodeId>();
  /** Every message sent through the driver, dropped or not. */
  readonly sent: Message[] = [];
  /** Whether the transport reports each delivered snapshot (reportSnapshot) right after delivering it. */
  reportSnapshots = true;
  /** Messages for which this returns true are lost on the way. */
  drop: ((m: Message) => boolean) | undefined;

  constructor(voters: readonly NodeId[], opts: { learners?: readonly NodeId[]; config?: Partial<Config> } = {}) {
    for (const id of [...voters, ...(opts.learners ?? [])]) {
      this.add(id, bootStorage(voters, opts.learners), opts.config);
    }
  }

  /**
   * Adds a node. Unless the config says otherwise, the k-th node added gets
   * the jitter k/4: election timeouts 10, 12, 15, 17 ticks, so that nodes
   * ticked together time out one after the other instead of splitting votes.
   */
  add(id: NodeId, storage: MemoryStorage, extra: Partial<Config> = {}): Node {
    const jitter = 0.25 * this.nodes.size;
    const c = config(id, storage, { random: () => jitter, ...extra });
    const n: Node = { id, storage, rn: new RawNode(c), applied: [], readStates: [] };
    this.nodes.set(id, n);
    return n;
  }

  node(id: NodeId): Node {
    const n = this.nodes.get(id);
    if (n === undefined) throw new Error(`no node ${id}`);
    return n;
  }

  rn(id: NodeId): RawNode {
    return this.node(id).rn;
  }

  isolate(id: NodeId): void {
    this.isolated.add(id);
  }

  heal(): void {
    this.isolated.clear();
  }

  /** Handles one Ready of `id`, following the Ready contract. */
  handle(id: NodeId): Ready {
    const n = this.node(id);
    const rd = n.rn.ready();
    if (rd.snapshot !== undefined) n.storage.applySnapshot(rd.snapshot);
    n.storage.append(rd.entries);
    if (rd.hardState !== undefined) n.storage.setHardState(rd.hardState);
    for (const m of rd.messages) this.send(m);
    n.applied.push(...rd.committedEntries);
    n.readStates.push(...rd.readStates);
    n.rn.advance(rd);
    return rd;
  }

  private send(m: Message): void {
    this.sent.push(m);
    if (this.isolated.has(m.from) || this.isolated.has(m.to) || this.drop?.(m)) return;
    this.queue.push(m);
  }

  /** Handles Readies and delivers messages until nothing moves. */
  stabilize(): void {
    for (let round = 0; round < 10_000; round++) {
      let moved = false;
      for (const n of this.nodes.values()) {
        while (n.rn.hasReady()) {
          this.handle(n.id);
          moved = true;
        }
      }
      const batch = this.queue;
      this.queue = [];
      for (const m of batch) {
        moved = true;
        const to = this.nodes.get(m.to);
        if (to === undefined) continue;
        to.rn.step(m);
        // The transport reports a delivered snapshot, as etcd's does.
        if (m.type === "snap" && this.reportSnapshots) this.nodes.get(m.from)?.rn.reportSnapshot(m.to, true);
      }
      if (!moved) return;
    }
    throw new Error("the network did not settle");
  }

  /** Ticks the given nodes together `n` times, settling the network after each tick. */
  tick(ids: readonly NodeId[], n = 1): void {
    for (let i = 0; i < n; i++) {
      for (const id of ids) this.rn(id).tick();
      this.stabilize();
    }
  }

  /** Elects `id` through a real election (pre-vote on by default) and settles. */
  elect(id: NodeId): void {
    this.rn(id).campaign();
    this.stabilize();
  }

  /** Messages sent by `from` since `mark` (an index into `sent`). */
  sentBy(from: NodeId, mark = 0): Message[] {
    return this.sent.slice(mark).filter((m) => m.from === from);
  }
}

/** The payloads of applied normal entries with data, decoded as text. */
function payloads(es: readonly Entry[]): string[] {
  return es.filter((e) => e.type === "normal" && e.data.length > 0).map((e) => dec.decode(e.data));
}

function voters(cs: ConfState): string[] {
  return [...cs.voters];
}

// ------------------------------------------------------------ persistence

t.test("single node: an entry commits only after advance() acknowledges it as persisted", async (t) => {
  const st = bootStorage(["n1"]);
  const rn = new RawNode(config("n1", st));
  rn.campaign();
  t.equal(rn.status().role, "leader", "a single voter wins its own election at once");

  let rd = rn.ready();
  t.same(rd.softState, { leader: "n1", role: "leader" });
  t.same(rd.hardState, { term: 2, vote: "n1", commit: 1 }, "term and vote to persist; nothing new committed");
  t.same(ids(rd.entries), [[2, 2]], "the leader's empty entry of its term");
  t.same(rd.committedEntries, [], "not committed while it is only in memory");
  t.ok(rd.mustSync);
  t.equal(rn.status().commit, 1);

  st.append(rd.entries);
  st.setHardState(rd.hardState!);
  rn.advance(rd);
  t.equal(rn.status().commit, 2, "advance() acknowledged the write: a quorum of one holds it");

  rd = rn.ready();
  t.same(ids(rd.committedEntries), [[2, 2]]);
  t.same(rd.hardState, { term: 2, vote: "n1", commit: 2 });
  t.same(rd.entries, []);
  t.notOk(rd.mustSync, "only the commit index changed");
  st.setHardState(rd.hardState!);
  rn.advance(rd);
  t.notOk(rn.hasReady());

  rn.propose(enc.encode("x"));
  rd = rn.ready();
  t.same(ids(rd.entries), [[3, 2]]);
  t.equal(dec.decode(rd.entries[0]!.data), "x");
  t.same(rd.committedEntries, [], "a proposal is not in the committed entries of the Ready that persists it");
  t.equal(rd.hardState, undefined);
  t.equal(rn.status().commit, 2);

  st.append(rd.entries);
  rn.advance(rd);
  t.equal(rn.status().commit, 3);
  rd = rn.ready();
  t.same(ids(rd.committedEntries), [[3, 2]]);
  t.equal(dec.decode(rd.committedEntries[0]!.data), "x");
  t.same(rd.hardState, { term: 2, vote: "n1", commit: 3 });
  rn.advance(rd);
  t.equal(rn.status().applied, 3);
});

t.test("single node: without advance() nothing commits, however long it runs", async (t) => {
  const rn = new RawNode(config("n1", bootStorage(["n1"])));
  rn.campaign();
  rn.ready(); // never persisted, never advanced
  rn.propose(enc.encode("x"));
  for (let i = 0; i < 5 * ELECTION; i++) rn.tick();
  t.equal(rn.status().commit, 1);
  t.equal(rn.status().role, "leader", "a single voter is its own quorum for CheckQuorum");
});

t.test("§5.3 a follower applies what the leader committed, in the same order", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  for (const id of ["n1", "n2", "n3"]) {
    t.equal(net.rn(id).status().lead, "n1", `${id} knows the leader`);
    t.equal(net.rn(id).status().term, 2);
  }
  net.rn("n1").propose(enc.encode("a"));
  net.rn("n2").propose(enc.encode("b")); // forwarded to the leader
  net.stabilize();
  for (const id of ["n1", "n2", "n3"]) {
    t.same(payloads(net.node(id).applied), ["a", "b"], `${id} applied a then b`);
    t.equal(net.rn(id).status().commit, 4);
    t.same(ids(net.node(id).storage.entries(2, 5, Infinity)), [[2, 2], [3, 2], [4, 2]], `${id}: log`);
  }
});

// ------------------------------------------------------------- elections

t.test("§5.2 a learner never campaigns", async (t) => {
  const net = new Network(["n1", "n2", "n3"], { learners: ["n4"] });
  const l = net.rn("n4");
  const mark = net.sent.length;
  net.tick(["n4"], 10 * ELECTION);
  t.equal(l.status().role, "follower");
  t.equal(l.status().term, 1);
  t.same(net.sentBy("n4", mark), [], "not one message sent");

  l.campaign();
  t.notOk(l.hasReady(), "an explicit campaign is refused too");
  // Nor does it obey a leader's request to take over.
  l.step({ type: "timeoutNow", from: "n1", to: "n4", term: 1 });
  t.equal(l.status().role, "follower");
  t.equal(l.status().term, 1);
});

t.test("§5.2 a learner is never asked for, nor counted in, votes", async (t) => {
  const net = new Network(["n1", "n2", "n3"], { learners: ["n4"], config: { preVote: false } });
  net.isolate("n2");
  net.isolate("n3");
  const mark = net.sent.length;
  net.rn("n1").campaign();
  net.stabilize();
  const c = net.rn("n1");
  t.equal(c.status().role, "candidate");
  t.equal(c.status().term, 2);
  const asked = net.sentBy("n1", mark).filter((m) => m.type === "vote").map((m) => m.to);
  t.same(asked.sort(), ["n2", "n3"], "vote requests go to voters only");

  c.step({ type: "voteResp", from: "n4", to: "n1", term: 2 });
  t.equal(c.status().role, "candidate", "a learner's grant does not make a majority of {n1, n2, n3}");

  c.step({ type: "voteResp", from: "n2", to: "n1", term: 2 });
  t.equal(c.status().role, "leader", "one voter's grant does");
  net.heal();
  net.stabilize();
  t.equal(net.rn("n4").status().lead, "n1", "the learner follows the leader");
  t.equal(net.rn("n4").status().commit, 2, "and replicates its log");
});

t.test("§5.2 a node that is not in the configuration does not campaign", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  const stranger = net.add("n4", new MemoryStorage()); // a node about to join, knowing nothing yet
  const mark = net.sent.length;
  net.tick(["n4"], 10 * ELECTION);
  stranger.rn.campaign();
  net.stabilize();
  t.same(net.sentBy("n4", mark), []);
  t.equal(stranger.rn.status().term, 0);
  t.equal(stranger.rn.status().role, "follower");
  t.same(stranger.rn.status().confState, { voters: [], learners: [] });
});

t.test("§5.2 a follower campaigns after its election timeout and wins with a majority", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.isolate("n3");
  net.tick(["n1"], ELECTION - 1);
  t.equal(net.rn("n1").status().role, "follower", "not before the timeout");
  net.tick(["n1"]);
  t.equal(net.rn("n1").status().role, "leader", "n2's vote and its own make 2 of 3");
  t.equal(net.rn("n1").status().term, 2);
  t.equal(net.rn("n2").status().vote, "n1");
  t.equal(net.node("n2").storage.hardState().vote, "n1", "the vote was persisted before it was sent");
});

t.test("§5.2 a voter grants at most one vote per term", async (t) => {
  const rn = new RawNode(config("n2", bootStorage(["n1", "n2", "n3"])));
  rn.step({ type: "vote", from: "n1", to: "n2", term: 2, index: 1, logTerm: 1 });
  rn.step({ type: "vote", from: "n3", to: "n2", term: 2, index: 1, logTerm: 1 });
  rn.step({ type: "vote", from: "n1", to: "n2", term: 2, index: 1, logTerm: 1 }); // a retry
  const rd = rn.ready();
  t.same(
    rd.messages.map((m) => [m.to, m.type, m.term, m.reject ?? false]),
    [
      ["n1", "voteResp", 2, false],
      ["n3", "voteResp", 2, true],
      ["n1", "voteResp", 2, false],
    ],
    "n1 granted (and again on retry), n3 refused",
  );
  t.same(rd.hardState, { term: 2, vote: "n1", commit: 1 });
});

t.test("§5.4.1 a voter refuses a candidate whose log is less up to date", async (t) => {
  const st = bootStorage(["n1", "n2", "n3"]);
  st.append([ent(2, 2), ent(3, 2)]);
  st.setHardState({ term: 2, vote: "", commit: 1 });
  const rn = new RawNode(config("n2", st));
  const ask = (from: NodeId, term: number, index: number, logTerm: number) => {
    rn.step({ type: "vote", from, to: "n2", term, index, logTerm });
    const m = rn.ready().messages[0]!;
    return m.reject ?? false;
  };
  t.equal(ask("n1", 3, 2, 2), true, "same last term, shorter log");
  t.equal(ask("n3", 4, 9, 1), true, "longer log, older last term");
  t.equal(ask("n1", 5, 3, 2), false, "same last term and length");
  t.equal(rn.status().vote, "n1");
  t.equal(rn.status().term, 5);
});

t.test("§9.6 (dissertation) pre-vote: a partitioned node does not increase its term", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  net.isolate("n3");
  net.tick(["n3"], 10 * ELECTION);
  const n3 = net.rn("n3");
  t.equal(n3.status().term, 2, "it campaigned only in pre-vote rounds");
  t.equal(n3.status().role, "preCandidate");
  t.equal(n3.status().vote, "n1", "nor did it vote for itself");

  net.heal();
  net.tick(["n1"]); // a heartbeat
  t.equal(n3.status().role, "follower");
  t.equal(n3.status().lead, "n1");
  t.equal(net.rn("n1").status().role, "leader", "the rejoining node did not disrupt the leader");
  t.equal(net.rn("n1").status().term, 2);
});

t.test("without pre-vote, the same partition makes the node's term climb and disrupt on return", async (t) => {
  const net = new Network(["n1", "n2", "n3"], { config: { preVote: false } });
  net.elect("n1");
  net.isolate("n3");
  net.tick(["n3"], 10 * ELECTION);
  const term = net.rn("n3").status().term;
  t.ok(term > 2, `term climbed to ${term}`);
  net.heal();
  net.tick(["n1"]);
  t.equal(net.rn("n1").status().term, term, "the leader learned the higher term from the answer to its heartbeat");
  t.not(net.rn("n1").status().role, "leader");
});

t.test("§6.2 (dissertation) CheckQuorum: an isolated leader steps down after an election timeout without a quorum", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  net.tick(["n1"], 3); // heartbeats answered: the followers are recently active
  net.isolate("n1");
  net.tick(["n1"], ELECTION);
  t.equal(net.rn("n1").status().role, "leader", "each check looks back one whole election timeout");
  net.tick(["n1"], ELECTION);
  t.equal(net.rn("n1").status().role, "follower", "a whole timeout heard from no one: step down");
  t.equal(net.rn("n1").status().lead, "");
  t.equal(net.rn("n1").status().term, 2, "stepping down does not change the term");
  t.equal(raftErrorOf(() => net.rn("n1").propose(enc.encode("x"))), "PROPOSAL_DROPPED");
});

t.test("without CheckQuorum an isolated leader stays leader", async (t) => {
  const net = new Network(["n1", "n2", "n3"], { config: { checkQuorum: false } });
  net.elect("n1");
  net.isolate("n1");
  net.tick(["n1"], 5 * ELECTION);
  t.equal(net.rn("n1").status().role, "leader");
});

t.test("§5.1 a message with a lower term is ignored, and a stale leader is told the new term", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  net.isolate("n1");
  // n2 (timeout 12) campaigns first; n3 (timeout 15) no longer counts on n1's
  // lease by then and votes for it.
  net.tick(["n2", "n3"], 2 * ELECTION);
  t.equal(net.rn("n2").status().role, "leader");
  t.equal(net.rn("n2").status().term, 3);
  t.equal(net.rn("n1").status().role, "leader", "n1 has not noticed yet");

  // An append from the deposed leader: ignored, answered with the new term.
  const n2 = net.rn("n2");
  const last = n2.status().lastIndex;
  n2.step({ type: "app", from: "n1", to: "n2", term: 2, index: last, logTerm: 3, entries: [ent(last + 1, 2)], commit: last });
  t.equal(n2.status().lastIndex, last, "the entry was not appended");
  t.equal(n2.status().term, 3);
  t.equal(n2.status().role, "leader");
  const rd = net.handle("n2");
  t.same(
    rd.messages.map((m) => [m.type, m.to, m.term, m.reject ?? false]),
    [["appResp", "n1", 3, false]],
    "an empty answer carrying term 3",
  );

  // A vote request of an old term gets no answer at all.
  n2.step({ type: "vote", from: "n3", to: "n2", term: 2, index: 99, logTerm: 9 });
  t.notOk(n2.hasReady());
  // An old pre-vote is refused explicitly, so that the pre-candidate learns the term.
  n2.step({ type: "preVote", from: "n3", to: "n2", term: 2, index: 99, logTerm: 9 });
  t.same(
    n2.ready().messages.map((m) => [m.type, m.to, m.term, m.reject ?? false]),
    [["preVoteResp", "n3", 3, true]],
  );

  // Once n1 can talk again, its own heartbeats fetch the answer that deposes it.
  net.heal();
  net.tick(["n1"]);
  t.equal(net.rn("n1").status().role, "follower");
  t.equal(net.rn("n1").status().term, 3);
  net.tick(["n2"]);
  t.equal(net.rn("n1").status().lead, "n2");
});

// ------------------------------------------------------------ replication

t.test("§5.3 a follower rejects an append whose prevLogTerm does not match, with a hint", async (t) => {
  const st = bootStorage(["n1", "n2", "n3"]);
  st.append([ent(2, 2), ent(3, 2), ent(4, 3)]);
  st.setHardState({ term: 3, vote: "", commit: 1 });
  const rn = new RawNode(config("n2", st));
  // The leader of term 4 believes n2 holds (4, 4).
  rn.step({ type: "app", from: "n1", to: "n2", term: 4, index: 4, logTerm: 4, entries: [ent(5, 4)], commit: 4 });
  const rd = rn.ready();
  t.same(
    rd.messages.map((m) => ({ type: m.type, index: m.index, reject: m.reject, hint: m.rejectHint, logTerm: m.logTerm })),
    [{ type: "appResp", index: 4, reject: true, hint: 4, logTerm: 3 }],
    "our entry 4 is of term 3 (<= 4): the leader can look for term 3 in its log",
  );
  t.same(rd.entries, [], "nothing appended");
  t.equal(rn.status().lastIndex, 4);
  t.equal(rn.status().commit, 1, "nor committed");

  // A probe past our last index: the hint is our last index.
  rn.step({ type: "app", from: "n1", to: "n2", term: 4, index: 9, logTerm: 4, entries: [], commit: 4 });
  t.same(
    rn.ready().messages.map((m) => [m.reject, m.index, m.rejectHint, m.logTerm]),
    [[true, 9, 4, 3]],
  );

  // A probe with an older term than ours at that index: skip our whole term.
  rn.step({ type: "app", from: "n1", to: "n2", term: 4, index: 4, logTerm: 2, entries: [], commit: 4 });
  t.same(
    rn.ready().messages.map((m) => [m.reject, m.index, m.rejectHint, m.logTerm]),
    [[true, 4, 3, 2]],
    "the last entry of term <= 2 is 3",
  );
});

t.test("§5.3 a follower truncates conflicting uncommitted entries and takes the leader's", async (t) => {
  const st = bootStorage(["n1", "n2", "n3"]);
  st.append([ent(2, 2), ent(3, 2), ent(4, 2)]);
  st.setHardState({ term: 2, vote: "", commit: 2 });
  const rn = new RawNode(config("n2", st));
  rn.step({ type: "app", from: "n1", to: "n2", term: 3, index: 2, logTerm: 2, entries: [ent(3, 3)], commit: 3 });
  const rd = rn.ready();
  t.same(ids(rd.entries), [[3, 3]], "entry 3 replaced (the driver's append truncates 4 too)");
  t.same(ids(rd.committedEntries), [[2, 2], [3, 3]]);
  t.same(rd.messages.map((m) => [m.type, m.index, m.reject ?? false]), [["appResp", 3, false]]);
  st.append(rd.entries);
  st.setHardState(rd.hardState!);
  rn.advance(rd);
  t.equal(st.lastIndex(), 3);
  t.equal(st.term(3), 3);
  t.equal(rn.status().lastIndex, 3);
});

t.test("§5.3 an append older than the commit index is answered with the commit index", async (t) => {
  const st = bootStorage(["n1", "n2", "n3"]);
  st.append([ent(2, 2), ent(3, 2)]);
  st.setHardState({ term: 2, vote: "", commit: 3 });
  const rn = new RawNode(config("n2", st));
  rn.step({ type: "app", from: "n1", to: "n2", term: 2, index: 1, logTerm: 1, entries: [ent(2, 2)], commit: 2 });
  t.same(rn.ready().messages.map((m) => [m.type, m.index, m.reject ?? false]), [["appResp", 3, false]]);
});

t.test("§5.4.2 a leader does not commit an entry of an earlier term by counting replicas", async (t) => {
  // n1 holds 2/2 from an earlier term, uncommitted.
  const st = bootStorage(["n1", "n2", "n3"]);
  st.append([ent(2, 2)]);
  st.setHardState({ term: 2, vote: "", commit: 1 });
  const rn = new RawNode(config("n1", st, { preVote: false }));
  rn.campaign();
  rn.step({ type: "voteResp", from: "n2", to: "n1", term: 3 });
  t.equal(rn.status().role, "leader");
  let rd = rn.ready();
  t.same(ids(rd.entries), [[3, 3]]);
  st.append(rd.entries);
  st.setHardState(rd.hardState!);
  rn.advance(rd);

  rn.step({ type: "appResp", from: "n2", to: "n1", term: 3, index: 2 });
  t.equal(rn.status().commit, 1, "2/2 is on a majority, but is not of term 3 (Figure 8)");
  rn.step({ type: "appResp", from: "n2", to: "n1", term: 3, index: 3 });
  t.equal(rn.status().commit, 3, "committing 3/3 commits 2/2 with it");
  rd = rn.ready();
  t.same(ids(rd.committedEntries), [[2, 2], [3, 3]]);
});

t.test("§5.3 a lagging follower is caught up with a snapshot once the leader compacted its log", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  net.isolate("n3");
  for (const x of ["a", "b", "c"]) net.rn("n1").propose(enc.encode(x));
  net.stabilize();
  const leader = net.node("n1");
  t.equal(leader.rn.status().commit, 5);
  leader.storage.createSnapshot(5, leader.rn.raft.confState(), enc.encode("abc"));
  leader.storage.compact(5);
  t.equal(leader.rn.status().firstIndex, 6);

  net.heal();
  net.tick(["n1"], 2);
  const n3 = net.node("n3");
  t.equal(n3.storage.snapshot().meta.index, 5, "n3 installed the snapshot");
  t.equal(dec.decode(n3.storage.snapshot().data), "abc");
  t.equal(n3.rn.status().commit, 5);
  t.equal(leader.rn.status().progress.get("n3")?.match, 5);
  t.equal(leader.rn.status().progress.get("n3")?.state, "replicate");
  net.rn("n1").propose(enc.encode("d"));
  net.stabilize();
  t.same(payloads(n3.applied), ["d"], "entries after the snapshot arrive normally");
});

// --------------------------------------------------------------- proposals

t.test("propose on a follower with no leader throws PROPOSAL_DROPPED", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  t.equal(raftErrorOf(() => net.rn("n2").propose(enc.encode("x"))), "PROPOSAL_DROPPED");
  t.equal(raftErrorOf(() => net.rn("n2").readIndex("r")), "PROPOSAL_DROPPED");
  t.equal(
    raftErrorOf(() => net.rn("n2").proposeConfChange({ type: "addLearner", node: "n4" })),
    "PROPOSAL_DROPPED",
  );
  t.notOk(net.rn("n2").hasReady(), "nothing was forwarded");

  // A pre-candidate or candidate has no leader either.
  net.isolate("n2");
  net.tick(["n2"], 2 * ELECTION);
  t.equal(net.rn("n2").status().role, "preCandidate");
  t.equal(raftErrorOf(() => net.rn("n2").propose(enc.encode("x"))), "PROPOSAL_DROPPED");

  // Once a leader is known, the proposal is forwarded to it.
  net.heal();
  net.elect("n1");
  t.equal(raftErrorOf(() => net.rn("n2").propose(enc.encode("y"))), undefined);
  net.stabilize();
  t.same(payloads(net.node("n1").applied), ["y"]);
});

t.test("RawNode.step drops a forwarded proposal the leader cannot take instead of throwing", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  net.rn("n1").transferLeader("n2"); // proposals are refused during a transfer
  t.doesNotThrow(() =>
    net.rn("n1").step({ type: "prop", from: "n3", to: "n1", term: 0, entries: [ent(0, 0, enc.encode("z"))] }),
  );
});

// ------------------------------------------------------------- membership

/** A single-node cluster whose leader has applied the entry of its term. */
function singleLeader(): Network {
  const net = new Network(["n1"]);
  net.elect("n1");
  return net;
}

t.test("§4.1 (dissertation) a conf change while another is pending throws CONF_CHANGE_PENDING", async (t) => {
  const net = new Network(["n1"]);
  const rn = net.rn("n1");
  rn.campaign();
  t.equal(
    raftErrorOf(() => rn.proposeConfChange({ type: "addLearner", node: "n2" })),
    "CONF_CHANGE_PENDING",
    "a new leader takes no change before an entry of its term is applied",
  );
  net.stabilize();

  t.equal(raftErrorOf(() => rn.proposeConfChange({ type: "addLearner", node: "n2" })), undefined);
  t.equal(
    raftErrorOf(() => rn.proposeConfChange({ type: "addLearner", node: "n3" })),
    "CONF_CHANGE_PENDING",
    "the first one is not applied yet",
  );
  t.equal(raftErrorOf(() => rn.propose(enc.encode("x"))), undefined, "ordinary proposals are still taken");
  net.stabilize();
  t.same(rn.status().confState, { voters: ["n1"], learners: ["n2"] });
  t.equal(raftErrorOf(() => rn.proposeConfChange({ type: "addLearner", node: "n3" })), undefined, "now it may");
  net.stabilize();
  t.same(rn.status().confState, { voters: ["n1"], learners: ["n2", "n3"] });
  const changes = net.node("n1").applied.filter((e) => e.type === "conf").map((e) => decodeConfChange(e.data));
  t.same(changes, [
    { type: "addLearner", node: "n2" },
    { type: "addLearner", node: "n3" },
  ]);
});

t.test("removing the last voter throws INVALID_CONF_CHANGE", async (t) => {
  const net = singleLeader();
  const rn = net.rn("n1");
  t.equal(raftErrorOf(() => rn.proposeConfChange({ type: "removeNode", node: "n1" })), "INVALID_CONF_CHANGE");
  t.equal(
    raftErrorOf(() => rn.proposeConfChange({ type: "addLearner", node: "n1" })),
    "INVALID_CONF_CHANGE",
    "demoting the last voter would leave no voter either",
  );
  t.notOk(rn.hasReady(), "nothing was appended");
  t.equal(raftErrorOf(() => rn.proposeConfChange({ type: "removeNode", node: "n9" })), undefined, "removing a stranger is harmless");
});

t.test("§4.2.2 (dissertation) a leader removed from the configuration steps down", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  net.rn("n1").proposeConfChange({ type: "removeNode", node: "n1" });
  net.stabilize();
  const n1 = net.rn("n1");
  t.equal(n1.status().role, "follower");
  t.same(voters(n1.status().confState), ["n2", "n3"]);
  for (const id of ["n2", "n3"]) t.same(voters(net.rn(id).status().confState), ["n2", "n3"], `${id} applied it`);

  const mark = net.sent.length;
  // n3 still counts on n1's lease until its own election timeout passes.
  net.tick(["n2", "n3"], 2 * ELECTION);
  t.equal(net.rn("n2").status().role, "leader", "the remaining voters elect a leader among themselves");
  t.notOk(
    net.sent.slice(mark).some((m) => m.to === "n1"),
    "the new leader sends nothing to the removed node",
  );
  net.tick(["n1"], 10 * ELECTION);
  t.same(net.sentBy("n1", mark), [], "the removed node never campaigns");
  net.rn("n2").propose(enc.encode("after"));
  net.stabilize();
  t.same(payloads(net.node("n3").applied), ["after"], "two voters commit on their own");
});

t.test("§4.1 (dissertation) a node added to the cluster learns the configuration from a snapshot", async (t) => {
  const net = new Network(["n1"]);
  net.elect("n1");
  net.rn("n1").propose(enc.encode("a"));
  net.stabilize();
  const leader = net.node("n1");
  leader.storage.createSnapshot(3, leader.rn.raft.confState(), enc.encode("a"));
  leader.storage.compact(3);
  const joiner = net.add("n2", new MemoryStorage());
  net.rn("n1").proposeConfChange({ type: "addVoter", node: "n2" });
  net.stabilize();
  t.equal(joiner.storage.snapshot().meta.index, 3);
  t.same(joiner.rn.status().confState, { voters: ["n1", "n2"], learners: [] }, "the snapshot's configuration, then the change");
  t.equal(joiner.rn.status().lead, "n1");
  t.equal(joiner.rn.status().commit, 4);
  net.rn("n1").propose(enc.encode("b"));
  net.stabilize();
  t.equal(net.rn("n1").status().commit, 5, "commits now need n2 as well, and get it");
  t.same(payloads(joiner.applied), ["b"]);
});

// --------------------------------------------------------------- ReadIndex

t.test("§6.4 (dissertation) readIndex on a single node answers in the next Ready", async (t) => {
  const net = singleLeader();
  const rn = net.rn("n1");
  rn.readIndex("r1");
  const rd = rn.ready();
  t.same(rd.readStates, [{ index: 2, context: "r1" }], "at the commit index, with no round trip");
  rn.advance(rd);
});

t.test("§6.4 (dissertation) readIndex in a cluster needs a heartbeat quorum; a follower's is forwarded", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  net.rn("n1").readIndex("r1");
  const rd = net.handle("n1");
  t.same(rd.readStates, [], "not before a quorum confirmed the leadership");
  t.same(
    rd.messages.map((m) => [m.type, m.to, m.context]),
    [
      ["heartbeat", "n2", "r1"],
      ["heartbeat", "n3", "r1"],
    ],
  );
  net.stabilize();
  t.same(net.node("n1").readStates, [{ index: 2, context: "r1" }]);

  net.rn("n3").readIndex("r2");
  net.stabilize();
  t.same(net.node("n3").readStates, [{ index: 2, context: "r2" }], "answered through the leader");

  net.isolate("n2");
  net.isolate("n3");
  net.rn("n1").readIndex("r3");
  net.stabilize();
  t.equal(net.node("n1").readStates.length, 1, "a leader cut off from its quorum answers no read");
});

// ------------------------------------------------------- leadership transfer

t.test("§3.10 (dissertation) leadership transfer to an up-to-date follower", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  const n1 = net.rn("n1");
  n1.transferLeader("n2");
  t.equal(raftErrorOf(() => n1.propose(enc.encode("x"))), "PROPOSAL_DROPPED", "no proposals while handing over");
  const rd = net.handle("n1");
  t.same(rd.messages.map((m) => [m.type, m.to]), [["timeoutNow", "n2"]], "n2 is up to date: told to campaign now");
  net.stabilize();
  t.equal(net.rn("n2").status().role, "leader");
  t.equal(net.rn("n2").status().term, 3, "a real election, despite the followers' leader lease");
  t.equal(n1.status().role, "follower");
  t.equal(n1.status().lead, "n2");
  n1.propose(enc.encode("y"));
  net.stabilize();
  t.same(payloads(net.node("n3").applied), ["y"]);
});

t.test("§3.10 (dissertation) leadership transfer to a lagging follower catches it up first", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  net.isolate("n3");
  net.rn("n1").propose(enc.encode("a"));
  net.stabilize();
  t.equal(net.rn("n3").status().lastIndex, 2);
  net.heal();
  net.rn("n1").transferLeader("n3");
  net.stabilize();
  t.equal(net.rn("n3").status().role, "leader");
  t.equal(net.rn("n3").status().term, 3);
  t.same(payloads(net.node("n3").applied), ["a"]);
});

t.test("§3.10 (dissertation) a transfer that does not finish within an election timeout is abandoned", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  net.isolate("n3");
  net.rn("n1").propose(enc.encode("a")); // n3 now lags
  net.stabilize();
  net.rn("n1").transferLeader("n3");
  net.stabilize();
  t.equal(raftErrorOf(() => net.rn("n1").propose(enc.encode("b"))), "PROPOSAL_DROPPED");
  net.tick(["n1"], ELECTION);
  t.equal(net.rn("n1").status().role, "leader");
  t.equal(raftErrorOf(() => net.rn("n1").propose(enc.encode("b"))), undefined, "proposals are taken again");
});

// ------------------------------------------------------------ RawNode.step

t.test("RawNode.step ignores local message types arriving from the network", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  const f = net.rn("n2");
  f.step({ type: "hup", from: "n1", to: "n2", term: 0 });
  t.equal(f.status().role, "follower", "a remote hup does not start an election");
  t.notOk(f.hasReady());

  net.elect("n1");
  const l = net.rn("n1");
  l.step({ type: "beat", from: "n2", to: "n1", term: 0 });
  t.notOk(l.hasReady(), "no heartbeats on a remote beat");
  l.step({ type: "checkQuorum", from: "n2", to: "n1", term: 0 });
  l.step({ type: "checkQuorum", from: "n2", to: "n1", term: 0 });
  t.equal(l.status().role, "leader");
  l.step({ type: "unreachable", from: "n2", to: "n1", term: 0 });
  l.step({ type: "snapStatus", from: "n2", to: "n1", term: 0, reject: true });
  t.equal(l.status().progress.get("n2")?.state, "replicate", "only the local transport reports reachability");
});

t.test("RawNode.step ignores messages addressed to another node, or claiming to come from itself", async (t) => {
  const rn = new RawNode(config("n2", bootStorage(["n1", "n2", "n3"])));
  rn.step({ type: "heartbeat", from: "n1", to: "n3", term: 5, commit: 1 });
  rn.step({ type: "vote", from: "n1", to: "n3", term: 5, index: 9, logTerm: 9 });
  rn.step({ type: "heartbeat", from: "n2", to: "n2", term: 5, commit: 1 });
  t.equal(rn.status().term, 1);
  t.equal(rn.status().lead, "");
  t.notOk(rn.hasReady());
});

t.test("a node outside the configuration still accepts its leader's messages (it must, to join)", async (t) => {
  const rn = new RawNode(config("n4", new MemoryStorage()));
  rn.step({ type: "heartbeat", from: "n1", to: "n4", term: 3, commit: 0 });
  t.equal(rn.status().term, 3);
  t.equal(rn.status().lead, "n1");
});

t.test(
  "RawNode.step ignores responses from peers it does not know",
  async (t) => {
    for (const type of ["appResp", "heartbeatResp", "voteResp"] as const) {
      const net = new Network(["n1", "n2", "n3"]);
      net.elect("n1");
      const l = net.rn("n1");
      l.step({ type, from: "zz", to: "n1", term: 7, index: 1 });
      t.equal(l.status().term, 2, `${type} from a stranger does not move the term`);
      t.equal(l.status().role, "leader", `${type} from a stranger does not depose the leader`);
    }
    const net = new Network(["n1", "n2", "n3"]);
    net.elect("n1");
    net.rn("n2").step({ type: "readIndexResp", from: "zz", to: "n2", term: 2, index: 2, context: "forged" });
    net.stabilize();
    t.same(net.node("n2").readStates, [], "no read state from a stranger's answer");
  },
);

// ----------------------------------------------------------------- restart

t.test("new RawNode restarts from hard state and entries, re-delivering committed but unapplied entries", async (t) => {
  const st = bootStorage(["n1"]);
  let rn = new RawNode(config("n1", st));
  rn.campaign();
  let rd = rn.ready();
  st.append(rd.entries);
  st.setHardState(rd.hardState!);
  rn.advance(rd);
  rd = rn.ready(); // commits 2
  st.setHardState(rd.hardState!);
  rn.advance(rd);
  rn.propose(enc.encode("a"));
  rn.propose(enc.encode("b"));
  rd = rn.ready();
  st.append(rd.entries);
  rn.advance(rd);
  rd = rn.ready();
  t.same(ids(rd.committedEntries), [[3, 2], [4, 2]]);
  st.setHardState(rd.hardState!);
  // Crash: the commit index is durable, but a and b were never applied.

  rn = new RawNode(config("n1", st));
  const s = rn.status();
  t.equal(s.term, 2);
  t.equal(s.vote, "n1", "the vote survives");
  t.equal(s.commit, 4);
  t.equal(s.applied, 1, "applied defaults to the snapshot index");
  t.equal(s.lastIndex, 4);
  t.equal(s.role, "follower", "everyone restarts as a follower");
  rd = rn.ready();
  t.same(ids(rd.committedEntries), [[2, 2], [3, 2], [4, 2]], "everything after the snapshot is handed out again");
  t.same(payloads(rd.committedEntries), ["a", "b"]);
  t.equal(rd.hardState, undefined, "the hard state is what storage already holds");
  t.same(rd.entries, []);
  rn.advance(rd);

  // With the applied index given, only what follows it.
  const again = new RawNode(config("n1", st, { applied: 3 }));
  t.same(ids(again.ready().committedEntries), [[4, 2]]);

  // And it carries on: a new term, the old log kept.
  rn.campaign();
  rd = rn.ready();
  t.same(rd.hardState, { term: 3, vote: "n1", commit: 4 });
  t.same(ids(rd.entries), [[5, 3]]);
});

t.test("a restarted follower keeps its uncommitted tail but commits nothing past its hard state", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  net.isolate("n3");
  net.rn("n1").propose(enc.encode("a"));
  // Deliver the append to n2, but do not let n1 hear back.
  net.handle("n1");
  net.heal();
  net.isolate("n1");
  net.stabilize();
  const n2 = net.node("n2");
  t.equal(n2.rn.status().lastIndex, 3);
  t.equal(n2.rn.status().commit, 2);
  const restarted = new RawNode(config("n2", n2.storage));
  t.equal(restarted.status().lastIndex, 3, "the appended entry is durable");
  t.equal(restarted.status().commit, 2);
  t.same(restarted.ready().committedEntries.map((e) => e.index), [2], "only what was committed before");
});

// ------------------------------------------------------ candidates' steps

t.test("§5.2 a candidate that hears from a leader of its own term becomes its follower", async (t) => {
  for (const type of ["app", "heartbeat"] as const) {
    const rn = new RawNode(config("n2", bootStorage(["n1", "n2", "n3"]), { preVote: false }));
    rn.campaign();
    t.equal(rn.status().role, "candidate");
    t.equal(rn.status().term, 2);
    const m: Message =
      type === "app"
        ? { type, from: "n1", to: "n2", term: 2, index: 1, logTerm: 1, entries: [ent(2, 2)], commit: 1 }
        : { type, from: "n1", to: "n2", term: 2, commit: 1 };
    rn.step(m);
    t.equal(rn.status().role, "follower", `${type}: another node won term 2`);
    t.equal(rn.status().lead, "n1");
    t.equal(rn.status().term, 2);
    t.equal(rn.status().vote, "n2", `${type}: the vote it cast for itself in term 2 stands`);
    const rd = rn.ready();
    t.same(
      rd.messages.filter((x) => x.to === "n1" && x.type !== "vote").map((x) => x.type),
      [type === "app" ? "appResp" : "heartbeatResp"],
      `${type}: and answered it`,
    );
  }
});

t.test("§5.2 a candidate refused by a majority goes back to follower, in the same term", async (t) => {
  const rn = new RawNode(config("n1", bootStorage(["n1", "n2", "n3"]), { preVote: false }));
  rn.campaign();
  rn.step({ type: "voteResp", from: "n2", to: "n1", term: 2, reject: true });
  t.equal(rn.status().role, "candidate", "1 for, 1 against: n3 decides");
  t.equal(raftErrorOf(() => rn.readIndex("r")), "PROPOSAL_DROPPED", "no reads without a leader");
  rn.step({ type: "voteResp", from: "n3", to: "n1", term: 2, reject: true });
  t.equal(rn.status().role, "follower");
  t.equal(rn.status().term, 2);
  t.equal(rn.status().lead, "");
});

t.test("§9.6 (dissertation) a pre-candidate refused by a majority goes back to follower without a new term", async (t) => {
  const rn = new RawNode(config("n1", bootStorage(["n1", "n2", "n3"])));
  rn.campaign();
  t.equal(rn.status().role, "preCandidate");
  t.same(
    rn.ready().messages.map((m) => [m.type, m.to, m.term]),
    [
      ["preVote", "n2", 2],
      ["preVote", "n3", 2],
    ],
    "pre-votes ask for the next term without moving to it",
  );
  rn.step({ type: "preVoteResp", from: "n2", to: "n1", term: 1, reject: true });
  rn.step({ type: "preVoteResp", from: "n3", to: "n1", term: 1, reject: true });
  t.equal(rn.status().role, "follower");
  t.equal(rn.status().term, 1);

  // Granted pre-votes carry the future term; winning them starts the real election.
  rn.campaign();
  rn.ready();
  rn.step({ type: "preVoteResp", from: "n2", to: "n1", term: 2 });
  t.equal(rn.status().role, "candidate");
  t.equal(rn.status().term, 2);
  t.same(
    rn.ready().messages.map((m) => [m.type, m.to, m.term]),
    [
      ["vote", "n2", 2],
      ["vote", "n3", 2],
    ],
  );
});

t.test("§4.1 (dissertation) a node does not campaign while a committed membership change is unapplied", async (t) => {
  const rn = new RawNode(config("n2", bootStorage(["n1", "n2", "n3"])));
  const cc = { term: 2, index: 2, type: "conf" as const, data: enc.encode(JSON.stringify({ type: "removeNode", node: "n3" })) };
  rn.step({ type: "app", from: "n1", to: "n2", term: 2, index: 1, logTerm: 1, entries: [cc], commit: 2 });
  t.equal(rn.status().commit, 2);
  rn.campaign();
  t.equal(rn.status().role, "follower", "the change may alter the quorum: wait until it is applied");
  const rd = rn.ready();
  t.same(ids(rd.committedEntries), [[2, 2]]);
  t.same(voters(rn.status().confState), ["n1", "n2"], "applied as it was handed out");
  rn.advance(rd);
  rn.campaign();
  t.equal(rn.status().role, "preCandidate");
  t.same(
    rn.ready().messages.map((m) => m.to),
    ["n1"],
    "and it asks only the voters of the new configuration",
  );
});

// ----------------------------------------------- replication, continued

t.test("§5.3 the leader skips a whole conflicting term per rejection (fast backtracking)", async (t) => {
  const net = new Network([]);
  const cs = ["n1", "n2", "n3"];
  // n1 and n3: 2/2 3/3 4/3. n2: a long tail of term 2 that never committed.
  for (const id of cs) {
    const st = bootStorage(cs);
    st.append(id === "n2" ? [ent(2, 2), ent(3, 2), ent(4, 2), ent(5, 2), ent(6, 2), ent(7, 2)] : [ent(2, 2), ent(3, 3), ent(4, 3)]);
    st.setHardState({ term: 3, vote: "", commit: 2 });
    net.add(id, st);
  }
  const mark = net.sent.length;
  net.elect("n1");
  t.equal(net.rn("n1").status().role, "leader");
  t.equal(net.rn("n1").status().term, 4);
  const rejections = net.sentBy("n2", mark).filter((m) => m.type === "appResp" && m.reject);
  t.same(
    rejections.map((m) => [m.index, m.rejectHint, m.logTerm]),
    [[4, 4, 2]],
    "one rejection: (4, 3) does not match, n2's entry 4 is of term 2",
  );
  t.same(ids(net.node("n2").storage.entries(2, 6, Infinity)), [[2, 2], [3, 3], [4, 3], [5, 4]], "n2's tail replaced");
  t.equal(net.rn("n2").status().lastIndex, 5);
  t.equal(net.rn("n2").status().commit, 5);
});

t.test("flow control: at most maxInflightMsgs appends in flight to a follower", async (t) => {
  const net = new Network(["n1", "n2", "n3"], { config: { maxInflightMsgs: 2 } });
  net.elect("n1");
  for (const x of ["a", "b", "c", "d", "e"]) net.rn("n1").propose(enc.encode(x));
  const rd = net.handle("n1");
  const toN2 = rd.messages.filter((m) => m.to === "n2" && m.type === "app");
  t.same(
    toN2.map((m) => ids(m.entries ?? [])),
    [[[3, 2]], [[4, 2]]],
    "two appends of one entry each, then the window is full",
  );
  t.equal(net.rn("n1").status().progress.get("n2")?.next, 5);
  net.stabilize();
  t.same(payloads(net.node("n2").applied), ["a", "b", "c", "d", "e"], "acknowledgements reopen the window");
});

t.test("mergeMessages: a burst of proposals goes to each follower as one append; a follower forwards it as one proposal", async (t) => {
  const net = new Network(["n1", "n2", "n3"], { config: { mergeMessages: true } });
  net.elect("n1");
  for (const x of ["a", "b", "c"]) net.rn("n1").propose(enc.encode(x));
  const rd = net.handle("n1");
  const apps = rd.messages.filter((m) => m.type === "app");
  t.same(apps.map((m) => [m.to, ids(m.entries ?? [])]), [["n2", [[3, 2], [4, 2], [5, 2]]], ["n3", [[3, 2], [4, 2], [5, 2]]]]);
  net.stabilize();
  for (const x of ["d", "e"]) net.rn("n2").propose(enc.encode(x));
  const props = net.handle("n2").messages.filter((m) => m.type === "prop");
  t.same(props.map((m) => payloads(m.entries ?? [])), [["d", "e"]], "one forwarded proposal");
  net.stabilize();
  for (const id of ["n1", "n2", "n3"]) t.same(payloads(net.node(id).applied), ["a", "b", "c", "d", "e"], `${id} applied all, in order`);
});

t.test("mergeMessages: appends are merged only where the follower would do the same with both", async (t) => {
  const net = new Network(["n1", "n2", "n3"], { config: { maxSizePerMsg: 60, mergeMessages: true } });
  net.elect("n1");
  // A message of another kind to the same peer in between keeps them apart.
  net.rn("n1").propose(enc.encode("a"));
  net.rn("n1").readIndex("ctx");
  net.rn("n1").propose(enc.encode("b"));
  const toN2 = net.handle("n1").messages.filter((m) => m.to === "n2");
  t.same(toN2.map((m) => m.type), ["app", "heartbeat", "app"]);
  net.stabilize();
  // Past maxSizePerMsg (24 bytes of overhead per entry) a new message starts.
  for (const x of ["c", "d", "e"]) net.rn("n1").propose(enc.encode(x));
  const sizes = net.handle("n1").messages.filter((m) => m.to === "n2" && m.type === "app").map((m) => (m.entries ?? []).length);
  t.same(sizes, [2, 1]);
  net.stabilize();
  t.same(payloads(net.node("n3").applied), ["a", "b", "c", "d", "e"]);
});

t.test("learnerHeartbeatEvery: learners get every n-th heartbeat, voters all of them", async (t) => {
  const net = new Network(["n1", "n2"], { learners: ["n3"], config: { learnerHeartbeatEvery: 3 } });
  net.elect("n1");
  const mark = net.sent.length;
  net.tick(["n1"], 6);
  const beats = net.sentBy("n1", mark).filter((m) => m.type === "heartbeat");
  t.equal(beats.filter((m) => m.to === "n2").length, 6, "the voter: every tick");
  t.equal(beats.filter((m) => m.to === "n3").length, 2, "the learner: every third");
  // A learner still catches up from appends alone.
  net.rn("n1").propose(enc.encode("x"));
  net.stabilize();
  t.same(payloads(net.node("n3").applied), ["x"]);
});

t.test("mergeMessages: merged appends still count against the window of appends in flight", async (t) => {
  const net = new Network(["n1", "n2", "n3"], { config: { maxInflightMsgs: 2, mergeMessages: true } });
  net.elect("n1");
  for (const x of ["a", "b", "c", "d", "e"]) net.rn("n1").propose(enc.encode(x));
  const toN2 = net.handle("n1").messages.filter((m) => m.to === "n2" && m.type === "app");
  t.same(toN2.map((m) => ids(m.entries ?? [])), [[[3, 2], [4, 2]]], "two appends (one message), then the window is full");
  net.stabilize();
  t.same(payloads(net.node("n2").applied), ["a", "b", "c", "d", "e"]);
});

t.test("flow control: a window of lost appends is recovered at the next heartbeat", async (t) => {
  const net = new Network(["n1", "n2", "n3"], { config: { maxInflightMsgs: 1 } });
  net.elect("n1");
  net.isolate("n3");
  net.rn("n1").propose(enc.encode("a")); // fills n3's window, and is lost
  net.rn("n1").propose(enc.encode("b")); // not sent: the window is full
  net.stabilize();
  t.equal(net.rn("n1").status().commit, 4, "n2 makes the quorum");
  t.equal(net.rn("n3").status().lastIndex, 2);
  net.heal();
  net.tick(["n1"]);
  t.equal(net.rn("n3").status().lastIndex, 4, "n3 caught up");
  t.same(payloads(net.node("n3").applied), ["a", "b"]);
});

t.test("an unreachable follower is probed again instead of streamed to", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  const l = net.rn("n1");
  t.equal(l.status().progress.get("n2")?.state, "replicate");
  l.reportUnreachable("n2");
  t.same(l.status().progress.get("n2"), { match: 2, next: 3, state: "probe" });
  l.propose(enc.encode("a"));
  net.stabilize();
  t.equal(l.status().progress.get("n2")?.state, "replicate", "the probe was answered");
  t.same(payloads(net.node("n2").applied), ["a"]);
});

t.test("a snapshot acknowledged before the transport reports it moves the follower straight to replicate", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.reportSnapshots = false;
  net.elect("n1");
  net.isolate("n3");
  net.rn("n1").propose(enc.encode("a"));
  net.stabilize();
  const leader = net.node("n1");
  leader.storage.createSnapshot(3, leader.rn.raft.confState(), new Uint8Array());
  leader.storage.compact(3);
  net.heal();
  net.tick(["n1"]);
  t.equal(net.node("n3").storage.snapshot().meta.index, 3);
  t.same(leader.rn.status().progress.get("n3"), { match: 3, next: 4, state: "replicate" });
  // A late report changes nothing any more.
  leader.rn.reportSnapshot("n3", true);
  t.equal(leader.rn.status().progress.get("n3")?.state, "replicate");
});

t.test("§7 a snapshot reported as failed is sent again; until then the follower waits", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.reportSnapshots = false;
  net.elect("n1");
  net.isolate("n3");
  net.rn("n1").propose(enc.encode("a"));
  net.stabilize();
  const leader = net.node("n1");
  leader.storage.createSnapshot(3, leader.rn.raft.confState(), new Uint8Array());
  leader.storage.compact(3);
  const snapsTo3 = () => net.sent.filter((m) => m.type === "snap" && m.to === "n3").length;

  net.heal();
  net.drop = (m) => m.type === "snap";
  net.tick(["n1"]);
  t.equal(snapsTo3(), 1, "n3 rejected the append after 3: it needs the snapshot");
  t.equal(leader.rn.status().progress.get("n3")?.state, "snapshot");
  net.tick(["n1"], 3);
  t.equal(snapsTo3(), 1, "no second snapshot while the first is believed in flight");
  t.equal(net.rn("n3").status().lastIndex, 2);

  leader.rn.reportSnapshot("n3", false);
  t.same(leader.rn.status().progress.get("n3"), { match: 2, next: 3, state: "probe" }, "probe again from match");
  net.drop = undefined;
  net.tick(["n1"]);
  t.equal(snapsTo3(), 2, "the next heartbeat answer triggers a new snapshot");
  t.equal(net.node("n3").storage.snapshot().meta.index, 3);
  t.same(leader.rn.status().progress.get("n3"), { match: 3, next: 4, state: "replicate" });
  leader.rn.reportSnapshot("n3", false);
  t.equal(leader.rn.status().progress.get("n3")?.state, "replicate", "a report after the acknowledgement is ignored");
});

t.test("§7 a follower given a snapshot it already holds only moves its commit index", async (t) => {
  const st = bootStorage(["n1", "n2", "n3"]);
  st.append([ent(2, 2), ent(3, 2), ent(4, 2)]);
  st.setHardState({ term: 2, vote: "", commit: 2 });
  const rn = new RawNode(config("n2", st));
  const s = { meta: { index: 3, term: 2, confState: { voters: ["n1", "n2", "n3"], learners: [] } }, data: new Uint8Array() };
  rn.step({ type: "snap", from: "n1", to: "n2", term: 2, snapshot: s });
  let rd = rn.ready();
  t.equal(rd.snapshot, undefined, "the log already has (3, 2): nothing to install");
  t.equal(rn.status().lastIndex, 4, "entry 4 is kept");
  // Applied starts at the snapshot index on restart, so 2 is handed out again too.
  t.same(ids(rd.committedEntries), [[2, 2], [3, 2]], "committed up to the snapshot's index");
  t.same(rd.messages.map((m) => [m.type, m.index]), [["appResp", 3]], "answered with the commit index");
  rn.advance(rd);

  // An older snapshot than what is committed is ignored.
  rn.step({ type: "snap", from: "n1", to: "n2", term: 2, snapshot: { ...s, meta: { ...s.meta, index: 2 } } });
  rd = rn.ready();
  t.equal(rd.snapshot, undefined);
  t.same(rd.messages.map((m) => [m.type, m.index]), [["appResp", 3]]);

  // A newer one with a different history replaces the log.
  const newer = { meta: { index: 6, term: 3, confState: s.meta.confState }, data: new Uint8Array([1]) };
  rn.step({ type: "snap", from: "n1", to: "n2", term: 3, snapshot: newer });
  rd = rn.ready();
  t.equal(rd.snapshot, newer);
  t.same(rd.committedEntries, []);
  t.same(rd.messages.map((m) => [m.type, m.index]), [["appResp", 6]]);
  t.equal(rn.status().commit, 6);
  t.equal(rn.status().lastIndex, 6);
  st.applySnapshot(rd.snapshot!);
  st.setHardState(rd.hardState!);
  rn.advance(rd);
  t.equal(rn.status().firstIndex, 7);
});

// ------------------------------------------------- ReadIndex, continued

t.test("§6.4 (dissertation) a new leader holds reads until an entry of its term is committed", async (t) => {
  const st = bootStorage(["n1", "n2", "n3"]);
  const rn = new RawNode(config("n1", st, { preVote: false }));
  rn.campaign();
  rn.step({ type: "voteResp", from: "n2", to: "n1", term: 2 });
  let rd = rn.ready();
  st.append(rd.entries);
  st.setHardState(rd.hardState!);
  rn.advance(rd);

  rn.readIndex("r");
  rd = rn.ready();
  t.same(rd.readStates, []);
  t.same(
    rd.messages.filter((m) => m.type === "heartbeat"),
    [],
    "its commit index (1) may be behind what an earlier leader committed: no read round yet",
  );
  rn.advance(rd);

  rn.step({ type: "appResp", from: "n2", to: "n1", term: 2, index: 2 });
  t.equal(rn.status().commit, 2);
  rd = rn.ready();
  t.same(
    rd.messages.filter((m) => m.type === "heartbeat").map((m) => [m.to, m.context]),
    [
      ["n2", "r"],
      ["n3", "r"],
    ],
    "now the read round starts",
  );
  rn.advance(rd);
  rn.step({ type: "heartbeatResp", from: "n3", to: "n1", term: 2, context: "r" });
  t.same(rn.ready().readStates, [{ index: 2, context: "r" }], "at the commit index of its own term");
});

// --------------------------------------------- membership, continued

t.test("§4.2.1 (dissertation) a learner promoted to voter counts in the quorum and may campaign", async (t) => {
  const net = new Network(["n1", "n2", "n3"], { learners: ["n4"] });
  net.elect("n1");
  net.rn("n1").proposeConfChange({ type: "addVoter", node: "n4" });
  net.stabilize();
  for (const id of ["n1", "n2", "n3", "n4"]) {
    t.same(net.rn(id).status().confState, { voters: ["n1", "n2", "n3", "n4"], learners: [] }, `${id} sees it`);
  }
  // With 4 voters a quorum is 3: n1 and n2 alone no longer commit.
  net.isolate("n3");
  net.isolate("n4");
  net.rn("n1").propose(enc.encode("x"));
  net.stabilize();
  t.equal(net.rn("n1").status().commit, 3);
  net.heal();
  net.stabilize();
  net.tick(["n1"]);
  t.equal(net.rn("n1").status().commit, 4);

  const mark = net.sent.length;
  net.isolate("n1");
  net.tick(["n4"], 2 * ELECTION);
  t.ok(
    net.sentBy("n4", mark).some((m) => m.type === "preVote"),
    "the former learner campaigns once it stops hearing from a leader",
  );
});

t.test("a follower may ask for leadership for itself", async (t) => {
  const net = new Network(["n1", "n2", "n3"]);
  net.elect("n1");
  net.rn("n3").transferLeader("n3");
  net.stabilize();
  t.equal(net.rn("n3").status().role, "leader");
  t.equal(net.rn("n1").status().lead, "n3");
});

t.test(
  "a restart with Config.applied past a membership change keeps the membership that change made",
  async (t) => {
    const net = new Network(["n1"]);
    net.elect("n1");
    net.rn("n1").proposeConfChange({ type: "addLearner", node: "n2" });
    net.stabilize();
    const n1 = net.node("n1");
    t.same(n1.rn.status().confState, { voters: ["n1"], learners: ["n2"] });
    const applied = n1.rn.status().applied; // the state machine persisted this with its state
    const restarted = new RawNode(config("n1", n1.storage, { applied }));
    t.same(restarted.status().confState, { voters: ["n1"], learners: ["n2"] });
  },
);

t.test("without Config.applied a restart re-applies the membership changes after the snapshot", async (t) => {
  const net = new Network(["n1"]);
  net.elect("n1");
  net.rn("n1").proposeConfChange({ type: "addLearner", node: "n2" });
  net.stabilize();
  const restarted = new RawNode(config("n1", net.node("n1").storage));
  t.same(restarted.status().confState, { voters: ["n1"], learners: [] }, "the snapshot's membership at first");
  const rd = restarted.ready();
  t.same(rd.committedEntries.map((e) => e.type), ["normal", "conf"]);
  t.same(restarted.status().confState, { voters: ["n1"], learners: ["n2"] }, "then the change, as it is handed out again");
});

// ------------------------------------------------------------ config knobs

t.test("Config: electionTick must exceed heartbeatTick > 0", async (t) => {
  const st = bootStorage(["n1"]);
  t.throws(() => new RawNode(config("n1", st, { heartbeatTick: 0 })));
  t.throws(() => new RawNode(config("n1", st, { electionTick: 1, heartbeatTick: 1 })));
  t.doesNotThrow(() => new RawNode(config("n1", st, { electionTick: 2, heartbeatTick: 1 })));
});

t.test("maxSizePerMsg bounds the entries of one append (at least one entry each)", async (t) => {
  const net = new Network(["n1", "n2", "n3"], { config: { maxSizePerMsg: 0 } });
  net.elect("n1");
  net.isolate("n2");
  net.isolate("n3");
  for (const x of ["a", "b", "c"]) net.rn("n1").propose(enc.encode(x));
  net.stabilize();
  net.heal();
  const mark = net.sent.length;
  net.tick(["n1"]);
  const apps = net.sentBy("n1", mark).filter((m) => m.type === "app" && m.to === "n2" && (m.entries ?? []).length > 0);
  t.ok(apps.length >= 3, `three or more appends to catch n2 up (${apps.length})`);
  t.ok(
    apps.every((m) => m.entries!.length === 1),
    "one entry per append",
  );
  t.same(payloads(net.node("n2").applied), ["a", "b", "c"]);
});

t.test("maxCommittedSizePerReady bounds the committed entries of one Ready (at least one each)", async (t) => {
  const st = bootStorage(["n1"]);
  st.append([ent(2, 1, enc.encode("a")), ent(3, 1, enc.encode("b")), ent(4, 1, enc.encode("c"))]);
  st.setHardState({ term: 1, vote: "", commit: 4 });
  const rn = new RawNode(config("n1", st, { maxCommittedSizePerReady: 0 }));
  const batches: number[][] = [];
  while (rn.hasReady()) {
    const rd = rn.ready();
    batches.push(rd.committedEntries.map((e) => e.index));
    rn.advance(rd);
  }
  t.same(batches, [[2], [3], [4]]);
  t.equal(rn.status().applied, 4);
});
