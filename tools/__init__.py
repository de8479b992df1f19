"""Data tools: the synthetic LINEMOD generator, label maker, BOP converter, downloads, overlays.

The scripts run as `python tools/<name>.py ...` from the repository root, and their functions
import as `tools.<name>` (e.g. `from tools.make_labels import render_mask`).
"""
