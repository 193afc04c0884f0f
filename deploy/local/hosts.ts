// N container hosts on one machine: each host is a network namespace with
// its own wharf agent and containerd; all share one directory as the shared
// store; the registry sits in a namespace of its own behind a bandwidth
// limit (tbf). A bridge in yet another namespace connects them, so nothing
// is added to the root namespace but an `unreachable` route for the subnet
// (while the hosts are up): a client that wrongly talks to a host address
// from the root namespace fails here instead of going out to the network.
//
// Every client of a namespace address runs inside a namespace (nsenter);
// unix sockets (the agents' APIs, containerd's sockets) are reached directly.
//
//   const hosts = await LocalHosts.up({ n: 3 });  …  await hosts.down();

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { AGENT_NODE_FLAGS } from "../../src/cli/node-flags.js";
import { api, status, until } from "../../test/helpers/agents.js";
import { registryConfig } from "../../test/helpers/registry.js";
import { type Containerd, inNetns, startContainerd } from "./containerd.js";

const REPO = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const AGENT_PORT = 7000;
const REGISTRY_PORT = 5000;
/** The block layer's throttle (cgroup v1 blkio, root group), per device. */
const THROTTLE_WRITE = "/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device";
const THROTTLE_READ = "/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device";

export interface LocalHostsOptions {
  readonly n: number;
  /** The registry link's bandwidth in Mbit/s (tbf); 0 for none. Default 100. */
  readonly rateMbit?: number;
  /** containerd per host with CRI pulling through wharf. Default true. */
  readonly containerd?: boolean;
  /** Extra flags for every agent (a function: of the subnet's "10.A.B"). */
  readonly agentArgs?: readonly string[] | ((net: string) => readonly string[]);
  /** Voters of the Raft group (default min(3, n)). */
  readonly voters?: number;
  /** The agents' Raft tick (default 50 ms: twice the agent's own default, for quick fail-overs in tests). */
  readonly tickMs?: number;
  /** The registry's storage (a `data` dir another registry filled); default: a new, empty one. */
  readonly registryData?: string;
  /**
   * The shared store on a file system of its own of this many MiB, so that it
   * can fill up (and, where the kernel's block throttling is there, be slowed
   * down: `setStoreRate`): ext4 on a loop device backed by memory, or a
   * tmpfs where loop devices are not available. Default: a plain directory.
   */
  readonly sharedFsMb?: number;
}

export interface LocalHost {
  readonly name: string;
  readonly netns: string;
  readonly addr: string;
  readonly data: string;
  readonly api: string;
  readonly snapshotterSocket: string;
  agent: ChildProcess;
  agentLog: string;
  containerd: Containerd | undefined;
}

/** One request the registry answered (from its access log). */
export interface RegistryRequest {
  readonly client: string;
  readonly method: string;
  readonly path: string;
  readonly status: number;
  readonly bytes: number;
}

