// A linearizability checker in the style of Porcupine: the Wing & Gong
// backtracking search over a history's call/return entries, with Lowe's
// memoisation of (set of linearized operations, model state) configurations,
// run independently on each partition the model defines (P-compositionality).
//
// The module has no dependencies so that it can be reused by any test that
// records a history of concurrent operations.

/**
 * One completed or outstanding operation, as one client observed it.
 *
 * `call` and `return` are instants on one clock shared by every client.
 * An operation whose outcome is unknown (it timed out, or the client crashed
 * while waiting) has `return === Infinity`: it may have taken effect at any
 * instant after `call`, or never. Its `output` is ignored and the model is
 * stepped with `undefined`, which it must accept.
 *
 * Operations that definitely failed (rejected before having any effect) must
 * be dropped by the caller: the checker has no notion of failure and would
 * otherwise require the model to explain them.
 */
export interface Operation<I, O> {
  readonly clientId: number;
  readonly input: I;
  readonly output: O | undefined;
  readonly call: number;
  readonly return: number;
}

export interface StepResult<S> {
  /** Whether `output` is a possible result of applying `input` in the given state. */
  readonly ok: boolean;
  /** The state after the operation; only meaningful when `ok`. */
  readonly state: S;
}

/**
 * A sequential specification.
 *
 * `step` must be pure: the search calls it many times on the same state and
 * keeps old states for backtracking, so it must never mutate `state`.
 * With `output === undefined` it must accept (return `ok: true`) in every
 * state and give the state as if the operation had run: an operation with an
 * unknown outcome that did take effect could have returned anything. The
 * search relies on this to treat such operations as optional.
 *
 * `key` must map two states to the same string iff they behave identically
 * under every future sequence of operations; it drives memoisation. Without
 * it, `JSON.stringify(state)` is used, which is only correct for plain data.
 *
 * `partition` splits a history into independent sub-histories (for example,
 * one per key of a key-value store): the history is linearizable iff every
 * partition is. Without it the history is checked as a single partition.
 */
export interface Model<S, I, O> {
  init(): S;
  step(state: S, input: I, output: O | undefined): StepResult<S>;
  partition?(history: readonly Operation<I, O>[]): readonly (readonly Operation<I, O>[])[];
  key?(state: S): string;
}

export type CheckVerdict = "ok" | "violated" | "unknown";

/** Evidence for a violated partition. */
export interface Counterexample<S, I, O> {
  /** Index of the violated partition in the list returned by `model.partition`. */
  readonly partition: number;
  /**
   * The longest sequence of the partition's operations found to be a valid
   * linearization of a prefix of the history; the violation lies in some
   * operation that cannot be placed after it.
   */
  readonly longestLinearizedPrefix: readonly Operation<I, O>[];
  /** The model state after `longestLinearizedPrefix`. */
  readonly stateAfterPrefix: S;
  /** The partition's remaining operations, sorted by call time. */
  readonly notLinearized: readonly Operation<I, O>[];
}

export interface CheckResult<S, I, O> {
  /**
   * "violated" is definite. "unknown" means the time budget ran out before
   * every partition was decided and none of the decided ones was violated.
   */
  readonly result: CheckVerdict;
  /** Number of partitions the history was split into. */
  readonly partitions: number;
  /** Number of operations in the history. */
  readonly ops: number;
  /** Present iff `result === "violated"`. */
  readonly counterexample?: Counterexample<S, I, O>;
}

export interface CheckOptions {
  /**
   * Wall-clock budget for the whole check, in milliseconds (default: none).
   * The clock is read every few hundred search steps, so the check may
   * overrun the budget slightly.
   */
  readonly timeoutMs?: number;
}

/**
 * Decides whether `history` is linearizable with respect to `model`.
 *
 * Partitions are searched smallest first so that, under a time budget, a
 * violation in a small partition is not hidden behind a large one that
 * exhausts the budget. The first violated partition found ends the check.
 *
 * Throws a RangeError on a malformed operation (non-finite call time, or a
 * return time that is NaN or earlier than the call).
 */
