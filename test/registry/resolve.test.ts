// resolve() and fetchBlob() against a real docker-registry: OCI and Docker
// schema 2 images, indexes, and the manifests, configs and blobs it must refuse.

import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import t from "tap";
import { RegistryClient } from "../../src/registry/client.js";
import { parseReference } from "../../src/registry/reference.js";
import { DOCKER_MANIFEST, OCI_MANIFEST, blobDataPath, pushImage, pushIndex, rejectsWith as rejects, startRegistry } from "../helpers/registry.js";

const reg = await startRegistry();
t.teardown(() => reg.stop());
const H = reg.host;
const client = (): RegistryClient => new RegistryClient({ insecureRegistries: [H], retries: 1, retryBaseMs: 10 });
const ref = (s: string) => parseReference(`${H}/${s}`);
const sha = (b: Buffer): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

t.test("an OCI image with gzip, zstd and uncompressed layers", async (t) => {
  const img = await pushImage(H, "oci/app", "v1", {
    layers: [
      { files: { "etc/hostname": "wharf\n" }, compression: "gzip" },
      { files: { "bin/tool": Buffer.alloc(5000, 7) }, compression: "zstd" },
      { files: { "README": "plain tar" }, compression: "none" },
    ],
  });
  const c = client();
  const r = await c.resolve(ref("oci/app:v1"));
  t.equal(r.reference, `${H}/oci/app:v1`);
  t.same(r.repository, { registry: H, repository: "oci/app" });
  t.equal(r.indexDigest, undefined);
  t.equal(r.manifestDigest, img.manifestDigest);
  t.equal(r.manifestMediaType, OCI_MANIFEST);
  t.ok(r.manifest.equals(img.manifest), "manifest bytes as served");
  t.equal(r.configDigest, img.configDigest);
  t.ok(r.config.equals(img.config), "config bytes");
  t.same(r.platform, { os: "linux", architecture: "amd64" });
  t.same(
    r.layers,
    img.layers.map((l, i) => ({ digest: l.digest, size: l.size, mediaType: l.mediaType, compression: (["gzip", "zstd", "none"] as const)[i], diffID: l.diffID })),
  );
  t.equal(c.bytesFetched, img.manifest.length + img.config.length, "bytesFetched counts manifest and config bodies");
  for (const l of img.layers) t.ok((await c.fetchBlob(r.repository, l)).equals(l.blob), `layer ${l.digest} fetched whole`);

  const byDigest = await c.resolve(ref(`oci/app@${img.manifestDigest}`));
  t.equal(byDigest.reference, `${H}/oci/app@${img.manifestDigest}`);
  t.equal(byDigest.manifestDigest, img.manifestDigest);
  const both = await c.resolve(ref(`oci/app:v1@${img.manifestDigest}`));
  t.equal(both.manifestDigest, img.manifestDigest, "tag and digest: the digest decides");
});

t.test("a Docker schema 2 image", async (t) => {
  const img = await pushImage(H, "docker/app", "latest", { format: "docker", layers: [{ files: { a: "1" } }, { files: { b: "2" } }] });
  const r = await client().resolve(parseReference(`${H}/docker/app`));
  t.equal(r.manifestMediaType, DOCKER_MANIFEST);
  t.equal(r.manifestDigest, img.manifestDigest);
  t.same(r.layers.map((l) => [l.mediaType, l.compression, l.diffID]), img.layers.map((l) => ["application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip", l.diffID]));
});

