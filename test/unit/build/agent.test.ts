/**
 * The agent files an image carries (src/build/README.md, "The agent in the
 * image"): the build writes the agent config through the image contract's
 * serializer, and the agent parses what the build wrote to what the spec said.
 */
import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { agentFiles } from "../../../src/build/agent.ts";
import { parseSpec } from "../../../src/build/spec/index.ts";
import { keyId } from "../../../src/bundle/index.ts";
import {
  AGENT_CONFIG_PATH,
  defaultConfig,
  KEYS_DIR,
  parseConfig,
  parseRelease,
  RELEASE_PATH,
} from "../../../src/image/index.ts";

const SPEC = `name: demo
version: 1.2.3
compatible: demo-x86_64
kernel: { package: linux-image-cloud-amd64 }
rootfs: { layers: [{ files: [{ path: /etc/motd, content: hi }] }] }
disk: { espSize: 64MiB, slotSize: 512MiB, stateSize: 128MiB }
update:
  channel: beta.1
  repo: "http://updates.example/abforge/"
  tries: 2
  goodSlotTries: 4
  confirm: healthy
  pollIntervalMs: 60000
  healthChecks:
    - { name: net, command: "ping -c1 10.0.2.2 && echo 'ok: yes'", timeoutMs: 5000 }
    - { command: "true" }
`;

describe("agentFiles", () => {
  it("spec -> written agent.yaml -> the agent's parse gives what the spec said", () => {
    const spec = parseSpec(SPEC, "/specs/demo.yaml");
    // goodSlotTries goes into the boot state (good_tries), not the agent's config
    expect(spec.update).toMatchObject({ goodSlotTries: 4, confirm: "healthy" });
    const key = generateKeyPairSync("ed25519").publicKey;
    const files = agentFiles({ spec, trustedKeys: [key] });
    const byPath = new Map(files.map((f) => [f.path, f]));
    const yaml = byPath.get(AGENT_CONFIG_PATH)!.content;
    const keyPath = `${KEYS_DIR}/${keyId(key)}.pub`;
    expect(byPath.get(keyPath)?.content).toContain("BEGIN PUBLIC KEY");
    expect(parseConfig(yaml, AGENT_CONFIG_PATH)).toEqual({
      ...defaultConfig(),
      repoUrl: "http://updates.example/abforge/",
      channel: "beta.1",
      pollIntervalMs: 60_000,
      pollJitterMs: 6000,
      trustedKeys: [keyPath],
      tries: 2,
      confirm: "healthy",
      healthChecks: [
        {
          name: "net",
          command: ["/bin/sh", "-c", "ping -c1 10.0.2.2 && echo 'ok: yes'"],
          timeoutMs: 5000,
        },
        { name: "check-2", command: ["/bin/sh", "-c", "true"], timeoutMs: 10_000 },
      ],
      compatible: "demo-x86_64",
    });
    expect(yaml.startsWith("# Written by abforge build from demo's spec")).toBe(true);
    expect(parseRelease(byPath.get(RELEASE_PATH)!.content, RELEASE_PATH)).toEqual({
      name: "demo",
      version: "1.2.3",
      compatible: "demo-x86_64",
    });
  });
});
