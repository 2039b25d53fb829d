"""The Gradio demo of the toolkit (`sfd demo`): an original model and an erased one side by side.

Modules:
- `catalog`: which model folders exist (checkpoints/, runs/, --model paths), what each one is, the default pair;
- `runtime`: lazily loaded, cached pipelines; input checks; one image per model with timings and concept scores;
- `audit_tab`: a small `sfd audit` run from the page and its report;
- `demo`: the Gradio Blocks page and `launch`.

Only `demo` imports gradio; nothing in `sfd` imports this package.
"""