t.test("an index with two platforms, in both formats", async (t) => {
  for (const format of ["oci", "docker"] as const) {
    const repo = `multi/${format}`;
    const amd = await pushImage(H, repo, "@digest", { format, layers: [{ files: { arch: "amd64" } }] });
    const arm = await pushImage(H, repo, "@digest", { format, layers: [{ files: { arch: "arm64" } }], platform: { os: "linux", architecture: "arm64", variant: "v8" } });
    const idx = await pushIndex(H, repo, "v1", [
      { image: amd, platform: { os: "linux", architecture: "amd64" } },
      { image: arm, platform: { os: "linux", architecture: "arm64", variant: "v8" } },
    ], format);
    const c = client();
    const a = await c.resolve(ref(`${repo}:v1`));
    t.equal(a.indexDigest, idx.digest, `${format}: index digest`);
    t.equal(a.manifestDigest, amd.manifestDigest, `${format}: linux/amd64 by default`);
    t.same(a.platform, { os: "linux", architecture: "amd64" });
    t.equal(a.layers[0]!.diffID, amd.layers[0]!.diffID);
    const b = await c.resolve(ref(`${repo}:v1`), { platform: { os: "linux", architecture: "arm64" } });
    t.equal(b.manifestDigest, arm.manifestDigest, `${format}: linux/arm64 (v8 by default)`);
    t.same(b.platform, { os: "linux", architecture: "arm64", variant: "v8" });
    t.ok(b.config.equals(arm.config));
    const byDigest = await c.resolve(ref(`${repo}@${idx.digest}`), { platform: { os: "linux", architecture: "arm64", variant: "v8" } });
    t.equal(byDigest.manifestDigest, arm.manifestDigest, `${format}: index pulled by digest`);
    await rejects(t, c.resolve(ref(`${repo}:v1`), { platform: { os: "linux", architecture: "s390x" } }), "INVALID_MANIFEST", /no image for platform linux\/s390x; available: linux\/amd64, linux\/arm64\/v8/, `${format}: no such platform`);
  }
});

t.test("a single-platform image is not taken for another platform that was asked for", async (t) => {
  await pushImage(H, "single/arm", "v1", { layers: [{ files: { a: "1" } }], platform: { os: "linux", architecture: "arm64" } });
  const c = client();
  t.same((await c.resolve(ref("single/arm:v1"))).platform, { os: "linux", architecture: "arm64" }, "no platform asked for: taken as it is");
  await rejects(t, c.resolve(ref("single/arm:v1"), { platform: { os: "linux", architecture: "amd64" } }), "INVALID_MANIFEST", /image for linux\/arm64, not linux\/amd64/, "explicit platform");
});

t.test("manifests and configs the registry accepts but we must refuse", async (t) => {
  const c = client();
  await pushImage(H, "bad/mediatype", "v1", { layers: [{ files: { a: "1" }, mediaType: "application/vnd.example.layer.v1+tar" }] });
  await rejects(t, c.resolve(ref("bad/mediatype:v1")), "INVALID_MANIFEST", /bad\/mediatype:v1.*layers\[0\].*unsupported media type "application\/vnd.example.layer.v1\+tar"/, "unknown layer media type");

  await pushImage(H, "bad/diffids", "v1", { layers: [{ files: { a: "1" } }, { files: { b: "2" } }], editConfig: (cfg) => ((cfg.rootfs as { diff_ids: string[] }).diff_ids.pop()) });
  await rejects(t, c.resolve(ref("bad/diffids:v1")), "INVALID_MANIFEST", /config sha256:[a-f0-9]{64} of .*bad\/diffids:v1: config lists 1 diff_ids but the manifest has 2 layers/, "diff_ids count");

  await pushImage(H, "bad/rootfs", "v1", { layers: [{ files: { a: "1" } }], editConfig: (cfg) => ((cfg.rootfs as { type: string }).type = "squashfs") });
  await rejects(t, c.resolve(ref("bad/rootfs:v1")), "INVALID_MANIFEST", /rootfs\.type/, "rootfs type");

  await pushImage(H, "bad/size", "v1", {
    layers: [{ files: { a: "1" } }],
    editManifest: (m) => ((m.layers as { size: number }[])[0]!.size = -5),
  });
  await rejects(t, c.resolve(ref("bad/size:v1")), "INVALID_MANIFEST", /layers\[0\]\.size/, "negative layer size");

  await pushImage(H, "bad/configtype", "v1", {
    layers: [{ files: { a: "1" } }],
    editManifest: (m) => ((m.config as { mediaType: string }).mediaType = "application/vnd.cncf.helm.config.v1+json"),
  });
  await rejects(t, c.resolve(ref("bad/configtype:v1")), "INVALID_MANIFEST", /not a container image config/, "artifact, not an image");

  await pushImage(H, "bad/configsize", "v1", {
    layers: [{ files: { a: "1" } }],
    editManifest: (m) => ((m.config as { size: number }).size += 10),
  });
  await rejects(t, c.resolve(ref("bad/configsize:v1")), "DIGEST_MISMATCH", /config|blob sha256:/, "config shorter than its descriptor");
});

