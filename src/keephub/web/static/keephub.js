// keephub pages: the live job log (server-sent events) and training curves that follow the job.
// Served as a file (the pages allow no inline script); everything is added as text, never as HTML.
"use strict";

const MAX_LOG_LINES = 5000;

function followLog(log) {
  const source = new EventSource(log.dataset.eventsUrl);
  const stage = document.getElementById("stage");
  source.onmessage = (message) => {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(document.createTextNode(JSON.parse(message.data).data + "\n"));
    while (log.childNodes.length > MAX_LOG_LINES) log.firstChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  };
  source.addEventListener("stage", (message) => {
    const info = JSON.parse(message.data);
    if (stage) {
      stage.textContent = info.stage;
      stage.className = "stage stage-" + info.stage.toLowerCase();
    }
  });
  source.addEventListener("end", () => {
    source.close();
    const cancel = document.getElementById("cancel-form");
    if (cancel) cancel.remove();
    const curves = document.getElementById("curves");
    if (curves) refreshCurves(curves);
    refreshDurability();
    document.body.dataset.jobEnded = "yes";
  });
}

async function refreshCurves(section) {
  const reply = await fetch(section.dataset.curvesUrl, {credentials: "same-origin"});
  if (!reply.ok) return;
  const state = await reply.json();
  if (String(state.steps) === section.dataset.steps) return;
  section.dataset.steps = String(state.steps);
  document.getElementById("curve-status").textContent = state.source
    ? `from ${state.source}, ${state.steps} steps` : "no trainer_state.json pushed yet";
  for (const image of section.querySelectorAll("img.curve")) {
    image.src = image.src.split("?")[0] + "?steps=" + state.steps;
  }
}

function followCurves(section) {
  refreshCurves(section);
  if (section.dataset.live !== "yes") return;
  const timer = setInterval(() => {
    if (document.body.dataset.jobEnded === "yes") clearInterval(timer);
    refreshCurves(section);
  }, 2000);
}

// The durability section of a running job: its pushes as they land, then the verdict when the job ends.
// Taken from the page itself, fetched again: the server escaped everything in it.
async function refreshDurability() {
  const current = document.getElementById("durability");
  const reply = await fetch(location.pathname, {credentials: "same-origin"});
  if (!current || !reply.ok) return;
  const fresh = new DOMParser().parseFromString(await reply.text(), "text/html").getElementById("durability");
  if (fresh) current.replaceWith(document.importNode(fresh, true));
}

function followDurability(section) {
  if (section.dataset.live !== "yes") return;
  const timer = setInterval(() => {
    if (document.body.dataset.jobEnded === "yes") clearInterval(timer);
    refreshDurability();
  }, 3000);
}

document.addEventListener("DOMContentLoaded", () => {
  const log = document.getElementById("log");
  if (log && log.dataset.eventsUrl) followLog(log);
  const curves = document.getElementById("curves");
  if (curves) followCurves(curves);
  const durability = document.getElementById("durability");
  if (durability) followDurability(durability);
});
