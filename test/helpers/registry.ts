// A real registry for tests: Debian's docker-registry (distribution 2.8) on a
// free loopback port, optionally behind htpasswd (basic) or token auth (with
// a token server run here), plus plain-HTTP pushes and a fault-injecting,
// byte-counting reverse proxy.
//
// This helper deliberately shares no code with src/registry: a bug there must
// not be able to hide itself in the fixtures. (It ends with two assertions the
// registry tests share.)

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash, randomBytes, sign } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { gzipSync, zstdCompressSync } from "node:zlib";
import bcrypt from "bcryptjs";
import type { Test } from "tap";
import tar from "tar-stream";
import { WharfError } from "../../src/errors.js";

export type RegistryAuth = { kind: "basic"; users: Record<string, string> } | { kind: "token"; users: Record<string, string> };

export interface RunningRegistry {
  /** 127.0.0.1:PORT */
  host: string;
  /** Temp dir holding the config and the storage (storage under dir/data). */
  dir: string;
  /** Token auth only: the token server's endpoint (http://127.0.0.1:PORT/token). */
  realm?: string;
  /** Token auth only: how many token requests the token server has answered. */
  tokenRequests?: () => number;
  stop(): Promise<void>;
}

export interface BasicAuth {
  user: string;
  pass: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function sha256(b: Buffer): string {
  return `sha256:${createHash("sha256").update(b).digest("hex")}`;
}

/** The path of a blob's data file in the registry's filesystem storage (to tamper with it). */
export function blobDataPath(reg: RunningRegistry, digest: string): string {
  const hex = digest.slice("sha256:".length);
  return join(reg.dir, "data", "docker", "registry", "v2", "blobs", "sha256", hex.slice(0, 2), hex, "data");
}

// ------------------------------------------------------------- token server

const b64url = (b: Buffer | string): string => Buffer.from(b).toString("base64url");

interface TokenServer {
  port: number;
  requests: number;
  close(): Promise<void>;
}

/**
 * The distribution token protocol (GET with basic auth, and the OAuth2 POST
 * flow): JWT RS256 with an x5c header. A known user with the right password
 * gets exactly the access it asked for; anonymous requests get a token that
 * grants nothing.
 */
async function startTokenServer(dir: string, service: string, issuer: string, users: Record<string, string>): Promise<TokenServer> {
  const keyFile = join(dir, "token.key");
  const certFile = join(dir, "token.crt");
  await promisify(execFile)("openssl", [
    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", keyFile, "-out", certFile, "-days", "2", "-subj", "/CN=wharf test token issuer",
  ]);
  const key = readFileSync(keyFile, "utf8");
  const certDer = Buffer.from(
    readFileSync(certFile, "utf8").replace(/-----(BEGIN|END) CERTIFICATE-----/g, "").replace(/\s+/g, ""),
    "base64",
  );
  const refreshTokens = new Map<string, string>(); // refresh token → user

  const issue = (user: string | undefined, scopes: string[]): string => {
    const now = Math.floor(Date.now() / 1000);
    const access = user === undefined
      ? []
      : scopes.flatMap((s) => s.split(" ")).filter(Boolean).map((s) => {
          const first = s.indexOf(":");
          const last = s.lastIndexOf(":");
          return { type: s.slice(0, first), name: s.slice(first + 1, last), actions: s.slice(last + 1).split(",") };
        });
    const header = b64url(JSON.stringify({ typ: "JWT", alg: "RS256", x5c: [certDer.toString("base64")] }));
    const claims = b64url(
      JSON.stringify({ iss: issuer, sub: user ?? "", aud: service, exp: now + 300, nbf: now - 10, iat: now, jti: randomBytes(8).toString("hex"), access }),
    );
    const sig = sign("RSA-SHA256", Buffer.from(`${header}.${claims}`), key);
    return `${header}.${claims}.${b64url(sig)}`;
  };

  const state = { requests: 0 };
  const server = http.createServer((req, res) => {
    state.requests++;
    const reply = (status: number, body: unknown): void => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    const url = new URL(req.url ?? "/", "http://x");
    if (req.method === "GET") {
      let user: string | undefined;
      const auth = req.headers.authorization;
      if (auth) {
        const m = /^Basic (.+)$/i.exec(auth);
        const dec = m ? Buffer.from(m[1]!, "base64").toString("utf8") : "";
        const u = dec.slice(0, dec.indexOf(":"));
        const p = dec.slice(dec.indexOf(":") + 1);
        if (!m || users[u] === undefined || users[u] !== p) return reply(401, { errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }] });
        user = u;
      }
      const token = issue(user, url.searchParams.getAll("scope"));
      return reply(200, { token, access_token: token, expires_in: 300, issued_at: new Date().toISOString() });
    }
    if (req.method === "POST") {
      const parts: Buffer[] = [];
      req.on("data", (b: Buffer) => parts.push(b));
      req.on("end", () => {
        const form = new URLSearchParams(Buffer.concat(parts).toString("utf8"));
        let user: string | undefined;
        if (form.get("grant_type") === "password") {
          const u = form.get("username") ?? "";
          if (users[u] === undefined || users[u] !== form.get("password")) return reply(401, { error: "invalid_grant" });
          user = u;
        } else if (form.get("grant_type") === "refresh_token") {
          user = refreshTokens.get(form.get("refresh_token") ?? "");
          if (user === undefined) return reply(401, { error: "invalid_grant" });
        } else return reply(400, { error: "unsupported_grant_type" });
        const refresh = randomBytes(16).toString("hex");
        refreshTokens.set(refresh, user);
        return reply(200, { access_token: issue(user, (form.get("scope") ?? "").split(" ")), refresh_token: refresh, expires_in: 300 });
      });
      return;
    }
    reply(405, {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as AddressInfo).port,
    get requests() {
      return state.requests;
    },
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

// ------------------------------------------------------------------ registry

/** A config.yml for Debian's docker-registry: filesystem storage, deletes on, uploads never purged. */
export function registryConfig(o: { data: string; addr: string; accessLog: boolean }): string {
  return [
    "version: 0.1",
    "log:",
    "  level: error",
    ...(o.accessLog ? [] : ["  accesslog:", "    disabled: true"]),
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${o.data}`,
    "  delete:",
    "    enabled: true",
    "  maintenance:",
    "    uploadpurging:",
    "      enabled: false",
    "http:",
    `  addr: ${o.addr}`,
    `  secret: ${randomBytes(16).toString("hex")}`,
    "",
  ].join("\n");
}

export async function startRegistry(opts: { auth?: RegistryAuth } = {}): Promise<RunningRegistry> {
  const dir = mkdtempSync(join(tmpdir(), "wharf-registry-"));
  let tokenServer: TokenServer | undefined;
  let child: ChildProcess | undefined;
  try {
    let authYaml = "";
    if (opts.auth?.kind === "basic") {
      const lines = Object.entries(opts.auth.users).map(([u, p]) => `${u}:${bcrypt.hashSync(p, 4)}`);
      writeFileSync(join(dir, "htpasswd"), lines.join("\n") + "\n");
      authYaml = `auth:\n  htpasswd:\n    realm: wharf-test\n    path: ${join(dir, "htpasswd")}\n`;
    } else if (opts.auth?.kind === "token") {
      tokenServer = await startTokenServer(dir, "wharf-test-registry", "wharf-test-issuer", opts.auth.users);
      authYaml = [
        "auth:",
        "  token:",
        `    realm: http://127.0.0.1:${tokenServer.port}/token`,
        "    service: wharf-test-registry",
        "    issuer: wharf-test-issuer",
        `    rootcertbundle: ${join(dir, "token.crt")}`,
        "",
      ].join("\n");
    }
    for (let attempt = 0; ; attempt++) {
      const port = await freePort();
      const config = join(dir, "config.yml");
      writeFileSync(config, registryConfig({ data: join(dir, "data"), addr: `127.0.0.1:${port}`, accessLog: false }) + authYaml);
      // setpriv --pdeathsig: the registry dies with this process even when it is
      // killed (a tap timeout), so no registry outlives its test.
      const proc = existsSync("/usr/bin/setpriv")
        ? spawn("/usr/bin/setpriv", ["--pdeathsig", "SIGKILL", "docker-registry", "serve", config], { stdio: ["ignore", "pipe", "pipe"] })
        : spawn("docker-registry", ["serve", config], { stdio: ["ignore", "pipe", "pipe"] });
      const killOnExit = (): void => void proc.kill("SIGKILL");
      process.once("exit", killOnExit);
      proc.once("exit", () => process.off("exit", killOnExit));
      child = proc;
      let output = "";
      proc.stdout!.on("data", (b: Buffer) => (output += b.toString()));
      proc.stderr!.on("data", (b: Buffer) => (output += b.toString()));
      let exited = false;
      proc.once("exit", () => (exited = true));
      const host = `127.0.0.1:${port}`;
      const deadline = Date.now() + 10_000;
      let up = false;
      while (!exited && Date.now() < deadline) {
        try {
          const r = await fetch(`http://${host}/v2/`);
          await r.arrayBuffer();
          if (r.status === 200 || r.status === 401) {
            up = true;
            break;
          }
        } catch {
          // not listening yet
        }
        await sleep(20);
      }
      if (up) {
        const ts = tokenServer;
        return {
          host,
          dir,
          ...(ts ? { realm: `http://127.0.0.1:${ts.port}/token`, tokenRequests: () => ts.requests } : {}),
          stop: async () => {
            if (proc.exitCode === null && proc.signalCode === null) {
              const gone = new Promise((r) => proc.once("exit", r));
              proc.kill("SIGTERM");
              await Promise.race([gone, sleep(3000).then(() => proc.kill("SIGKILL"))]);
            }
            await ts?.close();
            rmSync(dir, { recursive: true, force: true });
          },
        };
      }
      proc.kill("SIGKILL");
      if (attempt >= 2 || !/address already in use/.test(output)) {
        throw new Error(`docker-registry did not start on ${host}: ${output.trim() || "no output"}`);
      }
    }
  } catch (e) {
    child?.kill("SIGKILL");
    await tokenServer?.close();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

// --------------------------------------------------------------------- pushes

/** fetch() that answers a registry's 401 challenge (basic or bearer with push+pull scope) once. */
async function authedFetch(url: string, init: RequestInit, repo: string, auth: BasicAuth | undefined, cache: { header?: string }): Promise<Response> {
  const withAuth = (): RequestInit => ({ ...init, headers: { ...(init.headers as Record<string, string>), ...(cache.header ? { authorization: cache.header } : {}) } });
  let res = await fetch(url, withAuth());
  if (res.status !== 401 || !auth) return res;
  await res.arrayBuffer();
  const challenge = res.headers.get("www-authenticate") ?? "";
  const basic = `Basic ${Buffer.from(`${auth.user}:${auth.pass}`).toString("base64")}`;
  if (/^bearer/i.test(challenge)) {
    const realm = /realm="([^"]+)"/.exec(challenge)?.[1];
    const service = /service="([^"]+)"/.exec(challenge)?.[1];
    const u = new URL(realm!);
    if (service) u.searchParams.set("service", service);
    u.searchParams.set("scope", `repository:${repo}:pull,push`);
    const tr = await fetch(u, { headers: { authorization: basic } });
    if (tr.status !== 200) throw new Error(`token server refused the push credentials: ${tr.status}`);
    const j = (await tr.json()) as { token: string };
    cache.header = `Bearer ${j.token}`;
  } else {
    cache.header = basic;
  }
  res = await fetch(url, withAuth());
  return res;
}

