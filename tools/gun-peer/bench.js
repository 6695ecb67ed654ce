// gun.js clients putting through a Gun relay, timed: the gun_relay_puts benchmark row
// (bench/graph_rows.py) runs it against dtp's Gun endpoint and against gun's own relay
// (relay.js). Reads one JSON job on stdin, writes one JSON answer on stdout:
//
//   {"peer": URL, "clients": C, "puts": N, "window": W, "tag": T, "deadline": D}
//     -> {"puts": C*N, "seconds": S, "rate": puts per second, "errors": E, "lost": L}
//        (rate null when L > 0; seconds null too when the clients never connected)
//
// Each of the C clients (gun instances, one WebSocket each) puts N nodes
// "bench/T/<client>/<i>" of three fields, keeping W puts awaiting their
// acknowledgement; the clock runs from the first put to the last acknowledgement.
// A put whose acknowledgement has not come D seconds (default 60) after the start is
// counted as lost and the job ends, so a relay that drops an acknowledgement gives an
// answer rather than a hang.
'use strict';

const log = console.log;
console.log = (...args) => console.error(...args);
const Gun = require('gun/gun');
const WebSocket = require('ws');

function client(peer) {
  return Gun({ peers: [peer], WebSocket, localStorage: false, radisk: false, axe: false });
}

function connected(gun) {
  return new Promise((resolve) => gun.on('hi', () => resolve()));
}

function run(gun, c, job, deadline) {
  return new Promise((resolve) => {
    let next = 0;
    let done = 0;
    let errors = 0;
    deadline.then(() => resolve({ errors, lost: job.puts - done }));
    const one = () => {
      const i = next++;
      gun.get(`bench/${job.tag}/${c}/${i}`).put({ n: i, text: `value ${c}.${i}`, ok: true }, (ack) => {
        if (ack.err) errors++;
        done++;
        if (next < job.puts) one();
        else if (done === job.puts) resolve({ errors, lost: 0 });
      });
    };
    for (let k = 0; k < Math.min(job.window, job.puts); k++) one();
  });
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const job = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const guns = [];
  for (let c = 0; c < job.clients; c++) guns.push(client(job.peer));
  // (the deadline counts from before the clients connect: a relay that never takes
  // the connection ends the job as well)
  const deadline = new Promise((resolve) => setTimeout(resolve, 1000 * (job.deadline ?? 60)));
  const puts = job.clients * job.puts;
  const met = await Promise.race([Promise.all(guns.map(connected)).then(() => true), deadline.then(() => false)]);
  if (!met) {
    log(JSON.stringify({ puts, seconds: null, rate: null, errors: 0, lost: puts }));
    process.exit(0);
  }
  const start = process.hrtime.bigint();
  const ends = await Promise.all(guns.map((gun, c) => run(gun, c, job, deadline)));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const errors = ends.reduce((a, e) => a + e.errors, 0);
  const lost = ends.reduce((a, e) => a + e.lost, 0);
  // (no rate for a job that lost puts: it did not do the work it was timed for)
  log(JSON.stringify({ puts, seconds, rate: lost ? null : puts / seconds, errors, lost }));
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`bench.js: ${err && err.stack || err}\n`);
  process.exit(1);
});
