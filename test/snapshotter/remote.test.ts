// The remote-snapshotter path through the real gRPC server: a Prepare
// carrying `containerd.io/snapshot.ref` that resolveRemote claims answers
// ALREADY_EXISTS after recording a committed, external snapshot that
// containerd's follow-up List (by ref label and parent) finds; external
// snapshots are first-class parents, and Remove never touches their data.

import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import t, { type Test } from "tap";
import { WharfError } from "../../src/errors.js";
import { type RemoteRequest, SNAPSHOT_REF_LABEL } from "../../src/snapshotter/overlay.js";
import { type InfoMsg, type MountMsg, mountAt, option, sandbox, serve, umount } from "./helpers.js";

const S = grpc.status;
type Mounts = { mounts: MountMsg[] };

/** A shared store with one directory per chain id, and a hook that serves them. */
function remoteStore(t: Test) {
  const shared = sandbox(t, "wharf-shared-");
  const layers = new Map<string, string>();
  const calls: RemoteRequest[] = [];
  const removed: string[] = [];
  const add = (chain: string, files: Record<string, string>): string => {
    const dir = join(shared, chain.replace(/[^a-z0-9]/g, "_"), "fs");
    mkdirSync(dir, { recursive: true });
    for (const [f, c] of Object.entries(files)) writeFileSync(join(dir, f), c);
    layers.set(chain, dir);
    return dir;
  };
  let fail = false;
  const resolveRemote = async (req: RemoteRequest) => {
    calls.push(req);
    if (fail) throw new Error("store unreachable");
    const ref = req.labels[SNAPSHOT_REF_LABEL]!;
    const dir = layers.get(ref);
    return dir ? { name: ref, dir, labels: { "containerd.io/snapshot/wharf.layer": ref } } : undefined;
  };
  return { add, calls, removed, resolveRemote, onRemoveExternal: (n: string) => void removed.push(n), setFail: (f: boolean) => (fail = f) };
}

t.test("Prepare → ALREADY_EXISTS; List by ref label and parent finds the committed snapshot", async (t) => {
  const store = remoteStore(t);
  const { c, root } = await serve(t, { resolveRemote: store.resolveRemote, onRemoveExternal: store.onRemoveExternal });
  const baseDir = store.add("sha256:aaa", { "base.txt": "shared base\n" });
  const topDir = store.add("sha256:bbb", { "top.txt": "shared top\n" });

  const extract = (chain: string, parent: string, n: number) =>
    c.call("Prepare", {
      key: `extract-${n}-x ${chain}`,
      parent,
      labels: { [SNAPSHOT_REF_LABEL]: chain, "containerd.io/snapshot/cri.layer-digest": `sha256:l${n}` },
    });

  // Layer 1: no parent.
  await t.rejects(extract("sha256:aaa", "", 1), { code: S.ALREADY_EXISTS }, "the remote answer");
  t.same(store.calls[0], {
    key: "extract-1-x sha256:aaa",
    parent: "",
    labels: { [SNAPSHOT_REF_LABEL]: "sha256:aaa", "containerd.io/snapshot/cri.layer-digest": "sha256:l1" },
  }, "the hook sees key, parent and labels");
  let found = (await c.list([`labels."${SNAPSHOT_REF_LABEL}"==sha256:aaa,parent==""`])).infos;
  t.equal(found.length, 1);
  t.match(found[0], { name: "sha256:aaa", parent: "", kind: "COMMITTED" } satisfies Partial<InfoMsg>);
  t.same(found[0]!.labels, { [SNAPSHOT_REF_LABEL]: "sha256:aaa", "containerd.io/snapshot/wharf.layer": "sha256:aaa" });
  await t.rejects(c.call("Stat", { key: "extract-1-x sha256:aaa" }), { code: S.NOT_FOUND }, "no active snapshot was made");

  // Layer 2 on layer 1: containerd's exact filter (parent quoted with %q).
  await t.rejects(extract("sha256:bbb", "sha256:aaa", 2), { code: S.ALREADY_EXISTS });
  found = (await c.list([`labels."${SNAPSHOT_REF_LABEL}"==sha256:bbb,parent=="sha256:aaa"`])).infos;
  t.same(found.map((i) => [i.name, i.parent, i.kind]), [["sha256:bbb", "sha256:aaa", "COMMITTED"]]);
  t.same((await c.list([`labels."${SNAPSHOT_REF_LABEL}"==sha256:bbb,parent==""`])).infos, [], "another parent: no match");

  // Asking again is idempotent.
  await t.rejects(extract("sha256:bbb", "sha256:aaa", 3), { code: S.ALREADY_EXISTS });
  t.equal((await c.list(["kind==committed"])).infos.length, 2);

  // External snapshots are ordinary parents: mounts, a real overlay, views, usage.
  const m = (await c.call<Mounts>("Prepare", { key: "ctr", parent: "sha256:bbb" })).mounts[0]!;
  t.equal(option(m, "lowerdir"), `${topDir}:${baseDir}`, "shared dirs as lower dirs, nearest first");
  const target = join(root, "..", "mnt");
  mountAt(m, target);
  let mounted = true;
  t.teardown(() => void (mounted && umount(target)));
  t.equal(readFileSync(join(target, "base.txt"), "utf8"), "shared base\n");
  t.equal(readFileSync(join(target, "top.txt"), "utf8"), "shared top\n");
  writeFileSync(join(target, "mine.txt"), "local");
  t.ok(existsSync(join(option(m, "upperdir")!, "mine.txt")), "writes land in the local upper dir");
  t.notOk(existsSync(join(topDir, "mine.txt")), "never in the shared store");
  const v = (await c.call<Mounts>("View", { key: "v", parent: "sha256:aaa" })).mounts;
  t.same(v, [{ type: "bind", source: baseDir, target: "", options: ["ro", "rbind"] }]);
  const u = await c.call<{ size: string; inodes: string }>("Usage", { key: "sha256:aaa" });
  t.equal(u.inodes, "2", "usage walks the shared dir (root + base.txt)");

  // Remove: children first; the shared directory stays; the hook hears about it.
  await t.rejects(c.call("Remove", { key: "sha256:aaa" }), { code: S.FAILED_PRECONDITION });
  await c.call("Remove", { key: "v" });
  umount(target);
  mounted = false;
  await c.call("Remove", { key: "ctr" });
  await c.call("Remove", { key: "sha256:bbb" });
  await c.call("Remove", { key: "sha256:aaa" });
  t.same(store.removed, ["sha256:bbb", "sha256:aaa"]);
  t.ok(existsSync(join(topDir, "top.txt")) && existsSync(join(baseDir, "base.txt")), "shared data untouched");
  t.same((await c.list()).infos, []);
});