/** Uploads a blob (monolithic: POST, then PUT with the digest) and returns its digest. */
export async function pushBlob(host: string, repo: string, data: Buffer, auth?: BasicAuth): Promise<string> {
  const digest = sha256(data);
  const cache: { header?: string } = {};
  const start = await authedFetch(`http://${host}/v2/${repo}/blobs/uploads/`, { method: "POST" }, repo, auth, cache);
  await start.arrayBuffer();
  if (start.status !== 202) throw new Error(`blob upload to ${host}/${repo} not started: ${start.status}`);
  const loc = new URL(start.headers.get("location")!, `http://${host}/`);
  loc.searchParams.set("digest", digest);
  const put = await authedFetch(
    loc.toString(),
    { method: "PUT", headers: { "content-type": "application/octet-stream" }, body: new Uint8Array(data) },
    repo,
    auth,
    cache,
  );
  const text = await put.text();
  if (put.status !== 201) throw new Error(`blob upload to ${host}/${repo} failed: ${put.status} ${text}`);
  return digest;
}

/** PUTs a manifest under a tag (or a digest) and returns its digest. */
export async function pushManifest(host: string, repo: string, tag: string, body: Buffer, mediaType: string, auth?: BasicAuth): Promise<string> {
  const res = await authedFetch(
    `http://${host}/v2/${repo}/manifests/${tag}`,
    { method: "PUT", headers: { "content-type": mediaType }, body: new Uint8Array(body) },
    repo,
    auth,
    {},
  );
  const text = await res.text();
  if (res.status !== 201) throw new Error(`manifest push to ${host}/${repo}:${tag} failed: ${res.status} ${text}`);
  return res.headers.get("docker-content-digest") ?? sha256(body);
}

