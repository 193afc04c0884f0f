// MemoryStorage: the persisted log as the core reads it. The log is held as
// a dummy entry standing for the last compacted (snapshot) position followed
// by the retained entries, so index `offset` answers term() but not entries().

import t from "tap";
import { isRaftError } from "../../raft/errors.js";
import { MemoryStorage } from "../../raft/storage.js";
import { emptyHardState } from "../../raft/types.js";
import { ent, ents, ids, raftErrorOf, snap, storageAt } from "./fixtures/helpers.js";

// A log compacted up to 3 (term 3) that holds 4 and 5: etcd's storage_test
// fixture, entries {3,3} {4,4} {5,5}.
const fixture = () => storageAt(3, 3, ents(4, 4, 5));

t.test("a fresh storage is empty: first index 1, last index 0, zero hard state", async (t) => {
  const ms = new MemoryStorage();
  t.equal(ms.firstIndex(), 1);
  t.equal(ms.lastIndex(), 0);
  t.equal(ms.term(0), 0, "index 0 stands for the empty log, term 0");
  t.equal(raftErrorOf(() => ms.term(1)), "UNAVAILABLE");
  t.same(ms.entries(1, 1, Infinity), [], "an empty range is empty, not an error");
  t.same(ms.initialState(), { hardState: emptyHardState, confState: { voters: [], learners: [] } });
  t.equal(ms.snapshot().meta.index, 0);
});

t.test("term: compacted below the snapshot, the snapshot's term at its index, unavailable past the end", async (t) => {
  const ms = fixture();
  t.equal(raftErrorOf(() => ms.term(2)), "COMPACTED");
  t.equal(ms.term(3), 3, "the compaction point keeps its term (needed to match appends after it)");
  t.equal(ms.term(4), 4);
  t.equal(ms.term(5), 5);
  t.equal(raftErrorOf(() => ms.term(6)), "UNAVAILABLE");
  // The error is a RaftError the caller matches by code.
  try {
    ms.term(2);
    t.fail("term(2) should throw");
  } catch (e) {
    t.ok(isRaftError(e, "COMPACTED"));
    t.notOk(isRaftError(e, "UNAVAILABLE"));
  }
});

t.test("entries: [lo, hi) within the retained log, COMPACTED at or below the offset", async (t) => {
  const ms = storageAt(3, 3, ents(4, 4, 5, 6));
  t.equal(raftErrorOf(() => ms.entries(2, 6, Infinity)), "COMPACTED");
  t.equal(raftErrorOf(() => ms.entries(3, 4, Infinity)), "COMPACTED", "the offset itself holds no entry");
  t.same(ids(ms.entries(4, 5, Infinity)), [[4, 4]]);
  t.same(ids(ms.entries(4, 6, Infinity)), [[4, 4], [5, 5]]);
  t.same(ids(ms.entries(4, 7, Infinity)), [[4, 4], [5, 5], [6, 6]]);
  t.same(ids(ms.entries(6, 7, Infinity)), [[6, 6]]);
  t.equal(raftErrorOf(() => ms.entries(4, 8, Infinity)), "UNAVAILABLE", "hi may be at most lastIndex + 1");
  t.equal(raftErrorOf(() => ms.entries(7, 8, Infinity)), "UNAVAILABLE");
});

t.test("entries: maxBytes limits the answer, but never below one entry", async (t) => {
  // Every entry without payload weighs 24 bytes (entrySize).
  const ms = storageAt(3, 3, ents(4, 4, 5, 6));
  t.same(ids(ms.entries(4, 7, 0)), [[4, 4]], "a zero limit still returns the first entry");
  t.same(ids(ms.entries(4, 7, 23)), [[4, 4]], "a first entry larger than the limit is still returned");
  t.same(ids(ms.entries(4, 7, 24)), [[4, 4]]);
  t.same(ids(ms.entries(4, 7, 47)), [[4, 4]], "the second entry would exceed the limit");
  t.same(ids(ms.entries(4, 7, 48)), [[4, 4], [5, 5]], "the limit is inclusive");
  t.same(ids(ms.entries(4, 7, 71)), [[4, 4], [5, 5]]);
  t.same(ids(ms.entries(4, 7, 72)), [[4, 4], [5, 5], [6, 6]]);
  t.same(ids(ms.entries(4, 7, 1000)), [[4, 4], [5, 5], [6, 6]], "a generous limit returns the whole range");

  // Payload bytes count too: a 100-byte entry weighs 124.
  const big = new MemoryStorage();
  big.append([ent(1, 1, new Uint8Array(100)), ent(2, 1), ent(3, 1)]);
  t.same(ids(big.entries(1, 4, 124)), [[1, 1]]);
  t.same(ids(big.entries(1, 4, 148)), [[1, 1], [2, 1]]);
  t.same(ids(big.entries(2, 4, 48)), [[2, 1], [3, 1]]);
});

