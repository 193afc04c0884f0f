// The manifest formats we accept, validated with zod at this edge: OCI image
// manifest and index, Docker v2 schema 2 manifest and manifest list, and the
// image config (only the fields a pull depends on). Everything past this file
// receives typed, checked values.

import { z } from "zod";
import { WharfError } from "../errors.js";
import { isSha256Digest } from "./reference.js";
import { type Platform, formatPlatform, platformMatches } from "./platform.js";

export const MEDIA_TYPES = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
} as const;

/** Sent in Accept on every manifest request, most preferred first. */
export const MANIFEST_ACCEPT = [MEDIA_TYPES.ociIndex, MEDIA_TYPES.dockerList, MEDIA_TYPES.ociManifest, MEDIA_TYPES.dockerManifest].join(", ");

const IMAGE_MANIFEST_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPES.ociManifest, MEDIA_TYPES.dockerManifest]);
const INDEX_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPES.ociIndex, MEDIA_TYPES.dockerList]);
const CONFIG_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPES.ociConfig, MEDIA_TYPES.dockerConfig]);
const SCHEMA1_TYPES: ReadonlySet<string> = new Set([
  "application/vnd.docker.distribution.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v1+prettyjws",
]);

export type Compression = "gzip" | "zstd" | "none";

/** Layer media types we can unpack, and how each is compressed. Nondistributable layers are fetched like the others. */
export const LAYER_MEDIA_TYPES: ReadonlyMap<string, Compression> = new Map<string, Compression>([
  ["application/vnd.oci.image.layer.v1.tar", "none"],
  ["application/vnd.oci.image.layer.v1.tar+gzip", "gzip"],
  ["application/vnd.oci.image.layer.v1.tar+zstd", "zstd"],
  ["application/vnd.oci.image.layer.nondistributable.v1.tar", "none"],
  ["application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "gzip"],
  ["application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", "zstd"],
  ["application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"],
  ["application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "gzip"],
]);

const digest = z.string().refine(isSha256Digest, { message: "must be a sha256 digest (sha256:<64 lowercase hex>)" });

const platformSchema = z.object({
  os: z.string().min(1),
  architecture: z.string().min(1),
  variant: z.string().optional(),
});

const descriptorSchema = z.object({
  mediaType: z.string().min(1),
  digest,
  size: z.number().int().nonnegative(),
  urls: z.array(z.string()).optional(),
  platform: platformSchema.optional(),
});

const imageManifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: descriptorSchema,
  layers: z.array(descriptorSchema),
});

const indexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(descriptorSchema),
});

const configSchema = z.object({
  architecture: z.string().optional(),
  os: z.string().optional(),
  variant: z.string().optional(),
  rootfs: z.object({
    type: z.literal("layers"),
    diff_ids: z.array(digest),
  }),
});

export type Descriptor = z.infer<typeof descriptorSchema>;
export type ImageManifest = z.infer<typeof imageManifestSchema>;
export type ImageIndex = z.infer<typeof indexSchema>;
export type ImageConfig = z.infer<typeof configSchema>;

export type ParsedManifest =
  | { kind: "manifest"; mediaType: string; manifest: ImageManifest }
  | { kind: "index"; mediaType: string; index: ImageIndex };

function invalid(what: string, why: string): WharfError {
  return new WharfError("INVALID_MANIFEST", `${what}: ${why}`);
}

/** The first zod issue as "path: message", which is enough to find the fault. */
function describeIssues(e: z.ZodError): string {
  const parts = e.issues.slice(0, 3).map((i) => {
    const path = i.path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("").replace(/^\./, "");
    return path ? `${path}: ${i.message}` : i.message;
  });
  return parts.join("; ") + (e.issues.length > 3 ? `; and ${e.issues.length - 3} more` : "");
}

function parseJson(body: Buffer, what: string): unknown {
  try {
    return JSON.parse(body.toString("utf8"));
  } catch {
    // The parser's message quotes the input; the input is untrusted and may be large.
    throw invalid(what, "not valid JSON");
  }
}

