// Cooperative pulls (Wharf's protocol on Raft).
//
// For each layer of an image the agent proposes a claim, unless its applied
// state already shows another master pulling it under a live lease (it then
// waits for that commit without a proposal); the replicated state answers
// present, pulled by another agent (we wait for its commit, woken by apply
// events), queued (no worker free here: an idle agent anywhere may take it),
// or master with a fencing attempt. A master downloads into the shared
// store (resuming a partial blob left by an earlier master), extracts into a
// temp dir, renames it into place, and commits with its attempt; a master
// whose lease ran out cannot commit. A second local request for a layer this
// agent is pulling joins it as a watcher.
//
// Leases: every agent holding transfers renews one lease per agent (not per
// layer) a few times per lease period. A master that could not renew in time
// stops writing before anyone else may take its transfer over (self-fencing,
// with the attempt check at commit and the digest check of the blob as
// backstops).

import { EventEmitter } from "node:events";
import { rm } from "node:fs/promises";
import type { Logger } from "pino";
import type { ApplyResult, ClaimAnswer, Command, LayerSource } from "../../store/state.js";
import { abortable, linked, withLinked } from "../abortable.js";
import { WharfError, asErrorCode, errorCodeOf } from "../errors.js";
import { extractLayer } from "../layers/extract.js";
import type { LayerStore } from "../layers/store.js";
import type { Platform, RegistryClient, ResolvedImage } from "../registry/client.js";
import { LAYER_MEDIA_TYPES } from "../registry/manifest.js";
import { formatReference, formatRepository, parseReference } from "../registry/reference.js";
import type { RaftNode } from "./raftnode.js";

export type LayerStatus = "waiting" | "downloading" | "extracting" | "done" | "present" | "failed";

export type PullEvent =
  | { type: "resolved"; reference: string; manifestDigest: string; layers: { digest: string; size: number }[] }
  | { type: "layer"; digest: string; status: LayerStatus; done?: number; total?: number; by?: string; error?: string };

export interface PullSummary {
  reference: string;
  manifestDigest: string;
  layers: { digest: string; size: number; outcome: "downloaded" | "waited" | "present"; by: string }[];
  registryBytes: number;
  seconds: number;
}

interface LayerOutcome {
  outcome: "downloaded" | "waited" | "present";
  by: string;
  /** Bytes this agent fetched from the registry for it (less than the size when it resumed). */
  fetched: number;
}

/** Progress of a master's download, gossiped to every agent (a hint: never decides anything). */
export interface ProgressHint {
  diffID: string;
  blob: string;
  agent: string;
  done: number;
  total: number;
}

/**
 * A master stops this long before its lease may end (its lease counts from
 * when it proposed the renewal, never later than the entry's own time); a
 * taker waits as long past the end, for clock skew between hosts.
 */
const FENCE_MARGIN_MS = 150;

/**
 * A master's lease. It fences itself when no renewal (one every third of a
 * lease) has committed for about two thirds of a lease: 5 s rides out the
 * Raft rounds of a loaded machine (10 hosts on 2 cores: rounds of over a
 * second fenced masters with 2 s leases, and the bytes the registry had
 * already sent were fetched twice), and a dead master's transfer is taken
 * over 5 s after its last renewal.
 */
export const DEFAULT_LEASE_MS = 5000;
const TAKEOVER_MARGIN_MS = 250;

/** Errors that are the layer's own fault: every other agent would fail the same way. */
const CONTENT_ERRORS = new Set(["DIGEST_MISMATCH", "INVALID_LAYER", "INVALID_MANIFEST", "NOT_FOUND", "UNAUTHORIZED", "DENIED"]);

export interface PullOptions {
  platform?: Platform;
  signal: AbortSignal;
  onEvent?: (e: PullEvent) => void;
  alongside?: (img: ResolvedImage, present: (i: number) => Promise<void>) => Promise<void>;
}

