// A local multi-host cluster to try wharf with containerd: N hosts in
// network namespaces (an agent and a containerd each, one shared directory),
// a registry in its own namespace behind a tbf bandwidth limit, and a busybox
// image pushed to it. Prints how to reach each host, then stays up until
// Ctrl-C, and takes everything down.
//
//   make hosts [HOSTS=3] [RATE_MBIT=100]    (or: tsx deploy/local/cluster.ts --hosts 3 --rate-mbit 100)

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ImageBuilder, busyboxBase, busyboxChanges } from "../../test/helpers/images.js";
import { LocalHosts } from "./hosts.js";

const { values } = parseArgs({ options: { hosts: { type: "string", default: "3" }, "rate-mbit": { type: "string", default: "100" } } });
const n = Number(values.hosts);
const rateMbit = Number(values["rate-mbit"]);
if (!Number.isInteger(n) || n < 1 || n > 50) throw new Error("--hosts takes 1 to 50");
if (!Number.isFinite(rateMbit) || rateMbit < 0) throw new Error("--rate-mbit takes a number of Mbit/s (0: no limit)");

const work = mkdtempSync(join(tmpdir(), "wharf-local-"));
const hosts = await LocalHosts.up({ n, rateMbit });
try {
  const image = new ImageBuilder(join(work, "image")).layer(busyboxBase).layer(busyboxChanges);
  hosts.push(image.layout, image.tag, "demo/busybox", "1.0");
  image.cleanup();
  const ref = `${hosts.registryHost}/demo/busybox:1.0`;
  const out = (s: string) => process.stdout.write(`${s}\n`);
  out(`registry ${hosts.registryHost} (namespace ${hosts.prefix}-reg, ${rateMbit || "unlimited"} Mbit/s), image ${ref}`);
  out(`shared store ${hosts.shared}\n`);
  for (const h of hosts.hosts) {
    out(`${h.name}: namespace ${h.netns}, address ${h.addr}`);
    out(`  wharf:      tsx src/cli/wharf.ts --api ${h.api} status`);
    out(`  pull:       nsenter --net=/run/netns/${h.netns} -- node_modules/.bin/tsx src/cli/wharf.ts --api ${h.api} pull ${ref} --containerd ${h.containerd!.socket}`);
    out(`  run:        ctr --address ${h.containerd!.socket} run --rm --snapshotter wharf ${ref} c1 sh -c 'ls /'`);
  }
  out("\nup; Ctrl-C takes everything down");
  // Ctrl-C reaches this process twice (from the terminal and relayed by
  // tsx): every signal after the first is ignored while the hosts go down.
  await new Promise<void>((resolve) => {
    process.on("SIGINT", () => resolve());
    process.on("SIGTERM", () => resolve());
  });
} finally {
  await hosts.down();
  rmSync(work, { recursive: true, force: true });
}
