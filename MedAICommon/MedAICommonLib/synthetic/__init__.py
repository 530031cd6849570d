"""Generated data with known answers: CT phantoms, shared test scenarios and the ``medai demo`` pipeline."""
