// Errors of the agent and the command line. Each has a stable `code`; the
// mapping to process exit codes lives here and nowhere else (and so will the
// mapping to gRPC status codes).

export type WharfErrorCode =
  | "INVALID_ARGUMENT"
  | "NOT_FOUND"
  | "NO_LEADER"
  | "BUSY"
  | "TIMEOUT"
  | "WRONG_SECRET"
  | "WRONG_CLUSTER"
  | "UNAVAILABLE"
  | "SHUTTING_DOWN"
  /** The registry refused our credentials (401) or the access (403). */
  | "UNAUTHORIZED"
  | "DENIED"
  /** Content did not hash to the digest that names it (blob, layer diffID). */
  | "DIGEST_MISMATCH"
  /** A manifest, index or config that fails its schema, or no matching platform. */
  | "INVALID_MANIFEST"
  /** A layer archive refused as unsafe or broken (escaping paths, devices, truncation, bombs). */
  | "INVALID_LAYER"
  /** The registry kept failing (5xx, resets, timeouts) after every retry. */
  | "REGISTRY_UNAVAILABLE"
  | "INTERNAL";

export class WharfError extends Error {
  override readonly name = "WharfError";
  constructor(
    readonly code: WharfErrorCode,
    message: string,
  ) {
    super(message);
  }
}

const EXIT_CODES: Record<WharfErrorCode, number> = {
  INVALID_ARGUMENT: 2,
  NOT_FOUND: 3,
  NO_LEADER: 4,
  BUSY: 4,
  TIMEOUT: 5,
  WRONG_SECRET: 6,
  WRONG_CLUSTER: 7,
  UNAVAILABLE: 8,
  SHUTTING_DOWN: 8,
  UNAUTHORIZED: 9,
  DENIED: 9,
  DIGEST_MISMATCH: 10,
  INVALID_MANIFEST: 10,
  INVALID_LAYER: 10,
  REGISTRY_UNAVAILABLE: 8,
  INTERNAL: 1,
};

export function exitCodeOf(e: unknown): number {
  return e instanceof WharfError ? EXIT_CODES[e.code] : 1;
}

/** An error code received from elsewhere (a peer, the agent), or INTERNAL if this build does not know it. */
export function asErrorCode(code: string): WharfErrorCode {
  return Object.hasOwn(EXIT_CODES, code) ? (code as WharfErrorCode) : "INTERNAL";
}

/** The exit code for an error code received from the agent. */
export function exitCodeOfCode(code: string): number {
  return EXIT_CODES[asErrorCode(code)];
}

export function errorCodeOf(e: unknown): WharfErrorCode {
  return e instanceof WharfError ? e.code : "INTERNAL";
}
