"""Training and fine-tuning segmentation networks on the user's cases (MONAI), their history and curves, and the generated phantom cases the tests and demos train on."""
