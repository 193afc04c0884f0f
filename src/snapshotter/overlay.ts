// The overlay snapshotter: snapshot data in ROOT/snapshots/<id>/{fs,work} on
// this host's local disk, metadata in LevelDB at ROOT/metadata.
//
// Metadata (one db.batch per operation, so a crash leaves either the old or
// the new state):
//   s/<name>              → the snapshot's record (JSON)
//   c/<parent>\0<child>   → "" (the children index: remove refuses a parent)
//   m/seq                 → the last data directory id handed out
//
// Data directories follow containerd's order: built under a temporary name,
// renamed into place, then recorded. Removal is containerd's async_remove:
// remove() forgets the record (without an fsync: a removal a power cut
// undoes is removed again by containerd's next garbage collection), and
// cleanup(), which containerd calls after collecting, makes the removals
// durable and frees every unreferenced directory, crashed builds included.
// A container start never waits behind the removal of the last one.
//
// External snapshots: a committed snapshot whose `fs` is a directory of the
// shared store, recorded when `resolveRemote` claims a Prepare (containerd's
// remote-snapshotter protocol). They are ordinary committed snapshots to
// every reader (stat, list, mounts, usage, parents of active snapshots and
// views); remove forgets them without touching their directory. One may be
// recorded before its layer is in the store (`RemoteSnapshot.pending`):
// nothing above it is prepared, viewed or mounted before `materialize`
// has made its layer present.

import { existsSync, lchownSync, mkdirSync, mkdtempSync, renameSync } from "node:fs";
import { lstat, mkdir, opendir, readdir, rm, stat as fsStat } from "node:fs/promises";
import { isAbsolute, join } from "node:path";
import { ClassicLevel } from "classic-level";
import { type Logger, pino } from "pino";
import { abortable } from "../abortable.js";
import { WharfError } from "../errors.js";
import { compileFilters } from "./filters.js";
import type { Info, Kind, Mount, SnapshotOptions, Signalled, Snapshotter, Usage } from "./interface.js";

/** The label by which containerd's unpacker asks for a layer by chain id. */
export const SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref";
/** containerd's limit on one label: key + value, in bytes. */
export const MAX_LABEL_BYTES = 4096;

export interface RemoteRequest {
  /** The key of the Prepare (containerd's "extract-<nanos>-<rand> <chainID>"). */
  readonly key: string;
  /** The parent's backend name ("" for the base layer). */
  readonly parent: string;
  /** The Prepare's labels, with `containerd.io/snapshot.ref` among them. */
  readonly labels: Readonly<Record<string, string>>;
}

export interface RemoteSnapshot {
  /** The committed snapshot's name: the ref label's value (the layer's chain id). */
  readonly name: string;
  /** Absolute path of the layer's tree in the shared store; used as a lower dir, never written or deleted. */
  readonly dir: string;
  /** Labels of the committed snapshot; the ref label is added if missing. */
  readonly labels: Readonly<Record<string, string>>;
  /** The layer is on its way to `dir` (not there yet): the snapshot is recorded all the same. */
  readonly pending?: boolean;
}

/**
 * Asked on every Prepare that carries `containerd.io/snapshot.ref`: a layer
 * that already exists elsewhere (undefined: not available, fetch and apply it
 * as usual). A rejection is logged and treated as undefined, so that a pull
 * falls back to the ordinary path.
 */
export type ResolveRemote = (req: RemoteRequest) => Promise<RemoteSnapshot | undefined>;

export interface OverlayOptions {
  readonly resolveRemote?: ResolveRemote;
  /** Called after an external snapshot's metadata is removed (errors are logged, not returned). */
  readonly onRemoveExternal?: (name: string) => void | Promise<void>;
  /**
   * Makes an external snapshot's layer present in the shared store (and
   * keeps it there). Awaited once per snapshot and process, before anything
   * above the snapshot is prepared, viewed or mounted; a rejection fails
   * that call, and the next one asks again.
   */
  readonly materialize?: (name: string, labels: Readonly<Record<string, string>>) => Promise<void>;
  readonly log?: Logger;
  /** How long an active snapshot's usage is reused, in ms (CRI asks every 10 s per container). Default 1000. */
  readonly activeUsageTtlMs?: number;
}

