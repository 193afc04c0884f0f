// One HTTP exchange with a registry (or its token server, or the storage a
// blob redirects to): node's http/https, keep-alive agents, an idle timeout
// that only runs while we are waiting for bytes, and abort. No retries, no
// redirects and no auth here: the client layers those on top.
//
// Errors leave this file in two kinds: TransientError (a reset, a timeout, a
// 5xx: worth retrying) and WharfError (final). Neither ever carries request
// headers, so credentials cannot leak through them.

import http, { type IncomingHttpHeaders, type IncomingMessage } from "node:http";
import https from "node:https";
import type { Socket } from "node:net";
import { WharfError } from "../errors.js";

/** A failure that may go away on its own; the client retries these with backoff. */
export class TransientError extends Error {
  override readonly name = "TransientError";
}

/** The error an aborted operation ends with (as node's own AbortError: name "AbortError", code "ABORT_ERR"). */
export function abortError(signal: AbortSignal, what: string): Error {
  const e = new Error(`${what}: aborted`, { cause: signal.reason }) as Error & { code: string };
  e.name = "AbortError";
  e.code = "ABORT_ERR";
  return e;
}

export function isAbortError(e: unknown): boolean {
  return e instanceof Error && e.name === "AbortError";
}

/** A URL as it may be logged: no query string (pre-signed storage URLs carry credentials there), no user info. */
export function loggableUrl(u: URL): string {
  return `${u.protocol}//${u.host}${u.pathname}`;
}

const TLS_CERT_CODES = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

/** Maps a socket-level failure to a final WharfError or a TransientError. */
export function classifyNetworkError(e: unknown, u: URL): Error {
  if (e instanceof WharfError || e instanceof TransientError || isAbortError(e)) return e as Error;
  const err = e as NodeJS.ErrnoException;
  const code = err.code ?? "";
  if (u.protocol === "https:" && (code === "EPROTO" || /SSL routines|wrong version number|packet length too long/i.test(err.message))) {
    return new WharfError(
      "REGISTRY_UNAVAILABLE",
      `${u.host} does not speak TLS (https): it looks like a plain-http server; if it is a registry you trust over plain http, list "${u.host}" in insecureRegistries`,
    );
  }
  if (TLS_CERT_CODES.has(code)) {
    return new WharfError("REGISTRY_UNAVAILABLE", `TLS certificate of ${u.host} is not trusted (${code}); add its CA with NODE_EXTRA_CA_CERTS`);
  }
  if (code === "ENOTFOUND") return new WharfError("REGISTRY_UNAVAILABLE", `cannot resolve host ${u.hostname}`);
  return new TransientError(`${code ? `${code} ` : ""}${err.message ?? String(e)}`.trim());
}

export interface RequestInit {
  method?: string;
  headers?: Record<string, string>;
  body?: Buffer;
  signal?: AbortSignal;
}

/** A response whose headers have arrived. Its body must be consumed, or discarded. */
/**
 * Ends a connection with a reset, not a FIN: after a FIN the server goes on
 * sending the body until a segment bounces, so a blob transfer given up (to
 * be resumed by another master) would overlap with the next one.
 */
function resetSocket(socket: Socket | null | undefined): void {
  if (!socket || socket.destroyed) return;
  try {
    socket.resetAndDestroy();
  } catch {
    // Not a plain TCP socket (TLS): a close is what there is.
    socket.destroy();
  }
}

export class HttpResponse {
  private done = false;

  constructor(
    readonly url: URL,
    private readonly res: IncomingMessage,
    private readonly idleMs: number,
    private readonly release: () => void,
    private readonly signal: AbortSignal | undefined,
  ) {}

  get status(): number {
    return this.res.statusCode ?? 0;
  }

  get headers(): IncomingHttpHeaders {
    return this.res.headers;
  }

  header(name: string): string | undefined {
    const v = this.res.headers[name.toLowerCase()];
    return Array.isArray(v) ? v.join(", ") : v;
  }

