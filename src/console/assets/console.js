// keyhole web console: the page's one script (no framework, no build step). Output is always
// inserted as text (textContent), never as HTML. Every call carries the session's CSRF token
// in the X-Keyhole-CSRF header; the session itself is an HttpOnly cookie this script never sees.
"use strict";

(function () {
  const csrfMeta = document.querySelector('meta[name="keyhole-csrf"]');
  if (!csrfMeta) {
    return;
  }
  const csrf = csrfMeta.getAttribute("content");
  const screen = document.getElementById("screen");
  const form = document.getElementById("command-form");
  const input = document.getElementById("command");
  const runButton = document.getElementById("run");
  const stopButton = document.getElementById("stop");
  const status = document.getElementById("status");
  const prompt = document.getElementById("prompt").textContent;
  const dialog = document.getElementById("idle-warning");
  const dialogText = document.getElementById("idle-text");
  const stayButton = document.getElementById("stay");

  // Most pieces of output kept on the page (the server keeps its own bounded screen).
  const MAX_NODES = 5000;
  // Most commands remembered for Up/Down.
  const MAX_HISTORY = 500;

  let cursor = 0;
  let running = false;
  let ended = false;
  let history = [];
  let historyIndex = 0;
  let draft = "";
  let completion = null; // {base, start, end, matches, index, applied}
  let warnTimer = null;
  let focusBeforeDialog = null;

  function setStatus(text) {
    status.textContent = text;
  }

  async function call(name, body) {
    const response = await fetch("/console/api/" + name, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Content-Type": "application/json", "X-Keyhole-CSRF": csrf },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try {
      data = await response.json();
    } catch (e) {
      data = {};
    }
    if (data.signed_out) {
      signedOut(data.reason);
      throw new Error("signed out");
    }
    if (typeof data.remaining_ms === "number") {
      scheduleWarning(data.remaining_ms, data.warning_ms);
    }
    return { status: response.status, data: data };
  }

  function signedOut(reason) {
    if (ended) {
      return;
    }
    ended = true;
    const why = ["signed-out", "timed-out", "exited", "server-stopped"].indexOf(reason) >= 0 ? reason : "signed-out";
    window.location.assign("/console?ended=" + why);
  }

  // ---------------------------------------------------------------------------------------
  // The screen

  const atBottom = () => screen.scrollHeight - screen.scrollTop - screen.clientHeight < 40;

  function append(kind, text) {
    const follow = atBottom();
    let node;
    if (kind === "echo") {
      node = document.createElement("div");
      node.className = "line echo";
      const p = document.createElement("span");
      p.className = "echo-prompt";
      p.textContent = prompt + " ";
      const t = document.createElement("span");
      t.className = "echo-text";
      t.textContent = text;
      node.appendChild(p);
      node.appendChild(t);
    } else {
      node = document.createElement("span");
      node.className = "out " + kind;
      node.textContent = text;
    }
    screen.appendChild(node);
    while (screen.childNodes.length > MAX_NODES) {
      screen.removeChild(screen.firstChild);
    }
    if (follow) {
      screen.scrollTop = screen.scrollHeight;
    }
  }

  function remember(line) {
    if (line.trim() === "") {
      return;
    }
    if (history.length === 0 || history[history.length - 1] !== line) {
      history.push(line);
      if (history.length > MAX_HISTORY) {
        history.shift();
      }
    }
    historyIndex = history.length;
  }

  function setRunning(now) {
    running = now;
    stopButton.disabled = !now;
    runButton.disabled = now;
    form.setAttribute("aria-busy", now ? "true" : "false");
    if (now) {
      setStatus("Running. Press Ctrl+C or Stop to stop it.");
    } else {
      setStatus("");
      scheduleWarningAgain();
    }
  }

  // ---------------------------------------------------------------------------------------
  // Long poll: output as it arrives

  async function pollLoop() {
    let backoff = 500;
    while (!ended) {
      try {
        const r = await call("poll", { cursor: cursor, running: running });
        backoff = 500;
        if (r.status === 429) {
          await sleep(1000);
          continue;
        }
        if (r.status !== 200) {
          setStatus("The server refused the request (" + r.status + "); retrying.");
          await sleep(2000);
          continue;
        }
        const d = r.data;
        if (d.gap) {
          append("notice", "[earlier output was dropped]\n");
        }
        for (const e of d.entries || []) {
          append(e.kind, e.text);
          if (e.kind === "echo") {
            remember(e.text);
          }
        }
        if (typeof d.cursor === "number") {
          cursor = d.cursor;
        }
        if (typeof d.running === "boolean" && d.running !== running) {
          setRunning(d.running);
        }
      } catch (e) {
        if (ended) {
          return;
        }
        setStatus("The connection to the server was lost; reconnecting.");
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 10000);
      }
    }
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // ---------------------------------------------------------------------------------------
  // Commands

  async function run(line) {
    if (running) {
      setStatus("A command is running. Stop it (Ctrl+C) or wait for it.");
      return;
    }
    input.value = "";
    completion = null;
    remember(line);
    if (line.trim() === "") {
      append("echo", "");
      return;
    }
    setRunning(true);
    try {
      const r = await call("run", { line: line });
      if (r.status !== 202) {
        setRunning(false);
        append("echo", line);
        append("error", (r.data.error || "The server refused the command.") + "\n");
      }
    } catch (e) {
      if (!ended) {
        setRunning(false);
        setStatus("The command could not be sent: the connection was lost.");
      }
    }
  }

  async function stop() {
    try {
      await call("stop", {});
      setStatus("Stopping.");
    } catch (e) {
      // signed out or offline: the poll loop reports it
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    run(input.value);
  });
  stopButton.addEventListener("click", () => {
    stop();
    input.focus();
  });

  // ---------------------------------------------------------------------------------------
  // Keys: history, completion, Ctrl+C

  function applyCompletion() {
    const c = completion;
    const m = c.matches[c.index];
    const value = c.base.slice(0, c.start) + m + c.base.slice(c.end);
    input.value = value;
    const caret = c.start + m.length;
    input.setSelectionRange(caret, caret);
    c.applied = value;
    setStatus(m + " (" + (c.index + 1) + " of " + c.matches.length + ")");
  }

  async function complete(backwards) {
    if (completion && completion.applied === input.value && completion.matches.length > 0) {
      const n = completion.matches.length;
      completion.index = (completion.index + (backwards ? n - 1 : 1)) % n;
      applyCompletion();
      return;
    }
    const line = input.value;
    const at = input.selectionStart === null ? line.length : input.selectionStart;
    try {
      const r = await call("complete", { line: line, cursor: at });
      if (r.status !== 200 || input.value !== line) {
        return;
      }
      const d = r.data;
      if (!d.matches || d.matches.length === 0) {
        completion = null;
        setStatus("No completions.");
        return;
      }
      completion = {
        base: line,
        start: d.start,
        end: d.end,
        matches: d.matches,
        index: backwards ? d.matches.length - 1 : 0,
        applied: null,
      };
      applyCompletion();
    } catch (e) {
      // signed out or offline
    }
  }

  input.addEventListener("keydown", (ev) => {
    // Tab completes; on an empty line it moves the focus as usual (no keyboard trap).
    if (ev.key === "Tab" && !ev.ctrlKey && !ev.altKey && !ev.metaKey && input.value !== "") {
      ev.preventDefault();
      complete(ev.shiftKey);
      return;
    }
    if (ev.key === "ArrowUp") {
      ev.preventDefault();
      if (historyIndex === history.length) {
        draft = input.value;
      }
      if (historyIndex > 0) {
        historyIndex -= 1;
        input.value = history[historyIndex];
      }
      return;
    }
    if (ev.key === "ArrowDown") {
      ev.preventDefault();
      if (historyIndex < history.length) {
        historyIndex += 1;
        input.value = historyIndex === history.length ? draft : history[historyIndex];
      }
      return;
    }
    if (ev.key === "Escape") {
      input.value = "";
      completion = null;
    }
  });

  // Ctrl+C stops the running command, unless text is selected (then it copies, as usual).
  document.addEventListener("keydown", (ev) => {
    if (!(ev.ctrlKey && !ev.altKey && !ev.metaKey && (ev.key === "c" || ev.key === "C"))) {
      return;
    }
    const selected = String(window.getSelection ? window.getSelection() : "");
    const inputSelection = document.activeElement === input && input.selectionStart !== input.selectionEnd;
    if (selected !== "" || inputSelection) {
      return;
    }
    ev.preventDefault();
    if (running) {
      stop();
    } else {
      input.value = "";
      completion = null;
    }
  });

  // ---------------------------------------------------------------------------------------
  // Idle time-out: a warning shortly before it, with a way to stay signed in

  let lastRemaining = null;
  let lastWarning = null;

  function scheduleWarning(remainingMs, warningMs) {
    lastRemaining = { at: Date.now(), ms: remainingMs };
    lastWarning = warningMs;
    if (warnTimer) {
      clearTimeout(warnTimer);
      warnTimer = null;
    }
    if (remainingMs > warningMs && !dialog.hidden) {
      hideWarning();
    }
    if (running) {
      return;
    }
    warnTimer = setTimeout(showWarning, Math.max(0, remainingMs - warningMs));
  }

  function scheduleWarningAgain() {
    if (lastRemaining) {
      const left = lastRemaining.ms - (Date.now() - lastRemaining.at);
      scheduleWarning(left, lastWarning);
    }
  }

  function showWarning() {
    if (running || ended || !dialog.hidden) {
      return;
    }
    const left = lastRemaining ? Math.max(0, lastRemaining.ms - (Date.now() - lastRemaining.at)) : 0;
    const seconds = Math.max(1, Math.round(left / 1000));
    dialogText.textContent = "This session has been idle and will be signed out in about " + seconds +
      " seconds. Programs you started in it will be stopped.";
    focusBeforeDialog = document.activeElement;
    dialog.hidden = false;
    stayButton.focus();
  }

  function hideWarning() {
    dialog.hidden = true;
    if (focusBeforeDialog && focusBeforeDialog.focus) {
      focusBeforeDialog.focus();
    } else {
      input.focus();
    }
    focusBeforeDialog = null;
  }

  stayButton.addEventListener("click", async () => {
    try {
      await call("keepalive", {});
      hideWarning();
      setStatus("You are still signed in.");
    } catch (e) {
      // signed out meanwhile
    }
  });
  dialog.addEventListener("keydown", (ev) => {
    // Keep focus inside the dialog (its only control is the button).
    if (ev.key === "Tab") {
      ev.preventDefault();
      stayButton.focus();
    }
  });

  // ---------------------------------------------------------------------------------------

  // The idle clock as the page was served ("remaining warning", in milliseconds).
  const idleMeta = document.querySelector('meta[name="keyhole-idle"]');
  const idle = idleMeta ? idleMeta.getAttribute("content").split(" ").map(Number) : [];
  setRunning(false);
  if (idle.length === 2 && idle.every((n) => Number.isFinite(n))) {
    scheduleWarning(idle[0], idle[1]);
  }
  input.focus();
  pollLoop();
})();
