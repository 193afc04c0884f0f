/**
 * `p`, or a rejection as soon as `signal` aborts (with `late()` if given,
 * else the signal's reason). `p` itself goes on: this only stops waiting.
 */
export function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined, late?: () => Error): Promise<T> {
  if (!signal) return p;
  const reason = (): Error => (late ? late() : (signal.reason as Error));
  if (signal.aborted) return Promise.reject(reason());
  return new Promise<T>((resolve, reject) => {
    const stop = (): void => reject(reason());
    signal.addEventListener("abort", stop, { once: true });
    p.then(
      (v) => (signal.removeEventListener("abort", stop), resolve(v)),
      (e: unknown) => (signal.removeEventListener("abort", stop), reject(e as Error)),
    );
  });
}

/** A signal that aborts with the first of its sources (or on a timeout), and ends its links to them. */
export interface Linked {
  readonly signal: AbortSignal;
  /** Unlinks the signal from its sources and stops its timer: call once the guarded operation has ended. */
  done(): void;
}

/**
 * A signal aborted when any of `signals` aborts, or `ms` after now (with a
 * TimeoutError, as AbortSignal.timeout's), until `done()`. Used in place of
 * AbortSignal.any for signals made per operation from a long-lived one (the
 * agent's): Node keeps each signal AbortSignal.any makes in a set on every
 * source it depends on, and scans that whole set each time one of them is
 * collected. A one-host pull of a 100-layer image spent 2.6 of its 3.4
 * CPU-seconds in those scans. A listener removed when the operation ends
 * costs nothing afterwards.
 */
export function linked(signals: readonly (AbortSignal | undefined)[], ms?: number): Linked {
  const c = new AbortController();
  const unlink: (() => void)[] = [];
  let timer: NodeJS.Timeout | undefined;
  const done = (): void => {
    for (const f of unlink) f();
    unlink.length = 0;
    if (timer) clearTimeout(timer);
  };
  const stop = (reason: unknown): void => {
    done();
    c.abort(reason);
  };
  for (const s of signals) {
    if (!s) continue;
    if (s.aborted) {
      stop(s.reason);
      return { signal: c.signal, done };
    }
    const onAbort = (): void => stop(s.reason);
    s.addEventListener("abort", onAbort, { once: true });
    unlink.push(() => s.removeEventListener("abort", onAbort));
  }
  if (ms !== undefined) {
    timer = setTimeout(() => stop(new DOMException("The operation was aborted due to timeout", "TimeoutError")), ms);
    timer.unref();
  }
  return { signal: c.signal, done };
}

/** Runs `f` with a signal `linked` to `signals`, and unlinks it once `f` has settled. */
export async function withLinked<T>(signals: readonly (AbortSignal | undefined)[], f: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const l = linked(signals);
  try {
    return await f(l.signal);
  } finally {
    l.done();
  }
}
