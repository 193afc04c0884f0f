// RaftLog: persisted storage followed by the unstable part (entries and a
// snapshot handed out in a Ready but not yet acknowledged by advance()).

import t from "tap";
import { RaftLog } from "../../raft/log.js";
import { MemoryStorage } from "../../raft/storage.js";
import { ent, ents, ids, snap, storageAt } from "./fixtures/helpers.js";

/** A log over an empty storage holding `es` as unstable entries (etcd's newLog + append). */
function logWith(...es: ReturnType<typeof ent>[]): RaftLog {
  const log = new RaftLog(new MemoryStorage());
  log.append(es);
  return log;
}

t.test("a new log starts after the storage's snapshot, committed and applied at it", async (t) => {
  const ms = storageAt(5, 2, ents(6, 2, 3));
  const log = new RaftLog(ms);
  t.equal(log.firstIndex(), 6);
  t.equal(log.lastIndex(), 7);
  t.equal(log.lastTerm(), 3);
  t.equal(log.committed, 5, "the snapshot is committed by definition");
  t.equal(log.applied, 5);
  t.equal(log.unstable.offset, 8, "nothing is unstable: it starts after the storage's last index");
  t.same(log.unstableEntries(), []);
  t.equal(log.term(4), undefined, "compacted");
  t.equal(log.term(5), 2, "the snapshot's term");
  t.equal(log.term(8), undefined, "past the end");
});

t.test("findConflict: the first entry whose term differs or that is new (etcd TestFindConflict)", async (t) => {
  const cases: { ents: [number, number][]; want: number; name: string }[] = [
    { ents: [], want: 0, name: "no entries, no conflict" },
    { ents: [[1, 1], [2, 2], [3, 3]], want: 0, name: "all match" },
    { ents: [[2, 2], [3, 3]], want: 0, name: "a matching suffix" },
    { ents: [[3, 3]], want: 0, name: "the last entry" },
    { ents: [[1, 1], [2, 2], [3, 3], [4, 4], [5, 4]], want: 4, name: "new entries after a full match" },
    { ents: [[2, 2], [3, 3], [4, 4], [5, 4]], want: 4, name: "new entries after a partial match" },
    { ents: [[3, 3], [4, 4], [5, 4]], want: 4, name: "new entries right after the last" },
    { ents: [[4, 4], [5, 4]], want: 4, name: "only new entries" },
    { ents: [[1, 4], [2, 4]], want: 1, name: "conflict at the first entry" },
    { ents: [[2, 1], [3, 4], [4, 4]], want: 2, name: "conflict in the middle" },
    { ents: [[3, 1], [4, 2], [5, 4], [6, 4]], want: 3, name: "conflict at the last existing entry" },
  ];
  for (const c of cases) {
    const log = logWith(...ents(1, 1, 2, 3));
    t.equal(log.findConflict(c.ents.map(([i, term]) => ent(i, term))), c.want, c.name);
  }
});

