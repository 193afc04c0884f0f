// The OCI distribution (v2) client: resolves a reference to a platform's
// manifest and config, and streams blobs with verification, resume from a
// partial file, and retries. Every byte it hands out has been, or is being,
// checked against the digest that names it.

import { createHash } from "node:crypto";
import { open, rm, type FileHandle } from "node:fs/promises";
import { Readable } from "node:stream";
import { type Logger, pino } from "pino";
import { WharfError } from "../errors.js";
import { Authenticator, CredentialStore, defaultDockerConfigPath, parseWwwAuthenticate } from "./auth.js";
import { type Compression, LAYER_MEDIA_TYPES, MANIFEST_ACCEPT, parseConfig, parseManifest, selectPlatform } from "./manifest.js";
import { DEFAULT_PLATFORM, type Platform, formatPlatform, platformMatches } from "./platform.js";
import { DOCKER_HUB, DOCKER_HUB_API, type Reference, checkDigest, formatReference, formatRepository, isSha256Digest } from "./reference.js";
import { HttpResponse, TransientError, Transport, abortError, isAbortError, loggableUrl } from "./transport.js";

export { type Platform, parsePlatform, formatPlatform } from "./platform.js";

export interface LayerDescriptor {
  digest: string;
  size: number;
  mediaType: string;
  compression: Compression;
  diffID: string;
}

export interface ResolvedImage {
  /** formatReference of the normalised reference that was resolved. */
  reference: string;
  /** Registry and repository of the image (no tag or digest). */
  repository: Reference;
  /** Set when the reference named an index / manifest list. */
  indexDigest?: string;
  /** Digest of the platform's image manifest. */
  manifestDigest: string;
  manifestMediaType: string;
  /** Raw bytes, as served (they hash to manifestDigest). */
  manifest: Buffer;
  configDigest: string;
  /** Raw bytes (they hash to configDigest). */
  config: Buffer;
  platform: Platform;
  /** Base layer first; diffIDs from config.rootfs.diff_ids. */
  layers: LayerDescriptor[];
}

export interface RegistryClientOptions {
  /** "HOST:PORT" reached over plain http; every other registry over https only. */
  insecureRegistries?: string[];
  /** A docker config.json; default $DOCKER_CONFIG/config.json or ~/.docker/config.json. A missing file means anonymous. */
  dockerConfig?: string;
  log?: Logger;
  /** Retries after the first attempt (default 5), with exponential backoff and jitter. */
  retries?: number;
  /** Per-request idle timeout (no bytes for this long = failure, retried); default 30 s. */
  timeoutMs?: number;
  /** Largest manifest or index accepted; default 4 MiB. */
  maxManifestBytes?: number;
  /** First backoff delay (default 200 ms); doubles per retry up to 5 s. */
  retryBaseMs?: number;
}

export interface BlobProgress {
  /** Bytes yielded so far (from the partial file and the network). */
  done: number;
  total: number;
  /** Bytes this call fetched from the network. */
  fromNetwork: number;
}

export interface OpenBlobOptions {
  partialFile?: string;
  signal?: AbortSignal;
  onProgress?: (p: BlobProgress) => void;
}

const BACKOFF_CAP_MS = 5_000;
const MAX_REDIRECTS = 5;
/** fetchBlob holds a blob in memory; it is meant for configs. */
const MAX_WHOLE_BLOB = 64 * 1024 * 1024;

function sha256(b: Buffer): string {
  return `sha256:${createHash("sha256").update(b).digest("hex")}`;
}

function sleep(ms: number, signal: AbortSignal | undefined, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal, what));
    const onAbort = (): void => {
      clearTimeout(t);
      reject(abortError(signal!, what));
    };
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The registry's own explanation from an error body ({"errors":[{code,message}]}), if any. */
async function registryErrorDetail(res: HttpResponse): Promise<string> {
  try {
    const body = await res.read(8192, () => new Error("too long"));
    const j = JSON.parse(body.toString("utf8")) as { errors?: { code?: unknown; message?: unknown }[] };
    const e = j.errors?.[0];
    if (e && (typeof e.code === "string" || typeof e.message === "string")) {
      return `: ${[e.code, e.message].filter((x) => typeof x === "string").join(" ")}`.slice(0, 300);
    }
  } catch {
    // no detail
  }
  return "";
}

