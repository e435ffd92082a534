"""Charts as inline SVG, drawn on the server: no JavaScript and nothing fetched, so the admin's
statistics pages work offline.

Three kinds, enough for those pages: bars stacked over time (`stacked_bars`), lines over time
(`lines`) and one bar per category (`category_bars`). Each returns SVG markup that scales to
the width of its box; colours of text and grid come from the admin's CSS variables (light and
dark themes), and hovering a bar or point shows its exact figures (an SVG <title>).
"""

import math
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 230
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 30, 26  # room for y labels, legend, x labels


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    values: list  # one number (or None: no value) per time bucket


def stacked_bars(times: list[str], ticks: list[str], series: list[Series], *, title: str) -> SafeString:
    """One bar per time bucket, `series` stacked bottom up. `times` name the buckets (tooltips),
    `ticks` are the x axis labels ("" for none)."""
    totals = [sum(s.values[i] or 0 for s in series) for i in range(len(times))]
    top, parts = _nice_top(max(totals, default=0)), []
    slot = (WIDTH - LEFT - RIGHT) / max(len(times), 1)
    for i, when in enumerate(times):
        base = 0.0
        figures = ", ".join(f"{s.label} {_number(s.values[i])}" for s in series if s.values[i])
        tip = f"{when}: {_number(totals[i])} ({figures})" if totals[i] else f"{when}: none"
        bars = []
        for s in series:
            value = s.values[i] or 0
            if value:
                y, h = _y(base + value, top), _y(base, top) - _y(base + value, top)
                bars.append(_rect(LEFT + i * slot + slot * 0.1, y, slot * 0.8, max(h, 0.5), s.colour))
                base += value
        parts.append(f"<g><title>{escape(tip)}</title>{''.join(bars)}{_hover_area(i, slot)}</g>")
    return _svg(title, series, _grid(top, _number) + _ticks(ticks, slot) + parts)


def lines(times: list[str], ticks: list[str], series: list[Series], *, title: str, percent: bool = False) -> SafeString:
    """One line per series over the time buckets; a missing value (None) breaks its line.
    `percent`: values are fractions, drawn on a fixed 0-100% scale."""
    fmt = _percent if percent else _number
    peak = max((v for s in series for v in s.values if v is not None), default=0)
    top, parts = (1.0 if percent else _nice_top(peak)), []
    slot = (WIDTH - LEFT - RIGHT) / max(len(times), 1)
    for s in series:
        run: list[str] = []
        for i, value in enumerate([*s.values, None]):
            if value is not None:
                run.append(f"{LEFT + (i + 0.5) * slot:.1f},{_y(value, top):.1f}")
            elif run:
                points = " ".join(run)
                parts.append(f'<polyline points="{points}" fill="none" stroke="{s.colour}" stroke-width="2"/>')
                run = []
        for i, value in enumerate(s.values):
            if value is not None:
                tip = escape(f"{times[i]}: {s.label} {fmt(value)}")
                x, y = LEFT + (i + 0.5) * slot, _y(value, top)
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.colour}"><title>{tip}</title></circle>')
    return _svg(title, series, _grid(top, fmt) + _ticks(ticks, slot) + parts)


def category_bars(items: list[tuple[str, int, str]], *, title: str, total: int | None = None) -> SafeString:
    """One horizontal bar per (label, count, colour), with its count and its share of `total`
    (by default, of all the counts)."""
    total = (sum(count for _, count, _ in items) if total is None else total) or 1
    longest = max((count for _, count, _ in items), default=0) or 1
    top, row = 8, (HEIGHT - 16) / max(len(items), 1)  # no legend: rows from the top
    label_width, width = 150, WIDTH - 150 - 110
    parts = []
    for i, (label, count, colour) in enumerate(items):
        y, length = top + i * row, width * count / longest
        middle = y + row / 2 + 4
        parts.append(
            f'<text x="{label_width - 8}" y="{middle:.1f}" text-anchor="end">{escape(label)}</text>'
            + _rect(label_width, y + row * 0.2, max(length, 1 if count else 0), row * 0.6, colour)
            + f'<text x="{label_width + length + 6:.1f}" y="{middle:.1f}">{_number(count)} ({count / total:.1%})</text>'
        )
    return _svg(title, [], parts)


def _svg(title: str, series: list[Series], parts: list[str]) -> SafeString:
    legend, x = [], LEFT
    for s in series:
        legend.append(
            f'<rect x="{x}" y="8" width="10" height="10" fill="{s.colour}"/>'
            f'<text x="{x + 14}" y="17">{escape(s.label)}</text>'
        )
        x += 28 + 6.6 * len(s.label)  # about the width of 12px text
    return mark_safe(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{"".join(legend)}{"".join(parts)}</svg>'
    )


def _grid(top: float, fmt) -> list[str]:
    """Four horizontal lines, labelled, from 0 to `top`."""
    parts = []
    for k in range(5):
        value = top * k / 4
        y = _y(value, top)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(value))}</text>'
        )
    return parts


def _ticks(ticks: list[str], slot: float) -> list[str]:
    return [
        f'<text x="{LEFT + (i + 0.5) * slot:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{escape(tick)}</text>'
        for i, tick in enumerate(ticks)
        if tick
    ]


def _hover_area(i: int, slot: float) -> str:
    """An invisible full-height bar, so the bucket's tooltip shows wherever the mouse is."""
    return _rect(LEFT + i * slot, TOP, slot, HEIGHT - TOP - BOTTOM, "none", ' pointer-events="all"')


def _rect(x: float, y: float, width: float, height: float, colour: str, extra: str = "") -> str:
    return f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" fill="{colour}"{extra}/>'


def _y(value: float, top: float) -> float:
    return HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (value / top if top else 0)


def _nice_top(peak: float) -> float:
    """The top of the y axis: four gridlines, each a round step (1, 2, 2.5 or 5 x 10^n), reaching `peak`."""
    if peak <= 4:
        return 4
    step = peak / 4
    magnitude = 10 ** math.floor(math.log10(step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= step)
    return step * 4


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else f"{int(value)}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.3g}%"