/** What LevelDB holds for a snapshot (its name is the key). */
interface SnapshotRecord {
  /** The data directory ROOT/snapshots/<id>; "" for an external snapshot. */
  readonly id: string;
  readonly kind: Kind;
  readonly parent: string;
  /** Milliseconds since the epoch. */
  readonly created: number;
  readonly updated: number;
  readonly labels: Record<string, string>;
  /** The tree of an external snapshot (shared store). */
  readonly external?: string;
}

type Db = ClassicLevel<string, string>;
type Op = { type: "put"; key: string; value: string } | { type: "del"; key: string };

const SNAP = "s/";
const CHILD = "c/";
const SEQ = "m/seq";
const snapKey = (name: string): string => SNAP + name;
const childKey = (parent: string, child: string): string => `${CHILD}${parent}\0${child}`;

/** Serializes the operations that read-check-then-write the metadata. */
class Mutex {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.tail.then(fn, fn);
    this.tail = p.catch(() => undefined);
    return p;
  }
}

function validateName(what: string, name: string): void {
  if (name === "") throw new WharfError("INVALID_ARGUMENT", `${what} must not be empty`);
  if (name.includes("\0")) throw new WharfError("INVALID_ARGUMENT", `${what} ${JSON.stringify(name)} contains NUL`);
}

/** containerd's labels.Validate: each key + value at most 4096 bytes. */
export function validateLabels(labels: Readonly<Record<string, string>>): void {
  for (const [k, v] of Object.entries(labels)) {
    const n = Buffer.byteLength(k) + Buffer.byteLength(v);
    if (n > MAX_LABEL_BYTES) {
      throw new WharfError(
        "INVALID_ARGUMENT",
        `label ${JSON.stringify(k.slice(0, 64))}: key and value length (${n} bytes) greater than maximum size (${MAX_LABEL_BYTES} bytes)`,
      );
    }
  }
}

/**
 * Disk usage of a tree like containerd's fs.DiskUsage: allocated blocks of
 * every inode (the root included), each hard-linked inode counted once.
 */
export async function diskUsage(root: string): Promise<Usage> {
  const seen = new Set<string>();
  let size = 0;
  const count = async (path: string): Promise<boolean> => {
    const st = await lstat(path, { bigint: true });
    const id = `${st.dev}:${st.ino}`;
    if (!seen.has(id)) {
      seen.add(id);
      size += Number(st.blocks) * 512;
    }
    return st.isDirectory();
  };
  await count(root);
  const dirs = [root];
  for (let dir = dirs.pop(); dir !== undefined; dir = dirs.pop()) {
    const d = await opendir(dir, { bufferSize: 256 });
    const entries: { path: string; isDir: boolean }[] = [];
    for await (const e of d) entries.push({ path: join(dir, e.name), isDir: e.isDirectory() });
    // Bounded parallelism: one directory's entries at a time.
    await Promise.all(entries.map(async (e) => void (await count(e.path))));
    for (const e of entries) if (e.isDir) dirs.push(e.path);
  }
  return { size, inodes: seen.size };
}

export class OverlaySnapshotter implements Snapshotter {
  private readonly lock = new Mutex();
  private readonly log: Logger;
  private readonly activeTtl: number;
  private seq = 0;
  private closed = false;
  /** Committed trees never change: their usage is computed once (per name, dropped on remove). */
  private readonly committedUsage = new Map<string, Promise<Usage>>();
  /** Active trees: a walk at most every `activeTtl` ms per key, shared by concurrent callers. */
  private readonly activeUsage = new Map<string, { at: number; usage: Promise<Usage> }>();
  /**
   * The fs dirs of a committed snapshot and its ancestors, nearest first, by
   * name: a committed snapshot's chain never changes while it exists, and
   * each of its ancestors outlives it. Dropped on remove.
   */
  private readonly chains = new Map<string, readonly string[]>();
  /** Counts removals: a chain read while one happened is not cached. */
  private removals = 0;
  /** `materialize` of each external snapshot, by name, once it has been asked (dropped on remove or failure). */
  private readonly materialized = new Map<string, Promise<void>>();
  /**
   * Every record, as LevelDB holds it (loaded at open, updated after each
   * batch is written): containerd asks Stat and Mounts on every container
   * start, and a LevelDB read is a round trip through the thread pool.
   */
  private readonly records = new Map<string, SnapshotRecord>();

