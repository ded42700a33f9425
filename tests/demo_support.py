"""Shared helpers of the demo tests: the fitted tiny demo model and a small HTML reader."""

from __future__ import annotations

from html.parser import HTMLParser

VOID = {"br", "img", "input", "meta", "link", "hr"}  # SVG elements are self-closed (<line/>) when empty


def demo_model_once(tmp_path_factory):
    """The demo's default model (tiny Qwen2.5-VL fitted on the example problems), built once per session.

    Built into a fixed folder of the session's temp dir, so every test module's fixture reuses the same build;
    with ``ECHOVL_CACHE_DIR`` set, the model cached there (as the app uses it) is reused across sessions.
    """
    import os

    from echovl.demo.examples import demo_model_dir

    if os.environ.get("ECHOVL_CACHE_DIR"):
        return demo_model_dir()
    return demo_model_dir(tmp_path_factory.getbasetemp() / "echovl-demo-cache")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[dict] = []
        self.elements: list[dict] = []

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "classes": set(dict(attrs).get("class", "").split())}
        self.elements.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "classes": set(dict(attrs).get("class", "").split())}
        self.elements.append(element)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i]["tag"] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        for element in self.stack:
            element["text"] += data


def elements(html: str, cls: str | None = None, tag: str | None = None) -> list[dict]:
    """Elements of ``html`` (with their full text content), filtered by class and/or tag."""
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return [e for e in collector.elements if (cls is None or cls in e["classes"]) and (tag is None or e["tag"] == tag)]
