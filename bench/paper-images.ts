// Images for bench/paper.ts, written as OCI layouts that skopeo pushes as
// they are: synthetic images (N layers of random, incompressible data in F
// files each) and a realistic one built from Debian packages (`apt-get
// download` + `dpkg -x`, thousands of files, gzip -6 like a build tool).
//
// Every call builds a new variant: synthetic layers are fresh random bytes,
// and each Debian layer gets a file of random bytes of its own, so that the
// three configurations of one point each pull layers no store has seen.

import { spawnSync } from "node:child_process";
import { createHash, randomBytes, randomFillSync } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzip } from "node:zlib";
import { promisify } from "node:util";

const gzipAsync = promisify(gzip);

export interface BuiltImage {
  /** The OCI layout directory and its tag. */
  readonly layout: string;
  readonly tag: string;
  readonly layers: readonly { digest: string; size: number; diffID: string; unpacked: number }[];
  /** Compressed layer bytes: what one full pull must fetch, manifests and config aside. */
  readonly layerBytes: number;
  readonly configBytes: number;
  readonly manifestBytes: number;
  readonly unpackedBytes: number;
  /** Regular files in all layers. */
  readonly files: number;
}

const MTIME = 1_700_000_000;

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, "0") + "\0";
}

/** A ustar header for a regular file ("0") or a directory ("5"). */
function tarHeader(name: string, size: number, type: "0" | "5"): Buffer {
  if (Buffer.byteLength(name) > 99) throw new Error(`tar name too long: ${name}`);
  const h = Buffer.alloc(512);
  h.write(name, 0, "utf8");
  h.write(octal(type === "5" ? 0o755 : 0o644, 8), 100);
  h.write(octal(0, 8), 108);
  h.write(octal(0, 8), 116);
  h.write(octal(size, 12), 124);
  h.write(octal(MTIME, 12), 136);
  h.write("        ", 148);
  h.write(type, 156);
  h.write("ustar\0", 257);
  h.write("00", 263);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
  return h;
}

const pad = (n: number): number => (512 - (n % 512)) % 512;

/** Tar entries of one synthetic layer: a directory and `files` files of random bytes, `bytes` in all. */
function syntheticTar(index: number, bytes: number, files: number): Buffer {
  const dir = `layer${index}`;
  const sizes = Array.from({ length: files }, () => Math.floor(bytes / files));
  sizes[0]! += bytes - sizes.reduce((a, b) => a + b, 0);
  const total = 512 + sizes.reduce((a, s) => a + 512 + s + pad(s), 0) + 1024;
  const out = Buffer.alloc(total);
  let o = 0;
  tarHeader(`${dir}/`, 0, "5").copy(out, o);
  o += 512;
  for (const [k, s] of sizes.entries()) {
    tarHeader(`${dir}/f${k}`, s, "0").copy(out, o);
    o += 512;
    randomFillSync(out, o, s);
    o += s + pad(s);
  }
  return out; // the rest is zeros: padding and the two end-of-archive blocks
}

/** A tar entry (header and padded data) for one file. */
function tarFile(name: string, data: Buffer): Buffer {
  return Buffer.concat([tarHeader(name, data.length, "0"), data, Buffer.alloc(pad(data.length))]);
}

const sha256 = (b: Buffer): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

async function writeLayout(dir: string, tag: string, tars: readonly Buffer[], files: number, level: number): Promise<BuiltImage> {
  rmSync(dir, { recursive: true, force: true });
  const blobs = join(dir, "blobs", "sha256");
  mkdirSync(blobs, { recursive: true });
  const put = (b: Buffer): string => {
    const d = sha256(b);
    writeFileSync(join(blobs, d.slice(7)), b);
    return d;
  };
  const layers = await Promise.all(
    tars.map(async (tar) => {
      const gz = await gzipAsync(tar, { level });
      return { digest: put(gz), size: gz.length, diffID: sha256(tar), unpacked: tar.length };
    }),
  );
  const config = Buffer.from(
    JSON.stringify({
      created: new Date(MTIME * 1000).toISOString(),
      architecture: "amd64",
      os: "linux",
      config: { Cmd: ["/bin/sh"] },
      rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffID) },
      history: layers.map(() => ({ created: new Date(MTIME * 1000).toISOString(), created_by: "bench/paper-images.ts" })),
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: put(config), size: config.length },
      layers: layers.map((l) => ({ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: l.digest, size: l.size })),
    }),
  );
  const md = put(manifest);
  writeFileSync(join(dir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  writeFileSync(
    join(dir, "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: "application/vnd.oci.image.manifest.v1+json", digest: md, size: manifest.length, annotations: { "org.opencontainers.image.ref.name": tag } }],
    }),
  );
  return {
    layout: dir,
    tag,
    layers,
    layerBytes: layers.reduce((a, l) => a + l.size, 0),
    configBytes: config.length,
    manifestBytes: manifest.length,
    unpackedBytes: layers.reduce((a, l) => a + l.unpacked, 0),
    files,
  };
}

