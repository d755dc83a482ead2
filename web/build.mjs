// Bundles the demo web app (app/) into dist/, which cmd/todo-api serves.
import * as esbuild from 'esbuild';
import {cp, mkdir} from 'node:fs/promises';

const out = new URL('./dist/', import.meta.url).pathname;
await mkdir(out, {recursive: true});
await esbuild.build({
  entryPoints: [new URL('./app/app.js', import.meta.url).pathname],
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  sourcemap: true,
  outfile: out + 'app.js',
  logLevel: 'warning',
});
for (const f of ['index.html', 'style.css']) {
  await cp(new URL('./app/' + f, import.meta.url), out + f);
}
console.log('built', out);