  /**
   * The body, chunk by chunk. The idle timeout runs only while we wait for the
   * next chunk, so a slow consumer is not mistaken for a stalled server.
   */
  async *chunks(): AsyncGenerator<Buffer> {
    const it = this.res[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    try {
      for (;;) {
        let timer: NodeJS.Timeout | undefined;
        const idle = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new TransientError(`no data from ${this.url.host} for ${this.idleMs} ms`)), this.idleMs);
        });
        let r: IteratorResult<Buffer>;
        try {
          r = await Promise.race([it.next(), idle]);
        } catch (e) {
          if (this.signal?.aborted) throw abortError(this.signal, loggableUrl(this.url));
          throw classifyNetworkError(e, this.url);
        } finally {
          clearTimeout(timer);
        }
        if (r.done) {
          this.done = true;
          return;
        }
        yield r.value;
      }
    } finally {
      this.discard();
    }
  }

  /** The whole body; a body longer than `limit` bytes throws what `tooLong` returns. */
  async read(limit: number, tooLong: () => Error): Promise<Buffer> {
    const cl = Number(this.header("content-length"));
    if (Number.isFinite(cl) && cl > limit) {
      this.discard();
      throw tooLong();
    }
    const parts: Buffer[] = [];
    let n = 0;
    for await (const c of this.chunks()) {
      n += c.length;
      if (n > limit) throw tooLong();
      parts.push(c);
    }
    return Buffer.concat(parts);
  }

  /** Drops the body: drains a small finished one so the connection can be reused, else closes it. */
  discard(): void {
    if (!this.done) {
      this.done = true;
      const cl = Number(this.header("content-length"));
      if (!this.res.complete && !(Number.isFinite(cl) && cl <= 64 * 1024)) {
        resetSocket(this.res.socket);
        this.res.destroy();
      } else {
        // Drained in the background, but never for longer than a stall:
        // a stalled body would hold its connection (and the process) forever.
        const timer = setTimeout(() => this.res.destroy(), this.idleMs).unref();
        this.res.once("close", () => clearTimeout(timer));
        this.res.resume();
      }
    }
    this.release();
  }
}

export class Transport {
  private readonly httpAgent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  private readonly httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 32 });

  constructor(private readonly idleMs: number) {}

  /** Sends one request and resolves when the response headers are in. */
  request(u: URL, init: RequestInit = {}): Promise<HttpResponse> {
    const signal = init.signal;
    const what = loggableUrl(u);
    if (signal?.aborted) return Promise.reject(abortError(signal, what));
    const isHttps = u.protocol === "https:";
    return new Promise<HttpResponse>((resolve, reject) => {
      let res: IncomingMessage | undefined;
      const onAbort = (): void => {
        const e = abortError(signal!, what);
        resetSocket(req.socket);
        req.destroy(e);
        res?.destroy(e);
        reject(e);
      };
      const release = (): void => signal?.removeEventListener("abort", onAbort);
      const headers: Record<string, string> = { "user-agent": "wharf", ...init.headers };
      if (init.body) headers["content-length"] = String(init.body.length);
      const req = (isHttps ? https : http).request(u, {
        method: init.method ?? "GET",
        headers,
        agent: isHttps ? this.httpsAgent : this.httpAgent,
      });
      const timer = setTimeout(() => req.destroy(new TransientError(`no response from ${u.host} within ${this.idleMs} ms`)), this.idleMs);
      req.on("error", (e) => {
        clearTimeout(timer);
        release();
        reject(signal?.aborted ? abortError(signal, what) : classifyNetworkError(e, u));
      });
      req.on("response", (r) => {
        clearTimeout(timer);
        res = r;
        // Errors after this point surface through the body iterator; keep the
        // emitter from throwing them as unhandled.
        r.on("error", () => {});
        resolve(new HttpResponse(u, r, this.idleMs, release, signal));
      });
      signal?.addEventListener("abort", onAbort, { once: true });
      req.end(init.body);
    });
  }

  /** Closes idle keep-alive connections. */
  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }
}
