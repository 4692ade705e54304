// The one script of the dashboard: the site page's live log over Server-Sent Events.
// Without it the page still shows the last 200 lines.
(function () {
  var log = document.getElementById("log");
  if (!log || !window.EventSource) return;
  var state = document.getElementById("live-state");
  function fmt(t) { return new Date(t).toISOString().slice(0, 16).replace("T", " ") + " UTC"; }
  function open() {
    var es = new EventSource(log.getAttribute("data-live"));
    es.onopen = function () { if (state) state.textContent = "Live: new lines appear below as they come."; };
    es.onmessage = function (e) {
      try {
        var l = JSON.parse(e.data);
        var line = fmt(l.time) + " " + l.service + (l.stream ? "/" + l.stream : "") + " " + l.text + "\n";
        var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.appendChild(document.createTextNode(line));
        if (atEnd) log.scrollTop = log.scrollHeight;
      } catch (err) { /* not a line */ }
    };
    // A stream ends after a minute; EventSource reconnects with Last-Event-ID by itself.
  }
  open();
})();
