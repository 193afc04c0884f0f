// Pulling an image into the shared store: resolve the reference, then for
// each layer either find it present or download, verify and extract it, and
// finally record that this agent holds the image.
//
// Layers run on a fixed number of pull workers per agent; a second request
// for a layer already in flight here waits for that one (a watcher) instead
// of downloading it twice.

import { rm } from "node:fs/promises";
import type { Logger } from "pino";
import type { ImageRecord } from "../../store/state.js";
import type { Command } from "../../store/state.js";
import { WharfError, errorCodeOf } from "../errors.js";
import { extractLayer } from "../layers/extract.js";
import type { LayerStore } from "../layers/store.js";
import { type LayerDescriptor, type Platform, type RegistryClient, type ResolvedImage } from "../registry/client.js";
import { formatReference, parseReference } from "../registry/reference.js";
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
}

interface LayerOutcome {
  outcome: "downloaded" | "waited" | "present";
  by: string;
  /** Bytes this download fetched from the registry (less than the size when it resumed). */
  fetched: number;
}

/** A counting semaphore: the agent's pull workers. */
class Workers {
  private busy = 0;
  private readonly queue: (() => void)[] = [];
  constructor(private readonly n: number) {}

  async run<T>(signal: AbortSignal, f: () => Promise<T>): Promise<T> {
    if (this.busy >= this.n) {
      await new Promise<void>((resolve, reject) => {
        const go = (): void => {
          signal.removeEventListener("abort", stop);
          resolve();
        };
        const stop = (): void => {
          this.queue.splice(this.queue.indexOf(go), 1);
          reject(signal.reason as Error);
        };
        this.queue.push(go);
        signal.addEventListener("abort", stop, { once: true });
      });
    } else this.busy++;
    try {
      return await f();
    } finally {
      const next = this.queue.shift();
      if (next) next();
      else this.busy--;
    }
  }
}

export interface PullerOptions {
  readonly id: string;
  readonly node: RaftNode;
  readonly store: LayerStore;
  readonly registry: RegistryClient;
  readonly log: Logger;
  readonly workers?: number;
  readonly platform?: Platform;
  /** Aborted when the agent stops: layer downloads belong to the agent, not to one request. */
  readonly signal: AbortSignal;
}

export class Puller {
  private readonly workers: Workers;
  /** diffID → the download in flight on this agent, with its progress listeners. */
  private readonly inFlight = new Map<string, { done: Promise<LayerOutcome>; listeners: Set<(e: PullEvent) => void> }>();

  constructor(private readonly o: PullerOptions) {
    this.workers = new Workers(o.workers ?? 3);
  }

  async pull(refText: string, opts: { platform?: Platform; signal: AbortSignal; onEvent?: (e: PullEvent) => void }): Promise<PullSummary> {
    const ref = parseReference(refText);
    const emit = opts.onEvent ?? (() => {});
    const img = await this.o.registry.resolve(ref, {
      signal: opts.signal,
      ...((opts.platform ?? this.o.platform) ? { platform: (opts.platform ?? this.o.platform)! } : {}),
    });
    emit({ type: "resolved", reference: img.reference, manifestDigest: img.manifestDigest, layers: img.layers.map((l) => ({ digest: l.digest, size: l.size })) });
    await this.o.store.putBlob(img.manifestDigest, img.manifest);
    await this.o.store.putBlob(img.configDigest, img.config);
    let registryBytes = img.manifest.length + img.config.length;
    const outcomes = await Promise.all(
      img.layers.map(async (l) => {
        try {
          const r = await this.layer(img, l, opts.signal, emit);
          registryBytes += r.fetched;
          return r;
        } catch (e) {
          emit({ type: "layer", digest: l.digest, status: "failed", error: (e as Error).message });
          throw new WharfError(errorCodeOf(e), `${img.reference}: layer ${l.digest}: ${(e as Error).message}`);
        }
      }),
    );
    await this.propose(
      {
        type: "image.hold",
        ref: img.reference,
        holder: this.o.id,
        manifestDigest: img.manifestDigest,
        configDigest: img.configDigest,
        platform: img.platform,
        layers: img.layers.map((l) => l.diffID),
      },
      opts.signal,
    );
    return {
      reference: img.reference,
      manifestDigest: img.manifestDigest,
      layers: img.layers.map((l, i) => ({ digest: l.digest, size: l.size, outcome: outcomes[i]!.outcome, by: outcomes[i]!.by })),
      registryBytes,
    };
  }

