"""Training: one loop for any stage, streaming samples, precision, checkpoints, resume and seeding."""