export interface PullerOptions {
  readonly id: string;
  readonly node: RaftNode;
  readonly store: LayerStore;
  readonly registry: RegistryClient;
  readonly log: Logger;
  readonly workers?: number;
  readonly platform?: Platform;
  /** A master's lease (ms); renewed three times per period. */
  readonly leaseMs?: number;
  /** How long a proposal may wait for a quorum before the pull fails. */
  readonly quorumTimeoutMs?: number;
  /** Gossip of progress hints, all of this agent's downloads in one message (optional: pulls work without it). */
  readonly publish?: (hs: readonly ProgressHint[]) => void;
  /** Aborted when the agent stops: downloads belong to the agent, not to one request. */
  readonly signal: AbortSignal;
}

interface Job {
  readonly attempt: number;
  readonly abort: AbortController;
  readonly done: Promise<LayerOutcome>;
}

export class Puller {
  private readonly workers: number;
  private free: number;
  private readonly leaseMs: number;
  /** diffID → the download this agent is master of. */
  private readonly jobs = new Map<string, Job>();
  /** Wake-ups: "layer:<diffID>" on apply events and hints, "worker" when a worker frees. */
  private readonly events = new EventEmitter();
  /** Local time until which our lease is surely valid (proposal time + lease). */
  private fenceUntil = 0;
  private renewer: NodeJS.Timeout | undefined;
  /** Progress of this agent's downloads, gossiped with each lease renewal. */
  private readonly progress = new Map<string, ProgressHint>();
  private stealing = false;
  /** This agent's claims not answered yet. */
  private readonly claiming = new Set<Promise<ClaimAnswer>>();

  constructor(private readonly o: PullerOptions) {
    this.workers = o.workers ?? 3;
    this.free = this.workers;
    this.leaseMs = o.leaseMs ?? DEFAULT_LEASE_MS;
    this.events.setMaxListeners(0);
    o.node.state.onLayer = (d) => this.changed(d);
    o.signal.addEventListener("abort", () => {
      if (this.renewer) clearInterval(this.renewer);
      for (const j of this.jobs.values()) j.abort.abort(o.signal.reason);
    });
  }

  /**
   * Waits (at most `ms`) until this agent's downloads, aborted with the
   * agent, have stopped and removed their temp dirs: an agent that leaves
   * the cluster leaves nothing in the shared store that only it may collect.
   */
  async settle(ms: number): Promise<void> {
    const all = Promise.allSettled([...this.jobs.values()].map((j) => j.done));
    await Promise.race([all, new Promise((r) => setTimeout(r, ms).unref())]);
  }

  /** A progress hint from another agent's master. */
  hint(h: ProgressHint): void {
    this.events.emit(`hint:${h.diffID}`, h);
  }

  private changed(diffID: string): void {
    // A download of ours whose transfer now belongs to another attempt stops at once.
    const job = this.jobs.get(diffID);
    const st = this.o.node.state;
    const t = st.transfers.get(diffID);
    if (job && st.layers.get(diffID)?.state !== "present" && (!t || t.owner !== this.o.id || t.attempt !== job.attempt)) {
      job.abort.abort(new StaleAttempt(diffID));
    }
    this.events.emit(`layer:${diffID}`);
    // A transfer that went back to the queue, or a deletion done: idle workers may take it.
    queueMicrotask(() => void this.steal());
  }

  /**
   * Pulls an image: every layer present in the shared store, then held by
   * this agent. `alongside` (e.g. registering the image in a containerd)
   * starts once the image is resolved and runs beside the layer pulls:
   * `present(i)` resolves once layer i is present for this pull (and
   * rejects if the pull fails). The summary is returned once the image is
   * held and `alongside` is done; either failing fails the pull.
   */
  pull(refText: string, opts: PullOptions): Promise<PullSummary> {
    return withLinked([opts.signal, this.o.signal], (signal) => this.pullWith(refText, opts, signal));
  }

