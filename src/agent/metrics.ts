// Prometheus metrics of an agent, built against a registry and injected.

import { createServer } from "node:http";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { RaftNode } from "./raftnode.js";

export interface RaftMetrics {
  readonly registry: Registry;
  readonly proposalSeconds: Histogram;
  readonly leaderChanges: Counter;
  /** Raft messages this agent sent and received, by direction and type. */
  readonly messages: Counter<"direction" | "type">;
}

export function createRaftMetrics(node: () => RaftNode): RaftMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "wharf_" });
  const gauge = (name: string, help: string, read: (n: RaftNode) => number): void => {
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(read(node()));
      },
    });
  };
  gauge("wharf_raft_term", "Current Raft term.", (n) => n.status().term);
  gauge("wharf_raft_commit_index", "Highest log index known committed.", (n) => n.status().commit);
  gauge("wharf_raft_applied_index", "Highest log index applied to the state machine.", (n) => n.state.applied);
  gauge("wharf_raft_apply_lag", "Committed entries not yet applied.", (n) => n.status().commit - n.state.applied);
  gauge("wharf_raft_is_leader", "1 if this agent is the leader.", (n) => (n.status().role === "leader" ? 1 : 0));
  gauge("wharf_raft_members", "Members in the configuration (voters and learners).", (n) => {
    const cs = n.status().confState;
    return cs.voters.length + cs.learners.length;
  });
  return {
    registry,
    proposalSeconds: new Histogram({
      name: "wharf_raft_proposal_seconds",
      help: "Time from proposal to local apply.",
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    leaderChanges: new Counter({ name: "wharf_raft_leader_changes_total", help: "Leader changes seen.", registers: [registry] }),
    messages: new Counter({
      name: "wharf_raft_messages_total",
      help: "Raft messages sent to and received from peers, by type.",
      labelNames: ["direction", "type"] as const,
      registers: [registry],
    }),
  };
}

/** Serves /metrics on HOST:PORT; returns a function that stops it. */
export async function serveMetrics(registry: Registry, addr: string): Promise<() => Promise<void>> {
  const m = /^(.*):(\d+)$/.exec(addr);
  if (!m) throw new Error(`--metrics takes HOST:PORT, got ${addr}`);
  const server = createServer((req, res) => {
    if (req.url !== "/metrics") return void res.writeHead(404).end();
    registry.metrics().then(
      (body) => res.writeHead(200, { "content-type": registry.contentType }).end(body),
      (e: Error) => res.writeHead(500).end(e.message),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(Number(m[2]), m[1], () => resolve());
  });
  return () => new Promise<void>((resolve) => server.close(() => resolve()));
}
