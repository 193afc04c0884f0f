// make bench-start: container start time with wharf's snapshotter beside
// containerd's own overlayfs snapshotter: same image, same containerd, same
// run.
//
// An eight-layer busybox image (built with umoci, pushed to a local
// registry) is made present in both snapshotters before anything is timed:
// `wharf pull REF --containerd SOCK` registers it with wharf (its layers are
// the shared store's directories), `ctr image pull --plain-http REF` unpacks
// it into overlayfs. Then `ctr run --rm --snapshotter S REF ID echo ready`
// alternates between the two (the order flips every pair), each with a new
// container id; a run is timed from the spawn of ctr until the first byte of
// the container's stdout. ctr's exit (the task's and container's deletion)
// is awaited, untimed, before the next run. One run of each first checks
// that the container's root is an overlay of every layer, wharf's lower dirs
// being the shared store's.
//
// Prints a table and, as the last line, JSON with p50, p90 and mean of each
// and the ratio of the p50s (wharf / overlayfs; target <= 1.05).
//
//   BENCH_RUNS=20      timed runs of each
//   BENCH_WARMUP=2     untimed runs of each first
//   BENCH_PAUSE_MS=0   pause before each run (e.g. 500: containerd's garbage
//                      collection of the previous container is over)
//   BENCH_PROFILE=1    where wharf's time goes: the agent logs every snapshots
//                      RPC (its own time per Stat, Prepare, Mounts, ...), and
//                      the snapshot calls of a ctr run are then made directly
//                      on containerd's API for both snapshotters, timed each

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { type Containerd, startContainerd } from "../deploy/local/containerd.js";
import { SNAPSHOTS_SERVICE, loadSnapshotsDefinition } from "../src/snapshotter/grpc.js";
import { type Proc, TestCluster, status, until } from "../test/helpers/agents.js";
import { ImageBuilder, busyboxBase, busyboxChanges } from "../test/helpers/images.js";
import { type RunningRegistry, startRegistry } from "../test/helpers/registry.js";

const RUNS = Number(process.env.BENCH_RUNS ?? 20);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 2);
const PROFILE = process.env.BENCH_PROFILE === "1";
const PAUSE_MS = Number(process.env.BENCH_PAUSE_MS ?? 0);
const SNAPSHOTTERS = ["wharf", "overlayfs"] as const;
type Sn = (typeof SNAPSHOTTERS)[number];

interface Stats {
  p50Ms: number;
  p90Ms: number;
  meanMs: number;
}

const round = (x: number): number => Math.round(x * 100) / 100;

function stats(xs: readonly number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number): number => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]!;
  return { p50Ms: round(q(0.5)), p90Ms: round(q(0.9)), meanMs: round(s.reduce((a, b) => a + b, 0) / s.length) };
}

/** The image: busybox, the test changes on top, then six layers an application image might add. */
function buildImage(dir: string): ImageBuilder {
  const img = new ImageBuilder(dir).layer(busyboxBase).layer(busyboxChanges);
  // Configuration: a few hundred small files.
  img.layer((root) => {
    for (let d = 0; d < 20; d++) {
      mkdirSync(join(root, "etc/app/conf.d", `part-${d}`), { recursive: true });
      for (let f = 0; f < 15; f++) writeFileSync(join(root, "etc/app/conf.d", `part-${d}`, `${f}.conf`), `key_${d}_${f} = ${randomBytes(24).toString("hex")}\n`);
    }
  });
  // Shared libraries: a few big files.
  img.layer((root) => {
    mkdirSync(join(root, "usr/lib/app"), { recursive: true });
    for (let i = 0; i < 4; i++) writeFileSync(join(root, "usr/lib/app", `libpart${i}.so.1`), randomBytes(2 << 20));
    symlinkSync("libpart0.so.1", join(root, "usr/lib/app/libpart0.so"));
  });
  // A runtime's standard library: many files in a deep tree.
  img.layer((root) => {
    for (let a = 0; a < 8; a++) {
      for (let b = 0; b < 8; b++) {
        const d = join(root, "usr/lib/runtime", `pkg${a}`, `mod${b}`);
        mkdirSync(d, { recursive: true });
        for (let f = 0; f < 8; f++) writeFileSync(join(d, `f${f}.py`), randomBytes(1024 + f * 512).toString("base64"));
      }
    }
  });
  // The application itself.
  img.layer((root) => {
    mkdirSync(join(root, "app/bin"), { recursive: true });
    writeFileSync(join(root, "app/bin/start"), "#!/bin/sh\necho started\n");
    chmodSync(join(root, "app/bin/start"), 0o755);
    writeFileSync(join(root, "app/data.bin"), randomBytes(1 << 20));
  });
  // An upgrade: files replaced and deleted in lower layers (whiteouts).
  img.layer((root) => {
    rmSync(join(root, "usr/lib/runtime/pkg7"), { recursive: true });
    rmSync(join(root, "etc/app/conf.d/part-0/0.conf"));
    writeFileSync(join(root, "usr/lib/app/libpart1.so.1"), randomBytes(1 << 20));
    cpSync(join(root, "etc/passwd"), join(root, "etc/passwd.orig"));
  });
  // Last touches.
  img.layer((root) => {
    writeFileSync(join(root, "etc/app/version"), "1.0\n");
    mkdirSync(join(root, "var/log/app"), { recursive: true });
  });
  return img;
}

