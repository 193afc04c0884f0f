// Errors the core reports. Each has a stable `code`; callers match on it,
// never on the message.

export type RaftErrorCode =
  /** The requested index is older than the first index kept in the log. */
  | "COMPACTED"
  /** The requested index is past the last index of the log. */
  | "UNAVAILABLE"
  /** A snapshot older than the one already held. */
  | "SNAPSHOT_OUT_OF_DATE"
  /** A proposal that cannot be accepted now (no leader, transfer in progress, not a member). */
  | "PROPOSAL_DROPPED"
  /** A membership change while another one is still pending. */
  | "CONF_CHANGE_PENDING"
  /** A membership change that would leave the cluster without voters, or is otherwise invalid. */
  | "INVALID_CONF_CHANGE";

export class RaftError extends Error {
  override readonly name = "RaftError";
  constructor(
    readonly code: RaftErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export function isRaftError(e: unknown, code?: RaftErrorCode): e is RaftError {
  return e instanceof RaftError && (code === undefined || e.code === code);
}
