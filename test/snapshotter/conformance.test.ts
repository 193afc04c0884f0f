// The snapshotter conformance suite: the real OverlaySnapshotter behind the
// real gRPC server on a unix socket, driven by a grpc-js client built from the
// same protos, so every answer is checked as containerd receives it (status
// codes from the doc's error table, explicit kinds, int64 as strings, mounts
// in containerd's format). Overlay and bind mounts are really mounted.

import { execFileSync } from "node:child_process";
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import t from "tap";
import { type WharfErrorCode, exitCodeOf, grpcStatusOf, WharfError } from "../../src/errors.js";
import { LIST_BATCH, serveSnapshotter } from "../../src/snapshotter/grpc.js";
import { OverlaySnapshotter } from "../../src/snapshotter/overlay.js";
import { type InfoMsg, type MountMsg, client, mountAt, option, sandbox, serve, umount } from "./helpers.js";

const S = grpc.status;
type Mounts = { mounts: MountMsg[] };
type InfoRes = { info: InfoMsg };

t.test("every error code has a gRPC status; the snapshotter's land on containerd's errdefs", async (t) => {
  t.equal(grpcStatusOf("NOT_FOUND"), S.NOT_FOUND);
  t.equal(grpcStatusOf("ALREADY_EXISTS"), S.ALREADY_EXISTS);
  t.equal(grpcStatusOf("FAILED_PRECONDITION"), S.FAILED_PRECONDITION);
  t.equal(grpcStatusOf("INVALID_ARGUMENT"), S.INVALID_ARGUMENT);
  t.equal(grpcStatusOf("UNAVAILABLE"), S.UNAVAILABLE);
  t.equal(grpcStatusOf("SHUTTING_DOWN"), S.UNAVAILABLE);
  t.equal(exitCodeOf(new WharfError("ALREADY_EXISTS", "x")), 11);
  t.equal(exitCodeOf(new WharfError("FAILED_PRECONDITION", "x")), 11);
  const codes: WharfErrorCode[] = [
    "INVALID_ARGUMENT", "NOT_FOUND", "NO_LEADER", "BUSY", "TIMEOUT", "WRONG_SECRET", "WRONG_CLUSTER", "UNAVAILABLE",
    "SHUTTING_DOWN", "UNAUTHORIZED", "DENIED", "DIGEST_MISMATCH", "INVALID_MANIFEST", "INVALID_LAYER",
    "REGISTRY_UNAVAILABLE", "ALREADY_EXISTS", "FAILED_PRECONDITION", "INTERNAL",
  ];
  for (const c of codes) {
    const s = grpcStatusOf(c);
    t.ok(Number.isInteger(s) && s > 0 && s <= 16, `${c} → ${s}`);
  }
});

