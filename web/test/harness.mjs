// Test harness for the end-to-end tests: real processes (bin/todo-api,
// bin/replicache-sidecar), a real Postgres (DATABASE_URL; `make test` starts
// a throwaway one), and the real Replicache client running headless.
import {spawn, execFileSync} from 'node:child_process';
import {randomBytes} from 'node:crypto';
import {existsSync, mkdtempSync, readdirSync, rmSync} from 'node:fs';
import net from 'node:net';
import {tmpdir} from 'node:os';
import {join} from 'node:path';
import {setTimeout as sleep} from 'node:timers/promises';
import {Replicache} from 'replicache';
import {mutators} from '../app/mutators.js';

export {sleep};
export const root = new URL('../../', import.meta.url).pathname;
const bin = join(root, 'bin');
export const mapping = join(root, 'deploy/examples/todo/mapping.json');

export function databaseURL() {
  const url = process.env.SIDECAR_DATABASE_URL || process.env.DATABASE_URL;
  if (!url) throw new Error('no database: set DATABASE_URL, or run `make test`, which starts a throwaway Postgres');
  return url;
}

// freePort picks a port nothing listens on, never one it gave before (a
// closed port may come round again: a sidecar's public and admin ports
// must differ). Between its answer and the process's listen another
// process may take it: a first start whose listen fails is tried again on
// fresh ports (Process.start).
const givenPorts = new Set();
export async function freePort() {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const srv = net.createServer();
      srv.unref();
      srv.on('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const {port} = srv.address();
        srv.close(() => resolve(port));
      });
    });
    if (!givenPorts.has(port)) {
      givenPorts.add(port);
      return port;
    }
  }
}

export async function waitFor(what, cond, {timeout = 15000, interval = 25} = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      if (await cond()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(interval);
  }
}

// A probe gives up after a while (it is tried again): a port another
// process took may accept and never answer.
const probe = (url) => fetch(url, {signal: AbortSignal.timeout(5000)});

async function httpOK(url) {
  const r = await probe(url);
  await r.arrayBuffer();
  return r.ok;
}

// The sidecar serves pushes and pulls: ready, and its database up (it is
// ready before its database is: the pass-through serves without it).
async function sidecarServes(admin) {
  const r = await probe(admin + '/readyz');
  const body = await r.json().catch(() => ({}));
  return r.ok && body.database === 'up';
}

// A child process whose JSON log lines are collected.
class Process {
  constructor(name, path, args, env) {
    Object.assign(this, {name, path, args, env, logs: [], proc: null});
  }

  // start starts the process and waits until it is ready (isReady). A first
  // start whose listen fails because another process took a port between
  // freePort and the listen is tried again on fresh ports (newPorts); a
  // restart keeps its ports (clients know them).
  async start() {
    for (let attempt = 1; ; attempt++) {
      const from = this.logs.length;
      this.spawn();
      try {
        await this.ready(this.readiness, () => this.isReady());
        this.started = true;
        return;
      } catch (e) {
        const taken = this.logs.slice(from).some((l) => /address already in use/.test(l.msg));
        if (this.started || !taken || attempt === 3) throw e;
        await this.newPorts();
      }
    }
  }

  spawn() {
    const proc = spawn(this.path, this.args, {env: {...process.env, ...this.env}, stdio: ['ignore', 'ignore', 'pipe']});
    this.proc = proc;
    // 'close', not 'exit': its last log lines are read by then.
    this.exited = new Promise((resolve) => proc.on('close', (code, signal) => resolve({code, signal})));
    let buf = '';
    proc.stderr.on('data', (chunk) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          this.logs.push(JSON.parse(line));
        } catch {
          this.logs.push({msg: line});
        }
        if (process.env.E2E_VERBOSE) console.error(`[${this.name}] ${line}`);
      }
    });
  }

  // ready waits for cond, and fails at once if the process exits first;
  // either failure says how it exited and ends with its last log lines.
  async ready(what, cond) {
    let exit = null;
    this.exited.then((e) => { exit = e; });
    let err = null;
    try {
      await waitFor(what, async () => exit !== null || await Promise.race([cond(), this.exited]));
    } catch (e) {
      err = e.message;
    }
    if (!err && exit === null) return;
    if (exit !== null) err = `${this.name} exited (${exit.signal || 'status ' + exit.code}) before ${what}`;
    else await this.stop('SIGKILL'); // not left running after its test
    const tail = this.logs.slice(-15).map((l) => '  ' + JSON.stringify(l)).join('\n');
    throw new Error(`${err}; its last log lines:\n${tail}`);
  }

  async stop(signal = 'SIGTERM') {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill(signal);
    await this.exited;
  }
}

