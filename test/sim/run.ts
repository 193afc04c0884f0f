import { Simulation, type SimOptions, type SimStats } from "./cluster.js";
import { kvModel } from "./kvmodel.js";
import { checkLinearizability } from "./linearizability.js";

export interface SeedOutcome {
  readonly seed: number;
  readonly violations: readonly string[];
  readonly linearizability: "ok" | "violated" | "unknown";
  readonly counterexample?: string;
  readonly opsChecked: number;
  readonly stats: SimStats;
}

/** Budget for one seed's linearizability check; past it the verdict is "unknown". */
const CHECK_BUDGET_MS = 10_000;

/** Runs one seed: the simulation with its invariant checks, then the linearizability check. */
export function runSeed(opts: SimOptions): SeedOutcome {
  const res = new Simulation(opts).run();
  const check = checkLinearizability(kvModel, res.history, { timeoutMs: CHECK_BUDGET_MS });
  const cx = check.counterexample;
  return {
    seed: res.seed,
    violations: res.violations,
    linearizability: check.result,
    ...(cx
      ? {
          counterexample:
            `key ${JSON.stringify(cx.notLinearized[0]?.input.key)}: after ${cx.longestLinearizedPrefix.length} ops ` +
            `(state ${JSON.stringify([...cx.stateAfterPrefix.values])}), none of ` +
            JSON.stringify(cx.notLinearized.slice(0, 3).map((o) => ({ ...o, return: Number.isFinite(o.return) ? o.return : "never" }))),
        }
      : {}),
    opsChecked: res.history.length,
    stats: res.stats,
  };
}
