// The simulation as a test: a clean core passes every seed, every injected
// bug is caught, and a seed replays exactly.

import { spawnSync } from "node:child_process";
import t from "tap";
import { BUGS, type Bug } from "../raft/index.js";
import { runSeed } from "./sim/run.js";

const STEPS = 3000;

t.test("a correct core passes seeds with faults of every kind", async (t) => {
  let ops = 0;
  let leaderChanges = 0;
  let crashes = 0;
  let membershipChanges = 0;
  let partitions = 0;
  let snapshots = 0;
  for (let seed = 1; seed <= 30; seed++) {
    const out = runSeed({ seed, steps: STEPS });
    t.same(out.violations, [], `seed ${seed}: no invariant violated`);
    t.equal(out.linearizability, "ok", `seed ${seed}: history linearizable`);
    ops += out.opsChecked;
    leaderChanges += out.stats.leaderChanges;
    crashes += out.stats.crashes;
    membershipChanges += out.stats.membershipChanges;
    partitions += out.stats.partitions;
    snapshots += out.stats.snapshotsSent;
  }
  // The faults really happened: a run without them would prove little.
  t.ok(ops > 1000, `client operations checked (${ops})`);
  t.ok(leaderChanges > 30, `leader changes (${leaderChanges})`);
  t.ok(crashes > 30, `crashes (${crashes})`);
  t.ok(membershipChanges > 30, `membership changes (${membershipChanges})`);
  t.ok(partitions > 10, `partitions (${partitions})`);
  t.ok(snapshots > 10, `snapshots sent (${snapshots})`);
});

t.test("a seed replays exactly", async (t) => {
  const a = runSeed({ seed: 7, steps: 1000 });
  const b = runSeed({ seed: 7, steps: 1000 });
  t.same(a.stats, b.stats);
  t.equal(a.opsChecked, b.opsChecked);
  const c = runSeed({ seed: 8, steps: 1000 });
  t.not(JSON.stringify(a.stats), JSON.stringify(c.stats), "another seed runs differently");
});

t.test("every injected bug is caught within 200 seeds", async (t) => {
  for (const bug of Object.keys(BUGS) as Bug[]) {
    let caughtAt: number | undefined;
    for (let seed = 1; seed <= 200 && caughtAt === undefined; seed++) {
      const out = runSeed({ seed, steps: STEPS, bugs: new Set([bug]) });
      if (out.violations.length > 0 || out.linearizability === "violated") caughtAt = seed;
    }
    t.ok(caughtAt !== undefined, `${bug} caught${caughtAt !== undefined ? ` at seed ${caughtAt}` : ""}`);
  }
});

t.test("the command line: JSON summary last, bug list, replay hint", async (t) => {
  const run = (args: string[]) =>
    spawnSync(process.execPath, ["--import", "tsx", "test/sim/main.ts", ...args], { encoding: "utf8" });
  const ok = run(["--seeds", "3", "--steps", "500"]);
  t.equal(ok.status, 0, ok.stderr);
  const summary = JSON.parse(ok.stdout.trim().split("\n").at(-1)!) as Record<string, unknown>;
  t.equal(summary.seeds, 3);
  t.equal(summary.steps, 1500);
  t.equal(summary.violations, 0);
  t.equal(summary.linearizability, "ok");
  for (const k of ["ops", "leaderChanges", "crashes", "membershipChanges"]) t.type(summary[k], "number", k);

  const list = run(["--list-bugs"]);
  t.same(list.stdout.trim().split("\n"), Object.keys(BUGS));

  const bad = run(["--seed", "1", "--bug", "vote-without-log-check"]);
  t.equal(bad.status, 1, "a caught bug fails the run");
  t.match(bad.stdout, /seed 1 FAILED \(replay: npm run sim -- --seed 1 --steps 3000 --bug vote-without-log-check/);
  const last = JSON.parse(bad.stdout.trim().split("\n").at(-1)!) as { violations: number };
  t.ok(last.violations > 0);

  t.equal(run(["--bug", "no-such-bug"]).status, 2);
});