t.test("findConflictByTerm: largest index <= index whose term <= term (etcd TestFindConflictByTerm)", async (t) => {
  // Log starting from index 1: terms 2 2 5 5 5 at indexes 1..5.
  const from1 = () => new RaftLog(storageAt(0, 0, ents(1, 2, 2, 5, 5, 5)));
  // Log compacted up to 10 (term 3): terms 3 3 4 4 4 at indexes 11..15.
  const from10 = () => new RaftLog(storageAt(10, 3, ents(11, 3, 3, 4, 4, 4)));
  const cases: { log: () => RaftLog; index: number; term: number; want: { index: number; term: number } }[] = [
    { log: from1, index: 100, term: 2, want: { index: 100, term: 0 } }, // past the end: unknown, assume a match
    { log: from1, index: 5, term: 6, want: { index: 5, term: 5 } },
    { log: from1, index: 5, term: 5, want: { index: 5, term: 5 } },
    { log: from1, index: 5, term: 4, want: { index: 2, term: 2 } }, // skips the whole term 5
    { log: from1, index: 5, term: 2, want: { index: 2, term: 2 } },
    { log: from1, index: 5, term: 1, want: { index: 0, term: 0 } },
    { log: from1, index: 1, term: 2, want: { index: 1, term: 2 } },
    { log: from1, index: 1, term: 1, want: { index: 0, term: 0 } },
    { log: from1, index: 0, term: 0, want: { index: 0, term: 0 } },
    { log: from10, index: 30, term: 3, want: { index: 30, term: 0 } }, // unavailable
    { log: from10, index: 14, term: 9, want: { index: 14, term: 4 } },
    { log: from10, index: 14, term: 4, want: { index: 14, term: 4 } },
    { log: from10, index: 14, term: 3, want: { index: 12, term: 3 } },
    { log: from10, index: 14, term: 2, want: { index: 9, term: 0 } }, // runs into the compacted part
    { log: from10, index: 11, term: 5, want: { index: 11, term: 3 } },
    { log: from10, index: 10, term: 5, want: { index: 10, term: 3 } }, // the snapshot's term is known
    { log: from10, index: 10, term: 3, want: { index: 10, term: 3 } },
    { log: from10, index: 10, term: 2, want: { index: 9, term: 0 } },
    { log: from10, index: 9, term: 2, want: { index: 9, term: 0 } }, // compacted: unknown
    { log: from10, index: 4, term: 2, want: { index: 4, term: 0 } },
    { log: from10, index: 0, term: 0, want: { index: 0, term: 0 } },
  ];
  for (const c of cases) {
    t.same(
      c.log().findConflictByTerm(c.index, c.term),
      c.want,
      `${c.log === from1 ? "from 1" : "compacted to 10"}: (${c.index}, ${c.term})`,
    );
  }
});

t.test("isUpToDate: §5.4.1 a higher last term wins, then a longer log (etcd TestIsUpToDate)", async (t) => {
  const log = logWith(...ents(1, 1, 2, 3));
  const last = log.lastIndex();
  const cases: [number, number, boolean][] = [
    // A greater term: up to date whatever the index.
    [last - 1, 4, true],
    [last, 4, true],
    [last + 1, 4, true],
    // A smaller term: never up to date.
    [last - 1, 2, false],
    [last, 2, false],
    [last + 1, 2, false],
    // The same term: at least as long.
    [last - 1, 3, false],
    [last, 3, true],
    [last + 1, 3, true],
  ];
  for (const [index, term, want] of cases) t.equal(log.isUpToDate(index, term), want, `(${index}, ${term})`);
});