export interface SyntheticSpec {
  readonly layers: number;
  /** Bytes of file data per layer (random: the compressed layer is as big). */
  readonly layerBytes: number;
  readonly filesPerLayer: number;
}

/** A new synthetic image (fresh random content) as an OCI layout at `dir`. */
export function syntheticImage(dir: string, spec: SyntheticSpec): Promise<BuiltImage> {
  const tars = Array.from({ length: spec.layers }, (_, i) => syntheticTar(i, spec.layerBytes, spec.filesPerLayer));
  return writeLayout(dir, "bench", tars, spec.layers * spec.filesPerLayer, 1);
}

/**
 * The realistic image's layers, as a Dockerfile on Debian would make them:
 * a base system, a Python runtime, a Perl runtime, and time zone data.
 */
const DEBIAN_LAYERS: readonly { name: string; packages: readonly string[] }[] = [
  { name: "base", packages: ["libc6", "libc-bin", "coreutils", "bash", "dash", "grep", "sed", "tar", "gzip", "libssl3", "libcrypt1", "libselinux1", "libpcre2-8-0", "libacl1", "libattr1", "libgmp10", "libtinfo6", "zlib1g", "ca-certificates"] },
  { name: "tzdata", packages: ["tzdata"] },
  { name: "python", packages: ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libexpat1", "libffi8", "libsqlite3-0", "libbz2-1.0", "liblzma5", "libreadline8", "libncursesw6", "libuuid1", "media-types"] },
  { name: "perl", packages: ["perl-base", "perl-modules-5.36", "libperl5.36", "libdb5.3", "libgdbm6", "libgdbm-compat4"] },
];

function run(cmd: string, args: readonly string[], cwd?: string): Buffer {
  const r = spawnSync(cmd, args, { cwd, maxBuffer: 2 ** 31, stdio: ["ignore", "pipe", "pipe"] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr?.toString() || r.error?.message || r.status}`);
  return r.stdout;
}

function countFiles(root: string): number {
  let n = 0;
  for (const e of readdirSync(root, { recursive: true, withFileTypes: true })) if (e.isFile()) n++;
  return n;
}

/**
 * The Debian layers' trees, downloaded and extracted once into `cache`
 * (kept between runs), and each tree as an uncompressed tar without its
 * end-of-archive blocks (GNU tar with 512-byte records: the archive ends
 * with exactly two zero blocks, which are cut off here).
 */
export class DebianLayers {
  private readonly tars: Buffer[] = [];
  readonly files: number;

  constructor(readonly cache: string) {
    const debs = join(cache, "debs");
    mkdirSync(debs, { recursive: true });
    let files = 0;
    for (const l of DEBIAN_LAYERS) {
      const root = join(cache, "rootfs", l.name);
      if (!existsSync(root)) {
        const have = readdirSync(debs);
        const missing = l.packages.filter((p) => !have.some((f) => f.startsWith(`${p}_`) && f.endsWith(".deb")));
        if (missing.length) {
          console.error(`downloading ${missing.join(" ")}`);
          run("apt-get", ["download", "-q", ...missing], debs);
        }
        const tmp = `${root}.tmp`;
        rmSync(tmp, { recursive: true, force: true });
        mkdirSync(tmp, { recursive: true });
        for (const p of l.packages) {
          const deb = readdirSync(debs).find((f) => f.startsWith(`${p}_`) && f.endsWith(".deb"));
          if (!deb) throw new Error(`no .deb for ${p} in ${debs}`);
          run("dpkg", ["-x", join(debs, deb), tmp]);
        }
        renameSync(tmp, root);
      }
      files += countFiles(root);
      const tar = run("tar", ["-c", "-b", "1", "--numeric-owner", "--owner=0", "--group=0", "-f", "-", "-C", root, "."]);
      if (!tar.subarray(tar.length - 1024).equals(Buffer.alloc(1024))) throw new Error(`unexpected end of GNU tar's archive of ${root}`);
      this.tars.push(tar.subarray(0, tar.length - 1024));
    }
    this.files = files + DEBIAN_LAYERS.length;
  }

  get layerNames(): string[] {
    return DEBIAN_LAYERS.map((l) => l.name);
  }

  /** A new variant: each layer with a file of random bytes of its own, gzip -6. */
  image(dir: string): Promise<BuiltImage> {
    const tars = this.tars.map((t, i) => Buffer.concat([t, tarFile(`./.variant-${i}`, Buffer.from(randomBytes(16).toString("hex"))), Buffer.alloc(1024)]));
    return writeLayout(dir, "bench", tars, this.files, 6);
  }
}
