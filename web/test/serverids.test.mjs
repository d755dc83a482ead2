// Ids the API chooses, through the real Replicache client: todo-api runs
// with -assign-ids (a create takes no id from the client; the API answers
// the integer it chose), and the mapping's createTodo declares serverID.
import {test} from 'node:test';
import assert from 'node:assert/strict';
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {join} from 'node:path';
import {psql, serverTodos, startStack, todos, waitFor} from './harness.mjs';

// The demo's mapping, but the API chooses the ids: the create sends only
// the title and reads the id from the answer.
const mapping = {
  mutators: {
    createTodo: {method: 'POST', path: '/api/todos', body: {title: '{args.title}'},
      serverID: {arg: 'id', field: 'id'}},
    updateTodo: {method: 'PATCH', path: '/api/todos/{args.id}',
      body: {title: '{args.title?}', done: '{args.done?}'}},
    deleteTodo: {method: 'DELETE', path: '/api/todos/{args.id}'},
  },
  clientView: [
    {path: '/api/todos', items: 'todos', key: 'todo/{id}', pagination: {type: 'link'}},
    {path: '/api/me', key: 'me'},
  ],
};

test('ids the API chooses: edits made under temporary ids reach the todo the API created, before and after any pull', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'e2e-serverids-'));
  t.after(() => rmSync(dir, {recursive: true, force: true}));
  const file = join(dir, 'mapping.json');
  writeFileSync(file, JSON.stringify(mapping));
  const s = await startStack({apiArgs: ['-assign-ids'], sidecarEnv: {SIDECAR_MAPPING_FILE: file}});
  t.after(() => s.close());
  // Pulls go when the test says (pullInterval null), and so do pushes:
  // the client's own push comes 2 s after a mutation (pushDelay), and a
  // push that finds nothing new is harmless.
  const rep = s.newRep('alice', {pushDelay: 2000});
  // The client's first pull (it makes one when it starts) must be over
  // before anything is pushed: a first pull that reached the sidecar after
  // the first push would confirm its mutations before the second one.
  await waitFor('the first pull', async () => rep.query((tx) => tx.has('me')));
  // The client also pushes when it opens, pushDelay after: an attempt with
  // nothing to send. Were that wait to end among the mutations below (a
  // first pull taking about 2 s), its push would be under way when the
  // test pushes, and push({now}) resolves when the push under way ends,
  // not its own. Pushing now ends that wait here.
  await rep.push({now: true});

  // One push: two creates under temporary ids, an edit of one, a delete of the other.
  await rep.mutate.createTodo({id: 'tmp-1', title: 'milk'});
  await rep.mutate.createTodo({id: 'tmp-2', title: 'bread'});
  await rep.mutate.updateTodo({id: 'tmp-1', done: true});
  await rep.mutate.deleteTodo({id: 'tmp-2'});
  assert.deepEqual(await todos(rep), {'tmp-1': {title: 'milk', done: true}}, 'optimistic, under the temporary id');
  await rep.push({now: true});
  assert.equal((await rep.experimentalPendingMutations()).length, 4, 'pushed, and no pull yet');

  // A second push before any pull renames tmp-1 (the client sends its
  // four pending mutations again, and the new one).
  await rep.mutate.updateTodo({id: 'tmp-1', title: 'oat milk'});
  await rep.push({now: true});
  assert.equal((await rep.experimentalPendingMutations()).length, 5, 'pushed again, still no pull');

  // The sidecar and the API log a request before they answer it, but the
  // lines come through a pipe, which node may read after the answer: a
  // push({now}) has resolved with the rename's push line still unread
  // (seen). Wait for the lines, then compare them.
  const pushes = () => s.sidecar.logs.filter((l) => l.msg === 'push' && l.applied > 0)
    .map(({mutations, applied, duplicate}) => ({mutations, applied, duplicate}));
  const calls = () => s.api.logs.filter((l) => l.msg === 'request' && l.method !== 'GET').map((l) => `${l.method} ${l.path} ${l.status}`);
  await waitFor('two pushes in the sidecar log, five calls in the API log', () => pushes().length >= 2 && calls().length >= 5).catch(() => {});
  assert.deepEqual(pushes(), [{mutations: 4, applied: 4, duplicate: 0}, {mutations: 5, applied: 1, duplicate: 4}],
    'the four mutations in one push, the rename in a later one');
  assert.deepEqual(await serverTodos(s.api, 'alice'), {1: {title: 'oat milk', done: true}},
    'the API holds exactly one todo, renamed and edited');
  assert.deepEqual(calls(), ['POST /api/todos 201', 'POST /api/todos 201', 'PATCH /api/todos/1 200', 'DELETE /api/todos/2 204',
    'PATCH /api/todos/1 200'], 'every call after a create carried the id the API chose');

  // The pull confirms all five: the view holds the API's id, and the
  // client's optimistic todo under tmp-1 is gone.
  await rep.pull({now: true});
  await waitFor('the pull to confirm the mutations', async () => (await rep.experimentalPendingMutations()).length === 0);
  assert.deepEqual(await todos(rep), {1: {title: 'oat milk', done: true}});
  assert.equal(await rep.query((tx) => tx.has('todo/tmp-1')), false, 'the temporary todo is gone');
  assert.equal((await rep.query((tx) => tx.get('todo/1'))).id, 1, 'the id is the number the API gave');
  assert.equal(psql(`SELECT count(*) FROM ${s.schema}.mutation_rejections`), '0', 'nothing was rejected');
  assert.equal(psql(`SELECT string_agg(convert_from(temp_id, 'UTF8') || '=' || convert_from(server_id, 'UTF8'), ',' ORDER BY temp_id) FROM ${s.schema}.server_ids`),
    'tmp-1=1,tmp-2=2', 'both creates recorded, once');
});
