"""Helpers used only inside the Slicer application (Qt): requirements, the widget base, the Batch section, self-tests."""
