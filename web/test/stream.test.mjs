// A reset answer goes out while its view is read (views over 256 KiB), and
// is never a partial view: when a later page fails after the answer has
// started, the answer is broken off before its JSON completes. Through the
// real Replicache client: the client's view stays as it was, and the next
// pull after the fault clears brings the whole view.
import {test} from 'node:test';
import assert from 'node:assert/strict';
import {serverTodos, startStack, sync, todos, waitFor} from './harness.mjs';

const sorted = (o) => JSON.stringify(Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
const pulls = (sidecar) => sidecar.logs.filter((l) => l.msg === 'pull');
const brokenOff = (sidecar) => sidecar.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('pull answer broken off'));

// createTodos makes n todos of about 500 bytes each straight through the
// API, a few at a time.
async function createTodos(api, user, from, n) {
  const one = async (i) => {
    const id = `t${String(i).padStart(4, '0')}`;
    const r = await fetch(api.url + '/api/todos', {
      method: 'POST',
      headers: {Authorization: `Bearer ${user}`, 'Content-Type': 'application/json'},
      body: JSON.stringify({id, title: `${id} `.repeat(80)}),
    });
    assert.equal(r.status, 201, await r.text());
  };
  for (let i = from; i < from + n; i += 25) {
    await Promise.all(Array.from({length: Math.min(25, from + n - i)}, (_, k) => one(i + k)));
  }
}

async function setFault(api, query) {
  const r = await fetch(api.url + '/test/fault' + (query ? '?' + query : ''), {method: query ? 'PUT' : 'DELETE'});
  assert.equal(r.status, 204, await r.text());
}

// 1,000 todos of 500 bytes, 100 a page: 10 pages of about 50 KB; the
// answer starts going out at page 6, so a failed page 9 comes after it
// started.
const apiArgs = ['-faults', '-page-size', '100'];
const fault = 'path=/api/todos&page=9&status=503';

test('reset mode: a streamed answer broken off by a failed page leaves the client view as it was', async (t) => {
  const s = await startStack({sidecarEnv: {SIDECAR_PATCH_MODE: 'reset'}, apiArgs});
  t.after(() => s.close());
  await createTodos(s.api, 'alice', 0, 1000);
  const rep = s.newRep('alice');
  await rep.pull({now: true});
  await waitFor('the first view', async () => Object.keys(await todos(rep)).length === 1000);
  assert.ok(pulls(s.sidecar).some((l) => l.streamed && l.puts === 1001), 'the first answer was streamed: ' + JSON.stringify(pulls(s.sidecar)));

  // Page 9 of the todos fails, then the view changes on the server: every
  // pull is a reset (clear, then every entry), so a client that applied a
  // partial answer would lose todos. The fault comes first, and the pull
  // below waits out any pull begun before it: a pull() made while the
  // client's startup pull is in flight resolves when that one ends and
  // queues one more, which could otherwise read the changed view whole
  // before the fault is set (seen in CI).
  await setFault(s.api, fault);
  await rep.pull({now: true}).catch(() => {});
  const before = await todos(rep);
  assert.equal(Object.keys(before).length, 1000);
  await createTodos(s.api, 'alice', 1000, 1);
  const del = await fetch(s.api.url + '/api/todos/t0005', {method: 'DELETE', headers: {Authorization: 'Bearer alice'}});
  assert.equal(del.status, 204);
  const n = brokenOff(s.sidecar).length;
  await rep.pull({now: true}).catch(() => {});
  await waitFor('the answer to be broken off', () => brokenOff(s.sidecar).length > n);
  // The client pulls one at a time: once a second pull is broken off too,
  // it has done all it will with the first answer.
  await rep.pull({now: true}).catch(() => {});
  await waitFor('a second answer to be broken off', () => brokenOff(s.sidecar).length > n + 1);
  const cut = brokenOff(s.sidecar)[n];
  assert.ok(cut.bytes > 256 * 1024, 'the answer had started before it was broken off: ' + JSON.stringify(cut));
  assert.equal(sorted(await todos(rep)), sorted(before), "the client's view is as it was");

  await setFault(s.api, '');
  await rep.pull({now: true});
  const want = await serverTodos(s.api, 'alice');
  assert.equal(Object.keys(want).length, 1000);
  await waitFor('the whole view after the fault cleared', async () => sorted(await todos(rep)) === sorted(want));
  assert.ok(!('t0005' in (await todos(rep))) && 't1000' in (await todos(rep)));
});

test('diff mode: a first pull broken off leaves the client empty; the next brings the view, and diffs follow it', async (t) => {
  const s = await startStack({apiArgs});
  t.after(() => s.close());
  await createTodos(s.api, 'alice', 0, 1000);
  await setFault(s.api, fault);
  const rep = s.newRep('alice');
  await rep.pull({now: true}).catch(() => {});
  await waitFor('the answer to be broken off', () => brokenOff(s.sidecar).length > 0);
  await rep.pull({now: true}).catch(() => {});
  await waitFor('a second answer to be broken off', () => brokenOff(s.sidecar).length > 1);
  assert.deepEqual(await todos(rep), {}, 'the client holds nothing of the broken answer');

  await setFault(s.api, '');
  await rep.pull({now: true});
  await waitFor('the whole view', async () => Object.keys(await todos(rep)).length === 1000);
  assert.ok(pulls(s.sidecar).some((l) => l.streamed && l.patch === 'reset'), 'the reset was streamed');

  // The record the streamed reset committed is what the client holds: a
  // change comes as a diff of exactly it. The delete goes through the
  // sidecar (a push): the mapping reads the todos by their changes
  // (updated_after), which a delete made behind the sidecar's back is not
  // among until a full read.
  const before = pulls(s.sidecar).length;
  await rep.mutate.deleteTodo({id: 't0005'});
  await sync(rep);
  await waitFor('the delete', async () => !('t0005' in (await serverTodos(s.api, 'alice'))));
  const diff = pulls(s.sidecar).slice(before).find((l) => l.patch === 'diff' && l.dels > 0);
  assert.ok(diff && diff.dels === 1 && diff.puts === 0, 'a diff of one del: ' + JSON.stringify(pulls(s.sidecar).slice(before)));
  assert.equal(sorted(await todos(rep)), sorted(await serverTodos(s.api, 'alice')));
});
