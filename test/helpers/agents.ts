// Real agent processes for tests: start, join, restart, SIGKILL, and the
// local API over each agent's unix socket.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AGENT_NODE_FLAGS } from "../../src/cli/node-flags.js";

export const TICK_MS = 50;
export const ELECTION_MS = 10 * TICK_MS;
export const SECRET = "test-cluster-secret-0123456789";

export interface Proc {
  readonly name: string;
  readonly dir: string;
  readonly api: string;
  readonly port: number;
  readonly child: ChildProcess;
  log: string;
}

export type StartMode = "bootstrap" | "restart" | { readonly join: string };

export class TestCluster {
  readonly root = mkdtempSync(join(tmpdir(), "wharf-cluster-"));
  readonly secretFile = join(this.root, "secret");
  readonly procs: Proc[] = [];
  // Below Linux's ephemeral range (32768-60999), where the registry, the
  // proxies and outgoing connections take their ports.
  private nextPort = 20000 + Math.floor(Math.random() * 1500) * 8;

  constructor(private readonly extraArgs: readonly string[] = []) {
    writeFileSync(this.secretFile, SECRET);
  }

  start(name: string, mode: StartMode, opts: { secretFile?: string; port?: number; args?: readonly string[] } = {}): Proc {
    const dir = join(this.root, name);
    const port = opts.port ?? this.nextPort++;
    const args = [
      ...AGENT_NODE_FLAGS,
      "--import",
      "tsx",
      "src/cli/wharf-agent.ts",
      mode === "bootstrap" || mode === "restart" ? "start" : "join",
      ...(typeof mode === "object" ? [mode.join] : []),
      "--data",
      dir,
      "--shared",
      join(this.root, "shared"),
      "--listen",
      `/ip4/127.0.0.1/tcp/${port}`,
      "--secret-file",
      opts.secretFile ?? this.secretFile,
      "--tick-ms",
      String(TICK_MS),
      ...this.extraArgs,
      ...(opts.args ?? []),
      ...(mode === "bootstrap" ? ["--bootstrap"] : []),
    ];
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
    const proc: Proc = { name, dir, api: join(dir, "api.sock"), port, child, log: "" };
    child.stdout!.on("data", (d: Buffer) => (proc.log += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (proc.log += d.toString()));
    this.procs.push(proc);
    return proc;
  }

  /** Starts a founding agent and agents joining it; waits until `voters` voters. */
  async form(names: readonly string[], voters: number): Promise<Proc[]> {
    const first = this.start(names[0]!, "bootstrap");
    const s = await until("the founding agent", async () => (existsSync(first.api) ? status(first) : undefined)).catch((e: Error) => {
      throw new Error(`${e.message}\n${first.log.slice(-2000)}`);
    });
    const peer = this.peerAddr(first, s.id);
    const rest = names.slice(1).map((n) => this.start(n, { join: peer }));
    const all = [first, ...rest];
    await until(`${voters} voters and ${all.length} members`, async () => {
      const st = await status(first);
      const v = st.members.filter((m: any) => m.role === "voter").length;
      return v === voters && st.members.length === all.length ? st : undefined;
    }, 60_000);
    return all;
  }

  peerAddr(p: Proc, id: string): string {
    return `/ip4/127.0.0.1/tcp/${p.port}/p2p/${id}`;
  }

  restart(p: Proc): Proc {
    const i = this.procs.indexOf(p);
    const q = this.start(p.name, "restart", { port: p.port });
    if (i >= 0) this.procs.splice(i, 1);
    return q;
  }

  stop(): void {
    for (const p of this.procs) p.child.kill("SIGKILL");
    rmSync(this.root, { recursive: true, force: true });
  }
}

export function api(p: Proc, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request({ socketPath: p.api, method, path, timeout: 15_000 }, (res) => {
      let s = "";
      res.on("data", (c: Buffer) => (s += c.toString()));
      res.on("end", () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(s) });
        } catch (e) {
          reject(e);
        }
      });
    });
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error("API request timed out")));
    req.end(data);
  });
}

export async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
}

export const status = async (p: Proc): Promise<any> => (await api(p, "GET", "/status")).body;

export async function whoLeads(ps: readonly Proc[], id: string): Promise<Proc> {
  for (const p of ps) if ((await status(p).catch(() => ({}))).id === id) return p;
  throw new Error(`no process is leader ${id}`);
}
