/**
 * The interface's few icons as inline SVG, so they look the same everywhere (emoji fonts are
 * not installed on every system, headless browsers included) and take the text colour.
 */

const SVG = "http://www.w3.org/2000/svg";

function icon(viewBox: string, paths: string[], className: string): SVGSVGElement {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", viewBox);
  svg.setAttribute("class", className);
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  for (const d of paths) {
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}

/** A speech bubble: the brand mark and the empty chat pane. */
export function chatIcon(className = "icon"): SVGSVGElement {
  return icon(
    "0 0 24 24",
    ["M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-4.5 3.6A.9.9 0 0 1 3 20.9V6a2 2 0 0 1 1-2Z", "M7 9h10M7 13h6"],
    className,
  );
}

/** A clock: a message on its way, not yet stored. */
export function clockIcon(className = "icon"): SVGSVGElement {
  return icon("0 0 16 16", ["M8 1.75a6.25 6.25 0 1 0 0 12.5 6.25 6.25 0 0 0 0-12.5Z", "M8 4.5V8l2.5 1.5"], className);
}

const BELL = "M6 8a6 6 0 1 1 12 0c0 5 2 6.5 2 6.5H4S6 13 6 8Z";
const BELL_CLAPPER = "M10.3 18a1.94 1.94 0 0 0 3.4 0";

/** A bell: notifications on (the mute button of a chat that is not muted). */
export function bellIcon(className = "icon"): SVGSVGElement {
  return icon("0 0 24 24", [BELL, BELL_CLAPPER], className);
}

/** A struck-through bell: a muted chat. */
export function bellOffIcon(className = "icon"): SVGSVGElement {
  return icon("0 0 24 24", [BELL, BELL_CLAPPER, "M3 3l18 18"], className);
}
