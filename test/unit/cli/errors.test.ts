import { describe, expect, it } from "vitest";
import { EXIT_CODES } from "../../../src/cli/exit-codes.ts";
import { abforge } from "../../helpers/cli.ts";

describe("cli", () => {
  it("gives every error code its own exit code outside 0-2", () => {
    const codes = Object.values(EXIT_CODES);
    expect(new Set(codes).size).toBe(codes.length);
    for (const c of codes) expect(c).toBeGreaterThan(2);
  });

  it("exits 2 on a usage error, with one line and a hint to --help", async () => {
    const r = await abforge(["no-such-command"]);
    expect(r.code).toBe(2);
    expect(r.stderr).not.toMatch(/Usage: abforge/);
    expect(r.stderr).toMatch(/--help/);
  });

  it("prints --help with exit 0", async () => {
    const r = await abforge(["--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Usage: abforge/);
  });
});

describe("program options", () => {
  it("leaves a command's --version to the command", async () => {
    const r = await abforge([
      "build",
      "no-such-spec.yaml",
      "--out",
      "/nonexistent/x",
      "--version",
      "2.0.0",
    ]);
    expect(r.stdout).not.toMatch(/^0\.1\.0/);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/no-such-spec\.yaml/);
  });

  it("prints the tool's version before a command", async () => {
    const r = await abforge(["--version"]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });
});
