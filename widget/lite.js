// @ts-check
/**
 * Perch lite renderer: a dependency-free chat UI that speaks the ChatKit protocol.
 *
 * Used when ChatKit's script cannot load, or when the tenant picks it. It streams replies,
 * shows the greeting and suggested prompts, stops and retries, shows errors and past threads.
 * Markdown becomes DOM nodes built with textContent: no raw HTML, no script, links only to
 * http(s)/mailto, and images become links the visitor may open, never fetched by the page.
 *
 * `PerchLite.mount(root, options)` returns `{send(text), focus()}`.
 */
(function () {
  "use strict";

  var PAGE_SIZE = 30;
  var MAX_DEPTH = 6;
  // Some inline patterns take time quadratic in a line's length; a longer line is shown as plain text.
  var MAX_LINE = 8000;
  var SAFE_PROTOCOLS = /^(https?:|mailto:)$/;
  var PLACEHOLDER_BASE = "https://relative.invalid/";
  var RADII = { pill: [20, 999], round: [16, 12], soft: [8, 6], sharp: [0, 0] };
  var DENSITY = { compact: [6, 8], normal: [10, 12], spacious: [14, 16] };
  var FALLBACK_ERROR = "Something went wrong. Please try again.";
  var ICONS = {
    history: "M3 12a9 9 0 1 0 3-6.7L3 8M3 3v5h5M12 7v5l3 3",
    compose: "M12 5v14M5 12h14",
    close: "M18 6 6 18M6 6l12 12",
    send: "M12 19V5M5 12l7-7 7 7",
    stop: "M7 7h10v10H7z",
  };

  /**
   * @typedef {{title: string, greeting: string, prompts: {label: string, prompt: string}[], placeholder: string,
   *   disclaimer: string, locale: string,
   *   theme: {color_scheme: string, accent: string, accent_ink: string, radius: string, density: string, font_family: string}}} Branding
   * @typedef {{branding: Branding, apiUrl: string, fetch: typeof fetch, thread: string | null,
   *   readEvents: (stream: ReadableStream<Uint8Array>, onEvent: (event: any) => void) => Promise<void>,
   *   onThread: (id: string | null) => void, onClose: () => void}} Options
   */

  /**
   * Create an element with a class and optional text.
   * @param {string} tag
   * @param {string} [className]
   * @param {string} [text]
   * @returns {HTMLElement}
   */
  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** @param {string} name @param {string} label */
  function iconButton(name, label) {
    var button = /** @type {HTMLButtonElement} */ (el("button", "pl-icon"));
    button.type = "button";
    button.setAttribute("aria-label", label);
    button.title = label;
    var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    var path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", ICONS[/** @type {keyof typeof ICONS} */ (name)]);
    svg.appendChild(path);
    button.appendChild(svg);
    return button;
  }

  /** Return an absolute http(s)/mailto URL, or null for anything else (javascript:, data:, relative…). @param {string} raw */
  function safeUrl(raw) {
    var url;
    try {
      url = new URL(raw.trim(), PLACEHOLDER_BASE);
    } catch (e) {
      return null;
    }
    if (!SAFE_PROTOCOLS.test(url.protocol) || url.href.indexOf(PLACEHOLDER_BASE) === 0) return null;
    return url.href;
  }

  /** @param {string} href @returns {HTMLAnchorElement} */
  function link(href) {
    var a = /** @type {HTMLAnchorElement} */ (el("a"));
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
  }

  // Inline markdown: code, image, link, <autolink>, bare URL, strong, emphasis, strike, escape.
  var INLINE = new RegExp(
    [
      "(`+)([^`][\\s\\S]*?)\\1(?!`)",
      "!\\[([^\\]]*)\\]\\(\\s*<?([^\\s)>]*)>?(?:\\s+\"[^\"]*\")?\\s*\\)",
      "\\[((?:\\[[^\\]]*\\]|[^\\[\\]])*)\\]\\(\\s*<?([^\\s)>]*)>?(?:\\s+\"[^\"]*\")?\\s*\\)",
      "<((?:https?://|mailto:)[^\\s>]+)>",
      "(https?://[^\\s<]*[^\\s<.,:;\"')\\]!?*_~])",
      "(\\*\\*|__)(?=\\S)([\\s\\S]*?\\S)\\9",
      "(\\*|_)(?=[^\\s*_])([\\s\\S]*?[^\\s\\\\])\\11(?![A-Za-z0-9])",
      "~~(?=\\S)([\\s\\S]*?\\S)~~",
      "\\\\([\\\\`*_{}\\[\\]()#+\\-.!~|<>])",
    ].join("|")
  );

  /**
   * Append the inline markdown of `text` to `parent` as DOM nodes.
   * @param {string} text
   * @param {Node} parent
   * @param {number} depth
   * @param {boolean} [inLink]
   */
  function inline(text, parent, depth, inLink) {
    var plain = "";
    while (text) {
      var m = depth < MAX_DEPTH && text.length <= MAX_LINE ? INLINE.exec(text) : null;
      // `_` inside a word (snake_case) is not emphasis.
      if (m && (m[11] === "_" || m[9] === "__") && m.index > 0 && /[A-Za-z0-9]/.test(text.charAt(m.index - 1))) {
        plain += text.slice(0, m.index + 1);
        text = text.slice(m.index + 1);
        continue;
      }
      if (!m) break;
      plain += text.slice(0, m.index);
      if (plain) parent.appendChild(document.createTextNode(plain));
      plain = "";
      text = text.slice(m.index + m[0].length);
      inlineToken(m, parent, depth, !!inLink);
    }
    plain += text;
    if (plain) parent.appendChild(document.createTextNode(plain));
  }

  /** @param {RegExpExecArray} m @param {Node} parent @param {number} depth @param {boolean} inLink */
  function inlineToken(m, parent, depth, inLink) {
    var href;
    if (m[1]) {
      parent.appendChild(el("code", "", m[2].replace(/^ (.*) $/, "$1")));
    } else if (m[4] !== undefined) {
      // An image inside link text stays text: a link may not hold another.
      parent.appendChild(inLink ? el("span", "pl-img", "[Image" + (m[3] ? ": " + m[3] : "") + "]") : imageLink(m[3], m[4]));
    } else if (m[6] !== undefined) {
      href = inLink ? null : safeUrl(m[6]);
      var target = href ? link(href) : el("span");
      inline(m[5], target, depth + 1, true);
      parent.appendChild(target);
    } else if (m[7] || m[8]) {
      href = inLink ? null : safeUrl(m[7] || m[8]);
      var a = href ? link(href) : el("span");
      a.textContent = m[7] || m[8];
      parent.appendChild(a);
    } else if (m[9]) {
      var strong = el("strong");
      inline(m[10], strong, depth + 1, inLink);
      parent.appendChild(strong);
    } else if (m[11]) {
      var em = el("em");
      inline(m[12], em, depth + 1, inLink);
      parent.appendChild(em);
    } else if (m[13] !== undefined) {
      var del = el("del");
      inline(m[13], del, depth + 1, inLink);
      parent.appendChild(del);
    } else {
      parent.appendChild(document.createTextNode(m[14]));
    }
  }

  /** An image is a link the visitor may choose to open: the page never fetches it. @param {string} alt @param {string} raw */
  function imageLink(alt, raw) {
    var href = safeUrl(raw);
    var label = "Image" + (alt ? ": " + alt : "");
    if (!href || href.indexOf("mailto:") === 0) return el("span", "pl-img", "[" + label + "]");
    var a = link(href);
    a.className = "pl-img";
    a.textContent = "🖼 " + label + " (" + new URL(href).host + ")";
    a.title = "Open image in a new tab";
    return a;
  }

  var FENCE = /^\s{0,3}(```+|~~~+)\s*([\w+-]*)/;
  // Linear on any line: the closing #s are trimmed by `headingText`, not by backtracking here.
  var HEADING = /^ {0,3}(#{1,6})[ \t]+([\s\S]*)$/;
  var RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
  var QUOTE = /^\s{0,3}>\s?/;
  var ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+([\s\S]*)$/;

  /** Say whether a line is a table's header rule, like `| --- | :-: |`. @param {string} line */
  function tableRule(line) {
    return /^[ \t|:-]+$/.test(line) && cells(line).every(function (cell) {
      return /^:?-+:?$/.test(cell);
    });
  }

  /** Drop a heading's closing run of #s. @param {string} text */
  function headingText(text) {
    return text.trim().replace(/(?:^|[ \t])#+$/, "").trim();
  }

  /** @param {string} line */
  function startsBlock(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
  }

  /** Split a table row at its pipes, except escaped ones (`\|`). @param {string} row */
  function cells(row) {
    // A NUL stands in for `\|` while splitting: no lookbehind, which Safari before 16.4 cannot parse.
    return row
      .replace(/\\\|/g, "\0")
      .trim()
      .replace(/^\|/, "")
      .replace(/\|$/, "")
      .split("|")
      .map(function (cell) {
        return cell.trim().replace(/\0/g, "\\|");
      });
  }

  /**
   * Render markdown `text` into block nodes appended to `parent`.
   * @param {string} text
   * @param {Node} parent
   * @param {number} [depth]
   */
  function markdown(text, parent, depth) {
    depth = depth || 0;
    var lines = text.replace(/\r\n?/g, "\n").split("\n");
    var i = 0;
    while (i < lines.length) {
      var line = lines[i];
      var m;
      if (!line.trim()) {
        i++;
      } else if (line.length > MAX_LINE) {
        parent.appendChild(el("p", "", line));
        i++;
      } else if ((m = FENCE.exec(line))) {
        var fence = m[1];
        var code = [];
        for (i++; i < lines.length && lines[i].trim().indexOf(fence) !== 0; i++) code.push(lines[i]);
        i++;
        var pre = el("pre");
        var codeNode = el("code", "", code.join("\n"));
        if (m[2]) codeNode.setAttribute("data-lang", m[2]);
        pre.appendChild(codeNode);
        parent.appendChild(pre);
      } else if ((m = HEADING.exec(line))) {
        var heading = el("h" + Math.min(6, m[1].length + 2), "pl-h");
        inline(headingText(m[2]), heading, 0);
        parent.appendChild(heading);
        i++;
      } else if (RULE.test(line)) {
        parent.appendChild(el("hr"));
        i++;
      } else if (QUOTE.test(line)) {
        var quoted = [];
        for (; i < lines.length && QUOTE.test(lines[i]); i++) quoted.push(lines[i].replace(QUOTE, ""));
        var quote = el("blockquote");
        if (depth < MAX_DEPTH) markdown(quoted.join("\n"), quote, depth + 1);
        else quote.textContent = quoted.join("\n");
        parent.appendChild(quote);
      } else if (ITEM.test(line)) {
        i = list(lines, i, parent, depth);
      } else if (line.indexOf("|") >= 0 && i + 1 < lines.length && tableRule(lines[i + 1])) {
        i = table(lines, i, parent);
      } else {
        var paragraph = el("p");
        var para = [line];
        for (i++; i < lines.length && lines[i].trim() && !startsBlock(lines[i]); i++) para.push(lines[i]);
        para.forEach(function (text, index) {
          if (index) paragraph.appendChild(el("br"));
          inline(text.trim(), paragraph, 0);
        });
        parent.appendChild(paragraph);
      }
    }
  }

  /** @param {string[]} lines @param {number} i @param {Node} parent @param {number} depth @returns {number} */
  function list(lines, i, parent, depth) {
    var first = /** @type {RegExpExecArray} */ (ITEM.exec(lines[i]));
    var indent = first[1].length;
    var ordered = /\d/.test(first[2]);
    var listNode = el(ordered ? "ol" : "ul");
    if (ordered && parseInt(first[2], 10) !== 1) listNode.setAttribute("start", String(parseInt(first[2], 10)));
    while (i < lines.length) {
      var m = ITEM.exec(lines[i]);
      if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
      var body = [m[3]];
      for (i++; i < lines.length; i++) {
        var next = lines[i];
        var nested = ITEM.exec(next);
        if (!next.trim()) {
          if (i + 1 < lines.length && /^\s+\S/.test(lines[i + 1]) && (ITEM.exec(lines[i + 1]) || [0, ""])[1].length > indent) {
            body.push("");
            continue;
          }
          break;
        }
        if (nested && nested[1].length <= indent) break;
        if (!nested && !/^\s/.test(next) && startsBlock(next)) break;
        body.push(next.replace(/^\s{1,4}/, ""));
      }
      var item = el("li");
      var simple = body.length === 1;
      if (simple || depth >= MAX_DEPTH) inline(body.join(" "), item, 0);
      else markdown(body.join("\n"), item, depth + 1);
      listNode.appendChild(item);
      while (i < lines.length && !lines[i].trim() && i + 1 < lines.length && ITEM.test(lines[i + 1])) {
        var after = /** @type {RegExpExecArray} */ (ITEM.exec(lines[i + 1]));
        if (after[1].length !== indent) break;
        i++;
      }
    }
    parent.appendChild(listNode);
    return i;
  }

  /** @param {string[]} lines @param {number} i @param {Node} parent @returns {number} */
  function table(lines, i, parent) {
    var wrap = el("div", "pl-table");
    var tableNode = el("table");
    var head = el("tr");
    cells(lines[i]).forEach(function (cell) {
      var th = el("th");
      inline(cell, th, 0);
      head.appendChild(th);
    });
    var thead = el("thead");
    thead.appendChild(head);
    tableNode.appendChild(thead);
    var tbody = el("tbody");
    for (i += 2; i < lines.length && lines[i].indexOf("|") >= 0 && lines[i].trim(); i++) {
      var row = el("tr");
      cells(lines[i]).forEach(function (cell) {
        var td = el("td");
        inline(cell, td, 0);
        row.appendChild(td);
      });
      tbody.appendChild(row);
    }
    tableNode.appendChild(tbody);
    wrap.appendChild(tableNode);
    parent.appendChild(wrap);
    return i;
  }

  /**
   * Return a reply as a screen reader should hear it: the rendered text, one block a line, no markdown marks.
   * @param {string} text
   */
  function spoken(text) {
    var rendered = el("div");
    markdown(text, rendered);
    return Array.prototype.map
      .call(rendered.children, function (/** @type {Element} */ block) {
        return block.textContent;
      })
      .join("\n");
  }

  /** @param {HTMLElement} node @param {Branding["theme"]} theme */
  function applyTheme(node, theme) {
    var radius = RADII[/** @type {keyof typeof RADII} */ (theme.radius)] || RADII.round;
    var density = DENSITY[/** @type {keyof typeof DENSITY} */ (theme.density)] || DENSITY.normal;
    node.setAttribute("data-scheme", theme.color_scheme === "dark" ? "dark" : "light");
    node.style.setProperty("--pl-accent", theme.accent);
    node.style.setProperty("--pl-accent-ink", theme.accent_ink);
    node.style.setProperty("--pl-radius", radius[0] + "px");
    node.style.setProperty("--pl-radius-control", radius[1] + "px");
    node.style.setProperty("--pl-gap", density[0] + "px");
    node.style.setProperty("--pl-pad", density[1] + "px");
    if (theme.font_family) node.style.setProperty("--pl-font", theme.font_family);
    document.documentElement.style.colorScheme = theme.color_scheme === "dark" ? "dark" : "light";
  }

  /**
   * Mount the lite chat in `root`.
   * @param {HTMLElement} root
   * @param {Options} options
   */
  function mount(root, options) {
    var branding = options.branding;
    var ui = el("div", "pl");
    applyTheme(ui, branding.theme);
    ui.lang = branding.locale;

    var header = el("div", "pl-head");
    var historyButton = iconButton("history", "Past conversations");
    historyButton.setAttribute("aria-expanded", "false");
    var newButton = iconButton("compose", "New conversation");
    var closeButton = iconButton("close", "Close chat");
    header.append(historyButton, el("h1", "pl-title", branding.title), newButton, closeButton);

    var historyPanel = el("div", "pl-history");
    historyPanel.hidden = true;
    historyPanel.setAttribute("role", "region");
    historyPanel.setAttribute("aria-label", "Past conversations");

    var log = el("div", "pl-log");
    log.setAttribute("role", "region");
    log.setAttribute("aria-label", "Conversation");
    log.tabIndex = -1;
    var live = el("div", "pl-live");
    live.setAttribute("aria-live", "polite");
    live.setAttribute("role", "status");

    var composer = el("div", "pl-composer");
    var input = /** @type {HTMLTextAreaElement} */ (el("textarea", "pl-input"));
    input.rows = 1;
    input.placeholder = branding.placeholder;
    input.setAttribute("aria-label", branding.placeholder || "Message");
    input.maxLength = 8000;
    var sendButton = iconButton("send", "Send message");
    sendButton.classList.add("pl-send");
    var stopButton = iconButton("stop", "Stop reply");
    stopButton.classList.add("pl-send");
    stopButton.hidden = true;
    composer.append(input, sendButton, stopButton);
    ui.append(header, historyPanel, log, live, composer);
    if (branding.disclaimer) {
      var disclaimer = el("div", "pl-disclaimer");
      markdown(branding.disclaimer, disclaimer);
      ui.appendChild(disclaimer);
    }
    root.replaceChildren(ui);

    /** @type {string | null} */
    var threadId = null;
    /** @type {Map<string, {type: string, node: HTMLElement, body: HTMLElement, parts: string[]}>} */
    var items = new Map();
    /** @type {HTMLElement | null} */
    var pendingUser = null;
    /** @type {AbortController | null} */
    var busy = null;
    /** @type {any} */
    var lastRequest = null;
    /** @type {Set<string>} */
    var dirty = new Set();
    var frameRequested = false;
    var nextDraw = 0;
    /** @type {number | undefined} */
    var drawLater;
    // Bumped when the visitor switches threads, so a stream still ending draws nothing on the new one.
    var generation = 0;

    /** @param {any} body @param {AbortSignal} [signal] */
    function request(body, signal) {
      return options.fetch(options.apiUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: signal,
      });
    }

    /** @param {any} body */
    function json(body) {
      return request(body).then(function (response) {
        return response.json().then(function (data) {
          if (!response.ok) throw new Error((data.error && data.error.message) || FALLBACK_ERROR);
          return data;
        });
      });
    }

    /** @param {string | null} id */
    function setThread(id) {
      if (id === threadId) return;
      threadId = id;
      options.onThread(id);
    }

    function scrollDown() {
      log.scrollTop = log.scrollHeight;
    }

    function showStart() {
      var start = el("div", "pl-start");
      start.appendChild(el("p", "pl-greeting", branding.greeting));
      if (branding.prompts.length) {
        var prompts = el("div", "pl-prompts");
        branding.prompts.forEach(function (p) {
          var chip = /** @type {HTMLButtonElement} */ (el("button", "pl-prompt", p.label));
          chip.type = "button";
          chip.addEventListener("click", function () {
            send(p.prompt);
          });
          prompts.appendChild(chip);
        });
        start.appendChild(prompts);
      }
      log.replaceChildren(start);
    }

    function hideStart() {
      var start = log.querySelector(".pl-start");
      if (start) start.remove();
    }

    function clearNotes() {
      log.querySelectorAll(".pl-error,.pl-notice").forEach(function (node) {
        node.remove();
      });
    }

    /** @param {string} role @param {string} [id] */
    function bubble(role, id) {
      var node = el("div", "pl-msg pl-" + role);
      var body = el("div", role === "assistant" ? "pl-md" : "pl-text");
      node.appendChild(body);
      if (id) node.setAttribute("data-id", id);
      log.appendChild(node);
      return { node: node, body: body };
    }

    /** @param {any} item @param {boolean} done */
    function upsert(item, done) {
      if (item.type !== "user_message" && item.type !== "assistant_message") return;
      var known = items.get(item.id);
      var parts = (item.content || []).map(function (/** @type {{text?: string}} */ part) {
        return part.text || "";
      });
      if (!known) {
        hideStart();
        var role = item.type === "user_message" ? "user" : "assistant";
        var made = role === "user" && pendingUser ? { node: pendingUser, body: /** @type {HTMLElement} */ (pendingUser.firstChild) } : bubble(role);
        if (role === "user") pendingUser = null;
        made.node.setAttribute("data-id", item.id);
        made.node.classList.remove("pl-unsent");
        known = { type: item.type, node: made.node, body: made.body, parts: parts };
        items.set(item.id, known);
      } else if (parts.length || done) {
        known.parts = parts;
      }
      if (known.type === "user_message") known.body.textContent = known.parts.join("\n");
      else render(item.id);
      if (done && known.type === "assistant_message") {
        known.node.classList.remove("pl-streaming");
        live.textContent = spoken(known.parts.join("\n\n"));
      } else if (known.type === "assistant_message") {
        known.node.classList.add("pl-streaming");
      }
      scrollDown();
    }

    /**
     * Redraw a reply on the next frame. While it streams, each redraw parses the whole reply again, so a
     * slow one waits: the page spends at most a fifth of its time drawing and stays responsive.
     * @param {string} id @param {boolean} [streaming]
     */
    function render(id, streaming) {
      dirty.add(id);
      var wait = streaming ? nextDraw - Date.now() : 0;
      if (drawLater !== undefined && wait <= 0) {
        clearTimeout(drawLater);
        drawLater = undefined;
        frameRequested = false;
      }
      if (frameRequested) return;
      frameRequested = true;
      if (wait > 0) {
        drawLater = setTimeout(function () {
          drawLater = undefined;
          requestAnimationFrame(draw);
        }, wait);
      } else {
        requestAnimationFrame(draw);
      }
    }

    function draw() {
      var began = Date.now();
      frameRequested = false;
      dirty.forEach(function (key) {
        var item = items.get(key);
        if (!item) return;
        var fragment = document.createDocumentFragment();
        markdown(item.parts.join("\n\n"), fragment);
        item.body.replaceChildren(fragment);
      });
      dirty.clear();
      scrollDown();
      nextDraw = Date.now() + 4 * (Date.now() - began);
    }

    /** @param {string} id @param {any} update */
    function applyUpdate(id, update) {
      var item = items.get(id);
      if (!item) return;
      var index = update.content_index || 0;
      while (item.parts.length <= index) item.parts.push("");
      if (update.type === "assistant_message.content_part.text_delta") item.parts[index] += update.delta;
      else if (update.content && typeof update.content.text === "string") item.parts[index] = update.content.text;
      render(id, true);
    }

    /** @param {string} id */
    function removeItem(id) {
      var item = items.get(id);
      if (item) item.node.remove();
      items.delete(id);
    }

    /** @param {string} message @param {boolean} retry */
    function showError(message, retry) {
      var box = el("div", "pl-error");
      box.setAttribute("role", "alert");
      box.appendChild(el("span", "", message || FALLBACK_ERROR));
      if (retry) {
        var again = /** @type {HTMLButtonElement} */ (el("button", "pl-retry", "Try again"));
        again.type = "button";
        again.addEventListener("click", retryLast);
        box.appendChild(again);
      }
      log.appendChild(box);
      scrollDown();
    }

    /** @param {any} event */
    function onEvent(event) {
      switch (event.type) {
        case "thread.created":
          setThread(event.thread.id);
          break;
        case "thread.item.added":
        case "thread.item.replaced":
          upsert(event.item, false);
          break;
        case "thread.item.done":
          upsert(event.item, true);
          break;
        case "thread.item.updated":
          applyUpdate(event.item_id, event.update);
          break;
        case "thread.item.removed":
          removeItem(event.item_id);
          break;
        case "stream_options":
          stopButton.disabled = !event.stream_options.allow_cancel;
          break;
        case "notice":
          var notice = el("div", "pl-notice pl-" + event.level, event.message);
          notice.setAttribute("role", "status");
          log.appendChild(notice);
          break;
        case "error":
          showError(event.message || FALLBACK_ERROR, !!event.allow_retry);
          break;
      }
    }

    /** @param {boolean} on */
    function setBusy(on) {
      sendButton.hidden = on;
      stopButton.hidden = !on;
      stopButton.disabled = false;
      ui.classList.toggle("pl-busy", on);
      if (!on) {
        items.forEach(function (item) {
          item.node.classList.remove("pl-streaming");
        });
      }
      updateActions();
    }

    /** Offer "Retry" on the last reply, which answers the message before it again. */
    function updateActions() {
      log.querySelectorAll(".pl-actions").forEach(function (node) {
        node.remove();
      });
      var replies = log.querySelectorAll(".pl-assistant[data-id]");
      var last = replies[replies.length - 1];
      if (!last || busy) return;
      var actions = el("div", "pl-actions");
      var again = /** @type {HTMLButtonElement} */ (el("button", "pl-retry", "Retry"));
      again.type = "button";
      again.addEventListener("click", retryLast);
      actions.appendChild(again);
      last.appendChild(actions);
    }

    /** Run one streaming request, drawing its events as they arrive. @param {any} body */
    function stream(body) {
      if (busy) return Promise.resolve();
      busy = new AbortController();
      lastRequest = body;
      clearNotes();
      setBusy(true);
      var controller = busy;
      var shown = generation;
      return request(body, controller.signal)
        .then(function (response) {
          if (!response.ok) {
            return response.json().then(
              function (data) {
                throw new Error((data.error && data.error.message) || FALLBACK_ERROR);
              },
              function () {
                throw new Error(FALLBACK_ERROR);
              }
            );
          }
          return options.readEvents(/** @type {ReadableStream<Uint8Array>} */ (response.body), onEvent);
        })
        .catch(function (error) {
          if (shown !== generation) return;
          if (controller.signal.aborted) {
            log.appendChild(el("div", "pl-notice", "Stopped."));
          } else {
            showError(error && error.message ? error.message : FALLBACK_ERROR, true);
          }
        })
        .then(function () {
          busy = null;
          setBusy(false);
        });
    }

    /** @param {string} text */
    function userInput(text) {
      return { content: [{ type: "input_text", text: text }], attachments: [], inference_options: {} };
    }

    /** Send the visitor's message: a new thread, or the next turn of this one. @param {string} text */
    function send(text) {
      text = text.trim();
      if (!text || busy) return;
      closeHistory();
      hideStart();
      clearNotes();
      var made = bubble("user");
      made.body.textContent = text;
      made.node.classList.add("pl-unsent");
      pendingUser = made.node;
      scrollDown();
      stream(
        threadId
          ? { type: "threads.add_user_message", params: { thread_id: threadId, input: userInput(text) } }
          : { type: "threads.create", params: { input: userInput(text) } }
      );
    }

    /** Answer the last saved user message again, or resend a message the server never took. */
    function retryLast() {
      if (busy) return;
      var users = log.querySelectorAll(".pl-user[data-id]");
      var last = /** @type {HTMLElement | undefined} */ (users[users.length - 1]);
      if (pendingUser || !last || !threadId) {
        if (lastRequest) stream(lastRequest);
        return;
      }
      var id = /** @type {string} */ (last.getAttribute("data-id"));
      for (var node = last.nextElementSibling; node; ) {
        var next = node.nextElementSibling;
        var itemId = node.getAttribute("data-id");
        if (itemId) items.delete(itemId);
        node.remove();
        node = next;
      }
      stream({ type: "threads.retry_after_item", params: { thread_id: threadId, item_id: id } });
    }

    /** @param {string} id */
    function loadThread(id) {
      if (busy) busy.abort();
      generation++;
      closeHistory();
      items.clear();
      pendingUser = null;
      log.replaceChildren(el("p", "pl-loading", "Loading…"));
      return loadItems(id, null).then(
        function () {
          setThread(id);
          if (!items.size) showStart();
          updateActions();
        },
        function () {
          setThread(null);
          showStart();
        }
      );
    }

    /** @param {string} id @param {string | null} after */
    function loadItems(id, after) {
      return json({ type: "items.list", params: { thread_id: id, limit: PAGE_SIZE, order: "desc", after: after } }).then(
        function (page) {
          var loading = log.querySelector(".pl-loading,.pl-earlier");
          if (loading) loading.remove();
          var anchor = log.firstChild;
          var before = log.scrollHeight - log.scrollTop;
          page.data
            .slice()
            .reverse()
            .forEach(function (/** @type {any} */ item) {
              upsert(item, true);
              var added = items.get(item.id);
              if (added && anchor) log.insertBefore(added.node, anchor);
            });
          live.textContent = "";
          if (page.has_more) {
            var earlier = /** @type {HTMLButtonElement} */ (el("button", "pl-earlier", "Show earlier messages"));
            earlier.type = "button";
            earlier.addEventListener("click", function () {
              loadItems(id, page.after);
            });
            log.insertBefore(earlier, log.firstChild);
          }
          if (after) log.scrollTop = log.scrollHeight - before;
        }
      );
    }

    function openHistory() {
      historyPanel.hidden = false;
      historyButton.setAttribute("aria-expanded", "true");
      historyPanel.replaceChildren(el("p", "pl-loading", "Loading…"));
      json({ type: "threads.list", params: { limit: 20, order: "desc" } }).then(
        function (page) {
          var listNode = el("ul", "pl-threads");
          page.data.forEach(function (/** @type {any} */ thread) {
            var entry = el("li");
            var button = /** @type {HTMLButtonElement} */ (el("button", "pl-thread"));
            button.type = "button";
            button.appendChild(el("span", "pl-thread-title", thread.title || "Conversation"));
            var when = new Date(thread.created_at);
            button.appendChild(el("span", "pl-thread-date", isNaN(when.getTime()) ? "" : when.toLocaleString(branding.locale)));
            if (thread.id === threadId) button.setAttribute("aria-current", "true");
            button.addEventListener("click", function () {
              loadThread(thread.id);
              input.focus();
            });
            entry.appendChild(button);
            listNode.appendChild(entry);
          });
          historyPanel.replaceChildren(page.data.length ? listNode : el("p", "pl-empty", "No past conversations yet."));
          var firstButton = historyPanel.querySelector("button");
          if (firstButton) /** @type {HTMLElement} */ (firstButton).focus();
        },
        function (error) {
          historyPanel.replaceChildren(el("p", "pl-error", error.message || FALLBACK_ERROR));
        }
      );
    }

    function closeHistory() {
      historyPanel.hidden = true;
      historyButton.setAttribute("aria-expanded", "false");
    }

    historyButton.addEventListener("click", function () {
      historyPanel.hidden ? openHistory() : closeHistory();
    });
    newButton.addEventListener("click", function () {
      if (busy) busy.abort();
      generation++;
      closeHistory();
      items.clear();
      pendingUser = null;
      setThread(null);
      showStart();
      input.focus();
    });
    closeButton.addEventListener("click", options.onClose);
    stopButton.addEventListener("click", function () {
      if (busy) busy.abort();
    });
    sendButton.addEventListener("click", function () {
      var text = input.value;
      input.value = "";
      send(text);
      input.focus();
    });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        if (busy) return;
        var text = input.value;
        input.value = "";
        send(text);
      }
    });
    input.addEventListener("input", function () {
      input.style.height = "auto";
      input.style.height = Math.min(input.scrollHeight, 160) + "px";
    });
    ui.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && !historyPanel.hidden) {
        event.preventDefault();
        closeHistory();
        historyButton.focus();
      }
    });

    if (options.thread) loadThread(options.thread);
    else showStart();

    return {
      send: send,
      focus: function () {
        input.focus();
      },
    };
  }

  /** @type {any} */ (window).PerchLite = { mount: mount, markdown: markdown };
})();
