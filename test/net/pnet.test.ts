// The private-network ciphers: xsalsa20's shared WebAssembly memory runs away
// once one large update made it grow (every other cipher's view is stale and
// grows it again on each update, up to the maximum); chunked updates never
// make it grow, and finalized ciphers give their slots back.

import { createRequire } from "node:module";
import t from "tap";
import { chunked } from "../../net/pnet.js";

const require = createRequire(import.meta.url);
type Cipher = { update(b: Uint8Array): Uint8Array; finalize(): void };
const xsalsa20 = require(require.resolve("xsalsa20", { paths: [require.resolve("@libp2p/pnet")] })) as (n: Uint8Array, k: Uint8Array) => Cipher;
const nonce = (i: number) => new Uint8Array(24).fill(i);
const key = new Uint8Array(32).fill(7);
const wasmPages = (): number => {
  // The module instance is shared: any cipher's memory is its memory.
  const c = xsalsa20(nonce(99), key) as unknown as { _xor: { _memory: Uint8Array } };
  const pages = c._xor._memory.buffer.byteLength / 65536;
  (c as unknown as Cipher).finalize();
  return pages;
};

t.test("chunked ciphers: the same stream, and the memory never grows", async (t) => {
  const before = wasmPages();
  const a = chunked(xsalsa20(nonce(1), key));
  const b = chunked(xsalsa20(nonce(2), key));
  const big = new Uint8Array(3 << 20).fill(1);
  const out = b.update(big);
  for (let i = 0; i < 2000; i++) (i % 2 === 0 ? a : b).update(new Uint8Array(1500));
  t.equal(wasmPages(), before, "no growth after a 3 MiB update and 2000 small ones, taking turns");
  // The same key stream as one unchunked update (the cipher is a stream).
  const ref = xsalsa20(nonce(2), key);
  const whole = new Uint8Array(big.length);
  for (let i = 0; i < big.length; i += 60_000) whole.set(ref.update(big.subarray(i, i + 60_000)), i);
  ref.finalize();
  t.ok(Buffer.from(out).equals(Buffer.from(whole)), "chunking does not change the output");
  a.finalize();
  b.finalize();
  t.same(a.update(new Uint8Array(10)).length, 0, "a finalized cipher passes nothing on");
});

t.test("unchunked (the library as pnet uses it): the memory runs away to its maximum", async (t) => {
  const a = xsalsa20(nonce(3), key);
  const b = xsalsa20(nonce(4), key);
  b.update(new Uint8Array(3 << 20));
  const start = wasmPages();
  let err: unknown;
  try {
    // Two connections taking turns: each growth leaves the other's view
    // stale, and its next update grows the memory once more.
    for (let i = 0; i < 5000; i++) (i % 2 === 0 ? a : b).update(new Uint8Array(1500));
  } catch (e) {
    err = e;
  }
  t.match(String(err), /Maximum memory size exceeded/, `small updates after one large one grew the memory from ${start} pages until it failed`);
});
