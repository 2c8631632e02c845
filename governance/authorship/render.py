"""A report as HTML (Jinja2, self-contained: no CDN, thumbnails inline) or PDF (fpdf2, pure
Python: no browser). ``base`` prefixes the routes a report links to (a gateway's URL).

The PDF embeds DejaVu Sans (``fonts/``, from Debian's fonts-dejavu-core, Bitstream Vera licence
in ``fonts/LICENSE``), subset to the characters used: prompts in Greek, Cyrillic, Armenian,
Georgian, Hebrew, Arabic and the other scripts DejaVu covers print as written, shaped by
HarfBuzz (``uharfbuzz``) so right-to-left runs read in order. It has no CJK
glyphs; fpdf2 leaves a character no face holds out of the text (and logs that it did).
"""

from __future__ import annotations

import base64
import io
from importlib.resources import files
from typing import Any

from fpdf import FPDF
from jinja2 import Environment, PackageLoader, select_autoescape

_ENV = Environment(
    loader=PackageLoader("governance.authorship", "templates"),
    autoescape=select_autoescape(["html"]),
)


def to_html(report: dict[str, Any], base: str = "") -> str:
    return _ENV.get_template("report.html").render(r=report, base=base)


FONT = "DejaVuSans"
_FACES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf", "I": "DejaVuSans-Oblique.ttf"}


class _Pdf(FPDF):
    def __init__(self) -> None:
        super().__init__(format="A4")
        fonts = files("governance.authorship") / "fonts"
        for style, name in _FACES.items():
            self.add_font(FONT, style, str(fonts / name))
        self.set_text_shaping(True)  # HarfBuzz: Arabic joined, right-to-left runs in order

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT, "I", 8)
        self.cell(0, 8, f"Custody authorship report – page {self.page_no()}", align="C")


def to_pdf(report: dict[str, Any], base: str = "") -> bytes:
    pdf = _Pdf()
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    w = pdf.epw

    def heading(text: str) -> None:
        pdf.ln(3)
        pdf.set_font(FONT, "B", 13)
        pdf.multi_cell(w, 7, str(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(FONT, "", 9)

    def para(text: str, style: str = "", link: str = "") -> None:
        pdf.set_font(FONT, style, 9)
        pdf.multi_cell(w, 4.5, str(text), new_x="LMARGIN", new_y="NEXT", link=link)

    pdf.set_font(FONT, "B", 16)
    pdf.cell(w, 10, "Authorship report", new_x="LMARGIN", new_y="NEXT")
    para(
        f"Session {report['session']}"
        + (f' ("{report["title"]}")' if report.get("title") else "")
        + f" of tenant {report['tenant']}, owner {report['owner']}. Built from"
        f" {report['entries']} ledger entries of the session (ledger size"
        f" {report['ledger_size']}); content {report['content']}. Each statement names its ledger"
        " entries and the route of their inclusion proofs."
    )

    heading(
        f"Chronological record ({report['human_acts']} human acts, {report['ai_acts']} AI acts)"
    )
    for act in report["acts"]:
        who = "Human" if act["who"] == "human" else "AI"
        para(f"{act['n']}. [{who}: {act['kind']}] {act['actor']}", "B")
        para(act["text"])
        for e in act["entries"]:
            para(
                f"    ledger entry #{e['index']} {e['type']} - proof {e['proof']}",
                "I",
                base + e["proof"] if base else "",
            )

    heading("Versions")
    for v in report["versions"]:
        line = (
            f"{v['version']} ({v['kind']}, parent {v['parent'] or '-'}"
            f"{', by ' + v['model'] if v['model'] else ''}) - entry #{v['entry']['index']}"
            f" {v['entry']['type']}{'  [final]' if v['version'] == report['final_version'] else ''}"
        )
        para(line)
        if v.get("thumbnail"):
            data = base64.b64decode(v["thumbnail"].split(",", 1)[1])
            if pdf.will_page_break(32):
                pdf.add_page()
            pdf.image(io.BytesIO(data), h=28)

    overview = report.get("attribution")
    if overview:
        heading(f"Attribution of the final version {overview['version']}")
        for k, c in overview["counts"].items():
            para(
                f"{k.replace('_', ' ')}: {c} of {overview['pixels']} pixels"
                f" ({overview['percent'][k]}%)"
            )
        para("Method: " + overview["method"], "I")

    heading("AI systems used")
    for s in report["ai_systems"] or [
        {"model": "None recorded.", "model_versions": [], "turns": 0}
    ]:
        versions = (
            f" (model version {', '.join(s['model_versions'])})" if s["model_versions"] else ""
        )
        para(f"- {s['model']}{versions}: {s['turns']} turn(s)")

    heading("Suggested wording for the Copyright Office application")
    draft = report["draft"]
    para(draft["notice"], "B")
    para("Author Created (draft): " + draft["author_created"])
    para("Material Excluded (draft): " + draft["material_excluded"])
    return bytes(pdf.output())
