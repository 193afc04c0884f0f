// The two things Node cannot do by itself when extracting a layer: create
// device nodes / FIFOs (mknod) and set extended attributes (setxattr). Each is
// done in one batch at the end of an extraction, by one child process per
// batch rather than one per path.
//
// Neither helper ever sees a name taken from the archive as shell code or as a
// path to resolve on its own:
//   - nodes are created by `mknod` inside a fresh staging directory of ours
//     under names we make up ("c0", "p1", …, passed as arguments to a fixed
//     script), then given their owner, mode and times and renamed into place
//     by Node, with the validated dest-relative names;
//   - extended attributes go through `setfattr -h --restore=-`, reading a
//     getfattr-format dump on stdin, run in dest: every path in it is a
//     validated dest-relative name, octal-escaped byte by byte, and -h keeps
//     it from following a symlink at the end of a path.

import { spawn } from "node:child_process";
import { chmodSync, lchownSync, lutimesSync, mkdtempSync, renameSync, rmdirSync } from "node:fs";
import { WharfError } from "../errors.js";

export interface PendingNode {
  /** Absolute final path (string or raw bytes). */
  path: string | Buffer;
  type: "char00" | "fifo";
  mode: number;
  uid: number;
  gid: number;
  atime: number;
  mtime: number;
}

export interface PendingXattrs {
  /** Path relative to dest, raw bytes one char per byte (latin1); "" is dest itself. */
  rel: string;
  xattrs: Map<string, Buffer>;
}

/** Names per `sh` run: far below ARG_MAX with our short names. */
const NODES_PER_RUN = 4096;
const MKNOD_SCRIPT = 'for n; do case "$n" in c*) mknod -m 0 -- "$n" c 0 0 ;; p*) mknod -m 0 -- "$n" p ;; *) exit 2 ;; esac || exit 1; done';

function run(cmd: string, args: string[], cwd: string, input: Buffer | null, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd, stdio: [input ? "pipe" : "ignore", "ignore", "pipe"], signal });
    let stderr = "";
    p.stderr!.setEncoding("utf8");
    p.stderr!.on("data", (s: string) => {
      if (stderr.length < 4096) stderr += s;
    });
    p.once("error", reject);
    p.once("close", (code, sig) => {
      if (code === 0) resolve();
      else reject(new Error(`${cmd} failed (${sig ?? `exit ${code}`}): ${stderr.trim()}`));
    });
    if (input) {
      // EPIPE if the child dies early: its exit status tells the story.
      p.stdin!.on("error", () => {});
      p.stdin!.end(input);
    }
  });
}

/**
 * Creates every pending node. `dest` must be the layer root and every
 * `path`'s parent an existing directory of the layer that holds nothing at
 * that name (the caller's bookkeeping guarantees it).
 */
export async function createNodes(dest: string, nodes: PendingNode[], signal?: AbortSignal): Promise<void> {
  if (nodes.length === 0) return;
  // mkdtemp picks a name that does not exist, so nothing of the layer's is
  // touched; the directory is gone again before the layer is used.
  const staging = mkdtempSync(`${dest}/.wharf-nodes-`);
  const names = nodes.map((n, i) => `${n.type === "fifo" ? "p" : "c"}${i}`);
  for (let i = 0; i < names.length; i += NODES_PER_RUN) {
    await run("/bin/sh", ["-c", MKNOD_SCRIPT, "sh", ...names.slice(i, i + NODES_PER_RUN)], staging, null, signal);
  }
  nodes.forEach((n, i) => {
    const tmp = `${staging}/${names[i]}`;
    lchownSync(tmp, n.uid, n.gid);
    // After chown, which clears setuid/setgid.
    chmodSync(tmp, n.mode);
    lutimesSync(tmp, n.atime, n.mtime);
    renameSync(tmp, n.path);
  });
  rmdirSync(staging);
}

const XATTR_NAME = /^(?:(?:user|trusted|security)\.[\x21-\x7e]+|system\.posix_acl_(?:access|default))$/;

/**
 * Why an xattr name from a layer is refused, or null if it may be set.
 * Overlay's own attributes (trusted.overlay.*) could redirect or hide lower
 * layers' content: only our whiteout handling sets them. The name must also be
 * safe in the restore format, which ends a name at "=" and reads quotes and
 * backslashes as syntax.
 */
export function xattrNameProblem(name: string): string | null {
  if (name.length > 255 || !XATTR_NAME.test(name) || /[="\\]/.test(name)) return `unsupported extended attribute name ${JSON.stringify(name)}`;
  if (name.startsWith("trusted.overlay.")) return `extended attribute ${name} is reserved for overlayfs`;
  return null;
}

/** A path in getfattr's dump format: every byte but [A-Za-z0-9._/+,@%:-] as a \ooo escape. */
function quotePath(rel: string): string {
  if (rel === "") return ".";
  let out = "";
  for (let i = 0; i < rel.length; i++) {
    const c = rel.charCodeAt(i);
    const ch = rel[i]!;
    if (/[A-Za-z0-9._/+,@%:-]/.test(ch)) out += ch;
    else out += `\\${c.toString(8).padStart(3, "0")}`;
  }
  return out;
}

/** The getfattr-format dump that sets `items` (exported for tests). */
export function restoreScript(items: PendingXattrs[]): string {
  let s = "";
  for (const { rel, xattrs } of items) {
    s += `# file: ${quotePath(rel)}\n`;
    for (const [name, value] of xattrs) s += value.length ? `${name}=0x${value.toString("hex")}\n` : `${name}=""\n`;
    s += "\n";
  }
  return s;
}

/** Sets all `items` with one `setfattr` run in `dest` (names already checked with xattrNameProblem). */
export async function setXattrs(dest: string, items: PendingXattrs[], signal?: AbortSignal): Promise<void> {
  if (items.length === 0) return;
  try {
    await run("setfattr", ["-h", "--restore=-"], dest, Buffer.from(restoreScript(items), "latin1"), signal);
  } catch (e) {
    if (signal?.aborted) throw e;
    throw new WharfError("INVALID_LAYER", `setting the layer's extended attributes failed: ${(e as Error).message}`);
  }
}
