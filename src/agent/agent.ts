// An agent: its identity and Raft log in the data dir, a libp2p host, the
// Raft driver, membership upkeep, and the local API on a unix socket.

import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { z } from "zod";
import { Host, newIdentity } from "../../net/host.js";
import { NONE, type Snapshot } from "../../raft/index.js";
import { LogStore } from "../../store/logstore.js";
import { ContainerdClient, loadServices } from "../containerd/client.js";
import { chainIDs, registerImage } from "../containerd/register.js";
import { WharfError, errorCodeOf } from "../errors.js";
import { LayerStore } from "../layers/store.js";
import { type Platform, RegistryClient, type ResolvedImage } from "../registry/client.js";
import { formatRepository } from "../registry/reference.js";
import { type SnapshotterServer, serveSnapshotter } from "../snapshotter/grpc.js";
import { OverlaySnapshotter } from "../snapshotter/overlay.js";
import { Mounts } from "./mounts.js";
import { Puller } from "./pull.js";
import { createRaftMetrics, serveMetrics } from "./metrics.js";
import { RaftNode } from "./raftnode.js";
import { RemoteLayers } from "./snapshots.js";

export interface AgentOptions {
  readonly dataDir: string;
  readonly sharedDir: string;
  readonly listen: readonly string[];
  readonly secret: string;
  readonly bootstrap: boolean;
  readonly log: Logger;
  readonly tickMs?: number;
  readonly voters?: number;
  readonly snapshotEvery?: number;
  /** A voter not heard from for this long is replaced by a live learner. */
  readonly deadVoterMs?: number;
  /** Started by `join`: an empty data dir waits to be admitted. */
  readonly joining?: boolean;
  /** HOST:PORT for the Prometheus endpoint. */
  readonly metricsAddr?: string;
  /** Registries reached over plain HTTP (HOST:PORT). */
  readonly insecureRegistries?: readonly string[];
  /** A docker config.json with registry credentials (default: the user's). */
  readonly dockerConfig?: string;
  readonly pullWorkers?: number;
  /** Platform chosen from image indexes (default linux/amd64). */
  readonly platform?: Platform;
  /** A master's lease on a transfer (ms, default DEFAULT_LEASE_MS). */
  readonly leaseMs?: number;
  /**
   * Serve containerd's snapshots API (proxy plugin `wharf`) on this unix
   * socket; the snapshotter's own state lives under DATA/snapshotter.
   */
  readonly snapshotterSocket?: string;
}

/** Ticks without a leader (20 election timeouts) before an agent asks to be admitted again. */
const REJOIN_AFTER_TICKS = 200;

/** Gossip topic of download progress hints (never decides anything). */
const PROGRESS_TOPIC = "wharf/progress/2";
const progressHintSchema = z.object({
  diffID: z.string().max(80),
  blob: z.string().max(80),
  agent: z.string().max(128),
  done: z.number().nonnegative(),
  total: z.number().nonnegative(),
});
/** One message: every download of one agent. */
const progressHintsSchema = z.array(progressHintSchema).max(256);

function safeJson(b: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(b));
  } catch {
    return undefined;
  }
}

export class Agent {
  private upkeep: NodeJS.Timeout | undefined;
  /** When this agent last knew a leader; long without one, it asks to be admitted again. */
  private leaderSeenAt = Date.now();
  private rejoining: Promise<void> | undefined;
  /** A leave once asked, carried out to the end (see leave). */
  private leaving: Promise<void> | undefined;
  private stopMetrics: (() => Promise<void>) | undefined;
  private readonly startedAt = Date.now();
  /** Aborted when the agent stops: every long operation of the agent listens to it. */
  private readonly life = new AbortController();
  readonly layers: LayerStore;
  readonly puller: Puller;
  readonly mounts: Mounts;
  readonly registry: RegistryClient;
  private snapshotter: { sn: OverlaySnapshotter; server: SnapshotterServer; remote: RemoteLayers } | undefined;

