// Cooperative pulls on real agents (real processes, real registry behind a
// counting proxy): one download per layer cluster-wide, idle agents taking
// queued layers, failover when a master or the Raft leader is SIGKILLed,
// and reference-counted deletion.

import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import t, { type Test } from "tap";
import { type Proc, TestCluster, api, status, until, whoLeads } from "./helpers/agents.js";
import { type Proxy, type PushedImage, type RunningRegistry, pushImage, startProxy, startRegistry } from "./helpers/registry.js";

interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

/** The `wharf` command line (asynchronous: the proxy runs in this process). */
function wharf(p: Proc, ...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, ["--import", "tsx", "src/cli/wharf.ts", "--api", p.api, ...args]);
    let stdout = "";
    let stderr = "";
    c.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    c.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    c.on("close", (code) => resolve({ status: code ?? -1, stdout, stderr }));
  });
}

async function pullAll(ps: readonly Proc[], ref: string): Promise<any[]> {
  const runs = await Promise.all(ps.map((p) => wharf(p, "pull", ref, "--json")));
  return runs.map((r, i) => {
    if (r.status !== 0) throw new Error(`pull on ${ps[i]!.name} failed (${r.status}): ${r.stderr}\n${ps[i]!.log.slice(-3000)}`);
    return JSON.parse(r.stdout);
  });
}

/** Layers of `n` files of random bytes each (incompressible: sizes are real). */
function randomLayers(count: number, bytes: number): { files: Record<string, Buffer> }[] {
  return Array.from({ length: count }, (_, i) => ({ files: { [`layer-${i}/data.bin`]: randomBytes(bytes) } }));
}

/** Every file of the pushed image is in the shared store with its content. */
function verifyStore(t: Test, shared: string, img: PushedImage, files: { files: Record<string, Buffer> }[]): void {
  img.layers.forEach((l, i) => {
    for (const [name, body] of Object.entries(files[i]!.files)) {
      const p = join(shared, "layers/sha256", l.diffID.slice(7), name);
      const ok = existsSync(p) && createHash("sha256").update(readFileSync(p)).digest("hex") === createHash("sha256").update(body).digest("hex");
      if (!ok) t.fail(`layer ${l.diffID}: ${name} missing or wrong`);
    }
  });
  t.pass(`every file of ${img.layers.length} layers verifies`);
}

/**
 * Every pull names one master for the layer, an agent of the cluster: it
 * says "downloaded" if its own pull was running when it brought the layer,
 * "present" if its idle workers brought it before its pull began (or if it
 * pulled nothing: an idle agent takes queued layers too). Every other pull
 * waited for it, or found it present. Returns the master.
 */
function oneMaster(t: Test, sums: any[], ids: readonly string[], digest: string): string {
  const seen = sums.map((s) => s.layers.find((x: any) => x.digest === digest) as { outcome: string; by: string });
  const by = seen[0]!.by;
  t.ok(ids.includes(by), `${digest.slice(7, 19)}: master ${by.slice(-6)} is an agent of the cluster`);
  t.ok(seen.every((x) => x.by === by), "every pull names the same master");
  t.ok(seen.filter((x) => x.outcome === "downloaded").length <= 1, "at most one pull downloaded it");
  for (const x of seen) if (x.outcome === "downloaded") t.equal(x.by, by, "the one that downloaded it is the master");
  t.ok(seen.every((x) => ["downloaded", "waited", "present"].includes(x.outcome)), `outcomes: ${seen.map((x) => x.outcome).join(" ")}`);
  return by;
}

let registry: RunningRegistry;
let proxy: Proxy;
let cluster: TestCluster;
let agents: Proc[];

t.before(async () => {
  registry = await startRegistry();
  proxy = await startProxy(registry.host);
  cluster = new TestCluster(["--insecure-registry", proxy.host]);
  agents = await cluster.form(["a1", "a2", "a3", "a4", "a5"], 3);
});

t.teardown(async () => {
  cluster?.stop();
  await proxy?.stop();
  await registry?.stop();
});

