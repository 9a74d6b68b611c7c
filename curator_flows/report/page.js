"use strict";
// The run page: live (data from this server's api/ endpoints, refreshed) or static (data
// embedded in the page, a sample of rows). Every value goes into the document as text
// (Node.append / createTextNode / textContent), never as markup.
(function () {
  const data = JSON.parse(document.getElementById("cf-data").textContent);
  const live = data.mode === "live";
  const params = new URLSearchParams(window.location.search);
  const intParam = (name, fallback, lo, hi) => {
    const value = parseInt(params.get(name) || "", 10);
    return Number.isFinite(value) ? Math.min(hi, Math.max(lo, value)) : fallback;
  };
  const state = {
    page: intParam("page", 1, 1, Number.MAX_SAFE_INTEGER),
    size: intParam("size", 25, 1, 200),
    q: (params.get("q") || "").trim(),
  };
  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }
  const int = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
  const money = (n) => (n === null || n === undefined ? "—"
    : "$" + (n && Math.abs(n) < 0.001 ? Number(n).toPrecision(2) : Number(n).toFixed(4)));
  const when = (t) => (t ? new Date(t * 1000).toISOString().replace(".000Z", "Z") : "—");
  const text = (value) =>
    value === null || value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value, null, 1);
  const pre = (value, cls) => h("pre", cls ? { class: cls } : null, text(value));
  const link = (query, label) => {
    const next = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) if (value) next.set(key, String(value));
    return h("a", { href: "?" + next.toString() }, label);
  };

  function factsTable(tbody, rows) {
    tbody.replaceChildren(
      ...rows.filter((r) => r).map(([label, value, key]) =>
        h("tr", null, h("th", null, label), h("td", { class: "num", "data-key": key || null }, value)))
    );
  }

  // ------------------------------------------------------------------ header and progress
  function renderHeader(facts) {
    $("title").textContent = "curator-flows run " + facts.run_id;
    document.title = "curator-flows · " + facts.run_id;
    $("subtitle").textContent = [facts.model_name, facts.backend, facts.mode,
      facts.run_key ? "run key " + facts.run_key : null, facts.run_uri].filter((x) => x).join(" · ");
    if (live) {
      $("mode-note").textContent = "Live, read-only view of the run directory, refreshed every " +
        data.refresh_seconds + " s while it runs.";
    } else {
      const sample = data.sample;
      const pub = data.published || {};
      $("mode-note").textContent = "Static report written " + when(data.generated_at) +
        (pub.output_uri ? " beside the published dataset " + pub.output_uri : "") +
        ". The rows below are a sample: the first " + int(sample.rows.length) + " of " +
        int(sample.of) + " requests" + (sample.cell_chars ? ", texts cut at " + int(sample.cell_chars) +
        " characters" : "") + (sample.cut_by_size ? ", fewer rows to keep the page small" : "") +
        "; search and paging work within the sample.";
    }
  }

  function renderProgress(status) {
    const t = status.totals;
    const settled = t.succeeded + t.failed;
    $("progress-bar").max = Math.max(1, t.requests);
    $("progress-bar").value = settled;
    const note = status.finalized ? "finalized" : t.pending ? "running or waiting: " + int(t.pending) + " pending" : "every request has an answer; not finalized yet";
    $("progress-note").textContent = note + (status.cancelled ? " · CANCELLED" : "") +
      (status.read_at ? " · read " + when(status.read_at) : "");
    factsTable($("totals").tBodies[0], [
      ["requests", int(t.requests), "requests"],
      ["answered", int(t.succeeded), "succeeded"],
      ["failed", int(t.failed), "failed"],
      ["pending", int(t.pending), "pending"],
      t.in_flight === undefined ? null : ["in flight", int(t.in_flight), "in_flight"],
      ["cost so far", money(t.cost), "cost"],
      ["input tokens", int(t.input_tokens), "input_tokens"],
      ["output tokens", int(t.output_tokens), "output_tokens"],
    ]);
    const shards = status.shards || [];
    $("shards-box").hidden = !shards.length;
    $("shards").tBodies[0].replaceChildren(...shards.map((s) => {
      const batch = s.batch ? "round " + s.batch.round + " " + (s.batch.batch_id || "-") + " " + (s.batch.status || "") : "";
      const worker = s.lease ? "worker on " + s.lease.host + ", lease for " + Math.round(s.lease.expires_in) + " s" : "";
      return h("tr", { "data-shard": s.shard },
        h("td", null, s.shard), h("td", null, s.state),
        h("td", { class: "num" }, int(s.requests)), h("td", { class: "num" }, int(s.succeeded)),
        h("td", { class: "num" }, int(s.failed)), h("td", { class: "num" }, int(s.pending)),
        h("td", { class: "num" }, int(s.in_flight)), h("td", { class: "num" }, money(s.cost)),
        h("td", null, [batch, worker].filter((x) => x).join(" · ")));
    }));
  }

  function renderSummary(finalized, published) {
    const rows = [];
    if (finalized) {
      const tokens = finalized.token_usage || {}, cost = finalized.cost_info || {};
      const req = finalized.request_stats || {}, perf = finalized.performance_stats || {};
      rows.push(
        ["finalized", when(finalized.finalized_at), "finalized_at"],
        ["parsed rows", int(finalized.rows), "rows"],
        ["requests", int(req.total), "total"],
        ["succeeded (answered and parsed)", int(req.succeeded), "req_succeeded"],
        ["failed (parse() errors included)", int(req.failed), "req_failed"],
        ["reused from earlier runs", int(req.cached), "cached"],
        ["total cost", money(cost.total_cost), "total_cost"],
        ["of which reused (not paid by this run)", money(cost.cached_cost), "cached_cost"],
        ["input tokens", int(tokens.input), "tokens_input"],
        ["output tokens", int(tokens.output), "tokens_output"],
        ["time", perf.total_time ? Number(perf.total_time).toFixed(1) + " s" : "—", "total_time"],
        ["requests per minute", perf.requests_per_minute ? Number(perf.requests_per_minute).toFixed(1) : "—", "rpm"],
        ["mean latency", perf.mean_latency ? Number(perf.mean_latency).toFixed(2) + " s" : "—", "latency"],
        ["columns", Object.entries(finalized.columns || {}).map(([k, v]) => k + ": " + v).join(", ") || "—", "columns"],
      );
    } else {
      rows.push(["finalized", "not yet: the counts above are read from the response files", "finalized_at"]);
    }
    if (published) {
      rows.push(
        ["published to", published.output_uri, "output_uri"],
        ["published rows", int(published.rows), "published_rows"],
        ["published", when(published.published_at), "published_at"],
      );
    }
    factsTable($("summary-table").tBodies[0], rows);
  }

  function renderFailures(failures) {
    $("failures-note").textContent = failures.total
      ? int(failures.total) + " failed requests, from " + failures.source + "."
      : "No failed request (" + failures.source + ").";
    $("failures-table").hidden = !failures.total;
    $("failures-table").tBodies[0].replaceChildren(...failures.reasons.map((r) =>
      h("tr", { "data-reason": r.reason },
        h("td", null, h("code", null, r.reason)),
        h("td", { class: "num" }, int(r.count)),
        h("td", { class: "num" }, r.retryable === null ? "not recorded" : int(r.retryable)),
        h("td", null, h("ul", { class: "examples" }, r.examples.map((e) =>
          h("li", null, e.row === null || e.row === undefined ? "" : "row " + e.row + ": ",
            e.message, " ", link({ q: e.id }, "(show)"))))))));
  }

  // ------------------------------------------------------------------ rows
  function outputCell(row) {
    if (row.outputs && row.outputs.length) return h("td", null, row.outputs.map((o) => pre(o)));
    return h("td", null, h("span", { class: "quiet" }, row.outputs_note || ""));
  }

  function renderRows(result) {
    const body = $("rows-table").tBodies[0];
    body.replaceChildren(...result.rows.map((row) =>
      h("tr", { "data-row": row.row, "data-status": row.status, "data-id": row.id },
        h("td", { class: "row-num" }, String(row.row), h("br"), h("span", { class: "note" }, "shard " + row.shard)),
        h("td", null, pre(row.input)),
        h("td", null, (row.prompt || []).map((m) => h("div", null, h("span", { class: "role" }, m.role + ": "), pre(m.content)))),
        h("td", null, row.response !== null ? pre(row.response) : row.error ? pre(row.error, "error") : ""),
        outputCell(row),
        h("td", { class: "status-" + row.status }, row.status.replace("_", " "),
          row.status === "parse_failed" && row.error ? pre(row.error) : null,
          row.finish_reason ? h("div", { class: "note" }, "finish " + row.finish_reason) : null,
          row.usage ? h("div", { class: "note" }, "tokens " + row.usage.join(" / ")) : null,
          row.cost !== null && row.cost !== undefined ? h("div", { class: "note" }, money(row.cost)) : null,
          row.reused ? h("div", { class: "note" }, "reused") : null))));
    const searching = result.query !== undefined && result.query !== null;
    let note;
    if (searching) {
      note = result.rows.length ? "Rows matching “" + result.query + "”, page " + result.page + "." : "No row matches “" + result.query + "” on page " + result.page + ".";
      if (result.stopped_early) note += " The search stopped after reading " + int(result.scanned) + " requests (its limit): matches further on are not shown.";
      else if (live) note += " Read " + int(result.scanned) + " requests.";
    } else {
      note = "Page " + result.page + " of " + int(result.pages) + " (" + int(result.total) + " requests in input order).";
    }
    $("rows-note").textContent = note;
    const hasPrev = result.page > 1;
    const hasNext = searching ? result.more : result.page < result.pages;
    for (const id of ["pager", "pager-bottom"]) {
      const nav = $(id);
      nav.setAttribute("data-page", String(result.page));
      if (!searching) nav.setAttribute("data-pages", String(result.pages));
      nav.replaceChildren(
        hasPrev ? link({ page: result.page - 1, size: state.size !== 25 ? state.size : null, q: state.q }, "← previous") : h("span", { class: "note" }, "← previous"),
        h("span", null, "page " + result.page + (searching ? "" : " of " + int(result.pages))),
        hasNext ? link({ page: result.page + 1, size: state.size !== 25 ? state.size : null, q: state.q }, "next →") : h("span", { class: "note" }, "next →"));
    }
  }

  // ------------------------------------------------------------------ data sources
  async function getJSON(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!response.ok) throw new Error(path + ": HTTP " + response.status + " " + (await response.text()));
    return response.json();
  }

  function staticRows() {
    const all = data.sample.rows;
    const size = state.size;
    if (state.q) {
      const needle = state.q.toLowerCase();
      const haystack = (row) => [row.id, text(row.input), (row.prompt || []).map((m) => text(m.content)).join("\n"),
        text(row.response), text(row.error), text(row.outputs)].join("\n").toLowerCase();
      const hits = all.filter((row) => haystack(row).includes(needle));
      const page = Math.max(1, state.page);
      const rows = hits.slice((page - 1) * size, page * size);
      return { query: state.q, page, size, rows, more: hits.length > page * size, scanned: all.length, stopped_early: false };
    }
    const pages = Math.max(1, Math.ceil(all.length / size));
    const page = Math.min(state.page, pages);
    return { page, size, pages, total: all.length, rows: all.slice((page - 1) * size, page * size) };
  }

  function rowsQuery() {
    const query = new URLSearchParams({ page: String(state.page), size: String(state.size) });
    if (state.q) query.set("q", state.q);
    return "api/rows?" + query.toString();
  }

  function showError(error) {
    $("error").hidden = false;
    $("error").textContent = String(error && error.message ? error.message : error);
    document.body.setAttribute("data-state", "error");
  }

  function renderOverview(overview) {
    renderHeader(overview.facts);
    renderProgress(overview.status);
    renderSummary(overview.finalized, overview.published);
    renderFailures(overview.failures);
  }

  async function refresh() {
    try {
      const overview = await getJSON("api/overview");
      renderOverview(overview);
      $("error").hidden = true;
      const done = overview.status.finalized && !overview.status.totals.pending;
      window.setTimeout(refresh, 1000 * (done ? Math.max(30, overview.refresh_seconds) : overview.refresh_seconds));
    } catch (error) {
      showError("could not read the run (is `curator-flows view` still running?): " + (error.message || error));
      window.setTimeout(refresh, 10000);
    }
  }

  // ------------------------------------------------------------------ start
  $("q").value = state.q;
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("q").value.trim();
    const next = new URLSearchParams();
    if (query) next.set("q", query);
    if (state.size !== 25) next.set("size", String(state.size));
    window.location.search = next.toString();
  });
  $("clear").addEventListener("click", () => { window.location.search = ""; });

  (async function start() {
    try {
      if (live) {
        renderHeader(data.facts);
        const [overview, rows] = await Promise.all([getJSON("api/overview"), getJSON(rowsQuery())]);
        renderOverview(overview);
        renderRows(rows);
        window.setTimeout(refresh, 1000 * overview.refresh_seconds);
      } else {
        renderOverview(data);
        renderRows(staticRows());
      }
      document.body.setAttribute("data-state", "ready");
    } catch (error) {
      showError(error);
    }
  })();
})();