  private constructor(
    readonly opts: AgentOptions,
    readonly store: LogStore,
    readonly host: Host,
    readonly node: RaftNode,
    public clusterId: string,
    parts: { layers: LayerStore; mounts: Mounts },
  ) {
    this.layers = parts.layers;
    this.mounts = parts.mounts;
    this.registry = new RegistryClient({
      insecureRegistries: [...(opts.insecureRegistries ?? [])],
      log: opts.log,
      ...(opts.dockerConfig ? { dockerConfig: opts.dockerConfig } : {}),
    });
    this.puller = new Puller({
      id: host.id,
      node,
      store: parts.layers,
      registry: this.registry,
      log: opts.log,
      workers: opts.pullWorkers ?? 3,
      ...(opts.platform ? { platform: opts.platform } : {}),
      ...(opts.leaseMs ? { leaseMs: opts.leaseMs } : {}),
      publish: (hs) => void host.publishHint(PROGRESS_TOPIC, new TextEncoder().encode(JSON.stringify(hs))).catch(() => {}),
      signal: this.life.signal,
    });
    host.onHint(PROGRESS_TOPIC, (data) => {
      const hs = progressHintsSchema.safeParse(safeJson(data));
      if (hs.success) for (const h of hs.data) if (h.agent !== host.id) this.puller.hint(h);
    });
  }

  get id(): string {
    return this.node.id;
  }

  static async start(opts: AgentOptions): Promise<Agent> {
    await mkdir(opts.dataDir, { recursive: true, mode: 0o700 });
    const store = await LogStore.open(join(opts.dataDir, "raft"));
    try {
      const empty = store.mem.lastIndex() === 0;
      if (empty && !opts.bootstrap && opts.joining !== true) {
        throw new WharfError("INVALID_ARGUMENT", `${opts.dataDir} holds no cluster: pass --bootstrap to found one, or use join`);
      }
      let identity = await store.getMeta("identity");
      if (identity === undefined) {
        identity = Buffer.from(await newIdentity()).toString("base64");
        await store.putMeta("identity", identity);
      }
      const host = await Host.start({
        identity: new Uint8Array(Buffer.from(identity, "base64")),
        listen: opts.listen,
        secret: opts.secret,
        log: opts.log,
      });
      if (opts.bootstrap && empty) {
        // The founding agent starts from a snapshot holding a configuration of
        // itself alone; agents that join start empty and get a snapshot.
        const boot: Snapshot = {
          meta: { index: 1, term: 1, confState: { voters: [host.id], learners: [] } },
          data: new Uint8Array(),
        };
        await store.persist({ snapshot: boot, hardState: { term: 1, vote: NONE, commit: 1 }, entries: [] });
        await store.putMeta("cluster", `${host.id}@${Date.now()}`);
      }
      const metrics = createRaftMetrics(() => node);
      const node: RaftNode = new RaftNode({
        metrics: {
          observeProposal: (s) => metrics.proposalSeconds.observe(s),
          leaderChanged: () => metrics.leaderChanges.inc(),
        },
        id: host.id,
        store,
        send: (m) => {
          metrics.messages.inc({ direction: "sent", type: m.type });
          if (!host.send(m)) node.rn.reportUnreachable(m.to);
        },
        tickMs: opts.tickMs ?? 100,
        snapshotEvery: opts.snapshotEvery ?? 10_000,
        log: opts.log,
      });
      const layers = await LayerStore.open(opts.sharedDir, host.id);
      const leftovers = await layers.collectLeftovers();
      if (leftovers.length > 0) opts.log.info({ leftovers }, "collected leftovers of a previous run in the shared store");
      const mounts = await Mounts.open(opts.dataDir, join(opts.sharedDir, "layers", "sha256"));
      const agent = new Agent(opts, store, host, node, (await store.getMeta("cluster")) ?? "", { layers, mounts });
      host.onMessage = (m) => {
        metrics.messages.inc({ direction: "received", type: m.type });
        node.step(m);
      };
      // Admitting a peer: record its addresses, then add it as a learner; the
      // leader's upkeep promotes it once it has caught up.
      await host.serveJoin(async (req) => {
        if (req.cluster !== undefined && req.cluster !== agent.clusterId) {
          throw new WharfError(
            "WRONG_CLUSTER",
            `the joiner's data dir belongs to cluster ${req.cluster}, this is cluster ${agent.clusterId}`,
          );
        }
        if (req.probe) {
          // Only a leader answers: a follower's applied membership may lag
          // (a new member's is empty), a leader's holds what is committed.
          const st = node.status();
          if (st.role !== "leader") return { cluster: agent.clusterId };
          return { cluster: agent.clusterId, member: st.confState.voters.includes(req.id) || st.confState.learners.includes(req.id) };
        }
        const signal = AbortSignal.timeout(10_000);
        await node.propose({ type: "member", id: req.id, addrs: req.addrs }, signal);
        const cs = node.status().confState;
        if (!cs.voters.includes(req.id) && !cs.learners.includes(req.id)) {
          await node.changeMembership({ type: "addLearner", node: req.id }, signal);
        }
        return { cluster: agent.clusterId };
      });
      host.onUnreachable = (id) => node.rn.reportUnreachable(id);

      agent.refreshPeers();
      node.start();
      if (opts.bootstrap && empty) node.rn.campaign();
      agent.upkeep = setInterval(() => void agent.maintain(), 500);
      if (opts.metricsAddr) agent.stopMetrics = await serveMetrics(metrics.registry, opts.metricsAddr);
      if (opts.snapshotterSocket) await agent.serveSnapshotter(opts.snapshotterSocket);
      opts.log.info({ id: host.id, addrs: host.addrs() }, "agent started");
      return agent;
    } catch (e) {
      await store.close();
      throw e;
    }
  }

