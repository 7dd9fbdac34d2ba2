import type { RouterMiddleware } from '@koa/router';
import type { Knex } from 'knex';
import type { ParameterizedContext } from 'koa';
import type { AdminScope } from '../policy/model.ts';

/** What adminRoutes lends the route groups it registers: authorisation, auditing, error answers. */
export interface AdminRouteHelpers {
  knex: Knex;
  /** Answers 401/403 unless the caller holds `scope`. */
  requires: (scope: AdminScope) => RouterMiddleware;
  /** Records an `admin.action` audit event for the call, whatever its outcome. */
  audited: RouterMiddleware;
  problem: (ctx: ParameterizedContext, status: number, error: string, description?: string, extra?: Record<string, unknown>) => void;
}
