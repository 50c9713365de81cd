// Decide a list of requests with node-casbin (the engine of the Casbin online editor):
//   node casbin_parity.js MODEL_CONF POLICY_CSV REQUESTS_JSON
// REQUESTS_JSON: [[jurisdiction, purpose, category, [facts...]], ...]
// Prints [[allowed, [matched rule fields...]], ...] as JSON, in the same order.
'use strict';
const fs = require('fs');
const { newEnforcer } = require('casbin');

async function main() {
  const [model, policy, requests] = process.argv.slice(2);
  const enforcer = await newEnforcer(model, policy);
  const out = [];
  for (const request of JSON.parse(fs.readFileSync(requests, 'utf8'))) {
    out.push(await enforcer.enforceEx(...request));
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  process.stderr.write(`node-casbin: ${err && err.message ? err.message : err}\n`);
  process.exit(1);
});