/** One `ctr run --rm`: ms from spawn to the first stdout byte; resolves after ctr exits. */
function runOnce(cd: Containerd, sn: Sn, ref: string, id: string, cmd: readonly string[], onChild: (c: ChildProcess | undefined) => void): Promise<{ ms: number; stdout: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn("ctr", ["--address", cd.socket, "run", "--rm", "--snapshotter", sn, ref, id, ...cmd], { stdio: ["ignore", "pipe", "pipe"] });
    onChild(child);
    let first: number | undefined;
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => {
      first ??= performance.now() - t0;
      out += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", reject);
    child.on("close", (code, signal) => {
      onChild(undefined);
      if (code !== 0 || first === undefined) reject(new Error(`ctr run --snapshotter ${sn} ${id} failed (${code ?? signal}): ${err.trim()}`));
      else resolve({ ms: first, stdout: out });
    });
  });
}

/** Committed snapshots that containerd knows in snapshotter `sn`. */
function committed(cd: Containerd, sn: Sn): number {
  const r = cd.ctr(["snapshots", "--snapshotter", sn, "ls"]);
  if (r.status !== 0) throw new Error(`ctr snapshots --snapshotter ${sn} ls: ${r.stderr}`);
  return r.stdout.split("\n").filter((l) => / Committed\s*$/.test(l)).length;
}

/** The lower dirs of the container's root overlay, as the container's /proc/mounts shows them. */
function lowerDirs(mounts: string): string[] {
  const root = mounts.split("\n").find((l) => l.split(" ")[1] === "/");
  const opt = root?.split(" ")[3]?.split(",").find((o) => o.startsWith("lowerdir="));
  if (!opt) throw new Error(`the container's root is not an overlay:\n${mounts}`);
  return opt.slice("lowerdir=".length).split(":");
}

/** Mount points under any of `roots`, deepest first. */
function mountsUnder(roots: readonly string[]): string[] {
  const points = readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4])
    .filter((p): p is string => p !== undefined)
    .map((p) => p.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  return points.filter((p) => roots.some((r) => p === r || p.startsWith(`${r}/`))).sort((a, b) => b.length - a.length);
}

/** Per-RPC time inside the agent, from its debug log ("snapshots rpc" lines). */
function rpcTimes(log: string, from: number): Map<string, number[]> {
  const m = new Map<string, number[]>();
  for (const line of log.slice(from).split("\n")) {
    if (!line.includes('"snapshots rpc')) continue;
    try {
      const j = JSON.parse(line) as { rpc?: string; ms?: number };
      if (j.rpc && typeof j.ms === "number") m.set(j.rpc, [...(m.get(j.rpc) ?? []), j.ms]);
    } catch {
      // a line cut by the pipe
    }
  }
  return m;
}

