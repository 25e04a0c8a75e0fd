/* wapi-guard status page.
 * Every fragment is rendered (and escaped) by the server; this script only swaps the fragments that
 * /status/api/events says changed, ticks relative times, and says so when the data may be stale.
 * No framework, no build step.
 */
(function () {
  "use strict";

  var root = document.documentElement;
  var lang = root.getAttribute("data-lang") || "pt-BR";
  var refresh = Number(root.getAttribute("data-refresh")) || 2000;
  var staleAfter = refresh * 3 + 2000;
  var texts = {};
  try {
    texts = JSON.parse(document.getElementById("i18n").textContent);
  } catch (ignored) {
    texts = {};
  }
  var live = document.getElementById("live");
  var banner = document.getElementById("banner");
  var skew = 0; // server clock minus this browser's clock, in ms
  var lastEvent = Date.now();
  var source = null;
  var retryTimer = null;

  function unit(key, n) {
    return (texts["unit_" + key] || "{n}").replace("{n}", String(n));
  }

  function duration(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    if (s < 60) return unit("s", s);
    if (s < 3600) return unit("min", Math.floor(s / 60));
    if (s < 86400) return unit("h", Math.floor(s / 3600));
    return unit("d", Math.floor(s / 86400));
  }

  function ago(seconds) {
    if (seconds < 1) return texts.unit_now || "";
    return (texts.unit_ago || "{d}").replace("{d}", duration(seconds));
  }

  function state() {
    return live.getAttribute("data-live");
  }

  function setLive(next, message) {
    var bad = next === "stale" || next === "unavailable";
    if (state() === next && !bad) return;
    live.setAttribute("data-live", next);
    live.textContent = texts["live_" + next] || next;
    document.body.classList.toggle("stale", bad);
    if (bad) {
      banner.textContent = message || texts["live_" + next] || "";
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
  }

  function tick() {
    var now = Date.now() + skew;
    var nodes = document.querySelectorAll("time[data-rel]");
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i];
      var at = Date.parse(node.getAttribute("datetime"));
      if (isNaN(at)) continue;
      var seconds = (now - at) / 1000;
      var text = node.getAttribute("data-rel") === "age" ? duration(seconds) : ago(seconds);
      if (node.textContent !== text) node.textContent = text;
      if (!node.hasAttribute("data-local")) {
        node.title = new Date(at).toLocaleString(lang);
        node.setAttribute("data-local", "");
      }
    }
    if (Date.now() - lastEvent > staleAfter && state() !== "stale") setLive("stale");
  }

  function parse(event) {
    try {
      return JSON.parse(event.data);
    } catch (ignored) {
      return null;
    }
  }

  function beat(data) {
    lastEvent = Date.now();
    if (!data || !data.generated_at) return;
    var server = Date.parse(data.generated_at);
    if (isNaN(server)) return;
    skew = server - Date.now();
    var updated = document.querySelector("#updated time");
    if (updated) {
      updated.setAttribute("datetime", data.generated_at);
      updated.removeAttribute("data-local");
    }
  }

  function onSnapshot(event) {
    var data = parse(event);
    if (!data) return;
    beat(data);
    var html = data.html || {};
    for (var id in html) {
      if (!Object.prototype.hasOwnProperty.call(html, id)) continue;
      var target = document.getElementById(id);
      // An open send policy form is being edited: its card waits (the next snapshot brings it).
      if (target && target.querySelector("details[data-role=policy-form][open]")) continue;
      if (target) target.innerHTML = html[id];
    }
    setLive("live");
    tick();
  }

  function connect() {
    if (!window.EventSource) return;
    source = new EventSource(root.getAttribute("data-events"));
    source.onopen = function () {
      lastEvent = Date.now();
    };
    source.addEventListener("snapshot", onSnapshot);
    source.addEventListener("ping", function (event) {
      beat(parse(event));
      setLive("live");
      tick();
    });
    source.addEventListener("unavailable", function (event) {
      var data = parse(event);
      lastEvent = Date.now();
      setLive("unavailable", data && data.message);
    });
    source.onerror = function () {
      if (state() !== "stale") setLive("reconnecting");
      if (source && source.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. an HTTP error): try again ourselves, gently.
        source = null;
        clearTimeout(retryTimer);
        retryTimer = setTimeout(connect, 3000);
      }
    };
  }

  setInterval(tick, 1000);
  tick();
  connect();
})();
