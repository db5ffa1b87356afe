/**
 * `npm run bench` (builds, then runs `node dist/bench/run.js`).
 *
 *   node dist/bench/run.js [--filter <substring>] [--quick]
 *
 * --filter  run only the cases whose "suite/group/implementation" contains the substring
 *           (case-insensitive: "crypto/" = the crypto suite, "/noble" = every noble case,
 *           "ECDH" = that group); a group's baseline always runs with them, so ratios stay valid.
 * --quick   short rounds (for a smoke test; figures are noisier).
 *
 * Output: the machine line, one markdown table per group, then every ratio against its baseline.
 * See docs/benchmarks.md for what the figures mean and the recorded results.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  DEFAULT_MIN_TIME_MS,
  DEFAULT_ROUNDS,
  QUICK_MIN_TIME_MS,
  QUICK_ROUNDS,
  benches,
  formatGroup,
  formatRatios,
  machineLine,
  measure,
  selectCases,
  type GroupResult,
} from './lib.js';

// Bench modules register themselves in `benches` when imported; the order here is the run order.
import './crypto.js';
import './signet.js';
import './message.js';
import './keystore.js';
import './dmtp.js';
import './resolver.js';
import './milter-postfix.js';
import './e2e-two-domains.js';
// Add further bench modules below, one import line each.

interface Args {
  filter?: string;
  quick: boolean;
}

function usage(): string {
  return 'usage: node dist/bench/run.js [--filter <substring>] [--quick]';
}

function parseArgs(argv: string[]): Args {
  const args: Args = { quick: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') args.quick = true;
    else if (a === '--filter') {
      const v = argv[++i];
      if (v === undefined || v === '') throw new Error('--filter needs a substring');
      args.filter = v;
    } else if (a.startsWith('--filter=')) args.filter = a.slice('--filter='.length);
    else if (a === '--help' || a === '-h') {
      console.log(usage());
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return args;
}

async function main(): Promise<void> {
  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`${(err as Error).message}\n${usage()}`);
    process.exit(2);
  }
  const minTimeMs = args.quick ? QUICK_MIN_TIME_MS : DEFAULT_MIN_TIME_MS;
  const rounds = args.quick ? QUICK_ROUNDS : DEFAULT_ROUNDS;

  console.log(`machine: ${machineLine()}`);
  console.log(`date: ${new Date().toISOString()}`);
  console.log(`settings: ${rounds} rounds of ≥ ${minTimeMs} ms each, median reported${args.filter ? `, filter "${args.filter}"` : ''}${args.quick ? ' (--quick)' : ''}`);
  console.log('');

  const done: GroupResult[] = [];
  for (const suite of benches) {
    const groups = await suite.groups();
    for (const group of groups) {
      const cases = selectCases(suite.name, group, args.filter);
      if (cases.length === 0) continue;
      const results = [];
      for (const c of cases) results.push(await measure(c.name, c.fn, { minTimeMs, rounds }));
      const g: GroupResult = { suite: suite.name, group, results };
      done.push(g);
      console.log(formatGroup(g));
      console.log('');
    }
  }
  const memory = !args.filter || 'message/memory'.includes(args.filter.toLowerCase());
  // A suite that runs its own rounds and prints its own report (e2e-two-domains) returns no groups.
  const f = args.filter?.toLowerCase();
  const suiteNamed = f !== undefined && benches.some((s) => s.name.includes(f) || f.startsWith(`${s.name}/`));
  if (done.length === 0 && !memory && !suiteNamed) {
    console.error(`nothing matches --filter "${args.filter}" (suites: ${benches.map((s) => s.name).join(', ')})`);
    process.exit(1);
  }
  if (done.length > 0) {
    console.log('### Ratios against the baseline of each group (same run)');
    console.log('');
    console.log(formatRatios(done));
  }
  if (memory) {
    // Peak memory needs a fresh process: the runs above leave garbage behind.
    console.log('\n### Memory\n');
    const r = spawnSync(process.execPath, ['--expose-gc', fileURLToPath(new URL('./seal-memory.js', import.meta.url))], { encoding: 'utf8' });
    console.log((r.stdout + r.stderr).trim());
  }
}

await main();
