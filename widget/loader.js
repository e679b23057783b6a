// @ts-check
/** Perch's loader: one global, a launcher in a closed shadow root, the chat framed on first open. */
(function (w, d) {
  var stub = /** @type {any} */ (w).Perch;
  if (stub && stub.loaded) return;
  var tag = /** @type {HTMLScriptElement | null} */ (d.currentScript);
  if (!tag || !tag.dataset.key) return warn('the script tag needs data-key="dk_…".');
  var data = tag.dataset;
  var key = data.key;
  var base = new URL(tag.src).origin;
  var right = data.position != "bottom-left";
  var z = data.zIndex || "2147483000";
  if (!/^bottom-(left|right)$/.test(data.position || "bottom-right")) warn("data-position: bottom-right or bottom-left?");
  if (!/^\d{1,10}$/.test(z)) warn("data-z-index: a whole number?");
  var consent = data.consent == "required";
  var store = "perch:" + key;
  var MSG = "perch";
  var EVENTS = "ready open close message error shutdown";
  var SVG = '<svg viewBox="0 0 24 24" width="26" height="26" aria-hidden="true" fill="none" stroke="currentColor" stroke-width="2">';
  var CHAT = SVG + '<path d="M21 15a2 2 0 0 1-2 2H7l-4 4V5a2 2 0 0 1 2-2h14a2 2 0 0 1 2 2z"/></svg>';
  var CLOSE = SVG + '<path d="M6 9l6 6 6-6"/></svg>';

  /** @type {Record<string, Function[]>} */
  var handlers = {};
  /** @type {{token: string, expires_at: string, thread?: string | null} | null} */
  var session = read();
  /** @type {any} */
  var config, renewing, context, host, launcher, panel, frame;
  /** @type {any[]} */
  var outbox = [],
    later = [];
  var isOpen, ready, frameReady, dead;

  /** @param {string} name @param {unknown} [detail] */
  function emit(name, detail) {
    // A handler that throws can't stop the others.
    (handlers[name] || []).forEach((fn) => setTimeout(fn, 0, detail));
  }

  /** @param {string} text */
  function warn(text) {
    console.warn("Perch: " + text);
  }

  function read() {
    try {
      return JSON.parse(localStorage.getItem(store) || "null");
    } catch (e) {
      return null;
    }
  }

  function save() {
    try {
      if (session) localStorage.setItem(store, JSON.stringify(session));
      else localStorage.removeItem(store);
    } catch (e) {
      // Blocked storage: the session lasts as long as the page.
    }
  }

  /** @param {string} path @param {RequestInit} [init] */
  function api(path, init) {
    return fetch(base + "/v1/widget/" + key + path, Object.assign({ credentials: "omit" }, init)).then((r) =>
      r.json().then((body) => {
        if (!r.ok) throw body.error;
        return body;
      })
    );
  }

  /** Get a fresh token, handing in the old one to keep the visitor (a text/plain body needs no preflight). */
  function renew() {
    if (renewing) return renewing;
    var previous = session || read();
    renewing = api("/session", { method: "POST", body: JSON.stringify({ token: previous ? previous.token : null }) }).then(
      (body) => {
        renewing = null;
        if (dead) throw 0;
        // By our clock, not the server's.
        var at = new Date(Date.now() + body.expires_in * 1e3 || body.expires_at).toISOString();
        session = { token: body.token, expires_at: at, thread: previous ? previous.thread : null };
        save();
        return session;
      },
      (e) => {
        renewing = null;
        emit("error", e);
        throw e;
      }
    );
    return renewing;
  }

  function ensureSession() {
    var fresh = session && Date.parse(session.expires_at) - Date.now() > 60000;
    return fresh ? Promise.resolve(session) : renew();
  }

  /** @param {string} type @param {unknown} [payload] */
  function post(type, payload) {
    if (frame && frame.contentWindow) frame.contentWindow.postMessage({ v: 1, ns: MSG, type: type, payload: payload }, base);
  }

  /** @param {string} type @param {unknown} [payload] */
  function send(type, payload) {
    if (frameReady) post(type, payload);
    else outbox.push([type, payload]);
  }

  function init() {
    frameReady = 0;
    ensureSession().then((s) => {
      post("init", Object.assign({ context: context }, s));
    }, fail);
  }

  /** @param {any} e */
  function fail(e) {
    post("fail", { code: e && e.code, message: e && e.message });
  }

  /** @param {MessageEvent} e */
  function onMessage(e) {
    var m = e.data;
    if (!frame || e.source !== frame.contentWindow || e.origin !== base || !m || m.ns != MSG || m.v != 1) return;
    var p = m.payload || {};
    if (m.type == "ready") {
      frameReady = true;
      outbox.splice(0).forEach((x) => post(x[0], x[1]));
    } else if (m.type == "token_request") {
      renew().then((s) => post("token", s), fail);
    } else if (m.type == "thread") {
      if (session) session.thread = p.id || null;
      save();
    } else if (m.type == "close") {
      close(true);
    } else if (m.type == "event" && /^(message|error)$/.test(p.name)) {
      emit(p.name, p.data);
    }
  }

  /** @param {KeyboardEvent} e */
  function onKey(e) {
    if (e.key == "Escape" && isOpen && !e.defaultPrevented) close(true);
  }

  function draw() {
    var b = config.branding;
    var side = right ? "right" : "left";
    host = d.createElement("perch-widget");
    host.setAttribute("style", "all:initial;position:fixed;z-index:" + (parseInt(z, 10) || 2147483000));
    var root = host.attachShadow({ mode: "closed" });
    var style = d.createElement("style");
    style.textContent =
      ":host{all:initial}" +
      ".l{position:fixed;bottom:20px;" + side + ":20px;width:56px;height:56px;border:0;border-radius:50%;cursor:pointer;" +
      "display:flex;align-items:center;justify-content:center;background:" + b.theme.accent + ";color:" + b.theme.accent_ink +
      ";box-shadow:0 4px 14px rgba(0,0,0,.25)}" +
      ".l:focus-visible{outline:3px solid " + b.theme.accent + ";outline-offset:3px}" +
      ".p{position:fixed;bottom:88px;" + side + ":20px;width:400px;height:min(680px,calc(100vh - 108px));max-width:calc(100vw - 40px);" +
      "border-radius:" + ({ pill: 24, soft: 10, sharp: 0 }[b.theme.radius] ?? 16) + "px;overflow:hidden;box-shadow:0 8px 40px rgba(0,0,0,.22);" +
      "background:" + (b.theme.color_scheme == "dark" ? "#18181b" : "#fff") + ";opacity:0;transform:translateY(12px);" +
      "transition:.18s;visibility:hidden}" +
      ".p.o{opacity:1;transform:none;visibility:visible}" +
      "iframe{border:0;width:100%;height:100%;display:block;color-scheme:normal}" +
      "@media (max-width:640px){.p{inset:0;width:100%;height:100%;max-width:none;border-radius:0}.p.o+.l{display:none}}" +
      "@media (prefers-reduced-motion:reduce){.p{transition:none}}";
    panel = d.createElement("div");
    panel.className = "p";
    panel.setAttribute("role", "dialog");
    panel.setAttribute("aria-label", b.title);
    panel.id = "perch-chat";
    launcher = d.createElement("button");
    launcher.className = "l";
    launcher.innerHTML = CHAT;
    launcher.setAttribute("aria-label", "Chat with " + b.title);
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-controls", "perch-chat");
    launcher.addEventListener("click", toggle);
    root.append(style, panel, launcher);
    (d.body || d.documentElement).appendChild(host);
  }

  function open() {
    if (isOpen || dead) return;
    isOpen = true;
    if (!frame) {
      frame = d.createElement("iframe");
      frame.title = config.branding.title;
      frame.allow = "clipboard-write";
      // Keep its origin (for API calls), but it may not navigate the page.
      frame.setAttribute("sandbox", "allow-scripts allow-same-origin allow-forms allow-popups allow-popups-to-escape-sandbox");
      frame.addEventListener("load", init);
      frame.src = base + config.embed_url;
      panel.appendChild(frame);
    }
    panel.classList.add("o");
    launcher.setAttribute("aria-expanded", "true");
    launcher.innerHTML = CLOSE;
    frame.focus();
    send("focus");
    emit("open");
  }

  /** @param {boolean} [refocus] */
  function close(refocus) {
    if (!isOpen) return;
    isOpen = false;
    panel.classList.remove("o");
    launcher.setAttribute("aria-expanded", "false");
    launcher.innerHTML = CHAT;
    if (refocus || d.activeElement == host) launcher.focus();
    emit("close");
  }

  function toggle() {
    isOpen ? close(true) : open();
  }

  function shutdown() {
    dead = true;
    w.removeEventListener("message", onMessage);
    d.removeEventListener("keydown", onKey);
    if (host) host.remove();
    session = null;
    save();
    emit("shutdown");
    handlers = {};
  }

  /** @type {Record<string, Function>} */
  var commands = {
    open: open,
    close: close,
    toggle: toggle,
    /** @param {unknown} text */
    sendMessage: (text) => {
      if (typeof text != "string" || !text.trim()) return warn("sendMessage needs some text.");
      open();
      send("send", { text: text });
    },
    /** @param {unknown} value a JSON object of at most 2 KB, or null to forget it */
    setContext: (value) => {
      var json = "";
      try {
        json = JSON.stringify(value);
      } catch (e) {}
      if (value !== null && !(/^\{/.test(json) && new Blob([json]).size <= 2048)) {
        return warn("setContext needs a JSON object of at most 2 KB, or null.");
      }
      context = JSON.parse(json);
      send("context", { context: context });
    },
    shutdown: shutdown,
  };

  /** Perch("open"), Perch("on", "close", fn)… @param {string} name @param {...any} rest */
  function Perch(name, ...rest) {
    if (dead) return;
    if (name == "on") {
      if (!EVENTS.split(" ").includes(rest[0]) || typeof rest[1] != "function") {
        return warn("on needs a function and one of: " + EVENTS);
      }
      (handlers[rest[0]] = handlers[rest[0]] || []).push(rest[1]);
      if (rest[0] == "ready" && ready) rest[1]();
      return;
    }
    var command = commands.hasOwnProperty(name) && commands[name];
    if (!command) return warn("unknown command " + name);
    if (ready || name == "setContext" || name == "shutdown") command(...rest);
    else later.push(() => command(...rest));
  }
  Perch.loaded = 1;
  /** @type {any} */ (w).Perch = Perch;
  ((stub && stub.q) || []).forEach((/** @type {any} */ call) => Perch(...call));

  w.addEventListener("message", onMessage);
  d.addEventListener("keydown", onKey);
  api("/config")
    .then((body) => {
      config = body;
      if (dead) return;
      if (!consent) ensureSession().catch(() => {});
      draw();
      ready = true;
      emit("ready");
      if (data.open == "true" && !consent) open(); // consent: the visitor opens
      later.splice(0).forEach((fn) => fn());
    })
    .catch((e) => {
      // An off-list site gets no CORS grant, so the error has no detail.
      if (!(e && e.code)) e = { code: "unavailable", message: "no chat: is this site allowed to use " + key + "?" };
      warn(e.message);
      emit("error", e);
    });
})(window, document);
