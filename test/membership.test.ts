// Five real agents with three voters: learners never vote, a dead voter is
// replaced by a live learner, an agent leaves cleanly (and, asked without a
// quorum, once the quorum is back), and the Prometheus endpoint reports Raft
// metrics.

import { request } from "node:http";
import t from "tap";
import { type Proc, TestCluster, api, status, until, whoLeads } from "./helpers/agents.js";
import { freePort } from "./helpers/registry.js";

const DEAD_VOTER_MS = 1500;
const cluster = new TestCluster(["--dead-voter-ms", String(DEAD_VOTER_MS)]);
t.teardown(() => cluster.stop());

function httpGet(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    request(url, (res) => {
      let s = "";
      res.on("data", (c: Buffer) => (s += c.toString()));
      res.on("end", () => resolve(s));
    })
      .on("error", reject)
      .end();
  });
}

t.test("five agents, three voters", async (t) => {
  const all = await cluster.form(["a", "b", "c", "d", "e"], 3);
  const s = await status(all[0]!);
  const roles = s.members.map((m: any) => m.role).sort();
  t.same(roles, ["learner", "learner", "voter", "voter", "voter"], "three voters and two learners");
  for (let i = 0; i < 20; i++) t.equal((await api(all[i % 5]!, "POST", "/kv", { key: `k${i}`, value: `${i}` })).status, 200);

  const leader = await whoLeads(all, s.leader);
  const learners = new Set(s.members.filter((m: any) => m.role === "learner").map((m: any) => m.id));
  const learnerProcs: Proc[] = [];
  for (const p of all) if (learners.has((await status(p)).id)) learnerProcs.push(p);
  t.equal(learnerProcs.length, 2);

  leader.child.kill("SIGKILL");
  const rest = all.filter((p) => p !== leader);
  const voterProc = rest.find((p) => !learnerProcs.includes(p))!;
  await until("a new leader", async () => {
    const st = await status(voterProc);
    return st.leader !== "" && st.leader !== s.leader ? st : undefined;
  });
  // Candidates ask voters only: a learner never casts a vote.
  for (const p of learnerProcs) {
    const st = await status(p);
    if (learners.has(st.id) && st.members.find((m: any) => m.id === st.id)?.role === "learner") {
      t.equal(st.vote, "", `learner ${p.name} has voted for nobody in term ${st.term}`);
    }
  }

  // The dead voter is removed and a live learner promoted in its place.
  const replaced = await until(
    "the dead voter replaced",
    async () => {
      const st = await status(voterProc);
      const voters = st.members.filter((m: any) => m.role === "voter");
      return voters.length === 3 && !st.members.some((m: any) => m.id === s.leader) ? st : undefined;
    },
    30_000,
  );
  t.ok(replaced.members.filter((m: any) => m.role === "voter").every((m: any) => m.alive), "three live voters again");
  t.equal(replaced.members.length, 4, "the dead agent is no longer a member");

  // The removed agent comes back: nobody sends it anything any more, so after
  // a while without a leader it asks to be admitted again, and is.
  const back = cluster.restart(leader);
  all[all.indexOf(leader)] = back;
  const readmitted = await until(
    "the removed agent admitted again",
    async () => {
      const st = await status(back);
      return st.leader !== "" && st.members.some((m: any) => m.id === s.leader) ? st : undefined;
    },
    60_000,
  );
  t.equal(readmitted.members.length, 5, "a member again, with its own identity");

  await t.test("an agent leaves cleanly", async (t) => {
    const st = await status(voterProc);
    const before = st.members.length;
    const learner = st.members.find((m: any) => m.role === "learner" && m.id !== s.leader);
    t.ok(learner, "a learner is left");
    const proc = await whoLeads(rest, learner.id);
    const exited = new Promise<number | null>((r) => proc.child.once("exit", r));
    t.equal((await api(proc, "POST", "/leave")).status, 200);
    t.equal(await exited, 0, "the agent stops after leaving");
    const after = await until("the member gone", async () => {
      const x = await status(voterProc);
      return x.members.length === before - 1 ? x : undefined;
    });
    t.notOk(after.members.some((m: any) => m.id === learner.id));
    t.equal((await api(voterProc, "POST", "/kv", { key: "after-leave", value: "1" })).status, 200, "the cluster still commits");
  });
});

t.test("a leave asked without a quorum goes on, and the agent stops once it is out", async (t) => {
  const c = new TestCluster();
  t.teardown(() => c.stop());
  const [a, b, d] = await c.form(["la", "lb", "lc"], 3);
  const id = (await status(a!)).id;
  b!.child.kill("SIGKILL");
  d!.child.kill("SIGKILL");
  const exited = new Promise<number | null>((r) => a!.child.once("exit", r));
  const asked = await api(a!, "POST", "/leave?timeoutMs=1500");
  t.equal(asked.body.error?.code, "TIMEOUT", "not done in time: no quorum");
  t.equal(a!.child.exitCode, null, "the agent still runs");
  const b2 = c.restart(b!);
  c.restart(d!);
  const stopped = await Promise.race([exited, new Promise((r) => setTimeout(() => r("still running after 30 s"), 30_000))]);
  t.equal(stopped, 0, "the agent stops once the quorum is back and it is out");
  const after = await until("the member gone", async () => {
    const x = await status(b2).catch(() => undefined);
    return x && x.leader !== "" && !x.members.some((m: any) => m.id === id) ? x : undefined;
  });
  t.equal(after.members.length, 2);
});

t.test("metrics", async (t) => {
  const port = await freePort();
  const c = new TestCluster(["--metrics", `127.0.0.1:${port}`]);
  t.teardown(() => c.stop());
  const [a] = await c.form(["m"], 1);
  for (let i = 0; i < 5; i++) await api(a!, "POST", "/kv", { key: `k${i}`, value: "v" });
  const body = await until("metrics", async () => httpGet(`http://127.0.0.1:${port}/metrics`));
  t.match(body, /^wharf_raft_term [1-9]/m);
  t.match(body, /^wharf_raft_is_leader 1$/m);
  t.match(body, /^wharf_raft_commit_index \d+/m);
  t.match(body, /^wharf_raft_apply_lag \d+/m);
  t.match(body, /^wharf_raft_leader_changes_total [1-9]/m);
  const count = /^wharf_raft_proposal_seconds_count (\d+)/m.exec(body);
  t.ok(count && Number(count[1]) >= 5, "proposal latencies observed");
});
