// Authentication against real registries: htpasswd (basic) and token auth
// (the helper's token server), credentials from docker config files and
// credential helpers, redirects to storage without our Authorization, and
// no secret in any error message or log line.

import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import t, { type Test } from "tap";
import { configKeyHost, parseWwwAuthenticate } from "../../src/registry/auth.js";
import { RegistryClient, type RegistryClientOptions } from "../../src/registry/client.js";
import { parseReference } from "../../src/registry/reference.js";
import { logSink, pushImage, rejectsWith, startProxy, startRegistry } from "../helpers/registry.js";

const PASS = "s3cret-P4ss!word";
const TOKEN_PASS = "t0ken-pass-XYZ";
const tmp = mkdtempSync(join(tmpdir(), "wharf-auth-test-"));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

let cfgNo = 0;
/** Writes a docker config.json (an object, or raw text) into a fresh directory; returns its path. */
function dockerConfig(content: unknown): string {
  const dir = join(tmp, `cfg-${++cfgNo}`);
  mkdirSync(dir, { recursive: true });
  const p = join(dir, "config.json");
  writeFileSync(p, typeof content === "string" ? content : JSON.stringify(content));
  return p;
}
const b64 = (s: string): string => Buffer.from(s).toString("base64");

/** A client whose every log line (trace and up) is kept. */
function logged(o: RegistryClientOptions): { client: RegistryClient; lines: string[] } {
  const sink = logSink();
  const client = new RegistryClient({ retries: 0, ...o, log: pino({ level: "trace" }, sink) });
  return { client, lines: sink.lines };
}

/** Asserts no secret appears in the error (message, stack, own properties) or in the log lines. */
function noSecrets(t: Test, secrets: string[], err: unknown, lines: string[]): void {
  const texts = [String(err), (err as Error | undefined)?.stack ?? "", JSON.stringify(err ?? null), ...lines];
  for (const s of secrets) {
    t.notOk(texts.some((x) => x.includes(s)), `${JSON.stringify(s.slice(0, 12))}… appears nowhere`);
  }
  t.notOk(lines.some((l) => /authorization|Basic [A-Za-z0-9+/=]{8}|Bearer [A-Za-z0-9._-]{8}|eyJ/i.test(l)), "no Authorization header or token in the logs");
}

t.test("WWW-Authenticate parsing", async (t) => {
  t.same(parseWwwAuthenticate('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"'), [
    { scheme: "bearer", params: { realm: "https://auth.docker.io/token", service: "registry.docker.io", scope: "repository:library/busybox:pull" } },
  ]);
  t.same(parseWwwAuthenticate('Basic realm="Registry Realm"'), [{ scheme: "basic", params: { realm: "Registry Realm" } }]);
  t.same(
    parseWwwAuthenticate('Bearer realm="https://a.example/token?x=1,2", scope="repository:a/b:pull,push repository:c:pull", error="insufficient_scope", Basic realm="x\\"y"'),
    [
      { scheme: "bearer", params: { realm: "https://a.example/token?x=1,2", scope: "repository:a/b:pull,push repository:c:pull", error: "insufficient_scope" } },
      { scheme: "basic", params: { realm: 'x"y' } },
    ],
    "quoted commas, several scopes, escapes, two challenges",
  );
  t.same(parseWwwAuthenticate("Bearer realm=https://t.example/token,service=reg"), [{ scheme: "bearer", params: { realm: "https://t.example/token", service: "reg" } }], "unquoted values");
  t.same(parseWwwAuthenticate("Negotiate abc123==, Basic realm=r"), [{ scheme: "negotiate", params: {} }, { scheme: "basic", params: { realm: "r" } }], "token68");
  t.same(parseWwwAuthenticate(""), []);
});

