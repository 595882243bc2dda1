"""A self-contained HTML report: metrics tables and pictures embedded as PNG data URIs."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from vaekit.io import write_text
from vaekit.viz.grid import png_bytes

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { padding: 3px 10px; border: 1px solid #ddd; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.8em 0; } figcaption { color: #555; font-size: 0.9em; } img { max-width: 100%; }
.note { color: #555; font-size: 0.9em; }
"""


@dataclass
class Report:
    title: str
    intro: str = ""
    blocks: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str) -> None:
        self.blocks.append(f"<p class='note'>{html.escape(text)}</p>")

    def table(self, rows: list[dict], columns: list[str] | None = None) -> None:
        if not rows:
            return
        columns = columns or list(rows[0])
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(_cell(r.get(c, "")) for c in columns) + "</tr>" for r in rows
        )
        self.blocks.append(f"<table><tr>{head}</tr>{body}</table>")

    def image(self, image, caption: str = "") -> None:
        data = base64.b64encode(png_bytes(image)).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        alt = html.escape(caption)
        self.blocks.append(f"<figure><img src='data:image/png;base64,{data}' alt='{alt}'>{cap}</figure>")

    def render(self) -> str:
        intro = f"<p>{html.escape(self.intro)}</p>" if self.intro else ""
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>{intro}"
                + "\n".join(self.blocks) + "</body></html>\n")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_text(path, self.render())
        return path


def _cell(value) -> str:
    if isinstance(value, float):
        return f"<td class='num'>{value:.4g}</td>" if abs(value) < 1e-3 and value != 0 else \
            f"<td class='num'>{value:,.3f}</td>"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"<td class='num'>{value:,}</td>"
    return f"<td>{html.escape(str(value))}</td>"