export class RegistryClient {
  private readonly insecure: Set<string>;
  private readonly log: Logger;
  private readonly retries: number;
  private readonly retryBaseMs: number;
  private readonly maxManifestBytes: number;
  private readonly transport: Transport;
  private readonly auth: Authenticator;
  private fetched = 0;

  constructor(opts: RegistryClientOptions = {}) {
    this.insecure = new Set((opts.insecureRegistries ?? []).map((h) => h.toLowerCase()));
    this.log = opts.log ?? pino({ level: "silent" });
    this.retries = opts.retries ?? 5;
    this.retryBaseMs = opts.retryBaseMs ?? 200;
    this.maxManifestBytes = opts.maxManifestBytes ?? 4 * 1024 * 1024;
    this.transport = new Transport(opts.timeoutMs ?? 30_000);
    const creds = new CredentialStore(opts.dockerConfig ?? defaultDockerConfigPath(), this.log);
    this.auth = new Authenticator(
      creds,
      (u, init) => this.fetchToken(u, init),
      (realmHost, registry) => this.insecure.has(realmHost.toLowerCase()) || this.baseUrl(registry).protocol === "http:",
      this.log,
    );
  }

  /** Total bytes of blob and manifest bodies received from registries by this client. */
  get bytesFetched(): number {
    return this.fetched;
  }

  /** Closes idle connections (they do not keep the process alive either way). */
  close(): void {
    this.transport.close();
  }

  // ---------------------------------------------------------------- resolve

  async resolve(ref: Reference, opts: { platform?: Platform; signal?: AbortSignal } = {}): Promise<ResolvedImage> {
    const want = opts.platform ?? DEFAULT_PLATFORM;
    const signal = opts.signal;
    const name = formatReference(ref);
    if (ref.digest !== undefined) checkDigest(ref.digest, name);
    const target = ref.digest ?? ref.tag;
    if (target === undefined) throw new WharfError("INVALID_ARGUMENT", `${name}: neither a tag nor a digest`);

    const top = await this.fetchManifest(ref, target, ref.digest, name, signal);
    let parsed = parseManifest(top.body, top.contentType, `manifest of ${name} (${top.digest})`);
    let indexDigest: string | undefined;
    let platform: Platform | undefined;
    let m = top;
    if (parsed.kind === "index") {
      indexDigest = top.digest;
      const pick = selectPlatform(parsed.index, want, `index of ${name} (${top.digest})`);
      platform = pick.platform;
      m = await this.fetchManifest(ref, pick.digest, pick.digest, name, signal);
      const what = `manifest ${pick.digest} of ${name} (${formatPlatform(pick.platform)})`;
      if (m.body.length !== pick.size) {
        throw new WharfError("INVALID_MANIFEST", `${what}: the index says ${pick.size} bytes, the manifest has ${m.body.length}`);
      }
      parsed = parseManifest(m.body, m.contentType, what);
      if (parsed.kind !== "manifest") throw new WharfError("INVALID_MANIFEST", `${what}: an index inside an index is not supported`);
    }
    const manifest = parsed.manifest;
    const configDesc = manifest.config;
    const config = await this.fetchBlob(ref, configDesc, signal ? { signal } : {}).catch((e: unknown) => {
      // Name the image, not only the blob; a config we refuse to fetch is a manifest fault.
      if (e instanceof WharfError) throw new WharfError(e.code === "INVALID_ARGUMENT" ? "INVALID_MANIFEST" : e.code, `config of ${name}: ${e.message}`);
      throw e;
    });
    const cfgWhat = `config ${configDesc.digest} of ${name}`;
    const cfg = parseConfig(config, manifest.layers.length, cfgWhat);
    if (platform === undefined) {
      if (cfg.os && cfg.architecture) {
        platform = { os: cfg.os, architecture: cfg.architecture, ...(cfg.variant ? { variant: cfg.variant } : {}) };
        // A single-platform image is taken only for the platform that was asked for.
        if (opts.platform && !platformMatches(want, platform)) {
          throw new WharfError("INVALID_MANIFEST", `${name} is an image for ${formatPlatform(platform)}, not ${formatPlatform(want)}; available: ${formatPlatform(platform)}`);
        }
      } else {
        platform = { ...want };
      }
    }
    const layers: LayerDescriptor[] = manifest.layers.map((l, i) => ({
      digest: l.digest,
      size: l.size,
      mediaType: l.mediaType,
      compression: LAYER_MEDIA_TYPES.get(l.mediaType)!,
      diffID: cfg.rootfs.diff_ids[i]!,
    }));
    this.log.debug({ image: name, manifest: m.digest, index: indexDigest, platform: formatPlatform(platform), layers: layers.length }, "resolved image");
    return {
      reference: name,
      repository: { registry: ref.registry, repository: ref.repository },
      ...(indexDigest !== undefined ? { indexDigest } : {}),
      manifestDigest: m.digest,
      manifestMediaType: parsed.mediaType,
      manifest: m.body,
      configDigest: configDesc.digest,
      config,
      platform,
      layers,
    };
  }