t.test("no remote layer, or a failing hook: an ordinary Prepare", async (t) => {
  const store = remoteStore(t);
  const { c } = await serve(t, { resolveRemote: store.resolveRemote });
  const labels = { [SNAPSHOT_REF_LABEL]: "sha256:unknown" };
  const m = (await c.call<Mounts>("Prepare", { key: "extract-1 sha256:unknown", parent: "", labels })).mounts;
  t.equal(m[0]!.type, "bind");
  t.match((await c.call<{ info: InfoMsg }>("Stat", { key: "extract-1 sha256:unknown" })).info, { kind: "ACTIVE", labels });
  await c.call("Commit", { name: "sha256:unknown", key: "extract-1 sha256:unknown", labels });

  store.add("sha256:ccc", { f: "x" });
  store.setFail(true);
  const l2 = { [SNAPSHOT_REF_LABEL]: "sha256:ccc" };
  await c.call("Prepare", { key: "extract-2 sha256:ccc", parent: "sha256:unknown", labels: l2 });
  t.match((await c.call<{ info: InfoMsg }>("Stat", { key: "extract-2 sha256:ccc" })).info, { kind: "ACTIVE" }, "fell back");

  const n = store.calls.length;
  await c.call("Prepare", { key: "plain", parent: "" });
  t.equal(store.calls.length, n, "no ref label: the hook is not asked");
  await t.rejects(c.call("Prepare", { key: "extract-3 sha256:ccc", parent: "missing", labels: l2 }), { code: S.NOT_FOUND });
  await t.rejects(c.call("Prepare", { key: "plain", parent: "", labels: l2 }), { code: S.ALREADY_EXISTS });
  t.equal(store.calls.length, n, "bad keys and parents are refused before the hook is asked");
});

