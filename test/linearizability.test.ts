import t from "tap";
import { checkLinearizability, type Model, type Operation } from "./sim/linearizability.js";
import { kvModel, kvPartition, kvValue, type KvInput, type KvOperation, type KvOutput } from "./sim/kvmodel.js";
import { Prng } from "./sim/prng.js";

function put(clientId: number, key: string, value: string, call: number, ret: number): KvOperation {
  const output = ret === Infinity ? undefined : { ok: true };
  return { clientId, input: { op: "put", key, value }, output, call, return: ret };
}

function get(clientId: number, key: string, value: string | null, call: number, ret: number): KvOperation {
  return { clientId, input: { op: "get", key }, output: ret === Infinity ? undefined : { value }, call, return: ret };
}

function cas(
  clientId: number,
  key: string,
  expected: string | null,
  value: string,
  ok: boolean | undefined,
  call: number,
  ret: number,
): KvOperation {
  return {
    clientId,
    input: { op: "cas", key, expected, value },
    output: ok === undefined ? undefined : { ok },
    call,
    return: ret,
  };
}

const check = (history: readonly KvOperation[], timeoutMs?: number) =>
  checkLinearizability(kvModel, history, timeoutMs === undefined ? {} : { timeoutMs });

t.test("empty history", async (t) => {
  t.same(check([]), { result: "ok", partitions: 0, ops: 0 });
});

t.test("sequential history that follows the model", async (t) => {
  const r = check([
    get(0, "x", null, 0, 1),
    put(0, "x", "a", 2, 3),
    get(1, "x", "a", 4, 5),
    cas(1, "x", "a", "b", true, 6, 7),
    cas(0, "x", "a", "c", false, 8, 9),
    get(0, "x", "b", 10, 11),
  ]);
  t.equal(r.result, "ok");
  t.equal(r.partitions, 1);
  t.equal(r.ops, 6);
  t.equal(r.counterexample, undefined);
});

t.test("stale read after a completed write", async (t) => {
  const w = put(0, "x", "1", 0, 10);
  const r = get(1, "x", null, 20, 30);
  const res = check([w, r]);
  t.equal(res.result, "violated");
  t.same(res.counterexample?.longestLinearizedPrefix, [w]);
  t.same(res.counterexample?.notLinearized, [r]);
  t.equal(res.counterexample?.partition, 0);
  t.equal(kvValue(res.counterexample!.stateAfterPrefix, "x"), "1");
});

t.test("a read concurrent with a write may see either value", async (t) => {
  t.equal(check([put(0, "x", "1", 0, 10), get(1, "x", null, 5, 15)]).result, "ok");
  t.equal(check([put(0, "x", "1", 0, 10), get(1, "x", "1", 5, 15)]).result, "ok");
  // Intervals that only touch are concurrent.
  t.equal(check([put(0, "x", "1", 0, 10), get(1, "x", null, 10, 15)]).result, "ok");
});

t.test("a value never written", async (t) => {
  const res = check([put(0, "x", "1", 0, 10), get(1, "x", "2", 0, 10)]);
  t.equal(res.result, "violated");
  t.same(res.counterexample?.longestLinearizedPrefix.map((o) => o.input.op), ["put"]);
  const alone = check([get(1, "x", "ghost", 0, 10)]);
  t.equal(alone.result, "violated");
  t.same(alone.counterexample?.longestLinearizedPrefix, []);
  t.same(alone.counterexample?.stateAfterPrefix.entries, []);
});

t.test("concurrent writes observed in inconsistent orders", async (t) => {
  const writes = [put(0, "x", "1", 0, 100), put(1, "x", "2", 0, 100)];
  const consistent = [
    get(2, "x", "1", 10, 20),
    get(2, "x", "2", 30, 40),
    get(3, "x", "1", 10, 20),
    get(3, "x", "2", 30, 40),
  ];
  t.equal(check([...writes, ...consistent]).result, "ok");
  const inconsistent = [
    get(2, "x", "1", 10, 20),
    get(2, "x", "2", 30, 40),
    get(3, "x", "2", 10, 20),
    get(3, "x", "1", 30, 40),
  ];
  t.equal(check([...writes, ...inconsistent]).result, "violated");
});

t.test("a value read back after both writes completed must not change", async (t) => {
  const writes = [put(0, "x", "1", 0, 10), put(1, "x", "2", 0, 10)];
  t.equal(check([...writes, get(2, "x", "1", 20, 30), get(2, "x", "1", 40, 50)]).result, "ok");
  t.equal(check([...writes, get(2, "x", "1", 20, 30), get(2, "x", "2", 40, 50)]).result, "violated");
});

