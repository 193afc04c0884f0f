// The consensus core: a pure, synchronous Raft state machine (no I/O, no
// timers, no randomness of its own). This folder imports nothing from the
// rest of the project.
export * from "./types.js";
export * from "./errors.js";
export { BUGS, type Bug, isBug } from "./bugs.js";
export { MemoryStorage, type Storage } from "./storage.js";
export { type Config, Raft } from "./raft.js";
export { RawNode, type Status } from "./rawnode.js";
