/**
 * PostgreSQL text and jsonb cannot hold U+0000, and jsonb refuses unpaired surrogates. Values
 * that reach the record from requests and upstream tokens are made storable — each such code
 * unit becomes U+FFFD — so odd input is still recorded instead of failing the write.
 */
export function storableText(value: string): string {
  const wellFormed = value.isWellFormed() ? value : value.toWellFormed();
  return wellFormed.includes('\u0000') ? wellFormed.replaceAll('\u0000', '\uFFFD') : wellFormed;
}

/** `storableText` applied to every string (and object key) inside a JSON value. */
export function storableJson<T>(value: T): T {
  if (typeof value === 'string') return storableText(value) as T;
  if (Array.isArray(value)) return value.map(storableJson) as T;
  if (value && typeof value === 'object') {
    // fromEntries defines each key as an own property: "__proto__" from a parsed token stays a
    // member, as JSON.stringify writes it, instead of setting the copy's prototype.
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [storableText(k), storableJson(v)])) as T;
  }
  return value;
}

/**
 * The escapes PostgreSQL's json and jsonb cannot turn into text: U+0000 and unpaired surrogates
 * (JSON.stringify writes those as `\udXXX`). An escaped backslash followed by such letters
 * matches too, and only costs the slower path.
 */
const UNSTORABLE_ESCAPE = /\\u(?:0000|d[89a-f])/i;

/** `JSON.stringify(storableJson(value))`, without copying the value when nothing in it needs it. */
export function storableJsonText(value: unknown): string {
  const json = JSON.stringify(value);
  return UNSTORABLE_ESCAPE.test(json) ? JSON.stringify(storableJson(value)) : json;
}

/** Identifiers (subjects, targets) must be plain text: no control characters, no broken UTF-16. */
export function isPlainText(value: string): boolean {
  return value.isWellFormed() && !/[\u0000-\u001F\u007F]/.test(value);
}
