// demo/graph.html: a gun.js app using the graph's three tiers (src/graph). Its address
// may say `?gun=http://host:port` (the Gun relay: dtp's Gun endpoint; the page's own
// origin by default), `keystring=` (a Sui keystring for the page's identity; else one
// kept in localStorage) and `sea=1` (load gun's SEA too: the tiers live beside it). `window.dtpPage` holds what the tests drive: the gun instance,
// the identity and the tiers.

import {
  NotAReader,
  identityFromKeystring,
  installTiers,
  refusedByReason,
  storedIdentity,
  tiers,
} from '../src/graph/index.js';
import { hex } from '../src/bytes.js';

const query = new URLSearchParams(location.search);
const relay = (query.get('gun') || location.origin).replace(/\/$/, '');
const $ = (id) => document.getElementById(id);

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.append(script);
  });
}

function show(id, value) {
  $(id).textContent = typeof value === 'string' ? value : JSON.stringify(value, null, 1);
}

async function refresh(page) {
  show('profile', (await page.graph.protected('profile').get()) ?? '(nothing yet)');
  const notes = page.graph.private('notes');
  const [node, readers] = await Promise.all([notes.get(), notes.readers()]);
  show('notes', { notes: node ?? {}, readers });
}

async function start() {
  await loadScript(`${relay}/gun.js`);
  if (query.get('sea')) await loadScript(`${relay}/sea.js`);
  installTiers(window.Gun); // before the first Gun(): the guard joins every instance
  const identity = query.get('keystring') ? identityFromKeystring(query.get('keystring')) : storedIdentity(localStorage);
  const gun = window.Gun({ peers: [`${relay}/gun`], localStorage: false });
  const page = {
    gun,
    identity,
    graph: tiers(gun, identity),
    readerKey: hex(identity.readerKey),
    tiersOver: (other) => tiers(other, identity),
    refusedByReason,
  };
  window.dtpPage = page;
  show('peer', `${relay}/gun`);
  show('address', identity.address);
  show('reader', page.readerKey);

  $('profile-form').onsubmit = async (event) => {
    event.preventDefault();
    await page.graph.protected('profile').put({ name: $('profile-name').value });
    await refresh(page);
  };
  $('note-form').onsubmit = async (event) => {
    event.preventDefault();
    await page.graph.private('notes').put({ [new Date().toISOString()]: $('note-text').value });
    await refresh(page);
  };
  $('reader-form').onsubmit = async (event) => {
    event.preventDefault();
    await page.graph.private('notes').addReader($('reader-key').value.trim());
    await refresh(page);
  };
  $('other-form').onsubmit = async (event) => {
    event.preventDefault();
    const node = page.graph.private($('other-path').value, { author: $('other-author').value.trim() });
    try {
      show('other', (await node.get()) ?? '(nothing there)');
    } catch (err) {
      show('other', err instanceof NotAReader ? 'not a reader of this space' : `${err.name}: ${err.message}`);
    }
  };
  page.graph.protected('profile').on(() => refresh(page));
  page.graph.private('notes').on(() => refresh(page));
  await refresh(page);
  $('status').textContent = 'online';
  $('status').className = 'online';
  document.body.dataset.ready = '1';
}

start().catch((err) => {
  $('status').textContent = `failed: ${err.message}`;
  $('status').className = 'failed';
  document.body.dataset.ready = 'failed';
});