// The demo legacy service, with its data in a file so it survives restarts.
export class TodoAPI extends Process {
  constructor(dir, port, args = []) {
    super('todo-api', join(bin, 'todo-api'), [], {});
    Object.assign(this, {dir, extraArgs: args, readiness: 'todo-api health'});
    this.listenOn(port);
  }

  listenOn(port) {
    this.args = ['-addr', `127.0.0.1:${port}`, '-state', join(this.dir, 'state.json'),
      '-static', join(root, 'web/dist'), '-page-size', '50', ...this.extraArgs];
    this.url = `http://127.0.0.1:${port}`;
  }

  async newPorts() {
    this.listenOn(await freePort());
  }

  isReady() {
    return httpOK(this.url + '/healthz');
  }

  // Mutating calls that changed state (not replays), in arrival order.
  effects() {
    return this.logs.filter((l) => l.msg === 'request' && l.method !== 'GET' && l.status < 300 && !l.replayed);
  }

  // Mutating calls answered from the idempotency store (repeats).
  replays() {
    return this.logs.filter((l) => l.msg === 'request' && l.replayed);
  }
}

export class Sidecar extends Process {
  constructor({upstream, schema, port, adminPort, env = {}}) {
    super('sidecar', join(bin, 'replicache-sidecar'), [], {
      SIDECAR_UPSTREAM_URL: upstream,
      SIDECAR_DATABASE_URL: databaseURL(),
      SIDECAR_MAPPING_FILE: mapping,
      SIDECAR_DB_SCHEMA: schema,
      SIDECAR_AUTH_PATH: '/api/me',
      SIDECAR_FORWARD_HEADERS: 'Authorization,Cookie', // the demo page's poke stream sends a cookie
      SIDECAR_SHUTDOWN_TIMEOUT: '5s',
      SIDECAR_UPSTREAM_TIMEOUT: '3s',
      ...env,
    });
    this.readiness = 'sidecar readiness';
    this.listenOn(port, adminPort);
  }

  listenOn(port, adminPort) {
    Object.assign(this.env, {SIDECAR_LISTEN_ADDR: `127.0.0.1:${port}`, SIDECAR_ADMIN_ADDR: `127.0.0.1:${adminPort}`});
    this.url = `http://127.0.0.1:${port}`;
    this.admin = `http://127.0.0.1:${adminPort}`;
  }

  async newPorts() {
    this.listenOn(await freePort(), await freePort());
  }

  isReady() {
    return sidecarServes(this.admin);
  }
}

// A whole stack: todo-api + sidecar on a fresh schema. Call close() at the end.
// If it cannot start, what did start is stopped and removed before it
// throws: a test's cleanup is registered after startStack returns.
export async function startStack({sidecarEnv, apiArgs} = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'e2e-'));
  const schema = 'e2e_' + randomBytes(5).toString('hex');
  const api = new TodoAPI(dir, await freePort(), apiArgs);
  const sidecar = new Sidecar({upstream: api.url, schema, port: await freePort(), adminPort: await freePort(), env: sidecarEnv});
  const cleanup = async () => {
    await sidecar.stop();
    await api.stop();
    psql(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    rmSync(dir, {recursive: true, force: true});
  };
  try {
    await api.start();
    sidecar.env.SIDECAR_UPSTREAM_URL = api.url; // its port may have changed (Process.start)
    await sidecar.start();
  } catch (e) {
    await cleanup();
    throw e;
  }
  const reps = [];
  const replicas = [];
  return {
    api, sidecar, schema, reps,
    // replica starts another sidecar on the same schema and API, stopped
    // by close() (even when it fails to start: register close() first).
    async replica(env = sidecarEnv) {
      const r = new Sidecar({upstream: api.url, schema, port: await freePort(), adminPort: await freePort(), env});
      replicas.push(r);
      await r.start();
      return r;
    },
    // newRep makes a Replicache client of user; the same name means the
    // same client group (like two tabs of one browser profile).
    newRep(user, {name = `${user}-${randomBytes(4).toString('hex')}`, ...opts} = {}) {
      const rep = makeRep(sidecar.url, user, name, opts);
      reps.push(rep);
      return rep;
    },
    async close() {
      for (const r of replicas) await r.stop();
      for (const rep of reps) {
        if (!rep.closed) {
          await rep.query(() => null).catch(() => {});
          await rep.close();
        }
      }
      await cleanup();
    },
  };
}

