// txwatch review: bulk selection and polling for new alerts. No framework, no inline script.
"use strict";

function setupSelection() {
  const all = document.getElementById("select-all");
  const boxes = Array.from(document.querySelectorAll('input[name="tid"]'));
  const count = document.getElementById("selected-count");
  const actions = Array.from(document.querySelectorAll(".bulk-action"));
  if (!count) return;
  const update = () => {
    const n = boxes.filter((b) => b.checked).length;
    count.textContent = n + " selected";
    actions.forEach((a) => { a.disabled = n === 0; });
    if (all) all.checked = n > 0 && n === boxes.length;
  };
  boxes.forEach((b) => b.addEventListener("change", update));
  if (all) all.addEventListener("change", () => {
    boxes.forEach((b) => { b.checked = all.checked; });
    update();
  });
  update();
}

function setupUpdates() {
  const box = document.getElementById("updates");
  if (!box) return;
  const text = document.getElementById("updates-text");
  const after = box.dataset.after;
  const base = box.dataset.url;
  const poll = async () => {
    try {
      const sep = base.includes("?") ? "&" : "?";
      const r = await fetch(base + sep + "after=" + encodeURIComponent(after),
                            { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (r.ok) {
        const data = await r.json();
        if (data.new_alerts > 0) {
          const more = data.new_alerts >= 1000 ? "1000+" : String(data.new_alerts);
          text.textContent = more + " new alert" + (data.new_alerts === 1 ? "" : "s") + " since this page loaded.";
          box.hidden = false;
        }
      } else if (r.status === 401) {
        text.textContent = "Session expired: reload to log in again.";
        box.hidden = false;
        return;
      }
    } catch (e) { /* network hiccup: try again next time */ }
    window.setTimeout(poll, Number(box.dataset.interval || 5000));
  };
  window.setTimeout(poll, Number(box.dataset.interval || 5000));
}

document.addEventListener("DOMContentLoaded", () => {
  setupSelection();
  setupUpdates();
});
