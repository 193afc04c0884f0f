// Flow control (Inflights), the leader's view of one follower (Progress) and
// the membership's quorum arithmetic (ProgressTracker).

import t from "tap";
import { Inflights, Progress, ProgressTracker } from "../../raft/tracker.js";

t.test("Inflights: full at maxCount messages; freeLE frees every message up to an index", async (t) => {
  const in_ = new Inflights(10, 0);
  for (let i = 0; i < 5; i++) in_.add(i, 1);
  t.equal(in_.count(), 5);
  t.notOk(in_.full());
  for (let i = 5; i < 10; i++) in_.add(i, 1);
  t.equal(in_.count(), 10);
  t.ok(in_.full(), "10 of 10");

  in_.freeLE(4);
  t.equal(in_.count(), 5, "0..4 freed");
  t.notOk(in_.full());
  t.equal(in_.bytes, 5);

  in_.freeLE(8);
  t.equal(in_.count(), 1, "only 9 left");

  in_.freeLE(3);
  t.equal(in_.count(), 1, "an index below everything in flight frees nothing (stale ack)");

  in_.freeLE(9);
  t.equal(in_.count(), 0);
  t.equal(in_.bytes, 0);

  // The window slides: more can be added after freeing.
  for (let i = 10; i < 20; i++) in_.add(i, 1);
  t.ok(in_.full());
  in_.freeLE(14);
  t.equal(in_.count(), 5);
  in_.freeLE(100);
  t.equal(in_.count(), 0, "an index past everything frees everything");
});

t.test("Inflights: full once the bytes in flight reach maxBytes", async (t) => {
  const in_ = new Inflights(10, 1000);
  in_.add(1, 400);
  in_.add(2, 500);
  t.equal(in_.bytes, 900);
  t.notOk(in_.full(), "900 < 1000 bytes, 2 < 10 messages");
  in_.add(3, 100);
  t.equal(in_.bytes, 1000);
  t.ok(in_.full(), "the byte limit is reached at equality");
  in_.freeLE(1);
  t.equal(in_.bytes, 600);
  t.notOk(in_.full());
  in_.add(4, 2000);
  t.ok(in_.full(), "one large message may overshoot the byte budget (it was admitted while not full)");
  t.equal(in_.count(), 3);
  in_.freeLE(4);
  t.equal(in_.bytes, 0);
  t.equal(in_.count(), 0);
});

t.test("Inflights: maxBytes 0 means no byte limit; reset empties", async (t) => {
  const in_ = new Inflights(3, 0);
  in_.add(1, 1 << 30);
  in_.add(2, 1 << 30);
  t.notOk(in_.full(), "only the count limits");
  in_.add(3, 0);
  t.ok(in_.full());
  in_.reset();
  t.equal(in_.count(), 0);
  t.equal(in_.bytes, 0);
  t.notOk(in_.full());
});

/** A progress in a given state, with (match, next). */
function progress(state: "probe" | "replicate" | "snapshot", match: number, next: number, pending = 0): Progress {
  const pr = new Progress(next, false, 256, 0);
  pr.match = match;
  if (state === "replicate") {
    pr.becomeReplicate();
    pr.next = next;
  } else if (state === "snapshot") {
    pr.becomeSnapshot(pending);
    pr.next = next;
  }
  return pr;
}

t.test("Progress starts in probe, not paused", async (t) => {
  const pr = new Progress(5, false, 4, 0);
  t.equal(pr.state, "probe");
  t.equal(pr.next, 5);
  t.equal(pr.match, 0);
  t.notOk(pr.isPaused());
});

t.test("Progress.becomeProbe: next = match + 1, or after a snapshot that was sent (etcd TestProgressBecomeProbe)", async (t) => {
  const r = progress("replicate", 1, 5);
  r.becomeProbe();
  t.equal(r.state, "probe");
  t.equal(r.next, 2);

  const s = progress("snapshot", 1, 5, 10);
  s.becomeProbe();
  t.equal(s.state, "probe");
  t.equal(s.next, 11, "the follower is assumed to hold the snapshot it was sent");
  t.equal(s.pendingSnapshot, 0);

  const failed = progress("snapshot", 1, 5, 0);
  failed.becomeProbe();
  t.equal(failed.next, 2, "a failed snapshot (pending 0) probes from match");
});

t.test("Progress.becomeReplicate: next = match + 1, inflights emptied", async (t) => {
  const pr = progress("probe", 1, 5);
  pr.becomeReplicate();
  t.equal(pr.state, "replicate");
  t.equal(pr.next, 2);
  t.equal(pr.inflights.count(), 0);
});

