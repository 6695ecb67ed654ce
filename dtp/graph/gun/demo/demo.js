// The demo chat of dtp's Gun endpoint (docs/graph.md, "The Gun peer"): an ordinary
// gun.js app whose only peer is the dtp graph node that served this page.
//
// A room is a node (default soul "dtp-demo/chat"; ?room=... picks another); each
// message is one of its fields, named "<ISO time>-<random>", linking to a node
// {who, text, at}. A dtp peer writes a message the same way:
//   graph.put("dtp-demo/chat", {key: {"who": ..., "text": ..., "at": ms}})
(function () {
  'use strict';
  var params = new URLSearchParams(location.search);
  var room = params.get('room') || 'dtp-demo/chat';
  var relay = location.origin + '/gun';
  var gun = Gun({ peers: [relay], localStorage: false });
  var chat = gun.get(room);
  window.dtpDemo = { gun: gun, room: room }; // (collab.mjs edits the shared note through it)

  var list = document.getElementById('messages');
  var empty = document.getElementById('empty');
  var status = document.getElementById('status');
  var form = document.getElementById('say');
  var who = document.getElementById('who');
  var text = document.getElementById('text');
  document.getElementById('peer').textContent = relay;
  document.getElementById('room').textContent = room;
  who.value = params.get('name') || '';

  function setStatus(label, cls) {
    status.textContent = label;
    status.className = cls;
  }
  gun.on('hi', function () { setStatus('connected', 'online'); });
  gun.on('bye', function () { setStatus('reconnecting\u2026', 'offline'); });

  var items = {}; // field name -> <li>
  function show(key, msg) {
    var li = items[key];
    if (!li) {
      li = items[key] = document.createElement('li');
      li.dataset.key = key;
      li.appendChild(document.createElement('b'));
      li.appendChild(document.createElement('span'));
      li.appendChild(document.createElement('time'));
    }
    li.dataset.at = String(+msg.at || 0);
    li.children[0].textContent = String(msg.who || 'someone');
    li.children[1].textContent = String(msg.text);
    li.children[2].textContent = msg.at ? new Date(+msg.at).toLocaleTimeString() : '';
    // keep the list in time order (then by key: every page shows one order)
    var before = null;
    for (var i = 0; i < list.children.length; i++) {
      var other = list.children[i];
      if (other === li) { continue; }
      var a = +other.dataset.at, b = +li.dataset.at;
      if (a > b || (a === b && other.dataset.key > key)) { before = other; break; }
    }
    list.insertBefore(li, before);
    empty.hidden = true;
    document.body.dataset.messages = String(list.children.length);
  }

  chat.map().on(function (msg, key) {
    if (msg && typeof msg.text === 'string') { show(key, msg); }
  });

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    var message = { who: who.value.trim() || 'someone', text: text.value, at: Date.now() };
    if (!message.text) { return; }
    var key = new Date(message.at).toISOString() + '-' + String.random(6);
    chat.get(key).put(message, function (ack) {
      if (ack.err) { setStatus('not sent: ' + ack.err, 'offline'); }
      else { setStatus('sent', 'online'); }
    });
    text.value = '';
    text.focus();
  });
}());