t.test("cas", async (t) => {
  const init = put(0, "x", "a", 0, 10);
  t.equal(
    check([init, cas(1, "x", "a", "b", true, 20, 30), cas(2, "x", "a", "c", true, 20, 30)]).result,
    "violated",
    "two cas cannot both succeed on the same expected value",
  );
  t.equal(
    check([init, cas(1, "x", "a", "b", true, 20, 30), cas(2, "x", "a", "c", false, 20, 30), get(0, "x", "b", 40, 50)])
      .result,
    "ok",
  );
  t.equal(
    check([init, cas(1, "x", "a", "b", true, 20, 30), cas(2, "x", "a", "c", false, 20, 30), get(0, "x", "c", 40, 50)])
      .result,
    "violated",
    "the failed cas wrote nothing",
  );
  t.equal(check([cas(0, "x", null, "a", true, 0, 1), get(0, "x", "a", 2, 3)]).result, "ok", "null expects absence");
  t.equal(check([cas(0, "x", "a", "b", true, 0, 1)]).result, "violated", "cas on an absent key");
  t.equal(check([init, cas(0, "x", "a", "b", false, 20, 30)]).result, "violated", "a spurious cas failure");
});

t.test("timed-out operations", async (t) => {
  const read = get(1, "x", "1", 20, 30);
  t.equal(check([read]).result, "violated", "without the write the read is impossible");
  t.equal(check([put(0, "x", "1", 0, Infinity), read]).result, "ok", "a timed-out write may have happened");
  t.equal(
    check([put(0, "x", "1", 0, Infinity), get(1, "x", null, 5, 8), read, get(2, "x", "1", 40, 50)]).result,
    "ok",
    "it takes effect at one instant after its call",
  );
  t.equal(
    check([put(0, "x", "1", 0, Infinity), get(1, "x", null, 1, 2)]).result,
    "ok",
    "and possibly never",
  );
  t.equal(
    check([put(0, "x", "1", 40, Infinity), read]).result,
    "violated",
    "it cannot take effect before its call",
  );
  t.equal(
    check([put(0, "x", "1", 0, Infinity), put(1, "x", "2", 10, 20), get(2, "x", "1", 30, 40), get(2, "x", "2", 50, 60)])
      .result,
    "violated",
    "it takes effect at most once",
  );
  t.equal(
    check([put(0, "x", "1", 0, Infinity), get(1, "x", "1", 10, 20), get(1, "x", null, 30, 40)]).result,
    "violated",
    "once seen it stays",
  );

  const init = put(0, "x", "a", 0, 10);
  t.equal(
    check([init, cas(1, "x", "a", "b", undefined, 20, Infinity), get(2, "x", "b", 30, 40)]).result,
    "ok",
    "a timed-out cas applies when its expected value matches",
  );
  t.equal(
    check([init, cas(1, "x", "z", "b", undefined, 20, Infinity), get(2, "x", "b", 30, 40)]).result,
    "violated",
    "and not otherwise",
  );

  // A recorded output on an operation with an unknown outcome is ignored.
  const bogus: KvOperation = { ...put(0, "x", "1", 0, Infinity), output: { value: "nonsense" } };
  t.equal(check([bogus, read]).result, "ok");
});

t.test("keys are checked independently", async (t) => {
  const history = [
    put(0, "x", "1", 0, 10),
    put(1, "y", "2", 0, 10),
    get(2, "x", "1", 20, 30),
    get(2, "y", "2", 20, 30),
    get(3, "z", null, 20, 30),
  ];
  const ok = check(history);
  t.same(ok, { result: "ok", partitions: 3, ops: 5 });

  const bad = check([...history, get(3, "y", "1", 40, 50)]);
  t.equal(bad.result, "violated");
  t.equal(bad.partitions, 3);
  t.equal(bad.counterexample?.partition, 1, "y is the second key to appear");
  t.ok(bad.counterexample?.longestLinearizedPrefix.every((o) => o.input.key === "y"));

  t.same(
    kvPartition(history).map((p) => p.map((o) => o.input.key)),
    [["x", "x"], ["y", "y"], ["z"]],
  );
});

