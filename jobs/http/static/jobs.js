// The jobs page: the newest jobs with state, progress and rate, read again every few seconds.
import {
  askAgainIfRefused,
  count,
  el,
  getJson,
  notice,
  pathPart,
  progressBar,
  rate,
  shortId,
  signIn,
  stamp,
  stateBadge,
  time,
} from "/static/common.js";

const REFRESH_MS = 5000;
const LIMIT = 100;
let timer = null;

function jobRow(job) {
  const href = `/jobs/${pathPart(job.id)}`;
  const done = job.succeeded + job.failed + job.cancelled;
  const row = el(
    "tr",
    { class: "job-row", "data-job-id": job.id },
    el("td", {}, el("a", { href, class: "job-link", title: job.id }, el("code", {}, shortId(job.id)))),
    el("td", { class: "kind" }, job.kind),
    el("td", {}, stateBadge(job)),
    el(
      "td",
      { class: "progress-column" },
      progressBar(job),
      el("span", { class: "progress-text" }, `${count(done)} / ${count(job.total)}`),
    ),
    el("td", { class: "number rate" }, rate(job.rate)),
    el("td", { class: "created", title: job.created_at || "" }, time(job.created_at)),
    el("td", { class: "source", title: job.source }, job.source || "inline items"),
  );
  // The whole row opens the job; the link inside stays a link (new tab, copy address).
  row.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    location.href = href;
  });
  return row;
}

function query() {
  const params = new URLSearchParams({ limit: String(LIMIT) });
  const status = document.getElementById("filter-status").value;
  const kind = document.getElementById("filter-kind").value;
  if (status) params.set("status", status);
  if (kind) params.set("kind", kind);
  return `/v1/jobs?${params}`;
}

async function refresh() {
  clearTimeout(timer);
  try {
    const { jobs } = await getJson(query());
    const table = document.getElementById("jobs");
    table.tBodies[0].replaceChildren(...jobs.map(jobRow));
    table.hidden = jobs.length === 0;
    document.getElementById("empty").hidden = jobs.length !== 0;
    notice(null);
    stamp();
  } catch (error) {
    if (askAgainIfRefused(error, start)) return;
    notice(`Could not read the jobs: ${error.message} (trying again)`);
  }
  clearTimeout(timer); // another refresh (after a filter changed) may have set one meanwhile
  timer = setTimeout(refresh, REFRESH_MS);
}

function start() {
  refresh();
}

for (const id of ["filter-status", "filter-kind"]) {
  document.getElementById(id).addEventListener("change", refresh);
}
signIn(start);
