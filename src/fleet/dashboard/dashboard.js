// The fleet dashboard (src/fleet/README.md, "The dashboard"): plain DOM over
// the /v1/ API with the operator token the person typed, kept in this tab's
// sessionStorage. Text goes in through textContent only.

const TOKEN_KEY = "abforge-fleet-token";
const REFRESH_MS = 5000;
const COLORS = [
  "#3b6fd8",
  "#12a36e",
  "#d9822b",
  "#9b51e0",
  "#d64545",
  "#2bb3c0",
  "#8a8f98",
  "#c7a600",
];
const EVENTS = [
  "checked",
  "download-started",
  "download-finished",
  "installed",
  "waiting-reboot",
  "waiting-lock",
  "rebooting",
  "marked-good",
  "rollback",
  "fallback",
  "error",
  "stuck",
];

const $ = (id) => document.getElementById(id);
let selectedHost = null;
let rolloutChannel = "";
let timer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children)
    if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function when(iso) {
  const d = new Date(iso);
  const ago = Math.round((Date.now() - d.getTime()) / 1000);
  const rel =
    ago < 90
      ? `${ago} s ago`
      : ago < 5400
        ? `${Math.round(ago / 60)} min ago`
        : `${Math.round(ago / 3600)} h ago`;
  return `${d.toISOString().replace("T", " ").slice(0, 19)} (${rel})`;
}

function errorText(e) {
  return e ? `${e.code}: ${e.message}` : "";
}

