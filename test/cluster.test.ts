// Real agent processes on loopback: bootstrap and joins, SIGKILL of the
// leader, restart and catch-up, a peer with the wrong secret, garbage on the
// Raft stream.

import { existsSync, writeFileSync } from "node:fs";
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
import { ELECTION_MS, SECRET, TestCluster, api, status, until, whoLeads } from "./helpers/agents.js";

const cluster = new TestCluster(["--snapshot-every", "40"]);
t.teardown(() => cluster.stop());

t.test("a three-agent cluster survives SIGKILL of its leader and the restart", async (t) => {
  const all = await cluster.form(["a", "b", "c"], 3);
  const full = await status(all[0]!);
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

  const s0 = await status(all[0]!);
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
  const restarted = cluster.restart(leader);
  const target = (await status(survivors[0]!)).commitIndex;
  await until("the restarted agent catches up", async () => {
    const s = existsSync(restarted.api) ? await status(restarted) : undefined;
    return s && s.appliedIndex >= target ? s : undefined;
  });
  const kv = (await api(restarted, "GET", "/kv/all")).body.kv as Record<string, string>;
  t.same(kv, Object.fromEntries(acked), "the restarted agent holds every acknowledged write");
  t.match(restarted.log, /agent started/);

  await t.test("an agent with the wrong secret is refused", async (t) => {
    const bad = join(cluster.root, "bad-secret");
    writeFileSync(bad, "not-the-cluster-secret-at-all");
    const p = cluster.start("intruder", { join: cluster.peerAddr(survivors[0]!, (await status(survivors[0]!)).id) }, { secretFile: bad });
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
      // A length prefix announcing a frame of gigabytes.
      const huge = await node.dialProtocol(multiaddr(`/ip4/127.0.0.1/tcp/${target.port}/p2p/${sid}`), RAFT_PROTOCOL);
      huge.send(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f]));
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      await node.stop();
    }
    const s = await status(target);
    t.ok(s.term < 99, "a forged sender did not raise the term");
    t.equal(target.child.exitCode, null, "still running");
    t.match(target.log, /refused a malformed Raft message/);
    t.match(target.log, /dropped a Raft stream with broken framing/);
    const r = await api(target, "POST", "/kv", { key: "after-garbage", value: "1" });
    t.equal(r.status, 200, "and still serving");
  });
});