t.test("firstIndex / lastIndex follow appends, compaction and snapshots", async (t) => {
  const ms = fixture();
  t.equal(ms.firstIndex(), 4, "snapshot index + 1");
  t.equal(ms.lastIndex(), 5);
  ms.append([ent(6, 5)]);
  t.equal(ms.lastIndex(), 6);
  ms.createSnapshot(4, { voters: ["n1"], learners: [] }, new Uint8Array());
  t.equal(ms.firstIndex(), 4, "creating a snapshot does not discard entries");
  ms.compact(4);
  t.equal(ms.firstIndex(), 5);
  t.equal(ms.lastIndex(), 6);
  ms.applySnapshot(snap(10, 7));
  t.equal(ms.firstIndex(), 11);
  t.equal(ms.lastIndex(), 10, "a log that holds only a snapshot ends at it");
});

t.test("compact: discards up to i, keeps i's term, bounded by the snapshot", async (t) => {
  const ms = storageAt(3, 3, ents(4, 4, 5, 6));
  ms.createSnapshot(5, { voters: ["n1"], learners: [] }, new Uint8Array([1]));

  ms.compact(3); // at the offset: nothing to do
  t.equal(ms.firstIndex(), 4);
  ms.compact(2); // below it: nothing to do either (not an error)
  t.equal(ms.firstIndex(), 4);

  ms.compact(4);
  t.equal(ms.firstIndex(), 5);
  t.equal(raftErrorOf(() => ms.term(3)), "COMPACTED");
  t.equal(ms.term(4), 4, "the new compaction point keeps its term");
  t.equal(raftErrorOf(() => ms.entries(4, 5, Infinity)), "COMPACTED");
  t.same(ids(ms.entries(5, 7, Infinity)), [[5, 5], [6, 6]]);

  t.equal(raftErrorOf(() => ms.compact(6)), "UNAVAILABLE", "entries after the snapshot may not be discarded");
  t.equal(ms.firstIndex(), 5, "a refused compaction changes nothing");

  ms.compact(5);
  t.equal(ms.firstIndex(), 6);
  t.equal(ms.lastIndex(), 6);
  t.equal(ms.term(5), 5);
  t.same(ids(ms.entries(6, 7, Infinity)), [[6, 6]]);
});

t.test("append: an entry at an existing index truncates the log there (etcd TestStorageAppend)", async (t) => {
  const cases: { name: string; append: [number, number][]; want: [number, number][] }[] = [
    { name: "identical entries change nothing", append: [[3, 3], [4, 4], [5, 5]], want: [[3, 3], [4, 4], [5, 5]] },
    {
      name: "conflicting terms replace the tail",
      append: [[3, 3], [4, 6], [5, 6]],
      want: [[3, 3], [4, 6], [5, 6]],
    },
    {
      name: "a longer matching run extends the log",
      append: [[3, 3], [4, 4], [5, 5], [6, 5]],
      want: [[3, 3], [4, 4], [5, 5], [6, 5]],
    },
    {
      name: "entries at or below the compaction point are skipped, the rest truncates",
      append: [[2, 3], [3, 3], [4, 5]],
      want: [[3, 3], [4, 5]],
    },
    { name: "a single conflicting entry truncates everything after it", append: [[4, 5]], want: [[3, 3], [4, 5]] },
    { name: "an entry right after the last one is appended", append: [[6, 5]], want: [[3, 3], [4, 4], [5, 5], [6, 5]] },
  ];
  for (const c of cases) {
    const ms = fixture();
    ms.append(c.append.map(([i, term]) => ent(i, term)));
    // term() over the whole retained range, the dummy included, shows the log.
    const got: [number, number][] = [];
    for (let i = ms.firstIndex() - 1; i <= ms.lastIndex(); i++) got.push([i, ms.term(i)]);
    t.same(got, c.want, c.name);
  }
});