t.test("Progress.becomeSnapshot: paused with the snapshot index pending", async (t) => {
  const pr = progress("replicate", 1, 5);
  pr.inflights.add(4, 10);
  pr.becomeSnapshot(10);
  t.equal(pr.state, "snapshot");
  t.equal(pr.pendingSnapshot, 10);
  t.equal(pr.match, 1);
  t.equal(pr.inflights.count(), 0, "what was in flight is forgotten");
  t.ok(pr.isPaused());
});

t.test("Progress: probe → replicate → snapshot → probe → replicate", async (t) => {
  const pr = new Progress(11, false, 2, 0);
  pr.sentEntries(10, 0, 0);
  t.ok(pr.probeSent, "in probe one append is outstanding at a time");
  t.ok(pr.isPaused());
  t.ok(pr.maybeDecrTo(10, 4), "the follower rejected 10, hinting it matches at 4");
  t.equal(pr.next, 5);
  t.notOk(pr.isPaused(), "a rejection answers the probe");
  t.ok(pr.maybeUpdate(7), "the next probe was accepted up to 7");
  t.equal(pr.match, 7);
  pr.becomeReplicate();
  t.equal(pr.next, 8);
  pr.sentEntries(9, 48, 2);
  t.equal(pr.next, 10, "replicate runs ahead of match");
  t.equal(pr.inflights.count(), 1);
  pr.becomeSnapshot(20);
  pr.maybeUpdate(20);
  t.equal(pr.match, 20, "the snapshot was acknowledged");
  pr.becomeProbe();
  t.equal(pr.state, "probe");
  t.equal(pr.next, 21);
  pr.becomeReplicate();
  t.equal(pr.state, "replicate");
  t.equal(pr.next, 21);
});

t.test("Progress.maybeUpdate: only a higher match counts (etcd TestProgressUpdate)", async (t) => {
  const cases: { update: number; want: boolean; match: number; next: number }[] = [
    { update: 2, want: false, match: 3, next: 5 }, // stale
    { update: 3, want: false, match: 3, next: 5 }, // duplicate
    { update: 4, want: true, match: 4, next: 5 }, // next stays ahead
    { update: 5, want: true, match: 5, next: 6 }, // next follows
    { update: 6, want: true, match: 6, next: 7 },
  ];
  for (const c of cases) {
    const pr = progress("probe", 3, 5);
    t.equal(pr.maybeUpdate(c.update), c.want, `update(${c.update})`);
    t.equal(pr.match, c.match, `update(${c.update}): match`);
    t.equal(pr.next, c.next, `update(${c.update}): next`);
  }
});

t.test("Progress.maybeUpdate resumes a paused probe", async (t) => {
  const pr = progress("probe", 0, 2);
  pr.sentEntries(1, 0, 0);
  t.ok(pr.isPaused());
  pr.maybeUpdate(2);
  t.notOk(pr.probeSent);
  t.notOk(pr.isPaused());
});

t.test("Progress.maybeDecrTo: stale rejections are ignored (etcd TestProgressMaybeDecr)", async (t) => {
  const cases: {
    state: "probe" | "replicate";
    match: number;
    next: number;
    rejected: number;
    hint: number;
    want: boolean;
    wantNext: number;
  }[] = [
    // Replicate: a rejection at or below match is stale.
    { state: "replicate", match: 5, next: 10, rejected: 5, hint: 5, want: false, wantNext: 10 },
    { state: "replicate", match: 5, next: 10, rejected: 4, hint: 4, want: false, wantNext: 10 },
    // Otherwise fall back to match + 1 (the caller then switches to probe).
    { state: "replicate", match: 5, next: 10, rejected: 9, hint: 9, want: true, wantNext: 6 },
    // Probe: only a rejection of the probe in flight (next - 1) counts.
    { state: "probe", match: 0, next: 0, rejected: 0, hint: 0, want: false, wantNext: 0 },
    { state: "probe", match: 0, next: 10, rejected: 5, hint: 5, want: false, wantNext: 10 },
    { state: "probe", match: 0, next: 10, rejected: 9, hint: 9, want: true, wantNext: 9 },
    { state: "probe", match: 0, next: 2, rejected: 1, hint: 1, want: true, wantNext: 1 },
    { state: "probe", match: 0, next: 1, rejected: 0, hint: 0, want: true, wantNext: 1 },
    // The hint moves next further back than one entry...
    { state: "probe", match: 0, next: 10, rejected: 9, hint: 2, want: true, wantNext: 3 },
    { state: "probe", match: 0, next: 10, rejected: 9, hint: 0, want: true, wantNext: 1 },
    // ...but never to or below what the follower is known to hold.
    { state: "probe", match: 5, next: 10, rejected: 9, hint: 2, want: true, wantNext: 6 },
    // A hint past the rejected index cannot move next forward.
    { state: "probe", match: 0, next: 10, rejected: 9, hint: 20, want: true, wantNext: 9 },
  ];
  for (const c of cases) {
    const pr = progress(c.state, c.match, c.next);
    const name = `${c.state} match ${c.match} next ${c.next}: reject ${c.rejected} hint ${c.hint}`;
    t.equal(pr.maybeDecrTo(c.rejected, c.hint), c.want, name);
    t.equal(pr.next, c.wantNext, `${name}: next`);
  }
});

