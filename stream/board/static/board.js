// The live board page: plain JS, no build step. It reads the worker's JSON views and follows its push feeds
// (Server-Sent Events: /feed/board and /feed/predictions); EventSource reconnects by itself and every feed
// starts with the current state, so a reconnect misses nothing.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let boardFeed = null, postFeed = null, lastValues = new Map();

function compact(n) {
  if (n === null || n === undefined) return "–";
  const a = Math.abs(n);
  if (a >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (n / 1e3).toFixed(1) + "k";
  return a >= 10 || Number.isInteger(n) ? Math.round(n).toString() : n.toFixed(2);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const m = Math.floor(seconds / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
  if (d > 0) return `${d}d ${h % 24}h`;
  if (h > 0) return `${h}h ${m % 60}m`;
  return `${m}m`;
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + (cls || "");
}

// --- the board --------------------------------------------------------------------------------------------

async function loadBoardNames() {
  const response = await fetch("/boards");
  if (!response.ok) return;
  const body = await response.json();
  const select = $("board-name"), chosen = select.value || "top";
  select.replaceChildren(...body.boards.map((b) => el("option", { value: b.name }, b.name)));
  select.value = body.boards.some((b) => b.name === chosen) ? chosen : "top";
}

function counters(entry) {
  if (!entry.counters) return "–";
  return Object.entries(entry.counters).filter(([, v]) => v !== null)
    .map(([name, v]) => `${name} ${compact(v)}`).join(" · ");
}

function renderBoard(board) {
  const table = $("board"), body = table.querySelector("tbody");
  $("board-caption").textContent = `${board.board}: ranked by ${board.ranks_by} · read ${board.read_at}`;
  const seen = new Map();
  const rows = board.entries.map((e) => {
    const p = e.prediction || {};
    const tr = el("tr", { "data-post-id": e.post_id });
    const link = el("a", { href: "#/post/" + encodeURIComponent(e.post_id) }, e.title || e.post_id);
    const post = el("td");
    post.append(link, el("br"), el("span", { class: "pid" }, e.post_id + (e.category ? " · " + e.category : "")));
    tr.append(el("td", { class: "num" }, e.rank), post, el("td", {}, e.platform || "–"),
      el("td", {}, age(e.age_s)), el("td", {}, counters(e)),
      el("td", { class: "num" }, compact(p.score)),
      el("td", { class: "num" }, p.interval ? `${compact(p.interval[0])} – ${compact(p.interval[1])}` : "–"),
      el("td", {}, p.model_name ? `${p.model_name} v${p.model_version}` : "–"));
    if (board.kind === "rising") tr.title = `growth ${e.value.toFixed(3)} log/h`;
    if (lastValues.get(e.post_id) !== e.value) tr.classList.add("changed");
    seen.set(e.post_id, e.value);
    return tr;
  });
  body.replaceChildren(...rows);
  lastValues = seen;
  $("board-empty").hidden = board.entries.length > 0;
  table.dataset.updates = String(Number(table.dataset.updates) + 1);
}

function followBoard() {
  if (boardFeed) boardFeed.close();
  lastValues = new Map();
  const query = new URLSearchParams({ board: $("board-name").value || "top", k: $("board-k").value });
  boardFeed = new EventSource("/feed/board?" + query);
  boardFeed.addEventListener("board", (event) => { setStatus("live", "live"); renderBoard(JSON.parse(event.data)); });
  boardFeed.onerror = () => setStatus("reconnecting…", "down");
}

// --- one post -----------------------------------------------------------------------------------------------

function drawChart(post) {
  const chart = $("chart"), W = 720, H = 300, L = 56, R = 16, T = 28, B = 36;
  chart.replaceChildren();
  const created = post.created_at ? Date.parse(post.created_at) / 1000 : null;
  const rows = post.sequence.rows, scores = post.sequence.score || [];
  const t0 = created !== null ? created : (rows.length ? rows[0][0] : 0);
  const points = rows.map((row, i) => [(row[0] - t0) / 3600, scores[i]]).filter(([, s]) => s !== null && s !== undefined);
  const prediction = (post.predictions.temporal || post.predictions.static);
  const horizonH = post.horizon_s / 3600;
  const ys = points.map(([, s]) => s);
  if (prediction) ys.push(prediction.score, ...(prediction.interval || []));
  const xMax = Math.max(horizonH, ...points.map(([x]) => x), 1);
  const yMax = Math.log1p(Math.max(1, ...ys));
  const x = (h) => L + (W - L - R) * Math.max(0, h) / xMax;
  const y = (s) => H - B - (H - T - B) * Math.log1p(Math.max(0, s)) / yMax;
  chart.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
    svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
    svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, "hours since the post was created"),
    svg("text", { x: 4, y: T - 16 }, "score"));
  for (let i = 0; i <= 4; i++) {
    const h = xMax * i / 4, s = Math.expm1(yMax * i / 4);
    chart.append(svg("text", { x: x(h), y: H - B + 14, "text-anchor": "middle" }, h.toFixed(h < 10 ? 1 : 0)),
      svg("text", { x: L - 6, y: y(s) + 4, "text-anchor": "end" }, compact(s)));
  }
  if (points.length) {
    chart.append(svg("polyline", { class: "observed-line", points: points.map(([h, s]) => `${x(h)},${y(s)}`).join(" ") }));
    for (const [h, s] of points) chart.append(svg("circle", { class: "observed", cx: x(h), cy: y(s), r: 3 }));
  }
  if (prediction) {
    const px = x(horizonH), last = points.length ? points[points.length - 1] : [0, 0];
    if (prediction.interval) {
      const [lo, hi] = prediction.interval;
      chart.append(svg("polygon", { class: "band", points: `${x(last[0])},${y(last[1])} ${px},${y(hi)} ${px},${y(lo)}` }),
        svg("line", { class: "interval", x1: px, x2: px, y1: y(lo), y2: y(hi) }));
    }
    chart.append(svg("path", { class: "trajectory", d: `M${x(last[0])},${y(last[1])} L${px},${y(prediction.score)}` }),
      svg("path", { class: "predicted", d: `M${px},${y(prediction.score) - 6} l6,6 l-6,6 l-6,-6 z` }),
      svg("text", { x: px - 8, y: y(prediction.score) - 8, "text-anchor": "end" }, `predicted ${compact(prediction.score)}`));
  }
  chart.dataset.points = String(points.length);
}

