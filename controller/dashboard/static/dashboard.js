// NovaCron Edge dashboard: polls /api/state and redraws. Every name, reason and message comes
// from agents or operators: it is only ever set as text (textContent, attribute values,
// SVG text nodes), never parsed as markup.
"use strict";
(() => {
  const POLL_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const W = 900, H = 480, PAD = 70;
  const CONDITIONS = ["ready", "suspect", "lost", "not_ready"];
  let updates = 0;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  const cls = (value) => String(value).replace(/[^a-z0-9_-]/gi, "");
  const fmtMs = (v) => (v === null || v === undefined ? "—" : `${Number(v).toFixed(1)} ms`);
  const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "");
  const gib = (mib) => (mib >= 1024 ? `${(mib / 1024).toFixed(mib % 1024 ? 1 : 0)} GiB` : `${mib} MiB`);

  // -- the map: equirectangular, fitted to the sites -------------------------------------------
  function projection(nodes) {
    const located = nodes.filter((n) => n.location);
    const lons = located.map((n) => n.location.longitude);
    const lats = located.map((n) => n.location.latitude);
    let [lon0, lon1] = lons.length ? [Math.min(...lons), Math.max(...lons)] : [-180, 180];
    let [lat0, lat1] = lats.length ? [Math.min(...lats), Math.max(...lats)] : [-60, 75];
    const grow = (a, b, min) => { const m = (a + b) / 2, h = Math.max((b - a) / 2, min / 2); return [m - h, m + h]; };
    [lon0, lon1] = grow(lon0, lon1, 12);
    [lat0, lat1] = grow(lat0, lat1, 6);
    const k = Math.min((W - 2 * PAD) / (lon1 - lon0), (H - 2 * PAD) / (lat1 - lat0));
    const cx = (lon0 + lon1) / 2, cy = (lat0 + lat1) / 2;
    const xy = (lon, lat) => [W / 2 + (lon - cx) * k, H / 2 - (lat - cy) * k];
    return { xy, k, cx, cy };
  }

  function graticule(g, p) {
    const span = W / p.k;
    const step = span > 120 ? 30 : span > 40 ? 10 : span > 15 ? 5 : 2;
    const lonMin = p.cx - W / 2 / p.k, lonMax = p.cx + W / 2 / p.k;
    const latMin = p.cy - H / 2 / p.k, latMax = p.cy + H / 2 / p.k;
    for (let lon = Math.ceil(lonMin / step) * step; lon <= lonMax; lon += step) {
      const [x] = p.xy(lon, 0);
      g.append(svg("line", { class: "grid", x1: x, y1: 0, x2: x, y2: H }));
      g.append(svg("text", { class: "grid-label", x: x + 2, y: H - 4 }, `${lon}°`));
    }
    for (let lat = Math.ceil(latMin / step) * step; lat <= latMax; lat += step) {
      const [, y] = p.xy(0, lat);
      g.append(svg("line", { class: "grid", x1: 0, y1: y, x2: W, y2: y }));
      g.append(svg("text", { class: "grid-label", x: 2, y: y - 2 }, `${lat}°`));
    }
  }

  // Labels go where they overlap no other label or site, nearest first; one pushed away from
  // its site gets a leader line. Boxes are [left, top, right, bottom].
  function placeLabel(boxes, x, y, w, h) {
    const overlaps = (box) => boxes.some((b) => box[0] < b[2] && b[0] < box[2] && box[1] < b[3] && b[1] < box[3]);
    for (const r of [14, 36, 60, 88, 120]) {
      for (const deg of [0, 180, 90, 270, 45, 135, 225, 315]) {
        const a = (deg * Math.PI) / 180;
        const px = x + r * Math.cos(a), py = y + r * Math.sin(a);
        const anchor = Math.cos(a) > 0.3 ? "start" : Math.cos(a) < -0.3 ? "end" : "middle";
        const left = anchor === "start" ? px : anchor === "end" ? px - w : px - w / 2;
        const top = Math.sin(a) > 0.3 ? py : Math.sin(a) < -0.3 ? py - h : py - h / 2;
        const box = [left, top, left + w, top + h];
        if (box[0] >= 0 && box[2] <= W && box[1] >= 0 && box[3] <= H && !overlaps(box)) {
          boxes.push(box);
          return { x: anchor === "start" ? left : anchor === "end" ? left + w : left + w / 2, y: top + 11, anchor, leader: r > 14 ? [px, py] : null };
        }
      }
    }
    return { x: x + 12, y: y - 2, anchor: "start", leader: null };
  }

  function drawMap(doc) {
    const map = document.getElementById("map");
    map.replaceChildren();
    const p = projection(doc.nodes);
    const grid = svg("g");
    graticule(grid, p);
    map.append(grid);
    const at = {};
    for (const n of doc.nodes) if (n.location) at[n.id] = p.xy(n.location.longitude, n.location.latitude);
    const moves = [
      ...doc.migrations.filter((m) => m.active).map((m) => ({ kind: "migration", ...m })),
      ...doc.failovers.filter((f) => f.active).map((f) => ({ kind: "failover", ...f })),
    ];
    for (const m of moves) {
      const a = at[m.source], b = at[m.target];
      if (!a || !b) continue;
      map.append(svg("line", { class: `move ${m.kind}`, x1: a[0], y1: a[1], x2: b[0], y2: b[1], "data-vm": m.vm_name }));
      map.append(svg("text", { class: "move-label", x: (a[0] + b[0]) / 2, y: (a[1] + b[1]) / 2 - 6, "text-anchor": "middle" },
        `${m.vm_name}: ${m.phase}`));
    }
    const counts = {};
    for (const v of doc.vms) counts[v.node_id] = (counts[v.node_id] || 0) + 1;
    const boxes = Object.values(at).map(([x, y]) => [x - 10, y - 10, x + 10, y + 10]);
    for (const n of doc.nodes) {
      if (!at[n.id]) continue;
      const [x, y] = at[n.id];
      const r = 6 + Math.min(8, Math.sqrt(n.capacity.vcpus || 1) * 1.5);
      const g = svg("g", { class: `site-mark ${cls(n.condition)}`, "data-node": n.id });
      g.append(svg("title", {}, `${n.id}: ${n.condition}${n.reason ? " (" + n.reason + ")" : ""}`));
      g.append(svg("circle", { class: `node${n.cordoned ? " cordoned" : ""}`, cx: x, cy: y, r }));
      const sub = `${n.edge_type.toUpperCase()} · ${n.capacity.vcpus} vCPU/${gib(n.capacity.memory_mib)} · ${counts[n.id] || 0} VM`;
      const w = Math.max(n.id.length * 7.4, sub.length * 6.1);
      const spot = placeLabel(boxes, x, y, w, 28);
      if (spot.leader) g.append(svg("line", { class: "leader", x1: x, y1: y, x2: spot.leader[0], y2: spot.leader[1] }));
      g.append(svg("text", { class: "node-label", x: spot.x, y: spot.y, "text-anchor": spot.anchor }, n.id));
      g.append(svg("text", { class: "node-sub", x: spot.x, y: spot.y + 13, "text-anchor": spot.anchor }, sub));
      map.append(g);
    }
    const unplaced = doc.nodes.filter((n) => !n.location).map((n) => n.id);
    if (unplaced.length) map.append(svg("text", { class: "grid-label", x: 8, y: 14 }, `no location: ${unplaced.join(", ")}`));
  }

  function drawLegend() {
    const legend = document.getElementById("legend");
    legend.replaceChildren(...CONDITIONS.map((c) => el("li", { class: c }, el("span", { class: "dot" }), c.replace("_", " "))),
      el("li", {}, "dashed line: a VM moving (label: its phase); dashed ring: cordoned"));
  }

  // -- sites and their VMs ---------------------------------------------------------------------
  function siteCard(n, vms) {
    const used = n.allocated, cap = n.capacity;
    const rtt = n.rtt_ms ? `RTT to controller p50 ${fmtMs(n.rtt_ms.p50)}, p95 ${fmtMs(n.rtt_ms.p95)}` : "RTT not measured yet";
    const card = el("article", { class: `site ${cls(n.condition)}`, "data-node": n.id },
      el("h3", {}, el("span", { class: "dot" }), n.id, " ", el("small", { class: "meta" }, `${n.condition}${n.cordoned ? ", cordoned" : ""}`)),
      el("div", { class: "meta" }, `${n.edge_type} · ${n.arch} · ${n.location ? n.location.country : "?"} · ${used.vcpus}/${cap.vcpus} vCPU · ${gib(used.memory_mib)}/${gib(cap.memory_mib)} booked`),
      el("div", { class: "meta" }, rtt));
    const labels = Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    if (n.hostname || labels) card.append(el("div", { class: "meta labels" }, [n.hostname, labels].filter(Boolean).join(" · ")));
    if (n.reason && n.condition !== "ready") card.append(el("div", { class: "meta" }, n.reason));
    if (!vms.length) { card.append(el("p", { class: "empty" }, "no VMs")); return card; }
    const body = el("tbody");
    for (const v of vms) {
      const over = v.latency_over ? "over" : "";
      body.append(el("tr", { "data-vm": v.name, "data-node": v.node_id },
        el("td", { class: "wrap" }, v.name),
        el("td", { class: `state-${cls(v.state)}` }, v.migrating_to ? `${v.state} → ${v.migrating_to}` : v.state),
        v.latency_source === "estimated"
          ? el("td", { class: over, title: "estimated from the distance to its users (placed near them)" },
            `est. ${fmtMs(v.latency_ms)} / ${fmtMs(v.latency_bound_ms)}`)
          : el("td", { class: over, title: `RTT to the controller measured by the node's agent, p${v.latency_percentile}` },
            `${fmtMs(v.latency_ms)} / ${fmtMs(v.latency_bound_ms)}`),
        el("td", {}, (v.address || "").replace(/\/32$/, ""))));
    }
    card.append(el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "VM"), el("th", {}, "state"), el("th", {}, "latency / bound"), el("th", {}, "address"))), body));
    return card;
  }

  function drawSites(doc) {
    const byNode = {};
    for (const v of doc.vms) (byNode[v.node_id] = byNode[v.node_id] || []).push(v);
    const known = new Set(doc.nodes.map((n) => n.id));
    const cards = doc.nodes.map((n) => siteCard(n, byNode[n.id] || []));
    const stray = doc.vms.filter((v) => !known.has(v.node_id));
    if (stray.length) cards.push(siteCard({ id: "(no node)", condition: "not_ready", edge_type: "", arch: "", location: null,
      capacity: { vcpus: 0, memory_mib: 0 }, allocated: { vcpus: 0, memory_mib: 0 }, rtt_ms: null, reason: "" }, stray));
    document.getElementById("sites").replaceChildren(...cards);
  }

  function bar(pct) {
    const fill = el("span");
    fill.style.width = `${pct}%`; // CSSOM, not a style attribute: the CSP allows no inline style
    return el("span", { class: "bar", title: `${pct}%` }, fill);
  }

  function drawMoves(doc) {
    const rows = [];
    for (const m of doc.migrations) {
      const pct = Math.max(0, Math.min(100, Number(m.progress_pct) || 0));
      const bytes = m.bytes_total ? `${gib(Math.round(m.bytes_transferred / 1048576))} of ${gib(Math.round(m.bytes_total / 1048576))}` : "";
      rows.push(el("tr", { "data-migration": m.id, "data-vm": m.vm_name, "data-phase": m.phase },
        el("td", { class: "wrap" }, m.vm_name), el("td", {}, `${m.mode} migration`), el("td", {}, `${m.source} → ${m.target}`),
        el("td", {}, m.phase), el("td", {}, bar(pct)),
        el("td", { class: "wrap" }, m.error || (m.downtime_ms ? `downtime ${m.downtime_ms.toFixed(0)} ms` : bytes))));
    }
    for (const f of doc.failovers) {
      rows.push(el("tr", { "data-failover": f.id, "data-vm": f.vm_name, "data-phase": f.phase },
        el("td", { class: "wrap" }, f.vm_name), el("td", {}, "failover"), el("td", {}, `${f.source} → ${f.target}`),
        el("td", {}, f.phase), el("td", {}, clock(f.started_at)), el("td", { class: "wrap" }, f.error || f.reason)));
    }
    document.querySelector("#moves tbody").replaceChildren(...rows);
    document.getElementById("moves-empty").hidden = rows.length > 0;
  }

  function drawEvents(doc) {
    const items = (doc.events || []).map((e) => el("li", { class: cls(e.severity) },
      el("time", {}, clock(e.at)), el("span", { class: "kind" }, e.kind), e.message || e.subject || ""));
    if (doc.events_error) items.unshift(el("li", { class: "warning" }, `events unavailable: ${doc.events_error}`));
    document.getElementById("events").replaceChildren(...items);
  }

  function setStatus(text, error) {
    const s = document.getElementById("status");
    s.textContent = text;
    s.className = error ? "status error" : "status";
  }

  function render(doc) {
    drawMap(doc);
    drawSites(doc);
    drawMoves(doc);
    drawEvents(doc);
    const active = doc.migrations.filter((m) => m.active).length + doc.failovers.filter((f) => f.active).length;
    document.getElementById("summary").textContent =
      `${doc.nodes.length} sites · ${doc.vms.length} VMs · ${active} moving · installation ${String(doc.installation_id).slice(0, 8)}`;
    updates += 1;
    document.body.dataset.updates = String(updates);
    setStatus(`updated ${clock(doc.generated_at)}`, false);
  }

  async function poll() {
    try {
      const response = await fetch("/api/state", { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401 || response.status === 403) {
        const why = await response.json().catch(() => ({}));
        setStatus(`signed out: ${why.error || response.status} (reload to sign in)`, true);
      } else if (!response.ok) {
        setStatus(`controller answered ${response.status}; retrying`, true);
      } else {
        render(await response.json());
      }
    } catch (err) {
      setStatus(`controller unreachable (${err}); retrying`, true);
    }
    setTimeout(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => { drawLegend(); poll(); });
})();
