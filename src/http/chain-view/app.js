// Writ chain view. Every value shown comes from the audit log and is attacker-influenced
// (client ids, audiences, scopes, subjects, task ids): it only ever enters the page through
// textContent or setAttribute on fixed attribute names, never through innerHTML.
'use strict';

(() => {
  const API = '/audit/view/api';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const JTI = /^[A-Za-z0-9._~-]{1,256}$/;
  const MAX_TRACES = 25;
  const MAX_EVENT_PAGES = 4;
  const PAGE = 500;

  const $ = (id) => document.getElementById(id);
  const form = $('search');
  const input = $('q');
  const statusEl = $('status');
  const graphEl = $('graph');
  const graphNote = $('graph-note');
  const eventsBody = $('events').tBodies[0];
  const eventsNote = $('events-note');
  const showAll = $('show-all');

  class SessionError extends Error {}

  let allEvents = [];
  let filterJti = null;
  let busy = 0;

  // ---- helpers -------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c === null || c === undefined ? '' : c);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function setStatus(kind, ...parts) {
    statusEl.className = `status ${kind}`;
    statusEl.replaceChildren(...parts);
  }

  function code(text) {
    return el('code', {}, text);
  }

  /** "2026-11-22T14:03:12.123456Z" → "2026-11-22 14:03:12". */
  function fmtTime(iso) {
    if (typeof iso !== 'string') return '';
    const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})/.exec(iso);
    return m ? `${m[1]} ${m[2]}` : iso;
  }

  function fmtSpan(iat, exp) {
    const a = fmtTime(iat);
    const b = fmtTime(exp);
    if (a.slice(0, 10) === b.slice(0, 10)) return `${a} → ${b.slice(11)} UTC`;
    return `${a} → ${b} UTC`;
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store' });
    if (response.status === 401) throw new SessionError('session');
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    return { status: response.status, body };
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
    return q.toString();
  }

  async function traceOf(jti) {
    if (!JTI.test(jti)) return undefined;
    const { status, body } = await getJson(`${API}/trace?${query({ jti })}`);
    if (status === 200 && body && Array.isArray(body.ancestry)) return body;
    if (status === 404 || status === 400) return undefined;
    throw new Error(`trace answered HTTP ${status}`);
  }

  /** Newest first; follows next_cursor up to maxPages. */
  async function searchEvents(params, maxPages) {
    const events = [];
    let cursor;
    let more = false;
    for (let i = 0; i < maxPages; i += 1) {
      const { status, body } = await getJson(`${API}/events?${query({ ...params, limit: PAGE, cursor })}`);
      if (status !== 200 || !body || !Array.isArray(body.events)) {
        const why = body && typeof body.error_description === 'string' ? body.error_description : `HTTP ${status}`;
        throw new Error(`event search failed: ${why}`);
      }
      events.push(...body.events);
      cursor = body.next_cursor;
      more = cursor !== null && cursor !== undefined;
      if (!more) break;
    }
    return { events, more };
  }

  // ---- the model: a forest of hops under their human ---------------------------------

  function newModel() {
    return { hops: new Map(), incomplete: new Set(), truncated: false, selected: null };
  }

  function addTrace(model, trace) {
    const root = { issuer: String(trace.root.issuer), sub: String(trace.root.sub) };
    const add = (hop) => {
      if (!model.hops.has(hop.jti)) model.hops.set(hop.jti, { ...hop, children: undefined, root });
    };
    trace.ancestry.forEach(add);
    const walk = (nodes) => {
      for (const n of nodes) {
        add(n);
        walk(n.children || []);
      }
    };
    walk(trace.descendants || []);
    if (trace.ancestry_incomplete && trace.ancestry.length > 0) model.incomplete.add(trace.ancestry[0].jti);
    if (trace.descendants_truncated) model.truncated = true;
  }

  function forestOf(model) {
    const children = new Map();
    const tops = [];
    const byTime = (a, b) => (a.iat < b.iat ? -1 : a.iat > b.iat ? 1 : a.jti < b.jti ? -1 : 1);
    for (const hop of model.hops.values()) {
      if (hop.parent_jti && model.hops.has(hop.parent_jti)) {
        if (!children.has(hop.parent_jti)) children.set(hop.parent_jti, []);
        children.get(hop.parent_jti).push(hop);
      } else {
        tops.push(hop);
      }
    }
    for (const list of children.values()) list.sort(byTime);
    tops.sort(byTime);
    const humans = new Map();
    for (const top of tops) {
      const key = `${top.root.issuer}|${top.root.sub}`;
      if (!humans.has(key)) humans.set(key, { root: top.root, tops: [] });
      humans.get(key).tops.push(top);
    }
    return { humans: [...humans.values()], children };
  }

  // ---- the graph ---------------------------------------------------------------------
  // Top-down: the human at the top, each agent hop below its parent, the tool (the final
  // audience) below each leaf; branches spread sideways.

  const PAD = 16;
  const SLOT = 300;
  const GAP_Y = 38;
  const LINE = 17;
  const WIDTH = { human: 250, purged: 210, hop: 284, tool: 284 };

  function linesOf(node) {
    if (node.kind === 'human') return 3;
    if (node.kind === 'purged') return 2;
    if (node.kind === 'tool') return 2;
    return node.hop.task_id ? 8 : 7;
  }

  /** Shortens a <text> until it fits, keeping the whole value in a <title>. */
  function fit(text, value, maxWidth) {
    text.textContent = value;
    if (text.getComputedTextLength() <= maxWidth) return;
    let lo = 0;
    let hi = value.length;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      text.textContent = `${value.slice(0, mid)}…`;
      if (text.getComputedTextLength() <= maxWidth) lo = mid;
      else hi = mid - 1;
    }
    text.textContent = `${value.slice(0, lo)}…`;
    const title = svg('title');
    title.textContent = value;
    (text.tagName === 'tspan' ? text.parentNode : text).append(title);
  }

  function layout(forest, incomplete) {
    const nodes = [];
    const edges = [];
    let slot = 0;
    const make = (kind, props, y) => {
      const node = { kind, ...props, y };
      node.w = WIDTH[kind];
      node.h = 14 + linesOf(node) * LINE;
      nodes.push(node);
      return node;
    };
    const center = (node, cx) => {
      node.cx = cx;
      node.x = cx - node.w / 2;
    };
    const below = (node) => node.y + node.h + GAP_Y;
    const hopNode = (hop, y) => {
      const node = make('hop', { hop }, y);
      const kids = forest.children.get(hop.jti) || [];
      if (kids.length === 0) {
        const tool = make('tool', { audience: hop.audience, revoked: hop.revoked }, below(node));
        center(tool, PAD + slot * SLOT + SLOT / 2);
        slot += 1;
        center(node, tool.cx);
        edges.push({ from: node, to: tool, kind: 'call' });
      } else {
        const placed = kids.map((k) => hopNode(k, below(node)));
        for (const k of placed) edges.push({ from: node, to: k, kind: 'delegate' });
        center(node, (placed[0].cx + placed[placed.length - 1].cx) / 2);
      }
      return node;
    };
    forest.humans.forEach((human, i) => {
      if (i > 0) slot += 0.15;
      const h = make('human', { root: human.root }, PAD);
      const firsts = human.tops.map((top) => {
        if (top.parent_jti && incomplete.has(top.jti)) {
          const purged = make('purged', {}, below(h));
          const first = hopNode(top, below(purged));
          center(purged, first.cx);
          edges.push({ from: h, to: purged, kind: 'delegate' }, { from: purged, to: first, kind: 'delegate' });
          return purged;
        }
        const first = hopNode(top, below(h));
        edges.push({ from: h, to: first, kind: 'delegate' });
        return first;
      });
      center(h, (firsts[0].cx + firsts[firsts.length - 1].cx) / 2);
    });
    let width = 0;
    let height = 0;
    for (const n of nodes) {
      width = Math.max(width, n.x + n.w + PAD);
      height = Math.max(height, n.y + n.h + PAD);
    }
    return { nodes, edges, width, height };
  }

  function drawNode(g, node, selected) {
    const { w, h } = node;
    const group = svg('g', { class: `node ${node.kind}`, transform: `translate(${node.x},${node.y})` });
    g.append(group);
    group.append(svg('rect', { class: 'box', width: w, height: h, rx: 8, ry: 8 }));
    let line = 0;
    const text = (value, cls) => {
      const t = svg('text', { x: 12, y: 22 + line * LINE, class: cls });
      group.append(t);
      fit(t, String(value), w - 24);
      line += 1;
      return t;
    };
    const labelled = (label, value, cls) => {
      const t = svg('text', { x: 12, y: 22 + line * LINE, class: `line ${cls || ''}` });
      group.append(t);
      const l = svg('tspan', { class: 'label' });
      l.textContent = `${label} `;
      t.append(l);
      const v = svg('tspan');
      t.append(v);
      const room = w - 24 - l.getComputedTextLength();
      v.textContent = value;
      if (v.getComputedTextLength() > room) fit(v, String(value), room);
      line += 1;
      return t;
    };
    if (node.kind === 'human') {
      const tip = svg('title');
      tip.textContent = `${node.root.issuer}|${node.root.sub}`;
      group.append(tip);
      text('human', 'kicker');
      text(node.root.sub, 'title');
      text(node.root.issuer, 'muted');
      return group;
    }
    if (node.kind === 'purged') {
      text('earlier hops', 'kicker');
      text('purged from the lineage', 'muted');
      return group;
    }
    if (node.kind === 'tool') {
      if (node.revoked) group.classList.add('revoked');
      text(node.revoked ? 'tool · token revoked' : 'tool', 'kicker');
      text(node.audience, 'title');
      return group;
    }
    const hop = node.hop;
    group.classList.add('clickable');
    if (hop.revoked) group.classList.add('revoked');
    if (hop.jti === selected) group.classList.add('selected');
    group.setAttribute('tabindex', '0');
    group.setAttribute('role', 'button');
    group.dataset.jti = hop.jti;
    const tip = svg('title');
    tip.textContent = `${hop.client_id} → ${hop.audience} (jti ${hop.jti}): click to list its events`;
    // The lineage row was changed after the grant: its sealed exchange.granted event is the account to trust.
    const changed = hop.record === 'differs';
    if (changed) {
      group.classList.add('changed');
      tip.textContent += `. Changed since granted (${hop.record_differs.join(', ')}): see its exchange.granted event`;
    }
    group.append(tip);
    text(`agent · depth ${hop.depth}${changed ? ' · CHANGED SINCE GRANTED' : ''}`, 'kicker');
    text(hop.client_id, 'title');
    if (hop.revoked) {
      const badge = svg('g', { class: 'badge', transform: `translate(${w - 84},8)` });
      badge.append(svg('rect', { width: 74, height: 18, rx: 9, ry: 9 }));
      const bt = svg('text', { x: 37, y: 13, 'text-anchor': 'middle' });
      bt.textContent = 'REVOKED';
      badge.append(bt);
      if (hop.revoked_at) {
        const tt = svg('title');
        tt.textContent = `revoked at ${hop.revoked_at}`;
        badge.append(tt);
      }
      group.append(badge);
    }
    labelled('aud', hop.audience);
    labelled('scope', hop.scopes.length ? hop.scopes.join(' ') : '(none)', 'scopes');
    labelled('rule', `${hop.rule_id} · v${hop.policy_version}`);
    if (hop.task_id) labelled('task', hop.task_id);
    labelled('time', fmtSpan(hop.iat, hop.exp), 'time');
    labelled('jti', hop.jti, 'mono');
    return group;
  }

  function edgePath(from, to) {
    const x1 = from.cx;
    const y1 = from.y + from.h;
    const x2 = to.cx;
    const y2 = to.y - 2;
    const mid = (y1 + y2) / 2;
    return `M${x1},${y1} C${x1},${mid} ${x2},${mid} ${x2},${y2}`;
  }

  function drawGraph(model) {
    graphEl.replaceChildren();
    graphNote.textContent = '';
    if (model.hops.size === 0) return;
    const forest = forestOf(model);
    // The SVG must be in the document for text to be measured.
    const root = svg('svg', { role: 'img', 'aria-label': 'Delegation graph' });
    graphEl.append(root);
    const defs = svg('defs');
    const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
    marker.append(svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow' }));
    defs.append(marker);
    const edgeLayer = svg('g', { class: 'edges' });
    const nodeLayer = svg('g', { class: 'nodes' });
    root.append(defs, edgeLayer, nodeLayer);
    const { nodes, edges, width, height } = layout(forest, model.incomplete);
    root.setAttribute('width', String(width));
    root.setAttribute('height', String(height));
    root.setAttribute('viewBox', `0 0 ${width} ${height}`);
    for (const n of nodes) drawNode(nodeLayer, n, model.selected);
    for (const e of edges) edgeLayer.append(svg('path', { d: edgePath(e.from, e.to), class: `edge ${e.kind}`, 'marker-end': 'url(#arrow)' }));
    const notes = [`${model.hops.size} token${model.hops.size === 1 ? '' : 's'}`];
    if (model.truncated) notes.push('some descendants not shown');
    if (model.limited) notes.push(`first ${MAX_TRACES} chains traced`);
    notes.push('click a token to list its events');
    graphNote.textContent = notes.join(' · ');
  }

  graphEl.addEventListener('click', (ev) => {
    const g = ev.target instanceof Element ? ev.target.closest('g.node.hop') : null;
    if (g && g.dataset.jti) selectJti(g.dataset.jti);
  });
  graphEl.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Enter' && ev.key !== ' ') return;
    const g = ev.target instanceof Element ? ev.target.closest('g.node.hop') : null;
    if (g && g.dataset.jti) {
      ev.preventDefault();
      selectJti(g.dataset.jti);
    }
  });

  function selectJti(jti) {
    filterJti = filterJti === jti ? null : jti;
    for (const g of graphEl.querySelectorAll('g.node.hop')) g.classList.toggle('focused', g.dataset.jti === filterJti);
    drawEvents();
  }

  // ---- the event list ----------------------------------------------------------------

  const OUTCOME_CLASS = { granted: 'ok', active: 'ok', ok: 'ok', applied: 'ok', denied: 'bad', rejected: 'bad', inactive: 'warn', revoked: 'bad' };

  function drawEvents() {
    const shown = filterJti ? allEvents.filter((e) => e.jti === filterJti || (!e.jti && e.parent_jti === filterJti)) : allEvents;
    showAll.hidden = !filterJti;
    const rows = shown.map((e) => {
      const jtiCell = el('td', { class: 'mono' });
      if (e.jti) {
        const b = el('button', { type: 'button', class: 'link', title: `trace ${e.jti}` }, e.jti);
        b.addEventListener('click', () => run(e.jti));
        jtiCell.append(b);
      }
      const outcome = el('span', { class: `pill ${OUTCOME_CLASS[e.outcome] || 'neutral'}` }, e.outcome);
      const tr = el('tr', {},
        el('td', { class: 'when', title: e.occurred_at || '' }, el('span', { class: 'date' }, fmtTime(e.occurred_at).slice(0, 10)), ' ', el('span', {}, fmtTime(e.occurred_at).slice(11))),
        el('td', { class: 'nowrap' }, e.type),
        el('td', {}, outcome),
        el('td', {}, e.reason || ''),
        el('td', {}, e.client_id || ''),
        jtiCell,
      );
      if (e.jti && e.jti === filterJti) tr.className = 'hit';
      return tr;
    });
    if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: '6', class: 'empty' }, allEvents.length ? 'No events for this token.' : 'No events.')));
    eventsBody.replaceChildren(...rows);
    eventsNote.textContent = filterJti ? `${shown.length} of ${allEvents.length} · token ${filterJti.slice(0, 10)}…` : `${allEvents.length}`;
  }

  showAll.addEventListener('click', () => selectJti(filterJti));

  // ---- searching ---------------------------------------------------------------------

  /** Events of the traced chains: by subject since the first hop (and by task), kept to their jtis. */
  async function chainEvents(model) {
    const jtis = new Set(model.hops.keys());
    const subjects = new Set();
    const tasks = new Set();
    let first = null;
    for (const hop of model.hops.values()) {
      subjects.add(`${hop.root.issuer}|${hop.root.sub}`);
      if (hop.task_id) tasks.add(hop.task_id);
      if (first === null || hop.iat < first) first = hop.iat;
    }
    const since = new Date(Date.parse(first) - 5 * 60 * 1000).toISOString();
    const byId = new Map();
    let more = false;
    // A token's own events, refusals of requests that presented one of them (no jti of
    // their own), and task revocations; grants on other branches belong to other chains.
    const keep = (e) => (e.jti ? jtis.has(e.jti) : (e.parent_jti && jtis.has(e.parent_jti)) || e.type === 'task.revocation');
    for (const subject of subjects) {
      const page = await searchEvents({ subject, since }, MAX_EVENT_PAGES);
      more ||= page.more;
      for (const e of page.events) if (keep(e)) byId.set(e.id, e);
    }
    for (const task_id of tasks) {
      const page = await searchEvents({ task_id, since }, MAX_EVENT_PAGES);
      more ||= page.more;
      for (const e of page.events) if (keep(e)) byId.set(e.id, e);
    }
    return { events: [...byId.values()].sort((a, b) => b.id - a.id), more };
  }

  async function traceEventJtis(model, events) {
    // Oldest first, so a chain's first hop is traced before its descendants (which it covers).
    const ordered = [...events].sort((a, b) => a.id - b.id);
    const candidates = [];
    for (const e of ordered) {
      for (const j of [e.jti, e.parent_jti]) if (j && !candidates.includes(j)) candidates.push(j);
    }
    let traced = 0;
    for (const j of candidates) {
      if (model.hops.has(j)) continue;
      if (traced >= MAX_TRACES) {
        model.limited = true;
        break;
      }
      traced += 1;
      const t = await traceOf(j);
      if (t) addTrace(model, t);
    }
  }

  async function run(raw) {
    const q = String(raw).trim();
    if (!q) return;
    input.value = q;
    history.replaceState(null, '', `#${encodeURIComponent(q)}`);
    const mine = ++busy;
    filterJti = null;
    document.body.classList.add('loading');
    setStatus('info', 'Searching for ', code(q), '…');
    try {
      const model = newModel();
      let events = [];
      let more = false;
      let what;
      const trace = await traceOf(q);
      if (trace) {
        addTrace(model, trace);
        model.selected = q;
        ({ events, more } = await chainEvents(model));
        what = ['Token ', code(q), ` — a chain of ${trace.ancestry.length} hop${trace.ancestry.length === 1 ? '' : 's'} from `, code(`${trace.root.sub}`), '.'];
      } else {
        let page = { events: [], more: false };
        let kind = 'task';
        if (q.includes('|')) {
          page = await searchEvents({ subject: q }, 1);
          kind = 'subject';
        }
        if (page.events.length === 0) {
          page = await searchEvents({ task_id: q }, 1);
          kind = 'task';
        }
        if (page.events.length === 0) {
          if (mine !== busy) return;
          allEvents = [];
          drawGraph(newModel());
          drawEvents();
          setStatus('warn', 'Nothing found for ', code(q), ': no token with that jti, and no events for it as a subject (issuer|sub) or task_id.');
          return;
        }
        events = page.events;
        more = page.more;
        await traceEventJtis(model, events);
        what = [kind === 'subject' ? 'Subject ' : 'Task ', code(q), ` — ${model.hops.size} token${model.hops.size === 1 ? '' : 's'} traced.`];
      }
      if (mine !== busy) return;
      allEvents = events;
      drawGraph(model);
      drawEvents();
      setStatus('ok', ...what, more ? ` Showing the newest ${events.length} events.` : '');
    } catch (err) {
      if (mine !== busy) return;
      if (err instanceof SessionError) {
        const link = el('a', { href: '/audit/view' }, 'sign in again');
        setStatus('error', 'Your session has ended: run ', code('writ audit open'), ' and ', link, '.');
      } else {
        setStatus('error', `Search failed: ${err && err.message ? err.message : String(err)}`);
      }
    } finally {
      if (mine === busy) document.body.classList.remove('loading');
    }
  }

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void run(input.value);
  });

  if (location.hash.length > 1) {
    let initial = '';
    try {
      initial = decodeURIComponent(location.hash.slice(1));
    } catch {
      initial = '';
    }
    if (initial) void run(initial);
  }
})();
