/**
 * Per-connection sessions for the policy and socketmap services.
 *
 * Both protocols are "request in, one reply out, repeat": a session decodes requests, answers them
 * strictly in order (pipelined requests get their replies in the order sent), and reads no more
 * from the socket while one is being answered, so a client that floods us without reading costs
 * one request's worth of memory. Replies are never sent for bad input: as SMTPD_POLICY_README asks,
 * we log, send nothing and disconnect, and Postfix reconnects (or applies its own default action).
 *
 * Half-close: Exim's `${readsocket}` writes its request, shuts down its write side and reads until
 * EOF. The socket is created with allowHalfOpen, so after the client's FIN we still answer what
 * was asked (including a request left without its final empty line), then end our side.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../log.js';
import { DimeError, isDimeError } from '../errors.js';
import { encodePolicyReply, formatPolicyAction, type PolicyAction } from './action.js';
import { PolicyRequestDecoder, type PolicyRequest } from './codec.js';
import type { PolicyHandler, SocketmapHandler } from './handler.js';
import {
  NetstringDecoder,
  SOCKETMAP_MAX_REQUEST,
  decodeSocketmapRequest,
  encodeSocketmapReply,
  type SocketmapResult,
} from './socketmap.js';

/**
 * Postfix's policy client closes a connection idle for 300 s (smtpd_policy_service_max_idle).
 * Waiting longer lets the client close first, which avoids racing its next request with our close.
 */
export const DEFAULT_POLICY_IDLE_MS = 360_000;
/** Postfix's socketmap client closes idle connections after 10 s and any after 100 s. */
export const DEFAULT_SOCKETMAP_IDLE_MS = 120_000;
/**
 * A handler gets this long per request before the failure answer goes out. Postfix waits 100 s
 * (smtpd_policy_service_timeout, the socketmap timeout); an SMTP client should not wait that long.
 */
export const DEFAULT_DEADLINE_MS = 10_000;

/**
 * Answer to a policy request whose handler failed or missed its deadline. DEFER_IF_PERMIT
 * tempfails the recipient only if Postfix would otherwise accept it, so a recipient Postfix
 * rejects anyway stays rejected; and nothing that might be dark mail is ever accepted for
 * plaintext delivery just because the decision could not be made: the sender retries later.
 */
export const DEFAULT_FAILURE_ACTION: PolicyAction = {
  action: 'DEFER_IF_PERMIT',
  status: '4.7.1',
  text: 'DIME policy service failure, try again later',
};

/** After our FIN, how long a client may take to close its side before the socket is destroyed. */
export const CLOSE_LINGER_MS = 500;

export interface SessionOptions {
  /** Close a connection after this long without traffic. */
  idleMs: number;
  log: Logger;
}

/** How a session turns one decoded request into reply bytes. Never throws. */
interface Exchange<Req> {
  decoder: { feed(chunk: Uint8Array): void; next(): Req | null; finish(): Req | null };
  answer(request: Req, signal: AbortSignal): Promise<Buffer>;
}

/** A live connection; `close()` ends it once the request in progress (if any) is answered. */
export interface Session {
  readonly done: Promise<void>;
  close(): void;
  destroy(): void;
}

function runSession<Req>(socket: Socket, exchange: Exchange<Req>, options: SessionOptions): Session {
  const { log } = options;
  let busy = false;
  let peerEnded = false;
  let closing = false;
  let finished = false;
  let ended = false;
  const abort = new AbortController();
  const done = new Promise<void>((resolve) => socket.once('close', () => resolve()));

  socket.once('close', () => abort.abort());
  socket.on('error', (err) => log.debug({ err: err.message }, 'connection error'));
  socket.setTimeout(options.idleMs, () => {
    if (busy) return; // the request deadline, shorter than idleMs, ends the wait
    log.debug('idle timeout; closing');
    socket.destroy();
  });
  socket.on('data', (chunk: Buffer) => {
    if (closing) return; // shutting down: answer nothing new
    try {
      exchange.decoder.feed(chunk);
    } catch (err) {
      fail(err);
      return;
    }
    void pump();
  });
  socket.on('end', () => {
    peerEnded = true;
    void pump();
  });

  /**
   * Send our FIN after the last reply. A client that does not close its side in turn is cut off
   * after a short linger; until then its bytes are read and dropped, since closing with unread
   * data would reset the connection and could discard the reply still in flight.
   */
  function endGently(): void {
    if (ended) return;
    ended = true;
    closing = true;
    socket.resume();
    socket.end();
    setTimeout(() => socket.destroy(), CLOSE_LINGER_MS).unref();
  }

  function fail(err: unknown): void {
    const code = isDimeError(err) ? err.code : undefined;
    log.warn({ code, err: err instanceof Error ? err.message : String(err) }, 'bad request; closing the connection without a reply');
    endGently();
  }

  async function pump(): Promise<void> {
    if (busy || ended || socket.destroyed) return;
    busy = true;
    socket.pause();
    try {
      // After close(), finish the request in progress but start no other.
      while (!closing) {
        let request: Req | null;
        try {
          request = exchange.decoder.next();
          if (request === null && peerEnded && !finished) {
            finished = true;
            request = exchange.decoder.finish();
          }
        } catch (err) {
          fail(err);
          return;
        }
        if (request === null) break;
        const reply = await exchange.answer(request, abort.signal);
        if (socket.destroyed) return;
        if (!socket.write(reply)) {
          await new Promise<void>((resolve) => {
            const go = () => {
              socket.off('drain', go);
              socket.off('close', go);
              resolve();
            };
            socket.on('drain', go);
            socket.on('close', go);
          });
          if (socket.destroyed) return;
        }
      }
      if (peerEnded || closing) {
        endGently();
        return;
      }
      socket.resume();
    } finally {
      busy = false;
    }
  }

  return {
    done,
    close() {
      closing = true;
      if (!busy && !socket.destroyed) endGently();
    },
    destroy() {
      socket.destroy();
    },
  };
}