t.test("docker config keys name hosts", async (t) => {
  t.equal(configKeyHost("https://index.docker.io/v1/"), "docker.io");
  t.equal(configKeyHost("index.docker.io"), "docker.io");
  t.equal(configKeyHost("registry-1.docker.io"), "docker.io");
  t.equal(configKeyHost("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
  t.equal(configKeyHost("GHCR.io"), "ghcr.io");
});

t.test("basic auth (htpasswd)", async (t) => {
  const reg = await startRegistry({ auth: { kind: "basic", users: { alice: PASS } } });
  t.teardown(() => reg.stop());
  const H = reg.host;
  const img = await pushImage(H, "private/app", "v1", { layers: [{ files: { a: "1" } }], auth: { user: "alice", pass: PASS } });
  const ref = parseReference(`${H}/private/app:v1`);
  const secrets = [PASS, b64(`alice:${PASS}`)];

  for (const [name, cfg] of [
    ["auths[host].auth", { auths: { [H]: { auth: b64(`alice:${PASS}`) } } }],
    ["username/password under a URL key", { auths: { [`http://${H}/v2/`]: { username: "alice", password: PASS } } }],
  ] as const) {
    const { client, lines } = logged({ insecureRegistries: [H], dockerConfig: dockerConfig(cfg) });
    const r = await client.resolve(ref);
    t.equal(r.manifestDigest, img.manifestDigest, `${name}: resolved`);
    t.ok((await client.fetchBlob(r.repository, r.layers[0]!)).equals(img.layers[0]!.blob), `${name}: blob`);
    t.ok(lines.length > 0, "there are log lines to check");
    noSecrets(t, secrets, undefined, lines);
  }

  {
    const { client, lines } = logged({ insecureRegistries: [H], dockerConfig: dockerConfig({ auths: { [H]: { auth: b64("alice:wrong-password") } } }) });
    const e = await rejectsWith(t, client.resolve(ref), "UNAUTHORIZED", new RegExp(`manifest of ${H}/private/app:v1: ${H} refused our credentials`), "wrong password");
    noSecrets(t, [...secrets, "wrong-password", b64("alice:wrong-password")], e, lines);
  }
  {
    const { client, lines } = logged({ insecureRegistries: [H], dockerConfig: join(tmp, "no-such-config.json") });
    const e = await rejectsWith(t, client.resolve(ref), "UNAUTHORIZED", /requires authentication and no credentials for it were found \(docker config .*no-such-config.json\)/, "no config file: anonymous");
    noSecrets(t, secrets, e, lines);
  }
  {
    const leaky = dockerConfig(`{"auths": {"${H}": {"auth": "${b64(`alice:${PASS}`)}"}}`);
    const e = await rejectsWith(t, new RegistryClient({ insecureRegistries: [H], dockerConfig: leaky }).resolve(ref), "INVALID_ARGUMENT", /docker config .* is not valid JSON/, "broken config file");
    noSecrets(t, secrets, e, []);
  }
});

t.test("token auth (the distribution token protocol)", async (t) => {
  const reg = await startRegistry({ auth: { kind: "token", users: { bob: TOKEN_PASS } } });
  t.teardown(() => reg.stop());
  const H = reg.host;
  const img = await pushImage(H, "tok/app", "v1", { layers: [{ files: { a: "1" } }, { files: { b: "2" } }], auth: { user: "bob", pass: TOKEN_PASS } });
  const ref = parseReference(`${H}/tok/app:v1`);
  const secrets = [TOKEN_PASS, b64(`bob:${TOKEN_PASS}`)];

  {
    const { client, lines } = logged({ insecureRegistries: [H], dockerConfig: dockerConfig({ auths: { [H]: { auth: b64(`bob:${TOKEN_PASS}`) } } }) });
    const before = reg.tokenRequests!();
    const r = await client.resolve(ref);
    t.equal(r.manifestDigest, img.manifestDigest, "resolved with a token");
    for (const l of r.layers) await client.fetchBlob(r.repository, l);
    await client.resolve(ref);
    t.equal(reg.tokenRequests!() - before, 1, "one token for the whole session: cached per (registry, scope)");
    noSecrets(t, secrets, undefined, lines);
  }
  {
    const { client, lines } = logged({ insecureRegistries: [H], dockerConfig: dockerConfig({ auths: { [H]: { username: "bob", password: "nope-not-it" } } }) });
    const e = await rejectsWith(t, client.resolve(ref), "UNAUTHORIZED", new RegExp(`${H} refused the credentials of user "bob"`), "wrong password");
    noSecrets(t, [...secrets, "nope-not-it"], e, lines);
  }
  {
    const { client, lines } = logged({ insecureRegistries: [H], dockerConfig: join(tmp, "absent.json") });
    const e = await rejectsWith(t, client.resolve(ref), "UNAUTHORIZED", /no credentials for it were found/, "anonymous gets a token that grants nothing");
    noSecrets(t, secrets, e, lines);
  }
  {
    // An identity token (OAuth2 refresh token), as `docker login` stores for some registries.
    const res = await fetch(reg.realm!, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ grant_type: "password", username: "bob", password: TOKEN_PASS, service: "wharf-test-registry", client_id: "test" }).toString(),
    });
    const refresh = ((await res.json()) as { refresh_token: string }).refresh_token;
    const { client, lines } = logged({ insecureRegistries: [H], dockerConfig: dockerConfig({ auths: { [H]: { identitytoken: refresh } } }) });
    t.equal((await client.resolve(ref)).manifestDigest, img.manifestDigest, "identity token → refresh-token grant");
    noSecrets(t, [refresh], undefined, lines);
    const bad = logged({ insecureRegistries: [H], dockerConfig: dockerConfig({ auths: { [H]: { identitytoken: "stale-refresh-token" } } }) });
    const e = await rejectsWith(t, bad.client.resolve(ref), "UNAUTHORIZED", /refused the credentials/, "stale identity token");
    noSecrets(t, ["stale-refresh-token"], e, bad.lines);
  }
});

