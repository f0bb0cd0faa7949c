"""Re-export of :mod:`deltalens.plots` (the shared figure helpers) for callers that still
import them from here."""

from ..plots import heatmap, label, lines_by_layer, new_figure, save_figure, scatter

__all__ = ["heatmap", "label", "lines_by_layer", "new_figure", "save_figure", "scatter"]
