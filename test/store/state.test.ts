// The replicated state machine of cooperative pulls, alone: claims, leases,
// fencing by attempt, queued transfers, deletion, references, and
// determinism (the same log gives the same state, snapshots included).

import t from "tap";
import { type ApplyResult, ClusterState, type Command, type Envelope, commandSchema } from "../../store/state.js";

const D = (n: number): string => `sha256:${n.toString(16).padStart(64, "0")}`;
const source = { repository: "127.0.0.1:5000/app", blob: D(900), size: 100, mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" };
const LEASE = 2000;

class Log {
  readonly s = new ClusterState();
  readonly entries: Envelope[] = [];
  apply(at: number, cmd: Command): ApplyResult {
    const env = { rid: String(this.entries.length), at, cmd };
    this.entries.push(env);
    return this.s.apply(this.entries.length, env);
  }
  claim(at: number, agent: string, d = D(1), extra: { queued?: boolean; steal?: boolean } = {}) {
    const r = this.apply(at, { type: "layer.claim", diffID: d, agent, source, queued: extra.queued ?? false, ...(extra.steal ? { steal: true } : {}), leaseMs: LEASE });
    if (!r.ok) throw new Error(r.error);
    return r.claim!;
  }
}

t.test("one master; the others wait for it; present after the commit", async (t) => {
  const l = new Log();
  t.same(l.claim(0, "a"), { kind: "master", attempt: 1 });
  t.same(l.claim(10, "b"), { kind: "pulling", by: "a", leaseUntil: LEASE });
  t.same(l.claim(20, "a"), { kind: "master", attempt: 1 }, "a repeated claim answers the same");
  t.same(l.s.transfers.get(D(1))!.waiters, ["a", "b"]);
  t.ok(l.apply(30, { type: "layer.commit", diffID: D(1), agent: "a", attempt: 1, unpacked: 5 }).ok);
  t.same(l.claim(40, "c"), { kind: "present" });
  t.equal(l.s.layers.get(D(1))!.by, "a");
  t.notOk(l.s.transfers.has(D(1)));
});

t.test("a lease that runs out: the transfer goes to a waiter, the old attempt cannot commit", async (t) => {
  const l = new Log();
  l.claim(0, "a");
  t.same(l.claim(LEASE - 1, "b"), { kind: "pulling", by: "a", leaseUntil: LEASE }, "still a's before the lease ends");
  t.same(l.claim(LEASE + 1, "b"), { kind: "master", attempt: 2 }, "b takes over with a new attempt");
  const stale = l.apply(LEASE + 2, { type: "layer.commit", diffID: D(1), agent: "a", attempt: 1, unpacked: 1 });
  t.notOk(stale.ok, "a's attempt is stale");
  t.notOk(l.apply(LEASE + 3, { type: "layer.abort", diffID: D(1), agent: "a", attempt: 1 }).ok, "nor can it abort b's transfer");
  t.ok(l.apply(LEASE + 4, { type: "layer.commit", diffID: D(1), agent: "b", attempt: 2, unpacked: 1 }).ok);
});

t.test("renewals keep a master's transfers", async (t) => {
  const l = new Log();
  l.claim(0, "a");
  l.claim(0, "a", D(2));
  l.apply(1500, { type: "lease", agent: "a", leaseMs: LEASE });
  t.same(l.claim(3000, "b"), { kind: "pulling", by: "a", leaseUntil: 3500 });
  t.same(l.claim(3000, "b", D(2)), { kind: "pulling", by: "a", leaseUntil: 3500 }, "one lease covers every transfer of the agent");
});

t.test("queued transfers: registered as waiting, taken by an idle agent's steal; steals never add waiters", async (t) => {
  const l = new Log();
  t.same(l.claim(0, "a", D(1), { queued: true }), { kind: "queued" });
  t.same(l.s.transfers.get(D(1))!.owner, "");
  t.same(l.claim(1, "c", D(2), { steal: true }), { kind: "queued" }, "nothing to steal where nobody waits");
  t.notOk(l.s.transfers.has(D(2)));
  t.same(l.claim(2, "b", D(1), { steal: true }), { kind: "master", attempt: 1 });
  t.same(l.s.transfers.get(D(1))!.waiters, ["a"], "the stealer is not a waiter");
  t.same(l.claim(3, "c", D(1), { steal: true }), { kind: "queued" }, "a second steal gets nothing");
  t.same(l.claim(4, "a", D(1)), { kind: "pulling", by: "b", leaseUntil: 2 + LEASE });
});

t.test("an abort with an error fails the waiters; without, the transfer is queued again", async (t) => {
  const l = new Log();
  l.claim(0, "a");
  l.claim(1, "b");
  t.ok(l.apply(2, { type: "layer.abort", diffID: D(1), agent: "a", attempt: 1 }).ok);
  t.same(l.s.transfers.get(D(1))!.owner, "", "back in the queue");
  t.same(l.claim(3, "b"), { kind: "master", attempt: 2 });
  t.ok(l.apply(4, { type: "layer.abort", diffID: D(1), agent: "b", attempt: 2, error: { code: "DIGEST_MISMATCH", message: "bad" } }).ok);
  t.notOk(l.s.transfers.has(D(1)));
  t.equal(l.s.failures.get(D(1))!.code, "DIGEST_MISMATCH");
  t.same(l.claim(5, "c"), { kind: "master", attempt: 1 }, "a later pull tries again");
  t.notOk(l.s.failures.has(D(1)));
});

t.test("deletion: refused while referenced; a claim meanwhile waits; takeover after the deleter's lease", async (t) => {
  const l = new Log();
  l.claim(0, "a");
  l.apply(1, { type: "layer.commit", diffID: D(1), agent: "a", attempt: 1, unpacked: 1 });
  const hold = { type: "image.hold", ref: "r/app:1", holder: "a", manifestDigest: D(50), configDigest: D(51), platform: { os: "linux", architecture: "amd64" }, layers: [D(1)] } satisfies Command;
  t.ok(l.apply(2, hold).ok);
  t.ok(l.apply(3, { type: "ref.hold", agent: "b", holder: "snapshot:x", layers: [D(1)] }).ok);
  t.notOk(l.apply(4, { type: "layer.delete", diffID: D(1), agent: "a", leaseMs: LEASE }).ok, "an image holds it");
  l.apply(5, { type: "image.release", ref: "r/app:1", holder: "a" });
  t.notOk(l.apply(6, { type: "layer.delete", diffID: D(1), agent: "a", leaseMs: LEASE }).ok, "a snapshot of b holds it");
  l.apply(7, { type: "ref.release", agent: "b", holder: "snapshot:x" });
  t.ok(l.apply(8, { type: "layer.delete", diffID: D(1), agent: "a", leaseMs: LEASE }).ok);
  t.same(l.claim(9, "c"), { kind: "deleting", by: "a", leaseUntil: 8 + LEASE });
  t.notOk(l.apply(10, hold).ok, "a deleting layer cannot be held");
  t.notOk(l.apply(11, { type: "layer.delete", diffID: D(1), agent: "c", leaseMs: LEASE }).ok, "nor deleted by another agent while a's lease holds");
  t.ok(l.apply(9 + LEASE, { type: "layer.delete", diffID: D(1), agent: "c", leaseMs: LEASE }).ok, "taken over after it");
  t.notOk(l.apply(10 + LEASE, { type: "layer.deleted", diffID: D(1), agent: "a" }).ok, "the old deleter is fenced");
  t.ok(l.apply(11 + LEASE, { type: "layer.deleted", diffID: D(1), agent: "c" }).ok);
  t.same(l.claim(12 + LEASE, "c"), { kind: "master", attempt: 1 });
});

t.test("several references held in one entry: all of them, or none if a layer is missing", async (t) => {
  const l = new Log();
  l.claim(0, "a");
  l.apply(1, { type: "layer.commit", diffID: D(1), agent: "a", attempt: 1, unpacked: 1 });
  l.claim(2, "a", D(2));
  const both: Command = {
    type: "refs.hold",
    agent: "b",
    refs: [
      { holder: "snapshot:1", layers: [D(1)] },
      { holder: "snapshot:2", layers: [D(2)] },
    ],
  };
  t.match(l.apply(3, both), { ok: false, code: "BUSY" }, "refused while layer 2 is on its way");
  t.equal(l.s.refs.size, 0, "and nothing is held");
  l.apply(4, { type: "layer.commit", diffID: D(2), agent: "a", attempt: 1, unpacked: 1 });
  t.ok(l.apply(5, both).ok);
  t.same([l.s.referenced(D(1)), l.s.referenced(D(2))], ["b snapshot:1", "b snapshot:2"], "each layer held by its own reference");
  l.apply(6, { type: "ref.release", agent: "b", holder: "snapshot:1" });
  t.same([l.s.referenced(D(1)), l.s.referenced(D(2))], [undefined, "b snapshot:2"], "released one by one");
  t.notOk(commandSchema.safeParse({ type: "refs.hold", agent: "b", refs: [] }).success, "an empty list is malformed");
});

t.test("removing a member releases its holds and its transfers", async (t) => {
  const l = new Log();
  l.claim(0, "a");
  l.claim(1, "b");
  l.claim(2, "b", D(2));
  l.apply(3, { type: "layer.commit", diffID: D(2), agent: "b", attempt: 1, unpacked: 1 });
  l.apply(4, { type: "image.hold", ref: "r/x:1", holder: "b", manifestDigest: D(50), configDigest: D(51), platform: { os: "linux", architecture: "amd64" }, layers: [D(2)] });
  l.apply(5, { type: "ref.hold", agent: "b", holder: "snapshot:1", layers: [D(2)] });
  l.s.removeMember("a");
  t.same(l.s.transfers.get(D(1))!.waiters, ["b"], "a waits for nothing any more");
  t.match(l.claim(6, "b"), { kind: "pulling", by: "a" }, "a may still be writing: its transfer stays its own until its lease ends");
  t.same(l.claim(LEASE + 1, "b"), { kind: "master", attempt: 2 }, "then b takes it over");
  l.s.removeMember("b");
  t.same(l.s.transfers.get(D(1))?.waiters, [], "b waits for nothing any more either");
  t.notOk(l.apply(LEASE + 2, { type: "layer.commit", diffID: D(1), agent: "b", attempt: 2, unpacked: 1 }).ok, "and it cannot commit");
  t.notOk(l.s.images.has("r/x:1"));
  t.equal(l.s.referenced(D(2)), undefined, "nothing pins b's layer any more");
});

t.test("a hold that applies after its agent was removed is refused; an agent admitted again counts again", async (t) => {
  const l = new Log();
  l.claim(1, "a", D(1));
  l.apply(2, { type: "layer.commit", diffID: D(1), agent: "a", attempt: 1, unpacked: 1 });
  l.s.removeMember("b");
  const hold: Command = { type: "image.hold", ref: "r/y:1", holder: "b", manifestDigest: D(50), configDigest: D(51), platform: { os: "linux", architecture: "amd64" }, layers: [D(1)] };
  t.match(l.apply(3, hold), { ok: false, code: "NOT_FOUND" }, "b's late hold");
  t.match(l.apply(4, { type: "ref.hold", agent: "b", holder: "snapshot:9", layers: [D(1)] }), { ok: false });
  t.equal(l.s.referenced(D(1)), undefined, "nothing pins the layer for b");
  t.same(ClusterState.decode(l.s.encode()).departed, new Set(["b"]), "snapshots keep who departed");
  l.s.departed.delete("b");
  t.match(l.apply(5, hold), { ok: true }, "after b is admitted again");
});

t.test("deterministic: replaying the log, or a snapshot of it, gives the same state", async (t) => {
  const l = new Log();
  for (let i = 0; i < 200; i++) {
    const agent = `n${i % 5}`;
    const d = D(i % 7);
    const at = i * 300;
    if (i % 4 === 3) l.apply(at, { type: "lease", agent, leaseMs: LEASE });
    const r = l.claim(at, agent, d, { queued: i % 3 === 0 });
    if (r.kind === "master" && i % 2 === 0) l.apply(at + 1, { type: "layer.commit", diffID: d, agent, attempt: r.attempt, unpacked: i });
  }
  const replay = new ClusterState();
  l.entries.forEach((e, i) => replay.apply(i + 1, e));
  t.same(Buffer.from(replay.encode()).toString(), Buffer.from(l.s.encode()).toString());
  const restored = ClusterState.decode(l.s.encode());
  t.same(Buffer.from(restored.encode()).toString(), Buffer.from(l.s.encode()).toString(), "a snapshot round-trips");
});
