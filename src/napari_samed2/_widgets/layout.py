"""Panels that fit a laptop screen: content in a scroll area, so three docked panels never
force the window taller than the screen (a 1366x768 display leaves ~700 px for docks)."""

from __future__ import annotations

from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget


def scrolling_layout(panel: QWidget) -> QVBoxLayout:
    """The layout to fill with ``panel``'s content: it sits in a scroll area that takes the
    panel's whole space, so the panel can be shorter than its content and scrolls instead."""
    content = QWidget()
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(content)
    outer = QVBoxLayout(panel)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return QVBoxLayout(content)
