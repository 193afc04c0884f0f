// The private-network protector (@libp2p/pnet) with two faults of the
// xsalsa20 it uses kept away from the agent:
//  - every cipher shares one WebAssembly memory, and each caches a view of
//    it: once one large read makes the memory grow, the others' views are
//    stale and each of their updates grows it again, until the maximum
//    (65 MB) is reached and the agent dies ("WebAssembly.Memory.grow():
//    Maximum memory size exceeded"). Updates of at most CHUNK bytes never
//    make it grow.
//  - ciphers are never finalized, so each connection keeps two slots of
//    that memory for good; they are returned when the connection closes.

import type { ConnectionProtector, MultiaddrConnection } from "@libp2p/interface";
import { preSharedKey } from "@libp2p/pnet";

/** Far below the memory's initial 640 KiB, less the slots of thousands of live ciphers. */
const CHUNK = 16 * 1024;

export interface Xor {
  update(input: Uint8Array): Uint8Array;
  finalize(): void;
}

export function chunked(x: Xor): Xor {
  let done = false;
  return {
    update(input) {
      if (done) return new Uint8Array(0);
      if (input.byteLength <= CHUNK) return x.update(input);
      const out = new Uint8Array(input.byteLength);
      for (let i = 0; i < input.byteLength; i += CHUNK) out.set(x.update(input.subarray(i, i + CHUNK)), i);
      return out;
    },
    finalize() {
      if (done) return;
      done = true;
      x.finalize();
    },
  };
}

/** pnet's protector, its streams' ciphers chunked and finalized on close. */
export function privateNetwork(psk: Uint8Array): () => ConnectionProtector {
  const make = preSharedKey({ psk });
  return () => {
    const base = make();
    return {
      async protect(conn: MultiaddrConnection, options?: Parameters<ConnectionProtector["protect"]>[1]): Promise<MultiaddrConnection> {
        const s = (await base.protect(conn, options)) as MultiaddrConnection & { inboundXor?: Xor; outboundXor?: Xor };
        // The stream reads both fields at each use: wrapping them here (before
        // any I/O callback can run) covers every byte.
        if (s.inboundXor && s.outboundXor) {
          const inbound = chunked(s.inboundXor);
          const outbound = chunked(s.outboundXor);
          s.inboundXor = inbound;
          s.outboundXor = outbound;
          s.addEventListener("close", () => {
            inbound.finalize();
            outbound.finalize();
          });
        }
        return s;
      },
    } as ConnectionProtector;
  };
}
