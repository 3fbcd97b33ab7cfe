// The agent config (src/image/README.md, "Agent config"): validated once at load, every error with its line.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  type AgentConfig,
  defaultConfig,
  ImageError,
  loadConfig,
  parseConfig,
  serializeConfig,
} from "../../../src/image/index.ts";
import { tempDir } from "../../helpers/tmp.ts";

function configError(text: string): ImageError {
  try {
    parseConfig(text, "agent.yaml");
  } catch (err) {
    expect(err).toBeInstanceOf(ImageError);
    return err as ImageError;
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
        "confirm: healthy",
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
      confirm: "healthy",
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

  it("confirm is started or healthy", () => {
    expect(parseConfig("", "agent.yaml").confirm).toBe("started");
    expect(configError("confirm: later").message).toContain(
      'agent.yaml:1: confirm: must be "started" or "healthy", got "later"',
    );
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

  it("says why a repoUrl is refused, an out-of-range port included", () => {
    expect(configError("repoUrl: http://h:65536/").message).toContain(
      'agent.yaml:1: repoUrl: must be an http(s) URL, got "http://h:65536/" (port 65536 is out of range (1-65535))',
    );
    expect(parseConfig("repoUrl: http://h:65535/", "agent.yaml").repoUrl).toBe("http://h:65535/");
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

  it("takes channel and compatible by the contract's one rule: what publish refuses, the agent refuses", () => {
    for (const bad of ["Beta", "-x", "a b", "", "x".repeat(65)]) {
      expect(configError(`channel: ${JSON.stringify(bad)}`).message).toContain(
        "channel: must be a channel name",
      );
    }
    expect(parseConfig("channel: beta.1_x-2", "agent.yaml").channel).toBe("beta.1_x-2");
    expect(configError('compatible: "a/b"').message).toContain("compatible: must be a compatible");
    expect(parseConfig("compatible: Pi:4+x", "agent.yaml").compatible).toBe("Pi:4+x");
  });
});

describe("serializeConfig", () => {
  it("writes every field so that parseConfig reads the same value back", () => {
    const config: AgentConfig = {
      ...defaultConfig(),
      repoUrl: "http://10.0.2.100/",
      channel: "beta",
      pollIntervalMs: 30_000,
      pollJitterMs: 3000,
      trustedKeys: ["/etc/abforge/keys/a.pub"],
      tries: 2,
      reboot: "manual",
      rebootCommand: ["/sbin/reboot", "-f"],
      healthChecks: [{ name: "net", command: ["/bin/sh", "-c", "ping -c1 '1:2'"], timeoutMs: 5 }],
      disk: "/dev/vda",
      compatible: "demo-x86_64",
      slots: { A: { partitionLabel: "root-a" }, B: { partitionIndex: 3 } },
      downloadStallTimeoutMs: 1000,
      maxIndexBytes: 4096,
      maxBackoffMs: 60_000,
    };
    const text = serializeConfig(config, "Written by a test.\nTwo lines.");
    expect(text.startsWith("# Written by a test.\n# Two lines.\n")).toBe(true);
    expect(parseConfig(text, "agent.yaml")).toEqual(config);
    // a field equal to its default is left out, and read back as the default
    expect(serializeConfig(defaultConfig())).toBe("");
    const some: AgentConfig = { ...defaultConfig(), channel: "beta", tries: 5 };
    expect(serializeConfig(some)).toBe("channel: beta\ntries: 5\n");
    expect(parseConfig(serializeConfig(some), "agent.yaml")).toEqual(some);
  });
});
