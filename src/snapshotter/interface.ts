// The snapshotter contract, after containerd's `snapshots.Snapshotter`.
//
// A snapshot is a directory tree identified by a `name` (called `key` while
// it is active or a view). Its life:
//
//   prepare(key, parent) → an ACTIVE snapshot: a writable tree whose initial
//     content is `parent` (a COMMITTED snapshot, or "" for an empty tree);
//     the caller mounts what `prepare` returns and writes into it.
//   commit(name, key)    → the active snapshot `key` becomes the COMMITTED
//     snapshot `name`: immutable from then on, usable as a parent.
//   view(key, parent)    → a VIEW: a read-only tree of `parent`.
//   remove(key)          → forgets a snapshot; refused while it has children.
//
// Errors are WharfErrors whose codes the gRPC adapter passes to containerd:
//   NOT_FOUND            the key/name (or the parent) does not exist
//   ALREADY_EXISTS       prepare/view of an existing key, commit onto an
//                        existing name, and the remote-snapshot answer of
//                        prepare (see OverlaySnapshotter's `resolveRemote`)
//   INVALID_ARGUMENT     a parent that is not committed, labels too large,
//                        a malformed filter, an unknown update field
//   FAILED_PRECONDITION  remove of a snapshot with children, commit of a
//                        snapshot that is not active
//
// Names are returned exactly as they were given: containerd's garbage
// collector removes every backend name it does not know.

export type Kind = "view" | "active" | "committed";

export interface Info {
  readonly name: string;
  /** The parent's name, "" for none. */
  readonly parent: string;
  readonly kind: Kind;
  readonly created: Date;
  readonly updated: Date;
  readonly labels: Readonly<Record<string, string>>;
}

/** A mount as containerd and mount(8) understand it; `target` stays unset (the caller picks it). */
export interface Mount {
  readonly type: string;
  readonly source: string;
  readonly target?: string;
  readonly options: readonly string[];
}

export interface Usage {
  /** Bytes on disk (allocated blocks, each inode counted once). */
  readonly size: number;
  readonly inodes: number;
}

export interface SnapshotOptions {
  /** Labels of the new snapshot; each key + value ≤ 4096 bytes. */
  readonly labels?: Readonly<Record<string, string>>;
}

export interface Signalled {
  readonly signal?: AbortSignal;
}

export interface Snapshotter {
  /** The info of the snapshot `key` (any kind). NOT_FOUND if it does not exist. */
  stat(key: string): Promise<Info>;

  /**
   * Updates the mutable fields of `info.name` and returns the result.
   * `fieldpaths` are "labels" (replace all labels) or "labels.<key>" (set or,
   * with an empty or missing value, delete one label); none means "labels".
   * Any other path is INVALID_ARGUMENT.
   */
  update(info: Pick<Info, "name" | "labels">, fieldpaths?: readonly string[]): Promise<Info>;

  /**
   * Disk usage of the snapshot's own tree (not its parents'). Exact and cached
   * for committed snapshots; for an active snapshot it may be up to about a
   * second old. Views own nothing: zero.
   */
  usage(key: string, opts?: Signalled): Promise<Usage>;

  /** The mounts of an active snapshot or view (for a committed one: a read-only view of it). */
  mounts(key: string): Promise<Mount[]>;

  /** Creates the active snapshot `key` on `parent` ("" for none) and returns its mounts. */
  prepare(key: string, parent: string, opts?: SnapshotOptions): Promise<Mount[]>;

  /** Creates the read-only view `key` of `parent` ("" for an empty tree) and returns its mounts. */
  view(key: string, parent: string, opts?: SnapshotOptions): Promise<Mount[]>;

  /**
   * Turns the active snapshot `key` into the committed snapshot `name`
   * (keeping its parent). Its labels become `opts.labels`: committing
   * replaces labels, it does not merge them.
   */
  commit(name: string, key: string, opts?: SnapshotOptions): Promise<void>;

  /** Forgets the snapshot `key` and frees its data. FAILED_PRECONDITION while it has children. */
  remove(key: string): Promise<void>;

  /**
   * Every snapshot matching any of `filters` (containerd's filter syntax;
   * none matches all), in name order. The iteration sees the store as it was
   * when it started.
   */
  list(filters?: readonly string[], opts?: Signalled): AsyncIterable<Info>;

  /** Frees data that no snapshot references any more (left by a crash or a failed removal). */
  cleanup(): Promise<void>;

  /** Waits for the operations in progress and releases the store. */
  close(): Promise<void>;
}