/** The committed snapshot no other snapshot has as parent: the image's top layer (same chain id in both). */
function topChainID(cd: Containerd, sn: Sn): string {
  const rows = cd.ctr(["snapshots", "--snapshotter", sn, "ls"]).stdout.split("\n").slice(1).map((l) => l.trim().split(/\s+/));
  const done = rows.filter((r) => r.at(-1) === "Committed");
  const parents = new Set(done.map((r) => (r.length === 3 ? r[1] : "")));
  const top = done.filter((r) => !parents.has(r[0]!));
  if (top.length !== 1) throw new Error(`${sn}: ${top.length} top snapshots`);
  return top[0]![0]!;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A client of the snapshots API served on the unix socket `socket` (containerd's, or the agent's). */
function snapshotsClient(socket: string): any {
  const pkg = grpc.loadPackageDefinition(loadSnapshotsDefinition());
  let svc: any = pkg;
  for (const part of SNAPSHOTS_SERVICE.split(".")) svc = svc[part];
  return new (svc as grpc.ServiceClientConstructor)(`unix://${socket}`, grpc.credentials.createInsecure());
}

/**
 * The snapshot calls of one `ctr run` (Stat of the image's chain id, Prepare
 * of the container's snapshot on it, Mounts twice, Remove), made directly on
 * containerd's snapshots API: ms per call and snapshotter, `n` rounds each,
 * alternating, a pause after each Remove so that containerd's GC is done.
 */
async function snapshotCalls(cd: Containerd, top: string, n: number, prefix: string): Promise<Record<Sn, Map<string, number[]>>> {
  const client = snapshotsClient(cd.socket);
  // Under a lease, as ctr run's calls are: containerd's GC removes snapshots that nothing references.
  const lease = `${prefix}-calls`;
  const l = cd.ctr(["leases", "create", "--id", lease, "--expires", "10m"]);
  if (l.status !== 0) throw new Error(`ctr leases create: ${l.stderr}`);
  const md = new grpc.Metadata();
  md.set("containerd-namespace", "default");
  md.set("containerd-lease", lease);
  const call = (method: string, req: object): Promise<number> =>
    new Promise((resolve, reject) => {
      const t0 = performance.now();
      client[method](req, md, (err: grpc.ServiceError | null) => (err ? reject(new Error(`${method}: ${err.message}`)) : resolve(performance.now() - t0)));
    });
  const out: Record<Sn, Map<string, number[]>> = { wharf: new Map(), overlayfs: new Map() };
  const add = (sn: Sn, rpc: string, ms: number): void => void out[sn].set(rpc, [...(out[sn].get(rpc) ?? []), ms]);
  try {
    for (let i = 0; i < n + 1; i++) {
      for (const snapshotter of i % 2 === 0 ? SNAPSHOTTERS : [...SNAPSHOTTERS].reverse()) {
        const key = `${prefix}-calls-${snapshotter}-${i}`;
        const t = [
          ["Stat", await call("Stat", { snapshotter, key: top })],
          ["Prepare", await call("Prepare", { snapshotter, key, parent: top, labels: {} })],
          ["Mounts", await call("Mounts", { snapshotter, key })],
          ["Mounts", await call("Mounts", { snapshotter, key })],
          ["Remove", await call("Remove", { snapshotter, key })],
        ] as const;
        // The first round warms the connections up.
        if (i > 0) for (const [rpc, ms] of t) add(snapshotter, rpc, ms);
        await sleep(50);
      }
    }
  } finally {
    client.close();
    cd.ctr(["leases", "delete", lease]);
  }
  return out;
}

/**
 * Stat of the image's chain id sent straight to the agent's snapshotter
 * socket, without containerd in between: the agent's gRPC round trip alone
 * (`n` calls after 20 to warm up; ms each).
 */
async function agentStats(sock: string, top: string, n: number): Promise<number[]> {
  const client = snapshotsClient(sock);
  const out: number[] = [];
  try {
    for (let i = 0; i < n + 20; i++) {
      const t0 = performance.now();
      await new Promise<void>((resolve, reject) => client.Stat({ key: top }, (err: Error | null) => (err ? reject(err) : resolve())));
      if (i >= 20) out.push(performance.now() - t0);
      await sleep(10);
    }
  } finally {
    client.close();
  }
  return out;
}

function stopAgent(p: Proc): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => p.child.kill("SIGKILL"), 5000);
    p.child.once("exit", () => (clearTimeout(t), resolve()));
    p.child.kill("SIGTERM");
  });
}

