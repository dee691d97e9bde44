// The embedding map: N panels of the same images (row i is the same image in every panel), drawn with WebGL2.
// Everything interactive happens here, without a server round trip: pan, zoom, hover (with the image's thumbnail,
// cut from sprite sheets that the app writes next to this file), lasso selection, the links between panels (a point
// hovered or selected in one panel lights up in all), and the training film's frames. Only a finished selection is
// sent back to Streamlit, so the page can list the selected images.
"use strict";

const PALETTE = [  // Tableau 20: distinct on white, the usual choice for categorical maps
  [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75], [227, 119, 194],
  [127, 127, 127], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120], [152, 223, 138],
  [255, 152, 150], [197, 176, 213], [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141],
  [158, 218, 229],
].map((c) => c.map((v) => v / 255));
const GREY = [0.55, 0.56, 0.6];  // the classes not searched for or selected: visible as structure, quiet as colour
const HOVER_RADIUS_PX = 8;
const GRID = 96;  // cells per side of each panel's hover grid
const FRAME_MS = 700;  // one film frame

const state = {
  key: null, args: null, panels: [], labels: null, thumbs: null, selected: null, selectedCount: 0,
  hovered: -1, mode: "pan", frame: 0, playing: false, sheets: new Map(), classColour: null,
};

// ------------------------------------------------------------------ Streamlit's component protocol (v1)
function send(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type }, data), "*");
}
window.addEventListener("message", (event) => {
  if (event.data && event.data.type === "streamlit:render") render(event.data.args);
});
send("streamlit:componentReady", { apiVersion: 1 });