  /**
   * containerd's proxy snapshotter: local snapshots under DATA/snapshotter,
   * layers of the shared store as committed snapshots that the cooperative
   * pull makes present (containerd's remote-snapshotter protocol).
   */
  private async serveSnapshotter(socket: string): Promise<void> {
    const remote = new RemoteLayers({
      id: this.id,
      node: this.node,
      puller: this.puller,
      store: this.layers,
      registry: this.registry,
      log: this.opts.log,
      signal: this.life.signal,
      ...(this.opts.platform ? { platform: this.opts.platform } : {}),
    });
    // A restarted agent's pins are in its own log: with them applied, the
    // mounts of snapshots whose layers it pins need no Raft round (nor a
    // quorum) to find them pinned.
    await this.node.appliedLocalCommits(this.life.signal);
    const sn = await OverlaySnapshotter.open(join(this.opts.dataDir, "snapshotter"), {
      resolveRemote: (req) => remote.resolve(req),
      materialize: (name, labels) => remote.materialize(name, labels),
      onRemoveExternal: (name) => remote.removed(name),
      log: this.opts.log,
    });
    // `wharf pull --containerd` will talk to this host's containerd.
    loadServices();
    try {
      this.snapshotter = { sn, server: await serveSnapshotter(sn, socket, this.opts.log), remote };
    } catch (e) {
      await sn.close();
      throw e;
    }
  }

  /**
   * Registers an image in a containerd (`wharf pull --containerd`), beside
   * its pull: `present(i)` resolves once layer i is in the shared store.
   * The snapshots are prepared while the layers are on their way, pending
   * (see RemoteLayers.resolve), so that containerd's chain is in place when
   * the last layer lands; where that containerd's snapshotter is this
   * agent's, they are pinned, in one proposal, once every layer is present,
   * and this resolves then.
   */
  async registerInContainerd(
    img: ResolvedImage,
    to: { socket: string; namespace: string; snapshotter: string },
    present: (i: number) => Promise<void>,
  ): Promise<void> {
    const t0 = performance.now();
    const layers = img.layers.map((l) => ({ diffID: l.diffID, blob: l.digest, size: l.size, mediaType: l.mediaType }));
    const diffIDs = layers.map((l) => l.diffID);
    const names = chainIDs(diffIDs);
    const own = this.snapshotter;
    const layersIn = names.map((_, i) => present(i));
    for (const p of layersIn) p.catch(() => {});
    const c = new ContainerdClient(to.socket, to.namespace);
    try {
      // Once a first layer is in place: the claims are answered by then,
      // and the link is busy. At the very start, containerd's writes and
      // ours (an fsync each per snapshot, every host at once) held up the
      // claims' Raft rounds, and with them the first bytes.
      if (layersIn.length > 0) await Promise.race(layersIn);
      await registerImage(c, to.snapshotter, { ...img, repository: formatRepository(img.repository), layers });
      // The snapshots are made (pending until their layers are in place):
      // pinned all at once, beside the pull's hold of the image. If
      // anything fails before, the snapshots made stay pending, and a mount
      // above them makes their layers present and pins them.
      await Promise.all(layersIn);
      await own?.remote.pin(names.map((name, i) => ({ name, diffID: diffIDs[i]! })));
      this.opts.log.info({ image: img.reference, containerd: to.socket, layers: layers.length, ms: Math.round(performance.now() - t0) }, "image registered in containerd");
    } finally {
      c.close();
    }
  }

