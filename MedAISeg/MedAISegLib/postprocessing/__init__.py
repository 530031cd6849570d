"""Classical segmentation and what follows a segmentation: threshold, Otsu, region growing, morphology, connected components, lesion detection and evaluation metrics (Dice, HD95, ...)."""
