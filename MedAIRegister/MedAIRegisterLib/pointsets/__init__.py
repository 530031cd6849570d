"""Point-set and surface registration: ICP with multi-start and paired landmarks."""
