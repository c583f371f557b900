// The training, live: every step the trainer is training (or has just trained), with a progress
// bar (epochs, the share of the epoch in hand, the time left) and its accuracy and loss curves
// growing an epoch at a time. The first paint comes from GET /progress; then the service pushes
// changes on GET /progress/stream (Server-Sent Events, service/live.py). When it serves a newly
// published version, `onPublished` (lab.js) brings in the step's answer card and answers the
// current input again, without reloading the page.
import { $, el, getJSON } from "./api.js";
import { fetchWithKey } from "./auth.js";

// One colour per step (by number), at least 3:1 on white; test solid, train dashed.
const PALETTE = ["#7c3aed", "#b45309", "#0f766e", "#1f4fd1", "#be185d", "#4d7c0f", "#c2410c", "#334155"];
const RETRY_MS = 2_000; // before connecting again to a stream that ended
const RECONNECT_MS = 15_000; // after a refusal (MAX_STREAMS, a missing key)
const STATES = {
  training: "training",
  published: "published",
  failed: "failed",
  stopped: "stopped",
};

const page = document.body.dataset; // for tests: liveEvents, live ("connected"), livePublished
const live = { steps: new Map(), serving: null, onPublished: async () => {}, refreshing: null, again: false, fresh: new Set() };
const charts = {};

const colour = (step) => PALETTE[(step.number - 1) % PALETTE.length];
const pct = (p) => `${Math.round(100 * p)}\u00a0%`;

// "about 3 min": the trainer's estimate, in words a class reads at a glance.
function duration(seconds) {
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  const hours = Math.floor(seconds / 3600);
  return `${hours} h ${Math.round((seconds - 3600 * hours) / 60)} min`;
}

function facts(step) {
  const last = step.history.at(-1);
  const latest = last
    ? `epoch ${last.epoch}: test ${last.test_accuracy.toFixed(2)} %, loss ${last.test_loss.toFixed(3)}`
    : "no epoch finished yet";
  const capital = latest[0].toUpperCase() + latest.slice(1);
  if (step.state === "training") {
    const left = step.eta_seconds === null ? "time left not known yet" : `about ${duration(step.eta_seconds)} left`;
    return `Epoch ${step.epoch} of ${step.epochs}, ${pct(step.fraction)} through it · ${left} · ${latest}`;
  }
  if (step.state === "published") {
    const best = Math.max(...step.history.map((e) => e.test_accuracy));
    const result = step.history.length ? `; best test ${best.toFixed(2)} %` : "";
    return `Published after ${step.history.length} epochs in ${duration(step.elapsed_seconds)}${result}. Its card is up in Try it.`;
  }
  const why = step.message ? `: ${step.message}` : "";
  return `${step.state === "failed" ? "Failed" : "Stopped"} in epoch ${step.epoch} of ${step.epochs}${why}. ${capital}.`;
}

function row(step) {
  const done = Math.round(100 * step.done);
  return el(
    "article",
    { class: "live-step", "data-step": step.step, "data-state": step.state },
    el(
      "header",
      {},
      el("span", { class: "swatch", style: `background:${colour(step)}`, "aria-hidden": "true" }),
      el("span", { class: "num", text: step.number }),
      el("h3", { text: `${step.title}` }),
      el("code", { text: step.step }),
      el("span", { class: "badge", text: STATES[step.state] }),
    ),
    el(
      "div",
      {
        class: "meter",
        role: "progressbar",
        "aria-valuemin": "0",
        "aria-valuemax": "100",
        "aria-valuenow": String(done),
        "aria-label": `${step.step}: ${done} % of its ${step.epochs} epochs`,
        style: `--epochs:${step.epochs}`,
      },
      el("i", { style: `width:${done}%;background:${colour(step)}` }),
    ),
    el("p", { class: "live-facts", text: facts(step) }),
  );
}

function curve(step, key, label, dashed) {
  return {
    label,
    data: step.history.map((e) => ({ x: e.epoch, y: e[key] })),
    borderColor: colour(step),
    backgroundColor: colour(step),
    borderDash: dashed ? [5, 4] : [],
    borderWidth: dashed ? 1.5 : 2.5,
    pointRadius: dashed ? 0 : 3,
    tension: 0.2,
  };
}

