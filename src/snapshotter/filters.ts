// containerd's filter syntax (containerd/filters), for List:
//
//   selectors := selector ("," selector)*          all must match (AND)
//   selector  := fieldpath [operator value]       no operator: "is present"
//   fieldpath := field ("." field)*
//   field     := quoted | [-_A-Za-z0-9]+
//   operator  := "==" | "!=" | "~="
//   value     := quoted | [^\s,]+
//   quoted    := "…" | /…/ | |…|  with Go escapes (\n \t \\ \" \xHH \uHHHH \ooo …)
//
// Several filter strings are ORed; none (or only "") matches everything.
// Label keys containing dots may be written unquoted (`labels.a.b` joins the
// fields back into "a.b"); keys with slashes must be quoted
// (`labels."containerd.io/snapshot.ref"==sha256:…`) because `/` opens a
// quoted literal. Whitespace is skipped between tokens except right after a
// field path, exactly as containerd's scanner does, so that both sides agree
// on what a filter means.

import { WharfError } from "../errors.js";
import type { Info } from "./interface.js";

export type Operator = "present" | "==" | "!=" | "~=";

export interface Selector {
  readonly fieldpath: readonly string[];
  readonly operator: Operator;
  readonly value: string;
}

/** One parsed filter string: all selectors must match. Empty matches everything. */
export type Filter = readonly Selector[];

type TokenKind = "eof" | "quoted" | "value" | "field" | "separator" | "operator" | "illegal";

interface Token {
  readonly kind: TokenKind;
  readonly pos: number;
  readonly text: string;
}

const isFieldRune = (c: string): boolean => /^[-_A-Za-z0-9]$/.test(c);
const isQuoteRune = (c: string): boolean => c === '"' || c === "/" || c === "|";
const isOperatorRune = (c: string): boolean => c === "=" || c === "!" || c === "~";
const isSpace = (c: string): boolean => /^\s$/u.test(c);
/** Go's value runes: anything printable that is neither a comma nor a space. */
const isValueRune = (c: string): boolean => c !== "," && !isSpace(c) && !/^\p{Cc}$/u.test(c);

class Scanner {
  private pos = 0;
  /** After an operator the next word is a value (which may contain what a field may not). */
  private value = false;

  constructor(private readonly input: string) {}

  get position(): number {
    return this.pos;
  }

  /** The next code point without consuming it; "" at the end. */
  peek(): string {
    const cp = this.input.codePointAt(this.pos);
    return cp === undefined ? "" : String.fromCodePoint(cp);
  }

  private next(): string {
    const c = this.peek();
    this.pos += c.length;
    return c;
  }

  scan(): Token {
    while (this.peek() !== "" && isSpace(this.peek())) this.next();
    const pos = this.pos;
    const c = this.next();
    const tok = (kind: TokenKind): Token => ({ kind, pos, text: this.input.slice(pos, this.pos) });
    if (c === "") return tok("eof");
    if (c === "\0") return tok("illegal");
    if (isQuoteRune(c)) return this.scanQuoted(c) ? tok("quoted") : tok("illegal");
    if (c === "," || c === ".") {
      this.value = false;
      return tok("separator");
    }
    if (isOperatorRune(c)) {
      while (isOperatorRune(this.peek())) this.next();
      this.value = true;
      return tok("operator");
    }
    if (this.value) {
      while (this.peek() !== "" && isValueRune(this.peek())) this.next();
      this.value = false;
      return tok("value");
    }
    if (isFieldRune(c)) {
      while (this.peek() !== "" && isFieldRune(this.peek())) this.next();
      return tok("field");
    }
    return tok("illegal");
  }

  /** Consumes a quoted literal up to its closing quote; false if unterminated (a newline or the end). */
  private scanQuoted(quote: string): boolean {
    for (;;) {
      const c = this.next();
      if (c === "" || c === "\n") return false;
      if (c === quote) return true;
      if (c === "\\") {
        // The escaped rune never closes the literal; unquote() checks the escape itself.
        if (this.next() === "") return false;
      }
    }
  }
}

const SIMPLE_ESCAPES: Record<string, number> = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, "\\": 92 };

