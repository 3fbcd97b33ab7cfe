import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { cliReference } from "../../../src/cli/reference.ts";

describe("docs/cli.md", () => {
  it("is what the commander definitions generate (run: node scripts/cli-docs.ts)", () => {
    const onDisk = readFileSync(new URL("../../../docs/cli.md", import.meta.url), "utf8");
    expect(onDisk).toBe(cliReference());
  });

  it("documents every command with its --help and every exit code", () => {
    const ref = cliReference();
    for (const cmd of [
      "abforge build",
      "abforge verity format",
      "abforge disk show",
      "abforge agent install",
    ]) {
      expect(ref).toContain(`## ${cmd}\n`);
    }
    expect(ref).toMatch(/\| `VERITY_MISMATCH` \| \d+ \|/);
  });
});
