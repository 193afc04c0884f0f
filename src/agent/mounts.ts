// Merged views of images: an overlay whose lower dirs are the image's layers
// in the shared store and whose upper and work dirs are on this host's local
// disk (the paper's local ephemeral writes). The shared store is never
// written through a mount.

import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { z } from "zod";
import { WharfError } from "../errors.js";

export interface MountRecord {
  readonly target: string;
  readonly reference: string;
  readonly layers: readonly string[];
  readonly dir: string;
}

const recordsSchema = z.array(
  z.object({ target: z.string(), reference: z.string(), layers: z.array(z.string()), dir: z.string() }),
);

function run(cmd: string, args: string[], cwd?: string): Promise<void> {
  return new Promise((res, rej) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"], ...(cwd ? { cwd } : {}) });
    let err = "";
    p.stderr.on("data", (c: Buffer) => (err += c.toString()));
    p.once("error", rej);
    p.once("exit", (code) => (code === 0 ? res() : rej(new Error(`${cmd} ${args.join(" ")}: ${err.trim() || `exit ${code}`}`))));
  });
}

export class Mounts {
  private records: MountRecord[] = [];

  private constructor(
    private readonly dataDir: string,
    /** The shared store's layers/sha256 directory: lower dirs are named relative to it. */
    private readonly layersDir: string,
  ) {}

  static async open(dataDir: string, layersDir: string): Promise<Mounts> {
    const m = new Mounts(dataDir, layersDir);
    const text = await readFile(join(dataDir, "mounts.json"), "utf8").catch(() => "[]");
    m.records = recordsSchema.parse(JSON.parse(text));
    return m;
  }

  list(): readonly MountRecord[] {
    return this.records;
  }

  /** Mounts of `reference` on this host (an image in use cannot be removed). */
  of(reference: string): MountRecord[] {
    return this.records.filter((r) => r.reference === reference);
  }

  /**
   * Mounts the layers (base first, as diffIDs) at `target`. Lower dirs are
   * given relative to the layers directory (mount runs there) so that the
   * option string stays short for images with many layers.
   */
  async mount(reference: string, layers: readonly string[], target: string): Promise<MountRecord> {
    const abs = resolve(target);
    if (this.records.some((r) => r.target === abs)) throw new WharfError("BUSY", `${abs} is already a wharf mount`);
    if (layers.length === 0) throw new WharfError("INVALID_ARGUMENT", `${reference} has no layers`);
    const dir = join(this.dataDir, "mounts", createHash("sha256").update(abs).digest("hex").slice(0, 16));
    await rm(dir, { recursive: true, force: true });
    await mkdir(join(dir, "upper"), { recursive: true });
    await mkdir(join(dir, "work"), { recursive: true });
    const lower = [...layers].reverse().map((d) => d.replace(/^sha256:/, ""));
    const options = `lowerdir=${lower.join(":")},upperdir=${join(dir, "upper")},workdir=${join(dir, "work")}`;
    try {
      await run("mount", ["-t", "overlay", "overlay", "-o", options, abs], this.layersDir);
    } catch (e) {
      await rm(dir, { recursive: true, force: true });
      throw new WharfError("INVALID_ARGUMENT", `cannot mount ${reference} at ${abs}: ${(e as Error).message}`);
    }
    const rec = { target: abs, reference, layers: [...layers], dir };
    this.records.push(rec);
    await this.save();
    return rec;
  }

  /** Unmounts and drops the local writes of that mount. */
  async umount(target: string): Promise<MountRecord> {
    const abs = resolve(target);
    const rec = this.records.find((r) => r.target === abs);
    if (!rec) throw new WharfError("NOT_FOUND", `${abs} is not a wharf mount`);
    await run("umount", [abs]).catch((e: Error) => {
      // Already unmounted by hand: forget it all the same.
      if (!/not mounted|no mount point/i.test(e.message)) throw new WharfError("BUSY", e.message);
    });
    await rm(rec.dir, { recursive: true, force: true });
    this.records = this.records.filter((r) => r !== rec);
    await this.save();
    return rec;
  }

  private async save(): Promise<void> {
    const file = join(this.dataDir, "mounts.json");
    await writeFile(`${file}.tmp`, JSON.stringify(this.records), { flush: true });
    await rename(`${file}.tmp`, file);
  }
}
