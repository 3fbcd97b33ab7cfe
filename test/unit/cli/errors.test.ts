import { describe, expect, it } from "vitest";
import { EXIT_CODES } from "../../../src/cli/exit-codes.ts";
import { abforge } from "../../helpers/cli.ts";

describe("cli", () => {
  it("gives every error code its own exit code outside 0-2", () => {
    const codes = Object.values(EXIT_CODES);
    expect(new Set(codes).size).toBe(codes.length);
    for (const c of codes) expect(c).toBeGreaterThan(2);
  });

  it("exits 2 on a usage error and prints help", async () => {
    const r = await abforge(["no-such-command"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/Usage: abforge/);
  });

  it("prints --help with exit 0", async () => {
    const r = await abforge(["--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Usage: abforge/);
  });
});
