// The chaos suite: rounds of cooperative pulls on hosts in network
// namespaces (deploy/local/hosts.ts), with faults chosen by a seeded PRNG —
// SIGKILLs (of the master of a transfer, the leader, anyone) and restarts,
// partitions (one host isolated, one way, a 2/3 split), a collapsing
// registry link, registry faults through a proxy (resets, truncated and
// wrong bodies, 5xx, stalls), a full or a slow shared store, members leaving and
// joining again. After each round, once the cluster is calm, it checks:
//   - every pull completed, or failed with a clear error where a fault made
//     that the right answer; a pull again after the faults always completes;
//   - every layer present verifies, file by file; no temp dir is left;
//   - no duplicate download without a failure: one master at a time per
//     blob, and no more bytes than one download per GET;
//   - image holders are what the agents actually hold, and every layer of a
//     held image is present (GC deleted nothing referenced);
//   - the key-value history clients recorded during the round is
//     linearizable (the checker of the simulation);
//   - every agent converges to the same applied state (a digest of it).
//
// The same seed gives the same schedule of faults (what the cluster does in
// between is real time and real processes, so a replay is close, not exact).

import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, readdirSync, rmSync, statfsSync, writeFileSync, unlinkSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { inNetns } from "../../deploy/local/containerd.js";
import { type LocalHost, LocalHosts } from "../../deploy/local/hosts.js";
import { until } from "../helpers/agents.js";
import { type ProxyFault, type PushedImage, pushImage, startRegistry } from "../helpers/registry.js";
import { type KvInput, type KvOutput, kvModel } from "../sim/kvmodel.js";
import { type Operation, checkLinearizability } from "../sim/linearizability.js";
import { Prng } from "../sim/prng.js";

/** How long an agent that left the cluster may take to stop. */
const EXIT_AFTER_LEAVE_MS = 30_000;
export const FAULT_KINDS = ["kill", "partition", "bandwidth", "registry", "storage", "membership"] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];
/** Deliberate damage done just before a round's checks, to prove each check can fail. */
export const PLANTS = ["corrupt-layer", "leak-temp", "stale-read", "lost-hold", "diverge"] as const;
export type Plant = (typeof PLANTS)[number];

export interface ChaosOptions {
  readonly rounds: number;
  readonly seed: number;
  readonly hosts: number;
  readonly plants?: readonly Plant[];
  readonly log?: (line: string) => void;
  /** Ends the run after the round in progress (the hosts are taken down). */
  readonly signal?: AbortSignal;
}

export interface ChaosSummary {
  rounds: number;
  seed: number;
  kills: number;
  partitions: number;
  registryFaults: number;
  storageFaults: number;
  membershipChanges: number;
  bandwidthCollapses: number;
  pulls: number;
  pullsCompleted: number;
  pullsInterrupted: number;
  pullsFailedRightly: number;
  pullsFailedWrongly: number;
  corruptLayers: number;
  duplicateDownloads: number;
  leakedTempDirs: number;
  refMismatches: number;
  divergedAgents: number;
  /** Agents that exited without being killed or asked to leave. */
  /** Agents that exited by themselves, or did not stop after leaving. */
  agentCrashes: number;
  linearizability: "ok" | "violated" | "unknown";
  /** Per fault kind: rounds it was injected in, and those whose checks all passed. */
  faults: Record<FaultKind, { injected: number; survived: number }>;
  failures: string[];
}

const RATE_MBIT = 40;
const REGISTRY_FAULTS: readonly ProxyFault[] = ["reset-next-blob", "truncate-next-blob", "503-next", "stall-next-blob", "wrong-body-next-blob"];
const PULL_TIMEOUT_MS = 120_000;

/** Deterministic bytes: sha256 blocks of `tag` and a counter. */
function bytes(n: number, tag: string): Buffer {
  const out = Buffer.alloc(n);
  for (let i = 0, off = 0; off < n; i++, off += 32) createHash("sha256").update(`${tag}/${i}`).digest().copy(out, off);
  return out;
}

const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface ChaosImage {
  readonly repo: string;
  readonly pushed: PushedImage;
  /** diffID → file name → sha256 of its content. */
  readonly files: Map<string, Map<string, string>>;
}