  private async pullWith(refText: string, opts: PullOptions, signal: AbortSignal): Promise<PullSummary> {
    const t0 = performance.now();
    const ref = parseReference(refText);
    const emit = opts.onEvent ?? (() => {});
    const platform = opts.platform ?? this.o.platform;
    const img = await this.o.registry.resolve(ref, { signal, ...(platform ? { platform } : {}) });
    emit({ type: "resolved", reference: img.reference, manifestDigest: img.manifestDigest, layers: img.layers.map((l) => ({ digest: l.digest, size: l.size })) });
    // Written beside the layer pulls (two fsyncs each, hosts all at once on
    // one shared store); the image is held only once they are in place.
    const stored = Promise.all([this.o.store.putBlob(img.manifestDigest, img.manifest), this.o.store.putBlob(img.configDigest, img.config)]);
    stored.catch(() => {});
    const repository = formatRepository(img.repository);
    const present = img.layers.map(() => Promise.withResolvers<void>());
    for (const p of present) p.promise.catch(() => {});
    const beside = opts.alongside?.(img, (i) => present[i]!.promise);
    const held = this.holdImage(img, repository, signal, emit, present, stored).catch((e: unknown) => {
      // Whatever `alongside` still waits for will not come.
      for (const p of present) p.reject(e);
      throw e;
    });
    const [h, b] = await Promise.allSettled([held, beside]);
    if (h.status === "rejected") throw h.reason;
    if (b.status === "rejected") throw b.reason;
    const { outcomes, fetched } = h.value;
    return {
      reference: img.reference,
      manifestDigest: img.manifestDigest,
      layers: img.layers.map((l, i) => ({ digest: l.digest, size: l.size, outcome: outcomes[i]!.outcome, by: outcomes[i]!.by })),
      registryBytes: img.manifest.length + img.config.length + fetched,
      seconds: (performance.now() - t0) / 1000,
    };
  }

  /** Every layer of `img` present and its manifest and config `stored`, then the image held by this agent. */
  private async holdImage(
    img: ResolvedImage,
    repository: string,
    signal: AbortSignal,
    emit: (e: PullEvent) => void,
    present: readonly PromiseWithResolvers<void>[],
    stored: Promise<unknown>,
  ): Promise<{ outcomes: LayerOutcome[]; fetched: number }> {
    let outcomes: LayerOutcome[] = [];
    let fetched = 0;
    // Holding the image pins its layers. A layer found present may be
    // deleted (its last holder removed it) before our hold is applied: the
    // hold is then refused, and what is no longer present is claimed again.
    // Each refusal is a deletion that happened in between, and a deletion
    // needs a layer nobody holds, so rounds are bounded by the deletions one
    // rmi can make: one per layer.
    const rounds = img.layers.length + 2;
    for (let round = 1; ; round++) {
      const before = outcomes;
      const order = this.spread(img.layers.length);
      const settled = await Promise.all(
        order.map(async (i) => {
          const l = img.layers[i]!;
          const source = { repository, blob: l.digest, size: l.size, mediaType: l.mediaType };
          // An earlier round's outcome says more than "present" (we pulled it, or waited).
          const earlier = before[i];
          // Present as far as this agent knows: no claim, the hold below checks it.
          const known = this.o.node.state.layers.get(l.diffID);
          if (known?.state === "present") {
            present[i]!.resolve();
            return earlier ?? this.found(l.digest, l.size, known.by, "present", emit);
          }
          try {
            const r = await this.layer(l.diffID, source, signal, emit);
            present[i]!.resolve();
            fetched += r.fetched;
            return r.outcome === "present" && earlier ? earlier : r;
          } catch (e) {
            const err = new WharfError(errorCodeOf(e), `${img.reference}: layer ${l.digest}: ${(e as Error).message}`);
            present[i]!.reject(err);
            emit({ type: "layer", digest: l.digest, status: "failed", error: (e as Error).message });
            throw err;
          }
        }),
      );
      outcomes = [];
      order.forEach((i, k) => (outcomes[i] = settled[k]!));
      await stored;
      const held = await this.send(
        {
          type: "image.hold",
          ref: img.reference,
          holder: this.o.id,
          manifestDigest: img.manifestDigest,
          configDigest: img.configDigest,
          platform: img.platform,
          layers: img.layers.map((l) => l.diffID),
        },
        signal,
      );
      if (held.ok) return { outcomes, fetched };
      if (held.code !== "BUSY" || round >= rounds) throw new WharfError(held.code, `${img.reference}: ${held.error}`);
      this.o.log.info({ image: img.reference, why: held.error }, "a layer went away before the image was held; claiming again");
    }
  }

