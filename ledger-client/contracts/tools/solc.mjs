// Standard-JSON compilation with solc-js: reads the input on stdin, writes the output to the
// file named after --standard-json (see tools/solc), or prints the version for --version.
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';

const require = createRequire(import.meta.url);
const solc = require('solc');
const args = process.argv.slice(2);
if (args.includes('--version')) {
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
} else {
  const outFile = args[args.indexOf('--standard-json') + 1];
  const input = readFileSync(0, 'utf8');
  const findImports = (path) => {
    for (const base of ['.', 'node_modules']) {
      try {
        return { contents: readFileSync(resolve(base, path), 'utf8') };
      } catch (_) { /* try the next base */ }
    }
    return { error: `not found: ${path}` };
  };
  writeFileSync(outFile, solc.compile(input, { import: findImports }));
}