t.test("prepare, commit, view, mounts", async (t) => {
  const { c, root } = await serve(t);
  const dataDirs = () => readdirSync(join(root, "snapshots"));

  const p = await c.call<Mounts>("Prepare", { key: "base-active", parent: "", labels: { l: "1" } });
  t.equal(p.mounts.length, 1);
  const bind = p.mounts[0]!;
  t.same({ type: bind.type, target: bind.target, options: bind.options }, { type: "bind", target: "", options: ["rw", "rbind"] });
  t.ok(bind.source.startsWith(join(root, "snapshots")) && bind.source.endsWith("/fs"), bind.source);
  t.same((await c.call<Mounts>("Mounts", { key: "base-active" })).mounts, p.mounts, "Mounts repeats Prepare's answer");

  const st = await c.call<InfoRes>("Stat", { key: "base-active" });
  t.match(st.info, { name: "base-active", parent: "", kind: "ACTIVE", labels: { l: "1" } });
  const created = Number(st.info.created_at!.seconds);
  t.ok(Math.abs(created - Date.now() / 1000) < 60, "created_at is now");

  await t.rejects(c.call("Prepare", { key: "base-active", parent: "" }), { code: S.ALREADY_EXISTS }, "existing key");
  await t.rejects(c.call("View", { key: "base-active", parent: "" }), { code: S.ALREADY_EXISTS }, "existing key (view)");
  await t.rejects(c.call("Prepare", { key: "", parent: "" }), { code: S.INVALID_ARGUMENT }, "empty key");
  await t.rejects(c.call("Prepare", { key: "x", parent: "nope" }), { code: S.NOT_FOUND }, "missing parent");
  await t.rejects(c.call("Prepare", { key: "x", parent: "base-active" }), { code: S.INVALID_ARGUMENT }, "active parent");
  await t.rejects(c.call("View", { key: "x", parent: "base-active" }), { code: S.INVALID_ARGUMENT }, "active parent (view)");
  t.equal(dataDirs().length, 1, "refused requests leave no data behind");

  writeFileSync(join(bind.source, "base.txt"), "from base\n");
  await t.rejects(c.call("Commit", { name: "base", key: "nope" }), { code: S.NOT_FOUND }, "commit of a missing key");
  await c.call("Commit", { name: "base", key: "base-active", labels: { committed: "yes" } });
  await t.rejects(c.call("Stat", { key: "base-active" }), { code: S.NOT_FOUND }, "the active key is gone");
  t.match((await c.call<InfoRes>("Stat", { key: "base" })).info, { name: "base", parent: "", kind: "COMMITTED" });
  t.same((await c.call<InfoRes>("Stat", { key: "base" })).info.labels, { committed: "yes" }, "commit replaces labels");
  await t.rejects(c.call("Commit", { name: "base", key: "base" }), { code: S.ALREADY_EXISTS }, "commit onto an existing name");
  await t.rejects(c.call("Commit", { name: "base2", key: "base" }), { code: S.FAILED_PRECONDITION }, "commit of a committed one");
  t.equal(dataDirs().length, 1, "commit keeps the data directory");

  // A second layer, then an active snapshot and views on top.
  const mid = (await c.call<Mounts>("Prepare", { key: "mid-active", parent: "base" })).mounts[0]!;
  t.equal(mid.type, "overlay");
  t.equal(mid.source, "overlay");
  t.same(mid.options.map((o) => o.split("=")[0]), ["workdir", "upperdir", "lowerdir"], "option order");
  t.equal(option(mid, "lowerdir"), bind.source, "lowerdir = the parent's fs");
  writeFileSync(join(option(mid, "upperdir")!, "mid.txt"), "from mid\n");
  await c.call("Commit", { name: "mid", key: "mid-active" });

  const top = (await c.call<Mounts>("Prepare", { key: "top", parent: "mid" })).mounts[0]!;
  const midFs = option(mid, "upperdir")!;
  t.equal(option(top, "lowerdir"), `${midFs}:${bind.source}`, "lowerdir lists the nearest parent first");
  t.ok(existsSync(option(top, "workdir")!) && existsSync(option(top, "upperdir")!), "upper and work dirs exist");

  const v1 = (await c.call<Mounts>("View", { key: "v1", parent: "base" })).mounts;
  t.same(v1, [{ type: "bind", source: bind.source, target: "", options: ["ro", "rbind"] }], "view of one parent: ro bind");
  const v2 = (await c.call<Mounts>("View", { key: "v2", parent: "mid" })).mounts;
  t.same(v2, [{ type: "overlay", source: "overlay", target: "", options: [`lowerdir=${midFs}:${bind.source}`] }], "view of two");
  const v0 = (await c.call<Mounts>("View", { key: "v0", parent: "" })).mounts[0]!;
  t.same([v0.type, v0.options], ["bind", ["ro", "rbind"]], "empty view");
  t.match((await c.call<InfoRes>("Stat", { key: "v1" })).info, { kind: "VIEW", parent: "base" });
  await t.rejects(c.call("Commit", { name: "v1c", key: "v1" }), { code: S.FAILED_PRECONDITION }, "commit of a view");
  await t.rejects(c.call("Mounts", { key: "nope" }), { code: S.NOT_FOUND });

  // Committed snapshots answer Mounts with a read-only view of themselves.
  t.same((await c.call<Mounts>("Mounts", { key: "mid" })).mounts[0]!.options, [`lowerdir=${midFs}:${bind.source}`]);

  t.test("a real overlay mount of the active snapshot", async (t) => {
    const target = join(root, "..", "mnt-top");
    mountAt(top, target);
    t.teardown(() => umount(target));
    t.equal(readFileSync(join(target, "base.txt"), "utf8"), "from base\n", "grandparent visible");
    t.equal(readFileSync(join(target, "mid.txt"), "utf8"), "from mid\n", "parent visible");
    writeFileSync(join(target, "new.txt"), "written through the mount\n");
    t.equal(readFileSync(join(option(top, "upperdir")!, "new.txt"), "utf8"), "written through the mount\n", "lands in upperdir");
    t.notOk(existsSync(join(midFs, "new.txt")), "the parent is untouched");
    t.notOk(existsSync(join(bind.source, "new.txt")), "the grandparent is untouched");
  });

  t.test("views mount read-only", async (t) => {
    for (const [name, m] of [["v1", v1[0]!], ["v2", v2[0]!]] as const) {
      const target = join(root, "..", `mnt-${name}`);
      mountAt(m, target);
      t.teardown(() => umount(target));
      t.equal(readFileSync(join(target, "base.txt"), "utf8"), "from base\n", `${name} shows the base`);
      t.throws(() => writeFileSync(join(target, "x"), "x"), { code: "EROFS" }, `${name} refuses writes`);
    }
  });
});

