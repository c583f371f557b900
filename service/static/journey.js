// The journey: every step's size and accuracy, accuracy against parameters, and per step its
// objective, curves, layers with receptive fields, confusion matrix and mistakes gallery.
// Charts are Chart.js (window.Chart, vendored in chart.umd.min.js).
import { $, bestStep, command, count, el, getJSON, paintGrey, pixels } from "./api.js";

const COLOURS = { train: "#b45309", test: "#1f4fd1", ink: "#16181d", grid: "#e7e4dd" };
const GALLERY = 30; // mistakes shown before "Show more"
const charts = {}; // canvas id -> Chart, destroyed before it is drawn again
let journey = { steps: [], details: new Map(), selected: null, onPickDigit: () => {} };

function draw(id, config) {
  charts[id]?.destroy();
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.color = "#4a5160";
  charts[id] = new Chart($(`#${id}`), config);
}

// Each point's label ("7 scheduler") where it covers the least: the labels placed before it,
// the points, the line through them, and the plot's edges. Points crowd: batchnorm and dropout
// share a parameter count, the first steps sit at the right edge, the last ones close together.
const LABEL_HEIGHT = 14;
const pointLabels = {
  id: "pointLabels",
  afterDatasetsDraw(chart) {
    const { ctx, chartArea: area } = chart;
    const points = chart.getDatasetMeta(0).data.map((p) => ({ x: p.x, y: p.y }));
    // On a narrow chart (a phone) the step's number alone: the table above names them.
    const narrow = area.right - area.left < 300;
    const texts = chart.data.datasets[0].data.map((d) => (narrow ? d.label.split(" ")[0] : d.label));
    const h = LABEL_HEIGHT;
    const covered = (a, b) =>
      Math.max(0, Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x)) *
      Math.max(0, Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y));
    // The line, as points every 3 pixels along it.
    const line = points.slice(1).flatMap((b, i) => {
      const a = points[i];
      const n = Math.ceil(Math.hypot(b.x - a.x, b.y - a.y) / 3);
      return [...Array(n).keys()].map((k) => ({ x: a.x + ((b.x - a.x) * k) / n, y: a.y + ((b.y - a.y) * k) / n }));
    });
    const bounds = { left: area.left + 2, right: area.right - 2, top: area.top - 6, bottom: area.bottom - 2 };
    const cost = (box) => {
      const outside =
        Math.max(0, bounds.left - box.x) + Math.max(0, box.x + box.w - bounds.right) +
        Math.max(0, bounds.top - box.y) + Math.max(0, box.y + box.h - bounds.bottom);
      const onLabels = placed.reduce((sum, other) => sum + covered(box, other), 0);
      const onPoints = points.reduce((sum, p) => sum + covered(box, { x: p.x - 6, y: p.y - 6, w: 12, h: 12 }), 0);
      const onLine = line.filter((q) => q.x > box.x && q.x < box.x + box.w && q.y > box.y && q.y < box.y + box.h).length;
      return 1000 * outside + 10 * onLabels + 5 * onPoints + 20 * onLine;
    };
    const placed = [];
    ctx.save();
    ctx.font = "600 12px " + Chart.defaults.font.family;
    ctx.fillStyle = COLOURS.ink;
    ctx.textBaseline = "top";
    points.forEach((p, i) => {
      const w = ctx.measureText(texts[i]).width;
      const spots = [
        [8, -h / 2], // right of the point, then above or below it to the right, to the left ...
        [5, -h - 5],
        [5, 5],
        [-8 - w, -h / 2],
        [-5 - w, -h - 5],
        [-5 - w, 5],
        [-w / 2, -h - 8],
        [-w / 2, 8],
        [5, -2 * h - 5], // ... and, where those are taken, a line further off
        [5, h + 5],
        [-5 - w, -2 * h - 5],
        [-5 - w, h + 5],
      ].map(([dx, dy], order) => ({ x: p.x + dx, y: p.y + dy, w, h, order }));
      // The first of the spots that cover the least (each one a little less welcome than the last).
      const box = spots.reduce((best, spot) => (cost(spot) + spot.order < cost(best) + best.order ? spot : best));
      placed.push(box);
      ctx.fillText(texts[i], box.x, box.y + 1);
    });
    ctx.restore();
    chart.labelBoxes = placed.map(({ x, y, w, h }) => ({ x, y, w, h })); // for tests
  },
};

