// The shoal web UI: plain ES module, no framework, no build step.
// Data comes from the HTTP API (/api/v1/...); live updates from its event stream
// (EventSource): a task, service or node event re-reads the page's data.

const main = document.getElementById("main");
const notice = document.getElementById("notice");
let session = null; // {user, role, csrf, actions}
let refresh = null; // re-reads the current page's data
let pageStreams = []; // EventSources of the current page (logs)
let logTimes = false; // the logs pane shows each line's time
let onEvent = null; // the events page's live list
let renders = 0; // which render is current
const edits = {}; // replicas typed and not yet sent, by service

// ------------------------------------------------------------ helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "className") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function state(value) {
  return h("span", { className: `state state-${value}` }, value);
}

function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
  return `${Math.round(seconds / 3600)}h ago`;
}

let noticeTimer = null;

function show(message, ok = false) {
  notice.textContent = message;
  notice.className = ok ? "notice ok" : "notice";
  notice.hidden = !message;
  clearTimeout(noticeTimer);
  if (ok) noticeTimer = setTimeout(() => show(""), 6000);
}

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
  }
}

// The session's page token, kept by signin.js: every API request carries it beside the
// cookie (a cookie alone also reaches other servers on this host; see sessions.py).
const TOKEN_KEY = "shoal.pageToken";
const pageToken = () => localStorage.getItem(TOKEN_KEY) || "";
const withToken = (url) => `${url}${url.includes("?") ? "&" : "?"}csrf=${encodeURIComponent(pageToken())}`;

async function api(path, options = {}) {
  const headers = { "X-Shoal-CSRF": pageToken(), ...(options.headers || {}) };
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

async function act(path, body, done) {
  try {
    await api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    show(done, true);
    if (refresh) await refresh();
  } catch (error) {
    show(error.message);
  }
}

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { className: "muted" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", {}, name)))),
    h("tbody", {}, rows),
  );
}

// -------------------------------------------------------------- pages

function rollout(service) {
  const update = service.status?.update;
  if (!update) return h("span", { className: "muted" }, "—");
  const total = update.total || 0;
  const done = update.state === "completed";
  const percent = total ? Math.round((100 * (update.updated || 0)) / total) : done ? 100 : 0;
  const fill = h("span");
  fill.style.width = `${percent}%`; // not a style attribute: the CSP forbids inline styles
  return h(
    "span",
    { className: "rollout" },
    state(update.state),
    " ",
    h("span", { className: "bar", title: `${update.updated}/${total}` }, fill),
    h("span", { className: "muted" }, `${update.updated}/${total} · revision ${update.revision}`),
    update.message ? h("div", { className: "muted" }, update.message) : null,
  );
}

function serviceActions(service) {
  if (!session.actions) return null;
  const name = service.metadata.name;
  const cells = [];
  if (service.spec.mode === "replicated" || service.spec.mode === undefined) {
    // What the user typed outlives the live re-renders until it is sent.
    const input = h("input", {
      type: "number",
      min: "0",
      value: edits[name] ?? service.spec.replicas ?? 1,
      "aria-label": `replicas of ${name}`,
      "data-replicas": name,
      oninput: (event) => {
        edits[name] = event.target.value;
      },
    });
    cells.push(
      input,
      h(
        "button",
        {
          type: "button",
          "data-action": "scale",
          "data-service": name,
          onclick: () => {
            const replicas = Number(edits[name] ?? input.value);
            delete edits[name];
            act(`/api/v1/services/${name}/scale`, { replicas }, `${name} scaled to ${replicas}`);
          },
        },
        "Scale",
      ),
    );
  }
  const status = service.status || {};
  const earlier = (status.revisions || []).some((r) => r.number !== status.revision);
  if (!String(service.spec.mode || "").endsWith("-job")) {
    cells.push(
      h(
        "button",
        {
          type: "button",
          "data-action": "restart",
          "data-service": name,
          onclick: () => act(`/api/v1/services/${name}/rollout`, { action: "restart" }, `${name}: restarting every slot`),
        },
        "Restart",
      ),
      earlier &&
      h(
        "button",
        {
          type: "button",
          className: "danger",
          "data-action": "undo",
          "data-service": name,
          onclick: () => act(`/api/v1/services/${name}/rollout`, { action: "undo" }, `${name}: rolling back`),
        },
        "Undo rollout",
      ),
    );
  }
  return h("div", { className: "actions" }, cells);
}

