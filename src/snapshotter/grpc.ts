// containerd's proxy snapshotter service (containerd.services.snapshots.v1.Snapshots)
// over a unix socket, in front of any Snapshotter. This adapter only
// validates requests (zod), converts messages and maps errors (grpcStatusOf in
// src/errors.ts); every decision is the Snapshotter's.
//
// Wire details that containerd depends on:
// - `kind` is always set: containerd 1.6 reads UNKNOWN as committed.
// - `target` of a mount stays empty.
// - int64 (Usage) goes out as decimal strings (the loader decodes longs as strings).
// - List streams batches of at most 100 infos (and well under the 16 MiB cap).

import { once } from "node:events";
import { existsSync } from "node:fs";
import { lstat, mkdir, rm } from "node:fs/promises";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import type { Logger } from "pino";
import { z } from "zod";
import { WharfError, grpcStatusOfError } from "../errors.js";
import type { Info, Kind, Mount, Snapshotter } from "./interface.js";

export const SNAPSHOTS_SERVICE = "containerd.services.snapshots.v1.Snapshots";
/** Infos per List message (containerd's own server sends 100). */
export const LIST_BATCH = 100;
/** A List message is flushed early past this many (estimated) bytes. */
const LIST_BATCH_BYTES = 4 << 20;
const MAX_MESSAGE = 16 << 20;

/** The repository's proto/ directory (from src/ under tsx, or from dist/src/ once built). */
export const PROTO_DIR: string = (() => {
  for (const rel of ["../../proto/", "../../../proto/"]) {
    const dir = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(`${dir}containerd/services/snapshots/v1/snapshots.proto`)) return dir;
  }
  throw new Error("proto/ not found next to the sources");
})();

/**
 * The loaded service definition. Field names keep their proto spelling
 * (created_at, update_mask); int64 decode as strings; enums as their names;
 * absent scalars decode as their defaults (so "" for an unset parent).
 */
export function loadSnapshotsDefinition(): protoLoader.PackageDefinition {
  return protoLoader.loadSync("containerd/services/snapshots/v1/snapshots.proto", {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    arrays: true,
    objects: false,
    oneofs: true,
  });
}

const KIND: Record<Kind, string> = { view: "VIEW", active: "ACTIVE", committed: "COMMITTED" };

const labelsSchema = z.record(z.string(), z.string());
const keySchema = z.string().min(1, "key must not be empty");
const prepareSchema = z.object({ key: keySchema, parent: z.string(), labels: labelsSchema });
const keyRequestSchema = z.object({ key: keySchema });
const commitSchema = z.object({ name: z.string().min(1, "name must not be empty"), key: keySchema, labels: labelsSchema });
const updateSchema = z.object({
  info: z.object({ name: z.string().min(1, "info.name must not be empty"), labels: labelsSchema }),
  update_mask: z.object({ paths: z.array(z.string()) }).nullish(),
});
const listSchema = z.object({ filters: z.array(z.string()) });

function timestamp(d: Date): { seconds: string; nanos: number } {
  const ms = d.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: (ms - seconds * 1000) * 1_000_000 };
}

function infoMessage(i: Info): Record<string, unknown> {
  return {
    name: i.name,
    parent: i.parent,
    kind: KIND[i.kind],
    created_at: timestamp(i.created),
    updated_at: timestamp(i.updated),
    labels: { ...i.labels },
  };
}

function mountsMessage(ms: readonly Mount[]): { mounts: Record<string, unknown>[] } {
  return { mounts: ms.map((m) => ({ type: m.type, source: m.source, target: "", options: [...m.options] })) };
}

/** A request that fails its schema is the caller's mistake: INVALID_ARGUMENT. */
function parse<T>(schema: z.ZodType<T>, req: unknown): T {
  const r = schema.safeParse(req);
  if (!r.success) throw new WharfError("INVALID_ARGUMENT", z.prettifyError(r.error));
  return r.data;
}

function statusOf(e: unknown): grpc.ServerErrorResponse {
  const err = new Error(e instanceof Error ? e.message : String(e)) as grpc.ServerErrorResponse;
  err.code = grpcStatusOfError(e);
  err.details = err.message;
  return err;
}

/** Conditions that are part of containerd's normal flow (not worth more than debug). */
const EXPECTED = new Set<number>([
  grpc.status.NOT_FOUND,
  grpc.status.ALREADY_EXISTS,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.INVALID_ARGUMENT,
]);

