// extractLayer: what lands on disk for a normal layer (every property, every
// compression), agreement with GNU tar, and a corpus of hostile archives each
// refused without touching anything outside the layer directory.

import { spawnSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  existsSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { gzipSync, zstdCompressSync } from "node:zlib";
import t, { type Test } from "tap";
import { WharfError } from "../../src/errors.js";
import { type ExtractOptions, extractLayer } from "../../src/layers/extract.js";
import { type RawEntry, archive, gnuLong, header, member, pax, sha256, snapshot, xattrsOf, xattrsUnder } from "./fixtures.js";

const T = 1_600_000_000;
/** security.capability v2: cap_net_raw permitted + effective. */
const CAP = Buffer.from("0100000200200000000000000000000000000000", "hex");

function sandbox(t: Test): string {
  const s = mkdtempSync(join(tmpdir(), "wharf-extract-"));
  t.teardown(() => rmSync(s, { recursive: true, force: true }));
  return s;
}

type Compression = ExtractOptions["compression"];

function compress(tar: Buffer, c: Compression): Buffer {
  return c === "gzip" ? gzipSync(tar) : c === "zstd" ? zstdCompressSync(tar) : tar;
}

/** The bytes as a stream of `size`-byte chunks (to cross every boundary). */
function streamOf(b: Buffer, size = 64 * 1024): Readable {
  const chunks: Buffer[] = [];
  for (let i = 0; i < b.length; i += size) chunks.push(b.subarray(i, i + size));
  return Readable.from(chunks);
}

const big = Buffer.alloc(300_000);
for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 9)) & 0xff;
const longPaxPath = `deep/${"d".repeat(120)}/file-pax`;
const longGnuPath = `long/${"g".repeat(150)}/file-gnu`;
const longTarget = `/${"t".repeat(200)}`;

/** A layer with one of everything; returns the tar and the member count. */
function normalLayer(): { tar: Buffer; members: number } {
  const m: Buffer[] = [];
  let members = 0;
  const add = (e: RawEntry): void => {
    m.push(member(e));
    members++;
  };
  add({ name: "./", type: "5", mode: 0o755, mtime: T + 1 });
  add({ name: "./usr/", type: "5", mode: 0o700, mtime: T + 2 });
  add({ name: "./usr/bin/", type: "5", mode: 0o711, mtime: T + 3 });
  add({ name: "./usr/bin/su", mode: 0o4755, content: "su", mtime: T + 4 });
  add({ name: "./usr/bin/sg", mode: 0o2750, gid: 42, content: "sg" });
  m.push(pax([["SCHILY.xattr.security.capability", CAP], ["SCHILY.xattr.user.foo", "bar"]]));
  add({ name: "./usr/bin/ping", mode: 0o755, uid: 0, gid: 0, content: "ping" });
  add({ name: "./tmp/", type: "5", mode: 0o1777, mtime: T + 5 });
  add({ name: "./home/u/secret", mode: 0o600, uid: 1000, gid: 1000, content: "secret" });
  add({ name: "./etc/", type: "5", mode: 0o755, mtime: T + 6 });
  add({ name: "./etc/open", mode: 0o777, uid: 12345, gid: 54321, content: "open" });
  add({ name: "./etc/empty", mode: 0o644 });
  add({ name: "./etc/abs", type: "2", linkname: "/usr/bin/su", uid: 1000, gid: 1000, mtime: T + 7 });
  add({ name: "./etc/rel", type: "2", linkname: "../usr/bin/su", mtime: T + 8 });
  add({ name: "./usr/bin/su-link", type: "1", linkname: "./usr/bin/su" });
  m.push(pax([["mtime", `${T}.5`], ["atime", `${T + 100}`]]));
  add({ name: "./etc/frac", content: "frac" });
  m.push(pax([["path", longPaxPath]]));
  add({ name: "./ignored-short-name", content: "pax" });
  m.push(gnuLong("L", longGnuPath));
  add({ name: longGnuPath.slice(0, 100), content: "gnu", format: "gnu" });
  m.push(gnuLong("K", longTarget));
  add({ name: "./etc/longlink", type: "2", linkname: longTarget.slice(0, 100), format: "gnu" });
  add({ name: "file-prefix", prefix: "pre/fix/dir", content: "prefix" });
  add({ name: "./etc/.wh.gone", uid: 7, gid: 8 });
  add({ name: "./var/cache/", type: "5", mode: 0o755, mtime: T + 9 });
  add({ name: "./var/cache/.wh..wh..opq" });
  add({ name: "./run/fifo", type: "6", mode: 0o620, uid: 5, gid: 6, mtime: T + 10 });
  add({ name: "./dev/wh", type: "3", mode: 0o600, devmajor: 0, devminor: 0, uid: 3, gid: 4 });
  add({ name: "./etc/dup", content: "one" });
  add({ name: "./etc/dup", content: "two", mode: 0o640 });
  add({ name: "./x/", type: "5" });
  add({ name: "./x/y", content: "y" });
  add({ name: "./x", content: "now a file" });
  add({ name: "./s", type: "2", linkname: "somewhere" });
  add({ name: "./s/", type: "5", mode: 0o700, mtime: T + 11 });
  add({ name: "./etc/bigid", uid: 3_000_000, gid: 3_000_001, content: "base-256" });
  m.push(pax([["comment", "a global header"]], "g"));
  add({ name: "./usr/lib/big", content: big, mtime: T + 12 });
  add({ name: "./usr/", type: "5", mode: 0o755, mtime: T + 20 });
  // Trailing garbage after the end-of-archive blocks: ignored, but hashed.
  const tar = Buffer.concat([archive(...m), Buffer.alloc(700, 0xaa)]);
  return { tar, members };
}

