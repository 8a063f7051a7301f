"""A picture of a receipt's story: its events on a time axis, coloured by kind, as SVG."""

from markupsafe import Markup, escape

KIND_COLOURS = {
    "open": "#17773b",
    "prefetch": "#8a5a00",
    "preview": "#5a6473",
    "self": "#1f5fbf",
    "bot": "#a3a9b3",
}
KIND_LABELS = {
    "open": "opened",
    "prefetch": "delivered (machine)",
    "preview": "your draft",
    "self": "you",
    "bot": "bot",
}
WIDTH, HEIGHT, MARGIN, LEFT = 720, 120, 16, 130  # LEFT: room for the row labels
ROWS = {"open": 30, "self": 46, "prefetch": 62, "preview": 78, "bot": 94}


def timeline_svg(created_at, events, now):
    """SVG (as Markup) of `events` (objects with .at and .kind) between the pixel's creation and
    now. Presentation attributes only, so the page's Content Security Policy needs no inline
    styles."""
    start = created_at
    end = max([now, *(event.at for event in events)])
    span = max((end - start).total_seconds(), 1.0)

    def x(moment):
        return LEFT + (WIDTH - LEFT - MARGIN) * (moment - start).total_seconds() / span

    parts = [
        f'<svg class="timeline" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{len(events)} events between {start:%Y-%m-%d %H:%M} and '
        f'{end:%Y-%m-%d %H:%M} UTC" '
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
    for event in events:
        cx, cy, colour = x(event.at), ROWS[event.kind], KIND_COLOURS[event.kind]
        parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy}" r="5" fill="{colour}">'
            f"<title>{escape(KIND_LABELS[event.kind])} {event.at:%Y-%m-%d %H:%M:%S} UTC</title>"
            "</circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