// 5000 as "5k": the log axis labels only 1, 2 and 5 of each power of ten (on a narrow chart only
// the powers), upright.
function shortCount(value) {
  const lead = value / 10 ** Math.floor(Math.log10(value) + 1e-9);
  const shown = this.width < 300 ? [1] : [1, 2, 5];
  if (!shown.some((d) => Math.abs(lead - d) < 1e-6)) return "";
  return value >= 1e6 ? `${value / 1e6}M` : value >= 1e3 ? `${value / 1e3}k` : `${value}`;
}

const axis = (title, extra = {}) => ({
  title: { display: true, text: title },
  grid: { color: COLOURS.grid },
  ...extra,
});

function accuracyAgainstParams(trained) {
  const points = trained.map((s) => ({
    x: s.params,
    y: s.best_test_accuracy,
    label: `${s.number} ${s.slug}`,
  }));
  draw("acc-params", {
    type: "scatter",
    data: {
      datasets: [
        {
          data: points,
          showLine: true,
          borderColor: "#9aa3b2",
          borderWidth: 1.5,
          pointBackgroundColor: COLOURS.test,
          pointRadius: 5,
        },
      ],
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      layout: { padding: { right: 8, top: 14 } },
      scales: {
        x: axis("parameters (log scale)", {
          type: "logarithmic",
          ticks: { callback: shortCount, maxRotation: 0, autoSkip: false },
        }),
        y: axis("best test accuracy %"),
      },
      plugins: {
        legend: { display: false },
        tooltip: {
          callbacks: {
            label: (c) => `${c.raw.label}: ${count(c.raw.x)} params, ${c.raw.y.toFixed(2)} %`,
          },
        },
      },
    },
    plugins: [pointLabels],
  });
  $("#acc-params").setAttribute(
    "aria-label",
    "Best test accuracy against parameters: " +
      trained.map((s) => `${s.slug} ${count(s.params)} params ${s.best_test_accuracy.toFixed(2)} %`).join("; "),
  );
}

function curves(metrics) {
  const epochs = metrics.epochs.map((e) => e.epoch);
  const line = (label, values, colour, dashed) => ({
    label,
    data: values,
    borderColor: colour,
    backgroundColor: colour,
    borderDash: dashed ? [5, 4] : [],
    pointRadius: epochs.map((e) => (e === metrics.best_epoch ? 5 : 2)),
    tension: 0.2,
  });
  const options = (title) => ({
    animation: false,
    maintainAspectRatio: false,
    interaction: { mode: "index", intersect: false },
    scales: { x: axis("epoch"), y: axis(title) },
    plugins: { legend: { labels: { boxHeight: 2 } } },
  });
  const get = (key) => metrics.epochs.map((e) => e[key]);
  draw("acc-curve", {
    type: "line",
    data: {
      labels: epochs,
      datasets: [
        line("train %", get("train_accuracy"), COLOURS.train, true),
        line("test %", get("test_accuracy"), COLOURS.test, false),
      ],
    },
    options: options("accuracy %"),
  });
  draw("loss-curve", {
    type: "line",
    data: {
      labels: epochs,
      datasets: [
        line("train loss", get("train_loss"), COLOURS.train, true),
        line("test loss", get("test_loss"), COLOURS.test, false),
      ],
    },
    options: options("loss"),
  });
}

function lastThree(metrics) {
  return metrics.epochs
    .slice(-3)
    .map((e) => e.test_accuracy.toFixed(2))
    .join(" / ");
}

