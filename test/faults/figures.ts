/**
 * vitest global setup of the fault suite: each test file appends its figures
 * (crash points, hostile cases refused, fuzz inputs per parser) to one file
 * through helpers.ts `recordFigure`; when every file has run, the summary is
 * printed here, after vitest's own report.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readFigures } from "./helpers.ts";

export default function setup(): () => void {
  const dir = mkdtempSync(join(tmpdir(), "abforge-faults-"));
  const file = join(dir, "figures.jsonl");
  process.env.ABFORGE_FAULT_FIGURES = file;
  return () => {
    const figures = readFigures(file);
    rmSync(dir, { recursive: true, force: true });
    if (figures.length === 0) return;
    const lines = ["", "fault suite figures:"];
    let hostile = 0;
    for (const f of figures) {
      if (typeof f.value === "string") lines.push(`  ${f.value}`);
      else lines.push(`  ${f.key}: ${f.value}`);
      if (f.key.startsWith("hostile") && typeof f.value === "number") hostile += f.value;
    }
    if (hostile > 0) lines.push(`  hostile cases refused in all: ${hostile}`);
    process.stdout.write(`${lines.join("\n")}\n`);
  };
}