  /** Makes a layer present in the shared store (cooperatively), for a snapshot that needs it. */
  async ensureLayer(diffID: string, source: LayerSource, signal: AbortSignal): Promise<LayerOutcome> {
    return withLinked([signal, this.o.signal], (s) => this.layer(diffID, source, s, () => {}));
  }

  /** One layer wanted by a local pull, until it is present (or failed for good). */
  private async layer(diffID: string, source: LayerSource, signal: AbortSignal, emit: (e: PullEvent) => void): Promise<LayerOutcome> {
    const digest = source.blob;
    const onHint = (h: ProgressHint): void =>
      emit({ type: "layer", digest, status: h.done >= h.total ? "extracting" : "downloading", done: h.done, total: h.total, by: h.agent });
    this.events.on(`hint:${diffID}`, onHint);
    const startedAt = Date.now();
    let waited = false;
    let deferred = false;
    // How a layer found present came: this agent's own master may have
    // brought it while this call asked (an idle worker took the transfer
    // over, and its job ended before this call looked for it): downloaded
    // here, as a watcher of that job would say.
    const outcomeOf = (by: string): LayerOutcome["outcome"] => (by === this.o.id ? "downloaded" : waited ? "waited" : "present");
    try {
      emit({ type: "layer", digest, status: "waiting", total: source.size });
      for (;;) {
        signal.throwIfAborted();
        const local = this.jobs.get(diffID);
        if (local) {
          // A watcher of this agent's own download (this agent is its master).
          const r = await abortable(local.done, signal).catch((e: unknown) => {
            if (e instanceof StaleAttempt || this.o.node.state.layers.get(diffID)?.state === "present") return undefined;
            throw e;
          });
          if (r) {
            emit({ type: "layer", digest, status: "done", total: source.size, by: this.o.id });
            return { outcome: "downloaded", by: this.o.id, fetched: 0 };
          }
          continue;
        }
        // Being pulled by another master with a live lease, as far as this
        // agent has applied: wait without a proposal of our own, and take the
        // commit we see applied as the answer (a claim would only say so, and
        // every agent of a large cluster making two per layer cost the
        // cluster more CPU than the pull). A master that dies is claimed from
        // here once its lease ends.
        const st = this.o.node.state;
        const known = st.layers.get(diffID);
        if (waited && known?.state === "present") return this.found(digest, source.size, known.by, outcomeOf(known.by), emit);
        const pulling = st.transfers.get(diffID);
        if (pulling && pulling.owner !== "" && pulling.owner !== this.o.id && st.leaseValid(pulling.owner, Date.now())) {
          waited = true;
          await this.waitFor(diffID, false, st.leases.get(pulling.owner), signal);
          this.throwIfFailed(diffID, startedAt);
          continue;
        }
        const worker = this.tryWorker();
        if (!worker && !deferred && this.claiming.size > 0) {
          // No worker here: a claim would only queue this agent as a
          // waiter. Every agent of an image pull asks for all its layers
          // at once, each first with its own few: once this agent's first
          // claims are answered, those of the others, made at the same
          // moment, are mostly applied too, and a layer another agent took
          // is waited for above without any proposal. (Ten agents asking
          // for everything made ten claims per layer.)
          deferred = true;
          await abortable(Promise.allSettled([...this.claiming]), signal);
          continue;
        }
        let answer: ClaimAnswer;
        try {
          answer = await this.claim(diffID, source, { queued: !worker }, signal);
        } catch (e) {
          if (worker) this.releaseWorker();
          throw e;
        }
        if (answer.kind === "master") {
          // Master without a free worker here: the transfer was this agent's
          // already (an idle worker of ours took it). It borrows one; master()
          // gives every worker back.
          if (!worker) this.free--;
          const outcome = await this.master(diffID, source, answer.attempt, (e) => emit(e));
          if (outcome) return outcome;
          continue;
        }
        if (worker) this.releaseWorker();
        if (answer.kind === "present") {
          const by = st.layers.get(diffID)?.by ?? "";
          return this.found(digest, source.size, by, outcomeOf(by), emit);
        }
        if (answer.kind === "pulling" || answer.kind === "queued") waited = true;
        if (answer.kind === "deleting" && answer.by === this.o.id) {
          throw new WharfError("BUSY", `layer ${diffID} is being deleted by this agent`);
        }
        // Dummy or queued: wait for an apply event about this layer, a free
        // worker here (queued), or the owner's lease to run out.
        const until = answer.kind === "pulling" || answer.kind === "deleting" ? answer.leaseUntil : undefined;
        await this.waitFor(diffID, answer.kind === "queued", until, signal);
        this.throwIfFailed(diffID, startedAt);
      }
    } finally {
      this.events.off(`hint:${diffID}`, onHint);
    }
  }

