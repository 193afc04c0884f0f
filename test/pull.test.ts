// One agent pulls real images from a real registry (Debian's docker-registry)
// into the shared store, mounts their merged view, and survives a SIGKILL in
// the middle of a large layer.

import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import t from "tap";
import { pack } from "tar-stream";
import { type Proc, TestCluster, api, status, until } from "./helpers/agents.js";
import { ImageBuilder, busyboxBase, busyboxChanges, describeTree, diffTrees, referenceUnpack } from "./helpers/images.js";
import { type Proxy, type RunningRegistry, pushImage, startProxy, startRegistry } from "./helpers/registry.js";

const sha = (b: Buffer): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** The `wharf` command line (asynchronous: the registry proxy runs in this process). */
function wharf(p: Proc, ...args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, ["--import", "tsx", "src/cli/wharf.ts", "--api", p.api, ...args]);
    let stdout = "";
    let stderr = "";
    c.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    c.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    c.on("close", (code) => resolve({ status: code ?? -1, stdout, stderr }));
  });
}

/** A tar layer built in memory: entries of tar-stream's pack. */
async function tarOf(entries: { name: string; type?: "file" | "directory" | "symlink"; body?: string; linkname?: string; mode?: number }[]): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  p.on("data", (c: unknown) => chunks.push(c as Buffer));
  const ended = new Promise<void>((r) => p.on("end", () => r()));
  for (const e of entries) {
    await new Promise<void>((res, rej) =>
      p.entry({ name: e.name, type: e.type ?? "file", mode: e.mode ?? (e.type === "directory" ? 0o755 : 0o644), ...(e.linkname ? { linkname: e.linkname } : {}) }, e.body ?? "", (err) => (err ? rej(err) : res())),
    );
  }
  p.finalize();
  await ended;
  return Buffer.concat(chunks);
}

/** Pushes an OCI image of the given tars (gzip), with the diffIDs of the config overridden if asked. */
async function pushTars(host: string, repo: string, tag: string, tars: Buffer[], diffIDs?: string[]): Promise<void> {
  await pushImage(host, repo, tag, {
    layers: tars.map((tar) => ({ tar })),
    ...(diffIDs ? { editConfig: (c: Record<string, unknown>) => void ((c.rootfs as { diff_ids: string[] }).diff_ids = diffIDs) } : {}),
  });
}

/** Every path under `dir` (for proving nothing was written outside the store). */
function listAll(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const n of readdirSync(d, { withFileTypes: true })) {
      out.push(join(d, n.name));
      if (n.isDirectory()) walk(join(d, n.name));
    }
  };
  if (existsSync(dir)) walk(dir);
  return out.sort();
}

let registry: RunningRegistry;
let proxy: Proxy;
let cluster: TestCluster;
let agent: Proc;
let images: ImageBuilder;
const work = mkdtempSync(join(tmpdir(), "wharf-pull-"));

t.before(async () => {
  registry = await startRegistry();
  proxy = await startProxy(registry.host);
  images = new ImageBuilder(join(work, "img")).layer(busyboxBase).layer(busyboxChanges);
  images.push(registry.host, "test/busybox", "oci", { format: "oci" });
  images.push(registry.host, "test/busybox", "v2s2", { format: "v2s2" });
  await images.pushZstd(registry.host, "test/busybox", "zstd");
  cluster = new TestCluster(["--insecure-registry", proxy.host]);
  agent = (await cluster.form(["a1"], 1))[0]!;
});

t.teardown(async () => {
  cluster?.stop();
  await proxy?.stop();
  await registry?.stop();
  images?.cleanup();
  rmSync(work, { recursive: true, force: true });
});

const shared = (): string => join(cluster.root, "shared");