t.test("credential helpers (credHelpers and credsStore)", async (t) => {
  const reg = await startRegistry({ auth: { kind: "basic", users: { carol: PASS } } });
  t.teardown(() => reg.stop());
  const H = reg.host;
  const img = await pushImage(H, "helped/app", "v1", { layers: [{ files: { a: "1" } }], auth: { user: "carol", pass: PASS } });
  const ref = parseReference(`${H}/helped/app:v1`);

  const bin = join(tmp, "bin");
  mkdirSync(bin, { recursive: true });
  const asked = join(tmp, "helper-asked");
  writeFileSync(
    join(bin, "docker-credential-test"),
    `#!/bin/sh
[ "$1" = get ] || exit 2
read -r server
printf '%s' "$server" > ${asked}
if [ "$server" = "${H}" ]; then
  printf '{"ServerURL":"%s","Username":"carol","Secret":"${PASS}"}' "$server"
else
  echo "credentials not found in native keychain"; exit 1
fi
`,
  );
  writeFileSync(join(bin, "docker-credential-broken"), "#!/bin/sh\necho 'oops: internal secret-ish state' >&2\nexit 3\n");
  chmodSync(join(bin, "docker-credential-test"), 0o755);
  chmodSync(join(bin, "docker-credential-broken"), 0o755);
  const oldPath = process.env.PATH;
  process.env.PATH = `${bin}:${oldPath}`;
  t.teardown(() => void (process.env.PATH = oldPath));

  for (const [name, cfg] of [
    ["credHelpers[host]", { credHelpers: { [H]: "test" } }],
    ["credsStore", { credsStore: "test", auths: { [H]: {} } }],
  ] as const) {
    const { client, lines } = logged({ insecureRegistries: [H], dockerConfig: dockerConfig(cfg) });
    t.equal((await client.resolve(ref)).manifestDigest, img.manifestDigest, name);
    t.equal(readFileSync(asked, "utf8"), H, `${name}: the helper was asked for ${H}`);
    noSecrets(t, [PASS], undefined, lines);
  }
  await rejectsWith(
    t,
    new RegistryClient({ insecureRegistries: [H], dockerConfig: dockerConfig({ credHelpers: { [H]: "missing" } }) }).resolve(ref),
    "UNAUTHORIZED",
    /credential helper docker-credential-missing \(for 127\.0\.0\.1:\d+\) is not on PATH/,
    "helper not installed",
  );
  const e = await rejectsWith(
    t,
    new RegistryClient({ insecureRegistries: [H], dockerConfig: dockerConfig({ credHelpers: { [H]: "broken" } }) }).resolve(ref),
    "UNAUTHORIZED",
    /credential helper docker-credential-broken failed for 127\.0\.0\.1:\d+ \(exit status 3\)/,
    "helper fails",
  );
  t.notMatch(e?.message ?? "", /secret-ish/, "the helper's output is not repeated");
});

t.test("a redirect to storage does not carry our Authorization", async (t) => {
  const reg = await startRegistry({ auth: { kind: "basic", users: { dave: PASS } } });
  t.teardown(() => reg.stop());
  const img = await pushImage(reg.host, "redir/app", "v1", { layers: [{ files: { a: "1" } }], auth: { user: "dave", pass: PASS } });
  const blobs = new Map([[img.configDigest, img.config], ...img.layers.map((l) => [l.digest, l.blob] as const)]);
  const storageSaw: { url: string; authorization: string | undefined }[] = [];
  const storage = http.createServer((req, res) => {
    storageSaw.push({ url: req.url ?? "", authorization: req.headers.authorization });
    const d = /blobs\/(sha256:[a-f0-9]{64})/.exec(req.url ?? "")?.[1];
    const b = d ? blobs.get(d) : undefined;
    res.writeHead(b ? 200 : 404);
    res.end(b);
  });
  await new Promise<void>((r) => storage.listen(0, "127.0.0.1", r));
  t.teardown(() => new Promise<void>((r) => storage.close(() => r())));
  const storageHost = `127.0.0.1:${(storage.address() as AddressInfo).port}`;
  const front = await startProxy(reg.host);
  t.teardown(() => front.stop());
  front.redirectBlobs(storageHost);

  const { client, lines } = logged({ insecureRegistries: [front.host, storageHost], dockerConfig: dockerConfig({ auths: { [front.host]: { username: "dave", password: PASS } } }) });
  const r = await client.resolve(parseReference(`${front.host}/redir/app:v1`));
  t.ok((await client.fetchBlob(r.repository, r.layers[0]!)).equals(img.layers[0]!.blob), "blob fetched through the redirect");
  t.ok(front.requests().some((q) => q.status === 307 && q.authorization), "the registry got our Authorization");
  t.equal(storageSaw.length, 2, "config and layer came from storage");
  t.ok(storageSaw.every((s) => s.authorization === undefined), "storage never saw it");
  t.ok(storageSaw.every((s) => s.url.includes("X-Signature=presigned-secret")), "the signed query string was kept");
  noSecrets(t, [PASS, "presigned-secret"], undefined, lines);
});
