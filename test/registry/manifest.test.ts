// The manifest, index and config schemas, table-driven. (What a real registry
// lets through is checked end to end in resolve.test.ts.)

import t from "tap";
import { LAYER_MEDIA_TYPES, MEDIA_TYPES, parseConfig, parseManifest, selectPlatform } from "../../src/registry/manifest.js";

const d = (c: string): string => `sha256:${c.repeat(64)}`;
const layer = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
  digest: d("1"),
  size: 10,
  ...over,
});
const manifest = (over: Record<string, unknown> = {}): Buffer =>
  Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.ociManifest,
      config: { mediaType: MEDIA_TYPES.ociConfig, digest: d("c"), size: 100 },
      layers: [layer()],
      ...over,
    }),
  );

t.test("valid documents of each kind", async (t) => {
  const oci = parseManifest(manifest(), undefined, "m");
  t.equal(oci.kind, "manifest");
  t.equal(oci.mediaType, MEDIA_TYPES.ociManifest);
  const bare = parseManifest(manifest({ mediaType: undefined }), "application/vnd.oci.image.manifest.v1+json; charset=utf-8", "m");
  t.equal(bare.mediaType, MEDIA_TYPES.ociManifest, "media type from Content-Type when the document has none");
  const inferred = parseManifest(manifest({ mediaType: undefined }), "application/json", "m");
  t.equal(inferred.kind, "manifest", "a bare OCI manifest served as JSON is recognised by its shape");
  const docker = parseManifest(
    manifest({
      mediaType: MEDIA_TYPES.dockerManifest,
      config: { mediaType: MEDIA_TYPES.dockerConfig, digest: d("c"), size: 1 },
      layers: [layer({ mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip" })],
    }),
    undefined,
    "m",
  );
  t.equal(docker.mediaType, MEDIA_TYPES.dockerManifest);
  const idx = parseManifest(
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.dockerList, manifests: [{ mediaType: MEDIA_TYPES.dockerManifest, digest: d("2"), size: 5, platform: { os: "linux", architecture: "amd64" } }] })),
    undefined,
    "i",
  );
  t.equal(idx.kind, "index");
  for (const mt of LAYER_MEDIA_TYPES.keys()) t.equal(parseManifest(manifest({ layers: [layer({ mediaType: mt })] }), undefined, "m").kind, "manifest", mt);
  t.equal(LAYER_MEDIA_TYPES.get("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"), "zstd", "nondistributable layers are their base type");
});

t.test("schema failures are INVALID_MANIFEST and name the fault", async (t) => {
  const table: [string, Buffer, RegExp][] = [
    ["not JSON", Buffer.from("{not json"), /not valid JSON/],
    ["an array", Buffer.from("[]"), /not a JSON object/],
    ["schema 1", manifest({ schemaVersion: 1, mediaType: undefined }), /schema 1/],
    ["schema 1 media type", manifest({ mediaType: "application/vnd.docker.distribution.manifest.v1+prettyjws" }), /schema 1/],
    ["schemaVersion 3", manifest({ schemaVersion: 3 }), /schemaVersion/],
    ["no config", manifest({ config: undefined }), /config/],
    ["layers not an array", manifest({ layers: {} }), /layers/],
    ["bad layer digest", manifest({ layers: [layer({ digest: "sha256:xyz" })] }), /layers\[0\]\.digest/],
    ["sha512 layer digest", manifest({ layers: [layer({ digest: `sha512:${"a".repeat(128)}` })] }), /layers\[0\]\.digest: must be a sha256/],
    ["negative size", manifest({ layers: [layer(), layer({ size: -1 })] }), /layers\[1\]\.size/],
    ["fractional size", manifest({ layers: [layer({ size: 1.5 })] }), /layers\[0\]\.size/],
    ["size as a string", manifest({ layers: [layer({ size: "10" })] }), /layers\[0\]\.size/],
    ["unknown layer media type", manifest({ layers: [layer({ mediaType: "application/x-foo" })] }), /unsupported media type "application\/x-foo"/],
    ["artifact config", manifest({ config: { mediaType: "application/vnd.cncf.helm.config.v1+json", digest: d("c"), size: 1 } }), /helm.*not a container image config/],
    ["unknown manifest media type", manifest({ mediaType: "application/vnd.example+json" }), /unsupported manifest media type "application\/vnd.example\+json"/],
    ["index entry without digest", Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: [{ mediaType: MEDIA_TYPES.ociManifest, size: 1 }] })), /manifests\[0\]\.digest/],
  ];
  for (const [name, body, why] of table) {
    t.throws(() => parseManifest(body, undefined, "manifest of r/x:y"), { code: "INVALID_MANIFEST", message: why }, name);
    try {
      parseManifest(body, undefined, "manifest of r/x:y");
    } catch (e) {
      t.match((e as Error).message, /^manifest of r\/x:y: /, `${name}: the message names the manifest`);
    }
  }
});

t.test("configs", async (t) => {
  const cfg = (rootfs: unknown): Buffer => Buffer.from(JSON.stringify({ os: "linux", architecture: "amd64", rootfs }));
  t.equal(parseConfig(cfg({ type: "layers", diff_ids: [d("1"), d("2")] }), 2, "c").rootfs.diff_ids.length, 2);
  t.throws(() => parseConfig(cfg({ type: "layers", diff_ids: [d("1")] }), 2, "c"), { code: "INVALID_MANIFEST", message: /1 diff_ids but the manifest has 2 layers/ });
  t.throws(() => parseConfig(cfg({ type: "other", diff_ids: [] }), 0, "c"), { code: "INVALID_MANIFEST", message: /rootfs\.type/ });
  t.throws(() => parseConfig(cfg({ type: "layers", diff_ids: ["nope"] }), 1, "c"), { code: "INVALID_MANIFEST", message: /diff_ids\[0\]/ });
  t.throws(() => parseConfig(cfg(undefined), 0, "c"), { code: "INVALID_MANIFEST", message: /rootfs/ });
});

t.test("platform selection from an index", async (t) => {
  const entry = (c: string, os: string, architecture: string, variant?: string, mediaType: string = MEDIA_TYPES.ociManifest) => ({
    mediaType,
    digest: d(c),
    size: 1,
    platform: { os, architecture, ...(variant ? { variant } : {}) },
  });
  const index = {
    schemaVersion: 2 as const,
    manifests: [
      entry("1", "linux", "amd64", "v3"),
      entry("2", "linux", "arm64", "v8"),
      entry("3", "linux", "arm", "v7"),
      entry("4", "unknown", "unknown"),
      entry("5", "linux", "s390x", undefined, "application/vnd.oci.artifact.manifest.v1+json"),
    ],
  };
  t.equal(selectPlatform(index, { os: "linux", architecture: "amd64" }, "i").digest, d("1"));
  t.equal(selectPlatform(index, { os: "linux", architecture: "arm64" }, "i").digest, d("2"));
  t.equal(selectPlatform(index, { os: "linux", architecture: "arm" }, "i").digest, d("3"));
  t.throws(() => selectPlatform(index, { os: "linux", architecture: "s390x" }, "index of r/x:y"), {
    code: "INVALID_MANIFEST",
    message: "index of r/x:y: no image for platform linux/s390x; available: linux/amd64/v3, linux/arm64/v8, linux/arm/v7",
  });
});
