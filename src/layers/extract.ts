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
// Tar parsing is tar-stream's (headers, GNU long names and links, PAX
// records, base-256 numbers). We hash and count every decompressed byte
// ourselves and hand tar-stream only what we have placed in the archive's
// block structure, one header block at a time and then exactly the member's
// data and padding (its sizes tell us where the next header starts):
//   - two zero blocks at a header position end the archive; what follows is
//     hashed (it is part of the diffID) but never parsed, as Go's archive/tar
//     and containerd do. tar-stream itself would skip zero blocks and go on
//     parsing. One zero block followed by anything but another (or the end of
//     the input) is refused, as is a zero block among extended headers.
//   - names are decoded as latin1 (filenameEncoding), i.e. one char per raw
//     byte, so non-UTF-8 names in ustar/GNU headers come out exactly.
//   - tar-stream decodes PAX records as UTF-8, so a PAX path, linkpath or
//     SCHILY.xattr value that is not valid UTF-8 cannot be recovered: such a
//     member is refused, never extracted under an altered name or with an
//     altered attribute value. This covers binary xattr values that are not
//     valid UTF-8 (POSIX ACLs, file capabilities with a byte >= 0x80).
//   - tar-stream applies only PAX path, linkpath and size; uid, gid, mtime,
//     atime, xattrs and GNU.sparse (refused) are taken from its record map
//     here. It ignores malformed PAX records instead of failing, applies a
//     global PAX header only to members that have a local one too, parses
//     numeric fields leniently (digits up to the first non-octal byte) and
//     decodes negative base-256 numbers one too high (-1 as -0, which we
//     refuse for sizes, ids and device numbers; a negative base-256 mtime
//     comes out 1 s late). None of this can place anything outside `dest`:
//     every name still goes through the checks above.
//
// Speed: the decompressor runs on the libuv pool while the main thread hashes
// and parses; member data reaches the file as views of the decompressor's
// chunks (no copy); file system calls are synchronous (one open/write/fchown/
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
import { type Extract, type ExtractEvents, type Header, extract as tarExtract } from "tar-stream";
import { WharfError } from "../errors.js";
import { type PendingNode, type PendingXattrs, createNodes, setXattrs, xattrNameProblem } from "./special.js";

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
const BLOCK = 512;
const ZERO_BLOCK = Buffer.alloc(BLOCK);
/** uid/gid (2^32 - 1) means "unchanged" to chown(2): never a real owner. */
const MAX_ID = 0xfffffffe;
const DECIMAL = /^\d+$/;
const TIME = /^-?\d+(\.\d+)?$/;
const NON_ASCII = /[^\x00-\x7f]/;
const noop = (): void => {};

type TarEntryType = "file" | "link" | "symlink" | "chardev" | "blockdev" | "dir" | "fifo";

/** tar-stream's entry types as ours ("contiguous-file" is a regular file everywhere else). */
const TYPES: Record<string, TarEntryType> = {
  file: "file",
  "contiguous-file": "file",
  link: "link",
  symlink: "symlink",
  "character-device": "chardev",
  "block-device": "blockdev",
  directory: "dir",
  fifo: "fifo",
};

/** One archive member, validated, with its PAX and GNU long-name headers applied. */
interface TarHeader {
  /** The member name as raw bytes, one char per byte (latin1), not normalised. */
  name: string;
  /** Hard link or symlink target, raw bytes as in `name`; "" for other types. */
  linkname: string;
  type: TarEntryType;
  /** Content bytes that follow the header (0 for every type but "file"). */
  size: number;
  /** Permission bits incl. setuid/setgid/sticky (& 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch, possibly fractional (PAX) or negative. */
  mtime: number;
  atime: number | undefined;
  devmajor: number;
  devminor: number;
  /** From PAX `SCHILY.xattr.NAME` records: name → raw value. */
  xattrs: Map<string, Buffer> | null;
}

/** What tar-stream hands over per member. */
type EntryStream = ExtractEvents["entry"][1];

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

function invalid(what: string): WharfError {
  return new WharfError("INVALID_LAYER", what);
}

/** Printable form of a raw (latin1) member name for messages. */
function showName(raw: string): string {
  return JSON.stringify(Buffer.from(raw, "latin1").toString("utf8"));
}

function refuse(raw: string, why: string): WharfError {
  return invalid(`layer entry ${showName(raw)}: ${why}`);
}

