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
