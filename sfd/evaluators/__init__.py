"""Evaluators: judges that score generated images (classifier judges, CLIP, NudeNet) and distribution metrics (FID/KID)."""