/** tar-stream's errors (plain Errors, told apart by message) as the layer's fault. */
function tarError(e: Error): WharfError {
  const m = String(e.message);
  if (m.startsWith("Invalid tar header. Maybe")) return invalid("layer archive has a tar header with a bad checksum (corrupt, or not a tar)");
  if (m.includes("unknown format")) return invalid("layer archive has a tar header of unknown format");
  // The only header field tar-stream itself refuses (NaN or negative).
  if (m === "Invalid header") return invalid("layer archive has a tar header with an invalid size");
  if (m.includes("exceeds max size")) return invalid("layer archive has an extended header past tar-stream's size limit");
  if (m.includes("Unexpected end of data")) return invalid("layer archive is truncated");
  return invalid(`layer archive is not a valid tar (${m})`);
}

/** A header number from tar-stream: NaN, negative and -0 (a negative base-256 number) are not numbers. */
function isCount(n: number): boolean {
  return Number.isFinite(n) && n >= 0 && !Object.is(n, -0);
}

/**
 * A PAX value (decoded as UTF-8 by tar-stream) as raw bytes, one char per
 * byte like the names from ustar headers; null if the record was not valid
 * UTF-8 (tar-stream replaced bytes with U+FFFD: the original is lost).
 */
function paxRaw(v: string): string | null {
  if (!NON_ASCII.test(v)) return v;
  if (v.includes("\uFFFD")) return null;
  return Buffer.from(v, "utf8").toString("latin1");
}

function paxInt(name: string, key: string, v: string, max: number): number {
  const n = DECIMAL.test(v) ? Number(v) : NaN;
  if (!(n <= max)) throw refuse(name, `PAX record ${key}=${JSON.stringify(v)} is not a valid number`);
  return n;
}

function paxTime(name: string, key: string, v: string): number {
  if (TIME.test(v) && Number.isFinite(Number(v))) return Number(v);
  throw refuse(name, `PAX record ${key}=${JSON.stringify(v)} is not a valid time`);
}

/**
 * tar-stream's header as ours: PAX records applied and every field checked.
 * Refuses what readers disagree on (a size on a header-only type), sparse
 * files, unknown types and values tar-stream could not decode.
 */
