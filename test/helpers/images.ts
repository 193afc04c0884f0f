// Real test images, built the way users build them: umoci for the layers
// (a busybox root file system, then changes that become whiteouts, hard
// links, symlinks, odd modes and owners), skopeo to push them to a real
// registry, and `umoci unpack` as the reference unpacker to compare with.

import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, chownSync, linkSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync, zstdCompressSync } from "node:zlib";
import { pushBlob, pushManifest } from "./registry.js";

function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], ...opts });
}

export class ImageBuilder {
  readonly layout: string;
  readonly bundle: string;

  /** An OCI layout at `dir`/layout with an empty image `tag`, unpacked at `dir`/bundle. */
  constructor(
    private readonly dir: string,
    readonly tag = "latest",
  ) {
    this.layout = join(dir, "layout");
    this.bundle = join(dir, "bundle");
    sh("umoci", ["init", "--layout", this.layout]);
    sh("umoci", ["new", "--image", `${this.layout}:${tag}`]);
    sh("umoci", ["unpack", "--image", `${this.layout}:${tag}`, this.bundle]);
  }

  get rootfs(): string {
    return join(this.bundle, "rootfs");
  }

  /** Adds one layer holding whatever `change` did to the root file system. */
  layer(change: (root: string) => void): this {
    change(this.rootfs);
    // Without --refresh-bundle each repack would replace the last layer.
    sh("umoci", ["repack", "--refresh-bundle", "--image", `${this.layout}:${this.tag}`, this.bundle]);
    return this;
  }

  /** Pushes to `host/repo:tag` with skopeo (OCI or Docker schema 2 manifests). */
  push(host: string, repo: string, tag: string, opts: { format?: "oci" | "v2s2" } = {}): void {
    const args = ["copy", "--quiet", "--dest-tls-verify=false"];
    if (opts.format) args.push("--format", opts.format);
    sh("skopeo", [...args, `oci:${this.layout}:${this.tag}`, `docker://${host}/${repo}:${tag}`]);
  }

  /**
   * Pushes the same image with its layers recompressed with zstd (skopeo 1.9
   * keeps the gzip blobs it already has): same diffIDs, other blob digests.
   */
  async pushZstd(host: string, repo: string, tag: string): Promise<void> {
    const blob = (d: string): Buffer => readFileSync(join(this.layout, "blobs", "sha256", d.slice(7)));
    const index = JSON.parse(readFileSync(join(this.layout, "index.json"), "utf8")) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
    const desc = index.manifests.find((m) => m.annotations?.["org.opencontainers.image.ref.name"] === this.tag)!;
    const manifest = JSON.parse(blob(desc.digest).toString()) as { config: { digest: string }; layers: { mediaType: string; digest: string; size: number }[] };
    for (const l of manifest.layers) {
      const z = zstdCompressSync(gunzipSync(blob(l.digest)));
      l.mediaType = "application/vnd.oci.image.layer.v1.tar+zstd";
      l.digest = await pushBlob(host, repo, z);
      l.size = z.length;
    }
    await pushBlob(host, repo, blob(manifest.config.digest));
    await pushManifest(host, repo, tag, Buffer.from(JSON.stringify(manifest)), "application/vnd.oci.image.manifest.v1+json");
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A busybox root: the static binary and a few applets, /etc files, a data dir. */
export function busyboxBase(root: string): void {
  for (const d of ["bin", "etc", "data/sub", "tmp", "var/empty"]) mkdirSync(join(root, d), { recursive: true });
  copyFileSync("/bin/busybox", join(root, "bin/busybox"));
  chmodSync(join(root, "bin/busybox"), 0o755);
  for (const a of ["sh", "ls", "cat", "echo", "true"]) symlinkSync("busybox", join(root, "bin", a));
  writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n");
  writeFileSync(join(root, "etc/hostname"), "wharf\n");
  writeFileSync(join(root, "data/a.txt"), "alpha\n");
  writeFileSync(join(root, "data/gone.txt"), "deleted by the next layer\n");
  writeFileSync(join(root, "data/sub/b.txt"), "beta\n");
  writeFileSync(join(root, "data/sub/c.txt"), "gamma\n");
  chmodSync(join(root, "tmp"), 0o1777);
}

/** Changes on top of busyboxBase: a whiteout, a replaced dir, hard links, symlinks, owners, modes. */
export function busyboxChanges(root: string): void {
  rmSync(join(root, "data/gone.txt"));
  rmSync(join(root, "data/sub"), { recursive: true });
  mkdirSync(join(root, "data/sub"));
  writeFileSync(join(root, "data/sub/new.txt"), "only in the upper layer\n");
  mkdirSync(join(root, "home/user"), { recursive: true });
  writeFileSync(join(root, "home/user/notes"), "owned by user 1000\n");
  chownSync(join(root, "home/user"), 1000, 1000);
  chownSync(join(root, "home/user/notes"), 1000, 1000);
  chmodSync(join(root, "home/user/notes"), 0o600);
  writeFileSync(join(root, "bin/tool"), "#!/bin/sh\necho tool\n");
  chmodSync(join(root, "bin/tool"), 0o4755);
  linkSync(join(root, "bin/tool"), join(root, "bin/tool-link"));
  symlinkSync("/etc/passwd", join(root, "etc/passwd-abs"));
  symlinkSync("../data/a.txt", join(root, "etc/a-rel"));
  symlinkSync("/nowhere/at/all", join(root, "etc/dangling"));
  writeFileSync(join(root, "empty"), "");
}

/** Unpacks `host/repo:tag` with skopeo + `umoci unpack` (the reference unpacker); returns its rootfs. */
export function referenceUnpack(host: string, repo: string, tag: string, dir: string): string {
  mkdirSync(dir, { recursive: true });
  const layout = join(dir, "ref-layout");
  sh("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${host}/${repo}:${tag}`, `oci:${layout}:${tag}`]);
  sh("umoci", ["unpack", "--image", `${layout}:${tag}`, join(dir, "ref-bundle")]);
  return join(dir, "ref-bundle", "rootfs");
}

export interface TreeEntry {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  content?: string;
  target?: string;
}

/** Every path under `root` with its type, mode, owner, content hash or link target. */
export function describeTree(root: string): Map<string, TreeEntry> {
  const out = new Map<string, TreeEntry>();
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const full = join(root, p);
      const st = lstatSync(full);
      const e: TreeEntry = { type: "", mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid };
      if (st.isDirectory()) e.type = "dir";
      else if (st.isSymbolicLink()) (e.type = "symlink"), (e.target = readlinkSync(full));
      else if (st.isFile()) (e.type = "file"), (e.content = createHash("sha256").update(readFileSync(full)).digest("hex"));
      else e.type = `special:${st.rdev}`;
      if (e.type === "symlink") e.mode = "";
      out.set(p, e);
      if (st.isDirectory()) walk(p);
    }
  };
  walk("");
  return out;
}

/** Differences between two trees, as readable lines (empty: identical). */
export function diffTrees(a: Map<string, TreeEntry>, b: Map<string, TreeEntry>): string[] {
  const d: string[] = [];
  for (const [p, e] of a) {
    const f = b.get(p);
    if (!f) d.push(`only in the first: ${p}`);
    else if (JSON.stringify(e) !== JSON.stringify(f)) d.push(`${p}: ${JSON.stringify(e)} != ${JSON.stringify(f)}`);
  }
  for (const p of b.keys()) if (!a.has(p)) d.push(`only in the second: ${p}`);
  return d;
}