interface Want {
  type: "file" | "dir" | "symlink" | "fifo" | "char";
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  content?: string | Buffer;
  target?: string;
}

function checkNormalLayer(t: Test, dest: string): void {
  const want: Record<string, Want> = {
    "": { type: "dir", mode: 0o755, uid: 0, mtime: T + 1 },
    usr: { type: "dir", mode: 0o755, mtime: T + 20 },
    "usr/bin": { type: "dir", mode: 0o711, mtime: T + 3 },
    "usr/bin/su": { type: "file", mode: 0o4755, uid: 0, content: "su", mtime: T + 4 },
    "usr/bin/sg": { type: "file", mode: 0o2750, gid: 42, content: "sg" },
    "usr/bin/ping": { type: "file", mode: 0o755, content: "ping" },
    "usr/bin/su-link": { type: "file", mode: 0o4755, content: "su" },
    tmp: { type: "dir", mode: 0o1777, mtime: T + 5 },
    home: { type: "dir", mode: 0o755, uid: 0, gid: 0 },
    "home/u": { type: "dir", mode: 0o755, uid: 0, gid: 0 },
    "home/u/secret": { type: "file", mode: 0o600, uid: 1000, gid: 1000, content: "secret" },
    etc: { type: "dir", mode: 0o755, mtime: T + 6 },
    "etc/open": { type: "file", mode: 0o777, uid: 12345, gid: 54321, content: "open" },
    "etc/empty": { type: "file", mode: 0o644, content: "" },
    "etc/abs": { type: "symlink", target: "/usr/bin/su", uid: 1000, gid: 1000, mtime: T + 7 },
    "etc/rel": { type: "symlink", target: "../usr/bin/su", mtime: T + 8 },
    "etc/frac": { type: "file", content: "frac", mtime: T + 0.5 },
    [longPaxPath]: { type: "file", content: "pax" },
    [longGnuPath]: { type: "file", content: "gnu" },
    "etc/longlink": { type: "symlink", target: longTarget },
    "pre/fix/dir/file-prefix": { type: "file", content: "prefix" },
    "etc/gone": { type: "char", mode: 0, uid: 7, gid: 8 },
    "var/cache": { type: "dir", mtime: T + 9 },
    "run/fifo": { type: "fifo", mode: 0o620, uid: 5, gid: 6, mtime: T + 10 },
    "dev/wh": { type: "char", mode: 0o600, uid: 3, gid: 4 },
    "etc/dup": { type: "file", content: "two", mode: 0o640 },
    x: { type: "file", content: "now a file" },
    s: { type: "dir", mode: 0o700, mtime: T + 11 },
    "etc/bigid": { type: "file", uid: 3_000_000, gid: 3_000_001, content: "base-256" },
    "usr/lib/big": { type: "file", content: big, mtime: T + 12 },
  };
  // Before any read of it moves it (relatime).
  t.equal(lstatSync(join(dest, "etc/frac")).atimeMs, (T + 100) * 1000, "PAX atime");
  for (const [rel, w] of Object.entries(want)) {
    const p = rel ? join(dest, rel) : dest;
    const st = lstatSync(p, { throwIfNoEntry: false });
    if (!st) {
      t.fail(`${rel} is missing`);
      continue;
    }
    const type = st.isFile() ? "file" : st.isDirectory() ? "dir" : st.isSymbolicLink() ? "symlink" : st.isFIFO() ? "fifo" : st.isCharacterDevice() ? "char" : "?";
    t.equal(type, w.type, `${rel}: type`);
    if (w.mode !== undefined) t.equal((st.mode & 0o7777).toString(8), w.mode.toString(8), `${rel}: mode`);
    if (w.uid !== undefined) t.equal(st.uid, w.uid, `${rel}: uid`);
    if (w.gid !== undefined) t.equal(st.gid, w.gid, `${rel}: gid`);
    if (w.mtime !== undefined) t.equal(st.mtimeMs, w.mtime * 1000, `${rel}: mtime`);
    if (w.content !== undefined) t.ok(readFileSync(p).equals(Buffer.from(w.content)), `${rel}: content`);
    if (w.target !== undefined) t.equal(readlinkSync(p), w.target, `${rel}: link target`);
    if (type === "char") t.equal(st.rdev, 0, `${rel}: device 0/0`);
  }
  t.equal(lstatSync(join(dest, "usr/bin/su")).ino, lstatSync(join(dest, "usr/bin/su-link")).ino, "hard link shares the inode");
  const ping = xattrsOf(join(dest, "usr/bin/ping"));
  t.same(ping.get("security.capability"), CAP, "capability survives chown/chmod");
  t.same(ping.get("user.foo"), Buffer.from("bar"), "PAX xattr");
  t.same(xattrsOf(join(dest, "var/cache")).get("trusted.overlay.opaque"), Buffer.from("y"), "opaque dir");
  t.notOk(existsSync(join(dest, "var/cache/.wh..wh..opq")), "no opaque marker file");
  t.notOk(existsSync(join(dest, "etc/.wh.gone")), "no whiteout marker file");
  t.notOk(existsSync(join(dest, "x/y")), "a file replaced the directory");
  const stray = spawnSync("find", [dest, "-name", ".wharf-*"], { encoding: "utf8" }).stdout;
  t.equal(stray, "", "no staging directory left");
}

