// wharf: the command line client of the local agent.

import { request } from "node:http";
import { resolve } from "node:path";
import { Command } from "commander";
import { exitCodeOfCode } from "../errors.js";
import { type PullEvent, PullProgress, type PullSummary } from "./progress.js";

interface Global {
  api?: string;
}

function call(api: string, method: string, path: string, payload?: unknown): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const data = payload === undefined ? undefined : JSON.stringify(payload);
    const req = request({ socketPath: api, method, path, headers: data ? { "content-type": "application/json" } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString("utf8")) });
        } catch (e) {
          reject(e);
        }
      });
    });
    req.on("error", (e) => reject(new Error(`cannot reach the agent at ${api}: ${e.message}`)));
    req.end(data);
  });
}

function apiSocket(): string {
  const api = program.opts<Global>().api ?? process.env.WHARF_API;
  if (!api) {
    process.stderr.write("wharf: no agent socket: pass --api SOCKET or set WHARF_API\n");
    process.exit(2);
  }
  return api;
}

function failWith(err: { code: string; message: string } | undefined, status: number): never {
  process.stderr.write(`wharf: ${err?.message ?? `HTTP ${status}`}\n`);
  process.exit(exitCodeOfCode(err?.code ?? "INTERNAL"));
}

async function invoke(method: string, path: string, payload?: unknown): Promise<unknown> {
  const api = apiSocket();
  let r;
  try {
    r = await call(api, method, path, payload);
  } catch (e) {
    process.stderr.write(`wharf: ${(e as Error).message}\n`);
    process.exit(8);
  }
  if (r.status !== 200) failWith((r.body as { error?: { code: string; message: string } }).error, r.status);
  return r.body;
}

/** A streamed call: one JSON value per line, handed to `onLine` as it arrives. */
function stream(path: string, payload: unknown, onLine: (v: Record<string, unknown>) => void): Promise<void> {
  const api = apiSocket();
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(payload);
    const req = request({ socketPath: api, method: "POST", path, headers: { "content-type": "application/json" } }, (res) => {
      let buf = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        buf += c;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const text = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (text.trim()) onLine(JSON.parse(text) as Record<string, unknown>);
        }
      });
      res.on("end", () => {
        if (buf.trim()) onLine(JSON.parse(buf) as Record<string, unknown>);
        resolve();
      });
    });
    req.on("error", (e) => reject(new Error(`cannot reach the agent at ${api}: ${e.message}`)));
    req.end(data);
  });
}

function table(rows: string[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd());
}

function bytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) (n /= 1000), i++;
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

const short = (d: string): string => d.replace(/^sha256:/, "").slice(0, 12);

const program = new Command("wharf").option("--api <socket>", "the agent's API socket (default: $WHARF_API)");

program
  .command("status")
  .option("--json", "print JSON")
  .action(async (o: { json?: boolean }) => {
    const s = (await invoke("GET", "/status")) as {
      id: string;
      leader: string;
      term: number;
      commitIndex: number;
      appliedIndex: number;
      members: { id: string; role: string; alive: boolean; addrs: string[] }[];
    };
    if (o.json) {
      console.log(JSON.stringify(s));
      return;
    }
    console.log(`agent ${s.id}\nleader ${s.leader || "(none)"}  term ${s.term}  commit ${s.commitIndex}  applied ${s.appliedIndex}\n`);
    console.log(["ID".padEnd(54), "ROLE".padEnd(8), "ALIVE".padEnd(6), "ADDRESSES"].join(" "));
    for (const m of s.members) {
      const mark = m.id === s.leader ? "*" : " ";
      console.log([`${mark}${m.id}`.padEnd(54), m.role.padEnd(8), String(m.alive).padEnd(6), m.addrs.join(",")].join(" "));
    }
  });

program
  .command("put")
  .description("write a key of the cluster's register (testing the metadata plane)")
  .argument("<key>")
  .argument("<value>")
  .action(async (key: string, value: string) => console.log(JSON.stringify(await invoke("POST", "/kv", { key, value }))));

program
  .command("get")
  .description("linearizable read of a key")
  .argument("<key>")
  .action(async (key: string) => console.log(JSON.stringify(await invoke("GET", `/kv?key=${encodeURIComponent(key)}`))));

program
  .command("leave")
  .description("remove this agent from the cluster and stop it")
  .action(async () => console.log(JSON.stringify(await invoke("POST", "/leave"))));

program
  .command("remove-member")
  .argument("<id>")
  .action(async (id: string) => console.log(JSON.stringify(await invoke("POST", "/members/remove", { id }))));

