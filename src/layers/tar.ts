// A streaming tar reader for layer archives: ustar and GNU headers, PAX
// extended headers (local and global), GNU long names and long link names,
// octal and base-256 numbers. It does no I/O and copies no file content: the
// caller pushes chunks of the uncompressed stream and pulls events; a DATA
// event is a view into the chunk last pushed.
//
// It is strict where tar readers disagree (so that what we extract is what
// every other reader would see, or nothing): a bad checksum, an unknown
// magic, a malformed PAX record, a number that is not a number, a size on a
// header-only entry, sparse files and vendor entry types are refused, never
// guessed at. Everything after the end-of-archive blocks is ignored.

import { WharfError } from "../errors.js";

export type TarEntryType = "file" | "link" | "symlink" | "chardev" | "blockdev" | "dir" | "fifo";

/** One archive member, with its PAX and GNU long-name headers applied. */
export interface TarHeader {
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

/** What `next()` returns. */
export const TarEvent = {
  /** Push more input (or call `end()`). */
  NEED_MORE: 0,
  /** `header` holds a new member; DATA events for its content follow, then ENTRY_END. */
  ENTRY: 1,
  /** `data` holds the next piece of the current member's content. */
  DATA: 2,
  ENTRY_END: 3,
  /** The end-of-archive marker was read; further input is ignored. */
  ARCHIVE_END: 4,
} as const;
export type TarEvent = (typeof TarEvent)[keyof typeof TarEvent];

export interface TarReaderOptions {
  /** Largest member size accepted; larger headers are refused before any data is read. */
  maxEntrySize: number;
}

/** Largest PAX / GNU long-name header content accepted. */
const MAX_META_SIZE = 1 << 20;
const BLOCK = 512;
/** uid/gid (2^32 - 1) means "unchanged" to chown(2): never a real owner. */
const MAX_ID = 0xfffffffe;

const State = { HEADER: 0, META: 1, DATA: 2, PAD: 3, AFTER_ZERO: 4, DONE: 5 } as const;
type State = (typeof State)[keyof typeof State];

function invalid(what: string): WharfError {
  return new WharfError("INVALID_LAYER", what);
}

/** Printable form of a raw (latin1) member name for messages. */
export function showName(raw: string): string {
  return JSON.stringify(Buffer.from(raw, "latin1").toString("utf8"));
}

/**
 * A numeric header field: octal text padded with spaces or NULs, or GNU
 * base-256 (first byte 0x80 positive, 0xff negative, two's complement).
 * Returns NaN for anything else, and for values beyond 2^53.
 */
export function parseNumeric(b: Uint8Array, off: number, len: number): number {
  const first = b[off]!;
  if (first & 0x80) {
    if (first !== 0x80 && first !== 0xff) return NaN;
    const inv = first & 0x40 ? 0xff : 0;
    let x = 0;
    for (let i = 0; i < len; i++) {
      let c = b[off + i]! ^ inv;
      if (i === 0) c &= 0x7f;
      if (x >= 2 ** 45) return NaN;
      x = x * 256 + c;
    }
    return inv ? -x - 1 : x;
  }
  let s = off;
  let e = off + len;
  while (s < e && (b[s] === 0x20 || b[s] === 0)) s++;
  while (e > s && (b[e - 1] === 0x20 || b[e - 1] === 0)) e--;
  let x = 0;
  for (let i = s; i < e; i++) {
    const c = b[i]! - 0x30;
    if (c < 0 || c > 7) return NaN;
    x = x * 8 + c;
  }
  return x;
}

function cstring(b: Uint8Array, off: number, len: number): string {
  let e = off;
  const end = off + len;
  while (e < end && b[e] !== 0) e++;
  return Buffer.from(b.buffer, b.byteOffset + off, e - off).toString("latin1");
}

function isZeroBlock(b: Uint8Array): boolean {
  for (let i = 0; i < BLOCK; i++) if (b[i] !== 0) return false;
  return true;
}

/** Both the unsigned sum (POSIX) and the signed one (old Sun tars) are accepted. */
function checksumOk(b: Uint8Array): boolean {
  const want = parseNumeric(b, 148, 8);
  let u = 0;
  let s = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : b[i]!;
    u += c;
    s += c > 127 ? c - 256 : c;
  }
  return want === u || want === s;
}

interface Pax {
  path?: string;
  linkpath?: string;
  size?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  atime?: number;
  xattrs?: Map<string, Buffer>;
}

