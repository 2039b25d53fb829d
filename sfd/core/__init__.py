"""The core: model families, concepts, losses, roles, adapters, the trainer, erasure, baselines, attacks and export.
Imports sfd.kernel and sfd.pipelines only."""