t.test("maybeAppend: §5.3 consistency check, truncation and commit (etcd TestLogMaybeAppend)", async (t) => {
  // Log 1/1 2/2 3/3, committed 1.
  const cases: {
    name: string;
    logTerm: number;
    index: number;
    commit: number;
    ents: [number, number][];
    want: number | undefined;
    wantCommit: number;
    wantLog?: [number, number][];
  }[] = [
    // Not matching: the follower rejects and changes nothing.
    { name: "prev term mismatch", logTerm: 2, index: 3, commit: 3, ents: [[4, 4]], want: undefined, wantCommit: 1 },
    { name: "prev index past the end", logTerm: 3, index: 4, commit: 3, ents: [[5, 4]], want: undefined, wantCommit: 1 },
    // Matching the last entry.
    { name: "empty append at last", logTerm: 3, index: 3, commit: 3, ents: [], want: 3, wantCommit: 3 },
    { name: "commit capped at the last new entry", logTerm: 3, index: 3, commit: 4, ents: [], want: 3, wantCommit: 3 },
    { name: "commit follows the leader", logTerm: 3, index: 3, commit: 2, ents: [], want: 3, wantCommit: 2 },
    { name: "commit never goes back", logTerm: 3, index: 3, commit: 0, ents: [], want: 3, wantCommit: 1 },
    {
      name: "new entry, commit below it",
      logTerm: 3,
      index: 3,
      commit: 3,
      ents: [[4, 4]],
      want: 4,
      wantCommit: 3,
      wantLog: [[1, 1], [2, 2], [3, 3], [4, 4]],
    },
    {
      name: "new entry, commit at it",
      logTerm: 3,
      index: 3,
      commit: 4,
      ents: [[4, 4]],
      want: 4,
      wantCommit: 4,
      wantLog: [[1, 1], [2, 2], [3, 3], [4, 4]],
    },
    {
      name: "new entry, commit past it",
      logTerm: 3,
      index: 3,
      commit: 5,
      ents: [[4, 4]],
      want: 4,
      wantCommit: 4,
      wantLog: [[1, 1], [2, 2], [3, 3], [4, 4]],
    },
    {
      name: "two new entries",
      logTerm: 3,
      index: 3,
      commit: 5,
      ents: [[4, 4], [5, 4]],
      want: 5,
      wantCommit: 5,
      wantLog: [[1, 1], [2, 2], [3, 3], [4, 4], [5, 4]],
    },
    // Matching in the middle.
    {
      name: "an existing entry sent again: nothing truncated, commit capped at it",
      logTerm: 1,
      index: 1,
      commit: 3,
      ents: [[2, 2]],
      want: 2,
      wantCommit: 2,
      wantLog: [[1, 1], [2, 2], [3, 3]],
    },
    {
      name: "conflict at 3 truncates the tail",
      logTerm: 2,
      index: 2,
      commit: 3,
      ents: [[3, 4]],
      want: 3,
      wantCommit: 3,
      wantLog: [[1, 1], [2, 2], [3, 4]],
    },
    {
      name: "conflict at 2",
      logTerm: 1,
      index: 1,
      commit: 4,
      ents: [[2, 4]],
      want: 2,
      wantCommit: 2,
      wantLog: [[1, 1], [2, 4]],
    },
    {
      name: "conflict at 2 with a longer run",
      logTerm: 1,
      index: 1,
      commit: 4,
      ents: [[2, 4], [3, 4]],
      want: 3,
      wantCommit: 3,
      wantLog: [[1, 1], [2, 4], [3, 4]],
    },
  ];
  for (const c of cases) {
    const log = logWith(...ents(1, 1, 2, 3));
    log.commitTo(1);
    const got = log.maybeAppend(
      c.index,
      c.logTerm,
      c.commit,
      c.ents.map(([i, term]) => ent(i, term)),
    );
    t.equal(got, c.want, `${c.name}: last new index`);
    t.equal(log.committed, c.wantCommit, `${c.name}: committed`);
    const all: [number, number][] = [];
    for (let i = 1; i <= log.lastIndex(); i++) all.push([i, log.term(i)!]);
    t.same(all, c.wantLog ?? [[1, 1], [2, 2], [3, 3]], `${c.name}: log`);
  }
});

t.test("maybeAppend: a conflict with a committed entry is a safety violation and throws", async (t) => {
  const log = logWith(...ents(1, 1, 2, 3));
  log.commitTo(2);
  t.throws(() => log.maybeAppend(0, 0, 3, [ent(1, 4)]), "conflict at 1, committed 2");
  t.throws(() => log.maybeAppend(1, 1, 3, [ent(2, 4)]), "conflict at 2 = committed");
  t.equal(log.lastTerm(), 3, "the log is unchanged");
  // Right after the committed prefix a conflict is fine.
  t.equal(log.maybeAppend(2, 2, 3, [ent(3, 4)]), 3);
  t.equal(log.term(3), 4);
});

t.test("commitTo never decreases and refuses to pass the last index", async (t) => {
  const log = logWith(...ents(1, 1, 2, 3));
  log.commitTo(2);
  log.commitTo(1);
  t.equal(log.committed, 2);
  t.throws(() => log.commitTo(4));
  t.equal(log.committed, 2);
});

t.test("maybeCommit commits only an entry of the given term (§5.4.2)", async (t) => {
  const log = logWith(...ents(1, 1, 2, 2, 3));
  t.notOk(log.maybeCommit(3, 3), "index 3 has term 2, not the leader's term 3");
  t.equal(log.committed, 0);
  t.ok(log.maybeCommit(4, 3));
  t.equal(log.committed, 4, "committing 4 commits everything before it");
  t.notOk(log.maybeCommit(4, 3), "already committed");
  t.notOk(log.maybeCommit(2, 2), "never backwards");
});