async function main(): Promise<void> {
  const ac = new AbortController();
  process.once("SIGINT", () => ac.abort(new Error("interrupted")));
  const work = mkdtempSync(join(tmpdir(), "wharf-bench-start-"));
  const prefix = `wharf-bench-${process.pid}`;
  let registry: RunningRegistry | undefined;
  let image: ImageBuilder | undefined;
  let cluster: TestCluster | undefined;
  let agent: Proc | undefined;
  let cd: Containerd | undefined;
  let running: ChildProcess | undefined;
  try {
    registry = await startRegistry();
    image = buildImage(join(work, "image"));
    image.push(registry.host, "bench/app", "1.0");
    const ref = `${registry.host}/bench/app:1.0`;

    if (PROFILE) process.env.WHARF_LOG_LEVEL = "debug";
    cluster = new TestCluster(["--insecure-registry", registry.host]);
    const sock = join(cluster.root, "sn.sock");
    const a = cluster.start("a", "bootstrap", { args: ["--snapshotter-socket", sock, "--voters", "1"] });
    agent = a;
    await until("the agent to lead", async () => ((await status(a).catch(() => undefined))?.leader ? true : undefined));
    cd = await startContainerd({ dir: join(work, "containerd"), wharfSocket: sock }, ac.signal);

    // Present in both snapshotters before anything is timed.
    const w = spawnSync(process.execPath, ["--import", "tsx", "src/cli/wharf.ts", "--api", a.api, "pull", ref, "--containerd", cd.socket, "--json"], { encoding: "utf8" });
    if (w.status !== 0) throw new Error(`wharf pull failed (${w.status}): ${w.stderr}`);
    const layers = (JSON.parse(w.stdout) as { layers: unknown[] }).layers.length;
    const p = cd.ctr(["image", "pull", "--plain-http", ref], { timeoutMs: 120_000 });
    if (p.status !== 0) throw new Error(`ctr image pull failed: ${p.stderr}`);
    for (const sn of SNAPSHOTTERS) {
      const n = committed(cd, sn);
      if (n < layers) throw new Error(`${sn} holds ${n} committed snapshots, the image has ${layers} layers`);
    }
    const before = Object.fromEntries(SNAPSHOTTERS.map((sn) => [sn, committed(cd!, sn)])) as Record<Sn, number>;

    // Both roots are overlays of every layer; wharf's lower dirs are the shared store's.
    let seq = 0;
    const track = (c: ChildProcess | undefined): void => void (running = c);
    for (const sn of SNAPSHOTTERS) {
      const r = await runOnce(cd, sn, ref, `${prefix}-check-${sn}`, ["cat", "/proc/mounts"], track);
      const lower = lowerDirs(r.stdout);
      if (lower.length !== layers) throw new Error(`${sn}: ${lower.length} lower dirs for ${layers} layers`);
      const shared = join(cluster.root, "shared");
      if (sn === "wharf" ? !lower.every((d) => d.startsWith(shared)) : lower.some((d) => d.startsWith(shared))) {
        throw new Error(`${sn}: unexpected lower dirs ${lower.join(":")}`);
      }
    }

    console.log(`image: ${layers} layers; ${WARMUP} warm-up and ${RUNS} timed runs of each, alternating`);
    const times: Record<Sn, number[]> = { wharf: [], overlayfs: [] };
    let logFrom = 0;
    for (let i = 0; i < WARMUP + RUNS; i++) {
      if (i === WARMUP) logFrom = a.log.length;
      const order = i % 2 === 0 ? SNAPSHOTTERS : ([...SNAPSHOTTERS].reverse() as Sn[]);
      const row: string[] = [];
      for (const sn of order) {
        ac.signal.throwIfAborted();
        if (PAUSE_MS > 0) await sleep(PAUSE_MS);
        const r = await runOnce(cd, sn, ref, `${prefix}-${sn}-${seq++}`, ["echo", "ready"], track);
        if (r.stdout !== "ready\n") throw new Error(`${sn}: unexpected output ${JSON.stringify(r.stdout)}`);
        if (i >= WARMUP) times[sn].push(r.ms);
        row.push(`${sn} ${r.ms.toFixed(1)} ms`);
      }
      console.log(`${i < WARMUP ? "warm-up" : "run"} ${i < WARMUP ? i + 1 : i - WARMUP + 1}: ${row.join(", ")}`);
    }
    for (const sn of SNAPSHOTTERS) {
      if (committed(cd, sn) !== before[sn]) throw new Error(`${sn}: the image's snapshots changed during the runs (unpacked again?)`);
    }

    const res = { wharf: stats(times.wharf), overlayfs: stats(times.overlayfs) };
    const ratio = Math.round((res.wharf.p50Ms / res.overlayfs.p50Ms) * 1000) / 1000;
    const cell = (x: number): string => x.toFixed(1).padStart(10);
    console.log(`\n${"".padEnd(12)}${"p50 ms".padStart(10)}${"p90 ms".padStart(10)}${"mean ms".padStart(10)}`);
    for (const sn of SNAPSHOTTERS) console.log(`${sn.padEnd(12)}${cell(res[sn].p50Ms)}${cell(res[sn].p90Ms)}${cell(res[sn].meanMs)}`);
    if (PROFILE) {
      console.log(`\nthe agent's time per snapshots RPC during the timed runs (${RUNS} wharf runs):`);
      console.log(`${"".padEnd(12)}${"calls".padStart(10)}${"p50 ms".padStart(10)}${"mean ms".padStart(10)}${"total ms".padStart(10)}`);
      for (const [rpc, ms] of rpcTimes(a.log, logFrom)) {
        const s = stats(ms);
        const total = ms.reduce((x, y) => x + y, 0);
        console.log(`${rpc.padEnd(12)}${String(ms.length).padStart(10)}${cell(s.p50Ms)}${cell(s.meanMs)}${cell(total)}`);
      }
      const calls = await snapshotCalls(cd, topChainID(cd, "wharf"), RUNS, prefix);
      if (topChainID(cd, "overlayfs") !== topChainID(cd, "wharf")) throw new Error("the two snapshotters hold different chains");
      console.log(`\nthe snapshot calls of one ctr run, made directly on containerd's API (${RUNS} rounds, p50 / mean ms):`);
      console.log(`${"".padEnd(12)}${SNAPSHOTTERS.map((sn) => sn.padStart(20)).join("")}`);
      for (const rpc of ["Stat", "Prepare", "Mounts", "Remove"]) {
        const cells = SNAPSHOTTERS.map((sn) => {
          const s = stats(calls[sn].get(rpc) ?? [0]);
          return `${s.p50Ms.toFixed(2)} / ${s.meanMs.toFixed(2)}`.padStart(20);
        });
        console.log(`${rpc.padEnd(12)}${cells.join("")}`);
      }
      const direct = stats(await agentStats(sock, topChainID(cd, "wharf"), RUNS * 5));
      console.log(`\nStat sent straight to the agent's socket (no containerd): p50 ${direct.p50Ms.toFixed(2)} ms, mean ${direct.meanMs.toFixed(2)} ms`);
    }
    // Each pair ran back to back: the median of their differences is less
    // exposed to the machine's load changing during the run.
    const diffs = times.wharf.map((w, i) => w - times.overlayfs[i]!).sort((x, y) => x - y);
    console.log(`\nwharf - overlayfs, run by run (median): ${diffs[Math.floor(diffs.length / 2)]!.toFixed(1)} ms`);
    console.log(`wharf / overlayfs start time (p50): ${ratio.toFixed(3)} (target <= 1.05)`);
    console.log(JSON.stringify({ ...res, ratio }));
  } finally {
    running?.kill("SIGKILL");
    if (cd) {
      // Containers left by an interrupted run: their tasks, then themselves.
      const left = cd.ctr(["containers", "ls", "-q"]).stdout.split("\n").filter((id) => id.startsWith(prefix));
      for (const id of left) {
        cd.ctr(["tasks", "kill", "-s", "SIGKILL", id]);
        cd.ctr(["tasks", "rm", "-f", id]);
        cd.ctr(["containers", "rm", id]);
      }
      await cd.stop();
    }
    if (agent) await stopAgent(agent);
    for (const m of mountsUnder([work, ...(cluster ? [cluster.root] : [])])) spawnSync("umount", ["-l", m]);
    cluster?.stop();
    await registry?.stop();
    image?.cleanup();
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