  private constructor(
    /** Local directory holding `metadata/` and `snapshots/`. */
    readonly root: string,
    private readonly db: Db,
    private readonly opts: OverlayOptions,
  ) {
    this.log = opts.log ?? pino({ level: "silent" });
    this.activeTtl = opts.activeUsageTtlMs ?? 1000;
  }

  /** Opens (creating if needed) the snapshotter whose state lives under `root` (a local disk). */
  static async open(root: string, opts: OverlayOptions = {}): Promise<OverlaySnapshotter> {
    await mkdir(join(root, "snapshots"), { recursive: true, mode: 0o700 });
    const db: Db = new ClassicLevel<string, string>(join(root, "metadata"), { keyEncoding: "utf8", valueEncoding: "utf8" });
    await db.open();
    const s = new OverlaySnapshotter(root, db, opts);
    s.seq = Number((await db.get(SEQ)) ?? "0");
    for await (const [k, v] of db.iterator({ gte: SNAP, lt: "s0" })) s.records.set(k.slice(SNAP.length), JSON.parse(v) as SnapshotRecord);
    return s;
  }

  private snapshotsDir(): string {
    return join(this.root, "snapshots");
  }

  /** The directory whose content the snapshot contributes (its upper dir while active). */
  private fsDir(r: SnapshotRecord): string {
    return r.external ?? join(this.snapshotsDir(), r.id, "fs");
  }

  private workDir(r: SnapshotRecord): string {
    return join(this.snapshotsDir(), r.id, "work");
  }

  private checkOpen(): void {
    if (this.closed) throw new WharfError("SHUTTING_DOWN", "the snapshotter is closed");
  }

  private get(name: string): SnapshotRecord | undefined {
    return this.records.get(name);
  }

  private must(name: string): SnapshotRecord {
    this.checkOpen();
    const r = this.get(name);
    if (!r) throw new WharfError("NOT_FOUND", `snapshot ${JSON.stringify(name)} does not exist`);
    return r;
  }

  private static info(name: string, r: SnapshotRecord): Info {
    return {
      name,
      parent: r.parent,
      kind: r.kind,
      created: new Date(r.created),
      updated: new Date(r.updated),
      labels: { ...r.labels },
    };
  }

  /** A parent must exist (NOT_FOUND) and be committed (INVALID_ARGUMENT). */
  private checkParent(parent: string): SnapshotRecord | undefined {
    if (parent === "") return undefined;
    const p = this.get(parent);
    if (!p) throw new WharfError("NOT_FOUND", `parent snapshot ${JSON.stringify(parent)} does not exist`);
    if (p.kind !== "committed") {
      throw new WharfError("INVALID_ARGUMENT", `parent ${JSON.stringify(parent)} is not a committed snapshot`);
    }
    return p;
  }

  /**
   * The fs dirs of `parent` and its ancestors, nearest first. Cached per
   * committed snapshot: every Prepare and Mounts of a container on an image
   * of n layers would otherwise read n records.
   */
  private async lowerDirs(parent: string): Promise<string[]> {
    if (parent === "") return [];
    const cached = this.chains.get(parent);
    if (cached) return [...cached];
    const removals = this.removals;
    const r = this.get(parent);
    if (!r) throw new WharfError("INTERNAL", `snapshot chain broken: parent ${JSON.stringify(parent)} is missing`);
    const dirs = [this.fsDir(r), ...(await this.lowerDirs(r.parent))];
    if (r.kind === "committed" && removals === this.removals) this.chains.set(parent, dirs);
    return [...dirs];
  }

  /** Resolves once the layer of every external snapshot in the chain from `name` down is present. */
  private async lowersPresent(name: string): Promise<void> {
    const materialize = this.opts.materialize;
    if (!materialize) return;
    const waits: Promise<void>[] = [];
    for (let n = name, r = this.get(n); r; n = r.parent, r = this.get(n)) {
      if (r.external === undefined) continue;
      let p = this.materialized.get(n);
      if (!p) {
        const asked = materialize(n, r.labels);
        asked.catch(() => this.materialized.get(n) === asked && this.materialized.delete(n));
        this.materialized.set(n, (p = asked));
      }
      waits.push(p);
    }
    await Promise.all(waits);
  }

