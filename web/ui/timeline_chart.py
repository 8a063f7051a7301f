"""A picture of a receipt's story: its events on a time axis, coloured by kind, as SVG."""

from markupsafe import Markup, escape

from ..vocabulary import KIND_LABELS, Kind

KIND_COLOURS = {
    Kind.OPEN: "#17773b",
    Kind.CLICK: "#0b6e6e",
    Kind.PREFETCH: "#8a5a00",
    Kind.PREVIEW: "#5a6473",
    Kind.SELF: "#1f5fbf",
    Kind.BOT: "#a3a9b3",
    Kind.UNKNOWN: "#7d6a9a",
}
# Axis units: the picture scales to the page's width (style.css), so a phone draws it at half
# size, with larger words. LEFT: room for the row labels; rows far enough apart for them.
WIDTH, HEIGHT, MARGIN, LEFT = 720, 170, 16, 130
ROWS = {
    Kind.OPEN: 30,
    Kind.CLICK: 48,
    Kind.SELF: 66,
    Kind.PREFETCH: 84,
    Kind.PREVIEW: 102,
    Kind.UNKNOWN: 120,
    Kind.BOT: 138,
}


BUCKET = 10  # events of one kind within a mark's width (this many units on the axis) share it


def scale_of(start, end):
    """Axis units a second, for a picture from `start` to `end`."""
    return (WIDTH - LEFT - MARGIN) / max((end - start).total_seconds(), 1.0)


def bucket_of(seconds, scale):
    """The mark an event `seconds` after the start belongs to, within its kind."""
    return int(seconds * scale // BUCKET)


def timeline_svg(created_at, events, now):
    """SVG (as Markup) of `events` (objects with .at and .kind, oldest first) between the pixel's
    creation and now. Events of one kind that would overlap share one mark, a little larger, whose
    title says how many and when, so a receipt fetched a thousand times draws a bounded picture.
    Presentation attributes only, so the page's Content Security Policy needs no inline styles."""
    start = created_at
    end = max([now, *(event.at for event in events)])
    scale = scale_of(start, end)
    marks = {}  # (kind, bucket) -> [first, last, count], in the order first seen
    for event in events:
        key = (event.kind, bucket_of((event.at - start).total_seconds(), scale))
        mark = marks.get(key)
        if mark is None:
            marks[key] = [event.at, event.at, 1]
        else:
            mark[1] = max(mark[1], event.at)
            mark[2] += 1
    return draw(start, end, [(kind, *mark) for (kind, _), mark in marks.items()], len(events))


def draw(start, end, marks, count):
    """The SVG of `marks` — (kind, first, last, count) each — on an axis from `start` to `end`,
    for `count` events in all."""
    scale = scale_of(start, end)
    parts = [
        f'<svg class="timeline" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{count} event{"" if count == 1 else "s"} between '
        f'{start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{LEFT}" y1="{HEIGHT - 16}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - 16}" '
        'stroke="#a3a9b3" stroke-width="1"/>',
        f'<text x="{LEFT}" y="{HEIGHT - 2}" font-size="11" fill="#5a6473">'
        f"{start:%d %b %H:%M}</text>",
        f'<text x="{WIDTH - MARGIN}" y="{HEIGHT - 2}" font-size="11" fill="#5a6473" '
        f'text-anchor="end">{end:%d %b %H:%M}</text>',
    ]
    for kind, y in ROWS.items():
        parts.append(
            f'<text x="2" y="{y + 4}" font-size="10" fill="{KIND_COLOURS[kind]}">'
            f"{escape(KIND_LABELS[kind])}</text>"
        )
    for kind, first, last, n in marks:
        cx = LEFT + (first - start).total_seconds() * scale
        when = f"{first:%Y-%m-%d %H:%M:%S}"
        if last != first:
            when += f" – {last:%Y-%m-%d %H:%M:%S}"
        times = f" ×{n}" if n > 1 else ""
        radius = 5 if n == 1 else 6 if n < 10 else 7
        parts.append(
            f'<circle cx="{cx:.1f}" cy="{ROWS[kind]}" r="{radius}" fill="{KIND_COLOURS[kind]}">'
            f"<title>{escape(KIND_LABELS[kind])}{times} {when} UTC</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
