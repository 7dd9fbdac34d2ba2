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
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[storableText(k)] = storableJson(v);
    return out as T;
  }
  return value;
}

/** Identifiers (subjects, targets) must be plain text: no control characters, no broken UTF-16. */
export function isPlainText(value: string): boolean {
  return value.isWellFormed() && !/[\u0000-\u001F\u007F]/.test(value);
}
