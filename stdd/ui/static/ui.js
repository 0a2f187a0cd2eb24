// stdd web interface: the image viewer (server-rendered pictures, zoom and pan, overlays) and
// the candidates' blink. No library, no build step.
"use strict";

function viewer(root) {
  const frame = root.dataset.frame;
  const img = document.getElementById("viewer-img");
  const svg = document.getElementById("viewer-svg");
  const info = document.getElementById("viewer-info");
  const $ = (id) => document.getElementById(id);
  let shape = null, overlays = null, region = null, drag = null;

  function url() {
    const q = new URLSearchParams({
      file: $("v-file").value, stretch: $("v-stretch").value, cmap: $("v-cmap").value,
      qmin: $("v-qmin").value, qmax: $("v-qmax").value, smooth: $("v-smooth").value,
      width: String(Math.max(64, Math.min(2048, Math.round(root.clientWidth || 800)))),
      x0: region[0], x1: region[1], y0: region[2], y1: region[3], format: "png",
    });
    return "/ui/frames/" + frame + "/preview?" + q.toString();
  }

  function load() {
    if (!region) return;
    img.dataset.loaded = "0";
    img.src = url();
  }

  function layers() {
    return Array.from(document.querySelectorAll(".v-layer")).filter((c) => c.checked).map((c) => c.value);
  }

  function draw() {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (!overlays || !region) return;
    const w = img.clientWidth, h = img.clientHeight;
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    const sx = w / (region[1] - region[0]), sy = h / (region[3] - region[2]);
    const X = (x) => (x - region[0] + 0.5) * sx, Y = (y) => (region[3] - y - 0.5) * sy;
    const inside = (x, y) => x >= region[0] - 20 && x <= region[1] + 20 && y >= region[2] - 20 && y <= region[3] + 20;
    const circle = (x, y, r, cls, label) => {
      const c = document.createElementNS("http://www.w3.org/2000/svg", "circle");
      c.setAttribute("cx", X(x)); c.setAttribute("cy", Y(y)); c.setAttribute("r", r);
      c.setAttribute("class", "ov-" + cls); c.setAttribute("fill", "none");
      c.setAttribute("stroke", {objects: "#3c3", calibration: "#39f", targets: "#ff0", candidates: "#f33", regions: "#f0f"}[cls]);
      c.setAttribute("stroke-width", cls === "candidates" || cls === "targets" ? 2 : 1);
      svg.appendChild(c);
      if (label) {
        const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
        t.setAttribute("x", X(x) + r + 2); t.setAttribute("y", Y(y)); t.setAttribute("fill", "#fff");
        t.setAttribute("font-size", "11"); t.textContent = label; svg.appendChild(t);
      }
    };
    const on = layers();
    let n = 0;
    for (const layer of on) {
      const items = overlays[layer] || [];
      for (const it of items) {
        const x = Array.isArray(it) ? it[0] : it.x, y = Array.isArray(it) ? it[1] : it.y;
        if (!inside(x, y)) continue;
        const r = layer === "regions" ? Math.max(4, it.r * sx) : (layer === "objects" ? 5 : 8);
        circle(x, y, r, layer, Array.isArray(it) ? null : (it.name || it.id || null));
        n += 1;
      }
    }
    svg.dataset.drawn = String(n);
  }

  function zoom(f, cx, cy) {
    const w = (region[1] - region[0]) / f, h = (region[3] - region[2]) / f;
    cx = cx === undefined ? (region[0] + region[1]) / 2 : cx;
    cy = cy === undefined ? (region[2] + region[3]) / 2 : cy;
    if (w < 16 || w > shape[0] * 1.01) { if (f < 1) { reset(); } return; }
    region = [Math.round(cx - w / 2), Math.round(cx + w / 2), Math.round(cy - h / 2), Math.round(cy + h / 2)];
    load();
  }

  function reset() { region = [0, shape[0], 0, shape[1]]; load(); }

  img.addEventListener("load", () => {
    img.dataset.loaded = "1";
    const meta = img.src;
    info.textContent = "x " + region[0] + "–" + region[1] + ", y " + region[2] + "–" + region[3] +
      " of " + shape[0] + "×" + shape[1];
    draw();
  });
  img.addEventListener("error", () => { img.dataset.loaded = "error"; info.textContent = "the picture could not be drawn"; });
  root.addEventListener("wheel", (e) => {
    e.preventDefault();
    const rect = img.getBoundingClientRect();
    const cx = region[0] + (e.clientX - rect.left) / rect.width * (region[1] - region[0]);
    const cy = region[3] - (e.clientY - rect.top) / rect.height * (region[3] - region[2]);
    zoom(e.deltaY < 0 ? 2 : 0.5, cx, cy);
  }, {passive: false});
  root.addEventListener("mousedown", (e) => { drag = {x: e.clientX, y: e.clientY, region: region.slice()}; });
  window.addEventListener("mouseup", (e) => {
    if (!drag) return;
    const rect = img.getBoundingClientRect();
    const dx = (e.clientX - drag.x) / rect.width * (drag.region[1] - drag.region[0]);
    const dy = (e.clientY - drag.y) / rect.height * (drag.region[3] - drag.region[2]);
    drag = null;
    if (Math.abs(dx) < 1 && Math.abs(dy) < 1) return;
    region = [Math.round(region[0] - dx), Math.round(region[1] - dx), Math.round(region[2] + dy), Math.round(region[3] + dy)];
    load();
  });
  $("v-zoom-in").addEventListener("click", () => zoom(2));
  $("v-zoom-out").addEventListener("click", () => zoom(0.5));
  $("v-reset").addEventListener("click", reset);
  for (const id of ["v-file", "v-stretch", "v-cmap", "v-qmin", "v-qmax", "v-smooth"]) $(id).addEventListener("change", load);
  for (const c of document.querySelectorAll(".v-layer")) c.addEventListener("change", draw);
  root.viewerApi = {zoom, reset, region: () => region.slice()};

  fetch("/ui/frames/" + frame + "/overlays.json").then((r) => r.json()).then((data) => {
    overlays = data;
    shape = data.shape || [1024, 1024];
    reset();
  }).catch(() => { shape = [1024, 1024]; reset(); });
}

function blinks() {
  for (const el of document.querySelectorAll("img.blink")) {
    const frames = (el.dataset.frames || "").split("|").filter(Boolean);
    if (!frames.length) continue;
    let i = 0;
    el.src = frames[0];
    setInterval(() => { i = (i + 1) % frames.length; el.src = frames[i]; el.dataset.index = String(i); }, 700);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("viewer");
  if (root) viewer(root);
  blinks();
});

document.addEventListener("DOMContentLoaded", () => {
  const b = document.getElementById("copy-circular");
  if (!b) return;
  b.addEventListener("click", () => {
    const text = document.getElementById("circular-text").textContent;
    const done = () => { b.textContent = "copied"; b.dataset.copied = "1"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => select());
    } else { select(); }
    function select() {
      const range = document.createRange();
      range.selectNodeContents(document.getElementById("circular-text"));
      const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
      document.execCommand("copy"); done();
    }
  });
});