t.test("Progress.maybeDecrTo in probe clears probeSent so that the next probe can go", async (t) => {
  const pr = progress("probe", 0, 10);
  pr.sentEntries(9, 0, 0);
  t.ok(pr.isPaused());
  t.notOk(pr.maybeDecrTo(5, 5), "stale: leaves the probe outstanding");
  t.ok(pr.isPaused());
  t.ok(pr.maybeDecrTo(9, 3));
  t.notOk(pr.isPaused());
});

t.test("Progress.isPaused per state (etcd TestProgressIsPaused)", async (t) => {
  const probe = progress("probe", 0, 1);
  t.notOk(probe.isPaused(), "probe, nothing sent");
  probe.sentEntries(0, 0, 0);
  t.ok(probe.isPaused(), "probe, one append outstanding");

  const rep = new Progress(1, false, 2, 0);
  rep.becomeReplicate();
  t.notOk(rep.isPaused());
  rep.sentEntries(1, 24, 1);
  t.equal(rep.next, 2);
  t.notOk(rep.isPaused(), "1 of 2 in flight");
  rep.sentEntries(2, 24, 1);
  t.ok(rep.isPaused(), "window full");
  rep.sentEntries(2, 0, 0);
  t.equal(rep.inflights.count(), 2, "an empty append takes no slot");
  rep.maybeUpdate(1);
  rep.inflights.freeLE(1);
  t.notOk(rep.isPaused(), "an acknowledgement frees a slot");

  const snapshot = progress("snapshot", 0, 1, 5);
  t.ok(snapshot.isPaused(), "snapshot: always paused");
});

/** A tracker with `voters` (and `learners`) at the given matches. */
function tracker(matches: Record<string, number>, learners: Record<string, number> = {}): ProgressTracker {
  const tr = new ProgressTracker(256, 0);
  for (const [id, m] of Object.entries(matches)) {
    tr.voters.add(id);
    const pr = new Progress(m + 1, false, 256, 0);
    pr.match = m;
    tr.progress.set(id, pr);
  }
  for (const [id, m] of Object.entries(learners)) {
    tr.learners.add(id);
    const pr = new Progress(m + 1, true, 256, 0);
    pr.match = m;
    tr.progress.set(id, pr);
  }
  return tr;
}

t.test("ProgressTracker.committed: the largest index a majority of voters holds", async (t) => {
  t.equal(tracker({ a: 5 }).committed(), 5, "1 voter: its own match");
  t.equal(tracker({ a: 0 }).committed(), 0);

  t.equal(tracker({ a: 5, b: 4, c: 3 }).committed(), 4, "3 voters: the 2nd highest");
  t.equal(tracker({ a: 2, b: 1, c: 1 }).committed(), 1);
  t.equal(tracker({ a: 2, b: 2, c: 1 }).committed(), 2);
  t.equal(tracker({ a: 0, b: 0, c: 9 }).committed(), 0);

  t.equal(tracker({ a: 5, b: 4, c: 3, d: 2 }).committed(), 3, "4 voters: a quorum is 3");
  t.equal(tracker({ a: 5, b: 5, c: 1, d: 1 }).committed(), 1, "half of 4 is not a majority");
  t.equal(tracker({ a: 5, b: 5, c: 5, d: 1 }).committed(), 5);

  t.equal(tracker({ a: 5, b: 4, c: 3, d: 2, e: 1 }).committed(), 3, "5 voters: the 3rd highest");
  t.equal(tracker({ a: 1, b: 9, c: 1, d: 9, e: 2 }).committed(), 2, "order of members does not matter");
  t.equal(tracker({ a: 9, b: 9, c: 0, d: 0, e: 0 }).committed(), 0);
});

t.test("ProgressTracker.committed: learners never count; voters without progress count as 0", async (t) => {
  t.equal(tracker({ a: 1, b: 1, c: 1 }, { l1: 100, l2: 100 }).committed(), 1);
  t.equal(tracker({ a: 1 }, { l1: 100 }).committed(), 1);

  const tr = tracker({ a: 5, b: 5 });
  tr.voters.add("c"); // a voter the leader has no progress for yet
  t.equal(tr.committed(), 5, "2 of 3 hold 5");
  tr.voters.add("d");
  t.equal(tr.committed(), 0, "2 of 4 is not a quorum");

  t.equal(new ProgressTracker(256, 0).committed(), 0, "no voters: nothing is committed");
});

