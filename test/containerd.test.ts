// Three container hosts (network namespaces), each with its own containerd
// 1.6 whose proxy snapshotter `wharf` is that host's agent, sharing one store;
// the registry in its own namespace behind a 100 Mbit/s link.
//  - Kubernetes' path: CRI PullImage on all three at once → each layer blob
//    leaves the registry once; `ctr run --snapshotter wharf` on every host
//    reads a file of every layer; the container's writes land in the host's
//    local upper dir, never in the shared store.
//  - The same without Kubernetes: `wharf pull --containerd` on all three.
//  - SIGKILL of an agent while its containerd runs a container from the
//    store: the container keeps working; the restarted agent serves the same
//    snapshots; containerd's GC on one host releases that host's holds only.

import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import t from "tap";
import { type LocalHost, LocalHosts } from "../deploy/local/hosts.js";
import { chainIDs } from "../src/containerd/register.js";
import { until } from "./helpers/agents.js";
import { CriImages } from "./helpers/cri.js";
import { ImageBuilder, busyboxBase } from "./helpers/images.js";

/** A busybox image whose layer N holds /layerN/file (with some bulk, so that transfers overlap). */
function buildImage(dir: string, name: string, layers: number): ImageBuilder {
  const b = new ImageBuilder(dir).layer(busyboxBase);
  for (let i = 1; i <= layers; i++) {
    b.layer((root) => {
      mkdirSync(join(root, `${name}${i}`));
      writeFileSync(join(root, `${name}${i}`, "file"), `${name} layer ${i}\n`);
      writeFileSync(join(root, `${name}${i}`, "bulk"), randomBytes(512 << 10));
    });
  }
  return b;
}

/** GETs of layer blobs (not the config) the registry answered, by digest. */
function blobGets(hosts: LocalHosts, layerDigests: readonly string[]): Map<string, { n: number; bytes: number }> {
  const out = new Map<string, { n: number; bytes: number }>(layerDigests.map((d) => [d, { n: 0, bytes: 0 }]));
  for (const r of hosts.registryRequests()) {
    const m = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(r.path);
    const e = m && out.get(m[1]!);
    if (e && r.method === "GET" && r.status < 300) {
      e.n++;
      e.bytes += r.bytes;
    }
  }
  return out;
}

