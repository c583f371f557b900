// Inside a step: for the current input, every layer's output of a chosen step and of a second
// one beside it, as greyscale channel tiles with each layer's range, mean and dead share; tap
// a unit and its receptive field is drawn on the 28x28 input; the first convolution's kernels
// and every layer's weight statistics; and what changed from the earlier step to the later.
//
// The input comes from lab.js ("lab:input": the blob the answers were for) and the steps
// from "lab:steps". Routes: POST /inside/{step}, GET /inside/{step}/weights and /diff.
// Fetched only while the view is on screen (or near it), newest input first, one at a time.
import { $, count, el, getJSON, percent, postImage } from "./api.js";

const SIZE = 28;
// data-inside: the input generation the view shows; data-inside-steps: the steps it shows.
const page = document.body.dataset;
const view = {
  steps: [], // GET /steps
  chosen: null, // slug of the step looked inside
  other: null, // slug of the step beside it
  image: null, // { generation, blob } from lab.js, or null before any input
  visible: false,
  penDown: false, // a stroke on the pad is under way
  busy: false,
  dirty: true,
  answers: new Map(), // `${slug} ${generation}` -> POST /inside answer
  weights: new Map(), // `${slug} ${version}` -> GET weights
  diffs: new Map(), // `${later} ${earlier} ${versions}` -> GET diff
};

// --- Numbers as a class reads them -------------------------------------------------------

const minus = (text) => text.replace(/^-/, "\u2212"); // a real minus sign, never a hyphen
// Two decimals, or two significant digits for small values (a layer that barely responds
// reads 0.021, not 0.02 or 0.00); a real minus sign.
function num(x) {
  const a = Math.abs(x);
  const text = a === 0 ? "0" : a >= 0.1 ? x.toFixed(2) : a >= 1e-5 ? x.toPrecision(2) : x.toExponential(1);
  return minus(text);
}
const signed = (n) => (n > 0 ? `+${count(n)}` : n < 0 ? minus(count(n)) : "±0");
const shapeText = (shape) => shape.join("\u00d7");
const bytes = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

// --- Drawing ----------------------------------------------------------------------------

