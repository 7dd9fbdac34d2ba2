/**
 * A strict JSON reader for untrusted token segments.
 *
 * `JSON.parse` accepts `{"sub":"alice","sub":"admin"}` and silently keeps the last value, so
 * two parties reading the same bytes can disagree about what a token says. RFC 7519 §4: "The
 * Claim Names within a JWT Claims Set MUST be unique; JWT parsers MUST either reject JWTs with
 * duplicate Claim Names or use a JSON parser that returns only the lexically last duplicate
 * member name". Writ's profile (docs/standards.md J12) rejects them, in the header and the claims, at
 * every nesting depth. Names are compared after unescaping, so `"\u0061"` and `"a"` collide.
 *
 * The scanner only validates; the value is then built by `JSON.parse` on the same text, which
 * the scanner has shown to be duplicate-free and within the depth cap. The grammar accepted is
 * exactly `JSON.parse`'s (property-tested against it), so the two never disagree on validity.
 * It runs in time linear in the input: one pass, and one hash-set insertion per member name.
 *
 * Except when a member name holds an escape: V8's `JSON.parse` (Node 24 and later, unfixed as of
 * 24.21; nodejs/node#63785, crbug 521080746) can then return a name seen in an earlier parse
 * instead of the one written. After `{"au\\":1}` anywhere in the process, `{"au\u0064":1}`
 * reads back as `au\`, not `aud`: whoever sends the first text chooses how the second is read.
 * Such texts are built here, from the scanner's own decoding, and never by `JSON.parse`.
 */

export type StrictJsonFailure = 'syntax' | 'duplicate_member' | 'too_deep';

export class StrictJsonError extends Error {
  readonly kind: StrictJsonFailure;
  /** Offset (UTF-16 code units) where the problem was found; never the offending text. */
  readonly offset: number;
  constructor(kind: StrictJsonFailure, offset: number) {
    super(`${kind === 'syntax' ? 'invalid JSON' : kind === 'duplicate_member' ? 'duplicate member name' : 'JSON nested too deeply'} at offset ${offset}`);
    this.name = 'StrictJsonError';
    this.kind = kind;
    this.offset = offset;
  }
}

/** Containers (objects and arrays) nested deeper than this are refused by default. */
export const DEFAULT_MAX_JSON_DEPTH = 32;
/** Guards the recursion itself, whatever a caller asks for. */
const HARD_MAX_DEPTH = 1000;

const CH = {
  QUOTE: 0x22, BACKSLASH: 0x5c, SLASH: 0x2f, COMMA: 0x2c, COLON: 0x3a,
  LBRACE: 0x7b, RBRACE: 0x7d, LBRACKET: 0x5b, RBRACKET: 0x5d,
  MINUS: 0x2d, PLUS: 0x2b, DOT: 0x2e, ZERO: 0x30, NINE: 0x39,
  SPACE: 0x20, TAB: 0x09, LF: 0x0a, CR: 0x0d,
} as const;

const SIMPLE_ESCAPES: Readonly<Record<number, string>> = {
  0x22: '"', 0x5c: '\\', 0x2f: '/', 0x62: '\b', 0x66: '\f', 0x6e: '\n', 0x72: '\r', 0x74: '\t',
};

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  return -1;
}

class Scanner {
  private readonly text: string;
  private readonly maxDepth: number;
  private i = 0;
  /** Offset of the first duplicate name; reported only once the text is known to be JSON. */
  private firstDuplicate = -1;
  /** A member name was written with an escape, so `JSON.parse` cannot be trusted to read it. */
  escapedNames = false;

  constructor(text: string, maxDepth: number) {
    this.text = text;
    this.maxDepth = maxDepth;
  }

  run(): void {
    this.ws();
    this.value(0);
    this.ws();
    if (this.i !== this.text.length) this.fail('syntax');
    // Syntax errors take precedence, so a text is "duplicate_member" only if JSON.parse accepts it.
    if (this.firstDuplicate >= 0) this.fail('duplicate_member', this.firstDuplicate);
  }