/** Run `work` with a deadline; on timeout the signal aborts and a SERVICE_DEADLINE error is thrown. */
export async function withDeadline<T>(deadlineMs: number, parent: AbortSignal, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onParentAbort = () => controller.abort(parent.reason);
  parent.addEventListener('abort', onParentAbort, { once: true });
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const err = new DimeError('SERVICE_DEADLINE', `no answer within ${deadlineMs} ms`);
      controller.abort(err);
      reject(err);
    }, deadlineMs);
  });
  try {
    return await Promise.race([work(controller.signal), deadline]);
  } finally {
    clearTimeout(timer);
    parent.removeEventListener('abort', onParentAbort);
  }
}

export interface PolicySessionOptions extends SessionOptions {
  handler: PolicyHandler;
  failureAction: PolicyAction;
  deadlineMs: number;
}

export function runPolicySession(socket: Socket, options: PolicySessionOptions): Session {
  const failureReply = encodePolicyReply(options.failureAction);
  const { log } = options;
  const exchange: Exchange<PolicyRequest> = {
    decoder: new PolicyRequestDecoder(),
    async answer(request, signal) {
      const started = Date.now();
      const about = { state: request.protocolState, instance: request.instance };
      try {
        const action = await withDeadline(options.deadlineMs, signal, (s) => options.handler(request, { signal: s }));
        const reply = encodePolicyReply(action);
        log.debug({ ...about, action: formatPolicyAction(action), ms: Date.now() - started }, 'policy answer');
        return reply;
      } catch (err) {
        log.warn(
          { ...about, code: isDimeError(err) ? err.code : undefined, err: err instanceof Error ? err.message : String(err), ms: Date.now() - started },
          'policy handler failed; answering the failure action',
        );
        return failureReply;
      }
    },
  };
  return runSession(socket, exchange, options);
}

export interface SocketmapSessionOptions extends SessionOptions {
  handler: SocketmapHandler;
  deadlineMs: number;
}

export function runSocketmapSession(socket: Socket, options: SocketmapSessionOptions): Session {
  const { log } = options;
  const decoder = new NetstringDecoder(SOCKETMAP_MAX_REQUEST);
  const exchange: Exchange<Buffer> = {
    decoder,
    async answer(payload, signal) {
      const started = Date.now();
      let map: string | undefined;
      let key: string | undefined;
      try {
        ({ map, key } = decodeSocketmapRequest(payload));
        const m = map;
        const k = key;
        const result: SocketmapResult = await withDeadline(options.deadlineMs, signal, (s) => options.handler(m, k, { signal: s }));
        const reply = encodeSocketmapReply(result);
        log.debug({ map, key, status: result.status, ms: Date.now() - started }, 'socketmap answer');
        return reply;
      } catch (err) {
        const code = isDimeError(err) ? err.code : undefined;
        log.warn({ map, key, code, err: err instanceof Error ? err.message : String(err), ms: Date.now() - started }, 'socketmap lookup failed; answering TEMP (PERM if malformed)');
        // Never NOTFOUND: a failed lookup must defer the mail, not route a dark recipient the
        // legacy way. Postfix defers on TEMP, TIMEOUT and PERM alike; PERM marks a client bug.
        if (code === 'SOCKETMAP_BAD_REQUEST') return encodeSocketmapReply({ status: 'PERM', reason: 'malformed request' });
        return encodeSocketmapReply({ status: 'TEMP', reason: code === 'SERVICE_DEADLINE' ? 'lookup deadline passed' : 'lookup failed' });
      }
    },
  };
  return runSession(socket, exchange, options);
}