t.test("a model without partition or key is checked as one partition", async (t) => {
  // A counter that only increments, with reads; states are plain numbers.
  type In = { op: "inc" } | { op: "read" };
  const counter: Model<number, In, number> = {
    init: () => 0,
    step: (s, input, out) =>
      input.op === "inc" ? { ok: true, state: s + 1 } : { ok: out === undefined || out === s, state: s },
  };
  const op = (input: In, output: number | undefined, call: number, ret: number): Operation<In, number> => ({
    clientId: 0,
    input,
    output,
    call,
    return: ret,
  });
  const incs = [op({ op: "inc" }, undefined, 0, 10), op({ op: "inc" }, undefined, 0, 10)];
  t.same(checkLinearizability(counter, [...incs, op({ op: "read" }, 1, 5, 6)]), {
    result: "ok",
    partitions: 1,
    ops: 3,
  });
  t.equal(checkLinearizability(counter, [...incs, op({ op: "read" }, 1, 20, 21)]).result, "violated");
});

t.test("malformed operations are rejected", async (t) => {
  t.throws(() => check([put(0, "x", "1", 10, 5)]), RangeError);
  t.throws(() => check([put(0, "x", "1", NaN, 5)]), RangeError);
  t.throws(() => check([put(0, "x", "1", Infinity, Infinity)]), RangeError);
  t.throws(() => check([{ ...put(0, "x", "1", 0, 1), output: { ok: false } }]), TypeError);
  t.throws(() => check([{ ...get(0, "x", "1", 0, 1), output: { ok: true } }]), TypeError);
});

/**
 * A history of a real atomic store: each operation takes effect at one
 * instant inside its interval, outputs come from applying the operations in
 * the order of those instants, and some operations time out (their outcome
 * is dropped; they may or may not have taken effect).
 */
function randomHistory(
  seed: number,
  nOps: number,
  nClients: number,
  nKeys: number,
  timeoutRate = 0.03,
): KvOperation[] {
  const rng = new Prng(seed);
  const keys = Array.from({ length: nKeys }, (_, i) => `k${i}`);
  const written = new Map<string, string[]>(keys.map((k) => [k, []]));
  type Pending = {
    clientId: number;
    input: KvInput;
    call: number;
    at: number; // when it takes effect, if it does
    ret: number;
    timedOut: boolean;
    applied: boolean;
  };
  const planned: Pending[] = [];
  const clock = new Array<number>(nClients).fill(0);
  let serial = 0;
  for (let i = 0; i < nOps; i++) {
    const clientId = rng.int(0, nClients - 1);
    const call = clock[clientId]! + rng.int(0, 5);
    const at = call + rng.int(0, 20);
    const ret = at + rng.int(0, 20);
    clock[clientId] = ret;
    const key = rng.pick(keys);
    const roll = rng.float();
    let input: KvInput;
    if (roll < 0.4) input = { op: "get", key };
    else if (roll < 0.75) input = { op: "put", key, value: `v${serial++}` };
    else {
      const seen = written.get(key)!;
      const expected =
        seen.length > 0 && rng.chance(0.8) ? seen[seen.length - 1]! : rng.chance(0.5) ? null : `v${serial}`;
      input = { op: "cas", key, expected, value: `v${serial++}` };
    }
    if (input.op !== "get") written.get(key)!.push(input.value);
    const timedOut = rng.chance(timeoutRate);
    planned.push({ clientId, input, call, at, ret, timedOut, applied: !timedOut || rng.chance(0.5) });
  }
  const state = new Map<string, string | null>();
  const outputs = new Map<Pending, KvOutput>();
  for (const p of [...planned].sort((a, b) => a.at - b.at)) {
    if (!p.applied) continue;
    const cur = state.get(p.input.key) ?? null;
    if (p.input.op === "get") outputs.set(p, { value: cur });
    else if (p.input.op === "put") {
      state.set(p.input.key, p.input.value);
      outputs.set(p, { ok: true });
    } else {
      const ok = cur === p.input.expected;
      if (ok) state.set(p.input.key, p.input.value);
      outputs.set(p, { ok });
    }
  }
  return planned.map((p) => ({
    clientId: p.clientId,
    input: p.input,
    output: p.timedOut ? undefined : outputs.get(p),
    call: p.call,
    return: p.timedOut ? Infinity : p.ret,
  }));
}

t.test("large random linearizable history", async (t) => {
  const history = randomHistory(1, 2000, 8, 8);
  t.ok(history.some((o) => o.return === Infinity), "has timed-out operations");
  const start = performance.now();
  const res = check(history, 10_000);
  const ms = performance.now() - start;
  t.same(res, { result: "ok", partitions: 8, ops: 2000 });
  t.ok(ms < 2000, `took ${ms.toFixed(0)} ms`);
});

t.test("many random linearizable histories", async (t) => {
  for (let seed = 100; seed < 130; seed++) {
    const res = check(randomHistory(seed, 400, 6, 3), 10_000);
    if (res.result !== "ok") t.fail(`seed ${seed}: ${res.result}`);
  }
  t.pass("all ok");
});

