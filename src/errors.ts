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
  INTERNAL: 1,
};

export function exitCodeOf(e: unknown): number {
  return e instanceof WharfError ? EXIT_CODES[e.code] : 1;
}

export function errorCodeOf(e: unknown): WharfErrorCode {
  return e instanceof WharfError ? e.code : "INTERNAL";
}
