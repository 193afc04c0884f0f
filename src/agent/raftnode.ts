// The driver of the consensus core inside an agent. It owns the one rule the
// core leaves to its driver: a Ready's writes are durable (one synced LevelDB
// batch) before any of its messages is sent. Everything that touches the
// core happens synchronously on the event loop; only the disk write is
// awaited, and one Ready is in flight at a time.

import { randomUUID } from "node:crypto";
import {
  type ConfChange,
  type Entry,
  type Message,
  type NodeId,
  RawNode,
  type Ready,
  type Status,
  isRaftError,
  sendableBeforePersist,
} from "../../raft/index.js";
import type { LogStore } from "../../store/logstore.js";
import { type ApplyResult, type Command, ClusterState, envelopeSchema } from "../../store/state.js";
import { WharfError } from "../errors.js";

export interface RaftNodeOptions {
  readonly id: NodeId;
  readonly store: LogStore;
  readonly send: (m: Message) => void;
  readonly tickMs?: number;
  readonly electionTicks?: number;
  /** Snapshot and compact the log every this many applied entries. */
  readonly snapshotEvery?: number;
  readonly log: { info(o: object, m: string): void; warn(o: object, m: string): void; error(o: object, m: string): void };
  /** Called after each applied entry (metrics, watchers). */
  readonly onApplied?: (e: Entry, state: ClusterState) => void;
  readonly metrics?: { observeProposal(seconds: number): void; leaderChanged(): void };
}