t.test("a remote name taken by another snapshot is not overwritten", async (t) => {
  const store = remoteStore(t);
  const { c } = await serve(t, { resolveRemote: store.resolveRemote });
  await c.call("Prepare", { key: "sha256:ddd", parent: "" }); // an ACTIVE snapshot with that name
  store.add("sha256:ddd", { f: "x" });
  await c.call("Prepare", { key: "extract-1 sha256:ddd", parent: "", labels: { [SNAPSHOT_REF_LABEL]: "sha256:ddd" } });
  t.match((await c.call<{ info: InfoMsg }>("Stat", { key: "sha256:ddd" })).info, { kind: "ACTIVE" }, "untouched");
  t.match((await c.call<{ info: InfoMsg }>("Stat", { key: "extract-1 sha256:ddd" })).info, { kind: "ACTIVE" }, "local prepare");
});

t.test("a pending layer: recorded at once; what is built on it waits for materialize, nothing else does", async (t) => {
  const shared = sandbox(t, "wharf-shared-");
  const dirOf = (chain: string): string => join(shared, chain.replace(/[^a-z0-9]/g, "_"));
  const asked: string[] = [];
  const waiting = new Map<string, PromiseWithResolvers<void>>();
  const materialize = (name: string, labels: Readonly<Record<string, string>>): Promise<void> => {
    asked.push(`${name} ${labels["containerd.io/snapshot/wharf.layer"]}`);
    const w = Promise.withResolvers<void>();
    waiting.set(name, w);
    return w.promise;
  };
  const resolveRemote = async (req: RemoteRequest) => {
    const ref = req.labels[SNAPSHOT_REF_LABEL]!;
    return { name: ref, dir: dirOf(ref), labels: { "containerd.io/snapshot/wharf.layer": `l-${ref}` }, pending: true };
  };
  const { c } = await serve(t, { resolveRemote, materialize });
  const extract = (chain: string, parent: string) => c.call("Prepare", { key: `extract ${chain}`, parent, labels: { [SNAPSHOT_REF_LABEL]: chain } });
  await t.rejects(extract("sha256:p1", ""), { code: S.ALREADY_EXISTS }, "answered although the layer is not there");
  await t.rejects(extract("sha256:p2", "sha256:p1"), { code: S.ALREADY_EXISTS });
  t.same(asked, [], "recording asks nothing");
  t.same(await c.call("Usage", { key: "sha256:p1" }), { size: "0", inodes: "0" }, "a layer on its way uses nothing");

  let done = false;
  const prepared = c.call<Mounts>("Prepare", { key: "ctr", parent: "sha256:p2" }).finally(() => (done = true));
  await new Promise((r) => setTimeout(r, 100));
  t.notOk(done, "the container's Prepare waits for its layers");
  t.same(asked.sort(), ["sha256:p1 l-sha256:p1", "sha256:p2 l-sha256:p2"], "both layers asked for at once, with their labels");
  await c.call("Prepare", { key: "other", parent: "" });
  t.match((await c.call<{ info: InfoMsg }>("Stat", { key: "sha256:p2" })).info, { kind: "COMMITTED" }, "other calls go on meanwhile");

  for (const ch of ["sha256:p1", "sha256:p2"]) mkdirSync(dirOf(ch));
  waiting.get("sha256:p1")!.resolve();
  await new Promise((r) => setTimeout(r, 50));
  t.notOk(done, "still waiting for the upper layer");
  waiting.get("sha256:p2")!.resolve();
  const m = (await prepared).mounts[0]!;
  t.equal(option(m, "lowerdir"), `${dirOf("sha256:p2")}:${dirOf("sha256:p1")}`);
  await c.call("Mounts", { key: "ctr" });
  await c.call("View", { key: "v", parent: "sha256:p1" });
  t.equal(asked.length, 2, "asked once per snapshot");

  // A layer that cannot be had: the call fails with its error; the next asks again.
  await t.rejects(extract("sha256:p3", "sha256:p2"), { code: S.ALREADY_EXISTS });
  const view = c.call("View", { key: "v3", parent: "sha256:p3" });
  await new Promise((r) => setTimeout(r, 50));
  waiting.get("sha256:p3")!.reject(new WharfError("UNAVAILABLE", "registry unreachable"));
  await t.rejects(view, { code: S.UNAVAILABLE, details: /registry unreachable/ });
  const again = c.call("View", { key: "v3", parent: "sha256:p3" });
  await new Promise((r) => setTimeout(r, 50));
  t.equal(asked.filter((a) => a.startsWith("sha256:p3")).length, 2, "asked again");
  mkdirSync(dirOf("sha256:p3"));
  waiting.get("sha256:p3")!.resolve();
  await again;
});
