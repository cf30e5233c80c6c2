"""The dashboard page: one HTML file, its data inline as JSON, rendered by a small script (no server, no network).

`index`: every feature (density, max activation), sortable by clicking a column, rows added a page at a time
as the table scrolls (so 16k features open instantly). `#f=N`: feature N's top contexts with each token
shaded by the feature's activation, its activation histogram, the tokens its decoder direction promotes and
suppresses through the unembedding, and its nearest decoder neighbours (links).
"""
from __future__ import annotations

PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>saeexp features</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right}th{cursor:pointer;background:#eee}
.ctx{font:13px ui-monospace,monospace;white-space:pre;margin:2px 0;padding:2px 4px;border-bottom:1px solid #eee}
.tok{border-radius:2px}.peak{outline:1px solid #c60}.v{display:inline-block;width:5em;color:#777}
.cols{display:flex;gap:3em;flex-wrap:wrap}svg rect{fill:#c60}.muted{color:#777}
</style></head><body><div id="app">loading...</div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const PAGE_ROWS = 200;
let order = null, sortKey = "density", sortDir = -1, shown = 0;
const esc = s => s.replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const tok = i => { const s = D.vocab[i]; return s === undefined ? "?" : s.replace(/\n/g, "\u21b5"); };
function show() {
  const m = location.hash.match(/^#f=(\d+)$/);
  if (m && +m[1] < D.d_sae) feature(+m[1]); else index();
  window.scrollTo(0, 0);
}
function index() {
  document.getElementById("app").innerHTML =
    `<h1>${esc(D.title)}</h1><p id="summary">${D.d_sae} features, ${D.n_tokens} held-out tokens. ` +
    `Click a column to sort; a feature number opens its page.</p><table id="index"><thead><tr>` +
    `<th data-k="id">feature</th><th data-k="density">density</th><th data-k="max">max activation</th>` +
    `</tr></thead><tbody></tbody></table><p id="more" class="muted"></p>`;
  document.querySelectorAll("th").forEach(th => th.onclick = () => {
    const k = th.dataset.k; sortDir = k === sortKey ? -sortDir : -1; sortKey = k; sortRows(); });
  sortRows();
}
function sortRows() {
  const val = sortKey === "id" ? (i => i) : (i => D[sortKey][i]);
  order = [...Array(D.d_sae).keys()].sort((a, b) => sortDir * (val(a) - val(b)) || a - b);
  shown = 0; document.querySelector("#index tbody").innerHTML = ""; more();
}
function more() {
  const end = Math.min(order.length, shown + PAGE_ROWS);
  let h = "";
  for (let j = shown; j < end; j++) {
    const i = order[j];
    h += `<tr class="feat" data-f="${i}"><td><a href="#f=${i}">${i}</a></td><td>${D.density[i]}</td>` +
         `<td>${D.max[i]}</td></tr>`;
  }
  document.querySelector("#index tbody").insertAdjacentHTML("beforeend", h); shown = end;
  document.getElementById("more").textContent =
    shown < order.length ? `showing ${shown} of ${order.length}: scroll for more` : `all ${order.length} shown`;
}
window.addEventListener("scroll", () => {
  if (order && document.getElementById("index") && shown < order.length &&
      innerHeight + scrollY >= document.body.offsetHeight - 400) more();
});
function context([row, v, q], f) {
  const a = atob(q), w = D.windows[Math.floor(row / D.per)], p0 = D.first + row % D.per;
  let s = "";
  for (let o = -D.half; o <= D.half; o++) {
    const p = p0 + o;
    if (p < 0 || p >= w.length) continue;
    const x = a.charCodeAt(o + D.half) / 255;
    s += `<span class="tok${o === 0 ? " peak" : ""}" style="background:rgba(255,140,0,${x.toFixed(3)})" ` +
         `title="${(x * D.max[f]).toPrecision(3)}">${esc(tok(w[p]))}</span>`;
  }
  return `<div class="ctx" data-row="${row}" data-act="${v}"><span class="v">${v}</span>${s}</div>`;
}
function feature(f) {
  const F = D.features[f], hmax = Math.max(1, ...F.hist), bw = 12;
  const bars = F.hist.map((c, b) => `<rect x="${b * bw}" y="${80 - 80 * c / hmax}" width="${bw - 1}" ` +
    `height="${80 * c / hmax}"><title>${(b * D.max[f] / D.bins).toPrecision(3)}-` +
    `${((b + 1) * D.max[f] / D.bins).toPrecision(3)}: ${c}</title></rect>`).join("");
  const toks = l => l.map(([i, v]) => `<li><code>${esc(JSON.stringify(tok(i)))}</code> ${v}</li>`).join("");
  const nbs = F.nb.map(([i, c]) => `<li><a href="#f=${i}">feature ${i}</a> cos ${c}</li>`).join("");
  document.getElementById("app").innerHTML =
    `<p><a href="#">all features</a></p><h1 id="feature" data-f="${f}">Feature ${f}</h1>` +
    `<p>density ${D.density[f]} (fraction of ${D.n_tokens} held-out tokens), max activation ${D.max[f]}</p>` +
    `<div class="cols"><div><h3>activations (non-zero)</h3><svg width="${bw * D.bins}" height="82">${bars}</svg>` +
    `<div class="muted">0 to ${D.max[f]}</div></div><div><h3>promoted tokens</h3><ol id="up">${toks(F.up)}</ol></div>` +
    `<div><h3>suppressed tokens</h3><ol id="down">${toks(F.down)}</ol></div>` +
    `<div><h3>nearest decoder neighbours</h3><ol id="nb">${nbs}</ol></div></div>` +
    `<h3>top ${F.ctx.length} held-out contexts</h3><div id="contexts">` +
    (F.ctx.length ? F.ctx.map(c => context(c, f)).join("") : `<p class="muted">never fired (dead)</p>`) + `</div>`;
}
window.addEventListener("hashchange", show);
show();
</script></body></html>
"""


def render(data_json: str) -> str:
    """The page with `data_json` inline; "</" is escaped so no string in the data can close the script tag."""
    return PAGE.replace("__DATA__", data_json.replace("</", "<\\/"))