// Test (solid, in the legend) and train (dashed) per step, on one chart for all the steps.
function drawCurves(id, steps, testKey, trainKey, title) {
  const datasets = steps.flatMap((s) => [
    curve(s, testKey, `${s.number} ${s.step}`, false),
    curve(s, trainKey, `${s.number} ${s.step} (train)`, true),
  ]);
  const epochs = Math.max(1, ...steps.map((s) => s.epochs));
  const chart = charts[id];
  if (chart) {
    chart.data.datasets = datasets;
    chart.options.scales.x.max = epochs;
    chart.update("none");
    return;
  }
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.color = "#4a5160";
  const grid = { color: "#e7e4dd" };
  charts[id] = new Chart($(`#${id}`), {
    type: "line",
    data: { datasets },
    options: {
      animation: false,
      maintainAspectRatio: false,
      interaction: { mode: "nearest", intersect: false },
      scales: {
        x: {
          type: "linear",
          min: 1,
          max: epochs,
          ticks: { stepSize: 1, maxRotation: 0 },
          title: { display: true, text: "epoch" },
          grid,
        },
        y: { title: { display: true, text: title }, grid },
      },
      plugins: {
        legend: { labels: { boxHeight: 2, filter: (item) => !item.text.endsWith("(train)") } },
      },
    },
  });
}

function render() {
  const steps = [...live.steps.values()].sort((a, b) => a.number - b.number);
  const training = steps.filter((s) => s.state === "training");
  $("#live").hidden = steps.length === 0;
  $("#live-link").hidden = training.length === 0;
  $("#live-link").textContent = `Training now: ${training.map((s) => s.step).join(", ")}. Watch it live ↓`;
  const counts = Object.keys(STATES)
    .map((state) => [state, steps.filter((s) => s.state === state).length])
    .filter(([, n]) => n)
    .map(([state, n]) => `${n} ${state}`);
  $("#live-summary").textContent = steps.length
    ? `${steps.length === 1 ? "One step" : `${steps.length} steps`}: ${counts.join(", ")}. This follows the trainer as it writes its progress into the model volume.`
    : "";
  $("#live-steps").replaceChildren(...steps.map(row));
  const curves = steps.some((s) => s.history.length);
  $("#live-curves").hidden = !curves;
  if (curves) {
    drawCurves("live-acc", steps, "test_accuracy", "train_accuracy", "accuracy %");
    drawCurves("live-loss", steps, "test_loss", "train_loss", "loss");
  }
}

// New versions served: the cards and the answers again (once more if more came meanwhile),
// each new card marked for a moment.
async function published(slugs) {
  for (const slug of slugs) live.fresh.add(slug);
  live.again = true;
  live.refreshing ??= (async () => {
    try {
      while (live.again) {
        live.again = false;
        await live.onPublished();
      }
      for (const slug of live.fresh) document.querySelector(`.card[data-step="${slug}"]`)?.classList.add("fresh");
      page.livePublished = [...live.fresh].join(" ");
    } finally {
      live.refreshing = null;
    }
  })();
  return live.refreshing;
}

function show(snapshot) {
  const before = live.serving;
  live.steps = new Map(snapshot.steps.map((s) => [s.step, s]));
  live.serving = { ...snapshot.serving };
  render();
  if (before) {
    // Published while the page was not connected (a restart, a reconnection).
    const changed = Object.keys(snapshot.serving).filter((s) => before[s] !== snapshot.serving[s]);
    if (changed.length) published(changed);
  }
}

const handlers = {
  snapshot: show,
  progress(step) {
    live.steps.set(step.step, step);
    render();
  },
  cleared({ step }) {
    live.steps.delete(step);
    render();
  },
  published({ step, version }) {
    live.serving[step] = version;
    published([step]);
  },
  closing() {}, // the service is stopping: the stream ends, and the page reconnects
};

// Server-Sent Events from a response body as they arrive: `handle(kind, data)` for each event
// with data (comments and the retry hint carry none).
async function readEvents(body, handle) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) handle(kind, data.join("\n"));
    }
  }
}

// The stream, read through fetch rather than EventSource, which cannot send the API key's
// header (auth.js). Whenever it ends (the service restarting, a proxy's timeout) the page
// connects again, RETRY_MS later, or RECONNECT_MS after a refusal; each connection begins with
// a snapshot, so nothing is missed.
async function follow() {
  const leaving = new AbortController();
  window.addEventListener("pagehide", () => leaving.abort(), { once: true });
  while (!leaving.signal.aborted) {
    let wait = RETRY_MS;
    try {
      const response = await fetchWithKey("/progress/stream", {
        headers: { accept: "text/event-stream" },
        signal: leaving.signal,
      });
      if (response.ok) {
        page.live = "connected";
        await readEvents(response.body, (kind, data) => {
          page.liveEvents = String(Number(page.liveEvents || 0) + 1);
          handlers[kind]?.(JSON.parse(data));
        });
      } else {
        wait = RECONNECT_MS; // MAX_STREAMS reached, or no key: not at once again
        await response.body?.cancel();
      }
    } catch {
      // the connection broke (or the page is leaving): as for an end
    }
    page.live = "reconnecting";
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

// Show the training as it stands, then follow it. `onPublished()` rebuilds the answer cards
// (and the journey) and answers the current input again.
export async function startLive(onPublished) {
  live.onPublished = onPublished;
  try {
    show(await getJSON("/progress"));
  } catch {
    return; // no live view from this service; the rest of the page works without it
  }
  follow();
}
