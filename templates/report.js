/* npu-advise report: draws the charts from the inline JSON specs (built by npu_advise.render.charts).
   When every chart has rendered, <body data-charts-rendered="N"> tells tests (and curious users)
   how many; a failure is recorded in data-charts-error and logged to the console. */
(function () {
  "use strict";
  // "copy" buttons next to the `npu-advise apply` commands
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest ? ev.target.closest("button.copy") : null;
    if (!btn) { return; }
    var text = btn.getAttribute("data-copy");
    var done = function (label) { btn.textContent = label; setTimeout(function () { btn.textContent = "copy"; }, 1500); };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(function () { done("copied"); }, function () { done("select it"); });
    } else {
      done("select it");
    }
  });
})();

(function () {
  "use strict";
  var body = document.body;
  function fail(message) {
    body.dataset.chartsError = message;
    console.error("npu-advise: " + message);
  }
  var specs = JSON.parse(document.getElementById("npa-chart-data").textContent);
  var config = JSON.parse(document.getElementById("npa-plotly-config").textContent);
  body.dataset.chartsExpected = String(specs.length);
  if (typeof Plotly === "undefined") {
    fail("plotly.js did not load; charts are unavailable");
    return;
  }
  var rendered = 0;
  Promise.all(specs.map(function (spec) {
    var el = document.getElementById(spec.id);
    if (!el) {
      return Promise.reject(new Error("no element for chart " + spec.id));
    }
    return Plotly.newPlot(el, spec.data, spec.layout, config).then(function () { rendered += 1; });
  })).then(function () {
    body.dataset.chartsRendered = String(rendered);
  }).catch(function (err) {
    fail(String(err && err.message ? err.message : err));
  });
})();
