// A short run of the chaos suite (`make chaos` runs long ones), and proof
// that each of its checks fails when the damage it looks for is planted.

import t from "tap";
import { PLANTS, overlapping, runChaos } from "./chaos/run.js";

const SEED = Number(process.env.CHAOS_SEED ?? 7);

t.test(`two rounds of faults on four hosts (seed ${SEED}) lose nothing`, { timeout: 900_000 }, async (t) => {
  const s = await runChaos({ rounds: 2, seed: SEED, hosts: 4, log: (l) => t.comment(l) });
  // Safety is asserted here; registry bytes under faults (an efficiency
  // bound that a fault's timing can stretch) are tracked by `make chaos`.
  t.same(s.failures.filter((f) => !/bytes served/.test(f)), [], "no safety check failed");
  if (s.duplicateDownloads > 0) t.comment(`registry bytes above the bound for ${s.duplicateDownloads} blobs`);
  t.equal(s.pullsFailedWrongly, 0);
  t.equal(s.corruptLayers, 0);
  t.equal(s.leakedTempDirs, 0);
  t.equal(s.refMismatches, 0);
  t.equal(s.divergedAgents, 0);
  t.equal(s.agentCrashes, 0);
  t.equal(s.linearizability, "ok");
  t.ok(s.pulls >= 8 && s.pullsCompleted > 0, `${s.pullsCompleted} of ${s.pulls} pulls completed during the faults`);
});

t.test("the two-masters check: live masters at once are caught, a killed one is not counted", async (t) => {
  const a = { client: "10.0.0.11", status: 200, sent: 700_000, start: 1000, end: 5000 };
  const b = { client: "10.0.0.12", range: "bytes=100000-", status: 206, sent: 900_000, start: 3500, end: 7000 };
  const after = { ...b, start: 5000 };
  t.same(overlapping([a, b], new Map()), [a, b], "both alive while both responses were open");
  t.equal(overlapping([a, after], new Map()), undefined, "one after the other");
  t.equal(overlapping([a, b], new Map([["10.0.0.11", [1200]]])), undefined, "the first master was killed before the second started");
  t.same(overlapping([a, b], new Map([["10.0.0.11", [4000]]])), [a, b], "killed only after the second started");
  t.same(overlapping([a, b], new Map([["10.0.0.11", [500]]])), [a, b], "killed before its request: a restarted agent");
  t.same(overlapping([a, { ...b, end: undefined }], new Map()), [a, { ...b, end: undefined }], "a response still open");
});

t.test("every check catches its planted damage", { timeout: 600_000 }, async (t) => {
  const s = await runChaos({ rounds: 1, seed: SEED, hosts: 3, plants: PLANTS, log: (l) => t.comment(l) });
  t.ok(s.corruptLayers > 0, "a flipped file in a present layer");
  t.ok(s.leakedTempDirs > 0, "a temp dir left behind");
  t.equal(s.linearizability, "violated", "a stale read");
  t.ok(s.refMismatches > 0, "an image released behind the suite's back");
  t.ok(s.divergedAgents > 0, "an agent whose state differs");
});