/** Three images of five layers; the first two layers are shared by all. */
async function pushImages(host: string, rng: Prng): Promise<ChaosImage[]> {
  const layer = (tag: string) => {
    const files: Record<string, Buffer> = {};
    const n = rng.int(1, 4);
    for (let i = 0; i < n; i++) files[`${tag}/f${i}.bin`] = bytes(rng.int(64 << 10, 1536 << 10), `${tag}/${i}`);
    return files;
  };
  const base = [layer("base0"), layer("base1")];
  const out: ChaosImage[] = [];
  for (let k = 0; k < 3; k++) {
    const specs = [...base, layer(`img${k}a`), layer(`img${k}b`), layer(`img${k}c`)];
    const repo = `chaos/img${k}`;
    const pushed = await pushImage(host, repo, "1", { layers: specs.map((files) => ({ files })) });
    const files = new Map<string, Map<string, string>>();
    pushed.layers.forEach((l, i) => files.set(l.diffID, new Map(Object.entries(specs[i]!).map(([p, b]) => [p, sha(b)]))));
    out.push({ repo, pushed, files });
  }
  return out;
}

/** The registry proxy, a child process in the registry's namespace. */
class ProxyChild {
  private seq = 0;
  private readonly waiting = new Map<number, (m: any) => void>();
  private constructor(
    readonly child: ChildProcess,
    readonly host: string,
  ) {
    child.on("message", (m: { id: number }) => {
      this.waiting.get(m.id)?.(m);
      this.waiting.delete(m.id);
    });
  }

  static async start(netns: string, target: string, listen: string): Promise<ProxyChild> {
    const [c, a] = inNetns(netns, process.execPath, ["--import", "tsx", "test/chaos/proxy.ts", target, listen]);
    const child = spawn("setpriv", ["--pdeathsig", "SIGKILL", c, ...a], { stdio: ["ignore", "pipe", "pipe", "ipc"], detached: true });
    let out = "";
    child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
    const host = await new Promise<string>((resolve, reject) => {
      child.stdout!.on("data", (d: Buffer) => {
        out += d.toString();
        const m = /ready (\S+)/.exec(out);
        if (m) resolve(m[1]!);
      });
      child.once("exit", (code) => reject(new Error(`the registry proxy exited (${code}): ${out}`)));
    });
    return new ProxyChild(child, host);
  }

  private ask(msg: object): Promise<any> {
    const id = ++this.seq;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.child.send({ ...msg, id });
    });
  }

  fault(f: ProxyFault): Promise<void> {
    return this.ask({ op: "fault", fault: f });
  }

  /** Drops the faults that did not fire (so that none carries over into the next round). */
  async clearFaults(): Promise<number> {
    return (await this.ask({ op: "clear" })).cleared;
  }

  async blobBytes(digests: readonly string[]): Promise<Record<string, number>> {
    return (await this.ask({ op: "stats", digests })).perBlob;
  }

  /** Every GET of each blob so far, in order. */
  async blobRequests(digests: readonly string[]): Promise<Record<string, BlobGet[]>> {
    return (await this.ask({ op: "stats", digests })).requests;
  }

  stop(): void {
    this.child.kill("SIGKILL");
  }
}

export interface BlobGet {
  client: string;
  range?: string;
  status?: number;
  /** Body bytes the proxy sent. */
  sent: number;
  /** Wall clock (ms since the epoch). */
  start?: number;
  /** Unset while the response is still open. */
  end?: number;
}

/**
 * Two GETs of one blob, from two hosts, whose responses were open at once
 * while both hosts' agents were alive: two masters at once. `killed` holds,
 * per host address, when its agent was SIGKILLed: the proxy sees a dead
 * master's response open until the host's kernel answers the next segment
 * with a reset, which a shaped link delays by seconds, but nobody reads it.
 */
export function overlapping(gets: readonly BlobGet[], killed: ReadonlyMap<string, readonly number[]>): [BlobGet, BlobGet] | undefined {
  const deadBy = (g: BlobGet, t: number): boolean => (killed.get(g.client) ?? []).some((k) => k >= g.start! && k <= t);
  for (const a of gets) {
    for (const b of gets) {
      if (a === b || a.client === b.client || a.start === undefined || b.start === undefined) continue;
      if (a.start <= b.start && b.start < (a.end ?? Infinity) && !deadBy(a, b.start)) return [a, b];
    }
  }
  return undefined;
}

