// The shared layer store: one directory on the shared POSIX file system that
// every agent of the cluster writes to and mounts from.
//
//   layers/sha256/<diffID hex>/   an extracted layer, the lower dir of overlays
//   blobs/sha256/<hex>            small verified blobs (manifests, configs)
//   partial/sha256/<hex>          a layer blob being downloaded (resumable)
//   tmp/<agent>.<random>/         work in progress of one agent
//
// Contract: a path under layers/ or blobs/ exists only once its content was
// complete, verified and durable. Everything is built under tmp/, synced, and
// renamed into place; a crash leaves at most a tmp/ entry, which the agent
// that owns it collects when it starts again.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, open, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";

const HEX = /^sha256:([0-9a-f]{64})$/;

function hexOf(digest: string): string {
  const m = HEX.exec(digest);
  if (!m) throw new Error(`not a sha256 digest: ${digest}`);
  return m[1]!;
}

/** fsync of a directory, so that a rename into it is durable. */
async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Flushes a whole tree to stable storage in one call: `sync -f` is syncfs(2)
 * on the file system holding the tree, far cheaper than an fsync per file of
 * a layer with thousands of them.
 */
function syncFs(path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn("sync", ["-f", path], { stdio: "ignore" });
    p.once("error", reject);
    p.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`sync -f ${path} exited with ${code}`))));
  });
}

export class LayerStore {
  constructor(
    readonly root: string,
    /** Prefix of this agent's tmp/ entries: only the owner collects them. */
    private readonly owner: string,
  ) {
    if (!/^[A-Za-z0-9_-]+$/.test(owner)) throw new Error(`invalid store owner ${owner}`);
  }

  static async open(root: string, owner: string): Promise<LayerStore> {
    const s = new LayerStore(root, owner);
    for (const d of ["layers/sha256", "blobs/sha256", "partial/sha256", "tmp"]) await mkdir(join(root, d), { recursive: true });
    return s;
  }

  layerPath(diffID: string): string {
    return join(this.root, "layers", "sha256", hexOf(diffID));
  }

  blobPath(digest: string): string {
    return join(this.root, "blobs", "sha256", hexOf(digest));
  }

  partialPath(digest: string): string {
    return join(this.root, "partial", "sha256", hexOf(digest));
  }

  async hasLayer(diffID: string): Promise<boolean> {
    return stat(this.layerPath(diffID)).then(
      (s) => s.isDirectory(),
      () => false,
    );
  }

  /** A fresh, empty directory of this agent under tmp/. */
  async tempDir(kind: string): Promise<string> {
    const dir = join(this.root, "tmp", `${this.owner}.${kind}.${randomBytes(6).toString("hex")}`);
    await mkdir(dir, { mode: 0o755 });
    return dir;
  }

  /**
   * Makes an extracted layer durable and visible: sync the tree, rename it to
   * its diffID, sync the parent. If the layer is already there (another
   * attempt finished first: a rename only ever publishes a complete layer),
   * ours is discarded. Returns the layer's path.
   */
  async commitLayer(tmp: string, diffID: string): Promise<string> {
    const target = this.layerPath(diffID);
    await syncFs(tmp);
    try {
      await rename(tmp, target);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== "ENOTEMPTY" && code !== "EEXIST") throw e;
      await this.discard(tmp);
    }
    await syncDir(dirname(target));
    return target;
  }

  /** Writes a small verified blob (temp → fsync → rename). */
  async putBlob(digest: string, data: Uint8Array): Promise<void> {
    const target = this.blobPath(digest);
    if (await stat(target).then(() => true, () => false)) return;
    const tmp = join(this.root, "tmp", `${this.owner}.blob.${randomBytes(6).toString("hex")}`);
    await writeFile(tmp, data, { flush: true });
    await rename(tmp, target);
    await syncDir(dirname(target));
  }

  /**
   * Removes a layer: renamed away first (one atomic step, after which no
   * mount can pick it up), then deleted.
   */
  async deleteLayer(diffID: string): Promise<void> {
    const gone = join(this.root, "tmp", `${this.owner}.deleted.${randomBytes(6).toString("hex")}`);
    try {
      await rename(this.layerPath(diffID), gone);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
      throw e;
    }
    await this.discard(gone);
  }

  async discard(path: string): Promise<void> {
    await rm(path, { recursive: true, force: true });
  }

  /** Collects this agent's leftovers of a previous run (crashed extractions, deletions). */
  async collectLeftovers(): Promise<string[]> {
    const mine = (await readdir(join(this.root, "tmp"))).filter((n) => n.startsWith(`${this.owner}.`));
    for (const n of mine) await this.discard(join(this.root, "tmp", n));
    return mine;
  }

  /** Names of the tmp/ entries of every agent (for checks: a calm store has none). */
  async pending(): Promise<string[]> {
    return readdir(join(this.root, "tmp"));
  }
}