t.test("remove", async (t) => {
  const { c, root } = await serve(t);
  await c.call("Prepare", { key: "a", parent: "" });
  await c.call("Commit", { name: "A", key: "a" });
  await c.call("Prepare", { key: "b", parent: "A" });
  await c.call("View", { key: "v", parent: "A" });
  await t.rejects(c.call("Remove", { key: "A" }), { code: S.FAILED_PRECONDITION }, "parent of an active and a view");
  await t.rejects(c.call("Remove", { key: "nope" }), { code: S.NOT_FOUND });
  const before = readdirSync(join(root, "snapshots")).length;
  await c.call("Remove", { key: "b" });
  await t.rejects(c.call("Remove", { key: "A" }), { code: S.FAILED_PRECONDITION }, "still the parent of a view");
  await c.call("Remove", { key: "v" });
  await c.call("Remove", { key: "A" });
  await c.call("Cleanup", {});
  t.equal(readdirSync(join(root, "snapshots")).length, before - 3, "data directories removed by cleanup");
  t.same((await c.list()).infos, [], "nothing left");
  await t.rejects(c.call("Stat", { key: "A" }), { code: S.NOT_FOUND });
  // The children index follows commits: a child committed under a new name still pins its parent.
  await c.call("Prepare", { key: "p", parent: "" });
  await c.call("Commit", { name: "P", key: "p" });
  await c.call("Prepare", { key: "q", parent: "P" });
  await c.call("Commit", { name: "Q", key: "q" });
  await t.rejects(c.call("Remove", { key: "P" }), { code: S.FAILED_PRECONDITION }, "parent of a committed child");
  await c.call("Remove", { key: "Q" });
  await c.call("Remove", { key: "P" });
});

t.test("update with field masks", async (t) => {
  const { c } = await serve(t);
  await c.call("Prepare", { key: "k", parent: "", labels: { a: "1", "containerd.io/snapshot/x.y": "2", keep: "3" } });
  const before = (await c.call<InfoRes>("Stat", { key: "k" })).info;
  await new Promise((r) => setTimeout(r, 5));
  const upd = (info: Record<string, unknown>, paths?: string[]) =>
    c.call<InfoRes>("Update", { info, ...(paths ? { update_mask: { paths } } : {}) });

  let r = await upd({ name: "k", labels: { "containerd.io/snapshot/x.y": "new", a: "ignored" } }, ["labels.containerd.io/snapshot/x.y"]);
  t.same(r.info.labels, { a: "1", "containerd.io/snapshot/x.y": "new", keep: "3" }, "labels.<key> sets only that key");
  t.equal(r.info.kind, "ACTIVE", "kind is set explicitly");
  const u = r.info.updated_at!;
  const b = before.updated_at!;
  t.ok(Number(u.seconds) * 1e9 + u.nanos > Number(b.seconds) * 1e9 + b.nanos, "updated_at advances");
  t.same(r.info.created_at, before.created_at, "created_at stays");

  r = await upd({ name: "k", labels: { a: "" } }, ["labels.a"]);
  t.same(r.info.labels, { "containerd.io/snapshot/x.y": "new", keep: "3" }, "an empty value deletes");
  r = await upd({ name: "k", labels: {} }, ["labels.keep"]);
  t.same(r.info.labels, { "containerd.io/snapshot/x.y": "new" }, "a missing value deletes");
  r = await upd({ name: "k", labels: { z: "26", e: "" } }, ["labels"]);
  t.same(r.info.labels, { z: "26" }, "labels replaces all (empty values dropped)");
  r = await upd({ name: "k", labels: { only: "this" } });
  t.same(r.info.labels, { only: "this" }, "no mask replaces labels");
  t.same((await c.call<InfoRes>("Stat", { key: "k" })).info.labels, { only: "this" }, "persisted");

  await t.rejects(upd({ name: "k", labels: {}, parent: "x" }, ["parent"]), { code: S.INVALID_ARGUMENT }, "immutable field");
  await t.rejects(upd({ name: "k", labels: {} }, ["name"]), { code: S.INVALID_ARGUMENT });
  await t.rejects(upd({ name: "nope", labels: {} }, ["labels"]), { code: S.NOT_FOUND });
  await t.rejects(upd({ name: "k", labels: { big: "v".repeat(4094) } }, ["labels.big"]), { code: S.INVALID_ARGUMENT });
  t.same((await c.call<InfoRes>("Stat", { key: "k" })).info.labels, { only: "this" }, "refused updates change nothing");
});

