// Errors of the agent and the command line. Each has a stable `code`; the
// mappings to process exit codes and to gRPC status codes live here and
// nowhere else.

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
  /** The thing to create exists already (a snapshot key or name). */
  | "ALREADY_EXISTS"
  /** The operation is refused in the current state (removing a snapshot that has children). */
  | "FAILED_PRECONDITION"
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
  ALREADY_EXISTS: 11,
  FAILED_PRECONDITION: 11,
  INTERNAL: 1,
};

/**
 * gRPC status codes (numbers from grpc's status.proto; kept here as numbers
 * so that this module imports nothing). containerd maps INVALID_ARGUMENT,
 * NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, UNAVAILABLE and
 * UNIMPLEMENTED to its errdefs and everything else to "unknown", so the
 * snapshotter's conditions must land exactly on those.
 */
const GRPC = {
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  FAILED_PRECONDITION: 9,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

const GRPC_STATUS: Record<WharfErrorCode, number> = {
  INVALID_ARGUMENT: GRPC.INVALID_ARGUMENT,
  NOT_FOUND: GRPC.NOT_FOUND,
  NO_LEADER: GRPC.UNAVAILABLE,
  BUSY: GRPC.UNAVAILABLE,
  TIMEOUT: GRPC.DEADLINE_EXCEEDED,
  WRONG_SECRET: GRPC.UNAUTHENTICATED,
  WRONG_CLUSTER: GRPC.FAILED_PRECONDITION,
  UNAVAILABLE: GRPC.UNAVAILABLE,
  SHUTTING_DOWN: GRPC.UNAVAILABLE,
  UNAUTHORIZED: GRPC.UNAUTHENTICATED,
  DENIED: GRPC.PERMISSION_DENIED,
  DIGEST_MISMATCH: GRPC.DATA_LOSS,
  INVALID_MANIFEST: GRPC.INVALID_ARGUMENT,
  INVALID_LAYER: GRPC.INVALID_ARGUMENT,
  REGISTRY_UNAVAILABLE: GRPC.UNAVAILABLE,
  ALREADY_EXISTS: GRPC.ALREADY_EXISTS,
  FAILED_PRECONDITION: GRPC.FAILED_PRECONDITION,
  INTERNAL: GRPC.INTERNAL,
};

/** The gRPC status code for an error code. */
export function grpcStatusOf(code: WharfErrorCode): number {
  return GRPC_STATUS[code];
}

/** The gRPC status code for any thrown value: UNKNOWN for what is not a WharfError. */
export function grpcStatusOfError(e: unknown): number {
  return e instanceof WharfError ? GRPC_STATUS[e.code] : GRPC.UNKNOWN;
}

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
