// wharf: the command line client of the local agent.

import { request } from "node:http";
import { Command } from "commander";

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

const EXIT: Record<string, number> = { INVALID_ARGUMENT: 2, NOT_FOUND: 3, NO_LEADER: 4, BUSY: 4, TIMEOUT: 5 };

async function invoke(method: string, path: string, payload?: unknown): Promise<unknown> {
  const api = program.opts<Global>().api ?? process.env.WHARF_API;
  if (!api) {
    process.stderr.write("wharf: no agent socket: pass --api SOCKET or set WHARF_API\n");
    process.exit(2);
  }
  let r;
  try {
    r = await call(api, method, path, payload);
  } catch (e) {
    process.stderr.write(`wharf: ${(e as Error).message}\n`);
    process.exit(8);
  }
  if (r.status !== 200) {
    const err = (r.body as { error?: { code: string; message: string } }).error;
    process.stderr.write(`wharf: ${err?.message ?? `HTTP ${r.status}`}\n`);
    process.exit(EXIT[err?.code ?? ""] ?? 1);
  }
  return r.body;
}

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

await program.parseAsync();