function sh(cmd: string, args: readonly string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr || r.stdout || r.error?.message}`);
  return r.stdout;
}

/**
 * A child inside `netns` that dies with this process, even on SIGKILL
 * (setpriv --pdeathsig), in a process group of its own: a Ctrl-C reaches
 * only this process, which takes the hosts down in order.
 */
function spawnIn(netns: string, cmd: string, args: readonly string[], out: "pipe" | number = "pipe"): ChildProcess {
  const [c, a] = inNetns(netns, cmd, args);
  return spawn("setpriv", ["--pdeathsig", "SIGKILL", c, ...a], { cwd: REPO, stdio: ["ignore", out, out], detached: true });
}

function exited(p: ChildProcess): boolean {
  return p.exitCode !== null || p.signalCode !== null;
}

async function kill(p: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (exited(p)) return;
  const gone = new Promise<void>((r) => p.once("exit", () => r()));
  p.kill(signal);
  const t = setTimeout(() => p.kill("SIGKILL"), 5000);
  await gone;
  clearTimeout(t);
}

/**
 * Kills and deletes every task and container of `c`, in every namespace:
 * runc's state (/run/containerd/runc/NS/ID) is machine-wide in containerd
 * 1.6, so a container left behind would block its id for the next run.
 */
export function removeContainers(c: Containerd): void {
  if (c.child.exitCode !== null || c.child.signalCode !== null) return;
  for (const ns of c.ctr(["namespaces", "ls", "-q"]).stdout.split("\n").filter(Boolean)) {
    for (const id of c.ctr(["-n", ns, "tasks", "ls", "-q"]).stdout.split("\n").filter(Boolean)) {
      c.ctr(["-n", ns, "tasks", "rm", "-f", id]);
    }
    for (const id of c.ctr(["-n", ns, "containers", "ls", "-q"]).stdout.split("\n").filter(Boolean)) {
      c.ctr(["-n", ns, "containers", "rm", id]);
    }
  }
}

export class LocalHosts {
  readonly hosts: LocalHost[] = [];
  readonly registryHost: string;
  private registry: ChildProcess | undefined;
  /** The registry's log, and where the requests since the last push start in it. */
  private get registryLogFile(): string {
    return join(this.root, "registry", "registry.log");
  }
  private registryLogFrom = 0;
  private readonly namespaces: string[] = [];
  private routeAdded = false;
  private sharedMounted = false;
  /** The loop device under the shared store ("MAJ:MIN"), when it is one. */
  private storeDevice: string | undefined;
  private readonly cuts: [LocalHost, LocalHost][] = [];
  readonly secretFile: string;
  readonly shared: string;

  private constructor(
    readonly opts: LocalHostsOptions,
    readonly root: string,
    readonly prefix: string,
    /** The /24 of this run, as "10.A.B". */
    readonly net: string,
  ) {
    this.registryHost = `${net}.2:${REGISTRY_PORT}`;
    this.secretFile = join(root, "secret");
    this.shared = join(root, "shared");
  }

  get subnet(): string {
    return `${this.net}.0/24`;
  }

  /** Creates the namespaces and starts the registry, the agents (one cluster) and the containerds. */
  static async up(opts: LocalHostsOptions): Promise<LocalHosts> {
    const tag = randomBytes(3).toString("hex");
    const r = randomBytes(2);
    const net = `10.${200 + (r[0]! % 50)}.${r[1]! % 250}`;
    const h = new LocalHosts(opts, mkdtempSync(join(tmpdir(), "wharf-hosts-")), `wh${tag}`, net);
    try {
      await h.build();
      return h;
    } catch (e) {
      await h.down();
      throw e;
    }
  }

  private addNetns(name: string): string {
    sh("ip", ["netns", "add", name]);
    this.namespaces.push(name);
    sh("ip", ["-n", name, "link", "set", "lo", "up"]);
    return name;
  }

  /** A namespace on the bridge with `addr`/24 on its eth0. */
  private attach(bridgeNs: string, ns: string, i: number, addr: string): void {
    const veth = `v${i}`;
    sh("ip", ["-n", bridgeNs, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns]);
    sh("ip", ["-n", bridgeNs, "link", "set", veth, "master", "br0", "up"]);
    sh("ip", ["-n", ns, "addr", "add", `${addr}/24`, "dev", "eth0"]);
    sh("ip", ["-n", ns, "link", "set", "eth0", "up"]);
  }

  private async build(): Promise<void> {
    const { n } = this.opts;
    writeFileSync(this.secretFile, randomBytes(24).toString("hex"));
    mkdirSync(this.shared);
    if (this.opts.sharedFsMb) this.mountShared(this.opts.sharedFsMb);
    sh("ip", ["route", "add", "unreachable", this.subnet]);
    this.routeAdded = true;
    const br = this.addNetns(`${this.prefix}-br`);
    sh("ip", ["-n", br, "link", "add", "br0", "type", "bridge"]);
    sh("ip", ["-n", br, "link", "set", "br0", "up"]);
    const reg = this.addNetns(`${this.prefix}-reg`);
    this.attach(br, reg, 0, `${this.net}.2`);
    const rate = this.opts.rateMbit ?? 100;
    if (rate > 0) sh("ip", ["netns", "exec", reg, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", `${rate}mbit`, "burst", "64kb", "latency", "50ms"]);
    await this.startRegistry(reg);

    for (let i = 1; i <= n; i++) {
      const name = `host-${i}`;
      const ns = this.addNetns(`${this.prefix}-h${i}`);
      const addr = `${this.net}.${10 + i}`;
      this.attach(br, ns, i, addr);
      const data = join(this.root, name, "agent");
      this.hosts.push({
        name,
        netns: ns,
        addr,
        data,
        api: join(data, "api.sock"),
        snapshotterSocket: join(this.root, name, "snapshotter.sock"),
        agent: undefined as unknown as ChildProcess,
        agentLog: "",
        containerd: undefined,
      });
    }
    // One cluster: the first host founds it, the others join.
    const first = this.hosts[0]!;
    this.startAgent(first, ["start", "--bootstrap"]);
    const id = (await until(`${first.name}'s agent`, async () => (existsSync(first.api) ? status(first as never) : undefined), 60_000)).id as string;
    const peer = `/ip4/${first.addr}/tcp/${AGENT_PORT}/p2p/${id}`;
    for (const host of this.hosts.slice(1)) this.startAgent(host, ["join", peer]);
    const voters = this.opts.voters ?? Math.min(3, n);
    await until(`${n} members and ${voters} voters`, async () => {
      const st = await status(first as never);
      return st.members.length === n && st.members.filter((m: { role: string }) => m.role === "voter").length === voters ? st : undefined;
    }, 90_000);
    if (this.opts.containerd !== false) {
      await Promise.all(
        this.hosts.map(async (host) => {
          host.containerd = await startContainerd({
            dir: join(this.root, host.name, "containerd"),
            wharfSocket: host.snapshotterSocket,
            cri: true,
            insecureRegistries: [this.registryHost],
            netns: host.netns,
          });
        }),
      );
    }
  }

  private async startRegistry(ns: string): Promise<void> {
    const dir = join(this.root, "registry");
    mkdirSync(dir);
    const config = join(dir, "config.yml");
    // The access log (stdout) is what registryRequests() reads. It goes to a
    // file, not a pipe: a caller blocked in spawnSync (push) reads no pipe,
    // and the registry would block on a full one.
    writeFileSync(config, registryConfig({ data: this.opts.registryData ?? join(dir, "data"), addr: this.registryHost, accessLog: true }));
    const out = openSync(this.registryLogFile, "a");
    const p = spawnIn(ns, "docker-registry", ["serve", config], out);
    closeSync(out);
    this.registry = p;
    await until("the registry", async () => {
      if (exited(p)) throw new Error(`the registry exited:\n${readFileSync(this.registryLogFile, "utf8")}`);
      const [c, a] = inNetns(ns, "curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", `http://${this.registryHost}/v2/`]);
      return spawnSync(c, a, { encoding: "utf8" }).stdout === "200" ? true : undefined;
    });
  }

  /** Starts (or restarts, with the same data dir) the agent of `host`. */
  startAgent(host: LocalHost, mode: readonly string[] = ["start"]): void {
    const args = [
      ...AGENT_NODE_FLAGS,
      "--import",
      "tsx",
      join(REPO, "src", "cli", "wharf-agent.ts"),
      ...mode,
      "--data",
      host.data,
      "--shared",
      this.shared,
      "--listen",
      `/ip4/${host.addr}/tcp/${AGENT_PORT}`,
      "--secret-file",
      this.secretFile,
      "--insecure-registry",
      this.registryHost,
      "--snapshotter-socket",
      host.snapshotterSocket,
      "--voters",
      String(this.opts.voters ?? Math.min(3, this.opts.n)),
      "--tick-ms",
      String(this.opts.tickMs ?? 50),
      ...(typeof this.opts.agentArgs === "function" ? this.opts.agentArgs(this.net) : (this.opts.agentArgs ?? [])),
    ];
    host.agentLog = "";
    host.agent = spawnIn(host.netns, process.execPath, args);
    const keep = (d: Buffer) => void (host.agentLog = (host.agentLog + d.toString()).slice(-500_000));
    host.agent.stdout!.on("data", keep);
    host.agent.stderr!.on("data", keep);
  }

  /** SIGKILLs the agent of `host` (its containerd and containers go on). */
  async killAgent(host: LocalHost): Promise<void> {
    await kill(host.agent, "SIGKILL");
  }

  /** Restarts a stopped agent and waits until its API and snapshotter answer. */
  async restartAgent(host: LocalHost): Promise<void> {
    this.startAgent(host);
    await until(`${host.name}'s agent back`, async () => (existsSync(host.api) && existsSync(host.snapshotterSocket) ? status(host as never) : undefined), 60_000);
  }

  /** Runs `wharf ARGS` against `host`'s agent, inside its namespace. */
  wharf(host: LocalHost, args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const p = spawnIn(host.netns, process.execPath, ["--import", "tsx", join(REPO, "src", "cli", "wharf.ts"), "--api", host.api, ...args]);
      let stdout = "";
      let stderr = "";
      p.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
      p.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
      p.on("close", (code) => resolve({ code, stdout, stderr }));
    });
  }

  /** Pushes an OCI layout's image to the registry (skopeo, inside the registry's namespace). */
  push(layout: string, tag: string, repo: string, repoTag: string): void {
    const [c, a] = inNetns(`${this.prefix}-reg`, "skopeo", ["copy", "--quiet", "--dest-tls-verify=false", `oci:${layout}:${tag}`, `docker://${this.registryHost}/${repo}:${repoTag}`]);
    sh(c, a);
    this.registryLogFrom = statSync(this.registryLogFile).size;
  }

  /**
   * The requests the registry answered since the last push, from its access
   * log (combined log format, one line per request).
   */
  registryRequests(): RegistryRequest[] {
    const out: RegistryRequest[] = [];
    const re = /^(\S+) \S+ \S+ \[[^\]]*\] "(\w+) (\S+) [^"]*" (\d{3}) (\d+|-)/;
    const log = readFileSync(this.registryLogFile).subarray(this.registryLogFrom).toString();
    for (const line of log.split("\n")) {
      const m = re.exec(line);
      if (m) out.push({ client: m[1]!, method: m[2]!, path: m[3]!, status: Number(m[4]), bytes: m[5] === "-" ? 0 : Number(m[5]) });
    }
    return out;
  }

  /** The agent's local API of `host` (GET/POST PATH). */
  api(host: LocalHost, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
    return api(host as never, method, path, body);
  }

  /**
   * Drops every packet `from` sends to `to` (one way; call twice for both):
   * a blackhole route in `from`'s namespace, until `heal`.
   */
  cut(from: LocalHost, to: LocalHost): void {
    sh("ip", ["-n", from.netns, "route", "add", "blackhole", `${to.addr}/32`]);
    this.cuts.push([from, to]);
  }

  /** Undoes every `cut`. */
  heal(): void {
    for (const [from, to] of this.cuts) spawnSync("ip", ["-n", from.netns, "route", "del", "blackhole", `${to.addr}/32`]);
    this.cuts.length = 0;
  }
  /** The registry link's rate in Mbit/s (tbf; the link was made with a rate). */
  setRegistryRate(mbit: number): void {
    sh("ip", ["netns", "exec", `${this.prefix}-reg`, "tc", "qdisc", "change", "dev", "eth0", "root", "tbf", "rate", `${mbit}mbit`, "burst", "64kb", "latency", "50ms"]);
  }

  /**
   * The shared store's own file system: ext4 (no reserved blocks) on a loop
   * device whose backing file is in /dev/shm, so the disk under it is memory
   * and only the throttle makes it slow; a tmpfs where that is not possible.
   */
  private mountShared(mb: number): void {
    const image = join("/dev/shm", `${this.prefix}-shared.img`);
    try {
      writeFileSync(image, "");
      truncateSync(image, mb << 20);
      sh("mkfs.ext4", ["-q", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", image]);
      // A loop mount clears its device when unmounted (even lazily).
      sh("mount", ["-o", "loop", image, this.shared]);
      this.sharedMounted = true;
      const dev = spawnSync("findmnt", ["-rn", "-o", "MAJ:MIN", this.shared], { encoding: "utf8" }).stdout.trim();
      if (/^\d+:\d+$/.test(dev) && existsSync(THROTTLE_WRITE)) this.storeDevice = dev;
    } catch {
      // No loop devices here: a tmpfs fills up just as well (it cannot be slowed).
      if (this.sharedMounted) spawnSync("umount", ["-l", this.shared]);
      sh("mount", ["-t", "tmpfs", "-o", `size=${mb}m,mode=0755`, "wharf-shared", this.shared]);
      this.sharedMounted = true;
    } finally {
      rmSync(image, { force: true });
    }
  }

  /** Whether `setStoreRate` can slow the shared store down. */
  get storeThrottle(): boolean {
    return this.storeDevice !== undefined;
  }

  /**
   * Limits reads and writes that reach the shared store's device to this many
   * bytes per second (0: no limit), through the block layer's throttle: a
   * slow store, as an overloaded network file system is, fsyncs included.
   */
  setStoreRate(bytesPerSecond: number): void {
    if (!this.storeDevice) throw new Error("the shared store cannot be slowed down here (no throttled loop device)");
    for (const f of [THROTTLE_WRITE, THROTTLE_READ]) writeFileSync(f, `${this.storeDevice} ${bytesPerSecond}`);
  }

  /** Stops everything, unmounts what is left, deletes the namespaces, the route and the files. */
  async down(): Promise<void> {
    await Promise.all(
      this.hosts.map(async (h) => {
        if (!h.containerd) return;
        removeContainers(h.containerd);
        await h.containerd.stop().catch(() => {});
      }),
    );
    // Shims outlive containerd: any left of this run (by its socket path) go too.
    spawnSync("pkill", ["-KILL", "-f", `containerd-shim-runc-v2 .*-address ${this.root}/`]);
    await Promise.all(this.hosts.map((h) => (h.agent ? kill(h.agent, "SIGTERM") : Promise.resolve())));
    if (this.registry) await kill(this.registry, "SIGTERM");
    // Container rootfs mounts that a stopped containerd left behind.
    const mounts = spawnSync("findmnt", ["-rn", "-o", "TARGET"], { encoding: "utf8" }).stdout.split("\n").filter((m) => m.startsWith(this.root));
    for (const m of mounts.reverse()) spawnSync("umount", ["-l", m]);
    if (this.storeDevice) this.setStoreRate(0);
    if (this.sharedMounted) spawnSync("umount", ["-l", this.shared]);
    for (const ns of this.namespaces.reverse()) spawnSync("ip", ["netns", "del", ns]);
    if (this.routeAdded) spawnSync("ip", ["route", "del", "unreachable", this.subnet]);
    rmSync(this.root, { recursive: true, force: true });
  }
}