t.test("append: a gap after the last index is refused with UNAVAILABLE", async (t) => {
  const ms = fixture();
  t.equal(raftErrorOf(() => ms.append([ent(7, 5)])), "UNAVAILABLE");
  t.equal(ms.lastIndex(), 5, "the log is unchanged");
  ms.append([]);
  t.equal(ms.lastIndex(), 5, "appending nothing is a no-op");
});

t.test("append: entries all covered by the snapshot are ignored", async (t) => {
  const ms = fixture();
  ms.append(ents(1, 1, 2, 3));
  t.equal(ms.firstIndex(), 4);
  t.equal(ms.lastIndex(), 5, "the tail after the snapshot is not truncated");
  t.equal(ms.term(3), 3, "the compaction point keeps the snapshot's term");
  t.equal(ms.term(5), 5);

  // Even when their terms differ from the log's: what the snapshot covers
  // is committed and cannot change.
  ms.append([ent(2, 9), ent(3, 9)]);
  t.equal(ms.term(3), 3);
  t.equal(ms.lastIndex(), 5);
});

t.test("createSnapshot: records (index, term, confState, data) without discarding entries", async (t) => {
  const ms = storageAt(3, 3, ents(4, 4, 5, 6));
  const cs = { voters: ["n1", "n2"], learners: ["n3"] };
  const data = new Uint8Array([7, 7]);
  const s = ms.createSnapshot(5, cs, data);
  t.same(s.meta, { index: 5, term: 5, confState: cs });
  t.same(s.data, data);
  t.equal(ms.snapshot(), s, "snapshot() returns the latest one");
  t.same(ms.initialState().confState, cs, "the configuration on restart comes from the snapshot");
  t.equal(ms.firstIndex(), 4);
  t.same(ids(ms.entries(4, 7, Infinity)), [[4, 4], [5, 5], [6, 6]]);

  t.equal(raftErrorOf(() => ms.createSnapshot(5, cs, data)), "SNAPSHOT_OUT_OF_DATE", "not newer than the last one");
  t.equal(raftErrorOf(() => ms.createSnapshot(4, cs, data)), "SNAPSHOT_OUT_OF_DATE");
  t.equal(raftErrorOf(() => ms.createSnapshot(7, cs, data)), "UNAVAILABLE", "past the last index");
  t.equal(ms.snapshot().meta.index, 5, "refused snapshots leave the last one in place");
});

t.test("applySnapshot: replaces the whole log; an older snapshot is SNAPSHOT_OUT_OF_DATE", async (t) => {
  const ms = fixture();
  const cs = { voters: ["a", "b", "c"], learners: [] };
  ms.applySnapshot(snap(8, 6, cs));
  t.equal(ms.firstIndex(), 9);
  t.equal(ms.lastIndex(), 8);
  t.equal(ms.term(8), 6);
  t.equal(raftErrorOf(() => ms.term(5)), "COMPACTED", "the old entries are gone");
  t.same(ms.initialState().confState, cs);

  t.equal(raftErrorOf(() => ms.applySnapshot(snap(7, 6))), "SNAPSHOT_OUT_OF_DATE");
  t.equal(ms.snapshot().meta.index, 8, "the refused snapshot did not replace the log");
  t.equal(ms.firstIndex(), 9);

  // Entries after a snapshot append normally.
  ms.append(ents(9, 6, 7));
  t.same(ids(ms.entries(9, 11, Infinity)), [[9, 6], [10, 7]]);
});

t.test("hard state is stored as given and reported by initialState", async (t) => {
  const ms = new MemoryStorage();
  const hs = { term: 4, vote: "n2", commit: 3 };
  ms.setHardState(hs);
  t.same(ms.hardState(), hs);
  t.same(ms.initialState().hardState, hs);
});
