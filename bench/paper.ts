// make bench / make bench-full: the Wharf paper's pull experiments (§6.1)
// on N hosts in network namespaces (deploy/local/hosts.ts), against real
// containerd pulls, in the same run:
//
//   containerd-local         each host's containerd (overlayfs snapshotter,
//                            its root on the host's own directory) runs
//                            `ctr image pull --plain-http REF`, all hosts at
//                            once (the paper's DockerLocal)
//   containerd-shared-naive  the same with each host's containerd root in a
//                            directory of its own on the shared store
//                            (DockerNFS)
//   wharf                    every host's agent pulls the image into the one
//                            shared store and registers it in the host's
//                            containerd, all hosts at once: the request of
//                            `wharf pull REF --containerd SOCK --json`, sent
//                            to the agent's API socket by this process (the
//                            CLI's own start-up, a Node process with tsx, is
//                            measured apart as `wharf-cli` in the small-image
//                            experiment)
//
// One dimension varies per experiment (layers per image, layer size, files
// per layer, registry bandwidth, hosts, pull workers per host), plus a
// realistic image built from Debian packages and a small image on one host.
// Every configuration of every point pulls an image of its own (fresh random
// layers, or a variant of the Debian layers with a file of random bytes
// each), pushed just before its run: no layer is cached anywhere. The
// daemons are warm: each test bed first pulls a small image through every
// configuration, untimed, as a host that has been up a while. `sync` runs
// (untimed) before each run, so that no run pays for another's dirty pages.
//
// Per point and configuration: the time from the start of the pulls until
// each host's pull returned (mean and p99 over hosts), bytes the registry
// served (its access log), bytes added to the shared store and to all
// stores, and CPU seconds of the processes doing the work (containerd, ctr,
// the agents; /proc/PID/stat and /usr/bin/time).
//
// Writes bench/results/<experiment>-<quick|full>.json, bench/results/summary.json,
// bench/plots/*.svg and bench/REPORT.md (with every result file present, so
// that a quick run keeps the tables of an earlier full run). The last line
// printed is JSON: registryBytesRatio, speedupVsLocal, hosts, limitRatio,
// smallImageOverhead.
//
//   tsx bench/paper.ts --quick | --full [--only EXP,EXP] [--reps N] [--agent-args "FLAGS"]
//
// --only runs some experiments (hosts, small, debian, layers, layer-size,
// files, bandwidth, workers); --reps repeats each point (medians reported);
// --agent-args gives every agent extra flags (e.g. "--lease-ms 10000").

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Containerd, inNetns, startContainerd } from "../deploy/local/containerd.js";
import { type LocalHost, LocalHosts } from "../deploy/local/hosts.js";
import { type BuiltImage, DebianLayers, syntheticImage } from "./paper-images.js";
import { type ConfigSummary, type ExperimentResult, type PointResult, type RunResult, type Summary, CONFIG_NAMES, type ConfigName, writeReport } from "./paper-report.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = join(HERE, "..");
const RESULTS = join(HERE, "results");
const CACHE = join(HERE, ".cache", "paper");
const NS = "bench";
const MB = 1e6;
const IDLE_SAMPLE_MS = 5000;
const CLK_TCK = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100;

// ---------------------------------------------------------------- the plan

type ImageSpec = { kind: "synthetic"; layers: number; layerBytes: number; filesPerLayer: number } | { kind: "debian" };

interface PointSpec {
  readonly x: number;
  readonly hosts: number;
  readonly rateMbit: number;
  readonly workers: number;
  readonly image: ImageSpec;
  readonly reps: number;
  readonly configs: readonly ConfigName[];
}

interface ExperimentSpec {
  readonly name: string;
  readonly title: string;
  readonly paper: string;
  readonly dimension: string;
  readonly points: readonly PointSpec[];
}

const MAIN: readonly ConfigName[] = ["containerd-local", "containerd-shared-naive", "wharf"];
/**
 * The order in which a point's configurations run: the one that writes
 * least first. A run that follows one that wrote and deleted a gigabyte
 * (a 10-host containerd run and its clean-up) was 0.04-0.2 s slower, even
 * after `sync` and a quiet machine (5 interleaved pairs of 10-host wharf
 * pulls of 4.4-4.6 s; the machine showed no CPU or IO pressure, and after
 * a further 15 s wait the effect was not seen, in 2 pairs). That is up to
 * 4 % of a 10-host wharf pull and under 0.5 % of a containerd pull of the
 * same image, which takes over 30 s: running wharf first costs the others
 * least.
 */
const RUN_ORDER: readonly ConfigName[] = ["wharf", "wharf-cli", "containerd-local", "containerd-shared-naive"];
if (CONFIG_NAMES.some((c) => !RUN_ORDER.includes(c))) throw new Error("RUN_ORDER must name every configuration");
/** The paper's 20 layers of 50 MB on 10 hosts, scaled down 20×: 20 layers of 2.5 MB (one file each). */
const STD = { layers: 20, layerBytes: 2.5 * MB, filesPerLayer: 1 };
const STD_HOSTS = 10;
const STD_RATE = 100;
const STD_WORKERS = 3;