// Arrays arrive as bytes (Streamlit hands bytes arguments over as a Uint8Array, without base64 or JSON).
function decode(bytes, Type) {
  return new Type(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

// ------------------------------------------------------------------ building the panels
function render(args) {
  if (args.data_key !== state.key) return build(args);
  const recolourNeeded = JSON.stringify(args.highlight_classes) !== JSON.stringify(state.args.highlight_classes);
  state.args = args;  // e.g. the thumbnails became ready; the points themselves are unchanged
  if (recolourNeeded) recolour();
}

function build(args) {
  const started = performance.now();
  state.key = args.data_key;
  state.args = args;
  state.labels = decode(args.labels, Int32Array);
  state.thumbs = decode(args.thumbs, Int32Array);
  state.indices = decode(args.dataset_indices, Int32Array);
  state.count = state.labels.length;
  state.selected = new Uint8Array(state.count);
  state.selectedCount = 0;
  state.hovered = -1;
  state.frame = Math.max(0, (args.frame_steps || [0]).length - 1);
  const container = document.getElementById("panels");
  container.innerHTML = "";
  const columns = Math.min(args.per_row || 2, args.panels.length);
  container.style.gridTemplateColumns = `repeat(${columns}, minmax(0, 1fr))`;
  state.panels = args.panels.map((spec, number) => makePanel(spec, number, container, args.height));
  setupFilm(args);
  recolour();
  resize();
  document.getElementById("status").textContent =
    `${state.count.toLocaleString()} points per panel · ${state.panels[0].gl ? "WebGL2" : "canvas"}`;
  send("streamlit:setFrameHeight", { height: document.body.scrollHeight + 4 });
  document.body.dataset.points = String(state.count);
  document.body.dataset.panels = String(state.panels.length);
  document.body.dataset.ready = "1";
  window.__mapBuildMs = performance.now() - started;
}

function makePanel(spec, number, container, height) {
  const element = document.createElement("div");
  element.className = "panel";
  element.dataset.panel = String(number);
  const title = document.createElement("h4");
  title.textContent = spec.title;
  // A film frame's measures get a line of their own under the title: a long run name may be cut short, they never.
  const measures = document.createElement("div");
  measures.className = "frame-measures";
  measures.hidden = !(spec.frame_labels || []).length;
  const canvas = document.createElement("canvas");
  const overlay = document.createElement("canvas");
  overlay.className = "overlay";
  canvas.style.height = overlay.style.height = `${height}px`;
  element.append(title, measures, canvas, overlay);
  container.append(element);
  // Panel i's frames (one for a map, one per step for a film) arrive concatenated as the bytes argument coords_i.
  const all = decode(state.args[`coords_${number}`], Float32Array), size = 2 * state.count;
  const frames = Array.from({ length: all.length / size }, (_, f) => all.subarray(f * size, (f + 1) * size));
  const panel = {
    number, element, canvas, overlay, frames, positions: new Float32Array(frames[frames.length - 1]),
    title, measures, spec,
    gl: canvas.getContext("webgl2", { antialias: true, premultipliedAlpha: false }),
    context: overlay.getContext("2d"), view: null, grid: null,
  };
  if (panel.gl) setupGl(panel);
  attachMouse(panel);
  return panel;
}

// ------------------------------------------------------------------ WebGL
const VERTEX = `#version 300 es
in vec2 position; in vec4 colour;
uniform vec2 scale; uniform vec2 offset; uniform float size;
out vec4 fill;
void main() {
  gl_Position = vec4(position * scale + offset, 0.0, 1.0);
  gl_PointSize = size * (colour.a > 0.9 ? 1.6 : 1.0);
  fill = colour;
}`;
const FRAGMENT = `#version 300 es
precision mediump float;
in vec4 fill; out vec4 colour;
void main() {
  vec2 c = gl_PointCoord - 0.5;
  if (dot(c, c) > 0.25) discard;
  colour = vec4(fill.rgb, fill.a > 0.9 ? 1.0 : fill.a);
}`;

function setupGl(panel) {
  const gl = panel.gl;
  const program = gl.createProgram();
  for (const [type, source] of [[gl.VERTEX_SHADER, VERTEX], [gl.FRAGMENT_SHADER, FRAGMENT]]) {
    const shader = gl.createShader(type);
    gl.shaderSource(shader, source);
    gl.compileShader(shader);
    gl.attachShader(program, shader);
  }
  gl.linkProgram(program);
  gl.useProgram(program);
  panel.program = program;
  panel.positionBuffer = gl.createBuffer();
  panel.colourBuffer = gl.createBuffer();
  panel.orderBuffer = gl.createBuffer();
  const bind = (buffer, name, size, type, normalised) => {
    const location = gl.getAttribLocation(program, name);
    gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
    gl.enableVertexAttribArray(location);
    gl.vertexAttribPointer(location, size, type, normalised, 0, 0);
  };
  bind(panel.positionBuffer, "position", 2, gl.FLOAT, false);
  bind(panel.colourBuffer, "colour", 4, gl.UNSIGNED_BYTE, true);
  gl.enable(gl.BLEND);
  gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
  panel.uniforms = Object.fromEntries(["scale", "offset", "size"].map((n) => [n, gl.getUniformLocation(program, n)]));
  uploadPositions(panel);
}

function uploadPositions(panel) {
  if (!panel.gl) return;
  const gl = panel.gl;
  gl.bindBuffer(gl.ARRAY_BUFFER, panel.positionBuffer);
  gl.bufferData(gl.ARRAY_BUFFER, panel.positions, gl.DYNAMIC_DRAW);
}

// Colours (RGBA bytes) and the drawing order (highlighted points last, so they sit on top), the same in every panel.
function recolour() {
  const args = state.args;
  const highlight = new Set(args.highlight_classes || []);
  if (!args.colour_by_class && state.selectedCount) {  // many classes: the selected points' classes get colours too
    for (let row = 0; row < state.count; row++) if (state.selected[row]) highlight.add(state.labels[row]);
  }
  const colourOf = new Map();
  let next = 0;
  // A page may colour by something ordered (e.g. neighbourhood change in bins): then it sends its own palette.
  const palette = args.palette ? args.palette.map((c) => c.map((v) => v / 255)) : PALETTE;
  const classColour = (label) => {
    if (args.colour_by_class) return palette[label % palette.length];
    if (!highlight.has(label)) return GREY;
    if (!colourOf.has(label)) colourOf.set(label, palette[next++ % palette.length]);
    return colourOf.get(label);
  };
  const colours = new Uint8Array(state.count * 4);
  const front = [], back = [];
  for (let row = 0; row < state.count; row++) {
    const label = state.labels[row];
    const rgb = classColour(label);
    let alpha = args.colour_by_class || highlight.has(label) ? 0.75 : 0.4;
    if (state.selectedCount) alpha = state.selected[row] ? 1.0 : 0.12;
    colours.set([rgb[0] * 255, rgb[1] * 255, rgb[2] * 255, alpha * 255], row * 4);
    (alpha >= 0.75 && (highlight.has(label) || state.selected[row]) ? front : back).push(row);
  }
  state.colours = colours;
  state.order = Uint32Array.from(back.concat(front));
  state.legend = args.colour_by_class
    ? [...new Set(state.labels)].sort((a, b) => a - b).map((label) => [label, palette[label % palette.length]])
    : [...colourOf.entries()];
  for (const panel of state.panels) {
    if (!panel.gl) continue;
    const gl = panel.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, panel.colourBuffer);
    gl.bufferData(gl.ARRAY_BUFFER, colours, gl.STATIC_DRAW);
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, panel.orderBuffer);
    gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, state.order, gl.STATIC_DRAW);
  }
  drawAll();
}

