// The shared layer store's commit: a tree built under tmp/ is flushed (one
// syncfs through the store's helper shell) and renamed into layers/.

import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import t from "tap";
import { LayerStore } from "../../src/layers/store.js";

const D = (n: number): string => `sha256:${n.toString(16).padStart(64, "0")}`;

async function tree(store: LayerStore, files: Record<string, string>): Promise<string> {
  const dir = await store.tempDir("extract");
  for (const [name, body] of Object.entries(files)) writeFileSync(join(dir, name), body);
  return dir;
}

t.test("commits trees into layers/, many at once, and a second copy of a layer is discarded", async (t) => {
  const root = mkdtempSync(join(tmpdir(), "wharf-store-"));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const store = await LayerStore.open(root, "agent1");
  const n = 12;
  const tmps = await Promise.all(Array.from({ length: n }, (_, i) => tree(store, { "data.txt": `layer ${i}` })));
  const paths = await Promise.all(tmps.map((tmp, i) => store.commitLayer(tmp, D(i + 1))));
  paths.forEach((p, i) => t.equal(readFileSync(join(p, "data.txt"), "utf8"), `layer ${i}`, `layer ${i} in place`));
  const again = await tree(store, { "data.txt": "another copy" });
  await store.commitLayer(again, D(1));
  t.equal(readFileSync(join(store.layerPath(D(1)), "data.txt"), "utf8"), "layer 0", "the layer in place is kept");
  t.notOk(existsSync(again), "the second copy is discarded");
  t.same(readdirSync(join(root, "tmp")), [], "nothing left in tmp/");
});

t.test("a flush that fails fails its commit with a clear error; the next one works", async (t) => {
  const root = mkdtempSync(join(tmpdir(), "wharf-store-"));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const store = await LayerStore.open(root, "agent1");
  await t.rejects(store.commitLayer(join(root, "tmp", "agent1.gone"), D(1)), /sync -f .*agent1\.gone/, "a tree that is not there");
  t.notOk(existsSync(store.layerPath(D(1))), "and nothing is committed");
  await t.rejects(store.commitLayer(join(root, "tmp", "a\nb"), D(2)), /newline/);
  const ok = await tree(store, { f: "x" });
  t.equal(readFileSync(join(await store.commitLayer(ok, D(3)), "f"), "utf8"), "x", "the helper still serves the next commit");
  mkdirSync(join(root, "tmp", "agent1.empty"));
  await store.commitLayer(join(root, "tmp", "agent1.empty"), D(4));
  t.ok(existsSync(store.layerPath(D(4))), "an empty layer too");
});
