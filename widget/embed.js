// @ts-check
/**
 * The embed page (`/embed/{key}`), framed by the loader on a customer's page.
 *
 * It waits for the parent's `init` message (checked: `event.source` is the parent window and
 * `event.origin` is one of the key's origins), keeps the session token in memory only, and mounts
 * ChatKit or the lite renderer with a `fetch` that adds the token, refreshes it once on 401, puts
 * the page context in each request's metadata, and reports messages and errors to the host page.
 */
(function () {
  "use strict";

  var NS = "perch";
  var CHATKIT_TIMEOUT_MS = 5000;
  var TOKEN_TIMEOUT_MS = 10000;
  var RENEW_FAILED = "The chat could not renew its session. Please check your connection and try again.";
  var MAX_CONTEXT_BYTES = 2048;
  var CONTEXT_REQUESTS = /^threads\.(create|add_user_message)$/;

  /**
   * @typedef {{title: string, greeting: string, prompts: {label: string, prompt: string}[], placeholder: string,
   *   disclaimer: string, locale: string, renderer: "auto" | "chatkit" | "lite",
   *   theme: {color_scheme: "light" | "dark", accent: string, accent_ink: string, radius: string, density: string, font_family: string}}} Branding
   * @typedef {{tenant: string, key: string, branding: Branding, origins: string[], embed_url: string,
   *   chatkit: {api_url: string, domain_key: string, script_url: string}}} Config
   * @typedef {{send(text: string): void, focus(): void}} Renderer
   */

  var configNode = document.getElementById("perch-config");
  /** @type {Config} */
  var config = JSON.parse((configNode && configNode.textContent) || "{}");
  var root = /** @type {HTMLElement} */ (document.getElementById("perch-root"));
  var branding = config.branding;

  /** @type {string | null} */
  var parentOrigin = null;
  /** @type {{token: string, expires_at: string} | null} */
  var session = null;
  /** @type {unknown} */
  var context = null;
  /** @type {{resolve: () => void, reject: (error: Error) => void} | null} */
  var tokenWaiter = null;
  /** @type {Promise<void> | null} */
  var refreshing = null;
  /** @type {Renderer | null} */
  var renderer = null;
  var started = false;

  /** Say whether an origin is on the key's list; `https://*.example.com` covers subdomains only. @param {string} origin */
  function allowedOrigin(origin) {
    return config.origins.some(function (pattern) {
      var star = pattern.indexOf("://*.");
      if (star < 0) return pattern === origin;
      var scheme = pattern.slice(0, star + 3);
      var rest = pattern.slice(star + 4);
      var middle = origin.slice(scheme.length, origin.length - rest.length);
      return origin.indexOf(scheme) === 0 && origin.slice(-rest.length) === rest && /^[^:/]+$/.test(middle);
    });
  }

  /** @param {string} type @param {unknown} [payload] */
  function post(type, payload) {
    if (parentOrigin) window.parent.postMessage({ v: 1, ns: NS, type: type, payload: payload }, parentOrigin);
  }

  /** @param {string} name @param {unknown} data */
  function hostEvent(name, data) {
    post("event", { name: name, data: data });
  }

  /** @param {unknown} value */
  function setContext(value) {
    var json = JSON.stringify(value === undefined ? null : value);
    context = /^\{/.test(json) && new Blob([json]).size <= MAX_CONTEXT_BYTES ? JSON.parse(json) : null;
  }

  window.addEventListener("message", function (event) {
    var message = event.data;
    if (event.source !== window.parent || !message || message.ns !== NS || message.v !== 1) return;
    if (parentOrigin ? event.origin !== parentOrigin : !allowedOrigin(event.origin)) return;
    var payload = message.payload || {};
    if (message.type === "init") {
      parentOrigin = event.origin;
      session = { token: payload.token, expires_at: payload.expires_at };
      setContext(payload.context);
      if (!started) {
        started = true;
        start(payload.thread || null);
      }
    } else if (message.type === "token") {
      session = { token: payload.token, expires_at: payload.expires_at };
      if (tokenWaiter) tokenWaiter.resolve();
    } else if (message.type === "context") {
      setContext(payload.context);
    } else if (message.type === "send" && renderer) {
      renderer.send(String(payload.text || ""));
    } else if (message.type === "focus" && renderer) {
      renderer.focus();
    } else if (message.type === "fail") {
      // The loader's own errors carry a code; others (a network error) have no message fit to show.
      var text = payload.code && payload.message ? String(payload.message) : "";
      // Once the chat is up, a failed renewal fails only the request waiting for it: the renderer
      // shows the error and the visitor may try again, without losing the conversation.
      if (!started) status(text || "The chat could not start. Please check your connection and reload.");
      else if (tokenWaiter) tokenWaiter.reject(new Error(text || RENEW_FAILED));
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && !event.defaultPrevented) post("close");
  });

  /** Ask the page for a fresh token (the loader holds the session) and wait for it. */
  function refreshToken() {
    if (!refreshing) {
      refreshing = new Promise(function (resolve, reject) {
        tokenWaiter = { resolve: resolve, reject: reject };
        setTimeout(function () {
          reject(new Error(RENEW_FAILED));
        }, TOKEN_TIMEOUT_MS);
        post("token_request");
      });
      refreshing.then(
        function () {
          refreshing = tokenWaiter = null;
        },
        function () {
          refreshing = tokenWaiter = null;
        }
      );
    }
    return refreshing;
  }

  function currentToken() {
    var expiring = !session || Date.parse(session.expires_at) - Date.now() < 30000;
    return (expiring ? refreshToken() : Promise.resolve()).then(function () {
      return session ? session.token : "";
    });
  }

  /**
   * Put the page context in the metadata of a request that starts a turn, where the server reads it.
   * ChatKit has no option for request metadata, so both renderers get it here.
   * @param {unknown} body
   */
  function withContext(body) {
    if (context === null || typeof body !== "string") return body;
    try {
      var request = JSON.parse(body);
    } catch (e) {
      return body;
    }
    if (!request || !CONTEXT_REQUESTS.test(request.type)) return body;
    request.metadata = Object.assign({}, request.metadata, { perch_context: context });
    return JSON.stringify(request);
  }

  /**
   * The fetch both renderers use: the token goes only to Perch's own origin, in a header.
   * @param {RequestInfo | URL} input
   * @param {RequestInit} [init]
   * @returns {Promise<Response>}
   */
  function perchFetch(input, init) {
    var url = new URL(input instanceof Request ? input.url : String(input), location.href);
    if (url.origin !== location.origin) return fetch(input, init);
    var options = Object.assign({}, init || {});
    options.body = /** @type {BodyInit} */ (withContext(options.body));
    options.credentials = "omit";
    /** @param {string} token */
    function attempt(token) {
      var headers = new Headers(options.headers || (input instanceof Request ? input.headers : undefined));
      headers.set("Authorization", "Bearer " + token);
      return fetch(input, Object.assign({}, options, { headers: headers }));
    }
    return currentToken()
      .then(attempt)
      .then(function (response) {
        return response.status === 401 ? refreshToken().then(currentToken).then(attempt) : response;
      })
      .then(watch);
  }

  /** Read a copy of each reply stream to tell the host page about messages and errors. @param {Response} response */
  function watch(response) {
    if (!response.ok) {
      response
        .clone()
        .json()
        .then(function (body) {
          hostEvent("error", body.error || { code: "http_" + response.status });
        })
        .catch(function () {});
      return response;
    }
    if (!response.body || (response.headers.get("content-type") || "").indexOf("text/event-stream") < 0) {
      return response;
    }
    var pair = response.body.tee();
    // A malformed event is the renderer's to report; the host only hears about good ones, and an
    // event that trips `observe` is skipped rather than ending the copy (which would then fill up).
    readEvents(pair[1], function (event) {
      try {
        observe(event);
      } catch (e) {}
    }).catch(function () {});
    return new Response(pair[0], { status: response.status, statusText: response.statusText, headers: response.headers });
  }

  /**
   * Call `onEvent` with each JSON event of an SSE body; resolves when the stream ends, and rejects and
   * stops reading on a malformed event or when `onEvent` throws. The lite renderer reads its streams
   * with this too.
   * @param {ReadableStream<Uint8Array>} stream
   * @param {(event: any) => void} onEvent
   * @returns {Promise<void>}
   */
  function readEvents(stream, onEvent) {
    var reader = stream.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    /** @returns {Promise<void>} */
    function pump() {
      return reader.read().then(function (chunk) {
        if (chunk.done) return;
        buffer += decoder.decode(chunk.value, { stream: true });
        var blocks = buffer.split(/\r?\n\r?\n/);
        buffer = blocks.pop() || "";
        blocks.forEach(function (block) {
          // Only data lines: comments (": keep-alive") and other fields are not events.
          var data = block
            .split(/\r?\n/)
            .filter(function (line) {
              return line.indexOf("data:") === 0;
            })
            .map(function (line) {
              return line.slice(5).replace(/^ /, "");
            })
            .join("\n");
          if (data) onEvent(JSON.parse(data));
        });
        return pump();
      });
    }
    return pump().catch(function (error) {
      reader.cancel().catch(function () {});
      throw error;
    });
  }

  /** @param {any} event */
  function observe(event) {
    if (event.type === "thread.created") post("thread", { id: event.thread.id });
    if (event.type === "error") {
      hostEvent("error", { code: event.code, message: event.message || null, allow_retry: !!event.allow_retry });
    }
    var item = event.type === "thread.item.done" && event.item;
    if (item && (item.type === "user_message" || item.type === "assistant_message")) {
      var text = (item.content || [])
        .map(function (/** @type {{text?: string}} */ part) {
          return part.text || "";
        })
        .join("");
      hostEvent("message", {
        role: item.type === "user_message" ? "user" : "assistant",
        text: text,
        id: item.id,
        thread_id: item.thread_id,
      });
    }
  }

  /** @param {string} text */
  function status(text) {
    var note = document.createElement("p");
    note.className = "perch-status";
    note.setAttribute("role", "status");
    note.textContent = text;
    root.replaceChildren(note);
  }

  /** @param {string} src */
  function loadScript(src) {
    return new Promise(function (resolve, reject) {
      var script = document.createElement("script");
      script.src = src;
      script.async = true;
      script.onload = resolve;
      script.onerror = function () {
        reject(new Error("Could not load " + src));
      };
      document.head.appendChild(script);
    });
  }

  /** @param {number} ms */
  function timeout(ms) {
    return new Promise(function (_, reject) {
      setTimeout(function () {
        reject(new Error("Timed out"));
      }, ms);
    });
  }

  // The loader sends `init` when this page's load event fires, which a pending script holds back:
  // so ChatKit's script is fetched only after it, and a CDN that never answers just times out.
  var loaded = new Promise(function (resolve) {
    if (document.readyState === "complete") resolve(undefined);
    else window.addEventListener("load", resolve);
  });
  var chatkitLoading =
    branding.renderer === "lite"
      ? Promise.reject(new Error("The tenant chose the lite renderer."))
      : loaded.then(function () {
          return Promise.race([
            loadScript(config.chatkit.script_url).then(function () {
              return customElements.whenDefined("openai-chatkit");
            }),
            timeout(CHATKIT_TIMEOUT_MS),
          ]);
        });
  chatkitLoading.catch(function () {});
  status("Loading…");
  if (window.parent === window) status("This page shows a chat inside a website; it does nothing on its own.");

  /** @param {string | null} thread */
  function start(thread) {
    chatkitLoading.then(
      function () {
        mountChatKit(thread);
      },
      function () {
        if (branding.renderer === "chatkit") status("The chat could not load. Please check your connection and reload.");
        else mountLite(thread);
      }
    );
  }

  /** @param {string} name */
  function ready(name) {
    post("ready", { renderer: name });
  }

  /** Map the tenant's branding onto ChatKit's options. @param {string | null} thread */
  function chatkitOptions(thread) {
    var theme = branding.theme;
    /** @type {Record<string, any>} */
    var options = {
      api: { url: config.chatkit.api_url, domainKey: config.chatkit.domain_key, fetch: perchFetch },
      locale: branding.locale,
      frameTitle: branding.title,
      initialThread: thread,
      theme: {
        colorScheme: theme.color_scheme,
        radius: theme.radius,
        density: theme.density,
        color: { accent: { primary: theme.accent, level: 1 } },
      },
      header: {
        enabled: true,
        title: { text: branding.title },
        rightAction: {
          icon: "close",
          onClick: function () {
            post("close");
          },
        },
      },
      history: { enabled: true, showDelete: true, showRename: true },
      startScreen: {
        greeting: branding.greeting,
        prompts: branding.prompts.map(function (p) {
          return { label: p.label, prompt: p.prompt, icon: "circle-question" };
        }),
      },
      composer: { placeholder: branding.placeholder },
      threadItemActions: { feedback: true, retry: true },
    };
    if (theme.font_family) options.theme.typography = { fontFamily: theme.font_family };
    if (branding.disclaimer) options.disclaimer = { text: branding.disclaimer };
    return options;
  }

  /** @param {string | null} thread */
  function mountChatKit(thread) {
    var element = /** @type {any} */ (document.createElement("openai-chatkit"));
    var isReady = false;
    var failed = false;
    element.addEventListener("chatkit.ready", function () {
      isReady = true;
    });
    element.addEventListener("chatkit.error", function (/** @type {CustomEvent} */ event) {
      var error = event.detail && event.detail.error;
      hostEvent("error", { code: "chatkit", message: (error && error.message) || null });
      // ChatKit that cannot start (say, an unregistered domain) gives way to the lite renderer.
      if (!isReady && !failed && branding.renderer === "auto") {
        failed = true;
        element.remove();
        mountLite(thread);
      }
    });
    element.addEventListener("chatkit.thread.change", function (/** @type {CustomEvent} */ event) {
      post("thread", { id: (event.detail && event.detail.threadId) || null });
    });
    root.replaceChildren(element);
    element.setOptions(chatkitOptions(thread));
    if (failed) return;
    renderer = {
      send: function (text) {
        element.sendUserMessage({ text: text });
      },
      focus: function () {
        element.focusComposer();
      },
    };
    ready("chatkit");
  }

  /** @param {string | null} thread */
  function mountLite(thread) {
    var lite = /** @type {any} */ (window).PerchLite;
    var loading = lite ? Promise.resolve() : loadScript("/widget/lite.js");
    loading.then(
      function () {
        renderer = /** @type {any} */ (window).PerchLite.mount(root, {
          branding: branding,
          apiUrl: config.chatkit.api_url,
          fetch: perchFetch,
          readEvents: readEvents,
          thread: thread,
          onThread: function (/** @type {string | null} */ id) {
            post("thread", { id: id });
          },
          onClose: function () {
            post("close");
          },
        });
        ready("lite");
      },
      function () {
        status("The chat could not load. Please check your connection and reload.");
      }
    );
  }
})();
