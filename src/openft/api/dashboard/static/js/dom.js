// Small DOM helpers. Every server-provided string goes in through textContent (never innerHTML).

/** Build an element: h("a", {href: "#/x", class: "btn"}, "text", childNode, …). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of `node` with `children` (strings become text nodes). */
export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** "3 min 20 s" style duration. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** Unix seconds → local time, or "—". */
export function time(unix) {
  return unix ? new Date(unix * 1000).toLocaleString() : "—";
}

/** "in 2 min 5 s" from a unix timestamp in the future (for ETAs). */
export function fromNow(unix) {
  if (!unix) return "—";
  const left = unix - Date.now() / 1000;
  return left <= 0 ? "any moment" : `in ${duration(left)}`;
}

export function number(value, digits = 4) {
  return typeof value === "number" ? value.toFixed(digits) : "—";
}

/** A status pill whose colour comes from the status name (CSS class status-<name>). */
export function statusBadge(status) {
  return h("span", { class: `status status-${status}`, "data-status": status }, status);
}

export function errorBox(message) {
  return h("p", { class: "error", role: "alert" }, message);
}
