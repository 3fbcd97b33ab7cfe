// The agent config (src/updater/README.md, "Config"): validated once at load, every error with its line.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  defaultConfig,
  loadConfig,
  parseConfig,
  UpdaterError,
} from "../../../src/updater/index.ts";
import { tempDir } from "../../helpers/tmp.ts";

function configError(text: string): UpdaterError {
  try {
    parseConfig(text, "agent.yaml");
  } catch (err) {
    expect(err).toBeInstanceOf(UpdaterError);
    return err as UpdaterError;
  }
  throw new Error("expected CONFIG_INVALID");
}

describe("agent config", () => {
  it("reads every field, with units in the names", () => {
    const c = parseConfig(
      [
        "repoUrl: http://10.0.2.100/",
        "channel: stable",
        "pollIntervalMs: 30000",
        "pollJitterMs: 3000",
        "trustedKeys: [/etc/abforge/keys/a.pub, /etc/abforge/keys/b.pub]",
        "tries: 2",
        "reboot: manual",
        "rebootCommand: [/sbin/reboot, -f]",
        "healthChecks:",
        "  - { name: net, command: 'ping -c1 10.0.2.2', timeoutMs: 5000 }",
        "  - { command: [/bin/true], timeoutMs: 100 }",
        "stateDir: /var/lib/abforge",
        "disk: /dev/vda",
        "compatible: demo-x86_64",
        "slots: { A: { partitionLabel: root-a }, B: { partitionIndex: 3 } }",
        "downloadStallTimeoutMs: 10000",
      ].join("\n"),
      "agent.yaml",
    );
    expect(c).toMatchObject({
      repoUrl: "http://10.0.2.100/",
      pollIntervalMs: 30000,
      pollJitterMs: 3000,
      tries: 2,
      reboot: "manual",
      rebootCommand: ["/sbin/reboot", "-f"],
      disk: "/dev/vda",
      slots: { A: { partitionLabel: "root-a" }, B: { partitionIndex: 3 } },
      downloadStallTimeoutMs: 10000,
    });
    // a string command runs through the shell; a list runs as is
    expect(c.healthChecks).toEqual([
      { name: "net", command: ["/bin/sh", "-c", "ping -c1 10.0.2.2"], timeoutMs: 5000 },
      { name: "check-2", command: ["/bin/true"], timeoutMs: 100 },
    ]);
  });

  it("an empty file is the defaults", () => {
    expect(parseConfig("", "agent.yaml")).toEqual(defaultConfig());
  });

  it("reports every bad field at once, each with its line", () => {
    const err = configError(
      [
        "repoUrl: ftp://example.org/", // 1
        "pollIntervalMs: soon", // 2
        "tries: 12", // 3
        "reboot: sometimes", // 4
        "healthChecks:", // 5
        "  - { name: a, command: '', timeoutMs: -1 }", // 6
        "pollInterval: 5", // 7
      ].join("\n"),
    );
    expect(err.code).toBe("CONFIG_INVALID");
    const errors = err.details.errors as { line: number; field: string }[];
    expect(errors.map((e) => [e.line, e.field])).toEqual([
      [1, "repoUrl"],
      [2, "pollIntervalMs"],
      [3, "tries"],
      [4, "reboot"],
      [6, "healthChecks[0].command"],
      [6, "healthChecks[0].timeoutMs"],
      [7, "pollInterval"],
    ]);
    expect(err.message).toContain("agent.yaml:3: tries: must be an integer from 1 to 9");
    expect(err.message).toContain("agent.yaml:7: pollInterval: unknown field");
  });

  it("refuses jitter as large as the interval, and broken YAML", () => {
    expect(configError("pollIntervalMs: 1000\npollJitterMs: 1000").message).toContain(
      "pollJitterMs",
    );
    expect(configError("channel: [unclosed").code).toBe("CONFIG_INVALID");
    expect(configError("- a list").message).toContain("must be a mapping");
  });

  it("loadConfig resolves key paths against the file's directory; a missing file is CONFIG_INVALID", async () => {
    const dir = tempDir();
    const path = join(dir, "agent.yaml");
    await writeFile(path, "trustedKeys: [keys/release.pub]\n");
    expect((await loadConfig(path)).trustedKeys).toEqual([join(dir, "keys/release.pub")]);
    await expect(loadConfig(join(dir, "missing.yaml"))).rejects.toMatchObject({
      code: "CONFIG_INVALID",
    });
  });
});
