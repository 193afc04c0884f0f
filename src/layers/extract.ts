// Safe extraction of one OCI layer (a tar, maybe gzip/zstd-compressed) into
// an empty directory, in the overlayfs lower-dir format that containerd's
// overlay snapshotter and `umoci unpack` produce: whiteouts become 0/0
// character devices, opaque markers become trusted.overlay.opaque=y.
//
// Safety contract: nothing is ever created, changed or removed outside
// `dest`, whatever the archive holds. Every member name is normalised and
// refused (never sanitised) if it is absolute, has a ".." component or a NUL;
// every parent of a member must be a directory this extraction created (we
// keep a map of what we made instead of trusting the disk), so nothing is
// ever written through a symlink; files are created with O_EXCL|O_NOFOLLOW
// and symlinks and directories are changed with the l* calls. Hard links may
// only point at regular files already extracted. Devices other than the
// overlay whiteout (char 0/0) are refused.
//
// Speed: the decompressor runs on the libuv pool while the main thread hashes
// and parses; file system calls are synchronous (one open/write/fchown/
// fchmod/futimes/close per file, no promise per call) and yield to the event
// loop every few milliseconds. Nothing is fsynced: the caller syncs the whole
// tree once before renaming it into place.

import { createHash } from "node:crypto";
import {
  chmodSync,
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import type { Readable, TransformOptions } from "node:stream";
import { type ZlibOptions, type ZstdOptions, createGunzip, createZstdDecompress } from "node:zlib";
import { WharfError } from "../errors.js";
import { type PendingNode, type PendingXattrs, createNodes, setXattrs, xattrNameProblem } from "./special.js";
import { type TarHeader, TarEvent, TarReader, showName } from "./tar.js";

export interface ExtractOptions {
  /** An existing EMPTY directory (a temp dir on the shared store); the layer's root. */
  dest: string;
  compression: "gzip" | "zstd" | "none";
  /** "sha256:…" of the uncompressed tar; a mismatch is DIGEST_MISMATCH, found once the stream ended. */
  expectedDiffID?: string;
  /** Limit on uncompressed bytes (decompression bombs); default 32 GiB. */
  maxBytes?: number;
  signal?: AbortSignal;
  onProgress?: (uncompressedBytes: number) => void;
}

export interface ExtractResult {
  /** "sha256:…" of every uncompressed byte (trailing data after the archive included). */
  diffID: string;
  /** Uncompressed bytes. */
  bytes: number;
  /** Archive members (PAX and GNU long-name headers not counted). */
  entries: number;
}

const DEFAULT_MAX_BYTES = 32 * 1024 ** 3;
/** Decompressor output chunk: big enough that per-chunk costs vanish. */
const CHUNK = 256 * 1024;
/** How far the decompressor may run ahead of the file writes (it runs on the libuv pool meanwhile). */
const AHEAD = 8 * 1024 * 1024;
/** The longest the event loop is kept waiting by synchronous file system calls. */
const SLICE_MS = 10;
const FILE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW; // libuv adds O_CLOEXEC
const OPAQUE = ".wh..wh..opq";
const WHITEOUT = ".wh.";

/** What this extraction made at a path. `dir` metadata is applied at the end. */
interface Rec {
  kind: "dir" | "file" | "symlink" | "node";
  xattrs: Map<string, Buffer> | null;
  /** dir: mtime to apply at the end (undefined: an implicit dir, times left as they fall). */
  mtime?: number;
  atime?: number;
  opaque?: boolean;
  /** node: created in one batch at the end. */
  node?: PendingNode;
  /** dir: the paths of its entries, so that removing it costs its size, not the layer's. */
  children?: Set<string>;
}

/**
 * Extracts the layer read from `input` (compressed bytes) into `opts.dest`.
 * Resolves once every member is on disk with its metadata (not synced).
 * Rejects with WharfError INVALID_LAYER (unsafe or broken archive),
 * DIGEST_MISMATCH (diffID differs from expectedDiffID), INVALID_ARGUMENT
 * (dest not an empty directory), the signal's reason if aborted, or a file
 * system error (its message prefixed with the member). On rejection `input`
 * is destroyed and dest may hold partial content: the caller removes it.
 */
export async function extractLayer(input: Readable, opts: ExtractOptions): Promise<ExtractResult> {
  const x = new Extraction(opts);
  try {
    return await x.run(input);
  } catch (e) {
    input.destroy();
    x.abandon();
    if (opts.signal?.aborted) throw opts.signal.reason;
    throw e;
  }
}

function refuse(raw: string, why: string): WharfError {
  return new WharfError("INVALID_LAYER", `layer entry ${showName(raw)}: ${why}`);
}

/**
 * A member name as a dest-relative path: leading "./", "." components and
 * repeated or trailing slashes dropped; "" is the root. Absolute names, ".."
 * components and NULs are refused.
 */
function normalise(raw: string, entry: string, what: string): string {
  if (raw === "") throw refuse(entry, `${what} is empty`);
  if (raw.includes("\0")) throw refuse(entry, `${what} contains a NUL byte`);
  if (raw.charCodeAt(0) === 0x2f) throw refuse(entry, `${what} is an absolute path`);
  // Fast path: the usual "./a/b" or "a/b" with nothing to drop.
  let s = raw.startsWith("./") ? raw.slice(2) : raw;
  if (s.charCodeAt(0) !== 0x2f && !s.includes("//") && !s.includes("/./") && !s.startsWith("./") && !s.includes("..") && s !== "." && !s.endsWith("/.")) {
    return s.endsWith("/") ? s.slice(0, -1) : s;
  }
  const out: string[] = [];
  for (const part of s.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") throw refuse(entry, `${what === "name" ? "path" : what} escapes the layer root ("..")`);
    out.push(part);
  }
  s = out.join("/");
  return s;
}

const NON_ASCII = /[^\x00-\x7f]/;

function parentOf(rel: string): string {
  const i = rel.lastIndexOf("/");
  return i < 0 ? "" : rel.slice(0, i);
}

class Extraction {
  private readonly dest: string;
  private readonly recs = new Map<string, Rec>();
  private readonly reader: TarReader;
  /** The regular file being written, if any. */
  private fd = -1;
  private fileHeader: TarHeader | null = null;
  private entries = 0;

  constructor(private readonly opts: ExtractOptions) {
    this.dest = opts.dest.replace(/\/+$/, "") || "/";
    const max = opts.maxBytes ?? DEFAULT_MAX_BYTES;
    if (!(max >= 0)) throw new WharfError("INVALID_ARGUMENT", `maxBytes must be a non-negative number, not ${max}`);
    this.reader = new TarReader({ maxEntrySize: max });
    // The root: mode 0755 root:root as containerd's snapshotter makes it,
    // unless the archive has a "./" member.
    this.recs.set("", { kind: "dir", xattrs: null, children: new Set() });
  }

  async run(input: Readable): Promise<ExtractResult> {
    const { signal, onProgress } = this.opts;
    const max = this.opts.maxBytes ?? DEFAULT_MAX_BYTES;
    signal?.throwIfAborted();
    this.checkDest();
    this.prepareRoot();

    // Zlib streams pass stream options on to their Transform (not in @types/node).
    const zopts: ZlibOptions & ZstdOptions & TransformOptions = { chunkSize: CHUNK, readableHighWaterMark: AHEAD };
    const decomp =
      this.opts.compression === "gzip" ? createGunzip(zopts) : this.opts.compression === "zstd" ? createZstdDecompress(zopts) : null;
    // Errors of the input itself (network, caller) pass through unchanged;
    // errors of the decompressor are the archive's fault.
    let inputError: unknown = null;
    let source: Readable = input;
    if (decomp) {
      // Errors reach us through the iterator below; these listeners only keep
      // a late one (after we stopped reading) from becoming an uncaught error.
      decomp.on("error", () => {});
      input.on("error", (e) => {
        inputError ??= e;
        decomp.destroy(e);
      });
      input.once("close", () => {
        if (!input.readableEnded) {
          inputError ??= new Error("the layer input closed before its end");
          decomp.destroy(inputError as Error);
        }
      });
      input.pipe(decomp);
      source = decomp;
    }
    const onAbort = (): void => {
      source.destroy(signal!.reason);
      input.destroy();
    };
    signal?.addEventListener("abort", onAbort, { once: true });

    const hash = createHash("sha256");
    let bytes = 0;
    try {
      let slice = performance.now();
      const chunks = (source as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
      for (;;) {
        let next: IteratorResult<Buffer>;
        try {
          next = await chunks.next();
        } catch (e) {
          if (signal?.aborted || e === inputError || !decomp) throw e;
          const msg = (e as Error).message;
          const what = /unexpected end/i.test(msg) ? "is truncated" : "is corrupt";
          throw new WharfError("INVALID_LAYER", `layer archive ${what} (${this.opts.compression}: ${msg})`);
        }
        if (next.done) break;
        const chunk = next.value;
        bytes += chunk.length;
        if (bytes > max) throw new WharfError("INVALID_LAYER", `layer decompressed past the limit of ${max} bytes`);
        hash.update(chunk);
        this.reader.push(chunk);
        // Buffered chunks come without a trip through the event loop: yield
        // to it ourselves once a slice of synchronous work is used up.
        while (!this.drain(slice + SLICE_MS)) {
          await new Promise(setImmediate);
          signal?.throwIfAborted();
          slice = performance.now();
        }
        onProgress?.(bytes);
        if (performance.now() - slice > SLICE_MS) {
          await new Promise(setImmediate);
          slice = performance.now();
        }
      }
      signal?.throwIfAborted();
      this.reader.end();
      if (this.fd >= 0) throw new WharfError("INVALID_LAYER", "layer archive is truncated");

      const diffID = `sha256:${hash.digest("hex")}`;
      if (this.opts.expectedDiffID !== undefined && diffID !== this.opts.expectedDiffID) {
        throw new WharfError("DIGEST_MISMATCH", `layer diffID is ${diffID}, expected ${this.opts.expectedDiffID}`);
      }
      await this.finish();
      return { diffID, bytes, entries: this.entries };
    } finally {
      signal?.removeEventListener("abort", onAbort);
      decomp?.destroy();
    }
  }

  /** Releases what a failed run holds (the caller deletes dest). */
  abandon(): void {
    if (this.fd >= 0) {
      try {
        closeSync(this.fd);
      } catch {
        // Already failed; the original error is the one to report.
      }
      this.fd = -1;
    }
  }

  private checkDest(): void {
    const st = lstatSync(this.dest, { throwIfNoEntry: false });
    if (!st?.isDirectory()) throw new WharfError("INVALID_ARGUMENT", `extraction target ${this.dest} is not a directory`);
    if (readdirSync(this.dest).length !== 0) throw new WharfError("INVALID_ARGUMENT", `extraction target ${this.dest} is not empty`);
  }

  private prepareRoot(): void {
    lchownSync(this.dest, 0, 0);
    chmodSync(this.dest, 0o755);
  }

  /** The absolute path of a dest-relative name (raw bytes as latin1). */
  private abs(rel: string): string | Buffer {
    if (rel === "") return this.dest;
    if (!NON_ASCII.test(rel)) return `${this.dest}/${rel}`;
    return Buffer.concat([Buffer.from(`${this.dest}/`), Buffer.from(rel, "latin1")]);
  }

  /**
   * Handles reader events until more input is needed (true) or the time
   * slice is over (false).
   */
  private drain(deadline: number): boolean {
    const r = this.reader;
    try {
      for (;;) {
        switch (r.next()) {
          case TarEvent.NEED_MORE:
            return true;
          case TarEvent.ENTRY:
            this.entries++;
            this.begin(r.header!);
            break;
          case TarEvent.DATA:
            if (this.fd >= 0) this.write(r.data);
            break;
          case TarEvent.ENTRY_END:
            if (this.fd >= 0) this.endFile();
            if (performance.now() > deadline) return false;
            break;
          case TarEvent.ARCHIVE_END:
            break;
        }
      }
    } catch (e) {
      throw this.explain(e);
    }
  }

  /** File system errors get the member's name; those a name can cause are the layer's fault. */
  private explain(e: unknown): unknown {
    const h = this.reader.header;
    if (e instanceof WharfError || !h) return e;
    const err = e as NodeJS.ErrnoException;
    if (err.code === "ENAMETOOLONG") return refuse(h.name, "name too long");
    if (err.code === "EMLINK") return refuse(h.name, "too many links");
    if (typeof err.message === "string") err.message = `layer entry ${showName(h.name)}: ${err.message}`;
    return err;
  }

  private begin(h: TarHeader): void {
    let rel = normalise(h.name, h.name, "name");
    const slash = rel.lastIndexOf("/");
    const base = rel.slice(slash + 1);

    if (base.startsWith(WHITEOUT)) {
      const dir = slash < 0 ? "" : rel.slice(0, slash);
      if (base === OPAQUE) {
        this.ensureParents(`${dir}/x`, h.name);
        const d = this.recs.get(dir);
        if (d?.kind !== "dir") throw refuse(h.name, "opaque marker in something that is not a directory");
        d.opaque = true;
        return;
      }
      const name = base.slice(WHITEOUT.length);
      if (name === "" || name === "." || name === ".." || name.startsWith(WHITEOUT)) throw refuse(h.name, "invalid whiteout name");
      rel = dir ? `${dir}/${name}` : name;
      this.ensureParents(rel, h.name);
      this.clear(rel);
      this.addNode(rel, h, "char00", 0);
      return;
    }

    if (rel === "") {
      if (h.type !== "dir") throw refuse(h.name, "the layer root must be a directory");
      this.updateDir(rel, h);
      return;
    }
    this.ensureParents(rel, h.name);
    const xattrs = this.checkXattrs(h);

    switch (h.type) {
      case "dir": {
        if (this.recs.get(rel)?.kind === "dir") {
          this.updateDir(rel, h);
          return;
        }
        this.clear(rel);
        const p = this.abs(rel);
        mkdirSync(p, 0o700);
        this.add(rel, { kind: "dir", xattrs: null, children: new Set() });
        this.updateDir(rel, h);
        return;
      }
      case "file": {
        this.clear(rel);
        this.fd = openSync(this.abs(rel), FILE_FLAGS, 0o600);
        this.fileHeader = h;
        this.add(rel, { kind: "file", xattrs });
        return;
      }
      case "symlink": {
        if (h.linkname === "") throw refuse(h.name, "symlink with an empty target");
        if (h.linkname.includes("\0")) throw refuse(h.name, "symlink target contains a NUL byte");
        this.clear(rel);
        const p = this.abs(rel);
        // Any target text is fine: we never follow it.
        symlinkSync(NON_ASCII.test(h.linkname) ? Buffer.from(h.linkname, "latin1") : h.linkname, p);
        lchownSync(p, h.uid, h.gid);
        lutimesSync(p, h.atime ?? h.mtime, h.mtime);
        this.add(rel, { kind: "symlink", xattrs });
        return;
      }
      case "link": {
        const target = normalise(h.linkname, h.name, "hard link target");
        if (target === "") throw refuse(h.name, "hard link to the layer root");
        if (target === rel) throw refuse(h.name, "hard link to itself");
        this.checkLinkTarget(target, h.name);
        this.clear(rel);
        // Replacing `rel` may have removed the target with it (a directory).
        if (this.recs.get(target)?.kind !== "file") throw refuse(h.name, `hard link target ${showName(target)} was removed by this entry`);
        linkSync(this.abs(target), this.abs(rel));
        this.add(rel, { kind: "file", xattrs });
        return;
      }
      case "chardev":
        if (h.devmajor !== 0 || h.devminor !== 0) throw refuse(h.name, `character device ${h.devmajor}/${h.devminor} is not allowed`);
        this.clear(rel);
        this.addNode(rel, h, "char00", h.mode, xattrs);
        return;
      case "blockdev":
        throw refuse(h.name, `block device ${h.devmajor}/${h.devminor} is not allowed`);
      case "fifo":
        this.clear(rel);
        this.addNode(rel, h, "fifo", h.mode, xattrs);
        return;
    }
  }

  private write(data: Buffer): void {
    let off = 0;
    while (off < data.length) off += writeSync(this.fd, data, off, data.length - off);
  }

  private endFile(): void {
    const h = this.fileHeader!;
    const fd = this.fd;
    fchownSync(fd, h.uid, h.gid);
    // After chown, which clears setuid/setgid.
    fchmodSync(fd, h.mode);
    futimesSync(fd, h.atime ?? h.mtime, h.mtime);
    this.fd = -1;
    closeSync(fd);
  }

  private addNode(rel: string, h: TarHeader, type: PendingNode["type"], mode: number, xattrs: Map<string, Buffer> | null = null): void {
    const node: PendingNode = { path: this.abs(rel), type, mode, uid: h.uid, gid: h.gid, atime: h.atime ?? h.mtime, mtime: h.mtime };
    this.add(rel, { kind: "node", xattrs, node });
  }

  /** Owner and mode now (children need no permission: we are root); times at the end. */
  private updateDir(rel: string, h: TarHeader): void {
    const rec = this.recs.get(rel)!;
    const p = this.abs(rel);
    lchownSync(p, h.uid, h.gid);
    // `p` is a directory we made (chmod has no l-variant on Linux).
    chmodSync(p, h.mode);
    rec.mtime = h.mtime;
    rec.atime = h.atime ?? h.mtime;
    const xattrs = this.checkXattrs(h);
    if (xattrs) rec.xattrs = new Map([...(rec.xattrs ?? []), ...xattrs]);
  }

  private checkXattrs(h: TarHeader): Map<string, Buffer> | null {
    if (!h.xattrs) return null;
    for (const [name, value] of h.xattrs) {
      const why = xattrNameProblem(name);
      if (why) throw refuse(h.name, why);
      if (value.length > 65536) throw refuse(h.name, `extended attribute ${name} is too large`);
    }
    return h.xattrs;
  }

  /**
   * Makes every parent of `rel` a directory of ours: missing ones are created
   * (0755 root:root); anything else there (a symlink above all) is refused.
   * Invariant that makes the fast path sound: a "dir" record exists only
   * while all of its parents are "dir" records.
   */
  private ensureParents(rel: string, entry: string): void {
    const slash = rel.lastIndexOf("/");
    if (slash < 0 || this.recs.get(rel.slice(0, slash))?.kind === "dir") return;
    for (let i = rel.indexOf("/"); i >= 0; i = rel.indexOf("/", i + 1)) {
      const pre = rel.slice(0, i);
      const r = this.recs.get(pre);
      if (!r) {
        const p = this.abs(pre);
        mkdirSync(p, 0o755);
        lchownSync(p, 0, 0);
        chmodSync(p, 0o755);
        this.add(pre, { kind: "dir", xattrs: null, children: new Set() });
      } else if (r.kind === "symlink") {
        throw refuse(entry, `path goes through the symlink ${showName(pre)}`);
      } else if (r.kind !== "dir") {
        throw refuse(entry, `parent ${showName(pre)} is not a directory`);
      }
    }
  }

  private checkLinkTarget(target: string, entry: string): void {
    for (let i = target.indexOf("/"); i >= 0; i = target.indexOf("/", i + 1)) {
      const r = this.recs.get(target.slice(0, i));
      if (r?.kind === "symlink") throw refuse(entry, `hard link target ${showName(target)} goes through the symlink ${showName(target.slice(0, i))}`);
      if (r && r.kind !== "dir") throw refuse(entry, `hard link target ${showName(target)}: parent is not a directory`);
      if (!r) break;
    }
    const t = this.recs.get(target);
    if (!t) throw refuse(entry, `hard link target ${showName(target)} is not in the layer (not extracted before it)`);
    if (t.kind !== "file") throw refuse(entry, `hard link target ${showName(target)} is a ${t.kind}, not a regular file`);
  }

  /** Tar semantics: a later member replaces whatever an earlier one made at `rel`. */
  private clear(rel: string): void {
    const r = this.recs.get(rel);
    if (!r) return;
    if (r.kind === "dir") {
      // rm does not follow symlinks inside; every parent is one of our dirs.
      rmSync(this.abs(rel), { recursive: true });
    } else if (r.kind !== "node") {
      unlinkSync(this.abs(rel));
    }
    this.forget(rel, r);
    this.recs.get(parentOf(rel))!.children!.delete(rel);
  }

  /** Records what was made at `rel` (whose parent is a dir record). */
  private add(rel: string, rec: Rec): void {
    this.recs.set(rel, rec);
    this.recs.get(parentOf(rel))!.children!.add(rel);
  }

  /** Drops the records of `rel` and everything under it. */
  private forget(rel: string, r: Rec): void {
    this.recs.delete(rel);
    if (!r.children) return;
    for (const c of r.children) this.forget(c, this.recs.get(c)!);
  }

  /** After the last member: nodes, then extended attributes, then directory times (deepest first). */
  private async finish(): Promise<void> {
    const { signal } = this.opts;
    const nodes: PendingNode[] = [];
    const xattrs: PendingXattrs[] = [];
    const dirs: [string, Rec][] = [];
    for (const [rel, r] of this.recs) {
      if (r.node) nodes.push(r.node);
      if (r.opaque || r.xattrs) {
        const m = new Map(r.xattrs ?? []);
        if (r.opaque) m.set("trusted.overlay.opaque", Buffer.from("y"));
        xattrs.push({ rel, xattrs: m });
      }
      if (r.kind === "dir" && r.mtime !== undefined) dirs.push([rel, r]);
    }
    await createNodes(this.dest, nodes, signal);
    await setXattrs(this.dest, xattrs, signal);
    signal?.throwIfAborted();
    const depth = (s: string): number => (s === "" ? -1 : s.split("/").length);
    dirs.sort((a, b) => depth(b[0]) - depth(a[0]));
    for (const [rel, r] of dirs) lutimesSync(this.abs(rel), r.atime!, r.mtime!);
  }
}