function plan(full: boolean, reps: number): ExperimentSpec[] {
  const pt = (x: number, o: Partial<Omit<PointSpec, "x">> & { image?: ImageSpec } = {}): PointSpec => ({
    x,
    hosts: o.hosts ?? STD_HOSTS,
    rateMbit: o.rateMbit ?? STD_RATE,
    workers: o.workers ?? STD_WORKERS,
    image: o.image ?? { kind: "synthetic", ...STD },
    reps: o.reps ?? reps,
    configs: o.configs ?? MAIN,
  });
  const syn = (layers: number, layerBytes: number, filesPerLayer = 1): ImageSpec => ({ kind: "synthetic", layers, layerBytes, filesPerLayer });
  const image = STD.layers * STD.layerBytes;
  const all: ExperimentSpec[] = [
    {
      name: "hosts",
      title: "Number of hosts",
      paper: "§6.1.5",
      dimension: "hosts",
      points: (full ? [1, 3, 5, 10, 15, 20] : [1, 3, 10]).map((n) => pt(n, { hosts: n })),
    },
    {
      name: "small",
      title: "Small image on one host",
      paper: "§6.1.2, its smallest layers",
      dimension: "hosts",
      points: [pt(1, { hosts: 1, image: syn(10, 0.5 * MB), reps: Math.max(5, reps), configs: [...MAIN, "wharf-cli"] })],
    },
    {
      name: "debian",
      title: "Realistic image (Debian packages)",
      paper: "§6.1 with a real image",
      dimension: "hosts",
      points: (full ? [1, 3, 10] : [1, 10]).map((n) => pt(n, { hosts: n, image: { kind: "debian" } })),
    },
  ];
  if (!full) return all;
  return [
    ...all,
    {
      name: "layers",
      title: "Layers per image (image size fixed at 50 MB)",
      paper: "§6.1.1",
      dimension: "layers per image",
      points: [2, 5, 10, 20, 40].map((l) => pt(l, { image: syn(l, image / l) })),
    },
    {
      name: "layer-size",
      title: "Layer size (20 layers)",
      paper: "§6.1.2",
      dimension: "MB per layer",
      points: [0.25, 0.5, 1, 2.5, 5].map((s) => pt(s, { image: syn(20, s * MB) })),
    },
    {
      name: "files",
      title: "Files per layer (20 layers of 2.5 MB)",
      paper: "§6.1.3",
      dimension: "files per layer",
      points: [1, 50, 300, 900].map((f) => pt(f, { image: syn(20, STD.layerBytes, f) })),
    },
    {
      name: "bandwidth",
      title: "Registry bandwidth",
      paper: "§6.1.4",
      dimension: "registry link, Mbit/s",
      points: [100, 250, 500, 1000].map((r) => pt(r, { rateMbit: r })),
    },
    {
      name: "workers",
      title: "Pull workers per host (3 hosts, 10 layers of 5 MB)",
      paper: "§6.1.6",
      dimension: "pull workers per host",
      points: [1, 3, 9].map((w) => pt(w, { hosts: 3, workers: w, image: syn(10, 5 * MB) })),
    },
  ];
}

// ---------------------------------------------------------------- processes

interface Exit {
  code: number | null;
  stdout: string;
  stderr: string;
  seconds: number;
  /** wharf (API) only: seconds until the manifest was resolved. */
  phases?: { resolved: number };
}

const children = new Set<ChildProcess>();

function run(cmd: string, args: readonly string[]): Promise<Exit> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn(cmd, args, { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
    children.add(p);
    let stdout = "";
    let stderr = "";
    p.stdout!.on("data", (d: Buffer) => void (stdout = (stdout + d.toString()).slice(-20_000)));
    p.stderr!.on("data", (d: Buffer) => void (stderr = (stderr + d.toString()).slice(-20_000)));
    p.on("error", (e) => (children.delete(p), reject(e)));
    p.on("close", (code) => {
      children.delete(p);
      resolve({ code, stdout, stderr, seconds: (performance.now() - t0) / 1000 });
    });
  });
}

