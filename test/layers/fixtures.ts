// Raw tar building blocks for layer tests: headers are written byte by byte
// (no library normalises names, sizes or types), so that hostile archives
// are exactly what an attacker could send.

import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { lstatSync, readFileSync, readdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";

export interface RawEntry {
  /** Member name; a Buffer for raw bytes (e.g. non-UTF-8). */
  name: string | Buffer;
  /** Typeflag character: "0" file (default), "1" link, "2" symlink, "3" char, "4" block, "5" dir, "6" fifo, "x", "g", "L", "K", … */
  type?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  /** Size field: a number (octal, or base-256 when it does not fit), or the raw 12 bytes. Default: content length. */
  size?: number | Buffer;
  linkname?: string | Buffer;
  devmajor?: number;
  devminor?: number;
  /** ustar prefix field. */
  prefix?: string;
  content?: Buffer | string;
  /** "ustar" (POSIX, default) or "gnu" magic, or "v7": none. */
  format?: "ustar" | "gnu" | "v7";
  /** Checksum override (to corrupt it). */
  checksum?: number;
}

function putString(b: Buffer, off: number, len: number, v: string | Buffer): void {
  const bytes = typeof v === "string" ? Buffer.from(v, "utf8") : v;
  if (bytes.length > len) throw new Error(`field too long: ${bytes.length} > ${len}`);
  bytes.copy(b, off);
}

/** Octal when it fits in len-1 digits, else GNU base-256 (negative numbers too). */
function putNumber(b: Buffer, off: number, len: number, v: number): void {
  const oct = v >= 0 ? v.toString(8) : "";
  if (v >= 0 && oct.length <= len - 1) {
    b.write(`${oct.padStart(len - 1, "0")}\0`, off, "latin1");
    return;
  }
  let x = BigInt(v);
  if (x < 0n) x = (1n << BigInt(8 * len)) + x; // two's complement
  for (let i = len - 1; i >= 0; i--) {
    b[off + i] = Number(x & 0xffn);
    x >>= 8n;
  }
  if (v >= 0) b[off]! |= 0x80;
}

export function header(e: RawEntry): Buffer {
  const b = Buffer.alloc(512);
  const content = e.content === undefined ? Buffer.alloc(0) : Buffer.from(e.content);
  putString(b, 0, 100, e.name);
  putNumber(b, 100, 8, e.mode ?? 0o644);
  putNumber(b, 108, 8, e.uid ?? 0);
  putNumber(b, 116, 8, e.gid ?? 0);
  if (Buffer.isBuffer(e.size)) e.size.copy(b, 124, 0, 12);
  else putNumber(b, 124, 12, e.size ?? content.length);
  putNumber(b, 136, 12, e.mtime ?? 1_600_000_000);
  b.write(e.type ?? "0", 156, "latin1");
  if (e.linkname !== undefined) putString(b, 157, 100, e.linkname);
  if ((e.format ?? "ustar") === "ustar") b.write("ustar\x0000", 257, "latin1");
  else if (e.format === "gnu") b.write("ustar  \x00", 257, "latin1");
  putNumber(b, 329, 8, e.devmajor ?? 0);
  putNumber(b, 337, 8, e.devminor ?? 0);
  if (e.prefix !== undefined) putString(b, 345, 155, e.prefix);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : b[i]!;
  b.write(`${(e.checksum ?? sum).toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return b;
}

function pad(n: number): Buffer {
  return Buffer.alloc((512 - (n % 512)) % 512);
}

/** Header, content, padding. */
export function member(e: RawEntry): Buffer {
  const content = e.content === undefined ? Buffer.alloc(0) : Buffer.from(e.content);
  return Buffer.concat([header(e), content, pad(content.length)]);
}

/** A PAX extended header ("x", or "g" for global) with the given records. */
export function pax(records: [string, string | Buffer][], type: "x" | "g" = "x"): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of records) {
    const body = Buffer.concat([Buffer.from(` ${k}=`), Buffer.from(v), Buffer.from("\n")]);
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len = String(len).length + body.length;
    parts.push(Buffer.concat([Buffer.from(String(len)), body]));
  }
  return member({ name: "PaxHeader", type, content: Buffer.concat(parts) });
}

/** A GNU long name ("L") or long link name ("K") header. */
export function gnuLong(type: "L" | "K", value: string | Buffer): Buffer {
  return member({ name: "././@LongLink", type, format: "gnu", content: Buffer.concat([Buffer.from(value), Buffer.alloc(1)]) });
}

/** Members followed by the two zero blocks. */
export function archive(...parts: Buffer[]): Buffer {
  return Buffer.concat([...parts, Buffer.alloc(1024)]);
}

export const sha256 = (b: Buffer): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** Undoes getfattr's \\ooo escapes in a path: raw bytes as latin1. */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})|\\\\/g, (_m, o: string | undefined) => (o ? String.fromCharCode(parseInt(o, 8)) : "\\"));
}

function parseDump(dump: string): Map<string, Map<string, Buffer>> {
  const out = new Map<string, Map<string, Buffer>>();
  let cur: Map<string, Buffer> | null = null;
  for (const line of dump.split("\n")) {
    if (line.startsWith("# file: ")) {
      let p = unescape(line.slice(8));
      p = p === "." ? "" : p.replace(/^\.\//, "");
      cur = new Map();
      out.set(p, cur);
      continue;
    }
    const eq = line.indexOf("=");
    if (!cur || eq < 0) continue;
    const v = line.slice(eq + 1);
    cur.set(line.slice(0, eq), v.startsWith("0x") ? Buffer.from(v.slice(2), "hex") : v === "" ? Buffer.alloc(0) : Buffer.from(JSON.parse(v) as string, "latin1"));
  }
  return out;
}

/**
 * Extended attributes of every path under root (symlinks not followed), in
 * one getfattr run: relative path (raw bytes as latin1, "" for root) → name → value.
 */
export function xattrsUnder(root: string): Map<string, Map<string, Buffer>> {
  const r = spawnSync("getfattr", ["-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", "."], { cwd: root, encoding: "latin1", maxBuffer: 1 << 28 });
  return parseDump(r.stdout);
}

/** Extended attributes of one path (not following a symlink). */
export function xattrsOf(path: string): Map<string, Buffer> {
  const r = spawnSync("getfattr", ["-h", "-d", "-m", "-", "-e", "hex", "--absolute-names", "--", path], { encoding: "latin1" });
  return [...parseDump(r.stdout).values()][0] ?? new Map();
}

export interface TreeEntry {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeMs: number;
  rdev: number;
  /** Content hash (files) or link target (symlinks). */
  data: string;
  xattrs: string;
  /** Index of the hard link group (same inode) in walk order, for files with nlink > 1. */
  linkGroup: number;
}

/**
 * Everything observable about a tree, keyed by path relative to root (the
 * root itself is ""). Paths are raw bytes shown as latin1. `skip` names
 * relative paths whose subtrees are left out.
 */
export function snapshot(root: string, opts: { skip?: string[]; xattrs?: boolean } = {}): Map<string, TreeEntry> {
  const out = new Map<string, TreeEntry>();
  const inodes = new Map<number, number>();
  const xattrs = opts.xattrs === false ? null : xattrsUnder(root);
  const rootBuf = Buffer.from(root);
  const visit = (rel: Buffer): void => {
    const relName = rel.toString("latin1");
    if (opts.skip?.includes(relName)) return;
    const abs = rel.length ? Buffer.concat([rootBuf, Buffer.from("/"), rel]) : rootBuf;
    const st = lstatSync(abs);
    const type = st.isFile()
      ? "file"
      : st.isDirectory()
        ? "dir"
        : st.isSymbolicLink()
          ? "symlink"
          : st.isFIFO()
            ? "fifo"
            : st.isCharacterDevice()
              ? "char"
              : st.isBlockDevice()
                ? "block"
                : "other";
    let data = "";
    if (type === "file") data = createHash("sha256").update(readFileSync(abs)).digest("hex");
    if (type === "symlink") data = readlinkSync(abs, { encoding: "buffer" }).toString("latin1");
    let linkGroup = -1;
    if (type === "file" && st.nlink > 1) {
      if (!inodes.has(st.ino)) inodes.set(st.ino, inodes.size);
      linkGroup = inodes.get(st.ino)!;
    }
    const m = xattrs?.get(relName);
    const xa = m ? [...m].map(([k, v]) => `${k}=${v.toString("hex")}`).sort().join(",") : "";
    out.set(relName, {
      type,
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      size: type === "file" ? st.size : 0,
      mtimeMs: st.mtimeMs,
      rdev: st.rdev,
      data,
      xattrs: xa,
      linkGroup,
    });
    if (type === "dir") {
      for (const name of readdirSync(abs, { encoding: "buffer" }).sort(Buffer.compare)) {
        visit(rel.length ? Buffer.concat([rel, Buffer.from("/"), name]) : name);
      }
    }
  };
  visit(Buffer.alloc(0));
  return out;
}

export const joinPath = join;