function fillTable() {
  const body = $("#steps-table tbody");
  body.replaceChildren();
  for (const step of journey.steps) {
    const detail = journey.details.get(step.slug);
    const name = el("td", {}, el("button", {
      type: "button", class: "link", text: `${step.title}`, "aria-label": `Show step ${step.number}, ${step.title}`,
      onclick: () => select(step.slug, true),
    }), " ", el("code", { text: step.slug }));
    const cells = detail
      ? [
          el("td", { text: count(step.params) }),
          el("td", {
            text: `${step.best_test_accuracy.toFixed(2)} (${detail.metrics.best_epoch})`,
          }),
          el("td", { text: lastThree(detail.metrics) }),
        ]
      : [el("td", { class: "untrained", colspan: 3 }, "not trained yet: ", command(step.train_command))];
    body.append(el("tr", { "data-step": step.slug }, el("td", { text: step.number }), name, ...cells));
  }
}

function fillPicker() {
  const picker = $("#step-picker");
  picker.replaceChildren(
    ...journey.steps.map((step) =>
      el("button", {
        type: "button",
        "data-step": step.slug,
        "aria-pressed": "false",
        text: `${step.number} ${step.slug}`,
        onclick: () => select(step.slug),
      }),
    ),
  );
}

function layers(summary) {
  $("#layers tbody").replaceChildren(
    ...summary.layers.map((row) =>
      el(
        "tr",
        {},
        el("td", { text: row.name }),
        el("td", { text: row.output_shape.slice(1).join("×") }),
        el("td", { text: count(row.params) }),
        el("td", { text: row.receptive_field }),
        el("td", { text: row.jump }),
      ),
    ),
  );
}

function confusion(matrix) {
  const digits = [...Array(10).keys()];
  const worst = Math.max(1, ...digits.flatMap((t) => digits.map((p) => (t === p ? 0 : matrix[t][p]))));
  $("#confusion thead").replaceChildren(
    el("tr", {}, el("th", { scope: "col", "aria-label": "true digit, answer" }, "true↓ said→"),
      ...digits.map((d) => el("th", { scope: "col", text: d }))),
  );
  $("#confusion tbody").replaceChildren(
    ...digits.map((t) => {
      const total = matrix[t].reduce((a, b) => a + b, 0) || 1;
      return el(
        "tr",
        {},
        el("th", { scope: "row", text: t }),
        ...digits.map((p) => {
          const n = matrix[t][p];
          // Right answers in green by their share of the row; mistakes in red against the worst.
          const alpha = t === p ? (0.15 + 0.45 * n / total) : (n ? 0.12 + 0.6 * n / worst : 0);
          const colour = t === p ? `rgba(19,121,91,${alpha})` : `rgba(180,35,24,${alpha})`;
          return el("td", { class: n ? "" : "zero", style: `background:${colour}`, text: n });
        }),
      );
    }),
  );
}

function gallery(mistakes, all = false) {
  const wrong = mistakes.confusion.reduce(
    (sum, row, t) => sum + row.reduce((s, n, p) => s + (p === t ? 0 : n), 0),
    0,
  );
  const tested = mistakes.confusion.flat().reduce((a, b) => a + b, 0);
  $("#gallery-note").textContent =
    `${count(wrong)} of ${count(tested)} test digits wrong at epoch ${mistakes.best_epoch}` +
    (mistakes.mistakes.length < wrong ? `; the ${mistakes.mistakes.length} it was surest of:` : ":") +
    " choose one to try it on every step.";
  const shown = all ? mistakes.mistakes : mistakes.mistakes.slice(0, GALLERY);
  const more = mistakes.mistakes.length - shown.length;
  $("#gallery").replaceChildren(
    ...shown.map((m) => {
      const canvas = el("canvas", { width: 28, height: 28, "aria-hidden": "true" });
      paintGrey(canvas, pixels(m), true);
      return el(
        "button",
        {
          type: "button",
          "aria-label": `Test digit ${m.index}: a ${m.label}, answered ${m.predicted} (${Math.round(100 * m.confidence)} % sure). Try it.`,
          onclick: () => journey.onPickDigit(m, `test digit #${m.index}, a ${m.label} that ${journey.selected} called ${m.predicted}`),
        },
        canvas,
        el("span", {}, `${m.label}→`, el("span", { class: "said", text: m.predicted })),
        el("span", { class: "fine", text: `${Math.round(100 * m.confidence)} %` }),
      );
    }),
    more > 0
      ? el("button", { type: "button", class: "more", text: `Show ${more} more`, onclick: () => gallery(mistakes, true) })
      : null,
  );
}

