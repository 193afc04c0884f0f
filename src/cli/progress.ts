// Pull progress the way `docker pull` shows it: one line per layer. On a
// terminal, a bar per layer redrawn in place; elsewhere (logs, pipes), one
// line each time a layer changes state.

import cliProgress from "cli-progress";
import type { PullEvent, PullSummary } from "../agent/pull.js";

export type { PullEvent, PullSummary };

const LABEL: Record<string, string> = {
  waiting: "Waiting",
  downloading: "Downloading",
  extracting: "Extracting",
  done: "Pull complete",
  present: "Already exists",
  failed: "Failed",
};

function mb(n: number): string {
  return `${(n / 1e6).toFixed(1)}MB`;
}

export class PullProgress {
  private readonly bars = new Map<string, cliProgress.SingleBar>();
  private readonly multi: cliProgress.MultiBar | undefined;
  private readonly last = new Map<string, string>();
  private readonly started = new Map<string, { t: number; done: number }>();

  constructor(private readonly out: NodeJS.WriteStream) {
    if (out.isTTY) {
      this.multi = new cliProgress.MultiBar(
        {
          format: "{id}: {status} {bar} {detail}",
          barsize: 30,
          hideCursor: true,
          clearOnComplete: false,
          stream: out,
          autopadding: true,
        },
        cliProgress.Presets.shades_classic,
      );
    }
  }

  event(e: PullEvent): void {
    if (e.type === "resolved") {
      this.out.write(`${e.reference}: resolved to ${e.manifestDigest}\n`);
      return;
    }
    const id = e.digest.replace(/^sha256:/, "").slice(0, 12);
    const status = LABEL[e.status] ?? e.status;
    const by = e.by && e.status === "downloading" ? ` on ${e.by.slice(-8)}` : "";
    const detail = this.detail(e);
    if (this.multi) {
      let bar = this.bars.get(e.digest);
      if (!bar) {
        bar = this.multi.create(e.total ?? 1, 0, { id, status, detail });
        this.bars.set(e.digest, bar);
      }
      const done = e.status === "done" || e.status === "present" ? (e.total ?? 1) : (e.done ?? 0);
      bar.setTotal(e.total ?? 1);
      bar.update(done, { status: `${status}${by}`, detail: e.error ?? detail });
      return;
    }
    // Plain output: a line per change of state, not per byte.
    const line = `${id}: ${status}${by}${e.error ? `: ${e.error}` : ""}`;
    if (this.last.get(e.digest) !== line) {
      this.last.set(e.digest, line);
      this.out.write(`${line}\n`);
    }
  }

  private detail(e: Extract<PullEvent, { type: "layer" }>): string {
    if (e.status !== "downloading" || e.done === undefined || e.total === undefined) return "";
    const now = Date.now();
    const s = this.started.get(e.digest) ?? { t: now, done: e.done };
    this.started.set(e.digest, s);
    const secs = (now - s.t) / 1000;
    const rate = secs > 0 ? ` ${mb((e.done - s.done) / secs)}/s` : "";
    return `${mb(e.done)}/${mb(e.total)}${rate}`;
  }

  stop(): void {
    this.multi?.stop();
  }

  summary(s: PullSummary): void {
    const fetched = s.layers.filter((l) => l.outcome === "downloaded").length;
    this.out.write(`Digest: ${s.manifestDigest}\n`);
    this.out.write(`Pulled ${s.reference}: ${fetched} of ${s.layers.length} layers downloaded here, ${mb(s.registryBytes)} from the registry\n`);
  }
}
