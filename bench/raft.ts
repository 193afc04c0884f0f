// make bench-raft: three wharf voters and a three-member etcd 3.4 cluster on
// loopback, both with fsync on, driven by the same client load (1 sequential
// client, then 64 concurrent ones; 256-byte values, each write to the
// leader). Prints a table and, as the last line, JSON with both and their
// throughput ratio per load.

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { Agent as HttpAgent, request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TestCluster, status } from "../test/helpers/agents.js";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const LOADS = [1, 64];
const VALUE = "x".repeat(256);

interface Result {
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
}

type Put = (key: string, value: string) => Promise<void>;

function post(agent: HttpAgent, target: { socketPath?: string; host?: string; port?: number }, path: string, body: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ ...target, agent, method: "POST", path, headers: { "content-type": "application/json" } }, (res) => {
      let s = "";
      res.on("data", (c: Buffer) => (s += c.toString()));
      res.on("end", () => (res.statusCode === 200 ? resolve(s) : reject(new Error(`HTTP ${res.statusCode}: ${s}`))));
    });
    req.on("error", reject);
    req.end(body);
  });
}

async function drive(put: Put, clients: number): Promise<Result> {
  const lat: number[] = [];
  const end = performance.now() + SECONDS * 1000;
  let n = 0;
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      while (performance.now() < end) {
        const t0 = performance.now();
        await put(`bench/${c}/${n++}`, VALUE);
        lat.push(performance.now() - t0);
      }
    }),
  );
  lat.sort((a, b) => a - b);
  const q = (p: number): number => Math.round(lat[Math.min(lat.length - 1, Math.floor(p * lat.length))]! * 100) / 100;
  return { opsPerSec: Math.round(lat.length / SECONDS), p50Ms: q(0.5), p99Ms: q(0.99) };
}

async function startEtcd(root: string): Promise<{ procs: ChildProcess[]; leaderUrl: { host: string; port: number } }> {
  if (spawnSync("etcd", ["--version"]).status !== 0) throw new Error("etcd is not installed (apt-get install etcd-server)");
  const base = 23000 + Math.floor(Math.random() * 1000) * 4;
  const names = ["e1", "e2", "e3"];
  const peer = (i: number): string => `http://127.0.0.1:${base + 2 * i + 1}`;
  const client = (i: number): string => `http://127.0.0.1:${base + 2 * i}`;
  const initial = names.map((n, i) => `${n}=${peer(i)}`).join(",");
  const procs = names.map((name, i) =>
    spawn(
      "etcd",
      [
        "--name", name,
        "--data-dir", join(root, name),
        "--listen-client-urls", client(i),
        "--advertise-client-urls", client(i),
        "--listen-peer-urls", peer(i),
        "--initial-advertise-peer-urls", peer(i),
        "--initial-cluster", initial,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", "wharf-bench",
        "--log-level", "error",
      ],
      { stdio: "ignore" },
    ),
  );
  const agent = new HttpAgent({ keepAlive: true });
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; ) {
    for (let i = 0; i < 3; i++) {
      try {
        const st = JSON.parse(await post(agent, { host: "127.0.0.1", port: base + 2 * i }, "/v3/maintenance/status", "{}")) as {
          header: { member_id: string };
          leader: string;
        };
        if (st.leader && st.leader !== "0" && st.leader === st.header.member_id) {
          agent.destroy();
          return { procs, leaderUrl: { host: "127.0.0.1", port: base + 2 * i } };
        }
      } catch {
        /* not up yet */
      }
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error("etcd cluster did not elect a leader");
}

async function main(): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), "wharf-bench-raft-"));
  const cluster = new TestCluster(["--tick-ms", "100", "--snapshot-every", "20000"]);
  let etcd: ChildProcess[] = [];
  try {
    const agents = await cluster.form(["a", "b", "c"], 3);
    const s = await status(agents[0]!);
    let leader = agents[0]!;
    for (const p of agents) if ((await status(p)).id === s.leader) leader = p;
    const e = await startEtcd(root);
    etcd = e.procs;

    const wAgent = new HttpAgent({ keepAlive: true, maxSockets: 256 });
    const eAgent = new HttpAgent({ keepAlive: true, maxSockets: 256 });
    const wharfPut: Put = async (key, value) => {
      await post(wAgent, { socketPath: leader.api }, "/kv", JSON.stringify({ key, value }));
    };
    const etcdPut: Put = async (key, value) => {
      const b64 = (x: string): string => Buffer.from(x).toString("base64");
      await post(eAgent, e.leaderUrl, "/v3/kv/put", JSON.stringify({ key: b64(key), value: b64(value) }));
    };

    const out: Record<string, { wharf: Result; etcd: Result; ratio: number }> = {};
    console.log(`${"clients".padEnd(8)} ${"system".padEnd(6)} ${"ops/s".padStart(8)} ${"p50 ms".padStart(8)} ${"p99 ms".padStart(8)}`);
    for (const clients of LOADS) {
      // Warm both up, then measure one after the other on the same machine.
      await drive(wharfPut, clients).catch(() => undefined);
      const w = await drive(wharfPut, clients);
      await drive(etcdPut, clients).catch(() => undefined);
      const x = await drive(etcdPut, clients);
      for (const [name, r] of [["wharf", w], ["etcd", x]] as const) {
        console.log(`${String(clients).padEnd(8)} ${name.padEnd(6)} ${String(r.opsPerSec).padStart(8)} ${String(r.p50Ms).padStart(8)} ${String(r.p99Ms).padStart(8)}`);
      }
      out[String(clients)] = { wharf: w, etcd: x, ratio: Math.round((w.opsPerSec / x.opsPerSec) * 100) / 100 };
    }
    wAgent.destroy();
    eAgent.destroy();
    console.log(JSON.stringify(out));
  } finally {
    for (const p of etcd) p.kill("SIGKILL");
    cluster.stop();
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
