"""Ad data: schemas, the synthetic ad world, readers for user files and Amazon Beauty, validation."""