interface Waiter {
  resolve(r: ApplyResult): void;
  reject(e: Error): void;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export class RaftNode {
  readonly id: NodeId;
  readonly rn: RawNode;
  state: ClusterState;
  private readonly store: LogStore;
  private readonly opts: RaftNodeOptions;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private pending = false;
  private stopped = false;
  private readonly waiters = new Map<string, Waiter>();
  private readonly reads = new Map<string, { index?: number; resolve(): void; reject(e: Error): void }>();
  private readonly appliedWaiters: { index: number; resolve(): void }[] = [];
  private snapshotting = false;
  private lastLeader = "";
  /** When each peer was last heard from (ms since the epoch), for liveness. */
  readonly lastHeard = new Map<NodeId, number>();

  constructor(opts: RaftNodeOptions) {
    this.opts = opts;
    this.id = opts.id;
    this.store = opts.store;
    const snap = opts.store.mem.snapshot();
    this.state = ClusterState.decode(snap.data);
    this.state.applied = snap.meta.index;
    this.rn = new RawNode({
      id: opts.id,
      storage: opts.store.mem,
      electionTick: opts.electionTicks ?? 10,
      // A heartbeat every 2 ticks: 5 to 10 of them within an election
      // timeout. Commits reach the followers by appends, not heartbeats;
      // every tick, a 10-host pull spent 0.6 to 0.8 CPU-seconds more on them
      // (on 2 cores), and ended no sooner.
      heartbeatTick: 2,
      // Learners (every member past the first few voters) hear every 5th
      // heartbeat, every 10 ticks: well within the 30 that count them alive.
      learnerHeartbeatEvery: 5,
      // A burst of proposals goes to each follower as one append, not one per entry.
      mergeMessages: true,
      random: Math.random,
      maxSizePerMsg: 1 << 20,
      maxInflightMsgs: 256,
    });
  }

  start(): void {
    const tickMs = this.opts.tickMs ?? 100;
    this.timer = setInterval(() => {
      this.rn.tick();
      this.kick();
    }, tickMs);
    this.kick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    const err = new WharfError("SHUTTING_DOWN", "the agent is shutting down");
    for (const w of this.waiters.values()) w.reject(err);
    for (const r of this.reads.values()) r.reject(err);
    this.waiters.clear();
    this.reads.clear();
    while (this.running) await new Promise((r) => setTimeout(r, 5));
  }

  /** A message from a peer. */
  step(m: Message): void {
    if (this.stopped) return;
    this.lastHeard.set(m.from, Date.now());
    this.rn.step(m);
    this.kick();
  }

  status(): Status {
    return this.rn.status();
  }

  /** Proposes a command; resolves once it is applied here. */
  propose(cmd: Command, signal?: AbortSignal): Promise<ApplyResult> {
    const rid = randomUUID();
    const env = envelopeSchema.parse({ rid, at: Date.now(), cmd });
    const t0 = performance.now();
    const done = this.wait(rid, signal, () => this.rn.propose(enc.encode(JSON.stringify(env))));
    const m = this.opts.metrics;
    return m ? done.then((r) => (m.observeProposal((performance.now() - t0) / 1000), r)) : done;
  }

  /**
   * Proposes a membership change; resolves once the configuration applied
   * here shows it. A proposal can be lost (a follower forwards it to a
   * leader that dies, a new leader refuses it while a change is pending), so
   * it is proposed again until it shows or `signal` aborts (TIMEOUT).
   */
  async changeMembership(cc: ConfChange, signal?: AbortSignal): Promise<void> {
    const done = (): boolean => {
      const cs = this.status().confState;
      if (cc.type === "addVoter") return cs.voters.includes(cc.node);
      if (cc.type === "addLearner") return cs.learners.includes(cc.node) || cs.voters.includes(cc.node);
      return !cs.voters.includes(cc.node) && !cs.learners.includes(cc.node);
    };
    const late = (): WharfError => new WharfError("TIMEOUT", `membership change ${cc.type} ${cc.node} not applied in time (no quorum?)`);
    while (!done()) {
      if (signal?.aborted) throw late();
      try {
        this.call(() => this.rn.proposeConfChange(cc));
      } catch (e) {
        // No leader yet, or a change still pending: try again shortly.
        if (!(e instanceof WharfError) || (e.code !== "NO_LEADER" && e.code !== "BUSY")) throw e;
      }
      const round = AbortSignal.any([AbortSignal.timeout(30 * (this.opts.tickMs ?? 100)), ...(signal ? [signal] : [])]);
      await this.waitApplied(this.rn.raft.log.lastIndex(), round).catch(() => {});
      if (!done()) {
        await new Promise<void>((resolve, reject) => {
          const t = setTimeout(resolve, 2 * (this.opts.tickMs ?? 100));
          signal?.addEventListener("abort", () => (clearTimeout(t), reject(late())), { once: true });
        });
      }
    }
  }

  /** Resolves once a linearizable read of the local state is allowed. */
  linearizableRead(signal?: AbortSignal): Promise<void> {
    const ctx = `${this.id}:${randomUUID()}`;
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        this.reads.delete(ctx);
        reject(new WharfError("TIMEOUT", "read timed out (no quorum?)"));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.reads.set(ctx, {
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject,
      });
      try {
        this.rn.readIndex(ctx);
      } catch (e) {
        this.reads.delete(ctx);
        reject(this.mapError(e));
        return;
      }
      this.kick();
    });
  }

  /**
   * Resolves once every entry this node's own log holds as committed (when
   * called) is applied: after a restart, the state it had, without a leader.
   */
  appliedLocalCommits(signal?: AbortSignal): Promise<void> {
    return this.waitApplied(this.rn.raft.log.committed, signal);
  }

  private waitApplied(index: number, signal?: AbortSignal): Promise<void> {
    if (this.state.applied >= index) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const w = { index, resolve };
      this.appliedWaiters.push(w);
      signal?.addEventListener(
        "abort",
        () => {
          const i = this.appliedWaiters.indexOf(w);
          if (i >= 0) this.appliedWaiters.splice(i, 1);
          reject(new WharfError("TIMEOUT", "not applied in time (no quorum?)"));
        },
        { once: true },
      );
    });
  }

  private wait(rid: string, signal: AbortSignal | undefined, submit: () => void): Promise<ApplyResult> {
    return new Promise<ApplyResult>((resolve, reject) => {
      if (signal?.aborted) return reject(new WharfError("TIMEOUT", "aborted"));
      const onAbort = (): void => {
        this.waiters.delete(rid);
        reject(new WharfError("TIMEOUT", "proposal not applied in time (no quorum?)"));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiters.set(rid, {
        resolve: (r) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(r);
        },
        reject,
      });
      try {
        submit();
      } catch (e) {
        this.waiters.delete(rid);
        signal?.removeEventListener("abort", onAbort);
        reject(this.mapError(e));
        return;
      }
      this.kick();
    });
  }

  private call(f: () => void): void {
    try {
      f();
    } catch (e) {
      throw this.mapError(e);
    }
    this.kick();
  }

  private mapError(e: unknown): Error {
    if (isRaftError(e, "PROPOSAL_DROPPED")) return new WharfError("NO_LEADER", e.message);
    if (isRaftError(e, "CONF_CHANGE_PENDING")) return new WharfError("BUSY", e.message);
    if (isRaftError(e, "INVALID_CONF_CHANGE")) return new WharfError("INVALID_ARGUMENT", e.message);
    return e as Error;
  }

  /** Schedules the Ready loop; at most one runs at a time. */
  private kick(): void {
    if (this.running) {
      this.pending = true;
      return;
    }
    if (!this.rn.hasReady() || this.stopped) return;
    this.running = true;
    void this.readyLoop().finally(() => {
      this.running = false;
    });
  }

  private async readyLoop(): Promise<void> {
    try {
      do {
        this.pending = false;
        while (!this.stopped && this.rn.hasReady()) await this.handleReady(this.rn.ready());
      } while (this.pending && !this.stopped);
    } catch (e) {
      // A failed disk write leaves the core ahead of the disk: the only safe
      // answer is to stop and let a restart reload what is durable.
      this.opts.log.error({ err: (e as Error).message }, "raft storage failed; stopping");
      this.stopped = true;
      process.exitCode = 1;
      process.kill(process.pid, "SIGTERM");
    }
  }

  private async handleReady(rd: Ready): Promise<void> {
    if (rd.softState && rd.softState.leader !== this.lastLeader) {
      if (rd.softState.leader !== "") this.opts.metrics?.leaderChanged();
      this.lastLeader = rd.softState.leader;
      this.opts.log.info({ leader: rd.softState.leader, role: rd.softState.role, term: this.rn.raft.term }, "leader changed");
      // A read that asked a leader which is gone never gets its answer: ask
      // the new one (a read index is only ever served by a current leader).
      if (rd.softState.leader !== "") {
        for (const [ctx, r] of this.reads) {
          if (r.index !== undefined) continue;
          try {
            this.rn.readIndex(ctx);
          } catch {
            // No leader to ask after all: the read's own deadline decides.
          }
        }
        this.kick();
      }
    }
    // A leader's appends go out while its own write is under way.
    for (const m of rd.messages) if (sendableBeforePersist(m)) this.opts.send(m);
    if (rd.snapshot || rd.entries.length > 0 || rd.hardState) {
      await this.store.persist({
        ...(rd.hardState ? { hardState: rd.hardState } : {}),
        entries: rd.entries,
        ...(rd.snapshot ? { snapshot: rd.snapshot } : {}),
        sync: rd.mustSync,
      });
    }
    if (rd.snapshot) {
      const hook = this.state.onLayer;
      this.state = ClusterState.decode(rd.snapshot.data);
      this.state.onLayer = hook;
      this.state.applied = rd.snapshot.meta.index;
    }
    for (const m of rd.messages) if (!sendableBeforePersist(m)) this.opts.send(m);
    for (const e of rd.committedEntries) this.apply(e);
    for (const rs of rd.readStates) {
      const r = this.reads.get(rs.context);
      if (r) r.index = rs.index;
    }
    this.releaseReads();
    this.rn.advance(rd);
    await this.maybeSnapshot();
  }

  private apply(e: Entry): void {
    if (e.index <= this.state.applied) return;
    if (e.type === "normal" && e.data.length > 0) {
      let env;
      try {
        env = envelopeSchema.parse(JSON.parse(dec.decode(e.data)));
      } catch (err) {
        // Every agent skips the same bad entry: the state stays the same everywhere.
        this.opts.log.warn({ index: e.index, err: (err as Error).message }, "skipping a malformed log entry");
        this.state.applied = e.index;
        return;
      }
      const r = this.state.apply(e.index, env);
      const w = this.waiters.get(env.rid);
      if (w) {
        this.waiters.delete(env.rid);
        w.resolve(r);
      }
    } else {
      if (e.type === "conf") {
        const cc = JSON.parse(dec.decode(e.data)) as ConfChange;
        if (cc.type === "removeNode") this.state.removeMember(cc.node);
        // Admitted again (the same identity rejoining): its commands count again.
        else this.state.departed.delete(cc.node);
      }
      this.state.applied = e.index;
    }
    this.opts.onApplied?.(e, this.state);
    while (this.appliedWaiters.length > 0) {
      const i = this.appliedWaiters.findIndex((w) => w.index <= this.state.applied);
      if (i < 0) break;
      this.appliedWaiters.splice(i, 1)[0]!.resolve();
    }
  }

  private releaseReads(): void {
    for (const [ctx, r] of this.reads) {
      if (r.index !== undefined && this.state.applied >= r.index) {
        this.reads.delete(ctx);
        r.resolve();
      }
    }
  }

  private async maybeSnapshot(): Promise<void> {
    const every = this.opts.snapshotEvery ?? 10_000;
    const snapIndex = this.store.mem.snapshot().meta.index;
    if (this.snapshotting || this.state.applied - snapIndex < every) return;
    this.snapshotting = true;
    try {
      await this.store.snapshot(this.state.applied, this.rn.raft.confState(), this.state.encode(), Math.min(1000, every));
    } finally {
      this.snapshotting = false;
    }
  }
}
