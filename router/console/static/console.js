// Opens and closes the console's <dialog> elements (no inline script: the CSP forbids it).
document.addEventListener("click", (event) => {
  const opener = event.target.closest("[data-dialog]");
  if (opener) {
    const dialog = document.getElementById(opener.dataset.dialog);
    if (dialog) dialog.showModal();
    return;
  }
  const closer = event.target.closest("[data-close]");
  if (closer) closer.closest("dialog").close();
});

// A refresh (data-poll) waits while a dialog is open: it would replace the dialog and the
// reason being typed in it. It stops while its "Refresh every 2 seconds" box is unticked
// (WCAG 2.2.2: content that updates itself can be paused).
document.addEventListener("htmx:beforeRequest", (event) => {
  if (!event.detail.elt.matches("[data-poll]")) return;
  const follow = event.detail.elt.querySelector("input[type=checkbox]");
  if (document.querySelector("dialog[open]") || (follow && !follow.checked)) {
    event.preventDefault();
  }
});

// A refresh is not the user's activity and says so, or an open page would keep its session
// from ever ending when idle (router/api/security.py, BACKGROUND_HEADER).
document.addEventListener("htmx:configRequest", (event) => {
  if (event.detail.elt.matches("[data-poll]")) {
    event.detail.headers["X-Background-Refresh"] = "true";
  }
});

// An "Older …" link (in a .pager row) replaces its own row with older rows: focus moves on
// to the first of them, or a keyboard user would be sent back to the top of the page.
let paged = null;
document.addEventListener("htmx:beforeRequest", (event) => {
  const pager = event.detail.elt.closest(".pager");
  if (pager) paged = { before: pager.previousElementSibling, rows: pager.parentElement };
});
document.addEventListener("htmx:afterSettle", () => {
  if (!paged) return;
  const { before, rows } = paged;
  paged = null;
  const first = before ? before.nextElementSibling : rows.firstElementChild;
  if (!first) return;
  const target = first.querySelector("a, button") || first.cells[0];
  if (!target.matches("a, button")) target.tabIndex = -1;
  target.focus();
});

// A refresh replaces the deliveries table silently: what changed in it is said aloud
// (#deliveries-news, a polite live region), so a screen reader user hears "sent".
let before = null;
const statuses = (table) =>
  new Map(
    [...table.querySelectorAll("tr[data-delivery]")].map((row) => [
      row.dataset.delivery,
      row.querySelector(".status").textContent,
    ]),
  );
document.addEventListener("htmx:beforeSwap", (event) => {
  if (event.detail.target.id === "deliveries") before = statuses(event.detail.target);
});
document.addEventListener("htmx:afterSettle", () => {
  const table = document.getElementById("deliveries");
  const news = document.getElementById("deliveries-news");
  if (!before || !table || !news) return;
  const changed = [...statuses(table)].filter(([id, status]) => before.get(id) !== status);
  before = null;
  if (changed.length) news.textContent = changed.map(([id, s]) => `Delivery ${id}: ${s}.`).join(" ");
});

// A refused form comes back with its dialog marked to open again, with what was typed.
document.addEventListener("DOMContentLoaded", () => {
  const refused = document.querySelector("dialog[data-reopen]");
  if (refused) refused.showModal();
});

// A page shown once (a new API token) replaces its own history entry with the page it
// leads back to: reloading it, or coming back to it, asks for that page, not the form again.
document.addEventListener("DOMContentLoaded", () => {
  const once = document.querySelector("[data-shown-once]");
  if (once) history.replaceState(null, "", once.dataset.shownOnce);
});