t.test("a tampered config is a DIGEST_MISMATCH naming it", async (t) => {
  const img = await pushImage(H, "tamper/config", "v1", { layers: [{ files: { a: "1" } }] });
  const forged = Buffer.from(img.config.toString().replace('"amd64"', '"arm64"'));
  t.equal(forged.length, img.config.length);
  writeFileSync(blobDataPath(reg, img.configDigest), forged);
  await rejects(t, client().resolve(ref("tamper/config:v1")), "DIGEST_MISMATCH", new RegExp(`^config of ${H}/tamper/config:v1: blob ${img.configDigest} of ${H}/tamper/config: content hashes to ${sha(forged)}$`), "tampered config");
});

t.test("a tampered manifest pulled by digest is a DIGEST_MISMATCH", async (t) => {
  const img = await pushImage(H, "tamper/manifest", "v1", { layers: [{ files: { a: "1" } }] });
  const forged = Buffer.from(img.manifest.toString().replace('"schemaVersion":2', '"schemaVersion":2 '));
  writeFileSync(blobDataPath(reg, img.manifestDigest), forged);
  await rejects(t, client().resolve(ref(`tamper/manifest@${img.manifestDigest}`)), "DIGEST_MISMATCH", new RegExp(`manifest ${img.manifestDigest} of .*: content hashes to ${sha(forged)}`), "by digest");
});

t.test("unknown tags and repositories are NOT_FOUND", async (t) => {
  await pushImage(H, "exists/app", "v1", { layers: [{ files: { a: "1" } }] });
  const c = client();
  await rejects(t, c.resolve(ref("exists/app:v2")), "NOT_FOUND", /manifest of .*exists\/app:v2: not found \(404\): MANIFEST_UNKNOWN/, "tag");
  await rejects(t, c.resolve(ref("nothing/here:v1")), "NOT_FOUND", /nothing\/here:v1: not found/, "repository");
  await rejects(t, c.fetchBlob(ref("exists/app"), { digest: `sha256:${"0".repeat(64)}`, size: 3 }), "NOT_FOUND", /blob sha256:0{64} of .*exists\/app: not found/, "blob");
});

t.test("what a registry says about a manifest is checked (a fake registry: docker-registry never lies)", async (t) => {
  const img = await pushImage(H, "fake/src", "v1", { layers: [{ files: { a: "1" } }] });
  const big = Buffer.alloc(2048, 32);
  const server = http.createServer((req, res) => {
    if (req.url === "/v2/fake/lies/manifests/v1") {
      res.writeHead(200, { "content-type": OCI_MANIFEST, "docker-content-digest": `sha256:${"e".repeat(64)}` });
      res.end(img.manifest);
    } else if (req.url === "/v2/fake/big/manifests/v1") {
      res.writeHead(200, { "content-type": OCI_MANIFEST });
      res.end(big);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  const c = new RegistryClient({ insecureRegistries: [host], maxManifestBytes: 1024, retries: 0 });
  await rejects(t, c.resolve(parseReference(`${host}/fake/lies:v1`)), "DIGEST_MISMATCH", new RegExp(`registry says its digest is sha256:e{64}, the content hashes to ${img.manifestDigest}`), "Docker-Content-Digest");
  await rejects(t, c.resolve(parseReference(`${host}/fake/big:v1`)), "INVALID_MANIFEST", /larger than 1024 bytes/, "maxManifestBytes");
});
