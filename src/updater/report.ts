/** Text forms of the agent's results for the CLI (the JSON forms are the objects themselves). */
import type { AfterBootResult, CheckResult } from "./agent.ts";
import { formatEmptySlot } from "./empty-slot.ts";
import type { AgentStatus } from "./status.ts";

export function formatStatus(s: AgentStatus): string {
  const slot = (x: AgentStatus["booted"]) =>
    `slot ${x.slot}  ${x.version || "(empty)"}  ${x.good ? `good${x.boots > 0 ? `, ${x.boots} of ${s.boot.goodTries} boots unconfirmed` : ""}` : `not good, ${x.tries} tries left`}`;
  const lines = [
    `disk       ${s.disk}`,
    `booted     ${slot(s.booted)}`,
    `other      ${slot(s.other)}`,
    `order      ${s.boot.order.join(" ")}`,
  ];
  if (s.pending)
    lines.push(
      `pending    ${s.pending.version} in slot ${s.pending.slot} (installed ${s.pending.installedAt})`,
    );
  if (s.rebootWait)
    lines.push(
      `reboot     waiting for ${s.rebootWait.for === "operator" ? "the operator (abforge agent reboot)" : s.rebootWait.for === "window" ? `the window, until ${s.rebootWait.until}` : `the reboot lock, next try at ${s.rebootWait.until}`} (since ${s.rebootWait.since}): ${s.rebootWait.detail}`,
    );
  if (s.rebootLock)
    lines.push(
      `lock       held as ${s.rebootLock.holder}${s.rebootLock.group === null ? "" : ` in group ${s.rebootLock.group}`} since ${s.rebootLock.takenAt} (for ${s.rebootLock.version}); given back once the host is up`,
    );
  if (s.rolloutWait)
    lines.push(
      `rollout    takes ${s.rolloutWait.version} at ${s.rolloutWait.startsAt}: wave ${s.rolloutWait.wave} of ${s.rolloutWait.waves} (${s.rolloutWait.percent}%, after ${s.rolloutWait.issuedAt})`,
    );
  if (s.held)
    lines.push(
      `held       ${s.held.version} on ${s.held.channel} by ${s.held.by} (seen ${s.held.at}): ${s.held.reason}`,
    );
  if (s.progress)
    lines.push(
      `progress   ${s.progress.version} into slot ${s.progress.slot}: chunk ${s.progress.verifiedChunks} of ${s.progress.chunksTotal} (${s.progress.percent}%)`,
    );
  if (s.emptySlot) lines.push(`empty      ${formatEmptySlot(s.emptySlot)}`);
  lines.push(
    `last check ${s.lastCheck ? `${s.lastCheck.at} ${s.lastCheck.outcome}${s.lastCheck.version ? ` (${s.lastCheck.version})` : ""}` : "never"}`,
  );
  if (s.lastGood)
    lines.push(`last good  ${s.lastGood.version} in slot ${s.lastGood.slot} at ${s.lastGood.at}`);
  if (s.lastError)
    lines.push(
      `last error ${s.lastError.at} ${s.lastError.code}: ${s.lastError.message}${s.lastError.old ? ` (old: a later success at ${s.lastError.supersededAt})` : ""}`,
    );
  for (const r of s.rollbacks)
    lines.push(`rollback   ${r.at} ${r.version} (slot ${r.slot}): ${r.reason}`);
  for (const f of s.fallbacks)
    lines.push(`fallback   ${f.at} slot ${f.slot} (${f.version}) to slot ${f.booted}: ${f.reason}`);
  lines.push(`bad        ${s.badVersions.length > 0 ? s.badVersions.join(", ") : "none"}`);
  lines.push(
    `seed       ${s.seed === null ? "none yet (drawn by the first command that writes)" : s.seed}`,
  );
  lines.push(`state      ${s.stateFile}`);
  return lines.join("\n");
}

export function formatCheck(r: CheckResult): string {
  switch (r.outcome) {
    case "up-to-date":
      return `up to date (${r.version})`;
    case "skipped":
      return `skipped ${r.version}: ${r.reason}`;
    case "installed":
      return `installed ${r.version} into slot ${r.slot}${fetchedText(r)}${rebootText(r)}`;
    case "pending-reboot":
      return `${r.version} is installed in slot ${r.slot}${rebootText(r)}`;
  }
}

function fetchedText(r: Extract<CheckResult, { rebooting: boolean }>): string {
  if (r.bytesFetched === undefined || !r.bundleBytes) return "";
  const pct = ((100 * r.bytesFetched) / r.bundleBytes).toFixed(1);
  const d = r.delta;
  return `; fetched ${r.bytesFetched} of ${r.bundleBytes} bytes (${pct}%)${d ? `, ${d.inPlace + d.copied} of ${d.chunks} chunks from this host, ${d.requests} range requests` : ""}`;
}

function rebootText(r: Extract<CheckResult, { rebooting: boolean }>): string {
  if (r.rebooting) return "; rebooting";
  return r.waiting ? `; ${r.waiting.detail}` : "; reboot to run it";
}

export function formatAfterBoot(r: AfterBootResult): string {
  switch (r.action) {
    case "nothing":
      return r.reason;
    case "marked-good":
      return `marked slot ${r.booted} (${r.version}) good: ${r.checks.length} health check(s) passed`;
    case "unhealthy":
      return `slot ${r.booted} (${r.version}) is not healthy: ${r.checks
        .filter((c) => !c.ok)
        .map((c) => c.name)
        .join(", ")} failed${r.rebooting ? "; rebooting" : ""}`;
    case "rollback":
      return `rollback recorded: ${r.reason}`;
    case "fallback":
      return `fallback recorded: ${r.reason}`;
    case "await-reboot":
      return r.reason;
  }
}