function greyCanvas(levels, width, height, offset = 0) {
  const canvas = el("canvas", { width, height });
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  for (let i = 0; i < width * height; i++) {
    const level = levels[offset + i];
    image.data.set([level, level, level, 255], 4 * i);
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

// Where a unit's receptive field lies on the input. The table gives its size (receptive
// field) and the step between neighbouring units (jump); where the first unit's field starts
// follows from the layer's width, every step padding symmetrically: the fields of a row of
// units span the image, centred on it (past its edges by the padding).
export function fieldOf(layer, row, col) {
  const [height, width] = layer.shape.length === 3 ? layer.shape.slice(1) : [1, 1];
  const size = layer.receptive_field;
  const start = (n) => Math.floor((SIZE - 1 - (n - 1) * layer.jump - (size - 1)) / 2);
  const top = start(height) + row * layer.jump;
  const left = start(width) + col * layer.jump;
  const clip = (v) => Math.min(SIZE - 1, Math.max(0, v));
  return {
    size,
    top: clip(top),
    left: clip(left),
    bottom: clip(top + size - 1),
    right: clip(left + size - 1),
    clipped: top < 0 || left < 0 || top + size > SIZE || left + size > SIZE,
  };
}

function drawField(column, layer, channel, row, col) {
  const { input, figure, caption } = column;
  const field = fieldOf(layer, row, col);
  paintInput(column, field);
  const sides = `${field.bottom - field.top + 1}\u00d7${field.right - field.left + 1}`;
  const unit = layer.shape.length === 3 ? `unit (row ${row}, column ${col})` : `feature ${channel}`;
  const where = layer.shape.length === 3 ? `, channel ${channel}` : "";
  caption.textContent =
    `${layer.name}${where}, ${unit}: its receptive field is ${field.size}\u00d7${field.size} ` +
    `input pixels` +
    (field.clipped ? ` (${sides} of them on the image; the rest is padding)` : "") +
    (field.size >= SIZE ? ": the whole digit." : ".");
  Object.assign(figure.dataset, {
    layer: layer.name,
    rf: field.size,
    box: [field.top, field.left, field.bottom, field.right].join(","),
  });
  input.setAttribute("aria-label", caption.textContent);
}

// The input as the model saw it (light on black), 10x, and the field in a bright frame with
// everything outside it dimmed.
function paintInput(column, field = null) {
  const context = column.input.getContext("2d");
  const scale = column.input.width / SIZE;
  context.imageSmoothingEnabled = false;
  context.fillStyle = "#000";
  context.fillRect(0, 0, column.input.width, column.input.height);
  if (column.grey) context.drawImage(greyCanvas(column.grey, SIZE, SIZE), 0, 0, SIZE * scale, SIZE * scale);
  if (!field) return;
  const [x, y] = [field.left * scale, field.top * scale];
  const [w, h] = [(field.right - field.left + 1) * scale, (field.bottom - field.top + 1) * scale];
  context.fillStyle = "rgba(10, 20, 60, 0.62)";
  context.fillRect(0, 0, column.input.width, y);
  context.fillRect(0, y + h, column.input.width, column.input.height - y - h);
  context.fillRect(0, y, x, h);
  context.fillRect(x + w, y, column.input.width - x - w, h);
  context.lineWidth = 4;
  context.strokeStyle = "#ffb020";
  context.strokeRect(x + 2, y + 2, w - 4, h - 4);
}

// --- A step's column ----------------------------------------------------------------------

function newColumn(step) {
  const input = el("canvas", { width: 280, height: 280, role: "img", "aria-label": "the input" });
  const caption = el("figcaption", { text: "Tap a pixel of any tile: its receptive field shows here." });
  const column = {
    step,
    input,
    caption,
    grey: null,
    figure: el("figure", { class: "field" }, input, caption),
    answer: el("p", { class: "says" }),
    kernels: el("div", { class: "kernels" }),
    layers: el("ol", { class: "layer-list" }),
  };
  column.root = el(
    "section",
    { class: "inside-col", "data-step": step.slug, "aria-label": `Inside step ${step.number}, ${step.title}` },
    el("h3", {}, el("span", { class: "num", text: step.number }), ` ${step.title} `, el("span", { class: "fine", text: step.slug })),
    column.answer,
    column.figure,
    column.kernels,
    column.layers,
  );
  paintInput(column);
  return column;
}

function showKernels(column, weights) {
  const k = weights.kernels;
  if (!k) {
    column.kernels.replaceChildren();
    return;
  }
  const levels = bytes(k.tiles);
  const folded = k.holds.length > 1 ? ` (folded with ${k.holds[1]} by the export: each kernel scaled by its channel's BatchNorm)` : "";
  const tiles = [...Array(k.count).keys()].map((i) => {
    const tile = greyCanvas(levels, k.size, k.size, i * k.size * k.size);
    tile.setAttribute("role", "img");
    tile.setAttribute("aria-label", `kernel ${i}`);
    return tile;
  });
  column.kernels.replaceChildren(
    el("h4", { text: `Its first convolution's ${k.count} kernels, ${k.size}\u00d7${k.size}` }),
    el("div", { class: "kernel-row" }, ...tiles),
    el("p", { class: "fine", text: `black \u2212${num(k.scale)}, grey 0, white +${num(k.scale)}${folded}` }),
  );
}

function weightLine(stats) {
  if (!stats) return null;
  const of = stats.holds.length > 1 ? ` (${stats.holds.join(" + ")}, folded together)` : "";
  return el("p", {
    class: "weights",
    text: `${count(stats.count)} weights${of}: ${num(stats.min)} \u2026 ${num(stats.max)}, mean ${num(stats.mean)}, spread ${num(stats.std)}`,
  });
}

function statsLine(layer) {
  if (layer.folded_into) return null;
  const zero = layer.type === "ReLU" ? `dead (0 after ReLU) ${percent(layer.zeros, 0)}` : `at or below 0: ${percent(layer.zeros, 0)}`;
  return el("p", { class: "stats", text: `range ${num(layer.low)} \u2026 ${num(layer.high)} \u00b7 mean ${num(layer.mean)} \u00b7 ${zero}` });
}

// One button per channel (a strip for a layer of features): tapping a pixel picks that unit;
// Enter or Space on a focused tile picks its centre unit.
function tileButtons(column, layer, source) {
  const levels = bytes(source.tiles);
  if (!levels.length) return [];
  const [height, width] = layer.shape.length === 3 ? layer.shape.slice(1) : [1, 1];
  if (height * width === 1) {
    const strip = greyCanvas(levels, source.shown, 1);
    const button = el("button", { type: "button", class: "strip", "aria-label": `${layer.name}: ${source.shown} values` }, strip);
    button.addEventListener("click", (event) => {
      const box = strip.getBoundingClientRect();
      const i = event.detail ? Math.floor(((event.clientX - box.left) / box.width) * source.shown) : 0;
      drawField(column, layer, Math.min(source.shown - 1, Math.max(0, i)), 0, 0);
    });
    // Ten values at the end of a step are its scores for the digits 0-9.
    const digits = source.shown === 10 && layer === column.last;
    const labels = digits ? el("div", { class: "strip-labels", "aria-hidden": "true" }, ...[...Array(10).keys()].map((d) => el("span", { text: d }))) : null;
    return [button, labels].filter(Boolean);
  }
  const side = Math.max(34, Math.min(56, 2 * width));
  return [...Array(source.shown).keys()].map((channel) => {
    const tile = greyCanvas(levels, width, height, channel * width * height);
    tile.style.setProperty("--side", `${side}px`);
    const button = el("button", { type: "button", class: "tile", "aria-label": `${layer.name} channel ${channel}` }, tile);
    button.addEventListener("click", (event) => {
      const box = tile.getBoundingClientRect();
      const pick = (at, start, length, n) => Math.min(n - 1, Math.max(0, Math.floor(((at - start) / length) * n)));
      const keyboard = event.detail === 0;
      const row = keyboard ? height >> 1 : pick(event.clientY, box.top, box.height, height);
      const col = keyboard ? width >> 1 : pick(event.clientX, box.left, box.width, width);
      drawField(column, layer, channel, row, col);
      markUnit(column, button, row / height, col / width, 1 / height, 1 / width);
    });
    return button;
  });
}

// The tapped unit, framed on its tile (one picked unit per column).
function markUnit(column, button, top, left, height, width) {
  column.root.querySelector(".tile.picked")?.classList.remove("picked");
  column.root.querySelector(".unit")?.remove();
  button.classList.add("picked");
  const pc = (f) => `${100 * f}%`;
  button.append(el("span", { class: "unit", style: `top:${pc(top)};left:${pc(left)};height:${pc(height)};width:${pc(width)}` }));
}

function layerItem(column, layer, byName, stats) {
  const item = el("li", { class: "layer", "data-layer": layer.name });
  const channels = layer.shape.length === 3 ? layer.shape[0] : 0;
  const head = el(
    "h4",
    {},
    el("span", { class: "name", text: layer.name }),
    el("span", { class: "shape", text: ` ${shapeText(layer.shape)}` }),
    el("span", { class: "fine", text: ` \u00b7 receptive field ${layer.receptive_field}, jump ${layer.jump}` }),
  );
  item.append(head, statsLine(layer) ?? "", weightLine(stats) ?? "");
  if (layer.folded_into) {
    item.classList.add("folded");
    item.append(el("p", { class: "note", text: `Folded into ${layer.folded_into} by the export: the served model computes the two as one convolution, so this layer's own output never exists.` }));
    return item;
  }
  const source = layer.same_as ? byName.get(layer.same_as) : layer;
  if (layer.same_as) item.append(el("p", { class: "note", text: `Dropout is off when the model answers: its output is ${layer.same_as}'s, unchanged.` }));
  const tiles = el("div", { class: "tiles" }, ...tileButtons(column, layer, source));
  item.append(tiles);
  if (channels > source.shown) {
    const more = el("button", { type: "button", class: "link more", text: `Show all ${channels} channels` });
    more.addEventListener("click", async () => {
      more.disabled = true;
      try {
        const blob = view.image?.blob;
        const answer = await postImage(`/inside/${column.step.slug}?layer=${encodeURIComponent(layer.name)}&channels=${channels}`, blob);
        const full = answer.layers[0];
        tiles.replaceChildren(...tileButtons(column, layer, full));
        more.remove();
      } catch (error) {
        more.textContent = `Could not load them: ${error.message}`;
      }
    });
    item.append(more);
  }
  return item;
}

function showColumn(column, answer, weights) {
  const stats = new Map((weights?.layers ?? []).map((s) => [s.layer, s]));
  if (weights) showKernels(column, weights);
  if (!answer) {
    column.answer.textContent = "Draw a digit, or pick one above: its path through every layer shows here.";
    column.layers.replaceChildren();
    return;
  }
  const p = answer.prediction;
  column.answer.replaceChildren("says ", el("strong", { text: p.digit }), ` (${percent(p.confidence)} sure)`);
  column.grey = bytes(answer.input);
  paintInput(column);
  const byName = new Map(answer.layers.map((layer) => [layer.name, layer]));
  column.last = answer.layers[answer.layers.length - 1];
  column.layers.replaceChildren(...answer.layers.map((layer) => layerItem(column, layer, byName, stats.get(layer.name))));
  column.caption.textContent = "Tap a pixel of any tile: its receptive field shows here.";
  delete column.figure.dataset.rf;
}

// --- What changed ---------------------------------------------------------------------------

function rowCells(row) {
  if (!row) return [el("td", { class: "empty" }), el("td", { class: "detail" }), el("td", { class: "detail" })];
  return [
    el("td", { text: row.name }),
    el("td", { class: "detail", text: shapeText(row.output_shape.slice(1)) }),
    el("td", { class: "detail", text: count(row.params) }),
  ];
}

function showDiff(diff) {
  const box = $("#inside-diff");
  if (!diff) {
    box.replaceChildren();
    return;
  }
  const changed = diff.layers.filter((c) => c.change !== "same");
  const recipe = diff.recipe.length
    ? diff.recipe.map((r) => `${r.field} ${JSON.stringify(r.before)} \u2192 ${JSON.stringify(r.after)}`).join(" \u00b7 ")
    : "the same";
  const body = diff.layers.map((c) =>
    el(
      "tr",
      { class: c.change, "data-change": c.change },
      ...rowCells(c.before),
      el("td", { class: "change", text: c.change === "same" ? "" : c.change }),
      ...rowCells(c.after),
      el("td", { text: c.params ? signed(c.params) : "" }),
    ),
  );
  const head = ["layer", "output", "params", "", "layer", "output", "params", "\u0394 params"].map((text, i) =>
    el("th", { scope: "col", class: [1, 2, 5, 6].includes(i) ? "detail" : null, text }),
  );
  const facts =
    `${changed.length} of ${diff.layers.length} layers changed \u00b7 params ${count(diff.params_before)} \u2192 ${count(diff.params_after)} ` +
    `(${signed(diff.params_after - diff.params_before)}) \u00b7 best test ${num(diff.accuracy_before)}\u00a0% \u2192 ${num(diff.accuracy_after)}\u00a0%`;
  const open = box.firstChild?.open ?? true; // as the reader left it
  box.replaceChildren(
    el(
      "details",
      { open },
      el("summary", {}, el("h3", { text: `What changed from ${diff.before} to ${diff.step}` })),
      el("p", { class: "facts", text: facts }),
      el("p", { class: "facts", text: `Training recipe: ${recipe}.` }),
      el("p", { class: "fine", text: `The layer tables side by side: ${diff.before} on the left, ${diff.step} on the right.` }),
      el(
        "div",
        { class: "table-scroll" },
        el("table", { class: "diff" }, el("thead", {}, el("tr", {}, ...head)), el("tbody", {}, ...body)),
      ),
    ),
  );
}

// --- Choosing steps ---------------------------------------------------------------------

const trained = () => view.steps.filter((s) => s.trained);
const bySlug = (slug) => view.steps.find((s) => s.slug === slug);

// The step beside the chosen one: the nearest trained one before it, else after it.
function besideOf(slug) {
  const others = trained().filter((s) => s.slug !== slug);
  const number = bySlug(slug).number;
  const before = others.filter((s) => s.number < number);
  return (before.length ? before[before.length - 1] : others[0])?.slug ?? null;
}

function showPicker() {
  const picker = $("#inside-picker");
  picker.replaceChildren(
    ...view.steps.map((step) =>
      el("button", {
        type: "button",
        "aria-pressed": String(step.slug === view.chosen),
        disabled: !step.trained,
        title: step.title,
        text: `${step.number} ${step.slug}`,
        onclick: () => choose(step.slug),
      }),
    ),
  );
  const other = $("#inside-other");
  other.replaceChildren(
    el("option", { value: "", text: "none" }),
    ...trained()
      .filter((s) => s.slug !== view.chosen)
      .map((s) => el("option", { value: s.slug, text: `${s.number} ${s.slug}`, selected: s.slug === view.other })),
  );
}

function choose(slug, other = besideOf(slug)) {
  view.chosen = slug;
  view.other = other;
  showPicker();
  changed();
}

$("#inside-other").addEventListener("change", (event) => {
  view.other = event.target.value || null;
  changed();
});

// --- Fetching ----------------------------------------------------------------------------

function changed() {
  view.dirty = true;
  if (view.visible && !view.penDown) pump();
}

async function weightsOf(step) {
  const key = `${step.slug} ${step.version}`;
  if (!view.weights.has(key)) view.weights.set(key, await getJSON(`/inside/${step.slug}/weights`));
  return view.weights.get(key);
}

async function answerOf(step, image) {
  if (!image) return null;
  const key = `${step.slug} ${step.version} ${image.generation}`;
  if (!view.answers.has(key)) {
    if (view.answers.size > 16) view.answers.clear(); // keep only recent drawings
    view.answers.set(key, await postImage(`/inside/${step.slug}`, image.blob));
  }
  return view.answers.get(key);
}

async function diffOf(a, b) {
  const [earlier, later] = a.number < b.number ? [a, b] : [b, a];
  const key = `${later.slug} ${earlier.slug} ${later.version} ${earlier.version}`;
  if (!view.diffs.has(key)) view.diffs.set(key, await getJSON(`/inside/${later.slug}/diff?before=${earlier.slug}`));
  return view.diffs.get(key);
}

async function render() {
  const shown = [bySlug(view.chosen), view.other ? bySlug(view.other) : null].filter(Boolean);
  const image = view.image;
  const results = await Promise.all(shown.map(async (step) => [step, await answerOf(step, image), await weightsOf(step)]));
  const diff = shown.length === 2 ? await diffOf(shown[0], shown[1]) : null;
  if (image !== view.image || view.dirty) return false; // changed meanwhile: draw the newer one
  const columns = results.map(([step, answer, weights]) => {
    const column = newColumn(step);
    showColumn(column, answer, weights);
    return column.root;
  });
  $("#inside-columns").replaceChildren(...columns);
  showDiff(diff);
  page.insideSteps = shown.map((s) => s.slug).join(" ");
  return true;
}

async function pump() {
  if (view.busy || !view.chosen) return;
  view.busy = true;
  const status = $("#inside-status");
  try {
    while (view.dirty && !view.penDown) {
      view.dirty = false;
      const generation = view.image?.generation ?? 0;
      try {
        if (await render()) {
          status.textContent = "";
          page.inside = generation;
        }
      } catch (error) {
        status.textContent = `Could not look inside: ${error.message}`;
      }
    }
  } finally {
    view.busy = false;
  }
}

document.addEventListener("lab:input", (event) => {
  view.image = event.detail && { generation: event.detail.generation, blob: event.detail.blob };
  changed();
});

// While a stroke is under way, lab.js answers it every few points; drawing two columns of
// tiles each time took the pen's frames (a drawing took twice as long), so the view waits
// for the pen to lift.
const pad = $("#pad");
pad.addEventListener("pointerdown", () => {
  view.penDown = true;
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    view.penDown = false;
    changed();
  });
}

document.addEventListener("lab:steps", (event) => {
  view.steps = event.detail;
  view.weights.clear();
  const ready = trained();
  $("#inside").hidden = ready.length === 0;
  if (!ready.length) return;
  const keep = ready.some((s) => s.slug === view.chosen);
  if (keep) choose(view.chosen, ready.some((s) => s.slug === view.other) ? view.other : besideOf(view.chosen));
  else {
    const best = ready.reduce((a, b) => (b.best_test_accuracy > a.best_test_accuracy ? b : a));
    choose(best.slug);
  }
});

new IntersectionObserver(
  (entries) => {
    view.visible = entries.some((e) => e.isIntersecting);
    if (view.visible && view.dirty && !view.penDown) pump();
  },
  { rootMargin: "400px 0px" },
).observe($("#inside"));
