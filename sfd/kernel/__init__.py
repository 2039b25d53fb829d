"""The kernel: errors, trees, schedules, denoisers, one-step generators and conventions, and the run-time helpers
every layer may use. It imports nothing from the layers above (sfd/pipelines, sfd/core, sfd/evaluators, sfd/app,
sfd/commands)."""
