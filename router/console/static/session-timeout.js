// Warns before the console's session ends (WCAG 2.2.1 Timing Adjustable): before the idle
// limit, with "Stay signed in"; before the absolute limit, which nothing extends, with when.
// The server says how many seconds are left (the body's data-*, and X-Session-Idle-Left on
// htmx answers), so a browser clock set wrong still warns on time.
(() => {
  const body = document.body;
  const idleDialog = document.getElementById("session-idle");
  const lifeDialog = document.getElementById("session-life");
  if (!body.dataset.idleLeft || !idleDialog || !lifeDialog) return;
  const seconds = (name) => Number(body.dataset[name]) * 1000;
  const lifeEnds = Date.now() + seconds("lifeLeft");
  let idleEnds = Date.now() + seconds("idleLeft");
  let lifeWarned = false;
  let returnFocus = null;

  const plural = (n, unit) => `${n} ${unit}${n === 1 ? "" : "s"}`;
  const shown = (ms) => {
    const s = Math.max(0, Math.ceil(ms / 1000));
    const minutes = Math.floor(s / 60);
    const rest = plural(s % 60, "second");
    return minutes ? `${plural(minutes, "minute")} ${rest}` : rest;
  };
  // What a screen reader hears: whole minutes, then every 15 seconds, never each second.
  const spoken = (ms) => {
    const s = Math.max(0, Math.ceil(ms / 1000));
    return s > 45 ? plural(Math.ceil(s / 60), "minute") : plural(Math.ceil(s / 15) * 15, "second");
  };

  const open = (dialog) => {
    returnFocus = document.activeElement;
    dialog.showModal();
  };
  const close = (dialog) => {
    dialog.close();
    if (returnFocus && returnFocus.isConnected) returnFocus.focus();
  };

  // The session ended: whatever was typed in an open dialog is kept (kept-reason.js), and
  // the sign-in page leads back here (or straight back, if another tab kept it alive).
  const ended = () => {
    clearInterval(ticking);
    if (window.tieKeepReasons) window.tieKeepReasons();
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
  };

  const tick = () => {
    const now = Date.now();
    if (now >= Math.min(idleEnds, lifeEnds)) return ended();
    if (idleDialog.open) {
      idleDialog.querySelector("[data-countdown]").textContent = shown(idleEnds - now);
      const said = `You will be signed out in ${spoken(idleEnds - now)}.`;
      const region = document.getElementById("session-idle-said");
      if (region.textContent !== said) region.textContent = said;
    } else if (idleEnds < lifeEnds && now >= idleEnds - seconds("warnIdle")) {
      document.getElementById("session-idle-said").textContent =
        `You will be signed out in ${spoken(idleEnds - now)}.`;
      idleDialog.querySelector("[data-countdown]").textContent = shown(idleEnds - now);
      open(idleDialog);
    } else if (!lifeWarned && now >= lifeEnds - seconds("warnLife")) {
      lifeWarned = true;
      lifeDialog.querySelector("[data-ends]").textContent = new Date(lifeEnds).toLocaleTimeString(
        [],
        { hour: "2-digit", minute: "2-digit" },
      );
      lifeDialog.querySelector("[data-countdown]").textContent = `in ${spoken(lifeEnds - now)}`;
      open(lifeDialog);
    }
  };
  const ticking = setInterval(tick, 1000);

  const stay = async () => {
    const csrf = JSON.parse(body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"];
    const answer = await fetch("/session/keep-alive", {
      method: "POST",
      headers: { "X-CSRF-Token": csrf },
      redirect: "manual",
    });
    if (!answer.ok) return ended();
    idleEnds = Date.now() + (await answer.json())["idle-left"] * 1000;
    close(idleDialog);
  };

  idleDialog.addEventListener("cancel", (event) => {
    event.preventDefault(); // Escape means "stay", as on GOV.UK's timeout warning
    stay();
  });
  document.addEventListener("click", (event) => {
    if (event.target.closest("[data-session-stay]")) stay();
    if (event.target.closest("[data-session-sign-out]")) {
      document.querySelector("form.who").requestSubmit();
    }
  });
  // A request of the user's moves the idle end; a background refresh answers it unchanged.
  document.addEventListener("htmx:afterRequest", (event) => {
    const left = event.detail.xhr.getResponseHeader("X-Session-Idle-Left");
    if (left !== null) idleEnds = Date.now() + Number(left) * 1000;
  });
})();
