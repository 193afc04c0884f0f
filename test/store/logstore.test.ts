import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import type { Entry } from "../../raft/index.js";
import { LogStore, decodeEntry, decodeSnapshot, encodeEntry, encodeSnapshot } from "../../store/logstore.js";

const enc = new TextEncoder();
const ent = (index: number, term: number, data = `d${index}`): Entry => ({ index, term, type: "normal", data: enc.encode(data) });

function tmp(t: { teardown(f: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), "wharf-logstore-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

t.test("codecs round-trip", async (t) => {
  const e: Entry = { index: 42, term: 7, type: "conf", data: enc.encode("x") };
  t.same(decodeEntry(encodeEntry(e)), e);
  const s = { meta: { index: 9, term: 3, confState: { voters: ["a"], learners: ["b"] } }, data: enc.encode("state") };
  t.same(decodeSnapshot(encodeSnapshot(s)), s);
  t.throws(() => decodeEntry(new Uint8Array(3)), /truncated/);
});

t.test("what was persisted comes back after reopening", async (t) => {
  const dir = tmp(t);
  let s = await LogStore.open(dir);
  await s.persist({ hardState: { term: 2, vote: "a", commit: 2 }, entries: [ent(1, 1), ent(2, 2), ent(3, 2)] });
  await s.close();
  s = await LogStore.open(dir);
  t.same(s.mem.hardState(), { term: 2, vote: "a", commit: 2 });
  t.equal(s.mem.lastIndex(), 3);
  t.same(s.mem.entries(1, 4, Infinity).map((e) => [e.index, e.term]), [[1, 1], [2, 2], [3, 2]]);
  await s.close();
});

t.test("a conflicting append truncates the tail on disk too", async (t) => {
  const dir = tmp(t);
  let s = await LogStore.open(dir);
  await s.persist({ entries: [ent(1, 1), ent(2, 1), ent(3, 1), ent(4, 1)] });
  await s.persist({ entries: [ent(2, 3, "new")] });
  t.equal(s.mem.lastIndex(), 2);
  await s.close();
  s = await LogStore.open(dir);
  t.equal(s.mem.lastIndex(), 2, "entries 3 and 4 are gone after reopening");
  t.equal(s.mem.term(2), 3);
  await s.close();
});

t.test("snapshots compact the log, and a leader's snapshot replaces it", async (t) => {
  const dir = tmp(t);
  let s = await LogStore.open(dir);
  const entries: Entry[] = [];
  for (let i = 1; i <= 20; i++) entries.push(ent(i, 1));
  await s.persist({ entries });
  await s.snapshot(15, { voters: ["a"], learners: [] }, enc.encode("sm@15"), 5);
  t.equal(s.mem.firstIndex(), 11, "five entries kept before the snapshot index");
  await s.close();
  s = await LogStore.open(dir);
  t.equal(s.mem.snapshot().meta.index, 15);
  t.equal(s.mem.firstIndex(), 11);
  t.equal(s.mem.lastIndex(), 20);
  await s.persist({ entries: [], snapshot: { meta: { index: 30, term: 4, confState: { voters: ["a", "b"], learners: [] } }, data: enc.encode("sm@30") } });
  await s.close();
  s = await LogStore.open(dir);
  t.equal(s.mem.firstIndex(), 31);
  t.equal(s.mem.lastIndex(), 30);
  t.same(s.mem.snapshot().meta.confState.voters, ["a", "b"]);
  await s.close();
});

t.test("meta records", async (t) => {
  const dir = tmp(t);
  const s = await LogStore.open(dir);
  t.equal(await s.getMeta("cluster"), undefined);
  await s.putMeta("cluster", "c1");
  t.equal(await s.getMeta("cluster"), "c1");
  await s.close();
});
