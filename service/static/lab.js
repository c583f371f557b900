// The lab's input and answers: the drawing pad, photo uploads and sample digits; every step's
// answer, live while drawing; what the models saw; each step's occlusion heatmap.
//
// Live while drawing, without flooding the service: a change to the input is answered at most
// DEBOUNCE_MS later, with at most one request in flight; when it returns, the newest input is
// sent if it changed meanwhile, so the last drawing is always the one answered. Heatmaps
// (one POST /explain per step) follow only once the answers are up to date, and stop as soon
// as the input changes again.
import { $, ApiError, bestStep, command, count, el, getJSON, paintGrey, percent, pixels, postImage } from "./api.js";
import { showJourney } from "./journey.js";
import { startLive } from "./live.js";

const DEBOUNCE_MS = 120; // a stroke is answered while it is drawn, a few times a second
const PEN = 18; // pen width on the 280-pixel pad: about MNIST's stroke once fitted into 20x20
const HEAT_FLOOR = 0.05; // a heatmap's full colour means a drop of at least 5 points

const pad = $("#pad");
const ink = pad.getContext("2d");
const status = $("#status");
const page = document.body.dataset; // what tests (and the curious) can read: data-wanted ...

let steps = []; // GET /steps
// What the models are asked about: nothing, the pad's drawing, or a file (a photo, a sample
// or a mistake, shown on the pad) with its true label when known.
let input = { kind: "empty", blob: null, label: null, what: "" };
let stroke = null; // the pointer drawing now: { id, x, y }
const live = { wanted: 0, predicted: 0, busy: false, timer: 0, image: null, failed: false };
// Inputs being read (a photo's preview decoded, a digit's PNG encoded): until they are wanted,
// data-reading says so, and nobody (a test, a screen reader) takes the last answer for theirs.
let reading = 0;
async function read(work) {
  page.reading = String(++reading);
  try {
    return await work();
  } finally {
    page.reading = String(--reading);
  }
}

// --- The pad ---------------------------------------------------------------------------

function blank() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [
    ((event.clientX - box.left) * pad.width) / box.width,
    ((event.clientY - box.top) * pad.height) / box.height,
  ];
}

function line(x0, y0, x1, y1) {
  ink.fillStyle = ink.strokeStyle = "#111";
  ink.lineWidth = PEN;
  ink.lineCap = "round";
  ink.beginPath();
  if (x0 === x1 && y0 === y1) {
    // A tap: canvas draws no cap on a line of no length, so the dot is a filled circle.
    ink.arc(x0, y0, PEN / 2, 0, 2 * Math.PI);
    ink.fill();
    return;
  }
  ink.moveTo(x0, y0);
  ink.lineTo(x1, y1);
  ink.stroke();
}

pad.addEventListener("pointerdown", (event) => {
  if (event.pointerType === "mouse" && event.button !== 0) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  page.pointer = event.pointerType; // mouse, pen or touch
  if (input.kind !== "pad") blank(); // a drawing starts on a clean pad, not over a photo or sample
  input = { kind: "pad", blob: null, label: null, what: "your drawing" };
  const [x, y] = padPoint(event);
  stroke = { id: event.pointerId, x, y };
  line(x, y, x, y);
  changed();
});

pad.addEventListener("pointermove", (event) => {
  if (!stroke || event.pointerId !== stroke.id) return;
  // Coalesced events: every point the pointer passed since the last frame, for smooth lines.
  for (const point of event.getCoalescedEvents?.() ?? [event]) {
    const [x, y] = padPoint(point);
    line(stroke.x, stroke.y, x, y);
    Object.assign(stroke, { x, y });
  }
  changed();
});

