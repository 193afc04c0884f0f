// A client of containerd's own gRPC API (content, images, snapshots), for
// registering an image pulled by wharf in a containerd the way containerd's
// unpacker would have: manifest and config in its content store, an image
// record, and the layers' snapshots prepared with the remote-snapshotter
// labels so that the snapshotter answers "already exists" and containerd
// never downloads or applies them.

import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { WharfError } from "../errors.js";

const PROTO_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "proto");

type Unary = (req: object, md: grpc.Metadata, cb: (err: grpc.ServiceError | null, res: any) => void) => void;
type Service = Record<string, Unary> & grpc.Client;

function load(file: string): grpc.GrpcObject {
  const def = protoLoader.loadSync(join(PROTO_DIR, file), {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(def);
}

function serviceAt(pkg: grpc.GrpcObject, path: string): grpc.ServiceClientConstructor {
  let o: any = pkg;
  for (const p of path.split(".")) o = o[p];
  return o as grpc.ServiceClientConstructor;
}

/** The service clients, loaded once per process (parsing the protos costs more than a registration's calls). */
let services: { C: grpc.ServiceClientConstructor; I: grpc.ServiceClientConstructor; S: grpc.ServiceClientConstructor; L: grpc.ServiceClientConstructor } | undefined;
/** Loads containerd's API now (an agent serving containerd does at start, not in its first pull). */
export function loadServices(): NonNullable<typeof services> {
  services ??= {
    C: serviceAt(load("containerd/services/content/v1/content.proto"), "containerd.services.content.v1.Content"),
    I: serviceAt(load("containerd/services/images/v1/images.proto"), "containerd.services.images.v1.Images"),
    S: serviceAt(load("containerd/services/snapshots/v1/snapshots.proto"), "containerd.services.snapshots.v1.Snapshots"),
    L: serviceAt(load("containerd/services/leases/v1/leases.proto"), "containerd.services.leases.v1.Leases"),
  };
  return services;
}

/** containerd's gRPC status → our error, with what we were doing. */
function mapError(e: grpc.ServiceError, what: string): WharfError {
  const code =
    e.code === grpc.status.NOT_FOUND
      ? "NOT_FOUND"
      : e.code === grpc.status.ALREADY_EXISTS
        ? "ALREADY_EXISTS"
        : e.code === grpc.status.INVALID_ARGUMENT
          ? "INVALID_ARGUMENT"
          : e.code === grpc.status.UNAVAILABLE
            ? "UNAVAILABLE"
            : e.code === grpc.status.DEADLINE_EXCEEDED
              ? "TIMEOUT"
              : "INTERNAL";
  return new WharfError(code, `containerd: ${what}: ${e.details || e.message}`);
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

export class ContainerdClient {
  private readonly content: Service;
  private readonly images: Service;
  private readonly snapshots: Service;
  private readonly leases: Service;
  private readonly md = new grpc.Metadata();

  constructor(
    readonly socket: string,
    readonly namespace: string,
  ) {
    const address = `unix://${socket}`;
    const creds = grpc.credentials.createInsecure();
    const opts = { "grpc.max_receive_message_length": 16 << 20, "grpc.max_send_message_length": 16 << 20 };
    const { C, I, S, L } = loadServices();
    this.content = new C(address, creds, opts) as unknown as Service;
    // One connection for all four services.
    const channelOverride = (this.content as grpc.Client).getChannel();
    this.images = new I(address, creds, { ...opts, channelOverride }) as unknown as Service;
    this.snapshots = new S(address, creds, { ...opts, channelOverride }) as unknown as Service;
    this.leases = new L(address, creds, { ...opts, channelOverride }) as unknown as Service;
    // containerd scopes every object by the namespace named in this header.
    this.md.set("containerd-namespace", namespace);
  }

  private call<T>(svc: Service, method: string, req: object, what: string): Promise<T> {
    return new Promise((resolve, reject) => {
      svc[method]!.call(svc, req, this.md, (err, res) => (err ? reject(mapError(err, what)) : resolve(res as T)));
    });
  }

  /** Stores a blob in containerd's content store with these labels (or sets the labels if it is there). */
  async putContent(digest: string, data: Buffer, labels: Record<string, string>): Promise<void> {
    const existing = await this.call<{ info: { labels: Record<string, string> } }>(this.content, "Info", { digest }, `content ${digest}`).catch(
      (e: WharfError) => {
        if (e.code === "NOT_FOUND") return undefined;
        throw e;
      },
    );
    if (existing) {
      const paths = Object.keys(labels).map((k) => `labels.${k}`);
      if (paths.length > 0) {
        await this.call(this.content, "Update", { info: { digest, labels }, update_mask: { paths } }, `labels of content ${digest}`);
      }
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const write = this.content.Write as unknown as (md: grpc.Metadata) => grpc.ClientDuplexStream<object, object>;
      const stream = write.call(this.content, this.md);
      stream.on("data", () => {});
      stream.on("error", (e: grpc.ServiceError) => (e.code === grpc.status.ALREADY_EXISTS ? resolve() : reject(mapError(e, `writing ${digest}`))));
      stream.on("end", () => resolve());
      // One message: the whole (small) blob, verified and committed by containerd.
      stream.write({ action: "COMMIT", ref: `wharf-${digest}`, total: data.length, expected: digest, offset: 0, data, labels });
      stream.end();
    });
  }

  /** Creates the image record, or points an existing one at `target`. */
  async putImage(name: string, target: Descriptor, labels: Record<string, string> = {}): Promise<void> {
    const image = { name, labels, target: { media_type: target.mediaType, digest: target.digest, size: String(target.size) } };
    try {
      await this.call(this.images, "Create", { image }, `image ${name}`);
    } catch (e) {
      if ((e as WharfError).code !== "ALREADY_EXISTS") throw e;
      await this.call(this.images, "Update", { image, update_mask: { paths: ["target", "labels"] } }, `image ${name}`);
    }
  }

  /**
   * Prepares the way containerd's unpacker does for a remote snapshotter:
   * resolves when the snapshotter answered "already exists" (the layer is
   * committed under the ref label's name) or when the snapshot was created.
   */
  async prepareRemote(snapshotter: string, key: string, parent: string, labels: Record<string, string>): Promise<"exists" | "prepared"> {
    try {
      await this.call(this.snapshots, "Prepare", { snapshotter, key, parent, labels }, `prepare ${key}`);
      return "prepared";
    } catch (e) {
      if ((e as WharfError).code === "ALREADY_EXISTS") return "exists";
      throw e;
    }
  }

  async removeSnapshot(snapshotter: string, key: string): Promise<void> {
    await this.call(this.snapshots, "Remove", { snapshotter, key }, `remove ${key}`);
  }

  /**
   * Runs `fn` under a containerd lease: what it creates (content, snapshots)
   * is safe from containerd's garbage collector until the image record and
   * the GC labels reference it. The lease expires by itself after an hour
   * if this process dies before deleting it.
   */
  async withLease<T>(fn: () => Promise<T>): Promise<T> {
    const expire = new Date(Date.now() + 3600_000).toISOString();
    const r = await this.call<{ lease: { id: string } }>(
      this.leases,
      "Create",
      { id: `wharf-${process.pid}-${Date.now()}`, labels: { "containerd.io/gc.expire": expire } },
      "creating a lease",
    );
    this.md.set("containerd-lease", r.lease.id);
    try {
      return await fn();
    } finally {
      this.md.remove("containerd-lease");
      await this.call(this.leases, "Delete", { id: r.lease.id }, "deleting a lease").catch(() => {});
    }
  }

  close(): void {
    this.leases.close();
    this.content.close();
    this.images.close();
    this.snapshots.close();
  }
}
