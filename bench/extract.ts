// make bench-extract: layer extraction throughput, wharf's extractLayer beside
// GNU `tar -xzf`, on the same gzip-compressed layer: a tree of real Debian
// packages (compilers, Python, Perl, the Go sources: big binaries and
// thousands of small files), built once and cached under bench/.cache/.
//
// Runs alternate (tar, wharf, tar, wharf, …) into fresh directories on the
// same file system; the previous tree is removed between runs and no cache
// is dropped, so both see the same conditions. Prints a table and, as the
// last line, JSON with both medians and the speed ratio wharf / tar.
//
//   BENCH_RUNS=3           runs of each
//   BENCH_DIR=DIR          extract under DIR instead of bench/.cache/run
//   BENCH_SYNC=1           sync (untimed) before each run
//   UV_THREADPOOL_SIZE     left at libuv's default (4) unless set by the caller

import { spawnSync } from "node:child_process";
import { createReadStream, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { extractLayer } from "../src/layers/extract.js";

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const CACHE = join(dirname(fileURLToPath(import.meta.url)), ".cache");
const PACKAGES = [
  "gcc-12",
  "cpp-12",
  "libstdc++-12-dev",
  "python3.11-minimal",
  "libpython3.11-stdlib",
  "perl-modules-5.36",
  "libperl5.36",
  "golang-1.19-src",
];
const LAYER = join(CACHE, "layer.tar.gz");
/** Where the trees go; BENCH_DIR moves it (e.g. to a tmpfs, to take the disk out of it). */
const WORK = process.env.BENCH_DIR ? join(process.env.BENCH_DIR, `wharf-bench-${process.pid}`) : join(CACHE, "run");

function sh(cmd: string, args: string[], cwd?: string): void {
  const r = spawnSync(cmd, args, { cwd, stdio: ["ignore", "ignore", "inherit"] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status ?? r.signal})`);
}

/** Downloads the packages and builds the compressed layer, once. */
function buildLayer(): void {
  if (existsSync(LAYER)) return;
  const debs = join(CACHE, "debs");
  mkdirSync(debs, { recursive: true });
  const have = readdirSync(debs).filter((f) => f.endsWith(".deb"));
  const missing = PACKAGES.filter((p) => !have.some((f) => f.startsWith(`${p}_`)));
  if (missing.length) {
    console.error(`downloading ${missing.join(" ")}`);
    sh("apt-get", ["download", ...missing], debs);
  }
  const root = join(CACHE, "rootfs");
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root);
  for (const f of readdirSync(debs).filter((f) => f.endsWith(".deb"))) sh("dpkg", ["-x", join(debs, f), root]);
  console.error("compressing the layer");
  sh("tar", ["-czf", `${LAYER}.tmp`, "--numeric-owner", "-C", root, "."]);
  renameSync(`${LAYER}.tmp`, LAYER);
  rmSync(root, { recursive: true, force: true });
}

/** Uncompressed bytes and member count, from tar's own listing. */
function measureLayer(): { bytes: number; files: number } {
  const r = spawnSync("sh", ["-c", 'gzip -dc "$1" | wc -c; tar -tzf "$1" | wc -l', "sh", LAYER], { encoding: "utf8" });
  const [bytes, files] = r.stdout.trim().split("\n").map(Number);
  return { bytes: bytes!, files: files! };
}

/**
 * A new empty directory for the next run. Caches are not dropped: the layer
 * file stays in memory for both. The previous tree is removed before its
 * pages would be written back, so by default neither run waits for the disk
 * (BENCH_SYNC=1 flushes everything first instead; on this machine's disk that
 * makes every run slower and noisier).
 */
function fresh(name: string): string {
  const d = join(WORK, name);
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d, { recursive: true });
  if (process.env.BENCH_SYNC === "1") sh("sync", []);
  return d;
}

function runTar(dir: string): number {
  const t0 = performance.now();
  sh("tar", ["-xzf", LAYER, "-C", dir]);
  return (performance.now() - t0) / 1000;
}

async function runWharf(dir: string): Promise<{ seconds: number; entries: number }> {
  const t0 = performance.now();
  const r = await extractLayer(createReadStream(LAYER, { highWaterMark: 1 << 20 }), { dest: dir, compression: "gzip" });
  return { seconds: (performance.now() - t0) / 1000, entries: r.entries };
}

/** Same entries in both trees (names and sizes), so that both did the same work. */
function sameTree(a: string, b: string): void {
  const walk = (root: string): Map<string, number> => {
    const m = new Map<string, number>();
    const go = (rel: string): void => {
      for (const e of readdirSync(join(root, rel), { withFileTypes: true })) {
        const p = rel ? `${rel}/${e.name}` : e.name;
        m.set(p, e.isFile() ? statSync(join(root, p)).size : -1);
        if (e.isDirectory()) go(p);
      }
    };
    go("");
    return m;
  };
  const ta = walk(a);
  const tb = walk(b);
  if (ta.size !== tb.size) throw new Error(`trees differ: ${ta.size} vs ${tb.size} entries`);
  for (const [p, s] of ta) if (tb.get(p) !== s) throw new Error(`trees differ at ${p}`);
}

const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  buildLayer();
  const { bytes, files } = measureLayer();
  const compressed = statSync(LAYER).size;
  const mb = bytes / 1e6;
  console.log(`layer: ${mb.toFixed(1)} MB uncompressed (${(compressed / 1e6).toFixed(1)} MB gzip), ${files} entries; ${RUNS} runs each`);

  const tar: number[] = [];
  const wharf: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    tar.push(runTar(fresh("tar")));
    const w = await runWharf(fresh("wharf"));
    wharf.push(w.seconds);
    if (i === 0) sameTree(join(WORK, "tar"), join(WORK, "wharf"));
    console.log(`run ${i + 1}: tar ${tar[i]!.toFixed(2)} s, wharf ${w.seconds.toFixed(2)} s`);
  }
  rmSync(WORK, { recursive: true, force: true });

  const tarS = median(tar);
  const wharfS = median(wharf);
  const ratio = tarS / wharfS;
  const row = (name: string, s: number): string =>
    `${name.padEnd(8)}${mb.toFixed(1).padStart(10)}${String(files).padStart(8)}${s.toFixed(2).padStart(10)}${(mb / s).toFixed(1).padStart(10)}`;
  console.log(`\n${"".padEnd(8)}${"MB".padStart(10)}${"files".padStart(8)}${"median s".padStart(10)}${"MB/s".padStart(10)}`);
  console.log(row("GNU tar", tarS));
  console.log(row("wharf", wharfS));
  console.log(`\nwharf / tar speed: ${ratio.toFixed(2)} (target >= 0.8)`);
  console.log(JSON.stringify({ mb: Math.round(mb * 10) / 10, files, tarSeconds: tarS, wharfSeconds: wharfS, ratio: Math.round(ratio * 100) / 100 }));
}

await main();
