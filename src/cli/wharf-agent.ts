// wharf-agent start|join: runs an agent until SIGINT/SIGTERM.

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Command } from "commander";
import { pino } from "pino";
import { Agent } from "../agent/agent.js";
import { DEFAULT_LEASE_MS } from "../agent/pull.js";
import { serveApi } from "../api/server.js";
import { WharfError, exitCodeOf } from "../errors.js";
import { parsePlatform } from "../registry/client.js";

interface Flags {
  data: string;
  shared: string;
  listen: string;
  api?: string;
  secretFile: string;
  bootstrap?: boolean;
  voters: string;
  tickMs: string;
  snapshotEvery: string;
  metrics?: string;
  deadVoterMs: string;
  insecureRegistry: string[];
  pullWorkers: string;
  platform: string;
  dockerConfig?: string;
  leaseMs: string;
  snapshotterSocket?: string;
}

const program = new Command("wharf-agent").description("A wharf agent: one per container host.");

function withAgentFlags(c: Command): Command {
  return c
    .requiredOption("--data <dir>", "the agent's own data directory (Raft log, identity)")
    .requiredOption("--shared <dir>", "the shared store (a directory on the shared file system)")
    .option("--listen <multiaddr>", "libp2p listen address", "/ip4/127.0.0.1/tcp/0")
    .option("--api <socket>", "unix socket of the local API (default: DATA/api.sock)")
    .requiredOption("--secret-file <file>", "file holding the cluster secret")
    .option("--voters <n>", "voters the cluster keeps (3 or 5)", "3")
    .option("--tick-ms <ms>", "Raft tick (election timeout is 10 ticks)", "100")
    .option("--snapshot-every <n>", "snapshot and compact the log every N entries", "10000")
    .option("--metrics <host:port>", "serve Prometheus metrics at http://HOST:PORT/metrics")
    .option("--dead-voter-ms <ms>", "replace a voter silent this long by a live learner", "30000")
    .option("--insecure-registry <host:port>", "a registry reached over plain HTTP (repeatable)", (v: string, a: string[]) => [...a, v], [])
    .option("--pull-workers <n>", "layers this agent downloads at once", "3")
    .option("--platform <os/arch[/variant]>", "platform chosen from image indexes", "linux/amd64")
    .option("--lease-ms <ms>", "a master's lease on a layer transfer, renewed 3 times per period", String(DEFAULT_LEASE_MS))
    .option("--snapshotter-socket <socket>", "serve containerd's snapshots API (proxy plugin \"wharf\") on this unix socket")
    .option("--docker-config <file>", "docker config.json with registry credentials (default: ~/.docker/config.json)");
}

async function run(flags: Flags, bootstrap: boolean, peer?: string): Promise<void> {
  const log = pino({ level: process.env.WHARF_LOG_LEVEL ?? "info" });
  const secret = (await readFile(flags.secretFile, "utf8").catch(() => {
    throw new WharfError("INVALID_ARGUMENT", `cannot read the secret file ${flags.secretFile}`);
  })).trim();
  if (secret.length < 16) throw new WharfError("INVALID_ARGUMENT", "the cluster secret must be at least 16 characters");
  const voters = Number(flags.voters);
  if (!Number.isInteger(voters) || voters < 1 || voters > 5) throw new WharfError("INVALID_ARGUMENT", "--voters takes 1 to 5");
  const pullWorkers = Number(flags.pullWorkers);
  if (!Number.isInteger(pullWorkers) || pullWorkers < 1 || pullWorkers > 64) throw new WharfError("INVALID_ARGUMENT", "--pull-workers takes 1 to 64");
  const leaseMs = Number(flags.leaseMs);
  if (!Number.isInteger(leaseMs) || leaseMs < 200 || leaseMs > 600_000) throw new WharfError("INVALID_ARGUMENT", "--lease-ms takes 200 to 600000");
  for (const r of flags.insecureRegistry) {
    if (!/^[A-Za-z0-9.-]+(:\d+)?$|^\[[0-9a-fA-F:]+\](:\d+)?$/.test(r)) throw new WharfError("INVALID_ARGUMENT", `--insecure-registry takes HOST:PORT, not ${r}`);
  }
  const agent = await Agent.start({
    dataDir: flags.data,
    sharedDir: flags.shared,
    listen: [flags.listen],
    secret,
    bootstrap,
    joining: peer !== undefined,
    log,
    voters,
    tickMs: Number(flags.tickMs),
    snapshotEvery: Number(flags.snapshotEvery),
    deadVoterMs: Number(flags.deadVoterMs),
    insecureRegistries: flags.insecureRegistry,
    pullWorkers,
    leaseMs,
    platform: parsePlatform(flags.platform),
    ...(flags.dockerConfig ? { dockerConfig: flags.dockerConfig } : {}),
    ...(flags.metrics ? { metricsAddr: flags.metrics } : {}),
    ...(flags.snapshotterSocket ? { snapshotterSocket: flags.snapshotterSocket } : {}),
  });
  const controller = new AbortController();
  let stopping = false;
  const shutdown = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    controller.abort();
    await closeApi?.();
    await agent.stop();
    log.info({}, "agent stopped");
    // Everything is closed: a handle some library left open must not keep
    // a stopped agent's process alive (it would never be restarted).
    setTimeout(() => {
      log.warn({ open: process.getActiveResourcesInfo() }, "exiting with handles still open");
      process.exit(0);
    }, 2000).unref();
  };
  let closeApi: (() => Promise<void>) | undefined;
  closeApi = await serveApi(agent, flags.api ?? join(flags.data, "api.sock"), () => void shutdown());
  process.once("SIGINT", () => void shutdown());
  process.once("SIGTERM", () => void shutdown());
  // Joining again with a data dir that is already a member is harmless, and
  // tells a data dir of another cluster apart.
  if (peer !== undefined) {
    try {
      await agent.joinCluster(peer, controller.signal);
      log.info({ peer }, "joined the cluster");
    } catch (e) {
      await shutdown();
      throw e;
    }
  }
}

function fail(e: unknown): never {
  process.stderr.write(`wharf-agent: ${(e as Error).message}\n`);
  process.exit(exitCodeOf(e));
}

withAgentFlags(program.command("start"))
  .description("run an agent; --bootstrap founds a new cluster when the data dir is empty")
  .option("--bootstrap", "found a new cluster")
  .action((flags: Flags) => run(flags, flags.bootstrap === true).catch(fail));

withAgentFlags(program.command("join"))
  .description("join the cluster of the agent at PEER_MULTIADDR, then run")
  .argument("<peer>", "multiaddr of a member, with /p2p/<id>")
  .action((peer: string, flags: Flags) => run(flags, false, peer).catch(fail));

program.parseAsync().catch(fail);
