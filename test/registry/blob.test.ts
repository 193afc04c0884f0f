// openBlob(): streaming with verification, resume from a partial file, and
// the failures a registry connection has (resets, 503s, truncated and stalled
// bodies, wrong bytes), through a fault-injecting proxy in front of a real
// docker-registry.

import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import t from "tap";
import { RegistryClient, type RegistryClientOptions } from "../../src/registry/client.js";
import { parseReference } from "../../src/registry/reference.js";
import { pushBlob, rejectsWith, startProxy, startRegistry } from "../helpers/registry.js";

const reg = await startRegistry();
const proxy = await startProxy(reg.host);
const tmp = mkdtempSync(join(tmpdir(), "wharf-blob-test-"));
t.teardown(async () => {
  await proxy.stop();
  await reg.stop();
  rmSync(tmp, { recursive: true, force: true });
});

const SIZE = 1536 * 1024 + 17;
const data = randomBytes(SIZE);
const digest = await pushBlob(reg.host, "blobs/big", data);
const desc = { digest, size: SIZE };
const repo = parseReference(`${proxy.host}/blobs/big`);
let fileNo = 0;
const partialPath = (): string => join(tmp, `partial-${++fileNo}`);

const client = (o: RegistryClientOptions = {}): RegistryClient =>
  new RegistryClient({ insecureRegistries: [proxy.host], retryBaseMs: 10, timeoutMs: 2000, ...o });