function stripParams(contentType: string | undefined): string | undefined {
  const t = contentType?.split(";")[0]?.trim().toLowerCase();
  return t ? t : undefined;
}

/**
 * Parses a manifest or index. The media type is the one inside the document,
 * else the Content-Type it was served with, else (for bare OCI documents served
 * as generic JSON) inferred from its shape. `what` names it in errors
 * (reference and digest).
 */
export function parseManifest(body: Buffer, contentType: string | undefined, what: string): ParsedManifest {
  const json = parseJson(body, what);
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw invalid(what, "not a JSON object");
  const doc = json as Record<string, unknown>;
  let mediaType = typeof doc.mediaType === "string" ? doc.mediaType : stripParams(contentType);
  if (doc.schemaVersion === 1 || (mediaType !== undefined && SCHEMA1_TYPES.has(mediaType))) {
    throw invalid(what, "Docker schema 1 manifests are not supported; push the image again with a current client");
  }
  if (mediaType === undefined || !(IMAGE_MANIFEST_TYPES.has(mediaType) || INDEX_TYPES.has(mediaType))) {
    if (typeof doc.mediaType !== "string" && Array.isArray(doc.manifests)) mediaType = MEDIA_TYPES.ociIndex;
    else if (typeof doc.mediaType !== "string" && typeof doc.config === "object") mediaType = MEDIA_TYPES.ociManifest;
    else throw invalid(what, `unsupported manifest media type ${JSON.stringify(mediaType ?? "(none)")}`);
  }
  if (INDEX_TYPES.has(mediaType)) {
    const r = indexSchema.safeParse(doc);
    if (!r.success) throw invalid(what, `invalid image index: ${describeIssues(r.error)}`);
    return { kind: "index", mediaType, index: r.data };
  }
  const r = imageManifestSchema.safeParse(doc);
  if (!r.success) throw invalid(what, `invalid image manifest: ${describeIssues(r.error)}`);
  const m = r.data;
  if (!CONFIG_TYPES.has(m.config.mediaType)) {
    throw invalid(what, `config media type ${JSON.stringify(m.config.mediaType)} is not a container image config (not an image, or an artifact)`);
  }
  m.layers.forEach((l, i) => {
    if (!LAYER_MEDIA_TYPES.has(l.mediaType)) throw invalid(what, `layers[${i}] (${l.digest}) has unsupported media type ${JSON.stringify(l.mediaType)}`);
  });
  return { kind: "manifest", mediaType, manifest: m };
}

/** Parses an image config and checks it against the manifest's layers. */
export function parseConfig(body: Buffer, layerCount: number, what: string): ImageConfig {
  const r = configSchema.safeParse(parseJson(body, what));
  if (!r.success) throw invalid(what, `invalid image config: ${describeIssues(r.error)}`);
  const n = r.data.rootfs.diff_ids.length;
  if (n !== layerCount) throw invalid(what, `config lists ${n} diff_ids but the manifest has ${layerCount} layers`);
  return r.data;
}

/**
 * Picks the image manifest for `want` from an index. Entries that are not
 * image manifests (nested indexes, attestations, artifacts) or that carry no
 * platform are passed over. Throws INVALID_MANIFEST listing what is available.
 */
export function selectPlatform(index: ImageIndex, want: Platform, what: string): Descriptor & { platform: Platform } {
  const available: string[] = [];
  for (const d of index.manifests) {
    if (!IMAGE_MANIFEST_TYPES.has(d.mediaType) || d.platform === undefined) continue;
    const p = d.platform;
    if (platformMatches(want, p)) return { ...d, platform: p };
    if (p.os !== "unknown") available.push(formatPlatform(p));
  }
  throw invalid(
    what,
    `no image for platform ${formatPlatform(want)}; available: ${available.length > 0 ? [...new Set(available)].join(", ") : "none"}`,
  );
}

export function isIndexMediaType(t: string): boolean {
  return INDEX_TYPES.has(t);
}
