/**
 * A tiny benchmark harness with no dependencies.
 *
 * `measure` warms a function up, then runs it in batches until `minTimeMs` has passed, several times
 * ("rounds"), and reports the median rate. Shared virtual machines are noisy, so absolute figures
 * move between runs; what we record and compare are ratios against a baseline measured in the same
 * run (same machine, same load, same minute), which are much more stable.
 *
 * Bench modules register suites in `benches` at import time; bench/run.ts imports every module and
 * runs what the command line selects.
 */
import * as os from 'node:os';

export type BenchFn = () => unknown;

export interface MeasureOptions {
  /** Minimum wall time of one round. */
  minTimeMs?: number;
  /** Number of timed rounds; the median is reported. */
  rounds?: number;
  /** Warm-up time before the first round (JIT, caches, key imports); default minTimeMs / 2. */
  warmupMs?: number;
}

export interface Measurement {
  name: string;
  /** Median over the rounds. */
  opsPerSec: number;
  /** Every round's rate, in the order measured. */
  roundOpsPerSec: number[];
  /** Operations per batch (calibrated during warm-up so the clock is read rarely for fast functions). */
  batch: number;
  /** Total operations timed across all rounds. */
  ops: number;
}

export const DEFAULT_MIN_TIME_MS = 300;
export const QUICK_MIN_TIME_MS = 40;
export const DEFAULT_ROUNDS = 5;
export const QUICK_ROUNDS = 3;

/** Target duration of one batch: long enough that reading the clock is negligible, short enough to stop near minTime. */
const BATCH_TARGET_MS = 5;

// Results are stored here so V8 cannot prove a benchmarked call useless and drop it.
let sink: unknown;

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function';
}

