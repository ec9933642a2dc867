"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands on fd 3,
replies on fd 4, each a JSON message ending in NUL), so no port is opened and nothing beyond the standard
library is needed.

    python tests/browser.py PAGE_OR_URL OUT.png [WIDTH HEIGHT]   # a screenshot of a page once its models drew
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
    # WebGL without a GPU: ANGLE on SwiftShader (software), which Chromium asks to be allowed explicitly
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class Browser:
    def __init__(self, width: int = 1280, height: int = 900, binary: str | None = None):
        self.profile = tempfile.mkdtemp(prefix="dream3d-chromium-")
        to_child, self._w = os.pipe()  # our commands -> its fd 3
        self._r, from_child = os.pipe()  # its fd 4 -> our replies
        self.proc = subprocess.Popen(
            [
                binary or find_chromium(),
                *FLAGS,
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=lambda: (os.dup2(to_child, 3), os.dup2(from_child, 4)),
        )
        os.close(to_child)
        os.close(from_child)
        self._buf, self._id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" not in self._buf:
                if time.time() > deadline:
                    raise TimeoutError(f"no reply to {method} in {timeout} s")
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str, timeout: float = 60):
        """The value of a JavaScript expression (awaited if it is a promise)."""
        r = self.call("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        deadline = time.time() + 30
        while self.evaluate("document.readyState") != "complete":
            if time.time() > deadline:
                raise TimeoutError(f"{url} did not load")
            time.sleep(0.1)

    def screenshot(self, full_page: bool = False) -> bytes:
        params = {"format": "png"}
        if full_page:
            w, h = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params |= {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}}
        return base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        shutil.rmtree(self.profile, ignore_errors=True)


# Resolves when every <model-viewer> on the page has loaded its model (or after `ms`), then lets it draw.
WAIT_FOR_MODELS = """(async (ms) => {
  const end = Date.now() + ms;
  const views = () => [...document.querySelectorAll('model-viewer')];
  while (Date.now() < end && !(views().length && views().every(v => v.loaded && v.modelIsVisible))) await new Promise(r => setTimeout(r, 200));
  await new Promise(r => setTimeout(r, 1500));
  return views().map(v => v.loaded && v.modelIsVisible);
})(%d)"""

# Each card's model-viewer box (page pixels) with the card's name, for cropping screenshots.
CARD_BOXES = """[...document.querySelectorAll('.card')].map(c => {
  const v = c.querySelector('model-viewer'), r = v ? v.getBoundingClientRect() : null;
  return {name: c.dataset.name, prompt: c.dataset.prompt, box: r && [r.x, r.y, r.width, r.height]};
})"""


def page_screenshot(url: str, out: str, width: int = 1280, height: int = 900, wait_ms: int = 120000) -> list:
    b = Browser(width, height)
    try:
        b.open(url)
        loaded = b.evaluate(WAIT_FOR_MODELS % wait_ms, timeout=wait_ms / 1000 + 30)
        with open(out, "wb") as fh:
            fh.write(b.screenshot(full_page=True))
        return loaded
    finally:
        b.close()


if __name__ == "__main__":
    page, png = sys.argv[1], sys.argv[2]
    size = [int(x) for x in sys.argv[3:5]] or [1280, 900]
    url = page if "://" in page else "file://" + os.path.abspath(page)
    print("models loaded:", page_screenshot(url, png, *size))