t.test("labels: key + value ≤ 4096 bytes", async (t) => {
  const { c } = await serve(t);
  await c.call("Prepare", { key: "ok", parent: "", labels: { k: "v".repeat(4095) } });
  await t.rejects(c.call("Prepare", { key: "big", parent: "", labels: { k: "v".repeat(4096) } }), { code: S.INVALID_ARGUMENT });
  await t.rejects(c.call("Prepare", { key: "big", parent: "", labels: { "é": "v".repeat(4095) } }), { code: S.INVALID_ARGUMENT }, "bytes, not chars");
  await t.rejects(c.call("Commit", { name: "c", key: "ok", labels: { k: "v".repeat(4096) } }), { code: S.INVALID_ARGUMENT });
  await t.rejects(c.call("Stat", { key: "big" }), { code: S.NOT_FOUND });
  t.match((await c.call<InfoRes>("Stat", { key: "ok" })).info, { kind: "ACTIVE" }, "a refused commit leaves it active");
});

t.test("list: filters, explicit kinds, batches of 100", async (t) => {
  const { c } = await serve(t);
  await c.call("Prepare", { key: "b", parent: "", labels: { "containerd.io/snapshot.ref": "sha256:1" } });
  await c.call("Commit", { name: "sha256:1", key: "b", labels: { "containerd.io/snapshot.ref": "sha256:1", "a.b": "x" } });
  await c.call("Prepare", { key: "ns/2/active", parent: "sha256:1", labels: { role: "rw" } });
  await c.call("View", { key: "ns/3/view", parent: "sha256:1" });
  const names = async (...filters: string[]) => (await c.list(filters)).infos.map((i) => i.name);

  const all = (await c.list()).infos;
  t.same(all.map((i) => [i.name, i.kind, i.parent]), [
    ["ns/2/active", "ACTIVE", "sha256:1"],
    ["ns/3/view", "VIEW", "sha256:1"],
    ["sha256:1", "COMMITTED", ""],
  ], "exact names, parents and kinds");
  t.same(await names("kind==committed"), ["sha256:1"]);
  t.same(await names("kind==active", "kind==view"), ["ns/2/active", "ns/3/view"], "OR");
  t.same(await names("parent==sha256:1,kind!=view"), ["ns/2/active"], "AND");
  t.same(await names('labels."containerd.io/snapshot.ref"==sha256:1,parent==""'), ["sha256:1"]);
  t.same(await names('labels."a.b"'), ["sha256:1"], "presence of a dotted key");
  t.same(await names("labels.role==rw"), ["ns/2/active"]);
  t.same(await names('name=="ns/3/view"'), ["ns/3/view"]);
  t.same(await names("name==nope"), []);
  await t.rejects(c.list(["labels.containerd.io/snapshot.ref==x"]), { code: S.INVALID_ARGUMENT }, "unquoted slash");
  await t.rejects(c.list(["kind=committed"]), { code: S.INVALID_ARGUMENT });

  for (let i = 0; i < 247; i++) await c.call("View", { key: `many/${String(i).padStart(3, "0")}`, parent: "" });
  const big = await c.list();
  t.equal(big.infos.length, 250);
  t.same(big.batches, [LIST_BATCH, LIST_BATCH, 50], "streamed in batches of 100");
  const sorted = big.infos.map((i) => i.name);
  t.same(sorted, [...sorted].sort(), "in name order");
  t.same((await c.list(["name~=^many/00"])).batches, [10], "a filtered list is batched too");
});