  /** Joins the cluster of the agent at `peer` (retrying while it is busy or leaderless). */
  async joinCluster(peer: string, signal: AbortSignal): Promise<void> {
    let last = "";
    while (!signal.aborted) {
      try {
        const known = this.clusterId === "" ? undefined : this.clusterId;
        const res = await this.host.join(peer, known, AbortSignal.any([signal, AbortSignal.timeout(15_000)]));
        if (res.ok) {
          if (known === undefined && res.cluster) {
            await this.store.putMeta("cluster", res.cluster);
            this.clusterId = res.cluster;
          }
          return;
        }
        if (res.code === "WRONG_CLUSTER") throw new WharfError("WRONG_CLUSTER", `could not join ${peer}: ${res.error}`);
        last = res.error ?? "refused";
      } catch (e) {
        if (e instanceof WharfError) throw e;
        last = (e as Error).message;
        if (/EncryptionFailed|ECONNRESET|handshake/i.test(`${(e as Error).name} ${last}`)) {
          throw new WharfError("WRONG_SECRET", `could not join ${peer}: the handshake failed (wrong cluster secret?)`);
        }
      }
      this.opts.log.warn({ peer, err: last }, "join not accepted yet; retrying");
      await new Promise((r) => setTimeout(r, 500));
    }
    throw new WharfError("TIMEOUT", `could not join ${peer}: ${last}`);
  }

  /** Tells the transport every member's addresses (from the replicated state). */
  refreshPeers(): void {
    for (const [id, m] of this.node.state.members) this.host.setPeerAddrs(id, m.addrs);
  }

  /**
   * The leader's upkeep: record our own addresses, promote learners while
   * there are fewer voters than wanted, replace voters that stopped
   * answering by live learners.
   */
  private async maintain(): Promise<void> {
    this.refreshPeers();
    const st = this.node.status();
    if (st.lead !== NONE) this.leaderSeenAt = Date.now();
    else if (!this.rejoining && !this.leaving && Date.now() - this.leaderSeenAt > REJOIN_AFTER_TICKS * (this.opts.tickMs ?? 100)) {
      this.rejoining = this.askToRejoin().finally(() => {
        this.rejoining = undefined;
        this.leaderSeenAt = Date.now();
      });
    }
    if (st.role !== "leader") return;
    const signal = AbortSignal.timeout(5000);
    try {
      const self = this.node.state.members.get(this.id);
      if (!self || self.addrs.join() !== this.host.addrs().join()) {
        await this.node.propose({ type: "member", id: this.id, addrs: this.host.addrs() }, signal);
      }
      const want = Math.min(5, this.opts.voters ?? 3);
      const voters = st.confState.voters;
      const caughtUp = (id: string): boolean =>
        this.isAlive(id) && (st.progress.get(id)?.match ?? 0) >= st.commit - 10;
      const learner = st.confState.learners.find(caughtUp);
      if (voters.length < want && learner) {
        await this.node.changeMembership({ type: "addVoter", node: learner }, signal);
        return;
      }
      // A voter silent for long is replaced by a live learner: removed now,
      // the learner promoted on a later round (one change at a time).
      const deadMs = this.opts.deadVoterMs ?? 30_000;
      const dead = voters.find((v) => v !== this.id && this.silentFor(v) > deadMs);
      if (dead && learner) {
        this.opts.log.warn({ voter: dead, replacement: learner }, "replacing a dead voter");
        await this.node.changeMembership({ type: "removeNode", node: dead }, signal);
      }
    } catch (e) {
      if (!(e instanceof WharfError)) this.opts.log.warn({ err: (e as Error).message }, "membership upkeep failed");
    }
  }

