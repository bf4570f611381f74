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
// reason being typed in it.
document.addEventListener("htmx:beforeRequest", (event) => {
  if (event.detail.elt.matches("[data-poll]") && document.querySelector("dialog[open]")) {
    event.preventDefault();
  }
});
