// Deliberate protocol bugs, for proving that the simulator's invariant checks
// and the linearizability checker catch what they are meant to catch. A
// production configuration never sets any; the core only consults them at
// the one place each bug lives.

export const BUGS = {
  "vote-without-log-check": "grant votes without the candidate's log being at least as up to date (§5.4.1)",
  "commit-old-term": "commit entries of earlier terms by counting replicas (Figure 8)",
  "read-without-quorum": "answer ReadIndex from the leader's commit index without a quorum round",
  "forget-vote": "do not persist the vote before answering a vote request",
  "quorum-off-by-one": "count n/2 voters as a quorum when committing",
  "append-without-log-match": "accept appends without checking the term of the previous entry",
  "conf-change-without-own-term": "accept a membership change before an entry of the leader's term is applied, and several at once",
} as const;

export type Bug = keyof typeof BUGS;

export function isBug(name: string): name is Bug {
  return Object.hasOwn(BUGS, name);
}
