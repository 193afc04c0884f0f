// Shared by the snapshotter tests: an OverlaySnapshotter served on a real
// unix socket, a grpc-js client built from the same protos (raw messages, no
// conversion: what containerd would see), and mount(8) helpers.

import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import type { Test } from "tap";
import { SNAPSHOTS_SERVICE, loadSnapshotsDefinition, serveSnapshotter } from "../../src/snapshotter/grpc.js";
import { type OverlayOptions, OverlaySnapshotter } from "../../src/snapshotter/overlay.js";

/** Raw messages as decoded by proto-loader (keepCase, longs and enums as strings). */
export interface MountMsg {
  type: string;
  source: string;
  target: string;
  options: string[];
}
export interface InfoMsg {
  name: string;
  parent: string;
  kind: string;
  created_at: { seconds: string; nanos: number } | null;
  updated_at: { seconds: string; nanos: number } | null;
  labels: Record<string, string>;
}

export interface Client {
  call<T = Record<string, unknown>>(rpc: string, req: Record<string, unknown>): Promise<T>;
  /** List, keeping each streamed message's batch. */
  list(filters?: string[]): Promise<{ infos: InfoMsg[]; batches: number[] }>;
  close(): void;
}

export function client(socket: string): Client {
  const def = loadSnapshotsDefinition();
  const Ctor = grpc.makeClientConstructor(def[SNAPSHOTS_SERVICE] as grpc.ServiceDefinition, "Snapshots");
  const c = new Ctor(`unix:${socket}`, grpc.credentials.createInsecure()) as unknown as Record<
    string,
    (req: unknown, cb?: (err: grpc.ServiceError | null, res: unknown) => void) => unknown
  > &
    grpc.Client;
  return {
    call: <T>(rpc: string, req: Record<string, unknown>) =>
      new Promise<T>((res, rej) => {
        c[rpc]!.call(c, { snapshotter: "wharf", ...req }, (err, r) => (err ? rej(err) : res(r as T)));
      }),
    list: (filters = []) =>
      new Promise((res, rej) => {
        const infos: InfoMsg[] = [];
        const batches: number[] = [];
        const stream = c.List!.call(c, { snapshotter: "wharf", filters }) as grpc.ClientReadableStream<{ info: InfoMsg[] }>;
        stream.on("data", (m: { info: InfoMsg[] }) => {
          batches.push(m.info.length);
          infos.push(...m.info);
        });
        stream.on("error", rej);
        stream.on("end", () => res({ infos, batches }));
      }),
    close: () => c.close(),
  };
}

export interface Served {
  dir: string;
  root: string;
  socket: string;
  sn: OverlaySnapshotter;
  c: Client;
  /** Closes the server and the snapshotter (also done in teardown). */
  stop(): Promise<void>;
}

/** A temp dir removed at teardown (unmounting anything left mounted under it first). */
export function sandbox(t: Test, prefix = "wharf-sn-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => {
    try {
      const mounts = execFileSync("findmnt", ["-rn", "-o", "TARGET"], { encoding: "utf8" })
        .split("\n")
        .filter((m) => m.startsWith(`${dir}/`))
        .reverse();
      for (const m of mounts) execFileSync("umount", ["-l", m]);
    } catch {
      // findmnt missing or nothing mounted: nothing to undo.
    }
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

export async function serve(t: Test, opts: OverlayOptions = {}): Promise<Served> {
  const dir = sandbox(t);
  const root = join(dir, "root");
  const socket = join(dir, "sn.sock");
  const sn = await OverlaySnapshotter.open(root, opts);
  const server = await serveSnapshotter(sn, socket, pino({ level: process.env.WHARF_TEST_LOG ?? "silent" }));
  const c = client(socket);
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      c.close();
      await server.close();
      await sn.close();
    })());
  t.teardown(stop);
  return { dir, root, socket, sn, c, stop };
}

/** Mounts a snapshotter mount at `target` (created) with mount(8). */
export function mountAt(m: MountMsg, target: string): void {
  mkdirSync(target, { recursive: true });
  const args = m.type === "bind" ? ["-o", m.options.join(","), m.source, target] : ["-t", m.type, "-o", m.options.join(","), m.source, target];
  execFileSync("mount", args, { stdio: ["ignore", "ignore", "pipe"] });
}

export function umount(target: string): void {
  execFileSync("umount", [target]);
}

/** The value of `name=` among mount options. */
export function option(m: MountMsg, name: string): string | undefined {
  const o = m.options.find((x) => x.startsWith(`${name}=`));
  return o?.slice(name.length + 1);
}