t.test("a normal layer, every property on disk", async (t) => {
  const { tar, members } = normalLayer();
  const cases: [Compression, number][] = [
    ["gzip", 64 * 1024],
    ["zstd", 4096],
    ["none", 1 << 20],
    ["none", 1],
    ["none", 777],
  ];
  for (const [c, chunk] of cases) {
    await t.test(`${c}, ${chunk}-byte input chunks`, async (t) => {
      const dest = join(sandbox(t), "layer");
      mkdirSync(dest);
      const progress: number[] = [];
      const r = await extractLayer(streamOf(compress(tar, c), chunk), {
        dest,
        compression: c,
        expectedDiffID: sha256(tar),
        onProgress: (n) => progress.push(n),
      });
      t.same(r, { diffID: sha256(tar), bytes: tar.length, entries: members });
      t.equal(progress.at(-1), tar.length, "progress reaches the total");
      t.ok(progress.every((n, i) => i === 0 || n >= progress[i - 1]!), "progress is monotonic");
      checkNormalLayer(t, dest);
    });
  }
});

t.test("replacing entries never reaches outside the layer", async (t) => {
  const S = sandbox(t);
  const dest = join(S, "layer");
  mkdirSync(dest);
  mkdirSync(join(S, "outside"));
  writeFileSync(join(S, "outside/sentinel"), "keep");
  const before = Object.fromEntries(snapshot(S, { skip: ["layer"] }));
  const tar = archive(
    member({ name: "f", type: "2", linkname: join(S, "outside/sentinel") }),
    member({ name: "f", content: "replaced" }),
    member({ name: "d", type: "2", linkname: join(S, "outside") }),
    member({ name: "d/", type: "5", mode: 0o700 }),
    member({ name: "w", type: "2", linkname: join(S, "outside/sentinel") }),
    member({ name: ".wh.w" }),
    pax([["SCHILY.xattr.trusted.foo", "x"]]),
    member({ name: "l", type: "2", linkname: join(S, "outside/sentinel") }),
    member({ name: "a", content: "1" }),
    member({ name: "b", type: "1", linkname: "a" }),
    member({ name: "a", content: "2" }),
  );
  await extractLayer(streamOf(tar), { dest, compression: "none" });
  t.same(Object.fromEntries(snapshot(S, { skip: ["layer"] })), before, "nothing outside changed");
  t.equal(readFileSync(join(dest, "f"), "utf8"), "replaced");
  t.ok(lstatSync(join(dest, "d")).isDirectory());
  t.ok(lstatSync(join(dest, "w")).isCharacterDevice());
  t.same(xattrsOf(join(dest, "l")).get("trusted.foo"), Buffer.from("x"), "xattr set on the symlink itself");
  t.equal(readFileSync(join(dest, "a"), "utf8"), "2");
  t.equal(readFileSync(join(dest, "b"), "utf8"), "1", "a replaced link target leaves the link's inode alone");
});

const NON_UTF8 = Buffer.from([0x6e, 0x6f, 0x6e, 0xff, 0xfe]);

t.test("what follows the end-of-archive blocks is hashed, never parsed", async (t) => {
  // As Go's archive/tar and containerd: a member after the end is not
  // extracted, garbage after it is no error, and the diffID covers both.
  for (const after of [member({ name: "late", content: "x" }), Buffer.alloc(3000, 0xaa), Buffer.from("x")]) {
    const dest = join(sandbox(t), "layer");
    mkdirSync(dest);
    const tar = Buffer.concat([archive(member({ name: "a", content: "a" })), after]);
    const r = await extractLayer(streamOf(tar, 700), { dest, compression: "none", expectedDiffID: sha256(tar) });
    t.same(r, { diffID: sha256(tar), bytes: tar.length, entries: 1 });
    t.equal(readFileSync(join(dest, "a"), "utf8"), "a");
    t.notOk(existsSync(join(dest, "late")), "nothing after the end is extracted");
  }
});

t.test("an archive without the end-of-archive blocks is accepted", async (t) => {
  // As Go's archive/tar and GNU tar: the input may end at a member boundary.
  const dest = join(sandbox(t), "layer");
  mkdirSync(dest);
  const tar = Buffer.concat([member({ name: "a", content: "a" }), member({ name: "b", content: "b".repeat(600) })]);
  const r = await extractLayer(streamOf(tar, 1000), { dest, compression: "none" });
  t.same(r, { diffID: sha256(tar), bytes: tar.length, entries: 2 });
  t.equal(readFileSync(join(dest, "b"), "utf8"), "b".repeat(600));
});