export function checkLinearizability<S, I, O>(
  model: Model<S, I, O>,
  history: readonly Operation<I, O>[],
  options: CheckOptions = {},
): CheckResult<S, I, O> {
  for (const op of history) {
    if (!Number.isFinite(op.call)) throw new RangeError(`operation call time must be finite, got ${op.call}`);
    if (!(op.return >= op.call)) {
      throw new RangeError(`operation return time ${op.return} must be >= its call time ${op.call}`);
    }
  }
  const timeoutMs = options.timeoutMs ?? Infinity;
  if (!(timeoutMs >= 0)) throw new RangeError(`timeoutMs must be >= 0, got ${timeoutMs}`);
  const deadline = timeoutMs === Infinity ? Infinity : Date.now() + timeoutMs;

  const partitions = model.partition ? model.partition(history) : [history];
  const keyOf = model.key ? (s: S) => model.key!(s) : (s: S) => JSON.stringify(s);

  const byPartitionSize = partitions.map((_, i) => i);
  byPartitionSize.sort((a, b) => partitions[a]!.length - partitions[b]!.length || a - b);

  let timedOut = false;
  for (const p of byPartitionSize) {
    const ops = partitions[p]!;
    if (ops.length === 0) continue;
    if (deadline !== Infinity && Date.now() > deadline) {
      timedOut = true;
      break;
    }
    const outcome = searchPartition(model, keyOf, ops, deadline);
    if (outcome.verdict === "unknown") {
      timedOut = true;
      break;
    }
    if (outcome.verdict === "violated") {
      const inPrefix = new Set(outcome.prefix);
      const notLinearized = ops
        .filter((_, i) => !inPrefix.has(i))
        .sort((a, b) => a.call - b.call);
      return {
        result: "violated",
        partitions: partitions.length,
        ops: history.length,
        counterexample: {
          partition: p,
          longestLinearizedPrefix: outcome.prefix.map((i) => ops[i]!),
          stateAfterPrefix: outcome.state,
          notLinearized,
        },
      };
    }
  }
  return { result: timedOut ? "unknown" : "ok", partitions: partitions.length, ops: history.length };
}

type PartitionOutcome<S> =
  | { readonly verdict: "ok" | "unknown" }
  | { readonly verdict: "violated"; readonly prefix: readonly number[]; readonly state: S };

/** Search steps between two reads of the clock; a power of two. */
const CLOCK_EVERY = 256;

const HEAD = 0;
const CALL = 1;
const RETURN = 2;
const OUTSTANDING = 3;

/**
 * The search proper, on one partition.
 *
 * Operations that returned contribute a call and a return entry to a doubly
 * linked list in time order behind a sentinel head, stored in typed arrays
 * indexed by node number. Linearizing an operation "lifts" both its entries
 * out of the list; backtracking "unlifts" them, which restores both in O(1)
 * because a lifted node keeps its own links and entries are unlifted in the
 * reverse order of lifting. The operations that may be linearized next are
 * those whose call entry precedes the first remaining return entry R;
 * having tried them all means the operation R belongs to cannot be placed,
 * so the search backtracks.
 *
 * Outstanding operations (return = Infinity) sit in a second list, ordered
 * by call time, and are candidates when their call is not after R. They are
 * tried only after the returned candidates, and are never required: once
 * every returned operation is linearized the partition is linearizable,
 * because the model accepts any outstanding operation in any state, so the
 * rest can be placed at the end. For the same reason a configuration
 * (linearized returned ops D, linearized outstanding ops P, state s) is
 * dominated by (D, P', s) for any P' ⊆ P: every completion of the former is
 * one of the latter. The memo therefore prunes a configuration when one with
 * the same D and state and a subset of its P has been seen. Without this,
 * each outstanding operation can double the work of refuting a history.
 */