async function servicesPage() {
  const { items } = await api("/api/v1/services");
  const headers = ["Service", "Mode", "Running / desired", "Rollout", "Revision"];
  if (session.actions) headers.push("Actions");
  const rows = items.map((service) => {
    const name = service.metadata.name;
    const status = service.status || {};
    return h(
      "tr",
      { "data-service-row": name },
      h("td", {}, h("a", { href: `#/services/${encodeURIComponent(name)}` }, name)),
      h("td", {}, service.spec.mode || "replicated"),
      h(
        "td",
        { className: "num", "data-replicas-shown": name },
        `${status.runningTasks ?? 0} / ${status.desiredTasks ?? 0}`,
      ),
      h("td", {}, rollout(service)),
      h("td", { className: "num" }, status.revision ?? ""),
      session.actions ? h("td", {}, serviceActions(service)) : null,
    );
  });
  return [h("h1", {}, "Services"), table(headers, rows, "No services yet: shoal apply -f service.yaml")];
}

function taskRows(tasks) {
  return tasks.map((task) =>
    h(
      "tr",
      { "data-task": task.id, "data-state": task.status.state },
      h("td", {}, task.name),
      h("td", { className: "num" }, task.slot),
      h("td", {}, task.nodeId || ""),
      h("td", {}, state(task.status.state)),
      h("td", {}, task.desiredState),
      h("td", { className: "muted" }, task.status.error || task.status.message || ""),
      h("td", { className: "muted" }, ago(task.status.timestamp)),
    ),
  );
}

async function servicePage(name) {
  const [detail, tasks] = await Promise.all([
    api(`/api/v1/services/${encodeURIComponent(name)}`),
    api(`/api/v1/tasks?service=${encodeURIComponent(name)}&all=true`),
  ]);
  const service = detail.service;
  const status = service.status || {};
  const ordered = tasks.items.slice().sort((a, b) => a.slot - b.slot || a.createdAt.localeCompare(b.createdAt));
  const logs = document.getElementById("logs") || h("pre", { id: "logs", className: "logs" });
  return [
    h("h1", {}, `Service ${name}`),
    h(
      "p",
      {},
      `${status.runningTasks ?? 0} of ${status.desiredTasks ?? 0} running · `,
      rollout(service),
    ),
    serviceActions(service),
    h("h2", {}, "Tasks"),
    table(["Task", "Slot", "Node", "State", "Desired", "Message", "Changed"], taskRows(ordered), "No tasks."),
    Object.keys(detail.notes || {}).length
      ? [h("h2", {}, "Notes"), h("ul", {}, Object.entries(detail.notes).map(([k, v]) => h("li", {}, `${k}: ${v}`)))]
      : null,
    h("h2", {}, "Logs"),
    h(
      "label",
      { className: "muted" },
      h("input", {
        type: "checkbox",
        id: "log-times",
        checked: logTimes,
        onchange: (event) => {
          logTimes = event.target.checked;
          followLogs(name); // again, from the last lines, with or without times
        },
      }),
      " timestamps",
    ),
    logs,
  ];
}

function followLogs(name) {
  for (const source of pageStreams) source.close(); // the pane's stream: one at a time
  document.getElementById("logs")?.replaceChildren();
  const times = logTimes ? "&timestamps=true" : "";
  const source = new EventSource(withToken(`/api/v1/services/${encodeURIComponent(name)}/logs?tail=100${times}`));
  pageStreams = [source];
  source.onmessage = (message) => {
    const line = JSON.parse(message.data);
    const pre = document.getElementById("logs");
    if (!pre) return;
    const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(
      line.time ? h("span", { className: "time" }, `${line.time} `) : "",
      h("span", { className: "task" }, line.task ? `${line.task} ` : ""),
      `${line.line}\n`,
    );
    while (pre.childNodes.length > 4000) pre.firstChild.remove();
    if (stick) pre.scrollTop = pre.scrollHeight;
  };
  source.addEventListener("failure", (message) => {
    const error = JSON.parse(message.data).error;
    source.close();
    if (error.code === "UNAUTHENTICATED") signedOut(error.message);
    else show(error.message);
  });
}