t.test("PAX uid, gid, mtime and atime apply", async (t) => {
  const dest = join(sandbox(t), "layer");
  mkdirSync(dest);
  const tar = archive(
    pax([["uid", "3000000"], ["gid", "3000001"], ["mtime", `${T}.25`], ["atime", `${T + 100}`], ["uname", "ignored"]]),
    member({ name: "f", uid: 1, gid: 2, content: "x" }),
  );
  await extractLayer(streamOf(tar), { dest, compression: "none" });
  const st = lstatSync(join(dest, "f"));
  t.same([st.uid, st.gid], [3_000_000, 3_000_001]);
  t.ok(Math.abs(st.mtimeMs - (T + 0.25) * 1000) < 0.001, `mtime ${st.mtimeMs}`);
  t.equal(st.atimeMs, (T + 100) * 1000);
});

/** Builds a source tree with what GNU tar can archive (no whiteouts). */
function sourceTree(src: string): void {
  const f = (rel: string | Buffer, content: string | Buffer, mode = 0o644, uid = 0, gid = 0, mtime = T): void => {
    const p = typeof rel === "string" ? join(src, rel) : Buffer.concat([Buffer.from(`${src}/`), rel]);
    writeFileSync(p, content);
    chownSync(p, uid, gid);
    chmodSync(p, mode);
    utimesSync(p, mtime, mtime);
  };
  for (const [d, mode, uid, gid] of [
    ["a", 0o755, 0, 0],
    ["a/b", 0o700, 1000, 1000],
    ["c", 0o2775, 0, 50],
    ["sticky", 0o1777, 0, 0],
    [`long/${"n".repeat(120)}`, 0o755, 0, 0],
    ["héllo", 0o750, 0, 0],
  ] as const) {
    mkdirSync(join(src, d), { recursive: true });
    chownSync(join(src, d), uid, gid);
    chmodSync(join(src, d), mode);
  }
  f("a/f", "setuid", 0o4755, 0, 0, T + 1);
  f("a/b/g", "private", 0o600, 1000, 1000, T + 2);
  f("big", big, 0o644, 0, 0, T + 3.25);
  f("empty", "", 0o644, 0, 0, T + 4);
  f("exec", "#!/bin/sh\n", 0o777, 12345, 54321, T + 5);
  f("c/in-setgid", "x", 0o640, 7, 50, T + 6);
  f(`long/${"n".repeat(120)}/${"m".repeat(90)}`, "long", 0o644, 0, 0, T + 7);
  f("héllo/wörld", "utf-8", 0o644, 0, 0, T + 8);
  f(NON_UTF8, "not utf-8", 0o644, 0, 0, T + 9);
  linkSync(join(src, "a/f"), join(src, "a/hard"));
  symlinkSync("/etc/passwd", join(src, "abs"));
  symlinkSync("../a/f", join(src, "c/rel"));
  symlinkSync("dangling/nowhere", join(src, "dangling"));
  symlinkSync(`../${"x".repeat(150)}`, join(src, "a/longtarget"));
  for (const l of ["abs", "c/rel", "dangling", "a/longtarget"]) lutimesSync(join(src, l), T + 10, T + 10);
  spawnSync("mkfifo", ["-m", "0640", join(src, "fifo")]);
  utimesSync(join(src, "fifo"), T + 11, T + 11);
  spawnSync("setfattr", ["-n", "user.foo", "-v", "bar", join(src, "exec")]);
  spawnSync("setfattr", ["-n", "security.capability", "-v", `0x${CAP.toString("hex")}`, join(src, "a/f")]);
  // Directory times last: creating children changes them.
  for (const [d, m] of [["a/b", 20], ["a", 21], ["c", 22], ["sticky", 23], ["héllo", 24], ["", 25]] as const) utimesSync(join(src, d), T + m, T + m);
}