function drawExplanation(post) {
  const temporal = (post.predictions.temporal || {}).explanation || {};
  const stat = (post.predictions.static || {}).explanation || {};
  const words = stat.word_attention || temporal.word_attention;
  $("words-block").hidden = !words;
  if (words) {
    // wordpieces back into words ("##" continues the previous one); a word weighs what its pieces weigh
    const shown = [];
    for (const [piece, a] of words.filter(([w]) => w !== "[CLS]" && w !== "[SEP]")) {
      if (piece.startsWith("##") && shown.length) {
        shown[shown.length - 1][0] += piece.slice(2);
        shown[shown.length - 1][1] += a;
      } else shown.push([piece, a]);
    }
    const top = Math.max(...shown.map(([, a]) => a), 1e-9);
    $("words").replaceChildren(...shown.map(([w, a]) => {
      const span = el("span", { title: a.toFixed(4) }, w);
      span.style.background = `rgba(191, 57, 137, ${(a / top).toFixed(3)})`;
      return span;
    }));
  }
  const attention = temporal.time_attention;
  $("time-block").hidden = !attention;
  const bars = $("time-attention");
  bars.replaceChildren();
  if (attention) {
    const top = Math.max(...attention, 1e-9), w = 720 / attention.length;
    attention.forEach((a, i) => bars.append(svg("rect", { x: i * w + 1, width: Math.max(1, w - 2), y: 80 - 70 * a / top,
      height: 70 * a / top }, undefined)));
  }
  const modalities = temporal.modality_weights || stat.modality_weights;
  $("modality-block").hidden = !modalities;
  if (modalities) $("modalities").textContent = Object.entries(modalities).map(([m, v]) => `${m} ${(v * 100).toFixed(1)}%`).join(" · ");
  drawHeatmap(post, stat);
}

// The picture's heat map, for a post whose static prediction used its picture (the visual modality's weight).
// Fetched once per post view: the occlusion runs the image models over many masked copies of the picture.
function drawHeatmap(post, stat) {
  const visual = (stat.modality_weights || {}).visual || 0;
  const block = $("heatmap-block"), img = $("heatmap");
  if (visual <= 0) { block.hidden = true; return; }
  const url = "/posts/" + encodeURIComponent(post.post_id) + "/heatmap.png";
  if (img.dataset.postId === post.post_id) return;
  img.dataset.postId = post.post_id;
  img.onload = () => { block.hidden = false; };
  img.onerror = () => { block.hidden = true; };  // the picture expired or no model scores pictures now
  img.src = url;
  $("heatmap-link").href = url;
}

async function loadPost(postId) {
  const response = await fetch("/posts/" + encodeURIComponent(postId));
  const body = await response.json();
  if (!response.ok) {
    $("post-title").textContent = body.error || `post ${postId}: ${response.status}`;
    return;
  }
  $("post-title").textContent = body.title || body.post_id;
  const p = body.predictions.temporal || body.predictions.static || {};
  $("post-meta").textContent = [body.post_id, body.platform, body.category, body.created_at && `created ${body.created_at}`,
    p.model_name && `${p.model_name} v${p.model_version}`, p.as_of && `as of ${p.as_of}`].filter(Boolean).join(" · ");
  drawChart(body);
  drawExplanation(body);
}

function followPost(postId) {
  if (postFeed) postFeed.close();
  postFeed = new EventSource("/feed/predictions?" + new URLSearchParams({ post_id: postId }));
  postFeed.addEventListener("prediction", () => { setStatus("live", "live"); loadPost(postId); });
  postFeed.onerror = () => setStatus("reconnecting…", "down");
}

// --- routing: #/ is the board, #/post/<id> a post -----------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/post\/(.+)$/);
  document.body.dataset.view = match ? "post" : "board";
  $("board-view").hidden = Boolean(match);
  $("post-view").hidden = !match;
  if (match) {
    if (boardFeed) { boardFeed.close(); boardFeed = null; }
    const postId = decodeURIComponent(match[1]);
    loadPost(postId);
    followPost(postId);
  } else {
    if (postFeed) { postFeed.close(); postFeed = null; }
    followBoard();
  }
}

$("board-name").addEventListener("change", followBoard);
$("board-k").addEventListener("change", followBoard);
window.addEventListener("hashchange", route);
loadBoardNames().finally(route);
setInterval(loadBoardNames, 30000);