export function makeRep(base, user, name, opts = {}) {
  const errors = [];
  const rep = new Replicache({
    name,
    kvStore: 'mem',
    pushURL: base + '/replicache/push',
    pullURL: base + '/replicache/pull',
    auth: `Bearer ${user}`,
    pullInterval: null, // tests pull explicitly
    mutators,
    logLevel: 'error',
    logSinks: [{log: (level, ctx, ...args) => errors.push(args.map(String).join(' '))}],
    ...opts,
  });
  rep.logged = errors;
  return rep;
}

// sync pushes and pulls until the client has no pending mutations.
export async function sync(rep, {timeout = 20000} = {}) {
  await waitFor('pending mutations to drain', async () => {
    await rep.push({now: true});
    await rep.pull({now: true});
    return (await rep.experimentalPendingMutations()).length === 0;
  }, {timeout, interval: 50});
}

// todos returns the client's todos as {id: {title, done}}.
export async function todos(rep) {
  const list = await rep.query((tx) => tx.scan({prefix: 'todo/'}).values().toArray());
  return Object.fromEntries(list.map((t) => [t.id, {title: t.title, done: t.done}]));
}

// serverTodos reads the user's todos straight from the API.
export async function serverTodos(api, user) {
  const out = {};
  for (let url = api.url + '/api/todos'; url;) {
    const r = await fetch(url, {headers: {Authorization: `Bearer ${user}`}});
    const body = await r.json();
    for (const t of body.todos) out[t.id] = {title: t.title, done: t.done};
    const next = /<([^>]+)>;\s*rel="next"/.exec(r.headers.get('link') || '');
    url = next ? api.url + next[1] : null;
  }
  return out;
}

// psqlPath finds psql: on PATH, else beside the Postgres server binaries.
function psqlPath() {
  for (const dir of (process.env.PATH || '').split(':')) {
    if (dir && existsSync(join(dir, 'psql'))) return join(dir, 'psql');
  }
  const versions = existsSync('/usr/lib/postgresql') ? readdirSync('/usr/lib/postgresql').sort((a, b) => b - a) : [];
  for (const v of versions) {
    const p = `/usr/lib/postgresql/${v}/bin/psql`;
    if (existsSync(p)) return p;
  }
  throw new Error('psql not found: install postgresql-client');
}

export function psql(sql) {
  return execFileSync(psqlPath(), [databaseURL(), '-v', 'ON_ERROR_STOP=1', '-qAtc', sql], {
    encoding: 'utf8',
    env: {...process.env, PGOPTIONS: '-c client_min_messages=warning'},
  }).trim();
}

// pullOnPoke is what a client does on a poke: pull. A poke that comes as
// the test closes the client is ignored; a pull that fails otherwise is an
// unhandled rejection, which fails the test.
export function pullOnPoke(rep) {
  return () => {
    if (rep.closed) return;
    rep.pull().catch((e) => {
      if (!rep.closed) throw e;
    });
  };
}

// listen reads a poke stream with fetch (Node has no EventSource) and
// calls onPoke for each poke; it returns a function that closes it.
export function listen(url, user, onPoke) {
  const ctrl = new AbortController();
  const opened = (async () => {
    const r = await fetch(url, {headers: {Authorization: `Bearer ${user}`}, signal: ctrl.signal});
    if (r.status !== 200) throw new Error(`poke stream answered ${r.status}`);
    return r.body.getReader();
  })();
  (async () => {
    const reader = await opened;
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const {value, done} = await reader.read().catch(() => ({done: true}));
      if (done) return;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const event = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (event.includes('event: poke')) onPoke();
      }
    }
  })();
  return {opened, close: () => ctrl.abort()};
}