  /** The mounts of containerd's overlay snapshotter (see containerd-snapshotter.md). */
  private async mountsOf(r: SnapshotRecord): Promise<Mount[]> {
    if (r.kind === "committed") {
      // Not a containerd case (its overlay refuses): a read-only view of the snapshot itself.
      const dirs = [this.fsDir(r), ...(await this.lowerDirs(r.parent))];
      return dirs.length === 1
        ? [{ type: "bind", source: dirs[0]!, options: ["ro", "rbind"] }]
        : [{ type: "overlay", source: "overlay", options: [`lowerdir=${dirs.join(":")}`] }];
    }
    const lower = await this.lowerDirs(r.parent);
    if (lower.length === 0) {
      return [{ type: "bind", source: this.fsDir(r), options: [r.kind === "active" ? "rw" : "ro", "rbind"] }];
    }
    if (r.kind === "view") {
      return lower.length === 1
        ? [{ type: "bind", source: lower[0]!, options: ["ro", "rbind"] }]
        : [{ type: "overlay", source: "overlay", options: [`lowerdir=${lower.join(":")}`] }];
    }
    return [
      {
        type: "overlay",
        source: "overlay",
        options: [`workdir=${this.workDir(r)}`, `upperdir=${this.fsDir(r)}`, `lowerdir=${lower.join(":")}`],
      },
    ];
  }

  async stat(key: string): Promise<Info> {
    return OverlaySnapshotter.info(key, this.must(key));
  }

  async mounts(key: string): Promise<Mount[]> {
    const r = this.must(key);
    await this.lowersPresent(r.kind === "committed" ? key : r.parent);
    return this.mountsOf(r);
  }

  async prepare(key: string, parent: string, opts: SnapshotOptions = {}): Promise<Mount[]> {
    const labels = { ...opts.labels };
    validateName("key", key);
    validateLabels(labels);
    const ref = labels[SNAPSHOT_REF_LABEL];
    if (ref !== undefined && this.opts.resolveRemote && (await this.tryRemote(key, parent, labels, ref))) {
      // The remote-snapshotter answer: containerd now Lists by ref label and
      // parent and takes the committed snapshot recorded by tryRemote.
      throw new WharfError("ALREADY_EXISTS", `snapshot ${JSON.stringify(ref)} already exists (remote)`);
    }
    return this.create("active", key, parent, labels);
  }

  async view(key: string, parent: string, opts: SnapshotOptions = {}): Promise<Mount[]> {
    const labels = { ...opts.labels };
    validateName("key", key);
    validateLabels(labels);
    return this.create("view", key, parent, labels);
  }

  /**
   * True if `resolveRemote` provided the layer and a committed snapshot
   * carrying the ref label and `parent` now exists. False whenever the
   * ordinary Prepare must proceed (it then reports bad keys and parents).
   */
  private async tryRemote(key: string, parent: string, labels: Record<string, string>, ref: string): Promise<boolean> {
    this.checkOpen();
    if (this.get(key)) return false;
    try {
      this.checkParent(parent);
    } catch {
      return false;
    }
    let remote: RemoteSnapshot | undefined;
    try {
      remote = await this.opts.resolveRemote!({ key, parent, labels: { ...labels } });
    } catch (e) {
      this.log.warn({ key, parent, ref, err: e }, "resolveRemote failed; preparing a local snapshot");
      return false;
    }
    if (!remote) return false;
    const rlabels = { ...remote.labels, [SNAPSHOT_REF_LABEL]: ref };
    try {
      validateName("remote name", remote.name);
      if (!isAbsolute(remote.dir)) throw new WharfError("INVALID_ARGUMENT", `remote dir ${remote.dir} is not absolute`);
      validateLabels(rlabels);
      if (!remote.pending && !(await fsStat(remote.dir)).isDirectory()) throw new WharfError("INVALID_ARGUMENT", `${remote.dir} is not a directory`);
    } catch (e) {
      this.log.error({ key, ref, remote, err: e }, "resolveRemote returned an unusable snapshot; preparing a local one");
      return false;
    }
    return this.lock.run(async () => {
      this.checkOpen();
      const existing = this.get(remote.name);
      if (existing) {
        // Already recorded (an earlier pull of the same chain): idempotent.
        if (existing.kind === "committed" && existing.parent === parent) return true;
        this.log.warn({ key, ref, name: remote.name }, "remote snapshot name is taken by another snapshot; preparing a local one");
        return false;
      }
      try {
        this.checkParent(parent);
      } catch {
        return false;
      }
      const now = Date.now();
      const rec: SnapshotRecord = {
        id: "",
        kind: "committed",
        parent,
        created: now,
        updated: now,
        labels: rlabels,
        external: remote.dir,
      };
      const ops: Op[] = [{ type: "put", key: snapKey(remote.name), value: JSON.stringify(rec) }];
      if (parent !== "") ops.push({ type: "put", key: childKey(parent, remote.name), value: "" });
      await this.db.batch(ops, { sync: true });
      this.records.set(remote.name, rec);
      this.committedUsage.delete(remote.name);
      this.log.debug({ name: remote.name, parent, dir: remote.dir }, "external snapshot recorded");
      return true;
    });
  }

