// Validate .glb/.gltf files with the Khronos glTF Validator (npm package "gltf-validator").
//
//   node benchmarks/validate_gltf.mjs FILE [FILE ...]
//
// The validator is looked up in $GLTF_VALIDATOR_DIR (a node_modules folder or a folder holding one), then in
// .cache/node/ under the repository root. Install it there with:
//   mkdir -p .cache/node && cd .cache/node && npm install gltf-validator
// Prints one JSON line per file: {file, errors, warnings, infos, hints, messages}.
// Exit status: 0 when no file has errors, 1 when some do, 2 when the validator cannot be found.
import { createRequire } from "node:module";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const candidates = [process.env.GLTF_VALIDATOR_DIR, join(repo, ".cache", "node")].filter(Boolean);

let validator = null;
for (const dir of candidates) {
  for (const base of [dir, join(dir, "node_modules")]) {
    if (existsSync(join(base, "gltf-validator", "package.json"))) {
      validator = createRequire(join(base, "noop.js"))("gltf-validator");
      break;
    }
  }
  if (validator) break;
}
if (!validator) {
  console.error(`gltf-validator not found in ${candidates.join(", ")}; run: npm install gltf-validator there`);
  process.exit(2);
}

let failed = false;
for (const file of process.argv.slice(2)) {
  const report = await validator.validateBytes(new Uint8Array(readFileSync(file)), { maxIssues: 100 });
  const i = report.issues;
  const messages = i.messages.map((m) => `${["error", "warning", "info", "hint"][m.severity]} ${m.code}: ${m.message} (${m.pointer ?? ""})`);
  console.log(JSON.stringify({ file, errors: i.numErrors, warnings: i.numWarnings, infos: i.numInfos, hints: i.numHints, messages }));
  if (i.numErrors > 0) failed = true;
}
process.exit(failed ? 1 : 0);
