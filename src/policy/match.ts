import type { ClaimCondition } from './model.ts';

/**
 * docs/DESIGN.md §6 claim matching. A string claim matches by equality, an array claim if any
 * element equals, `scope` as a space-delimited set; a list in the policy means any of; a
 * missing claim never matches; no type coercion (the number 1 never equals "1").
 */
export function claimMatches(name: string, condition: ClaimCondition, claims: Readonly<Record<string, unknown>>): boolean {
  if (!Object.hasOwn(claims, name)) return false;
  const value = claims[name];
  const wanted = typeof condition === 'string' ? [condition] : condition;
  let present: readonly unknown[];
  if (name === 'scope' && typeof value === 'string') {
    present = value.split(' ').filter((s) => s.length > 0);
  } else if (Array.isArray(value)) {
    present = value;
  } else {
    present = [value];
  }
  return present.some((v) => typeof v === 'string' && wanted.includes(v));
}

/** Every listed claim must match; no conditions matches everything. */
export function claimsMatch(
  conditions: Readonly<Record<string, ClaimCondition>> | undefined,
  claims: Readonly<Record<string, unknown>>,
): boolean {
  if (!conditions) return true;
  for (const [name, condition] of Object.entries(conditions)) {
    if (!claimMatches(name, condition, claims)) return false;
  }
  return true;
}