/** Go's strconv.Unquote, extended (as containerd does) to `/…/` and `|…|`. Throws on bad syntax. */
export function unquote(s: string): string {
  const quote = s[0];
  if (s.length < 2 || quote === undefined || s[s.length - 1] !== quote || !isQuoteRune(quote)) {
    throw new Error("quote syntax error");
  }
  const body = s.slice(1, -1);
  const out: number[] = [];
  const hex = (h: string, n: number): number => {
    if (h.length !== n || !/^[0-9a-fA-F]+$/.test(h)) throw new Error("invalid escape");
    return Number.parseInt(h, 16);
  };
  for (let i = 0; i < body.length; ) {
    const c = body[i]!;
    if (c === quote || c === "\n") throw new Error("quote syntax error");
    if (c !== "\\") {
      const cp = body.codePointAt(i)!;
      const ch = String.fromCodePoint(cp);
      out.push(...Buffer.from(ch, "utf8"));
      i += ch.length;
      continue;
    }
    const e = body[i + 1];
    i += 2;
    if (e === undefined) throw new Error("quote syntax error");
    if (Object.hasOwn(SIMPLE_ESCAPES, e)) out.push(SIMPLE_ESCAPES[e]!);
    else if (e === quote) out.push(e.charCodeAt(0));
    else if (e === "x") {
      out.push(hex(body.slice(i, i + 2), 2)); // one byte, possibly not UTF-8 on its own
      i += 2;
    } else if (e === "u" || e === "U") {
      const n = e === "u" ? 4 : 8;
      const cp = hex(body.slice(i, i + n), n);
      if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) throw new Error("invalid escape");
      out.push(...Buffer.from(String.fromCodePoint(cp), "utf8"));
      i += n;
    } else if (/^[0-7]$/.test(e)) {
      const oct = e + body.slice(i, i + 2);
      if (!/^[0-7]{3}$/.test(oct) || Number.parseInt(oct, 8) > 255) throw new Error("invalid escape");
      out.push(Number.parseInt(oct, 8));
      i += 2;
    } else throw new Error("invalid escape");
  }
  return Buffer.from(out).toString("utf8");
}

class Parser {
  private readonly scanner: Scanner;

  constructor(private readonly input: string) {
    this.scanner = new Scanner(input);
  }

  private fail(pos: number, msg: string): never {
    throw new WharfError("INVALID_ARGUMENT", `filter ${JSON.stringify(this.input)} at ${pos}: ${msg}`);
  }

  parse(): Selector[] {
    const out = [this.selector()];
    for (;;) {
      // Like containerd: the next rune itself must be "," or the end (no spaces).
      const c = this.scanner.peek();
      if (c === "") return out;
      if (c !== ",") this.fail(this.scanner.position, `unexpected input ${JSON.stringify(c)}`);
      this.scanner.scan();
      out.push(this.selector());
    }
  }

  private selector(): Selector {
    const fieldpath = this.fieldpath();
    // Presence only if the path is followed right away by "," or the end.
    const c = this.scanner.peek();
    if (c === "," || c === "") return { fieldpath, operator: "present", value: "" };
    const op = this.scanner.scan();
    if (op.kind !== "operator") this.fail(op.pos, `expected an operator ("=="|"!="|"~=")`);
    if (op.text !== "==" && op.text !== "!=" && op.text !== "~=") this.fail(op.pos, `unsupported operator ${op.text}`);
    const v = this.scanner.scan();
    let value: string;
    if (v.kind === "value" || v.kind === "field") value = v.text;
    else if (v.kind === "quoted") value = this.unquote(v);
    else this.fail(v.pos, "expected value or quoted");
    if (op.text === "~=") {
      try {
        new RegExp(value);
      } catch (e) {
        this.fail(v.pos, `bad regular expression: ${(e as Error).message}`);
      }
    }
    return { fieldpath, operator: op.text, value };
  }

  private fieldpath(): string[] {
    const out = [this.field()];
    while (this.scanner.peek() === ".") {
      this.scanner.scan();
      out.push(this.field());
    }
    return out;
  }

  private field(): string {
    const t = this.scanner.scan();
    if (t.kind === "field") return t.text;
    if (t.kind === "quoted") return this.unquote(t);
    return this.fail(t.pos, "expected field or quoted");
  }

  private unquote(t: Token): string {
    try {
      return unquote(t.text);
    } catch (e) {
      return this.fail(t.pos, `unquoting failed: ${(e as Error).message}`);
    }
  }
}

/** Parses one filter string. INVALID_ARGUMENT on bad syntax. */
export function parseFilter(s: string): Filter {
  return s === "" ? [] : new Parser(s).parse();
}

/** The value of a field path on a snapshot, or undefined if it is absent. */
function fieldOf(info: Info, path: readonly string[]): string | undefined {
  switch (path[0]) {
    case "kind":
      return info.kind;
    case "name":
      return info.name;
    case "parent":
      return info.parent;
    case "labels": {
      const key = path.slice(1).join(".");
      return Object.hasOwn(info.labels, key) ? info.labels[key] : undefined;
    }
    default:
      return undefined;
  }
}

function matchSelector(s: Selector, info: Info, re: RegExp | undefined): boolean {
  const v = fieldOf(info, s.fieldpath);
  switch (s.operator) {
    case "present":
      return v !== undefined;
    case "==":
      return v !== undefined && v === s.value;
    case "!=":
      // An absent field counts as "" (containerd does the same).
      return (v ?? "") !== s.value;
    case "~=":
      return re!.test(v ?? "");
  }
}

/**
 * A predicate for filter strings: any of them (OR), each an AND of its
 * selectors. No filters at all, or any empty filter string, matches all.
 */
export function compileFilters(filters: readonly string[]): (info: Info) => boolean {
  const parsed = filters.map((f) =>
    parseFilter(f).map((s) => ({ s, re: s.operator === "~=" ? new RegExp(s.value) : undefined })),
  );
  if (parsed.length === 0) return () => true;
  return (info) => parsed.some((all) => all.every(({ s, re }) => matchSelector(s, info, re)));
}