t.test("ProgressTracker.quorum: a strict majority of voters", async (t) => {
  const sizes: [number, number][] = [
    [1, 1],
    [2, 2],
    [3, 2],
    [4, 3],
    [5, 3],
    [6, 4],
    [7, 4],
  ];
  for (const [n, q] of sizes) {
    const m: Record<string, number> = {};
    for (let i = 0; i < n; i++) m[`n${i}`] = 0;
    t.equal(tracker(m, { l: 0 }).quorum(), q, `${n} voters (and a learner)`);
  }
});

t.test("ProgressTracker.tallyVotes: won, lost or pending; learners never counted", async (t) => {
  const tr = tracker({ a: 0, b: 0, c: 0 }, { l1: 0, l2: 0 });
  t.same(tr.tallyVotes(), { granted: 0, rejected: 0, result: "pending" });
  tr.recordVote("a", true);
  t.same(tr.tallyVotes(), { granted: 1, rejected: 0, result: "pending" });
  tr.recordVote("l1", true);
  tr.recordVote("l2", true);
  t.same(tr.tallyVotes(), { granted: 1, rejected: 0, result: "pending" }, "learners' grants are not counted");
  tr.recordVote("b", false);
  t.same(tr.tallyVotes(), { granted: 1, rejected: 1, result: "pending" });
  tr.recordVote("b", true);
  t.same(tr.tallyVotes(), { granted: 1, rejected: 1, result: "pending" }, "only the first answer of a voter counts");
  tr.recordVote("c", true);
  t.same(tr.tallyVotes(), { granted: 2, rejected: 1, result: "won" });

  const lost = tracker({ a: 0, b: 0, c: 0 });
  lost.recordVote("a", true);
  lost.recordVote("b", false);
  lost.recordVote("c", false);
  t.same(lost.tallyVotes(), { granted: 1, rejected: 2, result: "lost" });

  const strangers = tracker({ a: 0 });
  strangers.recordVote("zz", true);
  t.equal(strangers.tallyVotes().result, "pending", "votes of non-members are not counted");
  strangers.recordVote("a", true);
  t.equal(strangers.tallyVotes().result, "won");

  tr.resetVotes();
  t.same(tr.tallyVotes(), { granted: 0, rejected: 0, result: "pending" });
});

t.test("ProgressTracker.tallyVotes with 4 and 5 voters", async (t) => {
  const four = tracker({ a: 0, b: 0, c: 0, d: 0 });
  four.recordVote("a", true);
  four.recordVote("b", true);
  t.equal(four.tallyVotes().result, "pending", "2 of 4 is not a quorum");
  four.recordVote("c", false);
  four.recordVote("d", false);
  t.equal(four.tallyVotes().result, "lost", "2 rejections of 4 leave no quorum possible");

  const five = tracker({ a: 0, b: 0, c: 0, d: 0, e: 0 });
  five.recordVote("a", true);
  five.recordVote("b", true);
  five.recordVote("c", false);
  five.recordVote("d", false);
  t.equal(five.tallyVotes().result, "pending", "e decides");
  five.recordVote("e", true);
  t.same(five.tallyVotes(), { granted: 3, rejected: 2, result: "won" });

  const fiveLost = tracker({ a: 0, b: 0, c: 0, d: 0, e: 0 });
  for (const id of ["a", "b", "c"]) fiveLost.recordVote(id, false);
  t.equal(fiveLost.tallyVotes().result, "lost");
});

t.test("ProgressTracker.quorumActive: self plus recently active voters", async (t) => {
  const tr = tracker({ a: 0, b: 0, c: 0 }, { l: 0 });
  for (const pr of tr.progress.values()) pr.recentActive = false;
  t.notOk(tr.quorumActive("a"), "only self");
  tr.progress.get("l")!.recentActive = true;
  t.notOk(tr.quorumActive("a"), "a learner does not make a quorum");
  tr.progress.get("c")!.recentActive = true;
  t.ok(tr.quorumActive("a"));
});

t.test("ProgressTracker.confState lists voters and learners sorted", async (t) => {
  const tr = tracker({ c: 0, a: 0, b: 0 }, { z: 0, y: 0 });
  t.same(tr.confState(), { voters: ["a", "b", "c"], learners: ["y", "z"] });
  t.ok(tr.isVoter("a"));
  t.notOk(tr.isVoter("y"));
  t.ok(tr.isMember("y"));
  t.notOk(tr.isMember("q"));
});
