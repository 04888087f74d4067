// tollway dashboard: charts (uPlot), polling, theme, and the key forms. No framework, no build step.
(function () {
  "use strict";
  const body = document.body;
  const root = body.dataset.root || "/dashboard";
  const csrf = body.dataset.csrf || "";

  // -- theme: the system's, unless the user picked one (kept in localStorage) --------------
  const saved = localStorage.getItem("tollway-theme");
  if (saved) document.documentElement.dataset.theme = saved;
  const themeButton = document.getElementById("theme");
  if (themeButton) {
    themeButton.addEventListener("click", function () {
      const dark = getComputedStyle(document.documentElement).getPropertyValue("--scheme").trim() === "dark";
      const next = dark ? "light" : "dark";
      document.documentElement.dataset.theme = next;
      localStorage.setItem("tollway-theme", next);
      drawCharts();
    });
  }

  // -- number formats (as the server writes them) -------------------------------------------
  const fmt = {
    usd: function (micro) {
      if (micro == null) return "-";
      const d = micro / 1e6;
      const text = Math.abs(d) >= 1 ? d.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2})
        : d.toFixed(6).replace(/0+$/, "").replace(/\.$/, ".00").replace(/\.(\d)$/, ".$10");
      const currency = document.body.dataset.currency || "USD";
      return currency === "USD" ? "$" + text : text + " " + currency;
    },
    num: function (v) { return v == null ? "-" : Math.round(v).toLocaleString("en-US"); },
    pct: function (v) { return v == null ? "-" : (v * 100).toFixed(1) + "%"; },
    ms: function (v) { return v == null ? "-" : v >= 10000 ? (v / 1000).toFixed(1) + " s" : v >= 100 ? Math.round(v) + " ms" : v.toFixed(1) + " ms"; },
  };
  function stepLabel(t, step) {
    const d = new Date(t * 1000);
    const opts = step === "hour" ? {month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", timeZone: "UTC", hour12: false}
      : step === "month" ? {year: "numeric", month: "long", timeZone: "UTC"} : {month: "short", day: "numeric", timeZone: "UTC"};
    return (step === "week" ? "week of " : "") + d.toLocaleString("en-US", opts) + (step === "hour" ? " UTC" : "");
  }

  // -- charts ----------------------------------------------------------------------------------
  let charts = [];
  function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

  function drawCharts() {
    charts.forEach(function (c) { c.destroy(); });
    charts = [];
    const dataEl = document.querySelector("#main .chart-data");
    if (!dataEl || typeof uPlot === "undefined") return;
    const data = JSON.parse(dataEl.textContent);
    document.querySelectorAll("#main [data-series]").forEach(function (el) {
      const values = data[el.dataset.series];
      if (!values) return;
      const big = el.classList.contains("chart");
      const format = fmt[el.dataset.fmt] || fmt.num;
      const card = el.closest(".card");
      const hover = card ? card.querySelector(".hover") : null;
      const accent = cssVar("--accent"), grid = cssVar("--grid"), muted = cssVar("--muted");
      const width = Math.max(el.clientWidth, 120);
      const filled = values.filter(function (v) { return v != null; }).length;
      const opts = {
        width: width, height: big ? 220 : 64,
        legend: {show: false},
        cursor: {y: false, points: {size: 6}, drag: {x: false, y: false}},
        padding: big ? [10, 8, 0, 0] : [4, 2, 2, 2],
        scales: {x: {time: true}, y: {range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }}},
        axes: big ? [
          {stroke: muted, grid: {show: false}, ticks: {stroke: grid}, font: "11px system-ui"},
          {stroke: muted, grid: {stroke: grid, width: 1}, ticks: {show: false}, font: "11px system-ui", size: 64,
           values: function (u, splits) { return splits.map(format); }},
        ] : [{show: false}, {show: false}],
        series: [{}, {stroke: accent, width: 2, fill: cssVar("--accent-fill"), points: {show: filled < 3, size: 6, fill: accent},
                      spanGaps: true, value: function (u, v) { return format(v); }}],
        hooks: {
          setCursor: [function (u) {
            if (!hover) return;
            const i = u.cursor.idx;
            hover.textContent = i == null ? "" : stepLabel(data.t[i], data.step) + ": " + format(values[i]);
          }],
        },
      };
      el.textContent = "";
      charts.push(new uPlot(opts, [data.t, values], el));
    });
  }

  let resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawCharts, 150);
  });

  function paintBars() {  // share bars: widths from data attributes (no inline styles: CSP)
    document.querySelectorAll("#main .fill[data-share]").forEach(function (el) {
      el.style.width = Math.min(100, parseFloat(el.dataset.share) || 0).toFixed(1) + "%";
    });
  }

  // -- polling: one request in flight per view, backoff on errors, paused while hidden ------------
  const main = document.getElementById("main");
  const pollBase = Math.max(1, parseFloat(body.dataset.poll) || 15) * 1000;
  let delay = pollBase, timer = null, inFlight = null;

  function schedule(ms) {
    clearTimeout(timer);
    timer = document.hidden ? null : setTimeout(poll, ms);
  }

  function busy() {  // do not swap the page under someone's hands
    const active = document.activeElement;
    return (active && main.contains(active) && /INPUT|SELECT|TEXTAREA/.test(active.tagName)) ||
      document.querySelector("dialog[open]") !== null;
  }

  async function poll() {
    if (inFlight || document.hidden) return;
    if (busy()) { schedule(pollBase); return; }
    inFlight = new AbortController();
    try {
      const res = await fetch(location.pathname + location.search,
                              {headers: {"X-Fragment": "1"}, credentials: "same-origin", signal: inFlight.signal});
      if (res.redirected || res.status === 401) { location.href = root + "/login"; return; }
      if (!res.ok) throw new Error("HTTP " + res.status);
      main.innerHTML = await res.text();
      main.dataset.updated = String(Date.now());
      paintBars();
      drawCharts();
      delay = pollBase;
    } catch (err) {
      if (err.name === "AbortError") return;
      delay = Math.min(delay * 2, 300000);
    } finally {
      inFlight = null;
    }
    schedule(delay);
  }

  if (main && main.dataset.pollView) {
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) {
        clearTimeout(timer);
        timer = null;
        if (inFlight) inFlight.abort();
      } else {
        schedule(0);
      }
    });
    schedule(pollBase);
  }

  // -- key forms ---------------------------------------------------------------------------------
  async function call(spec, payload) {
    const parts = spec.split(" ");
    const res = await fetch(parts[1], {
      method: parts[0], credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: payload === undefined ? undefined : JSON.stringify(payload),
    });
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) throw new Error((data && data.error && data.error.message) || ("HTTP " + res.status));
    return data;
  }

  function shape(form, kind) {
    const f = new FormData(form);
    const out = {};
    if (kind === "topup") return {amount: parseFloat(f.get("amount"))};
    out.name = (f.get("name") || "").trim();
    out.models = f.get("all_models") ? null : f.getAll("models");
    const limits = {};
    ["rpm", "tpm", "rpd", "concurrency"].forEach(function (n) {
      const v = f.get("limits." + n);
      if (v !== null && v !== "") limits[n] = parseInt(v, 10);
    });
    out.limits = limits;
    out.default_model = f.get("default_model") || null;
    if (kind === "create") {
      out.credits = f.get("unlimited") ? null : parseFloat(f.get("credits") || "0");
      const account = (f.get("account") || "").trim();
      if (account) out.account = account;
      const expires = (f.get("expires_at") || "").trim();
      if (expires) out.expires_at = expires;
    }
    return out;
  }

  function showError(form, message) {
    const el = form.querySelector(".flash") || document.getElementById("key-error");
    if (el) { el.textContent = message; el.hidden = false; } else { alert(message); }
  }

  document.querySelectorAll("form[data-api]").forEach(function (form) {
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const button = form.querySelector("[type=submit]");
      button.disabled = true;
      try {
        const data = await call(form.dataset.api, shape(form, form.dataset.shape));
        if (form.dataset.shape === "create") {
          form.closest("dialog").close();
          document.getElementById("new-key-value").textContent = data.key;
          document.getElementById("key-once").showModal();
        } else {
          location.reload();
        }
      } catch (err) {
        showError(form, err.message);
      } finally {
        button.disabled = false;
      }
    });
  });

  document.querySelectorAll("button[data-api]").forEach(function (button) {
    button.addEventListener("click", async function () {
      if (button.dataset.confirm && !confirm(button.dataset.confirm)) return;
      button.disabled = true;
      try {
        await call(button.dataset.api, button.dataset.body ? JSON.parse(button.dataset.body) : undefined);
        location.reload();
      } catch (err) {
        const el = document.getElementById("key-error");
        if (el) { el.textContent = err.message; el.hidden = false; }
        button.disabled = false;
      }
    });
  });

  document.querySelectorAll("[data-open]").forEach(function (b) {
    b.addEventListener("click", function () { document.getElementById(b.dataset.open).showModal(); });
  });
  document.querySelectorAll("dialog [data-close]").forEach(function (b) {
    b.addEventListener("click", function () { b.closest("dialog").close(); });
  });
  document.querySelectorAll("dialog [data-done]").forEach(function (b) {
    b.addEventListener("click", function () {
      document.getElementById("new-key-value").textContent = "";  // gone from the page
      location.reload();
    });
  });
  const copy = document.getElementById("copy-key");
  if (copy) {
    copy.addEventListener("click", async function () {
      const text = document.getElementById("new-key-value").textContent;
      try {
        await navigator.clipboard.writeText(text);
      } catch (e) {  // no clipboard API (plain http): select the text for Ctrl+C
        const range = document.createRange();
        range.selectNodeContents(document.getElementById("new-key-value"));
        getSelection().removeAllRanges();
        getSelection().addRange(range);
      }
      document.getElementById("copied").hidden = false;
    });
  }
  // "every model" unticks the list, and picking a model unticks "every model".
  document.querySelectorAll("fieldset.models").forEach(function (fs) {
    const all = fs.querySelector("[name=all_models]");
    fs.addEventListener("change", function (ev) {
      if (ev.target === all && all.checked) fs.querySelectorAll("[name=models]").forEach(function (c) { c.checked = false; });
      if (ev.target.name === "models" && ev.target.checked) all.checked = false;
    });
  });

  paintBars();
  if (document.readyState === "complete") drawCharts(); else window.addEventListener("load", drawCharts);
})();
