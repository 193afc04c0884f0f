// Reference and platform parsing: docker's normalisation, the distribution
// grammar, and the errors for what it refuses.

import t from "tap";
import { WharfError } from "../../src/errors.js";
import { formatPlatform, normalisePlatform, parsePlatform, platformMatches } from "../../src/registry/platform.js";
import { formatReference, parseReference } from "../../src/registry/reference.js";

const D = `sha256:${"a".repeat(64)}`;

t.test("docker normalisation", async (t) => {
  const table: [string, string, Partial<{ registry: string; repository: string; tag: string; digest: string }>][] = [
    ["busybox", "docker.io/library/busybox:latest", { registry: "docker.io", repository: "library/busybox", tag: "latest" }],
    ["busybox:1.36", "docker.io/library/busybox:1.36", { tag: "1.36" }],
    ["user/app", "docker.io/user/app:latest", { registry: "docker.io", repository: "user/app" }],
    ["docker.io/busybox", "docker.io/library/busybox:latest", {}],
    ["index.docker.io/library/busybox:1", "docker.io/library/busybox:1", { registry: "docker.io" }],
    ["index.docker.io/user/app", "docker.io/user/app:latest", {}],
    ["localhost/app", "localhost/app:latest", { registry: "localhost", repository: "app" }],
    ["localhost:5000/a/b/c:v1", "localhost:5000/a/b/c:v1", { registry: "localhost:5000", repository: "a/b/c" }],
    ["127.0.0.1:5000/app", "127.0.0.1:5000/app:latest", { registry: "127.0.0.1:5000" }],
    ["ghcr.io/org/img:tag-1.0_x", "ghcr.io/org/img:tag-1.0_x", { registry: "ghcr.io", repository: "org/img" }],
    ["Registry/app", "Registry/app:latest", { registry: "Registry" }],
    // "localhost:5000" alone is docker.io's library/localhost, tag 5000 (docker agrees)
    ["localhost:5000", "docker.io/library/localhost:5000", { repository: "library/localhost", tag: "5000" }],
    [`busybox@${D}`, `docker.io/library/busybox@${D}`, { digest: D, tag: undefined }],
    [`quay.io/a/b:v2@${D}`, `quay.io/a/b:v2@${D}`, { tag: "v2", digest: D }],
    ["a__b/c-d--e/f.g_h", "docker.io/a__b/c-d--e/f.g_h:latest", { repository: "a__b/c-d--e/f.g_h" }],
    ["[::1]:5000/app", "[::1]:5000/app:latest", { registry: "[::1]:5000" }],
  ];
  for (const [input, formatted, fields] of table) {
    const r = parseReference(input);
    t.equal(formatReference(r), formatted, input);
    for (const [k, v] of Object.entries(fields)) t.equal(r[k as keyof typeof r], v, `${input}: ${k}`);
    t.same(parseReference(formatted), r, `${formatted} parses back to the same reference`);
  }
});

t.test("bad references are refused with INVALID_ARGUMENT and say why", async (t) => {
  const table: [string, RegExp][] = [
    ["", /empty/],
    [" busybox", /white space/],
    ["Busybox", /lowercase/],
    ["user/App", /lowercase/],
    ["a//b", /empty path component/],
    ["a/b/", /empty path component/],
    ["-app", /invalid path component/],
    ["app-", /invalid path component/],
    ["a...b", /invalid path component/],
    ["app:", /invalid tag/],
    ["app:-x", /invalid tag/],
    [`app:${"x".repeat(129)}`, /invalid tag/],
    ["app:a/b", /lowercase|invalid/],
    ["app@sha256:abc", /64 lowercase hex/],
    [`app@sha256:${"A".repeat(64)}`, /64 lowercase hex/],
    [`app@sha512:${"a".repeat(128)}`, /sha512.*not supported/],
    ["app@nothex", /malformed digest/],
    ["exa_mple.com/app", /invalid registry host/],
    ["ghcr.io/", /no repository/],
    [":tag", /no repository/],
    [`r.io/${"a".repeat(260)}`, /longer than 255/],
  ];
  for (const [input, why] of table) {
    try {
      parseReference(input);
      t.fail(`${JSON.stringify(input)} was accepted`);
    } catch (e) {
      t.ok(e instanceof WharfError && e.code === "INVALID_ARGUMENT", `${JSON.stringify(input)}: INVALID_ARGUMENT`);
      t.match((e as Error).message, why, `${JSON.stringify(input)}: ${(e as Error).message}`);
    }
  }
});

t.test("platforms", async (t) => {
  t.same(parsePlatform("linux/amd64"), { os: "linux", architecture: "amd64" });
  t.same(parsePlatform("linux/arm64/v8"), { os: "linux", architecture: "arm64", variant: "v8" });
  t.same(parsePlatform("Linux/ARM/v7"), { os: "linux", architecture: "arm", variant: "v7" });
  for (const bad of ["linux", "linux/", "linux/amd64/v1/x", "linux amd64", ""]) {
    t.throws(() => parsePlatform(bad), { code: "INVALID_ARGUMENT" }, JSON.stringify(bad));
  }
  t.equal(formatPlatform(normalisePlatform(parsePlatform("linux/aarch64"))), "linux/arm64/v8");
  t.equal(formatPlatform(normalisePlatform(parsePlatform("linux/x86_64/v3"))), "linux/amd64");
  t.ok(platformMatches(parsePlatform("linux/amd64"), parsePlatform("linux/amd64/v2")), "amd64 ignores the variant");
  t.ok(platformMatches(parsePlatform("linux/arm64"), parsePlatform("linux/arm64/v8")), "arm64 defaults to v8");
  t.ok(platformMatches(parsePlatform("linux/arm64/v8"), { os: "linux", architecture: "arm64" }));
  t.notOk(platformMatches(parsePlatform("linux/arm64"), parsePlatform("linux/arm64/v9")));
  t.ok(platformMatches(parsePlatform("linux/arm"), parsePlatform("linux/arm/v7")), "arm defaults to v7");
  t.notOk(platformMatches(parsePlatform("linux/arm/v6"), parsePlatform("linux/arm/v7")));
  t.notOk(platformMatches(parsePlatform("linux/amd64"), parsePlatform("windows/amd64")));
  t.notOk(platformMatches(parsePlatform("linux/amd64"), parsePlatform("linux/arm64")));
});