  private async create(kind: "active" | "view", key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    // Outside the lock: a layer on its way holds up only what is built on it.
    await this.lowersPresent(parent);
    const rec = await this.lock.run(async () => {
      this.checkOpen();
      if (this.get(key)) throw new WharfError("ALREADY_EXISTS", `snapshot ${JSON.stringify(key)} already exists`);
      const p = this.checkParent(parent);
      const id = String(this.seq + 1);
      // The directories (on the local disk) are made with synchronous calls:
      // each takes microseconds, less than a round trip through the thread
      // pool, and a container start waits for all of them. The parent's
      // tree may be on the shared file system: it is read asynchronously.
      const tmp = mkdtempSync(join(this.snapshotsDir(), "new-"));
      const final = join(this.snapshotsDir(), id);
      try {
        mkdirSync(join(tmp, "fs"), { mode: 0o755 });
        if (kind === "active") mkdirSync(join(tmp, "work"), { mode: 0o700 });
        if (p && kind === "active") {
          // The merged root takes its owner from the upper dir: keep the parent's.
          const st = await fsStat(this.fsDir(p));
          lchownSync(join(tmp, "fs"), st.uid, st.gid);
        }
        // A directory with this id can only be the orphan of a crash before its record was written.
        if (existsSync(final)) await rm(final, { recursive: true, force: true });
        renameSync(tmp, final);
        const now = Date.now();
        const r: SnapshotRecord = { id, kind, parent, created: now, updated: now, labels };
        const ops: Op[] = [
          { type: "put", key: snapKey(key), value: JSON.stringify(r) },
          { type: "put", key: SEQ, value: id },
        ];
        if (parent !== "") ops.push({ type: "put", key: childKey(parent, key), value: "" });
        await this.db.batch(ops, { sync: true });
        this.records.set(key, r);
        this.seq += 1;
        return r;
      } catch (e) {
        await rm(tmp, { recursive: true, force: true });
        await rm(final, { recursive: true, force: true });
        throw e;
      }
    });
    return this.mountsOf(rec);
  }

  async commit(name: string, key: string, opts: SnapshotOptions = {}): Promise<void> {
    const labels = { ...opts.labels };
    validateName("name", name);
    validateLabels(labels);
    await this.lock.run(async () => {
      this.checkOpen();
      if (this.get(name)) throw new WharfError("ALREADY_EXISTS", `snapshot ${JSON.stringify(name)} already exists`);
      const r = this.must(key);
      if (r.kind !== "active") throw new WharfError("FAILED_PRECONDITION", `snapshot ${JSON.stringify(key)} is not active`);
      const now = Date.now();
      const committed: SnapshotRecord = { ...r, kind: "committed", created: now, updated: now, labels };
      const ops: Op[] = [
        { type: "del", key: snapKey(key) },
        { type: "put", key: snapKey(name), value: JSON.stringify(committed) },
      ];
      if (r.parent !== "") {
        ops.push({ type: "del", key: childKey(r.parent, key) }, { type: "put", key: childKey(r.parent, name), value: "" });
      }
      await this.db.batch(ops, { sync: true });
      this.records.delete(key);
      this.records.set(name, committed);
      this.activeUsage.delete(key);
      this.committedUsage.delete(name);
    });
  }