// ------------------------------------------------------------------ views: fit, pan, zoom
function fit(panel) {
  let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
  for (const frame of panel.frames) {  // every frame of a film fits, so playing it never leaves the panel
    for (let i = 0; i < frame.length; i += 2) {
      const x = frame[i], y = frame[i + 1];
      if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
      if (x < minX) minX = x; if (x > maxX) maxX = x; if (y < minY) minY = y; if (y > maxY) maxY = y;
    }
  }
  if (!Number.isFinite(minX)) { minX = minY = -1; maxX = maxY = 1; }
  const width = panel.overlay.clientWidth, height = panel.overlay.clientHeight;
  const span = Math.max((maxX - minX) / width, (maxY - minY) / height, 1e-9);
  panel.view = { cx: (minX + maxX) / 2, cy: (minY + maxY) / 2, k: 0.92 / span };
  panel.grid = null;
}

function toScreen(panel, x, y) {
  const v = panel.view, w = panel.overlay.clientWidth, h = panel.overlay.clientHeight;
  return [(x - v.cx) * v.k + w / 2, h / 2 - (y - v.cy) * v.k];
}

function toData(panel, px, py) {
  const v = panel.view, w = panel.overlay.clientWidth, h = panel.overlay.clientHeight;
  return [(px - w / 2) / v.k + v.cx, (h / 2 - py) / v.k + v.cy];
}

function resize() {
  const ratio = window.devicePixelRatio || 1;
  for (const panel of state.panels) {
    for (const canvas of [panel.canvas, panel.overlay]) {
      canvas.width = Math.round(canvas.clientWidth * ratio);
      canvas.height = Math.round(canvas.clientHeight * ratio);
    }
    panel.overlay.style.top = `${panel.canvas.offsetTop}px`;
    fit(panel);
  }
  drawAll();
}
window.addEventListener("resize", () => { if (state.panels.length) resize(); });

// ------------------------------------------------------------------ drawing
function drawAll() {
  for (const panel of state.panels) draw(panel);
}

function draw(panel) {
  if (!panel.view) return;
  const ratio = window.devicePixelRatio || 1;
  const w = panel.overlay.clientWidth, h = panel.overlay.clientHeight;
  const size = Math.max(2, Math.min(7, 900 / Math.sqrt(state.count))) * ratio;
  if (panel.gl) {
    const gl = panel.gl, v = panel.view;
    gl.viewport(0, 0, panel.canvas.width, panel.canvas.height);
    gl.clearColor(1, 1, 1, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.uniform2f(panel.uniforms.scale, (2 * v.k) / w, (2 * v.k) / h);
    gl.uniform2f(panel.uniforms.offset, (-2 * v.k * v.cx) / w, (-2 * v.k * v.cy) / h);
    gl.uniform1f(panel.uniforms.size, size);
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, panel.orderBuffer);
    gl.drawElements(gl.POINTS, state.order.length, gl.UNSIGNED_INT, 0);
  } else {
    drawWithCanvas(panel, size / ratio);
  }
  drawOverlay(panel);
}