interface Api {
  status: number;
  body: any;
}

/** Holds, per host name, the image repos its agent holds (what `rmi` and pulls did). */
type Holds = Map<string, Set<string>>;

export async function runChaos(o: ChaosOptions): Promise<ChaosSummary> {
  const log = o.log ?? (() => {});
  const rng = new Prng(o.seed);
  const sum: ChaosSummary = {
    rounds: 0,
    seed: o.seed,
    kills: 0,
    partitions: 0,
    registryFaults: 0,
    storageFaults: 0,
    membershipChanges: 0,
    bandwidthCollapses: 0,
    pulls: 0,
    pullsCompleted: 0,
    pullsInterrupted: 0,
    pullsFailedRightly: 0,
    pullsFailedWrongly: 0,
    corruptLayers: 0,
    duplicateDownloads: 0,
    leakedTempDirs: 0,
    refMismatches: 0,
    divergedAgents: 0,
    agentCrashes: 0,
    linearizability: "ok",
    faults: Object.fromEntries(FAULT_KINDS.map((k) => [k, { injected: 0, survived: 0 }])) as ChaosSummary["faults"],
    failures: [],
  };

  const registry = await startRegistry();
  let hosts: LocalHosts | undefined;
  let proxy: ProxyChild | undefined;
  try {
    const images = await pushImages(registry.host, rng);
    hosts = await LocalHosts.up({
      n: o.hosts,
      containerd: false,
      rateMbit: RATE_MBIT,
      registryData: join(registry.dir, "data"),
      sharedFsMb: 192,
      agentArgs: (net) => ["--insecure-registry", `${net}.2:5001`, "--lease-ms", "1500", "--dead-voter-ms", "8000"],
    });
    const H = hosts;
    proxy = await ProxyChild.start(`${H.prefix}-reg`, H.registryHost, `${H.registryHost.split(":")[0]}:5001`);
    const P = proxy;
    const holds: Holds = new Map(H.hosts.map((h) => [h.name, new Set<string>()]));
    const ids = new Map<string, string>();
    const idOf = async (h: LocalHost): Promise<string> => {
      const id = (await H.api(h, "GET", "/status")).body.id as string;
      ids.set(h.name, id);
      return id;
    };
    for (const h of H.hosts) await idOf(h);
    const call = (h: LocalHost, method: string, path: string, body?: unknown): Promise<Api> => H.api(h, method, path, body);
    /** An agent that left stops; one that does not is a failure of its own (killed, to go on). */
    const stopsAfterLeave = async (victim: LocalHost, round: number): Promise<void> => {
      const exited = await new Promise<boolean>((r) => {
        if (victim.agent.exitCode !== null || victim.agent.signalCode !== null) return r(true);
        const timer = setTimeout(() => r(false), EXIT_AFTER_LEAVE_MS);
        victim.agent.once("exit", () => (clearTimeout(timer), r(true)));
      });
      if (exited) return;
      sum.agentCrashes++;
      fail(round, `${victim.name}'s agent left but did not exit within ${EXIT_AFTER_LEAVE_MS} ms: ${victim.agentLog.trim().split("\n").slice(-3).join(" | ").slice(0, 800)}`);
      if (process.env.CHAOS_LOGS) writeFileSync(join(process.env.CHAOS_LOGS, `seed${o.seed}-round${round}-${victim.name}-stuck.log`), victim.agentLog);
      await H.killAgent(victim);
    };
    /** A host that left joins again with a new identity (a fresh data dir), through a live member. */
    const rejoinAnew = async (victim: LocalHost): Promise<void> => {
      rmSync(victim.data, { recursive: true, force: true });
      const live = H.hosts.find((h) => h !== victim && h.agent.exitCode === null && h.agent.signalCode === null) ?? H.hosts[0]!;
      const peer = `/ip4/${live.addr}/tcp/7000/p2p/${ids.get(live.name)}`;
      H.startAgent(victim, ["join", peer]);
      await until(`${victim.name} back`, async () => (existsSync(victim.api) ? idOf(victim) : undefined), 60_000);
    };
    const fail = (round: number, what: string): void => {
      const line = `round ${round} (seed ${o.seed}): ${what}`;
      sum.failures.push(line);
      log(`  FAIL ${what}`);
    };

    for (let round = 1; round <= o.rounds && !o.signal?.aborted; round++) {
      sum.rounds = round;
      const failuresBefore = sum.failures.length;
      const img = rng.pick(images);
      const ref = `${P.host}/${img.repo}:1`;
      const kinds = new Set<FaultKind>();
      const nFaults = rng.int(1, 2);
      while (kinds.size < nFaults) kinds.add(rng.pick(FAULT_KINDS));
      // A host that was killed or left during the round: its pull may be cut short.
      const disrupted = new Set<string>();
      // Hosts whose leave was not done when asked (it goes on).
      const lateLeaves: LocalHost[] = [];
      // Host address → when its agent was SIGKILLed, this round (wall clock).
      const killed = new Map<string, number[]>();
      // Hosts that left the cluster (and joined again as a new member) during the round.
      const rejoined = new Set<string>();
      log(`round ${round}: ${img.repo} on ${H.hosts.length} hosts; faults: ${[...kinds].join(", ")}`);

      const blobs = img.pushed.layers.map((l) => l.digest);
      const bytesBefore = await P.blobBytes(blobs);
      const getsBefore = await P.blobRequests(blobs);

      // Key-value clients record a history for the linearizability checker.
      const history: Operation<KvInput, KvOutput>[] = [];
      const servedBy = new Map<Operation<KvInput, KvOutput>, string>();
      const t0 = performance.now();
      let loading = true;
      const kv = Array.from({ length: 2 }, (_, client) =>
        (async () => {
          let n = 0;
          while (loading) {
            const h = H.hosts[(client + n) % H.hosts.length]!;
            const key = `r${round}k${n % 3}`;
            const input: KvInput = n % 2 === 0 ? { op: "put", key, value: `r${round}c${client}n${n}` } : { op: "get", key };
            n++;
            const start = performance.now() - t0;
            const r =
              input.op === "put"
                ? await call(h, "POST", "/kv?timeoutMs=1500", { key, value: input.value }).catch(() => undefined)
                : await call(h, "GET", `/kv?key=${key}&timeoutMs=1500`).catch(() => undefined);
            const end = performance.now() - t0;
            if (input.op === "put") {
              // A put without an answer may still have been applied.
              const ok = r?.status === 200 && r.body?.ok !== false;
              const op = { clientId: client * 1000 + n, input, output: ok ? { ok: true } : undefined, call: start, return: ok ? end : Infinity };
              history.push(op);
              servedBy.set(op, h.name);
            } else if (r?.status === 200) {
              const op = { clientId: client * 1000 + n, input, output: { value: r.body.value }, call: start, return: end };
              history.push(op);
              servedBy.set(op, h.name);
            }
            await sleep(20);
          }
        })(),
      );

      // The pulls, all at once.
      const pulls = H.hosts.map(async (h) => {
        let timer: NodeJS.Timeout | undefined;
        const r = await Promise.race([
          H.wharf(h, ["pull", ref, "--json"]),
          new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
            timer = setTimeout(() => resolve({ code: -1, stdout: "", stderr: "timed out" }), PULL_TIMEOUT_MS);
          }),
        ]);
        clearTimeout(timer);
        return { h, ...r };
      });

      // The faults, each at a random moment of the pull.
      const restores: Promise<void>[] = [];
      for (const kind of kinds) {
        sum.faults[kind].injected++;
        await sleep(rng.int(50, 900));
        if (kind === "kill") {
          // Either may fail (host-1 cut off, say): the victim is then anyone.
          const ts: unknown = (await call(H.hosts[0]!, "GET", "/transfers").catch(() => undefined))?.body;
          const master = Array.isArray(ts) ? (ts as { owner?: string }[]).find((t) => t.owner)?.owner : undefined;
          const leader = (await call(H.hosts[0]!, "GET", "/status").catch(() => undefined))?.body?.leader as string | undefined;
          const pick = rng.int(0, 2);
          const wanted = pick === 0 ? master : pick === 1 ? leader : undefined;
          const victim = H.hosts.find((h) => wanted !== undefined && ids.get(h.name) === wanted) ?? rng.pick(H.hosts);
          if (disrupted.has(victim.name)) continue;
          log(`  kill -9 ${victim.name}${wanted === master && master ? " (a master)" : wanted === leader && leader ? " (the leader)" : ""}`);
          sum.kills++;
          disrupted.add(victim.name);
          await H.killAgent(victim);
          killed.set(victim.addr, [...(killed.get(victim.addr) ?? []), Date.now()]);
          const down = rng.int(300, 2500);
          restores.push(sleep(down).then(() => H.restartAgent(victim)));
        } else if (kind === "partition") {
          sum.partitions++;
          const shape = rng.int(0, 2);
          const hs = H.hosts;
          if (shape === 0) {
            const leader = (await call(hs[0]!, "GET", "/status").catch(() => undefined))?.body?.leader as string | undefined;
            const x = hs.find((h) => ids.get(h.name) === leader) ?? rng.pick(hs);
            log(`  isolate ${x.name}`);
            for (const y of hs) if (y !== x) (H.cut(x, y), H.cut(y, x));
          } else if (shape === 1) {
            const x = rng.pick(hs);
            const y = rng.pick(hs.filter((h) => h !== x));
            log(`  cut ${x.name} → ${y.name} (one way)`);
            H.cut(x, y);
          } else {
            const k = Math.floor(hs.length * 0.4) || 1;
            const a = hs.slice(0, k);
            const b = hs.slice(k);
            log(`  split ${a.map((h) => h.name).join(",")} | ${b.map((h) => h.name).join(",")}`);
            for (const x of a) for (const y of b) (H.cut(x, y), H.cut(y, x));
          }
          restores.push(sleep(rng.int(1000, 4000)).then(() => H.heal()));
        } else if (kind === "bandwidth") {
          sum.bandwidthCollapses++;
          log("  registry link at 2 Mbit/s");
          H.setRegistryRate(2);
          restores.push(sleep(rng.int(1000, 3000)).then(() => H.setRegistryRate(RATE_MBIT)));
        } else if (kind === "registry") {
          const n = rng.int(1, 3);
          for (let i = 0; i < n; i++) {
            const f = rng.pick(REGISTRY_FAULTS);
            log(`  registry fault: ${f}`);
            await P.fault(f);
          }
          sum.registryFaults += n;
        } else if (kind === "storage") {
          sum.storageFaults++;
          if (H.storeThrottle && rng.int(0, 1) === 1) {
            const rate = rng.int(256, 2048) << 10;
            log(`  shared store slow (${rate >> 10} KiB/s, fsyncs included)`);
            H.setStoreRate(rate);
            restores.push(sleep(rng.int(1000, 4000)).then(() => H.setStoreRate(0)));
          } else {
            const st = statfsSync(H.shared);
            const free = st.bavail * st.bsize;
            const filler = join(H.shared, "filler");
            log(`  shared store full (${(free / 1e6).toFixed(0)} MB taken)`);
            try {
              writeFileSync(filler, Buffer.alloc(Math.max(0, free - (16 << 10))));
            } catch {
              // Full already: the point.
            }
            restores.push(sleep(rng.int(500, 2500)).then(() => unlinkSync(filler)));
          }
        } else if (kind === "membership") {
          const victim = rng.pick(H.hosts.slice(1));
          if (disrupted.has(victim.name)) continue;
          disrupted.add(victim.name);
          log(`  ${victim.name} leaves, and joins again with a new identity`);
          const left = await call(victim, "POST", "/leave?timeoutMs=8000").catch((e: Error) => ({ status: 0, body: { error: e.message } }));
          if (left.status !== 200 && left.body?.error?.code !== "TIMEOUT") {
            // Refused: it stays a member.
            log(`  ${victim.name} could not leave: ${JSON.stringify(left.body).slice(0, 200)}`);
            continue;
          }
          sum.membershipChanges++;
          rejoined.add(victim.name);
          holds.set(victim.name, new Set());
          if (left.status !== 200) {
            // Not done in time (no quorum during another fault): the leave
            // goes on, and the agent stops once it is out, after the heal.
            log(`  ${victim.name}'s leave is not done yet: it goes on`);
            lateLeaves.push(victim);
            continue;
          }
          await stopsAfterLeave(victim, round);
          const back = rng.int(300, 1500);
          restores.push(sleep(back).then(() => rejoinAnew(victim)));
        }
      }
      const results = await Promise.all(pulls);
      await Promise.all(restores);
      const unfired = await P.clearFaults();
      if (unfired > 0) log(`  ${unfired} registry faults did not fire`);
      H.heal();
      for (const victim of lateLeaves) {
        await stopsAfterLeave(victim, round);
        await rejoinAnew(victim);
      }
      loading = false;
      await Promise.all(kv);

      // An agent that died by itself is a failure of its own (and its log is kept).
      for (const h of H.hosts) {
        if (h.agent.exitCode === null && h.agent.signalCode === null) continue;
        sum.agentCrashes++;
        fail(round, `${h.name}'s agent exited by itself (${h.agent.exitCode ?? h.agent.signalCode}): ${lastError(h.agentLog)}`);
        if (process.env.CHAOS_LOGS) writeFileSync(join(process.env.CHAOS_LOGS, `seed${o.seed}-round${round}-${h.name}-crash.log`), h.agentLog);
        await H.restartAgent(h).catch(() => {});
      }
      try {
        // Calm: every agent answers, one leader, the same applied index.
        // (A failed round's agent logs are kept below, with every other failure's.)
        await calm(H).catch((e: Error) => fail(round, `the cluster did not calm down: ${e.message}`));

        // Pulls: completed; cut short by a kill or a leave; or failed, rightly
        // only where a fault could have made it fail. Then once more, calm.
        const faultsCanFail = kinds.has("partition") || kinds.has("registry") || kinds.has("storage");
        for (const r of results) {
          sum.pulls++;
          if (r.code === 0) {
            sum.pullsCompleted++;
            // A host that left during the round held it under the identity it left with.
            if (!rejoined.has(r.h.name)) holds.get(r.h.name)!.add(img.repo);
          } else if (disrupted.has(r.h.name)) {
            sum.pullsInterrupted++;
          } else if (faultsCanFail && /^wharf: \S/.test(r.stderr.trim()) && !/INTERNAL|TypeError|ReferenceError|at .*\.ts:\d+/.test(r.stderr)) {
            sum.pullsFailedRightly++;
            log(`  ${r.h.name}: failed rightly: ${r.stderr.trim().split("\n")[0]}`);
          } else {
            sum.pullsFailedWrongly++;
            fail(round, `${r.h.name}: pull failed: ${r.stderr.trim() || `exit ${r.code}`}`);
          }
        }
        for (const r of results) {
          if (r.code === 0) continue;
          const again = await H.wharf(r.h, ["pull", ref, "--json"]);
          if (again.code === 0) holds.get(r.h.name)!.add(img.repo);
          else {
            sum.pullsFailedWrongly++;
            fail(round, `${r.h.name}: the pull after the faults failed: ${again.stderr.trim()}`);
          }
        }

        if (o.plants?.length) await plant(o.plants, H, images, history);

        // Layers: each present one verifies; no temp dirs.
        const layers = (await call(H.hosts[0]!, "GET", "/layers")).body as { diffID: string; state: string; attempt?: number }[];
        for (const l of layers.filter((x) => x.state === "present")) {
          const files = images.map((i) => i.files.get(l.diffID)).find(Boolean);
          const dir = join(H.shared, "layers", "sha256", l.diffID.slice(7));
          const bad = !files ? ["not a layer of the suite's images"] : verifyLayer(dir, files);
          if (bad.length > 0) {
            sum.corruptLayers++;
            fail(round, `layer ${l.diffID.slice(7, 19)} is corrupt: ${bad.slice(0, 3).join("; ")}`);
          }
        }
        const temps = readdirSync(join(H.shared, "tmp"));
        if (temps.length > 0) {
          sum.leakedTempDirs += temps.length;
          fail(round, `temp dirs left in the shared store: ${temps.join(", ")}`);
        }

        // No duplicate download without a failure: a blob is fetched by one
      // master at a time (fencing: a master whose lease may have run out
      // stops before anyone else may take over), and its registry bytes are
      // at most one download per GET that a failure made necessary (a
      // master cut off, a body the registry broke) plus the first.
      const bytesAfter = await P.blobBytes(blobs);
      const getsAfter = await P.blobRequests(blobs);
      for (const l of img.pushed.layers) {
        const served = bytesAfter[l.digest]! - bytesBefore[l.digest]!;
        const gets = (getsAfter[l.digest] ?? []).slice(getsBefore[l.digest]?.length ?? 0);
        const show = (g: BlobGet) => `${g.client}${g.range ? ` ${g.range}` : ""} → ${g.status ?? "-"} ${g.sent} B`;
        const both = overlapping(gets, killed);
        if (both) {
          sum.duplicateDownloads++;
          fail(round, `blob ${l.digest.slice(7, 19)} fetched by two masters at once: ${both.map(show).join(" and ")}`);
        } else if (served > l.size * Math.max(1, gets.length)) {
          sum.duplicateDownloads++;
          fail(round, `blob ${l.digest.slice(7, 19)}: ${served} bytes served for ${l.size} in ${gets.length} GETs: ${gets.map(show).join("; ")}`);
        }
      }

      // Holders are what the agents hold; a held image's layers are all there.
        const imgs = (await call(H.hosts[0]!, "GET", "/images")).body as { reference: string; holders: string[]; layers: string[] }[];
        const present = new Set(layers.filter((x) => x.state === "present").map((x) => x.diffID));
        for (const i of images) {
          const reference = `${P.host}/${i.repo}:1`;
          const want = H.hosts.filter((h) => holds.get(h.name)!.has(i.repo)).map((h) => ids.get(h.name)!).sort();
          const rec = imgs.find((x) => x.reference === reference);
          const have = [...(rec?.holders ?? [])].sort();
          if (want.join() !== have.join()) {
            sum.refMismatches++;
            fail(round, `${i.repo}: holders ${JSON.stringify(have)}, agents hold ${JSON.stringify(want)}`);
          }
          if (rec && have.length > 0) {
            const missing = rec.layers.filter((d) => !present.has(d) || !existsSync(join(H.shared, "layers", "sha256", d.slice(7))));
            if (missing.length > 0) {
              sum.refMismatches++;
              fail(round, `${i.repo} is held but layers are gone: ${missing.map((d) => d.slice(7, 19)).join(", ")}`);
            }
          }
        }

        // The key-value history is linearizable.
        const lin = checkLinearizability(kvModel, history, { timeoutMs: 20_000 });
        if (lin.result !== "ok") {
          if (lin.result === "violated" || sum.linearizability === "ok") sum.linearizability = lin.result;
          const show = (op: Operation<KvInput, KvOutput>) =>
            `${servedBy.get(op) ?? "?"} ${JSON.stringify(op.input)}→${JSON.stringify(op.output)} [${op.call.toFixed(0)}, ${op.return.toFixed(0)}]`;
          const ce = lin.counterexample;
          const detail = ce ? ` after ${ce.longestLinearizedPrefix.slice(-2).map(show).join(", ")}; cannot place ${ce.notLinearized.slice(0, 2).map(show).join(", ")}` : "";
          fail(round, `key-value history of ${history.length} operations: ${lin.result}${detail}`);
        }

        // Every agent holds the same state.
        const states = await Promise.all(H.hosts.map((h) => call(h, "GET", "/state").then((r) => ({ h, ...(r.body as { applied: number; digest: string }) }))));
        if (o.plants?.includes("diverge")) states[0]!.digest = "0".repeat(64);
        const digests = new Set(states.map((s) => `${s.applied}/${s.digest}`));
        if (digests.size !== 1) {
          sum.divergedAgents += digests.size - 1;
          fail(round, `agents disagree: ${states.map((s) => `${s.h.name}@${s.applied}:${s.digest.slice(0, 8)}`).join(" ")}`);
        }

        // Reset for the next round: some or all hosts drop the image (GC may then delete its layers).
        const droppers = rng.chance(0.7) ? H.hosts : H.hosts.filter(() => rng.chance(0.5));
        for (const h of droppers) {
          if (!holds.get(h.name)!.has(img.repo)) continue;
          // An answer lost in a timeout may hide a release that applied: ask
          // again until the agent says released, or that it holds nothing.
          for (let i = 0; i < 3; i++) {
            const r = await call(h, "POST", "/rmi?timeoutMs=10000", { ref }).catch(() => undefined);
            if (r?.status === 200 || r?.body?.error?.code === "NOT_FOUND") {
              holds.get(h.name)!.delete(img.repo);
              break;
            }
          }
        }
      } catch (e) {
        fail(round, `the checks could not run: ${(e as Error).message}`);
      }
      const passed = sum.failures.length === failuresBefore;
      if (!passed && process.env.CHAOS_LOGS) for (const h of H.hosts) writeFileSync(join(process.env.CHAOS_LOGS, `seed${o.seed}-round${round}-${h.name}.log`), h.agentLog);
      for (const k of kinds) if (passed) sum.faults[k].survived++;
      log(`  ${passed ? "ok" : "FAILED"}: ${results.filter((r) => r.code === 0).length}/${results.length} pulls at once, ${history.length} kv ops`);
    }
  } finally {
    proxy?.stop();
    await hosts?.down();
    await registry.stop();
  }
  return sum;
}

