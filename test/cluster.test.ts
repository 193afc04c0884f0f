// Real agent processes on loopback: bootstrap and joins, SIGKILL of the
// leader, restart and catch-up, a peer with the wrong secret, garbage on the
// Raft stream.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { preSharedKey } from "@libp2p/pnet";
import { tcp } from "@libp2p/tcp";
import { lpStream } from "@libp2p/utils";
import { multiaddr } from "@multiformats/multiaddr";
import { createLibp2p } from "libp2p";
import t from "tap";
import { RAFT_PROTOCOL, swarmKey } from "../net/host.js";

const TICK_MS = 50;
const ELECTION_MS = 10 * TICK_MS;
const root = mkdtempSync(join(tmpdir(), "wharf-cluster-"));
const secretFile = join(root, "secret");
const SECRET = "test-cluster-secret-0123456789";
writeFileSync(secretFile, SECRET);
let nextPort = 42100 + Math.floor(Math.random() * 500) * 4;

interface Proc {
  name: string;
  dir: string;
  api: string;
  port: number;
  child: ChildProcess;
  log: string;
}
const procs: Proc[] = [];

t.teardown(() => {
  for (const p of procs) p.child.kill("SIGKILL");
  rmSync(root, { recursive: true, force: true });
});

function startAgent(name: string, mode: "bootstrap" | "restart" | { join: string }, secret = secretFile, port?: number): Proc {
  const dir = join(root, name);
  const p = port ?? nextPort++;
  const args = [
    "--import",
    "tsx",
    "src/cli/wharf-agent.ts",
    mode === "bootstrap" || mode === "restart" ? "start" : "join",
    ...(typeof mode === "object" ? [mode.join] : []),
    "--data",
    dir,
    "--shared",
    join(root, "shared"),
    "--listen",
    `/ip4/127.0.0.1/tcp/${p}`,
    "--secret-file",
    secret,
    "--tick-ms",
    String(TICK_MS),
    "--snapshot-every",
    "40",
    ...(mode === "bootstrap" ? ["--bootstrap"] : []),
  ];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
  const proc: Proc = { name, dir, api: join(dir, "api.sock"), port: p, child, log: "" };
  child.stdout!.on("data", (d: Buffer) => (proc.log += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (proc.log += d.toString()));
  procs.push(proc);
  return proc;
}

function api(p: Proc, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request({ socketPath: p.api, method, path, timeout: 15_000 }, (res) => {
      let s = "";
      res.on("data", (c: Buffer) => (s += c.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(s) }));
    });
    req.on("error", reject);
    req.end(data);
  });
}

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 30_000): Promise<T> {
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

const status = async (p: Proc): Promise<any> => (await api(p, "GET", "/status")).body;

t.test("a three-agent cluster survives SIGKILL of its leader and the restart", async (t) => {
  const a = startAgent("a", "bootstrap");
  const sa = await until("agent a", async () => (existsSync(a.api) ? status(a) : undefined));
  const peer = `/ip4/127.0.0.1/tcp/${a.port}/p2p/${sa.id}`;
  const b = startAgent("b", { join: peer });
  const c = startAgent("c", { join: peer });
  const all = [a, b, c];
  const full = await until("three voters", async () => {
    const s = await status(a);
    return s.members.filter((m: any) => m.role === "voter").length === 3 ? s : undefined;
  });
  t.equal(full.members.length, 3);
  t.ok(full.members.every((m: any) => m.addrs.length > 0), "every member has addresses");

  // Acknowledged writes through every agent (followers forward to the leader).
  const acked = new Map<string, string>();
  for (let i = 0; i < 60; i++) {
    const p = all[i % 3]!;
    const r = await api(p, "POST", "/kv", { key: `k${i}`, value: `v${i}` });
    t.equal(r.status, 200, `write k${i} through ${p.name}`);
    acked.set(`k${i}`, `v${i}`);
  }

  const s0 = await status(a);
  const leader = await whoLeads(all, s0.leader);
  const killedAt = Date.now();
  leader.child.kill("SIGKILL");
  const survivors = all.filter((p) => p !== leader);
  const newLeader = await until("a new leader", async () => {
    const s = await status(survivors[0]!);
    return s.leader !== "" && s.leader !== s0.leader && s.role !== undefined ? s.leader : undefined;
  });
  const electedMs = Date.now() - killedAt;
  t.ok(newLeader, `new leader after ${electedMs} ms`);
  // Randomised timeouts run from 1 to 2 election timeouts after the last
  // heartbeat, plus a pre-vote and a vote round: allow two of the longest.
  t.ok(electedMs < 2 * 2 * ELECTION_MS + 500, `elected within two election timeouts (${electedMs} ms)`);

  for (const [k, v] of acked) {
    const r = await api(survivors[1]!, "GET", `/kv?key=${k}`);
    t.equal(r.body.value, v, `acknowledged ${k} survives`);
  }
  // More writes while the old leader is down; then it comes back and catches
  // up (through a snapshot: the log is compacted every 40 entries).
  for (let i = 60; i < 140; i++) {
    const r = await api(survivors[i % 2]!, "POST", "/kv", { key: `k${i}`, value: `v${i}` });
    t.equal(r.status, 200);
    acked.set(`k${i}`, `v${i}`);
  }
  const restarted = startAgent(leader.name, "restart", secretFile, leader.port);
  const target = (await status(survivors[0]!)).commitIndex;
  await until("the restarted agent catches up", async () => {
    const s = existsSync(restarted.api) ? await status(restarted) : undefined;
    return s && s.appliedIndex >= target ? s : undefined;
  });
  const kv = (await api(restarted, "GET", "/kv/all")).body.kv as Record<string, string>;
  t.same(kv, Object.fromEntries(acked), "the restarted agent holds every acknowledged write");
  t.match(restarted.log, /agent started/);

  await t.test("an agent with the wrong secret is refused", async (t) => {
    const bad = join(root, "bad-secret");
    writeFileSync(bad, "not-the-cluster-secret-at-all");
    const p = startAgent("intruder", { join: `/ip4/127.0.0.1/tcp/${survivors[0]!.port}/p2p/${(await status(survivors[0]!)).id}` }, bad);
    const code = await new Promise<number | null>((r) => p.child.once("exit", r));
    t.equal(code, 6, "exit code of a wrong secret");
    t.match(p.log, /wrong cluster secret/);
    const s = await status(survivors[0]!);
    t.equal(s.members.length, 3, "the intruder is not a member");
  });

  await t.test("garbage on the Raft stream does not crash the receiver", async (t) => {
    const target = survivors[0]!;
    const sid = (await status(target)).id;
    const node = await createLibp2p({
      addresses: { listen: ["/ip4/127.0.0.1/tcp/0"] },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      connectionProtector: preSharedKey({ psk: swarmKey(SECRET) }),
    });
    try {
      const stream = await node.dialProtocol(multiaddr(`/ip4/127.0.0.1/tcp/${target.port}/p2p/${sid}`), RAFT_PROTOCOL);
      const lp = lpStream(stream);
      const frames = [
        "not json",
        JSON.stringify({ type: "app", from: "x" }),
        JSON.stringify({ type: "vote", from: node.peerId.toString(), to: sid, term: -1 }),
        JSON.stringify({ type: "app", from: "someone-else", to: sid, term: 99, index: 0, entries: [] }),
        JSON.stringify({ type: "snap", from: node.peerId.toString(), to: sid, term: 1, snapshot: { meta: {}, data: "!!" } }),
      ];
      for (const f of frames) await lp.write(new TextEncoder().encode(f));
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      await node.stop();
    }
    const s = await status(target);
    t.ok(s.term < 99, "a forged sender did not raise the term");
    t.equal(target.child.exitCode, null, "still running");
    t.match(target.log, /refused a malformed Raft message/);
    const r = await api(target, "POST", "/kv", { key: "after-garbage", value: "1" });
    t.equal(r.status, 200, "and still serving");
  });
});

async function whoLeads(ps: Proc[], id: string): Promise<Proc> {
  for (const p of ps) if ((await status(p)).id === id) return p;
  throw new Error(`no process is leader ${id}`);
}


