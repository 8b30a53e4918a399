// vmshift dashboard: hand-written vanilla JS, no build step, nothing loaded from elsewhere.
// The bearer token lives in sessionStorage and travels only in the Authorization header
// (never a cookie), so another site cannot make this browser act on the API.
// The page's CSP forbids inline scripts and style attributes: styles are set through the
// CSSOM (el.style.x = ...) or classes, never as markup.
'use strict';

(() => {
  const TOKEN_KEY = 'vmshift.token';
  const REFRESH_MS = 1000;
  const DATASTORES_MS = 5000;
  const PENDING_MS = 15000;
  const MiB = 1048576;

  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    jobs: [],
    selected: null, // full job id of the detail pane
    selectedAt: 0, // when it was opened (Date.now())
    detail: null, // its last GET /jobs/{id}
    stream: null, // AbortController of its event stream
    chart: [], // [{t: ms, r: bytes/s}]
    chartBase: 0, // chart time (ms) at chartBaseAt
    chartBaseAt: 0, // performance.now() then
    checkedKey: null, // the form values a check said go for
    timer: null,
    ticking: false,
    again: false,
    datastoresAt: 0,
    pollError: false, // the message shows a refresh's failure
    pollFailures: 0, // refreshes failed in a row
  };

  // ---- formatting ---------------------------------------------------------------------

  /** Bytes with binary units: 1.50 GiB. */
  function fmtBytes(n) {
    if (n === null || n === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = Number(n);
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    if (i === 0) return `${v} B`;
    return `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
  }

  /** A rate in MiB/s. */
  function fmtRate(bytesPerSec) {
    if (bytesPerSec === null || bytesPerSec === undefined) return '–';
    return `${(bytesPerSec / MiB).toFixed(1)} MiB/s`;
  }

  /** Milliseconds as mm:ss (minutes go past 59). */
  function fmtEta(ms) {
    if (ms === null || ms === undefined) return '–';
    const s = Math.max(0, Math.round(ms / 1000));
    return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
  }

  /** A phase's duration: 850 ms, 12.3 s, 04:05. */
  function fmtDuration(ms) {
    if (ms === null || ms === undefined) return '';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return fmtEta(ms);
  }

  /** A job id for the table: UUID v7 ids of jobs started minutes apart share their first
   *  characters (a timestamp), so the random end is shown too. */
  function short(id) {
    const s = String(id || '');
    return s.length > 13 ? `${s.slice(0, 8)}…${s.slice(-4)}` : s;
  }

  /** The job's progress in percent (0–100, whole numbers). */
  function percentOf(job) {
    if (job.status === 'succeeded') return 100;
    const p = job.now || job.progress || {};
    if (!p.total_bytes) return 0;
    return Math.max(0, Math.min(100, Math.floor((p.done_bytes * 100) / p.total_bytes)));
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---- messages -----------------------------------------------------------------------

  function showMessage(text, isError) {
    const m = $('message');
    m.textContent = text;
    m.classList.toggle('error', Boolean(isError));
    m.hidden = false;
  }

  function showError(e) {
    showMessage(e instanceof ApiError ? e.message : `Error: ${e && e.message ? e.message : e}`, true);
  }

  function clearMessage() {
    $('message').hidden = true;
    $('message').textContent = '';
  }

  // ---- the API ------------------------------------------------------------------------

  /** A failed call: `status` (0: no answer) and the problem's detail as the message. */
  class ApiError extends Error {
    constructor(status, message, lines) {
      super(message);
      this.status = status;
      this.lines = lines || [];
    }
  }

  function authHeaders() {
    return { Authorization: `Bearer ${state.token}` };
  }

  /** One JSON call under /api/v1; problems become an ApiError showing their detail. */
  async function api(method, path, body) {
    const headers = Object.assign(authHeaders(), { Accept: 'application/json' });
    const init = { method, headers, credentials: 'omit', cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(`/api/v1${path}`, init);
    } catch (e) {
      throw new ApiError(0, `The service does not answer (${e.message}).`);
    }
    const text = await r.text();
    let v = null;
    try {
      v = text ? JSON.parse(text) : null;
    } catch (_) {
      v = null;
    }
    if (!r.ok) {
      const title = (v && v.title) || r.statusText || 'error';
      const detail = (v && v.detail) || text || '';
      throw new ApiError(r.status, `${r.status} ${title}: ${detail}`, v && v.lines);
    }
    return v;
  }

  // ---- signing in and out -------------------------------------------------------------

  function showSignedIn(yes) {
    $('token').hidden = yes;
    $('token-label').hidden = yes;
    $('sign-in').hidden = yes;
    $('sign-out').hidden = !yes;
    document.body.classList.toggle('signed-in', yes);
  }

  async function signIn(token) {
    state.token = token.trim();
    if (!state.token) {
      showMessage('Enter a token from the service\'s tokens file.', true);
      return;
    }
    try {
      const jobs = await api('GET', '/jobs');
      sessionStorage.setItem(TOKEN_KEY, state.token);
      $('token').value = '';
      showSignedIn(true);
      clearMessage();
      renderJobs(jobs);
      state.datastoresAt = 0;
      schedule(0);
    } catch (e) {
      state.token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      showSignedIn(false);
      showError(e);
    }
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = '';
    clearTimeout(state.timer);
    closeDetail();
    state.jobs = [];
    $('jobs').tBodies[0].replaceChildren();
    $('datastores').tBodies[0].replaceChildren();
    $('no-jobs').hidden = true;
    showSignedIn(false);
  }

  // ---- refreshing ---------------------------------------------------------------------

  function schedule(ms) {
    clearTimeout(state.timer);
    state.timer = setTimeout(tick, ms);
  }

  /** One refresh: the jobs, the open job, now and then the datastores. */
  async function tick() {
    if (!state.token) return;
    if (state.ticking) {
      state.again = true;
      return;
    }
    state.ticking = true;
    try {
      renderJobs(await api('GET', '/jobs'));
      if (state.selected) await loadDetail();
      if (Date.now() - state.datastoresAt >= DATASTORES_MS) {
        state.datastoresAt = Date.now();
        renderDatastores(await api('GET', '/datastores'));
      }
      if (state.pollError) {
        state.pollError = false;
        clearMessage();
      }
    } catch (e) {
      if (e.status === 401) {
        state.ticking = false;
        signOut();
        showError(e);
        return;
      }
      // One failed refresh is often a moment's race (a job just started, the service
      // restarting); two in a row are shown.
      state.pollFailures += 1;
      if (state.pollFailures >= 2) {
        state.pollError = true;
        showError(e);
      }
      state.ticking = false;
      schedule(REFRESH_MS);
      return;
    }
    state.pollFailures = 0;
    state.ticking = false;
    const soon = state.again;
    state.again = false;
    if (state.token) schedule(soon ? 0 : REFRESH_MS);
  }

  // ---- the jobs table -----------------------------------------------------------------

  function progressBar() {
    const p = el('div', 'progress');
    p.setAttribute('role', 'progressbar');
    p.setAttribute('aria-valuemin', '0');
    p.setAttribute('aria-valuemax', '100');
    p.append(el('div', 'bar'), el('span', 'pct'));
    return p;
  }

  function setProgress(p, percent, status, phase) {
    p.dataset.percent = String(percent);
    p.setAttribute('aria-valuenow', String(percent));
    p.className = `progress ${status}`;
    p.querySelector('.bar').style.width = `${percent}%`;
    const label = phase && phase !== 'copy' && status === 'running' ? `${phase} ${percent}%` : `${percent}%`;
    p.querySelector('.pct').textContent = label;
  }

  function newRow(id) {
    const tr = el('tr');
    tr.dataset.jobId = id;
    tr.tabIndex = 0;
    const cells = ['id', 'kind', 'paths', 'status', 'progress-cell', 'rate num', 'eta num'];
    for (const c of cells) tr.append(el('td', c));
    tr.querySelector('.id').append(el('code'));
    tr.querySelector('.status').append(el('span', 'badge'));
    tr.querySelector('.progress-cell').append(progressBar());
    tr.addEventListener('click', () => selectJob(id));
    tr.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') selectJob(id);
    });
    return tr;
  }

  function renderJobs(jobs) {
    state.jobs = jobs || [];
    const body = $('jobs').tBodies[0];
    const rows = new Map();
    for (const tr of body.rows) rows.set(tr.dataset.jobId, tr);
    state.jobs.forEach((job, i) => {
      let tr = rows.get(job.job_id);
      rows.delete(job.job_id);
      if (!tr) tr = newRow(job.job_id);
      if (body.rows[i] !== tr) body.insertBefore(tr, body.rows[i] || null);
      tr.dataset.status = job.status;
      tr.classList.toggle('selected', job.job_id === state.selected);
      tr.querySelector('.id code').textContent = short(job.job_id);
      tr.querySelector('.id').title = job.job_id;
      tr.querySelector('.kind').textContent = job.kind;
      const paths = `${job.source || '?'} → ${job.destination || '?'}`;
      tr.querySelector('.paths').textContent = paths;
      tr.querySelector('.paths').title = paths;
      const badge = tr.querySelector('.badge');
      badge.textContent = job.status;
      badge.className = `badge ${job.status}`;
      const now = job.status === 'running' ? job.now : null;
      setProgress(tr.querySelector('.progress'), percentOf(job), job.status, now && now.phase);
      tr.querySelector('.rate').textContent = now ? fmtRate(now.rate_bytes_per_sec) : '';
      tr.querySelector('.eta').textContent = now ? fmtEta(now.eta_ms) : '';
    });
    for (const tr of rows.values()) tr.remove();
    $('no-jobs').hidden = state.jobs.length > 0;
  }

  // ---- the job detail -----------------------------------------------------------------

  function closeDetail() {
    if (state.stream) state.stream.abort();
    state.stream = null;
    state.selected = null;
    state.detail = null;
    $('detail').hidden = true;
  }

  async function selectJob(id) {
    if (state.stream) state.stream.abort();
    state.stream = null;
    state.selected = id;
    state.detail = null;
    state.chart = [];
    for (const tr of $('jobs').tBodies[0].rows) tr.classList.toggle('selected', tr.dataset.jobId === id);
    $('detail-id').textContent = short(id);
    $('detail').dataset.jobId = id;
    $('detail').hidden = false;
    delete $('report').dataset.html;
    $('report').replaceChildren(el('p', 'muted', 'Loading…'));
    state.selectedAt = Date.now();
    try {
      await loadDetail();
    } catch (e) {
      // A server-side or connection failure is retried by the refreshes (and shown if
      // it persists); a refusal is shown now.
      if (e.status >= 400 && e.status < 500) showError(e);
    }
  }

  /** GET /jobs/{selected} and render it; the first load also seeds the chart and opens
   *  the event stream of a running job. */
  async function loadDetail() {
    const id = state.selected;
    let v;
    try {
      v = await api('GET', `/jobs/${encodeURIComponent(id)}`);
    } catch (e) {
      // A job just started may reach the journal a moment after its id: the next
      // refresh asks again.
      if (e.status === 404 && Date.now() - state.selectedAt < PENDING_MS) return;
      throw e;
    }
    if (id !== state.selected) return;
    const first = state.detail === null;
    state.detail = v;
    if (first) {
      state.chart = (v.samples || []).map((s) => ({ t: s.t_ms, r: s.rate_bytes_per_sec }));
      state.chartBase = state.chart.length ? state.chart[state.chart.length - 1].t : 0;
      state.chartBaseAt = performance.now();
      drawChart();
      if (v.status === 'running') follow(id);
    }
    renderDetail(v);
  }

  function renderDetail(v) {
    $('detail').dataset.status = v.status;
    const badge = $('detail-status');
    badge.textContent = v.status;
    badge.className = `badge ${v.status}`;
    $('detail-paths').textContent = `${v.kind}: ${v.source || '?'} → ${v.destination || '?'}`;
    $('detail-error').hidden = !v.error;
    $('detail-error').textContent = v.error || '';
    $('cancel').hidden = v.status !== 'running';
    $('resume').hidden = !['interrupted', 'failed', 'cancelled'].includes(v.status);
    $('rollback').hidden = v.status !== 'succeeded';
    renderTimeline(v.phases || [], v.status);
    const report = $('report');
    if (v.report_html) {
      if (report.dataset.html !== v.report_html) {
        // Rendered by the service from the report's Markdown, raw HTML escaped.
        report.innerHTML = v.report_html;
        report.dataset.html = v.report_html;
      }
    } else {
      delete report.dataset.html;
      report.replaceChildren(el('p', 'muted', v.status === 'running' ? 'The report comes when the job ends.' : 'No report.'));
    }
    const lines = v.lines || [];
    $('lines').textContent = lines.length
      ? lines.join('\n')
      : v.served ? '' : '(lines are kept for jobs this service runs)';
  }

  function renderTimeline(phases, status) {
    const ol = $('timeline');
    const now = Date.now();
    const items = phases.map((p, i) => {
      const open = (p.duration_ms === null || p.duration_ms === undefined) && !p.ended_at;
      const running = open && status === 'running' && i === phases.length - 1;
      let ms = p.duration_ms;
      if (open && p.started_at) ms = running ? Math.max(0, now - Date.parse(p.started_at)) : null;
      return { p, running, ms };
    });
    const longest = Math.max(1, ...items.map((x) => x.ms || 0));
    ol.replaceChildren(
      ...items.map(({ p, running, ms }) => {
        const li = el('li', running ? 'running' : 'done');
        li.dataset.phase = p.phase;
        const runs = phases.some((q) => q.run !== phases[0].run);
        li.append(el('span', 'name', runs ? `${p.phase} (run ${p.run})` : p.phase));
        const track = el('span', 'track');
        const seg = el('span', 'seg');
        seg.style.width = `${Math.max(1, ((ms || 0) * 100) / longest)}%`;
        track.append(seg);
        li.append(track, el('span', 'dur', ms === null || ms === undefined ? '' : fmtDuration(ms)));
        return li;
      }),
    );
    if (!phases.length) ol.replaceChildren(el('li', 'muted', 'No phases yet.'));
  }

  function drawChart() {
    const pts = state.chart;
    const [x0, x1, y0, y1] = [70, 710, 145, 12];
    const maxT = Math.max(1, ...pts.map((p) => p.t));
    const maxR = Math.max(1, ...pts.map((p) => p.r)) * 1.1;
    const coords = pts.map((p) => {
      const x = x0 + ((x1 - x0) * p.t) / maxT;
      const y = y0 - ((y0 - y1) * p.r) / maxR;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    $('chart-line').setAttribute('points', coords.join(' '));
    $('chart').dataset.points = String(pts.length);
    $('chart-max').textContent = pts.length ? fmtRate(maxR) : '';
    $('chart-span').textContent = pts.length ? fmtEta(maxT) : '';
  }

  /** Reads the job's SSE stream with fetch (EventSource cannot send the Authorization
   *  header) until it ends or another job is opened. */
  async function follow(id) {
    const ctl = new AbortController();
    state.stream = ctl;
    try {
      const r = await fetch(`/api/v1/jobs/${encodeURIComponent(id)}/events`, {
        headers: Object.assign(authHeaders(), { Accept: 'text/event-stream' }),
        credentials: 'omit',
        cache: 'no-store',
        signal: ctl.signal,
      });
      if (!r.ok || !r.body) return;
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf = (buf + decoder.decode(value, { stream: true })).replace(/\r\n?/g, '\n');
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = block
            .split('\n')
            .filter((l) => l.startsWith('data:'))
            .map((l) => l.slice(5).replace(/^ /, ''))
            .join('\n');
          if (!data) continue; // a keep-alive comment
          try {
            onEvent(id, JSON.parse(data));
          } catch (_) {
            // not an event object: ignore it
          }
        }
      }
    } catch (_) {
      // Aborted (another job opened) or the connection dropped: the refreshes go on.
    } finally {
      if (state.stream === ctl) state.stream = null;
    }
    if (id === state.selected) schedule(0);
  }

  function onEvent(id, ev) {
    if (id !== state.selected) return;
    if (ev.event === 'progress' && ev.phase === 'copy') {
      const t = state.chartBase + (performance.now() - state.chartBaseAt);
      state.chart.push({ t, r: ev.rate_bytes_per_sec || 0 });
      if (state.chart.length > 2000) state.chart = state.chart.filter((_, i) => i % 2 === 0);
      drawChart();
    } else if (ev.event === 'phase' || ev.event === 'report') {
      schedule(0);
    }
  }

  // ---- cancel, resume, roll back ------------------------------------------------------

  /** The in-page confirmation: resolves {ok, keepPartial}. */
  function askConfirm(text, offerKeepPartial) {
    return new Promise((resolve) => {
      const box = $('confirm');
      $('confirm-text').textContent = text;
      $('keep-partial').checked = false;
      $('keep-partial-row').hidden = !offerKeepPartial;
      box.hidden = false;
      $('confirm-no').focus();
      const done = (ok) => {
        box.hidden = true;
        $('confirm-yes').removeEventListener('click', yes);
        $('confirm-no').removeEventListener('click', no);
        document.removeEventListener('keydown', esc);
        resolve({ ok, keepPartial: $('keep-partial').checked });
      };
      const yes = () => done(true);
      const no = () => done(false);
      const esc = (e) => {
        if (e.key === 'Escape') done(false);
      };
      $('confirm-yes').addEventListener('click', yes);
      $('confirm-no').addEventListener('click', no);
      document.addEventListener('keydown', esc);
    });
  }

  const ACTIONS = {
    cancel: (d) => `Cancel job ${d.job_id} (${d.kind}, ${d.source} → ${d.destination})? The copy stops and, unless kept, its partial target is removed; the source is untouched.`,
    resume: (d) => `Resume job ${d.job_id} (${d.kind}, ${d.source} → ${d.destination})?`,
    rollback: (d) => `Roll back job ${d.job_id} (${d.kind})? Offline: the target ${d.destination} is deleted; live: the disks are mirrored back to ${d.source}.`,
  };

  async function act(action) {
    const d = state.detail;
    if (!d) return;
    const answer = await askConfirm(ACTIONS[action](d), action === 'cancel' && d.kind === 'offline');
    if (!answer.ok) return;
    const buttons = ['cancel', 'resume', 'rollback'].map($);
    buttons.forEach((b) => {
      b.disabled = true;
    });
    try {
      const body = action === 'cancel' && answer.keepPartial ? { keep_partial: true } : undefined;
      const r = await api('POST', `/jobs/${encodeURIComponent(d.job_id)}/${action}`, body);
      const verb = { cancel: 'Cancelled', resume: 'Resuming', rollback: 'Rolling back' }[action];
      showMessage(`${verb} job ${d.job_id}.`, false);
      if (action !== 'cancel') await selectJob((r && r.job_id) || d.job_id);
    } catch (e) {
      showError(e);
    } finally {
      buttons.forEach((b) => {
        b.disabled = false;
      });
    }
    schedule(0);
  }

  // ---- the new-migration form ---------------------------------------------------------

  /** The form as a JobRequest; throws an Error naming a missing field. */
  function formRequest() {
    const kind = $('kind').value;
    const need = (id, what) => {
      const v = $(id).value.trim();
      if (!v) throw new Error(`Fill in the ${what}.`);
      return v;
    };
    const r = { kind };
    if (kind === 'offline') {
      r.source = need('source', 'source image');
      r.to = need('to', 'destination');
      r.verify = $('verify').value;
      if ($('overwrite').checked) r.overwrite = true;
    } else if (kind === 'live') {
      r.qmp = need('qmp', 'QMP socket');
      r.to = need('to', 'destination');
      r.copy_mode = $('copy-mode').value;
    } else {
      r.domain = need('domain', 'domain');
      r.to = need('to', 'destination');
      r.copy_mode = $('copy-mode').value;
    }
    if ($('format').value) r.format = $('format').value;
    const bw = $('bwlimit').value.trim();
    if (bw !== '') {
      const n = Number(bw);
      if (!Number.isFinite(n) || n < 0) throw new Error('The bandwidth limit is a number of MiB/s (0 or empty: none).');
      if (n > 0) r.bwlimit = Math.max(1, Math.round(n * MiB));
    }
    if ($('delete-source').checked) r.delete_source = true;
    return r;
  }

  function formKey() {
    try {
      return JSON.stringify(formRequest());
    } catch (_) {
      return null;
    }
  }

  /** Start is enabled only while the form holds exactly what a check said go for. */
  function updateStart() {
    const key = formKey();
    const ok = state.checkedKey !== null && key === state.checkedKey;
    $('start').disabled = !ok;
    const verdict = $('plan-verdict');
    if (!ok && verdict.classList.contains('go')) {
      verdict.className = 'stale';
      verdict.textContent = 'changed since the check: check again';
    }
  }

  function showKind() {
    const kind = $('kind').value;
    for (const fs of document.querySelectorAll('.kind-fields')) {
      fs.hidden = !fs.dataset.kind.split(' ').includes(kind);
    }
  }

  function showPlan(lines, go) {
    const plan = $('plan');
    plan.textContent = (lines || []).join('\n');
    plan.hidden = !(lines && lines.length);
    plan.dataset.go = String(go);
    const verdict = $('plan-verdict');
    verdict.className = go ? 'go' : 'refused';
    verdict.textContent = go ? 'go: the check passed' : 'refused: see the plan';
  }

  async function check() {
    let req;
    try {
      req = formRequest();
    } catch (e) {
      showError(e);
      return;
    }
    const key = JSON.stringify(req);
    state.checkedKey = null;
    updateStart();
    $('check').disabled = true;
    $('plan-verdict').className = '';
    $('plan-verdict').textContent = 'checking…';
    try {
      const r = await api('POST', '/check', req);
      showPlan(r.lines, r.go);
      state.checkedKey = r.go ? key : null;
      clearMessage();
    } catch (e) {
      $('plan').hidden = true;
      $('plan-verdict').className = 'refused';
      $('plan-verdict').textContent = '';
      showError(e);
    } finally {
      $('check').disabled = false;
      updateStart();
    }
  }

  async function start(ev) {
    ev.preventDefault();
    const key = formKey();
    if (state.checkedKey === null || key !== state.checkedKey) return;
    const req = JSON.parse(key);
    $('start').disabled = true;
    try {
      const r = await api('POST', '/jobs', req);
      state.checkedKey = null;
      $('plan-verdict').className = '';
      $('plan-verdict').textContent = `started job ${short(r.job_id)}`;
      showMessage(`Started job ${r.job_id}.`, false);
      await selectJob(r.job_id);
      schedule(0);
    } catch (e) {
      if (e.lines && e.lines.length) showPlan(e.lines, false);
      state.checkedKey = null;
      showError(e);
    } finally {
      updateStart();
    }
  }

  // ---- datastores ---------------------------------------------------------------------

  function renderDatastores(list) {
    const body = $('datastores').tBodies[0];
    body.replaceChildren(
      ...(list || []).map((d) => {
        const tr = el('tr');
        tr.dataset.path = d.path;
        tr.append(
          el('td', 'path', d.path),
          el('td', 'num', fmtBytes(d.size_bytes)),
          el('td', 'num', fmtBytes(d.used_bytes)),
          el('td', 'num', fmtBytes(d.free_bytes)),
          el('td', 'num', String(d.images === undefined ? '' : d.images)),
        );
        return tr;
      }),
    );
  }

  // ---- wiring -------------------------------------------------------------------------

  function init() {
    $('auth').addEventListener('submit', (e) => {
      e.preventDefault();
      signIn($('token').value);
    });
    $('sign-out').addEventListener('click', () => {
      signOut();
      showMessage('Signed out: the token is forgotten.', false);
    });
    $('cancel').addEventListener('click', () => act('cancel'));
    $('resume').addEventListener('click', () => act('resume'));
    $('rollback').addEventListener('click', () => act('rollback'));
    $('kind').addEventListener('change', showKind);
    const form = $('new-form');
    form.addEventListener('input', updateStart);
    form.addEventListener('change', updateStart);
    form.addEventListener('submit', start);
    $('check').addEventListener('click', check);
    showKind();
    updateStart();
    if (state.token) {
      signIn(state.token);
    } else {
      showSignedIn(false);
      showMessage('Sign in with a token from the service\'s tokens file.', false);
    }
  }

  document.addEventListener('DOMContentLoaded', init);
})();
