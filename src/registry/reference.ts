// Image references, parsed and normalised the way docker does
// (github.com/distribution/reference: ParseNormalizedNamed), so that
// "busybox", "docker.io/library/busybox:latest" and
// "index.docker.io/library/busybox" all name the same image.

import { WharfError } from "../errors.js";

export interface Reference {
  /** Registry host as users write it ("docker.io", "ghcr.io", "127.0.0.1:5000"). */
  readonly registry: string;
  /** Repository path inside the registry ("library/busybox"). */
  readonly repository: string;
  readonly tag?: string;
  /** "sha256:<64 hex>"; when present it wins over the tag. */
  readonly digest?: string;
}

export const DOCKER_HUB = "docker.io";
/** The host that serves the v2 API for docker.io. */
export const DOCKER_HUB_API = "registry-1.docker.io";

const MAX_NAME_LENGTH = 255;
// The distribution grammar, piece by piece.
const ALNUM = "[a-z0-9]+";
const SEPARATOR = "(?:[._]|__|[-]+)";
const PATH_COMPONENT = new RegExp(`^${ALNUM}(?:${SEPARATOR}${ALNUM})*$`);
const DOMAIN_COMPONENT = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const DOMAIN = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9a-fA-F:.]+\\])(?::[0-9]+)?$`);
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
const SHA256_DIGEST = /^sha256:[a-f0-9]{64}$/;

function bad(s: string, why: string): WharfError {
  return new WharfError("INVALID_ARGUMENT", `invalid image reference ${JSON.stringify(s)}: ${why}`);
}

/**
 * Checks a digest string: well-formed, and sha256 (the only algorithm whose
 * content we verify). `what` names the thing for the error message.
 */
export function checkDigest(d: string, what: string): string {
  if (SHA256_DIGEST.test(d)) return d;
  if (DIGEST.test(d)) {
    const algo = d.slice(0, d.indexOf(":"));
    if (algo !== "sha256") throw new WharfError("INVALID_ARGUMENT", `${what}: digest algorithm ${JSON.stringify(algo)} is not supported (only sha256)`);
  }
  throw new WharfError("INVALID_ARGUMENT", `${what}: malformed digest ${JSON.stringify(d)} (want sha256:<64 lowercase hex>)`);
}

export function isSha256Digest(d: string): boolean {
  return SHA256_DIGEST.test(d);
}

/** Whether the first path component names a registry rather than a repository (docker's rule). */
function looksLikeDomain(first: string): boolean {
  return first.includes(".") || first.includes(":") || first === "localhost" || first !== first.toLowerCase();
}

export function normaliseRegistry(host: string): string {
  const h = host.toLowerCase();
  return h === "index.docker.io" || h === DOCKER_HUB_API ? DOCKER_HUB : host;
}

/** Parses and normalises an image reference. Throws WharfError INVALID_ARGUMENT on bad input. */
export function parseReference(s: string): Reference {
  if (typeof s !== "string" || s.length === 0) throw bad(String(s), "empty");
  if (s !== s.trim()) throw bad(s, "leading or trailing white space");

  let rest = s;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad(s, `malformed digest ${JSON.stringify(digest)}`);
    const algo = digest.slice(0, digest.indexOf(":"));
    if (algo !== "sha256") throw bad(s, `digest algorithm ${JSON.stringify(algo)} is not supported (only sha256)`);
    if (!SHA256_DIGEST.test(digest)) throw bad(s, `a sha256 digest has 64 lowercase hex digits, got ${JSON.stringify(digest)}`);
  }

  // A tag is after the last ":" that follows the last "/" (a ":" before it is a port).
  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(s, `invalid tag ${JSON.stringify(tag)}`);
  }
  if (rest.length === 0) throw bad(s, "no repository name");

  let registry: string;
  let repository: string;
  const slash = rest.indexOf("/");
  if (slash >= 0 && looksLikeDomain(rest.slice(0, slash))) {
    registry = rest.slice(0, slash);
    repository = rest.slice(slash + 1);
    if (!DOMAIN.test(registry)) throw bad(s, `invalid registry host ${JSON.stringify(registry)}`);
    registry = normaliseRegistry(registry);
  } else {
    registry = DOCKER_HUB;
    repository = rest;
  }
  if (repository.length === 0) throw bad(s, "no repository name");
  for (const c of repository.split("/")) {
    if (c.length === 0) throw bad(s, "empty path component in the repository name");
    if (!PATH_COMPONENT.test(c)) {
      throw bad(
        s,
        c !== c.toLowerCase()
          ? "repository name must be lowercase"
          : `invalid path component ${JSON.stringify(c)} (lowercase letters, digits and single separators . _ __ - only)`,
      );
    }
  }
  if (registry === DOCKER_HUB && !repository.includes("/")) repository = `library/${repository}`;
  if (registry.length + 1 + repository.length > MAX_NAME_LENGTH) throw bad(s, `name longer than ${MAX_NAME_LENGTH} characters`);
  if (digest === undefined && tag === undefined) tag = "latest";

  return {
    registry,
    repository,
    ...(tag !== undefined ? { tag } : {}),
    ...(digest !== undefined ? { digest } : {}),
  };
}

/** "registry/repo:tag", "registry/repo@sha256:…", or "registry/repo:tag@sha256:…". */
export function formatReference(r: Reference): string {
  let s = `${r.registry}/${r.repository}`;
  if (r.tag !== undefined) s += `:${r.tag}`;
  if (r.digest !== undefined) s += `@${r.digest}`;
  return s;
}

/** The repository alone ("registry/repo"), for messages about blobs. */
export function formatRepository(r: Reference): string {
  return `${r.registry}/${r.repository}`;
}
