// The agent's local API: JSON over HTTP on a unix socket that only the
// agent's user can open (mode 0600). The `wharf` command is its client.

import { createHash } from "node:crypto";
import { chmod, rm } from "node:fs/promises";
import { type IncomingMessage, type ServerResponse, createServer } from "node:http";
import { z } from "zod";
import type { Agent } from "../agent/agent.js";
import { abortable } from "../abortable.js";
import { WharfError, errorCodeOf } from "../errors.js";
import { type ResolvedImage, parsePlatform } from "../registry/client.js";
import { formatReference, parseReference } from "../registry/reference.js";

const HTTP_STATUS: Record<string, number> = {
  INVALID_ARGUMENT: 400,
  NOT_FOUND: 404,
  NO_LEADER: 503,
  BUSY: 503,
  TIMEOUT: 504,
  UNAVAILABLE: 503,
  SHUTTING_DOWN: 503,
};

const pullSchema = z.object({
  ref: z.string().min(1).max(512),
  platform: z.string().max(128).optional(),
  /** Also register the image in this containerd (its socket), as its unpacker would. */
  containerd: z
    .object({ socket: z.string().min(1).max(4096), namespace: z.string().min(1).max(76).default("default"), snapshotter: z.string().min(1).max(64).default("wharf") })
    .optional(),
});
const refSchema = z.object({ ref: z.string().min(1).max(512) });
const mountSchema = z.object({ ref: z.string().min(1).max(512), target: z.string().min(1).max(4096) });
const umountSchema = z.object({ target: z.string().min(1).max(4096) });
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
  // Closing ends the requests in flight too (a pull stream would otherwise
  // hold the agent's shutdown for as long as the pull lasts): their clients
  // see the connection drop, and the work they started is aborted.
  return () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
}

/**
 * A pull answers with newline-delimited JSON: progress events as they
 * happen, then one line `{"result": summary}` or `{"error": {code, message}}`.
 * The caller going away stops waiting, not the layer downloads (they belong
 * to the agent and other pulls may share them).
 */
async function pull(agent: Agent, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const gone = new AbortController();
  res.once("close", () => gone.abort(new WharfError("SHUTTING_DOWN", "the client went away")));
  let started = false;
  const line = (v: unknown): void => {
    if (!started) res.writeHead(200, { "content-type": "application/x-ndjson" });
    started = true;
    res.write(`${JSON.stringify(v)}\n`);
  };
  try {
    const { ref, platform, containerd } = parse(pullSchema, await body(req));
    const result = await agent.puller.pull(ref, {
      signal: gone.signal,
      onEvent: (e) => line({ event: e }),
      ...(platform ? { platform: parsePlatform(platform) } : {}),
      ...(containerd ? { alongside: (img: ResolvedImage, present: (i: number) => Promise<void>) => agent.registerInContainerd(img, containerd, present) } : {}),
    });
    line({ result });
  } catch (e) {
    const error = { code: errorCodeOf(e), message: (e as Error).message };
    if (started) line({ error });
    else res.writeHead(HTTP_STATUS[error.code] ?? 500, { "content-type": "application/json" }).write(JSON.stringify({ error }));
  }
  res.end();
}

function imagesOf(agent: Agent): object[] {
  return [...agent.node.state.images].map(([reference, img]) => ({
    reference,
    manifestDigest: img.manifestDigest,
    configDigest: img.configDigest,
    platform: img.platform,
    layers: img.layers,
    size: img.layers.reduce((n, d) => n + (agent.node.state.layers.get(d)?.size ?? 0), 0),
    holders: img.holders,
    heldHere: img.holders.includes(agent.id),
    since: img.since,
  }));
}

function layersOf(agent: Agent): object[] {
  const st = agent.node.state;
  return [...st.layers].map(([diffID, l]) => ({
    diffID,
    blob: l.blob,
    size: l.size,
    unpacked: l.unpacked,
    state: l.state,
    committedAt: l.committedAt,
    attempt: l.attempt,
    images: [...st.images].filter(([, i]) => i.layers.includes(diffID)).map(([r]) => r),
    // What pins it, as "AGENT HOLDER": the images agents hold (HOLDER is the
    // reference) and containerd snapshots ("snapshot:<name>").
    holders: [
      ...[...st.images].filter(([, i]) => i.layers.includes(diffID)).flatMap(([r, i]) => i.holders.map((a) => `${a} ${r}`)),
      ...[...st.refs].filter(([, ls]) => ls.includes(diffID)).map(([k]) => k),
    ],
    path: agent.layers.layerPath(diffID),
  }));
}

async function handle(agent: Agent, req: IncomingMessage, res: ServerResponse, onLeave: () => void): Promise<void> {
  const url = new URL(req.url ?? "/", "http://agent");
  if (req.method === "POST" && url.pathname === "/pull") return pull(agent, req, res);
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
      case "GET /state":
        // Agents that applied the same index must hold the same state: the
        // digest lets a checker compare them without shipping the state.
        out = { applied: agent.node.state.applied, digest: createHash("sha256").update(agent.node.state.encode()).digest("hex") };
        break;
      case "GET /kv/all":
        out = { applied: agent.node.state.applied, kv: Object.fromEntries(agent.node.state.kv) };
        break;
      case "GET /images":
        await agent.node.linearizableRead(signal);
        out = imagesOf(agent);
        break;
      case "GET /layers":
        await agent.node.linearizableRead(signal);
        out = layersOf(agent);
        break;
      case "GET /transfers":
        await agent.node.linearizableRead(signal);
        out = [...agent.node.state.transfers].map(([diffID, t]) => ({
          diffID,
          blob: t.source.blob,
          repository: t.source.repository,
          size: t.source.size,
          owner: t.owner,
          attempt: t.attempt,
          waiters: t.waiters,
          since: t.since,
        }));
        break;
      case "POST /rmi": {
        const { ref } = parse(refSchema, await body(req));
        const mounted = agent.mounts.of(formatReference(parseReference(ref)));
        if (mounted.length > 0) throw new WharfError("BUSY", `${ref} is mounted at ${mounted.map((m) => m.target).join(", ")}`);
        out = await agent.puller.remove(ref, signal);
        break;
      }
      case "GET /mounts":
        out = agent.mounts.list();
        break;
      case "POST /mount": {
        const { ref, target } = parse(mountSchema, await body(req));
        const reference = formatReference(parseReference(ref));
        // This agent's own holds, from its local state: no quorum needed, so
        // an agent cut off from the majority still mounts what it holds.
        const img = agent.node.state.images.get(reference);
        if (!img || !img.holders.includes(agent.id)) {
          throw new WharfError("NOT_FOUND", `this agent holds no image ${reference}: pull it first`);
        }
        out = await agent.mounts.mount(reference, img.layers, target);
        break;
      }
      case "POST /umount": {
        const { target } = parse(umountSchema, await body(req));
        out = await agent.mounts.umount(target);
        break;
      }
      case "POST /members/remove": {
        const { id } = parse(removeSchema, await body(req));
        await agent.node.changeMembership({ type: "removeNode", node: id }, signal);
        out = { ok: true };
        break;
      }
      case "POST /leave": {
        // The agent stops once it is out, whether or not this request still waits.
        const left = agent.leave();
        left.then(() => setImmediate(onLeave), () => {});
        await abortable(left, signal, () => new WharfError("TIMEOUT", "the leave is not done yet (no quorum?); it goes on, and the agent stops once it is out"));
        out = { ok: true };
        break;
      }
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
