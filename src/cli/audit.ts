import { UsageError, type CliContext } from './context.ts';

/** `writ audit <…>` */
export async function auditCommand(_ctx: CliContext, argv: string[]): Promise<number> {
  throw new UsageError(`unknown audit command "${argv[0] ?? ''}"`);
}