function endStroke(event) {
  if (!stroke || event.pointerId !== stroke.id) return;
  stroke = null;
  changed();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function padBlob() {
  return new Promise((resolve) => pad.toBlob(resolve, "image/png"));
}

// Show a file on the pad (a photo fitted into it, as far as the browser can decode it).
async function showOnPad(blob) {
  blank();
  try {
    const bitmap = await createImageBitmap(blob);
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const [w, h] = [bitmap.width * scale, bitmap.height * scale];
    ink.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  } catch {
    ink.fillStyle = "#4a5160";
    ink.font = "16px system-ui, sans-serif";
    ink.fillText("(no preview of this file)", 40, pad.height / 2);
  }
}

// --- Inputs ----------------------------------------------------------------------------

function useFile(blob, label = null, what = "your photo") {
  return read(async () => {
    input = { kind: "file", blob, label, what };
    await showOnPad(blob);
    changed();
  });
}

// A published MNIST digit: sent as its own 28x28 PNG (so the models see it exactly as the
// test set has it), shown on the pad as dark ink on white. `example`: the digit the page opens
// with, answered before the user does anything, so that no card starts empty.
function useDigit(digit, what, { example = false } = {}) {
  return read(async () => {
    const grey = pixels(digit);
    const canvas = el("canvas", { width: 28, height: 28 });
    paintGrey(canvas, grey);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    if (example && input.kind !== "empty") return false; // the user was quicker: theirs stays
    input = { kind: "file", blob, label: digit.label, what, example };
    const shown = el("canvas", { width: 28, height: 28 });
    paintGrey(shown, grey, true);
    blank();
    ink.imageSmoothingEnabled = true;
    ink.drawImage(shown, 0, 0, pad.width, pad.height);
    changed();
    if (!example) $("#try").scrollIntoView({ behavior: "smooth", block: "start" });
    return true;
  });
}

$("#clear").addEventListener("click", () => {
  blank();
  input = { kind: "empty", blob: null, label: null, what: "" };
  changed();
});

$("#upload").addEventListener("change", (event) => {
  const [file] = event.target.files;
  if (file) useFile(file);
  event.target.value = ""; // the same file chosen again is a new input
});

pad.addEventListener("dragover", (event) => {
  event.preventDefault();
  pad.classList.add("drop");
});
pad.addEventListener("dragleave", () => pad.classList.remove("drop"));
pad.addEventListener("drop", (event) => {
  event.preventDefault();
  pad.classList.remove("drop");
  const [file] = event.dataTransfer.files;
  if (file) useFile(file);
});

$("#why").addEventListener("change", (event) => {
  $(".results").classList.toggle("no-why", !event.target.checked);
  if (event.target.checked) pump();
});

// --- Asking the service ----------------------------------------------------------------

function changed() {
  live.wanted += 1;
  page.wanted = live.wanted;
  // Not reset by later changes: while a stroke goes on it is sent every DEBOUNCE_MS or so.
  live.timer ||= setTimeout(() => {
    live.timer = 0;
    pump();
  }, DEBOUNCE_MS);
}

async function currentBlob() {
  if (input.kind === "empty") return null;
  return input.kind === "file" ? input.blob : padBlob();
}

async function predictNewest() {
  const generation = live.wanted;
  live.predicted = generation;
  const blob = await currentBlob();
  live.image = blob && { generation, blob, label: input.label, what: input.what, example: input.example };
  if (!blob) {
    showIdle();
    document.dispatchEvent(new CustomEvent("lab:input", { detail: null }));
  } else {
    try {
      showAnswers(await postImage("/predict/all", blob), generation);
      live.failed = false;
      document.dispatchEvent(new CustomEvent("lab:input", { detail: live.image })); // inside.js
    } catch (error) {
      live.failed = true;
      showError(error);
    }
  }
  page.predicted = generation;
}

function nextToExplain() {
  if (!$("#why").checked || !live.image || live.failed) return null;
  if (live.image.generation !== live.predicted) return null;
  return steps.find((s) => s.trained && cards.get(s.slug)?.explained !== live.image.generation);
}

async function explain(step) {
  const { generation, blob } = live.image;
  const card = cards.get(step.slug);
  card.explained = generation;
  try {
    const answer = await postImage(`/explain/${step.slug}`, blob);
    if (live.image?.generation === generation) showHeat(card, answer);
  } catch (error) {
    card.heatNote.textContent = `no heatmap: ${error.message}`;
  }
}

async function pump() {
  if (live.busy) return; // the loop running now picks the change up
  live.busy = true;
  page.busy = "true";
  try {
    for (;;) {
      if (live.predicted < live.wanted) {
        await predictNewest();
        continue;
      }
      const step = nextToExplain();
      if (!step) break;
      await explain(step);
    }
    if (live.image && $("#why").checked) page.explained = live.image.generation;
  } finally {
    live.busy = false;
    page.busy = "false";
  }
}

// --- Answers ---------------------------------------------------------------------------

const cards = new Map(); // slug -> { root, digit, conf, bars, heat, heatNote, explained }

function trainedCard(step) {
  const bars = [...Array(10).keys()].map((d) =>
    el("li", {}, el("i", { style: "height:0" }), el("span", { class: "visually-hidden", text: `${d}: ` })),
  );
  const card = {
    digit: el("span", { class: "digit", text: "–" }),
    conf: el("span", { class: "conf" }),
    bars,
    heat: el("canvas", { width: 28, height: 28, role: "img", "aria-label": `heatmap of ${step.slug}: none yet` }),
    heatNote: el("span", { class: "fine" }),
    explained: 0,
  };
  card.root = el(
    "article",
    { class: "card", "data-step": step.slug, "aria-label": `Step ${step.number}, ${step.title}` },
    el("header", {}, el("span", { class: "num", text: step.number }), el("h3", { text: step.title })),
    el("div", { class: "params", text: `${step.slug} · ${count(step.params)} params · test ${step.best_test_accuracy.toFixed(2)}\u00a0%` }),
    el("div", { class: "answer" }, card.digit, card.conf),
    el("ol", { class: "bars", "aria-label": "probability of each digit" }, ...bars),
    el("div", { class: "bar-labels", "aria-hidden": "true" }, ...[...Array(10).keys()].map((d) => el("span", { text: d }))),
    el("div", { class: "heat" }, card.heat, card.heatNote),
  );
  return card;
}

function untrainedCard(step) {
  const root = el(
    "article",
    { class: "card untrained", "data-step": step.slug, "aria-label": `Step ${step.number}, ${step.title}: not trained` },
    el("header", {}, el("span", { class: "num", text: step.number }), el("h3", { text: step.title })),
    el("div", { class: "params", text: step.slug }),
    el("p", { text: "Not trained yet. Train it with" }),
    command(step.train_command, "train-command"),
  );
  return { root, explained: 0 };
}

function buildCards() {
  cards.clear();
  for (const step of steps) cards.set(step.slug, step.trained ? trainedCard(step) : untrainedCard(step));
  $("#answers").replaceChildren(...[...cards.values()].map((c) => c.root));
}

function showSeen(grey) {
  const flat = Uint8Array.from(grey.flat());
  paintGrey($("#seen"), flat);
  $("#seen").classList.remove("empty");
  $("#seen").setAttribute("aria-label", "What the models saw: the 28 by 28 input after preprocessing");
}

function showIdle() {
  for (const card of cards.values()) {
    if (!card.digit) continue;
    card.digit.textContent = "–";
    card.conf.textContent = "waiting for a digit";
    card.root.classList.remove("agree", "disagree");
    for (const bar of card.bars) bar.firstChild.style.height = "0";
    card.heat.getContext("2d").clearRect(0, 0, 28, 28);
    card.heatNote.textContent = "";
  }
  $("#seen").getContext("2d").clearRect(0, 0, 28, 28);
  $("#seen").classList.add("empty");
  say(steps.some((s) => s.trained) ? "Draw a digit." : noStepsMessage());
}

function noStepsMessage() {
  return "No step is trained yet: run `python -m trainer run --steps all`, and this page answers once the first step is published.";
}

function say(text, error = false) {
  if (status.textContent !== text) status.textContent = text;
  status.classList.toggle("error", error);
}

function showError(error) {
  const detail = error instanceof ApiError ? error.message : `the service did not answer (${error.message})`;
  say(`Could not read ${live.image?.what || "the input"}: ${detail}`, true);
  for (const card of cards.values()) card.root.classList.add("stale");
}

function showAnswers(answer, generation) {
  showSeen(answer.input);
  const label = live.image?.label;
  const known = new Map(steps.map((s) => [s.slug, s.version]));
  let outOfDate = false;
  for (const prediction of answer.predictions) {
    const card = cards.get(prediction.step);
    if (known.get(prediction.step) !== prediction.version) outOfDate = true;
    if (!card?.digit) continue;
    card.root.classList.remove("stale");
    card.digit.textContent = prediction.digit;
    card.conf.textContent = `${percent(prediction.confidence)} sure`;
    card.root.classList.toggle("agree", label !== null && prediction.digit === label);
    card.root.classList.toggle("disagree", label !== null && prediction.digit !== label);
    prediction.probabilities.forEach((p, d) => {
      const bar = card.bars[d];
      bar.firstChild.style.height = `${Math.max(2, 100 * p)}%`;
      bar.lastChild.textContent = `${d}: ${percent(p)}`;
      bar.classList.toggle("chosen", d === prediction.digit);
    });
    card.heat.classList.add("stale");
  }
  // The trainer published meanwhile: new cards and journey (once for each new set of versions).
  const versions = answer.predictions.map((p) => `${p.step}:${p.version}`).join(" ");
  const missing = answer.predictions.length !== steps.filter((s) => s.trained).length;
  if ((outOfDate || missing) && versions !== refreshedFor) {
    refreshedFor = versions;
    refreshSteps();
  }
  if (!stroke) {
    const example = live.image?.example;
    const said = summary(answer.predictions, example ? null : label);
    say(example ? `An example: ${live.image.what}. ${said} Now draw your own digit on the pad.` : said);
  }
  page.answered = generation;
}

// What the live region says once a drawing is finished: each answer and the steps giving it.
function summary(predictions, label) {
  const by = new Map();
  for (const p of predictions) by.set(p.digit, [...(by.get(p.digit) ?? []), p.step]);
  const groups = [...by.entries()].sort((a, b) => b[1].length - a[1].length);
  const prefix = label !== null ? `True digit ${label}. ` : "";
  if (groups.length === 1) {
    return `${prefix}All ${predictions.length} trained steps say ${groups[0][0]}.`;
  }
  const parts = groups.map(([digit, who]) =>
    who.length > 2 ? `${who.length} steps say ${digit}` : `${who.join(" and ")} ${who.length > 1 ? "say" : "says"} ${digit}`,
  );
  return `${prefix}${parts.join("; ")}.`;
}

// The 28x28 input in light grey with the sensitivity over it: red where erasing the ink
// lowers the answer's probability, blue where it raises it; scaled to the map's largest value,
// but never below HEAT_FLOOR, so that a step whose answer hardly moves shows a faint map,
// not its noise blown up.
function showHeat(card, answer) {
  const context = card.heat.getContext("2d");
  const image = context.createImageData(28, 28);
  const values = answer.sensitivity.flat();
  const largest = Math.max(0, ...values.map(Math.abs));
  const top = Math.max(HEAT_FLOOR, largest);
  answer.input.flat().forEach((level, i) => {
    const paper = 255 - 0.45 * level;
    const s = values[i] / top;
    const colour = s >= 0 ? [214, 40, 40] : [37, 99, 235];
    const alpha = Math.min(1, Math.abs(s) * 1.15);
    const mix = (c) => Math.round(paper * (1 - alpha) + c * alpha);
    image.data.set([mix(colour[0]), mix(colour[1]), mix(colour[2]), 255], 4 * i);
  });
  context.putImageData(image, 0, 0);
  card.heat.classList.remove("stale");
  card.heat.setAttribute(
    "aria-label",
    `heatmap of ${answer.prediction.step}: erasing its most important ink lowers its ${answer.prediction.digit} by up to ${percent(largest, 0)}`,
  );
  card.heatNote.textContent = `largest drop ${percent(largest, 0)}`;
}

// --- Start -----------------------------------------------------------------------------

let sampleDigits = [];
let refreshing = null;
let refreshedFor = "";
function refreshSteps() {
  refreshing ??= (async () => {
    try {
      steps = await getJSON("/steps");
      buildCards();
      document.dispatchEvent(new CustomEvent("lab:steps", { detail: steps }));
      await showJourney(steps, useDigit);
      changed(); // answer the same input again, on the new cards
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

async function showSamples() {
  const { digits } = await getJSON("/samples");
  sampleDigits = digits;
  $("#samples").hidden = digits.length === 0;
  $("#samples .sample-row").replaceChildren(
    ...digits.map((digit) => {
      const canvas = el("canvas", { width: 28, height: 28, "aria-hidden": "true" });
      paintGrey(canvas, pixels(digit), true);
      return el(
        "button",
        {
          type: "button",
          "aria-label": `MNIST test digit ${digit.index}, a ${digit.label}`,
          onclick: () => useDigit(digit, `MNIST test digit #${digit.index}, a ${digit.label}`),
        },
        canvas,
      );
    }),
  );
}

async function start() {
  blank();
  try {
    steps = await getJSON("/steps");
  } catch (error) {
    say(`The service did not list its steps: ${error.message}`, true);
    return;
  }
  buildCards();
  document.dispatchEvent(new CustomEvent("lab:steps", { detail: steps }));
  showIdle();
  await Promise.all([showJourney(steps, useDigit), showSamples(), startLive(refreshSteps)]);
  // Every card answers a first digit at once (MNIST's first test digit when the volume has
  // samples), rather than showing dashes until the user acts.
  const first = sampleDigits.reduce((a, d) => (a && a.index < d.index ? a : d), null);
  if (first && bestStep(steps) && input.kind === "empty") {
    const shown = await useDigit(first, `MNIST test digit #${first.index}, a ${first.label}`, {
      example: true,
    });
    // Answered before the page calls itself ready (the heatmaps follow), without the debounce.
    if (shown && !live.busy) {
      clearTimeout(live.timer);
      live.timer = 0;
      live.busy = true;
      try {
        await predictNewest();
      } finally {
        live.busy = false;
      }
      pump(); // the heatmaps, and whatever changed meanwhile
    }
  } else if (bestStep(steps)) {
    say(`Draw a digit: ${steps.filter((s) => s.trained).length} trained steps will answer.`);
  }
  page.ready = "true";
}

start();
