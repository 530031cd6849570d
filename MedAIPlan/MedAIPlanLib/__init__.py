"""MedAIPlan algorithms (Qt- and Slicer-free) and the module's Logic."""
