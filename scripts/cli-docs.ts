/**
 * Writes docs/cli.md from the commander definitions (STYLE point 8: usage
 * text is generated, never copied by hand) and the exit-code table.
 * `node scripts/cli-docs.ts` rewrites it; test/unit/cli/docs.test.ts fails
 * when it is out of date.
 */
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { cliReference } from "../src/cli/reference.ts";

const target = fileURLToPath(new URL("../docs/cli.md", import.meta.url));
writeFileSync(target, cliReference());
process.stdout.write(`wrote ${target}\n`);
