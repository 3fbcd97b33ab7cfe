// The agent config (src/image/README.md, "Agent config"): validated once at load by the shared
// located-YAML readers (src/image/yaml.ts), every error with its line and column.
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
import type { Issue } from "../../../src/image/yaml.ts";
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
      reboot: { strategy: "off", window: null, method: "reboot", etcd: null },
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
      'agent.yaml:1:10: confirm: "later" is not "started" or "healthy"',
    );
  });

  it("an empty file is the defaults", () => {
    expect(parseConfig("", "agent.yaml")).toEqual(defaultConfig());
  });

  it("reports every bad field at once, each with its line and column", () => {
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
    const issues = err.details.issues as Issue[];
    expect(issues.map((e) => [e.line, e.col, e.field])).toEqual([
      [1, 10, "repoUrl"],
      [2, 17, "pollIntervalMs"],
      [3, 8, "tries"],
      [4, 9, "reboot"],
      [6, 25, "healthChecks[0].command"],
      [6, 40, "healthChecks[0].timeoutMs"],
      [7, 1, "pollInterval"],
    ]);
    expect(err.message).toBe(
      [
        "config agent.yaml: 7 errors:",
        '  agent.yaml:1:10: repoUrl: "ftp://example.org/": not an http:// or https:// URL',
        '  agent.yaml:2:17: pollIntervalMs: must be an integer (got string "soon")',
        "  agent.yaml:3:8: tries: must be between 1 and 9 (got 12)",
        '  agent.yaml:4:9: reboot: must be "auto", "manual" or a mapping of strategy, window, method, etcd (got string "sometimes")',
        '  agent.yaml:6:25: healthChecks[0].command: must be a command: a string (run with /bin/sh -c) or a list of strings, the first not empty (got string "")',
        "  agent.yaml:6:40: healthChecks[0].timeoutMs: must be at least 1 (got -1)",
        `  agent.yaml:7:1: pollInterval: unknown field "pollInterval" (known: ${Object.keys(defaultConfig()).join(", ")})`,
      ].join("\n"),
    );
  });

  it("slots, health checks and commands: every problem named by its field and place", () => {
    const err = configError(
      [
        "slots:",
        "  A: { partitionName: x }",
        "  C: { partitionIndex: 1 }",
        "  B: { partitionIndex: 0 }",
        "healthChecks:",
        "  - { command: [/bin/true] }",
        '  - { name: "", command: [""], timeoutMs: 5 }',
        "trustedKeys: []",
        'rebootCommand: " "',
        "pollJitterMs: 4000000",
      ].join("\n"),
    );
    const command =
      "must be a command: a string (run with /bin/sh -c) or a list of strings, the first not empty";
    expect(err.message.split("\n")).toEqual([
      "config agent.yaml: 9 errors:",
      '  agent.yaml:2:8: slots.A.partitionName: unknown field "partitionName" (known: partitionLabel, partitionIndex)',
      '  agent.yaml:3:3: slots.C: unknown field "C" (known: A, B)',
      "  agent.yaml:4:24: slots.B.partitionIndex: must be at least 1 (got 0)",
      "  agent.yaml:6:5: healthChecks[0].timeoutMs: is required",
      "  agent.yaml:7:13: healthChecks[1].name: must not be empty",
      `  agent.yaml:7:26: healthChecks[1].command: ${command} (got a list)`,
      "  agent.yaml:8:14: trustedKeys: must list at least one key",
      `  agent.yaml:9:16: rebootCommand: ${command} (got string " ")`,
      "  agent.yaml:10:15: pollJitterMs: must be smaller than pollIntervalMs (3600000)",
    ]);
  });

  it("names each empty trusted key path, all of them", () => {
    const err = configError('trustedKeys: [a.pub, "", ""]');
    expect(err.message.split("\n").slice(1)).toEqual([
      "  agent.yaml:1:22: trustedKeys[1]: must not be empty",
      "  agent.yaml:1:26: trustedKeys[2]: must not be empty",
    ]);
  });

  it("says why a repoUrl is refused, an out-of-range port included", () => {
    expect(configError("repoUrl: http://h:65536/").message).toContain(
      'agent.yaml:1:10: repoUrl: "http://h:65536/": port 65536 is out of range (1-65535)',
    );
    expect(parseConfig("repoUrl: http://h:65535/", "agent.yaml").repoUrl).toBe("http://h:65535/");
  });

  it("refuses jitter as large as the interval, and broken YAML", () => {
    expect(configError("pollIntervalMs: 1000\npollJitterMs: 1000").message).toContain(
      "pollJitterMs",
    );
    const broken = configError("tries: 2\nchannel: [unclosed");
    expect(broken.code).toBe("CONFIG_INVALID");
    expect(broken.details.issues).toMatchObject([{ field: "(yaml)", line: 2 }]);
    expect(configError("- a list").message).toContain(
      "agent.yaml:1:1: (config): must be a mapping of fields (got a list)",
    );
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
        `channel: ${JSON.stringify(bad)} is not a channel name`,
      );
    }
    expect(parseConfig("channel: beta.1_x-2", "agent.yaml").channel).toBe("beta.1_x-2");
    expect(configError('compatible: "a/b"').message).toContain(
      'compatible: "a/b" is not a compatible string',
    );
    expect(parseConfig("compatible: Pi:4+x", "agent.yaml").compatible).toBe("Pi:4+x");
  });
});

describe("builtinChecks", () => {
  it("names built-in checks; a name it does not know is refused at its place", () => {
    expect(parseConfig("builtinChecks: [no-failed-units]\n", "agent.yaml").builtinChecks).toEqual([
      "no-failed-units",
    ]);
    expect(parseConfig("", "agent.yaml").builtinChecks).toEqual([]);
    expect(configError("builtinChecks: [no-failed-units, disk-space]\n").message).toContain(
      'agent.yaml:1:34: builtinChecks[1]: "disk-space" is not "no-failed-units"',
    );
    expect(configError("builtinChecks: no-failed-units\n").message).toContain(
      "agent.yaml:1:16: builtinChecks: must be a list",
    );
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
      reboot: {
        strategy: "etcd-lock",
        window: { weekday: 4, startMinute: 23 * 60, lengthMs: 90 * 60_000 },
        method: "kexec",
        etcd: {
          endpoints: ["http://10.0.0.1:2379", "https://10.0.0.2:2379"],
          group: "workers",
          lockTTLMs: 600_000,
          ca: "/etc/abforge/etcd/ca.pem",
          cert: "/etc/abforge/etcd/client.pem",
          key: "/etc/abforge/etcd/client.key",
        },
      },
      rebootCommand: ["/sbin/reboot", "-f"],
      machineId: "host-7",
      healthChecks: [{ name: "net", command: ["/bin/sh", "-c", "ping -c1 '1:2'"], timeoutMs: 5 }],
      builtinChecks: ["no-failed-units"],
      disk: "/dev/vda",
      compatible: "demo-x86_64",
      slots: { A: { partitionLabel: "root-a" }, B: { partitionIndex: 3 } },
      downloadStallTimeoutMs: 1000,
      maxIndexBytes: 4096,
      maxBackoffMs: 60_000,
      report: {
        url: "http://fleet.internal:8470/",
        token: null,
        tokenFile: "/etc/abforge/fleet.token",
        onUnreachable: "wait",
      },
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
