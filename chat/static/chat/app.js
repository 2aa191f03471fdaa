// The browser chat: the one script of ours, an ES module, no build step.
//
// The chat page is a shell (chat/templates/chat/chat.html) filled from the REST API
// (/api/: conversations, messages with their parents, models, jobs) and kept live by
// the conversation's WebSocket (/ws/conversations/<id>/, conversations/consumers.py).
//
// An answer is rebuilt from its events: "started" resets its text (a retried job
// streams again from the start), "delta" appends, "completed" / "cancelled" replace
// the text with the stored one, "failed" says why. Every event has a per-conversation
// seq; each message remembers the seq of the last event applied to it and skips older
// ones, so replays (a reconnect with ?after=<last seq>, a reload that replays answers
// in flight from their start) never show a piece twice.
//
// Answers are Markdown, rendered by marked with raw HTML escaped (it shows as text),
// then sanitized by DOMPurify; the page's Content-Security-Policy (chat/security.py)
// allows no inline script besides.
import { marked } from "./vendor/marked/marked.esm.js";
import DOMPurify from "./vendor/dompurify/purify.es.mjs";

const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content ?? "";

// ---------------------------------------------------------------------------------
// Small helpers

const escapeHtml = (text) =>
  text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

marked.use({
  gfm: true,
  renderer: {
    // A model's raw HTML is text to read, not markup.
    html({ text, block }) {
      return block ? `<p>${escapeHtml(text)}</p>` : escapeHtml(text);
    },
  },
});
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

function renderMarkdown(element, text) {
  element.innerHTML = DOMPurify.sanitize(marked.parse(text), {
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"],
    FORBID_ATTR: ["style"],
  });
}

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken;
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    window.location.assign(`/accounts/login/?next=${encodeURIComponent(window.location.pathname)}`);
    throw new ApiError(401, "Your session has ended; please log in again.");
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, data?.detail ?? `The server answered ${response.status}.`, data);
  }
  return data;
}

async function allPages(path) {
  const results = [];
  for (let url = path; url; ) {
    const page = await api(url);
    results.push(...page.results);
    const next = page.next ? new URL(page.next, window.location.origin) : null;
    url = next ? next.pathname + next.search : null;
  }
  return results;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

const ordinal = (n) => {
  const suffix = n % 100 >= 11 && n % 100 <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[n % 10] ?? "th");
  return `${n}${suffix}`;
};

// ---------------------------------------------------------------------------------
// The chat page

