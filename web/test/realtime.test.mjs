// Realtime with the real Replicache client: two sidecar replicas on one
// database. A client listening to replica A's poke stream pulls on each
// poke, and sees within a fraction of a second a mutation pushed through
// replica B, a write through B's pass-through, and a write announced with
// the invalidate hook; a writer's back-to-back pushes are paced to a poke
// per second, and none is lost.
import {test} from 'node:test';
import assert from 'node:assert/strict';
import {listen, makeRep, pullOnPoke, sleep, startStack, sync, todos, waitFor} from './harness.mjs';

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

test('pokes across replicas: a push, a pass-through write and an invalidate reach a client on the other replica', async (t) => {
  const env = {SIDECAR_INVALIDATE_TOKEN: 'hook-secret'};
  const s = await startStack({sidecarEnv: env});
  t.after(() => s.close());
  const b = await s.replica(env);

  // The reader pulls only when poked: no pull interval.
  const reader = s.newRep('alice');
  await sync(reader);
  let pokes = 0;
  const onPoke = pullOnPoke(reader);
  const stream = listen(s.sidecar.url + '/replicache/poke', 'alice', () => { pokes++; onPoke(); });
  await stream.opened;
  t.after(() => stream.close());
  const writer = makeRep(b.url, 'alice', 'writer-' + Date.now());
  s.reps.push(writer);

  const seen = async (id) => waitFor(`the reader to see ${id}`, async () => id in await todos(reader), {timeout: 5000, interval: 5});
  // One caller's pokes go out at most once per SIDECAR_POKE_CALLER_INTERVAL
  // (1 s): the first change of a quiet second at once. Each push below
  // comes after a quiet second (back-to-back pushes are measured after).
  const pace = 1000;
  const latencies = [];
  for (let i = 0; i < 9; i++) {
    await sleep(pace + 50);
    const id = `pushed-${i}`;
    await writer.mutate.createTodo({id, title: `pushed through B ${i}`});
    await writer.push({now: true}); // resolves with the push's answer
    const t0 = performance.now();
    await seen(id);
    latencies.push(performance.now() - t0);
  }
  t.diagnostic(`push answered by B → data in the client on A: median ${median(latencies).toFixed(0)} ms, max ${Math.max(...latencies).toFixed(0)} ms (${latencies.length} tries)`);
  assert.ok(median(latencies) < 1000, `median ${median(latencies)} ms`);

  // Back to back: the writer's pokes are paced, none is lost: each push is
  // seen within the interval (and the path).
  const paced = [];
  for (let i = 0; i < 5; i++) {
    const id = `paced-${i}`;
    await writer.mutate.createTodo({id, title: `pushed back to back ${i}`});
    await writer.push({now: true});
    const t0 = performance.now();
    await seen(id);
    paced.push(performance.now() - t0);
  }
  t.diagnostic(`back-to-back pushes, paced: median ${median(paced).toFixed(0)} ms, max ${Math.max(...paced).toFixed(0)} ms (${paced.length} tries)`);
  assert.ok(Math.max(...paced) < pace + 1000, `max ${Math.max(...paced)} ms`);

  // A legacy client writes through B's pass-through (alice, identified by
  // the auth call after the API's answer), after a quiet second.
  await sleep(pace + 50);
  let t0 = performance.now();
  const r = await fetch(b.url + '/api/todos', {method: 'POST', headers: {Authorization: 'Bearer alice', 'Content-Type': 'application/json'},
    body: JSON.stringify({id: 'legacy', title: 'written through the pass-through'})});
  assert.equal(r.status, 201);
  await seen('legacy');
  t.diagnostic(`pass-through write on B → data on A: ${(performance.now() - t0).toFixed(0)} ms`);

  // A write that bypasses the sidecar, announced with the invalidate hook.
  const direct = await fetch(s.api.url + '/api/todos', {method: 'POST', headers: {Authorization: 'Bearer alice', 'Content-Type': 'application/json'},
    body: JSON.stringify({id: 'direct', title: 'written straight to the API'})});
  assert.equal(direct.status, 201);
  t0 = performance.now();
  const inv = await fetch(b.url + '/replicache/invalidate', {method: 'POST', headers: {Authorization: 'Bearer hook-secret'},
    body: JSON.stringify({users: ['alice']})});
  assert.equal(inv.status, 202);
  await seen('direct');
  t.diagnostic(`invalidate on B → data on A: ${(performance.now() - t0).toFixed(0)} ms`);
  assert.ok(pokes >= 16, `${pokes} pokes`);
  assert.deepEqual(reader.logged, [], 'the reader logged no errors');
});
