// gun's own Node relay (what `npm start` in the gun package runs, less its extras), for
// the gun_relay_puts benchmark row (bench/graph_rows.py): an HTTP server on 127.0.0.1
// with gun's WebSocket wire on /gun, SEA's checks and AXE's routing as gun's server
// loads them, its data in radisk files under DIR.
//   node relay.js PORT DIR    -> prints {"port": PORT} once listening
'use strict';

const log = console.log;
console.log = (...args) => console.error(...args); // gun greets on stdout
const Gun = require('gun');
const http = require('http');

const port = Number(process.argv[2] || 0);
const dir = process.argv[3] || 'radata';
const server = http.createServer(Gun.serve(__dirname));
server.listen(port, '127.0.0.1', () => {
  Gun({ web: server, file: dir, multicast: false });
  log(JSON.stringify({ port: server.address().port }));
});