// ---------------------------------------------------------------------- proxy

export type ProxyFault = "reset-next-blob" | "truncate-next-blob" | "503-next" | "stall-next-blob" | "wrong-body-next-blob";

export interface ProxiedRequest {
  method: string;
  /** Path and query as received. */
  url: string;
  range?: string;
  authorization: boolean;
  status?: number;
  /** The client's address. */
  client?: string;
  /** Response body bytes sent so far. */
  sent?: number;
  /** When the request arrived and when its response closed (ms, performance.now()). */
  start?: number;
  end?: number;
}

export interface Proxy {
  /** 127.0.0.1:PORT */
  host: string;
  /** Response body bytes sent to clients. */
  bytesServed(): number;
  /** Response body bytes sent to clients for GETs of this blob. */
  blobBytesServed(digest: string): number;
  /** Limits the response body rate (undefined: unlimited). */
  setRate(bytesPerSec: number | undefined): void;
  /** A one-shot fault: the next blob GET (or, for 503-next, the next request) misbehaves. */
  injectFault(f: ProxyFault): void;
  /** Drops the faults injected and not yet fired; returns how many there were. */
  clearFaults(): number;
  /** Drops Range headers, like a registry that answers every range request with the whole blob (200). */
  setIgnoreRange(on: boolean): void;
  /** Answers blob GETs with a 307 to http://HOST/same/path?X-Signature=…, like a registry whose storage is elsewhere. */
  redirectBlobs(host: string | undefined): void;
  /** Every request seen, in order. */
  requests(): ProxiedRequest[];
  stop(): Promise<void>;
}

