/**
 * The few DOM helpers the views share: building elements (`h`) and keeping a container's
 * children in a given order while reusing the nodes (`reconcile`), so a re-render moves
 * nothing that did not change and the scroll position and focus survive.
 */

type Attr = string | number | boolean | undefined | null;
type Handler = (event: Event) => void;
export type Child = Node | string | null | undefined | false;

/**
 * An element with attributes and children. `on<event>` keys take listeners; `false`,
 * `null` and `undefined` attributes are left out; `true` sets an empty attribute.
 */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, Attr | Handler> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (typeof value === "function") {
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else if (value !== false && value !== null && value !== undefined) {
      el.setAttribute(name, String(value));
    }
  }
  el.append(...children.filter((c): c is Node | string => c !== null && c !== undefined && c !== false));
  return el;
}

/** Makes `parent`'s children exactly `nodes`, in order, moving existing nodes rather than recreating them. */
export function reconcile(parent: Element, nodes: readonly Node[]): void {
  let cursor = parent.firstChild;
  for (const node of nodes) {
    if (node === cursor) {
      cursor = cursor.nextSibling;
      continue;
    }
    parent.insertBefore(node, cursor);
  }
  while (cursor !== null) {
    const next = cursor.nextSibling;
    parent.removeChild(cursor);
    cursor = next;
  }
}

/** Sets an attribute only when it changes (cheap re-renders, quiet mutation observers). */
export function setAttr(el: Element, name: string, value: string | undefined): void {
  if (value === undefined) {
    if (el.hasAttribute(name)) {
      el.removeAttribute(name);
    }
  } else if (el.getAttribute(name) !== value) {
    el.setAttribute(name, value);
  }
}

export function setText(el: Node, text: string): void {
  if (el.textContent !== text) {
    el.textContent = text;
  }
}

/** A stable colour per name, for avatars. */
export function avatarHue(name: string): number {
  let hash = 0;
  for (const ch of name) {
    hash = (hash * 31 + (ch.codePointAt(0) ?? 0)) >>> 0;
  }
  return hash % 360;
}

export function avatar(name: string, size: "small" | "large" = "small"): HTMLElement {
  const el = h("span", { class: `avatar avatar-${size}`, "aria-hidden": "true" }, initial(name));
  el.style.setProperty("--hue", String(avatarHue(name)));
  return el;
}

function initial(name: string): string {
  const first = [...name.trim()][0];
  return first === undefined ? "?" : first.toUpperCase();
}
