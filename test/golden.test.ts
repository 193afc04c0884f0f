// Golden-trace tests of the consensus core: each file in golden/testdata is a
// story told as commands to an InteractionEnv (see golden/env.ts), each
// followed by the output it must produce:
//
//   # a comment
//   command arg key=value
//   ----
//   expected output
//   <blank line>
//
// A test fails when a command's output differs from what the file records,
// when an `expect-*` command or a safety invariant of the environment fails,
// or when a file makes no `expect-*` claim at all (a trace alone records
// behaviour; the expectations state which part of it is the point).
//
// REWRITE=1 rewrites the recorded outputs in place (a command written without
// `----` gets its output added); expectations and invariants are still
// checked, so a rewrite cannot turn a failing claim into a passing test.

import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import t from "tap";
import { InteractionEnv, UsageError, parseCommand } from "./golden/env.js";

const dir = fileURLToPath(new URL("./golden/testdata/", import.meta.url));
const rewrite = process.env["REWRITE"] === "1";

interface Block {
  /** 1-based line of the command. */
  readonly line: number;
  readonly command: string;
  /** The recorded output, or undefined if the file has none yet. */
  readonly expected: string | undefined;
}

/** A test file: verbatim lines (comments, blank lines) interleaved with command blocks. */
type Item = { readonly text: string } | { readonly block: Block };

function parseTestFile(text: string): Item[] {
  const lines = text.replace(/\n+$/, "").split("\n");
  const items: Item[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i]!;
    if (line.trim() === "" || line.startsWith("#")) {
      items.push({ text: line });
      i++;
      continue;
    }
    const start = i;
    i++;
    let expected: string | undefined;
    if (lines[i] === "----") {
      i++;
      const out: string[] = [];
      while (i < lines.length && lines[i]!.trim() !== "") out.push(lines[i++]!);
      expected = out.join("\n");
    }
    items.push({ block: { line: start + 1, command: line, expected } });
  }
  return items;
}

function renderTestFile(items: readonly Item[], outputs: ReadonlyMap<Block, string>): string {
  const out: string[] = [];
  items.forEach((item, k) => {
    if ("text" in item) {
      out.push(item.text);
      return;
    }
    const b = item.block;
    out.push(b.command, "----", outputs.get(b) ?? b.expected ?? "");
    const next = items[k + 1];
    if (next !== undefined && !("text" in next && next.text.trim() === "")) out.push("");
  });
  return out.join("\n") + "\n";
}

const files = readdirSync(dir)
  .filter((f) => f.endsWith(".txt"))
  .sort();

t.ok(files.length > 0, "golden files found");

for (const file of files) {
  t.test(file, async (t) => {
    const path = dir + file;
    const items = parseTestFile(readFileSync(path, "utf8"));
    const env = new InteractionEnv();
    const outputs = new Map<Block, string>();
    let expects = 0;
    for (const item of items) {
      if (!("block" in item)) continue;
      const b = item.block;
      const cmd = parseCommand(b.command, `${file}:${b.line}`);
      if (cmd.name.startsWith("expect-")) expects++;
      let actual: string;
      try {
        actual = env.handle(cmd);
      } catch (e) {
        if (!(e instanceof UsageError)) throw e;
        t.fail(e.message);
        return;
      }
      outputs.set(b, actual);
      if (!rewrite) {
        if (b.expected === undefined) t.fail(`${file}:${b.line}: ${b.command}: no recorded output (run with REWRITE=1)`);
        else t.equal(actual, b.expected, `${file}:${b.line}: ${b.command}`);
      }
    }
    for (const c of env.checks) t.ok(c.ok, c.message);
    t.ok(expects > 0, `${file} states its claims with expect-* commands`);
    if (rewrite) writeFileSync(path, renderTestFile(items, outputs));
  });
}
