"""Plan evaluation on dose arrays: DVH (voxel masks and planar contours), dose metrics, gamma, isodose, SlicerRT's dose-volume conventions and the plan reports (PNG/PDF)."""
