"""Builders of the toy worlds (`sfd train-teacher`): their teachers, CLIP, VAE and judges. The worlds' data and
vocabulary, which the core and the evaluators use, are in sfd/core/worlds/."""