t.test("usage: committed exact and cached, active cheap, views zero", async (t) => {
  const { c } = await serve(t);
  const m = (await c.call<Mounts>("Prepare", { key: "a", parent: "" })).mounts[0]!;
  const u0 = await c.call<{ size: string; inodes: string }>("Usage", { key: "a" });
  t.type(u0.size, "string", "int64 as a decimal string");
  t.equal(u0.inodes, "1", "the empty tree: its root");
  writeFileSync(join(m.source, "f"), Buffer.alloc(1 << 20, 1));
  mkdirSync(join(m.source, "d"));
  writeFileSync(join(m.source, "d", "g"), "g");
  const u1 = await c.call<{ size: string; inodes: string }>("Usage", { key: "a" });
  t.same(u1, u0, "an active snapshot's usage is reused for about a second");
  await new Promise((r) => setTimeout(r, 1100));
  const u2 = await c.call<{ size: string; inodes: string }>("Usage", { key: "a" });
  t.equal(u2.inodes, "4", "root, f, d, d/g");
  t.ok(Number(u2.size) >= 1 << 20, `size ${u2.size} counts the 1 MiB file`);

  await c.call("Commit", { name: "A", key: "a" });
  const uc = await c.call<{ size: string; inodes: string }>("Usage", { key: "A" });
  t.same(uc, u2, "committed: the same tree");
  writeFileSync(join(m.source, "sneaky"), Buffer.alloc(1 << 20, 2));
  t.same(await c.call("Usage", { key: "A" }), uc, "committed usage is computed once");

  await c.call("View", { key: "v", parent: "A" });
  t.same(await c.call("Usage", { key: "v" }), { size: "0", inodes: "0" }, "a view owns nothing");
  await t.rejects(c.call("Usage", { key: "nope" }), { code: S.NOT_FOUND });
});

t.test("cleanup frees unreferenced data; state survives a restart", async (t) => {
  const { c, root, stop } = await serve(t);
  await c.call("Prepare", { key: "a", parent: "" });
  await c.call("Commit", { name: "A", key: "a" });
  await c.call("Prepare", { key: "b", parent: "A", labels: { x: "y" } });
  const snaps = join(root, "snapshots");
  const live = readdirSync(snaps).sort();
  await c.call("Prepare", { key: "gone", parent: "A" });
  await c.call("Remove", { key: "gone" });
  await t.rejects(c.call("Stat", { key: "gone" }), { code: S.NOT_FOUND }, "a removed snapshot is gone at once");
  t.equal(readdirSync(snaps).length, live.length + 1, "its data waits for cleanup (containerd's async_remove)");
  mkdirSync(join(snaps, "new-crashed", "fs"), { recursive: true });
  mkdirSync(join(snaps, "99", "fs"), { recursive: true });
  await c.call("Cleanup", {});
  t.same(readdirSync(snaps).sort(), live, "only referenced directories remain");

  await stop();
  const sn = await OverlaySnapshotter.open(root);
  t.teardown(() => sn.close());
  t.match(await sn.stat("b"), { kind: "active", parent: "A", labels: { x: "y" } });
  await sn.prepare("c", "A");
  t.equal(new Set(readdirSync(snaps)).size, 3, "a new id, not a reused one");
  t.equal((await sn.mounts("b"))[0]!.type, "overlay");
  await t.rejects(sn.remove("A"), { code: "FAILED_PRECONDITION" }, "the children index survived");
  await sn.close();
  await t.rejects(sn.stat("b"), { code: "SHUTTING_DOWN" }, "closed");
});

t.test("a stale socket file is replaced; a regular file is not", async (t) => {
  const dir = sandbox(t);
  const socket = join(dir, "sn.sock");
  // A socket file left behind by a process that died without closing it.
  execFileSync(process.execPath, ["-e", `require("net").createServer().listen(${JSON.stringify(socket)}, () => process.exit(0))`]);
  t.ok(lstatSync(socket).isSocket(), "stale socket in place");
  const sn = await OverlaySnapshotter.open(join(dir, "root"));
  t.teardown(() => sn.close());
  const log = pino({ level: "silent" });
  writeFileSync(join(dir, "plain"), "x");
  await t.rejects(serveSnapshotter(sn, join(dir, "plain"), log), { code: "INVALID_ARGUMENT" }, "not a socket: refused");
  t.equal(readFileSync(join(dir, "plain"), "utf8"), "x", "and left alone");
  const server = await serveSnapshotter(sn, socket, log);
  const c = client(socket);
  await c.call("Prepare", { key: "k", parent: "" });
  t.equal((await c.list()).infos.length, 1, "the new server answers on the old path");
  c.close();
  await server.close();
  t.notOk(existsSync(socket), "close removes the socket file");
});
