"""Ray Train: the per-worker loop and the driver that builds the Ray Train trainer (rayline.train.driver).

Imports nothing: the Train controller loads modules of this package (progress, process_group) and must not pay
for torch."""