program
  .command("pull")
  .description("pull an image into the shared store, showing each layer's progress")
  .argument("<ref>", "image reference, e.g. registry:5000/app:1.0 or busybox")
  .option("--platform <os/arch[/variant]>", "platform to choose from an image index")
  .option("--json", "print one JSON summary at the end instead of progress")
  .option("--containerd <socket>", "also register the image in this containerd, ready for ctr run --snapshotter wharf")
  .option("--namespace <ns>", "containerd namespace", "default")
  .option("--snapshotter <name>", "name of wharf's proxy snapshotter in that containerd", "wharf")
  .action(async (ref: string, o: { platform?: string; json?: boolean; containerd?: string; namespace: string; snapshotter: string }) => {
    const progress = o.json ? undefined : new PullProgress(process.stdout);
    let summary: PullSummary | undefined;
    let error: { code: string; message: string } | undefined;
    try {
      const containerd = o.containerd ? { socket: resolve(o.containerd), namespace: o.namespace, snapshotter: o.snapshotter } : undefined;
      await stream("/pull", { ref, ...(o.platform ? { platform: o.platform } : {}), ...(containerd ? { containerd } : {}) }, (v) => {
        if (v.event) progress?.event(v.event as PullEvent);
        if (v.result) summary = v.result as PullSummary;
        if (v.error) error = v.error as { code: string; message: string };
      });
    } catch (e) {
      progress?.stop();
      process.stderr.write(`wharf: ${(e as Error).message}\n`);
      process.exit(8);
    }
    progress?.stop();
    if (!summary) failWith(error, 500);
    if (o.json) console.log(JSON.stringify(summary));
    else progress!.summary(summary);
  });

program
  .command("images")
  .description("images held in the cluster")
  .option("--json", "print JSON")
  .action(async (o: { json?: boolean }) => {
    const images = (await invoke("GET", "/images")) as { reference: string; manifestDigest: string; layers: string[]; size: number; holders: string[]; heldHere: boolean }[];
    if (o.json) return console.log(JSON.stringify(images));
    table([
      ["REFERENCE", "MANIFEST", "LAYERS", "SIZE", "HOLDERS", "HERE"],
      ...images.map((i) => [i.reference, short(i.manifestDigest), String(i.layers.length), bytes(i.size), String(i.holders.length), i.heldHere ? "yes" : "no"]),
    ]);
  });

program
  .command("layers")
  .description("layers in the shared store")
  .option("--json", "print JSON")
  .action(async (o: { json?: boolean }) => {
    const layers = (await invoke("GET", "/layers")) as { diffID: string; blob: string; size: number; unpacked: number; state: string; images: string[]; holders: string[] }[];
    if (o.json) return console.log(JSON.stringify(layers));
    table([
      ["DIFFID", "BLOB", "SIZE", "UNPACKED", "STATE", "IMAGES", "HOLDERS"],
      ...layers.map((l) => [short(l.diffID), short(l.blob), bytes(l.size), bytes(l.unpacked), l.state, String(l.images.length), String(l.holders.length)]),
    ]);
  });

program
  .command("transfers")
  .description("layers being pulled in the cluster, by whom, and who waits for them")
  .option("--json", "print JSON")
  .action(async (o: { json?: boolean }) => {
    const ts = (await invoke("GET", "/transfers")) as { diffID: string; blob: string; size: number; owner: string; attempt: number; waiters: string[] }[];
    if (o.json) return console.log(JSON.stringify(ts));
    table([
      ["BLOB", "SIZE", "MASTER", "ATTEMPT", "WAITERS"],
      ...ts.map((x) => [short(x.blob), bytes(x.size), x.owner ? x.owner.slice(-8) : "(queued)", String(x.attempt), String(x.waiters.length)]),
    ]);
  });

program
  .command("rmi")
  .description("release this agent's hold on an image; layers no image uses any more are deleted")
  .argument("<ref>")
  .action(async (ref: string) => {
    const r = (await invoke("POST", "/rmi", { ref })) as { reference: string; deletedLayers: string[] };
    console.log(`Untagged: ${r.reference}`);
    for (const d of r.deletedLayers) console.log(`Deleted: ${d}`);
  });

program
  .command("mount")
  .description("mount the merged view of an image at TARGET (writes stay on this host's disk)")
  .argument("<ref>")
  .argument("<target>")
  .action(async (ref: string, target: string) => {
    const r = (await invoke("POST", "/mount", { ref, target })) as { target: string };
    console.log(r.target);
  });

program
  .command("umount")
  .description("unmount a merged view and drop its local writes")
  .argument("<target>")
  .action(async (target: string) => {
    const r = (await invoke("POST", "/umount", { target })) as { target: string };
    console.log(r.target);
  });

await program.parseAsync();