async function collect(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Runs f and returns how many bytes of the blob the proxy served meanwhile, and the requests it saw. */
async function served<T>(f: () => Promise<T>): Promise<{ value: T; bytes: number; requests: ReturnType<typeof proxy.requests> }> {
  const before = proxy.blobBytesServed(digest);
  const n = proxy.requests().length;
  const value = await f();
  return { value, bytes: proxy.blobBytesServed(digest) - before, requests: proxy.requests().slice(n) };
}

t.test("streams a blob whole, verified, with progress, into a new partial file", async (t) => {
  const c = client();
  const file = partialPath();
  const progress: { done: number; total: number; fromNetwork: number }[] = [];
  const r = await served(() => collect(c.openBlob(repo, desc, { partialFile: file, onProgress: (p) => progress.push(p) })));
  t.ok(r.value.equals(data), "the bytes");
  t.equal(r.bytes, SIZE, "served once");
  t.equal(c.bytesFetched, SIZE);
  t.ok(readFileSync(file).equals(data), "the partial file holds the whole blob");
  t.same(progress.at(-1), { done: SIZE, total: SIZE, fromNetwork: SIZE });
  t.ok(progress.every((p, i) => i === 0 || p.done >= progress[i - 1]!.done), "progress is monotonic");
  t.same(r.requests.map((q) => q.range), [undefined], "one request, no Range");
});

t.test("resumes from a partial file: only the remaining bytes are served", async (t) => {
  const c = client();
  const file = partialPath();
  const have = 600_000;
  writeFileSync(file, data.subarray(0, have));
  let last = { done: 0, total: 0, fromNetwork: 0 };
  const r = await served(() => collect(c.openBlob(repo, desc, { partialFile: file, onProgress: (p) => (last = p) })));
  t.ok(r.value.equals(data), "all the bytes, from byte 0");
  t.equal(r.bytes, SIZE - have, "the proxy served only what was missing");
  t.same(r.requests.map((q) => q.range), [`bytes=${have}-`]);
  t.same(last, { done: SIZE, total: SIZE, fromNetwork: SIZE - have });
  t.equal(c.bytesFetched, SIZE - have);
  t.ok(readFileSync(file).equals(data), "the partial file is complete");

  const again = await served(() => collect(c.openBlob(repo, desc, { partialFile: file })));
  t.ok(again.value.equals(data), "a complete partial file is verified and served from disk");
  t.equal(again.requests.length, 0, "without a request");
});

t.test("a registry that answers a Range request with 200 is handled", async (t) => {
  const file = partialPath();
  const have = 500_000;
  writeFileSync(file, data.subarray(0, have));
  proxy.setIgnoreRange(true);
  t.teardown(() => proxy.setIgnoreRange(false));
  const r = await served(() => collect(client().openBlob(repo, desc, { partialFile: file })));
  t.ok(r.value.equals(data));
  t.equal(r.bytes, SIZE, "the whole body came");
  t.ok(readFileSync(file).equals(data), "and the file did not get the first bytes twice");
});

for (const fault of ["reset-next-blob", "truncate-next-blob", "503-next", "stall-next-blob"] as const) {
  t.test(`retried after ${fault}, resuming with a Range`, async (t) => {
    const file = partialPath();
    proxy.injectFault(fault);
    const r = await served(() => collect(client({ timeoutMs: fault === "stall-next-blob" ? 500 : 5000 }).openBlob(repo, desc, { partialFile: file })));
    t.ok(r.value.equals(data), "the bytes");
    t.ok(readFileSync(file).equals(data), "the file");
    t.equal(r.requests.length, 2, "one retry");
    if (fault === "503-next") t.equal(r.requests[1]!.range, undefined, "nothing was received, nothing to skip");
    else t.match(r.requests[1]!.range ?? "", /^bytes=[1-9][0-9]*-$/, `the retry asks for the rest: ${r.requests[1]!.range}`);
    if (fault !== "503-next") t.ok(r.bytes < 2 * SIZE - 100_000, `bytes served ${r.bytes}: the retry did not start over`);
  });
}

t.test("the retry budget counts failures in a row without progress", async (t) => {
  for (let i = 0; i < 3; i++) proxy.injectFault("reset-next-blob");
  const ok = await collect(client({ retries: 1 }).openBlob(repo, desc));
  t.ok(ok.equals(data), "three resets, each after progress: still fine with retries=1");

  for (let i = 0; i < 3; i++) proxy.injectFault("503-next");
  await rejectsWith(t, collect(client({ retries: 2 }).openBlob(repo, desc)), "REGISTRY_UNAVAILABLE", new RegExp(`blob ${digest} of ${proxy.host}/blobs/big: failed 3 times in a row at byte 0 of ${SIZE}: status 503`), "three 503s");
});

t.test("wrong bytes: DIGEST_MISMATCH, and the partial file is removed", async (t) => {
  const file = partialPath();
  proxy.injectFault("wrong-body-next-blob");
  const e = await rejectsWith(t, collect(client().openBlob(repo, desc, { partialFile: file })), "DIGEST_MISMATCH", new RegExp(`blob ${digest} of .*: content hashes to sha256:`), "wrong body");
  t.ok(e);
  t.notOk(existsSync(file), "partial file removed");

  const bad = partialPath();
  writeFileSync(bad, Buffer.alloc(1000, 1));
  await rejectsWith(t, collect(client().openBlob(repo, desc, { partialFile: bad })), "DIGEST_MISMATCH", /content hashes to/, "corrupt partial file");
  t.notOk(existsSync(bad), "corrupt partial file removed");
  t.ok((await collect(client().openBlob(repo, desc, { partialFile: bad }))).equals(data), "and the next attempt starts over and succeeds");
});

t.test("a body longer than the descriptor's size is a DIGEST_MISMATCH", async (t) => {
  const file = partialPath();
  const r = await served(() =>
    rejectsWith(t, collect(client().openBlob(repo, { digest, size: SIZE - 1000 }, { partialFile: file })), "DIGEST_MISMATCH", new RegExp(`longer than the ${SIZE - 1000} bytes`), "too long"),
  );
  t.notOk(existsSync(file), "partial file removed");
  t.equal(r.requests.length, 1, "not retried");
});

t.test("a shorter blob than declared ends as a DIGEST_MISMATCH after one range retry", async (t) => {
  const r = await served(() =>
    rejectsWith(t, collect(client().openBlob(repo, { digest, size: SIZE + 10 })), "DIGEST_MISMATCH", /fewer than the \d+ bytes/, "too short"),
  );
  t.equal(r.requests.length, 2);
});

t.test("404 is NOT_FOUND, without retries; digests we cannot verify are refused", async (t) => {
  const missing = { digest: `sha256:${"1".repeat(64)}`, size: 10 };
  const r = await served(() => rejectsWith(t, collect(client().openBlob(repo, missing)), "NOT_FOUND", new RegExp(`blob ${missing.digest} of ${proxy.host}/blobs/big: not found \\(404\\)`), "404"));
  t.equal(r.requests.length, 1, "one request");
  await rejectsWith(t, collect(client().openBlob(repo, { digest: `sha512:${"1".repeat(128)}`, size: 1 })), "INVALID_ARGUMENT", /sha512.*not supported/, "sha512");
});

t.test("aborting the signal destroys the stream promptly; the partial file keeps what came", async (t) => {
  proxy.setRate(256 * 1024);
  t.teardown(() => proxy.setRate(undefined));
  const file = partialPath();
  const ac = new AbortController();
  const s = client().openBlob(repo, desc, { partialFile: file, signal: ac.signal });
  let got = 0;
  const started = Date.now();
  let abortedAt = 0;
  try {
    for await (const c of s) {
      got += (c as Buffer).length;
      if (got > 100_000 && !ac.signal.aborted) {
        abortedAt = Date.now();
        ac.abort();
      }
    }
    t.fail("the stream ended");
  } catch (e) {
    t.equal((e as Error).name, "AbortError", `an AbortError: ${(e as Error).message}`);
  }
  t.ok(Date.now() - abortedAt < 500, "promptly");
  t.ok(Date.now() - started < 3000, "long before the throttled download could finish");
  t.ok(s.destroyed, "destroyed");
  const kept = readFileSync(file);
  t.ok(kept.length >= 100_000 && kept.equals(data.subarray(0, kept.length)), `the partial file keeps a correct prefix (${kept.length} bytes)`);

  const pre = new AbortController();
  pre.abort();
  await t.rejects(collect(client().openBlob(repo, desc, { signal: pre.signal })), { name: "AbortError" }, "an already aborted signal");
});

t.test("fetchBlob holds small blobs only", async (t) => {
  await rejectsWith(t, client().fetchBlob(repo, { digest, size: 1 << 30 }), "INVALID_ARGUMENT", /too large to hold in memory/, "1 GiB");
  const b = await client().fetchBlob(repo, desc);
  t.ok(b.equals(data));
});

t.test("a whole blob (a config) that arrives damaged once is fetched again; twice is a DIGEST_MISMATCH", async (t) => {
  proxy.injectFault("wrong-body-next-blob");
  t.ok((await client().fetchBlob(repo, desc)).equals(data), "the second fetch verifies");
  proxy.injectFault("wrong-body-next-blob");
  proxy.injectFault("wrong-body-next-blob");
  await rejectsWith(t, client().fetchBlob(repo, desc), "DIGEST_MISMATCH", /content hashes to/, "damaged twice");
});