t.test("agrees with GNU tar", async (t) => {
  const S = sandbox(t);
  const src = join(S, "src");
  mkdirSync(src);
  sourceTree(src);
  // "gnu": GNU headers (names as raw bytes, long names as L/K members) and no
  // xattrs (--xattrs makes GNU tar write PAX headers whatever the format).
  // "pax": PAX headers with nanosecond times and xattrs. tar-stream decodes
  // PAX records as UTF-8, so the non-UTF-8 name, which GNU tar puts in a PAX
  // path record as raw bytes, is refused there (checked first), and the
  // trees are compared without it.
  for (const format of ["gnu", "pax"] as const) {
    await t.test(`${format} format`, async (t) => {
      const xattrs = format === "pax" ? ["--xattrs", "--xattrs-include=*"] : [];
      const tarFile = join(S, `${format}.tar`);
      const create = (): Buffer => {
        const c = spawnSync("tar", ["-cf", tarFile, `--format=${format}`, ...xattrs, "--numeric-owner", "-C", src, "."]);
        t.equal(c.status, 0, `tar -c: ${c.stderr}`);
        return readFileSync(tarFile);
      };
      if (format === "pax") {
        const refused = join(S, "pax-refused");
        mkdirSync(refused);
        await t.rejects(extractLayer(streamOf(create()), { dest: refused, compression: "none" }), {
          name: "WharfError",
          code: "INVALID_LAYER",
          message: /layer entry "\.\/non\uFFFD+": PAX path is not valid UTF-8/,
        });
        rmSync(Buffer.concat([Buffer.from(`${src}/`), NON_UTF8]));
        utimesSync(src, T + 25, T + 25);
      }
      const tar = create();
      const gnu = join(S, `${format}-gnu`);
      const ours = join(S, `${format}-ours`);
      mkdirSync(gnu);
      mkdirSync(ours);
      const x = spawnSync("tar", ["-xpf", tarFile, ...xattrs, "--same-owner", "--numeric-owner", "-C", gnu]);
      t.equal(x.status, 0, `tar -x: ${x.stderr}`);
      const r = await extractLayer(streamOf(gzipSync(tar)), { dest: ours, compression: "gzip" });
      t.equal(r.diffID, sha256(tar));
      const a = snapshot(gnu);
      const b = snapshot(ours);
      t.same([...b.keys()], [...a.keys()], "same paths");
      for (const [p, e] of a) {
        const o = b.get(p);
        if (!o) continue;
        // Node's utimes takes seconds as a double: nanosecond times (PAX)
        // come out within a microsecond.
        t.ok(Math.abs(o.mtimeMs - e.mtimeMs) < 0.001, `same mtime ${JSON.stringify(p)}: ${o.mtimeMs} ${e.mtimeMs}`);
        t.same({ ...o, mtimeMs: 0 }, { ...e, mtimeMs: 0 }, `same ${JSON.stringify(p)}`);
      }
      t.ok(a.get("a/hard")?.linkGroup === a.get("a/f")?.linkGroup && a.get("a/f")!.linkGroup >= 0, "the comparison covers hard links");
      t.ok(a.has(`long/${"n".repeat(120)}/${"m".repeat(90)}`) && a.get("a/longtarget")?.type === "symlink", "the comparison covers long names");
      if (format === "gnu") {
        t.ok(a.has(NON_UTF8.toString("latin1")), "the comparison covers a non-UTF-8 name");
      } else {
        t.ok(a.get("a/f")?.xattrs.includes("security.capability"), "the comparison covers a capability");
        t.ok(Math.abs(a.get("big")!.mtimeMs - (T + 3.25) * 1000) < 1, "the comparison covers fractional mtimes");
      }
    });
  }
});

// ---------------------------------------------------------------- hostile corpus

interface Hostile {
  /** The archive; S is the sandbox (dest is S/layer, S/outside holds a sentinel). */
  build: (S: string) => Buffer;
  code?: "INVALID_LAYER" | "DIGEST_MISMATCH";
  message: RegExp;
  compression?: Compression;
  opts?: (S: string) => Partial<ExtractOptions>;
}

const sym = (name: string, target: string): Buffer => member({ name, type: "2", linkname: target });
const dir = (name: string): Buffer => member({ name, type: "5", mode: 0o755 });
const file = (name: string | Buffer, content: string | Buffer = "x"): Buffer => member({ name, content });
const hard = (name: string, target: string): Buffer => member({ name, type: "1", linkname: target });

