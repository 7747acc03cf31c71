"""Reload once when Streamlit's lazily loaded code fails to arrive; fetch the Plotly code as the page opens.

Streamlit fetches each kind of element's code (PlotlyChart.js, ...) when the page first shows one; under heavy load
such a fetch can fail, and the page then shows errors ("Failed to fetch dynamically imported module", or "Cannot read
properties of undefined (reading 'default')") in place of every chart until a reload. `SCRIPT` reloads once, by
itself (the view lives in the URL and long work in the server's jobs: nothing is lost); a second failure within a
minute is left on the screen, so that a real outage does not loop.

It is installed twice: by `ChunkRetry` (serve.py) at the top of the page's HTML, before any chunk is fetched, and by
every rerun (ui.layout, for `streamlit run app.py`), after the first elements. `ChunkRetry` also adds `PRELOAD`,
which imports the Plotly chunk at once instead of when the first chart arrives: measured in a headless Chromium
on 2 cores, the Principal components page in a new tab drew its figure in 3.6-3.8 s instead of 4.2 s with
the browser's cache warm, 5.0 s instead of 7.2 s with it empty (one run each).
"""

from __future__ import annotations

from pathlib import Path

SCRIPT = """
<script>
(() => {
  if (window.__chunkRetry) return;
  window.__chunkRetry = true;
  const KEY = "locality-chunk-reload";
  const FAILED = ["Failed to fetch dynamically imported module", "error loading dynamically imported module",
                  "Importing a module script failed", "properties of undefined (reading 'default')"];
  const failed = (text) => FAILED.some((f) => String(text || "").includes(f));
  const reload = () => {
    const last = Number(sessionStorage.getItem(KEY) || 0);
    if (Date.now() - last < 60000) return;
    sessionStorage.setItem(KEY, String(Date.now()));
    location.reload();
  };
  window.addEventListener("vite:preloadError", (event) => { event.preventDefault(); reload(); });
  window.addEventListener("unhandledrejection", (event) => {
    if (failed(event.reason && event.reason.message) || failed(event.reason)) reload();
  });
  window.addEventListener("error", (event) => { if (failed(event.message)) reload(); });
  let pending = false;  // an error React caught shows as text in place of the element: look once a second, at
  //                       the text shown (innerText: textContent would read this very script's strings in the body)
  new MutationObserver(() => {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; if (document.body && failed(document.body.innerText)) reload(); }, 1000);
  }).observe(document.documentElement, {childList: true, subtree: true});
  const consoleError = console.error;
  console.error = (...args) => {  // React reports a failed lazy element here, after catching it
    if (args.some((a) => failed(a && a.message) || failed(a))) reload();
    consoleError.apply(console, args);
  };
})();
</script>
"""

LAZY_CHUNKS = ("PlotlyChart",)  # every page's figures (preloading DataFrame too changed nothing measurable)


def _preload() -> str:
    """A module script that imports Streamlit's Plotly chunk (4.7 MB, every page's figures) as soon as the page's
    HTML arrives, so that it is fetched and evaluated while the session connects and the script runs, not after
    the first chart element arrives (1.5 s into a fresh tab here). Empty when the chunk is not found. A failed
    import is left to the chart's own, later one (and to `SCRIPT`)."""
    import streamlit

    js = Path(streamlit.__file__).parent / "static" / "static" / "js"
    names = [found[0].name for kind in LAZY_CHUNKS if len(found := sorted(js.glob(f"{kind}.*.js"))) == 1]
    imports = "".join(f'import("./static/js/{name}").catch(() => {{}});' for name in names)
    return f'<script type="module">{imports}</script>' if imports else ""


PRELOAD = _preload()
SKIP = frozenset({"_stcore", "static", "media", "component", "app"})  # Streamlit's own routes (first segment)


class ChunkRetry:
    """Pure ASGI middleware: adds `SCRIPT` to the page's HTML (GET of a page address), nothing else."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        parts = path.strip("/").split("/")
        if scope["type"] != "http" or scope.get("method") != "GET" or parts[0] in SKIP or "." in parts[-1]:
            await self.app(scope, receive, send)
            return
        # the page itself: asked for uncompressed and as bytes (not sent straight from its file), so that the
        # script can go in
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"accept-encoding"]
        extensions = {k: v for k, v in scope.get("extensions", {}).items() if k != "http.response.pathsend"}
        scope = {**scope, "headers": headers, "extensions": extensions}
        start, body = {}, []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            content = b"".join(body)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            kind = dict((k.lower(), v) for k, v in headers).get(b"content-type", b"")
            if start.get("status") == 200 and kind.startswith(b"text/html") and b"<head>" in content:
                content = content.replace(b"<head>", b"<head>" + (SCRIPT + PRELOAD).encode(), 1)
            await send({**start, "headers": headers + [(b"content-length", str(len(content)).encode())]})
            await send({"type": "http.response.body", "body": content})

        await self.app(scope, receive, capture)
