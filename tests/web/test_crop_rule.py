"""The page's crop preview follows the server's own rule: the JS module against plan.py and media.py."""

from __future__ import annotations

from ltxserve.engine.media import center_crop_to_aspect
from ltxserve.engine.plan import RESOLUTIONS, output_size

# Image sizes around every decision boundary: exact aspects, 4:3 and 3:4 (equally far from 1:1 and 16:9 on a log
# scale), tall, wide, odd sides, tiny.
SIZES = [(1280, 720), (720, 1280), (500, 500), (640, 480), (480, 640), (4000, 3000), (3000, 4000), (1000, 563),
         (563, 1000), (1920, 1081), (333, 777), (1200, 1199), (7, 5), (2560, 1080), (1080, 2560), (801, 601)]


def test_js_crop_rule_matches_the_server(tiny_server, open_tab):
    tab = open_tab(tiny_server.base_url + "/")
    cases = [(res, aspect, w, h) for res in RESOLUTIONS for aspect in ("auto", "16:9", "9:16", "1:1") for w, h in SIZES]
    got = tab.page.evaluate("""async (cases) => {
        const crop = await import("./web/js/crop.js");
        return {
            table: crop.RESOLUTIONS,
            results: cases.map(([res, aspect, w, h]) => {
                const [ow, oh] = crop.outputSize(res, aspect, w, h);
                const c = crop.centreCrop(w, h, ow, oh);
                return [ow, oh, c.x, c.y, c.x + c.w, c.y + c.h];
            }),
        };
    }""", cases)
    assert got["table"] == {r: {a: list(s) for a, s in t.items()} for r, t in RESOLUTIONS.items()}
    for (res, aspect, w, h), js in zip(cases, got["results"]):
        ow, oh = output_size(res, aspect, (w, h))
        cropped = center_crop_to_aspect(_Recorder(w, h), ow, oh)
        assert js == [ow, oh, *cropped.box], (res, aspect, w, h)
    tab.check_console()


class _Recorder:
    """Stands in for a PIL image: records the box center_crop_to_aspect asks for."""

    def __init__(self, w: int, h: int):
        self.size = (w, h)
        self.box = None

    def crop(self, box):
        self.box = tuple(box)
        return self
