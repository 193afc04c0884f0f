// A client of Kubernetes' CRI image service on containerd's socket: what the
// kubelet calls to pull an image (proto/cri/api.proto holds the subset).

import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const PROTO = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "proto", "cri", "api.proto");

type Unary = (req: object, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: any) => void) => void;

export class CriImages {
  private readonly c: Record<string, Unary> & grpc.Client;

  constructor(socket: string) {
    const def = protoLoader.loadSync(PROTO, { keepCase: true, longs: String, defaults: true });
    const pkg = grpc.loadPackageDefinition(def) as any;
    this.c = new pkg.runtime.v1.ImageService(`unix://${socket}`, grpc.credentials.createInsecure());
  }

  private call<T>(method: string, req: object, timeoutMs = 300_000): Promise<T> {
    return new Promise((resolve, reject) =>
      this.c[method]!.call(this.c, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) =>
        err ? reject(new Error(`CRI ${method}: ${err.details || err.message}`)) : resolve(res as T),
      ),
    );
  }

  /** The kubelet's pull: resolves to the image id (config digest). */
  async pull(image: string): Promise<string> {
    return (await this.call<{ image_ref: string }>("PullImage", { image: { image } })).image_ref;
  }

  async list(): Promise<{ id: string; repo_tags: string[] }[]> {
    return (await this.call<{ images: { id: string; repo_tags: string[] }[] }>("ListImages", {})).images;
  }

  async remove(image: string): Promise<void> {
    await this.call("RemoveImage", { image: { image } });
  }

  close(): void {
    this.c.close();
  }
}
