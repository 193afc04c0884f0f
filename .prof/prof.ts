import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LocalHosts } from "../deploy/local/hosts.js";
import { syntheticImage } from "../bench/paper-images.js";

const n = Number(process.argv[2] ?? 3);
const work = mkdtempSync(join(tmpdir(), "prof-"));
const img = await syntheticImage(join(work, "img"), { layers: 20, layerBytes: 2.5e6, filesPerLayer: 1 } as any);
const ctrd = process.argv[3] === "ctrd";
const H = await LocalHosts.up({ n, containerd: ctrd, rateMbit: 100 });
try {
  H.push(img.layout, img.tag, "bench/p", "1");
  const ref = `${H.registryHost}/bench/p:1`;
  const cpu0 = H.hosts.map((h) => cpuOf(h.agent.pid!));
  const t0 = performance.now();
  console.log("window-start-us", process.hrtime.bigint() / 1000n);
  const rs = await Promise.all(H.hosts.map((h) => H.wharf(h, ["pull", ref, "--json", ...(ctrd ? ["--containerd", h.containerd!.socket] : [])])));
  const t = (performance.now() - t0) / 1000;
  console.log("window-end-us", process.hrtime.bigint() / 1000n);
  const cpu1 = H.hosts.map((h) => cpuOf(h.agent.pid!));
  console.log("seconds", t.toFixed(2), "codes", rs.map((r) => r.code).join(","), rs.find((r) => r.code !== 0)?.stderr ?? "");
  for (const r of rs.slice(0, 2)) { const l = r.stdout.trim().split("\n").at(-1)!; console.log(l.slice(0, 300)); }
  console.log("agent cpu s", cpu1.map((c, i) => (c - cpu0[i]!).toFixed(2)).join(" "));
  if (ctrd) {
    const again = await H.wharf(H.hosts[0]!, ["pull", ref, "--json", "--containerd", H.hosts[0]!.containerd!.socket]);
    console.log("again", again.code, again.stderr.slice(0, 300));
  }
  for (const h of H.hosts) console.log(h.name, h.agentLog.split("\n").filter((l) => l.includes("registered in containerd")).map((l) => { const j = JSON.parse(l); return `pin ${j.pinMs} register ${j.registerMs}`; }).join(" "));
  await new Promise((r) => setTimeout(r, 3000));
  const cpu2 = H.hosts.map((h) => cpuOf(h.agent.pid!));
  console.log("idle 3s cpu s", cpu2.map((c, i) => (c - cpu1[i]!).toFixed(2)).join(" "));
} finally {
  await H.down();
}
import { execSync } from "node:child_process";
import { readFileSync } from "node:fs";
function cpuOf(pid: number): number {
  // setpriv → ip netns exec → node: the node process is a descendant; sum the tree.
  const pids = execSync(`pstree -p -T ${pid} | grep -o '([0-9]*)' | tr -d '()'`, { encoding: "utf8" }).trim().split("\n");
  let s = 0;
  for (const p of pids) {
    try {
      const f = readFileSync(`/proc/${p}/stat`, "utf8").split(") ")[1].split(" ");
      s += (Number(f[11]) + Number(f[12])) / 100;
    } catch {}
  }
  return s;
}