  /**
   * Removes this agent from the cluster; resolves once it is out. Asked
   * twice, it is one leave. It goes on however long it takes: a removal
   * proposed during a fault may still be committed by a later leader, and
   * what was asked is then done rather than left unknown. A removed agent
   * may never hear of its own removal (the leader stops writing to it), so
   * between attempts it asks the members whether they still count it.
   * Rejects, and may be asked again, only if the cluster refuses (the last
   * voter).
   */
  leave(): Promise<void> {
    this.leaving ??= this.carryOutLeave().catch((e: unknown) => {
      this.leaving = undefined;
      throw e;
    });
    return this.leaving;
  }

  private async carryOutLeave(): Promise<void> {
    for (;;) {
      if (this.life.signal.aborted) throw new WharfError("SHUTTING_DOWN", "the agent stopped before it left");
      try {
        await this.node.changeMembership({ type: "removeNode", node: this.id }, AbortSignal.any([this.life.signal, AbortSignal.timeout(5000)]));
        return;
      } catch (e) {
        if (errorCodeOf(e) !== "TIMEOUT") throw e;
      }
      if (await this.removedAccordingToPeers()) return;
    }
  }

  /** True if a leader among the members answers that its membership no longer holds this agent. */
  private async removedAccordingToPeers(): Promise<boolean> {
    for (const [id, m] of this.node.state.members) {
      if (id === this.id) continue;
      for (const addr of m.addrs) {
        if (this.life.signal.aborted) return false;
        const res = await this.host.join(addr, this.clusterId || undefined, AbortSignal.any([this.life.signal, AbortSignal.timeout(3000)]), true).catch(() => undefined);
        if (res?.ok && res.member === false) {
          this.opts.log.warn({ peer: id }, "removed from the cluster, as asked, without hearing of it: the leader says so");
          return true;
        }
        if (res?.ok) break;
      }
    }
    return false;
  }

  /**
   * An agent removed while it was away (a dead voter replaced, a partition
   * outlived) never hears from a leader again: nobody sends it anything. It
   * asks the members it knows to admit it again, as a join does; a member
   * that still counts it answers at once with no change. Errors only mean
   * that this peer could not help (down, or in a minority too).
   */
  private async askToRejoin(): Promise<void> {
    for (const [id, m] of this.node.state.members) {
      if (id === this.id) continue;
      for (const addr of m.addrs) {
        if (this.life.signal.aborted) return;
        const res = await this.host.join(addr, this.clusterId || undefined, AbortSignal.any([this.life.signal, AbortSignal.timeout(3000)])).catch(() => undefined);
        if (res?.ok) {
          this.opts.log.warn({ peer: id }, "no leader for long: asked to be admitted to the cluster again");
          return;
        }
      }
    }
  }

  /** Milliseconds since `id` was last heard from (since start, if never). */
  silentFor(id: string): number {
    if (id === this.id) return 0;
    return Date.now() - (this.node.lastHeard.get(id) ?? this.startedAt);
  }

  /**
   * Liveness as this agent sees it: heard from within three election
   * timeouts. The leader hears from every member; a follower only from the
   * leader, so elsewhere only the leader's and its own liveness are known.
   */
  isAlive(id: string): boolean {
    return this.silentFor(id) < 30 * (this.opts.tickMs ?? 100);
  }

  async stop(): Promise<void> {
    this.life.abort(new WharfError("SHUTTING_DOWN", "the agent is shutting down"));
    if (this.upkeep) clearInterval(this.upkeep);
    // Downloads stop, and what they leave in the shared store goes with them:
    // only this agent may collect its temp dirs, and one that leaves the
    // cluster never starts again to do it.
    await this.puller.settle(5000);
    const left = await this.layers.collectLeftovers().catch(() => []);
    if (left.length > 0) this.opts.log.warn({ left }, "downloads left temp dirs behind; removed");
    await this.stopMetrics?.();
    if (this.snapshotter) {
      await this.snapshotter.server.close();
      await this.snapshotter.sn.close();
    }
    await this.node.stop();
    await this.host.stop();
    await this.store.close();
    // Connections to registries still busy with a body nobody reads.
    this.registry.close();
  }
}
