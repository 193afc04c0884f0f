// A private containerd for one local host: its own root, state and sockets
// under one directory, wharf's snapshotter as the proxy plugin `wharf`, and,
// optionally, CRI pulling through wharf (the remote-snapshotter labels on)
// with plain-HTTP registries allowed. Used by the demo, the tests and the
// benchmarks; run inside a network namespace with `netns`.
//
// containerd 1.6 keeps shim sockets under /run/containerd whatever its
// config says; those are keyed by namespace and container id, so several
// containerds can share the machine as long as container ids differ.

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface ContainerdOptions {
  /** Directory that holds everything of this containerd (root, state, sockets, config, log). */
  readonly dir: string;
  /** The agent's `--snapshotter-socket`. */
  readonly wharfSocket: string;
  /** Serve CRI and make it pull through wharf (default: CRI disabled). */
  readonly cri?: boolean;
  /** Registries CRI reaches over plain HTTP (HOST:PORT). */
  readonly insecureRegistries?: readonly string[];
  /** Network namespace (ip netns name) to run in; default: the caller's. */
  readonly netns?: string;
}

export interface Containerd {
  readonly socket: string;
  readonly dir: string;
  readonly child: ChildProcess;
  readonly netns: string | undefined;
  /** The tail of its log (containerd.log in `dir`). */
  readonly log: string;
  /** Runs `ctr` against this containerd (inside its namespace). */
  ctr(args: readonly string[], opts?: { timeoutMs?: number }): { status: number | null; stdout: string; stderr: string };
  /** SIGTERM, then SIGKILL after 5 s; resolves when the process is gone. */
  stop(): Promise<void>;
}

/** `cmd args` inside a network namespace (nsenter, not `ip netns exec`: runc needs the real /sys). */
export function inNetns(netns: string | undefined, cmd: string, args: readonly string[]): [string, string[]] {
  return netns === undefined ? [cmd, [...args]] : ["nsenter", [`--net=/run/netns/${netns}`, "--", cmd, ...args]];
}

export function containerdConfig(o: ContainerdOptions): string {
  const d = o.dir;
  const registries = (o.insecureRegistries ?? [])
    .map(
      (r) => `
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."${r}"]
  endpoint = ["http://${r}"]`,
    )
    .join("");
  const cri = o.cri
    ? `
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "wharf.invalid/pause:none"
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "wharf"
  disable_snapshot_annotations = false
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "${d}/cni/bin"
  conf_dir = "${d}/cni/conf"${registries}
`
    : "";
  return `version = 2
root = "${d}/root"
state = "${d}/state"
${o.cri ? "" : 'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'}
[grpc]
  address = "${d}/containerd.sock"
[ttrpc]
  address = "${d}/containerd.sock.ttrpc"
[debug]
  address = "${d}/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "${d}/opt"

[proxy_plugins]
  [proxy_plugins.wharf]
    type = "snapshot"
    address = "${o.wharfSocket}"
${cri}`;
}

/** Starts containerd and resolves once its socket answers `ctr version`. */
export async function startContainerd(o: ContainerdOptions, signal?: AbortSignal): Promise<Containerd> {
  mkdirSync(o.dir, { recursive: true });
  const config = join(o.dir, "config.toml");
  writeFileSync(config, containerdConfig(o));
  const socket = join(o.dir, "containerd.sock");
  const [cmd, args] = inNetns(o.netns, "containerd", ["--config", config]);
  // Its own process group (a Ctrl-C is for the caller, who stops it in
  // order); dies with the caller even on SIGKILL (setpriv --pdeathsig).
  // Its output goes to a file, not a pipe: a caller blocked in spawnSync
  // (ctr) reads no pipe, and containerd would block on a full one.
  const logFile = join(o.dir, "containerd.log");
  const out = openSync(logFile, "a");
  const child = spawn("setpriv", ["--pdeathsig", "SIGKILL", cmd, ...args], { stdio: ["ignore", out, out], detached: true });
  closeSync(out);
  const ctr: Containerd["ctr"] = (a, opts = {}) => {
    const [c, ca] = inNetns(o.netns, "ctr", ["--address", socket, ...a]);
    const r = spawnSync(c, ca, { encoding: "utf8", timeout: opts.timeoutMs ?? 60_000, killSignal: "SIGKILL" });
    return { status: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
  };
  const c: Containerd = {
    socket,
    dir: o.dir,
    child,
    netns: o.netns,
    get log() {
      return existsSync(logFile) ? readFileSync(logFile, "utf8").slice(-200_000) : "";
    },
    ctr,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise<void>((r) => child.once("exit", () => r()));
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await gone;
      clearTimeout(t);
    },
  };
  const end = Date.now() + 30_000;
  while (Date.now() < end) {
    signal?.throwIfAborted();
    if (child.exitCode !== null) throw new Error(`containerd exited with ${child.exitCode}:\n${c.log.slice(-3000)}`);
    if (existsSync(socket) && ctr(["version"], { timeoutMs: 5000 }).status === 0) return c;
    await new Promise((r) => setTimeout(r, 100));
  }
  await c.stop();
  throw new Error(`containerd did not answer on ${socket} within 30 s:\n${c.log.slice(-3000)}`);
}
