// Errors a person can act on: an empty data dir without --bootstrap, and a
// data dir of another cluster offered to join this one.

import { existsSync } from "node:fs";
import t from "tap";
import { TestCluster, status, until } from "./helpers/agents.js";

const cluster = new TestCluster();
t.teardown(() => cluster.stop());

const exitOf = (p: { child: { once(e: "exit", f: (c: number | null) => void): void } }): Promise<number | null> =>
  new Promise((r) => p.child.once("exit", r));

t.test("start on an empty data dir without --bootstrap", async (t) => {
  const p = cluster.start("empty", "restart");
  t.equal(await exitOf(p), 2);
  t.match(p.log, /holds no cluster: pass --bootstrap to found one, or use join/);
});

t.test("a data dir of another cluster cannot join", async (t) => {
  const [x] = await cluster.form(["x"], 1);
  const [y] = await cluster.form(["y"], 1);
  const xs = await status(x!);
  const yExit = exitOf(y!);
  y!.child.kill("SIGTERM");
  t.equal(await yExit, 0, "y stops cleanly");
  const again = cluster.start("y", { join: cluster.peerAddr(x!, xs.id) });
  t.equal(await exitOf(again), 7, "exit code of a wrong cluster");
  t.match(again.log, /belongs to cluster .* this is cluster/);
  t.equal((await status(x!)).members.length, 1, "x admitted nobody");

  // The same data dir joining its own cluster again is harmless.
  const z = cluster.start("z", { join: cluster.peerAddr(x!, xs.id) });
  await until("z joined", async () => ((await status(x!)).members.length === 2 ? true : undefined));
  const zExit = exitOf(z);
  z.child.kill("SIGTERM");
  await zExit;
  const z2 = cluster.start("z", { join: cluster.peerAddr(x!, xs.id) });
  await until("z back", async () => (existsSync(z2.api) ? ((await status(z2)).appliedIndex > 0 ? true : undefined) : undefined));
  t.equal((await status(x!)).members.length, 2, "still two members");
});