/** The last error-level line of an agent's log (pino JSON), or its last line. */
function lastError(log: string): string {
  const lines = log.trim().split("\n");
  const err = lines.reverse().find((l) => /"level":(50|60)/.test(l) || /^\S*Error/.test(l));
  return (err ?? lines[0] ?? "").slice(0, 600);
}

/** Every agent answers, agrees on a leader, and has applied the same index (twice in a row). */
async function calm(H: LocalHosts): Promise<void> {
  let last = "";
  await until(
    "every agent up, one leader, the same applied index",
    async () => {
      const st = await Promise.all(H.hosts.map((h) => H.api(h, "GET", "/state").then((r) => r.body as { applied: number })));
      const ss = await Promise.all(H.hosts.map((h) => H.api(h, "GET", "/status").then((r) => r.body as { leader: string })));
      const leaders = new Set(ss.map((s) => s.leader));
      const key = `${st.map((s) => s.applied).join()}`;
      const ok = leaders.size === 1 && !leaders.has("") && new Set(st.map((s) => s.applied)).size === 1 && key === last;
      last = key;
      if (!ok) await sleep(200);
      return ok ? true : undefined;
    },
    90_000,
  );
}

/** What differs between a layer directory and its expected files (regular files only). */
function verifyLayer(dir: string, files: ReadonlyMap<string, string>): string[] {
  const bad: string[] = [];
  if (!existsSync(dir)) return ["its directory is missing"];
  for (const [p, h] of files) {
    const f = join(dir, p);
    if (!existsSync(f)) bad.push(`${p} missing`);
    else if (sha(readFileSync(f)) !== h) bad.push(`${p} differs`);
  }
  const seen = (readdirSync(dir, { recursive: true, withFileTypes: true }) as import("node:fs").Dirent[])
    .filter((d) => d.isFile())
    .map((d) => join(d.parentPath, d.name).slice(dir.length + 1));
  for (const p of seen) if (!files.has(p)) bad.push(`${p} unexpected`);
  return bad;
}

