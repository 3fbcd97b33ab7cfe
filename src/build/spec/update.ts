/**
 * The spec's `update:` section (src/build/README.md, "The spec"): what the
 * image's agent config (src/image "Agent config") and its GRUB counters are
 * made from.
 */
import {
  CHANNEL_NAME,
  CHANNEL_NAME_RULE,
  CONFIRM_POLICIES,
  DEFAULT_GOOD_TRIES,
  get,
  type Loc,
  MAX_TRIES,
  type MapNode,
  readRebootConfig,
  repoUrlProblem,
  type SeqNode,
} from "../../image/index.ts";
import { hostPath, NAME_RE, NAME_RULE, type Section } from "./fields.ts";
import { type HealthCheck, type ImageSpec, UPDATE_MODES } from "./types.ts";

/** The `update` section; undefined when any of it is invalid (every problem recorded). */
export function parseUpdate(
  s: Section,
  root: MapNode | undefined,
  at: Loc,
): ImageSpec["update"] | undefined {
  const { c, references } = s;
  const issues = c.issues;
  const u = c.map(
    get(root, "update"),
    "update",
    [
      "channel",
      "repo",
      "tries",
      "goodSlotTries",
      "confirm",
      "keys",
      "healthChecks",
      "pollIntervalMs",
      "mode",
      "reboot",
      "bundleFormat",
    ],
    ["repo"],
    at,
  );
  const channelNode = get(u, "channel");
  const channel = channelNode
    ? c.string(channelNode, "update.channel", CHANNEL_NAME, CHANNEL_NAME_RULE)
    : "stable";
  const repoNode = get(u, "repo");
  const repo = c.url(repoNode, "update.repo", repoUrlProblem);
  const triesNode = get(u, "tries");
  // Tries left live in a one-digit GRUB env variable (contracts: X_tries 0-9).
  const tries = triesNode ? c.integer(triesNode, "update.tries", 1, MAX_TRIES) : 3;
  // So does the count of a good slot's unconfirmed boots (X_boots, good_tries).
  const goodTriesNode = get(u, "goodSlotTries");
  const goodSlotTries = goodTriesNode
    ? c.integer(goodTriesNode, "update.goodSlotTries", 1, MAX_TRIES)
    : DEFAULT_GOOD_TRIES;
  const confirmNode = get(u, "confirm");
  const confirm = confirmNode ? c.enum(confirmNode, "update.confirm", CONFIRM_POLICIES) : "started";
  const keysNode = get(u, "keys");
  const keyNames = keysNode ? c.strings(keysNode, "update.keys") : [];
  const keys = keyNames?.map((kname, i) => {
    const n = (keysNode as SeqNode).items[i]!;
    const p = hostPath(n, kname);
    references.push({ loc: n.loc, field: `update.keys[${i}]`, path: p, type: "file" });
    return p;
  });
  const hcNode = get(u, "healthChecks");
  const healthChecks: HealthCheck[] = [];
  let hcOk = true;
  c.list(hcNode, "update.healthChecks")?.forEach((n, i) => {
    const f = `update.healthChecks[${i}]`;
    const m = c.map(n, f, ["name", "command", "timeoutMs"], ["command"], n.loc);
    const hcName = get(m, "name")
      ? c.string(get(m, "name"), `${f}.name`, NAME_RE, NAME_RULE)
      : undefined;
    const command = c.string(get(m, "command"), `${f}.command`);
    if (command === "") issues.add(get(m, "command")!.loc, `${f}.command`, "must not be empty");
    const tNode = get(m, "timeoutMs");
    const timeoutMs = tNode ? c.integer(tNode, `${f}.timeoutMs`, 1, 3_600_000) : 10_000;
    if (command && timeoutMs !== undefined && (hcName !== undefined || !get(m, "name"))) {
      healthChecks.push(hcName ? { name: hcName, command, timeoutMs } : { command, timeoutMs });
    } else hcOk = false;
  });
  const pollNode = get(u, "pollIntervalMs");
  const pollIntervalMs = pollNode
    ? c.integer(pollNode, "update.pollIntervalMs", 1000, 31 * 24 * 3_600_000)
    : 300_000;
  const formatNode = get(u, "bundleFormat");
  const bundleFormat = formatNode ? c.integer(formatNode, "update.bundleFormat", 1, 2) : 1;
  const reboot = readRebootConfig(c, get(u, "reboot"), "update.reboot", u?.loc ?? at);
  const modeNode = get(u, "mode");
  const mode = modeNode ? c.enum(modeNode, "update.mode", UPDATE_MODES) : undefined;
  if (
    (modeNode && mode === undefined) ||
    channel === undefined ||
    repo === undefined ||
    tries === undefined ||
    goodSlotTries === undefined ||
    confirm === undefined ||
    keys === undefined ||
    pollIntervalMs === undefined ||
    bundleFormat === undefined ||
    reboot === undefined ||
    !hcOk
  )
    return undefined;
  return {
    channel,
    repo,
    tries,
    goodSlotTries,
    confirm,
    keys,
    healthChecks,
    pollIntervalMs,
    bundleFormat: bundleFormat as 1 | 2,
    reboot,
    ...(modeNode && mode ? { mode: { value: mode, origin: modeNode.loc } } : {}),
  };
}
