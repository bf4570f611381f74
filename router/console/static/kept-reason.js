// A reason typed in a dialog is not lost when the session ended before it was sent. It is
// kept in this tab's sessionStorage (never sent anywhere without a session): the sign-in
// page says the action was not done, and back on the page the dialog opens again with the
// reason filled in. An action that went through leaves nothing kept.
(() => {
  const KEY = "tie-kept-reason";
  const here = location.pathname + location.search;
  const read = () => {
    try {
      return JSON.parse(sessionStorage.getItem(KEY));
    } catch {
      return null;
    }
  };
  const keep = (dialog, state) => {
    const reason = dialog.querySelector("textarea[name=reason]");
    if (!reason || !reason.value.trim()) return;
    const title = dialog.querySelector("h2").textContent;
    const kept = { page: here, dialog: dialog.id, title, reason: reason.value, state };
    sessionStorage.setItem(KEY, JSON.stringify(kept));
  };
  // Called by session-timeout.js when the session ends with a dialog open.
  window.tieKeepReasons = () => {
    document.querySelectorAll("dialog[open]").forEach((dialog) => keep(dialog, "signed-out"));
  };
  // Sent: kept until the next page says whether it was done (the sign-in page: it was not).
  document.addEventListener("submit", (event) => {
    const dialog = event.target.closest("dialog");
    if (dialog) keep(dialog, "sent");
  });

  const kept = read();
  if (!kept) return;
  const note = document.getElementById("kept-reason");
  if (document.querySelector("form.login") && note) {
    sessionStorage.setItem(KEY, JSON.stringify({ ...kept, state: "signed-out" }));
    note.textContent =
      `You were signed out, so "${kept.title}" was not done. Sign in to go back to the ` +
      "page: the reason you typed is kept in this browser tab.";
    note.hidden = false;
    return;
  }
  if (kept.state !== "signed-out") {
    sessionStorage.removeItem(KEY); // it was done, or the page says why not
    return;
  }
  if (kept.page !== here) return;
  sessionStorage.removeItem(KEY);
  const dialog = document.getElementById(kept.dialog);
  if (!dialog) return;
  dialog.querySelector("textarea[name=reason]").value = kept.reason;
  const notice = document.createElement("p");
  notice.className = "notice warn";
  notice.textContent =
    "You were signed out before this was done, so nothing was changed. " +
    "Your reason is filled in again: check it and try again.";
  dialog.querySelector("h2").after(notice);
  dialog.showModal();
})();