/** The deliberate damage of `plants`, done after a round's pulls and before its checks. */
async function plant(plants: readonly Plant[], H: LocalHosts, images: readonly ChaosImage[], history: Operation<KvInput, KvOutput>[]): Promise<void> {
  if (plants.includes("corrupt-layer")) {
    const present = readdirSync(join(H.shared, "layers", "sha256"));
    const d = present[0];
    if (d) {
      const files = images.map((i) => i.files.get(`sha256:${d}`)).find(Boolean);
      const p = files && [...files.keys()][0];
      if (p) writeFileSync(join(H.shared, "layers", "sha256", d, p), "flipped");
    }
  }
  if (plants.includes("leak-temp")) mkdirSync(join(H.shared, "tmp", "planted.layer.000000"));
  if (plants.includes("stale-read")) {
    // A read, after a put completed, that returns what was there before it.
    const t = history.reduce((m, op) => Math.max(m, Number.isFinite(op.return) ? op.return : op.call), 0) + 1;
    history.push({ clientId: 9001, input: { op: "put", key: "planted", value: "new" }, output: { ok: true }, call: t, return: t + 1 });
    history.push({ clientId: 9002, input: { op: "get", key: "planted" }, output: { value: null }, call: t + 2, return: t + 3 });
  }
  if (plants.includes("lost-hold")) {
    // An agent releases an image behind the suite's back.
    for (const h of H.hosts) {
      const imgs = (await H.api(h, "GET", "/images")).body as { reference: string; heldHere: boolean }[];
      const held = imgs.find((i) => i.heldHere);
      if (held) {
        await H.api(h, "POST", "/rmi?timeoutMs=10000", { ref: held.reference });
        break;
      }
    }
  }
}
