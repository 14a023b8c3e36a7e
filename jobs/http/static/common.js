// What both pages share: the token, calls to the JSON API, DOM building without HTML strings, formatting and
// the progress bar. Every text from the API reaches the page through textContent or an attribute, never as
// markup: item ids and error messages are whatever the user's manifest held.

const TOKEN_KEY = "ovis-batch.token";

/** The token pasted in this tab, or null. sessionStorage: it ends with the tab and is never a cookie. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** An answer of the API that is not a success, with the error body's code and message. */
export class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Call the API at `path` with the token; the Response when it succeeded, else throws ApiFailure. */
export async function call(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const secret = token();
  if (secret) headers.set("Authorization", `Bearer ${secret}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers, credentials: "omit", cache: "no-store" });
  } catch (error) {
    throw new ApiFailure(0, "unreachable", `the server does not answer (${error.message})`);
  }
  if (!response.ok) {
    let code = `http_${response.status}`;
    let message = response.statusText || `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      }
    } catch (_) {
      // not the API's JSON error body (a proxy's page, say): keep the status line
    }
    throw new ApiFailure(response.status, code, message);
  }
  return response;
}

/** GET `path` as JSON. */
export async function getJson(path) {
  return (await call(path)).json();
}

/** POST `body` as JSON to `path`; the answer as JSON. */
export async function postJson(path, body) {
  const response = await call(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return response.json();
}

/** A text that names a job or item in a URL path. */
export function pathPart(text) {
  return encodeURIComponent(text);
}

/** An element with attributes and children (strings become text nodes: never parsed as HTML). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Show `message` in the page's notice line (kind "error" or "info"), or hide it when null. */
export function notice(message, kind = "error") {
  const box = document.getElementById("notice");
  box.hidden = message === null;
  box.className = `notice notice-${kind}`;
  box.textContent = message || "";
}

/** Say when the data shown was read. */
export function stamp() {
  const node = document.getElementById("updated");
  if (node) node.textContent = `updated ${new Date().toLocaleTimeString()}`;
}

// -- formatting -----------------------------------------------------------------------------------------------
const integer = new Intl.NumberFormat();

export function count(value) {
  return integer.format(value ?? 0);
}

/** `1h02m`, `3m05s`, `42s` or `-`, as the CLI writes durations. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const whole = Math.round(seconds);
  const hours = Math.floor(whole / 3600);
  const minutes = Math.floor((whole % 3600) / 60);
  const secs = whole % 60;
  const two = (n) => String(n).padStart(2, "0");
  if (hours) return `${hours}h${two(minutes)}m`;
  return minutes ? `${minutes}m${two(secs)}s` : `${secs}s`;
}

export function rate(itemsPerSecond) {
  if (!itemsPerSecond) return "-";
  const digits = itemsPerSecond < 10 ? 2 : 1;
  return `${itemsPerSecond.toFixed(digits)} items/s`;
}

export function time(iso) {
  if (!iso) return "-";
  // The API writes every time in ISO 8601 with its offset (+00:00), which Date reads as it is.
  const moment = new Date(iso);
  return Number.isNaN(moment.getTime()) ? iso : moment.toLocaleString();
}

/** The first 8 characters of a job id: as much as the CLI shows, and enough to name the job to the API. */
export function shortId(id) {
  return id.slice(0, 8);
}

const FINAL = new Set(["succeeded", "failed", "partial", "cancelled"]);

export function isFinal(job) {
  return FINAL.has(job.status);
}

export function stateBadge(job) {
  const text = job.submitting ? `${job.status}, submitting` : job.status;
  return el("span", { class: `state state-${job.status}`, "data-state": job.status }, text);
}

/** The job's progress as one bar: succeeded, failed and cancelled segments, each its share of the total. */
export function progressBar(job) {
  const total = job.total || 0;
  const done = job.succeeded + job.failed + job.cancelled;
  const bar = el("div", {
    class: "bar",
    role: "progressbar",
    "aria-valuemin": 0,
    "aria-valuemax": total,
    "aria-valuenow": done,
    "aria-label": `${count(done)} of ${count(total)} items ended`,
  });
  for (const outcome of ["succeeded", "failed", "cancelled"]) {
    const share = total ? (100 * job[outcome]) / total : 0;
    const segment = el("span", { class: `segment segment-${outcome}`, title: `${count(job[outcome])} ${outcome}` });
    segment.style.width = `${share}%`;
    bar.append(segment);
  }
  return bar;
}

// -- the token ------------------------------------------------------------------------------------------------
/**
 * Find out who the page acts as (GET /v1/whoami) and show it in #auth; `onReady(me)` runs once the API
 * answers, at once on an open API or with a token kept in this tab, else after a token is pasted.
 */
export async function signIn(onReady) {
  const box = document.getElementById("auth");
  let me;
  try {
    me = await getJson("/v1/whoami");
  } catch (error) {
    if (error.status === 401 || error.status === 403) {
      showTokenForm(box, token() ? `That token was refused: ${error.message}` : null, onReady);
      return;
    }
    notice(`Cannot reach the API: ${error.message}`);
    setTimeout(() => signIn(onReady), 5000);
    return;
  }
  notice(null);
  showCaller(box, me, onReady);
  onReady(me);
}

function showCaller(box, me, onReady) {
  const who = me.name
    ? el("span", { class: "who" }, "token ", el("strong", { id: "token-name" }, me.name))
    : el("span", { class: "who" }, "open API, no token needed");
  const scopes = el("span", { class: "scopes", id: "scopes" }, me.scopes.join(" + "));
  box.replaceChildren(who, scopes);
  if (token()) {
    const forget = el("button", { type: "button", class: "link", id: "forget-token" }, "Forget token");
    forget.addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      location.reload();
    });
    box.append(forget);
  }
}

function showTokenForm(box, problem, onReady) {
  const input = el("input", {
    type: "password",
    id: "token-input",
    placeholder: "Paste an API token",
    autocomplete: "off",
    spellcheck: "false",
    "aria-label": "API token",
    required: true,
  });
  const form = el(
    "form",
    { id: "token-form", class: "token-form" },
    input,
    el("button", { type: "submit", id: "token-submit" }, "Use token"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    signIn(onReady);
  });
  box.replaceChildren(form);
  notice(problem || "This server needs an API token: paste one to see its jobs (kept in this tab only).", problem ? "error" : "info");
  input.focus();
}

/** When a call fails because the token is no longer accepted, ask for one again; true if it did. */
export function askAgainIfRefused(error, onReady) {
  if (error.status !== 401) return false;
  sessionStorage.removeItem(TOKEN_KEY);
  showTokenForm(document.getElementById("auth"), `The token was refused: ${error.message}`, onReady);
  return true;
}