const shared = (): string => join(cluster.root, "shared");
const agentIds = (): Promise<string[]> => Promise.all(agents.map((p) => status(p).then((s) => s.id as string)));
const blobRequests = (digest: string): number => proxy.requests().filter((q) => q.method === "GET" && q.url.includes(`/blobs/${digest}`)).length;

t.test("5 agents pull a 20-layer image at once: every blob served exactly once", async (t) => {
  const files = randomLayers(20, 256 << 10);
  const img = await pushImage(registry.host, "coop/twenty", "1", { layers: files });
  proxy.setRate(16 << 20); // so that the pulls overlap
  const before = new Map(img.layers.map((l) => [l.digest, proxy.blobBytesServed(l.digest)]));
  const sums = await pullAll(agents, `${proxy.host}/coop/twenty:1`);
  proxy.setRate(undefined);
  const ids = await agentIds();
  const masters = new Set<string>();
  for (const l of img.layers) {
    t.equal(proxy.blobBytesServed(l.digest) - before.get(l.digest)!, l.size, `${l.digest.slice(7, 19)} served once, whole`);
    t.equal(blobRequests(l.digest), 1, "one request");
    masters.add(oneMaster(t, sums, ids, l.digest));
  }
  t.ok(masters.size >= 2, `the work was shared by ${masters.size} agents`);
  verifyStore(t, shared(), img, files);
  const bytesOf = img.layers.reduce((n, l) => n + l.size, 0);
  t.comment(`registry bytes for layers: ${img.layers.reduce((n, l) => n + proxy.blobBytesServed(l.digest) - before.get(l.digest)!, 0)} for an image of ${bytesOf}`);
  t.same(readdirSync(join(shared(), "tmp")), [], "no temp dirs");
});

t.test("two images sharing base layers, pulled at once by different agents: shared layers once", async (t) => {
  const base = randomLayers(3, 128 << 10);
  const a = await pushImage(registry.host, "coop/app-a", "1", { layers: [...base, { files: { "a.bin": randomBytes(1000) } }] });
  const b = await pushImage(registry.host, "coop/app-b", "1", { layers: [...base, { files: { "b.bin": randomBytes(1000) } }] });
  // The same base content pushed to two repositories: the same blobs and diffIDs.
  t.same(a.layers.slice(0, 3).map((l) => l.diffID), b.layers.slice(0, 3).map((l) => l.diffID));
  proxy.setRate(4 << 20);
  const [ra, rb] = await Promise.all([pullAll(agents.slice(0, 2), `${proxy.host}/coop/app-a:1`), pullAll(agents.slice(2, 4), `${proxy.host}/coop/app-b:1`)]);
  proxy.setRate(undefined);
  const ids = await agentIds();
  for (const l of a.layers.slice(0, 3)) {
    oneMaster(t, [...ra!, ...rb!], ids, l.digest);
    t.equal(blobRequests(l.digest), 1, "one registry request for it");
  }
});