function sh(cmd: string, args: readonly string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr || r.error?.message}`);
  return r.stdout;
}

/** CPU seconds (user + system, with reaped children) of a process, or 0 once it is gone. */
function cpuOf(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    // Fields 14-17 of stat(5): utime stime cutime cstime; f[0] is field 3.
    return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/** The process that setpriv and nsenter exec'd into (they do not fork for --net alone); the leaf if they did. */
function leafPid(pid: number | undefined): number | undefined {
  let p = pid;
  for (let i = 0; p !== undefined && i < 4; i++) {
    const comm = readFileSync(`/proc/${p}/comm`, "utf8").trim();
    if (comm !== "setpriv" && comm !== "nsenter") return p;
    const kids = readFileSync(`/proc/${p}/task/${p}/children`, "utf8").trim().split(/\s+/).filter(Boolean);
    p = kids.length ? Number(kids[0]) : undefined;
  }
  return p;
}

/** Apparent bytes under `paths` (hard links once). */
async function du(paths: readonly string[]): Promise<number> {
  const present = paths.filter((p) => existsSync(p));
  if (present.length === 0) return 0;
  const r = await run("du", ["-scb", ...present]);
  return Number(r.stdout.trim().split("\n").at(-1)!.split("\t")[0]);
}

/**
 * Pushes an OCI layout to the bed's registry (skopeo in the registry's
 * namespace) and returns how many requests the registry's access log held
 * once the push was over: the next run's requests are those after it.
 *
 * Not LocalHosts.push: that one blocks the event loop (spawnSync) of the
 * process that also drains the registry's log pipe, and a push of an image
 * with many layers fills the pipe: the registry then blocks on its log, and
 * skopeo waits for it for ever.
 */
async function push(bed: Bed, img: BuiltImage, repo: string): Promise<number> {
  const [c, a] = inNetns(`${bed.lh.prefix}-reg`, "skopeo", ["copy", "--quiet", "--dest-tls-verify=false", `oci:${img.layout}:${img.tag}`, `docker://${bed.lh.registryHost}/${repo}:1`]);
  const r = await run(c, a);
  if (r.code !== 0) throw new Error(`skopeo copy to ${repo}: ${r.stderr.trim()}`);
  let n = -1;
  for (;;) {
    await sleep(150);
    const m = bed.lh.registryRequests().length;
    if (m === n) return n;
    n = m;
  }
}

// ---------------------------------------------------------------- the test bed

/** N hosts (LocalHosts, each with an agent and a containerd) and, per host, a naive containerd rooted in the shared store. */
class Bed {
  readonly naive: Containerd[] = [];
  rateMbit: number;
  /** CPU cores the idle agents use (heartbeats, gossip, leases), measured once the bed is up. */
  idleAgentCores = 0;
  upSeconds = 0;
  private pids = new Map<string, number | undefined>();

  private constructor(
    readonly lh: LocalHosts,
    readonly workers: number,
  ) {
    this.rateMbit = lh.opts.rateMbit ?? 100;
  }

  static async up(n: number, rateMbit: number, workers: number, extraAgentArgs: readonly string[]): Promise<Bed> {
    const t0 = performance.now();
    // The agents' own default tick (100 ms), as users run them.
    const lh = await LocalHosts.up({ n, rateMbit, containerd: true, tickMs: 100, agentArgs: ["--pull-workers", String(workers), ...extraAgentArgs] });
    const bed = new Bed(lh, workers);
    try {
      for (const h of lh.hosts) {
        bed.naive.push(await startContainerd({ dir: join(lh.shared, `naive-${h.name}`), wharfSocket: h.snapshotterSocket, netns: h.netns }));
      }
      bed.upSeconds = round((performance.now() - t0) / 1000, 1);
      await sleep(1000);
      const pids = bed.agentPids();
      const c0 = pids.map(cpuOf);
      const s0 = performance.now();
      await sleep(IDLE_SAMPLE_MS);
      bed.idleAgentCores = round(sum(pids.map((p, i) => cpuOf(p) - c0[i]!)) / ((performance.now() - s0) / 1000), 2);
      return bed;
    } catch (e) {
      await bed.down();
      throw e;
    }
  }

  get hosts(): LocalHost[] {
    return this.lh.hosts;
  }

  /** The pid of the real process behind a spawned daemon (cached). */
  pid(key: string, spawned: number | undefined): number | undefined {
    if (!this.pids.has(key)) this.pids.set(key, leafPid(spawned));
    return this.pids.get(key);
  }

  agentPids(): (number | undefined)[] {
    return this.hosts.map((h) => this.pid(`agent-${h.name}-${h.agent.pid}`, h.agent.pid));
  }

  hostContainerdPids(): (number | undefined)[] {
    return this.hosts.map((h) => this.pid(`ctrd-${h.name}`, h.containerd!.child.pid));
  }

  naiveContainerdPids(): (number | undefined)[] {
    return this.naive.map((c, i) => this.pid(`naive-${i}`, c.child.pid));
  }

  /** Changes the registry link's rate (tbf) in place. */
  setRate(mbit: number): void {
    if (mbit === this.rateMbit) return;
    // A bucket of at least 1 ms of traffic: 64 kB alone caps tbf below 1 Gbit/s.
    const burst = Math.max(64 * 1024, Math.round((mbit * 1e6) / 8 / 1000));
    sh("ip", ["netns", "exec", `${this.lh.prefix}-reg`, "tc", "qdisc", "change", "dev", "eth0", "root", "tbf", "rate", `${mbit}mbit`, "burst", String(burst), "latency", "50ms"]);
    this.rateMbit = mbit;
  }

  /** Everything in the shared store but the naive containerds' directories. */
  wharfStoreDirs(): string[] {
    return readdirSync(this.lh.shared)
      .filter((e) => !e.startsWith("naive-"))
      .map((e) => join(this.lh.shared, e));
  }

  async down(): Promise<void> {
    await Promise.all(this.naive.map((c) => c.stop().catch(() => {})));
    await this.lh.down();
  }
}

// ---------------------------------------------------------------- one run

function ctrPull(h: LocalHost, c: Containerd, ref: string, workers: number, timeFile: string): Promise<Exit> {
  const [cmd, args] = inNetns(h.netns, "/usr/bin/time", [
    "-f", "%U %S", "-o", timeFile,
    "ctr", "--address", c.socket, "-n", NS, "images", "pull", "--plain-http", "--max-concurrent-downloads", String(workers), ref,
  ]);
  return run(cmd, args);
}