t.test("pull, pull again, mount: the merged view is what umoci unpack gives", async (t) => {
  // The zstd tag goes first: its layers have the diffIDs of the gzip ones,
  // so the tags after it find every layer present.
  const manifest = (await (await fetch(`http://${registry.host}/v2/test/busybox/manifests/zstd`, { headers: { accept: "application/vnd.oci.image.manifest.v1+json" } })).json()) as { layers: { mediaType: string }[] };
  t.same(manifest.layers.map((l) => l.mediaType), Array(2).fill("application/vnd.oci.image.layer.v1.tar+zstd"), "zstd layers");
  for (const tag of ["zstd", "oci", "v2s2"]) {
    const ref = `${proxy.host}/test/busybox:${tag}`;
    const before = proxy.bytesServed();
    const r = await wharf(agent, "pull", ref, "--json");
    t.equal(r.status, 0, `pull ${tag}: ${r.stderr}`);
    const s = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    t.equal(s.reference, ref);
    t.equal(s.layers.length, 2, "two layers");
    const blobBytes = s.layers.reduce((n: number, l: any) => n + l.size, 0);
    const expected = tag === "zstd" ? "downloaded" : "present";
    t.same(s.layers.map((l: any) => l.outcome), [expected, expected], `${tag}: outcomes`);
    t.ok(proxy.bytesServed() - before >= (expected === "downloaded" ? blobBytes : 0), "the registry served the blobs");
    t.equal(s.registryBytes > 0, true);

    const again = JSON.parse((await wharf(agent, "pull", ref, "--json")).stdout.trim());
    t.same(again.layers.map((l: any) => l.outcome), ["present", "present"], "a second pull downloads nothing");
    t.ok(again.registryBytes < 10_000, "only the manifest and config again");
  }

  const ref = referenceUnpack(registry.host, "test/busybox", "oci", join(work, "ref"));
  const target = join(work, "mnt");
  mkdirSync(target);
  const m = await wharf(agent, "mount", `${proxy.host}/test/busybox:oci`, target);
  t.equal(m.status, 0, m.stderr);
  t.same(diffTrees(describeTree(ref), describeTree(target)), [], "identical trees");
  t.notOk(existsSync(join(target, "data/gone.txt")), "whiteout hides the file");

  // Writes go to the agent's local disk, never to the shared store.
  const storeBefore = listAll(shared());
  writeFileSync(join(target, "data/a.txt"), "changed\n");
  writeFileSync(join(target, "new-file"), "new\n");
  t.same(listAll(shared()), storeBefore, "the shared store is unchanged");
  t.equal(readFileSync(join(target, "data/a.txt"), "utf8"), "changed\n");

  const busy = await wharf(agent, "rmi", `${proxy.host}/test/busybox:oci`);
  t.not(busy.status, 0, "a mounted image cannot be removed");
  t.match(busy.stderr, /is mounted at/);

  t.equal((await wharf(agent, "umount", target)).status, 0);
  t.notOk(existsSync(join(target, "new-file")), "unmounted");
});

t.test("an opaque directory hides the lower layer's directory", async (t) => {
  const base = await tarOf([
    { name: "etc/", type: "directory" },
    { name: "etc/keep", body: "keep\n" },
    { name: "etc/old/", type: "directory" },
    { name: "etc/old/a", body: "a\n" },
    { name: "etc/old/b", body: "b\n" },
  ]);
  const top = await tarOf([
    { name: "etc/old/", type: "directory" },
    { name: "etc/old/.wh..wh..opq" },
    { name: "etc/old/c", body: "c\n" },
  ]);
  await pushTars(registry.host, "test/opaque", "1", [base, top]);
  const r = await wharf(agent, "pull", `${proxy.host}/test/opaque:1`, "--json");
  t.equal(r.status, 0, r.stderr);
  const target = join(work, "mnt-opaque");
  mkdirSync(target);
  t.equal((await wharf(agent, "mount", `${proxy.host}/test/opaque:1`, target)).status, 0);
  const ref = referenceUnpack(registry.host, "test/opaque", "1", join(work, "ref-opaque"));
  t.same(readdirSync(join(target, "etc/old")), ["c"], "only the upper layer's entries");
  t.same(diffTrees(describeTree(ref), describeTree(target)), [], "identical to umoci unpack");
  t.equal((await wharf(agent, "umount", target)).status, 0);
});

t.test("images, layers, rmi", async (t) => {
  const imgs = JSON.parse((await wharf(agent, "images", "--json")).stdout);
  t.ok(imgs.some((i: any) => i.reference === `${proxy.host}/test/busybox:zstd` && i.heldHere));
  const layers = JSON.parse((await wharf(agent, "layers", "--json")).stdout);
  for (const l of layers) t.ok(existsSync(l.path), `${l.diffID} is in the store`);
  const zstd = imgs.find((i: any) => i.reference === `${proxy.host}/test/busybox:zstd`);
  // zstd layers have the same diffIDs as the gzip ones: removing one tag deletes nothing.
  let r = await wharf(agent, "rmi", `${proxy.host}/test/busybox:zstd`);
  t.equal(r.status, 0, r.stderr);
  t.notMatch(r.stdout, /Deleted/, "layers still used by other tags stay");
  await wharf(agent, "rmi", `${proxy.host}/test/busybox:v2s2`);
  r = await wharf(agent, "rmi", `${proxy.host}/test/busybox:oci`);
  t.match(r.stdout, /Deleted: sha256:/);
  for (const d of zstd.layers) t.notOk(existsSync(join(shared(), "layers/sha256", d.slice(7))), `${d} deleted from the store`);
  t.equal((await wharf(agent, "rmi", `${proxy.host}/test/busybox:oci`)).status, 3, "NOT_FOUND the second time");
  t.same(readdirSync(join(shared(), "tmp")), [], "no temp dirs left");
});