const BLOB_PATH = /^\/v2\/.+\/blobs\/(sha256:[a-f0-9]{64})(?:\?.*)?$/;

/** A reverse proxy in front of `target` (HOST:PORT), on loopback or at `opts.listen` (IP:PORT). */
export async function startProxy(target: string, opts: { listen?: string } = {}): Promise<Proxy> {
  const [thost, tport] = target.split(":") as [string, string];
  let served = 0;
  const perBlob = new Map<string, number>();
  let rate: number | undefined;
  const faults: ProxyFault[] = [];
  let ignoreRange = false;
  let redirectTo: string | undefined;
  const seen: ProxiedRequest[] = [];
  const live = new Set<{ destroy(): void }>();

  const takeFault = (pred: (f: ProxyFault) => boolean): ProxyFault | undefined => {
    const i = faults.findIndex(pred);
    return i >= 0 ? faults.splice(i, 1)[0] : undefined;
  };

  const write = (res: ServerResponse, b: Buffer): Promise<void> =>
    new Promise((resolve) => {
      if (res.destroyed) return resolve();
      if (res.write(b)) return resolve();
      const done = (): void => {
        res.off("drain", done);
        res.off("close", done);
        resolve();
      };
      res.on("drain", done);
      res.on("close", done);
    });

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const rec: ProxiedRequest = {
      method: req.method ?? "GET",
      url: req.url ?? "/",
      client: req.socket.remoteAddress ?? "",
      start: performance.now(),
      ...(req.headers.range ? { range: req.headers.range } : {}),
      authorization: req.headers.authorization !== undefined,
    };
    seen.push(rec);
    res.once("close", () => (rec.end = performance.now()));
    if (takeFault((f) => f === "503-next")) {
      rec.status = 503;
      req.resume();
      res.writeHead(503, { "content-type": "application/json" });
      res.end(JSON.stringify({ errors: [{ code: "UNAVAILABLE", message: "injected fault" }] }));
      return;
    }
    const blob = req.method === "GET" ? BLOB_PATH.exec(req.url ?? "")?.[1] : undefined;
    if (blob && redirectTo) {
      rec.status = 307;
      req.resume();
      res.writeHead(307, { location: `http://${redirectTo}${req.url}?X-Signature=presigned-secret-${blob.slice(7, 15)}` });
      res.end();
      return;
    }
    const headers = { ...req.headers };
    if (ignoreRange) delete headers.range;
    const up = http.request({ host: thost, port: Number(tport), method: req.method, path: req.url, headers });
    live.add(up);
    up.on("close", () => live.delete(up));
    up.on("error", () => res.destroy());
    req.pipe(up);
    const ures = await new Promise<IncomingMessage | undefined>((resolve) => {
      up.once("response", resolve);
      up.once("error", () => resolve(undefined));
    });
    if (!ures) return;
    rec.status = ures.statusCode;
    const isBlobBody = blob !== undefined && (ures.statusCode === 200 || ures.statusCode === 206);
    const fault = isBlobBody ? takeFault((f) => f !== "503-next") : undefined;
    const outHeaders = { ...ures.headers };
    const length = Number(ures.headers["content-length"] ?? NaN);
    const cut = Number.isFinite(length) ? Math.floor(length / 2) : 1;
    if (fault === "truncate-next-blob") delete outHeaders["content-length"];
    res.writeHead(ures.statusCode ?? 502, outHeaders);
    res.on("close", () => ures.destroy());
    let sent = 0;
    const count = (n: number): void => {
      served += n;
      sent += n;
      rec.sent = sent;
      if (blob && isBlobBody) perBlob.set(blob, (perBlob.get(blob) ?? 0) + n);
    };
    const send = async (b: Buffer): Promise<void> => {
      if (rate === undefined) {
        await write(res, b);
        count(b.length);
        return;
      }
      const slice = Math.max(1, Math.floor(rate / 20));
      for (let i = 0; i < b.length && !res.destroyed; i += slice) {
        const part = b.subarray(i, i + slice);
        await write(res, part);
        count(part.length);
        await sleep((part.length / rate) * 1000);
      }
    };
    try {
      for await (const raw of ures) {
        let chunk = raw as Buffer;
        if (res.destroyed) break;
        if (fault === "wrong-body-next-blob") chunk = Buffer.from(chunk.map((x) => x ^ 0xff));
        if (fault && fault !== "wrong-body-next-blob" && sent + chunk.length >= cut) {
          await send(chunk.subarray(0, Math.max(0, cut - sent)));
          if (fault === "reset-next-blob") {
            await sleep(20);
            res.socket?.resetAndDestroy();
          } else if (fault === "truncate-next-blob") {
            res.end();
          } else {
            // stall: keep the connection open, send nothing more
            await new Promise<void>((r) => res.once("close", () => r()));
          }
          ures.destroy();
          return;
        }
        await send(chunk);
      }
      res.end();
    } catch {
      res.destroy();
    }
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  const [lhost, lport] = opts.listen ? (opts.listen.split(":") as [string, string]) : ["127.0.0.1", "0"];
  await new Promise<void>((r) => server.listen(Number(lport), lhost, r));
  const host = `${lhost}:${(server.address() as AddressInfo).port}`;
  return {
    host,
    bytesServed: () => served,
    blobBytesServed: (d) => perBlob.get(d) ?? 0,
    setRate: (r) => {
      rate = r;
    },
    injectFault: (f) => {
      faults.push(f);
    },
    clearFaults: () => faults.splice(0).length,
    setIgnoreRange: (on) => {
      ignoreRange = on;
    },
    redirectBlobs: (h) => {
      redirectTo = h;
    },
    requests: () => seen.slice(),
    stop: () =>
      new Promise<void>((r) => {
        for (const u of live) u.destroy();
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

// --------------------------------------------------------------------- images

export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
export const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
export const DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";

/** An uncompressed tar holding the given regular files (path → content). */
export function tarOf(files: Record<string, string | Buffer>): Promise<Buffer> {
  const pack = tar.pack();
  for (const [name, content] of Object.entries(files)) pack.entry({ name, mode: 0o644, mtime: new Date(0) }, content);
  pack.finalize();
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    pack.on("data", (b: unknown) => parts.push(b as Buffer));
    pack.on("end", () => resolve(Buffer.concat(parts)));
    pack.on("error", reject);
  });
}

export interface LayerSpec {
  files?: Record<string, string | Buffer>;
  /** A tar built by the caller (links, directories, whiteouts), instead of `files`. */
  tar?: Buffer;
  compression?: "gzip" | "zstd" | "none";
  /** Overrides the media type the manifest lists for this layer. */
  mediaType?: string;
}

export interface PushedLayer {
  digest: string;
  diffID: string;
  size: number;
  mediaType: string;
  blob: Buffer;
  tar: Buffer;
}

export interface PushedImage {
  manifestDigest: string;
  manifest: Buffer;
  configDigest: string;
  config: Buffer;
  layers: PushedLayer[];
}

export interface ImageSpec {
  layers: LayerSpec[];
  /** OCI (default) or Docker schema 2 media types. */
  format?: "oci" | "docker";
  platform?: { os: string; architecture: string; variant?: string };
  /** Edits the config object before it is serialised. */
  editConfig?: (c: Record<string, unknown>) => void;
  /** Edits the manifest object before it is serialised. */
  editManifest?: (m: Record<string, unknown>) => void;
  auth?: BasicAuth;
}

function layerMediaType(format: "oci" | "docker", c: "gzip" | "zstd" | "none"): string {
  if (format === "docker") {
    if (c !== "gzip") throw new Error("docker schema 2 layers are gzip");
    return "application/vnd.docker.image.rootfs.diff.tar.gzip";
  }
  return c === "gzip" ? "application/vnd.oci.image.layer.v1.tar+gzip" : c === "zstd" ? "application/vnd.oci.image.layer.v1.tar+zstd" : "application/vnd.oci.image.layer.v1.tar";
}

/**
 * Builds an image in process (tar layers, compressed as asked), pushes its
 * blobs and its manifest (under `tag`, which may be a digest to push by
 * digest) and returns everything it pushed.
 */
export async function pushImage(host: string, repo: string, tag: string, spec: ImageSpec): Promise<PushedImage> {
  const format = spec.format ?? "oci";
  const layers: PushedLayer[] = [];
  for (const l of spec.layers) {
    const t = l.tar ?? (await tarOf(l.files ?? {}));
    const c = l.compression ?? "gzip";
    const blob = c === "gzip" ? gzipSync(t) : c === "zstd" ? zstdCompressSync(t) : t;
    const digest = await pushBlob(host, repo, blob, spec.auth);
    layers.push({ digest, diffID: sha256(t), size: blob.length, mediaType: l.mediaType ?? layerMediaType(format, c), blob, tar: t });
  }
  const platform = spec.platform ?? { os: "linux", architecture: "amd64" };
  const configObj: Record<string, unknown> = {
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    config: { Cmd: ["/bin/sh"] },
    rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffID) },
    history: layers.map(() => ({ created_by: "wharf test" })),
  };
  spec.editConfig?.(configObj);
  const config = Buffer.from(JSON.stringify(configObj));
  const configDigest = await pushBlob(host, repo, config, spec.auth);
  const mediaType = format === "oci" ? OCI_MANIFEST : DOCKER_MANIFEST;
  const manifestObj: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType,
    config: { mediaType: format === "oci" ? "application/vnd.oci.image.config.v1+json" : "application/vnd.docker.container.image.v1+json", digest: configDigest, size: config.length },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  };
  spec.editManifest?.(manifestObj);
  const manifest = Buffer.from(JSON.stringify(manifestObj));
  const manifestDigest = await pushManifest(host, repo, tag === "@digest" ? sha256(manifest) : tag, manifest, mediaType, spec.auth);
  return { manifestDigest, manifest, configDigest, config, layers };
}

