// Bundles livekit-client (pinned by package-lock.json) into the one ES module the page
// imports. The output is committed, so installing duplex needs no Node; CI rebuilds it
// elsewhere (`node build.mjs OUT`) and fails when it differs from what is committed.
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const out =
  process.argv[2] ??
  fileURLToPath(
    new URL('../../services/duplex/orchestrator/web/vendor/livekit-client.mjs', import.meta.url),
  );

await build({
  entryPoints: [fileURLToPath(new URL('./entry.js', import.meta.url))],
  outfile: out,
  bundle: true,
  format: 'esm',
  target: 'es2020',
  minify: true,
  legalComments: 'eof',
  logLevel: 'warning',
});
console.log(`wrote ${out}`);