  private fail(kind: StrictJsonFailure, at: number = this.i): never {
    throw new StrictJsonError(kind, at);
  }

  private peek(): number {
    // NaN past the end: compares unequal to every code unit, so it reads as a syntax error.
    return this.text.charCodeAt(this.i);
  }

  /** RFC 8259 §2: insignificant whitespace is space, tab, line feed and carriage return only. */
  private ws(): void {
    for (;;) {
      const c = this.peek();
      if (c === CH.SPACE || c === CH.TAB || c === CH.LF || c === CH.CR) this.i++;
      else return;
    }
  }

  private expect(c: number): void {
    if (this.peek() !== c) this.fail('syntax');
    this.i++;
  }

  /** `depth` counts the containers already open around this value. */
  private value(depth: number): void {
    const c = this.peek();
    if (c === CH.LBRACE) this.object(depth + 1);
    else if (c === CH.LBRACKET) this.array(depth + 1);
    else if (c === CH.QUOTE) this.string(false);
    else if (c === CH.MINUS || (c >= CH.ZERO && c <= CH.NINE)) this.number();
    else if (this.text.startsWith('true', this.i)) this.i += 4;
    else if (this.text.startsWith('false', this.i)) this.i += 5;
    else if (this.text.startsWith('null', this.i)) this.i += 4;
    else this.fail('syntax');
  }

  private object(depth: number): void {
    if (depth > this.maxDepth) this.fail('too_deep');
    this.i++; // {
    this.ws();
    if (this.peek() === CH.RBRACE) {
      this.i++;
      return;
    }
    const names = new Set<string>();
    for (;;) {
      const at = this.i;
      if (this.peek() !== CH.QUOTE) this.fail('syntax');
      const name = this.string(true);
      if (names.has(name)) {
        if (this.firstDuplicate < 0) this.firstDuplicate = at;
      } else {
        names.add(name);
      }
      this.ws();
      this.expect(CH.COLON);
      this.ws();
      this.value(depth);
      this.ws();
      const c = this.peek();
      if (c === CH.COMMA) {
        this.i++;
        this.ws();
        continue;
      }
      if (c === CH.RBRACE) {
        this.i++;
        return;
      }
      this.fail('syntax');
    }
  }

  private array(depth: number): void {
    if (depth > this.maxDepth) this.fail('too_deep');
    this.i++; // [
    this.ws();
    if (this.peek() === CH.RBRACKET) {
      this.i++;
      return;
    }
    for (;;) {
      this.value(depth);
      this.ws();
      const c = this.peek();
      if (c === CH.COMMA) {
        this.i++;
        this.ws();
        continue;
      }
      if (c === CH.RBRACKET) {
        this.i++;
        return;
      }
      this.fail('syntax');
    }
  }

  /**
   * Reads a string starting at its opening quote. With `decode`, returns its value (needed only
   * for member names, so names written with and without escapes compare equal); otherwise ''.
   */
  private string(decode: boolean): string {
    const text = this.text;
    this.i++; // opening quote
    let chunkStart = this.i;
    let parts: string[] | undefined;
    for (;;) {
      const c = text.charCodeAt(this.i);
      if (c === CH.QUOTE) {
        let result = '';
        if (decode) {
          const tail = text.slice(chunkStart, this.i);
          result = parts === undefined ? tail : (parts.push(tail), parts.join(''));
        }
        this.i++;
        return result;
      }
      if (c === CH.BACKSLASH) {
        if (decode) {
          (parts ??= []).push(text.slice(chunkStart, this.i));
          this.escapedNames = true;
        }
        const e = text.charCodeAt(this.i + 1);
        const simple = SIMPLE_ESCAPES[e];
        if (simple !== undefined) {
          if (decode) parts!.push(simple);
          this.i += 2;
        } else if (e === 0x75) { // \uXXXX
          let code = 0;
          for (let k = 2; k < 6; k++) {
            const h = hexValue(text.charCodeAt(this.i + k));
            if (h < 0) this.fail('syntax', this.i + k);
            code = code * 16 + h;
          }
          // Lone surrogates stay lone code units, exactly as JSON.parse keeps them.
          if (decode) parts!.push(String.fromCharCode(code));
          this.i += 6;
        } else {
          this.fail('syntax');
        }
        chunkStart = this.i;
        continue;
      }
      // RFC 8259 §7: control characters U+0000..U+001F must be escaped. NaN = end of input.
      if (!(c >= 0x20)) this.fail('syntax');
      this.i++;
    }
  }