t.test("append refuses to overwrite committed entries and truncates the unstable tail", async (t) => {
  const log = logWith(...ents(1, 1, 2, 2));
  log.commitTo(1);
  t.throws(() => log.append([ent(1, 5)]), "index 1 is committed");
  t.equal(log.append([ent(2, 3)]), 2, "truncates 2.. and returns the last index");
  t.same(ids(log.unstableEntries()), [[1, 1], [2, 3]]);
  t.equal(log.append([]), 2, "appending nothing returns the last index");
});

t.test("slice: across the stable/unstable boundary, with byte limits", async (t) => {
  // Storage: compacted to 2, stable 3 4 5. Unstable: 6 7. Each entry 24 bytes.
  const build = () => {
    const log = new RaftLog(storageAt(2, 1, ents(3, 1, 2, 2)));
    log.append(ents(6, 3, 3));
    return log;
  };
  const log = build();
  t.equal(log.unstable.offset, 6, "6 is the first unstable entry");
  t.same(ids(log.slice(3, 8, Infinity)), [[3, 1], [4, 2], [5, 2], [6, 3], [7, 3]], "the whole log");
  t.same(ids(log.slice(4, 7, Infinity)), [[4, 2], [5, 2], [6, 3]], "straddling the boundary");
  t.same(ids(log.slice(3, 5, Infinity)), [[3, 1], [4, 2]], "stable only");
  t.same(ids(log.slice(6, 8, Infinity)), [[6, 3], [7, 3]], "unstable only");
  t.same(log.slice(5, 5, Infinity), [], "an empty range");

  t.same(ids(log.slice(4, 8, 0)), [[4, 2]], "at least one entry");
  t.same(ids(log.slice(4, 8, 47)), [[4, 2]]);
  t.same(ids(log.slice(4, 8, 48)), [[4, 2], [5, 2]], "the limit hit exactly at the boundary");
  t.same(ids(log.slice(4, 8, 71)), [[4, 2], [5, 2]], "the first unstable entry does not fit");
  t.same(ids(log.slice(4, 8, 72)), [[4, 2], [5, 2], [6, 3]], "the byte count carries over the boundary");
  t.same(ids(log.slice(5, 8, 48)), [[5, 2], [6, 3]]);
  t.same(ids(log.slice(6, 8, 0)), [[6, 3]], "at least one entry from the unstable part too");
  t.same(ids(log.slice(6, 8, 48)), [[6, 3], [7, 3]]);

  t.throws(() => log.slice(2, 5, Infinity), "2 is compacted: the caller must send a snapshot");
  t.throws(() => log.slice(1, 5, Infinity));
});

t.test("slice: unstable entries that replaced a stable tail win over storage", async (t) => {
  // Storage holds 1..4 of term 1; a new leader's entries replace 3.. in the
  // unstable part before the driver has truncated storage.
  const log = new RaftLog(storageAt(0, 0, ents(1, 1, 1, 1, 1)));
  log.append(ents(3, 2, 2));
  t.equal(log.unstable.offset, 3);
  t.same(ids(log.slice(1, 5, Infinity)), [[1, 1], [2, 1], [3, 2], [4, 2]]);
  t.equal(log.term(4), 2);
  t.equal(log.lastIndex(), 4);
});

t.test("stableTo: entries up to (i, t) leave the unstable part; a stale term is ignored", async (t) => {
  const log = logWith(...ents(1, 1, 2));
  log.stableTo(1, 1);
  t.equal(log.unstable.offset, 2);
  t.same(ids(log.unstableEntries()), [[2, 2]]);

  log.stableTo(2, 1);
  t.equal(log.unstable.offset, 2, "(2, 1) is not our entry 2: ignored");
  t.same(ids(log.unstableEntries()), [[2, 2]]);

  log.stableTo(3, 2);
  t.equal(log.unstable.offset, 2, "past the end: ignored");

  log.stableTo(0, 0);
  t.equal(log.unstable.offset, 2, "below the unstable part: ignored");

  log.stableTo(2, 2);
  t.equal(log.unstable.offset, 3);
  t.same(log.unstableEntries(), []);
});

