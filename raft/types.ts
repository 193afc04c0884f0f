// Values that cross the boundary of the consensus core. The core is a pure,
// synchronous state machine: everything it needs arrives as one of these
// values, and everything it wants done leaves as one of these values.

export type NodeId = string;

/** Index 0 / term 0 mean "none": the log proper starts at index 1. */
export const NONE = "";

export type EntryType = "normal" | "conf";

export interface Entry {
  readonly term: number;
  readonly index: number;
  readonly type: EntryType;
  /** Opaque to the core for `normal`; an encoded ConfChange for `conf`. */
  readonly data: Uint8Array;
}

/**
 * A single-server membership change. Exactly one change may be pending at a
 * time, and a new leader proposes none before an entry of its own term is
 * applied: two configurations that differ by one server always share a
 * majority, so no two leaders can be elected by disjoint quorums.
 */
export type ConfChange =
  | { readonly type: "addVoter"; readonly node: NodeId }
  | { readonly type: "addLearner"; readonly node: NodeId }
  | { readonly type: "removeNode"; readonly node: NodeId };

export interface ConfState {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

export interface HardState {
  readonly term: number;
  readonly vote: NodeId;
  readonly commit: number;
}

export interface SnapshotMeta {
  readonly index: number;
  readonly term: number;
  readonly confState: ConfState;
}

export interface Snapshot {
  readonly meta: SnapshotMeta;
  readonly data: Uint8Array;
}

export type MessageType =
  // Local messages: never sent on the network.
  | "hup" // start an election
  | "beat" // leader: send heartbeats
  | "checkQuorum" // leader: step down if no quorum was heard from
  // Network messages.
  | "prop" // a follower forwards proposals to the leader
  | "app"
  | "appResp"
  | "vote"
  | "voteResp"
  | "preVote"
  | "preVoteResp"
  | "snap"
  | "heartbeat"
  | "heartbeatResp"
  | "transferLeader"
  | "timeoutNow"
  | "readIndex"
  | "readIndexResp"
  // Reports from the driver.
  | "unreachable"
  | "snapStatus";

export interface Message {
  readonly type: MessageType;
  readonly from: NodeId;
  readonly to: NodeId;
  readonly term: number;
  /** app: term of the entry before `entries`; vote: term of the last entry. */
  readonly logTerm?: number;
  /** app: index before `entries`; appResp: last index matched (or rejected). */
  readonly index?: number;
  readonly entries?: readonly Entry[];
  readonly commit?: number;
  readonly snapshot?: Snapshot;
  readonly reject?: boolean;
  /** appResp with reject: a hint where the follower's log may match. */
  readonly rejectHint?: number;
  /**
   * vote/preVote: "transfer" when the campaign follows a leadership transfer
   * (voters then ignore their leader lease). readIndex/heartbeat: request id.
   */
  readonly context?: string;
}

export type Role = "follower" | "preCandidate" | "candidate" | "leader";

export interface SoftState {
  readonly leader: NodeId;
  readonly role: Role;
}

/** The answer to `readIndex(ctx)`: serve the read once applied >= index. */
export interface ReadState {
  readonly index: number;
  readonly context: string;
}

/**
 * What the core wants done. Contract for the driver, in this order:
 * 1. If `snapshot` is set, persist it (and restore the state machine from it).
 * 2. Persist `entries` (appending; an entry at an index that already exists
 *    replaces it and everything after it) and `hardState`, synced to disk
 *    when `mustSync`.
 * 3. Only then send `messages`: some of them (votes, append acknowledgements)
 *    promise that the writes above are durable. The ones for which
 *    `sendableBeforePersist` holds promise nothing about this node's disk
 *    and may leave before step 2, so that a leader's own write runs in
 *    parallel with replication (the leader counts its own copy only after
 *    advance()).
 * 4. Apply `committedEntries` in order, answer `readStates` once applied.
 * 5. Call `advance(ready)`.
 */
export interface Ready {
  readonly softState?: SoftState;
  readonly hardState?: HardState;
  readonly entries: readonly Entry[];
  readonly snapshot?: Snapshot;
  readonly committedEntries: readonly Entry[];
  readonly messages: readonly Message[];
  readonly readStates: readonly ReadState[];
  readonly mustSync: boolean;
}

/** The message types that travel between nodes (the rest are local). */
export const NETWORK_MESSAGE_TYPES = [
  "prop",
  "app",
  "appResp",
  "vote",
  "voteResp",
  "preVote",
  "preVoteResp",
  "snap",
  "heartbeat",
  "heartbeatResp",
  "transferLeader",
  "timeoutNow",
  "readIndex",
  "readIndexResp",
] as const satisfies readonly MessageType[];

/**
 * Messages that do not depend on the writes of the Ready carrying them: a
 * leader's appends, heartbeats, snapshots and transfer orders (their commit
 * index was computed from durable acknowledgements), and requests forwarded
 * to the leader.
 */
export function sendableBeforePersist(m: Message): boolean {
  switch (m.type) {
    case "app":
    case "heartbeat":
    case "snap":
    case "timeoutNow":
    case "prop":
    case "readIndex":
    case "transferLeader":
      return true;
    default:
      return false;
  }
}

export function isLocalMessage(t: MessageType): boolean {
  return t === "hup" || t === "beat" || t === "checkQuorum" || t === "unreachable" || t === "snapStatus";
}

export function isResponse(t: MessageType): boolean {
  return (
    t === "appResp" ||
    t === "voteResp" ||
    t === "preVoteResp" ||
    t === "heartbeatResp" ||
    t === "unreachable" ||
    t === "readIndexResp"
  );
}

export function voteRespType(t: MessageType): MessageType {
  return t === "vote" ? "voteResp" : "preVoteResp";
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeConfChange(cc: ConfChange): Uint8Array {
  return encoder.encode(JSON.stringify(cc));
}

export function decodeConfChange(data: Uint8Array): ConfChange {
  const v = JSON.parse(decoder.decode(data)) as { type?: unknown; node?: unknown };
  if (
    (v.type === "addVoter" || v.type === "addLearner" || v.type === "removeNode") &&
    typeof v.node === "string" &&
    v.node !== NONE
  ) {
    return { type: v.type, node: v.node };
  }
  throw new Error("malformed conf change entry");
}

export function entrySize(e: Entry): number {
  return e.data.length + 24;
}

export const emptyConfState: ConfState = { voters: [], learners: [] };
export const emptyHardState: HardState = { term: 0, vote: NONE, commit: 0 };
