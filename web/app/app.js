// The demo web app: a TodoMVC-style page on the real Replicache client,
// syncing through replicache-sidecar with an unmodified REST API behind it.
//
// Everything on the page follows the client's data: the list changes only
// when a subscription delivers a change, row by row (an element under the
// pointer is never replaced mid-click), and "pending" is the client's own
// count of mutations no pull has confirmed yet. Nothing runs on a timer.
import {Replicache} from 'replicache';
import {mutators} from './mutators.js';

const users = ['alice', 'bob', 'carol'];

// Who am I: ?user= picks the user of this tab (kept for the tab, in
// sessionStorage); a new tab without it is alice.
const params = new URLSearchParams(location.search);
const user = params.get('user') || sessionStorage.getItem('demo-user') || 'alice';
sessionStorage.setItem('demo-user', user);

const rep = new Replicache({
  name: `todos-${user}`,
  pushURL: '/replicache/push',
  pullURL: '/replicache/pull',
  auth: `Bearer ${user}`,
  pullInterval: 60000, // a fallback: pokes make it pull at once
  mutators,
});
window.rep = rep; // for tests and curious people

const $ = (id) => document.getElementById(id);

// The user switcher: the current user, and a link to each other one.
$('user').textContent = user;
$('switch').replaceChildren(...users.filter((u) => u !== user).flatMap((u, i) => {
  const a = document.createElement('a');
  a.href = `?user=${u}`;
  a.textContent = u;
  return i === 0 ? [a] : [', ', a];
}));

// Realtime: the sidecar pokes this page whenever something changed, and it
// pulls. (EventSource sends cookies, not headers: the demo API takes its
// token from a cookie too.) A stream the server refused is not retried by
// EventSource itself: open a new one, and pull once it is open. The stream
// names its client group, so the sidecar counts it for the group (inspect)
// and measures how long changes take to reach it.
document.cookie = `demo_token=${encodeURIComponent(user)}; path=/; SameSite=Strict`;
let pokes = null;
async function listen(reopened) {
  const group = await rep.clientGroupID;
  pokes = new EventSource(`/replicache/poke?clientGroupID=${encodeURIComponent(group)}`);
  pokes.addEventListener('poke', () => rep.pull());
  if (reopened) pokes.onopen = () => rep.pull();
  pokes.onerror = () => {
    if (pokes.readyState === EventSource.CLOSED) setTimeout(() => listen(true), 2000);
  };
}
listen(false);

function showOnline(online) {
  $('online').textContent = online ? 'online' : 'offline';
  $('online').className = online ? 'online' : 'offline';
}
rep.onOnlineChange = showOnline;

// Pending: mutated here, not yet confirmed by a pull. Recounted when the
// data changes, when a push or pull ends, and after each mutation.
let pendingIDs = new Set();
let counting = null;
function refreshPending() {
  counting ??= (async () => {
    try {
      const pending = await rep.experimentalPendingMutations();
      pendingIDs = new Set(pending.map((m) => m.args?.id));
      $('pending').textContent = `${pending.length} pending`;
      for (const [id, li] of rows) li.classList.toggle('pending', pendingIDs.has(id));
      return pending.length;
    } finally {
      counting = null;
    }
  })();
  return counting;
}
rep.onSync = (syncing) => {
  showOnline(rep.online);
  if (!syncing) refreshPending();
};

// The list, keyed by todo id: rows are created once and then only updated.
const rows = new Map();
function row(t) {
  const li = document.createElement('li');
  li.dataset.id = t.id;
  const box = document.createElement('input');
  box.type = 'checkbox';
  box.onchange = () => mutate('updateTodo', {id: t.id, done: box.checked});
  const text = document.createElement('span');
  text.className = 'text';
  const del = document.createElement('button');
  del.textContent = '×';
  del.title = 'Delete';
  del.onclick = () => mutate('deleteTodo', {id: t.id});
  li.append(box, text, del);
  return li;
}

function render(todos) {
  const ul = $('todos');
  const seen = new Set();
  let before = ul.firstChild;
  for (const t of todos) {
    seen.add(t.id);
    let li = rows.get(t.id);
    if (!li) {
      li = row(t);
      rows.set(t.id, li);
    }
    const box = li.firstChild;
    if (box.checked !== !!t.done) box.checked = !!t.done;
    li.classList.toggle('done', !!t.done);
    li.classList.toggle('pending', pendingIDs.has(t.id));
    if (li.children[1].textContent !== t.title) li.children[1].textContent = t.title;
    if (li !== before) ul.insertBefore(li, before);
    before = li.nextSibling;
  }
  for (const [id, li] of rows) {
    if (!seen.has(id)) {
      li.remove();
      rows.delete(id);
    }
  }
  const left = todos.filter((t) => !t.done).length;
  $('count').textContent = `${left} item${left === 1 ? '' : 's'} left`;
}

let todos = [];
rep.subscribe((tx) => tx.scan({prefix: 'todo/'}).values().toArray(), {
  onData(list) {
    todos = list;
    render(list);
    refreshPending();
  },
});

async function mutate(name, args) {
  await rep.mutate[name](args);
  refreshPending();
  // With a poke stream, this client's own push pokes it and it pulls.
  // Without one, nothing else makes it pull soon: pull once the push is
  // answered, so "pending" ends.
  if (pokes?.readyState !== EventSource.OPEN) {
    await rep.push({now: true});
    rep.pull();
  }
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
  await mutate('createTodo', {id: newID(), title});
};
$('sync').onclick = () => { rep.push({now: true}); rep.pull({now: true}); };
$('clear-done').onclick = async () => {
  for (const t of todos.filter((t) => t.done)) await mutate('deleteTodo', {id: t.id});
};