t.test("stableTo: a write overtaken by a truncation does not mark the new entries stable", async (t) => {
  // A Ready carried 1/1 2/1 3/1; before advance(), a new leader replaced 2..
  // with 2/2. The acknowledgement (3, 1) covers entries that no longer exist,
  // and (2, 1) is not the entry 2 we now hold.
  const log = logWith(...ents(1, 1, 1, 1));
  log.append([ent(2, 2)]);
  t.same(ids(log.unstableEntries()), [[1, 1], [2, 2]]);
  log.stableTo(3, 1);
  t.equal(log.unstable.offset, 1);
  log.stableTo(2, 1);
  t.equal(log.unstable.offset, 1);
  t.same(ids(log.unstableEntries()), [[1, 1], [2, 2]], "2/2 is still to be persisted");
  log.stableTo(1, 1);
  t.same(ids(log.unstableEntries()), [[2, 2]], "1/1 was persisted either way");
});

t.test("restore: a snapshot replaces the log; stableSnapTo acknowledges it", async (t) => {
  const ms = storageAt(0, 0, ents(1, 1, 1));
  const log = new RaftLog(ms);
  log.append(ents(3, 2));
  const s = snap(10, 4, { voters: ["a", "b"], learners: [] });
  log.restore(s);
  t.equal(log.committed, 10);
  t.equal(log.applied, 10, "the snapshot is the state machine's new state");
  t.equal(log.firstIndex(), 11);
  t.equal(log.lastIndex(), 10);
  t.equal(log.lastTerm(), 4);
  t.equal(log.term(10), 4);
  t.equal(log.term(2), undefined, "the old log is gone, even though storage still holds it");
  t.equal(log.snapshot(), s, "the pending snapshot is the latest one");
  t.equal(log.unstable.offset, 11);
  t.same(log.unstableEntries(), []);
  t.same(log.nextCommittedEntries(Infinity), [], "nothing to apply: the snapshot is the state");

  // Entries after the snapshot append to the unstable part.
  log.append(ents(11, 4));
  t.equal(log.lastIndex(), 11);

  log.stableSnapTo(9);
  t.equal(log.unstable.snapshot, s, "another index does not acknowledge it");
  ms.applySnapshot(s);
  log.stableSnapTo(10);
  t.equal(log.unstable.snapshot, undefined);
  t.equal(log.firstIndex(), 11, "now answered by storage");
  t.equal(log.term(10), 4);
  t.equal(log.snapshot(), s);
});

t.test("nextCommittedEntries: (applied, committed], bounded by bytes, at least one", async (t) => {
  const log = new RaftLog(storageAt(3, 1, ents(4, 1, 1)));
  log.append(ents(6, 1));
  log.commitTo(5);
  t.ok(log.hasNextCommittedEntries());
  t.same(ids(log.nextCommittedEntries(Infinity)), [[4, 1], [5, 1]], "committed entries, not 6");
  t.same(ids(log.nextCommittedEntries(0)), [[4, 1]], "at least one entry");
  t.same(ids(log.nextCommittedEntries(48)), [[4, 1], [5, 1]]);

  log.appliedTo(4);
  t.same(ids(log.nextCommittedEntries(Infinity)), [[5, 1]]);
  log.appliedTo(5);
  t.notOk(log.hasNextCommittedEntries());
  t.same(log.nextCommittedEntries(Infinity), []);

  log.commitTo(6);
  t.same(ids(log.nextCommittedEntries(Infinity)), [[6, 1]], "committed entries may still be unstable");
});

t.test("appliedTo: within (applied, committed]; 0 is a no-op", async (t) => {
  const log = logWith(...ents(1, 1, 1, 1));
  log.commitTo(2);
  log.appliedTo(0);
  t.equal(log.applied, 0);
  log.appliedTo(2);
  t.equal(log.applied, 2);
  t.throws(() => log.appliedTo(3), "past commit");
  t.throws(() => log.appliedTo(1), "backwards");
  t.equal(log.applied, 2);
});

t.test(
  "append refuses entries that would leave a gap after the last index",
  async (t) => {
    const log = logWith(...ents(1, 1, 1));
    t.throws(() => log.append([ent(5, 2)]));
    t.equal(log.lastIndex(), 2);
    t.equal(log.term(3), undefined);
  },
);