async function showMistakes(step) {
  $("#mistakes-box").hidden = true;
  $("#no-mistakes").hidden = !step.trained || step.mistakes;
  $("#reexport").textContent = `python -m trainer export ${step.slug}`;
  if (!step.trained || !step.mistakes) return;
  const detail = journey.details.get(step.slug);
  detail.mistakes ??= await getJSON(`/steps/${step.slug}/mistakes`);
  if (journey.selected !== step.slug) return; // another step was chosen meanwhile
  confusion(detail.mistakes.confusion);
  gallery(detail.mistakes);
  $("#mistakes-box").hidden = false;
}

// How far train accuracy is from test, in words: a sign in front of a number read "train −
// test −1.79" (two minus signs); "1.79 points below test" needs none.
function gap(points) {
  const size = Math.abs(points).toFixed(2);
  if (size === "0.00") return "the same as test";
  return `${size} points ${points > 0 ? "above" : "below"} test`;
}

export async function select(slug, scroll = false) {
  const step = journey.steps.find((s) => s.slug === slug);
  if (!step) return;
  journey.selected = slug;
  for (const button of $("#step-picker").children) {
    button.setAttribute("aria-pressed", String(button.dataset.step === slug));
  }
  for (const row of $("#steps-table tbody").children) {
    row.classList.toggle("current", row.dataset.step === slug);
  }
  const detail = journey.details.get(slug);
  $("#detail-title").textContent = `${step.number}. ${step.title} (${step.slug})`;
  const article = $("#step-detail");
  article.classList.toggle("untrained", !detail);
  for (const part of article.querySelectorAll(".curves, h4, .table-scroll")) part.hidden = !detail;
  if (!detail) {
    $("#detail-objective").replaceChildren("Not trained yet. Train it with ", command(step.train_command), ".");
    $("#detail-facts").textContent = "";
    $("#mistakes-box").hidden = true;
    $("#no-mistakes").hidden = true;
    return;
  }
  const { metrics, summary } = detail;
  const best = metrics.epochs[metrics.best_epoch - 1];
  $("#detail-objective").textContent = metrics.objective;
  const subset = metrics.provenance.limit
    ? ` on the first ${count(metrics.provenance.limit)} images of each split (a short run)`
    : " on full MNIST";
  $("#detail-facts").replaceChildren(
    `${count(metrics.params)} parameters. Best test accuracy ${best.test_accuracy.toFixed(2)} % at epoch ` +
      `${metrics.best_epoch} of ${metrics.epochs.length} (train ${best.train_accuracy.toFixed(2)} %, ` +
      `${gap(best.train_accuracy - best.test_accuracy)}), trained${subset} by `,
    command(metrics.provenance.command),
    ".",
  );
  curves(metrics);
  layers(summary);
  await showMistakes(step);
  if (scroll) $("#step-detail").scrollIntoView({ behavior: "smooth", block: "start" });
}

// Build the journey for `steps` (GET /steps); `onPickDigit(digit, what)` loads a mistake into
// the input. Returns once every trained step's metrics and summary are in.
export async function showJourney(steps, onPickDigit) {
  const trained = steps.filter((s) => s.trained);
  const details = new Map(
    await Promise.all(
      trained.map(async (s) => {
        const [metrics, summary] = await Promise.all([
          getJSON(`/steps/${s.slug}/metrics`),
          getJSON(`/steps/${s.slug}/summary`),
        ]);
        return [s.slug, { metrics, summary }];
      }),
    ),
  );
  const previous = journey.selected;
  journey = { steps, details, selected: null, onPickDigit };
  fillTable();
  fillPicker();
  if (trained.length) accuracyAgainstParams(trained);
  $("#acc-params").closest("figure").hidden = !trained.length;
  const keep = steps.some((s) => s.slug === previous) ? previous : null;
  await select(keep ?? bestStep(steps)?.slug ?? steps[steps.length - 1].slug);
}