function toHeader(t: Header, maxEntrySize: number): TarHeader {
  const pax = (t.pax ?? null) as Record<string, string> | null;
  let name = t.name;
  // tar-stream applied a non-empty PAX path (decoded as UTF-8) over the header's.
  if (pax?.path) {
    const raw = paxRaw(pax.path);
    if (raw === null) throw refuse(Buffer.from(pax.path, "utf8").toString("latin1"), "PAX path is not valid UTF-8 (not supported)");
    name = raw;
  }
  let linkname = t.linkname ?? "";
  if (pax?.linkpath) {
    const raw = paxRaw(pax.linkpath);
    if (raw === null) throw refuse(name, "PAX linkpath is not valid UTF-8 (not supported)");
    linkname = raw;
  }
  const type = t.type === null ? undefined : TYPES[t.type];
  if (!type) throw refuse(name, "unsupported entry type");
  const h: TarHeader = {
    name,
    linkname: type === "link" || type === "symlink" ? linkname : "",
    type,
    size: t.size,
    mode: t.mode,
    uid: t.uid,
    gid: t.gid,
    mtime: t.mtime.getTime() / 1000,
    atime: undefined,
    devmajor: 0,
    devminor: 0,
    xattrs: null,
  };
  if (pax) {
    for (const key of Object.keys(pax)) {
      const v = pax[key]!;
      if (key.startsWith("SCHILY.xattr.")) {
        const raw = paxRaw(v);
        if (raw === null) throw refuse(name, `extended attribute ${key.slice(13)}: value is not valid UTF-8 (not supported)`);
        (h.xattrs ??= new Map()).set(key.slice(13), Buffer.from(raw, "latin1"));
        continue;
      }
      if (key.startsWith("GNU.sparse.")) throw refuse(name, "sparse files are not supported");
      // An empty value reverts the field to the header's own.
      if (v === "") continue;
      switch (key) {
        case "size":
          // tar-stream took parseInt() of it; only plain digits are a size.
          paxInt(name, key, v, Number.MAX_SAFE_INTEGER);
          break;
        case "uid":
        case "gid":
          h[key] = paxInt(name, key, v, MAX_ID);
          break;
        case "mtime":
          h.mtime = paxTime(name, key, v);
          break;
        case "atime":
          h.atime = paxTime(name, key, v);
          break;
        default:
        // path, linkpath: above; uname, gname, ctime, comment, charset, vendor records: not ours to apply.
      }
    }
  }
  if (!isCount(h.size) || !Number.isSafeInteger(h.size)) throw refuse(name, "invalid size in header");
  if (!isCount(h.mode)) throw refuse(name, "invalid mode in header");
  h.mode &= 0o7777;
  if (!(isCount(h.uid) && h.uid <= MAX_ID)) throw refuse(name, "invalid uid in header");
  if (!(isCount(h.gid) && h.gid <= MAX_ID)) throw refuse(name, "invalid gid in header");
  // Past ±2^40 s (35,000 years) a time is garbage, and may not fit a timespec.
  if (!(Math.abs(h.mtime) < 2 ** 40)) throw refuse(name, "invalid mtime in header");
  if (h.atime !== undefined && !(Math.abs(h.atime) < 2 ** 40)) throw refuse(name, "invalid atime");
  if (type === "chardev" || type === "blockdev") {
    h.devmajor = t.devmajor;
    h.devminor = t.devminor;
    if (!(isCount(h.devmajor) && isCount(h.devminor))) throw refuse(name, "invalid device number in header");
  }
  if (type !== "file" && h.size !== 0) {
    // Readers disagree on whether such content exists (Go skips none, GNU
    // tar skips it; tar-stream skips it except for directories): refuse
    // rather than pick one reading.
    throw refuse(name, `a ${type} entry with ${h.size} bytes of content`);
  }
  if (h.size > maxEntrySize) throw refuse(name, `size ${h.size} is past the limit of ${maxEntrySize} bytes`);
  return h;
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

function parentOf(rel: string): string {
  const i = rel.lastIndexOf("/");
  return i < 0 ? "" : rel.slice(0, i);
}

class Extraction {
  private readonly dest: string;
  private readonly max: number;
  private readonly recs = new Map<string, Rec>();
  /** The regular file being written, if any. */
  private fd = -1;
  private entries = 0;
  private sliceStart = 0;

  // Feeding tar-stream. Positions are offsets in the decompressed stream.
  private readonly tar: Extract;
  /** Decompressed chunks not yet handed to tar-stream (the first from `queueOff`). */
  private queue: Buffer[] = [];
  private queueOff = 0;
  private queued = 0;
  /** Bytes handed to tar-stream. */
  private fed = 0;
  /** Where the next header block starts, or -1 while tar-stream reads extended headers. */
  private boundary = 0;
  /** The two zero blocks were seen: the rest is hashed, not parsed. */
  private archiveEnded = false;
  /** All our writes to tar-stream were processed. */
  private drained = true;
  /** A member tar-stream announced and we did not take yet. */
  private announced: { header: Header; stream: EntryStream; next: () => void } | null = null;
  /** The member whose data is being fed, and tar-stream's go-on callback for it. */
  private header: TarHeader | null = null;
  private resume: (() => void) | null = null;
  /** End of the current member's data; whether tar-stream delivered all of it. */
  private dataEnd = 0;
  private dataDone = false;
  /** The last member's name, for "truncated in". */
  private lastName: string | null = null;
  /** What went wrong (a tar-stream error, a write to a file, the abort), to throw from the loop. */
  private failure: unknown = null;
  /** Set once we are done with tar-stream: its "close" is no failure then. */
  private stopped = false;
  private wake: (() => void) | null = null;

  constructor(private readonly opts: ExtractOptions) {
    this.dest = opts.dest.replace(/\/+$/, "") || "/";
    const max = opts.maxBytes ?? DEFAULT_MAX_BYTES;
    if (!(max >= 0)) throw new WharfError("INVALID_ARGUMENT", `maxBytes must be a non-negative number, not ${max}`);
    this.max = max;
    // highWaterMark 1: every write is answered by a "drain" once tar-stream
    // has processed it. filenameEncoding latin1: names as raw bytes.
    const tarOpts = { highWaterMark: 1, filenameEncoding: "latin1" };
    this.tar = tarExtract(tarOpts);
    this.tar.on("entry", (header, stream, next) => {
      stream.on("error", noop);
      this.announced = { header, stream, next };
      this.poke();
    });
    this.tar.on("drain", () => {
      this.drained = true;
      this.poke();
    });
    this.tar.on("error", (e) => this.fail(tarError(e)));
    this.tar.on("close", () => this.fail(invalid("layer archive: the tar parser stopped")));
    // The root: mode 0755 root:root as containerd's snapshotter makes it,
    // unless the archive has a "./" member.
    this.recs.set("", { kind: "dir", xattrs: null, children: new Set() });
  }

  async run(input: Readable): Promise<ExtractResult> {
    const { signal, onProgress } = this.opts;
    const max = this.max;
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
      this.fail(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });

    const hash = createHash("sha256");
    let bytes = 0;
    try {
      this.sliceStart = performance.now();
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
        if (!this.archiveEnded && chunk.length > 0) {
          this.queue.push(chunk);
          this.queued += chunk.length;
          await this.pump(false);
        }
        onProgress?.(bytes);
        await this.pace();
      }
      signal?.throwIfAborted();
      await this.pump(true);

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

  /** Releases what a run holds (on failure the caller deletes dest). */
  abandon(): void {
    this.done();
    if (this.fd >= 0) {
      try {
        closeSync(this.fd);
      } catch {
        // Already failed; the original error is the one to report.
      }
      this.fd = -1;
    }
  }

  /** Stops tar-stream for good. */
  private done(): void {
    this.stopped = true;
    this.tar.destroy();
  }

  private fail(e: unknown): void {
    if (this.stopped) return;
    this.failure ??= e;
    this.poke();
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private check(): void {
    if (this.failure !== null) throw this.failure;
  }

  /** Waits for tar-stream's events until `ready()` (or a failure). */
  private async until(ready: () => boolean): Promise<void> {
    for (;;) {
      this.check();
      if (ready()) return;
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  /** Yields to the event loop once a slice of synchronous work is used up. */
  private async pace(): Promise<void> {
    if (performance.now() - this.sliceStart < SLICE_MS) return;
    await new Promise(setImmediate);
    this.opts.signal?.throwIfAborted();
    this.check();
    this.sliceStart = performance.now();
  }

  /** Up to `n` queued bytes, without copying. */
  private take(n: number): Buffer {
    const head = this.queue[0]!;
    const len = Math.min(n, head.length - this.queueOff);
    const piece = head.subarray(this.queueOff, this.queueOff + len);
    this.queueOff += len;
    this.queued -= len;
    if (this.queueOff === head.length) {
      this.queue.shift();
      this.queueOff = 0;
    }
    return piece;
  }

  /** The next whole block (a copy only if it spans chunks). */
  private takeBlock(): Buffer {
    const first = this.take(BLOCK);
    if (first.length === BLOCK) return first;
    const parts = [first];
    for (let got = first.length; got < BLOCK; got += parts.at(-1)!.length) parts.push(this.take(BLOCK - got));
    return Buffer.concat(parts, BLOCK);
  }

  /** Whether the queued block at `off` (0 or BLOCK; it must be queued) is all zeros. */
  private zeroAt(off: number): boolean {
    let i = 0;
    let pos = this.queueOff + off;
    while (pos >= this.queue[i]!.length) pos -= this.queue[i++]!.length;
    const c = this.queue[i]!;
    if (pos + BLOCK <= c.length) return ZERO_BLOCK.equals(c.subarray(pos, pos + BLOCK));
    const b = Buffer.alloc(BLOCK);
    for (let got = 0; got < BLOCK; pos = 0) {
      const c = this.queue[i++]!;
      got += c.copy(b, got, pos, Math.min(c.length, pos + BLOCK - got));
    }
    return ZERO_BLOCK.equals(b);
  }

  private send(b: Buffer): void {
    this.drained = false;
    this.fed += b.length;
    this.tar.write(b);
  }

  /**
   * Hands the queued bytes to tar-stream as far as the archive's structure
   * allows, handling members as they come; returns when more input is needed.
   * `eof`: the input ended, so what is missing never comes.
   */
  private async pump(eof: boolean): Promise<void> {
    for (;;) {
      this.check();
      if (this.archiveEnded) {
        this.queue = [];
        this.queued = this.queueOff = 0;
        if (eof) this.done();
        return;
      }
      if (this.announced) {
        this.startEntry();
        await this.pace();
        continue;
      }
      if (this.fed < this.boundary) {
        // The current member's data and padding.
        if (this.queued === 0) {
          if (eof) throw invalid(`layer archive is truncated in ${showName(this.lastName!)}`);
          return;
        }
        this.send(this.take(this.boundary - this.fed));
        // tar-stream keeps its last data write until the member is done with.
        if (this.header && this.fed >= this.dataEnd) await this.until(() => this.dataDone);
        else await this.until(() => this.drained);
        if (this.header && this.dataDone) this.endEntry();
        continue;
      }
      if (this.boundary >= 0) {
        // A header position: a member, an extended header or the end.
        if (this.queued < BLOCK) {
          if (!eof) return;
          // The input ended at a member boundary without the end-of-archive
          // blocks: Go's archive/tar and GNU tar accept this, and so do we.
          if (this.queued === 0) {
            this.done();
            return;
          }
          throw invalid("layer archive is truncated");
        }
        if (this.zeroAt(0)) {
          if (this.queued < 2 * BLOCK && !eof) return;
          // As Go's archive/tar: one zero block must be followed by another
          // (or by the end of the input), not by more members that some
          // readers would extract and others would not.
          if (this.queued >= 2 * BLOCK && !this.zeroAt(BLOCK)) throw invalid("layer archive has a lone zero block followed by data");
          this.archiveEnded = true;
          continue;
        }
        this.boundary = -1;
      } else if (this.queued < BLOCK) {
        // Extended headers (PAX, GNU long names) for a member yet to come.
        if (!eof) return;
        if (this.queued > 0) throw invalid("layer archive is truncated");
        await this.endInHeaders();
      } else if (this.zeroAt(0)) {
        // tar-stream would skip it and apply the headers to whatever follows.
        throw invalid("layer archive ends after an extended header");
      }
      this.send(this.takeBlock());
      await this.until(() => this.drained);
    }
  }

  /** The input ended among extended headers: truncated (tar-stream says so) or no member to apply them to. */
  private async endInHeaders(): Promise<never> {
    const got: { error?: Error } = {};
    const closed = new Promise<void>((r) => {
      this.tar.once("error", (e) => (got.error = e));
      this.tar.once("close", () => r());
    });
    // Ending is the last thing we ask of it: its "close" is no failure now.
    this.stopped = true;
    this.tar.end(undefined);
    await closed;
    if (got.error) throw tarError(got.error);
    throw invalid("layer archive ends after an extended header");
  }

  /** Takes the member tar-stream announced: checks it, makes it, and feeds its data next. */
  private startEntry(): void {
    const { header: t, stream, next } = this.announced!;
    this.announced = null;
    this.entries++;
    // We hand over one header block at a time: the member's is the last one.
    if (stream.offset !== this.fed - BLOCK) throw invalid(`layer archive: tar-stream read a member at ${stream.offset}, expected ${this.fed - BLOCK}`);
    const h = toHeader(t, this.max);
    this.header = h;
    this.lastName = h.name;
    this.resume = next;
    this.dataEnd = this.fed + h.size;
    this.boundary = this.fed + Math.ceil(h.size / BLOCK) * BLOCK;
    this.dataDone = h.size === 0;
    try {
      this.begin(h);
    } catch (e) {
      throw this.explain(e);
    }
    if (h.size === 0) {
      this.endEntry();
      return;
    }
    stream.on("data", (d) => this.onData(d as Buffer));
    stream.once("end", () => {
      this.dataDone = true;
      this.poke();
    });
  }

  private onData(data: Buffer): void {
    if (this.fd < 0 || this.failure !== null) return;
    try {
      let off = 0;
      while (off < data.length) off += writeSync(this.fd, data, off, data.length - off);
    } catch (e) {
      this.fail(this.explain(e));
    }
  }

  /** The member's data is all written: its metadata, then tar-stream may go on. */
  private endEntry(): void {
    if (this.fd >= 0) {
      try {
        this.endFile();
      } catch (e) {
        throw this.explain(e);
      }
    }
    this.header = null;
    const resume = this.resume!;
    this.resume = null;
    resume();
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

  /** File system errors get the member's name; those a name can cause are the layer's fault. */
  private explain(e: unknown): unknown {
    const h = this.header;
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

  private endFile(): void {
    const h = this.header!;
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
