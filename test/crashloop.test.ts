// SIGKILL an agent at random moments under proposal load, again and again
// (CRASH_LOOPS, default 50); after each restart every agent converges to the
// same applied state, holding every acknowledged write.

import t from "tap";
import { Prng } from "./sim/prng.js";
import { type Proc, TestCluster, api, status, until } from "./helpers/agents.js";

const LOOPS = Number(process.env.CRASH_LOOPS ?? 50);
const SEED = Number(process.env.CRASH_SEED ?? Date.now() % 100_000);
const cluster = new TestCluster(["--snapshot-every", "64"]);
t.teardown(() => cluster.stop());

t.test(`${LOOPS} kill -9 and restart rounds under load (seed ${SEED})`, async (t) => {
  const rng = new Prng(SEED);
  const procs: Proc[] = await cluster.form(["a", "b", "c"], 3);
  const acked = new Map<string, string>();
  let seq = 0;

  for (let round = 0; round < LOOPS; round++) {
    // Load: writes through random live agents until the crash lands.
    let loading = true;
    const load = (async () => {
      while (loading) {
        const p = rng.pick(procs);
        const key = `k${seq++}`;
        const value = `r${round}-${seq}`;
        const r = await api(p, "POST", `/kv?timeoutMs=2000`, { key, value }).catch(() => undefined);
        if (r?.status === 200) acked.set(key, value);
      }
    })();
    await new Promise((r) => setTimeout(r, rng.int(20, 400)));
    const victim = rng.pick(procs);
    victim.child.kill("SIGKILL");
    await new Promise((r) => victim.child.once("exit", r));
    await new Promise((r) => setTimeout(r, rng.int(0, 200)));
    loading = false;
    await load;
    const restarted = cluster.restart(victim);
    procs[procs.indexOf(victim)] = restarted;

    // Convergence: same applied index and the same register everywhere.
    const states = await until(
      `round ${round}: convergence`,
      async () => {
        const all = await Promise.all(procs.map((p) => api(p, "GET", "/kv/all").then((r) => r.body)));
        const s = await status(procs[0]!);
        const same = all.every((x) => x.applied === all[0].applied && JSON.stringify(x.kv) === JSON.stringify(all[0].kv));
        return same && s.leader !== "" && all[0].applied >= s.commitIndex ? all : undefined;
      },
      60_000,
    );
    // Every key is written once: an acknowledged write must be there, exactly.
    const kv = states[0].kv as Record<string, string>;
    const lost = [...acked].filter(([k, v]) => kv[k] !== v);
    if (lost.length > 0) t.fail(`round ${round}: lost ${lost.length} acknowledged writes`, { lost: lost.slice(0, 5) });
  }
  t.pass(`${LOOPS} rounds, ${seq} writes attempted, ${acked.size} keys acknowledged, none lost`);
  const final = await Promise.all(procs.map((p) => status(p)));
  t.equal(new Set(final.map((s) => s.leader)).size, 1, "one leader seen by all");
});