const hostile: Record<string, Hostile> = {
  "../x": { build: () => archive(file("../x")), message: /layer entry "\.\.\/x": path escapes the layer root/ },
  "a/../../x": { build: () => archive(file("a/../../x")), message: /"a\/\.\.\/\.\.\/x": path escapes the layer root/ },
  "./../outside/sentinel": { build: () => archive(file("./../outside/sentinel", "pwned")), message: /escapes the layer root/ },
  "absolute path": { build: (S) => archive(file(join(S, "outside/abs-x"))), message: /is an absolute path/ },
  "absolute /etc path": { build: () => archive(file("/etc/wharf-test-must-not-exist")), message: /is an absolute path/ },
  "file through a symlink to outside": {
    build: (S) => archive(sym("evil", join(S, "outside")), file("evil/x")),
    message: /"evil\/x": path goes through the symlink "evil"/,
  },
  "file through a symlink to ..": { build: () => archive(sym("evil", ".."), file("evil/x")), message: /goes through the symlink "evil"/ },
  "file through a symlink to a directory inside the layer": {
    build: () => archive(dir("d/"), sym("d2", "d"), file("d2/f")),
    message: /"d2\/f": path goes through the symlink "d2"/,
  },
  "directory replaced by a symlink, then a file through it": {
    build: (S) => archive(dir("d/"), sym("d", join(S, "outside")), file("d/x")),
    message: /goes through the symlink "d"/,
  },
  "hard link to ../../x": { build: () => archive(hard("x", "../../outside/sentinel")), message: /"x": hard link target escapes the layer root/ },
  "hard link to /etc/passwd": { build: () => archive(hard("x", "/etc/passwd")), message: /"x": hard link target is an absolute path/ },
  "hard link to a path not yet extracted": {
    build: () => archive(hard("x", "later"), file("later")),
    message: /"x": hard link target "later" is not in the layer/,
  },
  "hard link through a symlink": {
    build: () => archive(dir("d/"), file("d/f"), sym("s", "d"), hard("l", "s/f")),
    message: /"l": hard link target "s\/f" goes through the symlink "s"/,
  },
  "hard link to a symlink to outside": {
    build: (S) => archive(sym("evil", join(S, "outside/sentinel")), hard("l", "evil")),
    message: /"l": hard link target "evil" is a symlink/,
  },
  "hard link to a directory": { build: () => archive(dir("d/"), hard("l", "d")), message: /hard link target "d" is a dir/ },
  "character device 1/3": {
    build: () => archive(member({ name: "null", type: "3", devmajor: 1, devminor: 3 })),
    message: /"null": character device 1\/3 is not allowed/,
  },
  "block device": { build: () => archive(member({ name: "sda", type: "4", devmajor: 8, devminor: 0 })), message: /"sda": block device 8\/0/ },
  "absurd base-256 size": {
    build: () => archive(header({ name: "huge", size: 2 ** 50 }), Buffer.alloc(4096)),
    message: /"huge": size 1125899906842624 is past the limit/,
  },
  // tar-stream refuses these itself, before the member is named.
  "negative base-256 size": { build: () => archive(header({ name: "neg", size: -5 })), message: /layer archive has a tar header with an invalid size/ },
  "base-256 size -1 (tar-stream reads -0)": { build: () => archive(header({ name: "neg1", size: -1 })), message: /"neg1": invalid size in header/ },
  "base-256 uid -1 (tar-stream reads -0)": { build: () => archive(member({ name: "u", uid: -1 })), message: /"u": invalid uid in header/ },
  "size that is not a number": {
    build: () => archive(header({ name: "nan", size: Buffer.from("zzzzzzzzzzz\0") })),
    message: /layer archive has a tar header with an invalid size/,
  },
  "PAX size that is not a number": {
    build: () => archive(pax([["size", "12abc"]]), member({ name: "f", content: "x".repeat(12) })),
    message: /"f": PAX record size="12abc" is not a valid number/,
  },
  "absurd PAX size": {
    build: () => archive(pax([["size", "99999999999999"]]), header({ name: "paxsize" })),
    message: /"paxsize": size 99999999999999 is past the limit/,
  },
  "size past maxBytes": {
    build: () => archive(header({ name: "big", size: 20_000_000 })),
    message: /"big": size 20000000 is past the limit of 10000000 bytes/,
    opts: () => ({ maxBytes: 10_000_000 }),
  },
  "truncated mid-file": { build: () => archive(file("f", "x".repeat(5000))).subarray(0, 2048), message: /truncated in "f"/ },
  "truncated mid-header": { build: () => archive(file("f", "x".repeat(5000)), file("g")).subarray(0, 5632 + 100), message: /layer archive is truncated/ },
  "truncated gzip": {
    build: () => {
      const gz = gzipSync(archive(file("f", big)));
      return gz.subarray(0, gz.length >> 1);
    },
    compression: "gzip",
    message: /truncated/,
  },
  "gzip bomb past maxBytes": {
    build: () => gzipSync(Buffer.alloc(100_000_000)),
    compression: "gzip",
    message: /decompressed past the limit of 10000000 bytes/,
    opts: () => ({ maxBytes: 10_000_000 }),
  },
  "zstd bomb past maxBytes": {
    build: () => zstdCompressSync(Buffer.alloc(100_000_000)),
    compression: "zstd",
    message: /decompressed past the limit of 10000000 bytes/,
    opts: () => ({ maxBytes: 10_000_000 }),
  },
  "corrupt gzip data": {
    build: () => {
      const gz = Buffer.from(gzipSync(archive(file("f", big))));
      for (let i = 100; i < 400; i++) gz[i] = gz[i]! ^ 0x5a;
      return gz;
    },
    compression: "gzip",
    message: /corrupt/,
  },
  "corrupt gzip checksum": {
    build: () => {
      const gz = Buffer.from(gzipSync(archive(file("f", big))));
      gz[gz.length - 6] = gz[gz.length - 6]! ^ 1;
      return gz;
    },
    compression: "gzip",
    message: /layer archive is corrupt \(gzip: incorrect data check/,
  },
  "not gzip at all": { build: () => archive(file("f")), compression: "gzip", message: /is corrupt \(gzip: incorrect header check/ },
  "wrong expectedDiffID": {
    build: () => archive(file("f")),
    code: "DIGEST_MISMATCH",
    message: /layer diffID is sha256:[0-9a-f]{64}, expected sha256:0{64}/,
    opts: () => ({ expectedDiffID: `sha256:${"0".repeat(64)}` }),
  },
  "NUL in a PAX path": { build: () => archive(pax([["path", "a\0b"]]), file("benign")), message: /name contains a NUL byte/ },
  "GNU long name with ..": { build: () => archive(gnuLong("L", "../../x"), member({ name: "benign", format: "gnu" })), message: /"\.\.\/\.\.\/x": path escapes/ },
  "PAX path with ..": { build: () => archive(pax([["path", "../x"]]), file("benign")), message: /"\.\.\/x": path escapes/ },
  "PAX linkpath with ..": { build: () => archive(file("t"), pax([["linkpath", "../x"]]), hard("l", "t")), message: /"l": hard link target escapes/ },
  "opaque marker through a symlink": {
    build: (S) => archive(sym("evil", join(S, "outside")), file("evil/.wh..wh..opq", "")),
    message: /goes through the symlink "evil"/,
  },
  "whiteout through a symlink": {
    build: (S) => archive(sym("evil", join(S, "outside")), file("evil/.wh.sentinel", "")),
    message: /goes through the symlink "evil"/,
  },
  "whiteout of ..": { build: () => archive(file("a/.wh..", "")), message: /invalid whiteout name/ },
  "overlay xattr from the archive": {
    build: () => archive(pax([["SCHILY.xattr.trusted.overlay.redirect", "/etc"]]), dir("d/")),
    message: /"d\/": extended attribute trusted\.overlay\.redirect is reserved for overlayfs/,
  },
  "xattr name with a newline": {
    build: () => archive(pax([["SCHILY.xattr.user.a\n# file: /etc/passwd\nuser.b", "x"]]), file("f")),
    message: /unsupported extended attribute name/,
  },
  "lone zero block followed by data": {
    build: () => Buffer.concat([file("a"), Buffer.alloc(512), file("b"), Buffer.alloc(1024)]),
    message: /lone zero block followed by data/,
  },
  "bad checksum": { build: () => archive(member({ name: "f", checksum: 1234 })), message: /bad checksum/ },
  "unknown header format": { build: () => archive(member({ name: "f", format: "v7" })), message: /unknown format/ },
  "symlink with content": { build: () => archive(member({ name: "l", type: "2", linkname: "x", content: "data" })), message: /"l": a symlink entry with 4 bytes of content/ },
  "root as a regular file": { build: () => archive(member({ name: "./", type: "0" })), message: /"\.\/": the layer root must be a directory/ },
  "sparse file": { build: () => archive(member({ name: "sp", type: "S" })), message: /"sp": unsupported entry type/ },
  "PAX sparse records": { build: () => archive(pax([["GNU.sparse.major", "1"]]), file("sp")), message: /sparse files are not supported/ },
  // tar-stream reads malformed records leniently (here: path "../x\n");
  // whatever it makes of them goes through the same checks.
  "malformed PAX record": {
    build: () => archive(member({ name: "PaxHeader", type: "x", content: "99 path=../x\n" }), file("f")),
    message: /path escapes the layer root/,
  },
  "PAX path that is not UTF-8": {
    build: () => archive(pax([["path", Buffer.from([0x61, 0xff])]]), file("benign")),
    message: /"a\uFFFD": PAX path is not valid UTF-8/,
  },
  "PAX xattr value that is not UTF-8": {
    build: () => archive(pax([["SCHILY.xattr.user.bin", Buffer.from([0x80, 0xff, 0x00])]]), file("f")),
    message: /"f": extended attribute user\.bin: value is not valid UTF-8/,
  },
  "directory with content": {
    build: () => archive(member({ name: "d/", type: "5", content: member({ name: "evil", content: "x" }) })),
    message: /"d\/": a dir entry with 1024 bytes of content/,
  },
  "name component too long": { build: () => archive(pax([["path", "n".repeat(300)]]), file("benign")), message: /name too long/ },
  "extended header at the end": { build: () => archive(pax([["path", "x"]])), message: /ends after an extended header/ },
  "extended header, then the end of the input": { build: () => pax([["path", "x"]]), message: /ends after an extended header/ },
  "truncated in an extended header": { build: () => pax([["path", "p".repeat(600)]]).subarray(0, 1024), message: /layer archive is truncated/ },
  "extended header past tar-stream's limit": {
    build: () => archive(header({ name: "PaxHeader", type: "x", size: 5_000_000 })),
    message: /extended header past tar-stream's size limit/,
  },
  "PAX mtime that is not a time": { build: () => archive(pax([["mtime", "soon"]]), file("f")), message: /"f": PAX record mtime="soon" is not a valid time/ },
  "PAX uid past the limit": { build: () => archive(pax([["uid", "4294967295"]]), file("f")), message: /"f": PAX record uid="4294967295" is not a valid number/ },
  "zero block after an extended header": {
    build: () => archive(pax([["path", "x"]]), Buffer.alloc(512), file("f")),
    message: /ends after an extended header/,
  },
};

for (const [name, h] of Object.entries(hostile)) {
  t.test(`hostile: ${name}`, async (t) => {
    const S = sandbox(t);
    const dest = join(S, "layer");
    mkdirSync(dest);
    mkdirSync(join(S, "outside/dir"), { recursive: true });
    writeFileSync(join(S, "outside/sentinel"), "do not touch");
    const before = Object.fromEntries(snapshot(S, { skip: ["layer"] }));
    const passwd = readFileSync("/etc/passwd");
    const c = h.compression ?? "none";
    const input = streamOf(h.build(S), 4096);
    await t.rejects(extractLayer(input, { dest, compression: c, ...h.opts?.(S) }), {
      name: "WharfError",
      code: h.code ?? "INVALID_LAYER",
      message: h.message,
    });
    t.ok(input.destroyed, "input destroyed");
    t.same(Object.fromEntries(snapshot(S, { skip: ["layer"] })), before, "nothing outside the layer changed");
    t.ok(readFileSync("/etc/passwd").equals(passwd), "/etc/passwd unchanged");
    t.notOk(existsSync("/etc/wharf-test-must-not-exist"));
  });
}

t.test("abort mid-extraction rejects promptly", async (t) => {
  const S = sandbox(t);
  const dest = join(S, "layer");
  mkdirSync(dest);
  const files: Buffer[] = [];
  for (let i = 0; i < 2000; i++) files.push(file(`f${i}`, big.subarray(0, 10_000)));
  const tar = archive(...files);
  let sent = 0;
  const input = new Readable({
    read() {
      if (sent >= tar.length) return void this.push(null);
      // A slow network: 64 KiB every 5 ms.
      setTimeout(() => {
        this.push(tar.subarray(sent, sent + 65536));
        sent += 65536;
      }, 5);
    },
  });
  const ac = new AbortController();
  const p = extractLayer(input, { dest, compression: "none", signal: ac.signal });
  await new Promise((r) => setTimeout(r, 100));
  const t0 = performance.now();
  ac.abort();
  await t.rejects(p, { name: "AbortError" });
  t.ok(performance.now() - t0 < 500, "within half a second");
  t.ok(sent < tar.length, "before the end of the input");
  t.ok(input.destroyed, "input destroyed");

  const already = AbortSignal.abort();
  await t.rejects(extractLayer(streamOf(tar), { dest: join(S, "layer"), compression: "none", signal: already }), { name: "AbortError" });
});

t.test("an error of the input passes through unchanged", async (t) => {
  for (const c of ["none", "gzip"] as const) {
    const S = sandbox(t);
    const boom = Object.assign(new Error("connection reset"), { code: "ECONNRESET" });
    const body = compress(archive(file("f", big)), c);
    const input = new Readable({
      read() {
        this.push(body.subarray(0, 1000));
        this.destroy(boom);
      },
    });
    const err = await extractLayer(input, { dest: S, compression: c }).catch((e: unknown) => e);
    t.equal(err, boom, `${c}: the input's own error`);
  }
});

t.test("the event loop keeps turning during a long extraction", async (t) => {
  const S = sandbox(t);
  const files: Buffer[] = [];
  for (let i = 0; i < 5000; i++) files.push(file(`d${i % 50}/f${i}`, big.subarray(0, 4000)));
  const tar = archive(...files);
  let last = performance.now();
  let worst = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    worst = Math.max(worst, now - last);
    last = now;
  }, 1);
  const t0 = performance.now();
  // One chunk: without time slicing nothing else would run until the end.
  await extractLayer(Readable.from([tar]), { dest: S, compression: "none" });
  worst = Math.max(worst, performance.now() - last);
  clearInterval(timer);
  t.comment(`5000 files in ${(performance.now() - t0).toFixed(0)} ms, longest timer gap ${worst.toFixed(1)} ms`);
  t.ok(worst < 200, "no gap of 200 ms or more");
});

