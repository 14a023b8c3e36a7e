// A job's page: counters, speed, cost, errors by code with example items and a sample of outputs, read again
// every few seconds until the job has ended; Cancel and Retry for a token with the submit scope.
import {
  askAgainIfRefused,
  call,
  count,
  duration,
  el,
  getJson,
  isFinal,
  notice,
  pathPart,
  postJson,
  progressBar,
  rate,
  shortId,
  signIn,
  stamp,
  stateBadge,
  time,
} from "/static/common.js";

const REFRESH_MS = 3000;
/** Outputs shown at most. */
const SAMPLE = 12;
/** Example items shown per error code. */
const EXAMPLES = 3;
const THUMB_PX = 256;
const COUNTERS = ["total", "queued", "running", "succeeded", "failed", "cancelled", "skipped"];

/** The id (or unique prefix) the address names; the API's answer gives the full id. */
const named = decodeURIComponent(location.pathname.split("/")[2] || "");
let me = null;
let job = null;
let timer = null;
/** What the errors and outputs sections were last read for: they are read again only when these move. */
let readFor = { failed: null, succeeded: null, sampled: 0 };
/** blob: URLs of the thumbnails shown, freed when replaced. */
let thumbnails = [];

const byId = (id) => document.getElementById(id);

function jobPath(suffix = "") {
  return `/v1/jobs/${pathPart(job ? job.id : named)}${suffix}`;
}

/** Seconds with three significant digits (`0.0123`, `4.56`, `789`, `12,345`). */
function seconds(value) {
  return value >= 1000 ? count(Math.round(value)) : Number(value.toPrecision(3)).toString();
}

function gpuTime(spent) {
  if (!spent) return "-";
  return spent < 60 ? `${seconds(spent)} GPU-s` : `${duration(spent)} (${seconds(spent)} GPU-s)`;
}

function fact(key, name, ...value) {
  return el("div", { class: "fact", "data-fact": key }, el("dt", {}, name), el("dd", {}, ...value));
}

function render() {
  const short = shortId(job.id);
  document.title = `${job.kind} ${short} · ovis-batch`;
  byId("job-kind").textContent = job.kind;
  byId("job-id").textContent = job.id;
  byId("job-short").textContent = short;
  byId("job-state").replaceChildren(stateBadge(job));

  const done = job.succeeded + job.failed + job.cancelled;
  const percent = job.total ? Math.floor((100 * done) / job.total) : 0;
  byId("job-progress").replaceChildren(
    progressBar(job),
    el("div", { class: "progress-text" }, `${count(done)} of ${count(job.total)} items ended (${percent}%)`),
  );

  byId("counters").replaceChildren(
    ...COUNTERS.map((name) =>
      el(
        "div",
        { class: `counter counter-${name}`, "data-counter": name },
        el("dt", {}, name),
        el("dd", {}, count(job[name])),
      ),
    ),
  );

  const left = job.gpu_seconds_to_finish;
  byId("stats").replaceChildren(
    fact("rate", "Rate", rate(job.rate)),
    fact("eta", "ETA", isFinal(job) ? "ended" : duration(job.eta_s)),
    fact("gpu", "GPU time", gpuTime(job.gpu_seconds)),
    fact("gpu-per-item", "GPU-s per item", job.gpu_seconds_per_item ? seconds(job.gpu_seconds_per_item) : "-"),
    fact("gpu-to-finish", "GPU time to finish", !isFinal(job) && left ? `about ${duration(left)}` : "-"),
  );

  const results = job.export_url || (isFinal(job) ? "pending (the reconciler writes it)" : "when the job ends");
  byId("details").replaceChildren(
    fact("source", "Source", job.source || "inline items"),
    fact("output", "Outputs", job.output_url ? `${job.output_url.replace(/\/$/, "")}/${job.id}/` : "-"),
    fact("results", "Results file", results),
    fact("priority", "Priority", String(job.priority)),
    fact("created", "Created", time(job.created_at)),
    fact("started", "Started", time(job.started_at)),
    fact("finished", "Finished", time(job.finished_at)),
  );

  const submit = me !== null && me.scopes.includes("submit");
  byId("cancel").hidden = !(submit && !isFinal(job));
  byId("retry").hidden = !(submit && job.failed > 0);
  byId("job").hidden = false;
}