  /** One layer of a pull: present, joined to the download in flight here, or downloaded. */
  private async layer(img: ResolvedImage, l: LayerDescriptor, signal: AbortSignal, emit: (e: PullEvent) => void): Promise<LayerOutcome> {
    const st = this.o.node.state.layers.get(l.diffID);
    if (st?.state === "present" && (await this.o.store.hasLayer(l.diffID))) {
      emit({ type: "layer", digest: l.digest, status: "present", total: l.size });
      return { outcome: "present", by: "", fetched: 0 };
    }
    if (st?.state === "deleting") {
      throw new WharfError("BUSY", `layer ${l.diffID} is being deleted; pull again once it is gone`);
    }
    let job = this.inFlight.get(l.diffID);
    if (job) {
      // A watcher: progress of the download in flight, and its outcome.
      job.listeners.add(emit);
      try {
        const r = await abortable(job.done, signal);
        return { outcome: "waited", by: r.by, fetched: 0 };
      } finally {
        job.listeners.delete(emit);
      }
    }
    const listeners = new Set([emit]);
    const fanout = (e: PullEvent): void => {
      for (const f of listeners) f(e);
    };
    job = { done: this.download(img, l, fanout), listeners };
    this.inFlight.set(l.diffID, job);
    try {
      return await job.done;
    } finally {
      this.inFlight.delete(l.diffID);
    }
  }

  private async download(img: ResolvedImage, l: LayerDescriptor, emit: (e: PullEvent) => void): Promise<LayerOutcome> {
    const signal = this.o.signal;
    emit({ type: "layer", digest: l.digest, status: "waiting", total: l.size });
    return this.workers.run(signal, async () => {
      const store = this.o.store;
      let fetched = 0;
      let unpacked = 0;
      if (await store.hasLayer(l.diffID)) {
        // Renamed into place by an earlier run that died before recording it:
        // a rename only ever publishes a complete, verified layer.
        this.o.log.info({ layer: l.diffID }, "layer found in the store; recording it");
      } else {
        const tmp = await store.tempDir("extract");
        try {
          let last = 0;
          const blob = this.o.registry.openBlob(img.repository, l, {
            partialFile: store.partialPath(l.digest),
            signal,
            onProgress: (p) => {
              fetched = p.fromNetwork;
              const now = Date.now();
              if (now - last >= 100 || p.done === p.total) {
                last = now;
                emit({ type: "layer", digest: l.digest, status: p.done === p.total ? "extracting" : "downloading", done: p.done, total: p.total });
              }
            },
          });
          ({ bytes: unpacked } = await extractLayer(blob, { dest: tmp, compression: l.compression, expectedDiffID: l.diffID, signal }));
          await store.commitLayer(tmp, l.diffID);
        } catch (e) {
          await store.discard(tmp);
          this.o.log.warn({ image: img.reference, layer: l.digest, code: errorCodeOf(e), err: (e as Error).message }, "layer pull failed");
          throw e;
        }
        await rm(store.partialPath(l.digest), { force: true });
      }
      await this.propose({ type: "layer.present", diffID: l.diffID, blob: l.digest, size: l.size, unpacked }, signal);
      emit({ type: "layer", digest: l.digest, status: "done", done: l.size, total: l.size, by: this.o.id });
      return { outcome: "downloaded" as const, by: this.o.id, fetched };
    });
  }

  /** Releases this agent's hold on an image and deletes the layers nobody references any more. */
  async remove(refText: string, signal: AbortSignal): Promise<{ reference: string; deletedLayers: string[] }> {
    const reference = formatReference(parseReference(refText));
    const img: ImageRecord | undefined = this.o.node.state.images.get(reference);
    if (!img || !img.holders.includes(this.o.id)) throw new WharfError("NOT_FOUND", `this agent holds no image ${reference}`);
    await this.propose({ type: "image.release", ref: reference, holder: this.o.id }, signal);
    const deleted: string[] = [];
    for (const d of img.layers) {
      if (this.o.node.state.referenced(d) !== undefined) continue;
      const r = await this.o.node.propose({ type: "layer.delete", diffID: d }, signal);
      if (!r.ok) continue; // referenced again meanwhile, or already gone
      await this.o.store.deleteLayer(d);
      await this.propose({ type: "layer.deleted", diffID: d }, signal);
      deleted.push(d);
    }
    return { reference, deletedLayers: deleted };
  }

  private async propose(cmd: Command, signal: AbortSignal): Promise<void> {
    const r = await this.o.node.propose(cmd, signal);
    if (!r.ok) throw new WharfError(r.code, r.error);
  }
}

function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const stop = (): void => reject(signal.reason as Error);
    signal.addEventListener("abort", stop, { once: true });
    p.then(
      (v) => (signal.removeEventListener("abort", stop), resolve(v)),
      (e: unknown) => (signal.removeEventListener("abort", stop), reject(e as Error)),
    );
  });
}
