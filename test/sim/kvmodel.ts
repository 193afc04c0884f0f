// The sequential specification of the replicated key-value store, for the
// linearizability checker: put, get and compare-and-set on string keys whose
// values are strings, every key starting out absent (null).

import type { Model, Operation, StepResult } from "./linearizability.js";

export type KvPut = { readonly op: "put"; readonly key: string; readonly value: string };
export type KvGet = { readonly op: "get"; readonly key: string };
/** Sets `value` iff the current value is `expected` (null: the key is absent). */
export type KvCas = {
  readonly op: "cas";
  readonly key: string;
  readonly expected: string | null;
  readonly value: string;
};
export type KvInput = KvPut | KvGet | KvCas;

/** Output of a put: always `{ ok: true }` (a put that failed must be dropped from the history). */
export type KvPutOutput = { readonly ok: boolean };
/** Output of a get. */
export type KvGetOutput = { readonly value: string | null };
/** Output of a cas: whether it matched and wrote. `{ ok: false }` is a definite, effect-free outcome. */
export type KvCasOutput = { readonly ok: boolean };
export type KvOutput = KvPutOutput | KvGetOutput;

export type KvOperation = Operation<KvInput, KvOutput>;

/**
 * An immutable snapshot of the store: the keys that have a value, sorted,
 * with `key` a canonical encoding of them computed once per state so that
 * memoisation costs no encoding. Histories are checked one key at a time,
 * so a state rarely holds more than one entry.
 */
export class KvState {
  constructor(
    readonly entries: readonly (readonly [key: string, value: string])[],
    readonly key: string,
  ) {}

  /** The same entries as a map (built on each access; not for hot paths). */
  get values(): ReadonlyMap<string, string> {
    return new Map(this.entries);
  }
}

const EMPTY = new KvState([], "");

/** The value of `key` in `state` (null: absent). */
export function kvValue(state: KvState, key: string): string | null {
  for (const [k, v] of state.entries) if (k === key) return v;
  return null;
}

function withValue(state: KvState, key: string, value: string): KvState {
  const old = state.entries;
  if (old.length === 0 || (old.length === 1 && old[0]![0] === key)) {
    if (old.length === 1 && old[0]![1] === value) return state;
    return new KvState([[key, value]], encode(key, value));
  }
  let i = 0;
  while (i < old.length && old[i]![0] < key) i++;
  const present = i < old.length && old[i]![0] === key;
  if (present && old[i]![1] === value) return state;
  const entries = [...old.slice(0, i), [key, value] as const, ...old.slice(present ? i + 1 : i)];
  let encoded = "";
  for (const [k, v] of entries) encoded += encode(k, v);
  return new KvState(entries, encoded);
}

/** Length-prefixed, so that a concatenation of encodings is injective. */
function encode(key: string, value: string): string {
  return `${key.length}:${key}${value.length}:${value}`;
}

function accept(state: KvState): StepResult<KvState> {
  return { ok: true, state };
}

function reject(state: KvState): StepResult<KvState> {
  return { ok: false, state };
}

/**
 * The key-value model. An `undefined` output (outcome unknown) is accepted
 * in any state, with the operation's effect applied as if it had run: a put
 * writes, a cas writes iff its expected value matches, a get changes nothing.
 *
 * A put whose output is not `{ ok: true }`, or an output of the wrong shape
 * for its operation, is a malformed history and throws.
 */
export const kvModel: Model<KvState, KvInput, KvOutput> = {
  init: () => EMPTY,

  step(state, input, output) {
    switch (input.op) {
      case "put":
        if (output !== undefined && (!("ok" in output) || output.ok !== true)) {
          throw new TypeError(`put output must be { ok: true }, got ${JSON.stringify(output)}`);
        }
        return accept(withValue(state, input.key, input.value));
      case "get":
        if (output === undefined) return accept(state);
        if (!("value" in output)) throw new TypeError(`get output must be { value }, got ${JSON.stringify(output)}`);
        return output.value === kvValue(state, input.key) ? accept(state) : reject(state);
      case "cas": {
        const matches = kvValue(state, input.key) === input.expected;
        if (output === undefined) return accept(matches ? withValue(state, input.key, input.value) : state);
        if (!("ok" in output)) throw new TypeError(`cas output must be { ok }, got ${JSON.stringify(output)}`);
        if (output.ok !== matches) return reject(state);
        return accept(matches ? withValue(state, input.key, input.value) : state);
      }
    }
  },

  partition: kvPartition,

  key: (state) => state.key,
};

/**
 * Splits a key-value history into one sub-history per key, in order of each
 * key's first appearance; operations keep their relative order. Keys are
 * independent in the model, so the history is linearizable iff each
 * sub-history is.
 */
export function kvPartition<Op extends { readonly input: { readonly key: string } }>(history: readonly Op[]): Op[][] {
  const byKey = new Map<string, Op[]>();
  for (const op of history) {
    let ops = byKey.get(op.input.key);
    if (ops === undefined) {
      ops = [];
      byKey.set(op.input.key, ops);
    }
    ops.push(op);
  }
  return [...byKey.values()];
}