// -- errors by code -------------------------------------------------------------------------------------------
async function readErrors() {
  if (job.failed === readFor.failed) return;
  const codes = Object.entries(job.errors || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const rows = await Promise.all(codes.map(([code, items]) => errorRow(code, items)));
  byId("errors").tBodies[0].replaceChildren(...rows);
  const counted = codes.reduce((sum, [, items]) => sum + items, 0);
  const note = byId("errors-note");
  note.hidden = counted >= job.failed;
  note.textContent = `Counted over the first ${count(counted)} of ${count(job.failed)} failures.`;
  byId("errors-card").hidden = codes.length === 0;
  readFor.failed = job.failed;
}

async function errorRow(code, items) {
  const params = new URLSearchParams({ code, limit: String(EXAMPLES) });
  const { items: examples } = await getJson(jobPath(`/failures?${params}`));
  const list = el(
    "ul",
    { class: "examples" },
    ...examples.map((item) =>
      el(
        "li",
        { class: "example" },
        el("code", { class: "item-id" }, item.id),
        el("span", { class: "error-message" }, item.error_message || ""),
      ),
    ),
  );
  return el(
    "tr",
    { class: "error-row", "data-code": code },
    el("td", {}, el("code", { class: "error-code" }, code)),
    el("td", { class: "number error-count" }, count(items)),
    el("td", {}, list),
  );
}

// -- a sample of outputs --------------------------------------------------------------------------------------
async function readOutputs() {
  // The sample is the first succeeded items in source order: once full, more successes do not change it.
  const unchanged = job.succeeded === readFor.succeeded;
  const full = readFor.sampled >= SAMPLE && job.succeeded >= readFor.succeeded;
  if (unchanged || full) return;
  const params = new URLSearchParams({ status: "succeeded", limit: String(SAMPLE) });
  const text = await (await call(jobPath(`/results?${params}`))).text();
  const rows = text
    .split("\n")
    .filter((line) => line.trim())
    .map((line) => JSON.parse(line))
    .slice(0, SAMPLE);
  const cards = rows.map((row) => (job.kind === "caption" ? captionCard(row) : imageCard(row)));
  const previous = thumbnails;
  thumbnails = [];
  byId("outputs").replaceChildren(...cards);
  previous.forEach((url) => URL.revokeObjectURL(url));
  byId("outputs-card").hidden = rows.length === 0;
  readFor.succeeded = job.succeeded;
  readFor.sampled = rows.length;
  if (job.kind !== "caption") await Promise.all(rows.map((row, index) => showThumbnail(row, cards[index])));
}

function captionCard(row) {
  return el(
    "figure",
    { class: "output output-caption", "data-item-id": row.id },
    el("figcaption", {}, el("code", { class: "item-id" }, row.id)),
    el("p", { class: "caption-text" }, row.output || ""),
  );
}

function imageCard(row) {
  return el(
    "figure",
    { class: "output output-image", "data-item-id": row.id },
    el("div", { class: "thumb-frame" }, el("img", { class: "thumb", alt: `output of ${row.id}` })),
    el(
      "figcaption",
      {},
      el("code", { class: "item-id" }, row.id),
      row.prompt ? el("span", { class: "prompt", title: row.prompt }, row.prompt) : null,
    ),
  );
}

/** Fetch the item's thumbnail with the token (an <img src> could not send it) and show it as a blob: URL. */
async function showThumbnail(row, card) {
  const img = card.querySelector("img");
  try {
    const response = await call(jobPath(`/items/${pathPart(row.id)}/output?thumb=${THUMB_PX}`));
    const url = URL.createObjectURL(await response.blob());
    thumbnails.push(url);
    img.src = url;
  } catch (error) {
    img.replaceWith(el("span", { class: "thumb-missing" }, `no preview: ${error.message}`));
  }
}

// -- refreshing -----------------------------------------------------------------------------------------------
async function refresh() {
  clearTimeout(timer);
  try {
    job = await getJson(jobPath());
  } catch (error) {
    if (askAgainIfRefused(error, start)) return;
    if (error.status === 404 || error.status === 422) {
      notice(error.message);
      byId("job").hidden = true;
      return; // no such job (or an ambiguous prefix): nothing to wait for
    }
    notice(`Could not read the job: ${error.message} (trying again)`);
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  render();
  let complete = true;
  try {
    await Promise.all([readErrors(), readOutputs()]);
    notice(null);
  } catch (error) {
    if (askAgainIfRefused(error, start)) return;
    complete = false;
    notice(`Could not read all of the job: ${error.message} (trying again)`);
  }
  stamp();
  // An ended job changes no more, unless someone acts on it (retry, resume): then the page starts again.
  clearTimeout(timer); // another refresh (an action's) may have set one meanwhile
  if (!isFinal(job) || !complete) timer = setTimeout(refresh, REFRESH_MS);
}

async function act(button, path, body, done) {
  button.disabled = true;
  byId("action-result").textContent = "";
  try {
    done(await postJson(jobPath(path), body));
  } catch (error) {
    if (askAgainIfRefused(error, start)) return;
    byId("action-result").textContent = `${button.textContent} failed: ${error.message}`;
  } finally {
    button.disabled = false;
  }
  await refresh();
}

byId("cancel").addEventListener("click", () => {
  const question = `Cancel job ${shortId(job.id)}? Queued items end now, running ones after their current batch.`;
  if (!confirm(question)) return;
  act(byId("cancel"), "/cancel", {}, () => {
    byId("action-result").textContent = "Cancel requested.";
  });
});

byId("retry").addEventListener("click", () => {
  act(byId("retry"), "/retry", {}, (answer) => {
    byId("action-result").textContent = `${count(answer.requeued)} failed items queued again.`;
    readFor.failed = null;
  });
});

function start(caller) {
  me = caller;
  refresh();
}

signIn(start);