/** Pushes an index (OCI or Docker list) of already pushed manifests under `tag`. */
export async function pushIndex(
  host: string,
  repo: string,
  tag: string,
  entries: { image: PushedImage; platform: { os: string; architecture: string; variant?: string }; mediaType?: string }[],
  format: "oci" | "docker" = "oci",
  auth?: BasicAuth,
): Promise<{ digest: string; body: Buffer }> {
  const mediaType = format === "oci" ? OCI_INDEX : DOCKER_LIST;
  const body = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType,
      manifests: entries.map((e) => ({
        mediaType: e.mediaType ?? (format === "oci" ? OCI_MANIFEST : DOCKER_MANIFEST),
        digest: e.image.manifestDigest,
        size: e.image.manifest.length,
        platform: e.platform,
      })),
    }),
  );
  const digest = await pushManifest(host, repo, tag, body, mediaType, auth);
  return { digest, body };
}

// ----------------------------------------------------------------- assertions

/** Awaits `p`, expecting a WharfError with `code` whose message matches; returns it. */
export async function rejectsWith(t: Test, p: Promise<unknown>, code: string, message: RegExp, name: string): Promise<WharfError | undefined> {
  try {
    await p;
  } catch (e) {
    t.ok(e instanceof WharfError, `${name}: a WharfError (${(e as Error).name})`);
    t.equal((e as WharfError).code, code, `${name}: ${code}`);
    t.match((e as Error).message, message, `${name}: ${(e as Error).message}`);
    return e instanceof WharfError ? e : undefined;
  }
  t.fail(`${name}: did not fail`);
  return undefined;
}

/** A pino destination that keeps every line, to search the logs for secrets. */
export function logSink(): { lines: string[]; write(s: string): void } {
  const lines: string[] = [];
  return { lines, write: (s: string) => void lines.push(s) };
}
