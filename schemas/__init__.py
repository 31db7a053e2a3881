"""The contracts every linewatch service shares (pydantic v2 models), and nothing else.

Import what you need from its module, e.g. ``from schemas.frame import Frame``:
ids, common, blob, frame, process, defect, inspection, label, alert, dead_letter, export.
"""
