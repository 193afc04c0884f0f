// The agent's local API: JSON over HTTP on a unix socket that only the
// agent's user can open (mode 0600). The `wharf` command is its client.

import { chmod, rm } from "node:fs/promises";
import { type IncomingMessage, type ServerResponse, createServer } from "node:http";
import { z } from "zod";
import type { Agent } from "../agent/agent.js";
import { WharfError, errorCodeOf } from "../errors.js";

const HTTP_STATUS: Record<string, number> = {
  INVALID_ARGUMENT: 400,
  NOT_FOUND: 404,
  NO_LEADER: 503,
  BUSY: 503,
  TIMEOUT: 504,
  UNAVAILABLE: 503,
  SHUTTING_DOWN: 503,
};

const putSchema = z.object({ key: z.string().min(1).max(256), value: z.string().max(1 << 20) });
const removeSchema = z.object({ id: z.string().min(1).max(128) });

async function body(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > 2 << 20) throw new WharfError("INVALID_ARGUMENT", "request body too large");
    chunks.push(c as Buffer);
  }
  if (n === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new WharfError("INVALID_ARGUMENT", "request body is not JSON");
  }
}

function parse<T>(schema: z.ZodType<T>, v: unknown): T {
  const r = schema.safeParse(v);
  if (!r.success) throw new WharfError("INVALID_ARGUMENT", r.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; "));
  return r.data;
}

export function statusOf(agent: Agent): object {
  const st = agent.node.status();
  // Only the leader hears from every member; a follower reports the
  // liveness of the leader and itself, and assumes the others alive.
  const alive = (id: string): boolean => (st.role === "leader" || id === st.lead ? agent.isAlive(id) : true);
  const members = [
    ...st.confState.voters.map((id) => ({ id, role: "voter" as const })),
    ...st.confState.learners.map((id) => ({ id, role: "learner" as const })),
  ].map((m) => ({ ...m, addrs: agent.node.state.members.get(m.id)?.addrs ?? (m.id === agent.id ? agent.host.addrs() : []), alive: alive(m.id) }));
  return {
    id: agent.id,
    leader: st.lead,
    role: st.role,
    term: st.term,
    vote: st.vote,
    commitIndex: st.commit,
    appliedIndex: agent.node.state.applied,
    members,
  };
}

export async function serveApi(agent: Agent, socketPath: string, onLeave: () => void): Promise<() => Promise<void>> {
  await rm(socketPath, { force: true });
  const server = createServer((req, res) => void handle(agent, req, res, onLeave));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => resolve());
  });
  await chmod(socketPath, 0o600);
  return () => new Promise<void>((resolve) => server.close(() => resolve()));
}

async function handle(agent: Agent, req: IncomingMessage, res: ServerResponse, onLeave: () => void): Promise<void> {
  const url = new URL(req.url ?? "/", "http://agent");
  const signal = AbortSignal.timeout(Number(url.searchParams.get("timeoutMs") ?? 10_000));
  try {
    let out: unknown;
    const route = `${req.method} ${url.pathname}`;
    switch (route) {
      case "GET /status":
        out = statusOf(agent);
        break;
      case "POST /kv": {
        const { key, value } = parse(putSchema, await body(req));
        out = await agent.node.propose({ type: "put", key, value }, signal);
        break;
      }
      case "GET /kv": {
        const key = url.searchParams.get("key") ?? "";
        await agent.node.linearizableRead(signal);
        out = { key, value: agent.node.state.kv.get(key) ?? null };
        break;
      }
      case "GET /kv/all":
        out = { applied: agent.node.state.applied, kv: Object.fromEntries(agent.node.state.kv) };
        break;
      case "POST /members/remove": {
        const { id } = parse(removeSchema, await body(req));
        await agent.node.changeMembership({ type: "removeNode", node: id }, signal);
        out = { ok: true };
        break;
      }
      case "POST /leave":
        await agent.node.changeMembership({ type: "removeNode", node: agent.id }, signal);
        out = { ok: true };
        setImmediate(onLeave);
        break;
      default:
        throw new WharfError("NOT_FOUND", `no such endpoint: ${route}`);
    }
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(out));
  } catch (e) {
    const code = errorCodeOf(e);
    res
      .writeHead(HTTP_STATUS[code] ?? 500, { "content-type": "application/json" })
      .end(JSON.stringify({ error: { code, message: (e as Error).message } }));
  }
}
