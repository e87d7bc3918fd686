// busctl dashboard's page: one Server-Sent Events stream of state snapshots (a few a second),
// drawn into the page's tables and two canvas charts. No framework, no build step.
"use strict";

const COLORS = ["#58a6ff", "#3fb950", "#d29922", "#f778ba", "#a371f7", "#79c0ff"];
const $ = (id) => document.getElementById(id);
let source = null;
let tailAccount = null;
let last = null;

function connect() {
  if (source) source.close();
  const query = tailAccount === null ? "" : "?account=" + tailAccount;
  source = new EventSource("/events" + query);
  source.addEventListener("state", (e) => {
    last = JSON.parse(e.data);
    $("page-state").textContent = "connected to the dashboard";
    render(last);
  });
  source.onerror = () => {
    $("page-state").textContent = "the dashboard itself is unreachable; retrying…";
  };
}

const number = (n) => Number(n).toLocaleString("en-US");
const clock = (us) => new Date(us / 1000).toLocaleTimeString("en-GB", { hour12: false });

function duration(us) {
  if (us === null || us === undefined) return "-";
  if (us < 1000) return us + " µs";
  if (us < 1e6) return (us / 1000).toFixed(1) + " ms";
  if (us < 60e6) return (us / 1e6).toFixed(2) + " s";
  return Math.round(us / 60e6) + " min";
}

function render(s) {
  $("bus").textContent = s.bus;
  $("filter").textContent = s.filter;
  $("events").textContent = number(s.events);
  $("rate").textContent = number(Math.round(s.rate));
  $("accounts").textContent = number(s.accounts_seen);
  $("lag-p50").textContent = duration(s.lag_p50_us);
  $("lag-p99").textContent = duration(s.lag_p99_us);
  $("gaps").textContent = number(s.gaps);
  renderLink(s.link, s.now_us);
  renderTop(s.top, s.events);
  renderGaps(s.recent_gaps);
  renderTail(s.tail);
  drawCharts(s.series);
  $("updated").textContent = "updated " + clock(s.now_us) + " · " + s.clients + " page(s) open";
}

function renderLink(link, now) {
  const el = $("link");
  el.className = "link " + link.state;
  const since = clock(link.since_us);
  const words = {
    live: "live since " + since,
    quiet: "quiet since " + since,
    connecting: "connecting since " + since,
    down: "disconnected since " + since + " (" + Math.round((now - link.since_us) / 1e6) + " s)",
  };
  el.textContent = words[link.state] || link.state;
  $("link-detail").textContent = link.detail + (link.reconnects ? " · " + link.reconnects + " reconnect(s)" : "");
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderTop(top, total) {
  const body = $("top").tBodies[0];
  body.replaceChildren();
  for (const t of top) {
    const row = body.insertRow();
    row.dataset.account = t.account_id;
    row.onclick = () => filterTail(t.account_id);
    cell(row, t.account_id, "account");
    cell(row, number(t.count), "num count");
    cell(row, total ? (100 * t.count / total).toFixed(1) + "%" : "-", "num");
  }
}

function renderGaps(gaps) {
  const list = $("gap-list");
  list.replaceChildren();
  for (const g of gaps) {
    const li = document.createElement("li");
    li.textContent = clock(g.at_us) + ": " + g.text;
    list.append(li);
  }
}

function renderTail(tail) {
  const body = $("tail").tBodies[0];
  body.replaceChildren();
  for (let i = tail.length - 1; i >= 0; i--) {
    const e = tail[i];
    const row = body.insertRow();
    row.dataset.account = e.account_id;
    cell(row, e.timestamp || "-");
    cell(row, e.account_id, "account");
    cell(row, e.seq, "num");
    cell(row, duration(e.lag_us), "num");
    cell(row, e.origin);
    cell(row, e.data);
  }
}

function filterTail(account) {
  tailAccount = account;
  $("tail-account").value = account === null ? "" : account;
  $("tail-of").textContent = account === null ? "of every account" : "of account " + account;
  connect();
}

$("tail-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("tail-account").value.trim();
  filterTail(/^[0-9]+$/.test(text) ? text : null);
});
$("tail-all").addEventListener("click", () => filterTail(null));

function drawCharts(series) {
  drawChart($("total-chart"), series.start_sec, [{ color: COLORS[0], values: series.total }]);
  const lines = series.accounts.map((a, i) => ({ color: COLORS[i % COLORS.length], values: a.counts }));
  drawChart($("account-chart"), series.start_sec, lines);
  const legend = $("legend");
  legend.replaceChildren();
  series.accounts.forEach((a, i) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[i % COLORS.length];
    span.append(swatch, "account " + a.account_id);
    legend.append(span);
  });
}

// The top of the y axis: four gridlines at a round step (1, 2 or 5 times a power of ten).
function niceMax(value) {
  const quarter = Math.max(value / 4, 1);
  const power = Math.pow(10, Math.floor(Math.log10(quarter)));
  for (const m of [1, 2, 5, 10]) if (m * power >= quarter) return 4 * m * power;
  return 40 * power;
}

// Lines of per-second values on a canvas; the x axis is the last five minutes.
function drawChart(canvas, startSec, lines) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== width * ratio) canvas.width = width * ratio;
  if (canvas.height !== height * ratio) canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const left = 56, bottom = 18, plotW = width - left - 8, plotH = height - bottom - 8;
  const slots = 300;
  const max = niceMax(Math.max(0, ...lines.flatMap((l) => l.values)));
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#8a98a8";
  g.strokeStyle = "#2a3642";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = 8 + plotH - (plotH * i) / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(left + plotW, y); g.stroke();
    g.fillText(number(Math.round((max * i) / 4)), 4, y + 4);
  }
  for (let m = 5; m >= 0; m--) {
    const x = left + plotW - (plotW * m * 60) / slots;
    g.fillText(m === 0 ? "now" : "-" + m + " min", Math.min(x - 12, width - 30), height - 4);
  }
  for (const line of lines) {
    const offset = slots - line.values.length;
    g.strokeStyle = line.color;
    g.lineWidth = 1.6;
    g.beginPath();
    line.values.forEach((v, i) => {
      const x = left + (plotW * (offset + i)) / (slots - 1);
      const y = 8 + plotH - (plotH * v) / max;
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  }
}

window.addEventListener("resize", () => last && drawCharts(last.series));
connect();
