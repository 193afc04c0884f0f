// The libp2p host of an agent: TCP + Noise + Yamux inside a private network
// whose key is derived from the cluster secret (a peer without the secret
// cannot even finish the handshake), identify, and one long-lived stream per
// peer carrying Raft messages.

import { createHash } from "node:crypto";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from "@libp2p/crypto/keys";
import { gossipsub } from "@libp2p/gossipsub";
import { identify } from "@libp2p/identify";
import type { PrivateKey, Stream } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { privateNetwork } from "./pnet.js";
import { tcp } from "@libp2p/tcp";
import { lpStream } from "@libp2p/utils";
import { multiaddr } from "@multiformats/multiaddr";
import { type Libp2p, createLibp2p } from "libp2p";
import { z } from "zod";
import type { Message, NodeId } from "../raft/index.js";
import { MAX_FRAME_BYTES, MalformedMessageError, decodeMessage, encodeMessage } from "./codec.js";
import { readFrames } from "./frames.js";

export const RAFT_PROTOCOL = "/wharf/raft/1";
export const JOIN_PROTOCOL = "/wharf/join/1";

const joinRequestSchema = z.object({
  id: z.string().min(1).max(128),
  addrs: z.array(z.string().max(256)).max(16),
  /** The cluster the joiner's data dir already belongs to, if any. */
  cluster: z.string().max(256).optional(),
  /** Only ask whether the peer counts us as a member (admit nothing). */
  probe: z.boolean().optional(),
});
export type JoinRequest = z.infer<typeof joinRequestSchema>;
const joinResponseSchema = z.object({
  ok: z.boolean(),
  cluster: z.string().max(256).optional(),
  /** For a probe, answered by a leader only: whether its membership holds the asker. */
  member: z.boolean().optional(),
  code: z.string().max(64).optional(),
  error: z.string().max(1024).optional(),
});
export type JoinResponse = z.infer<typeof joinResponseSchema>;