function searchPartition<S, I, O>(
  model: Model<S, I, O>,
  keyOf: (s: S) => string,
  ops: readonly Operation<I, O>[],
  deadline: number,
): PartitionOutcome<S> {
  const n = ops.length;
  const returned: number[] = [];
  const outstanding: number[] = [];
  for (let i = 0; i < n; i++) (ops[i]!.return === Infinity ? outstanding : returned).push(i);
  const d = returned.length;
  const p = outstanding.length;

  // Events of returned operations: 2j is the call of returned[j], 2j+1 its
  // return. At equal times calls sort before returns, so operations whose
  // intervals merely touch are concurrent (as in Porcupine).
  const eventTime = (e: number): number => {
    const op = ops[returned[e >> 1]!]!;
    return e & 1 ? op.return : op.call;
  };
  const order = Array.from({ length: 2 * d }, (_, e) => e);
  order.sort((a, b) => {
    const ta = eventTime(a);
    const tb = eventTime(b);
    if (ta !== tb) return ta < tb ? -1 : 1;
    return (a & 1) - (b & 1) || a - b;
  });
  outstanding.sort((a, b) => ops[a]!.call - ops[b]!.call || a - b);

  // Node 0 heads the main list, nodes 1..2d hold order[k-1]; node 2d+1 heads
  // the outstanding list, nodes 2d+2.. hold outstanding operations.
  const oHead = 2 * d + 1;
  const size = oHead + 1 + p;
  const next = new Int32Array(size);
  const prev = new Int32Array(size);
  const kind = new Uint8Array(size);
  const match = new Int32Array(size).fill(-1); // call node -> its return node
  const opOf = new Int32Array(size).fill(-1);
  const time = new Float64Array(size); // return time on return nodes, call time on outstanding ones
  const returnNode = new Int32Array(d);
  for (let k = 1; k <= 2 * d; k++) {
    const e = order[k - 1]!;
    opOf[k] = returned[e >> 1]!;
    kind[k] = e & 1 ? RETURN : CALL;
    time[k] = eventTime(e);
    if (e & 1) returnNode[e >> 1] = k;
  }
  for (let k = 1; k <= 2 * d; k++) {
    const e = order[k - 1]!;
    if (!(e & 1)) match[k] = returnNode[e >> 1]!;
  }
  for (let k = 0; k <= 2 * d; k++) {
    next[k] = k < 2 * d ? k + 1 : -1;
    prev[k] = k - 1;
  }
  kind[HEAD] = HEAD;
  kind[oHead] = HEAD;
  for (let j = 0; j <= p; j++) {
    const k = oHead + j;
    next[k] = j < p ? k + 1 : -1;
    prev[k] = j > 0 ? k - 1 : -1;
    if (j > 0) {
      const op = outstanding[j - 1]!;
      kind[k] = OUTSTANDING;
      opOf[k] = op;
      time[k] = ops[op]!.call;
    }
  }

  const inputs: I[] = ops.map((o) => o.input);
  const outputs: (O | undefined)[] = ops.map((o) => (o.return === Infinity ? undefined : o.output));

  // The linearized set as a bitset over operation indices, with a Zobrist
  // hash (XOR of a fixed pseudo-random word per member) of its returned
  // members only, so that dominated configurations share a bucket.
  const words = Math.max(1, Math.ceil(n / 32));
  const linearized = new Uint32Array(words);
  const returnedMask = new Uint32Array(words);
  const zobrist = new Int32Array(n);
  for (const i of returned) {
    returnedMask[i >>> 5]! |= 1 << (i & 31);
    zobrist[i] = mix32(i + 1);
  }
  let hash = 0;

  // Memo of visited configurations: per state key (whose hash the runtime
  // caches on the string), a chained hash table keyed by the bitset hash,
  // whose entries hold a copy of the bitset in `pool`. A configuration seen
  // before, or dominated by one, has been or is being explored (it is on the
  // current path), so it never needs exploring again.
  const buckets = new Map<string, Map<number, number>>();
  let memoCount = 0;
  let memoCapacity = 1024;
  let pool = new Uint32Array(memoCapacity * words);
  let chain = new Int32Array(memoCapacity);

  // True if the current configuration (with state key `key`) is dominated
  // by a recorded one; records it otherwise.
  const memoSeenOrAdd = (h: number, key: string): boolean => {
    let table = buckets.get(key);
    if (table === undefined) {
      table = new Map();
      buckets.set(key, table);
    }
    const head = table.get(h);
    for (let c = head === undefined ? -1 : head; c !== -1; c = chain[c]!) {
      const base = c * words;
      let dominated = true;
      for (let w = 0; w < words; w++) {
        const seen = pool[base + w]!;
        const cur = linearized[w]!;
        if ((seen & ~cur) !== 0 || (cur & ~seen & returnedMask[w]!) !== 0) {
          dominated = false;
          break;
        }
      }
      if (dominated) return true;
    }
    if (memoCount === memoCapacity) {
      memoCapacity *= 2;
      const grownPool = new Uint32Array(memoCapacity * words);
      grownPool.set(pool);
      pool = grownPool;
      const grownChain = new Int32Array(memoCapacity);
      grownChain.set(chain);
      chain = grownChain;
    }
    const c = memoCount++;
    pool.set(linearized, c * words);
    chain[c] = head === undefined ? -1 : head;
    table.set(h, c);
    return false;
  };

  // The current partial linearization: nodes, the state before each, and
  // for outstanding ones the candidate time limit in force when pushed.
  const stackNode = new Int32Array(n);
  const stackState: S[] = new Array<S>(n);
  const stackLimit = new Float64Array(n);
  let depth = 0;

  const initial = model.init();
  let state = initial;
  memoSeenOrAdd(hash, keyOf(state));
  let bestLen = 0;
  let bestPrefix: number[] = [];
  let bestState = initial;

  // Whether linearizing outstanding operation `op` now, giving a state with
  // key `key`, makes the outstanding operation linearized just before it
  // irrelevant: placing `op` instead of it reaches the same state with a
  // strictly smaller set, a configuration that dominates this one and is
  // explored from the same parent. This stops chains of outstanding writes,
  // each overwriting the last, from being explored in every combination.
  const overwrites = (op: number, key: string): boolean => {
    if (depth === 0 || kind[stackNode[depth - 1]!] !== OUTSTANDING) return false;
    const alt = model.step(stackState[depth - 1]!, inputs[op]!, undefined);
    return alt.ok && keyOf(alt.state) === key;
  };

  const bounded = deadline !== Infinity;
  let steps = 0;
  // The scan position: a node of the main list, or (once the first return
  // entry has been reached, whose time is then `limit`) of the outstanding list.
  let node = next[HEAD]!;
  let limit = 0;
  if (node === -1) return { verdict: "ok" };
  for (;;) {
    if (bounded && (++steps & (CLOCK_EVERY - 1)) === 0 && Date.now() > deadline) {
      return { verdict: "unknown" };
    }
    const k = node === -1 ? HEAD : kind[node]!;
    if (k === RETURN) {
      limit = time[node]!;
      node = next[oHead]!;
      continue;
    }
    if (k === CALL || (k === OUTSTANDING && time[node]! <= limit)) {
      const op = opOf[node]!;
      const r = model.step(state, inputs[op]!, outputs[op]);
      if (r.ok) {
        const bit = 1 << (op & 31);
        linearized[op >>> 5]! |= bit;
        const h = hash ^ zobrist[op]!;
        const key = keyOf(r.state);
        if (!(k === OUTSTANDING && overwrites(op, key)) && !memoSeenOrAdd(h, key)) {
          stackNode[depth] = node;
          stackState[depth] = state;
          stackLimit[depth] = limit;
          depth++;
          state = r.state;
          hash = h;
          next[prev[node]!] = next[node]!;
          if (next[node] !== -1) prev[next[node]!] = prev[node]!;
          if (k === CALL) {
            const ret = match[node]!;
            next[prev[ret]!] = next[ret]!;
            if (next[ret] !== -1) prev[next[ret]!] = prev[ret]!;
            if (next[HEAD] === -1) return { verdict: "ok" };
          }
          node = next[HEAD]!;
          continue;
        }
        linearized[op >>> 5]! &= ~bit;
      }
      node = next[node]!;
      continue;
    }
    // No candidate left: the operation of the first return entry cannot be placed.
    if (depth === 0) return { verdict: "violated", prefix: bestPrefix, state: bestState };
    if (depth > bestLen) {
      bestLen = depth;
      bestPrefix = Array.from(stackNode.subarray(0, depth), (x) => opOf[x]!);
      bestState = state;
    }
    depth--;
    node = stackNode[depth]!;
    state = stackState[depth]!;
    limit = stackLimit[depth]!;
    const op = opOf[node]!;
    linearized[op >>> 5]! &= ~(1 << (op & 31));
    hash ^= zobrist[op]!;
    if (kind[node] === CALL) {
      const ret = match[node]!;
      next[prev[ret]!] = ret;
      if (next[ret] !== -1) prev[next[ret]!] = ret;
    }
    next[prev[node]!] = node;
    if (next[node] !== -1) prev[next[node]!] = node;
    node = next[node]!;
  }
}

/** A well-mixed 32-bit value for each small integer (a murmur3 finaliser). */
function mix32(x: number): number {
  let z = Math.imul(x, 0x9e3779b1);
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return z ^ (z >>> 16);
}
