// End-to-end tests: the real Replicache client (npm replicache 15.3.0,
// headless, in-memory store) syncing through the real sidecar binary with the
// real todo-api behind it and a real Postgres.
import {test} from 'node:test';
import assert from 'node:assert/strict';
import {psql, serverTodos, sleep, startStack, sync, todos, waitFor} from './harness.mjs';

test('create, update and delete go through the mapping; a second client sees them', async (t) => {
  const s = await startStack();
  t.after(() => s.close());
  const a = s.newRep('alice');
  await a.mutate.createTodo({id: 't1', title: 'milk'});
  await a.mutate.createTodo({id: 't2', title: 'bread'});
  await a.mutate.updateTodo({id: 't1', done: true});
  await a.mutate.createTodo({id: 't3', title: 'eggs'});
  await a.mutate.deleteTodo({id: 't2'});
  await sync(a);
  const want = {t1: {title: 'milk', done: true}, t3: {title: 'eggs', done: false}};
  assert.deepEqual(await serverTodos(s.api, 'alice'), want, 'the API holds the result');
  assert.deepEqual(await todos(a), want, 'the client converged');

  const b = s.newRep('alice'); // another device of the same user
  await b.pull({now: true});
  await waitFor('the second client to see the todos', async () => JSON.stringify(await todos(b)) === JSON.stringify(want));
  // Each mutation took effect once, with its own idempotency key.
  const keys = s.api.effects().map((e) => e.idempotency_key);
  assert.equal(keys.length, 5);
  assert.equal(new Set(keys).size, 5);
});

test('two users see only their own data; a client group cannot change hands', async (t) => {
  const s = await startStack();
  t.after(() => s.close());
  const alice = s.newRep('alice');
  const bob = s.newRep('bob');
  await alice.mutate.createTodo({id: 'a1', title: 'alice only'});
  await bob.mutate.createTodo({id: 'b1', title: 'bob only'});
  await sync(alice);
  await sync(bob);
  assert.deepEqual(Object.keys(await todos(alice)), ['a1']);
  assert.deepEqual(Object.keys(await todos(bob)), ['b1']);
  assert.equal((await alice.query((tx) => tx.get('me'))).id, 'alice');

  // Bob's credentials on alice's client group are refused, for pull and push.
  const group = await alice.clientGroupID;
  const headers = {'Content-Type': 'application/json', Authorization: 'Bearer bob'};
  const pull = await fetch(s.sidecar.url + '/replicache/pull', {method: 'POST', headers,
    body: JSON.stringify({pullVersion: 1, clientGroupID: group, cookie: null, profileID: 'x', schemaVersion: ''})});
  assert.equal(pull.status, 403);
  const push = await fetch(s.sidecar.url + '/replicache/push', {method: 'POST', headers,
    body: JSON.stringify({pushVersion: 1, clientGroupID: group, profileID: 'x', schemaVersion: '',
      mutations: [{id: 99, clientID: alice.clientID, name: 'deleteTodo', args: {id: 'a1'}, timestamp: 1}]})});
  assert.equal(push.status, 403);
  assert.deepEqual(Object.keys(await serverTodos(s.api, 'alice')), ['a1'], 'nothing of alice changed');
});

test('a mutation the API rejects (422) is dropped; the client converges and keeps syncing', async (t) => {
  const s = await startStack();
  t.after(() => s.close());
  const rep = s.newRep('alice');
  await rep.mutate.createTodo({id: 'ok1', title: 'fine'});
  await rep.mutate.createTodo({id: 'bad', title: ''}); // the API answers 422: a title is required
  await rep.mutate.createTodo({id: 'ok2', title: 'also fine'});
  assert.ok((await todos(rep)).bad, 'optimistically created locally');
  await sync(rep);
  assert.deepEqual(Object.keys(await todos(rep)).sort(), ['ok1', 'ok2'], 'the rejected todo is gone');
  await rep.mutate.updateTodo({id: 'ok1', done: true});
  await sync(rep);
  assert.deepEqual(await serverTodos(s.api, 'alice'), {ok1: {title: 'fine', done: true}, ok2: {title: 'also fine', done: false}});
  const rejected = psql(`SELECT mutator || ':' || status FROM ${s.schema}.mutation_rejections`);
  assert.equal(rejected, 'createTodo:422');
});