async function nodesPage() {
  const [nodes, tasks] = await Promise.all([api("/api/v1/nodes"), api("/api/v1/tasks")]);
  const count = {};
  for (const task of tasks.items) {
    if (task.nodeId && task.status.state === "running") count[task.nodeId] = (count[task.nodeId] || 0) + 1;
  }
  const headers = ["Node", "State", "Availability", "Running tasks", "Address", "Labels"];
  if (session.actions) headers.push("Actions");
  const rows = nodes.items.map((node) => {
    const availability = node.spec?.availability || "active";
    const next = availability === "drain" ? "active" : "drain";
    return h(
      "tr",
      { "data-node": node.id },
      h("td", {}, node.id),
      h("td", {}, state(node.status.state), node.status.message ? h("div", { className: "muted" }, node.status.message) : null),
      h("td", {}, state(availability)),
      h("td", { className: "num" }, count[node.id] || 0),
      h("td", { className: "muted" }, node.status.address || ""),
      h("td", { className: "muted" }, Object.entries(node.spec?.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")),
      session.actions
        ? h(
            "td",
            {},
            h(
              "button",
              {
                type: "button",
                className: next === "drain" ? "danger" : "",
                "data-action": next === "drain" ? "drain" : "undrain",
                "data-node": node.id,
                onclick: () =>
                  act(`/api/v1/nodes/${encodeURIComponent(node.id)}/availability`, { availability: next }, `node ${node.id}: ${next}`),
              },
              next === "drain" ? "Drain" : "Make active",
            ),
          )
        : null,
    );
  });
  return [h("h1", {}, "Nodes"), table(headers, rows, "No nodes have joined.")];
}

function eventItem(event) {
  return h(
    "li",
    { "data-event": event.reason },
    h("time", { datetime: event.time }, new Date(event.time).toLocaleTimeString()),
    state(event.type),
    " ",
    h("strong", {}, event.reason),
    " ",
    h("span", { className: "muted" }, event.object),
    " — ",
    event.message,
    event.count > 1 ? h("span", { className: "muted" }, ` (×${event.count})`) : null,
  );
}

async function eventsPage() {
  const list = h("ul", { className: "events", id: "event-list" });
  for (const event of recent.slice().reverse()) list.append(eventItem(event));
  onEvent = (event) => {
    list.prepend(eventItem(event));
    while (list.childNodes.length > 500) list.lastChild.remove();
  };
  return [h("h1", {}, "Events"), list];
}

// ------------------------------------------------------------- router

const pages = [
  [/^#\/services\/([^/]+)$/, (m) => servicePage(decodeURIComponent(m[1])), "services"],
  [/^#\/nodes$/, nodesPage, "nodes"],
  [/^#\/events$/, eventsPage, "events"],
  [/^#?\/?(services)?$/, servicesPage, "services"],
];

async function render() {
  for (const source of pageStreams) source.close();
  pageStreams = [];
  onEvent = null;
  document.getElementById("logs")?.remove(); // another service's
  show("");
  const hash = location.hash || "#/services";
  const [pattern, page, nav] = pages.find(([re]) => re.test(hash)) || pages[pages.length - 1];
  const match = hash.match(pattern);
  for (const link of document.querySelectorAll("header nav a")) {
    link.classList.toggle("current", link.dataset.page === nav);
  }
  const generation = ++renders;
  let loading = false;
  let again = false;
  refresh = async () => {
    if (loading) {
      again = true; // a change arrived while reading: read once more after
      return;
    }
    loading = true;
    try {
      do {
        again = false;
        const content = await page(match);
        if (generation !== renders) return; // the user went to another page meanwhile
        main.replaceChildren(...[content].flat(3).filter(Boolean));
      } while (again);
    } catch (error) {
      if (error.status === 401) return signedOut(error.message);
      show(error.message);
    } finally {
      loading = false;
    }
  };
  await refresh();
  const service = hash.match(/^#\/services\/([^/]+)$/);
  if (service) followLogs(decodeURIComponent(service[1]));
}

// ---------------------------------------------------------- live data

const recent = []; // the newest events, oldest first
let pending = null;

function liveEvents() {
  const live = document.getElementById("live");
  const source = new EventSource(withToken("/api/v1/events?limit=100"));
  source.onopen = () => {
    live.textContent = "live";
    live.className = "live on";
  };
  source.onerror = () => {
    live.textContent = "reconnecting";
    live.className = "live";
  };
  source.addEventListener("failure", (message) => {
    const error = JSON.parse(message.data).error;
    source.close();
    live.textContent = "offline";
    live.className = "live";
    if (error.code === "UNAUTHENTICATED") signedOut(error.message); // the session ended
    else show(error.message);
  });
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    recent.push(event);
    if (recent.length > 500) recent.shift();
    if (onEvent) onEvent(event);
    // A change of a task, service or node: read the page again (at most every 250 ms).
    if (/^(task|service|node)\//.test(event.object) && refresh && !pending) {
      pending = setTimeout(() => {
        pending = null;
        if (refresh && !onEvent) refresh();
      }, 250);
    }
  };
}

function signedOut(message) {
  main.replaceChildren(
    h("h1", {}, "Sign in"),
    h("p", {}, message || "You are not signed in."),
    h("p", {}, "Run ", h("code", {}, "shoal ui"), " and open the link it prints: it signs you in with your shoal identity and role."),
  );
}

async function start() {
  try {
    session = await api("/api/v1/session");
  } catch (error) {
    return signedOut(error.status === 401 ? error.message : `The manager did not answer: ${error.message}`);
  }
  document.getElementById("who").textContent = `${session.user} (${session.role})`;
  const signout = document.getElementById("signout");
  signout.hidden = false;
  signout.onclick = async () => {
    await fetch("/api/v1/logout", { method: "POST", headers: { "X-Shoal-CSRF": pageToken() } });
    localStorage.removeItem(TOKEN_KEY);
    location.reload();
  };
  window.addEventListener("hashchange", render);
  liveEvents();
  await render();
}

start();
