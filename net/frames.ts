// Length-prefixed frames (unsigned varint length, then the bytes: the
// framing of @libp2p/utils' lpStream, which writes them) read from a stream.
//
// lpStream's reader takes the length one byte at a time from a list of every
// chunk not yet read, each byte a scan of that list: a peer's stream that
// fell behind by many small messages costs quadratic time to catch up. Here
// a chunk is scanned once, and chunks are joined only when a whole frame is
// in them.

/** A stream's chunk: bytes, or a list of them (libp2p's Uint8ArrayList). */
type Chunk = Uint8Array | { subarray(): Uint8Array };

export class FrameError extends Error {
  override readonly name = "FrameError";
}

/** A varint of more bytes than this is not a length we accept (2^49 > any frame). */
const MAX_PREFIX = 7;

/**
 * Yields each frame of `source` as it completes. Throws FrameError for a
 * frame longer than `maxFrame` (before reading it), a malformed length, or
 * a stream that ends inside a frame. A yielded frame may share memory with
 * later ones: use it before asking for the next.
 */
export async function* readFrames(source: AsyncIterable<Chunk>, maxFrame: number): AsyncGenerator<Uint8Array> {
  let chunks: Uint8Array[] = [];
  let total = 0;
  /** The current frame's prefix and data lengths, once its prefix is complete. */
  let frame: { prefix: number; length: number } | undefined;
  for await (const c of source) {
    const chunk = c instanceof Uint8Array ? c : c.subarray();
    if (chunk.length === 0) continue;
    chunks.push(chunk);
    total += chunk.length;
    for (;;) {
      if (!frame) {
        if (total === 0) break;
        frame = prefixOf(chunks, total, maxFrame);
        if (!frame) break;
      }
      const end = frame.prefix + frame.length;
      if (total < end) break;
      const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, total);
      yield all.subarray(frame.prefix, end);
      chunks = end < all.length ? [all.subarray(end)] : [];
      total -= end;
      frame = undefined;
    }
  }
  if (total > 0) throw new FrameError(`the stream ended inside a frame (${total} bytes of it)`);
}

/** The length prefix at the head of `chunks`, or undefined while it is incomplete. */
function prefixOf(chunks: readonly Uint8Array[], total: number, maxFrame: number): { prefix: number; length: number } | undefined {
  const head = chunks[0]!.length >= MAX_PREFIX || chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, Math.min(total, MAX_PREFIX));
  let length = 0;
  for (let i = 0; i < Math.min(head.length, MAX_PREFIX); i++) {
    const b = head[i]!;
    length += (b & 0x7f) * 2 ** (7 * i);
    if (b < 0x80) {
      if (length > maxFrame) throw new FrameError(`a frame of ${length} bytes is over the limit of ${maxFrame}`);
      return { prefix: i + 1, length };
    }
  }
  if (head.length >= MAX_PREFIX) throw new FrameError("a frame's length prefix is malformed");
  return undefined;
}
