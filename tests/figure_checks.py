"""What makes a figure readable at its printed size, checked on a drawn matplotlib Figure (shared by the
tests of every figure)."""
from __future__ import annotations

from matplotlib.text import Text


def visible_texts(fig):
    """The figure's visible text other than tick labels: titles, axis labels, legends, notes."""
    ticks = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
             for tick in axis.get_major_ticks() + axis.get_minor_ticks() for t in (tick.label1, tick.label2)}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in ticks]


def legend_texts(fig):
    return [t.get_text() for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
            for t in legend.get_texts()]


def assert_readable(name: str, fig) -> None:
    """At most a page wide, no text under 7 pt, no text outside the figure or on other text, and the
    figure-level legends off the axes."""
    assert fig.get_figwidth() <= 7.5, name
    assert min(t.get_fontsize() for t in fig.findobj(Text) if t.get_text()) >= 7, name
    renderer = fig.canvas.get_renderer()
    page = fig.bbox.padded(1)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in visible_texts(fig)]
    for text, box in boxes:
        assert page.contains(box.x0, box.y0) and page.contains(box.x1, box.y1), (name, text)
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            assert not box_a.shrunk(0.98, 0.9).overlaps(box_b.shrunk(0.98, 0.9)), (name, a, b)
    for legend in fig.legends:
        frame = legend.get_window_extent(renderer)
        assert not any(frame.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes if ax.get_visible()), name
