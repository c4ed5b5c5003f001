// The history page's script. Everything shown comes from outsiders (subjects, user agents, URLs,
// provider diagnostics), so this file never parses HTML: it builds elements and writes text
// nodes only, and makes links only of http(s) URLs. The API key is sent once to /v1/sign-in and
// dropped; the session lives in an HttpOnly cookie the script cannot read.
'use strict';

(() => {
  const IN_FLIGHT = new Set(['accepted', 'scheduled', 'queued', 'deferred', 'dispatched']);
  const REFRESH_MS = 5000;
  const PAGE_SIZE = 50;
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

  const $ = (id) => document.getElementById(id);
  let session = null; // GET /v1/session's answer while signed in
  let refreshTimer = null;
  let nextCursor = null;
  let currentSearch = null;

  class SignedOut extends Error {}

  // An element with text children only (strings become text nodes, never markup).
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === 'class') node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }

  // A URL fit for a link: absolute http(s) only. Anything else (javascript:, data:, relative
  // paths) is shown as text.
  function safeUrl(value) {
    if (typeof value !== 'string') return null;
    try {
      const url = new URL(value);
      return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
    } catch {
      return null;
    }
  }

  function externalLink(href, text) {
    return el('a', { href, class: 'external', rel: 'noopener noreferrer external', target: '_blank' }, text);
  }

  function badge(status) {
    const word = String(status);
    return el('span', { class: `badge status-${word.replace(/[^a-z_]/g, '')}` }, word);
  }

  function time(iso) {
    if (!iso) return el('span', {}, '—');
    const date = new Date(iso);
    return el('time', { datetime: iso, title: iso }, Number.isNaN(date.getTime()) ? iso : date.toLocaleString());
  }

  async function api(path, options = {}) {
    const method = options.method || 'GET';
    const headers = { Accept: 'application/json' };
    if (method !== 'GET' && session && session.csrf_token) headers['X-CSRF-Token'] = session.csrf_token;
    const response = await fetch(path, { method, headers, credentials: 'same-origin', cache: 'no-store' });
    if (response.status === 401) {
      signedOut();
      throw new SignedOut('signed out');
    }
    const body = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) {
      const error = new Error((body && body.detail) || `the server answered ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function show(view) {
    for (const id of ['sign-in-view', 'search-view', 'message-view']) $(id).hidden = id !== view;
  }

  function stopRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = null;
    $('refreshing').hidden = true;
  }

  function signedIn(view) {
    session = view;
    $('who-text').textContent =
      `${view.key_name} · ${view.tenant === null ? 'all tenants' : `tenant ${view.tenant}`} · ${view.role}`;
    $('who').hidden = false;
  }

  function signedOut() {
    session = null;
    stopRefresh();
    $('who').hidden = true;
    show('sign-in-view');
    $('key').focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $('key');
    const key = input.value.trim();
    input.value = ''; // the key is not kept anywhere by the page
    $('sign-in-error').textContent = '';
    try {
      const response = await fetch('/v1/sign-in', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        credentials: 'same-origin',
        body: JSON.stringify({ key }),
      });
      const body = await response.json().catch(() => null);
      if (response.status === 401) {
        $('sign-in-error').textContent = 'That key was not accepted: it is unknown, mistyped or revoked.';
        return;
      }
      if (!response.ok) throw new Error((body && body.detail) || `the server answered ${response.status}`);
      signedIn(body);
      route();
    } catch (error) {
      $('sign-in-error').textContent = `Sign-in failed: ${error.message}`;
    }
  }

  async function signOut() {
    try {
      await api('/v1/sign-out', { method: 'POST' });
    } catch (error) {
      if (!(error instanceof SignedOut)) {
        $('search-error').textContent = `Sign-out failed: ${error.message}`;
        return;
      }
    }
    signedOut();
  }

  // The search box: an email id opens it; `key=value` searches metadata; anything with an @ is
  // a recipient; empty lists the newest emails.
  function searchParameters(text, status) {
    const params = new URLSearchParams();
    const q = text.trim();
    const pair = /^([^=\s]+)=(.*)$/.exec(q);
    if (q.includes('@') && !pair) params.set('recipient', q);
    else if (pair) params.set(`metadata.${pair[1]}`, pair[2]);
    else if (q !== '') return null;
    if (status) params.set('status', status);
    params.set('limit', String(PAGE_SIZE));
    return params;
  }

  function submitSearch(event) {
    event.preventDefault();
    const q = $('q').value.trim();
    if (UUID.test(q)) {
      location.hash = `#/messages/${q.toLowerCase()}`;
      return;
    }
    const hash = `#/search?${new URLSearchParams({ q, status: $('status').value })}`;
    if (location.hash === hash) route(); // the same search again: no hashchange, so refresh here
    else location.hash = hash;
  }

  async function runSearch(q, status, append) {
    $('search-error').textContent = '';
    if (!append) {
      nextCursor = null;
      const params = searchParameters(q, status);
      if (params === null) {
        $('search-error').textContent = 'Enter a recipient address, an email id, or metadata as key=value.';
        $('results').hidden = true;
        $('more').hidden = true;
        $('search-summary').textContent = '';
        return;
      }
      currentSearch = params;
    }
    const params = new URLSearchParams(currentSearch);
    if (append && nextCursor) params.set('after', nextCursor);
    try {
      const page = await api(`/v1/messages?${params}`);
      renderResults(page.items, append);
      nextCursor = page.next;
      $('more').hidden = !nextCursor;
    } catch (error) {
      if (!(error instanceof SignedOut)) $('search-error').textContent = `Search failed: ${error.message}`;
    }
  }

  function renderResults(items, append) {
    const body = $('results').tBodies[0];
    if (!append) body.replaceChildren();
    for (const item of items) {
      const link = el('a', { href: `#/messages/${encodeURIComponent(item.id)}` }, item.recipient || '(no address)');
      body.append(el('tr', { 'data-id': item.id },
        el('td', {}, time(item.created_at)),
        el('td', {}, link),
        el('td', { class: 'subject' }, item.subject),
        el('td', {}, item.tenant),
        el('td', {}, badge(item.status))));
    }
    const count = body.rows.length;
    $('results').hidden = count === 0;
    $('search-summary').textContent = count === 0
      ? 'No email matches.'
      : `${count} email${count === 1 ? '' : 's'} shown, newest first${nextCursor || items.length === PAGE_SIZE ? '' : '.'}`;
  }

  function detailValue(value) {
    const href = safeUrl(value);
    if (href) return externalLink(href, value);
    if (value !== null && typeof value === 'object') return el('code', {}, JSON.stringify(value));
    return el('span', {}, String(value));
  }

  function detailsList(details) {
    const list = el('dl', { class: 'details' });
    for (const [name, value] of Object.entries(details || {})) {
      list.append(el('dt', {}, name), el('dd', {}, detailValue(value)));
    }
    return list;
  }

  function renderMessage(message) {
    $('message-subject').textContent = message.subject || '(no subject)';
    $('message-status').replaceWith(Object.assign(badge(message.status), { id: 'message-status' }));
    const summary = message.summary || {};
    const facts = [
      ['Email id', message.id],
      ['To', message.to],
      ['From', message.from],
      ['Tenant', message.tenant],
      ['Request id', message.request_id],
      ['Created', time(message.created_at)],
      ['Provider', summary.provider ? `${summary.provider}${summary.provider_message_id ? ` (${summary.provider_message_id})` : ''}` : '—'],
      ['Opens', `${summary.open_count}${summary.first_opened_at ? ', first ' : ''}`, summary.first_opened_at ? time(summary.first_opened_at) : null],
      ['Clicks', `${summary.click_count}${summary.first_clicked_at ? ', first ' : ''}`, summary.first_clicked_at ? time(summary.first_clicked_at) : null],
      ['Tags', (message.tags || []).join(', ') || '—'],
      ['Metadata', Object.entries(message.metadata || {}).map(([k, v]) => `${k}=${v}`).join(', ') || '—'],
    ];
    const list = $('message-facts');
    list.replaceChildren();
    for (const [name, ...values] of facts) list.append(el('dt', {}, name), el('dd', {}, ...values));
    if (summary.bounce) list.append(el('dt', {}, 'Bounce'), el('dd', {}, detailsList(summary.bounce)));

    const timeline = $('timeline');
    timeline.replaceChildren();
    for (const event of message.events) {
      timeline.append(el('li', { class: 'event', 'data-type': event.type },
        el('div', { class: 'event-head' },
          badge(event.type), ' ', time(event.occurred_at), ' ',
          el('span', { class: 'source' }, event.source),
          event.provider_event_id ? el('span', { class: 'hint' }, ` · event ${event.provider_event_id}`) : null),
        detailsList(event.details)));
    }
  }

  async function openMessage(id) {
    stopRefresh();
    $('message-error').textContent = '';
    if ($('message-view').dataset.id !== id) {
      // Another email: never show the previous one's timeline while this one loads.
      delete $('message-view').dataset.id;
      $('message-subject').textContent = 'Loading…';
      $('message-facts').replaceChildren();
      $('timeline').replaceChildren();
    }
    show('message-view');
    try {
      const message = await api(`/v1/messages/${encodeURIComponent(id)}`);
      renderMessage(message);
      $('message-view').dataset.id = id;
      if (IN_FLIGHT.has(message.status)) {
        $('refreshing').hidden = false;
        refreshTimer = setTimeout(() => {
          if (location.hash === `#/messages/${id}`) openMessage(id);
        }, REFRESH_MS);
      }
    } catch (error) {
      if (error instanceof SignedOut) return;
      $('message-subject').textContent = 'Email not found';
      $('message-facts').replaceChildren();
      $('timeline').replaceChildren();
      $('message-error').textContent = error.status === 404
        ? 'No email with this id is visible to your key.'
        : `Could not load the email: ${error.message}`;
    }
  }

  function route() {
    stopRefresh();
    if (!session) {
      signedOut();
      return;
    }
    const hash = location.hash;
    if (hash.startsWith('#/messages/')) {
      openMessage(decodeURIComponent(hash.slice('#/messages/'.length)));
      return;
    }
    show('search-view');
    if (hash.startsWith('#/search?')) {
      const params = new URLSearchParams(hash.slice('#/search?'.length));
      $('q').value = params.get('q') || '';
      $('status').value = params.get('status') || '';
      runSearch($('q').value, $('status').value, false);
    }
    $('q').focus();
  }

  async function start() {
    $('sign-in-form').addEventListener('submit', signIn);
    $('search-form').addEventListener('submit', submitSearch);
    $('sign-out').addEventListener('click', signOut);
    $('more').addEventListener('click', () => runSearch(null, null, true));
    window.addEventListener('hashchange', route);
    try {
      signedIn(await api('/v1/session'));
    } catch (error) {
      if (!(error instanceof SignedOut)) $('sign-in-error').textContent = `The API is unavailable: ${error.message}`;
      show('sign-in-view');
      return;
    }
    route();
  }

  document.addEventListener('DOMContentLoaded', start);
})();