  private found(digest: string, size: number, by: string, outcome: LayerOutcome["outcome"], emit: (e: PullEvent) => void): LayerOutcome {
    emit({ type: "layer", digest, status: outcome === "present" ? "present" : "done", total: size, by });
    return { outcome, by, fetched: 0 };
  }

  /** The layer failed for good (its content's fault) since this wait began: every waiter fails with it. */
  private throwIfFailed(diffID: string, startedAt: number): void {
    const f = this.o.node.state.failures.get(diffID);
    if (f && f.at >= startedAt - 1000 && !this.o.node.state.transfers.has(diffID)) throw new WharfError(asErrorCode(f.code), f.message);
  }

  private claim(diffID: string, source: LayerSource, how: { queued: boolean; steal?: boolean }, signal: AbortSignal): Promise<ClaimAnswer> {
    const sent = Date.now();
    const answer = this.proposeFor(
      { type: "layer.claim", diffID, agent: this.o.id, source, queued: how.queued, ...(how.steal ? { steal: true } : {}), leaseMs: this.leaseMs },
      signal,
    ).then((r) => {
      if (r.kind === "master") this.extendFence(sent);
      return r;
    });
    this.claiming.add(answer);
    const settled = (): void => void this.claiming.delete(answer);
    answer.then(settled, settled);
    return answer;
  }

