"""Helpers used only inside the Slicer application (Qt): requirements, the widget base, self-tests."""
