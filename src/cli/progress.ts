/**
 * Progress for long CLI work (keys generated in an HSM, bulk user imports), drawn on standard error
 * only when it is a terminal. Anywhere else (pipes, files, journald, tests) every call is a no-op,
 * so scripts see exactly the output they saw before. No dependency: one line redrawn with `\r`.
 *
 *   const p = progress('importing users', { total: lines.length });
 *   p.tick('alice@example.com');                 // counted work: [####......] 4/10 alice@…
 *   p.print(process.stdout, 'added: …\n');        // normal output without tearing the bar
 *   p.done();
 *
 *   const s = progress('dime init', { total: 5 });
 *   s.step('generating the keys in the HSM');   // dime init [2/5] generating the keys in the HSM 0.8s
 *
 * A step that blocks the event loop (a synchronous PKCS#11 call, spawnSync) cannot be animated, so
 * each step is drawn *before* it starts: the operator sees what the command is waiting for.
 */

/** The part of a stream progress needs (process.stderr, or a fake terminal in tests). */
export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(chunk: string): boolean;
}

export interface ProgressOptions {
  /** Units of work (lines, keys, steps); absent: a counter without a bar. */
  total?: number;
  /** Default process.stderr. */
  stream?: ProgressStream;
  /** Default process.env: TERM=dumb or DIME_NO_PROGRESS turn it off. */
  env?: NodeJS.ProcessEnv;
  /** Clock (tests). */
  now?: () => number;
}

export interface Progress {
  /** Whether anything is drawn (false: every method is a no-op). */
  readonly active: boolean;
  /** `done` units of `total` finished; `note` says what is under way. */
  update(done: number, note?: string): void;
  /** One more unit finished. */
  tick(note?: string): void;
  /** Starting the next named step (`[2/5] note`): for a few long steps rather than many short ones. */
  step(note: string): void;
  /** Write normal output (to any stream) without tearing the bar: clear it, write, redraw. */
  print(stream: { write(chunk: string): boolean }, text: string): void;
  /** Erase the bar; later calls do nothing. */
  done(): void;
}

const BAR_WIDTH = 24;
/** Redraws closer together than this are skipped (a fast loop would spend its time drawing). */
const MIN_REDRAW_MS = 50;
/** Refresh of the elapsed time while the event loop is free (an async wait). */
const TICK_MS = 250;
const CLEAR = '\r\x1b[2K';

const NOOP: Progress = Object.freeze({
  active: false,
  update: () => undefined,
  tick: () => undefined,
  step: () => undefined,
  print: (stream: { write(chunk: string): boolean }, text: string) => void stream.write(text),
  done: () => undefined,
});

export function progressEnabled(stream: ProgressStream, env: NodeJS.ProcessEnv): boolean {
  return stream.isTTY === true && env.TERM !== 'dumb' && !env.DIME_NO_PROGRESS;
}

export function progress(label: string, options: ProgressOptions = {}): Progress {
  const stream = options.stream ?? process.stderr;
  if (!progressEnabled(stream, options.env ?? process.env)) return NOOP;
  const now = options.now ?? Date.now;
  const total = options.total !== undefined && options.total > 0 ? options.total : undefined;
  const started = now();
  let count = 0;
  let steps = 0;
  let note = '';
  let shown = false;
  let finished = false;
  let lastDraw = -Infinity;

  const render = (): string => {
    const secs = ((now() - started) / 1000).toFixed(1);
    let line: string;
    if (steps > 0) {
      // A few named steps: "[2/5] what is running" says enough, and leaves the row to the step's name.
      line = `${label} ${note} ${secs}s`;
    } else {
      let bar = '';
      if (total !== undefined) {
        const filled = Math.min(BAR_WIDTH, Math.round((count / total) * BAR_WIDTH));
        bar = ` [${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${count}/${total}`;
      } else if (count > 0) bar = ` ${count}`;
      line = `${label}${bar} ${secs}s${note ? ` ${note}` : ''}`;
    }
    // One terminal row, never wrapped: a wrapped line cannot be redrawn with \r.
    // A pty without a window size (script(1), some CI runners) reports 0 columns: assume 80.
    const width = Math.max(20, (stream.columns || 80) - 1);
    // Control characters from a note (an address from a file) must not reach the terminal.
    const clean = line.replace(/[\x00-\x1f\x7f-\x9f]/g, '?');
    return clean.length > width ? `${clean.slice(0, width - 1)}…` : clean;
  };
  const draw = (force: boolean) => {
    if (finished) return;
    const t = now();
    if (!force && t - lastDraw < MIN_REDRAW_MS) return;
    lastDraw = t;
    stream.write(CLEAR + render());
    shown = true;
  };
  const timer = setInterval(() => draw(false), TICK_MS);
  timer.unref();

  const update = (done: number, n?: string) => {
    count = done;
    if (n !== undefined) note = n;
    draw(total !== undefined && count >= total);
  };
  return {
    active: true,
    update,
    tick: (n) => update(count + 1, n),
    step(n) {
      // The step is drawn before the work starts, always (the work may block the event loop).
      steps++;
      note = total !== undefined ? `[${Math.min(steps, total)}/${total}] ${n}` : n;
      lastDraw = -Infinity;
      draw(true);
    },
    print(out, text) {
      if (shown && !finished) stream.write(CLEAR);
      out.write(text);
      if (shown && !finished) {
        lastDraw = -Infinity;
        draw(true);
      }
    },
    done() {
      if (finished) return;
      clearInterval(timer);
      if (shown) stream.write(CLEAR);
      finished = true;
    },
  };
}