t.test("extended attributes and whiteouts on odd names", async (t) => {
  const S = sandbox(t);
  const odd = Buffer.concat([Buffer.from("we ird\\\n# file: x\n"), Buffer.from([0xff, 0x22])]);
  const oddDir = Buffer.concat([Buffer.from("dir "), Buffer.from([0xfe])]);
  const tar = archive(
    pax([["SCHILY.xattr.user.odd", Buffer.from([0, 1, 2, 0x22, 0x0a])]]),
    member({ name: odd, content: "odd" }),
    member({ name: Buffer.concat([oddDir, Buffer.from("/.wh..wh..opq")]) }),
    member({ name: Buffer.concat([oddDir, Buffer.from("/.wh."), odd]) }),
  );
  await extractLayer(streamOf(tar), { dest: S, compression: "none" });
  const x = xattrsUnder(S);
  const key = (b: Buffer): string => b.toString("latin1");
  t.same(x.get(key(odd))?.get("user.odd"), Buffer.from([0, 1, 2, 0x22, 0x0a]), "xattr on a name with newline, quote, backslash, 0xff");
  t.same(x.get(key(oddDir))?.get("trusted.overlay.opaque"), Buffer.from("y"), "opaque on a non-UTF-8 dir");
  const wh = lstatSync(Buffer.concat([Buffer.from(`${S}/`), oddDir, Buffer.from("/"), odd]));
  t.ok(wh.isCharacterDevice() && wh.rdev === 0, "whiteout with an odd name");
  t.same([...x.keys()].sort(), [key(odd), key(oddDir)].sort(), "nothing else has attributes");
});

t.test("dest must be an empty directory", async (t) => {
  const S = sandbox(t);
  writeFileSync(join(S, "x"), "");
  await t.rejects(extractLayer(streamOf(archive(file("f"))), { dest: S, compression: "none" }), {
    name: "WharfError",
    code: "INVALID_ARGUMENT",
    message: /not empty/,
  });
  t.ok(existsSync(join(S, "x")));
  t.notOk(existsSync(join(S, "f")));
});