function initChat() {
  const $ = (id) => document.getElementById(id);
  const main = $("main");
  const ui = {
    list: $("conversation-list"),
    listEmpty: $("conversation-list-empty"),
    search: $("search"),
    title: $("conversation-title"),
    actions: $("conversation-actions"),
    renameForm: $("rename-form"),
    renameInput: $("rename-input"),
    messages: $("messages"),
    emptyState: $("empty-state"),
    notFound: $("not-found"),
    connection: $("connection"),
    composer: $("composer"),
    input: $("input"),
    send: $("send"),
    stop: $("stop"),
    count: $("input-count"),
    error: $("composer-error"),
    model: $("model"),
    modelNote: $("model-note"),
    announcer: $("announcer"),
    sidebar: $("sidebar"),
    sidebarToggle: $("sidebar-toggle"),
    deleteDialog: $("delete-dialog"),
  };
  const maxChars = Number(main.dataset.maxChars);
  const state = {
    conversation: null, // {id, title, model}
    messages: new Map(), // id -> message (REST shape, plus seq and queuePosition)
    leaf: null, // the last message of the branch on screen
    editing: null, // id of the user message being edited
    models: new Map(), // name -> {name, live_workers, ...}
    socket: null,
    lastSeq: 0,
    loaded: false, // messages fetched since the socket said hello
    buffered: [], // events that came before that
    orphans: new Map(), // message id -> events of a message not known yet
    retries: 0,
    reconnectTimer: null,
    pollTimer: null,
    renderQueued: new Set(),
  };

  // --- the tree ---------------------------------------------------------------
  const parentKey = (message) => message.parent_id ?? "root";
  function childrenOf(key) {
    const ids = [];
    for (const message of state.messages.values()) if (parentKey(message) === key) ids.push(message.id);
    return ids.sort((a, b) => a - b);
  }
  function branch(leaf) {
    const chain = [];
    for (let id = leaf; id !== null && id !== undefined && state.messages.has(id); ) {
      chain.push(state.messages.get(id));
      id = state.messages.get(id).parent_id;
    }
    return chain.reverse();
  }
  // The newest message at or under ``id``: a branch shown from there ends at it.
  function newestUnder(id) {
    let newest = id;
    for (const child of childrenOf(id)) newest = Math.max(newest, newestUnder(child));
    return newest;
  }
  function setLeaf(id) {
    state.leaf = id;
    if (state.conversation) sessionStorage.setItem(`chat.leaf.${state.conversation.id}`, String(id));
  }
  const inFlight = (message) => message && message.role === "assistant" && ["queued", "streaming"].includes(message.status);

  // --- models -------------------------------------------------------------------
  async function loadModels() {
    let models;
    try {
      models = await api("/api/models/");
    } catch {
      return;
    }
    const chosen = ui.model.value || state.conversation?.model || main.dataset.defaultModel;
    state.models = new Map(models.map((model) => [model.name, model]));
    ui.model.replaceChildren(
      ...models.map((model) => {
        const note = model.live_workers === 0 ? " (no live worker)" : model.live_workers === null ? " (status unknown)" : "";
        return element("option", { value: model.name, text: `${model.name}${note}` });
      }),
    );
    ui.model.value = state.models.has(chosen) ? chosen : models[0]?.name ?? "";
    describeModel();
  }
  function describeModel() {
    const model = state.models.get(ui.model.value);
    ui.modelNote.textContent =
      model?.live_workers === 0
        ? `No worker is serving ${model.name} right now: answers wait in its queue until one starts.`
        : model?.description ?? "";
  }
  ui.model.addEventListener("change", async () => {
    describeModel();
    if (state.conversation && state.conversation.model !== ui.model.value) {
      try {
        state.conversation = await api(`/api/conversations/${state.conversation.id}/`, {
          method: "PATCH",
          body: { model: ui.model.value },
        });
      } catch (error) {
        showError(error.message);
      }
    }
  });

  // --- the conversation list -----------------------------------------------------
  let searchTimer = null;
  async function loadConversations() {
    const query = ui.search.value.trim();
    const path = `/api/conversations/?page_size=100${query ? `&search=${encodeURIComponent(query)}` : ""}`;
    let page;
    try {
      page = await api(path);
    } catch {
      return;
    }
    ui.list.replaceChildren(
      ...page.results.map((conversation) => {
        const current = state.conversation?.id === conversation.id;
        const link = element("a", {
          href: `/c/${conversation.id}/`,
          "aria-current": current ? "page" : false,
          text: conversation.title || "Untitled",
          title: conversation.title || "Untitled",
        });
        link.addEventListener("click", (event) => {
          if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
          event.preventDefault();
          openConversation(conversation.id, { push: true });
          closeSidebar();
        });
        return element("li", {}, link);
      }),
    );
    ui.listEmpty.hidden = page.results.length > 0;
    ui.listEmpty.textContent = query ? "No conversation matches." : "No conversations yet.";
  }
  ui.search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(loadConversations, 250);
  });
  document.getElementById("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadConversations();
  });

  // --- opening and closing a conversation ------------------------------------------
  function closeSocket() {
    clearTimeout(state.reconnectTimer);
    if (state.socket) {
      const socket = state.socket;
      state.socket = null;
      socket.close(1000);
    }
  }
  function resetConversation() {
    closeSocket();
    Object.assign(state, {
      conversation: null,
      leaf: null,
      editing: null,
      lastSeq: 0,
      loaded: false,
      buffered: [],
      retries: 0,
    });
    state.messages.clear();
    state.orphans.clear();
    ui.messages.replaceChildren();
    ui.notFound?.remove();
    ui.notFound = null;
    setConnection("");
  }

  function newChat({ push }) {
    resetConversation();
    if (push) history.pushState({}, "", "/");
    ui.title.textContent = "New chat";
    document.title = "New chat · LLM serving platform";
    ui.actions.hidden = true;
    ui.renameForm.hidden = true;
    ui.emptyState.hidden = false;
    render();
    loadConversations();
    ui.input.focus();
  }

  async function openConversation(id, { push }) {
    resetConversation();
    if (push) history.pushState({ conversation: id }, "", `/c/${id}/`);
    let conversation;
    try {
      conversation = await api(`/api/conversations/${id}/`);
    } catch (error) {
      if (error.status === 404) {
        ui.title.textContent = "Not found";
        showError("This conversation does not exist, or it is not yours.");
      } else {
        showError(error.message);
      }
      return;
    }
    state.conversation = conversation;
    showTitle();
    if (state.models.has(conversation.model)) ui.model.value = conversation.model;
    describeModel();
    ui.actions.hidden = false;
    ui.emptyState.hidden = true;
    loadConversations();
    connect();
  }

  function showTitle() {
    const title = state.conversation?.title || "Untitled";
    ui.title.textContent = title;
    document.title = `${title} · LLM serving platform`;
  }

  // --- the WebSocket ------------------------------------------------------------
  function connect() {
    const conversation = state.conversation;
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const after = state.lastSeq ? `?after=${state.lastSeq}` : "";
    const socket = new WebSocket(`${scheme}://${window.location.host}/ws/conversations/${conversation.id}/${after}`);
    state.socket = socket;
    socket.addEventListener("message", (message) => {
      if (state.socket === socket) onEvent(JSON.parse(message.data));
    });
    socket.addEventListener("close", (event) => {
      if (state.socket !== socket) return; // closed on purpose
      state.socket = null;
      if (event.code === 4401) {
        window.location.assign(`/accounts/login/?next=${encodeURIComponent(window.location.pathname)}`);
        return;
      }
      if (event.code === 4404) {
        showError("This conversation does not exist any more.");
        return;
      }
      // Reconnect with backoff (0.5 s doubling to 10 s, jittered), from the last seq seen.
      const delay = Math.min(10000, 500 * 2 ** state.retries) * (0.75 + Math.random() / 2);
      state.retries += 1;
      setConnection(`Connection lost; reconnecting in ${Math.ceil(delay / 1000)} s…`);
      state.reconnectTimer = setTimeout(() => {
        if (state.conversation === conversation) connect();
      }, delay);
    });
  }
  function setConnection(text) {
    ui.connection.textContent = text;
    ui.connection.hidden = !text;
  }

  function onEvent(event) {
    if (event.event === "hello") {
      state.retries = 0;
      setConnection("");
      if (event.last_seq < state.lastSeq) {
        // The server's stream started over (its Redis was emptied): read everything anew.
        state.lastSeq = 0;
        state.loaded = false;
        state.messages.clear();
      }
      if (!state.loaded) loadMessages();
      return;
    }
    if (event.event === "pong" || event.event === "error") {
      if (event.event === "error" && event.message_id) showError(event.error);
      return;
    }
    if (!state.loaded) state.buffered.push(event);
    else applyEvent(event);
  }

  async function loadMessages() {
    const conversation = state.conversation;
    let messages;
    try {
      messages = await allPages(`/api/conversations/${conversation.id}/messages/?page_size=200`);
    } catch (error) {
      showError(error.message);
      return;
    }
    if (state.conversation !== conversation) return;
    for (const message of messages) merge(message);
    const stored = Number(sessionStorage.getItem(`chat.leaf.${conversation.id}`));
    if (state.leaf === null || !state.messages.has(state.leaf)) {
      setLeaf(state.messages.has(stored) ? stored : Math.max(0, ...state.messages.keys()) || null);
    }
    state.loaded = true;
    const buffered = state.buffered;
    state.buffered = [];
    for (const event of buffered) applyEvent(event);
    render();
  }

  // A message from the server (a listing, or a POST's answer) into the tree. One that
  // events have already moved on is the client's to keep: it is newer.
  function merge(message) {
    const known = state.messages.get(message.id);
    if (known && known.seq > 0) return known;
    const merged = { ...message, seq: known?.seq ?? 0, queuePosition: known?.queuePosition ?? null };
    state.messages.set(message.id, merged);
    const orphans = state.orphans.get(message.id);
    if (orphans) {
      state.orphans.delete(message.id);
      for (const event of orphans) applyEvent(event);
    }
    return merged;
  }

  let orphanTimer = null;
  function applyEvent(event) {
    state.lastSeq = Math.max(state.lastSeq, event.seq ?? 0);
    const message = state.messages.get(event.message_id);
    if (!message) {
      // A message this page did not write (another tab, the API), or whose POST has
      // not answered yet: keep its events; read the conversation again if it stays unknown.
      const events = state.orphans.get(event.message_id) ?? [];
      events.push(event);
      state.orphans.set(event.message_id, events);
      clearTimeout(orphanTimer);
      orphanTimer = setTimeout(() => state.orphans.size && loadMessages(), 1500);
      return;
    }
    if (event.seq <= message.seq) return; // seen already (a replay)
    message.seq = event.seq;
    const wasFinal = !inFlight(message);
    switch (event.event) {
      case "started":
        Object.assign(message, { status: "streaming", content: "", error: "" });
        break;
      case "delta":
        message.status = "streaming";
        message.content += event.text;
        break;
      case "completed":
        Object.assign(message, {
          status: "completed",
          content: event.content,
          finish_reason: event.finish_reason,
          completion_tokens: event.completion_tokens,
        });
        break;
      case "failed":
        Object.assign(message, { status: "failed", error: event.error });
        break;
      case "cancelled":
        Object.assign(message, { status: "cancelled", content: event.content || message.content });
        break;
      default:
        return;
    }
    const onScreen = branch(state.leaf).includes(message);
    if (onScreen && !wasFinal && !inFlight(message)) {
      announce(
        { completed: "The answer is complete.", failed: `The answer failed: ${message.error}`, cancelled: "The answer was stopped." }[
          message.status
        ],
      );
    }
    if (onScreen) scheduleRender(message.id, event.event !== "delta");
  }

  // --- rendering ---------------------------------------------------------------------
  // Deltas re-render their message once per frame at most; anything else renders the page.
  let frameRequested = false;
  function scheduleRender(id, whole) {
    if (whole) state.renderQueued.add("all");
    else state.renderQueued.add(id);
    if (frameRequested) return;
    frameRequested = true;
    const flush = () => {
      frameRequested = false;
      const queued = state.renderQueued;
      state.renderQueued = new Set();
      if (queued.has("all")) render();
      else for (const messageId of queued) updateMessage(messageId);
    };
    if (document.hidden) setTimeout(flush, 50);
    else requestAnimationFrame(flush);
  }

  function render() {
    const shown = branch(state.leaf);
    const stickToBottom = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
    const existing = new Map([...ui.messages.children].map((li) => [Number(li.dataset.messageId), li]));
    const items = shown.map((message) => {
      const li = existing.get(message.id) ?? element("li", { "data-message-id": message.id });
      // Refill only what changed: a refilled item loses the keyboard focus inside it.
      const signature = JSON.stringify([
        message.seq,
        message.status,
        message.content.length,
        message.queuePosition,
        state.models.get(message.model)?.live_workers === 0,
        childrenOf(parentKey(message)),
        state.editing === message.id,
      ]);
      if (li.dataset.signature !== signature) {
        fillMessage(li, message);
        li.dataset.signature = signature;
      }
      return li;
    });
    if (items.some((li, i) => ui.messages.children[i] !== li) || ui.messages.children.length !== items.length) {
      ui.messages.replaceChildren(...items);
    }
    ui.emptyState.hidden = Boolean(state.conversation) || shown.length > 0 || Boolean(ui.notFound);
    const last = shown.at(-1);
    const busy = inFlight(last);
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    updateCount();
    if (stickToBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
    pollQueued(shown);
  }

  function updateMessage(id) {
    const li = ui.messages.querySelector(`li[data-message-id="${id}"]`);
    const message = state.messages.get(id);
    if (!li || !message) return render();
    const stickToBottom = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
    const content = li.querySelector(".content");
    if (!content) return render();
    if (message.role === "assistant") renderMarkdown(content, message.content);
    else content.textContent = message.content;
    li.querySelector(".state").textContent = stateText(message);
    li.dataset.status = message.status;
    delete li.dataset.signature; // the next render fills it whole
    if (stickToBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function stateText(message) {
    if (message.role !== "assistant") return "";
    switch (message.status) {
      case "queued": {
        // The place is among the model's queued jobs, the next to start being 1st.
        const place = message.queuePosition ? `: ${ordinal(message.queuePosition)} in line for ${message.model}` : "";
        const idle = state.models.get(message.model)?.live_workers === 0 ? "; no worker is serving it right now" : "";
        return `Queued${place}${idle}`;
      }
      case "streaming":
        return "Generating…";
      case "completed":
        return message.finish_reason === "length" ? "Completed (stopped at the length limit)" : "Completed";
      case "failed":
        return "Failed";
      case "cancelled":
        return "Stopped";
      default:
        return message.status;
    }
  }

  function fillMessage(li, message) {
    const mine = message.role === "user";
    li.className = `message ${message.role}`;
    li.dataset.status = message.status;
    li.setAttribute("aria-busy", inFlight(message) ? "true" : "false");
    const who = mine ? "You" : message.role === "system" ? "System" : `Assistant${message.model ? ` · ${message.model}` : ""}`;
    const meta = element(
      "div",
      { class: "message-meta" },
      element("span", { class: "who", text: who }),
      element("span", { class: "state", text: stateText(message) }),
    );
    const parts = [meta];
    if (state.editing === message.id) {
      parts.push(editForm(message));
    } else {
      const content = element("div", { class: mine ? "content" : "content markdown" });
      if (message.role === "assistant") renderMarkdown(content, message.content);
      else content.textContent = message.content;
      parts.push(content);
      if (message.status === "failed") {
        parts.push(element("p", { class: "message-error", text: message.error || "The answer could not be generated." }));
      }
      parts.push(actions(message));
    }
    li.replaceChildren(...parts);
  }

  function actions(message) {
    const bar = element("div", { class: "message-actions" });
    const siblings = childrenOf(parentKey(message));
    if (siblings.length > 1) {
      const index = siblings.indexOf(message.id);
      const noun = message.role === "user" ? "message" : "answer";
      const go = (to) => () => {
        setLeaf(newestUnder(siblings[to]));
        render();
        // Keep the keyboard on the switch: the same arrow, or the other at either end.
        const buttons = ui.messages.querySelectorAll(`li[data-message-id="${siblings[to]}"] .branch-switch button`);
        const [back, forth] = buttons;
        const [same, other] = to > index ? [forth, back] : [back, forth];
        (same && !same.disabled ? same : other)?.focus();
      };
      bar.append(
        element(
          "span",
          { class: "branch-switch", role: "group", "aria-label": `Versions of this ${noun}` },
          element("button", {
            type: "button",
            "data-step": "-1",
            "aria-label": `Previous version of this ${noun}`,
            disabled: index === 0,
            text: "‹",
            onclick: go(index - 1),
          }),
          element("span", { class: "branch-position", text: `${index + 1} / ${siblings.length}` }),
          element("button", {
            type: "button",
            "data-step": "1",
            "aria-label": `Next version of this ${noun}`,
            disabled: index === siblings.length - 1,
            text: "›",
            onclick: go(index + 1),
          }),
        ),
      );
    }
    if (message.role === "user") {
      bar.append(element("button", { type: "button", class: "edit", text: "Edit", onclick: () => startEdit(message) }));
    } else if (message.role === "assistant" && !inFlight(message)) {
      if (message.status === "failed" && message.job_id) {
        bar.append(
          element("button", {
            type: "button",
            class: "retry primary",
            text: "Retry",
            "aria-label": "Retry this answer",
            onclick: () => retry(message),
          }),
        );
      }
      bar.append(
        element("button", {
          type: "button",
          class: "regenerate",
          text: "Regenerate",
          "aria-label": "Regenerate this answer",
          onclick: () => regenerate(message),
        }),
      );
    }
    return bar;
  }

  function editForm(message) {
    const textarea = element("textarea", { "aria-label": "Edited message" });
    textarea.value = message.content;
    const form = element(
      "form",
      { class: "edit-form" },
      textarea,
      element(
        "div",
        {},
        element("button", { type: "submit", class: "primary", text: "Save and send" }),
        element("button", { type: "button", text: "Cancel", onclick: () => cancelEdit(message) }),
      ),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      submitEdit(message, textarea.value);
    });
    textarea.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      } else if (event.key === "Escape") {
        cancelEdit(message);
      }
    });
    queueMicrotask(() => textarea.focus());
    return form;
  }
  function startEdit(message) {
    state.editing = message.id;
    render();
  }
  function cancelEdit(message) {
    state.editing = null;
    render();
    ui.messages.querySelector(`li[data-message-id="${message.id}"] button.edit`)?.focus();
  }

  // --- queue places --------------------------------------------------------------
  // While an answer on screen waits in its queue, ask its job for its place every 2 s.
  function pollQueued(shown) {
    clearTimeout(state.pollTimer);
    const waiting = shown.filter((message) => message.status === "queued" && message.job_id);
    if (!waiting.length) return;
    state.pollTimer = setTimeout(async () => {
      const conversation = state.conversation;
      for (const message of waiting) {
        try {
          const job = await api(`/api/jobs/${message.job_id}/`);
          if (state.conversation !== conversation) return;
          message.queuePosition = job.queue_position;
          if (job.state !== "queued" && message.status === "queued" && message.seq === 0) {
            // Its events never came (it finished before this page listened): read it.
            state.loaded = false;
            loadMessages();
          }
        } catch {
          // the next round asks again
        }
      }
      for (const message of waiting) updateMessage(message.id);
      pollQueued(branch(state.leaf));
    }, 2000);
  }

  // --- writing -------------------------------------------------------------------
  function showError(text) {
    ui.error.textContent = text;
  }
  function announce(text) {
    ui.announcer.textContent = "";
    setTimeout(() => (ui.announcer.textContent = text), 50);
  }

  function updateCount() {
    const length = [...ui.input.value].length; // characters, as the server counts them
    const over = length > maxChars;
    ui.count.classList.toggle("over", over);
    ui.count.textContent = length > maxChars * 0.8 ? `${length.toLocaleString()} / ${maxChars.toLocaleString()} characters` : "";
    if (over) {
      showError(
        `Your message is ${length.toLocaleString()} characters long; the limit is ${maxChars.toLocaleString()}. Please shorten it.`,
      );
    } else if (ui.error.dataset.kind === "length" || ui.error.textContent.startsWith("Your message is")) {
      showError("");
    }
    ui.send.disabled = over;
    return !over;
  }
  ui.input.addEventListener("input", updateCount);
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!ui.send.hidden) ui.composer.requestSubmit();
    }
  });

  ui.composer.addEventListener("submit", async (event) => {
    event.preventDefault();
    const content = ui.input.value;
    if (!content.trim() || !updateCount() || ui.send.hidden) return;
    ui.send.disabled = true;
    showError("");
    try {
      if (!state.conversation) {
        const conversation = await api("/api/conversations/", { method: "POST", body: { model: ui.model.value } });
        resetConversation();
        state.conversation = conversation;
        history.pushState({ conversation: conversation.id }, "", `/c/${conversation.id}/`);
        ui.actions.hidden = false;
        connect();
      }
      const posted = await api(`/api/conversations/${state.conversation.id}/messages/`, {
        method: "POST",
        body: { content, model: ui.model.value, parent: state.leaf },
      });
      ui.input.value = "";
      accept(posted);
      state.conversation.title ||= content.trim().split("\n")[0].slice(0, 60);
      showTitle();
      loadConversations();
    } catch (error) {
      showError(error.message);
    } finally {
      ui.send.disabled = false;
      updateCount();
    }
  });

  // A 202's messages and job into the tree; the branch on screen ends at its answer.
  function accept(posted) {
    if (posted.user_message) merge(posted.user_message);
    const answer = merge(posted.assistant_message);
    answer.queuePosition = posted.job.queue_position;
    setLeaf(answer.id);
    render();
    ui.input.focus();
  }

  async function regenerate(message) {
    showError("");
    try {
      accept(
        await api(`/api/conversations/${state.conversation.id}/messages/${message.id}/regenerate/`, {
          method: "POST",
          body: { model: ui.model.value },
        }),
      );
      loadConversations();
    } catch (error) {
      showError(error.message);
    }
  }

  // A failed answer's job, run again in place: the same message streams anew.
  async function retry(message) {
    showError("");
    try {
      const job = await api(`/api/jobs/${message.job_id}/retry/`, { method: "POST" });
      Object.assign(message, { status: "queued", content: "", error: "", queuePosition: job.queue_position });
      render();
      ui.input.focus();
    } catch (error) {
      if (error.status === 409) loadMessages();
      else showError(error.message);
    }
  }

  async function submitEdit(message, content) {
    if (!content.trim()) return;
    if ([...content].length > maxChars) {
      showError(`The edited message is over the limit of ${maxChars.toLocaleString()} characters. Please shorten it.`);
      return;
    }
    showError("");
    try {
      const posted = await api(`/api/conversations/${state.conversation.id}/messages/`, {
        method: "POST",
        body: { content, model: ui.model.value, parent: message.parent_id },
      });
      state.editing = null;
      accept(posted);
      loadConversations();
    } catch (error) {
      showError(error.message);
    }
  }

  ui.stop.addEventListener("click", async () => {
    const answer = branch(state.leaf).at(-1);
    if (!inFlight(answer)) return;
    if (state.socket?.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify({ type: "stop", message_id: answer.id }));
    } else if (answer.job_id) {
      try {
        await api(`/api/jobs/${answer.job_id}/cancel/`, { method: "POST" });
      } catch (error) {
        if (error.status !== 409) showError(error.message);
      }
    }
    ui.input.focus();
  });

  // --- rename, delete, new chat ----------------------------------------------------------
  document.getElementById("rename").addEventListener("click", () => {
    ui.renameInput.value = state.conversation?.title ?? "";
    ui.renameForm.hidden = false;
    ui.actions.hidden = true;
    ui.title.hidden = true;
    ui.renameInput.focus();
  });
  function endRename() {
    ui.renameForm.hidden = true;
    ui.actions.hidden = !state.conversation;
    ui.title.hidden = false;
    document.getElementById("rename").focus();
  }
  document.getElementById("rename-cancel").addEventListener("click", endRename);
  ui.renameForm.addEventListener("keydown", (event) => event.key === "Escape" && endRename());
  ui.renameForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      state.conversation = await api(`/api/conversations/${state.conversation.id}/`, {
        method: "PATCH",
        body: { title: ui.renameInput.value },
      });
      showTitle();
      loadConversations();
    } catch (error) {
      showError(error.message);
    }
    endRename();
  });
  document.getElementById("delete").addEventListener("click", () => ui.deleteDialog.showModal());
  ui.deleteDialog.addEventListener("close", async () => {
    if (ui.deleteDialog.returnValue !== "delete" || !state.conversation) return;
    try {
      await api(`/api/conversations/${state.conversation.id}/`, { method: "DELETE" });
      sessionStorage.removeItem(`chat.leaf.${state.conversation.id}`);
      newChat({ push: true });
      announce("The conversation was deleted.");
    } catch (error) {
      showError(error.message);
    }
  });
  document.getElementById("new-chat").addEventListener("click", () => {
    newChat({ push: true });
    closeSidebar();
  });

  // --- the sidebar on phones -----------------------------------------------------------
  function closeSidebar() {
    ui.sidebar.classList.remove("open");
    ui.sidebarToggle.setAttribute("aria-expanded", "false");
  }
  ui.sidebarToggle.addEventListener("click", () => {
    const open = ui.sidebar.classList.toggle("open");
    ui.sidebarToggle.setAttribute("aria-expanded", String(open));
    if (open) ui.search.focus();
  });
  ui.sidebar.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && ui.sidebar.classList.contains("open")) {
      closeSidebar();
      ui.sidebarToggle.focus();
    }
  });

  window.addEventListener("popstate", () => {
    const match = window.location.pathname.match(/^\/c\/(\d+)\/$/);
    if (match) openConversation(Number(match[1]), { push: false });
    else newChat({ push: false });
  });

  // --- start ---------------------------------------------------------------------
  loadModels().then(() => {
    const id = Number(main.dataset.conversationId);
    if (id) openConversation(id, { push: false });
    else {
      loadConversations();
      render();
    }
  });
  setInterval(() => document.hidden || loadModels(), 15000);
}

// ---------------------------------------------------------------------------------
// The API keys page: copy a new key.

function initKeys() {
  const button = document.getElementById("copy-key");
  if (!button) return;
  const input = document.getElementById(button.dataset.copy);
  const status = document.getElementById("copy-status");
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(input.value);
      status.textContent = "Copied to the clipboard.";
    } catch {
      input.select();
      status.textContent = "Selected: press Ctrl+C (or ⌘C) to copy.";
    }
  });
}

const page = document.body.dataset.page;
if (page === "chat") initChat();
else if (page === "keys") initKeys();