class Unauthorized extends Error {}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: {
      Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}`,
      ...(body === undefined ? {} : { "Content-Type": "application/json" }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  if (res.status === 401) throw new Unauthorized();
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error ? data.error.message : `HTTP ${res.status}`);
  return data;
}

function fill(id, nodes, emptyText) {
  const box = $(id);
  box.replaceChildren(...(nodes.length ? nodes : [el("p", { class: "empty" }, emptyText)]));
}

function setOptions(select, values, allLabel) {
  const keep = select.value;
  select.replaceChildren(
    ...(allLabel === null ? [] : [el("option", { value: "" }, allLabel)]),
    ...values.map((v) => el("option", { value: v }, v)),
  );
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

function renderOverview(s) {
  const held = s.holds.filter((h) => !h.resumedAt).length;
  $("overview").replaceChildren(
    el("div", { class: "figure" }, el("b", { id: "total-hosts" }, s.hosts), "hosts"),
    el("div", { class: "figure" }, el("b", {}, s.channels.length), "channels"),
    el("div", { class: "figure" }, el("b", {}, s.versions.length), "versions running"),
    el("div", { class: "figure" }, el("b", {}, s.stuck), "stuck"),
    el("div", { class: "figure" }, el("b", {}, held), "holds"),
  );
}

async function pause(channel, version, reason) {
  await api(
    "PUT",
    `/v1/holds/${encodeURIComponent(channel)}/${encodeURIComponent(version)}`,
    reason ? { reason } : {},
  );
  await refresh();
}

async function resume(channel, version) {
  await api("DELETE", `/v1/holds/${encodeURIComponent(channel)}/${encodeURIComponent(version)}`);
  await refresh();
}

function renderHolds(s) {
  const rows = s.holds.map((h) =>
    el(
      "div",
      { class: `hold ${h.by}${h.resumedAt ? " resumed" : ""}` },
      el("strong", {}, `${h.channel} ${h.version}`),
      ` ${h.resumedAt ? "resumed" : "held"} — ${h.by === "auto" ? "halted automatically" : "paused by an operator"} at ${when(h.at)}`,
      h.resumedAt ? ` · resumed at ${when(h.resumedAt)}` : " ",
      h.resumedAt
        ? null
        : el(
            "button",
            { type: "button", onclick: () => resume(h.channel, h.version).catch(show) },
            `Resume ${h.channel} ${h.version}`,
          ),
      el("span", { class: "why" }, h.reason),
    ),
  );
  fill("holds", rows, "No version is held.");
}

function renderVersions(s) {
  const held = new Set(s.holds.filter((h) => !h.resumedAt).map((h) => `${h.channel} ${h.version}`));
  const total = new Map(s.channels.map((c) => [c.channel, c.hosts]));
  const body = $("versions").tBodies[0];
  body.replaceChildren(
    ...s.versions.map((v) => {
      const share = Math.round((100 * v.hosts) / (total.get(v.channel) || 1));
      const bar = el("div", { class: "bar" });
      bar.style.width = `${share}%`;
      const key = `${v.channel} ${v.version}`;
      return el(
        "tr",
        {},
        el("td", {}, v.channel),
        el("td", {}, v.version),
        el("td", {}, v.hosts),
        el("td", {}, `${share}%`, bar),
        el(
          "td",
          {},
          held.has(key)
            ? el(
                "button",
                { type: "button", onclick: () => resume(v.channel, v.version).catch(show) },
                "Resume",
              )
            : el(
                "button",
                { type: "button", onclick: () => pause(v.channel, v.version, "").catch(show) },
                "Pause",
              ),
        ),
      );
    }),
  );
  const channels = s.channels.map((c) => c.channel);
  setOptions($("rollout-channel"), channels, null);
  if (!rolloutChannel || !channels.includes(rolloutChannel)) rolloutChannel = channels[0] || "";
  $("rollout-channel").value = rolloutChannel;
  setOptions($("filter-channel"), channels, "all channels");
  setOptions(
    $("filter-version"),
    [...new Set(s.versions.map((v) => v.version))].sort(),
    "all versions",
  );
}

function renderStuck(s) {
  fill(
    "stuck",
    s.stuckHosts.map((h) =>
      el(
        "div",
        { class: "stuck-row clickable", onclick: () => openHost(h.machineId) },
        el("strong", {}, h.hostname),
        ` (${h.machineId}) on ${h.version}, ${h.event} — `,
        el("span", { class: "why" }, h.stuck ? h.stuck.why : ""),
      ),
    ),
    "No host is stuck.",
  );
}

function renderFailures(s) {
  fill(
    "failures",
    s.failures.map((f) =>
      el(
        "div",
        { class: "stuck-row clickable", onclick: () => openHost(f.machineId) },
        `${when(f.receivedAt)} `,
        el("strong", {}, f.hostname),
        ` ${f.event} of ${f.target || f.version} (${f.channel}): `,
        el("span", { class: "why" }, f.reason || errorText(f.error)),
      ),
    ),
    "No rollback, fallback or error reported.",
  );
}

async function renderRollout() {
  const box = $("rollout");
  if (!rolloutChannel)
    return box.replaceChildren(el("p", { class: "empty" }, "No host has reported."));
  const r = await api("GET", `/v1/rollout/${encodeURIComponent(rolloutChannel)}`);
  const W = 900;
  const H = 220;
  const L = 40;
  const B = 24;
  const n = r.times.length;
  const max = Math.max(1, ...r.series.flatMap((s) => s.hosts));
  const x = (i) => L + (n <= 1 ? 0 : (i * (W - L - 10)) / (n - 1));
  const y = (v) => H - B - (v * (H - B - 10)) / max;
  const chart = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    width: "100%",
    role: "img",
    "aria-label": `hosts per version on ${rolloutChannel} over time`,
  });
  chart.append(svg("line", { x1: L, y1: H - B, x2: W - 10, y2: H - B, stroke: "#999" }));
  chart.append(svg("line", { x1: L, y1: 10, x2: L, y2: H - B, stroke: "#999" }));
  chart.append(svg("text", { x: 4, y: 16 }, max), svg("text", { x: 4, y: H - B }, 0));
  if (n > 0) {
    chart.append(svg("text", { x: L, y: H - 6 }, r.times[0].slice(0, 16).replace("T", " ")));
    chart.append(
      svg("text", { x: W - 130, y: H - 6 }, r.times[n - 1].slice(0, 16).replace("T", " ")),
    );
  }
  const legend = el("div", { class: "legend" });
  r.series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length];
    const points = s.hosts.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    chart.append(
      svg(
        "polyline",
        { points, fill: "none", stroke: color, "stroke-width": 2 },
        svg("title", {}, `${s.version}`),
      ),
    );
    const sw = el("span", { class: "swatch" });
    sw.style.background = color;
    legend.append(el("span", {}, sw, `${s.version}: ${s.hosts[s.hosts.length - 1] ?? 0} hosts`));
  });
  box.replaceChildren(chart, legend);
}

async function renderHosts() {
  const q = new URLSearchParams();
  const search = $("search").value.trim();
  if (search) q.set("q", search);
  for (const [id, key] of [
    ["filter-channel", "channel"],
    ["filter-version", "version"],
    ["filter-state", "state"],
  ])
    if ($(id).value) q.set(key, $(id).value);
  const { hosts } = await api("GET", `/v1/hosts?${q}`);
  $("hosts").tBodies[0].replaceChildren(
    ...hosts.map((h) =>
      el(
        "tr",
        {
          class: "clickable",
          onclick: () => openHost(h.machineId),
          "data-machine-id": h.machineId,
        },
        el("td", {}, h.hostname),
        el("td", {}, h.machineId),
        el("td", {}, h.channel),
        el("td", {}, h.version),
        el("td", {}, h.otherVersion ? `${h.otherVersion} (${h.otherState})` : h.otherState),
        el("td", {}, h.stuck ? `${h.event}, stuck` : h.event),
        el("td", {}, when(h.receivedAt)),
        el("td", { class: "error" }, h.stuck ? h.stuck.why : errorText(h.lastError)),
      ),
    ),
  );
}

async function openHost(machineId) {
  selectedHost = machineId;
  await renderTimeline();
  $("timeline-section").scrollIntoView({ block: "nearest" });
}

async function renderTimeline() {
  if (!selectedHost) return;
  const { host, events } = await api("GET", `/v1/hosts/${selectedHost}`);
  $("timeline-section").hidden = false;
  $("timeline-host").textContent =
    `${host.hostname} (${host.machineId}), running ${host.version} in slot ${host.runningSlot}`;
  $("timeline").replaceChildren(
    ...events.map((e) =>
      el(
        "li",
        {},
        `${when(e.receivedAt)} ${e.event}${e.target ? ` ${e.target}` : ""}${e.progressPercent !== null ? ` ${e.progressPercent}%` : ""} (running ${e.version})`,
        e.reason ? el("span", { class: "why" }, ` — ${e.reason}`) : null,
        e.error ? el("span", { class: "error" }, ` — ${errorText(e.error)}`) : null,
      ),
    ),
  );
}

function show(err) {
  if (err instanceof Unauthorized)
    return signOut("The token was refused; type the operator token.");
  $("status").textContent = `Error: ${err.message}`;
}

async function refresh() {
  const s = await api("GET", "/v1/summary");
  renderOverview(s);
  renderHolds(s);
  renderVersions(s);
  renderStuck(s);
  renderFailures(s);
  await Promise.all([renderRollout(), renderHosts(), renderTimeline()]);
  $("status").textContent = `updated ${new Date(s.now).toISOString().slice(11, 19)} UTC`;
}

function loop() {
  clearTimeout(timer);
  refresh()
    .catch(show)
    .finally(() => {
      if (sessionStorage.getItem(TOKEN_KEY)) timer = setTimeout(loop, REFRESH_MS);
    });
}

function signOut(message) {
  clearTimeout(timer);
  sessionStorage.removeItem(TOKEN_KEY);
  $("app").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  $("status").textContent = message || "";
}

function signIn() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  loop();
}

document.addEventListener("DOMContentLoaded", () => {
  setOptions($("filter-state"), EVENTS, "any state");
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    signIn();
  });
  $("signout").addEventListener("click", () => signOut("Signed out."));
  $("pause-form").addEventListener("submit", (e) => {
    e.preventDefault();
    pause(
      $("pause-channel").value.trim(),
      $("pause-version").value.trim(),
      $("pause-reason").value.trim(),
    ).catch(show);
  });
  $("filter").addEventListener("input", () => renderHosts().catch(show));
  $("filter").addEventListener("submit", (e) => e.preventDefault());
  $("rollout-channel").addEventListener("change", () => {
    rolloutChannel = $("rollout-channel").value;
    renderRollout().catch(show);
  });
  if (sessionStorage.getItem(TOKEN_KEY)) signIn();
  else signOut();
});
