// npm run sim -- [--seed S | --seeds N [--first S]] [--steps N] [--bug NAME] [--list-bugs] [--trace]
//
// Runs the deterministic simulation for each seed, checks the invariants as
// it goes and the client history for linearizability at the end. Prints one
// line per failing seed (with the command that replays it) and, as the last
// line, a JSON summary. Exits non-zero if any seed failed.

import { parseArgs } from "node:util";
import { BUGS, type Bug, isBug } from "../../raft/index.js";
import { runSeed, type SeedOutcome } from "./run.js";

const { values } = parseArgs({
  options: {
    seed: { type: "string" },
    seeds: { type: "string", default: "20" },
    first: { type: "string", default: "1" },
    steps: { type: "string", default: "3000" },
    bug: { type: "string", multiple: true, default: [] },
    "list-bugs": { type: "boolean", default: false },
    trace: { type: "boolean", default: false },
    narrate: { type: "boolean", default: false },
    "stop-on-failure": { type: "boolean", default: false },
  },
  strict: true,
});

if (values["list-bugs"]) {
  for (const name of Object.keys(BUGS)) console.log(name);
  process.exit(0);
}

const bugs = new Set<Bug>();
for (const b of values.bug) {
  if (!isBug(b)) {
    console.error(`unknown bug ${JSON.stringify(b)}; --list-bugs lists them`);
    process.exit(2);
  }
  bugs.add(b);
}

const steps = Number(values.steps);
const seeds: number[] = [];
if (values.seed !== undefined) seeds.push(Number(values.seed));
else for (let i = 0; i < Number(values.seeds); i++) seeds.push(Number(values.first) + i);
if (!Number.isInteger(steps) || steps <= 0 || seeds.some((s) => !Number.isInteger(s))) {
  console.error("--steps, --seed, --seeds and --first take integers");
  process.exit(2);
}

const total = {
  seeds: 0,
  steps: 0,
  violations: 0,
  linearizability: "ok" as "ok" | "violated" | "unknown",
  ops: 0,
  leaderChanges: 0,
  crashes: 0,
  membershipChanges: 0,
  partitions: 0,
  transfers: 0,
  snapshotsSent: 0,
  failedSeeds: [] as number[],
  unknownSeeds: [] as number[],
  msPerSeed: 0,
  bugs: [...bugs],
};

const started = performance.now();
for (const seed of seeds) {
  const out: SeedOutcome = runSeed({
    seed,
    steps,
    bugs,
    ...(values.trace ? { trace: (l: string) => console.log(l) } : {}),
    // The story without the client traffic.
    ...(values.narrate && !values.trace ? { trace: (l: string) => / client \d/.test(l) || console.log(l) } : {}),
  });
  total.seeds++;
  total.steps += out.stats.steps;
  total.violations += out.violations.length;
  total.ops += out.opsChecked;
  total.leaderChanges += out.stats.leaderChanges;
  total.crashes += out.stats.crashes;
  total.membershipChanges += out.stats.membershipChanges;
  total.partitions += out.stats.partitions;
  total.transfers += out.stats.transfers;
  total.snapshotsSent += out.stats.snapshotsSent;
  if (out.linearizability === "violated") total.linearizability = "violated";
  else if (out.linearizability === "unknown") {
    total.unknownSeeds.push(seed);
    if (total.linearizability === "ok") total.linearizability = "unknown";
  }
  const failed = out.violations.length > 0 || out.linearizability === "violated";
  if (failed) {
    total.failedSeeds.push(seed);
    const bugArgs = [...bugs].map((b) => ` --bug ${b}`).join("");
    console.log(`seed ${seed} FAILED (replay: npm run sim -- --seed ${seed} --steps ${steps}${bugArgs} --trace)`);
    for (const v of out.violations.slice(0, 5)) console.log(`  ${v}`);
    if (out.linearizability === "violated") console.log(`  linearizability violated: ${out.counterexample ?? ""}`);
    if (values["stop-on-failure"]) break;
  }
}
total.msPerSeed = Math.round((performance.now() - started) / Math.max(1, total.seeds));
if (values.narrate) {
  console.log(
    `\n${total.seeds} simulated cluster(s), ${total.steps} steps of 10 ms virtual time: ` +
      `${total.leaderChanges} elections won, ${total.crashes} crashes, ${total.partitions} partitions, ` +
      `${total.membershipChanges} membership changes, ${total.transfers} leadership transfers, ` +
      `${total.snapshotsSent} snapshots sent; ${total.ops} client operations, ` +
      `linearizability ${total.linearizability}, ${total.violations} invariant violations.`,
  );
}
console.log(JSON.stringify(total));
process.exit(total.violations > 0 || total.linearizability === "violated" ? 1 : 0);
