// The demo page's shared note: a collaborative text (docs/graph.md, "Collaborative
// values") in the field "body" of the node "dtp-demo/note" (?note=... picks another
// node), edited here with Yjs and stored as records through gun.js -- the same records
// a dtp peer writes with graph.text("dtp-demo/note", "body"). yrecords.mjs holds the
// records and the replica; this file binds a <textarea> to it.
//
// window.dtpNote, for a program driving the page: value() reads the note; type(text, at)
// types `text` one character (one Yjs transaction, one record) at a time, at `at`
// (UTF-16 code units; the end when left out).
import { bindGun } from './yrecords.mjs';

const params = new URLSearchParams(location.search);
const soul = params.get('note') || 'dtp-demo/note';
const field = 'body';
const box = document.getElementById('note');
const status = document.getElementById('note-status');
document.getElementById('note-soul').textContent = soul + '.' + field;

async function start() {
  if (!window.dtpYjs) {
    status.textContent = '(yjs is not installed where this page is served)';
    return;
  }
  const Y = await import('yjs');
  const replica = bindGun(Y, window.dtpDemo.gun, soul, field, null);
  const text = replica.doc.getText('text');
  let shown = '';

  // a change from a peer: show it, the cursor kept where it was in the text around it
  text.observe((event) => {
    if (event.transaction.origin !== replica) return;
    let start = box.selectionStart;
    let end = box.selectionEnd;
    let at = 0;
    for (const op of event.delta) {
      if (op.retain) at += op.retain;
      if (op.insert) {
        const n = op.insert.length;
        if (at < start) start += n;
        if (at < end) end += n;
        at += n;
      }
      if (op.delete) {
        if (at < start) start -= Math.min(op.delete, start - at);
        if (at < end) end -= Math.min(op.delete, end - at);
      }
    }
    shown = text.toString();
    box.value = shown;
    if (document.activeElement === box) box.setSelectionRange(start, end);
  });

  // an edit here: the difference from what was shown, as one transaction
  box.addEventListener('input', () => {
    const now = box.value;
    let head = 0;
    while (head < now.length && head < shown.length && now[head] === shown[head]) head++;
    let tail = 0;
    while (
      tail < now.length - head &&
      tail < shown.length - head &&
      now[now.length - 1 - tail] === shown[shown.length - 1 - tail]
    ) tail++;
    replica.doc.transact(() => {
      if (shown.length - head - tail > 0) text.delete(head, shown.length - head - tail);
      if (now.length - head - tail > 0) text.insert(head, now.slice(head, now.length - tail));
    });
    shown = now;
  });

  window.dtpNote = {
    value: () => text.toString(),
    type(chars, at) {
      let where = at === undefined ? text.length : at;
      for (const ch of chars) {
        text.insert(where, ch);
        where += ch.length;
      }
      shown = text.toString();
      box.value = shown;
    },
  };
  box.disabled = false;
  status.textContent = '(Yjs over the graph)';
}

start().catch((err) => {
  status.textContent = '(the note could not start: ' + err + ')';
});
