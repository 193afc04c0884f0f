// The embedded default: a local registry (Debian's docker-registry on
// loopback) with a multi-layer busybox image built by umoci, a local cluster
// of three agents sharing one store, a cooperative pull of the image on all
// of them at once, and a container-style run of the image from the merged
// view of the shared layers.
//
//   make demo          (or: tsx deploy/local/demo.ts [--agents N])

import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { TestCluster, status, until } from "../../test/helpers/agents.js";
import { ImageBuilder, busyboxBase, busyboxChanges } from "../../test/helpers/images.js";
import { startProxy, startRegistry } from "../../test/helpers/registry.js";

const { values } = parseArgs({ options: { agents: { type: "string", default: "3" } } });
const n = Number(values.agents);

const work = mkdtempSync(join(tmpdir(), "wharf-demo-"));
const say = (s: string): void => void process.stdout.write(`\n== ${s}\n`);

say("starting a registry on loopback and pushing a busybox image built with umoci");
const registry = await startRegistry();
const image = new ImageBuilder(join(work, "image")).layer(busyboxBase).layer(busyboxChanges);
for (let i = 1; i <= 6; i++) {
  image.layer((root) => {
    mkdirSync(join(root, "opt"), { recursive: true });
    writeFileSync(join(root, "opt", `data-${i}.bin`), randomBytes(3 << 20));
  });
}
image.push(registry.host, "demo/busybox", "1.0");
// Agents reach the registry through a proxy that counts the bytes it serves.
const proxy = await startProxy(registry.host);
proxy.setRate(8 << 20); // 8 MB/s per download, so that the pulls overlap as on a real network
const ref = `${proxy.host}/demo/busybox:1.0`;

const cluster = new TestCluster(["--insecure-registry", proxy.host]);
say(`starting ${n} agents that share ${join(cluster.root, "shared")}`);
const target = join(work, "rootfs");
let mounted = false;
try {
  const agents = await cluster.form(Array.from({ length: n }, (_, i) => `agent-${i + 1}`), Math.min(3, n));
  const st = await until("a leader", async () => ((await status(agents[0]!)).leader ? status(agents[0]!) : undefined));
  for (const m of st.members) process.stdout.write(`  ${m.id === st.leader ? "*" : " "} ${m.id} ${m.role}\n`);

  // Asynchronous: the registry proxy runs in this process.
  const wharf = (api: string, ...args: string[]): Promise<string> =>
    new Promise((resolve, reject) => {
      const c = spawn(process.execPath, ["--import", "tsx", "src/cli/wharf.ts", "--api", api, ...args]);
      let out = "";
      let err = "";
      c.stdout.on("data", (d: Buffer) => (out += d.toString()));
      c.stderr.on("data", (d: Buffer) => (err += d.toString()));
      c.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`wharf ${args.join(" ")}: ${err}`))));
    });

  say(`wharf pull ${ref} on ${agents.map((a) => a.name).join(", ")} at once`);
  const names = new Map<string, string>();
  for (const a of agents) names.set((await status(a)).id, a.name);
  const sums = (await Promise.all(agents.map((a) => wharf(a.api, "pull", ref, "--json")))).map(
    (out) => JSON.parse(out) as { seconds: number; registryBytes: number; layers: { digest: string; size: number; outcome: string; by: string }[] },
  );
  const registryBytes = proxy.bytesServed();
  const imageBytes = sums[0]!.layers.reduce((x, l) => x + l.size, 0);
  const rows = [["LAYER", "SIZE", ...agents.map((a) => a.name), "DOWNLOADED BY"]];
  sums[0]!.layers.forEach((l, i) => {
    const outcomes = sums.map((s) => s.layers[i]!.outcome);
    const by = sums.map((s) => s.layers[i]!).find((x) => x.outcome === "downloaded");
    rows.push([l.digest.slice(7, 19), `${(l.size / 1e6).toFixed(2)} MB`, ...outcomes, by ? (names.get(by.by) ?? by.by) : "-"]);
  });
  rows.push(["pull time", "", ...sums.map((s) => `${s.seconds.toFixed(2)} s`), ""]);
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  for (const r of rows) process.stdout.write(`  ${r.map((x, c) => x.padEnd(widths[c]!)).join("  ")}\n`);
  say("wharf layers");
  process.stdout.write(await wharf(agents[0]!.api, "layers"));

  const last = agents.at(-1)!;
  say(`running the image on ${last.name} from its merged view (shared layers, local writes)`);
  mkdirSync(target);
  await wharf(last.api, "mount", ref, target);
  mounted = true;
  const run = spawnSync("chroot", [target, "/bin/sh", "-c", "echo hello from a wharf image; cat /etc/hostname; ls /data"], { encoding: "utf8" });
  process.stdout.write(run.stdout + run.stderr);
  await wharf(last.api, "umount", target);
  mounted = false;

  say("result");
  process.stdout.write(
    `${n} agents pulled a ${(imageBytes / 1e6).toFixed(2)} MB image (compressed layers) at once; the registry served ` +
      `${(registryBytes / 1e6).toFixed(2)} MB in all (manifests and configs included): ${(registryBytes / imageBytes).toFixed(3)}x the image\n`,
  );
} finally {
  if (mounted && existsSync(target)) spawnSync("umount", [target]);
  cluster.stop();
  await proxy.stop();
  await registry.stop();
  image.cleanup();
  rmSync(work, { recursive: true, force: true });
}