t.test("SIGKILL of the master of a large layer: another agent resumes it", async (t) => {
  const files = [{ files: { "big.bin": randomBytes(20 << 20) } }];
  const img = await pushImage(registry.host, "coop/big", "1", { layers: files });
  const l = img.layers[0]!;
  proxy.setRate(6 << 20);
  const ref = `${proxy.host}/coop/big:1`;
  const pulls = agents.map((p) => wharf(p, "pull", ref, "--json"));
  const partial = join(shared(), "partial/sha256", l.digest.slice(7));
  const transfer = await until("a master a third of the way", async () => {
    const ts = (await api(agents[0]!, "GET", "/transfers")).body as any[];
    const x = ts.find((y: any) => y.blob === l.digest && y.owner);
    return x && existsSync(partial) && readFileSync(partial).length > l.size / 3 ? x : undefined;
  }, 60_000);
  const ids = await Promise.all(agents.map((p) => status(p).then((s) => s.id as string)));
  const victim = agents[ids.indexOf(transfer.owner)]!;
  t.comment(`killing ${victim.name}, master of the layer`);
  victim.child.kill("SIGKILL");
  const survivors = agents.filter((p) => p !== victim);
  const results = await Promise.all(pulls);
  proxy.setRate(undefined);
  survivors.forEach((p) => {
    const r = results[agents.indexOf(p)]!;
    t.equal(r.status, 0, `${p.name} completed: ${r.stderr}`);
  });
  const served = proxy.blobBytesServed(l.digest);
  t.ok(served <= l.size + (8 << 20), `registry bytes for the blob: ${served} for a blob of ${l.size} (at most one resume overlap)`);
  t.ok(blobRequests(l.digest) >= 2, "a second agent resumed it");
  const resumed = proxy.requests().filter((q) => q.url.includes(l.digest) && q.range);
  t.ok(resumed.length >= 1, `resumed with ${resumed.map((q) => q.range).join(", ")}`);
  verifyStore(t, shared(), img, files);
  // The victim comes back: its stale attempt cannot commit; it collects its leftovers.
  const back = cluster.restart(victim);
  agents[agents.indexOf(victim)] = back;
  await until("the victim back", async () => (existsSync(back.api) ? status(back) : undefined));
  const again = JSON.parse((await wharf(back, "pull", ref, "--json")).stdout);
  t.equal(again.layers[0].outcome, "present", "present for the restarted agent");
  await until("no temp dirs", async () => (readdirSync(join(shared(), "tmp")).length === 0 ? true : undefined), 10_000);
});

t.test("SIGKILL of the Raft leader in the middle of a cooperative pull: every pull completes", async (t) => {
  const files = randomLayers(8, 1 << 20);
  await pushImage(registry.host, "coop/leader", "1", { layers: files });
  proxy.setRate(256 << 10); // per response: about 4 s a layer
  const ref = `${proxy.host}/coop/leader:1`;
  const leaderId = (await status(agents[0]!)).leader as string;
  const leader = await whoLeads(agents, leaderId);
  const others = agents.filter((p) => p !== leader);
  const pulls = others.map((p) => wharf(p, "pull", ref, "--json"));
  await until("some transfers running", async () => ((await api(others[0]!, "GET", "/transfers")).body.some((x: any) => x.owner) ? true : undefined));
  leader.child.kill("SIGKILL");
  const results = await Promise.all(pulls);
  proxy.setRate(undefined);
  results.forEach((r, i) => t.equal(r.status, 0, `${others[i]!.name}: ${r.stderr}`));
  const back = cluster.restart(leader);
  agents[agents.indexOf(leader)] = back;
  await until("the old leader back", async () => (existsSync(back.api) ? status(back) : undefined));
});

t.test("rmi on some agents and not others: only unreferenced layers are deleted", async (t) => {
  const ref = `${proxy.host}/coop/twenty:1`;
  const layers = JSON.parse((await wharf(agents[0]!, "images", "--json")).stdout).find((i: any) => i.reference === ref).layers as string[];
  for (const p of agents.slice(0, 4)) {
    const r = await wharf(p, "rmi", ref);
    t.equal(r.status, 0, r.stderr);
    t.notMatch(r.stdout, /Deleted/, `${p.name}: nothing deleted while a5 holds it`);
  }
  for (const d of layers) t.ok(existsSync(join(shared(), "layers/sha256", d.slice(7))), "still in the store");
  // A pull racing the last rmi: either it finds the layers present (and pins
  // them again) or it pulls them again after the deletion committed.
  const [rm, pull] = await Promise.all([wharf(agents[4]!, "rmi", ref), wharf(agents[0]!, "pull", ref, "--json")]);
  t.equal(rm.status, 0, rm.stderr);
  t.equal(pull.status, 0, pull.stderr);
  const imgs = JSON.parse((await wharf(agents[1]!, "images", "--json")).stdout);
  const held = imgs.find((i: any) => i.reference === ref);
  t.ok(held && held.holders.length === 1, "held by the agent that pulled again");
  for (const d of layers) t.ok(existsSync(join(shared(), "layers/sha256", d.slice(7))), `${d.slice(7, 19)} is there for its holder`);
  const all = JSON.parse((await wharf(agents[1]!, "layers", "--json")).stdout);
  t.ok(all.every((l: any) => l.state === "present"), "nothing left half-deleted");
});