  /**
   * The value of a text `run()` accepted, built as `JSON.parse` would build it but with every
   * string decoded here: own enumerable data properties (so `__proto__` is a plain member),
   * numbers by `Number` (the same IEEE rounding), lone surrogates kept.
   */
  build(): unknown {
    this.i = 0;
    this.ws();
    return this.buildValue();
  }

  private buildValue(): unknown {
    const c = this.peek();
    if (c === CH.LBRACE) {
      const object: Record<string, unknown> = {};
      this.i++;
      this.ws();
      if (this.peek() === CH.RBRACE) {
        this.i++;
        return object;
      }
      for (;;) {
        const name = this.string(true);
        this.ws();
        this.i++; // :
        this.ws();
        Object.defineProperty(object, name, { value: this.buildValue(), writable: true, enumerable: true, configurable: true });
        this.ws();
        if (this.text.charCodeAt(this.i++) === CH.RBRACE) return object;
        this.ws();
      }
    }
    if (c === CH.LBRACKET) {
      const array: unknown[] = [];
      this.i++;
      this.ws();
      if (this.peek() === CH.RBRACKET) {
        this.i++;
        return array;
      }
      for (;;) {
        array.push(this.buildValue());
        this.ws();
        if (this.text.charCodeAt(this.i++) === CH.RBRACKET) return array;
        this.ws();
      }
    }
    if (c === CH.QUOTE) return this.string(true);
    if (c === 0x74) { this.i += 4; return true; }
    if (c === 0x66) { this.i += 5; return false; }
    if (c === 0x6e) { this.i += 4; return null; }
    const start = this.i;
    this.number();
    return Number(this.text.slice(start, this.i));
  }

  /** RFC 8259 §6: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?` */
  private number(): void {
    if (this.peek() === CH.MINUS) this.i++;
    if (this.peek() === CH.ZERO) {
      this.i++;
    } else {
      this.digits();
    }
    if (this.peek() === CH.DOT) {
      this.i++;
      this.digits();
    }
    const e = this.peek();
    if (e === 0x65 || e === 0x45) {
      this.i++;
      const s = this.peek();
      if (s === CH.PLUS || s === CH.MINUS) this.i++;
      this.digits();
    }
  }

  /** One or more decimal digits. */
  private digits(): void {
    const start = this.i;
    for (;;) {
      const c = this.peek();
      if (c >= CH.ZERO && c <= CH.NINE) this.i++;
      else break;
    }
    if (this.i === start) this.fail('syntax');
  }
}

/**
 * `JSON.parse`, but refusing duplicate member names (at any depth) and excessive nesting: throws
 * `StrictJsonError` unless `text` is one JSON value with unique member names throughout.
 */
export function parseStrictJson(text: string, maxDepth: number = DEFAULT_MAX_JSON_DEPTH): unknown {
  return parseStrictJsonText(text, maxDepth).value;
}

/** `parseStrictJson`, also saying whether a member name was escaped (see the note at the top). */
export function parseStrictJsonText(text: string, maxDepth: number = DEFAULT_MAX_JSON_DEPTH): { value: unknown; escapedNames: boolean } {
  const scanner = new Scanner(text, Math.min(Math.max(0, Math.floor(maxDepth)), HARD_MAX_DEPTH));
  scanner.run();
  if (scanner.escapedNames) return { value: scanner.build(), escapedNames: true };
  return { value: JSON.parse(text) as unknown, escapedNames: false };
}