t.test("a hostile layer is refused: clear error, nothing outside the store, the agent keeps running", async (t) => {
  const outside = join(work, "outside");
  mkdirSync(outside);
  const cases: [string, Buffer][] = [
    ["escape", await tarOf([{ name: "../../../../../../../../tmp/wharf-escaped", body: "x" }])],
    ["symlink", await tarOf([{ name: "evil", type: "symlink", linkname: outside }, { name: "evil/x", body: "through a symlink" }])],
  ];
  for (const [name, tar] of cases) {
    await pushTars(registry.host, "test/hostile", name, [tar]);
    const r = await wharf(agent, "pull", `${proxy.host}/test/hostile:${name}`, "--json");
    t.equal(r.status, 10, `${name}: refused as an invalid layer (${r.stderr.trim()})`);
    t.match(r.stderr, /test\/hostile:.*layer sha256:[0-9a-f]{64}/, "names the image and the layer");
    t.same(readdirSync(outside), [], "nothing written outside");
    t.notOk(existsSync("/tmp/wharf-escaped"));
    t.same(readdirSync(join(shared(), "tmp")), [], "the temp dir was removed");
    t.equal((await status(agent)).id.length > 0, true, "the agent still answers");
  }
  // A config whose diffID does not match the layer's content.
  await pushTars(registry.host, "test/hostile", "diffid", [await tarOf([{ name: "f", body: "real" }])], [sha(Buffer.from("other"))]);
  const r = await wharf(agent, "pull", `${proxy.host}/test/hostile:diffid`);
  t.equal(r.status, 10, "DIGEST_MISMATCH");
  t.match(r.stderr, /diffID|digest/i);
  t.same(readdirSync(join(shared(), "layers/sha256")).filter((n) => n === sha(Buffer.from("other")).slice(7)), [], "not published");
});

t.test("SIGKILL mid-download: the pull resumes from the bytes already on the shared store", async (t) => {
  const big = await tarOf([{ name: "big.bin", body: randomBytes(24 << 20).toString("base64") }]);
  await pushTars(registry.host, "test/big", "1", [big]);
  const gz = gzipSync(big);
  const digest = sha(gz);
  proxy.setRate(8 << 20);
  const served0 = proxy.blobBytesServed(digest);
  const ref = `${proxy.host}/test/big:1`;
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli/wharf.ts", "--api", agent.api, "pull", ref, "--json"], { stdio: "ignore" });
  const partial = join(shared(), "partial/sha256", digest.slice(7));
  await until("a third of the layer on the shared store", async () => (existsSync(partial) && statSync(partial).size > gz.length / 3 ? true : undefined), 60_000);
  const dead = new Promise((r) => agent.child.once("exit", r));
  agent.child.kill("SIGKILL");
  child.kill("SIGKILL");
  await dead;
  await new Promise((r) => setTimeout(r, 300)); // the proxy notices the closed connection
  const had = statSync(partial).size;
  const servedBeforeKill = proxy.blobBytesServed(digest) - served0;
  t.ok(had < gz.length, "killed mid-download");
  agent = cluster.restart(agent);
  await until("the agent back", async () => (existsSync(agent.api) ? status(agent) : undefined));
  proxy.setRate(undefined);
  const r = await wharf(agent, "pull", ref, "--json");
  t.equal(r.status, 0, r.stderr);
  const served = proxy.blobBytesServed(digest) - served0;
  const resumed = served - servedBeforeKill;
  const ranges = proxy.requests().filter((q) => q.url.includes(digest) && q.range).map((q) => q.range);
  t.same(ranges, [`bytes=${had}-`], "the restarted agent asked for the rest only");
  t.equal(resumed, gz.length - had, `after the restart the registry served ${resumed} bytes: only what the ${had} bytes on the store lacked`);
  // What the registry had sent and the killed agent had not written yet was
  // in socket buffers (over 1 MiB once, on a loaded machine); a download
  // from scratch would add the whole blob.
  t.ok(served < gz.length + (4 << 20), `${served} bytes served in all for a ${gz.length}-byte blob`);
  t.ok(!existsSync(partial), "the partial file is gone once the layer is in place");
  t.same(readdirSync(join(shared(), "tmp")), [], "the killed extraction's temp dir was collected");
});
