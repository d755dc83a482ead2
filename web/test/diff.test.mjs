// Diff mode with the real Replicache client: two sidecar replicas share one
// database; clients pulling through either get put/del patches from their
// group's view record, and end up holding exactly what a fresh client gets.
import {test} from 'node:test';
import assert from 'node:assert/strict';
import {listen, makeRep, psql, pullOnPoke, serverTodos, startStack, sync, todos, waitFor} from './harness.mjs';

const sorted = (o) => JSON.stringify(Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
const pulls = (sidecar) => sidecar.logs.filter((l) => l.msg === 'pull');

test('diff mode: put and del patches through two replicas converge to what a reset gives', async (t) => {
  const s = await startStack();
  t.after(() => s.close());
  const b = await s.replica();
  const writer = s.newRep('alice');
  const reader = makeRep(b.url, 'alice', 'reader-' + Date.now());
  s.reps.push(reader);
  // The reader also pulls when replica B pokes it, as a real client does.
  const stream = listen(b.url + '/replicache/poke', 'alice', pullOnPoke(reader));
  await stream.opened;
  t.after(() => stream.close());

  for (let i = 0; i < 30; i++) await writer.mutate.createTodo({id: `t${i}`, title: `todo ${i}`});
  await sync(writer);
  await reader.pull({now: true});
  await waitFor('the reader to see 30 todos', async () => Object.keys(await todos(reader)).length === 30);
  // The reader is current once one of its pulls answers an empty diff (a
  // client pulls one at a time, so none before it is still under way);
  // from here on B's pulls are the reader's answers to the changes below.
  // (Counting from after the writer's sync missed a poked pull that came
  // between the writer's first push and its last: seen in CI.)
  const settled = pulls(b).length;
  await reader.pull({now: true});
  await waitFor('an empty diff for the reader', () => pulls(b).slice(settled).some((l) => l.puts + l.dels === 0));
  const before = pulls(b).length;

  // A few changes: one update, two deletes, one create, through replica A.
  await writer.mutate.updateTodo({id: 't3', done: true});
  await writer.mutate.deleteTodo({id: 't7'});
  await writer.mutate.deleteTodo({id: 't8'});
  await writer.mutate.createTodo({id: 'new', title: 'added later'});
  await sync(writer);
  await reader.pull({now: true});
  const want = await serverTodos(s.api, 'alice');
  await waitFor('the reader to converge', async () => sorted(await todos(reader)) === sorted(want));

  // The reader's pulls through replica B were diffs of exactly the changes
  // (in one pull, or spread over its own pull and a poked one).
  const since = pulls(b).slice(before); // only the reader pulls through B
  assert.ok(since.every((l) => l.patch === 'diff'), 'only diffs: ' + JSON.stringify(since));
  assert.equal(since.reduce((n, l) => n + l.puts, 0), 2, 'one update and one create: ' + JSON.stringify(since));
  assert.equal(since.reduce((n, l) => n + l.dels, 0), 2, 'two deletes: ' + JSON.stringify(since));

  // Nothing changed: the next pull is an empty diff, and the client is fine.
  const n = pulls(b).length;
  await reader.pull({now: true});
  await waitFor('another pull', () => pulls(b).length > n);
  const empty = pulls(b).slice(n)[0];
  assert.equal(empty.patch, 'diff');
  assert.equal(empty.puts + empty.dels, 0);

  // A fresh client (a reset) holds exactly what the diffed one holds.
  const fresh = makeRep(b.url, 'alice', 'fresh-' + Date.now());
  s.reps.push(fresh);
  await fresh.pull({now: true});
  await waitFor('the fresh client', async () => Object.keys(await todos(fresh)).length === Object.keys(want).length);
  assert.deepEqual(await todos(fresh), await todos(reader));
  assert.deepEqual(await todos(reader), want);
  assert.deepEqual(reader.logged, [], 'the client logged no errors');
});

test('database recreated: a cookie of the old one gets ClientStateNotFound and the client recovers', async (t) => {
  const s = await startStack();
  t.after(() => s.close());
  let notFound = 0;
  const rep = s.newRep('alice', {name: 'epoch'});
  rep.onClientStateNotFound = () => { notFound++; };
  await rep.mutate.createTodo({id: 'kept', title: 'on the server'});
  await sync(rep);
  // The sidecar's schema is lost and recreated (a new database, or one
  // restored from elsewhere): a new epoch.
  await s.sidecar.stop();
  psql(`DROP SCHEMA ${s.schema} CASCADE`);
  await s.sidecar.start();
  await rep.pull({now: true});
  await waitFor('onClientStateNotFound', () => notFound > 0);
  await rep.close();
  // The page reloads: the same name, so Replicache forks a new client
  // group from the disabled one's snapshot, old cookie included. The new
  // group is answered normally (a reset), not disabled again.
  let again = 0;
  const fresh = s.newRep('alice', {name: 'epoch'});
  fresh.onClientStateNotFound = () => { again++; };
  await sync(fresh);
  assert.notEqual(await fresh.clientGroupID, await rep.clientGroupID);
  assert.deepEqual(await todos(fresh), {kept: {title: 'on the server', done: false}});
  await fresh.mutate.createTodo({id: 'after', title: 'after the reload'});
  await sync(fresh);
  assert.equal(again, 0, 'the reloaded page was not disabled again');
  assert.equal(Object.keys(await serverTodos(s.api, 'alice')).length, 2);
});

test('client-group lifecycle: an idle group is swept; its client starts over, a busy one is kept (two replicas)', async (t) => {
  const env = {SIDECAR_CLIENT_GROUP_TTL: '2s', SIDECAR_GC_INTERVAL: '200ms'};
  const s = await startStack({sidecarEnv: env});
  t.after(() => s.close());
  const b = await s.replica(env);
  let notFound = 0;
  const idle = s.newRep('alice', {name: 'lifecycle-idle'});
  idle.onClientStateNotFound = () => { notFound++; };
  await idle.mutate.createTodo({id: 'kept', title: 'on the server'});
  await sync(idle);
  const busy = makeRep(b.url, 'alice', 'lifecycle-busy');
  s.reps.push(busy);
  busy.onClientStateNotFound = () => { throw new Error('the busy group was swept'); };
  // busy keeps pulling through replica B while idle does nothing.
  const idleGroup = await idle.clientGroupID;
  const busyGroup = await busy.clientGroupID;
  await waitFor('the idle group to be swept', async () => {
    await busy.pull({now: true});
    return psql(`SELECT count(*) FROM ${s.schema}.client_groups WHERE id = '${idleGroup}' AND deleted_at IS NOT NULL`) === '1';
  }, {timeout: 15000, interval: 300});
  assert.equal(psql(`SELECT count(*) FROM ${s.schema}.client_groups WHERE id = '${busyGroup}' AND deleted_at IS NULL`), '1');
  await idle.pull({now: true});
  await waitFor('onClientStateNotFound', () => notFound > 0);
  await idle.close();
  // The page reloads: a new group forked from the deleted one's state.
  const again = s.newRep('alice', {name: 'lifecycle-idle'});
  await sync(again);
  assert.notEqual(await again.clientGroupID, idleGroup);
  assert.deepEqual(await todos(again), {kept: {title: 'on the server', done: false}});
  const swept = s.sidecar.logs.concat(b.logs).filter((l) => l.msg === 'swept idle client groups');
  assert.ok(swept.length > 0, 'a replica logged the sweep');
});