/** `wharf pull REF --containerd SOCK --json`'s request to the agent's API: resolves when the agent answered with a result. */
function wharfApiPull(h: LocalHost, ref: string): Promise<Exit> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const body = JSON.stringify({ ref, containerd: { socket: h.containerd!.socket, namespace: NS, snapshotter: "wharf" } });
    const req = request({ socketPath: h.api, method: "POST", path: "/pull", headers: { "content-type": "application/json" } }, (res) => {
      let text = "";
      let resolved = 0;
      let buf = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        text = text.length > 1 << 20 ? text.slice(-(1 << 19)) + d : text + d;
        buf += d;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          const e = (JSON.parse(line) as { event?: { type: string } }).event;
          if (e?.type === "resolved") resolved = (performance.now() - t0) / 1000;
        }
      });
      res.on("end", () => {
        const last = text.trim().split("\n").at(-1) ?? "";
        let v: { result?: unknown; error?: { message: string } } = {};
        try {
          v = JSON.parse(last) as typeof v;
        } catch {
          /* reported below */
        }
        const ok = res.statusCode === 200 && v.result !== undefined;
        resolve({ code: ok ? 0 : 1, stdout: ok ? JSON.stringify(v.result) : "", stderr: ok ? "" : v.error?.message ?? last, seconds: (performance.now() - t0) / 1000, phases: { resolved } });
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}

function wharfCliPull(h: LocalHost, ref: string, timeFile: string): Promise<Exit> {
  const [cmd, args] = inNetns(h.netns, "/usr/bin/time", [
    "-f", "%U %S", "-o", timeFile,
    process.execPath, "--import", "tsx", join(REPO, "src", "cli", "wharf.ts"), "--api", h.api,
    "pull", ref, "--containerd", h.containerd!.socket, "--namespace", NS, "--json",
  ]);
  return run(cmd, args);
}

function timeFileCpu(file: string): number {
  try {
    const [u, s] = readFileSync(file, "utf8").trim().split("\n").at(-1)!.split(" ").map(Number);
    return (u ?? 0) + (s ?? 0);
  } catch {
    return 0;
  }
}

const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** CPU time busy and total (jiffies, all CPUs), and microseconds some task stalled on IO (0 without PSI). */
function machineCounters(): { busy: number; total: number; ioStallUs: number } {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = sum(cpu);
  const idle = (cpu[3] ?? 0) + (cpu[4] ?? 0);
  let ioStallUs = 0;
  try {
    ioStallUs = Number(/^some .*total=(\d+)/m.exec(readFileSync("/proc/pressure/io", "utf8"))?.[1] ?? 0);
  } catch {
    // No pressure stall information on this kernel: the CPU alone decides.
  }
  return { busy: total - idle, total, ioStallUs };
}

/**
 * Before each timed run (untimed): `sync`, then waits until a quarter of a
 * second passes with the CPUs at most a quarter busy and tasks stalled on
 * IO for at most a tenth of it, for at most 20 s. The previous run's
 * clean-up (a gigabyte of snapshots deleted after a 10-host containerd
 * run) and its writeback would otherwise go on in the next configuration's
 * time, whichever it is.
 */
async function quiet(): Promise<void> {
  await run("sync", []);
  const until = performance.now() + 20_000;
  let a = machineCounters();
  while (performance.now() < until) {
    await sleep(250);
    const b = machineCounters();
    const cpuBusy = (b.busy - a.busy) / Math.max(1, b.total - a.total);
    const ioStalled = (b.ioStallUs - a.ioStallUs) / 250_000;
    a = b;
    if (cpuBusy <= 0.25 && ioStalled <= 0.1) return;
  }
}

async function runConfig(bed: Bed, config: ConfigName, img: BuiltImage, ref: string, work: string, logOffset: number): Promise<RunResult> {
  const hosts = bed.hosts;
  const local = config === "containerd-local";
  const naive = config === "containerd-shared-naive";
  const isWharf = config === "wharf" || config === "wharf-cli";
  const daemonPids = local ? bed.hostContainerdPids() : naive ? bed.naiveContainerdPids() : [...bed.agentPids(), ...bed.hostContainerdPids()];
  const storeDirs = local
    ? hosts.map((h) => join(h.containerd!.dir, "root"))
    : naive
      ? bed.naive.map((c) => join(c.dir, "root"))
      : [...bed.wharfStoreDirs(), ...hosts.map((h) => join(h.containerd!.dir, "root"))];
  const sharedDirs = local ? [] : naive ? storeDirs : bed.wharfStoreDirs();
  const storedBefore = await du(storeDirs);
  const sharedBefore = await du(sharedDirs);
  await quiet();
  const cpuBefore = daemonPids.map(cpuOf);
  const timeFiles = hosts.map((h, i) => join(work, `time-${i}`));
  for (const f of timeFiles) rmSync(f, { force: true });
  const t0 = performance.now();
  // wharf: when every layer has been renamed into the shared store (polled; cheap).
  let layersPresent = 0;
  const missing = new Set(img.layers.map((l) => join(bed.lh.shared, "layers", "sha256", l.diffID.slice(7))));
  const look = (): void => {
    for (const m of missing) if (existsSync(m)) missing.delete(m);
    if (missing.size === 0 && layersPresent === 0) layersPresent = (performance.now() - t0) / 1000;
  };
  const poll = isWharf ? setInterval(look, 50) : undefined;
  // A stalled benchmark (stopped, or starved of CPU for seconds) shows as a late timer.
  let stalled = 0;
  let tick = performance.now();
  const watchdog = setInterval(() => {
    const now = performance.now();
    if (now - tick > 1500) stalled += (now - tick - 250) / 1000;
    tick = now;
  }, 250);
  const exits = await Promise.all(
    hosts.map(async (h, i) => {
      const e =
        config === "wharf"
          ? await wharfApiPull(h, ref)
          : config === "wharf-cli"
            ? await wharfCliPull(h, ref, timeFiles[i]!)
            : await ctrPull(h, local ? h.containerd! : bed.naive[i]!, ref, bed.workers, timeFiles[i]!);
      const offset = (performance.now() - t0) / 1000 - e.seconds;
      return { ...e, seconds: e.seconds + offset, ...(e.phases ? { phases: { resolved: e.phases.resolved + offset } } : {}) };
    }),
  );
  const cpuAfter = daemonPids.map(cpuOf);
  clearInterval(poll);
  // The last layer may land less than a poll before the pulls return.
  if (isWharf) look();
  clearInterval(watchdog);
  for (const [i, e] of exits.entries()) {
    if (e.code !== 0) throw new Error(`${config} on ${hosts[i]!.name}: pull of ${ref} failed (${e.code}): ${e.stderr.trim().slice(-2000)}`);
  }
  await sleep(300); // the registry's last access-log lines
  const reqs = bed.lh.registryRequests().slice(logOffset);
  const layerDigests = new Set(img.layers.map((l) => l.digest));
  let registryBytes = 0;
  let layerBytes = 0;
  let layerGets = 0;
  for (const r of reqs) {
    if (r.method !== "GET" || r.status >= 300) continue;
    registryBytes += r.bytes;
    const m = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(r.path);
    if (m && layerDigests.has(m[1]!)) {
      layerBytes += r.bytes;
      layerGets++;
    }
  }
  const clientCpu = config === "wharf" ? 0 : sum(timeFiles.map(timeFileCpu));
  const daemonCpu = sum(cpuAfter.map((a, i) => a - cpuBefore[i]!));
  const agentsCpu = isWharf ? sum(cpuAfter.slice(0, hosts.length).map((a, i) => a - cpuBefore[i]!)) : 0;
  return {
    hostSeconds: exits.map((e) => round(e.seconds, 3)),
    registryBytes,
    registryLayerBytes: layerBytes,
    registryLayerGets: layerGets,
    registryRequests: reqs.length,
    sharedBytes: Math.max(0, (await du(sharedDirs)) - sharedBefore),
    storedBytes: Math.max(0, (await du(storeDirs)) - storedBefore),
    cpuSeconds: round(daemonCpu + clientCpu, 2),
    cpu: { agents: round(agentsCpu, 2), containerd: round(daemonCpu - agentsCpu, 2), clients: round(clientCpu, 2) },
    stalledSeconds: round(stalled, 1),
    ...(config === "wharf"
      ? {
          phases: {
            resolved: round(sum(exits.map((e) => e.phases!.resolved)) / exits.length, 3),
            layersPresent: round(layersPresent, 3),
          },
        }
      : {}),
  };
}

/** Removes the image from every store of the configuration (untimed): keeps the disk bounded over a long run. */
async function cleanup(bed: Bed, config: ConfigName, ref: string): Promise<void> {
  const ctrds = config === "containerd-shared-naive" ? bed.naive : bed.hosts.map((h) => h.containerd!);
  await Promise.all(ctrds.map((c) => run(...inNetns(c.netns, "ctr", ["--address", c.socket, "-n", NS, "images", "rm", "--sync", ref]))));
  if (config === "wharf" || config === "wharf-cli") {
    for (const h of bed.hosts) await bed.lh.api(h, "POST", "/rmi?timeoutMs=60000", { ref }).catch(() => undefined);
  }
}

function round(x: number, d = 2): number {
  const f = 10 ** d;
  return Math.round(x * f) / f;
}

function quantile(xs: readonly number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

const median = (xs: readonly number[]): number => quantile(xs, 0.5);

function summarize(runs: readonly RunResult[]): ConfigSummary {
  const means = runs.map((r) => sum(r.hostSeconds) / r.hostSeconds.length);
  const p99s = runs.map((r) => quantile(r.hostSeconds, 0.99));
  return {
    meanSeconds: round(median(means), 3),
    p99Seconds: round(median(p99s), 3),
    registryBytes: median(runs.map((r) => r.registryBytes)),
    registryLayerBytes: median(runs.map((r) => r.registryLayerBytes)),
    sharedBytes: median(runs.map((r) => r.sharedBytes)),
    storedBytes: median(runs.map((r) => r.storedBytes)),
    cpuSeconds: round(median(runs.map((r) => r.cpuSeconds)), 2),
    runs: [...runs],
  };
}

/**
 * One untimed pull of a small image through every configuration of a test
 * bed before its points: daemons in use are warm (the agents' code compiled
 * by the JIT, containerd's and the registry's connections and caches), as
 * they are on a host that has been up for a while, and no configuration's
 * first point pays for a cold start the others do not.
 */
async function warmUp(bed: Bed, configs: readonly ConfigName[], work: string): Promise<void> {
  const t0 = performance.now();
  for (const config of configs) {
    const img = await syntheticImage(join(work, "warm-up"), { layers: 5, layerBytes: 200_000, filesPerLayer: 2 });
    const repo = `bench/warm${++imageCounter}`;
    const logOffset = await push(bed, img, repo);
    rmSync(img.layout, { recursive: true, force: true });
    const ref = `${bed.lh.registryHost}/${repo}:1`;
    try {
      await runConfig(bed, config, img, ref, work, logOffset);
    } finally {
      await cleanup(bed, config, ref);
    }
  }
  console.log(`  warm-up: a 1 MB image through ${configs.join(", ")} (untimed, ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
}

// ---------------------------------------------------------------- images

let debian: DebianLayers | undefined;
let imageCounter = 0;

async function buildImage(spec: ImageSpec, dir: string): Promise<BuiltImage> {
  if (spec.kind === "debian") {
    debian ??= new DebianLayers(CACHE);
    return debian.image(dir);
  }
  return syntheticImage(dir, spec);
}

// ---------------------------------------------------------------- main

function bedKey(p: PointSpec): string {
  return `${p.hosts}h-${p.workers}w`;
}

function pointKey(p: PointSpec): string {
  return JSON.stringify([p.hosts, p.rateMbit, p.workers, p.image, p.reps, p.configs]);
}

let active: Bed | undefined;
let stopping = false;
let workDir: string | undefined;

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const full = argv.includes("--full");
  if (!full && !argv.includes("--quick")) throw new Error('usage: tsx bench/paper.ts --quick | --full [--only EXP,EXP] [--reps N] [--agent-args "FLAGS"]');
  const repsArg = argv.indexOf("--reps");
  const reps = repsArg >= 0 ? Number(argv[repsArg + 1]) : 1;
  const agentArg = argv.indexOf("--agent-args");
  const agentArgs = agentArg >= 0 ? argv[agentArg + 1]!.split(/\s+/).filter(Boolean) : [];
  const onlyArg = argv.indexOf("--only");
  const only = onlyArg >= 0 ? new Set(argv[onlyArg + 1]!.split(",")) : undefined;
  const experiments = plan(full, reps).filter((e) => !only || only.has(e.name));
  const mode = full ? "full" : "quick";
  const started = new Date().toISOString();
  const t0 = performance.now();
  mkdirSync(RESULTS, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), "wharf-paper-"));
  workDir = work;

  // Points that several experiments share run once.
  const unique = new Map<string, PointSpec>();
  for (const e of experiments) for (const p of e.points) unique.set(pointKey(p), p);
  const measured = new Map<string, PointResult>();
  const beds = [...new Set([...unique.values()].map(bedKey))].sort((a, b) => Number.parseInt(a) - Number.parseInt(b));
  console.log(`${mode}: ${experiments.map((e) => e.name).join(", ")}; ${unique.size} points on ${beds.length} test beds; ${cpus().length} cores, load ${loadavg()[0]!.toFixed(1)}`);

  const assemble = (): ExperimentResult[] =>
    experiments
      .map((e) => ({
        name: e.name,
        title: e.title,
        paper: e.paper,
        dimension: e.dimension,
        mode,
        started,
        finished: new Date().toISOString(),
        machine: { cores: cpus().length, load: round(loadavg()[0]!, 1) },
        ...(agentArgs.length ? { agentArgs } : {}),
        points: e.points.filter((p) => measured.has(pointKey(p))).map((p) => ({ ...measured.get(pointKey(p))!, x: p.x })),
      }))
      .filter((e) => e.points.length > 0);
  // Each experiment's file is written once all of its points are in (an interrupted run leaves earlier files alone).
  const save = (): void => {
    for (const r of assemble()) {
      const e = experiments.find((x) => x.name === r.name)!;
      if (r.points.length === e.points.length) writeFileSync(join(RESULTS, `${r.name}-${mode}.json`), `${JSON.stringify(r, null, 1)}\n`);
    }
  };

  try {
    for (const key of beds) {
      const points = [...unique.entries()].filter(([, p]) => bedKey(p) === key).sort((a, b) => a[1].rateMbit - b[1].rateMbit);
      const first = points[0]![1];
      let bed: Bed;
      try {
        bed = await Bed.up(first.hosts, first.rateMbit, first.workers, agentArgs);
      } catch (e) {
        console.log(`\n== ${first.hosts} hosts: the test bed did not come up: ${(e as Error).message.slice(0, 2000)}`);
        for (const [pk, p] of points) measured.set(pk, failedPoint(p, undefined, new Map(), e));
        save();
        continue;
      }
      active = bed;
      console.log(`\n== ${first.hosts} hosts, ${first.workers} pull workers each (up in ${bed.upSeconds.toFixed(1)} s; the idle agents use ${bed.idleAgentCores} cores)`);
      try {
        await warmUp(bed, [...new Set(points.flatMap(([, p]) => p.configs))], work);
        for (const [pk, p] of points) {
          if (stopping) throw new Error("interrupted");
          const runs = new Map<ConfigName, RunResult[]>(p.configs.map((c) => [c, []]));
          let image: BuiltImage | undefined;
          try {
            bed.setRate(p.rateMbit);
            const order = RUN_ORDER.filter((c) => p.configs.includes(c));
            for (let rep = 0; rep < p.reps; rep++) {
              const images = await Promise.all(order.map((_, i) => buildImage(p.image, join(work, `img-${i}`))));
              image = images[0];
              for (const [i, config] of order.entries()) {
                const img = images[i]!;
                const repo = `bench/img${++imageCounter}`;
                const logOffset = await push(bed, img, repo);
                rmSync(img.layout, { recursive: true, force: true });
                const ref = `${bed.lh.registryHost}/${repo}:1`;
                try {
                  const r = await runConfig(bed, config, img, ref, work, logOffset);
                  runs.get(config)!.push(r);
                  const mean = sum(r.hostSeconds) / r.hostSeconds.length;
                  console.log(
                    `  ${describe(p)} ${config.padEnd(24)} mean ${mean.toFixed(2).padStart(7)} s  max ${Math.max(...r.hostSeconds).toFixed(2).padStart(7)} s  ` +
                      `registry ${(r.registryBytes / MB).toFixed(1).padStart(7)} MB  shared +${(r.sharedBytes / MB).toFixed(1)} MB  cpu ${r.cpuSeconds.toFixed(1)} s` +
                      (r.phases ? `  (resolved ${r.phases.resolved.toFixed(2)} s, layers present ${r.phases.layersPresent.toFixed(2)} s)` : "") +
                      ((r.stalledSeconds ?? 0) > 0 ? `  STALLED ${r.stalledSeconds} s` : ""),
                  );
                } finally {
                  await cleanup(bed, config, ref);
                }
              }
            }
            measured.set(pk, { ...pointResult(p, image!, runs), idleAgentCores: bed.idleAgentCores });
          } catch (e) {
            if (stopping) throw e;
            console.log(`  ${describe(p)} FAILED: ${(e as Error).message.slice(0, 2000)}`);
            measured.set(pk, failedPoint(p, image, runs, e));
          }
          save();
        }
      } finally {
        active = undefined;
        await bed.down();
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }

  const results = assemble();
  save();

  const summary = headline(results, mode, started, (performance.now() - t0) / 1000);
  writeFileSync(join(RESULTS, "summary.json"), `${JSON.stringify(summary, null, 1)}\n`);
  writeReport(HERE, loadResults(), summary);
  printTables(results);
  console.log(`\nregistry bytes of wharf / image (layers), at ${summary.detail.registryBytesRatioByHosts.map((x) => `${x.hosts} hosts: ${x.ratio}`).join(", ")}`);
  const at = summary.detail.at;
  console.log(`containerd-local / wharf time until every host can run the image, ${summary.hosts} hosts, ${STD_RATE} Mbit/s: ${summary.speedupVsLocal} (target >= ${0.8 * summary.hosts}; on the mean host ${at?.speedupVsLocalMean ?? "-"})`);
  console.log(`wharf time until every host can run the image / (image bytes / bandwidth): ${summary.limitRatio} (target <= 1.15; on the mean host ${at?.limitRatioMean ?? "-"})`);
  console.log(`wharf / containerd-local, one host, small layers: ${summary.smallImageOverhead} (target <= 1.1)`);
  console.log(`bench/REPORT.md, bench/results/, bench/plots/ written in ${((performance.now() - t0) / 60000).toFixed(1)} min`);
  console.log(
    JSON.stringify({
      registryBytesRatio: summary.registryBytesRatio,
      speedupVsLocal: summary.speedupVsLocal,
      hosts: summary.hosts,
      limitRatio: summary.limitRatio,
      smallImageOverhead: summary.smallImageOverhead,
    }),
  );
}

function pointResult(p: PointSpec, image: BuiltImage, runs: ReadonlyMap<ConfigName, RunResult[]>): PointResult {
  return {
    x: p.x,
    hosts: p.hosts,
    rateMbit: p.rateMbit,
    workers: p.workers,
    image: { kind: p.image.kind, layers: image.layers.length, layerBytes: image.layerBytes, configBytes: image.configBytes, manifestBytes: image.manifestBytes, unpackedBytes: image.unpackedBytes, files: image.files },
    idealSeconds: round((image.layerBytes + image.configBytes + image.manifestBytes) / ((p.rateMbit * 1e6) / 8), 3),
    configs: Object.fromEntries([...runs].filter(([, rs]) => rs.length > 0).map(([c, rs]) => [c, summarize(rs)])) as PointResult["configs"],
  };
}

/** A point that failed: what was measured before the failure, and the error. */
function failedPoint(p: PointSpec, image: BuiltImage | undefined, runs: ReadonlyMap<ConfigName, RunResult[]>, e: unknown): PointResult {
  const empty = { layers: [], layerBytes: 0, configBytes: 0, manifestBytes: 0, unpackedBytes: 0, files: 0 } as unknown as BuiltImage;
  return { ...pointResult(p, image ?? empty, runs), error: (e as Error).message.slice(0, 2000) };
}

function describe(p: PointSpec): string {
  const img = p.image.kind === "debian" ? "debian" : `${p.image.layers}x${(p.image.layerBytes / MB).toFixed(2)}MB/${p.image.filesPerLayer}f`;
  return `[${p.hosts}h ${p.rateMbit}Mbit ${p.workers}w ${img}]`.padEnd(36);
}

function headline(results: readonly ExperimentResult[], mode: string, started: string, seconds: number): Summary {
  const exp = (n: string) => results.find((r) => r.name === n);
  const hosts = exp("hosts");
  const byHosts = (hosts?.points ?? [])
    .filter((p) => p.configs.wharf && p.image.layerBytes > 0)
    .map((p) => ({ hosts: p.hosts, ratio: round(p.configs.wharf!.registryLayerBytes / p.image.layerBytes, 4) }));
  const at = hosts?.points.find((p) => p.hosts === STD_HOSTS && p.rateMbit === STD_RATE);
  const small = exp("small")?.points[0];
  const ratio = (a: number | undefined, b: number | undefined): number | null => (a !== undefined && b !== undefined && b > 0 ? round(a / b, 3) : null);
  return {
    mode,
    started,
    minutes: round(seconds / 60, 1),
    registryBytesRatio: byHosts.length ? byHosts.reduce((m, x) => (Math.abs(x.ratio - 1) > Math.abs(m - 1) ? x.ratio : m), 1) : null,
    // Until every host can run the image: the slowest host (p99 over 10
    // hosts). containerd-local's mean host depends on how TCP happens to
    // share the link among its pulls (33-39 s over identical runs whose
    // slowest host took 42-45 s); the slowest host is what the link allows.
    speedupVsLocal: ratio(at?.configs["containerd-local"]?.p99Seconds, at?.configs.wharf?.p99Seconds),
    hosts: at?.hosts ?? STD_HOSTS,
    limitRatio: ratio(at?.configs.wharf?.p99Seconds, at?.idealSeconds),
    smallImageOverhead: ratio(small?.configs.wharf?.meanSeconds, small?.configs["containerd-local"]?.meanSeconds),
    detail: {
      registryBytesRatioByHosts: byHosts,
      at: at
        ? {
            hosts: at.hosts,
            rateMbit: at.rateMbit,
            imageBytes: at.image.layerBytes,
            idealSeconds: at.idealSeconds,
            wharfP99Seconds: at.configs.wharf?.p99Seconds ?? null,
            localP99Seconds: at.configs["containerd-local"]?.p99Seconds ?? null,
            speedupVsLocalMean: ratio(at.configs["containerd-local"]?.meanSeconds, at.configs.wharf?.meanSeconds),
            limitRatioMean: ratio(at.configs.wharf?.meanSeconds, at.idealSeconds),
          }
        : null,
      smallCli: ratio(small?.configs["wharf-cli"]?.meanSeconds, small?.configs["containerd-local"]?.meanSeconds),
    },
  };
}

/** Every experiment's latest result file (from this run or an earlier one). */
function loadResults(): ExperimentResult[] {
  return readdirSync(RESULTS)
    .filter((f) => f.endsWith(".json") && f !== "summary.json")
    .map((f) => JSON.parse(readFileSync(join(RESULTS, f), "utf8")) as ExperimentResult);
}

function printTables(results: readonly ExperimentResult[]): void {
  for (const r of results) {
    console.log(`\n${r.title} (${r.paper})`);
    console.log(`${r.dimension.padStart(24)}  ${"config".padEnd(24)}${"mean s".padStart(9)}${"p99 s".padStart(9)}${"registry MB".padStart(13)}${"shared MB".padStart(11)}${"stored MB".padStart(11)}${"CPU s".padStart(8)}`);
    for (const p of r.points) {
      for (const c of CONFIG_NAMES) {
        const s = p.configs[c];
        if (!s) continue;
        console.log(
          `${String(p.x).padStart(24)}  ${c.padEnd(24)}${s.meanSeconds.toFixed(2).padStart(9)}${s.p99Seconds.toFixed(2).padStart(9)}${(s.registryBytes / MB).toFixed(1).padStart(13)}` +
            `${(s.sharedBytes / MB).toFixed(1).padStart(11)}${(s.storedBytes / MB).toFixed(1).padStart(11)}${s.cpuSeconds.toFixed(1).padStart(8)}`,
        );
      }
    }
  }
}

for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    if (stopping) return;
    stopping = true;
    console.error(`\n${sig}: tearing the hosts down`);
    for (const c of children) c.kill("SIGKILL");
    void (active ? active.down() : Promise.resolve()).finally(() => {
      if (workDir) rmSync(workDir, { recursive: true, force: true });
      process.exit(130);
    });
  });
}

await main();