  /** Waits for a change of the layer, a free worker (if `forWorker`), or a lease end (+ margin for clock skew). */
  private waitFor(diffID: string, forWorker: boolean, leaseUntil: number | undefined, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const done = (): void => {
        this.events.off(`layer:${diffID}`, done);
        this.events.off("worker", done);
        signal.removeEventListener("abort", stop);
        clearTimeout(timer);
        resolve();
      };
      const stop = (): void => {
        done();
        reject(signal.reason as Error);
      };
      this.events.on(`layer:${diffID}`, done);
      if (forWorker) this.events.on("worker", done);
      signal.addEventListener("abort", stop, { once: true });
      // Without any event, look again after the lease (or now and then: a
      // missed wake-up must not hang a pull).
      const wait = leaseUntil !== undefined ? Math.max(50, leaseUntil - Date.now() + TAKEOVER_MARGIN_MS) : this.leaseMs;
      const timer = setTimeout(done, Math.min(wait, 4 * this.leaseMs));
    });
  }

  /**
   * Runs a download as master (attempt `attempt`) on a worker already
   * reserved. Resolves with the outcome, or undefined when the attempt went
   * stale (someone else took over: the caller claims again).
   */
  private master(diffID: string, source: LayerSource, attempt: number, emit: (e: PullEvent) => void): Promise<LayerOutcome | undefined> {
    const running = this.jobs.get(diffID);
    if (running) {
      // Two claims of this agent for one layer (its own pull and an idle
      // worker) both answered master: one download, the other watches it.
      this.releaseWorker();
      return running.done.then(
        () => {
          emit({ type: "layer", digest: source.blob, status: "done", done: source.size, total: source.size, by: this.o.id });
          return { outcome: "downloaded" as const, by: this.o.id, fetched: 0 };
        },
        () => undefined,
      );
    }
    const abort = new AbortController();
    const done = this.download(diffID, source, attempt, abort.signal, emit);
    const job: Job = { attempt, abort, done };
    this.jobs.set(diffID, job);
    this.ensureRenewer();
    return done
      .then(
        (r) => r as LayerOutcome | undefined,
        (e: unknown) => {
          if (e instanceof StaleAttempt) return undefined;
          throw e;
        },
      )
      .finally(() => {
        this.jobs.delete(diffID);
        this.progress.delete(diffID);
        this.releaseWorker();
      });
  }

  private download(diffID: string, source: LayerSource, attempt: number, signal: AbortSignal, emit: (e: PullEvent) => void): Promise<LayerOutcome> {
    return withLinked([signal, this.o.signal], (fenced) => this.downloadWith(diffID, source, attempt, signal, fenced, emit));
  }

  /** `download`, where `fenced` aborts with the attempt's `signal` or the agent's. */
  private async downloadWith(
    diffID: string,
    source: LayerSource,
    attempt: number,
    signal: AbortSignal,
    fenced: AbortSignal,
    emit: (e: PullEvent) => void,
  ): Promise<LayerOutcome> {
    const store = this.o.store;
    const compression = LAYER_MEDIA_TYPES.get(source.mediaType) ?? "gzip";
    let fetched = 0;
    let unpacked = 0;
    if (await store.hasLayer(diffID)) {
      // Renamed into place by an earlier attempt that died before its commit:
      // a rename only ever publishes a complete, verified layer.
      this.o.log.info({ layer: diffID }, "layer found in the store; committing it");
    } else {
      // A layer whose bytes fail (digest, archive) may have been damaged in
      // transit or by an earlier attempt's partial file: those bytes are
      // never resumed from, and the blob is fetched once more from scratch
      // before the layer itself is blamed.
      for (let tries = 1; ; tries++) {
        const tmp = await store.tempDir("extract");
        const before = fetched;
        // Stops this try's registry request the moment it fails: the transfer
        // is given up below, and a new master must not overlap with us.
        const attemptAbort = new AbortController();
        const request = linked([fenced, attemptAbort.signal]);
        try {
          let last = 0;
          const repo = parseReference(source.repository);
          const blob = this.o.registry.openBlob(repo, { digest: source.blob, size: source.size }, {
            partialFile: store.partialPath(source.blob),
            signal: request.signal,
            onProgress: (p) => {
              fetched = before + p.fromNetwork;
              this.checkFence(diffID);
              const now = Date.now();
              if (now - last >= 200 || p.done === p.total) {
                last = now;
                emit({ type: "layer", digest: source.blob, status: p.done === p.total ? "extracting" : "downloading", done: p.done, total: p.total, by: this.o.id });
                this.progress.set(diffID, { diffID, blob: source.blob, agent: this.o.id, done: p.done, total: p.total });
              }
            },
          });
          ({ bytes: unpacked } = await extractLayer(blob, { dest: tmp, compression, expectedDiffID: diffID, signal: fenced }));
          this.checkFence(diffID);
          await store.commitLayer(tmp, diffID);
          break;
        } catch (e) {
          attemptAbort.abort(e);
          await store.discard(tmp);
          if (e instanceof StaleAttempt || (signal.aborted && signal.reason instanceof StaleAttempt)) throw signal.reason ?? e;
          const code = errorCodeOf(e);
          const content = CONTENT_ERRORS.has(code);
          if (content) await rm(store.partialPath(source.blob), { force: true });
          if (content && tries === 1 && (code === "DIGEST_MISMATCH" || code === "INVALID_LAYER")) {
            this.o.log.warn({ layer: diffID, blob: source.blob, code, err: (e as Error).message }, "layer bytes failed; fetching the blob again from scratch");
            continue;
          }
          this.o.log.warn({ layer: diffID, blob: source.blob, repository: source.repository, code, err: (e as Error).message }, "layer pull failed");
          // The layer's own fault: every waiter fails with it. Otherwise (the
          // registry or this agent failed) the transfer goes back to the queue.
          const error = content ? { code, message: (e as Error).message.slice(0, 2000) } : undefined;
          await this.send({ type: "layer.abort", diffID, agent: this.o.id, attempt, ...(error ? { error } : {}) }, this.o.signal).catch(() => {});
          throw e;
        } finally {
          request.done();
        }
      }
      await rm(store.partialPath(source.blob), { force: true });
    }
    const r = await this.send({ type: "layer.commit", diffID, agent: this.o.id, attempt, unpacked }, this.o.signal);
    if (!r.ok) {
      // Our attempt went stale while we finished: the layer is complete in
      // the store all the same; the current master commits it.
      this.o.log.warn({ layer: diffID, attempt }, "commit refused: attempt is stale");
      throw new StaleAttempt(diffID);
    }
    emit({ type: "layer", digest: source.blob, status: "done", done: source.size, total: source.size, by: this.o.id });
    return { outcome: "downloaded", by: this.o.id, fetched };
  }

  /** Stops a master that may no longer hold its lease (before anyone else may take over). */
  private checkFence(diffID: string): void {
    if (Date.now() > this.fenceUntil - FENCE_MARGIN_MS) {
      const job = this.jobs.get(diffID);
      const e = new StaleAttempt(diffID);
      if (job && !job.abort.signal.aborted) {
        // Worth seeing: the transfer waits for another master (resuming from the partial blob).
        this.o.log.warn({ layer: diffID, attempt: job.attempt, leaseLateMs: Date.now() - (this.fenceUntil - FENCE_MARGIN_MS) }, "lease renewals late: this master fenced itself");
      }
      job?.abort.abort(e);
      throw e;
    }
  }

  private extendFence(sentAt: number): void {
    this.fenceUntil = Math.max(this.fenceUntil, sentAt + this.leaseMs);
  }

  /**
   * One lease renewal for all of this agent's transfers, three times per
   * lease period, while it has any; and one gossip message with the progress
   * of them all (per-chunk hints, relayed by every peer, cost the cluster
   * more CPU than the downloads).
   */
  private ensureRenewer(): void {
    if (this.renewer) return;
    this.renewer = setInterval(() => {
      if (this.jobs.size === 0) {
        clearInterval(this.renewer);
        this.renewer = undefined;
        return;
      }
      if (this.progress.size > 0) this.o.publish?.([...this.progress.values()]);
      const sent = Date.now();
      this.o.node
        .propose({ type: "lease", agent: this.o.id, leaseMs: this.leaseMs }, AbortSignal.timeout(this.leaseMs))
        .then(() => this.extendFence(sent))
        .catch(() => {});
    }, this.leaseMs / 3);
    this.renewer.unref();
  }

  /**
   * The order in which this agent asks for `n` layers: every agent of an
   * image pull asks for all of them at once, and its free workers go to the
   * first it asks for. Starting each agent at its own place (its rank among
   * the members, times its workers) gives the first round of claims a
   * different master for every layer, where the same order everywhere made
   * every agent claim the same few layers and left the rest to be stolen one
   * Raft round at a time.
   */
  spread(n: number): number[] {
    const ids = [...this.o.node.state.members.keys()].sort();
    const rank = Math.max(0, ids.indexOf(this.o.id));
    const start = n === 0 ? 0 : (rank * this.workers) % n;
    return Array.from({ length: n }, (_, k) => (start + k) % n);
  }

  private tryWorker(): boolean {
    if (this.free <= 0) return false;
    this.free--;
    return true;
  }

  private releaseWorker(): void {
    this.free++;
    this.events.emit("worker");
    queueMicrotask(() => void this.steal());
  }

  /**
   * An idle worker takes a transfer no agent is pulling (queued by a busy
   * agent, or orphaned by a master whose lease ran out), oldest first.
   */
  private async steal(): Promise<void> {
    if (this.stealing || this.free <= 0 || this.o.signal.aborted) return;
    const st = this.o.node.state;
    if (this.o.node.status().lead === "") return;
    const now = Date.now();
    const candidates = [...st.transfers]
      .filter(([d, t]) => !this.jobs.has(d) && t.waiters.length > 0 && (t.owner === "" || !st.leaseValid(t.owner, now - TAKEOVER_MARGIN_MS)))
      .sort((a, b) => a[1].since - b[1].since);
    if (candidates.length === 0) return;
    this.stealing = true;
    try {
      for (const [d, t] of candidates) {
        if (!this.tryWorker()) break;
        let answer: ClaimAnswer;
        try {
          answer = await this.claim(d, t.source, { queued: false, steal: true }, this.o.signal);
        } catch {
          this.releaseWorkerQuietly();
          break;
        }
        if (answer.kind !== "master") {
          this.releaseWorkerQuietly();
          continue;
        }
        this.o.log.info({ layer: d, for: t.waiters }, "taking over a waiting transfer");
        void this.master(d, t.source, answer.attempt, () => {}).catch(() => {});
      }
    } finally {
      this.stealing = false;
    }
  }

  private releaseWorkerQuietly(): void {
    this.free++;
  }

  /** Releases this agent's hold on an image and deletes the layers nobody references any more. */
  async remove(refText: string, signal: AbortSignal): Promise<{ reference: string; deletedLayers: string[] }> {
    const reference = formatReference(parseReference(refText));
    const img = this.o.node.state.images.get(reference);
    if (!img || !img.holders.includes(this.o.id)) throw new WharfError("NOT_FOUND", `this agent holds no image ${reference}`);
    await this.propose({ type: "image.release", ref: reference, holder: this.o.id }, signal);
    // All at once: a pull racing this rmi then finds every deletion applied
    // together, and claims what it lost in one more round.
    const unreferenced = [...new Set(img.layers)].filter((d) => this.o.node.state.referenced(d) === undefined);
    const done = await Promise.all(unreferenced.map((d) => this.deleteLayer(d, signal)));
    return { reference, deletedLayers: unreferenced.filter((_, i) => done[i]) };
  }

  /**
   * Deletes an unreferenced layer: `layer.delete` (refused if anything
   * references it), then the directory, then `layer.deleted`. A claim in
   * between waits; it cannot see a half-deleted layer as present.
   */
  private async deleteLayer(diffID: string, signal: AbortSignal): Promise<boolean> {
    const sent = Date.now();
    const r = await this.send({ type: "layer.delete", diffID, agent: this.o.id, leaseMs: this.leaseMs * 5 }, signal);
    if (!r.ok) return false; // referenced again meanwhile, or already gone
    if (Date.now() > sent + this.leaseMs * 5 - FENCE_MARGIN_MS) return false; // too slow: another agent may take it over
    await this.o.store.deleteLayer(diffID);
    const done = await this.send({ type: "layer.deleted", diffID, agent: this.o.id }, signal);
    // Applied twice (a retry): the first one removed the record.
    return done.ok || !this.o.node.state.layers.has(diffID);
  }

  /**
   * Proposes until applied or until the quorum deadline: a proposal lost with
   * a leader that died (or dropped during an election) is proposed again.
   * Every command of the protocol is idempotent for its proposer, so an
   * entry applied twice answers the same.
   */
  private async send(cmd: Command, signal: AbortSignal): Promise<ApplyResult> {
    const deadline = linked([signal], this.o.quorumTimeoutMs ?? 15_000);
    try {
      for (let i = 0; ; i++) {
        const round = linked([deadline.signal], 3000);
        try {
          return await this.o.node.propose(cmd, round.signal);
        } catch (e) {
          const code = errorCodeOf(e);
          if (signal.aborted) throw signal.reason;
          if (code !== "NO_LEADER" && code !== "TIMEOUT") throw e;
          if (deadline.signal.aborted) throw new WharfError("NO_LEADER", `no quorum: the cluster could not record ${cmd.type} in time`);
        } finally {
          round.done();
        }
        await new Promise((r) => setTimeout(r, Math.min(1000, 50 << i)));
      }
    } finally {
      deadline.done();
    }
  }

  private async proposeFor(cmd: Command, signal: AbortSignal): Promise<ClaimAnswer> {
    const r = await this.send(cmd, signal);
    if (!r.ok) throw new WharfError(r.code, r.error);
    if (!r.claim) throw new WharfError("INTERNAL", "a claim applied without an answer");
    return r.claim;
  }

  private async propose(cmd: Command, signal: AbortSignal): Promise<void> {
    const r = await this.send(cmd, signal);
    if (!r.ok) throw new WharfError(r.code, r.error);
  }
}

/** A master's attempt that may have been taken over: it stops and never commits. */
class StaleAttempt extends Error {
  override readonly name = "StaleAttempt";
  constructor(diffID: string) {
    super(`this agent's attempt at ${diffID} may have been taken over`);
  }
}