const DECIMAL = /^\d+$/;
const TIME = /^-?\d+(\.\d+)?$/;

function paxInt(key: string, v: string, max: number): number {
  const n = DECIMAL.test(v) ? Number(v) : NaN;
  if (!(n <= max)) throw invalid(`PAX record ${key}=${JSON.stringify(v)} is not a valid number`);
  return n;
}

/** Parses PAX records `LEN KEY=VALUE\n` into `into`. Malformed records are refused. */
function parsePax(buf: Buffer, into: Pax, global: boolean): void {
  let off = 0;
  while (off < buf.length) {
    // Some writers pad the header content with NULs.
    if (buf[off] === 0) {
      for (let i = off; i < buf.length; i++) if (buf[i] !== 0) throw invalid("malformed PAX header");
      return;
    }
    const sp = buf.indexOf(0x20, off);
    const lenText = sp < 0 ? "" : buf.toString("latin1", off, sp);
    const len = DECIMAL.test(lenText) ? Number(lenText) : NaN;
    if (!(len > sp - off + 1) || off + len > buf.length || buf[off + len - 1] !== 0x0a) throw invalid("malformed PAX header");
    const rec = buf.subarray(sp + 1, off + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw invalid("malformed PAX record");
    const key = rec.toString("latin1", 0, eq);
    const value = rec.subarray(eq + 1);
    off += len;
    if (global && (key === "path" || key === "linkpath" || key === "size")) {
      throw invalid(`PAX global header sets ${key}`);
    }
    if (key.startsWith("GNU.sparse.")) throw invalid("sparse files are not supported");
    if (key.startsWith("SCHILY.xattr.")) {
      const name = key.slice("SCHILY.xattr.".length);
      (into.xattrs ??= new Map()).set(name, Buffer.from(value));
      continue;
    }
    const v = value.toString("latin1");
    // An empty value reverts the field to the header's own.
    const unset = v === "";
    switch (key) {
      case "path":
        if (unset) delete into.path;
        else into.path = v;
        break;
      case "linkpath":
        if (unset) delete into.linkpath;
        else into.linkpath = v;
        break;
      case "size":
        if (unset) delete into.size;
        else into.size = paxInt(key, v, Number.MAX_SAFE_INTEGER);
        break;
      case "uid":
      case "gid":
        if (unset) delete into[key];
        else into[key] = paxInt(key, v, MAX_ID);
        break;
      case "mtime":
      case "atime":
        if (unset) delete into[key];
        else if (TIME.test(v) && Number.isFinite(Number(v))) into[key] = Number(v);
        else throw invalid(`PAX record ${key}=${JSON.stringify(v)} is not a valid time`);
        break;
      default:
      // uname, gname, ctime, comment, charset, vendor records: not ours to apply.
    }
  }
}

/**
 * Pull-style reader. Contract: `push()` only after `next()` returned
 * NEED_MORE; a DATA view stays valid only until the next `push()` returns
 * control to the caller's own use of the chunk (the reader never copies or
 * retains it). `end()` after the last chunk: throws "truncated" unless the
 * input ended at a member boundary.
 */
export class TarReader {
  header: TarHeader | null = null;
  data: Buffer = Buffer.alloc(0);

  private state: State = State.HEADER;
  private chunk: Buffer = Buffer.alloc(0);
  private pos = 0;
  /** A header split across chunks is gathered here. */
  private readonly block = Buffer.alloc(BLOCK);
  private blockFill = 0;
  /** Bytes of content (DATA/META) or padding (PAD) still to come. */
  private remaining = 0;
  private padAfter = 0;
  private meta: Buffer = Buffer.alloc(0);
  private metaFill = 0;
  private metaType = 0;
  private pax: Pax | null = null;
  private globalPax: Pax | null = null;
  private longName: string | null = null;
  private longLink: string | null = null;
  /** A member whose data ended but whose ENTRY_END was not yet returned. */
  private pendingEnd = false;

  constructor(private readonly opts: TarReaderOptions) {}

  push(chunk: Buffer): void {
    this.chunk = chunk;
    this.pos = 0;
  }

  /** Called once the input ended. */
  end(): void {
    if (this.state === State.DONE || this.state === State.AFTER_ZERO) return;
    if (this.state === State.HEADER && this.blockFill === 0 && !this.pax && this.longName === null && this.longLink === null) {
      // Ended at a member boundary without the end-of-archive blocks: Go's
      // archive/tar and GNU tar accept this, and so do we (the diffID still
      // covers exactly what was read).
      return;
    }
    const where = this.header ? ` in ${showName(this.header.name)}` : "";
    throw invalid(`layer archive is truncated${where}`);
  }

  next(): TarEvent {
    for (;;) {
      if (this.pendingEnd) {
        this.pendingEnd = false;
        this.padAfter = (BLOCK - (this.header!.size % BLOCK)) % BLOCK;
        this.remaining = this.padAfter;
        this.state = this.remaining ? State.PAD : State.HEADER;
        return TarEvent.ENTRY_END;
      }
      const avail = this.chunk.length - this.pos;
      switch (this.state) {
        case State.DONE:
          this.pos = this.chunk.length;
          return TarEvent.NEED_MORE;
        case State.DATA: {
          if (this.remaining === 0) {
            this.pendingEnd = true;
            continue;
          }
          if (avail === 0) return TarEvent.NEED_MORE;
          const n = Math.min(avail, this.remaining);
          this.data = this.chunk.subarray(this.pos, this.pos + n);
          this.pos += n;
          this.remaining -= n;
          if (this.remaining === 0) this.pendingEnd = true;
          return TarEvent.DATA;
        }
        case State.PAD: {
          if (avail === 0) return TarEvent.NEED_MORE;
          const n = Math.min(avail, this.remaining);
          this.pos += n;
          this.remaining -= n;
          if (this.remaining === 0) this.state = State.HEADER;
          continue;
        }
        case State.META: {
          if (avail === 0) return TarEvent.NEED_MORE;
          const n = Math.min(avail, this.remaining);
          this.chunk.copy(this.meta, this.metaFill, this.pos, this.pos + n);
          this.pos += n;
          this.metaFill += n;
          this.remaining -= n;
          if (this.remaining === 0) {
            this.applyMeta();
            this.remaining = (BLOCK - (this.meta.length % BLOCK)) % BLOCK;
            this.state = this.remaining ? State.PAD : State.HEADER;
          }
          continue;
        }
        case State.HEADER:
        case State.AFTER_ZERO: {
          let b: Buffer;
          if (this.blockFill === 0 && avail >= BLOCK) {
            b = this.chunk.subarray(this.pos, this.pos + BLOCK);
            this.pos += BLOCK;
          } else {
            if (avail === 0) return TarEvent.NEED_MORE;
            const n = Math.min(avail, BLOCK - this.blockFill);
            this.chunk.copy(this.block, this.blockFill, this.pos, this.pos + n);
            this.pos += n;
            this.blockFill += n;
            if (this.blockFill < BLOCK) return TarEvent.NEED_MORE;
            this.blockFill = 0;
            b = this.block;
          }
          if (this.state === State.AFTER_ZERO) {
            // As Go's archive/tar: one zero block must be followed by another
            // (or by the end of the input), not by more members that some
            // readers would extract and others would not.
            if (!isZeroBlock(b)) throw invalid("layer archive has a lone zero block followed by data");
            this.state = State.DONE;
            return TarEvent.ARCHIVE_END;
          }
          if (isZeroBlock(b)) {
            if (this.pax || this.longName !== null || this.longLink !== null) throw invalid("layer archive ends after an extended header");
            this.state = State.AFTER_ZERO;
            continue;
          }
          if (this.decodeHeader(b)) return TarEvent.ENTRY;
          continue;
        }
      }
    }
  }

  /** Returns true for a member (ENTRY), false for a meta header (PAX/GNU long name). */
  private decodeHeader(b: Buffer): boolean {
    if (!checksumOk(b)) throw invalid("layer archive has a tar header with a bad checksum (corrupt, or not a tar)");
    const magic = b.toString("latin1", 257, 265);
    const ustar = magic === "ustar\x0000";
    if (!ustar && magic !== "ustar  \x00") throw invalid("layer archive has a tar header of unknown format");

    let name = cstring(b, 0, 100);
    if (ustar && b[345] !== 0) name = `${cstring(b, 345, 155)}/${name}`;
    const flag = b[156]!;
    const size = parseNumeric(b, 124, 12);
    const shown = showName(this.pax?.path ?? this.longName ?? name);
    if (!(size >= 0) || !Number.isSafeInteger(size)) throw invalid(`layer entry ${shown}: invalid size in header`);

    // Meta headers: their content is gathered, then applies to the next member.
    if (flag === 0x78 /* x */ || flag === 0x67 /* g */ || flag === 0x4c /* L */ || flag === 0x4b /* K */) {
      if (size > MAX_META_SIZE) throw invalid(`layer archive has an extended header of ${size} bytes (limit ${MAX_META_SIZE})`);
      this.meta = Buffer.allocUnsafe(size);
      this.metaFill = 0;
      this.metaType = flag;
      this.remaining = size;
      this.state = State.META;
      if (size === 0) {
        this.applyMeta();
        this.state = State.HEADER;
      }
      return false;
    }

    let type: TarEntryType;
    switch (flag) {
      case 0x30: // '0'
      case 0x37: // '7' contiguous file: a regular file everywhere else
        type = "file";
        break;
      case 0: // old tars: a trailing slash marks a directory
        type = (this.pax?.path ?? this.longName ?? name).endsWith("/") ? "dir" : "file";
        break;
      case 0x31:
        type = "link";
        break;
      case 0x32:
        type = "symlink";
        break;
      case 0x33:
        type = "chardev";
        break;
      case 0x34:
        type = "blockdev";
        break;
      case 0x35:
        type = "dir";
        break;
      case 0x36:
        type = "fifo";
        break;
      default:
        throw invalid(`layer entry ${shown}: unsupported entry type ${JSON.stringify(String.fromCharCode(flag))}`);
    }

    const pax: Pax = { ...this.globalPax, ...this.pax };
    if (this.globalPax?.xattrs || this.pax?.xattrs) pax.xattrs = new Map([...(this.globalPax?.xattrs ?? []), ...(this.pax?.xattrs ?? [])]);
    const h: TarHeader = {
      name: pax.path ?? this.longName ?? name,
      linkname: pax.linkpath ?? this.longLink ?? cstring(b, 157, 100),
      type,
      size: pax.size ?? size,
      mode: parseNumeric(b, 100, 8),
      uid: pax.uid ?? parseNumeric(b, 108, 8),
      gid: pax.gid ?? parseNumeric(b, 116, 8),
      mtime: pax.mtime ?? parseNumeric(b, 136, 12),
      atime: pax.atime,
      devmajor: 0,
      devminor: 0,
      xattrs: pax.xattrs ?? null,
    };
    this.pax = null;
    this.longName = null;
    this.longLink = null;
    this.header = h;
    const who = `layer entry ${showName(h.name)}`;

    if (!(h.mode >= 0)) throw invalid(`${who}: invalid mode in header`);
    h.mode &= 0o7777;
    if (!(h.uid >= 0 && h.uid <= MAX_ID)) throw invalid(`${who}: invalid uid in header`);
    if (!(h.gid >= 0 && h.gid <= MAX_ID)) throw invalid(`${who}: invalid gid in header`);
    // Past ±2^40 s (35,000 years) a time is garbage, and may not fit a timespec.
    if (!(Math.abs(h.mtime) < 2 ** 40)) throw invalid(`${who}: invalid mtime in header`);
    if (h.atime !== undefined && !(Math.abs(h.atime) < 2 ** 40)) throw invalid(`${who}: invalid atime`);
    if (type === "chardev" || type === "blockdev") {
      h.devmajor = parseNumeric(b, 329, 8);
      h.devminor = parseNumeric(b, 337, 8);
      if (!(h.devmajor >= 0 && h.devminor >= 0)) throw invalid(`${who}: invalid device number in header`);
    }
    if (type !== "file" && h.size !== 0) {
      // Readers disagree on whether such content exists (Go skips none, GNU
      // tar skips it): refuse rather than pick one reading.
      throw invalid(`${who}: a ${type} entry with ${h.size} bytes of content`);
    }
    if (h.size > this.opts.maxEntrySize) throw invalid(`${who}: size ${h.size} is past the limit of ${this.opts.maxEntrySize} bytes`);
    if (type !== "link" && type !== "symlink") h.linkname = "";

    this.remaining = h.size;
    this.state = State.DATA;
    if (h.size === 0) this.pendingEnd = true;
    return true;
  }

  private applyMeta(): void {
    switch (this.metaType) {
      case 0x78:
        parsePax(this.meta, (this.pax ??= {}), false);
        break;
      case 0x67:
        parsePax(this.meta, (this.globalPax ??= {}), true);
        break;
      case 0x4c:
        this.longName = cstring(this.meta, 0, this.meta.length);
        break;
      case 0x4b:
        this.longLink = cstring(this.meta, 0, this.meta.length);
        break;
    }
  }
}
