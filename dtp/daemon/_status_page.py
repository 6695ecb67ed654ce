"""The status page the daemon serves at ``/`` of its metrics address: one HTML document
with its style and script inline, what it shows live and offline as docs/daemon.md,
"Metrics and the status page", says. Every value is put in the page as text
(``textContent``), never as markup: a service's name cannot inject any.

The page marks what it shows for scripts and tests: ``body[data-state]`` is
``loading``, ``live`` or ``offline``, ``body[data-figures]`` ``live``, ``last-known``
(the daemon stopped answering) or ``saved`` (it said it stopped); each service's card
carries ``data-service`` and its figures (``data-connections``, ``data-bytes``,
``data-backends-up``, ``data-fees-earned``, ``data-fees-claimed``, ``data-fees-owed``),
each forward's ``data-forward``.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>DTP daemon</title>
<style>
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --dim:#6b7385; --line:#e2e5ea;
  --ok:#1f9d55; --bad:#d64545; --warn:#d08a00; --chart:#3867d6; --chart2:#8854d0; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
  background:var(--bg); color:var(--ink); }
header { padding:14px 20px; background:var(--card); border-bottom:1px solid var(--line);
  display:flex; flex-wrap:wrap; gap:10px 24px; align-items:center; }
header h1 { font-size:18px; margin:0 12px 0 0; }
.kv { color:var(--dim); font-size:12px; } .kv b { color:var(--ink); font-weight:600; }
.badge { display:inline-block; padding:2px 8px; border-radius:10px; font-size:12px;
  font-weight:600; color:#fff; background:var(--dim); }
.badge.ok { background:var(--ok); } .badge.bad { background:var(--bad); }
.badge.warn { background:var(--warn); }
main { padding:16px 20px; display:grid; gap:16px;
  grid-template-columns:repeat(auto-fill, minmax(420px, 1fr)); }
section.card { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:14px 16px; }
.card h2 { font-size:16px; margin:0 0 2px; display:flex; gap:8px; align-items:center; }
.card .sub { color:var(--dim); font-size:12px; margin-bottom:10px; word-break:break-all; }
.figures { display:grid; grid-template-columns:repeat(4, 1fr); gap:6px; margin-bottom:8px; }
.fig .n { font-size:18px; font-weight:600; } .fig .l { color:var(--dim); font-size:11px; }
.chart { margin-top:6px; } .chart .t { color:var(--dim); font-size:11px;
  display:flex; justify-content:space-between; }
svg { display:block; width:100%; height:54px; background:#fafbfc; border-radius:4px; }
.backends { margin-top:8px; display:flex; flex-wrap:wrap; gap:6px; }
.backend { font-size:12px; padding:1px 6px; border:1px solid var(--line); border-radius:4px; }
.dot { display:inline-block; width:8px; height:8px; border-radius:50%; margin-right:4px; }
.dot.up { background:var(--ok); } .dot.down { background:var(--bad); }
.dot.unchecked { background:var(--dim); }
#empty { color:var(--dim); padding:20px; }
#banner { padding:10px 20px; background:#fdecec; color:var(--bad); font-weight:600;
  border-bottom:1px solid var(--line); }
body[data-state="offline"] .figures, body[data-state="offline"] .chart { opacity:.5; }
.asof { color:var(--bad); font-size:12px; margin:-6px 0 8px; }
footer { color:var(--dim); font-size:11px; padding:0 20px 16px; }
</style>
</head>
<body data-state="loading">
<header>
  <h1>DTP daemon</h1>
  <span id="daemon" class="kv"></span>
  <span class="kv">ledger <span id="ledger" class="badge">…</span>
    <span id="ledger-info"></span></span>
  <span class="kv">gas <span id="gas" class="badge">…</span> <span id="gas-info"></span></span>
</header>
<div id="banner" role="status" hidden></div>
<main id="cards"><div id="empty">Loading…</div></main>
<footer id="footer"></footer>
<script>
"use strict";
const STEP_MS = 2000;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const kid of kids) node.append(kid instanceof Node ? kid : String(kid));
  return node;
}
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : Math.round(n)) + " " + units[i];
}
function mist(n) {
  if (n === null || n === undefined) return "?";
  if (Math.abs(n) >= 1e8) return (n / 1e9).toFixed(3) + " SUI";
  return Number(n).toLocaleString("en") + " MIST";
}
function count(n) { return Number(n || 0).toLocaleString("en"); }
function clock(t) { return new Date(t * 1000).toLocaleTimeString("en-GB"); }
const NONE = "\u2013";  // what a figure only a running daemon knows shows offline
function ago(t) {
  if (!t) return "never";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 90 ? Math.round(s) + " s ago" : Math.round(s / 60) + " min ago";
}
const perSecond = (udp) => udp ? ((v) => count(Math.round(v)) + "/s") : ((v) => bytes(v) + "/s");
function badge(kind, text) { return el("span", { class: "badge " + kind }, text); }
function fig(n, label) {
  return el("div", { class: "fig" },
    el("div", { class: "n" }, n), el("div", { class: "l" }, label));
}

function chart(title, points, fmt, color, live) {
  // points: [[t, v], ...] drawn as a line and the area under it, over the sampled span
  const W = 400, H = 54, pad = 2, NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const vals = points.map((p) => p[1]);
  const max = Math.max(1, ...vals);
  if (points.length > 1) {
    const t0 = points[0][0], span = Math.max(points[points.length - 1][0] - t0, 1);
    const xy = points.map(([t, v]) => [
      (pad + (W - 2 * pad) * (t - t0) / span).toFixed(1),
      (H - pad - (H - 2 * pad) * v / max).toFixed(1)]);
    const line = xy.map(([x, y], i) => (i ? "L" : "M") + x + " " + y).join(" ");
    const area = document.createElementNS(NS, "path");
    area.setAttribute("d", `${line} L${xy[xy.length - 1][0]} ${H - pad} L${pad} ${H - pad} Z`);
    area.setAttribute("fill", color);
    area.setAttribute("fill-opacity", "0.15");
    const stroke = document.createElementNS(NS, "path");
    stroke.setAttribute("d", line);
    stroke.setAttribute("fill", "none");
    stroke.setAttribute("stroke", color);
    stroke.setAttribute("stroke-width", "1.5");
    stroke.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(area, stroke);
  }
  const last = vals.length ? vals[vals.length - 1] : 0;
  const legend = (live ? "now " : "last ") + fmt(last) + " · max " + fmt(max);
  return el("div", { class: "chart" },
    el("div", { class: "t" }, el("span", {}, title), el("span", {}, legend)), svg);
}

function series(history, kind, name, field) {
  if (!history) return [];
  const idx = history[kind + "_fields"].indexOf(field);
  const out = [];
  for (const s of history.samples) {
    const row = (s[kind + "s"] || {})[name];
    if (row) out.push([s.t, row[idx]]);
  }
  return out;
}
function rate(points) {
  const out = [];
  for (let i = 1; i < points.length; i++) {
    const dt = points[i][0] - points[i - 1][0];
    if (dt > 0) out.push([points[i][0], Math.max(0, (points[i][1] - points[i - 1][1]) / dt)]);
  }
  return out;
}
function traffic(history, kind, name, row) {
  const udp = row.protocol === "udp";
  const points = rate(series(history, kind, name, udp ? "datagrams" : "bytes"));
  const now = points.length ? points[points.length - 1][1] : 0;
  return { udp, points, now, fmt: perSecond(udp), title: udp ? "datagrams / s" : "throughput" };
}

// mode: "live"; "last-known" (the daemon does not answer: its last figures, as of
// ``at``); "saved" (the daemon stopped: its figures as it saved them, at ``at``)
function asOf(mode, at) {
  const when = clock(at);
  return el("div", { class: "asof" }, mode === "saved"
    ? `stopped: figures as the daemon saved them at ${when}`
    : `offline: last known figures, from ${when}`);
}
function offBadge(mode) { return badge("", mode === "saved" ? "stopped" : "offline"); }

function serviceCard(name, row, history, mode, at) {
  const live = mode === "live";
  const t = traffic(history, "service", name, row);
  const backends = Object.entries(row.backends || {});
  const up = backends.filter(([, s]) => s === "up").length;
  const down = backends.length && !up && !t.udp;
  const card = el("section", {
    class: "card", "data-service": name, "data-connections": row.connections_open || 0,
    "data-bytes": (row.bytes_in || 0) + (row.bytes_out || 0), "data-backends-up": up,
    "data-fees-earned": row.fees_earned || 0, "data-fees-claimed": row.fees_claimed || 0,
    "data-fees-owed": row.fees_owed === undefined ? "" : row.fees_owed,
  },
    el("h2", {}, name, live ? badge(down ? "bad" : "ok", down ? "no backend" : "serving")
      : offBadge(mode)),
    el("div", { class: "sub" }, `service · port ${row.port} · ${row.protocol || "tcp"}`));
  if (!live) card.append(asOf(mode, at));
  card.append(
    el("div", { class: "figures" }, ...nowFigs(row, t, live),
      fig(count(row.denials), "denied"),
      fig(mist(row.fees_earned), "earned"),
      fig(mist(row.fees_claimed), "claimed"),
      fig(row.fees_owed === undefined ? NONE : mist(row.fees_owed), "owed"),
      fig(count(row.ends_left), "ends left")),
    chart("connections open", series(history, "service", name, "connections_open"),
      count, "var(--chart)", live),
    chart(t.title + " (both ways)", t.points, t.fmt, "var(--chart)", live),
    chart("fees earned", series(history, "service", name, "fees_earned"), mist,
      "var(--chart2)", live));
  if (backends.length) {
    // offline, no backend is known up or down: each is named, grey
    card.append(el("div", { class: "backends" }, ...backends.map(([b, s]) => live
      ? el("span", { class: "backend", "data-backend": b, "data-up": s },
        el("span", { class: "dot " + s }), b + " " + s)
      : el("span", { class: "backend", "data-backend": b, "data-up": "unknown" },
        el("span", { class: "dot unchecked" }), b))));
  }
  return card;
}

// what a service and a forward show alike of now (offline: nothing)
function nowFigs(row, t, live) {
  return [
    fig(live ? count(row.connections_open) : NONE, "connections open"),
    fig(live ? count(row.active_tunnels) : NONE, t.udp ? "flows" : "tunnels open"),
    fig(live ? t.fmt(t.now) : NONE, t.title)];
}

function forwardCard(name, row, history, mode, at) {
  const live = mode === "live";
  const t = traffic(history, "forward", name, row);
  const state = live ? row.state || "ok" : "unknown";
  const kind = state === "ok" ? "ok" : state === "unreachable" ? "bad" : "warn";
  const card = el("section", {
    class: "card", "data-forward": name, "data-state": state,
    "data-bytes": (row.bytes_in || 0) + (row.bytes_out || 0),
  },
    el("h2", {}, name, live
      ? badge(kind, state === "ok" ? "target up" : state.replace("_", " ")) : offBadge(mode)),
    el("div", { class: "sub" }, `forward · ${row.listen || ""} → ${row.target || ""}`));
  if (!live) card.append(asOf(mode, at));
  card.append(
    el("div", { class: "figures" }, ...nowFigs(row, t, live), fig(mist(row.fees_paid), "paid")),
    chart(t.title + " (both ways)", t.points, t.fmt, "var(--chart)", live),
    chart("fees paid", series(history, "forward", name, "fees_paid"), mist, "var(--chart2)",
      live));
  return card;
}

function header(status, mode, at) {
  const live = mode === "live";
  $("daemon").replaceChildren(
    "host ", el("b", {}, status.host_id || "(no services)"),
    " · address ", el("b", {}, status.address || "?"),
    " · pid ", el("b", {}, status.pid || "?"),
    " · v", status.version || "?");
  const ledger = status.ledger || {};
  const lstate = live ? ledger.state || "unknown" : "unknown";
  $("ledger").className = "badge " + ({ ok: "ok", unavailable: "bad" }[lstate] || "");
  $("ledger").textContent = lstate;
  $("ledger-info").textContent = (live ? "" : `as of ${clock(at)}: ${ledger.state || "?"}, `) +
    `${ledger.spec || ""} · ${count(ledger.calls)} calls, ` +
    `${count(ledger.errors)} errors` +
    (ledger.mean_seconds ? `, mean ${(ledger.mean_seconds * 1000).toFixed(1)} ms` : "") +
    (lstate === "unavailable" && ledger.last_error ? " · " + ledger.last_error : "") +
    (live ? ` · answered ${ago(ledger.last_ok)}` : "");
  const gas = status.gas || {};
  const gstate = !live ? "unknown" : gas.budget ? (gas.state || "unknown") : "no gas";
  $("gas").className = "badge " + ({ ok: "ok", low: "warn", out: "bad" }[gstate] || "");
  $("gas").textContent = gstate;
  $("gas-info").textContent = (live ? "" : `as of ${clock(at)}: `) +
    (gas.budget ? "" : "balance ") + mist(gas.balance) +
    (gas.spent && gas.spent.total ? ` · spent ${mist(gas.spent.total)}` : "");
}

async function fetchJson(path) {
  const answer = await fetch(path, { cache: "no-store" });
  if (!answer.ok) throw new Error(path + ": " + answer.status);
  return answer.json();
}

// the last figures that answered ({status, history, at}), and the status the daemon
// left as it stopped (/stopped.json), once it did
let last = null;
let stopped = null;
let watching = false;

function render(status, history, mode, at) {
  header(status, mode, at);
  const services = Object.entries(status.services || {});
  const forwards = Object.entries(status.forwards || {});
  const cards = [
    ...services.map(([name, row]) => serviceCard(name, row, history, mode, at)),
    ...forwards.map(([name, row]) => forwardCard(name, row, history, mode, at)),
  ];
  if (!cards.length) cards.push(el("div", { id: "empty" }, "No services or forwards."));
  $("cards").replaceChildren(...cards);
  document.body.dataset.state = mode === "live" ? "live" : "offline";
  document.body.dataset.figures = mode;
  document.body.dataset.services = services.length;
  document.body.dataset.forwards = forwards.length;
}

function offline(why) {
  // nothing live-looking: the last figures, marked, or the ones saved at the stop
  const banner = $("banner");
  banner.hidden = false;
  if (stopped) {
    render(stopped, last && last.history, "saved", stopped.stopped);
    banner.textContent = `Stopped: the daemon stopped at ${clock(stopped.stopped)}. ` +
      "The figures below are the ones it saved then; nothing is live.";
  } else if (last) {
    render(last.status, last.history, "last-known", last.at);
    banner.textContent = `Offline: the daemon does not answer (${why}). The figures ` +
      `below are the last it gave, at ${clock(last.at)}; nothing is live.`;
  } else {
    document.body.dataset.state = "offline";
    banner.textContent = `Offline: the daemon does not answer (${why}).`;
  }
  $("footer").textContent = "Trying again every 2 s.";
}

async function watchStop() {
  // one request held open: the daemon answers it as it stops, with its last status
  if (watching) return;
  watching = true;
  try {
    for (;;) {
      const answer = await fetch("stopped.json", { cache: "no-store" });
      if (answer.status === 200) {
        stopped = await answer.json();
        offline("it stopped");
        return;
      }
      if (answer.status !== 204) await new Promise((done) => setTimeout(done, 10 * STEP_MS));
    }
  } catch (err) {
    // gone without a word (killed, or the network): refresh() shows the last figures
  } finally {
    watching = false;
  }
}

async function refresh() {
  let status, history;
  try {
    [status, history] = await Promise.all([
      fetchJson("status.json"), fetchJson("history.json")]);
  } catch (err) {
    offline(err.message);
    return;
  }
  if (stopped && status.pid === stopped.pid && status.started === stopped.started) {
    return;  // (an answer of the stopped daemon's last moments, after its last word)
  }
  stopped = null;
  last = { status, history, at: Date.now() / 1000 };
  $("banner").hidden = true;
  render(status, history, "live");
  $("footer").textContent = "Live: updated every 2 s from this daemon's /status.json " +
    "(charts: its last 10 minutes). Prometheus metrics: /metrics.";
  watchStop();
}
refresh();
setInterval(refresh, STEP_MS);
</script>
</body>
</html>
"""
