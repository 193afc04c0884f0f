// containerd's filter syntax: what parses to what (cases from containerd's own
// parser tests and from the filters containerd sends), what is refused, and
// how parsed filters match snapshots.

import t from "tap";
import { compileFilters, parseFilter, unquote } from "../../src/snapshotter/filters.js";
import type { Info } from "../../src/snapshotter/interface.js";

const sel = (fieldpath: string[], operator: string, value = "") => ({ fieldpath, operator, value });

t.test("parses selectors", async (t) => {
  const cases: [string, unknown][] = [
    ["", []],
    ["name", [sel(["name"], "present")]],
    ["name==foo", [sel(["name"], "==", "foo")]],
    ["name!=foo", [sel(["name"], "!=", "foo")]],
    ["name~=^fo+$", [sel(["name"], "~=", "^fo+$")]],
    ["name==foo,labels.bar", [sel(["name"], "==", "foo"), sel(["labels", "bar"], "present")]],
    ["labels.a.b==c", [sel(["labels", "a", "b"], "==", "c")]],
    ['labels."a.b"==c', [sel(["labels", "a.b"], "==", "c")]],
    ['labels."very complex label"==something', [sel(["labels", "very complex label"], "==", "something")]],
    ['labels."containerd.io/snapshot.ref"', [sel(["labels", "containerd.io/snapshot.ref"], "present")]],
    // What containerd's metadata layer sends after a remote ALREADY_EXISTS.
    [
      'labels."containerd.io/snapshot.ref"==sha256:abc,parent=="ns/1/sha256:def"',
      [sel(["labels", "containerd.io/snapshot.ref"], "==", "sha256:abc"), sel(["parent"], "==", "ns/1/sha256:def")],
    ],
    // Values may hold dots, slashes, colons, '=' and unicode; they stop at ',' and spaces.
    ["name==a.b/c:d=e", [sel(["name"], "==", "a.b/c:d=e")]],
    ["name==héllo", [sel(["name"], "==", "héllo")]],
    ["name == foo ,kind==view".replace(" ,", ","), [sel(["name"], "==", "foo"), sel(["kind"], "==", "view")]],
    ["name==foo,  kind==view", [sel(["name"], "==", "foo"), sel(["kind"], "==", "view")]],
    ['name=="with space, and comma"', [sel(["name"], "==", "with space, and comma")]],
    ['name=="esc\\"aped\\t\\x41\\101\\u00e9"', [sel(["name"], "==", 'esc"aped\tAAé')]],
    ["name~=/fo+/", [sel(["name"], "~=", "fo+")]],
    ["name~=|a/b|", [sel(["name"], "~=", "a/b")]],
    ["labels.with-dash_and_1", [sel(["labels", "with-dash_and_1"], "present")]],
    ["parent==", null], // an operator needs a value
  ];
  for (const [input, want] of cases) {
    if (want === null) {
      t.throws(() => parseFilter(input), { code: "INVALID_ARGUMENT" }, input);
      continue;
    }
    t.same(parseFilter(input), want, input);
  }
});

t.test("refuses malformed filters with INVALID_ARGUMENT", async (t) => {
  const bad = [
    "labels.containerd.io/snapshot.ref", // '/' opens a quoted literal that never ends
    'labels."unterminated',
    "name===foo",
    "name=foo",
    "name~foo",
    "name==foo,",
    ",name==foo",
    "name==foo bar",
    "name==foo ", // containerd allows nothing after a value but "," or the end
    "name ,kind", // nor after a field path
    ".name",
    "name.",
    "name==,kind",
    'name=="bad\\q"',
    "name~=(",
    "name==\0",
    "na$me",
  ];
  for (const f of bad) {
    t.throws(() => parseFilter(f), { name: "WharfError", code: "INVALID_ARGUMENT" }, JSON.stringify(f));
  }
  t.throws(() => compileFilters(["name==a", "name=="]), { code: "INVALID_ARGUMENT" }, "one bad filter of several");
});

t.test("unquote: Go escapes with \", / and | as quotes", async (t) => {
  t.equal(unquote('"a\\nb"'), "a\nb");
  t.equal(unquote("/a\\/b/"), "a/b");
  t.equal(unquote("|a\\|b|"), "a|b");
  t.equal(unquote('"\\xc3\\xa9"'), "é", "\\x escapes are bytes");
  t.equal(unquote('"\\U0001F600"'), "😀");
  t.throws(() => unquote('"a"b"'));
  t.throws(() => unquote('"\\/"'), "an escaped quote of another kind");
  t.throws(() => unquote('"abc'));
  t.throws(() => unquote('"\\400"'), "octal beyond a byte");
});

t.test("matches snapshots", async (t) => {
  const info = (name: string, kind: Info["kind"], parent: string, labels: Record<string, string>): Info => ({
    name,
    kind,
    parent,
    labels,
    created: new Date(0),
    updated: new Date(0),
  });
  const all = [
    info("base", "committed", "", { "containerd.io/snapshot.ref": "sha256:1", a: "x" }),
    info("mid", "committed", "base", { "containerd.io/snapshot.ref": "sha256:2", "a.b": "y" }),
    info("work", "active", "mid", {}),
    info("look", "view", "base", { a: "" }),
  ];
  const names = (...filters: string[]) => all.filter(compileFilters(filters)).map((i) => i.name);
  t.same(names(), ["base", "mid", "work", "look"], "no filter: all");
  t.same(names(""), ["base", "mid", "work", "look"], "empty filter: all");
  t.same(names("kind==committed"), ["base", "mid"]);
  t.same(names("kind!=committed"), ["work", "look"]);
  t.same(names("name==work"), ["work"]);
  t.same(names("parent==base"), ["mid", "look"]);
  t.same(names('parent==""'), ["base"], "quoted empty value: no parent");
  t.same(names("parent"), ["base", "mid", "work", "look"], "parent is always present");
  t.same(names("labels.a"), ["base", "look"], "presence, also of an empty value");
  t.same(names("labels.a==x"), ["base"]);
  t.same(names("labels.a!=x"), ["mid", "work", "look"], "absent counts as \"\"");
  t.same(names("labels.a.b==y"), ["mid"], "unquoted dotted key");
  t.same(names('labels."a.b"==y'), ["mid"], "quoted dotted key");
  t.same(names('labels."containerd.io/snapshot.ref"==sha256:2,parent==base'), ["mid"], "AND");
  t.same(names('labels."containerd.io/snapshot.ref"==sha256:2,parent==mid'), [], "AND, one fails");
  t.same(names("name==base", "kind==view"), ["base", "look"], "OR across filters");
  t.same(names("name~=^(ba|lo)"), ["base", "look"]);
  t.same(names("labels"), [], "labels alone names no label");
  t.same(names("unknown"), [], "unknown fields are absent");
  t.same(names("unknown!=x"), ["base", "mid", "work", "look"]);
});
