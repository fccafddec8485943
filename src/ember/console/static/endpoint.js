// The endpoint page's behaviour: re-fetch the page every few seconds and swap its live sections (the
// timeline, decisions, jobs, releases), follow the logs API into the log tail, and make edits (settings,
// rollback) through the JSON API with the console's session cookie and header, showing the API's own
// error message when it refuses.
(() => {
  "use strict";
  const root = document.getElementById("endpoint-page");
  if (!root) return;
  const endpointId = root.dataset.endpoint;
  const REFRESH_MS = 3000;
  const RETRY_MS = 3000;

  function api(path, init = {}) {
    const headers = { "x-ember-console": "1", "content-type": "application/json" };
    return fetch(path, { ...init, headers, cache: "no-store" });
  }

  async function errorOf(resp) {
    try {
      const body = await resp.json();
      if (body && body.error) return body.error;
    } catch (_) {
      // not JSON: fall back to the status line
    }
    return `${resp.status} ${resp.statusText}`;
  }

  function say(el, text, ok) {
    el.textContent = text;
    el.className = ok ? "ok" : "error";
    el.setAttribute("role", ok ? "status" : "alert");
  }

  // ---- live sections -------------------------------------------------------------------------------
  let refreshing = null;
  async function refreshOnce() {
    const resp = await fetch(location.href, { cache: "no-store", headers: { accept: "text/html" } });
    if (!resp.ok || resp.redirected) return; // signed out or gone: keep what is shown
    const fresh = new DOMParser().parseFromString(await resp.text(), "text/html");
    for (const el of document.querySelectorAll("[data-live]")) {
      const next = fresh.getElementById(el.id);
      if (next) el.replaceWith(next);
    }
    root.dataset.refreshedAt = String(Date.now());
  }
  function refresh() {
    refreshing = refreshing || refreshOnce().catch(() => {}).finally(() => { refreshing = null; });
    return refreshing;
  }
  (function loop() {
    setTimeout(() => refresh().finally(loop), REFRESH_MS);
  })();

  // ---- log tail ------------------------------------------------------------------------------------
  const tail = document.getElementById("log-tail");
  const logState = document.getElementById("log-state");
  if (tail) {
    const keep = Number(root.dataset.logLines) || 200;
    let lines = [];
    const show = () => {
      const atEnd = tail.scrollTop + tail.clientHeight >= tail.scrollHeight - 4;
      tail.textContent = lines.join("\n");
      if (atEnd) tail.scrollTop = tail.scrollHeight;
    };
    const follow = async () => {
      lines = [];
      try {
        const resp = await api(`/v1/endpoints/${encodeURIComponent(endpointId)}/logs?follow=true&tail=${keep}`);
        if (!resp.ok) {
          logState.textContent = await errorOf(resp);
          return;
        }
        logState.textContent = "following";
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let partial = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const parts = (partial + value).split("\n");
          partial = parts.pop();
          if (!parts.length) continue;
          lines.push(...parts);
          if (lines.length > keep) lines = lines.slice(-keep);
          show();
        }
        logState.textContent = "reconnecting";
      } catch (_) {
        logState.textContent = "reconnecting";
      } finally {
        setTimeout(follow, RETRY_MS);
      }
    };
    follow();
  }

  // ---- settings ------------------------------------------------------------------------------------
  const form = document.getElementById("settings-form");
  const INTEGERS = ["workersMin", "workersMax", "idleTimeout", "scalerValue"];
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const message = document.getElementById("settings-message");
    const body = { scalerType: form.elements.scalerType.value };
    for (const name of INTEGERS) {
      const raw = form.elements[name].value.trim();
      // Whole numbers go as numbers; anything else goes as typed, for the API to say what is wrong.
      body[name] = /^-?\d+$/.test(raw) ? Number(raw) : raw;
    }
    body.gpuTypeIds = form.elements.gpuTypeIds.value.split(",").map((s) => s.trim()).filter(Boolean);
    message.textContent = "saving…";
    message.className = "muted";
    try {
      const resp = await api(`/v1/endpoints/${encodeURIComponent(endpointId)}`, {
        method: "PATCH",
        body: JSON.stringify(body),
      });
      if (!resp.ok) {
        say(message, await errorOf(resp), false);
        return;
      }
      const record = await resp.json();
      for (const name of [...INTEGERS, "scalerType"]) form.elements[name].value = record[name];
      form.elements.gpuTypeIds.value = (record.gpuTypeIds || []).join(", ");
      say(message, "Saved.", true);
      refresh();
    } catch (err) {
      say(message, `could not reach the server: ${err}`, false);
    }
  });

  // ---- rollback ------------------------------------------------------------------------------------
  document.addEventListener("click", async (ev) => {
    const button = ev.target.closest("button[data-rollback]");
    if (!button) return;
    const number = Number(button.dataset.rollback);
    const message = document.getElementById("release-message");
    if (!confirm(`Serve release ${number} again? Workers restart on it.`)) return;
    button.disabled = true;
    try {
      const resp = await api(`/v1/endpoints/${encodeURIComponent(endpointId)}/rollback`, {
        method: "POST",
        body: JSON.stringify({ release: number }),
      });
      if (!resp.ok) {
        say(message, await errorOf(resp), false);
        return;
      }
      say(message, `Now serving release ${(await resp.json()).release}.`, true);
      refresh();
    } catch (err) {
      say(message, `could not reach the server: ${err}`, false);
    } finally {
      button.disabled = false;
    }
  });
})();
