"""The page's stylesheet and script, inlined into every report (no framework, no library, no network).

The script makes the results table sortable (click a header: ascending, then descending; numbers compare as
numbers, blanks last) and filterable (every word typed must appear in a row). It reads an optional
``#sort=COLUMN&dir=asc|desc&q=WORDS`` from the address, so a sorted view can be linked to, and marks
``<body data-report-ready="N">`` (N: rows indexed) once it has run.
"""

from __future__ import annotations

CSS = """
:root { color-scheme: light; --fg: #1d2330; --muted: #5b6475; --line: #d9dde5; --bg-alt: #f5f7fa;
  --ok: #1a7f37; --bad: #c62828; --warn: #9a6700; --accent: #1f5fbf; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--fg); background: #fff; }
header, main, footer { max-width: 80rem; margin: 0 auto; padding: 0 1rem; }
header { padding-top: 1rem; }
h1 { font-size: 1.5rem; margin: .2rem 0; overflow-wrap: anywhere; }
h2 { font-size: 1.25rem; margin: 2rem 0 .5rem; padding-top: .5rem; border-top: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; overflow-wrap: anywhere; }
nav ul { list-style: none; display: flex; flex-wrap: wrap; gap: .25rem 1rem; padding: 0; margin: .5rem 0; }
a { color: var(--accent); }
.muted, figcaption, footer { color: var(--muted); }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: 0; }
.meta dt { font-weight: 600; }
.meta dd { margin: 0; overflow-wrap: anywhere; }
.counts, .isa { list-style: none; display: flex; flex-wrap: wrap; gap: .4rem; padding: 0; margin: .3rem 0; }
.counts li { padding: .1rem .6rem; border-radius: 1rem; background: var(--bg-alt); border: 1px solid var(--line); }
.state.succeeded { color: var(--ok); } .state.failed { color: var(--bad); }
.state.cancelled, .state.running, .state.queued, .state.pending { color: var(--warn); }
.state.total { color: var(--fg); font-weight: 600; }
.notes li { margin: .2rem 0; overflow-wrap: anywhere; }
.empty { color: var(--muted); font-style: italic; }
.miss { color: var(--warn); }
figure { margin: .5rem 0 1rem; }
svg.chart { display: block; max-width: 100%; height: auto; }
figcaption { font-size: .9rem; max-width: 60rem; }
.table-wrap { overflow-x: auto; border: 1px solid var(--line); border-radius: 4px; }
#results .table-wrap { max-height: 85vh; overflow-y: auto; }  /* a long table scrolls under its header */
table { border-collapse: collapse; font-size: .85rem; width: 100%; }
th, td { padding: .25rem .5rem; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap;
  vertical-align: top; }
th.t, td.t, table.failed th, table.failed td { text-align: left; }
td.error, td.config { white-space: normal; overflow-wrap: anywhere; min-width: 16rem; }
thead th { position: sticky; top: 0; background: var(--bg-alt); }
tbody tr:nth-child(even) { background: #fafbfc; }
th button { font: inherit; font-weight: 600; color: inherit; background: none; border: 0; padding: 0;
  cursor: pointer; white-space: nowrap; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; }
th[aria-sort="descending"] button::after { content: " \\25BC"; }
.filter { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: .5rem 0; }
.filter input { flex: 1 1 16rem; max-width: 30rem; font: inherit; padding: .3rem .5rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 22rem), 1fr)); gap: 1rem; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .2rem 1rem .6rem; background: var(--bg-alt); }
.card dl { display: grid; grid-template-columns: max-content 1fr; gap: .1rem .8rem; margin: .4rem 0; }
.card dt { font-weight: 600; } .card dd { margin: 0; overflow-wrap: anywhere; }
.isa li { font-size: .8rem; padding: 0 .4rem; border: 1px solid var(--line); border-radius: 3px; background: #fff; }
code { font-size: .85em; overflow-wrap: anywhere; }
footer { font-size: .85rem; padding-bottom: 2rem; }
@media (max-width: 40rem) { body { font-size: 14px; } .meta { grid-template-columns: 1fr; } }
"""

JS = """
(function () {
  "use strict";
  var table = document.getElementById("results-table");
  if (!table) { document.body.setAttribute("data-report-ready", "0"); return; }
  var body = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var rows = Array.prototype.slice.call(body.rows);
  var texts = rows.map(function (r) { return r.textContent.toLowerCase(); });
  var box = document.getElementById("results-filter");
  var count = document.getElementById("results-count");
  var collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

  function value(row, i) {
    var cell = row.cells[i];
    var v = cell.getAttribute("data-v");
    return v === null ? cell.textContent.trim() : v;
  }
  function compare(a, b) {
    var x = Number(a), y = Number(b);
    if (a !== "" && b !== "" && !isNaN(x) && !isNaN(y)) { return x - y; }
    return collator.compare(a, b);
  }
  function sort(index, dir) {
    var sign = dir === "descending" ? -1 : 1;
    var keyed = rows.map(function (r, n) { return { row: r, n: n, v: value(r, index) }; });
    keyed.sort(function (a, b) {
      if ((a.v === "") !== (b.v === "")) { return a.v === "" ? 1 : -1; }  // blanks last, either way
      return sign * compare(a.v, b.v) || a.n - b.n;
    });
    var frag = document.createDocumentFragment();
    keyed.forEach(function (k) { frag.appendChild(k.row); });
    body.appendChild(frag);
    heads.forEach(function (h, i) { h.setAttribute("aria-sort", i === index ? dir : "none"); });
  }
  function filter(query) {
    var words = query.toLowerCase().split(/\\s+/).filter(Boolean);
    var shown = 0;
    rows.forEach(function (r, n) {
      var ok = words.every(function (w) { return texts[n].indexOf(w) !== -1; });
      r.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = (words.length ? shown + " of " + rows.length : rows.length) + " rows";
  }
  heads.forEach(function (h, i) {
    h.querySelector("button").addEventListener("click", function () {
      sort(i, h.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending");
    });
  });
  box.addEventListener("input", function () { filter(box.value); });

  var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  var col = params.get("sort");
  if (col) {
    var index = heads.findIndex(function (h) { return h.getAttribute("data-col") === col; });
    if (index >= 0) { sort(index, params.get("dir") === "desc" ? "descending" : "ascending"); }
  }
  if (params.get("q")) { box.value = params.get("q"); }
  filter(box.value);
  document.body.setAttribute("data-report-ready", String(rows.length));
})();
"""
