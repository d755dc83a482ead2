// The demo web app: a TodoMVC-style page on the real Replicache client,
// syncing through replicache-sidecar with an unmodified REST API behind it.
import {Replicache} from 'replicache';
import {mutators} from './mutators.js';

const params = new URLSearchParams(location.search);
const user = params.get('user') || localStorage.getItem('demo-user') || 'alice';
localStorage.setItem('demo-user', user);

const rep = new Replicache({
  name: `todos-${user}`,
  pushURL: '/replicache/push',
  pullURL: '/replicache/pull',
  auth: `Bearer ${user}`,
  pullInterval: 60000, // a fallback: pokes make it pull at once
  mutators,
});
window.rep = rep; // for tests and curious people

// Realtime: the sidecar pokes this page whenever something changed, and it
// pulls. (EventSource sends cookies, not headers: the demo API takes its
// token from a cookie too.) A stream the server refused (503 while a
// replica drains) is not retried by EventSource itself: open a new one.
document.cookie = `demo_token=${encodeURIComponent(user)}; path=/; SameSite=Strict`;
function listen(reopened) {
  const pokes = new EventSource('/replicache/poke');
  pokes.addEventListener('poke', () => rep.pull());
  // A stream opened again by hand: pokes may have been missed meanwhile.
  if (reopened) pokes.onopen = () => rep.pull();
  pokes.onerror = () => {
    if (pokes.readyState === EventSource.CLOSED) setTimeout(() => listen(true), 2000);
  };
}
listen(false);

const $ = (id) => document.getElementById(id);
$('user').textContent = user;

let todos = [];
let pendingIDs = new Set();

function showOnline(online) {
  $('online').textContent = online ? 'online' : 'offline';
  $('online').className = online ? 'online' : 'offline';
}
rep.onOnlineChange = showOnline;

rep.subscribe((tx) => tx.scan({prefix: 'todo/'}).values().toArray(), {
  onData(list) {
    todos = list;
    refreshPending();
  },
});

// Pending = mutated locally, not yet confirmed by a pull.
async function refreshPending() {
  const pending = await rep.experimentalPendingMutations();
  showOnline(rep.online);
  pendingIDs = new Set(pending.map((m) => m.args?.id));
  $('pending').textContent = `${pending.length} pending`;
  render();
}
setInterval(refreshPending, 1000);

function render() {
  const ul = $('todos');
  ul.replaceChildren(...todos.map((t) => {
    const li = document.createElement('li');
    li.dataset.id = t.id;
    li.className = [t.done ? 'done' : '', pendingIDs.has(t.id) ? 'pending' : ''].join(' ').trim();
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = !!t.done;
    box.onchange = () => rep.mutate.updateTodo({id: t.id, done: box.checked});
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = t.title;
    const del = document.createElement('button');
    del.textContent = '×';
    del.title = 'Delete';
    del.onclick = () => rep.mutate.deleteTodo({id: t.id});
    li.append(box, text, del);
    return li;
  }));
  const left = todos.filter((t) => !t.done).length;
  $('count').textContent = `${left} item${left === 1 ? '' : 's'} left`;
}

// Ids sort by creation time (keys are scanned in order, and the REST API
// keeps no other order we could use), then a random part for uniqueness.
let lastID = '';
function newID() {
  let id = Date.now().toString(36).padStart(9, '0') + '-' + crypto.randomUUID().slice(0, 8);
  if (id <= lastID) id = lastID + '0'; // two in the same millisecond
  lastID = id;
  return id;
}

$('new').onsubmit = async (e) => {
  e.preventDefault();
  const title = $('title').value.trim();
  if (!title) return;
  $('title').value = '';
  await rep.mutate.createTodo({id: newID(), title});
};
$('sync').onclick = () => { rep.push({now: true}); rep.pull({now: true}); };
$('clear-done').onclick = async () => {
  for (const t of todos.filter((t) => t.done)) await rep.mutate.deleteTodo({id: t.id});
};