test('a poison mutation (the API answers 500 every time) is given up; the client goes on', async (t) => {
  // The API answers a create with an existing id with 500, as prototyping
  // servers do: retrying can never help. The valve gives up after 3 answers
  // over at least 1 s. The breaker keeps its defaults: one client's 500s in
  // a row count once, so they do not open it.
  const s = await startStack({
    apiArgs: ['-duplicate-status', '500'],
    sidecarEnv: {SIDECAR_GIVE_UP_ATTEMPTS: '3', SIDECAR_GIVE_UP_AFTER: '1s'},
  });
  t.after(() => s.close());
  const rep = s.newRep('alice');
  await rep.mutate.createTodo({id: 'a', title: 'first'});
  await sync(rep);
  await rep.mutate.createTodo({id: 'a', title: 'again'}); // the poison: 500 every time
  await rep.mutate.createTodo({id: 'b', title: 'after'});
  await rep.mutate.updateTodo({id: 'a', done: true});
  await sync(rep, {timeout: 30000}); // pending until the valve gives up, then drains
  const want = {a: {title: 'first', done: true}, b: {title: 'after', done: false}};
  assert.deepEqual(await serverTodos(s.api, 'alice'), want, 'the later mutations reached the API');
  assert.deepEqual(await todos(rep), want, 'the client converged');
  const rejected = psql(`SELECT mutator || ':' || status || ':' || (reason ~ '^gave up after [0-9]+ attempts over [0-9.a-z]+$') FROM ${s.schema}.mutation_rejections`);
  assert.equal(rejected, 'createTodo:500:true');
  const poisonCalls = s.api.logs.filter((l) => l.msg === 'request' && l.method === 'POST' && l.status === 500).length;
  assert.ok(poisonCalls >= 3, `the API answered the poison ${poisonCalls} times, at least 3`);
});

test('a token that expires in the middle of a queue: getAuth is called, and all 10 edits apply exactly once', async (t) => {
  // Every write takes 60 ms, and the first token runs out 300 ms after it
  // is issued: a push of 10 mutations meets the expiry half way.
  const s = await startStack({apiArgs: ['-delay', '60ms']});
  t.after(() => s.close());
  let getAuthCalls = 0;
  const rep = s.newRep('alice', {auth: `Bearer alice~${Date.now() + 300}`});
  rep.getAuth = () => {
    getAuthCalls++;
    return `Bearer alice~${Date.now() + 60000}`;
  };
  for (let i = 0; i < 10; i++) await rep.mutate.createTodo({id: `q${i}`, title: `queued ${i}`});
  await sync(rep, {timeout: 30000});
  assert.ok(getAuthCalls >= 1, 'getAuth was called');
  const want = Object.fromEntries(Array.from({length: 10}, (_, i) => [`q${i}`, {title: `queued ${i}`, done: false}]));
  assert.deepEqual(await serverTodos(s.api, 'alice'), want, 'all 10 edits reached the API');
  const creates = s.api.effects().filter((l) => l.method === 'POST');
  assert.equal(creates.length, 10, 'each edit took effect exactly once');
  const expiredCalls = s.api.logs.filter((l) => l.msg === 'request' && l.status === 401).length;
  assert.ok(expiredCalls >= 1, 'the token did expire during the queue');
  assert.equal(psql(`SELECT count(*) FROM ${s.schema}.mutation_rejections`), '0', 'nothing was consumed as a rejection');
});

test('API down while the client mutates offline: every queued mutation arrives once, in order', async (t) => {
  const s = await startStack();
  t.after(() => s.close());
  const rep = s.newRep('alice');
  await rep.mutate.createTodo({id: 'before', title: 'before'});
  await sync(rep);
  await s.api.stop();
  for (let i = 1; i <= 10; i++) await rep.mutate.createTodo({id: `off${i}`, title: `offline ${i}`});
  await rep.mutate.updateTodo({id: 'off3', done: true});
  await rep.mutate.deleteTodo({id: 'off5'});
  await rep.push({now: true}); // answered 503: nothing lost, nothing advanced
  assert.equal((await rep.experimentalPendingMutations()).length, 12);
  await s.api.start();
  await sync(rep, {timeout: 30000});
  const server = await serverTodos(s.api, 'alice');
  assert.deepEqual(Object.keys(server), ['before', 'off1', 'off2', 'off3', 'off4', 'off6', 'off7', 'off8', 'off9', 'off10']);
  assert.equal(server.off3.done, true);
  assert.deepEqual(await todos(rep), server, 'the client converged');
  const keys = s.api.effects().map((e) => e.idempotency_key);
  assert.equal(new Set(keys).size, keys.length, 'no mutation took effect twice');
  // Keys are opaque HMACs: the calls themselves tell the order.
  const calls = s.api.effects().map((e) => `${e.method} ${e.path}`);
  assert.deepEqual(calls.slice(1), [
    ...Array.from({length: 10}, () => 'POST /api/todos'), 'PATCH /api/todos/off3', 'DELETE /api/todos/off5',
  ], 'in mutation order');
  assert.equal(keys.length, 13);
});

test('sidecar restarted mid-session (SIGKILL mid-push): nothing lost, nothing applied twice', async (t) => {
  // A slow API (40 ms a call) makes every kill land in the middle of a push.
  const s = await startStack({apiArgs: ['-delay', '40ms']});
  t.after(() => s.close());
  const rep = s.newRep('alice');
  const lmid = () => Number(psql(`SELECT coalesce(max(last_mutation_id), 0) FROM ${s.schema}.clients WHERE id = '${rep.clientID}'`));
  const partial = [];
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 10; i++) await rep.mutate.createTodo({id: `r${round}-${i}`, title: 'x'});
    const pushing = rep.push({now: true});
    await waitFor('the push to be under way', () => lmid() > round * 10, {interval: 5});
    await s.sidecar.stop('SIGKILL');
    await pushing;
    partial.push(lmid());
    await s.sidecar.start();
  }
  for (const [round, n] of partial.entries()) {
    assert.ok(n > round * 10 && n < (round + 1) * 10, `round ${round}: killed after ${n} mutations, want mid-push`);
  }
  await sync(rep, {timeout: 30000});
  const server = await serverTodos(s.api, 'alice');
  assert.equal(Object.keys(server).length, 30);
  assert.deepEqual(await todos(rep), server);
  const keys = s.api.effects().map((e) => e.idempotency_key);
  assert.equal(keys.length, 30, 'each mutation took effect exactly once');
  assert.equal(new Set(keys).size, 30);
  assert.equal(lmid(), 30);
  t.diagnostic(`killed after ${partial.join(', ')} mutations; ${s.api.replays().length} calls repeated and replayed by key`);
});

