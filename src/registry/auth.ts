// Registry authentication: WWW-Authenticate challenges, credentials from a
// docker config.json (inline, credential helpers, credential stores), Basic
// auth, and Bearer tokens from a token server (the distribution token spec,
// including the OAuth2 refresh-token flow for identity tokens).
//
// Contract: no password, identity token, bearer token or Authorization value
// is ever written to a log line or put into an error message. Usernames may be.

import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import type { Logger } from "pino";
import { z } from "zod";
import { WharfError } from "../errors.js";
import { DOCKER_HUB, normaliseRegistry } from "./reference.js";
import { loggableUrl } from "./transport.js";

export interface Challenge {
  /** Lowercased: "basic", "bearer", … */
  scheme: string;
  /** Parameter names lowercased, values unquoted. */
  params: Record<string, string>;
}

/**
 * Parses a WWW-Authenticate value (RFC 7235): one or more challenges, each a
 * scheme followed by comma-separated `name=value` parameters whose values may
 * be quoted strings containing commas, spaces and backslash escapes. Several
 * header lines joined with ", " parse the same way.
 */
export function parseWwwAuthenticate(h: string): Challenge[] {
  // Split at the commas outside quoted strings.
  const items: string[] = [];
  let cur = "";
  let quoted = false;
  for (let i = 0; i < h.length; i++) {
    const c = h[i]!;
    if (quoted && c === "\\" && i + 1 < h.length) {
      cur += c + h[++i]!;
    } else if (c === '"') {
      quoted = !quoted;
      cur += c;
    } else if (c === "," && !quoted) {
      items.push(cur);
      cur = "";
    } else cur += c;
  }
  items.push(cur);

  const out: Challenge[] = [];
  let ch: Challenge | undefined;
  const addParam = (s: string): boolean => {
    const m = PARAM.exec(s);
    if (!m || !ch) return false;
    let v = m[2]!;
    if (v.startsWith('"')) v = v.replace(/^"|"$/g, "").replace(/\\(.)/g, "$1");
    ch.params[m[1]!.toLowerCase()] = v;
    return true;
  };
  for (const raw of items) {
    const item = raw.trim();
    if (item === "") continue;
    const m = /^([^\s=]+)(?:\s+(.*))?$/s.exec(item);
    if (m && !PARAM.test(item)) {
      ch = { scheme: m[1]!.toLowerCase(), params: {} };
      out.push(ch);
      const rest = m[2]?.trim();
      if (rest && !TOKEN68.test(rest)) addParam(rest);
    } else addParam(item);
  }
  return out;
}