function buildService(sn: Snapshotter, log: Logger): grpc.UntypedServiceImplementation {
  const unary =
    <T>(rpc: string, schema: z.ZodType<T>, fn: (req: T) => Promise<unknown>) =>
    (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>): void => {
      const t0 = performance.now();
      Promise.resolve()
        .then(() => fn(parse(schema, call.request)))
        .then(
          (res) => {
            log.debug({ rpc, ms: performance.now() - t0 }, "snapshots rpc");
            cb(null, res);
          },
          (e: unknown) => {
            const st = statusOf(e);
            const ctx = { rpc, code: grpc.status[st.code ?? 2], request: call.request, ms: performance.now() - t0 };
            if (EXPECTED.has(st.code ?? 2)) log.debug(ctx, `snapshots rpc: ${st.details}`);
            else log.error({ ...ctx, err: e }, "snapshots rpc failed");
            cb(st);
          },
        );
    };

  const list = (call: grpc.ServerWritableStream<unknown, unknown>): void => {
    const ac = new AbortController();
    call.on("cancelled", () => ac.abort(new WharfError("UNAVAILABLE", "List cancelled by the client")));
    (async () => {
      const req = parse(listSchema, call.request);
      let batch: Record<string, unknown>[] = [];
      let bytes = 0;
      const flush = async (): Promise<void> => {
        if (batch.length === 0) return;
        const msg = { info: batch };
        batch = [];
        bytes = 0;
        if (!call.write(msg)) await once(call, "drain", { signal: ac.signal });
      };
      for await (const info of sn.list(req.filters, { signal: ac.signal })) {
        batch.push(infoMessage(info));
        bytes += 256 + info.name.length + info.parent.length;
        for (const [k, v] of Object.entries(info.labels)) bytes += k.length + v.length + 8;
        if (batch.length >= LIST_BATCH || bytes >= LIST_BATCH_BYTES) await flush();
      }
      await flush();
    })().then(
      () => call.end(),
      (e: unknown) => {
        if (ac.signal.aborted) return;
        const st = statusOf(e);
        log.debug({ rpc: "List", code: grpc.status[st.code ?? 2], err: e }, "snapshots List failed");
        call.emit("error", st);
      },
    );
  };

  return {
    Prepare: unary("Prepare", prepareSchema, async (r) => mountsMessage(await sn.prepare(r.key, r.parent, { labels: r.labels }))),
    View: unary("View", prepareSchema, async (r) => mountsMessage(await sn.view(r.key, r.parent, { labels: r.labels }))),
    Mounts: unary("Mounts", keyRequestSchema, async (r) => mountsMessage(await sn.mounts(r.key))),
    Commit: unary("Commit", commitSchema, async (r) => {
      await sn.commit(r.name, r.key, { labels: r.labels });
      return {};
    }),
    Remove: unary("Remove", keyRequestSchema, async (r) => {
      await sn.remove(r.key);
      return {};
    }),
    Stat: unary("Stat", keyRequestSchema, async (r) => ({ info: infoMessage(await sn.stat(r.key)) })),
    Update: unary("Update", updateSchema, async (r) => ({
      info: infoMessage(await sn.update(r.info, r.update_mask?.paths ?? [])),
    })),
    List: list,
    Usage: unary("Usage", keyRequestSchema, async (r) => {
      const u = await sn.usage(r.key);
      return { size: String(u.size), inodes: String(u.inodes) };
    }),
    Cleanup: unary("Cleanup", z.object({}), async () => {
      await sn.cleanup();
      return {};
    }),
  };
}

export interface SnapshotterServer {
  /** Stops accepting calls, waits (up to 5 s) for those in flight, removes the socket file. */
  close(): Promise<void>;
}

/**
 * Serves `snapshotter` as containerd's proxy snapshotter on the unix socket
 * `socketPath` (a stale socket file there is removed first; any other kind
 * of file is refused). Resolves once the socket accepts connections.
 */
export async function serveSnapshotter(snapshotter: Snapshotter, socketPath: string, log: Logger): Promise<SnapshotterServer> {
  await mkdir(dirname(socketPath), { recursive: true });
  const st = await lstat(socketPath).catch(() => undefined);
  if (st) {
    if (!st.isSocket()) throw new WharfError("INVALID_ARGUMENT", `${socketPath} exists and is not a socket`);
    await rm(socketPath, { force: true });
  }
  const def = loadSnapshotsDefinition();
  const server = new grpc.Server({
    "grpc.max_receive_message_length": MAX_MESSAGE,
    "grpc.max_send_message_length": MAX_MESSAGE,
  });
  server.addService(def[SNAPSHOTS_SERVICE] as grpc.ServiceDefinition, buildService(snapshotter, log));
  await new Promise<void>((res, rej) =>
    server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? rej(err) : res())),
  );
  log.info({ socket: socketPath }, "snapshotter serving");
  let closing: Promise<void> | undefined;
  return {
    close: () =>
      (closing ??= (async () => {
        await new Promise<void>((res) => {
          const timer = setTimeout(() => {
            server.forceShutdown();
            res();
          }, 5000);
          server.tryShutdown(() => {
            clearTimeout(timer);
            res();
          });
        });
        await rm(socketPath, { force: true });
      })()),
  };
}
