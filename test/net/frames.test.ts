// Length-prefixed frames read from a stream's chunks, however the chunks
// cut them (the framing lpStream writes: an unsigned varint length first;
// agents exchange them in every cluster test).

import { randomBytes } from "node:crypto";
import t from "tap";
import { Uint8ArrayList } from "uint8arraylist";
import * as varint from "uint8-varint";
import { FrameError, readFrames } from "../../net/frames.js";

const frame = (b: Uint8Array): Buffer => Buffer.concat([varint.encode(b.length), b]);

async function* chunksOf(bytes: Buffer, cuts: readonly number[]): AsyncGenerator<Uint8Array | Uint8ArrayList> {
  let at = 0;
  for (const [i, c] of cuts.entries()) {
    const part = bytes.subarray(at, c);
    yield i % 2 === 0 ? part : new Uint8ArrayList(part.subarray(0, 1), part.subarray(1));
    at = c;
  }
  yield bytes.subarray(at);
}

async function collect(src: AsyncIterable<Uint8Array | Uint8ArrayList>, max = 1 << 20): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const f of readFrames(src, max)) out.push(Buffer.from(f));
  return out;
}

t.test("frames come out whole wherever the chunks cut them", async (t) => {
  const msgs = [randomBytes(0), randomBytes(1), randomBytes(127), randomBytes(128), randomBytes(300), randomBytes(70_000), randomBytes(5)];
  const bytes = Buffer.concat(msgs.map(frame));
  // Every cut point once, and cuts inside length prefixes and in runs of small chunks.
  const bad: number[] = [];
  for (let cut = 1; cut < bytes.length; cut += cut < 400 ? 1 : 997) {
    const got = await collect(chunksOf(bytes, [cut]));
    if (got.length !== msgs.length || got.some((g, i) => !g.equals(msgs[i]!))) bad.push(cut);
  }
  t.same(bad, [], "two chunks, cut anywhere");
  const manyCuts = Array.from({ length: 200 }, (_, i) => i + 1);
  t.same(await collect(chunksOf(bytes, manyCuts)), msgs, "a byte per chunk for the first 200 bytes");
  t.same(await collect(chunksOf(bytes, [])), msgs, "all in one chunk");
});

t.test("oversized, malformed and cut-off frames are errors", async (t) => {
  await t.rejects(collect(chunksOf(frame(randomBytes(2000)), [1]), 1000), { name: "FrameError", message: /2000 bytes is over the limit of 1000/ }, "refused from its prefix alone");
  await t.rejects(collect(chunksOf(Buffer.alloc(8, 0xff), [])), FrameError, "a prefix that never ends");
  await t.rejects(collect(chunksOf(frame(randomBytes(50)).subarray(0, 30), [])), { message: /ended inside a frame \(30 bytes/ });
  t.same(await collect(chunksOf(Buffer.alloc(0), [])), [], "an empty stream has no frames");
});