const PARAM = /^([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^\s"]*)$/s;
const TOKEN68 = /^[A-Za-z0-9._~+/-]+=*$/;

export interface Credentials {
  username: string;
  /** A password or personal access token, for Basic auth and token requests. */
  password?: string;
  /** An OAuth2 refresh token (docker config "identitytoken"; a helper's "<token>" user). */
  identityToken?: string;
}

const authEntrySchema = z.object({
  auth: z.string().optional(),
  username: z.string().optional(),
  password: z.string().optional(),
  identitytoken: z.string().optional(),
});

const dockerConfigSchema = z.object({
  auths: z.record(z.string(), authEntrySchema).optional(),
  credHelpers: z.record(z.string(), z.string()).optional(),
  credsStore: z.string().optional(),
});

type DockerConfig = z.infer<typeof dockerConfigSchema>;

/** Where docker looks: $DOCKER_CONFIG/config.json, else ~/.docker/config.json. */
export function defaultDockerConfigPath(): string {
  const dir = process.env.DOCKER_CONFIG;
  return dir ? join(dir, "config.json") : join(homedir(), ".docker", "config.json");
}

/** The registry host a docker config key names ("https://index.docker.io/v1/" → "docker.io"). */
export function configKeyHost(key: string): string {
  let k = key.trim().replace(/^[a-z][a-z0-9+.-]*:\/\//i, "");
  const slash = k.indexOf("/");
  if (slash >= 0) k = k.slice(0, slash);
  return normaliseRegistry(k.toLowerCase());
}

/** The server URL docker hands credential helpers for a registry. */
function helperServerUrl(registry: string): string {
  return registry === DOCKER_HUB ? "https://index.docker.io/v1/" : registry;
}

const helperOutputSchema = z.object({ Username: z.string(), Secret: z.string() });

/**
 * Credentials per registry host from a docker config file, looked up the way
 * docker does: credHelpers[host], then credsStore, then auths[host]. Read
 * lazily (only when a registry asks for credentials) and cached per host.
 */
export class CredentialStore {
  private config: Promise<DockerConfig | undefined> | undefined;
  private readonly cache = new Map<string, Promise<Credentials | undefined>>();

  constructor(
    readonly configPath: string,
    private readonly log: Logger,
  ) {}

  get(registry: string): Promise<Credentials | undefined> {
    const host = normaliseRegistry(registry.toLowerCase());
    let p = this.cache.get(host);
    if (!p) {
      p = this.lookup(host);
      this.cache.set(host, p);
      // A failed lookup (a broken helper) is not remembered: the next pull tries again.
      p.catch(() => this.cache.delete(host));
    }
    return p;
  }

  private loadConfig(): Promise<DockerConfig | undefined> {
    this.config ??= (async () => {
      let text: string;
      try {
        text = await readFile(this.configPath, "utf8");
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw new WharfError("INVALID_ARGUMENT", `cannot read docker config ${this.configPath}: ${(e as NodeJS.ErrnoException).code ?? "error"}`);
      }
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        // Not the parser's message: it quotes the file, which holds secrets.
        throw new WharfError("INVALID_ARGUMENT", `docker config ${this.configPath} is not valid JSON`);
      }
      const r = dockerConfigSchema.safeParse(json);
      if (!r.success) {
        const where = r.error.issues[0]?.path.join(".") ?? "";
        throw new WharfError("INVALID_ARGUMENT", `docker config ${this.configPath} is malformed${where ? ` at ${where}` : ""}`);
      }
      return r.data;
    })();
    return this.config;
  }

  private async lookup(host: string): Promise<Credentials | undefined> {
    const cfg = await this.loadConfig();
    if (!cfg) return undefined;
    const helper = Object.entries(cfg.credHelpers ?? {}).find(([k]) => configKeyHost(k) === host)?.[1];
    if (helper) {
      const c = await this.runHelper(helper, host);
      if (c) return c;
    } else if (cfg.credsStore) {
      const c = await this.runHelper(cfg.credsStore, host);
      if (c) return c;
    }
    for (const [key, entry] of Object.entries(cfg.auths ?? {})) {
      if (configKeyHost(key) !== host) continue;
      const c = this.fromEntry(key, entry);
      if (c) return c;
    }
    return undefined;
  }

  private fromEntry(key: string, e: z.infer<typeof authEntrySchema>): Credentials | undefined {
    let username = e.username;
    let password = e.password;
    if (e.auth) {
      const decoded = Buffer.from(e.auth, "base64").toString("utf8");
      const colon = decoded.indexOf(":");
      if (colon <= 0) throw new WharfError("INVALID_ARGUMENT", `docker config ${this.configPath}: auths[${JSON.stringify(key)}].auth is not base64 of user:password`);
      username = decoded.slice(0, colon);
      password = decoded.slice(colon + 1);
    }
    if (e.identitytoken) return { username: username ?? "", identityToken: e.identitytoken };
    if (username !== undefined && password !== undefined) return { username, password };
    return undefined;
  }

  /** Runs `docker-credential-<name> get`; undefined when the helper has no credentials for the host. */
  private runHelper(name: string, host: string): Promise<Credentials | undefined> {
    const prog = `docker-credential-${name}`;
    return new Promise((resolve, reject) => {
      const child = spawn(prog, ["get"], { stdio: ["pipe", "pipe", "pipe"] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
      child.stdout.on("data", (b: Buffer) => out.push(b));
      child.stderr.on("data", (b: Buffer) => err.push(b));
      child.stdin.on("error", () => {}); // a helper that exits without reading stdin
      child.on("error", (e) => {
        clearTimeout(timer);
        const code = (e as NodeJS.ErrnoException).code;
        reject(new WharfError("UNAUTHORIZED", code === "ENOENT" ? `credential helper ${prog} (for ${host}) is not on PATH` : `credential helper ${prog} (for ${host}) failed to start: ${code ?? "error"}`));
      });
      child.on("close", (code, sig) => {
        clearTimeout(timer);
        const stdout = Buffer.concat(out).toString("utf8");
        if (code !== 0) {
          // The only output we interpret, and never repeat: it could hold anything.
          if (/credentials not found/i.test(stdout + Buffer.concat(err).toString("utf8"))) {
            this.log.debug({ helper: prog, registry: host }, "credential helper has no credentials for this registry");
            resolve(undefined);
          } else reject(new WharfError("UNAUTHORIZED", `credential helper ${prog} failed for ${host} (${sig ? `signal ${sig}` : `exit status ${code}`})`));
          return;
        }
        let parsed: z.infer<typeof helperOutputSchema>;
        try {
          parsed = helperOutputSchema.parse(JSON.parse(stdout));
        } catch {
          reject(new WharfError("UNAUTHORIZED", `credential helper ${prog} printed something other than {"Username","Secret"} for ${host}`));
          return;
        }
        this.log.debug({ helper: prog, registry: host, username: parsed.Username }, "credentials from helper");
        resolve(parsed.Username === "<token>" ? { username: "", identityToken: parsed.Secret } : { username: parsed.Username, password: parsed.Secret });
      });
      child.stdin.end(helperServerUrl(host));
    });
  }
}

export function basicHeader(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password ?? ""}`).toString("base64")}`;
}

/** A minimal HTTP exchange the authenticator uses to reach token servers (supplied by the client, with its retries). */
export type TokenFetch = (
  u: URL,
  init: { method: "GET" | "POST"; headers: Record<string, string>; body?: Buffer; signal?: AbortSignal },
) => Promise<{ status: number; body: Buffer }>;

const tokenResponseSchema = z.object({
  token: z.string().optional(),
  access_token: z.string().optional(),
  expires_in: z.number().optional(),
  refresh_token: z.string().optional(),
});

interface CachedToken {
  header: string;
  expiresAt: number;
}

/**
 * Decides the Authorization header of each registry request. Anonymous until
 * a registry challenges; then Basic (remembered per registry) or a Bearer
 * token per (registry, scope), cached until it expires.
 */
export class Authenticator {
  private readonly tokens = new Map<string, CachedToken>();
  private readonly basic = new Map<string, string>();

  constructor(
    private readonly creds: CredentialStore,
    private readonly fetchToken: TokenFetch,
    /** Whether a token realm at this host may be plain http (for a registry we already reach over plain http, or a listed host). */
    private readonly allowHttp: (realmHost: string, registry: string) => boolean,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** The header to send before any challenge: a cached token or known Basic credentials. */
  header(registry: string, scope: string): string | undefined {
    const t = this.tokens.get(`${registry}\n${scope}`);
    if (t && t.expiresAt > this.now()) return t.header;
    return this.basic.get(registry);
  }

  /**
   * Answers a 401: returns the Authorization header to retry with. Throws
   * WharfError UNAUTHORIZED when there is nothing better to offer than what
   * was sent. `what` names the request for error messages.
   */
  async challenge(registry: string, scope: string, wwwAuthenticate: string | undefined, what: string, signal?: AbortSignal): Promise<string> {
    const challenges = parseWwwAuthenticate(wwwAuthenticate ?? "");
    const bearer = challenges.find((c) => c.scheme === "bearer" && c.params.realm);
    const basic = challenges.find((c) => c.scheme === "basic");
    const creds = await this.creds.get(registry);
    if (bearer) return this.bearer(registry, scope, bearer, creds, what, signal);
    if (basic) {
      if (!creds?.password) throw this.noCredentials(registry, what);
      const h = basicHeader(creds);
      this.basic.set(registry, h);
      this.log.debug({ registry, username: creds.username }, "registry wants basic auth");
      return h;
    }
    throw new WharfError("UNAUTHORIZED", `${what}: ${registry} requires authentication with a scheme we do not support (${challenges.map((c) => c.scheme).join(", ") || "no WWW-Authenticate"})`);
  }

  /** Forgets what we would send to a registry (after it refused it). */
  forget(registry: string, scope: string): void {
    this.tokens.delete(`${registry}\n${scope}`);
    this.basic.delete(registry);
  }

  /** Whether we have credentials for a registry (for error messages). */
  async hasCredentials(registry: string): Promise<boolean> {
    return (await this.creds.get(registry).catch(() => undefined)) !== undefined;
  }

  noCredentials(registry: string, what: string): WharfError {
    return new WharfError("UNAUTHORIZED", `${what}: ${registry} requires authentication and no credentials for it were found (docker config ${this.creds.configPath})`);
  }

  refused(registry: string, username: string | undefined, what: string): WharfError {
    return new WharfError(
      "UNAUTHORIZED",
      username !== undefined
        ? `${what}: ${registry} refused the credentials${username ? ` of user ${JSON.stringify(username)}` : ""}`
        : `${what}: ${registry} requires authentication and no credentials for it were found (docker config ${this.creds.configPath})`,
    );
  }

  private async bearer(registry: string, scope: string, ch: Challenge, creds: Credentials | undefined, what: string, signal?: AbortSignal): Promise<string> {
    let realm: URL;
    try {
      realm = new URL(ch.params.realm!);
    } catch {
      throw new WharfError("UNAUTHORIZED", `${what}: ${registry} names an invalid token realm`);
    }
    if (realm.protocol !== "https:" && !(realm.protocol === "http:" && this.allowHttp(realm.host, registry))) {
      throw new WharfError("UNAUTHORIZED", `${what}: ${registry} sends us to token server ${loggableUrl(realm)} over plain http; list ${realm.host} in insecureRegistries to allow it`);
    }
    const scopes = [scope];
    const asked = ch.params.scope;
    if (asked) for (const s of asked.split(" ")) if (s && !scopes.includes(s)) scopes.push(s);
    const service = ch.params.service;

    let res: { status: number; body: Buffer };
    if (creds?.identityToken) {
      const form = new URLSearchParams({ grant_type: "refresh_token", refresh_token: creds.identityToken, client_id: "wharf" });
      if (service) form.set("service", service);
      form.set("scope", scopes.join(" "));
      this.log.debug({ registry, realm: loggableUrl(realm), service, scope: scopes.join(" ") }, "fetching a token (oauth2 refresh token)");
      res = await this.fetchToken(realm, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
        body: Buffer.from(form.toString()),
        ...(signal ? { signal } : {}),
      });
    } else {
      const u = new URL(realm);
      if (service) u.searchParams.set("service", service);
      for (const s of scopes) u.searchParams.append("scope", s);
      const headers: Record<string, string> = { accept: "application/json" };
      if (creds?.password !== undefined) headers.authorization = basicHeader(creds);
      this.log.debug({ registry, realm: loggableUrl(realm), service, scope: scopes.join(" "), username: creds?.username }, "fetching a token");
      res = await this.fetchToken(u, { method: "GET", headers, ...(signal ? { signal } : {}) });
    }
    if (res.status === 401 || res.status === 403) {
      throw creds ? this.refused(registry, creds.username, what) : this.noCredentials(registry, what);
    }
    if (res.status !== 200) throw new WharfError("UNAUTHORIZED", `${what}: token server ${loggableUrl(realm)} answered ${res.status}`);
    let parsed: z.infer<typeof tokenResponseSchema>;
    try {
      parsed = tokenResponseSchema.parse(JSON.parse(res.body.toString("utf8")));
    } catch {
      throw new WharfError("UNAUTHORIZED", `${what}: token server ${loggableUrl(realm)} sent a malformed token response`);
    }
    const token = parsed.token ?? parsed.access_token;
    if (!token) throw new WharfError("UNAUTHORIZED", `${what}: token server ${loggableUrl(realm)} sent no token`);
    // The token spec's default lifetime is 60 s; renew a little early.
    const ttl = Math.max(parsed.expires_in ?? 60, 1) * 1000;
    const header = `Bearer ${token}`;
    this.tokens.set(`${registry}\n${scope}`, { header, expiresAt: this.now() + ttl - Math.min(10_000, ttl / 10) });
    return header;
  }
}
