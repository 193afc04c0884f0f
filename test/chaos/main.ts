// make chaos [ROUNDS=N] [SEED=S] [HOSTS=H]: the chaos suite (see run.ts).
// Prints each round, a table per fault kind, the failures with the seed to
// replay them, and as its last line a JSON summary; exits 0 iff nothing
// failed.

import { parseArgs } from "node:util";
import { FAULT_KINDS, PLANTS, type Plant, runChaos } from "./run.js";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "10" },
    seed: { type: "string", default: String(Date.now() % 100_000) },
    hosts: { type: "string", default: "5" },
    plant: { type: "string", multiple: true, default: [] },
  },
});
const rounds = Number(values.rounds);
const seed = Number(values.seed);
const hosts = Number(values.hosts);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error("--rounds takes a positive integer");
if (!Number.isInteger(seed)) throw new Error("--seed takes an integer");
if (!Number.isInteger(hosts) || hosts < 3 || hosts > 20) throw new Error("--hosts takes 3 to 20");
for (const p of values.plant) if (!PLANTS.includes(p as Plant)) throw new Error(`--plant takes one of ${PLANTS.join(", ")}`);

// Ctrl-C (or SIGTERM) ends the run after the round in progress, and the
// hosts are taken down; later signals are ignored meanwhile.
const stop = new AbortController();
const onSignal = (): void => {
  if (!stop.signal.aborted) process.stdout.write("stopping after this round\n");
  stop.abort();
};
process.on("SIGINT", onSignal);
process.on("SIGTERM", onSignal);

const started = Date.now();
const s = await runChaos({ rounds, seed, hosts, plants: values.plant as Plant[], signal: stop.signal, log: (l) => process.stdout.write(`${l}\n`) });
const w = (x: string | number, n: number) => String(x).padEnd(n);
process.stdout.write(`\n${w("FAULT", 12)}${w("ROUNDS", 8)}SURVIVED\n`);
for (const k of FAULT_KINDS) process.stdout.write(`${w(k, 12)}${w(s.faults[k].injected, 8)}${s.faults[k].survived}\n`);
if (s.failures.length > 0) {
  process.stdout.write(`\n${s.failures.length} failures (replay: make chaos ROUNDS=${rounds} SEED=${seed} HOSTS=${hosts}):\n`);
  for (const f of s.failures) process.stdout.write(`  ${f}\n`);
}
process.stdout.write(`\n${s.rounds} rounds in ${((Date.now() - started) / 1000).toFixed(0)} s\n`);
const { faults: _f, failures: _x, ...json } = s;
process.stdout.write(`${JSON.stringify(json)}\n`);
const bad = s.pullsFailedWrongly + s.corruptLayers + s.duplicateDownloads + s.leakedTempDirs + s.refMismatches + s.divergedAgents + s.agentCrashes;
process.exit(bad === 0 && s.linearizability === "ok" ? 0 : 1);