export interface HostLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** The swarm key libp2p's private networks expect, derived from the cluster secret. */
export function swarmKey(secret: string): Uint8Array {
  const hex = createHash("sha256").update("wharf cluster secret\n").update(secret).digest("hex");
  return new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base16/\n${hex}`);
}

export async function newIdentity(): Promise<Uint8Array> {
  return privateKeyToProtobuf(await generateKeyPair("Ed25519"));
}

export function loadIdentity(bytes: Uint8Array): PrivateKey {
  return privateKeyFromProtobuf(bytes);
}

/** Outbound frames to one peer, written in order on one stream. */
class PeerLink {
  private queue: Uint8Array[] = [];
  private queuedBytes = 0;
  private writing = false;
  /** The stream and its length-prefixed writer, made once per stream (each wrapper listens on it). */
  private out: { stream: Stream; lp: ReturnType<typeof lpStream> } | undefined;
  addrs: string[] = [];

  constructor(
    private readonly host: Host,
    readonly id: NodeId,
  ) {}

  send(frame: Uint8Array): boolean {
    // Raft tolerates loss: past the bound, drop rather than buffer without end.
    if (this.queue.length >= 4096 || this.queuedBytes + frame.length > 4 * MAX_FRAME_BYTES) return false;
    this.queue.push(frame);
    this.queuedBytes += frame.length;
    if (!this.writing) void this.drain();
    return true;
  }

  private async drain(): Promise<void> {
    this.writing = true;
    try {
      while (this.queue.length > 0) {
        if (!this.out) {
          const stream = await this.host.dialRaft(this.id, this.addrs);
          this.out = { stream, lp: lpStream(stream, { maxDataLength: MAX_FRAME_BYTES }) };
        }
        const batch = this.queue;
        this.queue = [];
        this.queuedBytes = 0;
        await this.out.lp.writeV(batch);
      }
    } catch (e) {
      this.host.log.warn({ peer: this.id, err: (e as Error).message }, "raft link to peer failed; dropping its queue");
      this.out?.stream.abort(e as Error);
      this.out = undefined;
      this.queue = [];
      this.queuedBytes = 0;
      this.host.onUnreachable?.(this.id);
    } finally {
      this.writing = false;
    }
  }

  close(): void {
    this.out?.stream.abort(new Error("closing"));
    this.out = undefined;
  }
}

export interface HostOptions {
  readonly identity: Uint8Array;
  readonly listen: readonly string[];
  readonly secret: string;
  readonly log: HostLogger;
}

export class Host {
  readonly id: NodeId;
  private readonly links = new Map<NodeId, PeerLink>();
  private readonly hintHandlers = new Map<string, (data: Uint8Array) => void>();
  onMessage?: (m: Message) => void;
  onUnreachable?: (id: NodeId) => void;

  private constructor(
    readonly node: Libp2p<{ pubsub: ReturnType<ReturnType<typeof gossipsub>> }>,
    readonly log: HostLogger,
  ) {
    this.id = node.peerId.toString();
  }

  static async start(o: HostOptions): Promise<Host> {
    const node = await createLibp2p({
      privateKey: loadIdentity(o.identity),
      addresses: { listen: [...o.listen] },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      connectionProtector: privateNetwork(swarmKey(o.secret)),
      services: {
        identify: identify(),
        // Hints only (transfer progress, "layer committed"): never the truth,
        // which is the replicated log. Publishing with no peer is not an error.
        pubsub: gossipsub({ allowPublishToZeroTopicPeers: true, emitSelf: false }),
      },
    });
    const h = new Host(node, o.log);
    node.services.pubsub.addEventListener("message", (evt) => {
      const { topic, data } = evt.detail;
      h.hintHandlers.get(topic)?.(data);
    });
    await node.handle(RAFT_PROTOCOL, (stream, conn) => h.readRaft(stream, conn.remotePeer.toString()), {
      maxInboundStreams: 4,
    });
    return h;
  }

  /** Serves join requests: `handler` admits the peer to the cluster, or answers a probe (or throws why not). */
  async serveJoin(handler: (req: JoinRequest) => Promise<{ cluster: string; member?: boolean }>): Promise<void> {
    await this.node.handle(JOIN_PROTOCOL, async (stream, conn) => {
      const lp = lpStream(stream, { maxDataLength: 64 << 10 });
      let res: JoinResponse;
      try {
        const req = joinRequestSchema.parse(JSON.parse(new TextDecoder().decode((await lp.read()).subarray())));
        if (req.id !== conn.remotePeer.toString()) throw new Error("join request for another peer id");
        res = { ok: true, ...(await handler(req)) };
      } catch (e) {
        const code = (e as { code?: unknown }).code;
        res = { ok: false, error: (e as Error).message, ...(typeof code === "string" ? { code } : {}) };
      }
      try {
        await lp.write(new TextEncoder().encode(JSON.stringify(res)));
        await stream.close();
      } catch {
        stream.abort(new Error("join reply failed"));
      }
    });
  }

  /** Asks the agent at `peer` to admit us to its cluster (or, with `probe`, whether it counts us as a member). */
  async join(peer: string, cluster: string | undefined, signal: AbortSignal, probe = false): Promise<JoinResponse> {
    const stream = await this.node.dialProtocol(multiaddr(peer), JOIN_PROTOCOL, { signal });
    const lp = lpStream(stream, { maxDataLength: 64 << 10 });
    const req: JoinRequest = { id: this.id, addrs: this.addrs(), ...(cluster !== undefined ? { cluster } : {}), ...(probe ? { probe } : {}) };
    await lp.write(new TextEncoder().encode(JSON.stringify(req)), { signal });
    const res = joinResponseSchema.parse(JSON.parse(new TextDecoder().decode((await lp.read({ signal })).subarray())));
    await stream.close().catch(() => undefined);
    return res;
  }

  /** Receives the hints published on `topic` (untrusted bytes: validate them). */
  onHint(topic: string, handler: (data: Uint8Array) => void): void {
    this.hintHandlers.set(topic, handler);
    this.node.services.pubsub.subscribe(topic);
  }

  /** Publishes a hint; best effort (dropped when no peer listens yet). */
  async publishHint(topic: string, data: Uint8Array): Promise<void> {
    await this.node.services.pubsub.publish(topic, data);
  }

  addrs(): string[] {
    return this.node.getMultiaddrs().map((a) => a.toString());
  }

  setPeerAddrs(id: NodeId, addrs: readonly string[]): void {
    if (id === this.id) return;
    this.link(id).addrs = [...addrs];
  }

  private link(id: NodeId): PeerLink {
    let l = this.links.get(id);
    if (!l) {
      l = new PeerLink(this, id);
      this.links.set(id, l);
    }
    return l;
  }

  /** Best effort: false when the message was dropped at once. */
  send(m: Message): boolean {
    return this.link(m.to).send(encodeMessage(m));
  }

  async dialRaft(id: NodeId, addrs: readonly string[]): Promise<Stream> {
    const peer = peerIdFromString(id);
    if (addrs.length > 0) await this.node.peerStore.merge(peer, { multiaddrs: addrs.map((a) => multiaddr(a)) });
    return this.node.dialProtocol(peer, RAFT_PROTOCOL, { signal: AbortSignal.timeout(5000) });
  }

  /**
   * Reads one peer's Raft stream. The sender is the authenticated peer of
   * the connection: a message claiming another sender is refused.
   */
  private async readRaft(stream: Stream, remote: NodeId): Promise<void> {
    try {
      for await (const frame of readFrames(stream, MAX_FRAME_BYTES)) {
        try {
          const m = decodeMessage(frame);
          if (m.from !== remote || m.to !== this.id) {
            throw new MalformedMessageError(`message from ${m.from} to ${m.to} on a stream from ${remote}`);
          }
          this.onMessage?.(m);
        } catch (e) {
          if (!(e instanceof MalformedMessageError)) throw e;
          this.log.warn({ peer: remote, err: e.message }, "refused a malformed Raft message");
        }
      }
      stream.abort(new Error("the peer ended its Raft stream"));
    } catch (e) {
      // The stream ended, or its framing broke (an oversized length prefix):
      // drop it; the peer dials again.
      if (stream.status === "open") {
        this.log.warn({ peer: remote, err: (e as Error).message }, "dropped a Raft stream with broken framing");
      }
      stream.abort(e as Error);
    }
  }

  async stop(): Promise<void> {
    for (const l of this.links.values()) l.close();
    await this.node.stop();
  }
}