export function median(values: number[]): number {
  if (values.length === 0) throw new Error('median of nothing');
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/**
 * Measure `fn` (sync, or async: a returned promise is awaited before the next call, so async
 * figures are sequential latency, not concurrency).
 */
export async function measure(name: string, fn: BenchFn, options: MeasureOptions = {}): Promise<Measurement> {
  const minTimeMs = options.minTimeMs ?? DEFAULT_MIN_TIME_MS;
  const rounds = options.rounds ?? DEFAULT_ROUNDS;
  const warmupMs = options.warmupMs ?? Math.max(minTimeMs / 2, 10);
  if (!(minTimeMs > 0) || !(rounds >= 1)) throw new Error(`measure(${name}): minTimeMs and rounds must be positive`);

  // Is it async? Decided once, so the timed loops do not test every result.
  const first = fn();
  const async = isThenable(first);
  if (async) sink = await first;

  const runBatch = async
    ? async (n: number): Promise<void> => {
        for (let i = 0; i < n; i++) sink = await (fn() as PromiseLike<unknown>);
      }
    : (n: number): void => {
        for (let i = 0; i < n; i++) sink = fn();
      };

  // Warm-up doubles the batch until one batch takes BATCH_TARGET_MS or the warm-up time is spent.
  let batch = 1;
  const warmStart = performance.now();
  for (;;) {
    const t0 = performance.now();
    await runBatch(batch);
    const dt = performance.now() - t0;
    if (dt >= BATCH_TARGET_MS) break;
    if (performance.now() - warmStart >= warmupMs) {
      // Still fast: size the batch from what we saw.
      batch = Math.max(1, Math.round((batch * BATCH_TARGET_MS) / Math.max(dt, 0.001)));
      break;
    }
    batch *= 2;
  }

  const roundOpsPerSec: number[] = [];
  let total = 0;
  for (let r = 0; r < rounds; r++) {
    let ops = 0;
    const t0 = performance.now();
    let elapsed = 0;
    do {
      await runBatch(batch);
      ops += batch;
      elapsed = performance.now() - t0;
    } while (elapsed < minTimeMs);
    roundOpsPerSec.push((ops * 1000) / elapsed);
    total += ops;
  }
  if (sink === measure) console.log(''); // never true; keeps `sink` observable
  return { name, opsPerSec: median(roundOpsPerSec), roundOpsPerSec, batch, ops: total };
}

// ------------------------------------------------------------------------------------ registry

export interface BenchCase {
  /** Implementation label, e.g. "node:crypto", "libsecp256k1", "noble". */
  name: string;
  fn: BenchFn;
}

/** One operation, several implementations of it; each is reported as a ratio to `baseline`. */
export interface BenchGroup {
  /** What is measured, e.g. "Ed25519 verify (64 B message)". */
  name: string;
  /** The `name` of the case the others are compared with; it always runs when any case of the group is selected. */
  baseline: string;
  /** Bytes processed per operation: the table then also shows MB/s (10^6 bytes per second). */
  bytesPerOp?: number;
  cases: BenchCase[];
}

export interface BenchSuite {
  /** Short name used by --filter and in headings, e.g. "crypto", "signet". */
  name: string;
  /** Built when the run reaches the suite, not at import (keys, buffers and backends are set up here). */
  groups: () => BenchGroup[] | Promise<BenchGroup[]>;
}

/** Every registered suite, in import order (see bench/run.ts). */
export const benches: BenchSuite[] = [];

export function registerBench(suite: BenchSuite): void {
  if (benches.some((s) => s.name === suite.name)) throw new Error(`bench suite "${suite.name}" registered twice`);
  benches.push(suite);
}

// ------------------------------------------------------------------------------------ selection

/**
 * The cases of a group that `filter` selects (case-insensitive substring of "suite/group/case",
 * so "crypto/" is one suite and "/noble" one implementation), plus the group's baseline whenever
 * anything is selected, so every ratio has its denominator.
 */
export function selectCases(suite: string, group: BenchGroup, filter: string | undefined): BenchCase[] {
  const baseline = group.cases.find((c) => c.name === group.baseline);
  if (!baseline) throw new Error(`bench group "${group.name}": baseline "${group.baseline}" is not one of its cases`);
  if (!filter) return group.cases;
  const f = filter.toLowerCase();
  const picked = group.cases.filter((c) => `${suite}/${group.name}/${c.name}`.toLowerCase().includes(f));
  if (picked.length === 0) return [];
  return group.cases.filter((c) => c === baseline || picked.includes(c));
}

// ------------------------------------------------------------------------------------ reporting

export interface GroupResult {
  suite: string;
  group: BenchGroup;
  results: Measurement[];
}

export function machineLine(): string {
  const cpus = os.cpus();
  const model = cpus[0]?.model.trim() ?? 'unknown CPU';
  return `${model} × ${cpus.length} (${os.platform()} ${os.release()} ${os.arch()}), Node ${process.version}, OpenSSL ${process.versions.openssl}`;
}

const int = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const dec = (digits: number) => new Intl.NumberFormat('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

function formatRate(opsPerSec: number): string {
  return opsPerSec >= 100 ? int.format(opsPerSec) : dec(1).format(opsPerSec);
}
function formatMicros(opsPerSec: number): string {
  const us = 1e6 / opsPerSec;
  return us >= 100 ? int.format(us) : us >= 1 ? dec(1).format(us) : dec(3).format(us);
}
function formatRatio(r: number): string {
  return r >= 10 ? dec(1).format(r) : r >= 0.1 ? dec(3).format(r) : dec(4).format(r);
}

/** Markdown table for one group: rate, spread over rounds, µs/op, MB/s and the ratio to the baseline. */
export function formatGroup(g: GroupResult): string {
  const base = g.results.find((r) => r.name === g.group.baseline)!;
  const bytes = g.group.bytesPerOp;
  const head = ['implementation', 'ops/s (median)', 'rounds min–max', 'µs/op', ...(bytes ? ['MB/s'] : []), `÷ ${g.group.baseline}`];
  const rows = g.results.map((r) => [
    r.name === g.group.baseline ? `**${r.name}** (baseline)` : r.name,
    formatRate(r.opsPerSec),
    `${formatRate(Math.min(...r.roundOpsPerSec))}–${formatRate(Math.max(...r.roundOpsPerSec))}`,
    formatMicros(r.opsPerSec),
    ...(bytes ? [dec(1).format((r.opsPerSec * bytes) / 1e6)] : []),
    r === base ? '1' : formatRatio(r.opsPerSec / base.opsPerSec),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [`### ${g.suite}: ${g.group.name}`, '', line(head), rule, ...rows.map(line)].join('\n');
}

/** One line per non-baseline case: "<case> / <baseline> = r (baseline is x× faster)". */
export function formatRatios(groups: GroupResult[]): string {
  const out: string[] = [];
  for (const g of groups) {
    const base = g.results.find((r) => r.name === g.group.baseline)!;
    for (const r of g.results) {
      if (r === base) continue;
      const ratio = r.opsPerSec / base.opsPerSec;
      const faster = ratio < 1 ? `${g.group.baseline} is ${dec(1).format(1 / ratio)}× faster` : `${r.name} is ${dec(2).format(ratio)}× faster`;
      out.push(`${g.suite}: ${g.group.name}: ${r.name} / ${g.group.baseline} = ${formatRatio(ratio)} (${faster})`);
    }
  }
  return out.join('\n');
}