  /**
   * GETs a manifest by tag or digest. With `expected`, the body must hash to it;
   * otherwise a Docker-Content-Digest header, when present, must agree with the
   * body's hash.
   */
  private async fetchManifest(
    repo: Reference,
    target: string,
    expected: string | undefined,
    name: string,
    signal: AbortSignal | undefined,
  ): Promise<{ body: Buffer; digest: string; contentType: string | undefined }> {
    const what = expected ? `manifest ${expected} of ${name}` : `manifest of ${name}`;
    return this.againOnMismatch(what, () => this.retrying(what, signal, async () => {
      const res = await this.send(repo, `manifests/${target}`, { accept: MANIFEST_ACCEPT }, what, signal);
      if (res.status !== 200) throw await this.statusError(res, what);
      const body = await res.read(this.maxManifestBytes, () => new WharfError("INVALID_MANIFEST", `${what}: larger than ${this.maxManifestBytes} bytes`));
      this.fetched += body.length;
      const digest = sha256(body);
      if (expected !== undefined && digest !== expected) {
        throw new WharfError("DIGEST_MISMATCH", `${what}: content hashes to ${digest}`);
      }
      const header = res.header("docker-content-digest");
      if (expected === undefined && header !== undefined && isSha256Digest(header) && header !== digest) {
        throw new WharfError("DIGEST_MISMATCH", `${what}: the registry says its digest is ${header}, the content hashes to ${digest}`);
      }
      return { body, digest, contentType: res.header("content-type") };
    }));
  }