// Without WebGL2 (very old browsers): the same picture with a 2-D canvas, slower but complete.
function drawWithCanvas(panel, size) {
  const context = panel.canvas.getContext("2d");
  const ratio = window.devicePixelRatio || 1;
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.fillStyle = "#fff";
  context.fillRect(0, 0, panel.canvas.clientWidth, panel.canvas.clientHeight);
  for (const row of state.order) {
    const [x, y] = toScreen(panel, panel.positions[2 * row], panel.positions[2 * row + 1]);
    const c = state.colours.subarray(row * 4, row * 4 + 4);
    context.fillStyle = `rgba(${c[0]},${c[1]},${c[2]},${c[3] / 255})`;
    context.fillRect(x - size / 2, y - size / 2, size, size);
  }
}

// Hover ring (in every panel: the link), the lasso being drawn, and the legend of highlighted classes.
function drawOverlay(panel) {
  const context = panel.context, ratio = window.devicePixelRatio || 1;
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, panel.overlay.clientWidth, panel.overlay.clientHeight);
  if (state.hovered >= 0) {
    const [x, y] = toScreen(panel, panel.positions[2 * state.hovered], panel.positions[2 * state.hovered + 1]);
    context.lineWidth = 2.5;
    context.strokeStyle = "#111";
    context.beginPath();
    context.arc(x, y, 9, 0, 2 * Math.PI);
    context.stroke();
  }
  if (panel.lasso && panel.lasso.length > 1) {
    context.lineWidth = 1.5;
    context.strokeStyle = "#ff4b4b";
    context.fillStyle = "rgba(255, 75, 75, 0.08)";
    context.beginPath();
    panel.lasso.forEach(([x, y], i) => (i ? context.lineTo(x, y) : context.moveTo(x, y)));
    context.closePath();
    context.fill();
    context.stroke();
  }
  if (state.legend && state.legend.length && panel.number === 0) {  // one legend: the colours are the same in all
    const names = state.args.class_names;
    state.legend.slice(0, 12).forEach(([label, rgb], i) => {
      context.fillStyle = `rgb(${rgb.map((v) => v * 255).join(",")})`;
      context.fillRect(8, 8 + 16 * i, 10, 10);
      context.fillStyle = "#31333f";
      context.fillText(names[label] ?? String(label), 22, 17 + 16 * i);
    });
  }
}

// ------------------------------------------------------------------ hover: nearest point through a grid
function buildGrid(panel) {
  const w = panel.overlay.clientWidth, h = panel.overlay.clientHeight;
  const [x0, y1] = toData(panel, 0, 0), [x1, y0] = toData(panel, w, h);
  const cell = Math.max((x1 - x0) / GRID, (y1 - y0) / GRID);
  const buckets = new Map();
  for (let row = 0; row < state.count; row++) {
    const x = panel.positions[2 * row], y = panel.positions[2 * row + 1];
    if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
    const key = `${Math.floor(x / cell)},${Math.floor(y / cell)}`;
    let bucket = buckets.get(key);
    if (!bucket) buckets.set(key, (bucket = []));
    bucket.push(row);
  }
  panel.grid = { cell, buckets };
}

function nearest(panel, px, py) {
  if (!panel.grid || HOVER_RADIUS_PX / panel.view.k > panel.grid.cell) buildGrid(panel);
  const [x, y] = toData(panel, px, py);
  const radius = HOVER_RADIUS_PX / panel.view.k, cell = panel.grid.cell;
  let best = -1, bestDistance = radius * radius;
  for (let gx = Math.floor((x - radius) / cell); gx <= Math.floor((x + radius) / cell); gx++) {
    for (let gy = Math.floor((y - radius) / cell); gy <= Math.floor((y + radius) / cell); gy++) {
      for (const row of panel.grid.buckets.get(`${gx},${gy}`) || []) {
        const dx = panel.positions[2 * row] - x, dy = panel.positions[2 * row + 1] - y;
        const distance = dx * dx + dy * dy;
        if (distance <= bestDistance && (best < 0 || state.selected[row] >= state.selected[best])) {
          best = row;
          bestDistance = distance;
        }
      }
    }
  }
  return best;
}

function sheet(number) {
  let image = state.sheets.get(number);
  if (!image) {
    image = new Image();
    image.onerror = () => setTimeout(() => state.sheets.delete(number), 3000);  // not written yet: ask again later
    image.onload = () => { if (state.hovered >= 0) showTip(state.tipPosition); };
    image.src = state.args.thumbnail_url.replace("{sheet}", String(number).padStart(5, "0"));
    state.sheets.set(number, image);
  }
  return image;
}