  async remove(key: string): Promise<void> {
    const r = await this.lock.run(async () => {
      const r = this.must(key);
      for await (const _ of this.db.keys({ gte: `${CHILD}${key}\0`, lt: `${CHILD}${key}\u0001`, limit: 1 })) {
        throw new WharfError("FAILED_PRECONDITION", `snapshot ${JSON.stringify(key)} has children`);
      }
      const ops: Op[] = [{ type: "del", key: snapKey(key) }];
      if (r.parent !== "") ops.push({ type: "del", key: childKey(r.parent, key) });
      await this.db.batch(ops, { sync: false });
      this.records.delete(key);
      this.removals += 1;
      this.chains.delete(key);
      this.materialized.delete(key);
      this.activeUsage.delete(key);
      this.committedUsage.delete(key);
      return r;
    });
    // Its data directory, now unreferenced, is cleanup()'s.
    if (r.external !== undefined) {
      try {
        await this.opts.onRemoveExternal?.(key);
      } catch (e) {
        this.log.warn({ name: key, err: e }, "onRemoveExternal failed");
      }
    }
  }

  async update(info: Pick<Info, "name" | "labels">, fieldpaths: readonly string[] = []): Promise<Info> {
    validateName("name", info.name);
    return this.lock.run(async () => {
      const r = this.must(info.name);
      let labels: Record<string, string> = { ...r.labels };
      if (fieldpaths.length === 0) labels = { ...info.labels };
      for (const path of fieldpaths) {
        if (path === "labels") labels = { ...info.labels };
        else if (path.startsWith("labels.")) {
          const k = path.slice("labels.".length);
          const v = Object.hasOwn(info.labels, k) ? info.labels[k] : undefined;
          if (v === undefined) delete labels[k];
          else labels[k] = v;
        } else {
          throw new WharfError("INVALID_ARGUMENT", `cannot update ${JSON.stringify(path)} of snapshot ${JSON.stringify(info.name)}`);
        }
      }
      // An empty value deletes (containerd's label semantics).
      for (const [k, v] of Object.entries(labels)) if (v === "") delete labels[k];
      validateLabels(labels);
      const updated: SnapshotRecord = { ...r, labels, updated: Date.now() };
      await this.db.batch([{ type: "put", key: snapKey(info.name), value: JSON.stringify(updated) }], { sync: true });
      this.records.set(info.name, updated);
      return OverlaySnapshotter.info(info.name, updated);
    });
  }

  async usage(key: string, opts: Signalled = {}): Promise<Usage> {
    const r = this.must(key);
    if (r.kind === "view") return { size: 0, inodes: 0 };
    const dir = this.fsDir(r);
    if (r.kind === "committed") {
      let u = this.committedUsage.get(key);
      if (!u) {
        // An external snapshot's layer still on its way uses nothing yet.
        if (r.external !== undefined && !(await lstat(dir).then(() => true, () => false))) return { size: 0, inodes: 0 };
        u = diskUsage(dir);
        this.committedUsage.set(key, u);
        u.catch(() => this.committedUsage.get(key) === u && this.committedUsage.delete(key));
      }
      return abortable(u, opts.signal);
    }
    const now = Date.now();
    let a = this.activeUsage.get(key);
    if (!a || now - a.at > this.activeTtl) {
      a = { at: now, usage: diskUsage(dir) };
      this.activeUsage.set(key, a);
      const mine = a;
      a.usage.catch(() => this.activeUsage.get(key) === mine && this.activeUsage.delete(key));
    }
    return abortable(a.usage, opts.signal);
  }

  async *list(filters: readonly string[] = [], opts: Signalled = {}): AsyncIterable<Info> {
    this.checkOpen();
    const match = compileFilters(filters);
    // The records as they are now, in LevelDB's key order.
    const now = [...this.records].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    for (const [name, r] of now) {
      opts.signal?.throwIfAborted();
      const info = OverlaySnapshotter.info(name, r);
      if (match(info)) yield info;
    }
  }

  async cleanup(): Promise<void> {
    await this.lock.run(async () => {
      this.checkOpen();
      // Removals durable before their data goes.
      await this.db.batch([{ type: "put", key: SEQ, value: String(this.seq) }], { sync: true });
      const used = new Set<string>();
      for (const r of this.records.values()) if (r.id !== "") used.add(r.id);
      for (const name of await readdir(this.snapshotsDir())) {
        if (used.has(name)) continue;
        this.log.info({ dir: name }, "removing unreferenced snapshot data");
        await rm(join(this.snapshotsDir(), name), { recursive: true, force: true });
      }
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.lock.run(async () => {
      this.closed = true;
    });
    await this.db.close();
  }
}