test('500 queued mutations from one client sync in order with no duplicate effects', async (t) => {
  const s = await startStack();
  t.after(() => s.close());
  const rep = s.newRep('alice');
  await rep.query(() => null);
  // The client is offline (the sidecar is down) while it queues 500 mutations.
  await s.sidecar.stop();
  for (let i = 1; i <= 500; i++) await rep.mutate.createTodo({id: `m${String(i).padStart(3, '0')}`, title: `#${i}`});
  assert.equal((await rep.experimentalPendingMutations()).length, 500);
  await s.sidecar.start();
  await sync(rep, {timeout: 60000});
  const keys = s.api.effects().map((e) => e.idempotency_key);
  assert.equal(keys.length, 500);
  assert.equal(new Set(keys).size, 500, 'no duplicate effects');
  // Keys are opaque HMACs: the API's list, in creation order, tells the order.
  const created = Object.keys(await serverTodos(s.api, 'alice'));
  assert.deepEqual(created, Array.from({length: 500}, (_, i) => `m${String(i + 1).padStart(3, '0')}`), 'applied in order');
  assert.equal(Object.keys(await todos(rep)).length, 500);
  assert.deepEqual(await todos(rep), await serverTodos(s.api, 'alice'));
});

test('deleted server state: the client gets ClientStateNotFound and recovers', async (t) => {
  const s = await startStack();
  t.after(() => s.close());
  let notFound = 0;
  const name = 'csnf';
  const rep = s.newRep('alice', {name});
  rep.onClientStateNotFound = () => { notFound++; };
  await rep.mutate.createTodo({id: 'kept', title: 'on the server'});
  await sync(rep);
  const group = await rep.clientGroupID;
  psql(`UPDATE ${s.schema}.client_groups SET deleted_at = now() WHERE id = '${group}'`);
  await rep.pull({now: true});
  await waitFor('onClientStateNotFound', () => notFound > 0);
  // What Replicache intends (a browser reloads the page): a new instance
  // starts a new client group and gets the server's state again.
  await rep.close();
  const fresh = s.newRep('alice', {name: 'csnf-after-reload'});
  await sync(fresh);
  assert.notEqual(await fresh.clientGroupID, group);
  assert.deepEqual(await todos(fresh), {kept: {title: 'on the server', done: false}});
});

test('a cookie that cannot grow any further: the client starts over instead of being refused for ever', async (t) => {
  const s = await startStack();
  t.after(() => s.close());
  let notFound = 0;
  const rep = s.newRep('alice', {name: 'cookie-limit'});
  rep.onClientStateNotFound = () => { notFound++; };
  await rep.mutate.createTodo({id: 'kept', title: 'on the server'});
  await sync(rep);
  const group = await rep.clientGroupID;
  // The group has issued orders up to just below JSON's largest safe integer.
  psql(`UPDATE ${s.schema}.client_groups SET cookie_order = 9007199254740990 WHERE id = '${group}'`);
  await rep.pull({now: true}); // issued 2^53-1, the last one there is
  await rep.pull({now: true}); // cannot be exceeded: ClientStateNotFound
  await waitFor('onClientStateNotFound', () => notFound > 0);
  const refused = s.sidecar.logs.filter((l) => l.msg === 'request failed' && l.status === 400);
  assert.equal(refused.length, 0, 'no pull was refused with 400');
  await rep.close();
  const fresh = s.newRep('alice', {name: 'cookie-limit-after-reload'});
  await sync(fresh);
  assert.deepEqual(await todos(fresh), {kept: {title: 'on the server', done: false}});
});

test('pass-through: the demo page and a plain API call work through the sidecar', async (t) => {
  const s = await startStack();
  t.after(() => s.close());
  const page = await fetch(s.sidecar.url + '/');
  assert.equal(page.status, 200);
  assert.match(await page.text(), /<title>todos/);
  const js = await fetch(s.sidecar.url + '/app.js');
  assert.equal(js.status, 200);
  const me = await fetch(s.sidecar.url + '/api/me', {headers: {Authorization: 'Bearer carol'}});
  assert.equal(me.status, 200);
  assert.deepEqual(await me.json(), {id: 'carol', name: 'carol'});
  const denied = await fetch(s.sidecar.url + '/api/todos');
  assert.equal(denied.status, 401, "the API's own answer passes through");
});
