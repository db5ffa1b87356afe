/**
 * The dime milter handler: one milter socket for both directions (docs/mail-flow.md). A message
 * whose client authenticated (`{auth_authen}`, sent by Postfix with MAIL FROM) is a submission and
 * goes outbound; anything else is inbound. Each direction is a processor run at end of message.
 */
import type { ActionName, EomResult, MilterContext, MilterHandler, MilterMessage } from '../milter/handler.js';

export type Processor = (ctx: MilterContext, message: MilterMessage) => Promise<EomResult>;

export interface DimeHandlerOptions {
  outbound?: { process: Processor; actions: readonly ActionName[] };
  inbound?: { process: Processor; actions: readonly ActionName[] };
}

/** Whether this message is a submission: the SMTP client authenticated. */
export function isSubmission(ctx: Pick<MilterContext, 'macro'>): boolean {
  const who = ctx.macro('auth_authen');
  return who !== undefined && who !== '';
}

export function createDimeHandler(o: DimeHandlerOptions): MilterHandler {
  const actions = [...new Set([...(o.outbound?.actions ?? []), ...(o.inbound?.actions ?? [])])];
  return {
    name: 'dime',
    actions,
    // Exact header bytes: the outbound side seals the message as the client sent it.
    headerLeadingSpace: true,
    macros: { envfrom: ['{auth_authen}', '{auth_type}', 'i'] },
    eom(ctx, message) {
      const side = isSubmission(ctx) ? o.outbound : o.inbound;
      return side ? side.process(ctx, message) : undefined;
    },
  };
}