/** The layers and diffIDs of the image in an OCI layout (skopeo pushes these blobs as they are). */
function layersOf(b: ImageBuilder): { layers: { digest: string; size: number }[]; diffIDs: string[] } {
  const blob = (d: string) => JSON.parse(readFileSync(join(b.layout, "blobs", "sha256", d.slice(7)), "utf8"));
  const index = JSON.parse(readFileSync(join(b.layout, "index.json"), "utf8")) as { manifests: { digest: string }[] };
  const m = blob(index.manifests[0]!.digest) as { config: { digest: string }; layers: { digest: string; size: number }[] };
  return { layers: m.layers, diffIDs: (blob(m.config.digest) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids };
}

/** Paths under `root` whose last component is `name`. */
function findNamed(root: string, name: string): string[] {
  return (readdirSync(root, { recursive: true }) as string[]).filter((p) => basename(p) === name);
}

t.test("three hosts with containerd run one shared copy of an image", { timeout: 600_000 }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), "wharf-ctrd-test-"));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const hosts = await LocalHosts.up({ n: 3 });
  t.teardown(() => hosts.down());
  const [h1, h2, h3] = hosts.hosts as [LocalHost, LocalHost, LocalHost];
  const ctr = (h: LocalHost, ns: string, args: string[]) => {
    const r = h.containerd!.ctr(["-n", ns, ...args]);
    if (r.status !== 0) throw new Error(`ctr ${args.join(" ")} on ${h.name}: ${r.stderr}`);
    return r.stdout;
  };

  const img = buildImage(join(work, "cri"), "cri", 4);
  t.teardown(() => img.cleanup());
  hosts.push(img.layout, img.tag, "app/cri", "1.0");
  const ref = `${hosts.registryHost}/app/cri:1.0`;
  const manifest = layersOf(img);

  await t.test("CRI PullImage on all three at once: each layer blob leaves the registry once", async (t) => {
    const clients = hosts.hosts.map((h) => new CriImages(h.containerd!.socket));
    t.teardown(() => clients.forEach((c) => c.close()));
    const ids = await Promise.all(clients.map((c) => c.pull(ref)));
    t.equal(new Set(ids).size, 1, `the same image id on every host: ${ids[0]}`);
    const gets = blobGets(hosts, manifest.layers.map((l) => l.digest));
    for (const l of manifest.layers) {
      t.same(gets.get(l.digest), { n: 1, bytes: l.size }, `layer ${l.digest.slice(7, 19)} served once, ${l.size} bytes`);
    }
    const layers = (await hosts.api(h1, "GET", "/layers")).body as { diffID: string; state: string; holders: string[] }[];
    t.equal(layers.length, manifest.layers.length, "every layer is in the shared store");
    for (const l of layers) {
      t.equal(l.state, "present");
      t.equal(new Set(l.holders.map((x) => x.split(" ")[0])).size, 3, `layer ${l.diffID.slice(7, 19)} held by the three hosts' snapshots`);
    }
  });

  await t.test("ctr run --snapshotter wharf reads every layer; writes stay on the host", async (t) => {
    // What the container read goes to a file of its own, not through ctr's
    // output: ctr now and then loses the output of a process this short.
    const cmd = "cat " + Array.from({ length: 4 }, (_, i) => `/cri${i + 1}/file`).join(" ") + " > /seen; echo $HOSTNAME-wrote > /written";
    for (const h of hosts.hosts) {
      ctr(h, "k8s.io", ["run", "--snapshotter", "wharf", ref, `read-${h.name}-${hosts.prefix}`, "sh", "-c", cmd]);
      const uppers = readdirSync(join(h.data, "snapshotter", "snapshots")).filter((id) =>
        existsSync(join(h.data, "snapshotter", "snapshots", id, "fs", "written")),
      );
      t.equal(uppers.length, 1, `${h.name}'s write is in its local upper dir`);
      const seen = uppers.length === 1 ? readFileSync(join(h.data, "snapshotter", "snapshots", uppers[0]!, "fs", "seen"), "utf8") : "";
      t.equal(seen, "cri layer 1\ncri layer 2\ncri layer 3\ncri layer 4\n", `${h.name} sees every layer`);
      ctr(h, "k8s.io", ["containers", "rm", `read-${h.name}-${hosts.prefix}`]);
    }
    const inShared = findNamed(hosts.shared, "written");
    t.same(inShared, [], "nothing was written into the shared store");
  });

  await t.test("wharf pull --containerd on all three at once, without CRI", async (t) => {
    const img2 = buildImage(join(work, "plain"), "plain", 3);
    t.teardown(() => img2.cleanup());
    hosts.push(img2.layout, img2.tag, "app/plain", "1.0");
    const ref2 = `${hosts.registryHost}/app/plain:1.0`;
    const m2 = layersOf(img2);
    const outs = await Promise.all(
      hosts.hosts.map((h) => hosts.wharf(h, ["pull", ref2, "--containerd", h.containerd!.socket, "--namespace", "plain", "--json"])),
    );
    for (const o of outs) t.equal(o.code, 0, o.stderr);
    const gets = blobGets(hosts, m2.layers.map((l) => l.digest));
    // A layer the CRI image has too is present already: fetched by nobody.
    const known = new Set(manifest.layers.map((l) => l.digest));
    for (const [i, l] of m2.layers.entries()) {
      const want = known.has(l.digest) ? { n: 0, bytes: 0 } : { n: 1, bytes: l.size };
      t.same(gets.get(l.digest), want, `layer ${i} of app/plain: ${want.n === 0 ? "present already" : "served once"}`);
    }
    // Every host's snapshot of every layer pins it, under the layer's chain id.
    const chain = chainIDs(m2.diffIDs);
    const held = new Map(((await hosts.api(h1, "GET", "/layers")).body as { diffID: string; holders: string[] }[]).map((l) => [l.diffID, l.holders]));
    for (const h of hosts.hosts) {
      const id = (await hosts.api(h, "GET", "/status")).body.id as string;
      t.ok(m2.diffIDs.every((d, i) => held.get(d)?.includes(`${id} snapshot:${chain[i]}`)), `${h.name}'s snapshots pin every layer`);
      const out = ctr(h, "plain", ["run", "--rm", "--snapshotter", "wharf", ref2, `plain-${h.name}-${hosts.prefix}`, "cat", "/plain1/file", "/plain3/file"]);
      t.equal(out, "plain layer 1\nplain layer 3\n", `${h.name} runs it at once`);
    }
  });

  await t.test("wharf pull --containerd into a snapshotter that is not wharf: a clear error, no pins left", async (t) => {
    const img3 = buildImage(join(work, "odd"), "odd", 2);
    t.teardown(() => img3.cleanup());
    hosts.push(img3.layout, img3.tag, "app/odd", "1.0");
    const m3 = layersOf(img3);
    const o = await hosts.wharf(h1, ["pull", `${hosts.registryHost}/app/odd:1.0`, "--containerd", h1.containerd!.socket, "--snapshotter", "overlayfs"]);
    t.not(o.code, 0, "the pull fails");
    t.match(o.stderr, /did not take layer .* from the shared store: is it wharf\?/, o.stderr);
    const ls = ((await hosts.api(h1, "GET", "/layers")).body as { diffID: string; holders: string[] }[]).filter((l) => m3.diffIDs.slice(1).includes(l.diffID));
    t.equal(ls.length, 2, "its own layers are in the shared store");
    for (const l of ls) t.notMatch(l.holders.join(), /snapshot:/, `layer ${l.diffID.slice(7, 19)}: no snapshot pins it`);
  });

  await t.test("an agent killed under running containers; GC on one host", async (t) => {
    const long = `long-${hosts.prefix}`;
    ctr(h1, "k8s.io", ["run", "-d", "--snapshotter", "wharf", ref, long, "busybox", "sleep", "600"]);
    const before = ctr(h1, "k8s.io", ["snapshots", "--snapshotter", "wharf", "ls"]);
    await hosts.killAgent(h1);
    // ctr now and then loses a short exec's output (the process ends before
    // its FIFOs are read): an empty answer is asked again, nothing else is.
    let out = "";
    for (let i = 1; i <= 3 && out === ""; i++) out = ctr(h1, "k8s.io", ["task", "exec", "--exec-id", `e${i}`, long, "cat", "/cri1/file", "/cri4/file"]);
    t.equal(out, "cri layer 1\ncri layer 4\n", "the running container still reads the shared layers");
    await hosts.restartAgent(h1);
    // containerd redials the proxy snapshotter with a backoff of its own.
    const after = await until("containerd to reach the restarted agent", async () => {
      const r = h1.containerd!.ctr(["-n", "k8s.io", "snapshots", "--snapshotter", "wharf", "ls"]);
      return r.status === 0 ? r.stdout : undefined;
    }, 60_000);
    t.equal(after, before, "the restarted agent serves the same snapshots");

    // The kubelet of host-2 removes the image (CRI drops every name it gave
    // it): containerd's GC removes host-2's snapshots.
    const cri2 = new CriImages(h2.containerd!.socket);
    await cri2.remove(ref);
    cri2.close();
    const left = await until("host-2's snapshots collected", async () => {
      const l = ctr(h2, "k8s.io", ["snapshots", "--snapshotter", "wharf", "ls"]).trim().split("\n").slice(1);
      return l.length === 0 ? l : undefined;
    }).catch(() => ctr(h2, "k8s.io", ["snapshots", "--snapshotter", "wharf", "ls"]));
    t.same(left, [], "host-2's containerd removed its snapshots");
    const id2 = (await hosts.api(h2, "GET", "/status")).body.id as string;
    // host-2's agent released its holds on the image's layers; the other hosts keep theirs.
    const cri = new Set(manifest.diffIDs);
    const layers = await until("host-2's holds released", async () => {
      const ls = ((await hosts.api(h3, "GET", "/layers")).body as { diffID: string; state: string; holders: string[] }[]).filter((l) => cri.has(l.diffID));
      return ls.every((l) => !l.holders.some((x) => x.startsWith(`${id2} `))) ? ls : undefined;
    });
    t.equal(layers.length, cri.size);
    for (const l of layers) {
      t.equal(new Set(l.holders.map((x) => x.split(" ")[0])).size, 2, `layer ${l.diffID.slice(7, 19)}: host-1 and host-3 still hold it`);
      t.ok(l.state === "present" && existsSync(join(hosts.shared, "layers", "sha256", l.diffID.slice(7))), "and it is still in the shared store");
    }
    // A short run's output can be lost the same way as an exec's (above).
    let out3 = "";
    for (let i = 1; i <= 3 && out3 === ""; i++) out3 = ctr(h3, "k8s.io", ["run", "--rm", "--snapshotter", "wharf", ref, `after-gc-${hosts.prefix}-${i}`, "cat", "/cri2/file"]);
    t.equal(out3, "cri layer 2\n", "host-3 still runs the image");
    ctr(h1, "k8s.io", ["task", "kill", "-s", "SIGKILL", long]);
    await until("long-h1 stopped", async () => (/STOPPED/.test(h1.containerd!.ctr(["-n", "k8s.io", "task", "ls"]).stdout) ? true : undefined));
    ctr(h1, "k8s.io", ["task", "rm", long]);
    ctr(h1, "k8s.io", ["containers", "rm", long]);
  });
});