  /**
   * A body that does not hash to its digest was damaged on the way (a proxy,
   * a cache) as often as it is wrong at the source: it is fetched once more
   * before the mismatch is reported.
   */
  private async againOnMismatch<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof WharfError) || e.code !== "DIGEST_MISMATCH") throw e;
      this.log.warn({ what, reason: e.message }, "content does not match its digest; fetching it once more");
      return fn();
    }
  }

  // ------------------------------------------------------------------ blobs

  /** Fetches a small blob (a config) whole, verified against its digest and size. */
  async fetchBlob(repo: Reference, desc: { digest: string; size: number }, opts: { signal?: AbortSignal } = {}): Promise<Buffer> {
    const what = `blob ${desc.digest} of ${formatRepository(repo)}`;
    if (!Number.isSafeInteger(desc.size) || desc.size < 0) throw new WharfError("INVALID_ARGUMENT", `${what}: invalid size ${desc.size}`);
    if (desc.size > MAX_WHOLE_BLOB) throw new WharfError("INVALID_ARGUMENT", `${what}: ${desc.size} bytes is too large to hold in memory (limit ${MAX_WHOLE_BLOB}); stream it with openBlob`);
    return this.againOnMismatch(what, async () => {
      const parts: Buffer[] = [];
      for await (const c of this.openBlob(repo, desc, opts)) parts.push(c as Buffer);
      return Buffer.concat(parts);
    });
  }

  /**
   * The blob's bytes, in order, from byte 0, verified against desc.digest while
   * streaming. See the interface contract in the module documentation:
   * partial-file resume, Range retries, DIGEST_MISMATCH (partial file removed),
   * UNAUTHORIZED / DENIED / NOT_FOUND without retry, REGISTRY_UNAVAILABLE once
   * `retries` attempts in a row made no progress. Aborting `signal` destroys the
   * stream with an AbortError.
   */
  openBlob(repo: Reference, desc: { digest: string; size: number }, opts: OpenBlobOptions = {}): Readable {
    const ac = new AbortController();
    const outer = opts.signal;
    const onOuterAbort = (): void => ac.abort(outer!.reason);
    if (outer?.aborted) ac.abort(outer.reason);
    else outer?.addEventListener("abort", onOuterAbort, { once: true });
    const stream = Readable.from(this.blobChunks(repo, desc, opts, ac.signal), { objectMode: false, highWaterMark: 256 * 1024 });
    const what = `blob ${desc.digest} of ${formatRepository(repo)}`;
    const destroyOnAbort = (): void => {
      if (!stream.destroyed) stream.destroy(abortError(ac.signal, what));
    };
    ac.signal.addEventListener("abort", destroyOnAbort, { once: true });
    stream.once("close", () => {
      outer?.removeEventListener("abort", onOuterAbort);
      ac.signal.removeEventListener("abort", destroyOnAbort);
      // Whatever the consumer did, stop the network side.
      if (!ac.signal.aborted) ac.abort(new Error("stream closed"));
    });
    return stream;
  }

  private async *blobChunks(repo: Reference, desc: { digest: string; size: number }, opts: OpenBlobOptions, signal: AbortSignal): AsyncGenerator<Buffer> {
    const what = `blob ${desc.digest} of ${formatRepository(repo)}`;
    checkDigest(desc.digest, what);
    const size = desc.size;
    if (!Number.isSafeInteger(size) || size < 0) throw new WharfError("INVALID_ARGUMENT", `${what}: invalid size ${size}`);
    const hash = createHash("sha256");
    const partial = opts.partialFile;
    let fh: FileHandle | undefined;
    let offset = 0;
    let fromNetwork = 0;
    let ok = false;
    const progress = (): void => opts.onProgress?.({ done: offset, total: size, fromNetwork });
    const mismatch = (why: string): WharfError => new WharfError("DIGEST_MISMATCH", `${what}: ${why}`);

    try {
      if (partial) {
        fh = await open(partial, "a+");
        const have = (await fh.stat()).size;
        if (have > size) {
          // Longer than the blob can be: not a prefix of it. Start over.
          this.log.warn({ blob: desc.digest, file: partial, have, size }, "partial file longer than the blob; discarding it");
          await fh.truncate(0);
        } else {
          const buf = Buffer.allocUnsafe(Math.min(1024 * 1024, Math.max(have, 1)));
          while (offset < have) {
            if (signal.aborted) throw abortError(signal, what);
            const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, have - offset), offset);
            if (bytesRead === 0) break;
            const chunk = Buffer.from(buf.subarray(0, bytesRead));
            hash.update(chunk);
            offset += bytesRead;
            progress();
            yield chunk;
          }
          if (offset > 0) this.log.debug({ blob: desc.digest, resumeAt: offset, size }, "resuming blob from partial file");
        }
      }

      let failures = 0;
      while (offset < size) {
        const start = offset;
        try {
          for await (const chunk of this.blobAttempt(repo, desc, offset, what, signal)) {
            let c = chunk;
            if (offset + c.length > size) {
              c = c.subarray(0, size - offset);
              hash.update(c);
              throw mismatch(`longer than the ${size} bytes its descriptor declares`);
            }
            if (fh) await fh.write(c);
            hash.update(c);
            offset += c.length;
            fromNetwork += c.length;
            progress();
            yield c;
          }
          if (offset < size) throw new TransientError(`the body ended after ${offset} of ${size} bytes`);
        } catch (e) {
          if (signal.aborted) throw abortError(signal, what);
          if (!(e instanceof TransientError)) throw e;
          failures = offset > start ? 1 : failures + 1;
          if (failures > this.retries) {
            throw new WharfError("REGISTRY_UNAVAILABLE", `${what}: failed ${failures} times in a row at byte ${offset} of ${size}: ${e.message}`);
          }
          const delay = this.backoff(failures - 1);
          this.log.warn({ blob: desc.digest, repository: formatRepository(repo), at: offset, size, attempt: failures, delayMs: Math.round(delay), reason: e.message }, "blob download failed; retrying");
          await sleep(delay, signal, what);
        }
      }

      const got = `sha256:${hash.digest("hex")}`;
      if (got !== desc.digest) throw mismatch(`content hashes to ${got}`);
      if (fh) {
        await fh.sync();
        await fh.close();
        fh = undefined;
      }
      ok = true;
      if (size === 0) progress();
    } catch (e) {
      // A partial file that does not lead to the digest is useless: remove it.
      // On any other failure it stays, for the next resume.
      if (e instanceof WharfError && e.code === "DIGEST_MISMATCH" && partial) {
        await fh?.close().catch(() => {});
        fh = undefined;
        await rm(partial, { force: true });
        this.log.warn({ blob: desc.digest, file: partial }, "blob content does not match its digest; partial file removed");
      }
      throw e;
    } finally {
      if (fh) await fh.close().catch(() => {});
      if (!ok && signal.aborted) this.log.debug({ blob: desc.digest, at: offset }, "blob download aborted");
    }
  }

  /** One GET of a blob from `offset`; yields the bytes from `offset` on (skipping what a 200 answer repeats). */
  private async *blobAttempt(repo: Reference, desc: { digest: string; size: number }, offset: number, what: string, signal: AbortSignal): AsyncGenerator<Buffer> {
    const headers: Record<string, string> = { accept: "*/*" };
    if (offset > 0) headers.range = `bytes=${offset}-`;
    const res = await this.send(repo, `blobs/${desc.digest}`, headers, what, signal);
    let skip = 0;
    if (res.status === 206 && offset > 0) {
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.header("content-range") ?? "");
      const first = m ? Number(m[1]) : offset;
      if (first > offset) {
        res.discard();
        throw new TransientError(`asked for bytes from ${offset}, got a range from ${first}`);
      }
      skip = offset - first;
    } else if (res.status === 200) {
      skip = offset;
      if (offset > 0) this.log.debug({ blob: desc.digest, offset }, "registry ignored Range; skipping what we have");
    } else if (res.status === 416 && offset > 0) {
      res.discard();
      throw new WharfError("DIGEST_MISMATCH", `${what}: the registry has fewer than the ${offset} bytes we hold (range not satisfiable)`);
    } else {
      throw await this.statusError(res, what);
    }
    for await (const chunk of res.chunks()) {
      this.fetched += chunk.length;
      if (skip >= chunk.length) {
        skip -= chunk.length;
        continue;
      }
      yield skip > 0 ? chunk.subarray(skip) : chunk;
      skip = 0;
    }
  }

  // -------------------------------------------------------------- transport

  private baseUrl(registry: string): URL {
    const host = registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
    const scheme = this.insecure.has(host.toLowerCase()) ? "http" : "https";
    return new URL(`${scheme}://${host}/v2/`);
  }

  /**
   * One logical request to a registry: authorisation (anonymous first, then
   * the answer to its challenge, once), and redirects. The Authorization header
   * never follows a redirect to another origin.
   */
  private async send(repo: Reference, path: string, headers: Record<string, string>, what: string, signal: AbortSignal | undefined): Promise<HttpResponse> {
    const registry = repo.registry;
    const scope = `repository:${repo.repository}:pull`;
    const first = new URL(`${repo.repository}/${path}`, this.baseUrl(registry));
    let authorization = this.auth.header(registry, scope);
    let challenged = false;
    for (;;) {
      let url = first;
      let sendAuth = true;
      let res: HttpResponse;
      for (let hops = 0; ; hops++) {
        const h = { ...headers };
        if (sendAuth && authorization) h.authorization = authorization;
        this.log.trace({ method: "GET", url: loggableUrl(url) }, "registry request");
        res = await this.transport.request(url, { headers: h, ...(signal ? { signal } : {}) });
        const location = res.header("location");
        if (![301, 302, 303, 307, 308].includes(res.status) || !location) break;
        res.discard();
        if (hops >= MAX_REDIRECTS) throw new WharfError("REGISTRY_UNAVAILABLE", `${what}: more than ${MAX_REDIRECTS} redirects`);
        const next = new URL(location, url);
        if (next.protocol !== "https:" && !(next.protocol === "http:" && (url.protocol === "http:" || this.insecure.has(next.host.toLowerCase())))) {
          throw new WharfError("REGISTRY_UNAVAILABLE", `${what}: refusing a redirect from ${url.protocol} to ${loggableUrl(next)}`);
        }
        if (next.origin !== first.origin) sendAuth = false;
        this.log.debug({ from: loggableUrl(url), to: loggableUrl(next) }, "following redirect");
        url = next;
      }
      if (res.status !== 401 || url.origin !== first.origin) return res;
      const challenge = res.header("www-authenticate");
      res.discard();
      if (challenged) {
        this.auth.forget(registry, scope);
        // The registry's reason (e.g. insufficient_scope: no access to this repository), never our header.
        const reason = parseWwwAuthenticate(challenge ?? "").find((c) => c.params.error)?.params.error;
        throw (await this.auth.hasCredentials(registry))
          ? new WharfError("UNAUTHORIZED", `${what}: ${registry} refused our credentials (401${reason ? ` ${reason.slice(0, 80)}` : ""})`)
          : this.auth.noCredentials(registry, what);
      }
      challenged = true;
      authorization = await this.auth.challenge(registry, scope, challenge, what, signal);
    }
  }

  private async fetchToken(
    u: URL,
    init: { method: "GET" | "POST"; headers: Record<string, string>; body?: Buffer; signal?: AbortSignal },
  ): Promise<{ status: number; body: Buffer }> {
    const what = `token from ${loggableUrl(u)}`;
    return this.retrying(what, init.signal, async () => {
      const res = await this.transport.request(u, init);
      if (res.status >= 500 || res.status === 429) {
        res.discard();
        throw new TransientError(`${res.status} from the token server`);
      }
      const body = await res.read(1024 * 1024, () => new WharfError("UNAUTHORIZED", `${what}: response too large`));
      return { status: res.status, body };
    });
  }

  /** The error for an unexpected status: final for 4xx, transient for 5xx and 429. */
  private async statusError(res: HttpResponse, what: string): Promise<Error> {
    const s = res.status;
    const detail = await registryErrorDetail(res);
    res.discard();
    if (s === 404) return new WharfError("NOT_FOUND", `${what}: not found (404)${detail}`);
    if (s === 401) return new WharfError("UNAUTHORIZED", `${what}: unauthorized (401)${detail}`);
    if (s === 403) return new WharfError("DENIED", `${what}: access denied (403)${detail}`);
    if (s >= 500 || s === 429 || s === 408) return new TransientError(`status ${s}${detail}`);
    if (s === 400) return new WharfError("INVALID_ARGUMENT", `${what}: bad request (400)${detail}`);
    return new WharfError("REGISTRY_UNAVAILABLE", `${what}: unexpected status ${s}${detail}`);
  }

  private backoff(attempt: number): number {
    const ceiling = Math.min(BACKOFF_CAP_MS, this.retryBaseMs * 2 ** attempt);
    return ceiling / 2 + (Math.random() * ceiling) / 2;
  }

  /** Runs `fn` again after TransientErrors, up to `retries` more times, with backoff. */
  private async retrying<T>(what: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        if (signal?.aborted && !isAbortError(e)) throw abortError(signal, what);
        if (!(e instanceof TransientError)) throw e;
        if (attempt >= this.retries) {
          throw new WharfError("REGISTRY_UNAVAILABLE", `${what}: failed after ${attempt + 1} attempts: ${e.message}`);
        }
        const delay = this.backoff(attempt);
        this.log.warn({ what, attempt: attempt + 1, delayMs: Math.round(delay), reason: e.message }, "registry request failed; retrying");
        await sleep(delay, signal, what);
      }
    }
  }
}