t.test("large random history with many timed-out operations", async (t) => {
  const history = randomHistory(2, 2000, 10, 5, 0.15);
  const start = performance.now();
  t.same(check(history, 10_000), { result: "ok", partitions: 5, ops: 2000 });
  const reads = history.flatMap((o, i) => (o.input.op === "get" && o.return !== Infinity ? [i] : []));
  const i = reads[reads.length - 1]!;
  const corrupted = history.slice();
  corrupted[i] = { ...history[i]!, output: { value: "never-written" } };
  const res = check(corrupted, 10_000);
  t.equal(res.result, "violated");
  const ms = performance.now() - start;
  t.ok(ms < 2000, `took ${ms.toFixed(0)} ms`);
});

t.test("timed-out writes do not make refutation exponential", async (t) => {
  // Any subset of the timed-out writes, in any order, may precede each
  // completed operation; refuting the final read must not try them all.
  const history: KvOperation[] = [];
  for (let i = 0; i < 30; i++) history.push(put(i, "x", `lost${i}`, i, Infinity));
  for (let i = 0; i < 100; i++) {
    history.push(put(30, "x", `v${i}`, 100 + 10 * i, 105 + 10 * i));
    history.push(get(31, "x", `v${i}`, 106 + 10 * i, 109 + 10 * i));
  }
  history.push(get(31, "x", "never-written", 5000, 5001));
  const start = performance.now();
  const res = check(history, 5000);
  const ms = performance.now() - start;
  t.equal(res.result, "violated");
  const impossible = history[history.length - 1]!;
  t.equal(res.counterexample?.notLinearized.includes(impossible), true);
  t.ok(ms < 2000, `took ${ms.toFixed(0)} ms`);
});

t.test("the same history with one read corrupted", async (t) => {
  const history = randomHistory(1, 2000, 8, 8);
  const reads = history
    .map((o, i) => ({ o, i }))
    .filter(({ o }) => o.input.op === "get" && o.return !== Infinity);

  // A value that was never written.
  {
    const { o, i } = reads[Math.floor(reads.length / 2)]!;
    const corrupted = history.slice();
    corrupted[i] = { ...o, output: { value: "never-written" } };
    const start = performance.now();
    const res = check(corrupted, 10_000);
    t.equal(res.result, "violated");
    t.ok(res.counterexample?.notLinearized.includes(corrupted[i]!), "the corrupted read is not linearized");
    t.ok(performance.now() - start < 2000);
  }

  // A stale null: values are never null again once a write to the key has
  // completed, so a read issued after that cannot see null.
  {
    const candidate = reads.find(
      ({ o }) =>
        o.output !== undefined &&
        "value" in o.output &&
        o.output.value !== null &&
        history.some(
          (w) => w.input.op === "put" && w.input.key === o.input.key && w.return < o.call - 100,
        ),
    );
    t.ok(candidate, "found a read to corrupt");
    const { o, i } = candidate!;
    const corrupted = history.slice();
    corrupted[i] = { ...o, output: { value: null } };
    const start = performance.now();
    const res = check(corrupted, 10_000);
    t.equal(res.result, "violated");
    t.equal(res.counterexample?.longestLinearizedPrefix.every((x) => x.input.key === o.input.key), true);
    t.ok(performance.now() - start < 2000);
  }
});

t.test("time budget", async (t) => {
  // Many concurrent writes followed by a read of a value none of them wrote:
  // refuting it means trying every (set of writes, last write) configuration.
  const pathological = (n: number) => [
    ...Array.from({ length: n }, (_, i) => put(i, "x", `w${i}`, 0, 100)),
    get(n, "x", "none", 200, 210),
  ];
  t.equal(check(pathological(8)).result, "violated", "small enough to refute exhaustively");

  const start = performance.now();
  const res = check(pathological(40), 100);
  const ms = performance.now() - start;
  t.equal(res.result, "unknown");
  t.equal(res.counterexample, undefined);
  t.ok(ms < 1000, `stopped after ${ms.toFixed(0)} ms`);

  t.equal(check([put(0, "x", "1", 0, 1)], 100).result, "ok", "an easy history is decided within the budget");

  // A violation in a small partition is still reported when a large one exhausts the budget.
  const mixed = [...pathological(40), put(0, "y", "1", 0, 10), get(1, "y", null, 20, 30)];
  const mixedRes = check(mixed, 100);
  t.equal(mixedRes.result, "violated");
  t.equal(mixedRes.counterexample?.partition, 1);

  t.throws(() => check([], -1), RangeError);
});