t.test("an agent waiting for a layer shows the master's progress, gossiped", async (t) => {
  await pushImage(registry.host, "coop/progress", "1", { layers: [{ files: { "p.bin": randomBytes(3 << 20) } }] });
  proxy.setRate(1 << 20);
  const ref = `${proxy.host}/coop/progress:1`;
  const first = wharf(agents[0]!, "pull", ref, "--json");
  await until("a master", async () => ((await api(agents[1]!, "GET", "/transfers")).body.some((x: any) => x.owner) ? true : undefined));
  const second = await wharf(agents[1]!, "pull", ref);
  proxy.setRate(undefined);
  t.equal((await first).status, 0);
  t.equal(second.status, 0, second.stderr);
  const masterId = (await status(agents[0]!)).id as string;
  t.match(second.stdout, new RegExp(`Downloading on ${masterId.slice(-8)}`), "progress of the download on the other agent");
  t.match(second.stdout, /Pull complete/);
});

t.test("a minority cannot claim: a clear error, and the images it holds still mount", async (t) => {
  const lone = agents[0]!; // holds coop/progress:1 since the last test
  const st = await status(lone);
  const ids = await Promise.all(agents.map((p) => status(p).then((s) => s.id as string)));
  const voters = st.members.filter((m: any) => m.role === "voter").map((m: any) => m.id as string);
  const stopped = voters.filter((v: string) => v !== st.id).slice(0, 2).map((v: string) => agents[ids.indexOf(v)]!);
  t.equal(stopped.length, 2, "two voters stopped: no majority left");
  for (const p of stopped) p.child.kill("SIGSTOP");
  const target = join(cluster.root, "mnt-minority");
  try {
    await pushImage(registry.host, "coop/minority", "1", { layers: [{ files: { "m.bin": randomBytes(1000) } }] });
    const r = await wharf(lone, "pull", `${proxy.host}/coop/minority:1`, "--json");
    t.equal(r.status, 4, `NO_LEADER: ${r.stderr.trim()}`);
    t.match(r.stderr, /no quorum|no leader|election/i);
    mkdirSync(target);
    const m = await wharf(lone, "mount", `${proxy.host}/coop/progress:1`, target);
    t.equal(m.status, 0, `mounted without a quorum: ${m.stderr}`);
    t.ok(existsSync(join(target, "p.bin")), "the layer's file is there");
    t.equal((await wharf(lone, "umount", target)).status, 0);
  } finally {
    for (const p of stopped) p.child.kill("SIGCONT");
  }
  await until("a leader again", async () => ((await status(lone)).leader ? true : undefined), 30_000);
});

t.test("a member removed from the cluster releases its holds", async (t) => {
  const ref = `${proxy.host}/coop/progress:1`;
  const [a1, , , , a5] = agents;
  t.equal((await wharf(a5!, "pull", ref, "--json")).status, 0);
  const id5 = (await status(a5!)).id as string;
  let img = (await api(a1!, "GET", "/images")).body.find((i: any) => i.reference === ref);
  t.ok(img.holders.includes(id5), "a5 holds it");
  a5!.child.kill("SIGKILL");
  // a5 may have led: the read waits for the next leader.
  img = (await api(a1!, "GET", "/images?timeoutMs=20000")).body.find((i: any) => i.reference === ref);
  t.ok(img.holders.includes(id5), "a dead agent keeps its holds (a restart must not lose them)");
  const r = await wharf(a1!, "remove-member", id5);
  t.equal(r.status, 0, r.stderr);
  await until("the hold released", async () => {
    const i = (await api(a1!, "GET", "/images")).body.find((x: any) => x.reference === ref);
    return i && !i.holders.includes(id5) ? true : undefined;
  });
  t.pass("released on removal");
});
