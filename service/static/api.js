// The service's API as the page uses it, and small helpers both halves of the page share.

import { fetchWithKey } from "./auth.js";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function answer(response) {
  if (response.ok) return response.json();
  let detail = `${response.status} ${response.statusText}`;
  try {
    detail = (await response.json()).detail ?? detail;
  } catch {
    // not JSON: keep the status line
  }
  throw new ApiError(response.status, detail);
}

export async function getJSON(path) {
  return answer(await fetchWithKey(path, { headers: { accept: "application/json" } }));
}

// One image as multipart field `file`, as /predict/{step} takes it.
export async function postImage(path, blob) {
  const form = new FormData();
  form.append("file", blob, blob.name || "digit.png");
  return answer(await fetchWithKey(path, { method: "POST", body: form }));
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// A shell command as code that wraps between its words, never after the "-" of "--steps"; a
// long word (a list of steps, a path) also after its commas and slashes, so that it fits a
// phone. It copies as typed (<wbr> adds no character).
export function command(text, className = "") {
  const word = (w) =>
    w.split(/(?<=[,/])/).flatMap((part, i) => [i ? el("wbr") : null, el("span", { class: "word", text: part })]);
  const words = text.split(" ").flatMap((w, i) => [i ? " " : null, ...word(w)]);
  return el("code", { class: className || null }, ...words);
}

export const count = (n) => n.toLocaleString("en-US");
export const percent = (p, digits = 1) => `${(100 * p).toFixed(digits)}\u00a0%`; // never broken from its number

// A published digit's pixels (base64 of 784 grey levels, light ink on black) as bytes.
export function pixels(digit) {
  return Uint8Array.from(atob(digit.pixels), (c) => c.charCodeAt(0));
}

// Paint 28x28 grey levels onto a 28x28 canvas: as MNIST stores them (light on black), or
// inverted (dark ink on white paper, as on the pad).
export function paintGrey(canvas, grey, inverted = false) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const level = inverted ? 255 - grey[i] : grey[i];
    image.data.set([level, level, level, 255], 4 * i);
  }
  context.putImageData(image, 0, 0);
}

// The trained step the service calls `best`: the highest best test accuracy, earlier on a tie.
export function bestStep(steps) {
  let best = null;
  for (const step of steps) {
    if (step.trained && (!best || step.best_test_accuracy > best.best_test_accuracy)) best = step;
  }
  return best;
}
