// The connection to a registry: https unless listed insecure, retries of
// manifest requests, idle timeouts, refused connections and abort.

import http from "node:http";
import type { AddressInfo } from "node:net";
import t, { type Test } from "tap";
import { RegistryClient } from "../../src/registry/client.js";
import { Transport } from "../../src/registry/transport.js";
import { parseReference } from "../../src/registry/reference.js";
import { freePort, pushImage, rejectsWith, startProxy, startRegistry } from "../helpers/registry.js";

const reg = await startRegistry();
t.teardown(() => reg.stop());
const img = await pushImage(reg.host, "net/app", "v1", { layers: [{ files: { a: "1" } }] });

/** A local HTTP server for the test's length; resolves with its host:port. */
async function serve(t: Test, handler: http.RequestListener): Promise<string> {
  const server = http.createServer(handler);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.teardown(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

t.test("a plain-http registry not listed in insecureRegistries: a clear error, at once", async (t) => {
  const started = Date.now();
  const c = new RegistryClient(); // default retries: must not be spent on this
  await rejectsWith(
    t,
    c.resolve(parseReference(`${reg.host}/net/app:v1`)),
    "REGISTRY_UNAVAILABLE",
    new RegExp(`${reg.host} does not speak TLS \\(https\\): it looks like a plain-http server; .*list "${reg.host}" in insecureRegistries`),
    "https to an http registry",
  );
  t.ok(Date.now() - started < 1000, "not retried");
  const ok = await new RegistryClient({ insecureRegistries: [reg.host] }).resolve(parseReference(`${reg.host}/net/app:v1`));
  t.equal(ok.manifestDigest, img.manifestDigest, "listed: plain http");
});

t.test("manifest requests are retried after 503s", async (t) => {
  const proxy = await startProxy(reg.host);
  t.teardown(() => proxy.stop());
  const c = new RegistryClient({ insecureRegistries: [proxy.host], retryBaseMs: 10 });
  proxy.injectFault("503-next");
  proxy.injectFault("503-next");
  const r = await c.resolve(parseReference(`${proxy.host}/net/app:v1`));
  t.equal(r.manifestDigest, img.manifestDigest);
  t.same(proxy.requests().map((q) => q.status), [503, 503, 200, 200], "two 503s, then the manifest and the config");

  const few = new RegistryClient({ insecureRegistries: [proxy.host], retryBaseMs: 10, retries: 1 });
  proxy.injectFault("503-next");
  proxy.injectFault("503-next");
  await rejectsWith(t, few.resolve(parseReference(`${proxy.host}/net/app:v1`)), "REGISTRY_UNAVAILABLE", /manifest of .*net\/app:v1: failed after 2 attempts: status 503: UNAVAILABLE injected fault/, "retries exhausted");
});

t.test("a server that accepts but never answers times out, is retried, then given up on", async (t) => {
  const hung = new Set<http.ServerResponse>();
  const host = await serve(t, (_req, res) => void hung.add(res));
  const started = Date.now();
  await rejectsWith(
    t,
    new RegistryClient({ insecureRegistries: [host], timeoutMs: 150, retries: 2, retryBaseMs: 10 }).resolve(parseReference(`${host}/x/y:z`)),
    "REGISTRY_UNAVAILABLE",
    /failed after 3 attempts: no response from .* within 150 ms/,
    "idle timeout",
  );
  t.ok(Date.now() - started < 2000, "three 150 ms timeouts, not 30 s");
  t.equal(hung.size, 3, "three attempts reached the server");
});

t.test("a refused connection is retried, then REGISTRY_UNAVAILABLE", async (t) => {
  const host = `127.0.0.1:${await freePort()}`;
  await rejectsWith(
    t,
    new RegistryClient({ insecureRegistries: [host], retries: 2, retryBaseMs: 10 }).resolve(parseReference(`${host}/x/y:z`)),
    "REGISTRY_UNAVAILABLE",
    /failed after 3 attempts: ECONNREFUSED/,
    "refused",
  );
});

t.test("resolve() is abortable, during a request and during a backoff", async (t) => {
  const proxy = await startProxy(reg.host);
  t.teardown(() => proxy.stop());
  proxy.setRate(10);
  const c = new RegistryClient({ insecureRegistries: [proxy.host] });
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  await t.rejects(c.resolve(parseReference(`${proxy.host}/net/app:v1`), { signal: ac.signal }), { name: "AbortError" }, "while the body trickles");
  proxy.setRate(undefined);

  const host = `127.0.0.1:${await freePort()}`;
  const slow = new RegistryClient({ insecureRegistries: [host], retryBaseMs: 5000 });
  const ac2 = new AbortController();
  const started = Date.now();
  setTimeout(() => ac2.abort(), 100);
  await t.rejects(slow.resolve(parseReference(`${host}/x/y:z`), { signal: ac2.signal }), { name: "AbortError" }, "while backing off");
  t.ok(Date.now() - started < 1000, "promptly");
});

t.test("a small body dropped unread but stalled does not hold its connection forever", async (t) => {
  let closed!: () => void;
  const gone = new Promise<void>((r) => (closed = r));
  const host = await serve(t, (req, res) => {
    req.socket.once("close", () => closed());
    // An error page that announces 100 bytes, sends 10 and stalls.
    res.writeHead(404, { "content-length": "100" });
    res.write("0123456789");
  });
  const res = await new Transport(150).request(new URL(`http://${host}/v2/x/blobs/sha256:00`));
  t.equal(res.status, 404);
  const started = Date.now();
  res.discard();
  await gone;
  t.ok(Date.now() - started < 2000, `the connection closed after the idle timeout (${Date.now() - started} ms)`);
});

t.test("a body given up resets its connection: the server stops sending at once", async (t) => {
  let resolveSeen!: (v: { fin: boolean; reset: boolean }) => void;
  const seen = new Promise<{ fin: boolean; reset: boolean }>((r) => (resolveSeen = r));
  const host = await serve(t, (req, res) => {
    const s = req.socket;
    let fin = false;
    let reset = false;
    s.on("end", () => (fin = true));
    s.on("error", (e: NodeJS.ErrnoException) => (reset ||= e.code === "ECONNRESET"));
    s.on("close", () => resolveSeen({ fin, reset }));
    res.writeHead(200, { "content-length": String(100 << 20) });
    const timer = setInterval(() => res.write(Buffer.alloc(16 << 10)), 5);
    res.on("close", () => clearInterval(timer));
  });
  const res = await new Transport(5000).request(new URL(`http://${host}/v2/x/blobs/sha256:00`));
  for await (const _ of res.chunks()) break;
  t.same(await seen, { fin: false, reset: true }, "the server saw a reset, not a FIN");
});