function showTip(position) {
  const tip = document.getElementById("tip");
  const row = state.hovered;
  if (row < 0 || !position) { tip.hidden = true; return; }
  state.tipPosition = position;
  const args = state.args, picture = document.getElementById("tip-image");
  const slot = state.thumbs[row];
  picture.style.backgroundImage = "none";
  picture.dataset.loaded = "0";
  if (slot >= 0 && args.thumbnail_url) {
    const image = sheet(Math.floor(slot / args.per_sheet));
    const cell = slot % args.per_sheet, size = 96;
    if (image.complete && image.naturalWidth) {
      picture.style.backgroundImage = `url("${image.src}")`;
      picture.style.backgroundSize = `${args.sheet_columns * size}px auto`;
      picture.style.backgroundPosition =
        `${-(cell % args.sheet_columns) * size}px ${-Math.floor(cell / args.sheet_columns) * size}px`;
      picture.dataset.loaded = "1";
    }
  }
  const names = args.class_names, label = state.labels[row];
  document.getElementById("tip-text").textContent =
    `${names[label] ?? label} · image ${state.indices[row]}`;
  tip.hidden = false;
  tip.style.left = `${Math.min(position[0] + 14, window.innerWidth - 190)}px`;
  tip.style.top = `${Math.max(0, position[1] - 60)}px`;
}

// ------------------------------------------------------------------ mouse
function attachMouse(panel) {
  const overlay = panel.overlay;
  let drag = null;
  const local = (event) => {
    const box = overlay.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  };
  overlay.addEventListener("pointerdown", (event) => {
    overlay.setPointerCapture(event.pointerId);
    const [px, py] = local(event);
    const lasso = state.mode === "lasso" || event.shiftKey;
    drag = { lasso, start: [px, py], last: [px, py], moved: false };
    if (lasso) panel.lasso = [[px, py]];
  });
  overlay.addEventListener("pointermove", (event) => {
    const [px, py] = local(event);
    if (drag) {
      drag.moved = drag.moved || Math.hypot(px - drag.start[0], py - drag.start[1]) > 3;
      if (drag.lasso) {
        panel.lasso.push([px, py]);
        drawOverlay(panel);
      } else {
        panel.view.cx -= (px - drag.last[0]) / panel.view.k;
        panel.view.cy += (py - drag.last[1]) / panel.view.k;
        draw(panel);
      }
      drag.last = [px, py];
      return;
    }
    hover(nearest(panel, px, py), [event.clientX, event.clientY]);
  });
  overlay.addEventListener("pointerup", (event) => {
    const [px, py] = local(event);
    if (drag && drag.lasso && drag.moved) selectRows(rowsInside(panel, panel.lasso), event.ctrlKey || event.metaKey);
    else if (drag && !drag.moved) {
      const row = nearest(panel, px, py);
      if (row >= 0) selectRows([row], event.ctrlKey || event.metaKey);
    }
    panel.lasso = null;
    drag = null;
    drawOverlay(panel);
  });
  overlay.addEventListener("pointerleave", () => { if (!drag) hover(-1, null); });
  overlay.addEventListener("wheel", (event) => {
    event.preventDefault();
    const [px, py] = local(event);
    const [x, y] = toData(panel, px, py);
    const factor = Math.exp(-event.deltaY * 0.0015);
    panel.view.k *= factor;
    panel.view.cx = x - (x - panel.view.cx) / factor;
    panel.view.cy = y - (y - panel.view.cy) / factor;
    draw(panel);
  }, { passive: false });
  overlay.addEventListener("dblclick", () => { fit(panel); draw(panel); });
}

function hover(row, position) {
  if (row === state.hovered) { if (row >= 0) showTip(position); return; }
  state.hovered = row;
  document.body.dataset.hovered = String(row);
  showTip(position);
  // The ring shows in every panel (the same image, wherever each run put it). Only the 2-D overlays are redrawn:
  // the points themselves have not changed, and redrawing 60,000 of them per mouse move is what a software
  // WebGL (no GPU) cannot keep up with.
  for (const panel of state.panels) drawOverlay(panel);
}

