// Runs streams of HAM updates through GunDB's own merge -- the `put` path of gun's
// src/root.js (its `ham` step, the graph it writes) -- with a clock the caller sets, for
// dtp's equivalence test (tests/graph/test_gun_equivalence.py) and its benchmark row
// ham_merge_vs_gun (bench/graph_rows.py). Reads one JSON job on stdin, writes one JSON
// answer on stdout:
//
//   {"phases": [{"clock": T, "messages": MESSAGES}, ...]}
//     -> [GRAPH after phase 1, GRAPH after phase 2, ...]
//   {"bench": {"clock": T, "messages": MESSAGES, "seconds": S}}
//     -> {"rate": updates per second, "runs": n, "graph": GRAPH of the last run}
//   {"stringify": [value, ...]} -> [JSON.stringify(value), ...]
//
// MESSAGES: [[soul, [[key, value, state], ...]], ...], one gun `put` message each (one
// node; at most 8 keys, which gun's put loop takes in one turn). GRAPH: {soul: {key:
// [state, JSON.stringify(value)]}}.
//
// The clock. Gun's machine state is Gun.state(): `+new Date` (plus n/999 for the n-th
// reading within one ms). An update ahead of it is retried with setTimeout. Here `Date`
// reads the phase's clock, and setTimeout queues its callbacks against that clock: each
// phase first runs the retries now due, then feeds its messages.
'use strict';

const RealDate = Date;
let clock = 0;
class PhaseDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(clock);
    else super(...args);
  }
  static now() {
    return clock;
  }
}

const realSetTimeout = global.setTimeout;
let timers = [];
let timerSeq = 0;
function phaseSetTimeout(fn, ms, ...args) {
  timers.push({ due: clock + (+ms || 0), seq: timerSeq++, fn, args });
  return { ref() { return this; }, unref() { return this; }, hasRef() { return false; } };
}

function runDueTimers() {
  for (;;) {
    const due = timers.filter((t) => t.due <= clock).sort((a, b) => a.due - b.due || a.seq - b.seq);
    if (due.length === 0) return;
    timers = timers.filter((t) => t.due > clock);
    for (const t of due) t.fn(...t.args);
  }
}

function loadGun() {
  const log = console.log;
  console.log = () => {}; // (gun greets on stdout when loaded)
  try {
    return require('gun/gun');
  } finally {
    console.log = log;
  }
}

const Gun = loadGun();
// gun's shim hangs its schedulers (turn, each, poll...) on setTimeout: keep them
Object.assign(phaseSetTimeout, realSetTimeout);
global.Date = PhaseDate;
global.setTimeout = phaseSetTimeout;

function newRoot() {
  const gun = Gun({ peers: [], localStorage: false, radisk: false, axe: false, multicast: false });
  return gun._.root;
}

function feed(root, messages) {
  for (const [soul, updates] of messages) {
    const node = { _: { '#': soul, '>': {} } };
    for (const [key, value, state] of updates) {
      node[key] = value;
      node._['>'][key] = state;
    }
    root.on('in', { put: { [soul]: node } });
  }
}

function graphOf(root) {
  const out = {};
  for (const [soul, node] of Object.entries(root.graph)) {
    const fields = {};
    for (const key of Object.keys(node)) {
      if (key === '_') continue;
      fields[key] = [node._['>'][key], JSON.stringify(node[key])];
    }
    out[soul] = fields;
  }
  return out;
}

function phases(job) {
  const root = newRoot();
  const graphs = [];
  for (const phase of job.phases) {
    clock = phase.clock;
    runDueTimers();
    feed(root, phase.messages);
    runDueTimers();
    graphs.push(graphOf(root));
  }
  return graphs;
}

function bench(job) {
  clock = job.clock;
  let runs = 0;
  let elapsed = 0n;
  let root;
  const end = process.hrtime.bigint() + BigInt(Math.round(job.seconds * 1e9));
  feed(newRoot(), job.messages); // warm up
  do {
    root = newRoot();
    timers = [];
    const start = process.hrtime.bigint();
    feed(root, job.messages);
    elapsed += process.hrtime.bigint() - start;
    runs += 1;
  } while (process.hrtime.bigint() < end);
  const updates = job.messages.reduce((n, [, ups]) => n + ups.length, 0);
  return { rate: (updates * runs) / (Number(elapsed) / 1e9), runs, graph: graphOf(root) };
}

const input = require('fs').readFileSync(0, 'utf8');
const job = JSON.parse(input);
const answer = job.stringify
  ? job.stringify.map((v) => JSON.stringify(v))
  : job.bench
    ? bench(job.bench)
    : phases(job);
// (exit once written: a pipe is written asynchronously, and gun's own schedulers must
// not hold the process)
process.stdout.write(JSON.stringify(answer), () => process.exit(0));
