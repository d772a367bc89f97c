// The dashboard's only script: an auto-refresh toggle, remembered per browser.
(function () {
  "use strict";
  var box = document.getElementById("auto-refresh");
  if (!box) return;
  var KEY = "unified_jobs.auto_refresh";
  var timer = null;
  function schedule() {
    if (timer) clearTimeout(timer);
    timer = box.checked ? setTimeout(function () { window.location.reload(); }, 5000) : null;
  }
  try { box.checked = window.localStorage.getItem(KEY) === "1"; } catch (e) { /* storage off */ }
  box.addEventListener("change", function () {
    try { window.localStorage.setItem(KEY, box.checked ? "1" : "0"); } catch (e) { /* storage off */ }
    schedule();
  });
  schedule();
})();