function rowsInside(panel, polygon) {
  let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
  for (const [x, y] of polygon) { minX = Math.min(minX, x); maxX = Math.max(maxX, x); minY = Math.min(minY, y); maxY = Math.max(maxY, y); }
  const rows = [];
  for (let row = 0; row < state.count; row++) {
    const [x, y] = toScreen(panel, panel.positions[2 * row], panel.positions[2 * row + 1]);
    if (x < minX || x > maxX || y < minY || y > maxY) continue;
    let inside = false;
    for (let i = 0, j = polygon.length - 1; i < polygon.length; j = i++) {
      const [xi, yi] = polygon[i], [xj, yj] = polygon[j];
      if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
    }
    if (inside) rows.push(row);
  }
  return rows;
}

function selectRows(rows, add) {
  if (!add) state.selected.fill(0);
  for (const row of rows) state.selected[row] = 1;
  state.selectedCount = state.selected.reduce((sum, v) => sum + v, 0);
  document.body.dataset.selected = String(state.selectedCount);
  recolour();
  report();
}

function report() {
  const rows = [];
  for (let row = 0; row < state.count; row++) if (state.selected[row]) rows.push(row);
  send("streamlit:setComponentValue", { value: { rows, nonce: Date.now() }, dataType: "json" });
}

// ------------------------------------------------------------------ the training film
function setupFilm(args) {
  const film = document.getElementById("film");
  const steps = args.frame_steps || [];
  film.hidden = steps.length < 2;
  if (film.hidden) return;
  const slider = document.getElementById("step");
  slider.max = String(steps.length - 1);
  slider.value = String(state.frame);
  slider.oninput = () => { stop(); showFrame(Number(slider.value)); };
  document.getElementById("play").onclick = () => (state.playing ? stop() : play());
  showFrame(state.frame);
}

function showFrame(frame, from = null, t = 1) {
  state.frame = frame;
  for (const panel of state.panels) {
    const target = panel.frames[frame], source = from === null ? target : panel.frames[from];
    for (let i = 0; i < target.length; i++) panel.positions[i] = source[i] + (target[i] - source[i]) * t;
    uploadPositions(panel);
    panel.grid = null;
    // A film frame's label (its step's unseen Recall@1 and MAP@R), so the picture and the number agree.
    const label = (panel.spec.frame_labels || [])[frame];
    panel.measures.textContent = label ? `step ${state.args.frame_steps[frame]}: ${label}` : "";
  }
  const steps = state.args.frame_steps;
  document.getElementById("step").value = String(frame);
  document.getElementById("step-label").textContent = `step ${steps[frame]} of ${steps[steps.length - 1]}`;
  document.body.dataset.frame = String(frame);
  drawAll();
}

function play() {
  const steps = state.args.frame_steps;
  state.playing = true;
  document.getElementById("play").textContent = "❚❚ Pause";
  let from = state.frame >= steps.length - 1 ? 0 : state.frame;
  showFrame(from);
  let began = performance.now();
  const tick = (now) => {
    if (!state.playing) return;
    const t = Math.min(1, (now - began) / FRAME_MS);
    showFrame(from + 1, from, t);
    if (t < 1) { state.frame = from; return requestAnimationFrame(tick); }
    from += 1;
    began = now;
    if (from >= steps.length - 1) return stop();
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}

function stop() {
  state.playing = false;
  document.getElementById("play").textContent = "▶ Play";
}

// ------------------------------------------------------------------ for the browser test: where points are drawn
window.ecamlMap = {
  selectedRows: () => state.selected.reduce((rows, v, row) => (v ? rows.concat(row) : rows), []),
  screenPosition: (panel, row) => toScreen(state.panels[panel], state.panels[panel].positions[2 * row],
                                           state.panels[panel].positions[2 * row + 1]),
};

// ------------------------------------------------------------------ toolbar
function setMode(mode) {
  state.mode = mode;
  document.getElementById("mode-pan").classList.toggle("on", mode === "pan");
  document.getElementById("mode-lasso").classList.toggle("on", mode === "lasso");
  for (const panel of state.panels) panel.overlay.classList.toggle("lasso", mode === "lasso");
}
document.getElementById("mode-pan").onclick = () => setMode("pan");
document.getElementById("mode-lasso").onclick = () => setMode("lasso");
document.getElementById("clear").onclick = () => selectRows([], false);
window.addEventListener("keydown", (event) => { if (event.key === "Escape") selectRows([], false); });
